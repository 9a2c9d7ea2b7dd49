//! Fakes for tests: servers that stand in for the registry servers or a datacenter, an
//! HTTP check target, a server with one fixed answer, and an address nothing listens on.
//! Only with the `fakes` feature. Test code: panics are its failures.

pub mod catalog;
pub mod dc;
pub mod shape;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `addr` (port 0 for any); returns its URL, its stop token and its task.
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

/// The address of a URL that [`serve`] returned.
fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// A loopback address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A server that answers every request with one fixed status and body (a server cut off
/// from its cluster answers `500 No cluster leader`), counting the requests.
pub struct FixedAnswer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    pub count: Arc<AtomicU64>,
    /// Stops it.
    shutdown: CancellationToken,
    /// Its serve loop.
    task: JoinHandle<()>,
}

impl FixedAnswer {
    /// Starts on a free port.
    pub async fn start(status: u16, body: &'static str) -> FixedAnswer {
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let status = StatusCode::from_u16(status).unwrap();
        let app = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { (status, body) }
        });
        let (url, shutdown, task) = serve(app, "127.0.0.1:0".parse().unwrap()).await;
        FixedAnswer {
            addr: addr_of(&url),
            count,
            shutdown,
            task,
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Stops it and waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// A health-check target: answers 200 `ok` on `/health` until stopped.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Stops it.
    shutdown: CancellationToken,
    /// Its serve loop.
    task: JoinHandle<()>,
}

impl Target {
    /// Starts on `addr` (port 0 for any; a stopped target's address to bring it back).
    pub async fn start(addr: SocketAddr) -> Target {
        let app = Router::new().route("/health", get(|| async { "ok" }));
        let (url, shutdown, task) = serve(app, addr).await;
        Target {
            addr: addr_of(&url),
            shutdown,
            task,
        }
    }

    /// Stops it and waits until the port is closed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}
