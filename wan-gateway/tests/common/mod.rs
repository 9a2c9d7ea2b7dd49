//! Test support: fake per-DC servers, gateways on loopback, and a bounded wait.

#![allow(dead_code)] // each test file uses a different part of this module

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wan_gateway::{GatewayConfig, GatewayHandle, MemberStatus};

/// One request as a fake server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path_and_query: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// What a fake server knows about itself.
#[derive(Debug)]
struct FakeState {
    /// Its DC, echoed in every answer.
    dc: String,
    /// Every request it got.
    requests: Mutex<Vec<Recorded>>,
}

/// A tiny stand-in for a DC's servers: answers every `/v1/...` with a JSON body naming its DC
/// plus `X-Consul-*` headers, holds blocking queries (`?index=`) for 1 s, answers
/// `/v1/kv/missing` with 404, and records every request.
pub struct FakeServer {
    /// `http://addr`.
    pub url: String,
    /// Its state.
    state: Arc<FakeState>,
    /// Stops it.
    shutdown: CancellationToken,
    /// Its task.
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Starts a fake server of `dc` on a free loopback port.
    pub async fn start(dc: &str) -> FakeServer {
        let state = Arc::new(FakeState {
            dc: dc.to_owned(),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(fake_handler)
            .with_state(state.clone());
        let (url, shutdown, task) = serve(app, "127.0.0.1:0".parse().unwrap()).await;
        FakeServer {
            url,
            state,
            shutdown,
            task,
        }
    }

    /// The requests it received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Stops it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Serves `app` on `addr`; returns its URL, its stop token and its task.
pub async fn serve(
    app: axum::Router,
    addr: SocketAddr,
) -> (String, CancellationToken, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    let stop = token.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
    (url, token, task)
}

/// The fake servers' one handler.
async fn fake_handler(State(state): State<Arc<FakeState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path_and_query = parts.uri.path_and_query().unwrap().as_str().to_owned();
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path_and_query: path_and_query.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if parts.uri.query().unwrap_or("").contains("index=") {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let status = if parts.uri.path() == "/v1/kv/missing" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let json = serde_json::json!({
        "Datacenter": state.dc,
        "Method": parts.method.to_string(),
        "PathAndQuery": path_and_query,
        "Body": String::from_utf8_lossy(&body),
    });
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-consul-index", "42"),
            ("x-consul-knownleader", "true"),
            ("x-other", "dropped"),
        ],
        json.to_string(),
    )
        .into_response()
}

/// A gateway config for tests: loopback, fast gossip, short death.
pub fn config(dc: &str, servers: &[&FakeServer], join: &[&GatewayHandle]) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        servers: servers.iter().map(|s| s.url.clone()).collect(),
        retry_join_wan: join.iter().map(|g| g.addr.to_string()).collect(),
        gossip_interval: Duration::from_millis(100),
        dead_after: Duration::from_secs(1),
        ..GatewayConfig::new(dc)
    }
}

/// Starts a gateway.
pub async fn gateway(dc: &str, servers: &[&FakeServer], join: &[&GatewayHandle]) -> GatewayHandle {
    wan_gateway::start(config(dc, servers, join)).await.unwrap()
}

/// Waits for `check` to return `Some`, polling every 50 ms for at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain client for the tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// `GET /v1/catalog/datacenters` of a gateway.
pub async fn datacenters(gw: &GatewayHandle) -> Vec<String> {
    client()
        .get(format!("{}/v1/catalog/datacenters", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET /wan/v1/members` of a gateway.
pub async fn members(gw: &GatewayHandle) -> Vec<MemberStatus> {
    client()
        .get(format!("{}/wan/v1/members", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `gw` lists every DC in `dcs` (in any order).
pub async fn wait_for_dcs(gw: &GatewayHandle, dcs: &[&str]) {
    wait_for(Duration::from_secs(10), "datacenters to spread", || async {
        let known = datacenters(gw).await;
        dcs.iter()
            .all(|d| known.iter().any(|k| k == d))
            .then_some(())
    })
    .await
}

/// GET `path` through `gw`; returns status, `X-Consul-Index` and body.
pub async fn get(gw: &GatewayHandle, path: &str) -> (u16, Option<String>, String) {
    let resp = client()
        .get(format!("{}{path}", gw.url()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("x-consul-index")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, index, resp.text().await.unwrap())
}

/// A loopback address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A new random shared key.
pub fn new_key() -> wan_gateway::SharedKey {
    wan_gateway::SharedKey::from_base64(&registry_api::auth::generate_key()).unwrap()
}

/// A gateway config for tests that uses the shared key `key`.
pub fn keyed_config(
    dc: &str,
    servers: &[&FakeServer],
    join: &[&GatewayHandle],
    key: &wan_gateway::SharedKey,
) -> GatewayConfig {
    GatewayConfig {
        encrypt: Some(key.clone()),
        ..config(dc, servers, join)
    }
}

/// Sends `method path` with `body` (as JSON when not empty) to `base` (`http://host:port`),
/// signed with `key` if given; returns the status, the `Allow` header and the body.
pub async fn send(
    base: &str,
    method: &str,
    path: &str,
    body: &[u8],
    key: Option<&wan_gateway::SharedKey>,
) -> (u16, Option<String>, String) {
    let mut req = client()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .body(body.to_vec());
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    if let Some(key) = key {
        req = req.header(
            registry_api::auth::SIGNATURE_HEADER,
            key.sign_request(method, path, body),
        );
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, allow, resp.text().await.unwrap())
}

/// `GET /v1/catalog/datacenters` of a gateway that has the key `key`.
pub async fn signed_datacenters(gw: &GatewayHandle, key: &wan_gateway::SharedKey) -> Vec<String> {
    let (status, _, body) = send(&gw.url(), "GET", "/v1/catalog/datacenters", b"", Some(key)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `GET /wan/v1/members` of a gateway that has the key `key`.
pub async fn signed_members(gw: &GatewayHandle, key: &wan_gateway::SharedKey) -> Vec<MemberStatus> {
    let (status, _, body) = send(&gw.url(), "GET", "/wan/v1/members", b"", Some(key)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Checks `bad` every 50 ms for `period` and fails as soon as it returns `Some`: for things
/// that must never happen (with the defect they happen within a gossip round or two).
pub async fn never_within<T, F, Fut>(period: Duration, what: &str, mut bad: F)
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if let Some(v) = bad().await {
            panic!("{what}: {v:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
