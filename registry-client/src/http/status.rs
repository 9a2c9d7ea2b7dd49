//! `GET /v1/status/leader` on a client agent: the servers' answer, except that a new agent
//! names no leader (`""`) until its own node and `serfHealth` are in the catalog. Clients and
//! test harnesses wait for a leader and then read, expecting the agent's own node (Consul's
//! agent is in the catalog once its servers' leader has reconciled it as a member); the
//! servers hold their own answer back until their leader is in the catalog, and this is the
//! same rule for an agent joining a running cluster.
//!
//! Owns: that one rule. Must not touch: how the request travels ([`super::forward`]).

use super::forward::{path_and_query, relay};
use super::HttpResult;
use crate::agent::Agent;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::Arc;

/// Longest leader answer read back here (a JSON string of an address).
const MAX_LEADER_ANSWER: usize = 4 << 10;

/// Relays the question, and answers `""` instead of a leader while this node is not yet in
/// the catalog. A question about another datacenter (`?dc=`) is passed on as it is.
pub(super) async fn leader(State(agent): State<Arc<Agent>>, req: Request) -> HttpResult {
    let path_and_query = path_and_query(req.uri());
    let other_dc = registry_api::names::requested_dc(req.uri().query())
        .is_some_and(|dc| dc != agent.config().datacenter);
    let answer = relay(agent.servers(), req, &path_and_query).await?;
    if other_dc || agent.in_catalog() || answer.status() != StatusCode::OK {
        return Ok(answer);
    }
    let (mut parts, body) = answer.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let bytes = axum::body::to_bytes(body, MAX_LEADER_ANSWER)
        .await
        .unwrap_or_default();
    let named = serde_json::from_slice::<String>(&bytes).is_ok_and(|l| !l.is_empty());
    let body = if named && agent.confirm_in_catalog().await {
        bytes
    } else {
        axum::body::Bytes::from_static(b"\"\"")
    };
    Ok(Response::from_parts(parts, Body::from(body)))
}
