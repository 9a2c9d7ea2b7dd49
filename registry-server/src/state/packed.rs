//! Strings kept back to back in one heap block: [`Packed`] for a fixed count,
//! [`PackedList`] for a count known when made. The catalog's stored rows
//! (`stored.rs`) keep their short strings so: one allocation of the strings'
//! total length instead of 24 inline bytes each. Owns only the containers.

/// Strings back to back in one heap block, as [`Packed`], for a count known only
/// when it is made (their ends in a second block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PackedList {
    text: Box<str>,
    ends: Box<[u32]>,
}

impl PackedList {
    /// `parts`, packed.
    pub(super) fn new<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for part in parts {
            text.push_str(part);
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        PackedList {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    /// How many strings.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The `i`-th string ("" past the end).
    pub(super) fn get(&self, i: usize) -> &str {
        slice(&self.text, &self.ends, i)
    }
}

/// `N` strings back to back in one heap block, `ends[i]` the end of the i-th:
/// 16 bytes and `4 × N` inline plus one allocation of their total length, for
/// records whose strings are short and read together. (Offsets are `u32`:
/// rows and requests are capped far below 4 GiB, `registry_api::snapshot`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Packed<const N: usize> {
    text: Box<str>,
    ends: [u32; N],
}

impl<const N: usize> Packed<N> {
    /// `parts`, packed.
    pub(super) fn new(parts: [&str; N]) -> Self {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0; N];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Packed {
            text: text.into_boxed_str(),
            ends,
        }
    }

    /// The `i`-th string ("" past the end).
    pub(super) fn get(&self, i: usize) -> &str {
        slice(&self.text, &self.ends, i)
    }
}

/// The `i`-th of the strings packed in `text` that end at `ends` ("" past the end).
fn slice<'a>(text: &'a str, ends: &[u32], i: usize) -> &'a str {
    let start = match i {
        0 => 0,
        _ => ends.get(i - 1).copied().unwrap_or(u32::MAX),
    };
    let end = ends.get(i).copied().unwrap_or(0);
    text.get(start as usize..end as usize).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::{Packed, PackedList};

    #[test]
    fn packed_strings_read_back_each_as_given() {
        let parts = ["alive", "", "ünïcödé ✓", "", "web-1", "http"];
        let p = Packed::new(parts);
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(p.get(i), *part, "part {i}");
        }
        assert_eq!(p.get(6), "", "past the end reads empty");
        let list = PackedList::new(parts);
        assert_eq!(list.len(), parts.len());
        assert!((0..parts.len()).all(|i| list.get(i) == parts[i]));
        assert_eq!(PackedList::new([]).get(0), "");
        let empty = Packed::new(["", ""]);
        assert_eq!((empty.get(0), empty.get(1), empty.text.len()), ("", "", 0));
    }
}
