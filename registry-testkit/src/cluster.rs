//! Whole clusters of real servers in one process, with real RocksDB in temp dirs and real
//! HTTP on 127.0.0.1:0, connected by an in-memory network whose links the tests cut and
//! heal; the configuration of a client agent joined to one; plus the small fixtures server
//! tests share. `use registry_testkit::cluster::*` is all a server test needs (it brings
//! [`wait_until`] too).
//!
//! Only with the `cluster` feature: it depends on registry-server and registry-client, so
//! only registry-server's integration tests (`tests/`) enable it. Test code: panics are its
//! failures.

pub use crate::wait::wait_until;
use registry_api::{AgentService, HealthCheck, QueryOptions, RegisterRequest, RegistryClient};
use registry_client::ClientConfig;
use registry_server::raft::{RaftError, RaftHandle, RaftTuning};
use registry_server::reads::{read_probed, Answer, AnswerCache, Blocking, Consistency, Probe};
use registry_server::rpc::MemNetwork;
use registry_server::state::StateStore;
use registry_server::{RaftStatus, Role, ServerConfig, ServerHandle, TransportKind};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Raft timing for tests: fast, but with room for a loaded 2-core machine.
pub fn fast_tuning() -> RaftTuning {
    RaftTuning {
        tick: Duration::from_millis(50),
        election_ticks: 10,
        heartbeat_ticks: 2,
        hello_interval: Duration::from_millis(100),
        propose_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(2),
        // Five election timeouts, as before this was a setting of its own.
        snapshot_ack_timeout: Duration::from_millis(2500),
        ..RaftTuning::default()
    }
}

/// Liveness timing for tests: a node is critical 1 s after its last heartbeat.
pub fn fast_liveness() -> registry_server::leader::liveness::LivenessTuning {
    registry_server::leader::liveness::LivenessTuning {
        check_interval: Duration::from_millis(100),
        node_timeout: Duration::from_secs(1),
    }
}

/// Session TTL timing for tests: the leader looks every 100 ms, and a session
/// expires after 0.2 TTLs without renewal (the API's shortest TTL, 10 s, lapses
/// in 2 s; the API's bounds stay).
pub fn fast_sessions() -> registry_server::leader::sessions::SessionTuning {
    registry_server::leader::sessions::SessionTuning {
        scan_interval: Duration::from_millis(100),
        ttl_multiplier: 0.2,
    }
}

/// A registration of one service instance `id` of `service` on `node`.
pub fn reg(node: &str, service: &str, id: &str) -> RegisterRequest {
    RegisterRequest {
        node: node.into(),
        address: "10.0.0.1".into(),
        service: Some(AgentService {
            id: id.into(),
            service: service.into(),
            port: 8080,
            tags: vec!["v1".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A registration with one service check in `status`.
pub fn reg_with_check(node: &str, service: &str, status: &str) -> RegisterRequest {
    let mut r = reg(node, service, service);
    r.checks.push(HealthCheck {
        check_id: format!("{service}-check"),
        name: format!("{service} check"),
        status: status.into(),
        service_id: service.into(),
        ..Default::default()
    });
    r
}

/// Options for a `?stale` read.
pub fn stale() -> QueryOptions {
    QueryOptions {
        stale: true,
        ..Default::default()
    }
}

/// A blocking `?stale` read of `key` past `min_index` (waiting 20 s at most), run as the
/// HTTP handlers run one ([`read_probed`]), on a task of its own: the watcher of the
/// wake-up tests, which count how often its `probe` or `query` ran and see when it ends.
pub fn spawn_stale_watch<T, P, F>(
    raft: &RaftHandle,
    min_index: u64,
    key: &str,
    probe: Probe<P>,
    query: F,
) -> JoinHandle<Result<Answer, RaftError>>
where
    T: Serialize + Send + 'static,
    P: Fn(&StateStore) -> u64 + Send + Sync + 'static,
    F: Fn(&StateStore) -> (T, u64) + Send + Sync + 'static,
{
    let (raft, key) = (raft.clone(), key.to_string());
    tokio::spawn(async move {
        let shutdown = CancellationToken::new();
        let blocking = Blocking {
            min_index,
            wait: Duration::from_secs(20),
        };
        let (cache, mode) = (AnswerCache::default(), Consistency::Stale);
        let then = |v| (v, false);
        read_probed(
            &raft,
            &cache,
            &shutdown,
            mode,
            Some(blocking),
            key,
            Some(probe),
            query,
            then,
        )
        .await
    })
}

/// The answer of a [`spawn_stale_watch`] watcher, which must come within 10 s.
pub async fn watch_answer(watch: JoinHandle<Result<Answer, RaftError>>) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watcher answered within 10 s")
        .expect("the watcher's task")
        .expect("the watcher's read")
}

/// How to start a [`TestCluster`]; from [`TestCluster::builder`].
#[must_use = "a builder does nothing until `start`"]
pub struct ClusterBuilder {
    /// How many servers.
    n: usize,
    /// Timing for every server.
    tuning: RaftTuning,
    /// Whether servers run their embedded agent.
    agents: bool,
    /// The datacenter.
    dc: String,
    /// Session TTL timing.
    sessions: registry_server::leader::sessions::SessionTuning,
    /// KV tombstone reaping timing.
    tombstones: registry_server::leader::tombstones::TombstoneTuning,
    /// ACL settings.
    acl: registry_server::acl::AclConfig,
    /// Node liveness timing.
    liveness: registry_server::leader::liveness::LivenessTuning,
}

impl ClusterBuilder {
    /// Node liveness timing for every server (default [`fast_liveness`]).
    pub fn liveness(mut self, liveness: registry_server::leader::liveness::LivenessTuning) -> Self {
        self.liveness = liveness;
        self
    }

    /// ACL settings for every server (default: ACLs off).
    pub fn acl(mut self, acl: registry_server::acl::AclConfig) -> Self {
        self.acl = acl;
        self
    }

    /// KV tombstone reaping for every server (default: production's, 15 minutes).
    pub fn tombstones(
        mut self,
        tombstones: registry_server::leader::tombstones::TombstoneTuning,
    ) -> Self {
        self.tombstones = tombstones;
        self
    }

    /// Session TTL timing for every server (default: production's; see [`fast_sessions`]).
    pub fn sessions(mut self, sessions: registry_server::leader::sessions::SessionTuning) -> Self {
        self.sessions = sessions;
        self
    }

    /// Raft timing for every server (default [`fast_tuning`]).
    pub fn tuning(mut self, tuning: RaftTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Whether servers run their embedded agent, which registers their own node (default
    /// yes). Without, the catalog holds only what the test writes.
    pub fn agents(mut self, agents: bool) -> Self {
        self.agents = agents;
        self
    }

    /// The datacenter (default `dc1`).
    pub fn dc(mut self, dc: &str) -> Self {
        self.dc = dc.to_string();
        self
    }

    /// Starts the servers; they bootstrap together.
    pub async fn start(self) -> TestCluster {
        let n = self.n;
        let mut c = TestCluster {
            net: MemNetwork::new(tokio::runtime::Handle::current()),
            nodes: Vec::new(),
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            names: (1..=n).map(|i| format!("s{i}")).collect(),
            // One each: `vec![x; n]` would clone one handle, and a clone shares its setting.
            disks: (0..n).map(|_| Default::default()).collect(),
            tuning: self.tuning,
            agents: self.agents,
            dc: self.dc,
            sessions: self.sessions,
            tombstones: self.tombstones,
            acl: self.acl,
            liveness: self.liveness,
        };
        for i in 0..n {
            let h = registry_server::start(c.config(i)).await.unwrap();
            c.nodes.push(Some(h));
        }
        c
    }
}

/// N servers of one datacenter on an in-memory network.
pub struct TestCluster {
    /// The network between them.
    pub net: MemNetwork,
    /// Running servers (None while stopped).
    pub nodes: Vec<Option<ServerHandle>>,
    /// Each server's data dir (kept across restarts).
    pub dirs: Vec<tempfile::TempDir>,
    /// Node names, which are also their addresses on the network.
    pub names: Vec<String>,
    /// Timing used for every server.
    pub tuning: RaftTuning,
    /// Whether servers run their embedded agent (registering their own node).
    pub agents: bool,
    /// The datacenter.
    pub dc: String,
    /// Session TTL timing used for every server.
    pub sessions: registry_server::leader::sessions::SessionTuning,
    /// KV tombstone reaping timing used for every server.
    pub tombstones: registry_server::leader::tombstones::TombstoneTuning,
    /// Each server's disk (slow it down with `set_write_delay`); kept across restarts.
    pub disks: Vec<registry_server::storage::DiskFaults>,
    /// ACL settings used for every server.
    pub acl: registry_server::acl::AclConfig,
    /// Node liveness timing used for every server.
    pub liveness: registry_server::leader::liveness::LivenessTuning,
}

impl TestCluster {
    /// Starts `n` servers of `dc1` that bootstrap together, with [`fast_tuning`] and their
    /// embedded agents. For anything else, [`TestCluster::builder`].
    pub async fn start(n: usize) -> Self {
        Self::builder(n).start().await
    }

    /// A cluster of `n` servers to configure, then [`ClusterBuilder::start`].
    pub fn builder(n: usize) -> ClusterBuilder {
        ClusterBuilder {
            n,
            tuning: fast_tuning(),
            agents: true,
            dc: "dc1".to_string(),
            sessions: Default::default(),
            tombstones: Default::default(),
            acl: Default::default(),
            liveness: fast_liveness(),
        }
    }

    /// The configuration of server `i`.
    pub fn config(&self, i: usize) -> ServerConfig {
        let mut cfg = ServerConfig::new(self.names[i].clone());
        cfg.data_dir = Some(self.dirs[i].path().to_path_buf());
        cfg.datacenter = self.dc.clone();
        cfg.http_addr = "127.0.0.1:0".parse().unwrap();
        cfg.advertise = Some(self.names[i].clone());
        cfg.bootstrap_expect = self.names.len();
        cfg.retry_join = self.names.clone();
        cfg.tuning = self.tuning.clone();
        cfg.liveness = self.liveness.clone();
        cfg.sessions = self.sessions.clone();
        cfg.tombstones = self.tombstones.clone();
        cfg.agent = self.agents;
        cfg.agent_sync_interval = Duration::from_millis(500);
        cfg.agent_heartbeat_interval = Duration::from_millis(100);
        cfg.transport = TransportKind::Mem(self.net.clone());
        cfg.disk_faults = self.disks[i].clone();
        cfg.acl = self.acl.clone();
        cfg
    }

    /// Server `i` (panics if stopped).
    pub fn node(&self, i: usize) -> &ServerHandle {
        self.nodes[i].as_ref().expect("server is stopped")
    }

    /// A client of server `i`.
    pub fn client(&self, i: usize) -> RegistryClient {
        RegistryClient::new(self.node(i).url())
    }

    /// Server `i`'s Raft status.
    pub fn status(&self, i: usize) -> RaftStatus {
        self.node(i).raft.status()
    }

    /// Indexes of running servers.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// Stops server `i` (its data dir stays).
    pub async fn stop(&mut self, i: usize) {
        if let Some(h) = self.nodes[i].take() {
            h.stop().await;
        }
    }

    /// Starts server `i` again from its data dir.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "server {i} is running");
        let h = registry_server::start(self.config(i)).await.unwrap();
        self.nodes[i] = Some(h);
    }

    /// Waits until exactly one of `among` leads, has committed in its term,
    /// and every one of `among` names it as leader. Returns its index.
    pub async fn wait_leader_among(&self, among: &[usize], timeout: Duration) -> usize {
        wait_until(timeout, "one agreed leader", || async {
            let st: Vec<(usize, RaftStatus)> = among.iter().map(|&i| (i, self.status(i))).collect();
            let leaders: Vec<&(usize, RaftStatus)> = st
                .iter()
                .filter(|(_, s)| s.role == Role::Leader && s.leader_ready)
                .collect();
            if leaders.len() != 1 {
                return None;
            }
            let (li, ls) = leaders[0];
            st.iter()
                .all(|(_, s)| s.leader_id == ls.id && s.term == ls.term)
                .then_some(*li)
        })
        .await
    }

    /// Waits for a leader agreed by all running servers.
    pub async fn wait_leader(&self) -> usize {
        self.wait_leader_among(&self.running(), Duration::from_secs(20))
            .await
    }

    /// Waits until leader `leader` has compacted its log past all it knows server `follower`
    /// (by Raft id) to hold, so that the follower can only catch up by snapshot. Compaction
    /// follows the leader's checkpoints, written in the background.
    pub async fn wait_compacted_past(&self, leader: usize, follower: u64) {
        crate::wait::wait_until(
            Duration::from_secs(20),
            &format!("server {leader}'s log compacted past server id {follower}'s"),
            || async {
                let st = self.status(leader);
                let matched = st.progress.get(&follower).map(|p| p.matched);
                matched.is_some_and(|m| st.compacted_to > m).then_some(())
            },
        )
        .await;
    }

    /// Waits until a blocking read on server `i` waits on service `name`'s own wake-ups, so
    /// that a test's next step (a write, a restore, a healed link) happens after it subscribed.
    pub async fn wait_watching(&self, i: usize, name: &str) {
        let raft = &self.node(i).raft;
        crate::wait::wait_until(
            Duration::from_secs(20),
            &format!("a watcher of {name} on server {i}"),
            || async { (raft.service_watchers(name) >= 1).then_some(()) },
        )
        .await;
    }

    /// HTTP base URLs of the running servers.
    pub fn urls(&self) -> Vec<String> {
        self.running()
            .into_iter()
            .map(|i| self.node(i).url())
            .collect()
    }

    /// The HTTP addresses (`host:port`) of the running servers: what a client agent's
    /// `retry_join` names.
    pub fn http_addrs(&self) -> Vec<String> {
        self.running()
            .into_iter()
            .map(|i| self.node(i).http_addr.to_string())
            .collect()
    }

    /// The configuration of a client agent `name` of this cluster: in its datacenter, joined
    /// to every running server ([`TestCluster::http_addrs`]), its HTTP API on 127.0.0.1:0,
    /// its state in `dir` (`None`: none kept), anti-entropy every 500 ms and a heartbeat
    /// every 100 ms (well inside the 1 s of [`fast_liveness`]). A test changes what it needs
    /// before `registry_client::start`.
    pub fn agent_config(&self, name: &str, dir: Option<&Path>) -> ClientConfig {
        let mut cfg = ClientConfig::new(name);
        cfg.datacenter = self.dc.clone();
        cfg.data_dir = dir.map(Path::to_path_buf);
        cfg.http_addr = "127.0.0.1:0".parse().unwrap();
        cfg.retry_join = self.http_addrs();
        cfg.sync_interval = Duration::from_millis(500);
        cfg.heartbeat_interval = Duration::from_millis(100);
        cfg
    }

    /// Points every running server at these gateways.
    pub fn set_gateways(&self, gateways: &[String]) {
        for i in self.running() {
            self.node(i).set_wan_gateways(gateways);
        }
    }

    /// Stops every server.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// Sends an agent heartbeat for `node` through `c` (unsigned: test clusters run without a
/// key); the HTTP status, or 0 when nothing answered within 5 s.
pub async fn heartbeat(c: &RegistryClient, node: &str) -> u16 {
    registry_api::tls::plain_client()
        .put(format!("{}/v1/internal/heartbeat", c.base()))
        .timeout(Duration::from_secs(5))
        .body(format!(
            r#"{{"Node":"{node}","Address":"10.9.9.9","Datacenter":"dc1"}}"#
        ))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The status of `node`'s `serfHealth` check as `c` reads it with `opts`.
pub async fn serf_status(c: &RegistryClient, node: &str, opts: &QueryOptions) -> Option<String> {
    let (checks, _): (Vec<HealthCheck>, _) =
        c.get(&format!("/v1/health/node/{node}"), opts).await.ok()?;
    checks
        .into_iter()
        .find(|c| c.check_id == registry_api::SERF_HEALTH_ID)
        .map(|c| c.status)
}
