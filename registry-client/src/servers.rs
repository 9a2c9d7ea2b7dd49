//! The agent's way to the servers: a list of server base URLs, tried in turn.
//!
//! Consul's agents keep a list of known servers and send each RPC to one of them, moving on
//! to the next when one fails (`agent/router/manager.go`). Here every request goes to the
//! server that answered last; on a transport failure (connect error, timeout, a connection
//! dropped mid-answer) the next server is tried, until each was tried once. An HTTP error
//! status is an answer, not a failure: it is passed back as is (a follower's "No cluster
//! leader" is the cluster's answer and would be the same elsewhere).

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a TCP connection before moving to the next server; short so that
/// failover is quick (servers are on the same LAN).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Limit on a request that is not a blocking query.
/// Longer than the server's and the gateways' own limits on a forwarded
/// request, so that the far side gives its clear error before we give up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Blocking queries: Consul's default and largest `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// See [`DEFAULT_WAIT`].
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// Slack on top of a blocking query's wait and jitter (wait/16) before we give up on it.
const BLOCKING_SLACK: Duration = Duration::from_secs(20);

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
    /// Base URLs without a trailing slash (`http://host:port`).
    servers: Vec<String>,
    /// Index of the server that answered last, tried first.
    preferred: AtomicUsize,
    /// One client for all requests, so connections are kept alive between them.
    http: reqwest::Client,
}

impl ServerPool {
    /// A pool of servers given by base URL (`http://host:port`). An empty list is allowed:
    /// every request then fails with [`PoolError::NoServers`].
    pub fn new(base_urls: Vec<String>) -> Result<ServerPool, PoolError> {
        let mut servers = Vec::with_capacity(base_urls.len());
        for raw in base_urls {
            let trimmed = raw.trim().trim_end_matches('/').to_owned();
            match url::Url::parse(&trimmed) {
                Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.has_host() => {
                    servers.push(trimmed)
                }
                _ => return Err(PoolError::InvalidAddress(raw)),
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(registry_api::client::POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| PoolError::InvalidAddress(e.to_string()))?;
        Ok(ServerPool {
            inner: Arc::new(PoolInner {
                servers,
                preferred: AtomicUsize::new(0),
                http,
            }),
        })
    }

    /// A pool from `--retry-join` addresses (`HOST:PORT`, the servers' RPC addresses): the
    /// servers answer plain HTTP on their RPC port too.
    pub fn from_retry_join(addrs: &[String]) -> Result<ServerPool, PoolError> {
        ServerPool::new(
            addrs
                .iter()
                .map(|a| {
                    if a.starts_with("http://") || a.starts_with("https://") {
                        a.clone()
                    } else {
                        format!("http://{a}")
                    }
                })
                .collect(),
        )
    }

    /// The servers' base URLs.
    pub fn servers(&self) -> &[String] {
        &self.inner.servers
    }

    /// Sends a request to the server that answered last, failing over to the others on
    /// transport errors. `path_and_query` starts with `/`. `headers` are sent as given.
    ///
    /// A request is sent to another server only when it cannot have been
    /// applied: the connection was never made, or the method is GET/HEAD. A
    /// write that timed out may have been applied, and sending it elsewhere
    /// could apply it twice (a second session, a failed `cas`).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<PoolResponse, PoolError> {
        let idempotent = method == Method::GET || method == Method::HEAD;
        self.send_opts(method, path_and_query, headers, body, None, idempotent)
            .await
    }

    async fn send_opts(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout_override: Option<Duration>,
        idempotent: bool,
    ) -> Result<PoolResponse, PoolError> {
        let servers = &self.inner.servers;
        if servers.is_empty() {
            return Err(PoolError::NoServers);
        }
        let timeout = timeout_override.or_else(|| request_timeout(path_and_query));
        let first = self.inner.preferred.load(Ordering::Relaxed) % servers.len();
        let mut last_error = String::new();
        for attempt in 0..servers.len() {
            let i = (first + attempt) % servers.len();
            let url = format!("{}{}", servers[i], path_and_query);
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .headers(headers.clone())
                .body(body.clone());
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let result = async {
                let resp = req.send().await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>(PoolResponse {
                    status,
                    headers,
                    body,
                })
            }
            .await;
            match result {
                Ok(resp) => {
                    if i != first {
                        tracing::info!(server = %servers[i], "failed over to another server");
                    }
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => {
                    tracing::debug!(server = %servers[i], path = %path_and_query, error = %e, "server unreachable");
                    last_error = format!("{}: {e}", servers[i]);
                    if !idempotent && !e.is_connect() {
                        break;
                    }
                }
            }
        }
        Err(PoolError::Unreachable { last_error })
    }

    /// GET `path` and decode a JSON answer; an error status is [`PoolError::Status`].
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, PoolError> {
        let resp = self
            .send(Method::GET, path, HeaderMap::new(), Bytes::new())
            .await?;
        let resp = ok_status(resp)?;
        serde_json::from_slice(&resp.body).map_err(|e| PoolError::Decode(e.to_string()))
    }

    /// PUT `body` as JSON to `path`; an error status is [`PoolError::Status`].
    ///
    /// Only for the agent's own idempotent writes (catalog registrations of
    /// its state, heartbeats): these fail over on any error.
    pub async fn put_json<T: Serialize>(&self, path: &str, body: &T) -> Result<(), PoolError> {
        self.put_json_within(path, body, None).await
    }

    /// [`ServerPool::put_json`] with a per-server time limit, so that one
    /// server that accepts connections but never answers cannot hold up a
    /// heartbeat past the node timeout.
    pub async fn put_json_within<T: Serialize>(
        &self,
        path: &str,
        body: &T,
        per_server: Option<Duration>,
    ) -> Result<(), PoolError> {
        let body = serde_json::to_vec(body).map_err(|e| PoolError::Decode(e.to_string()))?;
        let mut headers = HeaderMap::new();
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
            )
            .await?;
        ok_status(resp).map(|_| ())
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

/// The time limit of one request: a blocking query (`?index=`) may legitimately take its
/// whole `wait` plus Consul's jitter of up to wait/16, so it gets that plus some slack;
/// anything else gets [`REQUEST_TIMEOUT`]. `None` would mean no limit (unused for now, kept
/// as the type so a caller can opt out).
fn request_timeout(path_and_query: &str) -> Option<Duration> {
    let Some((_, query)) = path_and_query.split_once('?') else {
        return Some(REQUEST_TIMEOUT);
    };
    let mut blocking = false;
    let mut wait = DEFAULT_WAIT;
    for (k, v) in form_pairs(query) {
        match k.as_str() {
            "index" if !v.is_empty() && v != "0" => blocking = true,
            "wait" => {
                if let Ok(w) = registry_api::duration::parse(&v) {
                    wait = w;
                }
            }
            _ => {}
        }
    }
    if !blocking {
        return Some(REQUEST_TIMEOUT);
    }
    let wait = wait.min(MAX_WAIT);
    Some(wait + wait / 16 + BLOCKING_SLACK)
}

/// The `key=value` pairs of a query string, percent-decoded.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_queries_get_their_wait_plus_slack() {
        assert_eq!(request_timeout("/v1/catalog/nodes"), Some(REQUEST_TIMEOUT));
        assert_eq!(request_timeout("/v1/kv/a?recurse"), Some(REQUEST_TIMEOUT));
        let t = request_timeout("/v1/catalog/nodes?index=5&wait=32s");
        assert_eq!(t, Some(Duration::from_secs(34) + BLOCKING_SLACK));
        let t = request_timeout("/v1/catalog/nodes?index=5");
        assert_eq!(t, Some(DEFAULT_WAIT + DEFAULT_WAIT / 16 + BLOCKING_SLACK));
        let t = request_timeout("/v1/catalog/nodes?index=5&wait=1h");
        assert_eq!(t, Some(MAX_WAIT + MAX_WAIT / 16 + BLOCKING_SLACK));
    }

    #[test]
    fn addresses_must_be_urls() {
        assert!(ServerPool::new(vec!["not a url".into()]).is_err());
        let pool = ServerPool::from_retry_join(&["10.0.0.1:8300".into()]).unwrap();
        assert_eq!(pool.servers(), ["http://10.0.0.1:8300"]);
    }
}
