//! Agent heartbeats on their way to the leader: recorded at once on the
//! leader (handed to `leader::liveness`), passed on by a follower that waits
//! for the leader's acknowledgement before answering its agent. Must not
//! judge liveness (that is `leader/liveness.rs`).

use super::node::RaftNode;
use super::{Event, RaftError, RaftHandle, Role};
use crate::rpc::{Heartbeat, HeartbeatForward, RpcMessage};
use std::time::Instant;
use tokio::sync::oneshot;

impl RaftHandle {
    /// Routes an agent heartbeat to the leader and returns once the leader
    /// has it (at once on the leader itself). A server that cannot pass it on
    /// (no leader, no recent contact with one, no ack in time) answers
    /// `NoLeader`, so that the agent tries another server rather than
    /// believing itself heard while the leader marks its node critical.
    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<(), RaftError> {
        let stale_after = self.tuning.election_timeout();
        let reachable = self.with_status(|s| {
            s.leader_id != 0
                && (s.role == Role::Leader
                    || s.last_leader_contact
                        .is_some_and(|t| t.elapsed() < stale_after))
        });
        if !reachable {
            return Err(RaftError::NoLeader);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Event::Heartbeat(hb, tx))?;
        // The Raft thread answers within `heartbeat_ack_timeout` unless it is
        // stuck (a slow fsync): then it cannot pass heartbeats on either.
        let wait = self.tuning.heartbeat_ack_timeout + self.tuning.tick;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(RaftError::ShuttingDown),
            Err(_) => Err(RaftError::NoLeader),
        }
    }
}

impl RaftNode {
    /// Hands a heartbeat to this leader's liveness task.
    pub(super) fn accept_heartbeat(&self, hb: Heartbeat) -> Result<(), RaftError> {
        self.heartbeats
            .try_send(hb)
            .map_err(|_| RaftError::Overloaded)
    }

    /// An agent heartbeat that arrived here over HTTP: recorded at once on
    /// the leader; passed to the leader by a follower (or learner) that heard
    /// from it within an election timeout, and answered when the leader acks
    /// it (or with `NoLeader` after `heartbeat_ack_timeout`, see `on_tick`).
    pub(super) fn route_heartbeat(
        &mut self,
        hb: Heartbeat,
        reply: oneshot::Sender<Result<(), RaftError>>,
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
            let _ = reply.send(Err(RaftError::NoLeader));
            return;
        };
        let id = self.request_id();
        self.transport.send(
            &addr,
            RpcMessage::HeartbeatForward(HeartbeatForward {
                id,
                from: self.me.id,
                heartbeat: hb,
            }),
        );
        let deadline = Instant::now() + self.tuning.heartbeat_ack_timeout;
        self.pending_heartbeats.insert(id, (reply, deadline));
    }

    /// A heartbeat another server passed here for the leader to record. Only
    /// the leader records and acks; anything else lets the forwarding server
    /// time out and its agent try elsewhere.
    pub(super) fn on_heartbeat_forward(&mut self, fwd: HeartbeatForward) {
        if self.is_leader() && self.accept_heartbeat(fwd.heartbeat).is_ok() {
            if let Some(p) = self.peers.get(&fwd.from).filter(|p| p.id != self.me.id) {
                let addr = p.rpc_addr.clone();
                self.transport.send(&addr, RpcMessage::HeartbeatAck(fwd.id));
            }
        }
    }

    /// The leader recorded heartbeat `id`: its agent gets its 200.
    pub(super) fn on_heartbeat_ack(&mut self, id: u64) {
        if let Some((reply, _)) = self.pending_heartbeats.remove(&id) {
            let _ = reply.send(Ok(()));
        }
    }

    /// A fire-and-forget heartbeat, as servers before `HeartbeatForward` sent them.
    pub(super) fn on_unacked_heartbeat(&mut self, hb: Heartbeat) {
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

    /// Answers `NoLeader` to forwarded heartbeats not acknowledged by `now`.
    pub(super) fn expire_heartbeats(&mut self, now: Instant) {
        self.pending_heartbeats.retain(|_, (tx, deadline)| {
            if tx.is_closed() {
                return false;
            }
            if now >= *deadline {
                let taken = std::mem::replace(tx, oneshot::channel().0);
                let _ = taken.send(Err(RaftError::NoLeader));
                return false;
            }
            true
        });
    }
}
