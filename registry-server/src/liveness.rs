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

use crate::catalog::Command;
use crate::raft_node::{RaftHandle, Role};
use registry_api::{
    HealthCheck, RegisterRequest, CRITICAL, PASSING, SERF_HEALTH_ID, SERF_HEALTH_NAME,
};
use std::collections::{HashMap, HashSet};
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
    /// Nodes with a state change proposed and not yet applied (no duplicates).
    in_flight: Mutex<HashSet<String>>,
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

impl Liveness {
    /// Records a heartbeat on the leader, and marks the node passing if it was
    /// not (a new node, or one coming back).
    pub async fn heartbeat(
        &self,
        raft: &RaftHandle,
        hb: Heartbeat,
    ) -> Result<(), registry_api::Error> {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hb.node.clone(), Instant::now());
        let (status, exists) = {
            let applied = raft
                .shared
                .applied
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let catalog = &applied.catalog;
            let status = catalog.check_status(&hb.node, SERF_HEALTH_ID);
            (status.map(str::to_string), catalog.has_node(&hb.node))
        };
        if status.as_deref() == Some(PASSING) {
            return Ok(());
        }
        let req = RegisterRequest {
            node: hb.node.clone(),
            address: hb.address,
            // An existing node keeps its address and metadata (the agent owns them).
            skip_node_update: exists,
            checks: vec![serf_check(&hb.node, PASSING, "Agent alive and reachable")],
            ..Default::default()
        };
        self.propose_once(raft, &hb.node, Command::Register, req)
            .await
    }

    /// Proposes `make(req)` unless the same change for `node` is in flight.
    async fn propose_once(
        &self,
        raft: &RaftHandle,
        node: &str,
        make: fn(RegisterRequest) -> Command,
        mut req: RegisterRequest,
    ) -> Result<(), registry_api::Error> {
        // Keyed by node and target status: a heartbeat's "passing" is not
        // swallowed while the reaper's "critical" for the same node is in flight.
        let key = format!(
            "{node}\0{}",
            req.checks.first().map(|c| c.status.as_str()).unwrap_or("")
        );
        if !self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            return Ok(());
        }
        let result = match crate::catalog::CatalogState::validate_register(&mut req) {
            Ok(()) => raft.propose(make(req)).await,
            Err(e) => Err(registry_api::Error::BadRequest(e)),
        };
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        result
    }

    /// Records that `node` was heard from now.
    pub fn record(&self, node: &str) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), Instant::now());
    }

    /// Whether `node` was heard from after `at`.
    fn heard_since(&self, node: &str, at: Instant) -> bool {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .is_some_and(|seen| *seen > at)
    }

    fn silent_for(&self, node: &str, since: Instant) -> Duration {
        let last = self
            .last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .copied()
            .unwrap_or(since);
        last.elapsed()
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
        let silent = self.silent_for(&node, since);
        if silent <= timeout {
            return;
        }
        info!(%node, silent_for = ?silent, "node stopped heartbeating: marking it critical");
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
        if let Err(e) = self
            .propose_once(raft, &node, Command::RegisterIfNodeExists, req)
            .await
        {
            debug!(%node, error = %e, "could not mark node critical");
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
        let status = raft
            .shared
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .catalog
            .check_status(node, SERF_HEALTH_ID)
            .map(str::to_string);
        if status.is_none_or(|s| s == PASSING) {
            return;
        }
        info!(%node, "node heartbeated while being marked critical: marking it passing");
        let req = RegisterRequest {
            node: node.to_string(),
            skip_node_update: true,
            checks: vec![serf_check(node, PASSING, "Agent alive and reachable")],
            ..Default::default()
        };
        if let Err(e) = self
            .propose_once(raft, node, Command::RegisterIfNodeExists, req)
            .await
        {
            debug!(%node, error = %e, "could not mark node passing");
        }
    }

    /// One pass of the leader's reaper: the nodes whose `serfHealth` passes
    /// but that have been silent longer than the timeout, and since when this
    /// server leads. Proposing is left to the caller, so that heartbeats keep
    /// being recorded meanwhile.
    pub fn reap(&self, raft: &RaftHandle, tuning: &LivenessTuning) -> (Vec<String>, Instant) {
        let status = raft.status();
        if status.role != Role::Leader || !status.leader_ready {
            *self.leading.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return (Vec::new(), Instant::now());
        }
        let now = Instant::now();
        let since = {
            let mut leading = self.leading.lock().unwrap_or_else(|e| e.into_inner());
            match *leading {
                Some((term, at)) if term == status.term => at,
                _ => {
                    info!(term = status.term, "leading: liveness grace period starts");
                    *leading = Some((status.term, now));
                    now
                }
            }
        };
        if now.duration_since(since) < tuning.node_timeout {
            return (Vec::new(), since);
        }
        // Forget nodes not heard from for long (their check is critical by now).
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| now.duration_since(*at) < tuning.node_timeout * 10);
        // Only the nodes agents keep alive: not every check in the catalog,
        // under the lock the Raft thread needs to apply.
        let passing = raft
            .shared
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .catalog
            .serf_passing_nodes();
        let silent = passing
            .into_iter()
            .filter(|node| self.silent_for(node, since) > tuning.node_timeout)
            .collect();
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
                liveness.record(&hb.node);
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
                let (silent, since) = liveness.reap(&raft, &tuning);
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
