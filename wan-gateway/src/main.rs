//! `wan-gateway`: flags -> config -> `run(config, shutdown)`.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wan_gateway::GatewayConfig;

/// The WAN gateway: federates this datacenter with the others. Every flag can also be set as
/// REGISTRY_<FLAG> (lists comma-separated).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Datacenter this gateway serves.
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    datacenter: String,
    /// Address to listen on (HTTP from this DC's servers and from other gateways).
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "0.0.0.0:8302")]
    listen: SocketAddr,
    /// HOST:PORT other gateways use to reach this one (default: the listen address, with
    /// 127.0.0.1 for 0.0.0.0).
    #[arg(long, env = "REGISTRY_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP URL of one of this DC's servers (repeatable).
    #[arg(long, env = "REGISTRY_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// HOST:PORT of any other gateway, in any DC, to join the WAN through (repeatable).
    #[arg(long, env = "REGISTRY_RETRY_JOIN_WAN", value_delimiter = ',')]
    retry_join_wan: Vec<String>,
    /// Time between membership exchanges with every known gateway (Go duration).
    #[arg(long, env = "REGISTRY_GOSSIP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    gossip_interval: Duration,
    /// A gateway not reached for this long is dead (Go duration).
    #[arg(long, env = "REGISTRY_DEAD_AFTER", default_value = "5s", value_parser = parse_duration)]
    dead_after: Duration,
}

/// Parses a Go duration (`500ms`, `1m30s`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    registry_api::duration::parse(s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // As Go raises it for Consul: the soft open-file limit up to the hard one
    // (each HTTP connection, blocking queries above all, holds a descriptor).
    registry_api::serve::raise_fd_limit();
    let a = Args::parse();
    let config = GatewayConfig {
        advertise: a.advertise,
        listen: a.listen,
        servers: a.server,
        retry_join_wan: a.retry_join_wan,
        gossip_interval: a.gossip_interval,
        dead_after: a.dead_after,
        ..GatewayConfig::new(a.datacenter)
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    let result = wan_gateway::run(config, shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    let _ = signals.await;
    result
}

/// Waits for Ctrl-C (a terminal) or SIGTERM (`docker stop`).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
