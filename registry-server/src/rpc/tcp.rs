//! [`TcpTransport`]: the RPC port (`--rpc-addr`) in production. Length-prefixed frames, large
//! messages in chunks, a key-proving handshake (`--encrypt`), TLS when configured (a
//! connection whose first byte is a TLS handshake's; mutual, and only a `server.<dc>.<domain>`
//! certificate may speak Raft under `--verify-server-hostname`), one writer task per peer,
//! and the hand-off of HTTP connections (agents reach servers on this port). Must not interpret messages:
//! it delivers them to a [`Deliver`] and nothing more.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::transport::{lock, Deliver, Transport};
use crate::rpc::{self, RpcMessage};
use registry_api::auth::{self, SessionKey, SharedKey, NONCE_LEN};
use registry_api::tls::{Expect, Tls};

/// Largest accepted frame. A message above it (a snapshot of a large catalog) is sent as a
/// sequence of [`TAG_CHUNK`] frames and reassembled, so no one frame makes the reader buffer
/// more than this.
pub(super) const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Size of the pieces a large message is cut into.
const CHUNK: usize = 8 * 1024 * 1024;
/// Largest message reassembled from chunks (only authenticated peers get this far).
const MAX_MESSAGE: usize = 2 * 1024 * 1024 * 1024 - 1;
/// First byte of a chunk frame: never a tag of [`rpc::encode`]. The second byte is 1 on the
/// last chunk of a message, else 0; the rest is the piece.
const TAG_CHUNK: u8 = 0xC0;
/// Largest accepted preamble; an address is short, so a stranger cannot make us buffer much.
const MAX_PREAMBLE: usize = 4096;
/// Largest handshake answer frame (a nonce and a MAC).
const MAX_HANDSHAKE_FRAME: usize = 256;
/// First bytes of a dialer's preamble: protocol name and version.
pub(super) const PREAMBLE_MAGIC: &[u8; 4] = b"RGv1";
/// Time allowed for the whole handshake; a stranger that opens a connection and stalls is cut.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An inbound connection that carries no frame for this long is closed. Peers send Raft
/// heartbeats many times a second and a `Hello` at least every few seconds, so only dead or
/// idle-by-design connections reach it; the dialer reconnects on its next message.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages waiting per destination; beyond this they are dropped rather than delaying Raft.
const QUEUE_CAPACITY: usize = 4096;
/// A peer that does not answer within this is treated as down until the next message.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// First wait after a failed connection; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts, short enough to notice a restarted peer quickly.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// TCP transport on the RPC port.
pub struct TcpTransport {
    /// Our address as peers know it, sent as the preamble of every outbound connection.
    advertise: String,
    /// The shared key (`--encrypt`) both sides of every connection prove they hold; `None` runs
    /// the same handshake without proof (and the server warns at start).
    key: Option<SharedKey>,
    /// Inbound connections refused because the peer did not prove the key.
    refused: Arc<AtomicU64>,
    /// Runtime for writer tasks: `send` runs on the Raft thread, outside any runtime context.
    runtime: Handle,
    /// Stops the accept loop, the readers and the writers.
    shutdown: CancellationToken,
    /// One writer per destination, created on first send. A std `Mutex` is right here: it is
    /// never held across an `.await` (the critical section is a lookup and a `try_send`), and it
    /// is taken both from the Raft thread and from tasks, where a tokio mutex would not help.
    peers: Mutex<HashMap<String, PeerWriter>>,
    /// Where inbound connections that speak HTTP instead of our framing go
    /// (agents reach servers on the RPC port, as `--retry-join` names it).
    http: Mutex<Option<HttpHandoff>>,
    /// TLS on this port, when configured.
    tls: Option<RpcTls>,
}

/// TLS on the RPC port: who we are and whom we accept.
#[derive(Clone)]
pub struct RpcTls {
    /// The live TLS configuration (reloaded on SIGHUP).
    tls: Arc<Tls>,
    /// Our datacenter: peers speaking Raft must be its servers.
    datacenter: String,
    /// Accepts inbound TLS (one configuration for the transport's life: it looks the
    /// current certificate up on every handshake).
    acceptor: tokio_rustls::TlsAcceptor,
    /// Dials peers over TLS, checked as servers of `datacenter` (`--verify-outgoing`).
    connector: Option<tokio_rustls::TlsConnector>,
}

impl RpcTls {
    /// TLS for the RPC port of a server of `datacenter`.
    pub fn new(tls: Arc<Tls>, datacenter: &str) -> Result<RpcTls, registry_api::tls::TlsError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
        let connector = if tls.settings().dials_tls() {
            let expect = Expect::Server {
                datacenter: datacenter.to_string(),
            };
            Some(tokio_rustls::TlsConnector::from(Arc::new(
                tls.client_config(expect)?,
            )))
        } else {
            None
        };
        Ok(RpcTls {
            tls,
            datacenter: datacenter.to_string(),
            acceptor,
            connector,
        })
    }
}

/// A byte stream handed over to HTTP: plain TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An inbound RPC-port connection that turned out to be HTTP, and who sent it.
pub struct HandedOver {
    /// The connection (its first bytes not yet consumed).
    pub io: Box<dyn Io>,
    /// The caller.
    pub peer: SocketAddr,
}

/// Takes over an inbound RPC-port connection that turned out to be HTTP.
pub type HttpHandoff = Arc<dyn Fn(HandedOver) + Send + Sync>;

/// The outbound side of one destination.
struct PeerWriter {
    /// Messages for the writer task.
    queue: mpsc::Sender<RpcMessage>,
    /// The writer task, awaited by the accept loop at shutdown.
    task: JoinHandle<()>,
}

impl TcpTransport {
    /// Binds `listen`, spawns the accept loop on `runtime` (a tokio Handle; keep it to spawn per-peer writer tasks
    /// later from non-tokio threads), tags outgoing connections with `advertise` (our address as peers know it).
    /// Returns the transport, the actually bound address (listen may be port 0), and the accept loop's JoinHandle.
    /// Every task stops when `shutdown` is cancelled; the accept loop finishes only after every reader and
    /// writer task has, so awaiting its handle means the whole transport has stopped.
    pub async fn bind(
        listen: SocketAddr,
        advertise: String,
        key: Option<SharedKey>,
        tls: Option<RpcTls>,
        deliver: Deliver,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) -> io::Result<(Arc<TcpTransport>, SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind(listen).await?;
        let bound = listener.local_addr()?;
        // An empty `advertise` means "the address we bound"; a wildcard bind
        // is only reachable as loopback without a real --advertise.
        let advertise = if advertise.is_empty() {
            if bound.ip().is_unspecified() {
                format!("127.0.0.1:{}", bound.port())
            } else {
                bound.to_string()
            }
        } else {
            advertise
        };
        let transport = Arc::new(TcpTransport {
            advertise,
            key,
            refused: Arc::default(),
            runtime: runtime.clone(),
            shutdown,
            peers: Mutex::new(HashMap::new()),
            http: Mutex::new(None),
            tls,
        });
        debug!(listen = %bound, advertise = %transport.advertise, "RPC transport listening");
        let accept = runtime.spawn(accept_loop(Arc::clone(&transport), listener, deliver));
        Ok((transport, bound, accept))
    }
}

impl TcpTransport {
    /// Serve HTTP on the RPC port too: a connection whose first byte is not
    /// 0 (every frame of ours starts with the high byte of a small length) is
    /// handed to `handoff`.
    pub fn set_http_handoff(&self, handoff: HttpHandoff) {
        *lock(&self.http) = Some(handoff);
    }

    /// Our address as peers know it.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// How many inbound connections were refused for not proving the key.
    pub fn refused_handshakes(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: &str, msg: RpcMessage) {
        let mut peers = lock(&self.peers);
        if !peers.contains_key(to) {
            // Checked under the lock so that no writer can appear after the accept loop has
            // collected the writers to await at shutdown.
            if self.shutdown.is_cancelled() {
                trace!(peer = to, "transport shut down; dropping message");
                return;
            }
            let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
            let (to, stop) = (to.to_owned(), self.shutdown.clone());
            let me = Dialer {
                advertise: self.advertise.clone(),
                key: self.key.clone(),
                tls: self.tls.as_ref().and_then(|t| t.connector.clone()),
            };
            let task = self.runtime.spawn(run_writer(to.clone(), me, rx, stop));
            peers.insert(to, PeerWriter { queue, task });
        }
        let Some(peer) = peers.get(to) else { return };
        match peer.queue.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => trace!(peer = to, "send queue full; dropping message"),
            Err(TrySendError::Closed(_)) => trace!(peer = to, "writer stopped; dropping message"),
        }
    }
}

/// Accepts connections until shutdown, then waits for every reader and writer task.
async fn accept_loop(transport: Arc<TcpTransport>, listener: TcpListener, deliver: Deliver) {
    let shutdown = transport.shutdown.clone();
    let mut readers = JoinSet::new();
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = readers.join_next() => log_task_end(done),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%peer, %error, "cannot set TCP_NODELAY");
                    }
                    let http = lock(&transport.http).clone();
                    let auth = Inbound {
                        key: transport.key.clone(),
                        refused: transport.refused.clone(),
                        pending: pending.clone(),
                        tls: transport.tls.clone(),
                    };
                    readers.spawn(run_reader(stream, peer, auth, deliver.clone(), shutdown.clone(), http));
                }
                Err(error) => {
                    warn!(%error, "RPC accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
    drop(listener);
    let writers: Vec<JoinHandle<()>> = lock(&transport.peers)
        .drain()
        .map(|(_, peer)| peer.task)
        .collect();
    for writer in writers {
        log_task_end(writer.await);
    }
    while let Some(done) = readers.join_next().await {
        log_task_end(done);
    }
    debug!(advertise = %transport.advertise, "RPC transport stopped");
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        warn!(%error, "RPC transport task failed");
    }
}

/// How long an inbound connection may stay silent before its protocol is known: as long as a
/// whole handshake may take (HTTP clients send their request at once too).
const PEEK_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;
/// Inbound connections that have not finished their handshake yet, at most; more are closed at
/// once, so strangers cannot hold many sockets and tasks open (HTTP connections are bounded by
/// the HTTP side's own gate).
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Failed inbound connections (wrong key, garbage, a stranger) are logged at warn at most this
/// often, the rest at debug.
static REFUSAL_LOG: registry_api::auth::RateLimitedLog =
    registry_api::auth::RateLimitedLog::new(10_000);

/// First byte of a TLS connection (a handshake record, RFC 8446 5.1): never the first byte of
/// our framing (0, the high byte of a small length) nor of HTTP (a method's letter).
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Reads one inbound connection until it closes, misbehaves, or shutdown.
async fn run_reader(
    stream: TcpStream,
    peer: SocketAddr,
    auth: Inbound,
    deliver: Deliver,
    shutdown: CancellationToken,
    http: Option<HttpHandoff>,
) {
    let Ok(pending) = auth.pending.clone().try_acquire_owned() else {
        debug!(%peer, "too many inbound RPC connections in their handshake; closing one");
        return;
    };
    let first = if http.is_some() || auth.tls.is_some() {
        let mut first = [0u8; 1];
        let peeked = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(PEEK_TIMEOUT, stream.peek(&mut first)) => r,
        };
        match peeked {
            Ok(Ok(1)) => Some(first[0]),
            // Silent or broken: nothing to serve.
            _ => return,
        }
    } else {
        None
    };
    let result = match (first, &auth.tls) {
        (Some(TLS_HANDSHAKE_BYTE), Some(tls)) => {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = serve_tls(stream, peer, tls, &auth, &deliver, pending, http) => r,
            }
        }
        (_, Some(tls)) if tls.tls.settings().verify_incoming => Err(invalid_data(
            "a plaintext connection on the RPC port, which requires TLS (--verify-incoming)",
        )),
        // Raft only from a server's certificate: plaintext framing shows none.
        (Some(0), Some(tls)) if tls.tls.settings().verify_server_hostname => {
            auth.refused.fetch_add(1, Ordering::Relaxed);
            Err(invalid_data(
                "plaintext Raft traffic on the RPC port, which takes it only over TLS from a \
                 server's certificate (--verify-server-hostname)",
            ))
        }
        (Some(byte), _) if byte != 0 => {
            let Some(handoff) = http else { return };
            drop(pending);
            handoff(HandedOver {
                io: Box::new(stream),
                peer,
            });
            return;
        }
        _ => tokio::select! {
            _ = shutdown.cancelled() => return,
            r = read_connection(stream, &auth, &deliver, pending) => r,
        },
    };
    match result {
        Ok(()) => trace!(%peer, "inbound RPC connection closed"),
        Err(error) if REFUSAL_LOG.allow() => {
            warn!(%peer, %error, "closing inbound RPC connection (more are logged at debug for a while)")
        }
        Err(error) => debug!(%peer, %error, "closing inbound RPC connection"),
    }
}

/// An inbound TLS connection: the handshake (a certificate from the caller under
/// `--verify-incoming`), then HTTP or our framing, as its first byte says. Raft traffic only
/// from a server of our datacenter's certificate under `--verify-server-hostname`.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &RpcTls,
    auth: &Inbound,
    deliver: &Deliver,
    pending: tokio::sync::OwnedSemaphorePermit,
    http: Option<HttpHandoff>,
) -> io::Result<()> {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let stream = tls.acceptor.accept(stream).await?;
        let mut input = BufReader::new(stream);
        // The first byte inside TLS says HTTP or our framing, as outside it.
        let first = tokio::io::AsyncBufReadExt::fill_buf(&mut input)
            .await?
            .first()
            .copied();
        Ok::<_, io::Error>((input, first))
    })
    .await
    .map_err(|_| invalid_data("TLS handshake timed out"))?;
    let (input, first) = accepted.map_err(|e| {
        auth.refused.fetch_add(1, Ordering::Relaxed);
        invalid_data(format!("TLS handshake failed: {e}"))
    })?;
    match first {
        None => Ok(()),
        Some(0) => {
            let certs = input.get_ref().get_ref().1.peer_certificates();
            if !tls.tls.peer_is_server(certs, &tls.datacenter) {
                auth.refused.fetch_add(1, Ordering::Relaxed);
                return Err(invalid_data(format!(
                    "a caller without a certificate for {} tried to speak Raft \
                     (--verify-server-hostname)",
                    tls.tls.server_name(&tls.datacenter)
                )));
            }
            read_connection(input, auth, deliver, pending).await
        }
        Some(_) => {
            let Some(handoff) = http else { return Ok(()) };
            drop(pending);
            handoff(HandedOver {
                io: Box::new(input),
                peer,
            });
            Ok(())
        }
    }
}

/// The handshake, then frames delivered in order.
///
/// The handshake (each step one frame):
/// 1. dialer -> listener: [`PREAMBLE_MAGIC`], the dialer's nonce, its advertised address;
/// 2. listener -> dialer: the listener's nonce, then its MAC over both nonces and the address;
/// 3. dialer -> listener: the dialer's MAC over the same.
///
/// With a key each side checks the other's MAC before it trusts a byte of it, so a stranger
/// without the key can neither inject a message nor make a server send it Raft traffic; fresh
/// nonces on both sides mean a recorded handshake cannot be replayed. After it every frame
/// carries a MAC under a key derived for this connection ([`SessionKey`]), so a frame cannot be
/// injected into, changed in or replayed within an authenticated connection either (nor a
/// handshake relayed to borrow one). Without a key the MACs are empty and anything goes (the
/// server warned at start).
async fn read_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    auth: &Inbound,
    deliver: &Deliver,
    pending: tokio::sync::OwnedSemaphorePermit,
) -> io::Result<()> {
    let key = auth.key.as_ref();
    let mut input = BufReader::new(stream);
    let handshake = async {
        let Some(preamble) = read_frame(&mut input, MAX_PREAMBLE).await? else {
            return Ok(None);
        };
        let (dialer_nonce, addr) = preamble
            .strip_prefix(PREAMBLE_MAGIC.as_slice())
            .filter(|rest| rest.len() >= NONCE_LEN)
            .map(|rest| rest.split_at(NONCE_LEN))
            .ok_or_else(|| invalid_data("not a registry RPC preamble"))?;
        let from = std::str::from_utf8(addr)
            .map_err(|_| invalid_data("preamble is not UTF-8"))?
            .to_owned();
        let listener_nonce = auth::nonce();
        let mut answer = listener_nonce.to_vec();
        if let Some(key) = key {
            answer.extend(key.handshake_mac(b"listener", dialer_nonce, &listener_nonce, addr));
        }
        write_frame(input.get_mut(), &answer).await?;
        input.get_mut().flush().await?;
        let closed = || {
            invalid_data(
                "the peer closed the connection during the handshake (does it hold this cluster's key?)",
            )
        };
        // Over TLS a peer that hangs up ends the stream without close_notify: the same
        // refusal as a plain close, and said the same way.
        let proof = match read_frame(&mut input, MAX_HANDSHAKE_FRAME).await {
            Ok(Some(proof)) => proof,
            Ok(None) => return Err(closed()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(closed()),
            Err(e) => return Err(e),
        };
        let mut session = None;
        if let Some(key) = key {
            if !key.verify_handshake_mac(b"dialer", dialer_nonce, &listener_nonce, addr, &proof) {
                auth.refused.fetch_add(1, Ordering::Relaxed);
                return Err(invalid_data(
                    "RPC handshake failed: the peer does not hold this cluster's key (--encrypt)",
                ));
            }
            session = Some(key.session_key(dialer_nonce, &listener_nonce, addr));
        }
        Ok(Some((from, session)))
    };
    let (from, mut session) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Err(_) => return Err(invalid_data("RPC handshake timed out")),
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    drop(pending);
    // A message cut into chunks, being put back together.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let frame =
            match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut input, MAX_FRAME)).await {
                Err(_) => {
                    trace!(peer = %from, "closing an idle inbound RPC connection");
                    return Ok(());
                }
                Ok(frame) => frame?,
            };
        let Some(mut frame) = frame else {
            return Ok(());
        };
        if let Some(session) = &mut session {
            let body_len = frame
                .len()
                .checked_sub(SessionKey::TAG_LEN)
                .ok_or_else(|| invalid_data("frame shorter than its MAC"))?;
            let tag = frame.split_off(body_len);
            if !session.open(&frame, &tag) {
                return Err(invalid_data(format!(
                    "a frame from {from} failed its MAC (changed, injected or out of order)"
                )));
            }
        }
        let whole = match frame.split_first() {
            Some((&TAG_CHUNK, rest)) => {
                let (&last, piece) = rest
                    .split_first()
                    .ok_or_else(|| invalid_data("empty chunk frame"))?;
                if partial.len() + piece.len() > MAX_MESSAGE {
                    return Err(invalid_data(format!(
                        "chunked message from {from} exceeds {MAX_MESSAGE} bytes"
                    )));
                }
                partial.extend_from_slice(piece);
                if last == 0 {
                    continue;
                }
                std::mem::take(&mut partial)
            }
            _ if !partial.is_empty() => {
                return Err(invalid_data("a chunked message was interrupted"));
            }
            _ => frame,
        };
        if !rpc::known_kind(&whole) {
            debug!(%from, "skipping a message of a kind this version does not know (a newer server?)");
            continue;
        }
        let msg = rpc::decode(&whole)
            .map_err(|e| invalid_data(format!("undecodable frame from {from}: {e}")))?;
        deliver(from.clone(), msg);
    }
}

/// What the reader of an inbound connection checks it against.
struct Inbound {
    /// The shared key, if any.
    key: Option<SharedKey>,
    /// Counts connections refused for not proving it.
    refused: Arc<AtomicU64>,
    /// Places for connections still in their handshake ([`MAX_PENDING_HANDSHAKES`]).
    pending: Arc<tokio::sync::Semaphore>,
    /// TLS on this port, if configured.
    tls: Option<RpcTls>,
}

/// Who we are on outbound connections.
struct Dialer {
    /// Our advertised address, sent in the preamble.
    advertise: String,
    /// The shared key, if any.
    key: Option<SharedKey>,
    /// Dials over TLS when set (`--verify-outgoing`).
    tls: Option<tokio_rustls::TlsConnector>,
}

/// One writer per destination: a persistent connection, re-established on the next message after a failure.
async fn run_writer(
    to: String,
    me: Dialer,
    mut queue: mpsc::Receiver<RpcMessage>,
    shutdown: CancellationToken,
) {
    // One cancellation point for everything below, including a write stalled on a peer that
    // stopped reading.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = write_to_peer(&to, &me, &mut queue) => {}
    }
    trace!(peer = %to, "RPC writer stopped");
}

/// The writer's loop; returns when the queue closes.
async fn write_to_peer(to: &str, me: &Dialer, queue: &mut mpsc::Receiver<RpcMessage>) {
    let mut backoff = BACKOFF_MIN;
    while let Some(first) = queue.recv().await {
        let error = match connect(to).await {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                let written = match &me.tls {
                    None => {
                        let (read, write) = stream.into_split();
                        write_connection(read, write, me, first, queue).await
                    }
                    Some(connector) => match dial_tls(connector, to, stream).await {
                        Ok(tls) => {
                            let (read, write) = tokio::io::split(tls);
                            write_connection(read, write, me, first, queue).await
                        }
                        Err(error) => Err(error),
                    },
                };
                match written {
                    Ok(()) => return,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        if error.kind() == io::ErrorKind::InvalidData {
            // A refused handshake: a wrong or missing key, or not one of our servers.
            warn!(peer = to, %error, "RPC connection refused; dropping messages");
        } else {
            debug!(peer = to, %error, ?backoff, "RPC connection lost; dropping messages");
        }
        // Messages queued now would be stale by the time the peer is back, and Raft resends
        // what matters, so they are discarded rather than kept.
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                next = queue.recv() => if next.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Connects with a timeout and disables Nagle: Raft heartbeats are small and latency-sensitive.
/// A name (`dc1-server1:8300`) is resolved afresh on every dial (registry_api::resolve), so a
/// peer that came back with a new address is found; one that does not resolve yet is a
/// connection error like any other, retried with the writer's backoff.
async fn connect(to: &str) -> io::Result<TcpStream> {
    let stream = registry_api::resolve::connect(to, CONNECT_TIMEOUT).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The TLS handshake with a peer we dialled, within [`HANDSHAKE_TIMEOUT`]; a refused
/// certificate is `InvalidData` (logged at warn, as a wrong key is).
async fn dial_tls(
    connector: &tokio_rustls::TlsConnector,
    to: &str,
    stream: TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = to.rsplit_once(':').map_or(to, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = registry_api::tls::dial_name(host);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(error)) => Err(invalid_data(format!("TLS handshake failed: {error}"))),
    }
}

/// Writes the preamble and then messages until the connection fails (`Err`) or the queue
/// closes (`Ok`). Frames are buffered and flushed only when the queue is momentarily empty, so a
/// burst of appends goes out in a few segments.
async fn write_connection<R, W>(
    peer_read: R,
    peer_write: W,
    me: &Dialer,
    first: RpcMessage,
    queue: &mut mpsc::Receiver<RpcMessage>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut peer_read = BufReader::new(peer_read);
    let mut out = BufWriter::new(peer_write);
    let mut session = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        dial_handshake(me, &mut peer_read, &mut out),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "RPC handshake timed out"))??;
    let mut probe = [0u8; 1];
    let mut next = first;
    loop {
        let frame = rpc::encode(&next);
        if frame.len() > MAX_MESSAGE {
            // The receiver would close the connection on it; better to lose just this message.
            warn!(
                bytes = frame.len(),
                limit = MAX_MESSAGE,
                "dropping oversized RPC message"
            );
        } else if frame.len() + SessionKey::TAG_LEN > MAX_FRAME {
            let pieces = frame.chunks(CHUNK).count();
            for (i, piece) in frame.chunks(CHUNK).enumerate() {
                let mut chunk = Vec::with_capacity(piece.len() + 2 + SessionKey::TAG_LEN);
                chunk.push(TAG_CHUNK);
                chunk.push(u8::from(i + 1 == pieces));
                chunk.extend_from_slice(piece);
                write_sealed(&mut out, session.as_mut(), chunk).await?;
            }
        } else {
            write_sealed(&mut out, session.as_mut(), frame).await?;
        }
        next = match queue.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Disconnected) => return Ok(()),
            Err(TryRecvError::Empty) => {
                out.flush().await?;
                // The peer never writes on this connection, so a readable socket means it closed
                // (e.g. it restarted); noticing now avoids losing the next message to a dead socket.
                tokio::select! {
                    msg = queue.recv() => match msg {
                        Some(msg) => msg,
                        None => return Ok(()),
                    },
                    read = peer_read.read(&mut probe) => return Err(match read {
                        Ok(_) => io::ErrorKind::ConnectionAborted.into(),
                        Err(error) => error,
                    }),
                }
            }
        };
    }
}

/// Writes one frame after the handshake, with its MAC appended when the connection has a
/// session key.
async fn write_sealed<W: AsyncWrite + Unpin>(
    out: &mut W,
    session: Option<&mut SessionKey>,
    mut frame: Vec<u8>,
) -> io::Result<()> {
    if let Some(session) = session {
        let tag = session.seal(&frame);
        frame.extend_from_slice(tag.as_ref());
    }
    write_frame(out, &frame).await
}

/// The dialer's side of the handshake (see [`read_connection`]); the session key for the frames
/// that follow, when there is a key.
async fn dial_handshake<R, W>(
    me: &Dialer,
    input: &mut R,
    out: &mut W,
) -> io::Result<Option<SessionKey>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let dialer_nonce = auth::nonce();
    let mut preamble = PREAMBLE_MAGIC.to_vec();
    preamble.extend_from_slice(&dialer_nonce);
    preamble.extend_from_slice(me.advertise.as_bytes());
    write_frame(out, &preamble).await?;
    out.flush().await?;
    let answer = read_frame(input, MAX_HANDSHAKE_FRAME)
        .await?
        .ok_or_else(|| invalid_data("peer closed the connection during the handshake"))?;
    if answer.len() < NONCE_LEN {
        return Err(invalid_data("short handshake answer"));
    }
    let (listener_nonce, listener_mac) = answer.split_at(NONCE_LEN);
    let addr = me.advertise.as_bytes();
    let proof = match &me.key {
        Some(key) => {
            if !key.verify_handshake_mac(
                b"listener",
                &dialer_nonce,
                listener_nonce,
                addr,
                listener_mac,
            ) {
                return Err(invalid_data(
                    "RPC handshake failed: the peer does not hold this cluster's key (--encrypt)",
                ));
            }
            key.handshake_mac(b"dialer", &dialer_nonce, listener_nonce, addr)
        }
        None => Vec::new(),
    };
    write_frame(out, &proof).await?;
    out.flush().await?;
    Ok(me
        .key
        .as_ref()
        .map(|key| key.session_key(&dialer_nonce, listener_nonce, addr)))
}

/// Writes `[u32 big-endian length][bytes]`.
async fn write_frame<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid_data("frame too large"))?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(bytes).await
}

/// Reads one frame; `None` on a clean end of stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut len_bytes = [0u8; 4];
    if input.read(&mut len_bytes[..1]).await? == 0 {
        return Ok(None);
    }
    input.read_exact(&mut len_bytes[1..]).await?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
    if len > max {
        return Err(invalid_data(format!(
            "frame of {len} bytes exceeds limit of {max}"
        )));
    }
    // Grow as bytes arrive instead of trusting the announced length with one allocation.
    let mut frame = Vec::with_capacity(len.min(64 * 1024));
    input.take(len as u64).read_to_end(&mut frame).await?;
    if frame.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(frame))
}

fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}
