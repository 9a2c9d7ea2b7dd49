//! The HTTP accept loop shared by the server, the agent and the gateway.
//!
//! `axum::serve` is not used because it sets no header-read timeout (a client
//! that opens a connection and sends nothing, or one byte a minute, holds it
//! for ever) and has no bound on connections (past the file-descriptor limit,
//! accepts fail and every client, good or bad, waits in the SYN queue). Here:
//!
//! - a request's head must arrive within [`ServeLimits::header_read_timeout`],
//!   and that clock also runs while a keep-alive connection sits idle between
//!   requests (hyper's behaviour), so idle connections are closed too; a
//!   request whose head has arrived is never cut (blocking queries wait up to
//!   ten minutes for their answer);
//! - a request's body must arrive in full within
//!   [`ServeLimits::body_read_timeout`] of its head: a large `Content-Length`
//!   followed by a byte a minute gets a 400 and the connection back, instead
//!   of holding it for ever;
//! - at most [`ServeLimits::max_connections`] connections are served at once;
//!   one more is accepted, answered `503` with a plain-text reason, and
//!   closed, so a flood is refused cleanly and the server stays up;
//! - the listen backlog is 4096 (the kernel caps it at `somaxconn`), not
//!   tokio's 1024, so bursts of thousands of connects are not dropped;
//! - an HTTPS listener ([`serve_tls`]) finishes the TLS handshake within the
//!   header-read timeout, under the same connection bound, before HTTP starts.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// `router` behind `layers`, as one stack that runs before routing.
///
/// `Router::layer` wraps every route (and the fallback) in the layer on its own: each
/// layer is then a route of its own, with a boxed service clone, a route future and a
/// response fix-up per request, on top of the layer's own work. With six layers that was
/// most of axum's 27 % of the server's CPU per answer when one write wakes 10,000
/// blocking queries (BENCHMARKS.md, session 20). Only for layers that need nothing
/// routing adds (its `MatchedPath` or path parameters); those go on with
/// `Router::route_layer`.
pub fn before_routing<L>(router: Router, layers: L) -> Router
where
    L: tower::Layer<Router>,
    L::Service: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
{
    Router::new().fallback_service(layers.layer(router))
}

/// Bounds on what one client can hold.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Time allowed for a request's head to arrive, counted from the
    /// connection's accept or from the end of its previous response.
    pub header_read_timeout: Duration,
    /// Connections served at once; more are refused with 503.
    pub max_connections: usize,
    /// Time allowed for a request's body to arrive in full, counted from the
    /// arrival of its head.
    pub body_read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: default_max_connections(),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// File descriptors kept back for everything that is not an HTTP connection
/// (RocksDB's files, Raft peers, outgoing requests, check probes).
const FD_RESERVE: u64 = 512;

/// The default connection bound: the open-file limit less a reserve, at
/// least 256. Call [`raise_fd_limit`] first (the binaries do) so that the
/// limit is the hard one, as Go programs such as Consul get by default.
pub fn default_max_connections() -> usize {
    let soft = fd_limit().map(|(soft, _)| soft).unwrap_or(1024);
    soft.saturating_sub(FD_RESERVE).clamp(256, 1 << 20) as usize
}

fn fd_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    Some((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_fd_limit() -> Option<u64> {
    let (soft, hard) = fd_limit()?;
    if soft >= hard {
        return Some(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Some(soft);
    }
    Some(hard)
}

/// Binds a listener with `SO_REUSEADDR` and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Counts connections against [`ServeLimits::max_connections`]; cheap to
/// clone, shared by every listener of one process that should share a bound.
#[derive(Clone)]
pub struct ConnGate {
    limits: ServeLimits,
    permits: Arc<Semaphore>,
}

impl ConnGate {
    /// A gate with its own bound.
    pub fn new(limits: ServeLimits) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        ConnGate { limits, permits }
    }

    /// Serves one accepted connection with `router` (or refuses it when the
    /// bound is reached) on a task of its own. The connection ends when the
    /// client closes it, on a timeout, or when `shutdown` fires (after the
    /// response in flight, if any, for at most a second).
    pub fn serve_connection(&self, stream: TcpStream, router: Router, shutdown: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        self.serve_stream(stream, peer, router, shutdown);
    }

    /// [`ConnGate::serve_connection`] for any byte stream (a TLS connection), whose caller
    /// was `peer`.
    pub fn serve_stream<S>(
        &self,
        stream: S,
        peer: Option<SocketAddr>,
        router: Router,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, self.limits.max_connections));
            return;
        };
        tokio::spawn(serve_one(
            stream,
            peer,
            router,
            self.limits.clone(),
            shutdown,
            permit,
        ));
    }

    /// Serves one accepted connection over TLS: the handshake must finish within the
    /// header-read timeout, and counts against the bound like the HTTP that follows.
    pub fn serve_tls_connection(
        &self,
        stream: TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        router: Router,
        shutdown: CancellationToken,
    ) {
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // No TLS yet, so no readable refusal: close.
            return;
        };
        let limits = self.limits.clone();
        tokio::spawn(async move {
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)) => r,
                _ = shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(tls)) => serve_one(tls, peer, router, limits, shutdown, permit).await,
                Ok(Err(error)) => log_refused_handshake(peer, &error),
                Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Handshakes that fail (no certificate, another CA, plain HTTP on the HTTPS port) are
/// logged at warn now and then, the rest at debug, so a scanner cannot flood the log.
pub fn log_refused_handshake(peer: Option<SocketAddr>, error: &std::io::Error) {
    static LOG: crate::auth::RateLimitedLog = crate::auth::RateLimitedLog::new(10_000);
    if LOG.allow() {
        tracing::warn!(?peer, %error, "TLS handshake refused (more are logged at debug for a while)");
    } else {
        tracing::debug!(?peer, %error, "TLS handshake refused");
    }
}

async fn serve_one<S>(
    stream: S,
    peer: Option<SocketAddr>,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = limits.body_read_timeout;
    // The caller's address, as axum's `ConnectInfo` (some endpoints are served only to
    // callers on the same host).
    let service = TowerToHyperService::new(tower::ServiceExt::map_request(
        router,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(|body| DeadlineBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep(body_timeout)),
                limit: body_timeout,
            });
            if let Some(peer) = peer {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            req
        },
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// A request body that fails once its deadline has passed: the handler reading
/// it gets an error (and answers 400) instead of waiting on a client that
/// trickles bytes.
struct DeadlineBody<B> {
    /// The body as hyper delivers it.
    inner: B,
    /// When the whole body must have arrived.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The allowed time, for the error text.
    limit: Duration,
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(|e| e.to_string().into())));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let limit = self.limit;
            return Poll::Ready(Some(Err(format!(
                "request body not received in full within {limit:?}"
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a connection over the bound with 503 and closes it.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, limit: usize) {
    let body = format!("Too many open connections (limit {limit}); try again later\n");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// Accepts connections on `listener` and serves them with `router` until
/// `shutdown` fires. Accept errors (out of file descriptors, a connection
/// reset before it was accepted) are logged and the loop goes on after a
/// short pause; they never end it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let gate = ConnGate::new(limits);
    serve_with_gate(listener, router, gate, shutdown).await
}

/// [`serve_with_gate`] over TLS (the HTTPS API): `config` decides the certificate shown
/// and whether callers must show one.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    gate: ConnGate,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => gate.serve_tls_connection(
                stream,
                acceptor.clone(),
                router.clone(),
                shutdown.clone(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    gate.drain(DRAIN_LIMIT).await;
}

/// [`serve`] with a gate shared with other listeners. Once `shutdown` fires it waits (at most
/// [`DRAIN_LIMIT`]) for the connections to finish the answers in flight, so that an answer
/// given just before the process stops (`PUT /v1/agent/leave`) still reaches its client.
pub async fn serve_with_gate(
    listener: TcpListener,
    router: Router,
    gate: ConnGate,
    shutdown: CancellationToken,
) {
    accept_until(listener, router, &gate, &shutdown).await;
    gate.drain(DRAIN_LIMIT).await;
}

/// Longest wait at shutdown for connections to finish their answers: each gets one second
/// (`serve_one`), so this only bounds a connection that would not end.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl ConnGate {
    /// Waits until every connection of this gate has ended, for at most `limit`.
    async fn drain(&self, limit: Duration) {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(limit, self.permits.acquire_many(all)).await;
    }
}

/// Accepts and serves until `shutdown`.
async fn accept_until(
    listener: TcpListener,
    router: Router,
    gate: &ConnGate,
    shutdown: &CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => gate.serve_connection(stream, router.clone(), shutdown.clone()),
            Err(e) => {
                // ECONNABORTED and friends concern one connection only; EMFILE
                // clears as connections close. Either way, pause briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
