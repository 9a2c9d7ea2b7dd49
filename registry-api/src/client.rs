//! A typed client for the HTTP API, used by the agent, the gateways, the tests
//! and the benchmarks.

use crate::types::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// How long our HTTP clients keep an idle keep-alive connection: below the 30 s
/// after which our servers close one (`serve::ServeLimits`), so a client never
/// sends on a connection the server is closing at that moment.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Options shared by reads (Consul's `QueryOptions`).
#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    /// Ask another datacenter (`?dc=`).
    pub dc: Option<String>,
    /// `?stale`: any server answers from its own state.
    pub stale: bool,
    /// `?consistent`: the leader confirms with a quorum first.
    pub consistent: bool,
    /// Blocking query: return once the result's index exceeds this.
    pub index: Option<u64>,
    /// Blocking query: the longest to wait.
    pub wait: Option<Duration>,
    /// `?tag=` filters (all must match).
    pub tags: Vec<String>,
    /// `?passing`: only instances whose checks all pass.
    pub passing: bool,
}

impl QueryOptions {
    pub(crate) fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(dc) = &self.dc {
            q.push(("dc".into(), dc.clone()));
        }
        if self.stale {
            q.push(("stale".into(), String::new()));
        }
        if self.consistent {
            q.push(("consistent".into(), String::new()));
        }
        if let Some(i) = self.index {
            q.push(("index".into(), i.to_string()));
        }
        if let Some(w) = self.wait {
            q.push(("wait".into(), format!("{}ms", w.as_millis())));
        }
        for t in &self.tags {
            q.push(("tag".into(), t.clone()));
        }
        if self.passing {
            q.push(("passing".into(), String::new()));
        }
        q
    }
}

/// What the `X-Consul-*` headers of a read said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`.
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`, in milliseconds.
    pub last_contact_ms: u64,
}

impl QueryMeta {
    /// What a reply's `X-Consul-*` headers say (0 and false where one is missing).
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        QueryMeta {
            index: header("X-Consul-Index")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            known_leader: header("X-Consul-KnownLeader") == Some("true"),
            last_contact_ms: header("X-Consul-LastContact")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status; `body` is its plain-text reason.
    #[error("{status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Reply body.
        body: String,
    },
    /// The request did not get an answer.
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ClientError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::Transport(_) => None,
        }
    }
}

/// A client bound to one base URL (`http://127.0.0.1:8500`).
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

impl RegistryClient {
    /// A client for `base` (scheme, host and port, no trailing slash needed).
    pub fn new(base: impl Into<String>) -> Self {
        let http = crate::tls::client_builder(None)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self::with_http(base, http)
    }

    /// A client sharing an existing connection pool.
    pub fn with_http(base: impl Into<String>, http: reqwest::Client) -> Self {
        let mut base = base.into();
        while base.ends_with('/') {
            base.pop();
        }
        Self { base, http }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The connection pool (for calls with raw bodies, such as `kv.rs`'s).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub(crate) async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(ClientError::Status { status, body })
    }

    /// GET `path` with `opts`, decoding the JSON reply and the `X-Consul-*` headers.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        opts: &QueryOptions,
    ) -> Result<(T, QueryMeta), ClientError> {
        let mut req = self.http.get(self.url(path)).query(&opts.query());
        if let Some(w) = opts.wait {
            // A blocking query may take up to wait + wait/16 of jitter.
            req = req.timeout(w + w / 16 + Duration::from_secs(5));
        }
        let resp = Self::check(req.send().await?).await?;
        let meta = QueryMeta::from_headers(resp.headers());
        let body = resp.json::<T>().await?;
        Ok((body, meta))
    }

    /// PUT `body` as JSON to `path`, decoding the JSON reply.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .http
            .put(self.url(path))
            .query(query)
            .json(body)
            .send()
            .await?;
        Ok(Self::check(resp).await?.json::<T>().await?)
    }

    /// `PUT /v1/catalog/register`.
    pub async fn catalog_register(
        &self,
        req: &RegisterRequest,
        dc: Option<&str>,
    ) -> Result<bool, ClientError> {
        let q: Vec<(&str, &str)> = dc.map(|d| vec![("dc", d)]).unwrap_or_default();
        self.put("/v1/catalog/register", &q, req).await
    }

    /// `PUT /v1/catalog/deregister`.
    pub async fn catalog_deregister(
        &self,
        req: &DeregisterRequest,
        dc: Option<&str>,
    ) -> Result<bool, ClientError> {
        let q: Vec<(&str, &str)> = dc.map(|d| vec![("dc", d)]).unwrap_or_default();
        self.put("/v1/catalog/deregister", &q, req).await
    }

    /// `GET /v1/catalog/service/:name`.
    pub async fn catalog_service(
        &self,
        name: &str,
        opts: &QueryOptions,
    ) -> Result<(Vec<CatalogService>, QueryMeta), ClientError> {
        self.get(&format!("/v1/catalog/service/{name}"), opts).await
    }

    /// `GET /v1/catalog/nodes`.
    pub async fn catalog_nodes(
        &self,
        opts: &QueryOptions,
    ) -> Result<(Vec<Node>, QueryMeta), ClientError> {
        self.get("/v1/catalog/nodes", opts).await
    }

    /// `GET /v1/health/service/:name`.
    pub async fn health_service(
        &self,
        name: &str,
        opts: &QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta), ClientError> {
        self.get(&format!("/v1/health/service/{name}"), opts).await
    }

    /// `GET /v1/status/leader`: the leader's RPC address, `""` when there is none.
    pub async fn status_leader(&self) -> Result<String, ClientError> {
        Ok(self
            .get("/v1/status/leader", &QueryOptions::default())
            .await?
            .0)
    }

    /// `GET /v1/status/peers`.
    pub async fn status_peers(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .get("/v1/status/peers", &QueryOptions::default())
            .await?
            .0)
    }

    /// `GET /v1/operator/raft/configuration`.
    pub async fn raft_configuration(&self) -> Result<RaftConfiguration, ClientError> {
        Ok(self
            .get("/v1/operator/raft/configuration", &QueryOptions::default())
            .await?
            .0)
    }
}

/// Consul's header for an ACL token.
pub const TOKEN_HEADER: &str = "X-Consul-Token";

impl RegistryClient {
    /// A client for `base` that sends `token` (when given) as `X-Consul-Token` on every
    /// request, as Consul's CLI does with `-token`. Fails on a token that cannot be a header.
    pub fn with_token(base: impl Into<String>, token: Option<&str>) -> Result<Self, String> {
        Self::with_token_tls(base, token, None)
    }

    /// [`RegistryClient::with_token`] over TLS: `https://` bases are checked and shown a
    /// certificate as `tls` says (the CLI's `-ca-file`, `-client-cert`, `-tls-server-name`).
    pub fn with_token_tls(
        base: impl Into<String>,
        token: Option<&str>,
        tls: Option<(&std::sync::Arc<crate::tls::Tls>, crate::tls::Expect)>,
    ) -> Result<Self, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(token)
                .map_err(|_| "the token is not a valid header value".to_string())?;
            value.set_sensitive(true);
            headers.insert(TOKEN_HEADER, value);
        }
        let http = crate::tls::client_builder(tls)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self::with_http(base, http))
    }

    /// Sends `method` to `path` with `query` and an optional raw body; the reply once it is a
    /// 2xx, its status and plain-text body as the error otherwise.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.request(method, self.url(path)).query(query);
        if let Some(body) = body {
            req = req.body(body);
        }
        Self::check(req.send().await?).await
    }

    /// `GET /v1/agent/members`.
    pub async fn agent_members(&self) -> Result<Vec<crate::agent::AgentMember>, ClientError> {
        Ok(self
            .get("/v1/agent/members", &QueryOptions::default())
            .await?
            .0)
    }

    /// `GET /v1/catalog/datacenters`.
    pub async fn catalog_datacenters(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .get("/v1/catalog/datacenters", &QueryOptions::default())
            .await?
            .0)
    }

    /// `GET /v1/catalog/services`: service name -> tags.
    pub async fn catalog_services(
        &self,
        opts: &QueryOptions,
    ) -> Result<(std::collections::BTreeMap<String, Vec<String>>, QueryMeta), ClientError> {
        self.get("/v1/catalog/services", opts).await
    }

    /// `PUT /v1/agent/service/register`.
    pub async fn agent_service_register(
        &self,
        reg: &crate::agent::ServiceRegistration,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(reg).map_err(|e| ClientError::Status {
            status: 0,
            body: e.to_string(),
        })?;
        self.send(
            reqwest::Method::PUT,
            "/v1/agent/service/register",
            &[],
            Some(body.into()),
        )
        .await?;
        Ok(())
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    pub async fn agent_service_deregister(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/agent/service/deregister/{}", path_segment(id));
        self.send(reqwest::Method::PUT, &path, &[], None).await?;
        Ok(())
    }

    /// `PUT /v1/agent/reload`: re-reads the agent's configuration files.
    pub async fn agent_reload(&self) -> Result<(), ClientError> {
        self.send(reqwest::Method::PUT, "/v1/agent/reload", &[], None)
            .await?;
        Ok(())
    }

    /// `DELETE /v1/operator/raft/peer?id=` or `?address=` (`query` says which).
    pub async fn raft_remove_peer(&self, query: &[(&str, &str)]) -> Result<(), ClientError> {
        self.send(
            reqwest::Method::DELETE,
            "/v1/operator/raft/peer",
            query,
            None,
        )
        .await?;
        Ok(())
    }

    /// `POST /v1/operator/raft/transfer-leader[?id=]`: Consul's `{"Success": bool}`.
    pub async fn raft_transfer_leader(&self, id: Option<&str>) -> Result<bool, ClientError> {
        let query: Vec<(&str, &str)> = id.map(|id| vec![("id", id)]).unwrap_or_default();
        let resp = self
            .send(
                reqwest::Method::POST,
                "/v1/operator/raft/transfer-leader",
                &query,
                None,
            )
            .await?;
        let reply: serde_json::Value = resp.json().await?;
        Ok(reply
            .get("Success")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false))
    }
}

/// `s` escaped for one path segment (ids may hold `/`, `?`, `#`, spaces).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
