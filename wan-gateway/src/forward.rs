//! The request path: one shared keep-alive HTTP client that carries a request either to one of
//! this DC's servers or to a gateway of another DC, with failover and a time limit on every hop.
//!
//! As in the agent's server pool (`registry-client/src/servers.rs`, after Consul's
//! `agent/router/manager.go`), an HTTP error status is an answer and is passed back unchanged; only
//! a transport failure moves on to the next target. A write (anything but GET/HEAD) moves on only
//! when the connection could not be made at all: after a timeout or a connection dropped
//! mid-answer it may already have been applied, and sending it again elsewhere could apply it twice.
//!
//! With a shared key every attempt is signed anew (fresh time and nonce) over exactly the method,
//! path and query, and body it sends; the signature a request arrived with never travels on.

use crate::error::GatewayError;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use registry_api::auth::{self, SharedKey};
use registry_api::forward::{
    base_url_over, forwarded_request_header, forwarded_response_header, may_retry_elsewhere,
    read_body, BodyError, MAX_ANSWER,
};
use registry_api::limits::{forward_timeout, Hop};
use registry_api::tls::{Expect, Tls};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long to wait for a TCP connection before moving on: short, so that a host that is down
/// costs at most this per target (see [`crate::GatewayHandle`] for the resulting error bound).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub use registry_api::limits::{HOPS_HEADER, MAX_BODY, MAX_HOPS};
/// Bound on forwarded requests in flight through one gateway; beyond it requests get 503.
pub const MAX_IN_FLIGHT: usize = 4096;

/// The time limit of the next hop of a request with query string `query` that has already taken
/// `hops` gateway hops (the rule shared with the server and the agent,
/// [`registry_api::limits::forward_timeout`]): inner hops give up first.
pub fn hop_timeout(query: Option<&str>, hops: u32) -> Duration {
    forward_timeout(query, Hop::Gateway { hops_taken: hops })
}

/// A request on its way to the next hop.
#[derive(Clone, Debug)]
pub struct OutboundRequest {
    /// Its method.
    pub method: Method,
    /// Path and query string, as received (starts with `/`).
    pub path_and_query: String,
    /// The headers that travel (already filtered, hop count already set).
    pub headers: HeaderMap,
    /// The body, read in full (bounded by [`MAX_BODY`]).
    pub body: Bytes,
    /// Limit on this hop.
    pub timeout: Duration,
}

impl OutboundRequest {
    /// Builds the next hop of a request that arrived with `headers` after `hops` hops: keeps the
    /// headers that matter and counts one more hop.
    pub fn new(
        method: Method,
        path_and_query: String,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
        hops: u32,
    ) -> OutboundRequest {
        let mut out = HeaderMap::new();
        for (name, value) in headers {
            if forwarded_request_header(name.as_str()) {
                out.append(name.clone(), value.clone());
            }
        }
        out.insert(
            HeaderName::from_static(HOPS_HEADER),
            HeaderValue::from(hops + 1),
        );
        OutboundRequest {
            timeout: hop_timeout(query, hops),
            method,
            path_and_query,
            headers: out,
            body,
        }
    }
}

/// An answer read in full, with only the headers that travel back.
#[derive(Debug)]
pub struct Answer {
    /// Status code, unchanged.
    pub status: StatusCode,
    /// Content-Type and the `X-Consul-*` headers.
    pub headers: HeaderMap,
    /// Body, unchanged.
    pub body: Bytes,
}

/// The shared client and this DC's server list.
#[derive(Debug)]
pub struct Forwarder {
    /// The client for this DC's servers: connections are kept alive and reused, so a
    /// forwarded request costs no handshake. Over TLS it expects `server.<dc>.<domain>`.
    http: reqwest::Client,
    /// The client for other gateways (and the exchange loop); over TLS any certificate of
    /// the federation's CA is accepted (a gateway of another federation is refused).
    wan: reqwest::Client,
    /// Gateways are dialled as `https://host:port` (any TLS setting).
    https: bool,
    /// This DC's servers named by a bare `host:port` are dialled as `https://`
    /// (`--verify-outgoing`).
    servers_https: bool,
    /// This DC's servers' base URLs. A std lock: it is held only to clone the `Arc`, never across
    /// an await, and replaced whole by [`Forwarder::set_servers`].
    servers: RwLock<Arc<Vec<String>>>,
    /// Index of the server that answered last, tried first.
    preferred: AtomicUsize,
    /// The shared key every outgoing request is signed with (`--encrypt`).
    key: Option<SharedKey>,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The target's base URL and the path do not make a URL.
    #[error("invalid URL: {0}")]
    Url(#[from] url::ParseError),
    /// The transport failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The answer was over [`MAX_ANSWER`].
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

impl From<BodyError> for SendError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Http(e) => SendError::Http(e),
            BodyError::TooLarge(limit) => SendError::TooLarge(limit),
        }
    }
}

impl Forwarder {
    /// A forwarder for the given servers (`http://host:port` or bare `host:port`) that signs what
    /// it sends with `key`, if any.
    pub fn new(
        servers: &[String],
        key: Option<SharedKey>,
        tls: Option<&Arc<Tls>>,
        datacenter: &str,
    ) -> Result<Forwarder, reqwest::Error> {
        let client = |expect: Expect| {
            registry_api::tls::client_builder(tls.map(|t| (t, expect)))
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_idle_timeout(registry_api::client::POOL_IDLE_TIMEOUT)
                .tcp_nodelay(true)
                .build()
        };
        let http = client(Expect::Server {
            datacenter: datacenter.to_string(),
        })?;
        let wan = client(Expect::SignedByCa)?;
        Ok(Forwarder {
            http,
            wan,
            // A federation that uses TLS uses it on every gateway: one with any TLS setting
            // dials the others over it (their certificates checked against the CA).
            https: tls.is_some(),
            servers: RwLock::new(Arc::new(
                servers
                    .iter()
                    .map(|s| base_url_over(s, tls.is_some_and(|t| t.settings().dials_tls())))
                    .collect(),
            )),
            servers_https: tls.is_some_and(|t| t.settings().dials_tls()),
            preferred: AtomicUsize::new(0),
            key,
        })
    }

    /// The client for other gateways (the exchange loop uses it too), and whether it dials
    /// them over TLS.
    pub fn wan_client(&self) -> (&reqwest::Client, bool) {
        (&self.wan, self.https)
    }

    /// Replaces this DC's server list.
    pub fn set_servers(&self, servers: &[String]) {
        let list = Arc::new(
            servers
                .iter()
                .map(|s| base_url_over(s, self.servers_https))
                .collect(),
        );
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is whole.
        *self.servers.write().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// The current server list.
    fn servers(&self) -> Arc<Vec<String>> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `req` to one of this DC's servers, starting with the one that answered last and
    /// failing over to the next on a transport error. No server answering is
    /// [`GatewayError::Unreachable`].
    pub async fn to_servers(&self, req: &OutboundRequest) -> Result<Answer, GatewayError> {
        let servers = self.servers();
        if servers.is_empty() {
            tracing::warn!("no servers configured for this datacenter");
            return Err(GatewayError::Unreachable);
        }
        let first = self.preferred.load(Ordering::Relaxed) % servers.len();
        for attempt in 0..servers.len() {
            let i = (first + attempt) % servers.len();
            match self.send(&self.http, &servers[i], req).await {
                Ok(answer) => {
                    if attempt > 0 {
                        tracing::info!(server = %servers[i], "failed over to another server");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) => {
                    tracing::debug!(server = %servers[i], path = %registry_api::acl::redact_token(&req.path_and_query), error = %e, "server unreachable");
                    if !may_retry(&e, req) {
                        return Err(GatewayError::Unreachable);
                    }
                }
            }
        }
        Err(GatewayError::Unreachable)
    }

    /// Sends `req` to the gateways `addrs` (`host:port`, best first) in turn until one answers;
    /// `on_failure` is told of each that failed so routing can avoid it. None answering is
    /// [`GatewayError::Unreachable`].
    pub async fn to_gateways(
        &self,
        addrs: &[String],
        req: &OutboundRequest,
        mut on_failure: impl FnMut(&str),
    ) -> Result<Answer, GatewayError> {
        for addr in addrs {
            let base = registry_api::forward::base_url_over(addr, self.https);
            match self.send(&self.wan, &base, req).await {
                // A 503 is a refusal before anything was done: the gateway is stopping
                // (its kept-alive connections answer so until they close) or full, or a
                // server behind it is past its connection bound. Another gateway of that DC
                // may answer; with none left it is the DC that cannot be reached (Consul's
                // 500), not this one gateway's state.
                Ok(answer) if answer.status == StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::info!(gateway = %addr, path = %registry_api::acl::redact_token(&req.path_and_query), "gateway refused (503); trying the next");
                    on_failure(addr);
                }
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::info!(gateway = %addr, path = %registry_api::acl::redact_token(&req.path_and_query), error = %e, "gateway unreachable");
                    on_failure(addr);
                    if !may_retry(&e, req) {
                        return Err(GatewayError::Unreachable);
                    }
                }
            }
        }
        Err(GatewayError::Unreachable)
    }

    /// One attempt against one base URL, reading the whole answer within the hop's limit.
    async fn send(
        &self,
        client: &reqwest::Client,
        base: &str,
        req: &OutboundRequest,
    ) -> Result<Answer, SendError> {
        let url = reqwest::Url::parse(&format!("{base}{}", req.path_and_query))?;
        let mut headers = req.headers.clone();
        // Signed over the path and query exactly as the URL will put them on the wire.
        auth::sign_into(
            self.key.as_ref(),
            &mut headers,
            req.method.as_str(),
            &auth::wire_path_and_query(&url),
            &req.body,
        );
        let resp = client
            .request(req.method.clone(), url)
            .headers(headers)
            .body(req.body.clone())
            .timeout(req.timeout)
            .send()
            .await?;
        let status = resp.status();
        let mut headers = HeaderMap::new();
        for (name, value) in resp.headers() {
            if forwarded_response_header(name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let body = Bytes::from(read_body(resp, MAX_ANSWER).await?);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// Whether a failed attempt may be repeated against the next target (see the module comment).
fn may_retry(e: &SendError, req: &OutboundRequest) -> bool {
    match e {
        SendError::Url(_) => true,
        SendError::TooLarge(_) => false,
        SendError::Http(e) => may_retry_elsewhere(e.is_connect() || e.is_builder(), &req.method),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway on 127.0.0.1:0 that answers every request with `status`.
    async fn gateway_answering(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().fallback(move || async move {
            (StatusCode::from_u16(status).unwrap(), "from the gateway")
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A 503 (a stopping or full gateway) moves on to the next gateway; with none left it
    /// is the DC that is unreachable. Any other status is an answer.
    #[tokio::test]
    async fn a_refusing_gateway_is_passed_over() {
        let fwd = Forwarder::new(&[], None, None, "dc1").unwrap();
        let req = OutboundRequest::new(
            Method::GET,
            "/v1/catalog/services".into(),
            None,
            &HeaderMap::new(),
            Bytes::new(),
            1,
        );
        let (refusing, answering) = (gateway_answering(503).await, gateway_answering(404).await);
        let mut failed = Vec::new();
        let answer = fwd
            .to_gateways(&[refusing.clone(), answering], &req, |a| {
                failed.push(a.to_string())
            })
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(failed, std::slice::from_ref(&refusing));
        let none = fwd.to_gateways(&[refusing], &req, |_| {}).await;
        assert!(matches!(none, Err(GatewayError::Unreachable)), "{none:?}");
    }

    #[test]
    fn only_the_headers_that_matter_travel_and_hops_are_counted() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-consul-token", HeaderValue::from_static("t"));
        h.insert("cookie", HeaderValue::from_static("c"));
        h.insert("host", HeaderValue::from_static("elsewhere"));
        h.insert(
            auth::SIGNATURE_HEADER,
            HeaderValue::from_static("v1 1 00 AA"),
        );
        let req = OutboundRequest::new(Method::GET, "/v1/x".into(), None, &h, Bytes::new(), 1);
        assert_eq!(req.headers.len(), 3);
        assert_eq!(req.headers[HOPS_HEADER], "2");
        assert!(req.headers.get("cookie").is_none());
        assert!(req.headers.get(auth::SIGNATURE_HEADER).is_none());
    }
}
