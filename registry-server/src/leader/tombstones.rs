//! Reaping KV tombstones, on the leader (Consul's `TombstoneGC` and its
//! `TombstoneRequest{Op: TombstoneReap}`): a deleted key leaves a tombstone
//! so that a watcher of its prefix sees the delete (`state/kv.rs`); without
//! reaping they would pile up forever. Every `check_interval` the leader
//! notes its applied index; a note older than `ttl` (Consul's 15 minutes)
//! bounds the deletes no watcher can still be waiting to see, so the leader
//! proposes `KvReapTombstones { up_to_index: that note }`. The same command
//! forgets lock-delays that have run out (it carries the leader's time).
//! Why a reap cannot make a watcher miss a change: `state/kv.rs`.
//!
//! A new leader starts with no notes, so it reaps nothing for `ttl`. The
//! decision ([`reap_index`]) is pure and unit-tested below; this module must
//! not reach into Raft beyond [`RaftHandle`]'s status, applied-state reads
//! and proposals.

use crate::raft::{RaftHandle, Role};
use crate::state::kv::TombstoneReap;
use crate::state::Command;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Timing of tombstone reaping.
#[derive(Clone, Debug)]
pub struct TombstoneTuning {
    /// How long a tombstone is kept at least (Consul's `TombstoneTTL`).
    pub ttl: Duration,
    /// How often the leader notes its applied index and looks for a reap.
    pub check_interval: Duration,
}

impl Default for TombstoneTuning {
    fn default() -> Self {
        TombstoneTuning {
            ttl: Duration::from_secs(15 * 60),
            check_interval: Duration::from_secs(30),
        }
    }
}

/// Of the `(when, applied index)` notes, oldest first, drops those no
/// longer needed and returns the index a reap may go up to at `now`: the
/// newest note at least `ttl` old.
pub fn reap_index(
    notes: &mut VecDeque<(Instant, u64)>,
    now: Instant,
    ttl: Duration,
) -> Option<u64> {
    let old_enough = |at: &Instant| now.saturating_duration_since(*at) >= ttl;
    // Keep only the newest of the notes that are old enough.
    while notes.len() > 1 && notes.get(1).is_some_and(|(at, _)| old_enough(at)) {
        notes.pop_front();
    }
    notes
        .front()
        .filter(|(at, _)| old_enough(at))
        .map(|(_, index)| *index)
}

/// Runs on every server until shutdown; acts only while this server leads.
pub async fn run(raft: RaftHandle, tuning: TombstoneTuning, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(tuning.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut notes: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut term = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (leading, now_term) =
            raft.with_status(|s| (s.role == Role::Leader && s.leader_ready, s.term));
        if !leading || now_term != term {
            notes.clear();
            term = now_term;
            if !leading {
                continue;
            }
        }
        let now = Instant::now();
        notes.push_back((now, raft.applied_index()));
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let up_to = reap_index(&mut notes, now, tuning.ttl);
        let (reaped, oldest, delays) = raft.with_applied(|s, _| {
            (
                s.kv.reaped(),
                s.kv.oldest_tombstone(),
                s.kv.has_lock_delay_until(clock),
            )
        });
        let up_to = up_to.unwrap_or(reaped).max(reaped);
        if oldest.is_some_and(|t| t <= up_to) || delays {
            info!(up_to, "reaping KV tombstones and lock-delays that ran out");
            let cmd = Command::KvReapTombstones(TombstoneReap { up_to_index: up_to });
            if let Err(e) = raft.propose(cmd).await {
                debug!(error = %e, "could not reap tombstones; the next check retries");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reap_goes_up_to_the_newest_note_old_enough() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut notes: VecDeque<(Instant, u64)> = [(t0, 10), (t0 + Duration::from_secs(30), 20)]
            .into_iter()
            .collect();
        assert_eq!(
            reap_index(&mut notes, t0 + Duration::from_secs(59), ttl),
            None
        );
        assert_eq!(
            reap_index(&mut notes, t0 + Duration::from_secs(60), ttl),
            Some(10)
        );
        assert_eq!(
            reap_index(&mut notes, t0 + Duration::from_secs(95), ttl),
            Some(20)
        );
        assert_eq!(notes.len(), 1, "notes older than the one used go");
    }
}
