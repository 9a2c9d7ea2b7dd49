//! Forwarding for the standalone client: a request for the servers' public API that is not an
//! agent endpoint goes to a server through the [`ServerPool`] (which fails over between servers
//! and signs what it sends), and the answer comes back.
//!
//! A read whose answer carries Consul's index headers carries them even when no server
//! answers ([`registry_api::query::carries_index`]). Identical blocking queries share one
//! request to a server (`coalesce.rs`).
//!
//! Owns: which paths are forwarded. Must not touch: which headers cross
//! ([`registry_api::forward`] has the one copy of that rule), failover or signing (the pool's).

use super::coalesce::{self, Coalescer};
use super::HttpResult;
use crate::servers::{PoolResponse, ServerPool};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use registry_api::forward::{forwarded_request_header, forwarded_response_header};
use registry_api::http_error::HttpError;
use registry_api::limits::MAX_BODY;
use registry_api::query::carries_index;
use registry_api::Error as ApiError;
use std::sync::Arc;

/// What the forwarding fallback needs: the servers, and the blocking queries in flight.
#[derive(Clone)]
pub(super) struct Forwarder {
    pub(super) servers: ServerPool,
    pub(super) blocking: Arc<Coalescer>,
}

/// Whether a path is the servers' public API that this agent passes on: `/v1/...`, except the
/// agent endpoints (they would describe a server's agent, not this one) and `/v1/internal/...`
/// (the servers' own traffic, such as heartbeats, which only the agent itself sends), but for
/// the web UI's two summaries, which are reads like the catalog's (Consul's agents serve them).
fn is_forwarded(path: &str) -> bool {
    path.starts_with("/v1/")
        && !path.starts_with("/v1/agent/")
        && (!path.starts_with("/v1/internal/")
            || registry_api::federated::UI_SUMMARIES.contains(&path))
}

/// `path` as the HTTP client will send it: dot segments (`..`, `%2e%2e`) resolved. The pool
/// signs the path it sends, so the rule must be checked on that one too: `/v1/kv/%2e%2e/internal/x`
/// is `/v1/internal/x` on the wire. Empty (so never forwarded) if it does not parse.
fn sent_path(path: &str) -> String {
    reqwest::Url::parse(&format!("http://server{path}"))
        .map(|u| u.path().to_owned())
        .unwrap_or_default()
}

/// Only the headers [`forwarded_request_header`] lets through; a caller's signature is never
/// among them, as the pool signs what it sends with this agent's own key.
fn forwarded_request_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, v) in headers {
        if forwarded_request_header(name.as_str()) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Proxies a request to a server and passes back its status, the headers
/// [`forwarded_response_header`] lets through and the body; a path that is not forwarded is
/// `404 Unsupported path`.
pub(super) async fn forward(State(fwd): State<Forwarder>, req: Request) -> HttpResult {
    if !is_forwarded(req.uri().path()) || !is_forwarded(&sent_path(req.uri().path())) {
        return Err(ApiError::NotFound(format!(
            "Unsupported path: {} {}",
            req.method(),
            req.uri().path()
        ))
        .into());
    }
    let path_and_query = path_and_query(req.uri());
    let (parts, body) = req.into_parts();
    let body = read_body(&parts, body).await?;
    let sent = if body.is_empty() && coalesce::shareable(&parts.method, parts.uri.query()) {
        let headers = forwarded_request_headers(&parts.headers);
        (fwd.blocking
            .get(&fwd.servers, &path_and_query, headers)
            .await)
            .map_err(|e| HttpError(ApiError::Internal(e)))
    } else {
        send(&fwd.servers, &parts, &path_and_query, body).await
    };
    Ok(answer(&parts, sent))
}

/// What the caller asked for, as a server is asked it: the path and query of `uri`.
pub(super) fn path_and_query(uri: &axum::http::Uri) -> String {
    uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
}

/// Sends `req` to a server as `path_and_query` (the agent's own endpoints that a server
/// answers for it, such as the event list, name another path than the caller's), and passes
/// the answer back as [`forward`] does.
pub(super) async fn relay(servers: &ServerPool, req: Request, path_and_query: &str) -> HttpResult {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts, body).await?;
    let sent = send(servers, &parts, path_and_query, body).await;
    Ok(answer(&parts, sent))
}

/// The request's body, bounded (a snapshot restore carries an archive, not a KV value).
async fn read_body(parts: &http::request::Parts, body: Body) -> Result<bytes::Bytes, HttpError> {
    let limit = if parts.uri.path() == "/v1/snapshot" {
        registry_api::snapshot::MAX_ARCHIVE
    } else {
        MAX_BODY
    };
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::TooLarge(format!("Request body too large, max size: {limit} bytes")).into()
    })
}

async fn send(
    servers: &ServerPool,
    parts: &http::request::Parts,
    path_and_query: &str,
    body: bytes::Bytes,
) -> Result<PoolResponse, HttpError> {
    let headers = forwarded_request_headers(&parts.headers);
    (servers
        .send(parts.method.clone(), path_and_query, headers, body)
        .await)
        .map_err(HttpError::from)
}

/// The caller's answer: the server's status, the headers [`forwarded_response_header`] lets
/// through and the body; or the error, with Consul's index headers on a read that has them.
fn answer(parts: &http::request::Parts, sent: Result<PoolResponse, HttpError>) -> Response {
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            let mut out = e.into_response();
            // A read Consul answers with index headers carries them on this error too, as
            // Consul's agent sends them when no server answers: index 1, no known leader.
            if parts.method == Method::GET && carries_index(parts.uri.path()) {
                let h = out.headers_mut();
                h.insert("X-Consul-Index", HeaderValue::from_static("1"));
                h.insert("X-Consul-KnownLeader", HeaderValue::from_static("false"));
                h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
            }
            return out;
        }
    };
    let mut out = Response::new(Body::from(resp.body));
    *out.status_mut() = resp.status;
    for (name, v) in &resp.headers {
        if forwarded_response_header(name.as_str()) {
            out.headers_mut().append(name.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_judged_as_sent() {
        for (raw, sent) in [
            (
                "/v1/kv/%2e%2e/internal/force-leave/x",
                "/v1/internal/force-leave/x",
            ),
            ("/v1/kv/../agent/leave", "/v1/agent/leave"),
            ("/v1/kv/%2E%2e/%2e%2E/v1/agent/self", "/v1/agent/self"),
            ("/v1/kv/a/./b", "/v1/kv/a/b"),
        ] {
            assert_eq!(sent_path(raw), sent, "{raw}");
            assert!(is_forwarded(raw));
        }
        assert!(!is_forwarded(&sent_path(
            "/v1/kv/%2e%2e/internal/force-leave/x"
        )));
        assert!(!is_forwarded(&sent_path("/v1/kv/../agent/leave")));
        assert!(is_forwarded(&sent_path("/v1/kv/a/./b")));
    }

    #[test]
    fn only_the_servers_public_api_is_forwarded() {
        for yes in [
            "/v1/kv/a",
            "/v1/catalog/services",
            "/v1/status/leader",
            "/v1/internal/ui/services",
            "/v1/internal/ui/nodes",
        ] {
            assert!(is_forwarded(yes), "{yes}");
        }
        for no in [
            "/v1/agent/self",
            "/v1/agent/nonsense",
            "/v1/internal/heartbeat",
            "/v1/internal/ui/nodes/../../heartbeat",
            "/v1/internal/ui/metrics-proxy/x",
            "/",
            "/metrics",
            "/v1",
            "/v2/kv/a",
        ] {
            assert!(!is_forwarded(no), "{no}");
        }
    }
}
