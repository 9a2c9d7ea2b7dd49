//! Node liveness: every node's `serfHealth` check, kept by heartbeats.
//!
//! Consul learns that an agent died from Serf gossip. Here each agent sends a
//! small heartbeat (`PUT /v1/internal/heartbeat`) every couple of seconds to any
//! server; followers pass it to the leader, which keeps the last-seen time of
//! every node in memory only. A write goes through Raft only when a node's
//! state changes (passing -> critical or back), so the cost per agent is one
//! small HTTP request per interval on a keep-alive connection and no disk
//! write: thousands of agents are thousands of requests per second at most,
//! spread over servers that forward, with no gossip mesh to tune. The price is
//! that liveness is judged by the leader alone, which is also where Consul's
//! reconciliation happens.
//!
//! The bound: a node whose agent stops is marked critical within
//! `node_timeout + check_interval` (default 10 s + 1 s) of its last heartbeat;
//! after a leader change the new leader first waits `node_timeout` so that it
//! does not fail nodes it simply has not heard from yet.
//!
//! Decisions are made from the applied catalog, which lags the log by the
//! writes in flight, so the writes guard against what they cannot see: the
//! reaper's "critical" applies only to a node that still exists (a deregister
//! ahead of it in the log wins), and a heartbeat that arrives while that
//! write is in flight is looked at again once it has applied.
//!
//! The decisions (who is silent, whether a heartbeat or a revive needs a
//! write) are pure functions of the applied state, the last-seen times and
//! the instant passed in, unit-tested on a fake clock below; this module
//! must not reach into Raft beyond [`RaftHandle`]'s status, applied-state
//! reads and proposals.

use super::ProposeOnce;
use crate::raft::{RaftError, RaftHandle, Role};
use crate::state::{CatalogState, Command};
use registry_api::{
    HealthCheck, RegisterRequest, CRITICAL, PASSING, SERF_HEALTH_ID, SERF_HEALTH_NAME,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Timing of liveness tracking.
#[derive(Clone, Debug)]
pub struct LivenessTuning {
    /// How often the leader looks for silent nodes.
    pub check_interval: Duration,
    /// Silence after which a node is marked critical.
    pub node_timeout: Duration,
}

impl Default for LivenessTuning {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(10),
        }
    }
}

pub use crate::rpc::Heartbeat;

/// Last-seen times, kept by the leader.
#[derive(Default)]
pub struct Liveness {
    /// Node -> when its agent was last heard from.
    last_seen: Mutex<HashMap<String, Instant>>,
    /// State changes proposed and not yet applied, by node and target status.
    writes: ProposeOnce,
    /// Term in which this server last led, and since when.
    leading: Mutex<Option<(u64, Instant)>>,
}

fn serf_check(node: &str, status: &str, output: &str) -> HealthCheck {
    HealthCheck {
        node: node.into(),
        check_id: SERF_HEALTH_ID.into(),
        name: SERF_HEALTH_NAME.into(),
        status: status.into(),
        output: output.into(),
        check_type: "serf".into(),
        ..Default::default()
    }
}

/// The write a heartbeat from `node` (at `address`) needs, given the applied
/// catalog: none while its `serfHealth` passes; else a register that marks it
/// passing (an existing node keeps its address and metadata: the agent owns
/// them).
fn heartbeat_write(catalog: &CatalogState, node: &str, address: &str) -> Option<RegisterRequest> {
    if catalog.check_status(node, SERF_HEALTH_ID) == Some(PASSING) {
        return None;
    }
    Some(RegisterRequest {
        node: node.to_string(),
        address: address.to_string(),
        skip_node_update: catalog.has_node(node),
        checks: vec![serf_check(node, PASSING, "Agent alive and reachable")],
        ..Default::default()
    })
}

/// Whether `node`, heard from during the critical write, must be marked
/// passing again: only if it exists and its `serfHealth` does not pass.
fn needs_revive(catalog: &CatalogState, node: &str) -> bool {
    catalog
        .check_status(node, SERF_HEALTH_ID)
        .is_some_and(|s| s != PASSING)
}

/// When this server's grace period began, given what it remembers of its
/// leadership (`leading`, updated here) and the term it now leads in: a new
/// term starts a new grace period at `now`.
fn grace_start(leading: &mut Option<(u64, Instant)>, term: u64, now: Instant) -> Instant {
    match *leading {
        Some((t, at)) if t == term => at,
        _ => {
            info!(term, "leading: liveness grace period starts");
            *leading = Some((term, now));
            now
        }
    }
}

/// How long `node` has been silent at `now`: since its last heartbeat, or
/// since `since` (the grace period's start) if none was recorded.
fn silence(
    last_seen: &HashMap<String, Instant>,
    node: &str,
    since: Instant,
    now: Instant,
) -> Duration {
    now.saturating_duration_since(last_seen.get(node).copied().unwrap_or(since))
}

/// The reaper's choice: of the nodes whose `serfHealth` passes, those silent
/// for longer than the timeout at `now`. Nothing during the grace period
/// after `since` (a new leader has not heard from anyone yet).
fn choose_silent(
    passing: Vec<String>,
    last_seen: &HashMap<String, Instant>,
    since: Instant,
    now: Instant,
    timeout: Duration,
) -> Vec<String> {
    if now.saturating_duration_since(since) < timeout {
        return Vec::new();
    }
    passing
        .into_iter()
        .filter(|node| silence(last_seen, node, since, now) > timeout)
        .collect()
}

impl Liveness {
    /// Records a heartbeat on the leader, and marks the node passing if it was
    /// not (a new node, or one coming back).
    pub async fn heartbeat(&self, raft: &RaftHandle, hb: Heartbeat) -> Result<(), RaftError> {
        self.record(&hb.node, Instant::now());
        let write = raft.with_applied(|s, _| heartbeat_write(&s.catalog, &hb.node, &hb.address));
        match write {
            Some(req) => (self.propose_once(raft, Command::Register, req).await).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Proposes `make(req)` unless the same change for its node is in flight
    /// (`Ok(false)`: it was, and that one stands for this one).
    async fn propose_once(
        &self,
        raft: &RaftHandle,
        make: fn(RegisterRequest) -> Command,
        mut req: RegisterRequest,
    ) -> Result<bool, RaftError> {
        // Keyed by node and target status: a heartbeat's "passing" is not
        // swallowed while the reaper's "critical" for the same node is in flight.
        let key = format!(
            "{}\0{}",
            req.node,
            req.checks.first().map(|c| c.status.as_str()).unwrap_or("")
        );
        self.writes
            .propose_new(raft, key, move || {
                CatalogState::validate_register(&mut req).map_err(RaftError::Rejected)?;
                Ok(make(req))
            })
            .await
    }

    /// Records that `node` was heard from at `at`.
    pub fn record(&self, node: &str, at: Instant) {
        self.seen().insert(node.to_string(), at);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `node` was heard from after `at`.
    fn heard_since(&self, node: &str, at: Instant) -> bool {
        self.seen().get(node).is_some_and(|seen| *seen > at)
    }

    /// Marks `node` critical, unless it was heard from since it was chosen.
    pub async fn mark_critical(
        &self,
        raft: &RaftHandle,
        node: String,
        timeout: Duration,
        since: Instant,
    ) {
        // Taken before the last look at the node's silence: a heartbeat
        // recorded after this either shows in that look or is caught below.
        let decided = Instant::now();
        let silent = silence(&self.seen(), &node, since, decided);
        if silent <= timeout {
            return;
        }
        let req = RegisterRequest {
            node: node.clone(),
            skip_node_update: true,
            checks: vec![serf_check(&node, CRITICAL, "Agent not live or unreachable")],
            ..Default::default()
        };
        // Conditional on the node: the decision was made from the applied
        // state, and a deregister already in the log ahead of this entry must
        // not be undone by it (the node would come back without an address,
        // and nothing would ever remove it).
        // Logged once it is done, by the call that made it: a write that fails (no leader,
        // a disk short of space) is tried again at the next pass, every second, and says so
        // only at debug level.
        match (self.propose_once(raft, Command::RegisterIfNodeExists, req)).await {
            Ok(true) => {
                info!(%node, silent_for = ?silent, "node stopped heartbeating: marked it critical")
            }
            // The same mark was already in flight, and that one logs.
            Ok(false) => {}
            Err(e) => debug!(%node, error = %e, "could not mark node critical"),
        }
        // A heartbeat that arrived while the write was in flight read the
        // node as still passing and proposed nothing; without a second look
        // the live node would stay critical until its next heartbeat.
        if self.heard_since(&node, decided) {
            self.revive(raft, &node).await;
        }
    }

    /// Marks `node` passing again if it is not, and only if it still exists:
    /// it was heard from, but this heartbeat's address is not at hand.
    async fn revive(&self, raft: &RaftHandle, node: &str) {
        if !raft.with_applied(|s, _| needs_revive(&s.catalog, node)) {
            return;
        }
        let req = RegisterRequest {
            node: node.to_string(),
            skip_node_update: true,
            checks: vec![serf_check(node, PASSING, "Agent alive and reachable")],
            ..Default::default()
        };
        match (self.propose_once(raft, Command::RegisterIfNodeExists, req)).await {
            Ok(true) => {
                info!(%node, "node heartbeated while being marked critical: marked it passing")
            }
            Ok(false) => {}
            Err(e) => debug!(%node, error = %e, "could not mark node passing"),
        }
    }

    /// One pass of the leader's reaper at `now`: the nodes whose `serfHealth`
    /// passes but that have been silent longer than the timeout, and since
    /// when this server leads. Proposing is left to the caller, so that
    /// heartbeats keep being recorded meanwhile.
    pub fn reap(
        &self,
        raft: &RaftHandle,
        tuning: &LivenessTuning,
        now: Instant,
    ) -> (Vec<String>, Instant) {
        let (leading, term) =
            raft.with_status(|s| (s.role == Role::Leader && s.leader_ready, s.term));
        let mut leading_since = self.leading.lock().unwrap_or_else(|e| e.into_inner());
        if !leading {
            *leading_since = None;
            return (Vec::new(), now);
        }
        let since = grace_start(&mut leading_since, term, now);
        drop(leading_since);
        if now.saturating_duration_since(since) < tuning.node_timeout {
            return (Vec::new(), since);
        }
        // Forget nodes not heard from for long (their check is critical by now).
        self.seen()
            .retain(|_, at| now.saturating_duration_since(*at) < tuning.node_timeout * 10);
        // Only the nodes agents keep alive: not every check in the catalog,
        // under the lock the Raft thread needs to apply.
        let passing = raft.with_applied(|s, _| s.catalog.serf_passing_nodes());
        let silent = choose_silent(passing, &self.seen(), since, now, tuning.node_timeout);
        (silent, since)
    }
}

/// Runs liveness on this server until shutdown: records the heartbeats the
/// Raft thread routes here while this server leads, and reaps silent nodes.
pub async fn run(
    liveness: Arc<Liveness>,
    raft: RaftHandle,
    tuning: LivenessTuning,
    mut heartbeats: mpsc::Receiver<Heartbeat>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(tuning.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut proposals = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Heartbeats first: a burst of them must be recorded before the
            // reaper looks at last-seen times.
            Some(hb) = heartbeats.recv() => {
                liveness.record(&hb.node, Instant::now());
                // Recording is instant; a state change waits for Raft, so it
                // runs on its own task and never holds up other heartbeats.
                let (liveness, raft) = (liveness.clone(), raft.clone());
                proposals.spawn(async move {
                    if let Err(e) = liveness.heartbeat(&raft, hb).await {
                        debug!(error = %e, "heartbeat not recorded");
                    }
                });
            }
            _ = tick.tick() => {
                let (silent, since) = liveness.reap(&raft, &tuning, Instant::now());
                for node in silent {
                    let (liveness, raft, timeout) = (liveness.clone(), raft.clone(), tuning.node_timeout);
                    proposals.spawn(async move {
                        liveness.mark_critical(&raft, node, timeout, since).await;
                    });
                }
            }
            Some(_) = proposals.join_next() => {}
        }
    }
    proposals.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(catalog: &mut CatalogState, index: u64, node: &str, serf: Option<&str>) {
        let mut req = RegisterRequest {
            node: node.into(),
            address: "10.0.0.1".into(),
            checks: serf.map(|s| serf_check(node, s, "")).into_iter().collect(),
            ..Default::default()
        };
        CatalogState::validate_register(&mut req).unwrap();
        catalog.apply(index, &Command::Register(req)).0.unwrap();
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn silent_nodes_are_chosen_only_after_the_grace_period_and_the_timeout() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let timeout = secs(10);
        let seen: HashMap<String, Instant> = [
            ("a".to_string(), t0 + secs(5)),
            ("b".to_string(), t0 + secs(12)),
        ]
        .into();
        let passing = names(&["a", "b", "never"]);
        // Within the grace period after taking over, nobody is silent.
        assert!(choose_silent(passing.clone(), &seen, t0, t0 + secs(9), timeout).is_empty());
        // "never" counts from the start of leadership, "a" from its last beat.
        assert_eq!(
            choose_silent(passing.clone(), &seen, t0, t0 + secs(11), timeout),
            names(&["never"])
        );
        assert_eq!(
            choose_silent(passing.clone(), &seen, t0, t0 + secs(16), timeout),
            names(&["a", "never"])
        );
        // Exactly the timeout is not yet silent.
        assert_eq!(
            choose_silent(passing, &seen, t0, t0 + secs(22), timeout),
            names(&["a", "never"])
        );
    }

    #[test]
    fn a_new_term_starts_a_new_grace_period() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(30);
        let mut leading = None;
        assert_eq!(grace_start(&mut leading, 3, t0), t0);
        assert_eq!(
            grace_start(&mut leading, 3, later),
            t0,
            "same term: same start"
        );
        assert_eq!(grace_start(&mut leading, 4, later), later);
    }

    #[test]
    fn a_heartbeat_writes_only_when_the_node_does_not_pass() {
        let mut catalog = CatalogState::new("dc1");
        // Unknown node: created, with the heartbeat's address.
        let w = heartbeat_write(&catalog, "n1", "10.0.0.9").unwrap();
        assert_eq!(
            (w.skip_node_update, w.address.as_str()),
            (false, "10.0.0.9")
        );
        assert_eq!(w.checks[0].status, PASSING);
        // Known node without serfHealth: its address is kept.
        register(&mut catalog, 1, "n1", None);
        assert!(
            heartbeat_write(&catalog, "n1", "x")
                .unwrap()
                .skip_node_update
        );
        register(&mut catalog, 2, "n1", Some(CRITICAL));
        assert!(heartbeat_write(&catalog, "n1", "x").is_some());
        register(&mut catalog, 3, "n1", Some(PASSING));
        assert!(heartbeat_write(&catalog, "n1", "x").is_none());
    }

    #[test]
    fn only_an_existing_node_that_does_not_pass_is_revived() {
        let mut catalog = CatalogState::new("dc1");
        assert!(
            !needs_revive(&catalog, "gone"),
            "a deregistered node stays gone"
        );
        register(&mut catalog, 1, "n1", Some(PASSING));
        assert!(!needs_revive(&catalog, "n1"));
        register(&mut catalog, 2, "n1", Some(CRITICAL));
        assert!(needs_revive(&catalog, "n1"));
    }
}
