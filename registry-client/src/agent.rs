//! The agent: this node's services and checks, the source of truth for its node.
//!
//! As in Consul (<https://developer.hashicorp.com/consul/docs/concepts/architecture>), the
//! application registers with its local agent only; the agent runs the checks and the
//! anti-entropy syncer ([`crate::anti_entropy`]) makes the catalog match this state. The state
//! lives behind a std `Mutex` that is never held across an `.await`: every operation on it is a
//! few map updates, so an async lock would only add cost.
//!
//! Definitions are persisted under `data_dir` (`services.json`, `checks.json`, written to a
//! temporary file, fsynced and renamed so a crash never leaves half a file, and read back
//! leniently in case one does anyway), so a restarted agent brings
//! its services and checks back without the application registering again, as Consul's agent
//! does with its `services/` and `checks/` directories.

use crate::anti_entropy::AntiEntropy;
use crate::checks::{parse_spec, CheckFields, CheckKind, CheckRunner, CheckSpec, CheckUpdate};
use crate::servers::ServerPool;
use registry_api::auth::SharedKey;
use registry_api::{
    duration, AgentService, AgentServiceChecksInfo, AgentServiceInfo, CheckRegistration,
    Error as ApiError, HealthCheck, HeartbeatRequest, ServiceRegistration, CRITICAL, PASSING,
    WARNING,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Id of the node maintenance check (Consul's `structs.NodeMaint`).
pub const NODE_MAINTENANCE_ID: &str = "_node_maintenance";
/// Prefix of a service maintenance check's id (Consul's `structs.ServiceMaintPrefix`).
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";
/// Consul's notes when node maintenance is enabled without a reason.
const DEFAULT_NODE_MAINT_REASON: &str =
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";
/// Consul's notes when service maintenance is enabled without a reason.
const DEFAULT_SERVICE_MAINT_REASON: &str =
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";
/// Consul's refusal of script checks when they are not enabled (`agent.go`, `addCheck`).
pub const SCRIPT_CHECKS_DISABLED: &str = "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true";
/// How often services whose checks stayed critical past `DeregisterCriticalServiceAfter` are
/// looked for. Consul reaps every 30s with a 1 minute minimum; we look every second so the
/// configured time is kept closely.
const REAP_INTERVAL: Duration = Duration::from_secs(1);
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
    /// Held from a change to the state until its persistence is written, so the files on disk
    /// follow the changes in order (an async lock: it is held across the file writes).
    persist_lock: tokio::sync::Mutex<()>,
    /// Extra sections for `Stats` in `/v1/agent/self` (a server adds `raft`).
    stats: StatsSlot,
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

/// The local state. Every entry carries an `in_sync` flag (does the catalog match it?) and a
/// `generation` that changes with it, so the syncer marks an entry in sync only if it did not
/// change while the sync was in flight (Consul's `local.State` does the same with `InSync`).
#[derive(Debug, Default)]
pub(crate) struct LocalState {
    /// Services by instance id.
    pub(crate) services: BTreeMap<String, LocalService>,
    /// Checks by check id.
    pub(crate) checks: BTreeMap<String, LocalCheck>,
    /// Services removed locally that the catalog may still hold.
    pub(crate) deleted_services: BTreeSet<String>,
    /// Checks removed locally that the catalog may still hold.
    pub(crate) deleted_checks: BTreeSet<String>,
    /// Whether the catalog's node entry matches this agent.
    pub(crate) node_in_sync: bool,
    /// Source of generations.
    next_generation: u64,
}

impl LocalState {
    /// A fresh generation number.
    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// A local service.
#[derive(Debug)]
pub(crate) struct LocalService {
    /// The instance as registered (indexes zero).
    pub(crate) service: AgentService,
    /// Whether the catalog holds exactly this.
    pub(crate) in_sync: bool,
    /// Changes whenever the service changes.
    pub(crate) generation: u64,
}

/// A local check.
#[derive(Debug)]
pub(crate) struct LocalCheck {
    /// Current state: definition fields plus status and output.
    pub(crate) check: HealthCheck,
    /// The definition as registered (normalised: `CheckID`, `Name`, `ServiceID` filled in).
    definition: CheckRegistration,
    /// The running check; `None` for maintenance checks, which nothing runs.
    runner: Option<CheckRunner>,
    /// `DeregisterCriticalServiceAfter`.
    deregister_after: Option<Duration>,
    /// Since when the check is critical.
    critical_since: Option<Instant>,
    /// Whether the catalog holds exactly this.
    pub(crate) in_sync: bool,
    /// Changes whenever the check changes.
    pub(crate) generation: u64,
}

/// A check definition validated and ready to install.
#[derive(Debug)]
struct PreparedCheck {
    /// Initial state.
    check: HealthCheck,
    /// Normalised definition, as persisted.
    definition: CheckRegistration,
    /// What to run; `None` for maintenance checks.
    spec: Option<CheckSpec>,
    /// `DeregisterCriticalServiceAfter`.
    deregister_after: Option<Duration>,
}

/// On-disk form of `services.json`.
type PersistedServices = Vec<AgentService>;
/// On-disk form of `checks.json`.
type PersistedChecks = Vec<CheckRegistration>;

impl Agent {
    /// Loads persisted state, starts check runners, the anti-entropy syncer and the heartbeat
    /// loop (all stop on `shutdown`; their JoinHandles are returned so the caller can await
    /// them).
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
        let agent = Arc::new(Agent {
            config,
            servers,
            state: Mutex::new(LocalState::default()),
            sync_wake: Notify::new(),
            updates_tx,
            persist_lock: tokio::sync::Mutex::new(()),
            stats: StatsSlot::default(),
        });
        agent.load().await?;
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

    /// The state, even if a panic elsewhere poisoned the lock: every update leaves the maps
    /// consistent, so the data stays usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until local state changed (for the syncer).
    pub(crate) async fn changed(&self) {
        self.sync_wake.notified().await
    }

    /// Tells the syncer that local state changed.
    fn wake_syncer(&self) {
        self.sync_wake.notify_one();
    }

    // ---- services ------------------------------------------------------------------------

    /// `PUT /v1/agent/service/register`. The whole registration, every check included, is
    /// validated before anything changes.
    pub async fn register_service(
        &self,
        reg: ServiceRegistration,
        replace_existing_checks: bool,
    ) -> Result<(), ApiError> {
        if reg.name.is_empty() {
            return Err(ApiError::BadRequest("Missing service name".into()));
        }
        let id = if reg.id.is_empty() {
            reg.name.clone()
        } else {
            reg.id.clone()
        };
        key_part("Service name", &reg.name).map_err(ApiError::BadRequest)?;
        key_part("Service ID", &id).map_err(ApiError::BadRequest)?;
        let service = AgentService {
            id: id.clone(),
            service: reg.name.clone(),
            tags: reg.tags.clone(),
            address: reg.address.clone(),
            meta: reg.meta.clone(),
            port: reg.port,
            enable_tag_override: reg.enable_tag_override,
            create_index: 0,
            modify_index: 0,
        };
        let defs: Vec<&CheckRegistration> = reg.check.iter().chain(reg.checks.iter()).collect();
        let mut prepared = Vec::with_capacity(defs.len());
        for (i, def) in defs.iter().enumerate() {
            // Consul's default ids: "service:<id>", numbered from 1 when there are several.
            let default_id = if defs.len() > 1 {
                format!("service:{id}:{}", i + 1)
            } else {
                format!("service:{id}")
            };
            let mut def = (*def).clone();
            def.service_id = id.clone();
            if def.name.is_empty() {
                def.name = format!("Service '{}' check", reg.name);
            }
            if def.id.is_empty() && def.check_id.is_empty() {
                def.check_id = default_id;
            }
            prepared.push(self.prepare_check(def).map_err(ApiError::BadRequest)?);
        }
        let ids: BTreeSet<&str> = prepared.iter().map(|p| p.check.check_id.as_str()).collect();
        if ids.len() != prepared.len() {
            return Err(ApiError::BadRequest(
                "Duplicate check ID in registration".into(),
            ));
        }

        let _persist = self.persist_lock.lock().await;
        {
            let mut st = self.lock();
            if let Some(other) = prepared
                .iter()
                .filter_map(|p| st.checks.get(&p.check.check_id))
                .find(|c| !c.check.service_id.is_empty() && c.check.service_id != id)
            {
                return Err(ApiError::BadRequest(format!(
                    "Check ID {:?} belongs to service {:?}",
                    other.check.check_id, other.check.service_id
                )));
            }
            let generation = st.bump();
            let changed = st.services.get(&id).map(|s| &s.service) != Some(&service);
            if changed {
                st.services.insert(
                    id.clone(),
                    LocalService {
                        service,
                        in_sync: false,
                        generation,
                    },
                );
            }
            st.deleted_services.remove(&id);
            if replace_existing_checks {
                let stale: Vec<String> = st
                    .checks
                    .values()
                    .filter(|c| c.check.service_id == id)
                    .filter(|c| !c.check.check_id.starts_with(SERVICE_MAINTENANCE_PREFIX))
                    .filter(|c| !ids.contains(c.check.check_id.as_str()))
                    .map(|c| c.check.check_id.clone())
                    .collect();
                for check_id in stale {
                    remove_check(&mut st, &check_id);
                }
            }
            for p in prepared {
                self.install_check(&mut st, p);
            }
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, service = %id, "service registered");
        self.wake_syncer();
        Ok(())
    }

    /// `PUT /v1/agent/service/deregister/:id`: removes the service and its checks.
    pub async fn deregister_service(&self, id: &str) -> Result<(), ApiError> {
        let _persist = self.persist_lock.lock().await;
        {
            let mut st = self.lock();
            if !remove_service(&mut st, id) {
                return Err(ApiError::NotFound(format!(
                    "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                )));
            }
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, service = %id, "service deregistered");
        self.wake_syncer();
        Ok(())
    }

    /// `GET /v1/agent/services`.
    pub fn services(&self) -> BTreeMap<String, AgentServiceInfo> {
        self.lock()
            .services
            .iter()
            .map(|(id, s)| {
                let info = AgentServiceInfo::new(&s.service, &self.config.datacenter);
                (id.clone(), info)
            })
            .collect()
    }

    /// `GET /v1/agent/service/:id`.
    pub fn service(&self, id: &str) -> Option<AgentServiceInfo> {
        self.lock()
            .services
            .get(id)
            .map(|s| AgentServiceInfo::new(&s.service, &self.config.datacenter))
    }

    // ---- checks --------------------------------------------------------------------------

    /// `GET /v1/agent/checks`, with `Node`, `ServiceName` and `ServiceTags` filled in.
    pub fn checks(&self) -> BTreeMap<String, HealthCheck> {
        let st = self.lock();
        st.checks
            .iter()
            .map(|(id, c)| (id.clone(), filled_check(&st, &c.check)))
            .collect()
    }

    /// `PUT /v1/agent/check/register`.
    pub async fn register_check(&self, mut def: CheckRegistration) -> Result<(), ApiError> {
        if def.name.is_empty() {
            return Err(ApiError::BadRequest("Missing check name".into()));
        }
        if def.id.is_empty() && def.check_id.is_empty() {
            def.check_id = def.name.clone();
        }
        let p = self.prepare_check(def).map_err(ApiError::BadRequest)?;
        let check_id = p.check.check_id.clone();
        let _persist = self.persist_lock.lock().await;
        {
            let mut st = self.lock();
            let sid = &p.check.service_id;
            if !sid.is_empty() && !st.services.contains_key(sid) {
                return Err(ApiError::BadRequest(format!(
                    "ServiceID {sid:?} does not exist"
                )));
            }
            self.install_check(&mut st, p);
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, check = %check_id, "check registered");
        self.wake_syncer();
        Ok(())
    }

    /// `PUT /v1/agent/check/deregister/:id`.
    pub async fn deregister_check(&self, id: &str) -> Result<(), ApiError> {
        let _persist = self.persist_lock.lock().await;
        {
            let mut st = self.lock();
            if !remove_check(&mut st, id) {
                return Err(unknown_check(id));
            }
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, check = %id, "check deregistered");
        self.wake_syncer();
        Ok(())
    }

    /// `PUT /v1/agent/check/pass|warn|fail|update/:id`: sets a TTL check's status and output
    /// and restarts its TTL. The local state changes at once (a read right after sees it);
    /// the runner confirms with an update of its own.
    pub fn update_ttl(&self, id: &str, status: &str, output: &str) -> Result<(), ApiError> {
        let mut st = self.lock();
        let check = st.checks.get_mut(id).ok_or_else(|| unknown_check(id))?;
        let runner = check.runner.as_ref().ok_or_else(|| {
            ApiError::BadRequest(format!("CheckID {id:?} does not have associated TTL"))
        })?;
        runner
            .update_ttl(status, output)
            .map_err(ApiError::BadRequest)?;
        if output.len() <= crate::checks::OUTPUT_MAX_SIZE {
            let generation = st.bump();
            if let Some(check) = st.checks.get_mut(id) {
                if set_status(check, status, output) {
                    check.generation = generation;
                    drop(st);
                    self.wake_syncer();
                }
            }
        }
        Ok(())
    }

    /// `PUT /v1/agent/maintenance`: adds or removes the node maintenance check.
    pub async fn set_node_maintenance(&self, enable: bool, reason: &str) -> Result<(), ApiError> {
        let notes = if reason.is_empty() {
            DEFAULT_NODE_MAINT_REASON
        } else {
            reason
        };
        let def = CheckRegistration {
            check_id: NODE_MAINTENANCE_ID.into(),
            name: "Node Maintenance Mode".into(),
            notes: notes.into(),
            status: CRITICAL.into(),
            ..Default::default()
        };
        self.set_maintenance(enable, def).await
    }

    /// `PUT /v1/agent/service/maintenance/:id`: adds or removes a service maintenance check.
    pub async fn set_service_maintenance(
        &self,
        service_id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), ApiError> {
        if !self.lock().services.contains_key(service_id) {
            return Err(ApiError::NotFound(format!(
                "Unknown service ID {service_id:?}"
            )));
        }
        let notes = if reason.is_empty() {
            DEFAULT_SERVICE_MAINT_REASON
        } else {
            reason
        };
        let def = CheckRegistration {
            check_id: format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}"),
            name: "Service Maintenance Mode".into(),
            notes: notes.into(),
            status: CRITICAL.into(),
            service_id: service_id.into(),
            ..Default::default()
        };
        self.set_maintenance(enable, def).await
    }

    /// Installs (`enable`) or removes a maintenance check.
    async fn set_maintenance(&self, enable: bool, def: CheckRegistration) -> Result<(), ApiError> {
        let id = def.check_id.clone();
        let p = self.prepare_check(def).map_err(ApiError::BadRequest)?;
        let _persist = self.persist_lock.lock().await;
        let changed = {
            let mut st = self.lock();
            if enable {
                if !p.check.service_id.is_empty() && !st.services.contains_key(&p.check.service_id)
                {
                    return Err(ApiError::NotFound(format!(
                        "Unknown service ID {:?}",
                        p.check.service_id
                    )));
                }
                let same = st.checks.get(&id).map(|c| &c.definition) == Some(&p.definition);
                if !same {
                    self.install_check(&mut st, p);
                }
                !same
            } else {
                remove_check(&mut st, &id)
            }
        };
        if changed {
            self.persist().await?;
            tracing::info!(node = %self.config.node, check = %id, enable, "maintenance mode changed");
            self.wake_syncer();
        }
        Ok(())
    }

    /// `GET /v1/agent/health/service/name/:name`: the local instances of a service with their
    /// checks (the node's checks included, as Consul does) and the worst status among them.
    pub fn health_by_service_name(&self, name: &str) -> Vec<AgentServiceChecksInfo> {
        let st = self.lock();
        st.services
            .values()
            .filter(|s| s.service.service == name)
            .map(|s| {
                let checks: Vec<HealthCheck> = st
                    .checks
                    .values()
                    .filter(|c| c.check.service_id.is_empty() || c.check.service_id == s.service.id)
                    .map(|c| filled_check(&st, &c.check))
                    .collect();
                AgentServiceChecksInfo {
                    aggregated_status: aggregated_status(&checks),
                    service: AgentServiceInfo::new(&s.service, &self.config.datacenter),
                    checks,
                }
            })
            .collect()
    }

    // ---- internals -----------------------------------------------------------------------

    /// Validates a check definition and normalises it (`CheckID` from `ID`, default status).
    /// Maintenance checks are recognised by their reserved ids and get no runner.
    fn prepare_check(&self, mut def: CheckRegistration) -> Result<PreparedCheck, String> {
        if !def.id.is_empty() {
            def.check_id = std::mem::take(&mut def.id);
        }
        if def.check_id.is_empty() {
            return Err("Missing check ID".into());
        }
        key_part("Check ID", &def.check_id)?;
        if def.check_id == registry_api::SERF_HEALTH_ID {
            // The servers own every node's serfHealth check (liveness).
            return Err(format!(
                "CheckID {:?} is reserved for the node's liveness check",
                def.check_id
            ));
        }
        if def.name.is_empty() {
            def.name = def.check_id.clone();
        }
        if def.status.is_empty() {
            def.status = CRITICAL.into();
        } else if ![PASSING, WARNING, CRITICAL].contains(&def.status.as_str()) {
            return Err(format!("Invalid check status: {:?}", def.status));
        }
        let maintenance = is_maintenance(&def.check_id);
        let spec = if maintenance {
            None
        } else {
            if !def.args.is_empty() || !def.script_args.is_empty() {
                return Err(SCRIPT_CHECKS_DISABLED.into());
            }
            Some(parse_spec(&CheckFields {
                http: &def.http,
                method: &def.method,
                headers: def.header.clone(),
                body: &def.body,
                tls_skip_verify: def.tls_skip_verify,
                tcp: &def.tcp,
                grpc: &def.grpc,
                grpc_use_tls: def.grpc_use_tls,
                ttl: &def.ttl,
                interval: &def.interval,
                timeout: &def.timeout,
                success_before_passing: def.success_before_passing,
                failures_before_critical: def.failures_before_critical,
                failures_before_warning: def.failures_before_warning,
            })?)
        };
        let deregister_after = match def.deregister_critical_service_after.trim() {
            "" => None,
            text => Some(
                duration::parse(text)
                    .map_err(|e| format!("Invalid DeregisterCriticalServiceAfter: {e}"))?,
            ),
        };
        let check_type = match spec.as_ref().map(|s| &s.kind) {
            None => "maintenance",
            Some(CheckKind::Http { .. }) => "http",
            Some(CheckKind::Tcp { .. }) => "tcp",
            Some(CheckKind::Grpc { .. }) => "grpc",
            Some(CheckKind::Ttl { .. }) => "ttl",
        };
        let check = HealthCheck {
            node: self.config.node.clone(),
            check_id: def.check_id.clone(),
            name: def.name.clone(),
            status: def.status.clone(),
            notes: def.notes.clone(),
            output: String::new(),
            service_id: def.service_id.clone(),
            check_type: check_type.into(),
            ..Default::default()
        };
        Ok(PreparedCheck {
            check,
            definition: def,
            spec,
            deregister_after,
        })
    }

    /// Puts a prepared check in place, starting its runner. A re-registration with the same
    /// definition keeps the running check and its status, so re-registering a service does
    /// not reset its health (Consul keeps the status of a re-registered check too).
    fn install_check(&self, st: &mut LocalState, p: PreparedCheck) {
        let id = p.check.check_id.clone();
        st.deleted_checks.remove(&id);
        if st.checks.get(&id).map(|c| &c.definition) == Some(&p.definition) {
            return;
        }
        if let Some(old) = st.checks.remove(&id) {
            if let Some(runner) = &old.runner {
                runner.stop();
            }
        }
        let runner = p.spec.map(|spec| {
            CheckRunner::start(
                id.clone(),
                spec,
                p.check.status.clone(),
                self.updates_tx.clone(),
            )
        });
        let critical_since = (p.check.status == CRITICAL).then(Instant::now);
        let generation = st.bump();
        st.checks.insert(
            id,
            LocalCheck {
                check: p.check,
                definition: p.definition,
                runner,
                deregister_after: p.deregister_after,
                critical_since,
                in_sync: false,
                generation,
            },
        );
    }

    /// Records a runner's update; a change of status or output wakes the syncer.
    fn apply_update(&self, update: CheckUpdate) {
        let mut st = self.lock();
        let generation = st.bump();
        let Some(check) = st.checks.get_mut(&update.check_id) else {
            return;
        };
        if set_status(check, &update.status, &update.output) {
            check.generation = generation;
            drop(st);
            self.wake_syncer();
        }
    }

    /// Deregisters services with a check critical for longer than its
    /// `DeregisterCriticalServiceAfter` (Consul's `reapServices`).
    async fn reap_critical_services(&self) {
        let now = Instant::now();
        let doomed: BTreeSet<String> = self
            .lock()
            .checks
            .values()
            .filter(|c| !c.check.service_id.is_empty())
            .filter_map(|c| match (c.deregister_after, c.critical_since) {
                (Some(after), Some(since)) if now.duration_since(since) > after => {
                    Some(c.check.service_id.clone())
                }
                _ => None,
            })
            .collect();
        for service_id in doomed {
            tracing::info!(node = %self.config.node, service = %service_id, "deregistering service whose check stayed critical");
            if let Err(e) = self.deregister_service(&service_id).await {
                tracing::debug!(service = %service_id, error = %e, "reaping failed");
            }
        }
    }

    /// Applies check updates and reaps critical services until `shutdown`; then stops every
    /// check runner and waits for them.
    async fn run_check_updates(
        self: Arc<Self>,
        mut updates: mpsc::Receiver<CheckUpdate>,
        shutdown: CancellationToken,
    ) {
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(update) = updates.recv() => self.apply_update(update),
                _ = reap.tick() => self.reap_critical_services().await,
            }
        }
        let runners: Vec<CheckRunner> = self
            .lock()
            .checks
            .values_mut()
            .filter_map(|c| c.runner.take())
            .collect();
        for runner in runners {
            runner.join().await;
        }
    }

    /// Tells the servers this node is alive every `heartbeat_interval` until `shutdown`.
    async fn run_heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let body = HeartbeatRequest {
            node: self.config.node.clone(),
            address: self.config.advertise_addr.clone(),
            datacenter: self.config.datacenter.clone(),
        };
        let mut tick = tokio::time::interval(
            self.config
                .heartbeat_interval
                .max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the last round failed: the first failure is a warning (the servers mark
        // this node critical if it lasts), the repeats only debug lines.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // One round tries every server in turn until one takes the heartbeat: an error
            // answer (a server that cannot reach a leader) counts as a failure, like no
            // answer, and the pool then prefers the server that took it.
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.servers.put_json_within(
                    "/v1/internal/heartbeat",
                    &body,
                    Some(self.config.heartbeat_interval.max(Duration::from_secs(1))),
                ) => r,
            };
            match sent {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(node = %self.config.node, "heartbeats reach the servers again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(node = %self.config.node, error = %e, "no server took the heartbeat; retrying every interval");
                }
                Err(e) => {
                    tracing::debug!(node = %self.config.node, error = %e, "heartbeat failed; retrying next interval");
                }
            }
        }
    }

    // ---- persistence ---------------------------------------------------------------------

    /// Writes `services.json` and `checks.json` from the current state. The caller holds
    /// `persist_lock`.
    async fn persist(&self) -> Result<(), ApiError> {
        let Some(dir) = &self.config.data_dir else {
            return Ok(());
        };
        let (services, checks): (PersistedServices, PersistedChecks) = {
            let st = self.lock();
            (
                st.services.values().map(|s| s.service.clone()).collect(),
                st.checks.values().map(|c| c.definition.clone()).collect(),
            )
        };
        let result = async {
            write_atomically(
                &dir.join("services.json"),
                &serde_json::to_vec_pretty(&services)?,
            )
            .await?;
            write_atomically(
                &dir.join("checks.json"),
                &serde_json::to_vec_pretty(&checks)?,
            )
            .await
        }
        .await;
        result.map_err(|e: std::io::Error| {
            tracing::error!(dir = %dir.display(), error = %e, "persisting agent state failed");
            ApiError::Internal(format!("failed to persist agent state: {e}"))
        })
    }

    /// Loads `services.json` and `checks.json` and starts the checks' runners. A definition
    /// that no longer validates, or a file a crash left torn, is skipped (as much of it as
    /// cannot be read) with a warning rather than failing the start.
    async fn load(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.config.data_dir else {
            return Ok(());
        };
        let services_path = dir.join("services.json");
        let checks_path = dir.join("checks.json");
        remove_leftover_temp(&services_path).await;
        remove_leftover_temp(&checks_path).await;
        let services: PersistedServices = read_entries(&services_path).await;
        let checks: PersistedChecks = read_entries(&checks_path).await;
        let _persist = self.persist_lock.lock().await;
        let mut st = self.lock();
        for service in services {
            if service.id.is_empty() || service.service.is_empty() {
                tracing::warn!(service = ?service, "skipping persisted service without id or name");
                continue;
            }
            let generation = st.bump();
            st.services.insert(
                service.id.clone(),
                LocalService {
                    service,
                    in_sync: false,
                    generation,
                },
            );
        }
        for def in checks {
            let id = def.check_id.clone();
            if !def.service_id.is_empty() && !st.services.contains_key(&def.service_id) {
                tracing::warn!(check = %id, service = %def.service_id, "skipping persisted check of an unknown service");
                continue;
            }
            match self.prepare_check(def) {
                Ok(p) => self.install_check(&mut st, p),
                Err(e) => {
                    tracing::warn!(check = %id, error = %e, "skipping invalid persisted check")
                }
            }
        }
        Ok(())
    }
}

/// Whether a check id is one of the reserved maintenance ids.
fn is_maintenance(check_id: &str) -> bool {
    check_id == NODE_MAINTENANCE_ID || check_id.starts_with(SERVICE_MAINTENANCE_PREFIX)
}

/// Consul's 404 text for an unknown check.
fn unknown_check(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
    ))
}

/// Sets a check's status and output; returns whether anything changed (then the check is
/// out of sync with the catalog).
fn set_status(check: &mut LocalCheck, status: &str, output: &str) -> bool {
    if check.check.status == status && check.check.output == output {
        return false;
    }
    if status == CRITICAL {
        check.critical_since.get_or_insert_with(Instant::now);
    } else {
        check.critical_since = None;
    }
    check.check.status = status.to_owned();
    check.check.output = output.to_owned();
    check.in_sync = false;
    true
}

/// Removes a check; returns whether it existed.
fn remove_check(st: &mut LocalState, id: &str) -> bool {
    let Some(check) = st.checks.remove(id) else {
        return false;
    };
    if let Some(runner) = &check.runner {
        runner.stop();
    }
    st.deleted_checks.insert(id.to_owned());
    true
}

/// Removes a service and its checks; returns whether it existed. The catalog drops a
/// service's checks with it, so only the service needs deregistering there.
fn remove_service(st: &mut LocalState, id: &str) -> bool {
    if st.services.remove(id).is_none() {
        return false;
    }
    let owned: Vec<String> = st
        .checks
        .values()
        .filter(|c| c.check.service_id == id)
        .map(|c| c.check.check_id.clone())
        .collect();
    for check_id in owned {
        if let Some(check) = st.checks.remove(&check_id) {
            if let Some(runner) = &check.runner {
                runner.stop();
            }
        }
        st.deleted_checks.remove(&check_id);
    }
    st.deleted_services.insert(id.to_owned());
    true
}

/// A check with `ServiceName` and `ServiceTags` of its service, as the agent reports it.
pub(crate) fn filled_check(st: &LocalState, check: &HealthCheck) -> HealthCheck {
    let mut out = check.clone();
    if let Some(s) = st.services.get(&check.service_id) {
        out.service_name = s.service.service.clone();
        out.service_tags = s.service.tags.clone();
    }
    out
}

/// Consul's aggregated status: `maintenance` when a maintenance check is present, else the
/// worst status (`passing` with no checks).
fn aggregated_status(checks: &[HealthCheck]) -> String {
    if checks.iter().any(|c| is_maintenance(&c.check_id)) {
        return "maintenance".into();
    }
    let worst = checks
        .iter()
        .map(|c| match c.status.as_str() {
            PASSING => 0,
            WARNING => 1,
            _ => 2,
        })
        .max()
        .unwrap_or(0);
    [PASSING, WARNING, CRITICAL][worst].into()
}

/// The temporary file [`write_atomically`] writes before renaming it over `path`: in the
/// same directory, because a rename is atomic only within one file system.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk, renames it over
/// `path` and flushes the directory, so that after a crash or a power loss `path` holds the
/// old or the new content, never a part of either. Without the file's fsync a power loss
/// can leave the rename on disk but not the data (a zero-length file on ext4 and XFS);
/// without the directory's, the rename itself may be lost.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_owned();
    let bytes = bytes.to_vec();
    // std::fs on the blocking pool: tokio::fs runs each call there anyway, and fsyncing a
    // directory needs a plain File.
    tokio::task::spawn_blocking(move || write_atomically_blocking(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

/// The blocking body of [`write_atomically`].
fn write_atomically_blocking(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = temp_path(path);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Removes a temporary file a crash left behind before its rename; the file it was meant
/// to replace still holds the previous state, which is what the agent loads.
async fn remove_leftover_temp(path: &Path) {
    let tmp = temp_path(path);
    match tokio::fs::remove_file(&tmp).await {
        Ok(()) => {
            tracing::info!(file = %tmp.display(), "removed an unfinished write left by a crash")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %tmp.display(), error = %e, "could not remove an unfinished write")
        }
    }
}

/// What [`read_entries`] found wrong with a file it still read what it could of.
#[derive(Debug, PartialEq, Eq)]
enum Damage {
    /// The file could not be read at all.
    Unreadable(String),
    /// The JSON is torn or not a list: the entries before the damage were kept.
    Torn {
        /// Entries read before the damage.
        kept: usize,
        /// The parser's complaint.
        error: String,
    },
    /// Some entries parsed as JSON but not as an entry, and were skipped.
    BadEntries(usize),
}

/// Parses a JSON list of entries, keeping whatever can be read: a torn file (zero length,
/// cut short by a crash, garbage) gives the entries that parse before the damage, and an
/// entry of the wrong shape is skipped. The agent must start after a power loss with what
/// it can read, rather than refuse to.
fn parse_entries<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, Option<Damage>) {
    /// Collects list items into a vector outside the deserializer, so that the items read
    /// before an error survive it.
    struct Salvage<'a>(&'a mut Vec<serde_json::Value>);
    impl<'de> serde::de::Visitor<'de> for Salvage<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<serde_json::Value>()? {
                self.0.push(item);
            }
            Ok(())
        }
    }
    let mut items = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed =
        serde::Deserializer::deserialize_seq(&mut de, Salvage(&mut items)).and_then(|()| de.end());
    let total = items.len();
    let entries: Vec<T> = items
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    let damage = match parsed {
        Err(e) => Some(Damage::Torn {
            kept: entries.len(),
            error: e.to_string(),
        }),
        Ok(()) if entries.len() < total => Some(Damage::BadEntries(total - entries.len())),
        Ok(()) => None,
    };
    (entries, damage)
}

/// Reads `path` with [`parse_entries`] (a missing file is empty), logging any damage with
/// the file's name. A torn
/// file that held anything is kept beside it as `<name>.corrupt` for a look by hand, since
/// the next change of state overwrites it.
async fn read_entries<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            let damage = Damage::Unreadable(e.to_string());
            tracing::warn!(file = %path.display(), ?damage, "cannot read persisted agent state; starting without it");
            return Vec::new();
        }
    };
    let (entries, damage) = parse_entries(&bytes);
    if let Some(damage) = damage {
        let mut kept_copy = None;
        if !bytes.is_empty() && matches!(damage, Damage::Torn { .. }) {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".corrupt");
            let copy = path.with_file_name(name);
            if tokio::fs::write(&copy, &bytes).await.is_ok() {
                kept_copy = Some(copy.display().to_string());
            }
        }
        tracing::warn!(
            file = %path.display(),
            ?damage,
            loaded = entries.len(),
            copy = ?kept_copy,
            "persisted agent state is damaged (a crash or power loss?); starting with what could be read"
        );
    }
    entries
}

/// The catalog keys rows by these names (separated by NUL, at most 512
/// bytes): anything it would refuse is refused here at registration, rather
/// than blocking anti-entropy later.
fn key_part(what: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{what} {value:?} contains an invalid character"));
    }
    if value.len() > 512 {
        return Err(format!("{what} is longer than 512 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, status: &str) -> HealthCheck {
        HealthCheck {
            check_id: id.into(),
            status: status.into(),
            ..Default::default()
        }
    }

    fn svc(id: &str) -> AgentService {
        AgentService {
            id: id.into(),
            service: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn torn_state_files_give_what_can_be_read() {
        let whole = serde_json::to_vec_pretty(&vec![svc("a"), svc("b")]).unwrap();
        let (all, damage) = parse_entries::<AgentService>(&whole);
        assert_eq!((all.len(), damage), (2, None));
        // Zero length (a power loss after an un-fsynced rename), garbage, not a list.
        for bad in [&b""[..], b"\0\0\0\0", b"{\"ID\":\"a\"}", b"[{\"ID\":"] {
            let (got, damage) = parse_entries::<AgentService>(bad);
            assert!(got.is_empty(), "{bad:?}");
            assert!(
                matches!(damage, Some(Damage::Torn { kept: 0, .. })),
                "{bad:?}: {damage:?}"
            );
        }
        // Cut in the middle of the second entry: the first one is kept.
        let cut = &whole[..whole.len() - 20];
        let (got, damage) = parse_entries::<AgentService>(cut);
        assert_eq!(got, vec![svc("a")]);
        assert!(
            matches!(damage, Some(Damage::Torn { kept: 1, .. })),
            "{damage:?}"
        );
        // An entry of the wrong shape is skipped, the others kept.
        let (got, damage) = parse_entries::<AgentService>(br#"[{"ID":"a","Service":"a"},7]"#);
        assert_eq!((got, damage), (vec![svc("a")], Some(Damage::BadEntries(1))));
    }

    #[tokio::test]
    async fn write_atomically_replaces_the_file_through_a_temp_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.json");
        let tmp = temp_path(&path);
        // Same directory: a rename across file systems would not be atomic.
        assert_eq!(tmp.parent(), path.parent());
        assert_eq!(tmp.file_name().unwrap(), "services.json.tmp");

        write_atomically(&path, b"old").await.unwrap();
        write_atomically(&path, b"new").await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!tmp.exists(), "nothing is left beside it");

        // A crash before the rename leaves the old file whole and a temp file, which the
        // next start removes without reading it.
        std::fs::write(&tmp, b"[{\"ID\":\"half").unwrap();
        remove_leftover_temp(&path).await;
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn aggregated_status_is_the_worst_or_maintenance() {
        assert_eq!(aggregated_status(&[]), PASSING);
        assert_eq!(
            aggregated_status(&[check("a", PASSING), check("b", WARNING)]),
            WARNING
        );
        assert_eq!(
            aggregated_status(&[check("a", CRITICAL), check("b", WARNING)]),
            CRITICAL
        );
        assert_eq!(
            aggregated_status(&[check("a", PASSING), check(NODE_MAINTENANCE_ID, CRITICAL)]),
            "maintenance"
        );
    }
}
