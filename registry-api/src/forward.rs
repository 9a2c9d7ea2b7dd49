//! The rules of forwarding, one copy for the agent (to its servers), the server (to its
//! gateways) and the gateway (to other gateways and to its servers): which headers travel each
//! way, how a bare `host:port` becomes a base URL, and when a failed attempt may be repeated
//! against the next target. The time limits are in [`crate::limits`].

use reqwest::Method;

/// Largest answer read from a server or a gateway when forwarding. Bounded so that no peer can
/// make a forwarder buffer without end; generous, because a legitimate answer for a large catalog
/// (every instance of a service at 100,000 instances) runs to tens of MB.
pub const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The transport failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The answer is longer than the limit.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

/// Reads an answer's body, at most `limit` bytes: a `Content-Length` above it is refused before
/// anything is read, and a body that runs past it is cut off.
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Whether a request header travels with a forwarded request: the body's type, what the client
/// accepts, and Consul's own headers (`X-Consul-Token` among them) and `Authorization`. Never a
/// signature (each hop signs anew), cookies, `Host` or hop-by-hop headers.
pub fn forwarded_request_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type")
        || name.eq_ignore_ascii_case("accept")
        || name.eq_ignore_ascii_case("authorization")
        || starts_with_ignore_case(name, "x-consul-")
}

/// Whether a response header travels back with an answer: the body's type, `Allow` (a 405's
/// list of methods), Consul's `X-Consul-*` headers (index, leader, last contact) and its cache
/// headers `X-Cache` and `Age` (a `?cached` read: Consul's agent answers them), and the
/// browser protections `X-Content-Type-Options` and `Content-Security-Policy` that a server
/// puts on a KV `?raw` answer (Consul's fix of CVE-2020-25864): dropping them on the way back
/// would undo that fix for every client that reads through an agent or another DC.
pub fn forwarded_response_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type")
        || name.eq_ignore_ascii_case("allow")
        || name.eq_ignore_ascii_case("x-content-type-options")
        || name.eq_ignore_ascii_case("content-security-policy")
        || name.eq_ignore_ascii_case("x-cache")
        || name.eq_ignore_ascii_case("age")
        || starts_with_ignore_case(name, "x-consul-")
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// `host:port` -> `http://host:port`; a URL keeps its scheme; a trailing `/` goes.
pub fn base_url(raw: &str) -> String {
    base_url_over(raw, false)
}

/// [`base_url`], with `https://` for a bare `host:port` when `tls` (a process that dials
/// its peers over TLS, `--verify-outgoing`).
pub fn base_url_over(raw: &str, tls: bool) -> String {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        trimmed.to_owned()
    } else if tls {
        format!("https://{trimmed}")
    } else {
        format!("http://{trimmed}")
    }
}

/// Whether a request that failed against one target may be sent to the next: always when the
/// connection was never made (nothing reached the target), otherwise only when the method is
/// safe to repeat (`GET`, `HEAD`), so a write is never applied twice.
pub fn may_retry_elsewhere(connect_failed: bool, method: &Method) -> bool {
    connect_failed || *method == Method::GET || *method == Method::HEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_that_travel() {
        for yes in ["Content-Type", "accept", "Authorization", "X-Consul-Token"] {
            assert!(forwarded_request_header(yes), "{yes}");
        }
        for no in [
            "cookie",
            "host",
            "x-registry-signature",
            "connection",
            "x-consul",
        ] {
            assert!(!forwarded_request_header(no), "{no}");
        }
        for yes in [
            "content-type",
            "Allow",
            "X-Consul-Index",
            "x-consul-knownleader",
            "X-Cache",
            "X-Content-Type-Options",
            "content-security-policy",
        ] {
            assert!(forwarded_response_header(yes), "{yes}");
        }
        for no in ["set-cookie", "server", "content-length"] {
            assert!(!forwarded_response_header(no), "{no}");
        }
    }

    #[test]
    fn bare_addresses_become_http_urls() {
        assert_eq!(base_url("10.0.0.1:8500"), "http://10.0.0.1:8500");
        assert_eq!(base_url(" http://a:1/ "), "http://a:1");
        assert_eq!(base_url("https://a:1"), "https://a:1");
        assert_eq!(
            base_url_over("10.0.0.1:8300", true),
            "https://10.0.0.1:8300"
        );
        assert_eq!(base_url_over("http://a:1", true), "http://a:1");
    }

    #[test]
    fn writes_are_retried_only_when_nothing_was_sent() {
        assert!(may_retry_elsewhere(true, &Method::PUT));
        assert!(!may_retry_elsewhere(false, &Method::PUT));
        assert!(!may_retry_elsewhere(false, &Method::DELETE));
        assert!(may_retry_elsewhere(false, &Method::GET));
    }
}
