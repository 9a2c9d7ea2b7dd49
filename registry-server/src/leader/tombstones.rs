//! Reaping KV tombstones, on the leader (Consul's `TombstoneGC` and its
//! `TombstoneRequest{Op: TombstoneReap}`): a deleted key leaves a tombstone
//! so that a watcher of its prefix sees the delete (`state/kv.rs`); without
//! reaping they would pile up forever. Every `check_interval` the leader
//! notes its applied index; a note older than `ttl` (Consul's 15 minutes)
//! bounds the deletes no watcher can still be waiting to see. At most once
//! per `ttl`, and only when a tombstone is at or below such a note, the
//! leader proposes `KvReapTombstones { up_to_index: the newest such note }`:
//! one coarse step that takes every delete of a whole `ttl` at once. Each
//! reap raises the reap floor, which wakes every watcher of a quiet prefix
//! or a missing key once (`state/kv.rs`), so under steady deletes watchers
//! wake once per `ttl`, not once per check; a tombstone lives between `ttl`
//! and about twice `ttl`. Between tombstone reaps the same command, with the
//! floor unchanged (so it wakes nobody), forgets lock-delays that have run
//! out (it carries the leader's time).
//! Why a reap cannot make a watcher miss a change: `state/kv.rs`.
//!
//! A new leader starts with no notes, so it reaps no tombstone for `ttl`.
//! The decisions ([`reap_index`], [`tombstone_reap`]) are pure and
//! unit-tested below; this module must not reach into Raft beyond
//! [`RaftHandle`]'s status, applied-state reads and proposals.

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

/// The floor a tombstone reap at `now` raises to, if one is due: at most one
/// per `ttl` after this leader's `last_reap`, up to the newest note at least
/// `ttl` old (see [`reap_index`]), and only if a tombstone (the `oldest`
/// kept) is at or below it and above the current floor `reaped`.
pub fn tombstone_reap(
    notes: &mut VecDeque<(Instant, u64)>,
    last_reap: Option<Instant>,
    now: Instant,
    ttl: Duration,
    reaped: u64,
    oldest: Option<u64>,
) -> Option<u64> {
    let up_to = reap_index(notes, now, ttl)?;
    if last_reap.is_some_and(|at| now.saturating_duration_since(at) < ttl) {
        return None;
    }
    (up_to > reaped && oldest.is_some_and(|t| t <= up_to)).then_some(up_to)
}

/// Runs on every server until shutdown; acts only while this server leads.
pub async fn run(raft: RaftHandle, tuning: TombstoneTuning, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(tuning.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut notes: VecDeque<(Instant, u64)> = VecDeque::new();
    // When this leader last reaped tombstones (see `tombstone_reap`).
    let mut last_reap: Option<Instant> = None;
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
            last_reap = None;
            term = now_term;
            if !leading {
                continue;
            }
        }
        let now = Instant::now();
        notes.push_back((now, raft.applied_index()));
        let clock = raft.now_ms();
        let (reaped, oldest, delays) = raft.with_applied(|s, _| {
            (
                s.kv.reaped(),
                s.kv.oldest_tombstone(),
                s.kv.has_lock_delay_until(clock),
            )
        });
        let tombstones = tombstone_reap(&mut notes, last_reap, now, tuning.ttl, reaped, oldest);
        if tombstones.is_some() || delays {
            let up_to = tombstones.unwrap_or(reaped);
            info!(up_to, "reaping KV tombstones and lock-delays that ran out");
            let cmd = Command::KvReapTombstones(TombstoneReap { up_to_index: up_to });
            match raft.propose(cmd).await {
                Ok(_) if tombstones.is_some() => last_reap = Some(now),
                Ok(_) => {}
                Err(e) => debug!(error = %e, "could not reap tombstones; the next check retries"),
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

    /// Issue 14 item 3: under steady deletes a tombstone is always old
    /// enough, yet the floor (which wakes every quiet watcher) rises at most
    /// once per TTL, in steps of about a TTL of deletes.
    #[test]
    fn steady_deletes_are_reaped_once_per_ttl_in_coarse_steps() {
        let (t0, ttl, check) = (
            Instant::now(),
            Duration::from_secs(15 * 60),
            Duration::from_secs(30),
        );
        let mut notes = VecDeque::new();
        let (mut last_reap, mut reaped, mut floors) = (None, 0, Vec::new());
        // One delete per second for two hours; the applied index is the
        // second, and the oldest tombstone the first delete not yet reaped.
        for n in 1..=240u64 {
            let now = t0 + check * n as u32;
            let applied = n * 30;
            notes.push_back((now, applied));
            let oldest = Some(reaped + 1);
            if let Some(up_to) = tombstone_reap(&mut notes, last_reap, now, ttl, reaped, oldest) {
                assert!(up_to <= applied - 900, "only deletes at least a TTL old");
                last_reap = Some(now);
                reaped = up_to;
                floors.push((n, up_to));
            }
        }
        assert!(
            (7..=8).contains(&floors.len()),
            "once per TTL over two hours, not every check: {floors:?}"
        );
        for pair in floors.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 30, "a TTL apart: {floors:?}");
            assert!(pair[1].1 - pair[0].1 >= 900, "coarse steps: {floors:?}");
        }
        // Nothing to reap (or a fresh leader without old notes): no reap.
        let mut fresh = VecDeque::from([(t0, 10)]);
        assert_eq!(
            tombstone_reap(&mut fresh, None, t0 + ttl, ttl, 0, None),
            None
        );
        assert_eq!(tombstone_reap(&mut fresh, None, t0, ttl, 0, Some(1)), None);
        assert_eq!(
            tombstone_reap(&mut fresh, None, t0 + ttl, ttl, 0, Some(5)),
            Some(10)
        );
    }
}
