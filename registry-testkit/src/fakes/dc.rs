//! A fake datacenter (a stand-in for one DC's servers, for the gateway's tests): echoes
//! every request with the DC's name, holds blocking queries, records what it got.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
        let (url, shutdown, task) = super::serve(app, "127.0.0.1:0".parse().unwrap()).await;
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
