//! `registry-client`: flags -> config -> `run(config, shutdown)`.

use clap::Parser;
use registry_client::ClientConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The client agent. Every flag can also be set as REGISTRY_<FLAG>.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Node name (default: the hostname).
    #[arg(long, env = "REGISTRY_NODE", default_value = "client")]
    node: String,
    /// Datacenter.
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    datacenter: String,
    /// Directory for the agent's local state.
    #[arg(long, env = "REGISTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API listen address.
    #[arg(long, env = "REGISTRY_HTTP_ADDR", default_value = "127.0.0.1:8500")]
    http_addr: SocketAddr,
    /// A server's RPC address (repeatable).
    #[arg(long, env = "REGISTRY_RETRY_JOIN", value_delimiter = ',')]
    retry_join: Vec<String>,
    /// Development mode.
    #[arg(long, env = "REGISTRY_DEV")]
    dev: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let a = Args::parse();
    let config = ClientConfig {
        node: a.node,
        datacenter: a.datacenter,
        data_dir: a.data_dir,
        http_addr: a.http_addr,
        retry_join: a.retry_join,
        dev: a.dev,
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    registry_client::run(config, shutdown).await
}
