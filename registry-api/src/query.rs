//! What a request's query parameters (and the few headers Consul reads alongside them) get,
//! decided once for the server and the agent.
//!
//! Consul ignores query parameters it does not know: clients add their own (cache-busters,
//! tracing ids), and Consul's Go client sends some on every call. So does this registry. A
//! parameter Consul *does* read is never silently ignored: it is either honoured, or refused
//! with a `400` whose text names it. [`POLICY`] is the table (the README prints it), and
//! [`judge`] applies it to one request; the handlers honour the parameters of their own
//! endpoints (`index`, `wait`, `stale`, `consistent`, `filter`, `tag`, ...), and the
//! [`apply`] middleware does the rest (`?pretty`, `X-Cache`) for both processes.
//!
//! Sources: Consul's `agent/http.go` (`parse`, `parseConsistency`, `parseCacheControl`,
//! `parseSource`, `marshalJSON`) and `agent/http_ce.go` (`parseEntMeta`,
//! `parseEntMetaPartition`), and <https://developer.hashicorp.com/consul/api-docs/features/caching>.
//!
//! Owns: the policy and the answer to it. Must not touch: the endpoints' own parameters (their
//! handlers parse them).

use crate::{duration, Error as ApiError};

/// What Consul does with one query parameter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read by the endpoints it belongs to, as Consul reads it.
    Honoured,
    /// Accepted; what it asks for is already what every answer is (the text says why).
    HonouredAsIs,
    /// Refused with a 400 naming it, unless its value is one this registry can honour.
    RefusedUnlessDefault,
    /// Refused with a 400 naming it whenever it has a value.
    Refused,
}

/// One row of [`POLICY`].
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The parameter (or `Header: name` for a header read with the parameters).
    pub name: &'static str,
    /// What it gets.
    pub outcome: Outcome,
    /// Why, for the README and the 400 texts.
    pub why: &'static str,
}

/// Every parameter Consul reads across its HTTP API, and what it gets here. Anything not in
/// this table is not Consul's and is ignored, as Consul ignores it.
pub const POLICY: &[Rule] = &[
    Rule {
        name: "dc",
        outcome: Outcome::Honoured,
        why: "routed to that datacenter through the WAN gateways",
    },
    Rule {
        name: "stale",
        outcome: Outcome::Honoured,
        why: "any server answers from its own state",
    },
    Rule {
        name: "consistent",
        outcome: Outcome::Honoured,
        why: "the leader confirms with a quorum first",
    },
    Rule {
        name: "leader",
        outcome: Outcome::HonouredAsIs,
        why: "the default mode is already the leader's",
    },
    Rule {
        name: "max_stale",
        outcome: Outcome::Honoured,
        why: "a stale read, answered by the leader instead when this server last heard from it longer ago",
    },
    Rule {
        name: "cached",
        outcome: Outcome::HonouredAsIs,
        why: "there is no agent cache: every answer is fresh, `X-Cache: MISS` on the endpoints Consul caches; with ?consistent a 400, as Consul",
    },
    Rule {
        name: "Header: Cache-Control",
        outcome: Outcome::HonouredAsIs,
        why: "max-age and stale-if-error are checked as Consul checks them; every answer is fresh",
    },
    Rule {
        name: "index",
        outcome: Outcome::Honoured,
        why: "blocking queries",
    },
    Rule {
        name: "wait",
        outcome: Outcome::Honoured,
        why: "blocking queries (at most 10m)",
    },
    Rule {
        name: "filter",
        outcome: Outcome::Honoured,
        why: "Consul's filter expressions, per endpoint",
    },
    Rule {
        name: "node-meta",
        outcome: Outcome::Honoured,
        why: "filter by node metadata",
    },
    Rule {
        name: "tag",
        outcome: Outcome::Honoured,
        why: "filter by service tag",
    },
    Rule {
        name: "passing",
        outcome: Outcome::Honoured,
        why: "only instances whose checks all pass",
    },
    Rule {
        name: "near",
        outcome: Outcome::HonouredAsIs,
        why: "no network coordinates are kept, so there is no distance to sort by: the order stays, as Consul's with coordinates disabled",
    },
    Rule {
        name: "merge-central-config",
        outcome: Outcome::HonouredAsIs,
        why: "there are no central config entries to merge",
    },
    Rule {
        name: "token",
        outcome: Outcome::Honoured,
        why: "the request's ACL token when there is no X-Consul-Token or Authorization: Bearer header (with ACLs off, every token may do everything, as in Consul)",
    },
    Rule {
        name: "pretty",
        outcome: Outcome::Honoured,
        why: "JSON answers indented by 4 spaces",
    },
    Rule {
        name: "ns",
        outcome: Outcome::RefusedUnlessDefault,
        why: "Namespaces are a Consul Enterprise feature",
    },
    Rule {
        name: "Header: X-Consul-Namespace",
        outcome: Outcome::RefusedUnlessDefault,
        why: "Namespaces are a Consul Enterprise feature",
    },
    Rule {
        name: "partition",
        outcome: Outcome::RefusedUnlessDefault,
        why: "Partitions are a Consul Enterprise feature",
    },
    Rule {
        name: "Header: X-Consul-Partition",
        outcome: Outcome::RefusedUnlessDefault,
        why: "Partitions are a Consul Enterprise feature",
    },
    Rule {
        name: "peer",
        outcome: Outcome::Refused,
        why: "cluster peering is not supported: there are no peers",
    },
];

/// The endpoints Consul serves from its agent cache with `?cached`
/// (<https://developer.hashicorp.com/consul/api-docs/features/caching>): their answers carry
/// `X-Cache`.
const CACHEABLE: &[&str] = &[
    "/v1/catalog/services",
    "/v1/catalog/service/",
    "/v1/catalog/connect/",
    "/v1/health/service/",
    "/v1/health/connect/",
    "/v1/health/ingress/",
];

/// What the [`apply`] middleware does to the answer of a request [`judge`] let through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Answer `X-Cache: MISS` (`?cached` on an endpoint Consul caches).
    pub cache_miss: bool,
    /// Indent a JSON answer (`?pretty`).
    pub pretty: bool,
}

/// Judges a request's parameters (`query`, decoded pairs in order) and headers (by lower-case
/// name) against [`POLICY`]: `Err` is the 400 to answer.
pub fn judge<'a>(
    method: &str,
    path: &str,
    query: &[(String, String)],
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<Verdict, ApiError> {
    let has = |k: &str| query.iter().any(|(n, _)| n == k);
    let value = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // Consul CE refuses any namespace or partition (`http_ce.go`); `default` is the one
    // namespace and partition every Consul has, so it is honoured here rather than refused.
    let default_only =
        |v: Option<&str>| v.is_none_or(|v| v.is_empty() || v.eq_ignore_ascii_case("default"));
    if !default_only(header("x-consul-namespace")) {
        return Err(bad(
            "Invalid header: \"X-Consul-Namespace\" - Namespaces are a Consul Enterprise feature",
        ));
    }
    if !default_only(value("ns")) {
        return Err(bad(
            "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
        ));
    }
    if !default_only(header("x-consul-partition")) {
        return Err(bad(
            "Invalid header: \"X-Consul-Partition\" - Partitions are a Consul Enterprise feature",
        ));
    }
    if !default_only(value("partition")) {
        return Err(bad(
            "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature",
        ));
    }
    if value("peer").is_some_and(|p| !p.is_empty()) {
        return Err(bad(
            "Invalid query parameter: \"peer\" - cluster peering is not supported: there are no peers",
        ));
    }
    let read = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    if read {
        if has("cached") && has("consistent") {
            return Err(bad(
                "Cannot specify ?cached with ?consistent, conflicting semantics.",
            ));
        }
        if let Some(v) = value("max_stale").filter(|v| !v.is_empty()) {
            duration::parse(v).map_err(|_| bad(&format!("Invalid max_stale value {v:?}")))?;
        }
        if let Some(cc) = header("cache-control") {
            check_cache_control(cc)?;
        }
    }
    Ok(Verdict {
        cache_miss: read && has("cached") && CACHEABLE.iter().any(|p| cacheable(path, p)),
        pretty: has("pretty"),
    })
}

/// Whether `path` is the cacheable endpoint `pattern` (a prefix ending in `/` takes a name).
fn cacheable(path: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('/') {
        Some(_) => path
            .strip_prefix(pattern)
            .is_some_and(|rest| !rest.is_empty()),
        None => path == pattern,
    }
}

/// Consul's `parseCacheControl`: `max-age=` and `stale-if-error=` must be whole seconds.
fn check_cache_control(raw: &str) -> Result<(), ApiError> {
    for d in raw.split(',') {
        let d = d.trim().to_ascii_lowercase();
        let secs = d
            .strip_prefix("max-age=")
            .or_else(|| d.strip_prefix("stale-if-error="));
        if let Some(secs) = secs {
            if secs.parse::<i64>().is_err() {
                return Err(bad("Invalid Cache-Control header."));
            }
        }
    }
    Ok(())
}

fn bad(text: &str) -> ApiError {
    ApiError::BadRequest(text.to_string())
}

/// Whether Consul answers `GET path` with `X-Consul-Index`, `X-Consul-KnownLeader` and
/// `X-Consul-LastContact` (its blocking endpoints, <https://developer.hashicorp.com/consul/api-docs/features/blocking>):
/// such a read carries them on an error answer too, as Consul's do (`setMeta` runs whatever
/// the outcome).
pub fn carries_index(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "/v1/catalog/",
        "/v1/health/",
        "/v1/kv/",
        "/v1/session/info/",
        "/v1/session/node/",
        "/v1/session/list",
        "/v1/event/list",
        "/v1/coordinate/",
        "/v1/query",
        "/v1/config/",
    ];
    path != "/v1/catalog/datacenters" && PREFIXES.iter().any(|p| path.starts_with(p))
        // The web UI's summaries (Consul's `UIServices` and `UINodes` set the meta too).
        || crate::federated::UI_SUMMARIES.contains(&path)
}

/// Go's `json.MarshalIndent(v, "", "    ")` plus a newline, on an already serialised JSON
/// text (`?pretty`): keys keep their order, empty objects and arrays stay `{}` and `[]`.
/// Anything that is not well-formed JSON comes back unchanged.
pub fn indent_json(compact: &[u8]) -> Vec<u8> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(compact).is_err() {
        return compact.to_vec();
    }
    let mut out = Vec::with_capacity(compact.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', depth * 4));
    };
    let mut bytes = compact.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b'{' | b'[' => {
                let close = if b == b'{' { b'}' } else { b']' };
                while bytes.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    bytes.next();
                }
                if bytes.peek() == Some(&close) {
                    bytes.next();
                    out.extend([b, close]);
                } else {
                    out.push(b);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b);
            }
            b',' => {
                out.push(b);
                newline(&mut out, depth);
            }
            b':' => out.extend(b": "),
            b if b.is_ascii_whitespace() => {}
            b => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

/// The middleware that applies [`judge`] to every request of a router (the server's, the
/// agent's): a refused parameter is answered with its 400, and the answer of an accepted one
/// gets what its verdict asks (`X-Cache: MISS`, indented JSON).
#[cfg(feature = "serve")]
pub async fn apply(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse;
    // Most requests carry neither parameters nor one of the headers: nothing to judge.
    let judged_headers = ["x-consul-namespace", "x-consul-partition", "cache-control"];
    if req.uri().query().is_none()
        && !judged_headers
            .iter()
            .any(|h| req.headers().contains_key(*h))
    {
        return next.run(req).await;
    }
    let pairs: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let headers = req.headers();
    let verdict = match judge(req.method().as_str(), req.uri().path(), &pairs, |name| {
        headers.get(name).and_then(|v| v.to_str().ok())
    }) {
        Ok(v) => v,
        Err(e) => return crate::http_error::HttpError(e).into_response(),
    };
    // A HEAD answer's body is already gone (the router empties it): nothing to indent, and
    // its Content-Length stays the one the router set.
    let head = req.method() == axum::http::Method::HEAD;
    let mut resp = next.run(req).await;
    if verdict.cache_miss && resp.status().is_success() {
        resp.headers_mut()
            .insert("x-cache", HeaderValue::from_static("MISS"));
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if verdict.pretty && is_json && !head {
        let (mut parts, body) = resp.into_parts();
        // Every JSON answer is already whole in memory (bounded as it was built).
        return match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                axum::response::Response::from_parts(
                    parts,
                    axum::body::Body::from(indent_json(&bytes)),
                )
            }
            Err(e) => crate::http_error::HttpError(ApiError::Internal(format!(
                "failed to read the answer: {e}"
            )))
            .into_response(),
        };
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn get(path: &str, pairs: &[(&str, &str)]) -> Result<Verdict, ApiError> {
        judge("GET", path, &q(pairs), |_| None)
    }

    /// A value that shows each row's outcome: what an honoured parameter may carry, and
    /// what a refused one is refused for.
    fn sample(name: &str) -> &'static str {
        match name {
            "max_stale" => "10s",
            "Header: Cache-Control" => "max-age=30",
            "index" => "7",
            "wait" => "1s",
            _ => "some-value",
        }
    }

    #[test]
    fn every_row_of_the_policy_is_what_judge_does() {
        let path = "/v1/health/service/web";
        for rule in POLICY {
            let judged = |v: &str| match rule.name.strip_prefix("Header: ") {
                Some(h) => {
                    let h = h.to_ascii_lowercase();
                    judge("GET", path, &[], |n| (n == h).then_some(v))
                }
                None => judge("GET", path, &q(&[(rule.name, v)]), |_| None),
            };
            let name = rule.name.trim_start_matches("Header: ");
            match rule.outcome {
                Outcome::Honoured | Outcome::HonouredAsIs => {
                    assert!(judged(sample(rule.name)).is_ok(), "{}", rule.name);
                }
                Outcome::RefusedUnlessDefault => {
                    assert!(judged("default").is_ok(), "{}", rule.name);
                    assert!(judged("").is_ok(), "{}", rule.name);
                    let e = judged("team").unwrap_err().to_string();
                    assert!(e.contains(&format!("\"{name}\"")), "{}: {e}", rule.name);
                    assert!(e.contains(rule.why), "{}: {e}", rule.name);
                }
                Outcome::Refused => {
                    assert!(judged("").is_ok(), "{}", rule.name);
                    let e = judged("x").unwrap_err().to_string();
                    assert!(e.contains(&format!("\"{name}\"")), "{}: {e}", rule.name);
                    assert!(e.contains(rule.why), "{}: {e}", rule.name);
                }
            }
        }
        // Not Consul's: ignored.
        assert_eq!(get(path, &[("cachebuster", "1")]), Ok(Verdict::default()));
        // ?pretty is what the middleware acts on.
        assert!(get(path, &[("pretty", "")]).unwrap().pretty);
        // Malformed values of honoured ones are Consul's 400s.
        assert!(get(path, &[("max_stale", "soon")]).is_err());
        assert!(judge("GET", path, &[], |n| (n == "cache-control")
            .then_some("max-age=x"))
        .is_err());
    }

    #[test]
    fn go_indent_keeps_order_and_empty_collections() {
        let pretty = indent_json(br#"{"b":1,"a":[],"c":{},"d":[{"x":"a,b:{"},2]}"#);
        assert_eq!(
            String::from_utf8(pretty).unwrap(),
            "{\n    \"b\": 1,\n    \"a\": [],\n    \"c\": {},\n    \"d\": [\n        {\n            \
             \"x\": \"a,b:{\"\n        },\n        2\n    ]\n}\n"
        );
        assert_eq!(indent_json(b"true"), b"true\n");
        assert_eq!(indent_json(br#""a\"b""#), b"\"a\\\"b\"\n");
        assert_eq!(indent_json(b"{oops"), b"{oops");
    }

    #[test]
    fn index_headers_belong_to_the_blocking_reads() {
        for yes in [
            "/v1/catalog/nodes",
            "/v1/catalog/service/web",
            "/v1/health/state/any",
            "/v1/kv/a/b",
            "/v1/session/list",
            "/v1/internal/ui/services",
            "/v1/internal/ui/nodes",
        ] {
            assert!(carries_index(yes), "{yes}");
        }
        for no in [
            "/v1/catalog/datacenters",
            "/v1/status/leader",
            "/v1/agent/services",
            "/v1/operator/raft/configuration",
        ] {
            assert!(!carries_index(no), "{no}");
        }
    }

    #[test]
    fn only_the_cached_endpoints_say_miss() {
        assert!(
            get("/v1/catalog/services", &[("cached", "")])
                .unwrap()
                .cache_miss
        );
        assert!(
            get("/v1/health/service/web", &[("cached", "")])
                .unwrap()
                .cache_miss
        );
        assert!(
            !get("/v1/health/service/", &[("cached", "")])
                .unwrap()
                .cache_miss
        );
        assert!(
            !get("/v1/catalog/nodes", &[("cached", "")])
                .unwrap()
                .cache_miss
        );
        assert!(!get("/v1/catalog/services", &[]).unwrap().cache_miss);
        let put = judge("PUT", "/v1/catalog/services", &q(&[("cached", "")]), |_| {
            None
        });
        assert!(!put.unwrap().cache_miss);
    }
}
