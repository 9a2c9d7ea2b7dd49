//! `registry-client`: the agent on every application host.
//!
//! Skeleton only: it parses its configuration and serves an HTTP listener that
//! answers every request with 501 until the agent is built (issue [2]).

use axum::http::StatusCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The agent's configuration (DESIGN §3).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Node name.
    pub node: String,
    /// Datacenter.
    pub datacenter: String,
    /// Where local services and checks are persisted.
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Servers' RPC addresses.
    pub retry_join: Vec<String>,
    /// Development mode.
    pub dev: bool,
}

/// Serves until `shutdown` fires.
pub async fn run(config: ClientConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    tracing::warn!(node = %config.node, "registry-client is a skeleton: every request gets 501");
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::NOT_IMPLEMENTED,
            "registry-client is not implemented yet",
        )
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
