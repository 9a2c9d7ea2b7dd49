//! Random identifiers in Consul's form (a UUID's 8-4-4-4-12 hex spelling), for what a
//! server names at creation: sessions, user events. Owns their spelling; must not decide
//! what they identify.

/// A fresh random identifier spelt as a UUID (128 random bits; Consul's `uuid.GenerateUUID`
/// is the same: random bytes in the UUID layout, no version bits).
pub fn new_uuid() -> String {
    let b = crate::auth::random::<16>();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `id` is spelt as a UUID (36 characters, hex digits and dashes in the
/// 8-4-4-4-12 layout).
pub fn is_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_uuid_shaped_and_distinct() {
        let (a, b) = (new_uuid(), new_uuid());
        assert!(is_uuid(&a) && is_uuid(&b), "{a} {b}");
        assert_ne!(a, b);
        for bad in [
            "",
            "x",
            "b54fe110-7af5-cafc-d1fb-afc8ba432b1",
            "b54fe110_7af5-cafc-d1fb-afc8ba432b1c",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }
}
