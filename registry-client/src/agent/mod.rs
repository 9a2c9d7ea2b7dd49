//! The agent: this node's services and checks, the source of truth for its node.
//!
//! As in Consul (<https://developer.hashicorp.com/consul/docs/concepts/architecture>), the
//! application registers with its local agent only; the agent runs the checks and the
//! anti-entropy syncer ([`crate::anti_entropy`]) makes the catalog match this state. The state
//! lives behind a std `Mutex` that is never held across an `.await`: every operation on it is a
//! few map updates, so an async lock would only add cost.
//!
//! - `state`: the local services and checks and the rules every change follows;
//! - `registration`: the agent endpoints' operations (register, deregister, read);
//! - `maintenance`: node and service maintenance checks;
//! - `check_results`: what the check runners report, and reaping services that stay
//!   critical;
//! - `persistence`: `services.json` and `checks.json`, written atomically and read back
//!   leniently;
//! - `heartbeat`: telling the servers this node is alive;
//! - `config_files`: the services defined in configuration files, applied at start and on
//!   reload;
//! - `lifecycle`: reload, leave, join and force-leave (a server adds its part through
//!   [`ServerLifecycle`]).
//!
//! Owns: this node's local state and the tasks that serve it. Must not touch: HTTP (that is
//! [`crate::http`]) or the catalog's contents other than through the syncer.

mod check_results;
mod config_files;
mod heartbeat;
mod lifecycle;
mod maintenance;
mod persistence;
mod registration;
mod state;

pub use config_files::ConfigFilesApplied;
pub use lifecycle::{join_failed, BoxFuture, ServerLifecycle, DEFAULT_SERVER_PORT};
pub use maintenance::{NODE_MAINTENANCE_ID, SERVICE_MAINTENANCE_PREFIX};
pub use registration::SCRIPT_CHECKS_DISABLED;
pub(crate) use state::{LocalCheck, LocalState};

use crate::anti_entropy::AntiEntropy;
use crate::checks::CheckUpdate;
use crate::servers::ServerPool;
use registry_api::auth::SharedKey;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Room for check updates between the runners and the agent; a runner never blocks on a full
/// channel (it keeps its newest update), so this only bounds memory.
const CHECK_UPDATES_CAPACITY: usize = 256;

/// What an agent needs to know about itself.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name.
    pub node: String,
    /// Node id (a UUID); may be empty.
    pub node_id: String,
    /// Datacenter.
    pub datacenter: String,
    /// The node's address as registered in the catalog.
    pub advertise_addr: String,
    /// Where local services and checks are persisted; `None` keeps them in memory only.
    pub data_dir: Option<PathBuf>,
    /// Whether this agent runs inside a server (reported by `/v1/agent/self`).
    pub server: bool,
    /// Time between full anti-entropy syncs (Consul: 60s at small cluster sizes).
    pub sync_interval: Duration,
    /// Time between liveness heartbeats to the servers.
    pub heartbeat_interval: Duration,
    /// The cluster's shared key (`--encrypt`): when set, [`Agent::start`] makes the server
    /// pool sign every request with it (unless the pool was given a key already).
    pub encrypt: Option<SharedKey>,
    /// Configuration files and directories (`--config-file`, `--config-dir`): their service
    /// definitions are registered at start and re-read on every reload ([`config_files`]).
    pub config_sources: registry_api::config_file::ConfigSources,
    /// TLS (`--ca-file`, ...): its certificates are read again on reload.
    pub tls: Option<std::sync::Arc<registry_api::tls::Tls>>,
    /// `--acl-enabled`: the operator says the cluster has ACLs on, so a token the agent
    /// cannot resolve (no server answers) is refused rather than taken as ACLs off
    /// ([`crate::acl`]). A server's agent ignores it: the server resolves its requests.
    pub acl_enabled: bool,
    /// `--acl-agent-token`: what the agent's own requests to the servers carry (Consul's
    /// `acl.tokens.agent`); given, it also means ACLs are on, as `acl_enabled`.
    pub acl_agent_token: Option<crate::acl::SecretToken>,
}

impl AgentConfig {
    /// A configuration with the defaults: datacenter `dc1`, address `127.0.0.1`, no data dir,
    /// a full sync every 60s and a heartbeat every 2s.
    pub fn new(node: impl Into<String>) -> Self {
        AgentConfig {
            node: node.into(),
            node_id: String::new(),
            datacenter: "dc1".into(),
            advertise_addr: "127.0.0.1".into(),
            data_dir: None,
            server: false,
            sync_interval: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(2),
            encrypt: None,
            config_sources: Default::default(),
            tls: None,
            acl_enabled: false,
            acl_agent_token: None,
        }
    }
}

/// The agent of one node.
#[derive(Debug)]
pub struct Agent {
    /// Who this agent is.
    config: AgentConfig,
    /// The servers, for anti-entropy, heartbeats and `/v1/agent/members`.
    servers: ServerPool,
    /// Local services and checks.
    state: Mutex<LocalState>,
    /// Wakes the syncer when local state changed.
    sync_wake: Notify,
    /// Given to every check runner; read by the agent's check-update task.
    updates_tx: mpsc::Sender<CheckUpdate>,
    /// Held while the state's files are written (one write at a time, so the files follow
    /// the changes in order; an async lock, held across the file writes); holds the number
    /// of the last change the files on disk include and what they hold (see
    /// `persistence.rs`).
    persist_lock: Arc<tokio::sync::Mutex<persistence::Written>>,
    /// Changes to the persisted state so far, numbered by [`Agent::persist`].
    changes: std::sync::atomic::AtomicU64,
    /// Extra sections for `Stats` in `/v1/agent/self` (a server adds `raft`).
    stats: StatsSlot,
    /// A server's RPC port, for the `port` member tag Consul gives servers.
    server_port: std::sync::OnceLock<u16>,
    /// The token every task of this agent (and of its process) stops on; a leave fires it.
    shutdown: CancellationToken,
    /// Set once a leave begins: the syncer and the heartbeats stop sending.
    leaving: std::sync::atomic::AtomicBool,
    /// Held by the syncer for each pass, so that a leave can wait for the one in flight (an
    /// async lock: it is held across the pass's requests).
    sync_gate: tokio::sync::Mutex<()>,
    /// Asks the syncer for a full sync now (reload, join).
    full_sync_now: Notify,
    /// Held while configuration files are applied, so that two reloads (SIGHUP and
    /// `PUT /v1/agent/reload`) never interleave their changes (an async lock: held across
    /// the registrations).
    config_files_lock: tokio::sync::Mutex<()>,
    /// A server's part of leave and join; unset on a client agent.
    lifecycle: LifecycleSlot,
    /// Set once this node and its `serfHealth` were read back from the catalog: until then
    /// the agent's `/v1/status/leader` names no leader (`http/status.rs`), so that a client
    /// that waits for a leader and then reads finds this node.
    in_catalog: std::sync::atomic::AtomicBool,
    /// When the agent started: the gate above opens by itself [`IN_CATALOG_GATE_MAX`] later,
    /// so that a registration that never lands cannot hide the leader for good.
    started: std::time::Instant,
    /// This agent's metrics (`/v1/agent/metrics`; a server's embedded agent includes the
    /// server's).
    pub(crate) metrics: crate::metrics::AgentMetrics,
    /// The agent's own tokens (`agent`, `default`), changed by `PUT /v1/agent/token/:type`.
    tokens: crate::acl::AgentTokens,
    /// Resolves request tokens through the servers (the standalone agent's auth step; a
    /// server's agent has the server's).
    acl: crate::acl::AclResolver,
}

/// How long after start an agent's `/v1/status/leader` may wait for its node to be in the
/// catalog before it names the leader anyway (heartbeats register it within a second or two).
const IN_CATALOG_GATE_MAX: std::time::Duration = std::time::Duration::from_secs(15);

/// Holds the [`ServerLifecycle`] (a trait object, so `Debug` by hand).
#[derive(Default)]
struct LifecycleSlot(std::sync::OnceLock<Arc<dyn ServerLifecycle>>);

impl std::fmt::Debug for LifecycleSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "LifecycleSlot(server)"
        } else {
            "LifecycleSlot(agent)"
        })
    }
}

/// Holds the [`StatsSource`] (a closure, so `Debug` by hand).
#[derive(Default)]
struct StatsSlot(std::sync::RwLock<Option<StatsSource>>);

impl std::fmt::Debug for StatsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsSlot")
    }
}

/// Gives `Stats` sections for `/v1/agent/self`: section -> (name -> value).
pub type StatsSource = Arc<dyn Fn() -> BTreeMap<String, BTreeMap<String, String>> + Send + Sync>;

impl Agent {
    /// Loads persisted state, starts check runners, the anti-entropy syncer and the heartbeat
    /// loop (all stop on `shutdown`; their JoinHandles are returned so the caller can await
    /// them). A leave (`PUT /v1/agent/leave`) fires `shutdown` itself: give the agent the
    /// token its whole process stops on.
    pub async fn start(
        config: AgentConfig,
        servers: ServerPool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Arc<Agent>, Vec<JoinHandle<()>>)> {
        if config.node.is_empty() {
            anyhow::bail!("the node name must not be empty");
        }
        if let Some(dir) = &config.data_dir {
            tokio::fs::create_dir_all(dir).await?;
        }
        // Syncs and heartbeats are signed like everything else the agent sends; the servers
        // refuse heartbeats without a valid signature when they have a key.
        let servers = match &config.encrypt {
            Some(key) if !servers.signs_requests() => servers.with_key(Some(key.clone())),
            _ => servers,
        };
        let (updates_tx, updates_rx) = mpsc::channel(CHECK_UPDATES_CAPACITY);
        let tokens =
            crate::acl::AgentTokens::new(config.acl_agent_token.as_ref().map(|t| t.0.clone()));
        let acl = crate::acl::AclResolver::new(
            servers.clone(),
            config.acl_enabled || config.acl_agent_token.is_some(),
        );
        let agent = Arc::new(Agent {
            config,
            servers,
            tokens,
            acl,
            state: Mutex::new(LocalState::default()),
            sync_wake: Notify::new(),
            updates_tx,
            persist_lock: Default::default(),
            changes: std::sync::atomic::AtomicU64::new(0),
            stats: StatsSlot::default(),
            server_port: std::sync::OnceLock::new(),
            shutdown: shutdown.clone(),
            leaving: std::sync::atomic::AtomicBool::new(false),
            sync_gate: tokio::sync::Mutex::new(()),
            full_sync_now: Notify::new(),
            config_files_lock: tokio::sync::Mutex::new(()),
            lifecycle: LifecycleSlot::default(),
            in_catalog: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            metrics: crate::metrics::AgentMetrics::new(),
        });
        agent.load().await?;
        // A broken configuration file stops the start, as it stops Consul's.
        agent
            .apply_config_files()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Counted first: two `lock()` temporaries in one statement would
        // deadlock (they live until the statement ends).
        let (services, checks) = {
            let st = agent.lock();
            (st.services.len(), st.checks.len())
        };
        tracing::info!(
            node = %agent.config.node,
            dc = %agent.config.datacenter,
            services,
            checks,
            "agent started"
        );
        let tasks = vec![
            tokio::spawn(
                agent
                    .clone()
                    .run_check_updates(updates_rx, shutdown.clone()),
            ),
            tokio::spawn(AntiEntropy::new(agent.clone()).run(shutdown.clone())),
            tokio::spawn(agent.clone().run_heartbeats(shutdown)),
        ];
        Ok((agent, tasks))
    }

    /// Sets where `/v1/agent/self` takes its `Stats` from.
    pub fn set_stats_source(&self, source: StatsSource) {
        *self.stats.0.write().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// Sets the RPC port of the server this agent runs in (the `port` member tag); the
    /// first call wins.
    pub fn set_server_port(&self, port: u16) {
        let _ = self.server_port.set(port);
    }

    /// The server's RPC port, if [`Agent::set_server_port`] gave one.
    pub fn server_port(&self) -> Option<u16> {
        self.server_port.get().copied()
    }

    /// The `Stats` of `/v1/agent/self`.
    pub fn stats(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let source = self
            .stats
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        source.map(|f| f()).unwrap_or_default()
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The servers this agent talks to.
    pub fn servers(&self) -> &ServerPool {
        &self.servers
    }

    /// The agent's own tokens.
    pub fn tokens(&self) -> &crate::acl::AgentTokens {
        &self.tokens
    }

    /// The standalone agent's token resolver.
    pub fn acl(&self) -> &crate::acl::AclResolver {
        &self.acl
    }

    /// The token the agent's own requests carry now (`agent`).
    pub(crate) fn agent_token(&self) -> Option<String> {
        self.tokens.agent()
    }

    /// Whether this node and its `serfHealth` have been seen in the catalog, or the agent has
    /// waited for that long enough (see the fields).
    pub(crate) fn in_catalog(&self) -> bool {
        self.in_catalog.load(std::sync::atomic::Ordering::Acquire)
            || self.started.elapsed() >= IN_CATALOG_GATE_MAX
    }

    /// Reads this node's checks from the servers (a default-mode read, so anything read after
    /// it sees them too) and records whether its `serfHealth` is there, in any state: a node
    /// the servers hold critical is registered all the same, and hiding the leader from its
    /// clients would not make it pass.
    pub(crate) async fn confirm_in_catalog(&self) -> bool {
        let path = format!(
            "/v1/health/node/{}",
            crate::anti_entropy::encode_segment(&self.config.node)
        );
        let found = self
            .servers
            .get_json_as::<Vec<registry_api::HealthCheck>>(&path, self.agent_token().as_deref())
            .await
            .is_ok_and(|checks| {
                checks
                    .iter()
                    .any(|c| c.check_id == registry_api::SERF_HEALTH_ID)
            });
        if found {
            self.in_catalog
                .store(true, std::sync::atomic::Ordering::Release);
        }
        found
    }

    /// The state, even if a panic elsewhere poisoned the lock: every update leaves the maps
    /// consistent, so the data stays usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until local state changed (for the syncer).
    pub(crate) async fn changed(&self) {
        self.sync_wake.notified().await
    }

    /// Held by the syncer for each pass (see the field).
    pub(crate) async fn sync_pass(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.sync_gate.lock().await
    }

    /// Tells the syncer that local state changed.
    fn wake_syncer(&self) {
        self.sync_wake.notify_one();
    }
}
