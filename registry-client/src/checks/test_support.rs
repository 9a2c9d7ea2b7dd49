//! Fixtures shared by the checks' unit tests: waits on the updates channel, quick specs, a
//! scripted HTTP server and self-signed TLS.

use super::{CheckKind, CheckRunner, CheckSpec, CheckUpdate};
use axum::extract::State;
use axum::routing::{any, get};
use axum::Router;
use http::{HeaderMap, Method, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bound on every wait for an update in real time: generous for a loaded 2-core machine.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn next_update(rx: &mut mpsc::Receiver<CheckUpdate>) -> CheckUpdate {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(update)) => update,
        Ok(None) => panic!("updates channel closed"),
        Err(_) => panic!("no check update within {WAIT:?}"),
    }
}

/// Consumes updates until one has `status`, within [`WAIT`] overall.
pub(crate) async fn wait_for_status(
    rx: &mut mpsc::Receiver<CheckUpdate>,
    status: &str,
) -> CheckUpdate {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(update)) if update.status == status => return update,
            Ok(Some(_)) => {}
            Ok(None) => panic!("updates channel closed while waiting for {status}"),
            Err(_) => panic!("no {status} update within {WAIT:?}"),
        }
    }
}

/// A spec that runs every 20 ms with a 2 s timeout.
pub(crate) fn fast(kind: CheckKind) -> CheckSpec {
    CheckSpec {
        timeout: Duration::from_secs(2),
        ..CheckSpec::new(kind, Duration::from_millis(20))
    }
}

pub(crate) fn http_kind(url: String) -> CheckKind {
    CheckKind::Http {
        url,
        method: "GET".to_owned(),
        headers: BTreeMap::new(),
        body: String::new(),
        tls_skip_verify: false,
    }
}

/// The `n=<request number>` that `/script` puts in its body.
pub(crate) fn request_number(output: &str) -> usize {
    output
        .rsplit("n=")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request number in {output:?}"))
}

/// `/script` answers request n (from 1) with `statuses[n-1]`, the last one repeating.
pub(crate) struct Script {
    pub(crate) statuses: Vec<u16>,
    pub(crate) hits: AtomicUsize,
}

async fn scripted(State(script): State<Arc<Script>>) -> (StatusCode, String) {
    let n = script.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let code = script
        .statuses
        .get(n - 1)
        .or(script.statuses.last())
        .copied()
        .unwrap_or(200);
    (
        StatusCode::from_u16(code).expect("valid test status"),
        format!("n={n}"),
    )
}

async fn echo(method: Method, headers: HeaderMap, body: String) -> String {
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{method} x-test={} ua={} accept={} body={body}",
        values("x-test"),
        values("user-agent"),
        values("accept")
    )
}

fn app(script: Arc<Script>) -> Router {
    Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/busy",
            get(|| async { (StatusCode::TOO_MANY_REQUESTS, "slow down") }),
        )
        .route(
            "/error",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route("/hang", get(std::future::pending::<&'static str>))
        .route("/big", get(|| async { "x".repeat(10_000) }))
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(http::header::LOCATION, "/ok")]) }),
        )
        .route("/echo", any(echo))
        .route("/script", get(scripted))
        .with_state(script)
}

pub(crate) struct HttpServer {
    pub(crate) addr: SocketAddr,
    pub(crate) script: Arc<Script>,
    pub(crate) stop: CancellationToken,
    pub(crate) task: JoinHandle<()>,
}

impl HttpServer {
    pub(crate) async fn start(statuses: Vec<u16>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let script = Arc::new(Script {
            statuses,
            hits: AtomicUsize::new(0),
        });
        HttpServer::serve(listener, script)
    }

    pub(crate) fn serve(listener: TcpListener, script: Arc<Script>) -> HttpServer {
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let app = app(script.clone());
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                panic!("test server failed: {e}");
            }
        });
        HttpServer {
            addr,
            script,
            stop,
            task,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops serving and waits until the listener is closed.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("test server stops")
            .expect("test server task");
    }
}

/// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1.
pub(crate) fn self_signed_acceptor(alpn: &[u8]) -> tokio_rustls::TlsAcceptor {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server TLS config");
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Starts one check per (id, kind) and returns each one's first update.
pub(crate) async fn first_updates(
    checks: Vec<(&str, CheckKind)>,
    initial: &str,
) -> BTreeMap<String, CheckUpdate> {
    let (tx, mut rx) = mpsc::channel(64);
    let count = checks.len();
    let _runners: Vec<CheckRunner> = checks
        .into_iter()
        .map(|(id, kind)| {
            CheckRunner::start(id.to_owned(), fast(kind), initial.to_owned(), tx.clone())
        })
        .collect();
    let mut first = BTreeMap::new();
    while first.len() < count {
        let update = next_update(&mut rx).await;
        first.entry(update.check_id.clone()).or_insert(update);
    }
    first
}
