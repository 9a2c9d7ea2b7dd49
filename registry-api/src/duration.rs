//! Go-style durations (`"10s"`, `"1m30s"`, `"250ms"`), as Consul's API takes and
//! prints them (`?wait=`, check `Interval`/`Timeout`).

use std::time::Duration;

/// Parses a Go duration string. A bare number without a unit is an error, as in Go
/// (`time: missing unit in duration`), except `"0"`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("invalid duration {text:?}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way Go prints it (`1m30s`, `250ms`, `0s`).
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let ms = d.as_secs_f64() * 1e3;
        return if ms.fract() == 0.0 {
            format!("{}ms", ms as u64)
        } else {
            format!("{ms}ms")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let nanos = d.subsec_nanos();
    let sec_text = if nanos == 0 {
        format!("{s}s")
    } else {
        format!("{}s", s as f64 + nanos as f64 / 1e9)
    };
    match (h, m) {
        (0, 0) => sec_text,
        (0, m) => format!("{m}m{sec_text}"),
        (h, m) => format!("{h}h{m}m{sec_text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert!(parse("10").is_err());
        assert!(parse("abc").is_err());
        assert!(parse("10x").is_err());
        assert!(parse("").is_err());
        assert!(parse("9999999999999999h").is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
