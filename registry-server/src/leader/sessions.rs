//! Session TTLs, on the leader (Consul's `agent/consul/session_ttl.go`).
//!
//! A session with a TTL expires when it goes unrenewed for the TTL times
//! Consul's `SessionTTLMultiplier` (2): clients renew at about TTL/2, and the
//! grace covers a slow renewal or a leader change. Renewals are Raft writes
//! (`SessionRenew`, recording the entry's time in the session), so the
//! timers need no state of their own: every scan reads from the applied
//! state the TTL sessions whose TTL has lapsed (an ordered, derived index of
//! the sessions table, [`lapsed_until`]) and computes each deadline as
//! `max(last renewal, this leader's taking office) + multiplier × TTL`. The
//! second term is why a new leader re-arms every timer in full, as Consul's
//! `initializeSessionTimers` does: it cannot know what renewals its
//! predecessor was about to see. An expiry is proposed as
//! `SessionExpire { id, renewed_at }`, which applies only if the session was
//! not renewed since, so a renewal racing the expiry wins.
//!
//! The decision ([`due`]) is a pure function of the sessions, the clock and
//! the taking-office time, unit-tested below; this module must not reach
//! into Raft beyond [`RaftHandle`]'s status, applied-state reads and
//! proposals.

use super::ProposeOnce;
use crate::raft::{RaftHandle, Role};
use crate::state::session::SessionExpiry;
use crate::state::Command;
use registry_api::kv::SESSION_TTL_MAX;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Timing of session TTLs.
#[derive(Clone, Debug)]
pub struct SessionTuning {
    /// How often the leader looks for expired sessions.
    pub scan_interval: Duration,
    /// A session expires after this many TTLs without renewal (Consul's
    /// `SessionTTLMultiplier`, 2). Tests shorten it; the API's TTL bounds
    /// (10 s to 24 h) stay.
    pub ttl_multiplier: f64,
}

impl Default for SessionTuning {
    fn default() -> Self {
        SessionTuning {
            scan_interval: Duration::from_secs(1),
            ttl_multiplier: 2.0,
        }
    }
}

/// Expiries proposed per scan at most; the rest wait for the next one (the
/// earliest deadlines go first).
const MAX_EXPIRIES_PER_SCAN: usize = 256;

/// The sessions to expire at `now` (ms since the epoch), earliest deadline
/// first, at most `limit`: each (ID, the renewal time its expiry is
/// conditional on). `sessions` are (ID, TTL ms, last renewal ms); `office`
/// is when this leader took office (ms).
pub fn due<'a>(
    sessions: impl Iterator<Item = (&'a str, u64, u64)>,
    office: u64,
    now: u64,
    multiplier: f64,
    limit: usize,
) -> Vec<(String, u64)> {
    let mut expired: Vec<(u64, &str, u64)> = sessions
        .filter_map(|(id, ttl, renewed_at)| {
            let grace = (ttl as f64 * multiplier) as u64;
            let deadline = renewed_at.max(office).saturating_add(grace);
            (deadline <= now).then_some((deadline, id, renewed_at))
        })
        .collect();
    expired.sort_unstable();
    expired
        .into_iter()
        .take(limit)
        .map(|(_, id, renewed_at)| (id.to_string(), renewed_at))
        .collect()
}

/// The first characters of session `id`, enough to tell sessions apart in a
/// log: a whole ID lets whoever reads the logs (`/v1/agent/monitor` streams
/// them) release or destroy the session's locks, as a token would.
fn log_prefix(id: &str) -> String {
    id.chars().take(8).collect()
}

/// Which sessions a scan at `now` must look at: those whose last renewal
/// plus one TTL is at or before the returned time. A session is due when
/// `max(renewal, office) + multiplier × TTL <= now`, so when
/// `renewal + TTL <= now + (1 - multiplier) × TTL`: with Consul's multiplier
/// of 2 only sessions already one TTL unrenewed are read (a healthy client
/// renews at TTL/2, so there are few); a multiplier below 1 (tests) reads up
/// to the longest TTL further.
fn lapsed_until(now: u64, multiplier: f64) -> u64 {
    if multiplier >= 1.0 {
        return now;
    }
    let slack = (1.0 - multiplier) * SESSION_TTL_MAX.as_millis() as f64;
    now.saturating_add(slack as u64)
}

/// Runs on every server until shutdown; acts only while this server leads
/// (and has applied everything committed before it took office).
pub async fn run(raft: RaftHandle, tuning: SessionTuning, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(tuning.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let once = Arc::new(ProposeOnce::default());
    let mut office: Option<(u64, u64)> = None;
    let mut proposals = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(_) = proposals.join_next() => continue,
            _ = tick.tick() => {}
        }
        let (leading, term) =
            raft.with_status(|s| (s.role == Role::Leader && s.leader_ready, s.term));
        if !leading {
            office = None;
            continue;
        }
        let since = match office {
            Some((t, at)) if t == term => at,
            _ => {
                let at = raft.now_ms();
                info!(term, "leading: session TTL timers start in full");
                office = Some((term, at));
                at
            }
        };
        let now = raft.now_ms();
        let until = lapsed_until(now, tuning.ttl_multiplier);
        let expired = raft.with_applied(|s, _| {
            due(
                s.sessions.ttl_sessions_lapsed(until),
                since,
                now,
                tuning.ttl_multiplier,
                MAX_EXPIRIES_PER_SCAN,
            )
        });
        for (id, renewed_at) in expired {
            let (raft, once) = (raft.clone(), once.clone());
            proposals.spawn(async move {
                info!(session = %log_prefix(&id), "session TTL expired: invalidating it");
                let key = id.clone();
                let cmd = Command::SessionExpire(SessionExpiry { id, renewed_at });
                if let Err(e) = once.propose(&raft, key, move || Ok(cmd)).await {
                    debug!(error = %e, "could not expire a session; the next scan retries");
                }
            });
        }
    }
    proposals.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_after_the_multiplied_ttl_from_its_renewal_or_the_office() {
        let sessions = [("a", 10_000, 1_000), ("b", 10_000, 5_000), ("c", 30_000, 0)];
        let at = |now| due(sessions.iter().copied(), 0, now, 2.0, 10);
        assert!(at(20_999).is_empty());
        assert_eq!(at(21_000), vec![("a".to_string(), 1_000)]);
        assert_eq!(at(25_000).len(), 2);
        // Earliest deadline first, and bounded.
        let all = due(sessions.iter().copied(), 0, 100_000, 2.0, 2);
        assert_eq!(all, vec![("a".into(), 1_000), ("b".into(), 5_000)]);
        // A leader that took office at 50 s re-arms every timer in full.
        let fresh = |now| due(sessions.iter().copied(), 50_000, now, 2.0, 10);
        assert!(fresh(69_999).is_empty());
        assert_eq!(fresh(70_000).len(), 2);
        assert_eq!(fresh(110_000).len(), 3);
    }

    #[test]
    fn a_scan_reads_sessions_a_ttl_unrenewed_or_more_with_a_short_multiplier() {
        assert_eq!(lapsed_until(50_000, 2.0), 50_000);
        assert_eq!(lapsed_until(50_000, 1.0), 50_000);
        // Due at renewal + 0.5 × TTL: up to half the longest TTL further.
        let half_max = SESSION_TTL_MAX.as_millis() as u64 / 2;
        assert_eq!(lapsed_until(50_000, 0.5), 50_000 + half_max);
    }

    #[test]
    fn logs_name_a_session_by_a_prefix_only() {
        let id = "0b3b6f4e-55a1-4f35-a3a2-5a4a6b2cfe10";
        assert_eq!(log_prefix(id), "0b3b6f4e");
        assert_eq!(log_prefix("é"), "é");
    }
}
