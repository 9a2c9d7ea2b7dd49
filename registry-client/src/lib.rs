//! `registry-client`: the agent on every application host.
//!
//! Applications talk only to their local agent (DESIGN §1). The agent owns this node's
//! services and checks ([`agent`]), runs the checks ([`checks`]), keeps the catalog in line
//! with them ([`anti_entropy`]), tells the servers it is alive (heartbeats), and forwards every
//! request that is not an agent endpoint to a server, failing over between servers
//! ([`servers`], [`http`]).
//!
//! ```text
//! agent/          local services and checks: state, registration, maintenance, check
//!                 results, persistence, heartbeats
//! checks/         the check runners: spec, runner, outbox, ttl, http, tcp, grpc, tls
//! http/           the agent's HTTP API: routers, routes, params, forward
//! anti_entropy.rs keeps the catalog equal to the local state
//! servers.rs      the server pool: failover, signing
//! dns.rs          the DNS interface's backend: the servers answer (stale reads)
//! ```
//!
//! Start-up, in order: build the server pool from `--retry-join` (signing with the shared
//! key, `--encrypt`, when one is given), start the agent (load persisted state, start checks,
//! syncer, heartbeats), bind the HTTP listener and serve. Everything stops on one
//! [`CancellationToken`] and every task is awaited; a leave (`PUT /v1/agent/leave`) fires it
//! too, and [`run`] then returns. `SIGHUP` reloads ([`Agent::reload`]).
//!
//! Owns: the agent process's configuration and start-up. Must not touch: rules shared with
//! the server and the gateway (limits, forwarding, error responses, signing), which live in
//! `registry-api`.

#![warn(missing_docs)]

pub mod acl;
pub mod agent;
pub mod anti_entropy;
pub mod checks;
pub mod dns;
mod file_settings;
pub mod http;
pub mod metrics;
pub mod servers;

pub use agent::{Agent, AgentConfig, BoxFuture, ServerLifecycle};
pub use http::{agent_router, client_router};
pub use servers::{PoolError, PoolResponse, ServerPool};

pub use registry_api::auth::SharedKey;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where `--dev` looks for a server when no `--retry-join` is given: a local
/// `registry-server --dev` (its RPC port, which also answers HTTP).
pub const DEV_SERVER: &str = "127.0.0.1:8300";
/// How long a start waits for an `--advertise` name to resolve (a container's own hostname
/// is in its /etc/hosts at once; a DNS name may take a moment).
const ADVERTISE_RESOLVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The agent's configuration (DESIGN §3).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Node name.
    pub node: String,
    /// Node id (a UUID); may be empty.
    pub node_id: String,
    /// Datacenter.
    pub datacenter: String,
    /// Where local services and checks are persisted; `None` keeps them in memory.
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (port 0 picks a free one; see [`ClientHandle::http_addr`]).
    pub http_addr: SocketAddr,
    /// The node's address as registered in the catalog (`--advertise`).
    pub advertise_addr: String,
    /// Servers' RPC addresses (`HOST:PORT`; they answer HTTP there too) or base URLs.
    pub retry_join: Vec<String>,
    /// Development mode: without `retry_join`, use [`DEV_SERVER`].
    pub dev: bool,
    /// Time between full anti-entropy syncs.
    pub sync_interval: Duration,
    /// Time between liveness heartbeats.
    pub heartbeat_interval: Duration,
    /// The cluster's shared key (`--encrypt`): every request to the servers is signed with
    /// it. `None` sends unsigned requests, which servers with a key refuse.
    pub encrypt: Option<SharedKey>,
    /// Configuration files and directories (`--config-file`, `--config-dir`): the agent
    /// registers their services at start and re-reads them on reload.
    pub config_sources: registry_api::config_file::ConfigSources,
    /// The DNS interface (`--dns-addr` and friends), answered by the servers; `None` runs
    /// none (the default here, as tests start many agents in one process; `main` gives
    /// Consul's 127.0.0.1:8600).
    pub dns: Option<registry_dns::DnsConfig>,
    /// TLS: the servers are dialled over it (`--verify-outgoing`) and the HTTPS API uses it.
    pub tls: Option<Arc<registry_api::tls::Tls>>,
    /// HTTPS API listen address (`--https-addr`; needs `tls` with a certificate).
    pub https_addr: Option<SocketAddr>,
    /// Serve the web UI at `/ui/` (`--ui`, on with `--dev`; `registry-ui`).
    pub ui: bool,
    /// `--acl-enabled` ([`AgentConfig::acl_enabled`]).
    pub acl_enabled: bool,
    /// `--acl-agent-token` ([`AgentConfig::acl_agent_token`]).
    pub acl_agent_token: Option<acl::SecretToken>,
}

impl ClientConfig {
    /// A configuration with DESIGN §3's defaults for node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        let defaults = AgentConfig::new(String::new());
        ClientConfig {
            node: node.into(),
            node_id: String::new(),
            datacenter: defaults.datacenter,
            data_dir: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8500)),
            advertise_addr: defaults.advertise_addr,
            retry_join: Vec::new(),
            dev: false,
            sync_interval: defaults.sync_interval,
            heartbeat_interval: defaults.heartbeat_interval,
            encrypt: None,
            config_sources: Default::default(),
            dns: None,
            tls: None,
            https_addr: None,
            ui: false,
            acl_enabled: false,
            acl_agent_token: None,
        }
    }
}

/// A running client agent, for embedding and in-process tests.
pub struct ClientHandle {
    /// The address the HTTP API listens on.
    pub http_addr: SocketAddr,
    /// The DNS interface's bound address (UDP and TCP), when it runs.
    pub dns_addr: Option<SocketAddr>,
    /// The address the HTTPS API listens on, when `--https-addr` is set.
    pub https_addr: Option<SocketAddr>,
    /// The agent.
    pub agent: Arc<Agent>,
    /// Stops everything.
    shutdown: CancellationToken,
    /// The HTTP server and the agent's tasks.
    tasks: Vec<JoinHandle<()>>,
}

impl ClientHandle {
    /// Resolves once the agent stops, by [`ClientHandle::stop`] or by itself after a leave.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// Stops everything and waits until every task has ended.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "agent task failed");
            }
        }
    }
}

/// Starts the agent and its HTTP API; returns once the listener is bound.
pub async fn start(config: ClientConfig) -> anyhow::Result<ClientHandle> {
    let shutdown = CancellationToken::new();
    let mut retry_join = config.retry_join.clone();
    if retry_join.is_empty() && config.dev {
        retry_join.push(DEV_SERVER.into());
    }
    if retry_join.is_empty() {
        tracing::warn!(node = %config.node, "no servers given (--retry-join): the agent cannot sync or forward");
    }
    let servers = ServerPool::from_retry_join(&retry_join)?
        .with_key(config.encrypt.clone())
        .with_tls(config.tls.as_ref(), &config.datacenter)?;
    if config.https_addr.is_some() && config.tls.is_none() {
        anyhow::bail!("--https-addr needs --cert-file and --key-file");
    }
    if config.encrypt.is_none() {
        // As Consul warns when gossip encryption is off.
        tracing::warn!(
            node = %config.node,
            "no shared key (--encrypt): requests to the servers are unauthenticated, and servers that have a key will refuse them"
        );
    }
    tracing::info!(node = %config.node, servers = ?servers.servers(), signed = servers.signs_requests(), "server pool");

    // A name (the container's hostname) becomes the address it stands for, once, at start.
    let advertise_addr =
        registry_api::resolve::advertise_ip(&config.advertise_addr, ADVERTISE_RESOLVE_LIMIT)
            .await
            .map_err(|e| anyhow::anyhow!("--advertise: {e}"))?
            .to_string();
    let agent_config = AgentConfig {
        node: config.node.clone(),
        node_id: config.node_id.clone(),
        datacenter: config.datacenter.clone(),
        advertise_addr,
        data_dir: config.data_dir.clone(),
        server: false,
        sync_interval: config.sync_interval,
        heartbeat_interval: config.heartbeat_interval,
        encrypt: config.encrypt.clone(),
        config_sources: config.config_sources.clone(),
        tls: config.tls.clone(),
        acl_enabled: config.acl_enabled,
        acl_agent_token: config.acl_agent_token.clone(),
    };
    let (agent, mut tasks) = Agent::start(agent_config, servers.clone(), shutdown.clone()).await?;

    let listener = match registry_api::serve::bind(config.http_addr) {
        Ok(l) => l,
        Err(e) => {
            shutdown.cancel();
            for t in tasks {
                let _ = t.await;
            }
            return Err(anyhow::anyhow!("binding {}: {e}", config.http_addr));
        }
    };
    let http_addr = listener.local_addr()?;
    tracing::info!(node = %config.node, addr = %http_addr, "HTTP API listening");
    let dns_addr = match &config.dns {
        Some(dns) => {
            let backend = Arc::new(dns::AgentDns::new(servers.clone()));
            match registry_dns::start(dns, &config.datacenter, backend, shutdown.clone()).await {
                Ok(server) => {
                    tasks.extend(server.tasks);
                    Some(server.addr)
                }
                Err(e) => {
                    shutdown.cancel();
                    for t in tasks {
                        let _ = t.await;
                    }
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    let app = client_router(agent.clone(), servers);
    // The web UI beside the API (`GET /` and `/ui/...`), on HTTP and HTTPS alike.
    let app = if config.ui {
        app.merge(registry_ui::router())
    } else {
        app
    };
    let gate = registry_api::serve::ConnGate::new(registry_api::serve::ServeLimits::default());
    let https_addr = match (config.https_addr, &config.tls) {
        (Some(addr), Some(tls)) => {
            let listener = registry_api::serve::bind(addr)
                .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(node = %config.node, addr = %bound, "HTTPS API listening");
            tasks.push(tokio::spawn(registry_api::serve::serve_tls(
                listener,
                app.clone(),
                gate.clone(),
                tls.server_config()?,
                shutdown.clone(),
            )));
            Some(bound)
        }
        _ => None,
    };
    tasks.push(tokio::spawn(registry_api::serve::serve_with_gate(
        listener,
        app,
        gate,
        shutdown.clone(),
    )));
    Ok(ClientHandle {
        http_addr,
        dns_addr,
        https_addr,
        agent,
        shutdown,
        tasks,
    })
}

/// Serves until `shutdown` fires or the agent leaves, then stops every task and waits for
/// them. Each `SIGHUP` reloads the agent, as `PUT /v1/agent/reload` does.
pub async fn run(config: ClientConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle = start(config).await?;
    let mut hangups = registry_api::process::hangups();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = handle.stopped() => {
                tracing::info!(node = %handle.agent.config().node, "the agent left; stopping");
                break;
            }
            _ = registry_api::process::next_hangup(&mut hangups) => {
                tracing::info!(node = %handle.agent.config().node, "SIGHUP: reloading");
                if let Err(e) = handle.agent.reload().await {
                    tracing::warn!(error = %e, "reload failed");
                }
            }
        }
    }
    handle.stop().await;
    Ok(())
}
