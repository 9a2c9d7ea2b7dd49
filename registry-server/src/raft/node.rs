//! The Raft thread's loop: take every queued event, tick, then handle each
//! `Ready` in raft-rs' documented order (see `examples/five_mem_node` in
//! raft-rs): send the leader's messages, install a snapshot, apply committed
//! entries, persist entries and hard state, send the messages that must wait
//! for persistence, advance, then handle the light ready the same way. All
//! events that queued up while the thread was busy are drained before one
//! Ready is handled, so many proposals share one fsync.
//!
//! Membership, reads, heartbeats and snapshot tracking live in their own
//! files as further `impl RaftNode` blocks; this file must stay the loop and
//! the apply, and must not grow their decisions.

use super::entry::{context_request_id, decode_command, encode_envelope, restamp, ConfContext};
use super::reads::{ignores_vote, ReadWaiter};
use super::snapshots::SnapshotInFlight;
use super::{Event, Fatal, RaftError, RaftNodeSetup, RaftTuning, Reply, Role, Shared, EVENT_QUEUE};
use crate::rpc::{PeerInfo, RpcMessage, Transport};
use crate::state::{Command, Outcome, StateStore};
use crate::storage::checkpoint::CheckpointEnd;
use crate::storage::{RaftStore, StorageFailure, StoreBatch};
use raft::eraftpb::{ConfChangeType, Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, ReadOnlyOption, StateRole};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub(super) struct RaftNode {
    pub(super) me: PeerInfo,
    pub(super) raw: RawNode<RaftStore>,
    pub(super) store: RaftStore,
    pub(super) shared: Arc<Shared>,
    pub(super) peers: BTreeMap<u64, PeerInfo>,
    pub(super) peers_for_snap: Arc<RwLock<BTreeMap<u64, PeerInfo>>>,
    /// Servers not yet in a cluster that greeted us (bootstrap candidates),
    /// with the set of candidates each of them has seen.
    pub(super) seen: BTreeMap<u64, Vec<u64>>,
    /// Set once any server that already belongs to a cluster greeted us: from
    /// then on this server only ever joins, never bootstraps a second cluster.
    pub(super) saw_cluster: bool,
    pub(super) bootstrap_expect: usize,
    pub(super) retry_join: Vec<String>,
    pub(super) tuning: RaftTuning,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) heartbeats: tokio::sync::mpsc::Sender<crate::rpc::Heartbeat>,
    pub(super) events: Receiver<Event>,
    /// Writes proposed here, by request id: who waits for the outcome, and
    /// until when.
    pub(super) pending_writes: HashMap<u64, (oneshot::Sender<Result<Outcome, RaftError>>, Instant)>,
    /// The (term, leader) the writes in `pending_writes` were proposed under;
    /// when it changes they are answered at once (see
    /// [`RaftNode::abandon_writes_of_a_lost_leader`]).
    pub(super) writes_leader: (u64, u64),
    /// Agent heartbeats passed to the leader, by request id: who waits for
    /// the leader's ack, and until when.
    pub(super) pending_heartbeats: HashMap<u64, (oneshot::Sender<Result<(), RaftError>>, Instant)>,
    /// Until then, vote and pre-vote requests are dropped unanswered: this
    /// server restarted and may have acknowledged a leader whose read lease
    /// is still running (see `handle_rpc`).
    pub(super) votes_refused_until: Option<Instant>,
    /// Linearizable reads that arrived and wait for the next ReadIndex round.
    pub(super) read_queue: Vec<ReadWaiter>,
    /// ReadIndex rounds in flight, by context, with the reads each will answer.
    /// A read joins only a round started after it arrived (so the index it
    /// gets covers every write acknowledged before it), and one round answers
    /// all of them: thousands of concurrent reads cost a few rounds, not
    /// thousands of quorum heartbeats.
    pub(super) read_rounds: HashMap<u64, Vec<ReadWaiter>>,
    /// Followers' ReadIndex requests held back while this server leads but
    /// has not announced itself (see `reads.rs`, `hold_read_index`).
    pub(super) held_read_index: Vec<Message>,
    /// The term this server leads in and since when (a `Cell`: read from
    /// `&self` checks), for the announcement's deadline in `reads.rs`.
    pub(super) leading_since: std::cell::Cell<Option<(u64, Instant)>>,
    /// Request ids: a random prefix per process so ids never collide across servers.
    pub(super) next_request: AtomicU64,
    pub(super) last_leader_contact: Option<Instant>,
    pub(super) last_hello: Option<Instant>,
    /// When each other server last sent this one a Raft message (autopilot health).
    pub(super) peer_contact: HashMap<u64, Instant>,
    pub(super) snapshots_installed: u64,
    /// See [`super::RaftStatus::snapshots_sent`].
    pub(super) snapshots_sent: u64,
    /// Snapshots sent and not yet acknowledged, by follower (see
    /// [`RaftNode::check_snapshots`]).
    pub(super) snapshots_in_flight: HashMap<u64, SnapshotInFlight>,
    /// Snapshots each follower failed to acknowledge in time, in a row: the
    /// wait before the next attempt doubles with each.
    pub(super) snapshot_failures: HashMap<u64, u32>,
    pub(super) entries_synced: u64,
    pub(super) syncs: u64,
    /// Services whose index moved in batches applied since the last
    /// [`RaftNode::finish_apply`], which wakes their watchers (`wakeups.rs`).
    pub(super) moved_services: BTreeSet<String>,
    /// KV keys written or deleted since then: the watchers of their prefixes wake.
    pub(super) moved_kv_keys: BTreeSet<String>,
    /// Tombstones were reaped since then: every KV watcher wakes.
    pub(super) kv_floor_moved: bool,
    /// The state was rebuilt whole since then: every watcher wakes.
    pub(super) state_replaced: bool,
    /// On the leader: the followers that said they are too full to take
    /// entries (`space.rs`).
    pub(super) full_voters: HashMap<u64, super::space::FullReport>,
    /// Whether the leader is refusing writes for want of voters with space.
    pub(super) refusing_for_full_voters: bool,
    /// On a follower: when it last told the leader it is too full.
    pub(super) told_full_at: Option<Instant>,
    /// The checkpoints of the applied state (`checkpoints.rs`).
    pub(super) checkpoints: super::checkpoints::Checkpoints,
    pub(super) logger: slog::Logger,
}

pub(super) fn raft_config(id: u64, applied: u64, t: &RaftTuning) -> Config {
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
        // A restart replays the entries after the last checkpoint (up to as
        // many as the state has rows): a Ready at a time, 16 MiB of them,
        // not all at once.
        max_committed_size_per_ready: 16 << 20,
        ..Default::default()
    }
}

impl RaftNode {
    pub(super) fn new(
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
        let checkpoints =
            super::checkpoints::Checkpoints::new(&setup.store, setup.applied, setup.rows)?;
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
            writes_leader: (0, raft::INVALID_ID),
            pending_heartbeats: HashMap::new(),
            votes_refused_until,
            read_queue: Vec::new(),
            read_rounds: HashMap::new(),
            held_read_index: Vec::new(),
            leading_since: std::cell::Cell::new(None),
            next_request: AtomicU64::new(rand::random::<u64>() & !0xffff_ffff),
            last_leader_contact: None,
            last_hello: None,
            peer_contact: HashMap::new(),
            snapshots_installed: 0,
            snapshots_sent: 0,
            snapshots_in_flight: HashMap::new(),
            snapshot_failures: HashMap::new(),
            entries_synced: 0,
            syncs: 0,
            moved_services: BTreeSet::new(),
            moved_kv_keys: BTreeSet::new(),
            kv_floor_moved: false,
            state_replaced: false,
            full_voters: HashMap::new(),
            refusing_for_full_voters: false,
            told_full_at: None,
            checkpoints,
            logger,
        })
    }

    pub(super) fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn run(&mut self, shutdown: &CancellationToken) -> Result<(), Fatal> {
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
            self.release_held_reads();
            self.start_read_round();
            while self.raw.has_ready() {
                self.on_ready()?;
            }
            self.checkpoint_step()?;
            self.abandon_writes_of_a_lost_leader();
            self.publish_status();
        }
        info!(node = %self.me.node, "raft node stopped");
        Ok(())
    }

    /// Answers the writes still in the inbox when the loop has ended: they
    /// were never proposed, so they certainly did not apply. (Those proposed
    /// and unanswered are dropped with the node: `OutcomeUnknown`.)
    pub(super) fn refuse_queued(&mut self) {
        for _ in 0..EVENT_QUEUE {
            match self.events.try_recv() {
                Ok(Event::Propose { reply, .. } | Event::RemovePeer(_, reply)) => {
                    let _ = reply.send(Err(RaftError::ShuttingDown));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    pub(super) fn is_leader(&self) -> bool {
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
                    let _ = reply.send(Err(RaftError::TooLate));
                    return Ok(());
                }
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RaftError::NoLeader));
                    return Ok(());
                }
                if self.is_leader() {
                    if let Some(reason) = self.quorum_too_full() {
                        let _ = reply.send(Err(RaftError::NoSpace(reason)));
                        return Ok(());
                    }
                }
                let id = self.request_id();
                // The leader's clock: on a follower, the leader restamps it
                // when the forwarded proposal arrives (`handle_rpc`).
                let data = match encode_envelope(id, self.shared.now_ms(), &cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Encode(e.to_string())));
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
                        let _ = reply.send(Err(RaftError::NoLeader));
                    }
                }
            }
            Event::Heartbeat(hb, reply) => self.route_heartbeat(hb, reply),
            Event::ReadIndex(reply) => self.queue_read(reply),
            Event::Announced => {}
            Event::AddRetryJoin(addr) => {
                if !self.retry_join.contains(&addr) {
                    info!(node = %self.me.node, target = %addr, "greeting a new retry-join target");
                    self.retry_join.push(addr);
                    // Greet at the next turn of the loop rather than a hello interval later.
                    self.last_hello = None;
                }
            }
            Event::TransferLeader(target, reply) => {
                let _ = reply.send(self.transfer_leader(target));
            }
            Event::RemovePeer(id, reply) => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RaftError::NoLeader));
                    return Ok(());
                }
                if id == self.raw.raft.leader_id {
                    let _ = reply.send(Err(RaftError::Rejected(
                        "cannot remove the current leader; stop it first, then remove it once another server leads".into(),
                    )));
                    return Ok(());
                }
                let cs = self.store.conf_state();
                if !cs.voters.contains(&id) && !cs.learners.contains(&id) {
                    let _ = reply.send(Err(RaftError::Rejected(format!(
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

    pub(super) fn handle_rpc(&mut self, from: String, msg: RpcMessage) -> Result<(), Fatal> {
        match msg {
            RpcMessage::Raft(m) if m.to != self.me.id => {
                // Meant for another server (a stale address book on the sender,
                // or a connection relayed to the wrong server): stepping it
                // would act on a message for someone else.
                debug!(node = %self.me.node, to = m.to, %from, "dropping a Raft message for another server");
            }
            RpcMessage::Hello(h) if h.from.rpc_addr != from => {
                // A server's address changes only by its own word, on a
                // connection it authenticated as that address.
                debug!(node = %self.me.node, claimed = %h.from.rpc_addr, %from,
                       "ignoring a hello that names another address than its connection");
            }
            RpcMessage::Raft(m) => {
                // The transport tells us where a server talks from; that is how
                // we learn the address of a server added by another member.
                self.learn_peer_address(m.from, from);
                let from_id = m.from;
                self.peer_contact.insert(from_id, Instant::now());
                if ignores_vote(m.get_msg_type(), self.votes_refused_until, Instant::now()) {
                    debug!(node = %self.me.node, from = from_id, "ignoring a vote request just after start");
                    return Ok(());
                }
                let Some(mut m) = self.hold_read_index(m) else {
                    return Ok(());
                };
                if m.get_msg_type() == MessageType::MsgPropose && self.is_leader() {
                    // A follower's proposals carry the follower's clock; log
                    // time is the leader's (see `entry::restamp`).
                    let at = self.shared.now_ms();
                    for e in m.mut_entries().iter_mut() {
                        restamp(e, at);
                    }
                    self.refuse_forwarded_writes(&mut m);
                    if m.get_entries().is_empty() {
                        return Ok(());
                    }
                }
                if self.too_full_for(&m) {
                    self.tell_leader_too_full(from_id);
                    return Ok(());
                }
                self.note_space_on_leader_traffic(&m, from_id);
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
            RpcMessage::HeartbeatForward(fwd) => self.on_heartbeat_forward(fwd),
            RpcMessage::HeartbeatAck(id) => self.on_heartbeat_ack(id),
            RpcMessage::WritesRefused(refused) => self.on_writes_refused(refused),
            RpcMessage::TooFull(t) => self.on_too_full(&from, t),
            RpcMessage::Heartbeat(hb) => self.on_unacked_heartbeat(hb),
        }
        Ok(())
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
                    let Some(id) = context_request_id(e) else {
                        return true;
                    };
                    let late = self
                        .pending_writes
                        .get(&id)
                        .is_some_and(|(tx, deadline)| tx.is_closed() || now >= *deadline);
                    if late {
                        debug!(node = %self.me.node, "dropping a forwarded write whose caller gave up");
                        if let Some((tx, _)) = self.pending_writes.remove(&id) {
                            let _ = tx.send(Err(RaftError::TooLate));
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

    fn on_tick(&mut self) -> Result<(), Fatal> {
        let now = Instant::now();
        // Checked every tick, not only when a read comes: the announcement's
        // deadline must also open `/v1/status/leader` on an idle cluster.
        let _ = self.unannounced_leader();
        // Expire waiters whose answer will not come (lost leader, dropped message).
        self.pending_writes.retain(|_, (tx, deadline)| {
            if now > *deadline {
                let taken = std::mem::replace(tx, oneshot::channel().0);
                let _ = taken.send(Err(RaftError::CommitTimeout));
                false
            } else {
                true
            }
        });
        self.expire_heartbeats(now);
        self.tick_reads(now);
        if self.is_leader() {
            self.promote_learners();
        }
        self.check_snapshots(now);
        self.greet(now);
        Ok(())
    }

    /// Answers every waiting write with [`RaftError::CommitTimeout`] ("it may
    /// still apply") once the leader it was proposed under is gone: this
    /// server stopped following it (an election began or another server
    /// leads) or stopped leading itself. A follower's proposal forwarded to a
    /// leader that then died is lost with it, and its caller would otherwise
    /// wait the whole `propose_timeout` (10 s) before trying again; told now,
    /// it retries within the election instead (hashicorp/raft fails its
    /// futures with `ErrLeadershipLost` for the same reason). The outcome is
    /// unknown either way: an entry the old leader had replicated may still be
    /// committed by the new one, which is exactly what `CommitTimeout` says.
    fn abandon_writes_of_a_lost_leader(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.leader_id);
        let before = std::mem::replace(&mut self.writes_leader, now);
        // Writes are proposed only while a leader is known (else `NoLeader`),
        // so no write waits on a change from "no leader" to one.
        if before == now || before.1 == raft::INVALID_ID || self.pending_writes.is_empty() {
            return;
        }
        debug!(node = %self.me.node, term = now.0, leader = now.1, writes = self.pending_writes.len(),
               "leader lost: answering the writes that wait on it");
        for (_, (tx, _)) in self.pending_writes.drain() {
            let _ = tx.send(Err(RaftError::CommitTimeout));
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
                        self.snapshot_sent(to, snapshot_index);
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
        let conf = self.apply_entries(rd.take_committed_entries(), &mut batch, &mut replies)?;
        self.store.append(&mut batch, rd.entries())?;
        if let Some(hs) = rd.hs() {
            self.store.set_hard_state(&mut batch, hs);
        }
        // Entries and the hard state (term, vote) must be durable before the
        // messages that acknowledge them leave; the applied state need not be,
        // as it is rebuilt from the last checkpoint and the log after a crash.
        let sync = rd.must_sync() || !rd.entries().is_empty();
        self.write_and_answer(batch, sync, rd.entries().len(), replies, conf)?;
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
        let conf = self.apply_entries(light.take_committed_entries(), &mut batch, &mut replies)?;
        self.write_and_answer(batch, false, 0, replies, conf)?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    /// Writes `batch` (fsync when `sync`, holding `entries` new log entries)
    /// and answers `replies`, the callers of the entries whose rows it holds.
    ///
    /// They are answered before the write, not after it: their entries are
    /// already durable on a quorum and in this server's own log (raft-rs
    /// hands out only entries both committed and persisted here), and their
    /// effects need not be durable (they are rebuilt from the log after a
    /// crash). Otherwise they would wait for the fsync of the entries
    /// proposed after them. "Persisted here" holds because raft-rs learns
    /// of a persisted entry only from `advance`, which `on_ready` calls after
    /// the fsync: an asynchronous append (`advance_append_async`) would have
    /// to keep calling `on_persist_ready` only once its fsync is done.
    ///
    /// `conf_applied` (a configuration change among the rows) is the
    /// exception: its caller may read the configuration back at once, and
    /// the stored configuration and the published status change only with
    /// the write, so the batch's callers are answered after it.
    fn write_and_answer(
        &mut self,
        batch: StoreBatch,
        sync: bool,
        entries: usize,
        replies: Vec<Reply>,
        conf_applied: bool,
    ) -> Result<(), Fatal> {
        let deferred = if conf_applied {
            Some(replies)
        } else {
            self.finish_apply(replies);
            None
        };
        let stored = Instant::now();
        self.store.commit(batch, sync)?;
        if sync {
            self.shared.metrics.store_logs.since(stored);
            self.syncs += 1;
            self.entries_synced += entries as u64;
        }
        if let Some(replies) = deferred {
            self.publish_status();
            self.finish_apply(replies);
        }
        Ok(())
    }

    fn publish_commit(&self) {
        self.shared
            .commit
            .fetch_max(self.raw.raft.raft_log.committed, Ordering::SeqCst);
    }

    fn install_snapshot(&mut self, snap: raft::eraftpb::Snapshot) -> Result<(), Fatal> {
        let started = Instant::now();
        let index = snap.get_metadata().index;
        info!(node = %self.me.node, index, "installing snapshot from the leader");
        let image = RaftStore::decode_snapshot(&snap.data)?;
        let state = StateStore::from_rows(self.me.datacenter.as_str(), image.rows.clone())
            .map_err(|e| Fatal::BadEntry(index, e))?;
        for (id, p) in image.peers {
            if id != self.me.id {
                self.peers.insert(id, p);
            }
        }
        // The rows first, as a checkpoint: the log then starts after them.
        let meta = snap.get_metadata();
        let end = CheckpointEnd {
            index,
            term: meta.term,
            conf_state: meta.get_conf_state().clone(),
        };
        self.checkpoints.write_whole(&image.rows, end)?;
        let mut b = self.store.batch();
        self.store.install_snapshot(&mut b, &snap)?;
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
        applied.state = state;
        applied.index = index;
        self.state_replaced = true;
        self.snapshots_installed += 1;
        self.shared.metrics.fsm_restore.since(started);
        Ok(())
    }

    /// Applies `entries` to the catalog and `batch`, collecting their
    /// callers' `replies`; true when a configuration change was among them
    /// (see [`Self::write_and_answer`]).
    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        batch: &mut StoreBatch,
        replies: &mut Vec<Reply>,
    ) -> Result<bool, Fatal> {
        if entries.is_empty() {
            return Ok(false);
        }
        let mut peers_changed = false;
        let mut conf_applied = false;
        let started = Instant::now();
        let leading = self.is_leader();
        {
            // Through a clone of the Arc, so that conf changes (which need
            // `&mut self`) apply under the same lock.
            let shared = self.shared.clone();
            let mut applied = shared.applied.write().unwrap_or_else(|e| e.into_inner());
            for e in &entries {
                if e.index <= applied.index {
                    continue;
                }
                match e.get_entry_type() {
                    // A new leader's empty entry.
                    EntryType::EntryNormal if e.data.is_empty() => {}
                    EntryType::EntryNormal => {
                        let env = decode_command(e)?;
                        if leading {
                            self.shared.metrics.apply.inc();
                        }
                        let wanted = self.checkpoints.rows_wanted();
                        let (result, rows) =
                            applied.state.apply_for(e.index, env.at, &env.cmd, wanted);
                        if matches!(env.cmd, Command::Restore(_)) {
                            self.state_replaced = true;
                        }
                        for r in &rows {
                            if let Some(name) = r.moved_service_index() {
                                self.moved_services.insert(name.to_string());
                            } else if let Some(key) = r.moved_kv_key() {
                                self.moved_kv_keys.insert(key.to_string());
                            } else if r.moves_every_kv_index() {
                                self.kv_floor_moved = true;
                            }
                        }
                        self.checkpoints.record(&rows);
                        replies.push((env.id, result.map_err(RaftError::Rejected)));
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        let (reply, changed) = self.apply_conf_entry(e, batch)?;
                        conf_applied = true;
                        replies.extend(reply);
                        peers_changed |= changed;
                    }
                }
                applied.index = e.index;
            }
        }
        if peers_changed {
            self.store_peers(batch);
        }
        self.shared.metrics.fsm_apply.since(started);
        Ok(conf_applied)
    }

    fn finish_apply(&mut self, replies: Vec<Reply>) {
        let now = Instant::now();
        for (id, result) in replies {
            if let Some((tx, deadline)) = self.pending_writes.remove(&id) {
                // Every waiter's deadline is its proposal's time plus the propose timeout.
                let proposed = deadline.checked_sub(self.tuning.propose_timeout);
                if let Some(proposed) = proposed {
                    (self.shared.metrics.commit_time)
                        .record(now.saturating_duration_since(proposed));
                }
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
        let moved = std::mem::take(&mut self.moved_services);
        let kv_keys = std::mem::take(&mut self.moved_kv_keys);
        let kv_floor_moved = std::mem::take(&mut self.kv_floor_moved);
        let (wakeups, kv) = (&self.shared.service_wakeups, &self.shared.kv_wakeups);
        if std::mem::take(&mut self.state_replaced) {
            wakeups.notify_all();
            kv.notify_all();
            return;
        }
        if !moved.is_empty() {
            wakeups.notify(moved.iter().map(String::as_str));
        }
        if kv_floor_moved {
            kv.notify_all();
        } else if !kv_keys.is_empty() {
            kv.notify_prefixes_of(kv_keys.iter().map(String::as_str));
        }
    }

    fn maybe_compact(&mut self) -> Result<(), Fatal> {
        let applied = self.raw.raft.raft_log.applied;
        let first = self.store.snapshot_index();
        if applied.saturating_sub(first) < self.tuning.compact_threshold.max(1) {
            return Ok(());
        }
        // Never past the newest checkpoint: a restart replays the log after it.
        let to = applied
            .saturating_sub(self.tuning.compact_keep)
            .min(self.checkpoints.durable());
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
        if self.raw.raft.state != StateRole::Leader {
            self.forget_full_voters();
        }
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
        if st.role != role {
            self.shared.metrics.role_changed(role);
        }
        st.id = self.me.id;
        st.role = role;
        st.term = r.term;
        st.leader_id = r.leader_id;
        st.leader_ready = role == Role::Leader && r.commit_to_current_term();
        st.announced =
            role != Role::Leader || super::RaftHandle::announced_in(&self.shared, r.term);
        st.last_leader_contact = self.last_leader_contact;
        st.commit = r.raft_log.committed;
        st.in_cluster = self.store.initialized();
        st.compacted_to = self.store.snapshot_index();
        st.checkpointed_to = self.checkpoints.durable();
        st.checkpoint_failures = self.checkpoints.failed();
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
        // Updated in place: this runs after every batch of events, and
        // allocates only when the configuration changes.
        if role == Role::Leader {
            let prs = r.prs();
            st.progress
                .retain(|id, _| *id != self.me.id && prs.get(*id).is_some());
            for (id, pr) in prs.iter() {
                if *id == self.me.id {
                    continue;
                }
                let p = st.progress.entry(*id).or_default();
                p.matched = pr.matched;
                p.last_contact = self.peer_contact.get(id).copied();
            }
        } else if !st.progress.is_empty() {
            st.progress.clear();
        }
    }
}
