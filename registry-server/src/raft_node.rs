//! The Raft node: one thread that owns the `RawNode`, the catalog's write side
//! and the storage writes, driven by ticks and by events from the HTTP layer
//! and the transport.
//!
//! The loop follows raft-rs's documented `Ready` order (see
//! `examples/five_mem_node` in raft-rs): send the leader's messages, install a
//! snapshot, apply committed entries, persist entries and hard state, send the
//! messages that must wait for persistence, advance, then handle the light
//! ready the same way. All events that queued up while the thread was busy are
//! drained before one Ready is handled, so many proposals share one fsync.
//!
//! It is a plain thread, not a tokio task, because every Ready blocks on an
//! fsync; the HTTP layer talks to it through a bounded channel and gets its
//! answers on oneshot channels.

use crate::catalog::{CatalogState, Command};
use crate::rpc::{Hello, PeerInfo, RpcMessage};
use crate::storage::{RaftStore, SnapshotImage, StorageFailure, StoreBatch};
use crate::transport::Transport;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
    MessageType,
};
use raft::{Config, RawNode, ReadOnlyOption, StateRole};
use registry_api::Error as ApiError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Timing and sizing of the Raft node. Defaults suit production; tests shorten them.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Election timeout in ticks (randomised by raft-rs between this and twice this).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Compact the log once this many applied entries sit in it.
    pub compact_threshold: u64,
    /// Entries kept behind the applied index at compaction, so a follower that
    /// lags a little catches up from the log rather than by snapshot.
    pub compact_keep: u64,
    /// How often servers greet the servers they know (cluster formation, joins).
    pub hello_interval: Duration,
    /// How long a write waits to be committed and applied.
    pub propose_timeout: Duration,
    /// How long a linearizable read waits for the leader to confirm its index.
    pub read_timeout: Duration,
    /// How long a follower waits for the leader to acknowledge an agent
    /// heartbeat it passed on, before telling the agent it could not.
    pub heartbeat_ack_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_threshold: 8192,
            compact_keep: 1024,
            hello_interval: Duration::from_millis(500),
            propose_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(3),
            heartbeat_ack_timeout: Duration::from_secs(1),
        }
    }
}

impl RaftTuning {
    /// The (unrandomised) election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks as u32
    }
}

/// The applied state, read by the HTTP layer.
pub struct Applied {
    /// The catalog as of `index`.
    pub catalog: CatalogState,
    /// The last applied Raft index.
    pub index: u64,
}

/// A summary of the Raft state for the HTTP layer (`status`, `operator`, headers).
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    /// This server's Raft id.
    pub id: u64,
    /// Leader, follower, candidate...
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader's Raft id, 0 if unknown.
    pub leader_id: u64,
    /// True on a leader that has committed an entry of its own term, i.e. whose
    /// applied state includes everything acknowledged before it took over.
    pub leader_ready: bool,
    /// When a follower last heard from its leader.
    pub last_leader_contact: Option<Instant>,
    /// Voters' Raft ids.
    pub voters: Vec<u64>,
    /// Learners' Raft ids.
    pub learners: Vec<u64>,
    /// Known servers.
    pub peers: BTreeMap<u64, PeerInfo>,
    /// Commit index.
    pub commit: u64,
    /// Whether this server belongs to a formed cluster.
    pub in_cluster: bool,
    /// Set when the node stopped on a fatal error (the node is broken).
    pub fatal: Option<String>,
    /// The log holds entries after this index only (compaction or snapshot).
    pub compacted_to: u64,
    /// Snapshots installed from a leader since start.
    pub snapshots_installed: u64,
    /// Snapshots sent to followers since start (each one a full image of the
    /// catalog, built on the Raft thread unless the last one can be reused).
    pub snapshots_sent: u64,
    /// Log entries made durable since start, and the fsyncs that did it:
    /// their ratio shows how many proposals share one disk sync.
    pub entries_synced: u64,
    /// See `entries_synced`.
    pub syncs: u64,
}

/// Raft role, mirrored from raft-rs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Follower (also a server not yet in a cluster).
    #[default]
    Follower,
    /// Candidate or pre-candidate.
    Candidate,
    /// Leader.
    Leader,
}

impl RaftStatus {
    /// The leader's RPC address, if a leader is known.
    pub fn leader_addr(&self) -> Option<String> {
        if self.leader_id == 0 {
            return None;
        }
        self.peers.get(&self.leader_id).map(|p| p.rpc_addr.clone())
    }
}

/// State shared between the Raft thread (writer) and the HTTP handlers (readers).
pub struct Shared {
    /// The applied catalog.
    pub applied: RwLock<Applied>,
    /// The latest Raft status.
    pub status: RwLock<RaftStatus>,
    /// Bumped after every applied batch; blocking queries wait on it.
    pub applied_tx: watch::Sender<u64>,
    /// The commit index, stored before any message announcing it leaves, so a
    /// leader answering a default read can wait until it has applied at least
    /// what any follower may already have acknowledged.
    pub commit: AtomicU64,
    /// The leader's read lease: (term, when a ReadIndex round that a quorum
    /// confirmed was started). See [`RaftHandle::default_barrier`].
    pub lease: std::sync::Mutex<Option<(u64, Instant)>>,
}

/// A write or request handed to the Raft thread.
pub enum Event {
    /// A message from another server.
    Rpc(String, RpcMessage),
    /// Replicate a catalog command; answered once applied. Dropped unproposed
    /// once `deadline` has passed or the caller has gone.
    Propose {
        /// The command.
        cmd: Box<Command>,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), ApiError>>,
        /// When the caller stops waiting.
        deadline: Instant,
    },
    /// An agent heartbeat: recorded here if this server leads, else passed to
    /// the leader; answered once the leader has it.
    Heartbeat(crate::rpc::Heartbeat, oneshot::Sender<Result<(), ApiError>>),
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex(oneshot::Sender<Result<u64, ApiError>>),
    /// Remove a server from the configuration.
    RemovePeer(u64, oneshot::Sender<Result<(), ApiError>>),
}

/// What travels in a normal Raft entry: a versioned envelope around a command,
/// so that a newer binary still reads an older log.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// Format version; only 1 exists.
    v: u32,
    /// Request id, to find the waiting caller on the server that proposed it.
    id: u64,
    /// The command.
    cmd: Command,
}

/// What travels in a conf-change entry's context.
#[derive(Serialize, Deserialize, Default)]
struct ConfContext {
    /// Request id of the caller, 0 when nobody waits.
    id: u64,
    /// The server being added (so every member learns its address).
    peer: Option<PeerInfo>,
}

/// A read waiting for a ReadIndex answer, and when it arrived.
type ReadWaiter = (oneshot::Sender<Result<u64, ApiError>>, Instant);

/// Handle the HTTP layer uses to talk to the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    tx: SyncSender<Event>,
    /// The shared state.
    pub shared: Arc<Shared>,
    /// Timing, for the waits below.
    pub tuning: RaftTuning,
}

impl RaftHandle {
    fn send(&self, ev: Event) -> Result<(), ApiError> {
        match self.tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err(ApiError::Internal("server is overloaded, retry".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::Internal("server is shutting down".into()))
            }
        }
    }

    /// Replicates `cmd` and waits until it is applied here, for at most
    /// `propose_timeout`. The Raft thread drops the command unproposed if it
    /// dequeues it after that, or after the caller went away (this future
    /// dropped, e.g. the HTTP client hung up): a write proposed after its
    /// caller gave up could commit after a later write that the caller (an
    /// agent retrying elsewhere) made meanwhile, and undo it.
    pub async fn propose(&self, cmd: Command) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.tuning.propose_timeout;
        self.send(Event::Propose {
            cmd: Box::new(cmd),
            reply: tx,
            deadline,
        })?;
        // The Raft thread expires waiters itself, but not while it is stuck
        // (a slow fsync); the caller's wait is bounded here either way.
        match tokio::time::timeout(self.tuning.propose_timeout, rx).await {
            Ok(answer) => {
                answer.unwrap_or_else(|_| Err(ApiError::Internal("server is shutting down".into())))
            }
            Err(_) => Err(ApiError::Internal(
                "timed out waiting for the write to be committed; it may still apply".into(),
            )),
        }
    }

    /// Returns once this server's applied state is at least as new as the
    /// leader's commit index at the time of the call (Raft's ReadIndex, §6.4).
    pub async fn linearizable_barrier(&self) -> Result<(), ApiError> {
        let started = Instant::now();
        let role_term = |s: &RaftStatus| (s.role, s.term);
        let (role_before, term_before) = self.with_status(role_term);
        let (tx, rx) = oneshot::channel();
        self.send(Event::ReadIndex(tx))?;
        let index = rx
            .await
            .unwrap_or_else(|_| Err(ApiError::Internal("server is shutting down".into())))?;
        let (role_after, term_after) = self.with_status(role_term);
        if role_before == Role::Leader && role_after == Role::Leader && term_before == term_after {
            let mut lease = self.shared.lease.lock().unwrap_or_else(|e| e.into_inner());
            if lease.is_none_or(|(term, at)| term != term_after || at < started) {
                *lease = Some((term_after, started));
            }
        }
        self.wait_applied(index, self.tuning.read_timeout).await
    }

    /// A default-mode read: linearizable, but without a quorum round per read
    /// on a leader holding a lease (Raft thesis §6.4.1). When a quorum
    /// confirmed a ReadIndex round started at `t`, each of those followers
    /// heard from this leader after `t` and, with check-quorum, ignores votes
    /// for an election timeout from then (raft-rs's `in_lease` rule), so no
    /// other leader can exist before `t + election timeout`. The lease is
    /// taken as 3/4 of that, for clock-rate differences; outside it a read
    /// renews it with a ReadIndex round.
    pub async fn default_barrier(&self) -> Result<(), ApiError> {
        let (leader_id, leading, term) = self.with_status(|s| {
            (
                s.leader_id,
                s.role == Role::Leader && s.leader_ready,
                s.term,
            )
        });
        if leader_id == 0 {
            return Err(ApiError::NoLeader);
        }
        if leading {
            let window = self.tuning.tick * self.tuning.election_ticks as u32 * 3 / 4;
            let lease = *self.shared.lease.lock().unwrap_or_else(|e| e.into_inner());
            if lease.is_some_and(|(t, at)| t == term && at.elapsed() < window) {
                return self.leader_barrier().await;
            }
        }
        self.linearizable_barrier().await
    }

    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.shared.applied_tx.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|applied| *applied >= index).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => Err(ApiError::NoLeader),
        }
    }

    /// A default-mode read on the leader: no quorum round, but wait until
    /// everything it has committed is applied here.
    pub async fn leader_barrier(&self) -> Result<(), ApiError> {
        let commit = self.shared.commit.load(Ordering::SeqCst);
        self.wait_applied(commit, self.tuning.read_timeout).await
    }

    /// Routes an agent heartbeat to the leader and returns once the leader
    /// has it (at once on the leader itself). A server that cannot pass it on
    /// (no leader, no recent contact with one, no ack in time) answers
    /// `NoLeader`, so that the agent tries another server rather than
    /// believing itself heard while the leader marks its node critical.
    pub async fn heartbeat(&self, hb: crate::rpc::Heartbeat) -> Result<(), ApiError> {
        let stale_after = self.tuning.election_timeout();
        let reachable = self.with_status(|s| {
            s.leader_id != 0
                && (s.role == Role::Leader
                    || s.last_leader_contact
                        .is_some_and(|t| t.elapsed() < stale_after))
        });
        if !reachable {
            return Err(ApiError::NoLeader);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Event::Heartbeat(hb, tx))?;
        // The Raft thread answers within `heartbeat_ack_timeout` unless it is
        // stuck (a slow fsync): then it cannot pass heartbeats on either.
        let wait = self.tuning.heartbeat_ack_timeout + self.tuning.tick;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ApiError::Internal("server is shutting down".into())),
            Err(_) => Err(ApiError::NoLeader),
        }
    }

    /// Removes a server from the Raft configuration.
    pub async fn remove_peer(&self, id: u64) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::RemovePeer(id, tx))?;
        rx.await
            .unwrap_or_else(|_| Err(ApiError::Internal("server is shutting down".into())))
    }

    /// Looks at the current status without copying it (the copy allocates:
    /// peers, voters), for paths taken on every request.
    pub fn with_status<R>(&self, f: impl FnOnce(&RaftStatus) -> R) -> R {
        f(&self.shared.status.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of the current status.
    pub fn status(&self) -> RaftStatus {
        self.shared
            .status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything the Raft thread needs at start.
pub struct RaftNodeSetup {
    /// This server.
    pub me: PeerInfo,
    /// Storage, already opened.
    pub store: RaftStore,
    /// Applied index found on disk.
    pub applied: u64,
    /// Peer address book found on disk.
    pub peers: BTreeMap<u64, PeerInfo>,
    /// Catalog rebuilt from disk.
    pub catalog: CatalogState,
    /// Form a cluster once this many servers see each other (0: never bootstrap;
    /// 1: bootstrap alone at once, as `--dev` does).
    pub bootstrap_expect: usize,
    /// Servers to greet (their RPC addresses).
    pub retry_join: Vec<String>,
    /// Timing.
    pub tuning: RaftTuning,
    /// Outbound transport.
    pub transport: Arc<dyn Transport>,
    /// Where agent heartbeats go while this server leads (see `liveness.rs`).
    pub heartbeats: tokio::sync::mpsc::Sender<crate::rpc::Heartbeat>,
}

/// Capacity of the event channel; a full channel answers "overloaded" at once
/// rather than queueing without bound.
const EVENT_QUEUE: usize = 16 * 1024;

/// The Raft thread's inbox. Created before the node so that the transport
/// (which must exist before the node) can deliver into it.
pub fn event_channel() -> (SyncSender<Event>, Receiver<Event>) {
    std::sync::mpsc::sync_channel(EVENT_QUEUE)
}

/// Starts the Raft thread on the inbox `rx` (whose sender is `tx`). Returns the
/// handle and the thread's join handle.
pub fn start(
    mut setup: RaftNodeSetup,
    tx: SyncSender<Event>,
    rx: Receiver<Event>,
    shutdown: CancellationToken,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>), StorageFailure> {
    let (applied_tx, _) = watch::channel(setup.applied);
    let shared = Arc::new(Shared {
        applied: RwLock::new(Applied {
            catalog: std::mem::replace(&mut setup.catalog, CatalogState::new("")),
            index: setup.applied,
        }),
        status: RwLock::new(RaftStatus {
            id: setup.me.id,
            ..Default::default()
        }),
        applied_tx,
        commit: AtomicU64::new(0),
        lease: std::sync::Mutex::new(None),
    });
    let peers_for_snap = Arc::new(RwLock::new(setup.peers.clone()));
    {
        let shared = shared.clone();
        let peers = peers_for_snap.clone();
        let memo = std::sync::Mutex::new(SnapshotMemo::default());
        setup.store.set_snapshot_source(Arc::new(move || {
            // raft-rs may ask for a snapshot from inside apply_conf_change,
            // while this thread holds the write lock: then the answer is
            // "temporarily unavailable" (raft-rs asks again), not a deadlock.
            let applied = shared.applied.try_read().ok()?;
            let peers = peers.read().unwrap_or_else(|e| e.into_inner()).clone();
            let data =
                memo.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .image(applied.index, peers, || applied.catalog.rows());
            Some((applied.index, data))
        }));
    }
    let handle = RaftHandle {
        tx: tx.clone(),
        shared: shared.clone(),
        tuning: setup.tuning.clone(),
    };
    let mut node = RaftNode::new(setup, shared, peers_for_snap, rx)?;
    let thread = std::thread::Builder::new()
        .name(format!("raft-{}", node.me.node))
        .spawn(move || {
            let shared = node.shared.clone();
            let name = node.me.node.clone();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run(&shutdown)));
            // Whatever ended the loop, this server no longer leads or follows:
            // it must not keep answering reads as if it did.
            let mut st = shared.status.write().unwrap_or_else(|e| e.into_inner());
            st.role = Role::Follower;
            st.leader_id = 0;
            st.leader_ready = false;
            match outcome {
                Ok(Ok(())) => st.fatal = Some("server is shutting down".into()),
                Ok(Err(e)) => {
                    error!(node = %name, error = %e, "raft node stopped on a fatal error");
                    st.fatal = Some(e.to_string());
                }
                Err(_) => {
                    error!(node = %name, "raft node panicked");
                    st.fatal = Some("raft node panicked".into());
                }
            }
        })
        .map_err(|e| StorageFailure::Corrupt {
            what: "raft thread",
            detail: e.to_string(),
        })?;
    Ok((handle, thread))
}

/// Why the Raft thread stopped: the node is broken and must not go on.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageFailure),
    /// raft-rs reported an error it cannot recover from.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A committed entry this binary cannot decode: applying anything further
    /// would let replicas diverge (Consul treats unknown commands the same way).
    #[error("undecodable committed entry at index {0}: {1}")]
    BadEntry(u64, String),
}

struct RaftNode {
    me: PeerInfo,
    raw: RawNode<RaftStore>,
    store: RaftStore,
    shared: Arc<Shared>,
    peers: BTreeMap<u64, PeerInfo>,
    peers_for_snap: Arc<RwLock<BTreeMap<u64, PeerInfo>>>,
    /// Servers not yet in a cluster that greeted us (bootstrap candidates),
    /// with the set of candidates each of them has seen.
    seen: BTreeMap<u64, Vec<u64>>,
    /// Set once any server that already belongs to a cluster greeted us: from
    /// then on this server only ever joins, never bootstraps a second cluster.
    saw_cluster: bool,
    bootstrap_expect: usize,
    retry_join: Vec<String>,
    tuning: RaftTuning,
    transport: Arc<dyn Transport>,
    heartbeats: tokio::sync::mpsc::Sender<crate::rpc::Heartbeat>,
    events: Receiver<Event>,
    /// Writes proposed here, by request id: who waits, and until when.
    pending_writes: HashMap<u64, (oneshot::Sender<Result<(), ApiError>>, Instant)>,
    /// Agent heartbeats passed to the leader, by request id: who waits for
    /// the leader's ack, and until when.
    pending_heartbeats: HashMap<u64, (oneshot::Sender<Result<(), ApiError>>, Instant)>,
    /// Until then, vote and pre-vote requests are dropped unanswered: this
    /// server restarted and may have acknowledged a leader whose read lease
    /// is still running (see `handle_rpc`).
    votes_refused_until: Option<Instant>,
    /// Linearizable reads that arrived and wait for the next ReadIndex round.
    read_queue: Vec<ReadWaiter>,
    /// ReadIndex rounds in flight, by context, with the reads each will answer.
    /// A read joins only a round started after it arrived (so the index it
    /// gets covers every write acknowledged before it), and one round answers
    /// all of them: thousands of concurrent reads cost a few rounds, not
    /// thousands of quorum heartbeats.
    read_rounds: HashMap<u64, Vec<ReadWaiter>>,
    /// Request ids: a random prefix per process so ids never collide across servers.
    next_request: AtomicU64,
    last_leader_contact: Option<Instant>,
    last_hello: Option<Instant>,
    snapshots_installed: u64,
    /// See [`RaftStatus::snapshots_sent`].
    snapshots_sent: u64,
    /// Snapshots sent and not yet acknowledged, by follower (see
    /// [`RaftNode::check_snapshots`]).
    snapshots_in_flight: HashMap<u64, SnapshotInFlight>,
    /// Snapshots each follower failed to acknowledge in time, in a row: the
    /// wait before the next attempt doubles with each.
    snapshot_failures: HashMap<u64, u32>,
    entries_synced: u64,
    syncs: u64,
    logger: slog::Logger,
}

fn raft_config(id: u64, applied: u64, t: &RaftTuning) -> Config {
    Config {
        id,
        election_tick: t.election_ticks,
        heartbeat_tick: t.heartbeat_ticks,
        applied,
        // Pre-vote stops a rejoining partitioned server from disrupting the
        // cluster with a higher term; check-quorum makes an isolated leader step
        // down, so a minority can never keep acting as leader (Raft thesis §9.6).
        pre_vote: true,
        check_quorum: true,
        read_only_option: ReadOnlyOption::Safe,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

impl RaftNode {
    fn new(
        setup: RaftNodeSetup,
        shared: Arc<Shared>,
        peers_for_snap: Arc<RwLock<BTreeMap<u64, PeerInfo>>>,
        events: Receiver<Event>,
    ) -> Result<Self, StorageFailure> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let cfg = raft_config(setup.me.id, setup.applied, &setup.tuning);
        let raw = RawNode::new(&cfg, setup.store.clone(), &logger).map_err(|e| {
            StorageFailure::Corrupt {
                what: "raft state",
                detail: e.to_string(),
            }
        })?;
        let mut peers = setup.peers;
        peers.insert(setup.me.id, setup.me.clone());
        // Only a server that was in a cluster before its start can have
        // helped to confirm a leader's lease; a fresh one (bootstrap, join)
        // votes at once, so a new cluster elects its first leader promptly.
        let votes_refused_until = setup
            .store
            .initialized()
            .then(|| Instant::now() + setup.tuning.election_timeout());
        Ok(Self {
            me: setup.me,
            raw,
            store: setup.store,
            shared,
            peers,
            peers_for_snap,
            seen: BTreeMap::new(),
            saw_cluster: false,
            bootstrap_expect: setup.bootstrap_expect,
            retry_join: setup.retry_join,
            tuning: setup.tuning,
            transport: setup.transport,
            heartbeats: setup.heartbeats,
            events,
            pending_writes: HashMap::new(),
            pending_heartbeats: HashMap::new(),
            votes_refused_until,
            read_queue: Vec::new(),
            read_rounds: HashMap::new(),
            next_request: AtomicU64::new(rand::random::<u64>() & !0xffff_ffff),
            last_leader_contact: None,
            last_hello: None,
            snapshots_installed: 0,
            snapshots_sent: 0,
            snapshots_in_flight: HashMap::new(),
            snapshot_failures: HashMap::new(),
            entries_synced: 0,
            syncs: 0,
            logger,
        })
    }

    fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    fn run(&mut self, shutdown: &CancellationToken) -> Result<(), Fatal> {
        info!(node = %self.me.node, id = self.me.id, in_cluster = self.store.initialized(), "raft node starting");
        if self.bootstrap_expect == 1 && !self.store.initialized() {
            self.bootstrap(vec![self.me.id])?;
        }
        if self.bootstrap_expect == 1 && self.store.conf_state().voters == vec![self.me.id] {
            // A single-server cluster (`--dev`) need not wait an election timeout.
            let _ = self.raw.campaign();
        }
        let mut next_tick = Instant::now() + self.tuning.tick;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(ev) => self.handle_event(ev)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Take whatever else queued up, so that one Ready (one fsync) covers it all.
            for _ in 0..EVENT_QUEUE {
                match self.events.try_recv() {
                    Ok(ev) => self.handle_event(ev)?,
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += self.tuning.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.tuning.tick;
                }
                self.on_tick()?;
            }
            self.start_read_round();
            while self.raw.has_ready() {
                self.on_ready()?;
            }
            self.publish_status();
        }
        info!(node = %self.me.node, "raft node stopped");
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn handle_event(&mut self, ev: Event) -> Result<(), Fatal> {
        match ev {
            Event::Rpc(from, msg) => self.handle_rpc(from, msg)?,
            Event::Propose {
                cmd,
                reply,
                deadline,
            } => {
                // A proposal that waited here past its caller's patience is
                // dropped unproposed: the caller (an agent) may have retried
                // on another server and written something newer since.
                if reply.is_closed() || Instant::now() >= deadline {
                    debug!(node = %self.me.node, "dropping a write whose caller gave up before it was proposed");
                    let _ = reply.send(Err(too_late()));
                    return Ok(());
                }
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(ApiError::NoLeader));
                    return Ok(());
                }
                let id = self.request_id();
                let data = match serde_json::to_vec(&Envelope {
                    v: 1,
                    id,
                    cmd: *cmd,
                }) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(ApiError::Internal(e.to_string())));
                        return Ok(());
                    }
                };
                // The id also rides in the entry's context, where a follower
                // finds it cheaply when it forwards the proposal (see
                // `drop_late_proposals`).
                match self.raw.propose(id.to_be_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.pending_writes.insert(id, (reply, deadline));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(ApiError::NoLeader));
                    }
                }
            }
            Event::Heartbeat(hb, reply) => self.route_heartbeat(hb, reply),
            Event::ReadIndex(reply) => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(ApiError::NoLeader));
                    return Ok(());
                }
                self.read_queue.push((reply, Instant::now()));
            }
            Event::RemovePeer(id, reply) => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(ApiError::NoLeader));
                    return Ok(());
                }
                if id == self.raw.raft.leader_id {
                    let _ = reply.send(Err(ApiError::BadRequest(
                        "cannot remove the current leader; stop it first, then remove it once another server leads".into(),
                    )));
                    return Ok(());
                }
                let cs = self.store.conf_state();
                if !cs.voters.contains(&id) && !cs.learners.contains(&id) {
                    let _ = reply.send(Err(ApiError::BadRequest(format!(
                        "id {id:016x} is not a member of the Raft configuration"
                    ))));
                    return Ok(());
                }
                let req = self.request_id();
                let ctx = ConfContext {
                    id: req,
                    peer: None,
                };
                match self.propose_conf(id, ConfChangeType::RemoveNode, &ctx) {
                    Ok(()) => {
                        let deadline = Instant::now() + self.tuning.propose_timeout;
                        self.pending_writes.insert(req, (reply, deadline));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
        Ok(())
    }

    fn propose_conf(
        &mut self,
        id: u64,
        ty: ConfChangeType,
        ctx: &ConfContext,
    ) -> Result<(), ApiError> {
        if self.raw.raft.has_pending_conf() {
            return Err(ApiError::Internal(
                "a configuration change is already in progress, retry".into(),
            ));
        }
        let mut single = ConfChangeSingle::default();
        single.node_id = id;
        single.set_change_type(ty);
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let ctx = serde_json::to_vec(ctx).unwrap_or_default();
        self.raw
            .propose_conf_change(ctx, cc)
            .map_err(|_| ApiError::NoLeader)
    }

    fn handle_rpc(&mut self, from: String, msg: RpcMessage) -> Result<(), Fatal> {
        match msg {
            RpcMessage::Raft(m) => {
                // The transport tells us where a server talks from; that is how
                // we learn the address of a server added by another member.
                if m.from != 0 && !self.peers.contains_key(&m.from) {
                    self.peers.insert(
                        m.from,
                        PeerInfo {
                            id: m.from,
                            node: String::new(),
                            rpc_addr: from,
                            http_addr: String::new(),
                            datacenter: self.me.datacenter.clone(),
                        },
                    );
                }
                let from_id = m.from;
                if matches!(
                    m.get_msg_type(),
                    MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                ) && self
                    .votes_refused_until
                    .is_some_and(|until| Instant::now() < until)
                {
                    // Raft thesis §6.4 (lease reads): a leader serves reads
                    // without a quorum round for an election timeout after a
                    // quorum heard from it, because each of those servers
                    // ignores votes for that long (raft-rs's `in_lease`). A
                    // restarted server has forgotten that it heard from the
                    // leader, so it ignores votes for one election timeout
                    // after start instead (as if it had just heard from one).
                    debug!(node = %self.me.node, from = from_id, "ignoring a vote request just after start");
                    return Ok(());
                }
                let is_leader_msg = matches!(
                    m.get_msg_type(),
                    MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
                );
                if let Err(e) = self.raw.step(m) {
                    debug!(node = %self.me.node, error = %e, "raft step rejected a message");
                }
                if is_leader_msg && from_id == self.raw.raft.leader_id {
                    self.last_leader_contact = Some(Instant::now());
                }
            }
            RpcMessage::Hello(h) => self.handle_hello(h)?,
            RpcMessage::Join(peer) => self.handle_join(peer),
            RpcMessage::HeartbeatForward(fwd) => {
                // Only the leader records and acks; anything else lets the
                // forwarding server time out and its agent try elsewhere.
                if self.is_leader() && self.accept_heartbeat(fwd.heartbeat).is_ok() {
                    if let Some(p) = self.peers.get(&fwd.from).filter(|p| p.id != self.me.id) {
                        let addr = p.rpc_addr.clone();
                        self.transport.send(&addr, RpcMessage::HeartbeatAck(fwd.id));
                    }
                }
            }
            RpcMessage::HeartbeatAck(id) => {
                if let Some((reply, _)) = self.pending_heartbeats.remove(&id) {
                    let _ = reply.send(Ok(()));
                }
            }
            // Fire and forget, as servers before `HeartbeatForward` sent them.
            RpcMessage::Heartbeat(hb) => {
                if self.is_leader() {
                    // Full means the leader is swamped; the agent's next
                    // heartbeat comes soon enough.
                    let _ = self.heartbeats.try_send(hb);
                } else if let Some(addr) = self
                    .peers
                    .get(&self.raw.raft.leader_id)
                    .map(|p| p.rpc_addr.clone())
                {
                    if self.raw.raft.leader_id != self.me.id {
                        self.transport.send(&addr, RpcMessage::Heartbeat(hb));
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands a heartbeat to this leader's liveness task.
    fn accept_heartbeat(&self, hb: crate::rpc::Heartbeat) -> Result<(), ApiError> {
        self.heartbeats
            .try_send(hb)
            .map_err(|_| ApiError::Internal("server is overloaded, retry".into()))
    }

    /// An agent heartbeat that arrived here over HTTP: recorded at once on
    /// the leader; passed to the leader by a follower (or learner) that heard
    /// from it within an election timeout, and answered when the leader acks
    /// it (or with `NoLeader` after `heartbeat_ack_timeout`, see `on_tick`).
    fn route_heartbeat(
        &mut self,
        hb: crate::rpc::Heartbeat,
        reply: oneshot::Sender<Result<(), ApiError>>,
    ) {
        if self.is_leader() {
            let _ = reply.send(self.accept_heartbeat(hb));
            return;
        }
        let leader = self.raw.raft.leader_id;
        // A learner never clears its leader, and a cut-off follower keeps it
        // until its election timer fires: recent contact is what counts.
        let recent = self
            .last_leader_contact
            .is_some_and(|t| t.elapsed() < self.tuning.election_timeout());
        let addr = self
            .peers
            .get(&leader)
            .filter(|_| leader != raft::INVALID_ID && leader != self.me.id && recent)
            .map(|p| p.rpc_addr.clone());
        let Some(addr) = addr else {
            let _ = reply.send(Err(ApiError::NoLeader));
            return;
        };
        let id = self.request_id();
        self.transport.send(
            &addr,
            RpcMessage::HeartbeatForward(crate::rpc::HeartbeatForward {
                id,
                from: self.me.id,
                heartbeat: hb,
            }),
        );
        let deadline = Instant::now() + self.tuning.heartbeat_ack_timeout;
        self.pending_heartbeats.insert(id, (reply, deadline));
    }

    /// Takes out of a follower's outgoing proposals (raft-rs forwards them to
    /// the leader after this server's fsync) the entries whose caller gave up
    /// meanwhile, answering those callers: a slow disk must not make a write
    /// reach the log after its caller stopped waiting for it.
    fn drop_late_proposals(&mut self, msgs: Vec<Message>) -> Vec<Message> {
        if !msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgPropose)
        {
            return msgs;
        }
        let now = Instant::now();
        let mut out = Vec::with_capacity(msgs.len());
        for mut m in msgs {
            if m.get_msg_type() != MessageType::MsgPropose {
                out.push(m);
                continue;
            }
            let entries: Vec<Entry> = m.take_entries().into();
            let kept: Vec<Entry> = entries
                .into_iter()
                .filter(|e| {
                    if e.get_entry_type() != EntryType::EntryNormal {
                        return true;
                    }
                    let Ok(id) = <[u8; 8]>::try_from(&e.context[..]).map(u64::from_be_bytes)
                    else {
                        return true;
                    };
                    let late = self
                        .pending_writes
                        .get(&id)
                        .is_some_and(|(tx, deadline)| tx.is_closed() || now >= *deadline);
                    if late {
                        debug!(node = %self.me.node, "dropping a forwarded write whose caller gave up");
                        if let Some((tx, _)) = self.pending_writes.remove(&id) {
                            let _ = tx.send(Err(too_late()));
                        }
                    }
                    !late
                })
                .collect();
            if !kept.is_empty() {
                m.set_entries(kept.into());
                out.push(m);
            }
        }
        out
    }

    fn in_cluster(&self) -> bool {
        self.store.initialized()
    }

    fn known(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.seen.keys().copied().collect();
        ids.push(self.me.id);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn hello(&self, reply: bool) -> RpcMessage {
        RpcMessage::Hello(Hello {
            from: self.me.clone(),
            in_cluster: self.in_cluster(),
            leader: self.raw.raft.leader_id,
            reply,
            known: if self.in_cluster() {
                Vec::new()
            } else {
                self.known()
            },
        })
    }

    fn handle_hello(&mut self, h: Hello) -> Result<(), Fatal> {
        if h.from.datacenter != self.me.datacenter {
            warn!(node = %self.me.node, peer = %h.from.node, peer_dc = %h.from.datacenter,
                  "ignoring a server of another datacenter (check --retry-join)");
            return Ok(());
        }
        if h.from.id == self.me.id {
            return Ok(());
        }
        if !h.reply {
            self.transport.send(&h.from.rpc_addr, self.hello(true));
        }
        let known = self.peers.get(&h.from.id);
        if known != Some(&h.from) {
            self.peers.insert(h.from.id, h.from.clone());
            if self.in_cluster() {
                let mut b = self.store.batch();
                self.store.set_peers(&mut b, &self.peers);
                self.store.commit(b, true)?;
                *self
                    .peers_for_snap
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = self.peers.clone();
            }
        }
        if self.in_cluster() {
            return Ok(());
        }
        if h.in_cluster {
            // A cluster exists: ask to be added rather than form a second one.
            self.saw_cluster = true;
            self.transport
                .send(&h.from.rpc_addr, RpcMessage::Join(self.me.clone()));
            return Ok(());
        }
        self.seen.insert(h.from.id, h.known);
        self.maybe_bootstrap()
    }

    fn maybe_bootstrap(&mut self) -> Result<(), Fatal> {
        if self.in_cluster() || self.bootstrap_expect == 0 || self.saw_cluster {
            return Ok(());
        }
        let ids = self.known();
        if ids.len() != self.bootstrap_expect {
            if ids.len() > self.bootstrap_expect {
                warn!(node = %self.me.node, expect = self.bootstrap_expect, seen = ids.len(),
                      "more servers than --bootstrap-expect see each other; not bootstrapping");
            }
            return Ok(());
        }
        // Bootstrap only when every candidate reports exactly the same set:
        // then all of them pick the same voters, whatever the start order, and
        // no two different clusters can form.
        let agreed = self
            .seen
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .all(|(_, known)| *known == ids);
        if !agreed {
            return Ok(());
        }
        self.bootstrap(ids)
    }

    fn bootstrap(&mut self, voters: Vec<u64>) -> Result<(), Fatal> {
        info!(node = %self.me.node, ?voters, "bootstrapping the cluster");
        let mut cs = raft::eraftpb::ConfState::default();
        cs.voters = voters;
        let mut b = self.store.batch();
        self.store.bootstrap(&mut b, &cs);
        self.store.set_peers(&mut b, &self.peers);
        self.store.commit(b, true)?;
        {
            let mut applied = self
                .shared
                .applied
                .write()
                .unwrap_or_else(|e| e.into_inner());
            applied.index = applied.index.max(1);
        }
        *self
            .peers_for_snap
            .write()
            .unwrap_or_else(|e| e.into_inner()) = self.peers.clone();
        // Nothing has happened in this RawNode yet (it had no configuration), so
        // it is rebuilt from the now-initialised storage.
        let cfg = raft_config(self.me.id, 1, &self.tuning);
        self.raw = RawNode::new(&cfg, self.store.clone(), &self.logger)?;
        Ok(())
    }

    fn handle_join(&mut self, peer: PeerInfo) {
        if !self.in_cluster() || peer.datacenter != self.me.datacenter {
            return;
        }
        if !self.is_leader() {
            if let Some(addr) = self
                .peers
                .get(&self.raw.raft.leader_id)
                .map(|p| p.rpc_addr.clone())
            {
                if self.raw.raft.leader_id != self.me.id {
                    self.transport.send(&addr, RpcMessage::Join(peer));
                }
            }
            return;
        }
        let cs = self.store.conf_state();
        if cs.voters.contains(&peer.id) || cs.learners.contains(&peer.id) {
            return;
        }
        info!(node = %self.me.node, joiner = %peer.node, id = peer.id, "adding a server as learner");
        self.peers.insert(peer.id, peer.clone());
        let ctx = ConfContext {
            id: 0,
            peer: Some(peer.clone()),
        };
        if let Err(e) = self.propose_conf(peer.id, ConfChangeType::AddLearnerNode, &ctx) {
            debug!(node = %self.me.node, error = %e, "join deferred");
        }
    }

    fn on_tick(&mut self) -> Result<(), Fatal> {
        let now = Instant::now();
        // Expire waiters whose answer will not come (lost leader, dropped message).
        self.pending_writes.retain(|_, (tx, deadline)| {
            if now > *deadline {
                let taken = std::mem::replace(tx, oneshot::channel().0);
                let _ = taken.send(Err(ApiError::Internal(
                    "timed out waiting for the write to be committed; it may still apply".into(),
                )));
                false
            } else {
                true
            }
        });
        let rt = self.tuning.read_timeout;
        let expire = |waiters: &mut Vec<ReadWaiter>| {
            waiters.retain_mut(|(tx, at)| {
                if now.duration_since(*at) > rt {
                    let taken = std::mem::replace(tx, oneshot::channel().0);
                    let _ = taken.send(Err(ApiError::NoLeader));
                    false
                } else {
                    true
                }
            });
        };
        self.pending_heartbeats.retain(|_, (tx, deadline)| {
            if tx.is_closed() {
                return false;
            }
            if now >= *deadline {
                let taken = std::mem::replace(tx, oneshot::channel().0);
                let _ = taken.send(Err(ApiError::NoLeader));
                return false;
            }
            true
        });
        expire(&mut self.read_queue);
        for waiters in self.read_rounds.values_mut() {
            expire(waiters);
        }
        self.read_rounds.retain(|_, w| !w.is_empty());
        // raft-rs silently drops a ReadIndex when no leader is known, and a
        // new leader ignores it until it commits in its term: ask again on
        // every tick until answered or expired (a repeated context is ignored).
        if self.raw.raft.leader_id != raft::INVALID_ID {
            let retry: Vec<u64> = self.read_rounds.keys().copied().collect();
            for ctx in retry {
                self.raw.read_index(ctx.to_be_bytes().to_vec());
            }
        }
        if self.is_leader() {
            self.promote_learners();
        }
        self.check_snapshots(now);
        let due = self
            .last_hello
            .is_none_or(|t| now.duration_since(t) >= self.tuning.hello_interval);
        if due {
            self.last_hello = Some(now);
            let mut targets: Vec<String> = self.retry_join.clone();
            targets.extend(
                self.peers
                    .values()
                    .filter(|p| p.id != self.me.id)
                    .map(|p| p.rpc_addr.clone()),
            );
            targets.sort();
            targets.dedup();
            for t in targets {
                if t != self.me.rpc_addr {
                    self.transport.send(&t, self.hello(false));
                }
            }
        }
        Ok(())
    }

    /// Learners that have caught up become voters (Raft thesis §4.2.1: add
    /// servers as non-voting members first so they cannot stall commits).
    fn promote_learners(&mut self) {
        if self.raw.raft.has_pending_conf() {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let learners = self.store.conf_state().learners;
        for id in learners {
            let matched = self.raw.raft.prs().get(id).map(|p| p.matched).unwrap_or(0);
            if matched + 1 >= committed {
                info!(node = %self.me.node, id, "promoting caught-up learner to voter");
                let ctx = ConfContext {
                    id: 0,
                    peer: self.peers.get(&id).cloned(),
                };
                let _ = self.propose_conf(id, ConfChangeType::AddNode, &ctx);
                return;
            }
        }
    }

    fn send_messages(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let snapshot_index = m.get_snapshot().get_metadata().index;
            match self.peers.get(&to) {
                Some(p) => {
                    let addr = p.rpc_addr.clone();
                    self.transport.send(&addr, RpcMessage::Raft(m));
                    if is_snapshot {
                        // Not reported as finished here: the transport only
                        // queued it and may still lose it. The follower's
                        // answer to an installed snapshot is a
                        // MsgAppendResponse at or past its index, on which
                        // raft-rs itself leaves the Snapshot state (no
                        // report_snapshot(Finish) needed); no answer in time
                        // is reported as a failure by `check_snapshots`.
                        self.snapshots_sent += 1;
                        info!(node = %self.me.node, to, index = snapshot_index,
                              attempt = self.snapshot_failures.get(&to).copied().unwrap_or(0) + 1,
                              "sending a snapshot to a follower");
                        self.snapshots_in_flight.insert(
                            to,
                            SnapshotInFlight {
                                index: snapshot_index,
                                sent: Instant::now(),
                            },
                        );
                    }
                }
                None => {
                    debug!(node = %self.me.node, to, "no address for peer");
                    self.raw.report_unreachable(to);
                    if is_snapshot {
                        self.raw.report_snapshot(to, raft::SnapshotStatus::Failure);
                    }
                }
            }
        }
    }

    /// How long a follower has to acknowledge a snapshot after `failures`
    /// unacknowledged ones in a row: five election timeouts, doubling with
    /// each failure up to 16 times that. Until then raft-rs keeps the
    /// follower in its Snapshot state and sends it nothing, so this is also
    /// the least time between two snapshots for one follower: one that keeps
    /// losing them does not cost a full catalog image on the Raft thread at
    /// every heartbeat reply.
    fn snapshot_timeout(&self, failures: u32) -> Duration {
        let base = self.tuning.tick * self.tuning.election_ticks as u32 * 5;
        base * (1u32 << failures.min(4))
    }

    /// Settles the snapshots in flight: acknowledged ones (raft-rs left the
    /// Snapshot state with the follower's log at or past the snapshot) clear
    /// the follower's failures; one unanswered for too long is reported as a
    /// failure, so that raft-rs probes the follower again and sends a new
    /// snapshot if it still needs one.
    fn check_snapshots(&mut self, now: Instant) {
        if self.snapshots_in_flight.is_empty() {
            return;
        }
        if !self.is_leader() {
            // A new leader starts from fresh progress for every follower.
            self.snapshots_in_flight.clear();
            return;
        }
        let mut expired = Vec::new();
        let mut acked = Vec::new();
        for (&id, sent) in &self.snapshots_in_flight {
            let Some(pr) = self.raw.raft.prs().get(id) else {
                // No longer a member: nothing to wait for, nothing to remember.
                acked.push((id, true));
                continue;
            };
            if pr.state != raft::ProgressState::Snapshot || pr.pending_snapshot != sent.index {
                acked.push((id, pr.matched >= sent.index));
            } else {
                let failures = self.snapshot_failures.get(&id).copied().unwrap_or(0);
                if now.duration_since(sent.sent) > self.snapshot_timeout(failures) {
                    expired.push((id, sent.index));
                }
            }
        }
        for (id, caught_up) in acked {
            self.snapshots_in_flight.remove(&id);
            if caught_up {
                self.snapshot_failures.remove(&id);
            }
        }
        for (id, index) in expired {
            self.snapshots_in_flight.remove(&id);
            let failures = self.snapshot_failures.entry(id).or_insert(0);
            *failures = failures.saturating_add(1);
            warn!(node = %self.me.node, to = id, index, failures = *failures,
                  "a follower did not acknowledge its snapshot in time; it will be probed again");
            self.raw.report_snapshot(id, raft::SnapshotStatus::Failure);
        }
    }

    fn on_ready(&mut self) -> Result<(), Fatal> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.publish_commit();
        self.send_messages(rd.take_messages());

        let mut replies = Vec::new();
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        let mut batch = self.store.batch();
        self.apply_entries(rd.take_committed_entries(), &mut batch, &mut replies)?;
        self.store.append(&mut batch, rd.entries())?;
        if let Some(hs) = rd.hs() {
            self.store.set_hard_state(&mut batch, hs);
        }
        // Entries and the hard state (term, vote) must be durable before the
        // messages that acknowledge them leave; applied rows need not be, as
        // they are rebuilt from the log after a crash.
        let sync = rd.must_sync() || !rd.entries().is_empty();
        self.store.commit(batch, sync)?;
        if sync {
            self.syncs += 1;
            self.entries_synced += rd.entries().len() as u64;
        }
        self.finish_apply(replies);
        let persisted = self.drop_late_proposals(rd.take_persisted_messages());
        self.send_messages(persisted);
        for rs in rd.take_read_states() {
            self.answer_read(rs);
        }

        let mut light = self.raw.advance(rd);
        let mut batch = self.store.batch();
        let mut replies = Vec::new();
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(&mut batch, commit);
        }
        self.publish_commit();
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut batch, &mut replies)?;
        self.store.commit(batch, false)?;
        self.finish_apply(replies);
        self.raw.advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    fn publish_commit(&self) {
        self.shared
            .commit
            .fetch_max(self.raw.raft.raft_log.committed, Ordering::SeqCst);
    }

    /// Starts one ReadIndex round for every read queued since the last one
    /// (a few rounds may be in flight, so reads do not wait for a slow one).
    fn start_read_round(&mut self) {
        const MAX_ROUNDS_IN_FLIGHT: usize = 4;
        if self.read_queue.is_empty()
            || self.read_rounds.len() >= MAX_ROUNDS_IN_FLIGHT
            || self.raw.raft.leader_id == raft::INVALID_ID
        {
            return;
        }
        let ctx = self.request_id();
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        self.read_rounds
            .insert(ctx, std::mem::take(&mut self.read_queue));
    }

    fn answer_read(&mut self, rs: raft::ReadState) {
        let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
            return;
        };
        for (tx, _) in self
            .read_rounds
            .remove(&u64::from_be_bytes(ctx))
            .unwrap_or_default()
        {
            let _ = tx.send(Ok(rs.index));
        }
    }

    fn install_snapshot(&mut self, snap: raft::eraftpb::Snapshot) -> Result<(), Fatal> {
        let index = snap.get_metadata().index;
        info!(node = %self.me.node, index, "installing snapshot from the leader");
        let image = RaftStore::decode_snapshot(&snap.data)?;
        let catalog = CatalogState::from_rows(self.me.datacenter.as_str(), image.rows.clone())
            .map_err(|e| Fatal::BadEntry(index, e))?;
        for (id, p) in image.peers {
            if id != self.me.id {
                self.peers.insert(id, p);
            }
        }
        let mut b = self.store.batch();
        self.store.install_snapshot(&mut b, &snap, &image.rows)?;
        self.store.set_peers(&mut b, &self.peers);
        self.store.commit(b, true)?;
        *self
            .peers_for_snap
            .write()
            .unwrap_or_else(|e| e.into_inner()) = self.peers.clone();
        let mut applied = self
            .shared
            .applied
            .write()
            .unwrap_or_else(|e| e.into_inner());
        applied.catalog = catalog;
        applied.index = index;
        self.snapshots_installed += 1;
        Ok(())
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        batch: &mut StoreBatch,
        replies: &mut Vec<(u64, Result<(), ApiError>)>,
    ) -> Result<(), Fatal> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut peers_changed = false;
        {
            let mut applied = self
                .shared
                .applied
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for e in &entries {
                if e.index <= applied.index {
                    continue;
                }
                match e.get_entry_type() {
                    EntryType::EntryNormal => {
                        if e.data.is_empty() {
                            // A new leader's empty entry.
                        } else {
                            let env: Envelope = serde_json::from_slice(&e.data)
                                .map_err(|err| Fatal::BadEntry(e.index, err.to_string()))?;
                            if env.v != 1 {
                                return Err(Fatal::BadEntry(
                                    e.index,
                                    format!("unknown envelope version {}", env.v),
                                ));
                            }
                            let (result, rows) = applied.catalog.apply(e.index, &env.cmd);
                            self.store.apply_rows(
                                batch,
                                e.index,
                                rows.into_iter().map(|r| (r.key, r.value)),
                            );
                            replies.push((env.id, result.map_err(ApiError::BadRequest)));
                        }
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        let (cc, ctx) = decode_conf_change(e)?;
                        let ctx: ConfContext = serde_json::from_slice(&ctx).unwrap_or_default();
                        let (applied_cc, removed) = match &cc {
                            AnyConfChange::V1(cc) => (
                                self.raw.apply_conf_change(cc),
                                (cc.get_change_type() == ConfChangeType::RemoveNode)
                                    .then_some(cc.node_id)
                                    .into_iter()
                                    .collect::<Vec<_>>(),
                            ),
                            AnyConfChange::V2(cc) => (
                                self.raw.apply_conf_change(cc),
                                cc.get_changes()
                                    .iter()
                                    .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                                    .map(|c| c.node_id)
                                    .collect(),
                            ),
                        };
                        if applied_cc.is_ok() {
                            for id in removed {
                                // A removed server is no longer greeted or listed.
                                if id != self.me.id && self.peers.remove(&id).is_some() {
                                    peers_changed = true;
                                }
                            }
                        }
                        if let Some(p) = ctx.peer {
                            if p.id != self.me.id {
                                self.peers.insert(p.id, p);
                            }
                            peers_changed = true;
                        }
                        let result = match applied_cc {
                            Ok(cs) => {
                                info!(node = %self.me.node, index = e.index, voters = ?cs.voters,
                                      learners = ?cs.learners, "configuration changed");
                                self.store.set_conf_state(batch, &cs);
                                Ok(())
                            }
                            Err(err) => {
                                warn!(node = %self.me.node, error = %err, "configuration change rejected");
                                Err(ApiError::BadRequest(err.to_string()))
                            }
                        };
                        if ctx.id != 0 {
                            replies.push((ctx.id, result));
                        }
                    }
                }
                applied.index = e.index;
            }
            self.store.apply_rows(batch, applied.index, []);
        }
        if peers_changed {
            self.store.set_peers(batch, &self.peers);
            *self
                .peers_for_snap
                .write()
                .unwrap_or_else(|e| e.into_inner()) = self.peers.clone();
        }
        Ok(())
    }

    fn finish_apply(&mut self, replies: Vec<(u64, Result<(), ApiError>)>) {
        for (id, result) in replies {
            if let Some((tx, _)) = self.pending_writes.remove(&id) {
                let _ = tx.send(result);
            }
        }
        let index = self
            .shared
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .index;
        self.shared.applied_tx.send_if_modified(|v| {
            if *v != index {
                *v = index;
                true
            } else {
                false
            }
        });
    }

    fn maybe_compact(&mut self) -> Result<(), Fatal> {
        let applied = self.raw.raft.raft_log.applied;
        let first = self.store.snapshot_index();
        if applied.saturating_sub(first) < self.tuning.compact_threshold.max(1) {
            return Ok(());
        }
        let to = applied.saturating_sub(self.tuning.compact_keep);
        if to <= first {
            return Ok(());
        }
        debug!(node = %self.me.node, to, "compacting the raft log");
        let mut b = self.store.batch();
        self.store.compact(&mut b, to)?;
        self.store.commit(b, false)?;
        Ok(())
    }

    fn publish_status(&mut self) {
        let r = &self.raw.raft;
        let role = match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        if role == Role::Leader {
            self.last_leader_contact = Some(Instant::now());
        }
        let cs = self.store.conf_state();
        let mut st = self
            .shared
            .status
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if st.leader_id != r.leader_id || st.term != r.term {
            info!(node = %self.me.node, term = r.term, leader = r.leader_id, "leadership changed");
        }
        st.id = self.me.id;
        st.role = role;
        st.term = r.term;
        st.leader_id = r.leader_id;
        st.leader_ready = role == Role::Leader && r.commit_to_current_term();
        st.last_leader_contact = self.last_leader_contact;
        st.commit = r.raft_log.committed;
        st.in_cluster = self.store.initialized();
        st.compacted_to = self.store.snapshot_index();
        st.snapshots_installed = self.snapshots_installed;
        st.snapshots_sent = self.snapshots_sent;
        st.entries_synced = self.entries_synced;
        st.syncs = self.syncs;
        if st.voters != cs.voters
            || st.learners != cs.learners
            || st.peers.len() != self.peers.len()
        {
            st.voters = cs.voters.clone();
            st.learners = cs.learners.clone();
        }
        if st.peers != self.peers {
            st.peers = self.peers.clone();
        }
    }
}

/// The answer to a write dropped because its caller stopped waiting.
fn too_late() -> ApiError {
    ApiError::Internal("request timed out before it was proposed".into())
}

/// The last snapshot image built. Raft asks for a snapshot for each follower
/// that needs one, and again after a lost one; while nothing new was applied
/// (and the address book is the same) the same bytes serve, rather than a
/// second full read and encoding of the catalog on the Raft thread.
#[derive(Default)]
struct SnapshotMemo {
    /// Applied index, address book and encoded image of the last build.
    last: Option<(u64, BTreeMap<u64, PeerInfo>, bytes::Bytes)>,
    /// Images built (not served from `last`).
    builds: u64,
}

impl SnapshotMemo {
    /// The image at `index` with `peers`, built from `rows` unless the last
    /// one was of the same index and peers.
    fn image(
        &mut self,
        index: u64,
        peers: BTreeMap<u64, PeerInfo>,
        rows: impl FnOnce() -> Vec<(Vec<u8>, Vec<u8>)>,
    ) -> bytes::Bytes {
        if let Some((i, p, data)) = &self.last {
            if *i == index && *p == peers {
                return data.clone();
            }
        }
        let data = bytes::Bytes::from(
            SnapshotImage {
                peers: peers.clone(),
                rows: rows(),
            }
            .encode(),
        );
        self.builds += 1;
        debug!(
            index,
            bytes = data.len(),
            builds = self.builds,
            "built a snapshot image"
        );
        self.last = Some((index, peers, data.clone()));
        data
    }
}

/// A snapshot handed to the transport for a follower, not yet acknowledged.
struct SnapshotInFlight {
    /// The snapshot's index.
    index: u64,
    /// When it was handed to the transport.
    sent: Instant,
}

/// Either form of conf change raft-rs may hand back in the log.
enum AnyConfChange {
    V1(ConfChange),
    V2(ConfChangeV2),
}

fn decode_conf_change(e: &Entry) -> Result<(AnyConfChange, Vec<u8>), Fatal> {
    let bad = |err: protobuf::ProtobufError| Fatal::BadEntry(e.index, err.to_string());
    if e.get_entry_type() == EntryType::EntryConfChange {
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(bad)?;
        // RawNode::propose_conf_change puts its context on the entry.
        let ctx = e.context.to_vec();
        Ok((AnyConfChange::V1(cc), ctx))
    } else {
        let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(bad)?;
        let ctx = e.context.to_vec();
        Ok((AnyConfChange::V2(cc), ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> PeerInfo {
        PeerInfo {
            id,
            node: format!("s{id}"),
            rpc_addr: format!("s{id}:8300"),
            http_addr: format!("s{id}:8500"),
            datacenter: "dc1".into(),
        }
    }

    #[test]
    fn a_snapshot_image_is_built_once_per_applied_index_and_address_book() {
        let mut memo = SnapshotMemo::default();
        let peers: BTreeMap<u64, PeerInfo> = [(1, peer(1))].into();
        let rows = || vec![(b"n/a".to_vec(), b"{}".to_vec())];
        let first = memo.image(7, peers.clone(), rows);
        let again = memo.image(7, peers.clone(), || unreachable!("memoised"));
        assert_eq!((first.clone(), memo.builds), (again, 1));
        let decoded = SnapshotImage::decode(&first).unwrap();
        assert_eq!((decoded.peers, decoded.rows), (peers.clone(), rows()));
        // A newer index, or a changed address book, is a new image.
        memo.image(8, peers.clone(), rows);
        let mut more = peers;
        more.insert(2, peer(2));
        memo.image(8, more, rows);
        assert_eq!(memo.builds, 3);
    }
}
