//! `registry-server`: one server of a datacenter. Servers form a Raft group
//! that replicates the catalog, stored in RocksDB, and serve Consul's HTTP API.
//!
//! `main.rs` parses flags into a [`ServerConfig`] and calls [`run`]; tests call
//! [`start`] with `127.0.0.1:0` ports and temp dirs, often on a
//! [`rpc::MemNetwork`] whose links they can cut.
//!
//! Where things live (each module's own comment says what it must not touch):
//!
//! - [`state`]: the pure state machine: commands, the write planner, row keys,
//!   the catalog, KV and session tables and transactions (a file each);
//! - [`storage`]: RocksDB (`logs`, `meta`, `store`) and the snapshot format;
//! - [`raft`]: the Raft thread and [`raft::RaftHandle`], its only door;
//! - [`rpc`]: server-to-server messages and their transports (TCP, in-memory);
//! - [`reads`]: consistency modes, blocking waits, the shared-answer cache,
//!   for every interface that reads (HTTP now, DNS next);
//! - [`metrics`]: what a server measures (Raft, catalog sizes, requests,
//!   snapshots), rendered by its embedded agent's `/v1/agent/metrics`;
//! - [`leader`]: loops that run only on the leader (the liveness reaper, the
//!   servers' own node and `consul` service, session TTLs, KV tombstones);
//! - [`dns`]: the DNS interface's backend (`registry-dns` does the rest),
//!   reading through [`reads`] as HTTP does;
//! - [`http`]: the routers and one file per endpoint family, with `?dc=`
//!   forwarding to other datacenters (`http/federation.rs`);
//! - [`lifecycle`]: a server's part of the agent's leave, join and
//!   force-leave;
//! - [`leader_client`]: requests a server passes to its leader's HTTP port,
//!   and handing leadership over.
//!
//! [`run`] also reloads the embedded agent on `SIGHUP` and returns when the
//! agent has left (`PUT /v1/agent/leave` stops the process).

// Protobuf messages from raft-proto are built field by field, as raft-rs
// itself does; struct literals would add noise for no safety.
#![allow(clippy::field_reassign_with_default)]

pub mod acl;
pub mod dns;
mod file_settings;
pub mod http;
pub mod leader;
pub mod leader_client;
pub mod lifecycle;
pub mod metrics;
pub mod raft;
pub mod reads;
pub mod rpc;
pub mod state;
pub mod storage;

use crate::raft::{Event, RaftHandle, RaftNodeSetup, RaftTuning};
use crate::rpc::PeerInfo;
use crate::rpc::{Deliver, MemNetwork, TcpTransport, Transport};
use crate::state::StateStore;
use crate::storage::RaftStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use raft::{RaftStatus, Role};

/// How servers reach each other.
#[derive(Clone, Default)]
pub enum TransportKind {
    /// TCP on `rpc_addr` (production).
    #[default]
    Tcp,
    /// An in-memory network (tests); the server's address on it is `advertise`.
    Mem(MemNetwork),
}

/// A server's validated configuration.
#[derive(Clone)]
pub struct ServerConfig {
    /// Node name.
    pub node: String,
    /// Datacenter.
    pub datacenter: String,
    /// Where RocksDB lives; `None` only with `dev` (a temp dir).
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// RPC listen address.
    pub rpc_addr: SocketAddr,
    /// RPC address other servers use for us; defaults to the bound RPC address.
    pub advertise: Option<String>,
    /// Form the cluster once this many servers see each other (0: join only).
    pub bootstrap_expect: usize,
    /// Other servers' RPC addresses.
    pub retry_join: Vec<String>,
    /// This DC's WAN gateways (federation; used by later work).
    pub wan_gateways: Vec<String>,
    /// Single-server development mode.
    pub dev: bool,
    /// Raft timing.
    pub tuning: RaftTuning,
    /// Node liveness timing.
    pub liveness: leader::liveness::LivenessTuning,
    /// Session TTL timing (the leader's timers).
    pub sessions: leader::sessions::SessionTuning,
    /// KV tombstone reaping timing.
    pub tombstones: leader::tombstones::TombstoneTuning,
    /// Run the agent endpoints for this server itself (like every Consul
    /// server is also an agent). Off only in tests that want a catalog
    /// holding nothing but what they wrote.
    pub agent: bool,
    /// The embedded agent's full-sync interval.
    pub agent_sync_interval: Duration,
    /// The embedded agent's heartbeat interval.
    pub agent_heartbeat_interval: Duration,
    /// Transport.
    pub transport: TransportKind,
    /// Bounds on HTTP clients: header-read (and idle) timeout, connections.
    pub http_limits: registry_api::serve::ServeLimits,
    /// Bytes kept free in the data directory (`--min-free-disk`): writes are
    /// refused below it (`storage/space.rs`); 0 turns the check off.
    pub min_free_disk: u64,
    /// Disk fault injection (tests): a delay added to every synced write, or
    /// the failure of every synced write.
    pub disk_faults: storage::DiskFaults,
    /// The shared key (`--encrypt`): authenticates RPC connections, HTTP on the
    /// RPC port, agent heartbeats and requests to the gateways. `None` leaves
    /// them open (and the server says so at start).
    pub encrypt: Option<registry_api::auth::SharedKey>,
    /// The DNS interface (`--dns-addr` and friends); `None` runs none (the
    /// default here, as tests start many servers in one process; `main`
    /// gives Consul's 127.0.0.1:8600).
    pub dns: Option<registry_dns::DnsConfig>,
    /// Configuration files and directories (`--config-file`, `--config-dir`): settings for
    /// `main`, services for the embedded agent (registered at start, re-read on reload).
    pub config_sources: registry_api::config_file::ConfigSources,
    /// TLS (`--ca-file`, `--cert-file`, ...): the RPC port, the HTTPS API, and the
    /// calls to gateways and the leader. `None`: plaintext only.
    pub tls: Option<Arc<registry_api::tls::Tls>>,
    /// HTTPS API listen address (`--https-addr`; needs `tls` with a certificate).
    pub https_addr: Option<SocketAddr>,
    /// Serve the web UI at `/ui/` (`--ui`, on with `--dev`; `registry-ui`).
    pub ui: bool,
    /// ACLs (`--acl-*`, `--primary-datacenter`).
    pub acl: acl::AclConfig,
}

impl ServerConfig {
    /// A configuration with Consul's defaults for `node` (ports 8500/8300, dc1).
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            datacenter: "dc1".into(),
            data_dir: None,
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8500)),
            rpc_addr: SocketAddr::from(([0, 0, 0, 0], 8300)),
            advertise: None,
            bootstrap_expect: 0,
            retry_join: Vec::new(),
            wan_gateways: Vec::new(),
            dev: false,
            tuning: RaftTuning::default(),
            liveness: leader::liveness::LivenessTuning::default(),
            sessions: leader::sessions::SessionTuning::default(),
            tombstones: leader::tombstones::TombstoneTuning::default(),
            agent: true,
            agent_sync_interval: Duration::from_secs(60),
            agent_heartbeat_interval: Duration::from_secs(2),
            transport: TransportKind::Tcp,
            http_limits: registry_api::serve::ServeLimits::default(),
            min_free_disk: storage::space::DEFAULT_MIN_FREE,
            disk_faults: storage::DiskFaults::default(),
            encrypt: None,
            dns: None,
            config_sources: Default::default(),
            tls: None,
            https_addr: None,
            ui: false,
            acl: acl::AclConfig::default(),
        }
    }

    /// Checks the combination of settings; the text is shown to the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.node.is_empty() {
            return Err("--node must not be empty".into());
        }
        registry_api::names::check_datacenter(&self.datacenter)
            .map_err(|e| format!("--datacenter {:?}: {e}", self.datacenter))?;
        if self.data_dir.is_none() && !self.dev {
            return Err("--data-dir is required (or use --dev)".into());
        }
        if self.dev && self.bootstrap_expect > 1 {
            return Err("--dev runs a single server; --bootstrap-expect must be 1 or unset".into());
        }
        if let Some(primary) = &self.acl.primary_datacenter {
            registry_api::names::check_datacenter(primary)
                .map_err(|e| format!("--primary-datacenter {primary:?}: {e}"))?;
        }
        if self.https_addr.is_some() && self.tls.is_none() {
            return Err("--https-addr needs --cert-file and --key-file".into());
        }
        if self.bootstrap_expect == 0 && self.retry_join.is_empty() && !self.dev {
            return Err(
                "set --bootstrap-expect N (to form a cluster) or --retry-join (to join one)".into(),
            );
        }
        Ok(())
    }
}

/// A running server.
pub struct ServerHandle {
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Advertised RPC address.
    pub rpc_addr: String,
    /// Raft id.
    pub id: u64,
    /// The Raft node, for status in tests.
    pub raft: RaftHandle,
    /// Bound HTTPS address, when `--https-addr` is set.
    pub https_addr: Option<SocketAddr>,
    /// The HTTP layer's state (gateway routes).
    app: Arc<http::AppState>,
    /// The bound DNS address (UDP and TCP), when DNS runs.
    dns_addr: Option<SocketAddr>,
    /// The TCP transport (none on the in-memory network).
    tcp: Option<Arc<TcpTransport>>,
    /// The embedded agent (none when `ServerConfig::agent` is off).
    agent: Option<Arc<registry_client::Agent>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    raft_thread: Option<std::thread::JoinHandle<()>>,
    mem: Option<MemNetwork>,
    /// Keeps a `--dev` temp dir alive as long as the server.
    _temp_dir: Option<tempfile::TempDir>,
}

impl ServerHandle {
    /// Replaces this server's WAN gateways (`--wan-gateway`).
    pub fn set_wan_gateways(&self, gateways: &[String]) {
        self.app.wan.set(gateways);
    }

    /// The DNS interface's bound address (UDP and TCP), when it runs.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// Inbound RPC connections refused so far: a wrong `--encrypt` key, a failed TLS
    /// handshake, or a certificate that may not speak Raft.
    pub fn refused_rpc_handshakes(&self) -> u64 {
        self.tcp.as_ref().map_or(0, |t| t.refused_handshakes())
    }

    /// Base URL of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The agent this server embeds, if it runs one.
    pub fn agent(&self) -> Option<&Arc<registry_client::Agent>> {
        self.agent.as_ref()
    }

    /// Resolves once the server stops, by [`ServerHandle::stop`] or by itself
    /// (its agent left the cluster).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// Whether the server has stopped or is stopping.
    pub fn is_stopped(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Stops every task and the Raft thread, and waits until the database is
    /// closed (so the same data dir can be opened again at once).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(net) = &self.mem {
            net.unregister(&self.rpc_addr);
        }
        for t in self.tasks.drain(..) {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(thread) = self.raft_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn deliver_to(tx: SyncSender<Event>) -> Deliver {
    Arc::new(move |from, msg| {
        // Dropping when the inbox is full is safe: Raft retransmits.
        let _ = tx.try_send(Event::Rpc(from, msg));
    })
}

/// Starts a server, step by step (each logged): check the configuration,
/// open storage and rebuild the catalog, start the transport, bind HTTP,
/// start the Raft thread, the leader loops and the embedded agent, then serve
/// HTTP. Returns once all listen.
pub async fn start(config: ServerConfig) -> anyhow::Result<ServerHandle> {
    config.validate().map_err(anyhow::Error::msg)?;
    warn_if_open(&config);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    let (data_dir, temp_dir) = data_dir(&config)?;
    info!(node = %config.node, dc = %config.datacenter, dir = %data_dir.display(), "opening storage");
    let (store, recovered) = RaftStore::open(&data_dir, config.disk_faults.clone())?;
    let rows = recovered.rows.len();
    let state =
        StateStore::from_rows(&config.datacenter, recovered.rows).map_err(anyhow::Error::msg)?;
    info!(node = %config.node, applied = recovered.applied, keys = state.kv.len(),
          sessions = state.sessions.len(), "state loaded");

    // This server's own registry: tests run many servers in one process.
    let metrics = metrics::ServerMetrics::new();
    let (tx, rx) = raft::event_channel();
    let rpc = start_transport(&config, deliver_to(tx.clone()), &shutdown).await?;
    tasks.extend(rpc.accept);
    let rpc_addr = rpc.addr;
    let tcp = rpc.tcp.clone();
    info!(node = %config.node, rpc = %rpc_addr, "transport ready");

    let listener = registry_api::serve::bind(config.http_addr)?;
    let http_addr = listener.local_addr()?;
    let (heartbeat_tx, heartbeat_rx) = tokio::sync::mpsc::channel(4096);
    let setup = RaftNodeSetup {
        me: PeerInfo {
            id: recovered.node_id,
            node: config.node.clone(),
            rpc_addr: rpc_addr.clone(),
            http_addr: http_addr.to_string(),
            datacenter: config.datacenter.clone(),
        },
        store,
        applied: recovered.applied,
        rows,
        peers: recovered.peers,
        state,
        bootstrap_expect: if config.dev {
            1
        } else {
            config.bootstrap_expect
        },
        retry_join: config.retry_join.clone(),
        tuning: config.tuning.clone(),
        transport: rpc.transport,
        heartbeats: heartbeat_tx,
        // The servers' own catalog entries come with the embedded agent:
        // without it a test wants a catalog holding only what it wrote.
        announce_gated: config.agent,
        metrics: metrics.raft.clone(),
        space: storage::space::DiskSpace::new(&data_dir, config.min_free_disk),
    };
    let (raft, raft_thread) = raft::start(setup, tx, rx, shutdown.clone())?;
    info!(node = %config.node, id = recovered.node_id, "raft node started");
    metrics.collect_from(&raft);

    tasks.push(tokio::spawn(leader::liveness::run(
        Arc::new(leader::liveness::Liveness::default()),
        raft.clone(),
        config.liveness.clone(),
        heartbeat_rx,
        shutdown.clone(),
    )));

    tasks.push(tokio::spawn(leader::sessions::run(
        raft.clone(),
        config.sessions.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(leader::tombstones::run(
        raft.clone(),
        config.tombstones.clone(),
        shutdown.clone(),
    )));

    if config.agent {
        // The `consul` service's port when the RPC address names none (the
        // in-memory transport).
        let default_port = config.rpc_addr.port();
        tasks.push(tokio::spawn(leader::servers::run(
            raft.clone(),
            default_port,
            shutdown.clone(),
        )));
    }

    let (agent_routes, agent) = if config.agent {
        let agent = EmbeddedAgent {
            http_addr,
            rpc_addr: &rpc_addr,
            node_id: recovered.node_id,
            data_dir: &data_dir,
        };
        let (agent, agent_tasks) = agent.start(&config, &raft, &shutdown).await?;
        tasks.extend(agent_tasks);
        // The agent's `/v1/agent/metrics` shows the server's too, as a Consul server's does.
        agent.metrics().include(&metrics.registry);
        (registry_client::agent_router(agent.clone()), Some(agent))
    } else {
        (axum::Router::new(), None)
    };

    let acl_resolver = Arc::new(acl::AclResolver::new(
        config.acl.clone(),
        &config.datacenter,
    ));
    let app = Arc::new(http::AppState {
        raft: raft.clone(),
        datacenter: config.datacenter.clone(),
        node: config.node.clone(),
        shutdown: shutdown.clone(),
        wan: http::federation::WanRoute::new(
            &config.wan_gateways,
            config.encrypt.clone(),
            config.tls.as_ref(),
            &config.datacenter,
        ),
        answers: Default::default(),
        encrypt: config.encrypt.clone().map(Arc::new),
        metrics: metrics.clone(),
        acl: acl_resolver.clone(),
    });
    tasks.push(tokio::spawn(leader::acl::run(
        app.clone(),
        shutdown.clone(),
    )));
    let dns_addr = match &config.dns {
        Some(dns) => {
            let backend = Arc::new(dns::ServerDns::new(app.clone()));
            let server =
                registry_dns::start(dns, &config.datacenter, backend, shutdown.clone()).await?;
            tasks.extend(server.tasks);
            Some(server.addr)
        }
        None => None,
    };
    let router = http::router(app.clone(), agent_routes);
    // The web UI beside the API (`GET /` and `/ui/...`), on HTTP and HTTPS alike. Its routes
    // skip the API's layers, and `http::router` answers every other path from behind them
    // (its routes are one fallback): a UI route must never take an API path.
    let router = if config.ui {
        router.merge(registry_ui::router())
    } else {
        router
    };
    // One bound for the HTTP port and HTTP on the RPC port together.
    let gate = registry_api::serve::ConnGate::new(config.http_limits.clone());
    if let Some(t) = &rpc.tcp {
        // Agents name servers by their RPC address (`--retry-join`), so the
        // RPC port answers HTTP too, but only what agents need.
        let router = http::rpc_router(app.clone());
        let (stop, gate) = (shutdown.clone(), gate.clone());
        t.set_http_handoff(Arc::new(move |handed: rpc::HandedOver| {
            gate.serve_stream(handed.io, Some(handed.peer), router.clone(), stop.clone());
        }));
    }
    let https_addr = match (&config.https_addr, &config.tls) {
        (Some(addr), Some(tls)) => {
            let listener = registry_api::serve::bind(*addr)?;
            let bound = listener.local_addr()?;
            tasks.push(tokio::spawn(registry_api::serve::serve_tls(
                listener,
                router.clone(),
                gate.clone(),
                tls.server_config()?,
                shutdown.clone(),
            )));
            info!(node = %config.node, https = %bound, "HTTPS API listening");
            Some(bound)
        }
        _ => None,
    };
    tasks.push(tokio::spawn(registry_api::serve::serve_with_gate(
        listener,
        router,
        gate,
        shutdown.clone(),
    )));
    info!(node = %config.node, http = %http_addr, "HTTP API listening");

    Ok(ServerHandle {
        http_addr,
        https_addr,
        tcp,
        rpc_addr,
        id: recovered.node_id,
        raft,
        app,
        dns_addr,
        agent,
        shutdown,
        tasks,
        raft_thread: Some(raft_thread),
        mem: match &config.transport {
            TransportKind::Mem(net) => Some(net.clone()),
            TransportKind::Tcp => None,
        },
        _temp_dir: temp_dir,
    })
}

/// Says so at start when the RPC port is open to anyone, as Consul warns when
/// gossip encryption is off.
fn warn_if_open(config: &ServerConfig) {
    if config.encrypt.is_none() && !config.dev {
        tracing::warn!(
            node = %config.node,
            "no --encrypt key: anyone who reaches the RPC port can join the cluster, send Raft \
             messages and heartbeats; set one (registry-server keygen)"
        );
    }
}

/// The data directory, created if missing: `--data-dir`, or with `--dev` a
/// temp dir that lives as long as the returned guard.
fn data_dir(config: &ServerConfig) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    let (dir, temp) = match &config.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("registry-dev-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir)?;
    Ok((dir, temp))
}

/// A started transport.
struct StartedTransport {
    /// What the Raft thread sends through.
    transport: Arc<dyn Transport>,
    /// The address other servers reach this one at.
    addr: String,
    /// The TCP transport, which also hands HTTP connections over.
    tcp: Option<Arc<TcpTransport>>,
    /// The TCP accept loop, awaited at shutdown.
    accept: Option<JoinHandle<()>>,
}

/// Starts the configured transport, delivering into `deliver`.
async fn start_transport(
    config: &ServerConfig,
    deliver: Deliver,
    shutdown: &CancellationToken,
) -> anyhow::Result<StartedTransport> {
    Ok(match &config.transport {
        TransportKind::Tcp => {
            let (t, _bound, accept) = TcpTransport::bind(
                config.rpc_addr,
                config.advertise.clone().unwrap_or_default(),
                config.encrypt.clone(),
                config
                    .tls
                    .clone()
                    .map(|tls| rpc::RpcTls::new(tls, &config.datacenter))
                    .transpose()?,
                deliver,
                tokio::runtime::Handle::current(),
                shutdown.clone(),
            )
            .await?;
            StartedTransport {
                transport: t.clone(),
                addr: t.advertise().to_string(),
                tcp: Some(t),
                accept: Some(accept),
            }
        }
        TransportKind::Mem(net) => {
            let addr = config
                .advertise
                .clone()
                .unwrap_or_else(|| config.node.clone());
            StartedTransport {
                transport: net.register(&addr, deliver),
                addr,
                tcp: None,
                accept: None,
            }
        }
    })
}

/// What the server's own agent needs to know about the server.
struct EmbeddedAgent<'a> {
    /// The server's bound HTTP address, which the agent calls.
    http_addr: SocketAddr,
    /// The server's advertised RPC address; its host is the agent's address.
    rpc_addr: &'a str,
    /// The server's Raft id, which the agent uses as its node id.
    node_id: u64,
    /// The server's data directory; the agent keeps its state below it.
    data_dir: &'a std::path::Path,
}

impl EmbeddedAgent<'_> {
    /// Starts the agent (every Consul server is also an agent) with the
    /// server's part of leave and join ([`lifecycle::ServerMembership`]), and
    /// returns it and its tasks. It stops on the server's token, which its
    /// leave fires.
    async fn start(
        self,
        config: &ServerConfig,
        raft: &RaftHandle,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(Arc<registry_client::Agent>, Vec<JoinHandle<()>>)> {
        // The embedded agent reaches the cluster through this server's own API.
        let own = if self.http_addr.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", self.http_addr.port())
        } else {
            format!("http://{}", self.http_addr)
        };
        let pool = registry_client::ServerPool::new(vec![own])?;
        let advertise_host = self
            .rpc_addr
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_else(|| self.rpc_addr.to_string());
        let agent_config = registry_client::AgentConfig {
            node: config.node.clone(),
            node_id: format!("{:016x}", self.node_id),
            datacenter: config.datacenter.clone(),
            advertise_addr: advertise_host,
            data_dir: Some(self.data_dir.join("agent")),
            server: true,
            sync_interval: config.agent_sync_interval,
            heartbeat_interval: config.agent_heartbeat_interval,
            // Its heartbeats must be signed even on this server's own HTTP port.
            encrypt: config.encrypt.clone(),
            config_sources: config.config_sources.clone(),
            tls: config.tls.clone(),
            acl_enabled: config.acl.enabled,
            acl_agent_token: config
                .acl
                .agent_token
                .clone()
                .map(registry_client::acl::SecretToken),
        };
        let (agent, tasks) =
            registry_client::Agent::start(agent_config, pool, shutdown.clone()).await?;
        agent.set_server_lifecycle(Arc::new(lifecycle::ServerMembership {
            raft: raft.clone(),
            node: config.node.clone(),
            tcp: matches!(config.transport, TransportKind::Tcp),
            joined: Default::default(),
        }));
        let stats_raft = raft.clone();
        agent.set_stats_source(Arc::new(move || raft_stats(&stats_raft)));
        // The `port` member tag Consul gives a server is its RPC port.
        if let Some(port) = self
            .rpc_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
        {
            agent.set_server_port(port);
        }
        Ok((agent, tasks))
    }
}

/// The `raft` section of `/v1/agent/self`'s `Stats`, named as Consul names them.
fn raft_stats(
    raft: &RaftHandle,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let s = raft.status();
    let applied = *raft.applied_changes().borrow();
    let state = match s.role {
        raft::Role::Leader => "Leader",
        raft::Role::Candidate => "Candidate",
        raft::Role::Follower => "Follower",
    };
    let last_contact = match (s.role, s.last_leader_contact) {
        (raft::Role::Leader, _) => "0".to_string(),
        (_, Some(t)) => format!("{}ms", t.elapsed().as_millis()),
        (_, None) => "never".to_string(),
    };
    let raft_section = [
        ("state", state.to_string()),
        ("term", s.term.to_string()),
        ("commit_index", s.commit.to_string()),
        ("applied_index", applied.to_string()),
        // Consul's (hashicorp/raft's) snapshot is the state written to disk
        // with the log kept after it: here, the newest checkpoint.
        ("last_snapshot_index", s.checkpointed_to.to_string()),
        ("checkpoint_failures", s.checkpoint_failures.to_string()),
        ("num_peers", s.voters.len().saturating_sub(1).to_string()),
        ("last_contact", last_contact),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    [("raft".to_string(), raft_section)].into_iter().collect()
}

/// Runs a server until `shutdown` fires or its agent leaves the cluster.
/// Each `SIGHUP` reloads the embedded agent, as `PUT /v1/agent/reload` does.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle = start(config).await?;
    let mut hangups = registry_api::process::hangups();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = handle.stopped() => {
                info!("left the cluster");
                break;
            }
            _ = registry_api::process::next_hangup(&mut hangups) => {
                info!("SIGHUP: reloading");
                if let Some(agent) = handle.agent() {
                    if let Err(e) = agent.reload().await {
                        tracing::warn!(error = %e, "reload failed");
                    }
                }
            }
        }
    }
    info!("shutting down");
    handle.stop().await;
    Ok(())
}
