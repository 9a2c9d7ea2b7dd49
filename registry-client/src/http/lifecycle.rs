//! The agent's lifecycle endpoints, Consul's codes and texts
//! (<https://developer.hashicorp.com/consul/api-docs/agent>): `PUT /v1/agent/reload`,
//! `PUT /v1/agent/leave`, `PUT /v1/agent/force-leave/:node[?prune]`,
//! `PUT /v1/agent/join/:address` and `GET /v1/agent/monitor[?loglevel=&logjson]`.
//!
//! `?wan` on join and force-leave is refused with a 400: the WAN here is the gateways'
//! (`wan-gateway --retry-join-wan`), agents and servers are on the LAN only.
//!
//! Owns: the mapping of these requests to the agent's operations ([`crate::agent`]) and the
//! monitor's response. Must not touch: the steps themselves, or the log stream's plumbing
//! ([`registry_api::logs`]).

use super::acl::{require_agent, RequestToken};
use super::params::value;
use super::HttpResult;
use crate::agent::Agent;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Scalar};
use registry_api::logs::{LogStream, MonitorLevel};
use registry_api::Error as ApiError;
use std::sync::Arc;

/// The agent, as every handler's state.
type St = State<Arc<Agent>>;
/// The query string as pairs, in order.
type Params = Query<Vec<(String, String)>>;

/// Why `?wan` is refused (joins and force-leaves of the WAN pool).
const WAN_REFUSED: &str = "WAN membership is the WAN gateways' (wan-gateway --retry-join-wan): \
                           agents and servers join and leave the LAN only";

/// `PUT /v1/agent/reload`: 200 and an empty body once reloaded. Reload, leave and join need
/// `agent:write` on this node; force-leave, `operator:write` (Consul's rules).
pub(super) async fn reload(State(agent): St, auth: Authorized) -> HttpResult {
    require_agent(&agent, &auth, Access::Write)?;
    agent.reload().await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/leave`: 200 and an empty body, then the process stops.
pub(super) async fn leave(State(agent): St, auth: Authorized) -> HttpResult {
    require_agent(&agent, &auth, Access::Write)?;
    agent.leave().await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/force-leave/:node[?prune][?wan]`.
pub(super) async fn force_leave(
    State(agent): St,
    auth: Authorized,
    RequestToken(token): RequestToken,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    auth.require_scalar(Scalar::Operator, Access::Write)?;
    if q.iter().any(|(k, _)| k == "wan") {
        return Err(ApiError::BadRequest(WAN_REFUSED.into()).into());
    }
    // Consul reads `prune` by presence (`_, prune := query["prune"]`).
    let prune = q.iter().any(|(k, _)| k == "prune");
    agent.force_leave(&node, prune, token.as_deref()).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/join/:address[?wan]`.
pub(super) async fn join(
    State(agent): St,
    auth: Authorized,
    Path(address): Path<String>,
    Query(q): Params,
) -> HttpResult {
    require_agent(&agent, &auth, Access::Write)?;
    // Consul reads `wan` by value (`query.Get("wan") != ""`): an empty one is the LAN.
    if value(&q, "wan").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::BadRequest(WAN_REFUSED.into()).into());
    }
    agent.join(&address).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/agent/monitor[?loglevel=][&logjson]`: this process's log lines as they happen,
/// streamed until the client goes (see [`registry_api::logs`]). Needs `agent:read`.
pub(super) async fn monitor(
    State(agent): St,
    auth: Authorized,
    Query(q): Params,
) -> HttpResult<Response> {
    require_agent(&agent, &auth, Access::Read)?;
    let level =
        MonitorLevel::parse(value(&q, "loglevel").unwrap_or("")).map_err(ApiError::BadRequest)?;
    let json = q.iter().any(|(k, _)| k == "logjson");
    let body = LogStream::global()
        .subscribe(level, json)
        .map_err(|e| ApiError::TooManyRequests(e.to_string()))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::new(body),
    )
        .into_response())
}
