//! What the processes accept as a peer address or a datacenter name, from flags and from the
//! network (gateway exchanges). Both end up in URLs and logs, so both are held to a small
//! alphabet: an address is `host:port` and nothing else (no scheme, userinfo, path, query or
//! fragment could ever be pasted into a URL that is then fetched), and a DC name is letters,
//! digits, `-` and `_`. One copy of each rule, for the server and the gateway alike.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest datacenter name accepted.
pub const MAX_DC_LEN: usize = 64;
/// Longest host name (RFC 1035 §2.3.4: 255 octets on the wire, 253 characters as text).
const MAX_HOST_LEN: usize = 253;
/// Longest label of a host name (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Why a peer address (a gateway's, a server to join) was refused. The texts name the rule,
/// never the input, so they are safe to log and to send back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// No `:port`.
    #[error("an address must be HOST:PORT")]
    NoPort,
    /// The port is not a number in 1-65535.
    #[error("the port of an address must be a number in 1-65535")]
    BadPort,
    /// The host is neither a DNS name, an IPv4 address nor a bracketed IPv6 address.
    #[error(
        "the host of an address must be a DNS name (letters, digits, '-', '.'), \
         an IPv4 address or a bracketed IPv6 address"
    )]
    BadHost,
}

/// Checks that `addr` is `host:port` and nothing else: host a DNS name (letters, digits, `-`,
/// `.`), an IPv4 address or a bracketed IPv6 address (`[::1]:8302`); port 1-65535.
pub fn check_gateway_addr(addr: &str) -> Result<(), AddrError> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(AddrError::BadHost)?;
        // A zone (`%eth0`) or anything else std does not parse is refused.
        ip.parse::<Ipv6Addr>().map_err(|_| AddrError::BadHost)?;
        let port = after.strip_prefix(':').ok_or(AddrError::NoPort)?;
        (None, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or(AddrError::NoPort)?;
        (Some(host), port)
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddrError::BadPort);
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(AddrError::BadPort),
    }
    match host {
        None => Ok(()),
        Some(h) if h.parse::<Ipv4Addr>().is_ok() || dns_name(h) => Ok(()),
        Some(_) => Err(AddrError::BadHost),
    }
}

/// A server address as `PUT /v1/agent/join/:address` takes it: `host:port`, or a bare host
/// (a DNS name or an IPv4 address) that gets `default_port`; checked as
/// [`check_gateway_addr`] checks a gateway's.
pub fn join_addr(raw: &str, default_port: u16) -> Result<String, AddrError> {
    let raw = raw.trim();
    let addr = if raw.contains(':') {
        raw.to_string()
    } else {
        format!("{raw}:{default_port}")
    };
    check_gateway_addr(&addr)?;
    Ok(addr)
}

/// Whether `host` is a DNS name: dot-separated labels of letters, digits and `-`, none empty,
/// none starting or ending with `-` (RFC 1123 §2.1), within the length limits.
fn dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks a datacenter name: letters, digits, `-` and `_`, 1 to [`MAX_DC_LEN`] characters (the
/// rule `registry-server --datacenter` applies).
pub fn check_datacenter(dc: &str) -> Result<(), String> {
    if dc.is_empty() || dc.len() > MAX_DC_LEN {
        return Err(format!(
            "a datacenter name must be 1 to {MAX_DC_LEN} characters"
        ));
    }
    if !dc
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("a datacenter name must be letters, digits, '-' or '_'".into());
    }
    Ok(())
}

/// The `?dc=` a query string names, if any and not empty: the one reading of it for the
/// server (is this request for another datacenter?), the gateway (which datacenter to route
/// to) and the agent.
pub fn requested_dc(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "dc")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_addresses_get_the_default_port() {
        assert_eq!(join_addr("10.0.0.1", 8300).unwrap(), "10.0.0.1:8300");
        assert_eq!(join_addr(" s1.local:9300 ", 8300).unwrap(), "s1.local:9300");
        assert_eq!(join_addr("[::1]:8300", 1).unwrap(), "[::1]:8300");
        assert!(join_addr("a b", 8300).is_err());
        assert!(join_addr("h:0", 8300).is_err());
        assert!(join_addr("http://h:1", 8300).is_err());
    }

    #[test]
    fn gateway_addresses_are_host_and_port_only() {
        for ok in [
            "127.0.0.1:8302",
            "10.81.0.11:8302",
            "dc1-gateway:8302",
            "gw1.dc2.example.com:1",
            "localhost:65535",
            "[::1]:8302",
            "[fe80::1]:8302",
        ] {
            assert_eq!(check_gateway_addr(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("evil/x?y#:8302", AddrError::BadHost),
            ("evil:8302/x", AddrError::BadPort),
            ("evil:8302?x", AddrError::BadPort),
            ("evil:8302#x", AddrError::BadPort),
            ("evil/x?y#", AddrError::NoPort),
            ("user@evil:8302", AddrError::BadHost),
            ("http://evil:8302", AddrError::BadHost),
            ("evil:", AddrError::BadPort),
            (":8302", AddrError::BadHost),
            ("evil:0", AddrError::BadPort),
            ("evil:65536", AddrError::BadPort),
            ("evil:+80", AddrError::BadPort),
            ("evil:080080", AddrError::BadPort),
            ("ev il:80", AddrError::BadHost),
            ("evil_host:80", AddrError::BadHost),
            ("-evil:80", AddrError::BadHost),
            ("a..b:80", AddrError::BadHost),
            ("::1:8302", AddrError::BadHost),
            ("[::1]", AddrError::NoPort),
            ("[::1]x:80", AddrError::NoPort),
            ("[fe80::1%eth0]:80", AddrError::BadHost),
            ("[evil]:80", AddrError::BadHost),
            ("evil\n:80", AddrError::BadHost),
            ("", AddrError::NoPort),
        ] {
            assert_eq!(check_gateway_addr(bad), Err(why), "{bad:?}");
        }
        let long = format!("{}:80", "a".repeat(64));
        assert_eq!(check_gateway_addr(&long), Err(AddrError::BadHost));
    }

    #[test]
    fn datacenter_names_follow_the_server_rule() {
        for ok in ["dc1", "eu-west_1", "A"] {
            assert!(check_datacenter(ok).is_ok(), "{ok}");
        }
        let long = "d".repeat(MAX_DC_LEN + 1);
        for bad in ["", "dc 1", "dc1/../x", "dc.1", "dc1\n", long.as_str()] {
            assert!(check_datacenter(bad).is_err(), "{bad:?}");
        }
        assert!(check_datacenter(&"d".repeat(MAX_DC_LEN)).is_ok());
    }

    #[test]
    fn finds_the_requested_dc() {
        assert_eq!(requested_dc(Some("a=1&dc=dc2")), Some("dc2".into()));
        assert_eq!(requested_dc(Some("dc=")), None);
        assert_eq!(requested_dc(None), None);
    }
}
