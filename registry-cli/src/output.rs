//! Output: aligned columns as Consul prints them (its `columnize`, two spaces between
//! columns), or the API's JSON.
//!
//! Owns: how results reach stdout. Must not touch: what a result holds.

use serde::Serialize;

/// Prints `rows` under `header` in aligned columns (the last column is not padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", table_text(header, rows));
}

/// The text [`table`] prints.
pub fn table_text(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i < last {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints `value` as indented JSON.
pub fn json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // Our own types always serialize; say so rather than print nothing.
        Err(e) => eprintln!("Error encoding JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_with_two_spaces() {
        let text = super::table_text(
            &["Node", "Address", "Status"],
            &[
                vec!["s1".into(), "127.0.0.1:8301".into(), "alive".into()],
                vec![
                    "client-long".into(),
                    "10.0.0.1:8301".into(),
                    "failed".into(),
                ],
            ],
        );
        assert_eq!(
            text,
            "Node         Address         Status\n\
             s1           127.0.0.1:8301  alive\n\
             client-long  10.0.0.1:8301   failed\n"
        );
    }
}
