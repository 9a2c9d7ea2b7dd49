//! `wan-gateway`: flags -> config -> `run(config, shutdown)`.

use clap::Parser;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use wan_gateway::GatewayConfig;

/// The WAN gateway. Every flag can also be set as REGISTRY_<FLAG>.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Datacenter.
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    datacenter: String,
    /// Listen address.
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "0.0.0.0:8302")]
    listen: SocketAddr,
    /// HTTP URL of one of this DC's servers (repeatable).
    #[arg(long, env = "REGISTRY_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// Address of any other gateway (repeatable).
    #[arg(long, env = "REGISTRY_RETRY_JOIN_WAN", value_delimiter = ',')]
    retry_join_wan: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let a = Args::parse();
    let config = GatewayConfig {
        datacenter: a.datacenter,
        listen: a.listen,
        servers: a.server,
        retry_join_wan: a.retry_join_wan,
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    wan_gateway::run(config, shutdown).await
}
