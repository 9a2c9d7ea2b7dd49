//! What a server measures, under Consul's names
//! (<https://developer.hashicorp.com/consul/docs/reference/agent/telemetry>): Raft (commit
//! time, applies, storing logs, the state machine's applies, leadership changes, last contact,
//! snapshots), the catalog's sizes, HTTP and RPC requests per route, blocking queries waiting,
//! and snapshot saves and restores. One [`ServerMetrics`] per server instance (tests run many
//! in one process); its registry is rendered by the embedded agent's `/v1/agent/metrics`.
//!
//! The Raft thread records through [`RaftMetrics`]: plain atomics, no lock, no allocation.
//! Sizes and Raft status are read when the metrics are rendered (a collector), not on every
//! write. Owns: the server's metric names and where they come from. Must not touch: the
//! metric types and their renderings (`registry_api::metrics`).

use crate::raft::{RaftHandle, Role};
use registry_api::metrics::{Counter, Gauge, Metrics, RequestMetrics, Timer, REQUEST_LABELS};
use std::sync::Arc;
use std::time::Instant;

/// What the Raft thread records.
#[derive(Debug)]
pub struct RaftMetrics {
    /// `consul.raft.commitTime`: from a write's proposal on this server to its apply here.
    pub commit_time: Arc<Timer>,
    /// `consul.raft.apply`: entries applied while leading.
    pub apply: Arc<Counter>,
    /// `consul.raft.fsm.apply`: applying one batch of committed entries to the state.
    pub fsm_apply: Arc<Timer>,
    /// `consul.raft.rocksdb.storeLogs`: writing (and syncing) a batch of log entries.
    pub store_logs: Arc<Timer>,
    /// `consul.raft.state.leader`: times this server became leader.
    pub state_leader: Arc<Counter>,
    /// `consul.raft.state.candidate`: times it started an election.
    pub state_candidate: Arc<Counter>,
    /// `consul.raft.state.follower`: times it became a follower.
    pub state_follower: Arc<Counter>,
    /// `consul.raft.snapshot.create`: building a snapshot image for a follower.
    pub snapshot_create: Arc<Timer>,
    /// `consul.raft.fsm.restore`: installing a snapshot from the leader.
    pub fsm_restore: Arc<Timer>,
    /// `consul.raft.snapshot.persist`: a checkpoint of the applied state, from
    /// its beginning to its being durable.
    pub snapshot_persist: Arc<Timer>,
    /// Checkpoints that failed (the log is kept until one succeeds).
    pub checkpoint_failures: Arc<Counter>,
}

impl RaftMetrics {
    fn new(m: &Metrics) -> Self {
        RaftMetrics {
            commit_time: m.timer(
                "consul.raft.commitTime",
                "Time from a write's proposal on this server to its apply here (ms)",
            ),
            apply: m.counter(
                "consul.raft.apply",
                "Log entries applied while this server led",
            ),
            fsm_apply: m.timer(
                "consul.raft.fsm.apply",
                "Time to apply a batch of committed entries to the state (ms)",
            ),
            store_logs: m.timer(
                "consul.raft.rocksdb.storeLogs",
                "Time to write and sync a batch of log entries (ms)",
            ),
            state_leader: m.counter(
                "consul.raft.state.leader",
                "Times this server became the leader",
            ),
            state_candidate: m.counter(
                "consul.raft.state.candidate",
                "Times this server started an election",
            ),
            state_follower: m.counter(
                "consul.raft.state.follower",
                "Times this server became a follower",
            ),
            snapshot_create: m.timer(
                "consul.raft.snapshot.create",
                "Time to build a snapshot image for a follower (ms)",
            ),
            fsm_restore: m.timer(
                "consul.raft.fsm.restore",
                "Time to install a snapshot received from the leader (ms)",
            ),
            snapshot_persist: m.timer(
                "consul.raft.snapshot.persist",
                "Time to write a checkpoint of the applied state until it is durable (ms)",
            ),
            checkpoint_failures: m.counter(
                "registry.raft.checkpoint_failures",
                "Checkpoints of the applied state that failed; the log is kept until one succeeds",
            ),
        }
    }

    /// Counts a change of role to `role`.
    pub fn role_changed(&self, role: Role) {
        match role {
            Role::Leader => self.state_leader.inc(),
            Role::Candidate => self.state_candidate.inc(),
            Role::Follower => self.state_follower.inc(),
        }
    }
}

/// Everything a server measures.
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    /// The registry (rendered by the embedded agent, which includes it).
    pub registry: Metrics,
    /// The Raft thread's.
    pub raft: Arc<RaftMetrics>,
    /// Requests on the HTTP port (`consul.api.http`), blocking ones waiting
    /// (`consul.rpc.queries_blocking`).
    pub http: RequestMetrics,
    /// Requests on the RPC port from agents (`consul.rpc.request`,
    /// `consul.rpc.server.call`).
    pub rpc: RequestMetrics,
    /// `consul.snapshot.save`: `GET /v1/snapshot`.
    pub snapshot_save: Arc<Timer>,
    /// `consul.snapshot.restore`: `PUT /v1/snapshot`, until applied here.
    pub snapshot_restore: Arc<Timer>,
}

impl ServerMetrics {
    /// A fresh registry with every server metric.
    pub fn new() -> Self {
        let m = Metrics::new();
        let blocking = m.gauge(
            "consul.rpc.queries_blocking",
            "Blocking queries this server is answering now",
        );
        ServerMetrics {
            raft: Arc::new(RaftMetrics::new(&m)),
            http: RequestMetrics {
                timer: m.timer_family(
                    "consul.api.http",
                    "HTTP requests by method and route (ms)",
                    REQUEST_LABELS,
                ),
                counter: None,
                blocking: Some(blocking.clone()),
            },
            rpc: RequestMetrics {
                timer: m.timer_family(
                    "consul.rpc.server.call",
                    "Requests agents sent on the RPC port, by method and route (ms)",
                    REQUEST_LABELS,
                ),
                counter: Some(m.counter_family(
                    "consul.rpc.request",
                    "Requests agents sent on the RPC port, by method and route",
                    REQUEST_LABELS,
                )),
                blocking: Some(blocking),
            },
            snapshot_save: m.timer("consul.snapshot.save", "Time to save a snapshot (ms)"),
            snapshot_restore: m.timer(
                "consul.snapshot.restore",
                "Time to verify and restore a snapshot (ms)",
            ),
            registry: m,
        }
    }

    /// Adds the gauges read from `raft` when the metrics are rendered: the catalog's sizes
    /// and the Raft status.
    pub fn collect_from(&self, raft: &RaftHandle) {
        let m = &self.registry;
        let g = |name, help| m.gauge(name, help);
        let nodes: Arc<Gauge> = g("consul.state.nodes", "Nodes in the catalog");
        let services = g("consul.state.services", "Service names in the catalog");
        let instances = g(
            "consul.state.service_instances",
            "Service instances in the catalog",
        );
        let checks = g("consul.state.checks", "Health checks in the catalog");
        let kv = g("consul.state.kv_entries", "Keys in the KV store");
        let sessions = g("consul.state.sessions", "Sessions");
        let leader = g("consul.server.isLeader", "1 on the leader, else 0");
        let last_contact = g(
            "consul.raft.leader.lastContact",
            "On a follower: ms since the leader was last heard; on the leader: the most ms since any voter was",
        );
        let applied = g("consul.raft.applied_index", "The last applied Raft index");
        let commit = g("consul.raft.commit_index", "The Raft commit index");
        let free = g(
            "registry.disk.free_bytes",
            "Bytes free in the data directory (writes are refused below --min-free-disk)",
        );
        let reserve = g(
            "registry.disk.reserve_bytes",
            "The data directory's reserve, --min-free-disk (0: not checked)",
        );
        // A counter (it only goes up), kept by the disk-space check and read here.
        let refused = m.counter(
            "registry.disk.writes_refused",
            "Writes refused since start for want of disk space",
        );
        let raft = raft.clone();
        m.on_collect(move || {
            let (n, s, i, c, k, se) = raft.with_applied(|state, _| {
                let (n, s, i, c) = state.catalog.sizes();
                (n, s, i, c, state.kv.len(), state.sessions.len())
            });
            nodes.set(n as f64);
            services.set(s as f64);
            instances.set(i as f64);
            checks.set(c as f64);
            kv.set(k as f64);
            sessions.set(se as f64);
            let now = Instant::now();
            raft.with_status(|st| {
                leader.set(if st.role == Role::Leader { 1.0 } else { 0.0 });
                let contact = match st.role {
                    Role::Leader => st
                        .progress
                        .values()
                        .map(|p| {
                            p.last_contact
                                .map_or(0, |t| now.duration_since(t).as_millis())
                        })
                        .max()
                        .unwrap_or(0),
                    _ => st
                        .last_leader_contact
                        .map_or(0, |t| now.duration_since(t).as_millis()),
                };
                last_contact.set(contact as f64);
                commit.set(st.commit as f64);
            });
            applied.set(raft.applied_index() as f64);
            let space = raft.disk_space();
            if let Some(bytes) = space.free_if_known() {
                free.set(bytes as f64);
            }
            reserve.set(space.reserve() as f64);
            refused.raise_to(space.refused());
        });
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
