//! How a server gets something done by its leader: the one way a server sends a request to
//! the leader's HTTP port ([`call_leader`]; the operator endpoints pass leader-only requests
//! on with it and a leaving server asks the leader to remove it), and handing leadership from
//! this server to another ([`hand_over_leadership`]; `transfer-leader` and a leaving leader).
//!
//! Owns: reaching the leader and waiting for a hand-over to finish. Must not touch: what the
//! requests mean (the HTTP handlers and `crate::lifecycle` decide) or Raft's internals (only
//! [`RaftHandle`]).

use crate::raft::{RaftError, RaftHandle, RaftStatus};
use axum::http::{header, HeaderValue, Method, StatusCode};
use registry_api::Error as ApiError;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Marks a request one server passed to its leader, so that a server that is
/// no longer leader when it arrives answers rather than passing it on again.
pub const FORWARDED_HEADER: &str = "x-registry-forwarded-to-leader";

/// How long a request to the leader may take in all.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Hands leadership from this server (the leader) to `target` (or the most
/// up-to-date other voter) and waits until another server leads; Consul's
/// errors when it cannot (no other voter, or no new leader in time).
pub async fn hand_over_leadership(raft: &RaftHandle, target: Option<u64>) -> Result<(), ApiError> {
    let me = raft.with_status(|s| s.id);
    let to = raft.transfer_leader(target).await.map_err(|e| match e {
        // Consul's wording: hashicorp/raft's reason behind its own prefix.
        RaftError::Rejected(reason) => {
            ApiError::Internal(format!("Error transferring leadership: {reason}"))
        }
        e => e.into(),
    })?;
    // raft-rs gives up a transfer after an election timeout; wait a little
    // longer than that for the new leader to win its election.
    let tuning = raft.tuning();
    let deadline = Instant::now() + tuning.election_timeout() * 3;
    loop {
        let (leader, fatal) = raft.with_status(|s| (s.leader_id, s.fatal.is_some()));
        if leader != 0 && leader != me {
            info!(from = me, to, leader, "leadership transferred");
            return Ok(());
        }
        if fatal || Instant::now() >= deadline {
            return Err(ApiError::Internal(
                "Error transferring leadership: leadership transfer timeout".into(),
            ));
        }
        tokio::time::sleep(tuning.tick).await;
    }
}

/// The leader's answer to [`call_leader`].
pub struct LeaderAnswer {
    /// Its status.
    pub status: StatusCode,
    /// Its content type, if it gave one.
    pub content_type: Option<HeaderValue>,
    /// Its body.
    pub body: axum::body::Bytes,
}

/// Sends `method path` (with a JSON `body`) to the HTTP port of the leader
/// that `s` names, marked as passed on once. `No cluster leader` when `s`
/// names none or names this server. The answer is read up to
/// [`registry_api::forward::MAX_ANSWER`], as every forwarded answer.
pub async fn call_leader(
    s: &RaftStatus,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<LeaderAnswer, ApiError> {
    if s.leader_id == 0 || s.leader_id == s.id {
        return Err(ApiError::NoLeader);
    }
    let Some(leader) = s.peers.get(&s.leader_id) else {
        return Err(ApiError::NoLeader);
    };
    let base = leader_http_base(&leader.http_addr, &leader.rpc_addr).ok_or_else(|| {
        ApiError::Internal(format!("leader {} has no usable HTTP address", leader.node))
    })?;
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        registry_api::tls::client_builder(None)
            .timeout(LEADER_TIMEOUT)
            .build()
            .unwrap_or_default()
    });
    let mut req = client
        .request(method, format!("{base}{path}"))
        .header(FORWARDED_HEADER, "1");
    if let Some(body) = body {
        req = req
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let resp = req.send().await.map_err(|e| {
        warn!(leader = %leader.node, error = %e, "could not pass a request to the leader");
        ApiError::Internal(format!("failed to reach the leader {}: {e}", leader.node))
    })?;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = registry_api::forward::read_body(resp, registry_api::forward::MAX_ANSWER)
        .await
        .map_err(|e| ApiError::Internal(format!("failed to read the leader's answer: {e}")))?;
    Ok(LeaderAnswer {
        status,
        content_type,
        body: body.into(),
    })
}

/// `http://host:port` of a server's HTTP port: its advertised HTTP address,
/// with the RPC address's host when it listens on every interface.
fn leader_http_base(http_addr: &str, rpc_addr: &str) -> Option<String> {
    let http: SocketAddr = http_addr.parse().ok()?;
    if !http.ip().is_unspecified() {
        return Some(format!("http://{http}"));
    }
    let host = rpc_addr.rsplit_once(':').map(|(h, _)| h)?;
    Some(format!("http://{host}:{}", http.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_reached_on_its_http_port() {
        assert_eq!(
            leader_http_base("127.0.0.1:8500", "10.0.0.1:8300").as_deref(),
            Some("http://127.0.0.1:8500")
        );
        assert_eq!(
            leader_http_base("0.0.0.0:8500", "10.0.0.1:8300").as_deref(),
            Some("http://10.0.0.1:8500")
        );
    }
}
