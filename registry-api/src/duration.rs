//! Go-style durations (`"10s"`, `"1m30s"`, `"250ms"`), as Consul's API takes and
//! prints them (`?wait=`, check `Interval`/`Timeout`), and the RFC 3339 times it prints
//! (`StableSince`, log lines), without a date library.

use std::time::{Duration, SystemTime};

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

/// `2017-03-06T22:07:51Z` (whole seconds, UTC), as Go prints a `time.Time` in JSON.
pub fn rfc3339(t: SystemTime) -> String {
    let (date, secs, _) = civil(t);
    format!("{date}T{secs}Z")
}

/// `2017-03-06T22:07:51.005Z` (milliseconds, UTC), hclog's log line time.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let (date, secs, millis) = civil(t);
    format!("{date}T{secs}.{millis:03}Z")
}

/// The UTC date (`YYYY-MM-DD`), time of day (`HH:MM:SS`) and milliseconds of `t`; times
/// before 1970 print as the epoch.
fn civil(t: SystemTime) -> (String, String, u32) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
        since.subsec_millis(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_488_838_071_042);
        assert_eq!(rfc3339(t), "2017-03-06T22:07:51Z");
        assert_eq!(rfc3339_millis(t), "2017-03-06T22:07:51.042Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

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
