//! The Raft thread's side of the free-space reserve (`storage/space.rs`):
//! the leader refuses writes forwarded by followers while its own data
//! directory is short, and tells the follower why; a follower answers its
//! callers with that reason; and a follower whose disk is nearly full stops
//! taking new entries until it has room again (it lags, and the leader sends
//! them again later), instead of failing a write to RocksDB and stopping.
//! Must not measure space (that is `storage/space.rs`).

use super::entry::{context_request_id, Envelope};
use super::node::RaftNode;
use super::RaftError;
use crate::rpc::{RpcMessage, WritesRefused};
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use tracing::debug;

impl RaftNode {
    /// On the leader, takes out of a follower's forwarded proposals those the
    /// reserve does not admit, and tells the follower which and
    /// why. Configuration changes always go (they are small and may be what
    /// makes room).
    pub(super) fn refuse_forwarded_writes(&mut self, m: &mut Message) {
        let space = self.shared.space.clone();
        if !space.short() {
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
                // An entry that does not decode is the state machine's to
                // refuse; here it counts as a write not allowed when short.
                let allowed = serde_json::from_slice::<Envelope>(&e.data)
                    .is_ok_and(|env| env.cmd.allowed_when_short());
                match space.admit(allowed) {
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
               "refusing forwarded writes: the data directory is short of space");
        // Unanswered, they time out on the follower as "may still apply".
        if let Some(peer) = self.peers.get(&m.from) {
            let addr = peer.rpc_addr.clone();
            self.transport
                .send(&addr, RpcMessage::WritesRefused(refused));
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
    /// not told: it keeps probing, and if a majority of followers is that
    /// full, writes are not committed and their callers get the 500 of a
    /// commit timeout, not a 503 (the reserve is meant to be the same on
    /// every server, whose disks fill alike).
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
