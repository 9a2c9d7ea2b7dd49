//! The agent's way to the servers: a list of server base URLs, tried in turn.
//!
//! Consul's agents keep a list of known servers and send each RPC to one of them, moving on
//! to the next when one fails (`agent/router/manager.go`). Here every request goes to the
//! server that last answered well; the next server is tried on a transport failure (connect
//! error, timeout, a connection dropped mid-answer) and on an answer that says this server
//! cannot serve the request now, until each was tried once:
//!
//! - `500 No cluster leader` from any request: a server cut off from the others says this,
//!   and another server may well know the leader. The server did not apply the request, so
//!   this is safe to retry elsewhere even for a write.
//! - any `5xx` from the agent's own idempotent requests (anti-entropy syncs and reads), and
//!   any non-2xx from heartbeats ([`ServerPool::put_json_within`]): an agent that stayed on a
//!   server that drops its heartbeats would be marked critical by the real leader.
//!
//! Any other status of a forwarded request is the cluster's answer (a 404 or a 400 would be
//! the same elsewhere) and is passed back as is.
//!
//! With a shared key ([`ServerPool::with_key`]) every request the pool sends carries a
//! signature over exactly what is sent ([`registry_api::auth`]); a signature that came with
//! the caller's headers is dropped, never passed on.
//!
//! Owns: the list of servers, which one to try, and signing. Must not touch: the forwarding
//! rules shared with the server and the gateway (time limits, headers, base URLs, when a
//! failed request may go elsewhere): those are [`registry_api::limits`] and
//! [`registry_api::forward`].

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use registry_api::auth::{self, SharedKey};
use registry_api::forward;
use registry_api::limits::{self, Hop};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a TCP connection before moving to the next server; short so that
/// failover is quick (servers are on the same LAN).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long [`ServerPool::probe`] waits for a server to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most servers [`ServerPool::add_server`] adds to those the pool started with: every one is
/// tried in turn by every request that fails over, so joins must not grow the list without end.
pub const MAX_JOINED_SERVERS: usize = 64;
/// Longest error body looked at for [`registry_api::error::NO_LEADER`]; the servers' texts
/// are short, and a large body is some other answer.
const MAX_ERROR_BODY_SCAN: usize = 4096;

/// Which answers make the pool try the next server (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailOver {
    /// Forwarded requests: only `500 No cluster leader`.
    NoLeader,
    /// The agent's own idempotent requests: any 5xx.
    ServerError,
    /// Heartbeats: anything but 2xx.
    NotSuccess,
}

impl FailOver {
    /// What the request's signature is for. Only the agent's own heartbeats are signed as
    /// heartbeats: a client's request this agent forwards is signed as a forward, so that no
    /// client can get a heartbeat (or anything else) signed by going through the agent.
    fn purpose(self) -> auth::Purpose {
        match self {
            FailOver::NotSuccess => auth::Purpose::Heartbeat,
            FailOver::NoLeader | FailOver::ServerError => auth::Purpose::Forward,
        }
    }

    /// Whether `resp` is a reason to try the next server.
    fn rejects(self, resp: &PoolResponse) -> bool {
        match self {
            FailOver::NoLeader => is_no_leader(resp),
            FailOver::ServerError => resp.status.is_server_error(),
            FailOver::NotSuccess => !resp.status.is_success(),
        }
    }
}

/// Whether a server answered Consul's `500 No cluster leader` (Consul words it so, possibly
/// behind a prefix such as `rpc error making call: `).
fn is_no_leader(resp: &PoolResponse) -> bool {
    resp.status == StatusCode::INTERNAL_SERVER_ERROR
        && resp.body.len() <= MAX_ERROR_BODY_SCAN
        && std::str::from_utf8(&resp.body)
            .is_ok_and(|text| text.contains(registry_api::error::NO_LEADER))
}

/// Why a request through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool was built with no server.
    #[error("No known Consul servers")]
    NoServers,
    /// Every server was tried and none answered.
    #[error("all servers unreachable: {last_error}")]
    Unreachable {
        /// What the last attempt failed with.
        last_error: String,
    },
    /// A server answered with an error status (only from the typed helpers).
    #[error("server answered {status}: {body}")]
    Status {
        /// The status code.
        status: StatusCode,
        /// The plain-text reason the server gave.
        body: String,
    },
    /// A server's answer could not be decoded (only from the typed helpers).
    #[error("bad answer from server: {0}")]
    Decode(String),
    /// A server address that is not a usable base URL.
    #[error("invalid server address {0:?}")]
    InvalidAddress(String),
    /// A probed address answered without proving the pool's shared key.
    #[error("{0}: the answer is not signed with this agent's key (--encrypt): not a server of this cluster, or one with another key")]
    Unproven(String),
    /// The pool already holds [`MAX_JOINED_SERVERS`] servers added by joins.
    #[error("this agent already joined {MAX_JOINED_SERVERS} servers, the most it keeps; restart it with the right --retry-join list")]
    TooManyServers,
}

/// A server's answer, read in full.
#[derive(Debug, Clone)]
pub struct PoolResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
}

/// The servers an agent talks to. Cheap to clone: clones share the connection pool and the
/// memory of which server answered last.
#[derive(Clone, Debug)]
pub struct ServerPool {
    /// Shared between clones.
    inner: Arc<PoolInner>,
}

/// What the clones of a [`ServerPool`] share.
#[derive(Debug)]
struct PoolInner {
    /// Base URLs without a trailing slash (`http://host:port`); grows by
    /// [`ServerPool::add_server`] (`PUT /v1/agent/join`). A std lock, held only to copy or
    /// push, never across an `.await`.
    servers: std::sync::RwLock<Vec<String>>,
    /// Index of the server that last answered well, tried first.
    preferred: AtomicUsize,
    /// How many servers the pool started with (the rest came from joins).
    initial: usize,
    /// One client for all requests, so connections are kept alive between them.
    http: reqwest::Client,
    /// The shared key (`--encrypt`) every request is signed with; `None` sends unsigned
    /// requests (the servers then accept them only if they have no key either).
    key: Option<SharedKey>,
    /// Bare `host:port` servers are dialled as `https://` (`--verify-outgoing`).
    https: bool,
}

impl ServerPool {
    /// A pool of servers given by base URL (`http://host:port`). An empty list is allowed:
    /// every request then fails with [`PoolError::NoServers`].
    pub fn new(base_urls: Vec<String>) -> Result<ServerPool, PoolError> {
        let servers = base_urls
            .iter()
            .map(|raw| checked_base_url(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let http = registry_api::tls::client_builder(None)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(registry_api::client::POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| PoolError::InvalidAddress(e.to_string()))?;
        Ok(ServerPool {
            inner: Arc::new(PoolInner {
                initial: servers.len(),
                servers: std::sync::RwLock::new(servers),
                preferred: AtomicUsize::new(0),
                http,
                key: None,
                https: false,
            }),
        })
    }

    /// This pool, over TLS (`--verify-outgoing`): servers named by `host:port` are dialled
    /// as `https://`, their certificate checked as a server of `datacenter`'s (with
    /// `--verify-server-hostname`: named `server.<dc>.<domain>`), ours shown. Without
    /// `tls`, or when it does not dial over TLS, the pool is unchanged. Set before handing
    /// the pool out, as [`ServerPool::with_key`].
    pub fn with_tls(
        self,
        tls: Option<&Arc<registry_api::tls::Tls>>,
        datacenter: &str,
    ) -> Result<ServerPool, PoolError> {
        let Some(tls) = tls.filter(|t| t.settings().dials_tls()) else {
            return Ok(self);
        };
        let expect = registry_api::tls::Expect::Server {
            datacenter: datacenter.to_string(),
        };
        let http = registry_api::tls::client_builder(Some((tls, expect)))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(registry_api::client::POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| PoolError::InvalidAddress(e.to_string()))?;
        let inner = &self.inner;
        let servers = self
            .servers()
            .into_iter()
            .map(|base| match base.strip_prefix("http://") {
                Some(rest) => format!("https://{rest}"),
                None => base,
            })
            .collect();
        Ok(ServerPool {
            inner: Arc::new(PoolInner {
                servers: std::sync::RwLock::new(servers),
                preferred: AtomicUsize::new(inner.preferred.load(Ordering::Relaxed)),
                initial: inner.initial,
                http,
                key: inner.key.clone(),
                https: true,
            }),
        })
    }

    /// The base URL of a server given as `host:port` (or a URL).
    fn base_of(&self, addr: &str) -> Result<String, PoolError> {
        checked_base_url(&forward::base_url_over(addr, self.inner.https))
    }

    /// This pool, signing every request with `key` from now on (`None`: unsigned). Clones
    /// made before this call keep their old setting, so set the key before handing the
    /// pool out.
    pub fn with_key(self, key: Option<SharedKey>) -> ServerPool {
        let inner = &self.inner;
        ServerPool {
            inner: Arc::new(PoolInner {
                servers: std::sync::RwLock::new(self.servers()),
                preferred: AtomicUsize::new(inner.preferred.load(Ordering::Relaxed)),
                initial: inner.initial,
                http: inner.http.clone(),
                key,
                https: inner.https,
            }),
        }
    }

    /// Whether requests are signed with a shared key.
    pub fn signs_requests(&self) -> bool {
        self.inner.key.is_some()
    }

    /// A pool from `--retry-join` addresses (`HOST:PORT`, the servers' RPC addresses): the
    /// servers answer plain HTTP on their RPC port too.
    pub fn from_retry_join(addrs: &[String]) -> Result<ServerPool, PoolError> {
        ServerPool::new(addrs.iter().map(|a| forward::base_url(a)).collect())
    }

    /// The servers' base URLs.
    pub fn servers(&self) -> Vec<String> {
        self.inner
            .servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds a server (`HOST:PORT`, its RPC address, or a base URL) that every clone of this
    /// pool then uses; returns whether it was new. Consul's agents learn servers the same
    /// way from a join (`PUT /v1/agent/join/:address`). At most [`MAX_JOINED_SERVERS`] are
    /// added; more are [`PoolError::TooManyServers`].
    pub fn add_server(&self, addr: &str) -> Result<bool, PoolError> {
        let base = self.base_of(addr)?;
        let mut servers = self
            .inner
            .servers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if servers.contains(&base) {
            return Ok(false);
        }
        if servers.len() >= self.inner.initial + MAX_JOINED_SERVERS {
            return Err(PoolError::TooManyServers);
        }
        servers.push(base);
        Ok(true)
    }

    /// Asks the server at `addr` (as [`ServerPool::add_server`] takes it, a server's RPC
    /// address) who leads, signed like everything the pool sends, so that a join is refused
    /// for an address where no server answers 2xx. With a key, the answer must also carry the
    /// server's signature over it, bound to this probe ([`SharedKey::verify_probe_reply`]):
    /// only a server holding the key makes one, so nothing else joins the pool and receives
    /// the agent's signed requests. Without a key any 2xx is taken (nothing is secret then).
    pub async fn probe(&self, addr: &str) -> Result<(), PoolError> {
        let base = self.base_of(addr)?;
        let req = self
            .build_request(
                &base,
                auth::Purpose::Forward,
                &Method::GET,
                auth::PROBE_PATH,
                &HeaderMap::new(),
                &Bytes::new(),
                PROBE_TIMEOUT,
            )
            .map_err(|e| PoolError::Unreachable {
                last_error: format!("{base}: {e}"),
            })?;
        let probe_signature = req
            .headers()
            .get(auth::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let resp = self
            .inner
            .http
            .execute(req)
            .await
            .map_err(|e| PoolError::Unreachable {
                last_error: format!("{base}: {e}"),
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = forward::read_body(resp, MAX_ERROR_BODY_SCAN)
            .await
            .unwrap_or_default();
        let answer = ok_status(PoolResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body),
        })?;
        if let (Some(key), Some(probe_signature)) = (&self.inner.key, probe_signature) {
            let reply_signature = headers
                .get(auth::SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok());
            key.verify_probe_reply(&probe_signature, reply_signature, &answer.body)
                .map_err(|e| {
                    tracing::warn!(server = %base, error = %e, "join refused: the answer does not prove the shared key");
                    PoolError::Unproven(base.clone())
                })?;
        }
        Ok(())
    }

    /// Sends a request to the server that last answered well, failing over to the others on
    /// transport errors and on `500 No cluster leader`; any other answer is returned as is.
    /// `path_and_query` starts with `/`. `headers` are sent as given, except a signature
    /// header, which the pool makes anew (or drops, without a key).
    ///
    /// After a transport error, a request is sent to another server only when it cannot
    /// have been applied: the connection was never made, or the method is GET/HEAD. A
    /// write that timed out may have been applied, and sending it elsewhere
    /// could apply it twice (a second session, a failed `cas`). A `No cluster leader`
    /// answer means the server applied nothing, so any request may go on to the next.
    /// When every server refused that way, the last such answer is returned.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<PoolResponse, PoolError> {
        self.send_opts(
            method,
            path_and_query,
            headers,
            body,
            None,
            false,
            FailOver::NoLeader,
        )
        .await
    }

    /// Builds one attempt's request to `base`, signed when the pool has a key. The
    /// signature covers the path and query as the URL parser left them, which is what goes
    /// on the wire (it may percent-encode characters the caller sent raw).
    #[allow(clippy::too_many_arguments)]
    fn build_request(
        &self,
        base: &str,
        purpose: auth::Purpose,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &Bytes,
        timeout: Duration,
    ) -> Result<reqwest::Request, reqwest::Error> {
        let mut headers = headers.clone();
        // A signature the caller sent is not ours to pass on: the servers must see only
        // what this agent vouches for.
        headers.remove(auth::SIGNATURE_HEADER);
        let mut req = self
            .inner
            .http
            .request(method.clone(), format!("{base}{path_and_query}"))
            .headers(headers)
            .body(body.clone())
            .build()?;
        if let Some(key) = &self.inner.key {
            let signed_pq = auth::wire_path_and_query(req.url());
            auth::sign_into_for(
                Some(key),
                purpose,
                req.headers_mut(),
                method.as_str(),
                &signed_pq,
                body,
            );
        }
        *req.timeout_mut() = Some(timeout);
        Ok(req)
    }

    /// [`ServerPool::send`] with the knobs the agent's own requests set: a time limit per
    /// server instead of the forwarding one, `repeatable` for writes that are safe to apply
    /// twice (the agent's registrations of its own state), and which answers fail over.
    #[allow(clippy::too_many_arguments)]
    async fn send_opts(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout_override: Option<Duration>,
        repeatable: bool,
        fail_over: FailOver,
    ) -> Result<PoolResponse, PoolError> {
        // A copy: a join may add a server meanwhile, which the next request uses.
        let servers = self.servers();
        if servers.is_empty() {
            return Err(PoolError::NoServers);
        }
        let timeout = timeout_override.unwrap_or_else(|| request_timeout(path_and_query));
        let first = self.inner.preferred.load(Ordering::Relaxed) % servers.len();
        let mut last_error = String::new();
        // The last answer that sent us on to the next server, returned if none does better.
        let mut last_refusal: Option<PoolResponse> = None;
        for attempt in 0..servers.len() {
            let i = (first + attempt) % servers.len();
            let result = async {
                let req = self.build_request(
                    &servers[i],
                    fail_over.purpose(),
                    &method,
                    path_and_query,
                    &headers,
                    &body,
                    timeout,
                )?;
                let resp = self.inner.http.execute(req).await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                // Bounded: a server (or whatever answers at its address) cannot make the
                // agent buffer without end.
                let body = Bytes::from(forward::read_body(resp, forward::MAX_ANSWER).await?);
                Ok::<_, forward::BodyError>(PoolResponse {
                    status,
                    headers,
                    body,
                })
            }
            .await;
            match result {
                Ok(resp) if fail_over.rejects(&resp) => {
                    tracing::debug!(
                        server = %servers[i],
                        path = %registry_api::acl::redact_token(path_and_query),
                        status = %resp.status,
                        "server cannot serve this now; trying the next"
                    );
                    last_refusal = Some(resp);
                }
                Ok(resp) => {
                    if i != first {
                        tracing::info!(server = %servers[i], "failed over to another server");
                    }
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => {
                    tracing::debug!(server = %servers[i], path = %registry_api::acl::redact_token(path_and_query), error = %registry_api::acl::redact_token(&e.to_string()), "server unreachable");
                    // A `?token=` in the URL reqwest's error repeats is a secret.
                    last_error = registry_api::acl::redact_token(&format!("{}: {e}", servers[i]))
                        .into_owned();
                    let connect_failed =
                        matches!(&e, forward::BodyError::Http(h) if h.is_connect());
                    if !repeatable && !forward::may_retry_elsewhere(connect_failed, &method) {
                        // This server may have applied the write: no other server gets it,
                        // and the caller must not take an earlier refusal for the outcome.
                        return Err(PoolError::Unreachable { last_error });
                    }
                }
            }
        }
        match last_refusal {
            Some(resp) => Ok(resp),
            None => Err(PoolError::Unreachable { last_error }),
        }
    }

    /// GET `path` and decode a JSON answer; an error status is [`PoolError::Status`].
    /// A 5xx answer sends the request on to the next server.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, PoolError> {
        self.get_json_as(path, None).await
    }

    /// [`ServerPool::get_json`] carrying `token` (`X-Consul-Token`; `None`: the anonymous
    /// token).
    pub async fn get_json_as<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<T, PoolError> {
        let resp = self.get_with_token(path, token, None).await?;
        let resp = ok_status(resp)?;
        serde_json::from_slice(&resp.body).map_err(|e| PoolError::Decode(e.to_string()))
    }

    /// GET `path` carrying `token`, any answer returned as it is (a 5xx sends the request on
    /// to the next server first); `per_server` replaces the usual time limit.
    pub async fn get_with_token(
        &self,
        path: &str,
        token: Option<&str>,
        per_server: Option<Duration>,
    ) -> Result<PoolResponse, PoolError> {
        self.send_opts(
            Method::GET,
            path,
            token_headers(token),
            Bytes::new(),
            per_server,
            true,
            FailOver::ServerError,
        )
        .await
    }

    /// PUT `body` as JSON to `path`; an error status is [`PoolError::Status`].
    ///
    /// Only for the agent's own idempotent writes (catalog registrations of
    /// its state): these fail over on any transport error and on any 5xx; a 4xx is the
    /// catalog refusing the entry and is returned.
    pub async fn put_json<T: Serialize>(&self, path: &str, body: &T) -> Result<(), PoolError> {
        self.put_json_as(path, body, None).await
    }

    /// [`ServerPool::put_json`] carrying `token` (`X-Consul-Token`).
    pub async fn put_json_as<T: Serialize>(
        &self,
        path: &str,
        body: &T,
        token: Option<&str>,
    ) -> Result<(), PoolError> {
        self.put_json_opts(path, body, None, FailOver::ServerError, token)
            .await
    }

    /// A heartbeat: [`ServerPool::put_json`] with a per-server time limit, so that one
    /// server that accepts connections but never answers cannot hold up a
    /// heartbeat past the node timeout, and failing over on any non-2xx answer: a server
    /// that could not pass the heartbeat on to a leader says so with an error, and the
    /// next server may reach one.
    pub async fn put_json_within<T: Serialize>(
        &self,
        path: &str,
        body: &T,
        per_server: Option<Duration>,
    ) -> Result<(), PoolError> {
        self.put_json_within_as(path, body, per_server, None).await
    }

    /// [`ServerPool::put_json_within`] carrying `token` (`X-Consul-Token`).
    pub async fn put_json_within_as<T: Serialize>(
        &self,
        path: &str,
        body: &T,
        per_server: Option<Duration>,
        token: Option<&str>,
    ) -> Result<(), PoolError> {
        self.put_json_opts(path, body, per_server, FailOver::NotSuccess, token)
            .await
    }

    async fn put_json_opts<T: Serialize>(
        &self,
        path: &str,
        body: &T,
        per_server: Option<Duration>,
        fail_over: FailOver,
        token: Option<&str>,
    ) -> Result<(), PoolError> {
        let body = serde_json::to_vec(body).map_err(|e| PoolError::Decode(e.to_string()))?;
        let mut headers = token_headers(token);
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let resp = self
            .send_opts(
                Method::PUT,
                path,
                headers,
                Bytes::from(body),
                per_server,
                true,
                fail_over,
            )
            .await?;
        ok_status(resp).map(|_| ())
    }
}

/// Headers carrying `token` as `X-Consul-Token` (none for `None`, or for a token that is not
/// a valid header value: the request then goes as the anonymous token, which is refused
/// rather than allowed).
pub fn token_headers(token: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(v) = token.and_then(|t| http::HeaderValue::from_str(t).ok()) {
        let mut v = v;
        v.set_sensitive(true);
        headers.insert(registry_api::acl::TOKEN_HEADER, v);
    }
    headers
}

/// A server's base URL, checked: `http(s)://host[:port]`, no trailing slash.
fn checked_base_url(raw: &str) -> Result<String, PoolError> {
    let trimmed = raw.trim().trim_end_matches('/').to_owned();
    match url::Url::parse(&trimmed) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.has_host() => Ok(trimmed),
        _ => Err(PoolError::InvalidAddress(raw.to_string())),
    }
}

/// Turns a non-2xx answer into [`PoolError::Status`].
fn ok_status(resp: PoolResponse) -> Result<PoolResponse, PoolError> {
    if resp.status.is_success() {
        Ok(resp)
    } else {
        Err(PoolError::Status {
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        })
    }
}

/// The time limit of one request: the agent's hop of [`limits::forward_timeout`], longer than
/// the server's and the gateways' limits so that the far side gives its clear error first.
fn request_timeout(path_and_query: &str) -> Duration {
    limits::forward_timeout(limits::query_of(path_and_query), Hop::Agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_queries_get_their_wait_plus_slack() {
        use registry_api::limits::{DEFAULT_WAIT, MAX_WAIT};
        let ordinary = Duration::from_secs(30);
        let slack = Duration::from_secs(20);
        assert_eq!(request_timeout("/v1/catalog/nodes"), ordinary);
        assert_eq!(request_timeout("/v1/kv/a?recurse"), ordinary);
        // `index=0` answers at once (Consul), so it gets the ordinary limit.
        assert_eq!(
            request_timeout("/v1/catalog/nodes?index=0&wait=1m"),
            ordinary
        );
        let t = request_timeout("/v1/catalog/nodes?index=5&wait=32s");
        assert_eq!(t, Duration::from_secs(34) + slack);
        let t = request_timeout("/v1/catalog/nodes?index=5");
        assert_eq!(t, DEFAULT_WAIT + DEFAULT_WAIT / 16 + slack);
        let t = request_timeout("/v1/catalog/nodes?index=5&wait=1h");
        assert_eq!(t, MAX_WAIT + MAX_WAIT / 16 + slack);
    }

    #[test]
    fn joins_add_at_most_64_servers_to_those_given() {
        let pool = ServerPool::new(vec!["http://10.0.0.1:8300".into()]).unwrap();
        for i in 0..MAX_JOINED_SERVERS {
            assert!(pool.add_server(&format!("10.1.0.{i}:8300")).unwrap());
        }
        // One already known is no addition.
        assert!(!pool.add_server("10.1.0.0:8300").unwrap());
        assert!(matches!(
            pool.add_server("10.2.0.1:8300"),
            Err(PoolError::TooManyServers)
        ));
        assert_eq!(pool.servers().len(), 1 + MAX_JOINED_SERVERS);
        // The bound survives setting the key.
        let keyed = pool.with_key(None);
        assert!(matches!(
            keyed.add_server("10.2.0.1:8300"),
            Err(PoolError::TooManyServers)
        ));
    }

    fn answer(status: u16, body: &str) -> PoolResponse {
        PoolResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn which_answers_send_a_request_to_the_next_server() {
        let no_leader = answer(500, "No cluster leader");
        let wrapped = answer(500, "rpc error making call: No cluster leader\n");
        let other_500 = answer(500, "boom");
        let unavailable = answer(503, "");
        let not_found = answer(404, "no such key");
        let ok = answer(200, "No cluster leader");
        // Forwarded requests: only a leaderless server is left for another.
        assert!(FailOver::NoLeader.rejects(&no_leader));
        assert!(FailOver::NoLeader.rejects(&wrapped));
        for a in [&other_500, &unavailable, &not_found, &ok] {
            assert!(!FailOver::NoLeader.rejects(a), "{a:?}");
        }
        // The agent's own syncs: any server error.
        for a in [&no_leader, &other_500, &unavailable] {
            assert!(FailOver::ServerError.rejects(a), "{a:?}");
        }
        assert!(!FailOver::ServerError.rejects(&not_found));
        // Heartbeats: anything but success.
        assert!(FailOver::NotSuccess.rejects(&not_found));
        assert!(!FailOver::NotSuccess.rejects(&ok));
        // A large body is some other answer, not looked through.
        let big = answer(
            500,
            &format!("{}{}", "x".repeat(MAX_ERROR_BODY_SCAN), "No cluster leader"),
        );
        assert!(!FailOver::NoLeader.rejects(&big));
    }

    #[test]
    fn addresses_must_be_urls() {
        assert!(ServerPool::new(vec!["not a url".into()]).is_err());
        let pool = ServerPool::from_retry_join(&["10.0.0.1:8300".into()]).unwrap();
        assert_eq!(pool.servers(), ["http://10.0.0.1:8300"]);
        // A join adds a server once, seen by every clone; a bad address is refused.
        let clone = pool.clone();
        assert!(pool.add_server("10.0.0.2:8300").unwrap());
        assert!(!pool.add_server("http://10.0.0.2:8300/").unwrap());
        assert_eq!(
            clone.servers(),
            ["http://10.0.0.1:8300", "http://10.0.0.2:8300"]
        );
        assert!(pool.add_server("a b:1").is_err());
    }
}
