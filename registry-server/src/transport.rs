//! Server-to-server transport on the RPC port: "deliver this [`RpcMessage`] to that address".
//!
//! Two implementations of one small trait: [`TcpTransport`] for real servers and [`MemNetwork`] /
//! [`MemTransport`] for tests, whose links can be cut, isolated, made lossy or slow (the `Network`
//! of raft-rs' test harness). Sending never blocks and never reports failure: Raft retransmits
//! whatever is lost (Raft paper §5.3), so a message that cannot go out now is simply dropped.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::rpc::{self, RpcMessage};
use registry_api::auth::{self, SharedKey, NONCE_LEN};

/// Called for every message that arrives for this node: (sender's advertised address, message).
/// It must not block (it is called from tokio tasks); the node behind it uses try_send.
pub type Deliver = Arc<dyn Fn(String, RpcMessage) + Send + Sync>;

/// Sends messages to other servers by their advertised RPC address ("host:port", or any string for the in-memory network).
pub trait Transport: Send + Sync + 'static {
    /// Queue `msg` for `to`. NEVER blocks and never fails loudly: this is called from the Raft thread
    /// (a plain std thread, NOT inside a tokio runtime context), and Raft retransmits, so a message that cannot be
    /// delivered (peer down, queue full) is dropped (log at debug/trace).
    fn send(&self, to: &str, msg: RpcMessage);
}

/// Largest accepted frame. A message above it (a snapshot of a large catalog) is sent as a
/// sequence of [`TAG_CHUNK`] frames and reassembled, so no one frame makes the reader buffer
/// more than this.
const MAX_FRAME: usize = 16 * 1024 * 1024;
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
const PREAMBLE_MAGIC: &[u8; 4] = b"RGv1";
/// Time allowed for the whole handshake; a stranger that opens a connection and stalls is cut.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Locks a mutex, ignoring poisoning: the maps behind it stay consistent because no critical
/// section here can panic half-way through an update.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

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
}

/// Takes over an inbound RPC-port connection that turned out to be HTTP.
pub type HttpHandoff = Arc<dyn Fn(TcpStream) + Send + Sync>;

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

/// How long an inbound connection may stay silent before its protocol is known.
const PEEK_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads one inbound connection until it closes, misbehaves, or shutdown.
async fn run_reader(
    stream: TcpStream,
    peer: SocketAddr,
    auth: Inbound,
    deliver: Deliver,
    shutdown: CancellationToken,
    http: Option<HttpHandoff>,
) {
    if let Some(handoff) = http {
        let mut first = [0u8; 1];
        let peeked = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(PEEK_TIMEOUT, stream.peek(&mut first)) => r,
        };
        match peeked {
            Ok(Ok(1)) if first[0] != 0 => {
                handoff(stream);
                return;
            }
            Ok(Ok(_)) => {}
            // Silent or broken: nothing to serve.
            _ => return,
        }
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        result = read_connection(stream, &auth, &deliver) => match result {
            Ok(()) => trace!(%peer, "inbound RPC connection closed"),
            Err(error) => warn!(%peer, %error, "closing inbound RPC connection"),
        },
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
/// nonces on both sides mean a recorded handshake cannot be replayed. Without a key the MACs are
/// empty and anything goes (the server warned at start).
async fn read_connection(stream: TcpStream, auth: &Inbound, deliver: &Deliver) -> io::Result<()> {
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
        let proof = read_frame(&mut input, MAX_HANDSHAKE_FRAME)
            .await?
            .ok_or_else(|| invalid_data("connection closed during the handshake"))?;
        if let Some(key) = key {
            if !key.verify_handshake_mac(b"dialer", dialer_nonce, &listener_nonce, addr, &proof) {
                auth.refused.fetch_add(1, Ordering::Relaxed);
                return Err(invalid_data(
                    "RPC handshake failed: the peer does not hold this cluster's key (--encrypt)",
                ));
            }
        }
        Ok(Some(from))
    };
    let from = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Err(_) => return Err(invalid_data("RPC handshake timed out")),
        Ok(Ok(Some(from))) => from,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
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
        let Some(frame) = frame else {
            return Ok(());
        };
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
}

/// Who we are on outbound connections.
struct Dialer {
    /// Our advertised address, sent in the preamble.
    advertise: String,
    /// The shared key, if any.
    key: Option<SharedKey>,
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
                match write_connection(stream, me, first, queue).await {
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
async fn connect(to: &str) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes the preamble and then messages until the connection fails (`Err`) or the queue
/// closes (`Ok`). Frames are buffered and flushed only when the queue is momentarily empty, so a
/// burst of appends goes out in a few segments.
async fn write_connection(
    stream: TcpStream,
    me: &Dialer,
    first: RpcMessage,
    queue: &mut mpsc::Receiver<RpcMessage>,
) -> io::Result<()> {
    let (peer_read, peer_write) = stream.into_split();
    let mut peer_read = BufReader::new(peer_read);
    let mut out = BufWriter::new(peer_write);
    tokio::time::timeout(
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
        } else if frame.len() > MAX_FRAME {
            let pieces = frame.chunks(CHUNK).count();
            for (i, piece) in frame.chunks(CHUNK).enumerate() {
                let mut chunk = Vec::with_capacity(piece.len() + 2);
                chunk.push(TAG_CHUNK);
                chunk.push(u8::from(i + 1 == pieces));
                chunk.extend_from_slice(piece);
                write_frame(&mut out, &chunk).await?;
            }
        } else {
            write_frame(&mut out, &frame).await?;
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

/// The dialer's side of the handshake (see [`read_connection`]).
async fn dial_handshake<R, W>(me: &Dialer, input: &mut R, out: &mut W) -> io::Result<()>
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
    out.flush().await
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

/// In-memory network for tests: every node registers an address; links between addresses can be faulted.
#[derive(Clone)]
pub struct MemNetwork {
    /// Runtime for delayed deliveries; senders may be plain threads.
    runtime: Handle,
    /// Nodes, faults and counters. Never held while calling a `Deliver`, which may send in turn.
    state: Arc<Mutex<MemState>>,
}

/// A setting for the directed link `from -> to`; "*" on either side stands for any address.
type LinkRule<T> = (String, String, T);

/// Registered nodes, the faults between them, and what happened to messages so far.
#[derive(Default)]
struct MemState {
    /// Current node at each address: (incarnation, delivery target). The incarnation tells a
    /// restarted node from its killed predecessor at the same address.
    nodes: HashMap<String, (u64, Deliver)>,
    /// Source of incarnations.
    next_incarnation: u64,
    /// Cut directed links.
    cuts: Vec<LinkRule<()>>,
    /// Addresses cut from everyone else.
    isolated: HashSet<String>,
    /// Drop probability per link.
    drop_rates: Vec<LinkRule<f64>>,
    /// Delivery delay per link.
    delays: Vec<LinkRule<Duration>>,
    /// Messages handed to a `Deliver`.
    delivered: u64,
    /// Messages lost to a fault or a missing node.
    dropped: u64,
    /// Raft snapshots still to drop per directed link (see [`MemNetwork::drop_snapshots`]).
    snapshot_drops: HashMap<(String, String), u64>,
}

fn set_rule<T>(rules: &mut Vec<LinkRule<T>>, from: &str, to: &str, value: T) {
    rules.retain(|(f, t, _)| f != from || t != to);
    rules.push((from.to_owned(), to.to_owned(), value));
}

/// The largest setting that applies to `from -> to`.
fn strongest<T: Copy + PartialOrd>(rules: &[LinkRule<T>], from: &str, to: &str) -> Option<T> {
    rules
        .iter()
        .filter(|(f, t, _)| (f == from || f == "*") && (t == to || t == "*"))
        .map(|&(_, _, value)| value)
        .reduce(|a, b| if b > a { b } else { a })
}

impl MemState {
    fn is_current(&self, addr: &str, incarnation: u64) -> bool {
        self.nodes.get(addr).is_some_and(|(i, _)| *i == incarnation)
    }

    /// Why a message from `from` to `to` is lost, if it is.
    fn fault(&self, from: &str, to: &str) -> Option<&'static str> {
        if from != to && (self.isolated.contains(from) || self.isolated.contains(to)) {
            return Some("isolated");
        }
        if strongest(&self.cuts, from, to).is_some() {
            return Some("link cut");
        }
        match strongest(&self.drop_rates, from, to) {
            Some(p) if rand::random::<f64>() < p => Some("random drop"),
            _ => None,
        }
    }

    fn count_drop(&mut self, from: &str, to: &str, reason: &str) {
        trace!(from, to, reason, "in-memory message dropped");
        self.dropped += 1;
    }
}

impl MemNetwork {
    /// An empty network; delayed messages are delivered by tasks on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        MemNetwork {
            runtime,
            state: Arc::default(),
        }
    }

    /// Attach a node at `addr`; returns its transport. Re-registering an address (a restarted node) replaces the old delivery target.
    pub fn register(&self, addr: &str, deliver: Deliver) -> Arc<MemTransport> {
        let mut state = lock(&self.state);
        state.next_incarnation += 1;
        let incarnation = state.next_incarnation;
        state.nodes.insert(addr.to_owned(), (incarnation, deliver));
        let (network, addr) = (self.clone(), addr.to_owned());
        Arc::new(MemTransport {
            network,
            addr,
            incarnation,
        })
    }

    /// Detach (the node was killed): messages to it vanish, messages it still tries to send vanish too.
    pub fn unregister(&self, addr: &str) {
        lock(&self.state).nodes.remove(addr);
    }

    /// Cut both directions between a and b.
    pub fn cut(&self, a: &str, b: &str) {
        let mut state = lock(&self.state);
        set_rule(&mut state.cuts, a, b, ());
        set_rule(&mut state.cuts, b, a, ());
    }

    /// Cut only messages from `from` to `to`.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        set_rule(&mut lock(&self.state).cuts, from, to, ());
    }

    /// Cut `a` from every other address (current and future).
    pub fn isolate(&self, a: &str) {
        lock(&self.state).isolated.insert(a.to_owned());
    }

    /// Remove every cut, isolation, drop rate and delay involving `a`. Settings made with "*" on
    /// both sides involve no address in particular and stay until [`MemNetwork::heal_all`].
    pub fn heal(&self, a: &str) {
        let mut state = lock(&self.state);
        state.cuts.retain(|(f, t, _)| f != a && t != a);
        state.isolated.remove(a);
        state.drop_rates.retain(|(f, t, _)| f != a && t != a);
        state.delays.retain(|(f, t, _)| f != a && t != a);
        state.snapshot_drops.retain(|(f, t), _| f != a && t != a);
    }

    /// Remove all faults.
    pub fn heal_all(&self) {
        let mut state = lock(&self.state);
        state.cuts.clear();
        state.isolated.clear();
        state.drop_rates.clear();
        state.delays.clear();
        state.snapshot_drops.clear();
    }

    /// Drop each message from `from` to `to` with probability p (0.0..=1.0). "*" as from or to means any.
    pub fn set_drop_rate(&self, from: &str, to: &str, p: f64) {
        set_rule(
            &mut lock(&self.state).drop_rates,
            from,
            to,
            p.clamp(0.0, 1.0),
        );
    }

    /// Delay every message from `from` to `to` by d (spawned on the runtime handle with tokio::time::sleep; order between delayed messages is not guaranteed — like a real network). "*" wildcard as above.
    pub fn set_delay(&self, from: &str, to: &str, d: Duration) {
        set_rule(&mut lock(&self.state).delays, from, to, d);
    }

    /// Drop the next `n` Raft snapshots from `from` to `to` (exact addresses) while everything
    /// else on the link passes: a snapshot lost on its way, as a frame over a transport's cap or
    /// a connection that breaks mid-send loses one.
    pub fn drop_snapshots(&self, from: &str, to: &str, n: u64) {
        let link = (from.to_owned(), to.to_owned());
        lock(&self.state).snapshot_drops.insert(link, n);
    }

    /// Counters for tests: messages delivered and dropped so far.
    pub fn stats(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.delivered, state.dropped)
    }

    /// Routes one message from the node registered as (`from`, `incarnation`).
    fn route(&self, from: &str, incarnation: u64, to: &str, msg: RpcMessage) {
        let (target, deliver, delay) = {
            let mut state = lock(&self.state);
            if matches!(&msg, RpcMessage::Raft(m) if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
            {
                let link = (from.to_owned(), to.to_owned());
                if let Some(left) = state.snapshot_drops.get_mut(&link).filter(|n| **n > 0) {
                    *left -= 1;
                    return state.count_drop(from, to, "snapshot dropped");
                }
            }
            let verdict = match state.nodes.get(to) {
                _ if !state.is_current(from, incarnation) => Err("sender detached"),
                None => Err("no node at address"),
                Some((target, deliver)) => match state.fault(from, to) {
                    Some(reason) => Err(reason),
                    None => Ok((
                        *target,
                        Arc::clone(deliver),
                        strongest(&state.delays, from, to),
                    )),
                },
            };
            match verdict {
                Err(reason) => return state.count_drop(from, to, reason),
                Ok(route) => {
                    state.delivered += u64::from(route.2.is_none());
                    route
                }
            }
        };
        let Some(delay) = delay else {
            return deliver(from.to_owned(), msg);
        };
        let (network, from, to) = (self.clone(), from.to_owned(), to.to_owned());
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            {
                let mut state = lock(&network.state);
                // The target may have been killed or restarted while the message was in flight.
                if !state.is_current(&to, target) {
                    return state.count_drop(&from, &to, "target gone while delayed");
                }
                state.delivered += 1;
            }
            deliver(from, msg);
        });
    }
}

/// One node's attachment to a [`MemNetwork`].
pub struct MemTransport {
    /// The network it sends through.
    network: MemNetwork,
    /// Its address, given to receivers as `from`.
    addr: String,
    /// Which registration of `addr` this is; a killed node's transport stops working.
    incarnation: u64,
}

impl Transport for MemTransport {
    fn send(&self, to: &str, msg: RpcMessage) {
        self.network.route(&self.addr, self.incarnation, to, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Hello, PeerInfo};
    use raft::eraftpb::Message;
    use std::time::Instant;

    /// Records what a node receives.
    #[derive(Clone, Default)]
    struct Inbox(Arc<Mutex<Vec<(String, RpcMessage)>>>);

    impl Inbox {
        fn deliver(&self) -> Deliver {
            let inbox = self.clone();
            Arc::new(move |from, msg| lock(&inbox.0).push((from, msg)))
        }
        fn len(&self) -> usize {
            lock(&self.0).len()
        }
        fn has(&self, from: &str, msg: &RpcMessage) -> bool {
            lock(&self.0).iter().any(|(f, m)| f == from && m == msg)
        }
        fn take(&self) -> Vec<(String, RpcMessage)> {
            std::mem::take(&mut *lock(&self.0))
        }
    }

    fn raft(term: u64) -> RpcMessage {
        let mut m = Message::default();
        m.set_from(1);
        m.set_to(2);
        m.set_term(term);
        RpcMessage::Raft(m)
    }

    fn hello(node: &str) -> RpcMessage {
        RpcMessage::Hello(Hello {
            from: PeerInfo {
                id: 7,
                node: node.into(),
                rpc_addr: format!("{node}:8300"),
                http_addr: format!("{node}:8500"),
                datacenter: "dc1".into(),
            },
            in_cluster: false,
            known: vec![],
            leader: 0,
            reply: false,
        })
    }

    /// Polls `cond` every 10 ms for up to 5 s.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn tcp_node(
        listen: &str,
        advertise: &str,
        inbox: &Inbox,
        shutdown: &CancellationToken,
    ) -> (Arc<TcpTransport>, String, JoinHandle<()>) {
        keyed_node(listen, advertise, None, inbox, shutdown).await
    }

    async fn keyed_node(
        listen: &str,
        advertise: &str,
        key: Option<&SharedKey>,
        inbox: &Inbox,
        shutdown: &CancellationToken,
    ) -> (Arc<TcpTransport>, String, JoinHandle<()>) {
        let (transport, bound, accept) = TcpTransport::bind(
            listen.parse().unwrap(),
            advertise.to_owned(),
            key.cloned(),
            inbox.deliver(),
            Handle::current(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        (transport, bound.to_string(), accept)
    }

    /// Cancels and checks that every task of the transports really ends.
    async fn stop(shutdown: CancellationToken, accept_loops: Vec<JoinHandle<()>>) {
        shutdown.cancel();
        for accept in accept_loops {
            let joined = tokio::time::timeout(Duration::from_secs(5), accept).await;
            assert!(matches!(joined, Ok(Ok(()))), "transport did not stop");
        }
    }

    fn frame(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_exchanges_messages_both_ways_in_order() {
        let shutdown = CancellationToken::new();
        let (a_inbox, b_inbox) = (Inbox::default(), Inbox::default());
        let (a, a_addr, a_loop) = tcp_node("127.0.0.1:0", "node-a:8300", &a_inbox, &shutdown).await;
        let (b, b_addr, b_loop) = tcp_node("127.0.0.1:0", "node-b:8300", &b_inbox, &shutdown).await;
        a.send(&b_addr, raft(3));
        a.send(&b_addr, hello("a"));
        b.send(&a_addr, hello("b"));
        b.send(&a_addr, raft(4));
        assert!(eventually(|| b_inbox.len() == 2 && a_inbox.len() == 2).await);
        let from_a = vec![
            ("node-a:8300".to_owned(), raft(3)),
            ("node-a:8300".to_owned(), hello("a")),
        ];
        let from_b = vec![
            ("node-b:8300".to_owned(), hello("b")),
            ("node-b:8300".to_owned(), raft(4)),
        ];
        assert_eq!(b_inbox.take(), from_a);
        assert_eq!(a_inbox.take(), from_b);
        stop(shutdown, vec![a_loop, b_loop]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_listener_survives_garbage() {
        let shutdown = CancellationToken::new();
        let inbox = Inbox::default();
        let (_t, addr, accept) = tcp_node("127.0.0.1:0", "victim", &inbox, &shutdown).await;
        let garbage: [Vec<u8>; 3] = [
            [frame(b"evil"), frame(&[9, 9, 9])].concat(), // unknown tag
            [frame(b"evil"), u32::MAX.to_be_bytes().to_vec()].concat(), // oversized
            frame(&[0xff, 0xfe]),                         // preamble not UTF-8
        ];
        for bytes in garbage {
            let mut raw = TcpStream::connect(&addr).await.unwrap();
            raw.write_all(&bytes).await.unwrap();
            // The server must hang up on us.
            let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut [0u8; 1])).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "connection not closed: {read:?}"
            );
        }
        let (sender, _, sender_loop) =
            tcp_node("127.0.0.1:0", "honest", &Inbox::default(), &shutdown).await;
        sender.send(&addr, raft(1));
        assert!(eventually(|| inbox.has("honest", &raft(1))).await);
        assert_eq!(
            inbox.len(),
            1,
            "nothing from the garbage connections is delivered"
        );
        stop(shutdown, vec![accept, sender_loop]).await;
    }

    fn new_key() -> SharedKey {
        SharedKey::from_base64(&auth::generate_key()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_holders_of_the_key_deliver_and_receive() {
        let shutdown = CancellationToken::new();
        let key = new_key();
        let (inbox, intruder_inbox) = (Inbox::default(), Inbox::default());
        let (v, victim, v_loop) =
            keyed_node("127.0.0.1:0", "victim", Some(&key), &inbox, &shutdown).await;
        let (friend, friend_addr, f_loop) = keyed_node(
            "127.0.0.1:0",
            "friend",
            Some(&key),
            &Inbox::default(),
            &shutdown,
        )
        .await;
        let (other_key, _, o_loop) = keyed_node(
            "127.0.0.1:0",
            "other-key",
            Some(&new_key()),
            &intruder_inbox,
            &shutdown,
        )
        .await;
        let (no_key, no_key_addr, n_loop) =
            keyed_node("127.0.0.1:0", "no-key", None, &intruder_inbox, &shutdown).await;
        // A forged heartbeat with a high term would depose the leader if it were stepped.
        other_key.send(&victim, raft(99));
        no_key.send(&victim, raft(98));
        friend.send(&victim, raft(1));
        assert!(eventually(|| inbox.has("friend", &raft(1))).await);
        // The keyed node does not talk to a listener that cannot prove the key either.
        friend.send(&no_key_addr, raft(2));
        // Both intruders have tried (and been refused) at least twice by now.
        assert!(
            eventually(|| {
                other_key.send(&victim, raft(99));
                no_key.send(&victim, raft(98));
                v.refused_handshakes() >= 4
            })
            .await,
            "the intruders' handshakes were not refused"
        );
        friend.send(&victim, raft(3));
        assert!(eventually(|| inbox.has("friend", &raft(3))).await);
        assert_eq!(
            inbox.take(),
            vec![
                ("friend".to_owned(), raft(1)),
                ("friend".to_owned(), raft(3))
            ]
        );
        assert_eq!(intruder_inbox.len(), 0, "a keyless listener got a message");
        let _ = friend_addr;
        stop(shutdown, vec![v_loop, f_loop, o_loop, n_loop]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stranger_stalling_in_the_handshake_is_cut_off() {
        let shutdown = CancellationToken::new();
        let key = new_key();
        let (_t, addr, accept) = keyed_node(
            "127.0.0.1:0",
            "victim",
            Some(&key),
            &Inbox::default(),
            &shutdown,
        )
        .await;
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        // A valid-looking preamble, then silence instead of the proof.
        let mut preamble = PREAMBLE_MAGIC.to_vec();
        preamble.extend_from_slice(&[7u8; NONCE_LEN]);
        preamble.extend_from_slice(b"stranger");
        raw.write_all(&frame(&preamble)).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 1024];
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, async {
            loop {
                match raw.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // the listener's challenge
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled handshake was not cut");
        assert!(started.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(500));
        stop(shutdown, vec![accept]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_over_the_frame_cap_arrive_in_chunks() {
        let shutdown = CancellationToken::new();
        let key = new_key();
        let inbox = Inbox::default();
        let (_b, b_addr, b_loop) =
            keyed_node("127.0.0.1:0", "b", Some(&key), &inbox, &shutdown).await;
        let (a, _, a_loop) =
            keyed_node("127.0.0.1:0", "a", Some(&key), &Inbox::default(), &shutdown).await;
        // A snapshot twice the frame cap, then an ordinary message on the same connection.
        let mut big = Message::default();
        big.set_to(2);
        big.mut_snapshot()
            .set_data(vec![0x5a; 2 * MAX_FRAME + 123].into());
        let big = RpcMessage::Raft(big);
        a.send(&b_addr, big.clone());
        a.send(&b_addr, raft(5));
        assert!(eventually(|| inbox.len() == 2).await, "not delivered");
        assert_eq!(
            inbox.take(),
            vec![("a".to_owned(), big), ("a".to_owned(), raft(5))]
        );
        stop(shutdown, vec![a_loop, b_loop]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_send_to_dead_address_then_peer_comes_up() {
        let shutdown = CancellationToken::new();
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = reserved.local_addr().unwrap().to_string();
        drop(reserved);
        let (a, _, a_loop) = tcp_node("127.0.0.1:0", "node-a", &Inbox::default(), &shutdown).await;
        let started = Instant::now();
        for term in 0..10_000 {
            a.send(&dead, raft(term)); // more than the queue holds
        }
        assert!(started.elapsed() < Duration::from_secs(1), "send blocked");

        let b_inbox = Inbox::default();
        let (_b, b_addr, b_loop) = tcp_node(&dead, "node-b", &b_inbox, &shutdown).await;
        assert_eq!(b_addr, dead);
        let probe = raft(1_000_000);
        assert!(
            eventually(|| {
                a.send(&dead, probe.clone());
                b_inbox.has("node-a", &probe)
            })
            .await
        );
        stop(shutdown, vec![a_loop, b_loop]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_from_plain_thread_works_for_both_transports() {
        let shutdown = CancellationToken::new();
        let (b_inbox, m_inbox) = (Inbox::default(), Inbox::default());
        let (a, _, a_loop) = tcp_node("127.0.0.1:0", "node-a", &Inbox::default(), &shutdown).await;
        let (_b, b_addr, b_loop) = tcp_node("127.0.0.1:0", "node-b", &b_inbox, &shutdown).await;
        let net = MemNetwork::new(Handle::current());
        let (x, _y) = (
            net.register("x", m_inbox.deliver()),
            net.register("y", m_inbox.deliver()),
        );
        // A delayed message needs the stored runtime handle too.
        net.set_delay("x", "y", Duration::from_millis(20));
        let raft_thread = std::thread::spawn(move || {
            let outside = Handle::try_current().is_err();
            a.send(&b_addr, raft(7));
            x.send("y", raft(8));
            outside
        });
        assert!(raft_thread.join().unwrap(), "must run outside the runtime");
        assert!(eventually(|| b_inbox.has("node-a", &raft(7)) && m_inbox.has("x", &raft(8))).await);
        stop(shutdown, vec![a_loop, b_loop]).await;
    }

    /// Three nodes "a", "b", "c" on a fresh network.
    fn mem_cluster() -> (MemNetwork, Vec<Arc<MemTransport>>, Vec<Inbox>) {
        let net = MemNetwork::new(Handle::current());
        let inboxes = vec![Inbox::default(), Inbox::default(), Inbox::default()];
        let nodes = ["a", "b", "c"]
            .iter()
            .zip(&inboxes)
            .map(|(addr, inbox)| net.register(addr, inbox.deliver()))
            .collect();
        (net, nodes, inboxes)
    }

    #[tokio::test]
    async fn mem_delivers_and_cuts_block_both_or_one_way() {
        let (net, n, inbox) = mem_cluster();
        n[0].send("b", raft(1));
        assert_eq!(inbox[1].take(), vec![("a".to_owned(), raft(1))]);
        net.cut("a", "b");
        n[0].send("b", raft(2));
        n[1].send("a", raft(2));
        n[0].send("c", raft(2));
        assert_eq!((inbox[0].len(), inbox[1].len(), inbox[2].len()), (0, 0, 1));
        assert_eq!(net.stats(), (2, 2));

        net.cut_one_way("c", "a");
        n[2].send("a", raft(3));
        n[0].send("c", raft(4));
        assert!(inbox[0].take().is_empty(), "c -> a is cut");
        assert!(inbox[2].has("a", &raft(4)), "a -> c still works");
    }

    #[tokio::test]
    async fn mem_isolate_then_heal() {
        let (net, n, inbox) = mem_cluster();
        net.isolate("a");
        let d = net.register("d", Inbox::default().deliver()); // a future node is cut off too
        for (to, from) in [("b", &n[0]), ("a", &n[1]), ("a", &n[2]), ("a", &d)] {
            from.send(to, raft(1));
        }
        assert_eq!((inbox[0].len(), inbox[1].len()), (0, 0));
        n[1].send("c", raft(1));
        assert_eq!(inbox[2].len(), 1, "the others still talk");

        net.cut("b", "c");
        net.heal("a");
        n[0].send("b", raft(2));
        n[1].send("a", raft(2));
        n[1].send("c", raft(2));
        assert!(inbox[1].has("a", &raft(2)) && inbox[0].has("b", &raft(2)));
        assert!(
            !inbox[2].has("b", &raft(2)),
            "heal(a) leaves other faults alone"
        );
        net.heal_all();
        n[1].send("c", raft(3));
        assert!(inbox[2].has("b", &raft(3)));
    }

    #[tokio::test]
    async fn mem_drop_rate() {
        let (net, n, inbox) = mem_cluster();
        net.set_drop_rate("*", "b", 1.0);
        for term in 0..50 {
            n[0].send("b", raft(term));
        }
        assert_eq!((inbox[1].len(), net.stats()), (0, (0, 50)));
        net.set_drop_rate("*", "b", 0.5);
        for term in 0..1000 {
            n[0].send("b", raft(term));
        }
        let got = inbox[1].take().len();
        assert!((300..700).contains(&got), "p = 0.5 delivered {got} of 1000");
        net.heal_all();
        n[0].send("b", raft(1));
        assert_eq!(inbox[1].len(), 1);
    }

    #[tokio::test]
    async fn mem_delay_delays() {
        let (net, n, inbox) = mem_cluster();
        let delay = Duration::from_millis(300);
        net.set_delay("a", "*", delay);
        let sent = Instant::now();
        n[0].send("b", raft(1));
        n[1].send("a", raft(1));
        assert_eq!(inbox[1].len(), 0, "delayed message arrived at once");
        assert_eq!(inbox[0].len(), 1, "the other direction is not delayed");
        assert!(eventually(|| inbox[1].has("a", &raft(1))).await);
        assert!(sent.elapsed() >= delay - Duration::from_millis(10));
    }

    #[tokio::test]
    async fn mem_unregister_and_restart() {
        let (net, n, inbox) = mem_cluster();
        net.unregister("b");
        n[0].send("b", raft(1));
        n[1].send("a", raft(1)); // the killed node's leftover sends vanish
        assert_eq!((inbox[0].len(), inbox[1].len()), (0, 0));
        let restarted = Inbox::default();
        let b2 = net.register("b", restarted.deliver());
        n[0].send("b", raft(2));
        b2.send("a", raft(2));
        n[1].send("a", raft(3)); // the old incarnation stays dead
        assert_eq!(restarted.take(), vec![("a".to_owned(), raft(2))]);
        assert_eq!(inbox[0].take(), vec![("b".to_owned(), raft(2))]);
        assert_eq!(net.stats(), (2, 3));
    }
}
