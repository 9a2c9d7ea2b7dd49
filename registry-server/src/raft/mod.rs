//! The Raft layer: one thread that owns the `RawNode`, the state machine's write
//! side and the storage writes ([`node`]), and the [`RaftHandle`] through
//! which everything else talks to it.
//!
//! - `node.rs`: the Ready loop, in raft-rs' documented order, and applying
//!   committed entries;
//! - `membership.rs`: greetings, bootstrap, joins, learner promotion and the
//!   peer table;
//! - `reads.rs`: ReadIndex batching and the leader's read lease;
//! - `heartbeats.rs`: agent heartbeats passed to the leader and acknowledged;
//! - `snapshots.rs`: snapshot images and tracking of snapshots sent;
//! - `space.rs`: writes refused and entries held back while the data
//!   directory is short of space (`storage/space.rs` measures it);
//! - `entry.rs`: what a log entry carries (the envelope, request ids).
//!
//! It is a plain thread, not a tokio task, because every Ready blocks on an
//! fsync; callers reach it through a bounded channel and get their answers
//! on oneshot channels. Errors are [`RaftError`] ("this request failed") or,
//! for the thread itself, [`Fatal`] ("this node is broken"); this layer knows
//! nothing of HTTP (`http/` maps `RaftError` to responses in one place).

mod checkpoints;
mod entry;
mod heartbeats;
mod membership;
mod node;
mod reads;
mod snapshots;
mod space;
mod wakeups;

use crate::rpc::{PeerInfo, RpcMessage, Transport};
use crate::state::{Command, Outcome, StateStore};
use crate::storage::{RaftStore, StorageFailure};
use node::RaftNode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::error;

/// Timing and sizing of the Raft node. Defaults suit production; tests shorten them.
///
/// The default election timeout (10 ticks of 50 ms; raft-rs draws each
/// follower's between that and twice that, 0.5-1 s) is what bounds failover:
/// a follower starts an election only once it has heard nothing from the
/// leader for that long, so a killed leader is replaced within about that
/// plus one election round. Heartbeats every 100 ms leave five of them per
/// shortest timeout, room for a loaded machine's late ticks and slow fsyncs
/// (the chaos test slows disks by up to 150 ms per synced write under these
/// timings); and a Raft thread that stalls skips ticks rather than counting
/// them (see `RaftNode::run`), so its own stall does not time it out.
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
    /// How long a follower has to acknowledge a snapshot before the leader
    /// counts it as lost (doubling with each loss in a row, see
    /// `snapshots.rs`). Its own setting rather than a multiple of the
    /// election timeout: installing a large catalog takes what it takes,
    /// however fast elections are.
    pub snapshot_ack_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_threshold: 8192,
            compact_keep: 1024,
            hello_interval: Duration::from_millis(500),
            propose_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(3),
            heartbeat_ack_timeout: Duration::from_secs(1),
            snapshot_ack_timeout: Duration::from_secs(5),
        }
    }
}

impl RaftTuning {
    /// The (unrandomised) election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks as u32
    }
}

/// The applied state: written by the Raft thread, read through [`RaftHandle::with_applied`].
pub(crate) struct Applied {
    /// Every table as of `index`.
    pub state: StateStore,
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
    /// False on a leader that has not yet written itself into the catalog in
    /// its term (see [`RaftHandle::announce`]); true otherwise. Until then it
    /// does not name itself leader and holds linearizable reads back.
    pub announced: bool,
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
    /// Index of the newest durable checkpoint of the applied state (or of
    /// the rows a data dir from before checkpoints holds).
    pub checkpointed_to: u64,
    /// Checkpoints that failed since start (see the log for why): while they
    /// fail, the log is not compacted.
    pub checkpoint_failures: u64,
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
    /// On the leader, what it knows of each other server in the
    /// configuration (`/v1/operator/autopilot/health`); empty elsewhere.
    pub progress: BTreeMap<u64, PeerProgress>,
}

/// What the leader knows of one follower's replication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerProgress {
    /// The highest log index known to be on that server.
    pub matched: u64,
    /// When that server last answered (any Raft message) while this one led.
    pub last_contact: Option<Instant>,
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
    ///
    /// A leader not yet [`announced`](Self::announced) names nobody: a client
    /// that sees a leader must find it in the catalog (Consul's leader
    /// reconciles its members as it takes office).
    pub fn leader_addr(&self) -> Option<String> {
        if self.leader_id == 0 || !self.announced {
            return None;
        }
        self.peers.get(&self.leader_id).map(|p| p.rpc_addr.clone())
    }
}

/// State shared between the Raft thread (writer) and [`RaftHandle`]s (readers).
pub(crate) struct Shared {
    /// The applied state.
    pub applied: RwLock<Applied>,
    /// The latest Raft status.
    pub status: RwLock<RaftStatus>,
    /// Bumped after every applied batch; blocking queries wait on it (but
    /// those of one service, which wait on `service_wakeups`).
    pub applied_tx: watch::Sender<u64>,
    /// Per-service channels for blocking reads of one service (`wakeups.rs`).
    pub service_wakeups: wakeups::Wakeups,
    /// Per-prefix channels for blocking KV reads (`wakeups.rs`).
    pub kv_wakeups: wakeups::Wakeups,
    /// The commit index, stored before any message announcing it leaves, so a
    /// leader answering a default read can wait until it has applied at least
    /// what any follower may already have acknowledged.
    pub commit: AtomicU64,
    /// The leader's read lease: (term, when a ReadIndex round that a quorum
    /// confirmed was started). See [`RaftHandle::default_barrier`].
    pub lease: std::sync::Mutex<Option<(u64, Instant)>>,
    /// Whether a leader must [`announce`](RaftHandle::announce) itself before
    /// it names itself leader and answers linearizable reads (set when the
    /// server's leader loop writes the servers into the catalog).
    pub announce_gated: bool,
    /// The last term in which this server, leading, announced itself.
    pub announced_term: AtomicU64,
    /// Ms added to this server's wall clock: 0 but in tests, which skew one
    /// server's clock to show that log time is the leader's.
    pub clock_skew_ms: AtomicI64,
    /// The Raft thread's metrics (also recorded by the snapshot source).
    pub metrics: Arc<crate::metrics::RaftMetrics>,
    /// The data directory's free space and reserve: checked before a write
    /// enters the log, here and on the leader.
    pub space: Arc<crate::storage::space::DiskSpace>,
    /// The last snapshot image the leader built, kept while followers may
    /// still ask for it (`snapshots.rs`).
    snapshot_memo: std::sync::Mutex<snapshots::SnapshotMemo>,
}

impl Shared {
    /// This server's wall clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        entry::now_ms(self.clock_skew_ms.load(Ordering::Relaxed))
    }
}

/// A waiting caller's answer, by its request id.
type Reply = (u64, Result<Outcome, RaftError>);

/// Why a request to the Raft layer failed. The node itself may be fine; a
/// node that is not is reported by [`RaftError::Broken`] (see [`Fatal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// No leader is known, or it could not be reached or did not answer in time.
    #[error("No cluster leader")]
    NoLeader,
    /// A read did not see the index it must wait for in time (answered as
    /// [`RaftError::NoLeader`]: the usual cause is a lost leader).
    #[error("timed out waiting for the applied state to catch up")]
    ReadTimeout,
    /// The Raft thread's inbox is full.
    #[error("server is overloaded, retry")]
    Overloaded,
    /// The Raft thread has stopped or is stopping.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The write was not committed and applied here in time; it may still apply.
    #[error("timed out waiting for the write to be committed; it may still apply")]
    CommitTimeout,
    /// The Raft thread stopped (shutdown or a fatal error) after proposing
    /// the write and before answering it. The write may have reached the
    /// other servers before this one stopped (a leader sends its new entries
    /// before it stores them) and be committed by them, so the caller must
    /// not be told it failed. (Writes still queued, never proposed, are
    /// answered [`RaftError::ShuttingDown`] as the thread ends.)
    #[error("the server stopped before the write's outcome was known; it may have applied")]
    OutcomeUnknown,
    /// The write was dropped unproposed because its caller had given up.
    #[error("request timed out before it was proposed")]
    TooLate,
    /// Another configuration change is still in progress.
    #[error("a configuration change is already in progress, retry")]
    ConfChangeInProgress,
    /// The request was refused: by the state machine, or as not applicable
    /// (the text says why and is shown to the caller).
    #[error("{0}")]
    Rejected(String),
    /// The request could not be encoded.
    #[error("{0}")]
    Encode(String),
    /// This node stopped on a fatal error (or is shutting down) and serves nothing.
    #[error("{0}")]
    Broken(String),
    /// The write was refused before it entered the log: this server's (or
    /// the leader's) data directory is short of space (`storage/space.rs`).
    #[error("{0}")]
    NoSpace(String),
}

/// A write or request handed to the Raft thread.
pub enum Event {
    /// A message from another server.
    Rpc(String, RpcMessage),
    /// Replicate a command; answered with its outcome once applied here.
    /// Dropped unproposed once `deadline` has passed or the caller has gone.
    Propose {
        /// The command.
        cmd: Box<Command>,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Outcome, RaftError>>,
        /// When the caller stops waiting.
        deadline: Instant,
    },
    /// An agent heartbeat: recorded here if this server leads, else passed to
    /// the leader; answered once the leader has it.
    Heartbeat(
        crate::rpc::Heartbeat,
        oneshot::Sender<Result<(), RaftError>>,
    ),
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex(oneshot::Sender<Result<u64, RaftError>>),
    /// Remove a server from the configuration (answered like a proposal).
    RemovePeer(u64, oneshot::Sender<Result<Outcome, RaftError>>),
    /// Hand leadership to this voter (or, with `None`, to the most
    /// up-to-date other voter); answered with the chosen voter's id once the
    /// transfer has started (the caller watches the status for its end).
    TransferLeader(Option<u64>, oneshot::Sender<Result<u64, RaftError>>),
    /// Greet this address (a server's RPC address) from now on, as if it had
    /// been given with `--retry-join` (`PUT /v1/agent/join/:address`).
    AddRetryJoin(String),
    /// Nothing to do but look at the status again: the leader has announced
    /// itself (see [`RaftHandle::announce`]), so held reads may go and the
    /// status may name it without waiting for the next tick.
    Announced,
}

/// Handle everything outside the Raft thread uses to talk to it: proposals,
/// read barriers, heartbeats, and looks at the status and the applied state
/// (through [`RaftHandle::with_status`] and [`RaftHandle::with_applied`]; the
/// locks themselves stay in here).
#[derive(Clone)]
pub struct RaftHandle {
    /// The Raft thread's inbox.
    tx: SyncSender<Event>,
    /// The state shared with the Raft thread.
    shared: Arc<Shared>,
    /// Timing, for the waits below.
    tuning: RaftTuning,
}

impl RaftHandle {
    /// This server's wall clock, ms since the epoch: what the leader stamps
    /// on log entries and what the leader loops compare them with.
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// The data directory's free space and reserve (metrics; tests change
    /// the reserve while the server runs).
    pub fn disk_space(&self) -> &Arc<crate::storage::space::DiskSpace> {
        &self.shared.space
    }

    /// Test hook: runs this server's clock `ms` ahead (negative: behind).
    #[doc(hidden)]
    pub fn set_clock_skew(&self, ms: i64) {
        self.shared.clock_skew_ms.store(ms, Ordering::Relaxed);
    }

    fn send(&self, ev: Event) -> Result<(), RaftError> {
        match self.tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(RaftError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(RaftError::ShuttingDown),
        }
    }

    /// Replicates `cmd` and waits until it is applied here, for at most
    /// `propose_timeout`; its outcome as the state machine computed it (a
    /// KV write's true or false, a transaction's results) on this server,
    /// whichever server leads: a follower's proposal travels to the leader
    /// inside Raft and is answered when the follower applies it. The Raft thread drops the command unproposed if it
    /// dequeues it after that, or after the caller went away (this future
    /// dropped, e.g. the HTTP client hung up): a write proposed after its
    /// caller gave up could commit after a later write that the caller (an
    /// agent retrying elsewhere) made meanwhile, and undo it.
    ///
    /// A write is refused at once (`NoSpace`) while the data directory is
    /// short of space, unless it may go then (a delete, a session renewal:
    /// `Command::allowed_when_short`, `storage/space.rs`).
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, RaftError> {
        self.shared
            .space
            .admit(cmd.allowed_when_short())
            .map_err(RaftError::NoSpace)?;
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
            Ok(answer) => answer.unwrap_or(Err(RaftError::OutcomeUnknown)),
            Err(_) => Err(RaftError::CommitTimeout),
        }
    }

    /// Removes a server from the Raft configuration.
    pub async fn remove_peer(&self, id: u64) -> Result<(), RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::RemovePeer(id, tx))?;
        rx.await
            .unwrap_or(Err(RaftError::OutcomeUnknown))
            .map(|_| ())
    }

    /// Starts handing leadership to `target` (or to the most up-to-date other
    /// voter) and returns the chosen voter once started. Only the leader can:
    /// elsewhere this is `Err(NoLeader)`.
    pub async fn transfer_leader(&self, target: Option<u64>) -> Result<u64, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::TransferLeader(target, tx))?;
        rx.await.unwrap_or(Err(RaftError::ShuttingDown))
    }

    /// Greets `addr` from now on as a retry-join target (at once, then every
    /// `hello_interval`): a server that is not in a cluster yet joins the one
    /// it finds there, as with `--retry-join`.
    pub fn add_retry_join(&self, addr: String) -> Result<(), RaftError> {
        self.send(Event::AddRetryJoin(addr))
    }

    /// The node's timing (the operator endpoints judge contact ages by it).
    pub fn tuning(&self) -> &RaftTuning {
        &self.tuning
    }

    /// Looks at the current status without copying it (the copy allocates:
    /// peers, voters), for paths taken on every request.
    pub fn with_status<R>(&self, f: impl FnOnce(&RaftStatus) -> R) -> R {
        f(&self.shared.status.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Looks at the applied state and its Raft index under the read lock.
    /// Keep `f` short: the Raft thread waits for this lock to apply.
    pub fn with_applied<R>(&self, f: impl FnOnce(&StateStore, u64) -> R) -> R {
        let applied = self
            .shared
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner());
        f(&applied.state, applied.index)
    }

    /// Called by the leader loop (`leader/servers.rs`) once its own node,
    /// `serfHealth` and `consul` service are applied in `term`: from then on
    /// this leader names itself and answers linearizable reads in that term.
    pub fn announce(&self, term: u64) {
        if self.shared.announced_term.fetch_max(term, Ordering::SeqCst) < term {
            // A full inbox is busy anyway: the thread looks again soon.
            let _ = self.send(Event::Announced);
        }
    }

    /// Marks `term` announced without the catalog write (the deadline in
    /// `reads.rs`); the same as [`RaftHandle::announce`] on the shared state.
    pub(crate) fn force_announce(shared: &Shared, term: u64) {
        shared.announced_term.fetch_max(term, Ordering::SeqCst);
    }

    /// Whether this server, leading in `term`, may name itself and answer
    /// linearizable reads.
    pub(crate) fn announced_in(shared: &Shared, term: u64) -> bool {
        !shared.announce_gated || shared.announced_term.load(Ordering::SeqCst) >= term
    }

    /// The last applied Raft index.
    pub fn applied_index(&self) -> u64 {
        self.with_applied(|_, index| index)
    }

    /// The applied index as published after each applied batch: blocking
    /// reads wait on it.
    pub fn applied_changes(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// The changes of service `name` alone, subscribed under the
    /// applied-state lock (so no batch falls between the state the caller
    /// reads next and the subscription), if it has its own index; `None`
    /// for a name without one, whose index is the services table's, which
    /// any service's write moves: its readers wait on
    /// [`Self::applied_changes`].
    pub fn service_changes(&self, name: &str) -> Option<watch::Receiver<u64>> {
        self.with_applied(|state, _| {
            state.catalog.own_service_index(name)?;
            Some(self.shared.service_wakeups.subscribe(name))
        })
    }

    /// A receiver that changes after every applied batch that wrote or deleted a
    /// KV key under `prefix` (a key's own read passes the key), and whenever every KV
    /// read's index may have moved; subscribed under the applied-state lock.
    pub fn kv_changes(&self, prefix: &str) -> watch::Receiver<u64> {
        self.with_applied(|_, _| self.shared.kv_wakeups.subscribe(prefix))
    }

    /// Readers waiting on KV prefix `prefix`'s changes (tests, diagnostics).
    pub fn kv_watchers(&self, prefix: &str) -> usize {
        self.shared.kv_wakeups.receivers(prefix)
    }

    /// Readers waiting on service `name`'s own changes (tests, diagnostics).
    pub fn service_watchers(&self, name: &str) -> usize {
        self.shared.service_wakeups.receivers(name)
    }

    /// `Err(Broken)` once the Raft thread has stopped: reads must not be
    /// answered from a state that no longer follows the log.
    pub fn check_running(&self) -> Result<(), RaftError> {
        match self.with_status(|s| s.fatal.clone()) {
            Some(reason) => Err(RaftError::Broken(reason)),
            None => Ok(()),
        }
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
    /// How many rows that state has (the checkpoints' spacing, `checkpoints.rs`).
    pub rows: usize,
    /// Peer address book found on disk.
    pub peers: BTreeMap<u64, PeerInfo>,
    /// State rebuilt from disk.
    pub state: StateStore,
    /// Form a cluster once this many servers see each other (0: never bootstrap;
    /// 1: bootstrap alone at once, as `--dev` does).
    pub bootstrap_expect: usize,
    /// Servers to greet (their RPC addresses).
    pub retry_join: Vec<String>,
    /// Timing.
    pub tuning: RaftTuning,
    /// Outbound transport.
    pub transport: Arc<dyn Transport>,
    /// Where agent heartbeats go while this server leads (see `leader/liveness.rs`).
    pub heartbeats: tokio::sync::mpsc::Sender<crate::rpc::Heartbeat>,
    /// A leader waits for [`RaftHandle::announce`] before it names itself and
    /// answers linearizable reads (true when `leader/servers.rs` runs).
    pub announce_gated: bool,
    /// Where the Raft thread records its timings and counts.
    pub metrics: Arc<crate::metrics::RaftMetrics>,
    /// The data directory's free space and reserve (`--min-free-disk`).
    pub space: Arc<crate::storage::space::DiskSpace>,
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
            state: std::mem::replace(&mut setup.state, StateStore::new("")),
            index: setup.applied,
        }),
        status: RwLock::new(RaftStatus {
            id: setup.me.id,
            ..Default::default()
        }),
        applied_tx,
        service_wakeups: Default::default(),
        kv_wakeups: Default::default(),
        commit: AtomicU64::new(0),
        lease: std::sync::Mutex::new(None),
        announce_gated: setup.announce_gated,
        announced_term: AtomicU64::new(0),
        clock_skew_ms: AtomicI64::new(0),
        metrics: setup.metrics.clone(),
        space: setup.space.clone(),
        snapshot_memo: Default::default(),
    });
    let peers_for_snap = Arc::new(RwLock::new(setup.peers.clone()));
    setup.store.set_snapshot_source(snapshots::snapshot_source(
        shared.clone(),
        peers_for_snap.clone(),
    ));
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
            node.refuse_queued();
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
