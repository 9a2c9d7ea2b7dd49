//! Linearizable reads: ReadIndex rounds batched on the Raft thread (one round
//! answers every read queued before it started), and the leader's read lease
//! that lets a default-mode read skip the round. Must not evaluate reads (that
//! is `crate::reads`), only say when the applied state is fresh enough.

use super::node::RaftNode;
use super::{Event, RaftError, RaftHandle, RaftStatus, Role};
use raft::eraftpb::MessageType;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A read waiting for a ReadIndex answer, and when it arrived.
pub(super) type ReadWaiter = (oneshot::Sender<Result<u64, RaftError>>, Instant);

/// Whether a message of type `ty` arriving at `now` is a vote request to
/// drop unanswered, on a server that refuses votes until `refused_until`.
///
/// Raft thesis §6.4 (lease reads): a leader serves reads without a quorum
/// round for an election timeout after a quorum heard from it, because each
/// of those servers ignores votes for that long (raft-rs's `in_lease`). A
/// restarted server has forgotten that it heard from the leader, so it
/// ignores votes for one election timeout after start instead (as if it had
/// just heard from one).
pub(super) fn ignores_vote(ty: MessageType, refused_until: Option<Instant>, now: Instant) -> bool {
    matches!(
        ty,
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    ) && refused_until.is_some_and(|until| now < until)
}

impl RaftHandle {
    /// Returns once this server's applied state is at least as new as the
    /// leader's commit index at the time of the call (Raft's ReadIndex, §6.4).
    pub async fn linearizable_barrier(&self) -> Result<(), RaftError> {
        let started = Instant::now();
        let role_term = |s: &RaftStatus| (s.role, s.term);
        let (role_before, term_before) = self.with_status(role_term);
        let (tx, rx) = oneshot::channel();
        self.send(Event::ReadIndex(tx))?;
        let index = rx.await.unwrap_or(Err(RaftError::ShuttingDown))?;
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
    pub async fn default_barrier(&self) -> Result<(), RaftError> {
        let (leader_id, leading, term) = self.with_status(|s| {
            (
                s.leader_id,
                s.role == Role::Leader && s.leader_ready,
                s.term,
            )
        });
        if leader_id == 0 {
            return Err(RaftError::NoLeader);
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
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        let mut rx = self.shared.applied_tx.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|applied| *applied >= index).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => Err(RaftError::ReadTimeout),
        }
    }

    /// A default-mode read on the leader: no quorum round, but wait until
    /// everything it has committed is applied here.
    pub async fn leader_barrier(&self) -> Result<(), RaftError> {
        let commit = self.shared.commit.load(Ordering::SeqCst);
        self.wait_applied(commit, self.tuning.read_timeout).await
    }
}

impl RaftNode {
    /// A linearizable read's request for an index: queued for the next round.
    pub(super) fn queue_read(&mut self, reply: oneshot::Sender<Result<u64, RaftError>>) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(RaftError::NoLeader));
            return;
        }
        self.read_queue.push((reply, Instant::now()));
    }

    /// Whether this server leads but has not yet announced itself in its term
    /// (written its own node, `serfHealth` and the servers' `consul` service
    /// into the catalog, `leader/servers.rs`): until then no ReadIndex round
    /// is answered, so that every linearizable or default read, on any
    /// server, made after a leader is named sees those entries.
    ///
    /// The gate must never stop reads for good: if the announcement has not
    /// come one election timeout after this server started leading in its
    /// term (the catalog write failed, the loop is overloaded or gone), the
    /// leader announces itself anyway and says so, and reads go on without
    /// the guarantee.
    pub(super) fn unannounced_leader(&self) -> bool {
        let term = self.raw.raft.term;
        if !self.is_leader() || RaftHandle::announced_in(&self.shared, term) {
            return false;
        }
        let since = match self.leading_since.get() {
            Some((t, since)) if t == term => since,
            _ => {
                let now = Instant::now();
                self.leading_since.set(Some((term, now)));
                now
            }
        };
        if since.elapsed() < self.tuning.election_timeout() {
            return true;
        }
        tracing::warn!(node = %self.me.node, term,
            "servers not in the catalog one election timeout after taking office: announcing leadership anyway");
        RaftHandle::force_announce(&self.shared, term);
        false
    }

    /// Keeps a follower's ReadIndex request back while this leader has not
    /// announced itself; passes every other message through.
    pub(super) fn hold_read_index(
        &mut self,
        m: raft::eraftpb::Message,
    ) -> Option<raft::eraftpb::Message> {
        // Bounded: followers ask again every tick while their read waits.
        const MAX_HELD: usize = 1024;
        if m.get_msg_type() != MessageType::MsgReadIndex || !self.unannounced_leader() {
            return Some(m);
        }
        if self.held_read_index.len() < MAX_HELD {
            self.held_read_index.push(m);
        }
        None
    }

    /// Steps the held ReadIndex requests once this leader has announced
    /// itself; drops them if it no longer leads (the followers ask again).
    pub(super) fn release_held_reads(&mut self) {
        if self.held_read_index.is_empty() || self.unannounced_leader() {
            return;
        }
        let held = std::mem::take(&mut self.held_read_index);
        if !self.is_leader() {
            return;
        }
        for m in held {
            if let Err(e) = self.raw.step(m) {
                tracing::debug!(node = %self.me.node, error = %e, "raft step rejected a held read");
            }
        }
    }

    /// Starts one ReadIndex round for every read queued since the last one
    /// (a few rounds may be in flight, so reads do not wait for a slow one).
    pub(super) fn start_read_round(&mut self) {
        const MAX_ROUNDS_IN_FLIGHT: usize = 4;
        if self.unannounced_leader() {
            return;
        }
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

    pub(super) fn answer_read(&mut self, rs: raft::ReadState) {
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

    /// Expires reads that waited longer than `read_timeout` at `now`, and asks
    /// again for the rounds still open: raft-rs silently drops a ReadIndex
    /// when no leader is known, and a new leader ignores it until it commits
    /// in its term (a repeated context is ignored).
    pub(super) fn tick_reads(&mut self, now: Instant) {
        let rt = self.tuning.read_timeout;
        let expire = |waiters: &mut Vec<ReadWaiter>| {
            waiters.retain_mut(|(tx, at)| {
                if now.duration_since(*at) > rt {
                    let taken = std::mem::replace(tx, oneshot::channel().0);
                    let _ = taken.send(Err(RaftError::NoLeader));
                    false
                } else {
                    true
                }
            });
        };
        expire(&mut self.read_queue);
        for waiters in self.read_rounds.values_mut() {
            expire(waiters);
        }
        self.read_rounds.retain(|_, w| !w.is_empty());
        if self.raw.raft.leader_id != raft::INVALID_ID && !self.unannounced_leader() {
            let retry: Vec<u64> = self.read_rounds.keys().copied().collect();
            for ctx in retry {
                self.raw.read_index(ctx.to_be_bytes().to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_server_ignores_votes_for_one_election_timeout_only() {
        let start = Instant::now();
        let until = Some(start + Duration::from_secs(1));
        let later = start + Duration::from_secs(2);
        for vote in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote] {
            assert!(ignores_vote(vote, until, start));
            assert!(!ignores_vote(vote, until, later), "after the timeout");
            assert!(
                !ignores_vote(vote, None, start),
                "a fresh server votes at once"
            );
        }
        assert!(!ignores_vote(MessageType::MsgAppend, until, start));
    }
}
