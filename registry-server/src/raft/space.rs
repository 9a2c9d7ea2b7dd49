//! The Raft thread's side of the free-space reserve (`storage/space.rs`):
//! the leader refuses writes forwarded by followers while its own data
//! directory is short, and tells the follower why; a follower answers its
//! callers with that reason; and a follower whose disk is nearly full stops
//! taking new entries until it has room again (it lags, and the leader sends
//! them again later), instead of failing a write to RocksDB and stopping; it
//! tells the leader so, and a leader that has too few voters left to commit
//! refuses new writes with that reason (503) rather than letting them time out.
//! Must not measure space (that is `storage/space.rs`).

use super::entry::{context_request_id, Envelope};
use super::node::RaftNode;
use super::RaftError;
use crate::rpc::{RpcMessage, TooFull, WritesRefused};
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How often a full follower tells the leader (it drops an append at every
/// heartbeat round); and how long the leader believes it, so that a
/// follower with room again is counted again within [`FULL_FRESH`].
const TELL_FULL_EVERY: Duration = Duration::from_millis(250);
const FULL_FRESH: Duration = Duration::from_secs(1);

/// What the leader keeps of a follower's [`TooFull`].
pub(super) struct FullReport {
    /// When it came.
    at: Instant,
    /// Why, for the refused callers.
    reason: String,
    /// The follower's last log index then: acknowledgements past it show room.
    last_index: u64,
}

impl RaftNode {
    /// On the leader, takes out of a follower's forwarded proposals those the
    /// reserve does not admit (all of them while too few servers have room to
    /// commit, [`RaftNode::quorum_too_full`]), and tells the follower which and
    /// why. Configuration changes always go (they are small and may be what
    /// makes room).
    pub(super) fn refuse_forwarded_writes(&mut self, m: &mut Message) {
        let space = self.shared.space.clone();
        let quorum_full = self.quorum_too_full();
        if !space.short() && quorum_full.is_none() {
            return;
        }
        let entries: Vec<Entry> = m.take_entries().into();
        let mut refused = WritesRefused {
            ids: Vec::new(),
            reason: String::new(),
        };
        let kept: Vec<Entry> = entries
            .into_iter()
            .filter(|e| {
                if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                    return true;
                }
                // With too few servers to commit, no write goes; otherwise the
                // reserve decides. An entry that does not decode is the state
                // machine's to refuse; here it counts as a write not allowed when short.
                let admitted = match &quorum_full {
                    Some(reason) => Err(reason.clone()),
                    None => space.admit(
                        serde_json::from_slice::<Envelope>(&e.data)
                            .is_ok_and(|env| env.cmd.allowed_when_short()),
                    ),
                };
                match admitted {
                    Ok(()) => true,
                    Err(reason) => {
                        refused.ids.extend(context_request_id(e));
                        refused.reason = reason;
                        false
                    }
                }
            })
            .collect();
        m.set_entries(kept.into());
        if refused.reason.is_empty() {
            return;
        }
        debug!(node = %self.me.node, writes = refused.ids.len(), from = m.from,
               "refusing forwarded writes: short of space here or on too many servers");
        // Unanswered, they time out on the follower as "may still apply".
        if let Some(peer) = self.peers.get(&m.from) {
            let addr = peer.rpc_addr.clone();
            self.transport
                .send(&addr, RpcMessage::WritesRefused(refused));
        }
    }

    /// On the leader: the reason to refuse a new write when so many voters
    /// said they are too full to take entries (within [`FULL_FRESH`]) that
    /// the rest cannot commit it. Logged when that starts and ends.
    pub(super) fn quorum_too_full(&mut self) -> Option<String> {
        if self.full_voters.is_empty() && !self.refusing_for_full_voters {
            return None;
        }
        let now = Instant::now();
        self.full_voters
            .retain(|_, r| now.duration_since(r.at) < FULL_FRESH);
        let voters = self.store.conf_state().voters;
        let full: Vec<u64> = (self.full_voters.keys().copied())
            .filter(|id| voters.contains(id) && *id != self.me.id)
            .collect();
        let n = voters.len();
        let short = !full.is_empty() && n - full.len() < n / 2 + 1;
        if short != self.refusing_for_full_voters {
            self.refusing_for_full_voters = short;
            if short {
                warn!(node = %self.me.node, full = ?full, voters = n,
                      "too few servers have disk space to commit: refusing writes");
            } else {
                info!(node = %self.me.node, "enough servers have disk space again: taking writes");
            }
        }
        if !short {
            return None;
        }
        let report = full.first().and_then(|id| self.full_voters.get(id))?;
        Some(format!(
            "{}; with {} of {n} servers short of space, no write can be committed",
            report.reason,
            full.len()
        ))
    }

    /// Once no longer leading: the reports were for that term's leadership.
    pub(super) fn forget_full_voters(&mut self) {
        self.full_voters.clear();
        if std::mem::take(&mut self.refusing_for_full_voters) {
            info!(node = %self.me.node, "no longer leading: no longer refusing writes for servers short of space");
        }
    }

    /// Keeps the reports current from the Raft traffic itself. On a follower:
    /// a heartbeat while it is too full to take entries is told to the leader
    /// too (a follower the leader sends only snapshots, or nothing new, would
    /// otherwise go quiet). On the leader: an append response past the last
    /// index a follower held when it reported shows it took entries since,
    /// so it has room.
    pub(super) fn note_space_on_leader_traffic(&mut self, m: &Message, from: u64) {
        match m.get_msg_type() {
            MessageType::MsgHeartbeat if self.shared.space.below_follow_floor() => {
                self.tell_leader_too_full(from);
            }
            MessageType::MsgAppendResponse if !m.reject && m.term == self.raw.raft.term => {
                let Some(report) = self.full_voters.get(&from) else {
                    return;
                };
                // Past what it held when it reported: it took new entries since.
                let matched = self.raw.raft.prs().get(from).map_or(0, |p| p.matched);
                if m.index > report.last_index.max(matched) {
                    self.full_voters.remove(&from);
                }
            }
            _ => {}
        }
    }

    /// On the leader, notes a follower that said it is too full for entries
    /// (from the address it is known by: no server speaks for another).
    pub(super) fn on_too_full(&mut self, from: &str, t: TooFull) {
        let known = self.peers.get(&t.from).is_some_and(|p| p.rpc_addr == from);
        if self.is_leader() && known {
            let report = FullReport {
                at: Instant::now(),
                reason: t.reason,
                last_index: t.last_index,
            };
            self.full_voters.insert(t.from, report);
        }
    }

    /// On a follower dropping the leader's append or snapshot for want of
    /// space: tells the leader, at most every [`TELL_FULL_EVERY`].
    pub(super) fn tell_leader_too_full(&mut self, leader: u64) {
        let now = Instant::now();
        if self
            .told_full_at
            .is_some_and(|at| now.duration_since(at) < TELL_FULL_EVERY)
        {
            return;
        }
        self.told_full_at = Some(now);
        if let Some(peer) = self.peers.get(&leader) {
            let reason = format!(
                "server {} cannot take new entries: its data directory is short of space",
                self.me.node
            );
            let msg = RpcMessage::TooFull(TooFull {
                from: self.me.id,
                reason,
                last_index: self.raw.raft.raft_log.last_index(),
            });
            self.transport.send(&peer.rpc_addr.clone(), msg);
        }
    }

    /// On a follower, answers the writes the leader refused.
    pub(super) fn on_writes_refused(&mut self, refused: WritesRefused) {
        for id in refused.ids {
            if let Some((tx, _)) = self.pending_writes.remove(&id) {
                let _ = tx.send(Err(RaftError::NoSpace(refused.reason.clone())));
            }
        }
    }

    /// Whether this server must not take the entries in `m` now: a follower
    /// whose data directory is nearly full drops the leader's appends and
    /// snapshots that would add to it (the leader retries them), and goes on
    /// with heartbeats, so no election starts and reads go on. The leader is
    /// told ([`RaftNode::tell_leader_too_full`]): it keeps probing, and while
    /// too few voters can take entries it refuses new writes with a 503
    /// ([`RaftNode::quorum_too_full`]); writes already in its log wait, and
    /// their callers get the 500 of a commit timeout (they may still apply).
    pub(super) fn too_full_for(&self, m: &Message) -> bool {
        let space = &self.shared.space;
        match m.get_msg_type() {
            MessageType::MsgAppend => !m.get_entries().is_empty() && space.too_full_to_follow(),
            // A snapshot must fit whole, with a quarter of the reserve left.
            MessageType::MsgSnapshot => {
                space.too_full_to_take(m.get_snapshot().get_data().len() as u64)
            }
            _ => false,
        }
    }
}
