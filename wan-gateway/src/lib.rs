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
//! - The federated `/v1/...` requests ([`registry_api::federated`]: catalog, health, KV, session, txn,
//!   `status/leader|peers`, prepared query, event and coordinate endpoints, each with its
//!   methods), routed by `?dc=` (absent or empty: the local DC):
//!   - the local DC: to one of this DC's servers, failing over to the next on a transport error;
//!   - another known DC: to its live gateways, lowest RTT first, failing over the same way;
//!   - an unknown DC, or a request that has already taken [`forward::MAX_HOPS`] hops:
//!     `500 No path to datacenter`;
//!   - status, `Content-Type`, `X-Consul-*` headers and body come back unchanged.
//! - Agent, operator, ACL, snapshot and internal paths, and any other path not on the list, get
//!   `403` with the reason, whichever DC they name: they manage a cluster or a node, and must
//!   not be reachable from the WAN. A federated path with a method it does not take gets `405`.
//! - `POST /wan/v1/exchange` and `GET /wan/v1/members`: WAN membership ([`gossip`]). Gateway
//!   addresses (in exchanges and flags) must be `host:port` and nothing else, DC names letters,
//!   digits, `-` and `_` ([`registry_api::names`]); the member table is bounded and forgets a gateway not
//!   reached for `reconnect_timeout` (72 h).
//!
//! # What is authenticated
//!
//! With a shared key (`--encrypt`, the same base64 key on every gateway of the federation and on
//! every server; `wan-gateway keygen` makes one), **every** request the gateway receives (from
//! this DC's servers and from other gateways, to every route) must carry a valid
//! `x-registry-signature` ([`registry_api::auth`]), else `403` with the reason; every request it
//! sends (exchanges, forwards to gateways and to servers) is signed anew, per hop, over exactly
//! what it sends; exchange replies are signed for the request they answer, so an address that
//! answers without the key never counts as a live gateway. This authenticates, it does not
//! encrypt: tokens and data cross the WAN in the clear until TLS. Without a key the gateway
//! logs a warning at start and accepts everyone, as before.
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
//! timeout ([`forward::hop_timeout`], after [`registry_api::limits::forward_timeout`]: 15 s plus 2 s per remaining hop, or a blocking query's
//! wait + wait/16 + slack).

pub mod error;
pub mod forward;
pub mod gossip;
pub mod http;
pub mod members;
pub mod metrics;

use anyhow::Context as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use error::GatewayError;
pub use members::{GatewayEntry, MemberStatus, WanView};
pub use registry_api::auth::SharedKey;

/// How long a stopping gateway waits for its connections to finish before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A dead gateway is probed once per this many gossip intervals (live ones every interval).
const DEAD_PROBE_ROUNDS: u32 = 10;
/// Consul's `reconnect_timeout_wan` default.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(72 * 3600);

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
    /// A gateway not reached for this long is dead: still listed and probed (every tenth
    /// round), skipped for routing.
    pub dead_after: Duration,
    /// A gateway not reached for this long is forgotten: no longer listed, probed or passed on
    /// (Consul's `reconnect_timeout_wan`, 72 h).
    pub reconnect_timeout: Duration,
    /// The federation's shared key (`--encrypt`); `None` leaves WAN traffic unauthenticated.
    /// Its `Debug` prints no key material.
    pub encrypt: Option<SharedKey>,
    /// TLS: with a certificate the gateway serves only TLS on `listen` (mutual with
    /// `--verify-incoming`); with `--verify-outgoing` it dials gateways and servers over it.
    /// Gateways carry their DC's server certificate (`server.<dc>.<domain>`).
    pub tls: Option<Arc<registry_api::tls::Tls>>,
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
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            encrypt: None,
            tls: None,
        }
    }

    /// Rejects settings the gateway cannot run with; the text is shown to the operator.
    pub fn validate(&self) -> anyhow::Result<()> {
        registry_api::names::check_datacenter(&self.datacenter)
            .map_err(|e| anyhow::anyhow!("--datacenter {:?}: {e}", self.datacenter))?;
        if let Some(advertise) = &self.advertise {
            registry_api::names::check_gateway_addr(advertise)
                .map_err(|e| anyhow::anyhow!("--advertise {advertise:?}: {e}"))?;
        }
        for join in &self.retry_join_wan {
            registry_api::names::check_gateway_addr(join)
                .map_err(|e| anyhow::anyhow!("--retry-join-wan {join:?}: {e}"))?;
        }
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
        anyhow::ensure!(
            self.reconnect_timeout > self.dead_after,
            "reconnect timeout ({:?}) must exceed dead_after ({:?})",
            self.reconnect_timeout,
            self.dead_after
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
    /// Whether it serves TLS (then [`GatewayHandle::url`] is `https://`).
    serves_tls: bool,
    /// TLS, reloaded on SIGHUP by [`run`].
    tls: Option<Arc<registry_api::tls::Tls>>,
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
    /// `http://addr` (`https://` when it serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.serves_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
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
    if config.encrypt.is_some() {
        tracing::info!(dc = %config.datacenter, "WAN traffic is authenticated with the shared key");
    } else {
        // As Consul warns when gossip encryption is off.
        tracing::warn!(dc = %config.datacenter,
            "no --encrypt key: WAN gateway traffic is unauthenticated; anyone who can reach this gateway can join the federation and use it");
    }

    let me = GatewayEntry {
        dc: config.datacenter.clone(),
        addr: advertise,
    };
    let liveness = members::Liveness {
        dead_after: config.dead_after,
        dead_probe_every: config.gossip_interval * DEAD_PROBE_ROUNDS,
        reconnect_timeout: config.reconnect_timeout,
    };
    let members = Arc::new(Mutex::new(members::MemberTable::new(me, liveness)));
    let forwarder = forward::Forwarder::new(
        &config.servers,
        config.encrypt.clone(),
        config.tls.as_ref(),
        &config.datacenter,
    )
    .context("building the HTTP client")?;
    let (client, https) = forwarder.wan_client();
    let client = client.clone();
    let gateway = Arc::new(http::Gateway {
        dc: config.datacenter.clone(),
        members: members.clone(),
        forwarder,
        in_flight: Arc::new(Semaphore::new(forward::MAX_IN_FLIGHT)),
        shutdown: shutdown.clone(),
        key: config.encrypt.clone().map(Arc::new),
        metrics: Default::default(),
    });
    tracing::info!(dc = %config.datacenter, servers = ?config.servers, "forwarding to servers");

    let app = http::router(gateway.clone());
    let server_stop = shutdown.clone();
    let gate = registry_api::serve::ConnGate::new(registry_api::serve::ServeLimits::default());
    let serves_tls = config
        .tls
        .as_ref()
        .is_some_and(|t| t.settings().cert_file.is_some());
    let server = match config.tls.as_ref().filter(|_| serves_tls) {
        Some(tls) => {
            tracing::info!(dc = %config.datacenter, verify_incoming = tls.settings().verify_incoming, "serving TLS");
            tokio::spawn(registry_api::serve::serve_tls(
                listener,
                app,
                gate,
                tls.server_config()?,
                server_stop,
            ))
        }
        None => tokio::spawn(registry_api::serve::serve_with_gate(
            listener,
            app,
            gate,
            server_stop,
        )),
    };

    tracing::info!(dc = %config.datacenter, join = ?config.retry_join_wan, "joining the WAN");
    let gossip = tokio::spawn(gossip::run(
        members,
        client,
        https,
        config.encrypt.clone(),
        config.retry_join_wan.clone(),
        config.gossip_interval,
        shutdown.clone(),
    ));
    Ok(GatewayHandle {
        addr,
        serves_tls,
        tls: config.tls.clone(),
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
    let mut hangups = registry_api::process::hangups();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = registry_api::process::next_hangup(&mut hangups) => {
                if let Some(tls) = &handle.tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: TLS reload failed; the running certificates stay"),
                    }
                }
            }
        }
    }
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

    #[test]
    fn config_rejects_addresses_that_are_not_host_and_port_and_bad_dc_names() {
        let ok = || {
            let mut c = GatewayConfig::new("dc1");
            c.advertise = Some("10.0.0.1:8302".into());
            c.retry_join_wan = vec!["gw.dc2.example:8302".into(), "[::1]:8302".into()];
            c
        };
        assert!(ok().validate().is_ok());
        for bad in [
            "evil/x?y#:1",
            "http://gw:8302",
            "gw:8302/x",
            "gw",
            "user@gw:1",
        ] {
            let mut c = ok();
            c.retry_join_wan.push(bad.into());
            assert!(c.validate().is_err(), "{bad}");
            let mut c = ok();
            c.advertise = Some(bad.into());
            assert!(c.validate().is_err(), "{bad}");
        }
        for bad in ["", "dc 1", "dc/1"] {
            let mut c = ok();
            c.datacenter = bad.into();
            assert!(c.validate().is_err(), "{bad:?}");
        }
        let mut c = ok();
        c.reconnect_timeout = c.dead_after;
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_key_never_shows_in_the_config_debug() {
        let key = registry_api::auth::generate_key();
        let mut c = GatewayConfig::new("dc1");
        c.encrypt = Some(SharedKey::from_base64(&key).unwrap());
        let printed = format!("{c:?}");
        assert!(!printed.contains(&key), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
    }
}
