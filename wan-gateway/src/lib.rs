//! `wan-gateway`: federates datacenters (DESIGN §1).
//!
//! A request with `?dc=dc2` asked in dc1 travels: client agent -> a dc1 server -> a dc1 gateway
//! (this process) -> a dc2 gateway -> a dc2 server, and the answer comes back the same way. Only
//! gateways talk across the WAN.
//!
//! # What a gateway serves
//!
//! - `GET /v1/catalog/datacenters`: every known DC, the local one first, then the others by the
//!   median measured gateway-to-gateway round trip; a DC whose gateways are all dead sorts last.
//! - Every other `/v1/...` request, any method, routed by `?dc=` (absent or empty: the local DC):
//!   - the local DC: to one of this DC's servers, failing over to the next on a transport error;
//!   - another known DC: to its live gateways, lowest RTT first, failing over the same way;
//!   - an unknown DC, or a request that has already taken [`forward::MAX_HOPS`] hops:
//!     `500 No path to datacenter`;
//!   - status, `Content-Type`, `X-Consul-*` headers and body come back unchanged.
//! - `POST /wan/v1/exchange` and `GET /wan/v1/members`: WAN membership ([`gossip`]).
//!
//! # The error bound
//!
//! `500 Remote DC has no server currently reachable` for a known DC comes back:
//! - at once when every gateway of that DC is dead (not reached by this gateway for
//!   `dead_after`, 5 s by default);
//! - before that, within [`http::MAX_GATEWAY_ATTEMPTS`] (3) × [`forward::CONNECT_TIMEOUT`] (1 s)
//!   = **3 s** when the DC's gateways do not accept connections (a refused connection costs
//!   nothing), plus the remote gateway's own bound when it is up but none of its servers is
//!   (servers × 1 s).
//!
//! A gateway or server that accepts the connection and then never answers is cut by the hop
//! timeout ([`forward::hop_timeout`]: 15 s plus 2 s per remaining hop, or a blocking query's
//! wait + wait/16 + slack).

pub mod error;
pub mod forward;
pub mod gossip;
pub mod http;
pub mod members;

use anyhow::Context as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use error::GatewayError;
pub use members::{GatewayEntry, MemberStatus, WanView};

/// How long a stopping gateway waits for its connections to finish before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The gateway's configuration (DESIGN §3).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Datacenter this gateway serves.
    pub datacenter: String,
    /// Address to listen on (`0.0.0.0:8302` by default; tests use `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// `host:port` other gateways use to reach this one; by default the bound address
    /// (`127.0.0.1:port` when bound to `0.0.0.0`).
    pub advertise: Option<String>,
    /// This DC's servers' HTTP base URLs (`http://host:port`; a bare `host:port` means http).
    pub servers: Vec<String>,
    /// Any other gateway(s) to join the WAN through (`host:port`).
    pub retry_join_wan: Vec<String>,
    /// Time between membership exchanges with every known gateway.
    pub gossip_interval: Duration,
    /// A gateway not reached for this long is dead: still listed and probed, skipped for routing.
    pub dead_after: Duration,
}

impl GatewayConfig {
    /// The defaults for a gateway of `datacenter`.
    pub fn new(datacenter: impl Into<String>) -> Self {
        GatewayConfig {
            datacenter: datacenter.into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8302)),
            advertise: None,
            servers: Vec::new(),
            retry_join_wan: Vec::new(),
            gossip_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
        }
    }

    /// Rejects settings the gateway cannot run with.
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.datacenter.is_empty(), "datacenter must not be empty");
        anyhow::ensure!(
            !self.gossip_interval.is_zero(),
            "gossip interval must be above zero"
        );
        // A gateway must get at least one probe in before its peers give it up.
        anyhow::ensure!(
            self.dead_after > self.gossip_interval,
            "dead_after ({:?}) must exceed the gossip interval ({:?})",
            self.dead_after,
            self.gossip_interval
        );
        Ok(())
    }
}

/// The address to advertise when none is configured: the bound one, with a wildcard IP replaced
/// by loopback (good for tests and single hosts; real deployments pass `--advertise`).
fn default_advertise(bound: SocketAddr) -> String {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    /// The bound address.
    pub addr: SocketAddr,
    /// State shared with the handlers.
    gateway: Arc<http::Gateway>,
    /// Stops every task of this gateway.
    shutdown: CancellationToken,
    /// The HTTP server task.
    server: JoinHandle<()>,
    /// The gossip task.
    gossip: JoinHandle<()>,
    /// Stops the tasks if the handle is dropped without [`GatewayHandle::stop`] (a failed test),
    /// so no gateway outlives its owner.
    _stop_on_drop: DropGuard,
}

impl GatewayHandle {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces this DC's server list (in-process tests start gateways and servers in either
    /// order, so the list may only be known after start).
    pub fn set_servers(&self, servers: Vec<String>) {
        self.gateway.forwarder.set_servers(&servers);
    }

    /// Stops the gateway: requests in flight end with 503, the listener closes, and every task is
    /// awaited (connections still open after a short grace are dropped).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
        {
            tracing::warn!(addr = %self.addr, "connections still open after the grace period; dropping them");
            server.abort();
            let _ = server.await;
        }
        let _ = self.gossip.await;
        tracing::info!(dc = %self.gateway.dc, addr = %self.addr, "gateway stopped");
    }
}

/// Starts a gateway and returns once it listens.
pub async fn start(config: GatewayConfig) -> anyhow::Result<GatewayHandle> {
    start_with(config, CancellationToken::new()).await
}

/// Starts a gateway whose tasks stop when `shutdown` fires.
async fn start_with(
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<GatewayHandle> {
    config.validate()?;
    let listener = registry_api::serve::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| default_advertise(addr));
    tracing::info!(dc = %config.datacenter, %addr, %advertise, "gateway listening");

    let me = GatewayEntry {
        dc: config.datacenter.clone(),
        addr: advertise,
    };
    let members = Arc::new(Mutex::new(members::MemberTable::new(me, config.dead_after)));
    let forwarder = forward::Forwarder::new(&config.servers).context("building the HTTP client")?;
    let client = forwarder.client().clone();
    let gateway = Arc::new(http::Gateway {
        dc: config.datacenter.clone(),
        members: members.clone(),
        forwarder,
        in_flight: Arc::new(Semaphore::new(forward::MAX_IN_FLIGHT)),
        shutdown: shutdown.clone(),
    });
    tracing::info!(dc = %config.datacenter, servers = ?config.servers, "forwarding to servers");

    let app = http::router(gateway.clone());
    let server_stop = shutdown.clone();
    let server = tokio::spawn(registry_api::serve::serve(
        listener,
        app,
        registry_api::serve::ServeLimits::default(),
        server_stop,
    ));

    tracing::info!(dc = %config.datacenter, join = ?config.retry_join_wan, "joining the WAN");
    let gossip = tokio::spawn(gossip::run(
        members,
        client,
        config.retry_join_wan.clone(),
        config.gossip_interval,
        shutdown.clone(),
    ));
    Ok(GatewayHandle {
        addr,
        gateway,
        _stop_on_drop: shutdown.clone().drop_guard(),
        shutdown,
        server,
        gossip,
    })
}

/// Serves until `shutdown` fires, then stops every task and waits for them.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle = start_with(config, shutdown.child_token()).await?;
    shutdown.cancelled().await;
    handle.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_defaults_to_loopback_for_wildcard_binds() {
        assert_eq!(
            default_advertise("0.0.0.0:8302".parse().unwrap()),
            "127.0.0.1:8302"
        );
        assert_eq!(
            default_advertise("10.1.2.3:8302".parse().unwrap()),
            "10.1.2.3:8302"
        );
        assert_eq!(
            default_advertise("[::]:8302".parse().unwrap()),
            "[::1]:8302"
        );
    }

    #[test]
    fn config_rejects_a_dead_after_not_above_the_interval() {
        let mut c = GatewayConfig::new("dc1");
        assert!(c.validate().is_ok());
        c.dead_after = c.gossip_interval;
        assert!(c.validate().is_err());
        c.gossip_interval = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
