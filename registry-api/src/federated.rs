//! Which requests cross the WAN: the one rule every forwarded request passes, checked by the
//! server before it hands a `?dc=` request to its gateway (and signs it), and by every gateway,
//! whether the request goes on to this DC's servers or to another DC's gateway.
//!
//! Federation is queries (DESIGN §1): another DC may read and write its catalog, health, KV and
//! the other data endpoints, exactly the ones Consul's HTTP API takes `?dc=` on. What manages a
//! DC or a node (agent, operator, ACL, snapshot and internal endpoints) is not federated: an
//! agent registration is an SSRF (its HTTP check's output is readable in `/v1/health/checks`),
//! a Raft peer removal or a forged heartbeat would let anyone on the WAN change a remote cluster.
//! The ACL endpoints are the exception Consul makes too: a secondary datacenter sends its ACL
//! writes to the primary and its leader replicates from `/v1/internal/acl/replication` there;
//! every one of them needs a token with `acl` rights in the primary (and answers 401 with ACLs
//! off). A secondary also asks the primary about a token its replica does not hold yet
//! (`/v1/internal/acl/authority`, which tells only the caller's own token's rights).

/// Reads.
const READ: &[&str] = &["GET", "HEAD"];
/// Reads and `PUT` writes (catalog register, session create, event fire).
const READ_PUT: &[&str] = &["GET", "HEAD", "PUT"];
/// KV: read, write, delete.
const KV: &[&str] = &["GET", "HEAD", "PUT", "DELETE"];
/// Prepared queries: list, execute, create (`POST`), update, delete.
const QUERY: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE"];
/// `PUT /v1/txn`.
const PUT_ONLY: &[&str] = &["PUT"];

/// The web UI's summaries: the only `/v1/internal/` paths that are client reads (Consul takes
/// `?dc=` on them and its agents pass them on), so the one internal family that agents forward
/// and that crosses datacenters.
pub const UI_SUMMARIES: &[&str] = &["/v1/internal/ui/services", "/v1/internal/ui/nodes"];

/// Why a request is not forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The path is not federated at all (`403`).
    Path,
    /// The path is federated, but not with this method (`405` with `Allow`).
    Method {
        /// The methods the gateway forwards for this path.
        allow: &'static [&'static str],
    },
}

/// The methods forwarded for `path`, or `None` when the path is not federated.
fn allowed_methods(path: &str) -> Option<&'static [&'static str]> {
    let rest = path.strip_prefix("/v1/")?;
    // `/v1/<family>/<more>`: the family is matched exactly, so `/v1//agent` or
    // `/v1/kvx/...` are not mistaken for a federated family.
    let (family, more) = match rest.split_once('/') {
        Some((family, more)) => (family, Some(more)),
        None => (rest, None),
    };
    match (family, more) {
        ("catalog", Some("register" | "deregister")) => Some(READ_PUT),
        ("catalog" | "health" | "coordinate", Some(m)) if !m.is_empty() => Some(READ),
        ("kv", Some(_)) => Some(KV),
        ("session" | "event", Some(m)) if !m.is_empty() => Some(READ_PUT),
        ("query", _) => Some(QUERY),
        ("txn", None) => Some(PUT_ONLY),
        ("status", Some("leader" | "peers")) => Some(READ),
        // The web UI's summaries: reads of the same catalog and health data as
        // `/v1/health/*`. No other internal path crosses.
        ("internal", Some(_)) if UI_SUMMARIES.contains(&path) => Some(READ),
        ("acl", Some(m)) if !m.is_empty() => Some(KV),
        ("internal", Some("acl/replication" | "acl/authority")) => Some(READ),
        _ => None,
    }
}

/// Whether a request with `method` on `path` (the path exactly as it will be sent on, dot
/// segments already resolved) may be forwarded.
pub fn check(method: &str, path: &str) -> Result<(), Refusal> {
    let allow = allowed_methods(path).ok_or(Refusal::Path)?;
    if allow.contains(&method) {
        Ok(())
    } else {
        Err(Refusal::Method { allow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_endpoints_cross_the_wan() {
        use Refusal::Path;
        let m = |allow| Err(Refusal::Method { allow });
        let table: &[(&str, &str, Result<(), Refusal>)] = &[
            ("GET", "/v1/catalog/services", Ok(())),
            ("GET", "/v1/catalog/service/web", Ok(())),
            ("HEAD", "/v1/catalog/nodes", Ok(())),
            ("PUT", "/v1/catalog/register", Ok(())),
            ("PUT", "/v1/catalog/deregister", Ok(())),
            ("PUT", "/v1/catalog/services", m(READ)),
            ("DELETE", "/v1/catalog/register", m(READ_PUT)),
            ("GET", "/v1/health/service/web", Ok(())),
            ("GET", "/v1/health/state/critical", Ok(())),
            ("PUT", "/v1/health/service/web", m(READ)),
            ("GET", "/v1/kv/", Ok(())),
            ("GET", "/v1/kv/a/b", Ok(())),
            ("PUT", "/v1/kv/a", Ok(())),
            ("DELETE", "/v1/kv/a", Ok(())),
            ("POST", "/v1/kv/a", m(KV)),
            ("PUT", "/v1/session/create", Ok(())),
            ("GET", "/v1/session/list", Ok(())),
            ("PUT", "/v1/txn", Ok(())),
            ("GET", "/v1/txn", m(PUT_ONLY)),
            ("GET", "/v1/status/leader", Ok(())),
            ("GET", "/v1/status/peers", Ok(())),
            ("GET", "/v1/query", Ok(())),
            ("POST", "/v1/query", Ok(())),
            ("GET", "/v1/query/abc/execute", Ok(())),
            ("DELETE", "/v1/query/abc", Ok(())),
            ("PUT", "/v1/event/fire/deploy", Ok(())),
            ("GET", "/v1/event/list", Ok(())),
            ("GET", "/v1/coordinate/datacenters", Ok(())),
            ("PUT", "/v1/coordinate/update", m(READ)),
            // Not federated, whatever the method.
            ("GET", "/v1/operator/raft/configuration", Err(Path)),
            ("DELETE", "/v1/operator/raft/peer", Err(Path)),
            ("PUT", "/v1/agent/service/register", Err(Path)),
            ("GET", "/v1/agent/self", Err(Path)),
            ("GET", "/v1/agent/metrics", Err(Path)),
            ("PUT", "/v1/internal/heartbeat", Err(Path)),
            ("GET", "/v1/internal/ui/services", Ok(())),
            ("GET", "/v1/internal/ui/nodes", Ok(())),
            ("PUT", "/v1/internal/ui/nodes", m(READ)),
            ("GET", "/v1/internal/ui/metrics-proxy/x", Err(Path)),
            ("GET", "/v1/internal/ui/services/x", Err(Path)),
            // ACL endpoints cross: a secondary's writes go to the primary (tokens decide).
            ("PUT", "/v1/acl/bootstrap", Ok(())),
            ("GET", "/v1/acl/tokens", Ok(())),
            ("POST", "/v1/acl/token", m(KV)),
            ("GET", "/v1/acl", Err(Path)),
            ("GET", "/v1/internal/acl/replication", Ok(())),
            ("PUT", "/v1/internal/acl/replication", m(READ)),
            ("GET", "/v1/internal/acl/authority", Ok(())),
            ("GET", "/v1/internal/acl/other", Err(Path)),
            ("GET", "/v1/snapshot", Err(Path)),
            ("PUT", "/v1/snapshot", Err(Path)),
            ("GET", "/v1/status/other", Err(Path)),
            ("GET", "/v1/status", Err(Path)),
            ("GET", "/v1/catalog", Err(Path)),
            ("GET", "/v1/catalog/", Err(Path)),
            ("GET", "/v1/kv", Err(Path)),
            ("GET", "/v1/kvx/a", Err(Path)),
            ("PUT", "/v1/txn/x", Err(Path)),
            ("GET", "/v1//agent/self", Err(Path)),
            ("GET", "/v1/", Err(Path)),
            ("GET", "/v2/kv/a", Err(Path)),
            ("GET", "/metrics", Err(Path)),
        ];
        for (method, path, want) in table {
            assert_eq!(&check(method, path), want, "{method} {path}");
        }
    }
}
