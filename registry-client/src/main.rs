//! `registry-client`: flags -> config -> `run(config, shutdown)`.

use clap::Parser;
use registry_client::ClientConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The client agent on an application host. Every flag can also be set as
/// REGISTRY_<FLAG> (lists comma-separated), e.g. REGISTRY_RETRY_JOIN=s1:8300,s2:8300.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Node name (default: the hostname).
    #[arg(long, env = "REGISTRY_NODE")]
    node: Option<String>,
    /// Datacenter.
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    datacenter: String,
    /// Directory for the agent's local state (services and checks survive restarts).
    #[arg(long, env = "REGISTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API listen address.
    #[arg(long, env = "REGISTRY_HTTP_ADDR", default_value = "127.0.0.1:8500")]
    http_addr: SocketAddr,
    /// This node's address as registered in the catalog.
    #[arg(long, env = "REGISTRY_ADVERTISE", default_value = "127.0.0.1")]
    advertise: String,
    /// A server's RPC address HOST:PORT (repeatable).
    #[arg(long, env = "REGISTRY_RETRY_JOIN", value_delimiter = ',')]
    retry_join: Vec<String>,
    /// Development mode: without --retry-join, use a local `registry-server --dev`
    /// (127.0.0.1:8300).
    #[arg(long, env = "REGISTRY_DEV")]
    dev: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // As Go raises it for Consul: the soft open-file limit up to the hard one
    // (each HTTP connection, blocking queries above all, holds a descriptor).
    registry_api::serve::raise_fd_limit();
    let a = Args::parse();
    let mut config = ClientConfig::new(
        a.node
            .unwrap_or_else(|| registry_client::hostname_or("registry-client")),
    );
    config.datacenter = a.datacenter;
    config.data_dir = a.data_dir;
    config.http_addr = a.http_addr;
    config.advertise_addr = a.advertise;
    config.retry_join = a.retry_join;
    config.dev = a.dev;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        registry_client::shutdown_signal().await;
        signal.cancel();
    });
    registry_client::run(config, shutdown).await
}
