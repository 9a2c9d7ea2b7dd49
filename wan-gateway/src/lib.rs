//! `wan-gateway`: federates datacenters.
//!
//! Skeleton only: it parses its configuration and serves a listener that
//! answers every request with 501 until federation is built (issue [3]).

use axum::http::StatusCode;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// The gateway's configuration (DESIGN §3).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Datacenter this gateway serves.
    pub datacenter: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// This DC's servers' HTTP URLs.
    pub servers: Vec<String>,
    /// Other gateways to join the WAN through.
    pub retry_join_wan: Vec<String>,
}

/// Serves until `shutdown` fires.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::warn!(dc = %config.datacenter, "wan-gateway is a skeleton: every request gets 501");
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::NOT_IMPLEMENTED,
            "wan-gateway is not implemented yet",
        )
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
