//! The leader's ACL duties (Consul's `leader.go` `initializeACLs` and `acl_replication.go`):
//! in the primary datacenter, install `--acl-initial-management-token` once; in a secondary,
//! replicate the primary's policies, roles and global tokens with a blocking-query loop through
//! the gateways, proposing a change only when the primary's differ from ours. The replica is
//! this datacenter's own state, so tokens keep resolving while the primary is unreachable
//! (Consul's `down_policy = "extend-cache"`). Decides from the applied state and writes only
//! through proposals; the HTTP side (`http/acl.rs`) serves what the loop reads.

use crate::http::AppState;
use crate::raft::Role;
use crate::state::acl::{AclBootstrapRequest, AclReplicateRequest};
use crate::state::Command;
use axum::http::{HeaderMap, HeaderValue, Method};
use registry_api::acl::{AclToken, TOKEN_HEADER};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often a server looks whether it leads (and has ACL work to do).
const TICK: Duration = Duration::from_secs(1);
/// How long one replication query may block at the primary.
const REPLICATION_WAIT: &str = "30s";
/// Longest pause after a failed replication round.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs on every server until shutdown; acts only while this server leads.
pub async fn run(app: Arc<AppState>, shutdown: CancellationToken) {
    if !app.acl.enabled() {
        return;
    }
    let mut last_index = 0u64;
    let mut backoff = TICK;
    let mut warned_no_token = false;
    loop {
        let pause = if leading(&app) {
            if app.acl.is_primary() {
                install_initial_management(&app).await;
                TICK
            } else {
                match replicate_once(&app, last_index, &mut warned_no_token).await {
                    Ok(Some(index)) => {
                        last_index = index;
                        backoff = TICK;
                        Duration::ZERO
                    }
                    Ok(None) => TICK,
                    Err(e) => {
                        warn!(error = %e, "ACL replication from the primary failed; retrying");
                        last_index = 0;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        backoff
                    }
                }
            }
        } else {
            last_index = 0;
            TICK
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn leading(app: &AppState) -> bool {
    app.raft
        .with_status(|s| s.role == Role::Leader && s.leader_ready)
}

/// Installs the configured initial management token if no token has its secret.
async fn install_initial_management(app: &AppState) {
    let Some(secret) = app.acl.config().initial_management.clone() else {
        return;
    };
    let exists = app
        .raft
        .with_applied(|s, _| s.acl.token_by_secret(&secret).is_some());
    if exists {
        return;
    }
    let token = AclToken {
        accessor_id: registry_api::ids::new_uuid(),
        secret_id: secret,
        description: "Initial Management Token".into(),
        ..Default::default()
    };
    match app
        .raft
        .propose(Command::AclBootstrap(AclBootstrapRequest {
            token,
            from_config: true,
        }))
        .await
    {
        Ok(_) => info!("installed the initial management token from the configuration"),
        Err(e) => debug!(error = %e, "could not install the initial management token yet"),
    }
}

/// One blocking round against the primary: `Some(index)` the primary's ACL index after it
/// (a change applied if there was one), `None` when there is nothing to do (no token).
async fn replicate_once(
    app: &AppState,
    last_index: u64,
    warned_no_token: &mut bool,
) -> Result<Option<u64>, String> {
    let Some(token) = app.acl.replication_token() else {
        if !*warned_no_token {
            warn!(
                "ACLs are on in a secondary datacenter without a replication token \
                 (--acl-replication-token, or PUT /v1/agent/token/replication): tokens and \
                 policies of the primary are not replicated here until one is set"
            );
            *warned_no_token = true;
        }
        return Ok(None);
    };
    let primary = app.acl.config().primary(&app.datacenter).to_string();
    let path = format!(
        "/v1/internal/acl/replication?dc={primary}&index={last_index}&wait={REPLICATION_WAIT}"
    );
    let mut headers = HeaderMap::new();
    let mut value = HeaderValue::from_str(&token).map_err(|_| "bad replication token")?;
    value.set_sensitive(true);
    headers.insert(TOKEN_HEADER, value);
    let resp = app
        .wan
        .forward(Method::GET, &path, &headers, Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let body = axum::body::to_bytes(resp.into_body(), registry_api::forward::MAX_ANSWER)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "the primary answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let replica: AclReplicateRequest =
        serde_json::from_slice(&body).map_err(|e| format!("bad replica: {e}"))?;
    let differs = app
        .raft
        .with_applied(|s, _| s.acl.replica_differs(&replica));
    if differs && leading(app) {
        app.raft
            .propose(Command::AclReplicate(replica))
            .await
            .map_err(|e| e.to_string())?;
        info!(primary_index = index, "replicated ACLs from the primary");
    }
    Ok(Some(index))
}
