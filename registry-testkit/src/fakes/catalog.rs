//! A fake registry server (a test double of the servers, for the agent's tests): a minimal
//! catalog the agent syncs into, heartbeats, KV echoes for the forwarding tests, and
//! signature checks like the servers' when given a key.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use registry_api::auth::{SharedKey, SIGNATURE_HEADER};
use registry_api::{
    AgentService, DeregisterRequest, HealthCheck, HeartbeatRequest, Node, NodeServiceList,
    RegisterRequest,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the fake server holds: a minimal catalog plus counters.
#[derive(Default, Debug)]
pub struct FakeCatalog {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Services by (node, id).
    pub services: BTreeMap<(String, String), AgentService>,
    /// Checks by (node, id).
    pub checks: BTreeMap<(String, String), HealthCheck>,
    /// Catalog writes received (register and deregister).
    pub writes: u64,
    /// Reads of `/v1/catalog/node-services/:node` (one per full sync).
    pub node_reads: u64,
    /// Heartbeats received.
    pub heartbeats: Vec<HeartbeatRequest>,
    /// When each of `heartbeats` arrived.
    pub heartbeat_at: Vec<Instant>,
    /// Requests received, refused ones included.
    pub requests: u64,
    /// Requests that carried a signature header.
    pub signed: u64,
    /// Requests refused for their signature (only with a key): method, path and reason.
    pub refused: Vec<String>,
}

impl FakeCatalog {
    /// The services of `node`.
    pub fn node_services(&self, node: &str) -> BTreeMap<String, AgentService> {
        self.services
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|((_, id), s)| (id.clone(), s.clone()))
            .collect()
    }

    /// The checks of `node`.
    pub fn node_checks(&self, node: &str) -> BTreeMap<String, HealthCheck> {
        self.checks
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|((_, id), c)| (id.clone(), c.clone()))
            .collect()
    }

    /// Registers like the real catalog does (enough of it for the agent).
    pub fn register(&mut self, mut req: RegisterRequest) {
        let node = Node {
            id: req.id.clone(),
            node: req.node.clone(),
            address: req.address.clone(),
            datacenter: req.datacenter.clone(),
            ..Default::default()
        };
        self.nodes.insert(req.node.clone(), node);
        if let Some(svc) = req.service.take() {
            self.services
                .insert((req.node.clone(), svc.id.clone()), svc);
        }
        if let Some(c) = req.check.take() {
            req.checks.insert(0, c);
        }
        for mut c in req.checks {
            c.node = req.node.clone();
            if let Some(s) = self.services.get(&(req.node.clone(), c.service_id.clone())) {
                c.service_name = s.service.clone();
                c.service_tags = s.tags.clone();
            }
            self.checks
                .insert((req.node.clone(), c.check_id.clone()), c);
        }
    }
}

/// The shared state of a fake server.
pub type Shared = Arc<Mutex<FakeCatalog>>;

/// A fake registry server on loopback.
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its catalog.
    pub state: Shared,
    /// Stops it.
    shutdown: CancellationToken,
    /// Its serve loop.
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Starts on a free port with an empty catalog.
    pub async fn start() -> FakeServer {
        Self::start_with("127.0.0.1:0".parse().unwrap(), Shared::default()).await
    }

    /// Starts on `addr` with `state`.
    pub async fn start_with(addr: SocketAddr, state: Shared) -> FakeServer {
        Self::start_keyed(addr, state, None).await
    }

    /// Starts on a free port, refusing (403) every request not signed with `key`, as the
    /// servers do with `--encrypt`.
    pub async fn start_signed(key: SharedKey) -> FakeServer {
        Self::start_keyed("127.0.0.1:0".parse().unwrap(), Shared::default(), Some(key)).await
    }

    /// Starts on `addr` with `state`, checking signatures when `key` is given.
    pub async fn start_keyed(
        addr: SocketAddr,
        state: Shared,
        key: Option<SharedKey>,
    ) -> FakeServer {
        let app = router(state.clone()).layer(middleware::from_fn_with_state(
            (state.clone(), key.map(Arc::new)),
            check_signature,
        ));
        let (url, shutdown, task) = super::serve(app, addr).await;
        FakeServer {
            addr: super::addr_of(&url),
            state,
            shutdown,
            task,
        }
    }

    /// The catalog, locked.
    pub fn catalog(&self) -> std::sync::MutexGuard<'_, FakeCatalog> {
        self.state.lock().unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/catalog/register", put(register))
        .route("/v1/catalog/deregister", put(deregister))
        .route("/v1/catalog/node-services/{node}", get(node_services))
        .route("/v1/catalog/nodes", get(nodes))
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/internal/heartbeat", put(heartbeat))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put))
        .with_state(state)
}

/// Counts requests and signatures and, with a key, refuses what is not signed with it
/// (over the method, path and query, and body the server received).
async fn check_signature(
    State((st, key)): State<(Shared, Option<Arc<SharedKey>>)>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let header = parts
        .headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let pq = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str())
        .to_owned();
    {
        let mut c = st.lock().unwrap();
        c.requests += 1;
        c.signed += u64::from(header.is_some());
    }
    if let Some(key) = &key {
        // As the servers check: heartbeats carry a heartbeat signature, the rest a forward one.
        let purpose = if parts.uri.path() == "/v1/internal/heartbeat" {
            registry_api::auth::Purpose::Heartbeat
        } else {
            registry_api::auth::Purpose::Forward
        };
        if let Err(e) = key.verify_for(
            purpose,
            header.as_deref(),
            parts.method.as_str(),
            &pq,
            &bytes,
        ) {
            st.lock()
                .unwrap()
                .refused
                .push(format!("{} {pq}: {e}", parts.method));
            return (StatusCode::FORBIDDEN, e.to_string()).into_response();
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn register(State(st): State<Shared>, body: axum::body::Bytes) -> impl IntoResponse {
    let req: RegisterRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut st = st.lock().unwrap();
    st.writes += 1;
    st.register(req);
    Json(true).into_response()
}

async fn deregister(State(st): State<Shared>, Json(req): Json<DeregisterRequest>) -> Json<bool> {
    let mut st = st.lock().unwrap();
    st.writes += 1;
    let node = req.node.clone();
    if !req.service_id.is_empty() {
        st.services.remove(&(node.clone(), req.service_id.clone()));
        st.checks
            .retain(|(n, _), c| !(n == &node && c.service_id == req.service_id));
    } else if !req.check_id.is_empty() {
        st.checks.remove(&(node, req.check_id));
    } else {
        st.nodes.remove(&node);
        st.services.retain(|(n, _), _| n != &node);
        st.checks.retain(|(n, _), _| n != &node);
    }
    Json(true)
}

async fn node_services(State(st): State<Shared>, Path(node): Path<String>) -> impl IntoResponse {
    let mut st = st.lock().unwrap();
    st.node_reads += 1;
    let Some(n) = st.nodes.get(&node).cloned() else {
        return Json(serde_json::Value::Null).into_response();
    };
    let services = st.node_services(&node).into_values().collect();
    Json(NodeServiceList { node: n, services }).into_response()
}

async fn nodes(State(st): State<Shared>) -> Json<Vec<Node>> {
    Json(st.lock().unwrap().nodes.values().cloned().collect())
}

async fn health_node(State(st): State<Shared>, Path(node): Path<String>) -> Json<Vec<HealthCheck>> {
    Json(
        st.lock()
            .unwrap()
            .node_checks(&node)
            .into_values()
            .collect(),
    )
}

async fn health_state(
    State(st): State<Shared>,
    Path(state): Path<String>,
) -> Json<Vec<HealthCheck>> {
    Json(
        st.lock()
            .unwrap()
            .checks
            .values()
            .filter(|c| state == "any" || c.status == state)
            .cloned()
            .collect(),
    )
}

async fn heartbeat(State(st): State<Shared>, Json(req): Json<HeartbeatRequest>) -> Json<bool> {
    let mut st = st.lock().unwrap();
    st.heartbeats.push(req);
    st.heartbeat_at.push(Instant::now());
    Json(true)
}

/// A KV read for the forwarding tests: `missing` is a 404 with a text body; anything else
/// echoes the key with Consul's headers.
async fn kv_get(Path(key): Path<String>, headers: HeaderMap) -> impl IntoResponse {
    if key == "missing" {
        return (StatusCode::NOT_FOUND, "no such key").into_response();
    }
    let token = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (
        StatusCode::OK,
        [
            ("X-Consul-Index", "42"),
            ("X-Consul-KnownLeader", "true"),
            ("X-Other", "dropped"),
        ],
        Json(serde_json::json!([{ "Key": key, "Token": token }])),
    )
        .into_response()
}

/// Echoes a KV write's body length.
async fn kv_put(body: axum::body::Bytes) -> impl IntoResponse {
    (StatusCode::OK, Json(body.len()))
}
