//! Consul's DNS interface (port 8600), once, for every process that serves
//! it: servers answer from their own applied state, agents from their
//! servers; both implement [`DnsBackend`] and call [`start`].
//!
//! ```text
//! names.rs     which lookup a query name asks for (every Consul name form)
//! backend.rs   DnsBackend: what DNS asks of a catalog; Instance, NodeInfo
//! handler.rs   one request -> one response: health filter, shuffle, codes
//!              (a hickory-server RequestHandler)
//! answer.rs    records, SOA, encoding within the client's UDP size (TC)
//! recursor.rs  names outside the domain, to --recursors
//! listener.rs  UDP + TCP on one port, bounded in flight, connections, time
//! flags.rs     the DNS flags of both binaries
//! ```
//!
//! Owns: everything DNS. Must not touch: how a backend reads its catalog
//! (the server's `reads`, the agent's server pool).

pub mod answer;
pub mod backend;
pub mod flags;
pub mod handler;
pub mod listener;
pub mod names;
pub mod recursor;

pub use backend::{BackendError, DnsBackend, Health, Instance, NodeInfo};
pub use flags::DnsFlags;
pub use handler::{DnsHandler, HandlerConfig};
pub use listener::Limits;
pub use names::Domains;
pub use recursor::Recursors;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The default `--dns-addr` of the binaries (Consul's). Config structs
/// default to no DNS listener: tests start many nodes in one process.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8600";
/// The default `--domain`.
pub const DEFAULT_DOMAIN: &str = "consul";

/// The DNS settings of a server or an agent (DESIGN §3: `--dns-addr`,
/// `--domain`, `--alt-domain`, `--recursors`, `--dns-ttl`,
/// `--dns-only-passing`).
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where to listen, UDP and TCP (port 0 picks a free one).
    pub addr: SocketAddr,
    /// The domain (`consul`).
    pub domain: String,
    /// A second domain answered the same way.
    pub alt_domain: Option<String>,
    /// Where names outside the domains go (`IP` or `IP:port`); none: REFUSED.
    pub recursors: Vec<String>,
    /// TTL of service and node records (Consul's default: 0).
    pub ttl: Duration,
    /// Answer only with instances whose checks all pass (warning ones too
    /// are left out); critical ones are never answered.
    pub only_passing: bool,
    /// Bounds on the listener.
    pub limits: Limits,
}

impl DnsConfig {
    /// Consul's defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        DnsConfig {
            addr,
            domain: DEFAULT_DOMAIN.into(),
            alt_domain: None,
            recursors: Vec::new(),
            ttl: Duration::ZERO,
            only_passing: false,
            limits: Limits::default(),
        }
    }

    /// The handler's settings for a node of `datacenter`, or why the
    /// settings are refused (the text names the flag).
    pub fn handler_config(&self, datacenter: &str) -> Result<HandlerConfig, String> {
        let domains = Domains::new(&self.domain, self.alt_domain.as_deref())
            .map_err(|e| format!("--domain/--alt-domain: {e}"))?;
        let recursors =
            Recursors::parse(&self.recursors).map_err(|e| format!("--recursors: {e}"))?;
        let ttl =
            u32::try_from(self.ttl.as_secs()).map_err(|_| "--dns-ttl: too long".to_string())?;
        Ok(HandlerConfig {
            domains,
            datacenter: datacenter.to_ascii_lowercase(),
            ttl,
            only_passing: self.only_passing,
            recursors,
        })
    }
}

/// A running DNS interface.
pub struct DnsServer {
    /// The bound address (UDP and TCP share the port).
    pub addr: SocketAddr,
    /// The accept loops; they end on the shutdown token.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Errors starting the DNS interface.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A setting was refused.
    #[error("{0}")]
    Config(String),
    /// The port could not be bound.
    #[error("binding DNS on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the DNS interface of a node of `datacenter` over `backend`;
/// returns once UDP and TCP are bound. Stops on `shutdown`.
pub async fn start<B: DnsBackend>(
    config: &DnsConfig,
    datacenter: &str,
    backend: Arc<B>,
    shutdown: CancellationToken,
) -> Result<DnsServer, DnsError> {
    let handler_config = config
        .handler_config(datacenter)
        .map_err(DnsError::Config)?;
    let recursors = handler_config.recursors.addrs().to_vec();
    let handler = Arc::new(DnsHandler::new(backend, handler_config));
    let (addr, tasks) = listener::serve(config.addr, handler, config.limits, shutdown)
        .await
        .map_err(|source| DnsError::Bind {
            addr: config.addr,
            source,
        })?;
    tracing::info!(
        dns = %addr,
        domain = %config.domain,
        alt_domain = config.alt_domain.as_deref().unwrap_or(""),
        recursors = ?recursors,
        ttl_s = config.ttl.as_secs(),
        only_passing = config.only_passing,
        "DNS listening (UDP and TCP)"
    );
    Ok(DnsServer { addr, tasks })
}
