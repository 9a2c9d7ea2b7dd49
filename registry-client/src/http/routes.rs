//! The agent endpoints' handlers: decode the request ([`super::params`]), call the agent,
//! shape the answer as Consul does. A new endpoint family (metrics, reload, tokens) gets a
//! file of its own beside this one.
//!
//! Owns: request and response shapes of `/v1/agent/...`. Must not touch: the local state's
//! rules (the [`Agent`] methods enforce them).

use super::params::{body, enable_param, flag, required_body, value};
use super::HttpResult;
use crate::agent::Agent;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use registry_api::filter::{schemas, Filter, Schema};
use registry_api::{
    AgentMember, AgentSelf, AgentSelfConfig, CheckRegistration, CheckStatus, Error as ApiError,
    HealthCheck, Meta, Node, ServiceRegistration, CRITICAL, MEMBER_ALIVE, MEMBER_FAILED, PASSING,
    SERF_HEALTH_ID, WARNING,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Port reported for members: Consul's LAN gossip port.
const SERF_LAN_PORT: u16 = 8301;

/// The agent, as every handler's state.
type St = State<Arc<Agent>>;
/// The query string as pairs, in order (a key may repeat).
type Params = Query<Vec<(String, String)>>;

// Services.

pub(super) async fn service_register(
    State(agent): St,
    Query(q): Params,
    bytes: Bytes,
) -> HttpResult {
    let replace = flag(&q, "replace-existing-checks")?;
    let reg: ServiceRegistration = required_body(&bytes)?;
    agent.register_service(reg, replace).await?;
    Ok(StatusCode::OK.into_response())
}

pub(super) async fn service_deregister(State(agent): St, Path(id): Path<String>) -> HttpResult {
    agent.deregister_service(&id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/agent/services`, with Consul's `?filter=` over each service.
pub(super) async fn services(State(agent): St, Query(q): Params) -> HttpResult {
    let mut services = agent.services();
    if let Some(f) = filter(&q, schemas::AGENT_SERVICE)? {
        services.retain(|_, s| f.matches_item(s));
    }
    Ok(Json(services).into_response())
}

/// `?filter=` parsed against the endpoint's selectors; a bad one is a 400 with the reason,
/// an empty one is none (as in Consul).
fn filter(q: &[(String, String)], schema: Schema) -> Result<Option<Filter>, ApiError> {
    value(q, "filter")
        .filter(|f| !f.trim().is_empty())
        .map(|f| Filter::parse(f, schema).map_err(ApiError::BadRequest))
        .transpose()
}

pub(super) async fn service(State(agent): St, Path(id): Path<String>) -> HttpResult {
    let svc = agent
        .service(&id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    Ok(Json(svc).into_response())
}

// Checks.

/// `GET /v1/agent/checks`, with Consul's `?filter=` over each check.
pub(super) async fn checks(State(agent): St, Query(q): Params) -> HttpResult {
    let mut checks = agent.checks();
    if let Some(f) = filter(&q, schemas::HEALTH_CHECK)? {
        checks.retain(|_, c| f.matches_item(c));
    }
    Ok(Json(checks).into_response())
}

pub(super) async fn check_register(State(agent): St, bytes: Bytes) -> HttpResult {
    let def: CheckRegistration = required_body(&bytes)?;
    agent.register_check(def).await?;
    Ok(StatusCode::OK.into_response())
}

pub(super) async fn check_deregister(State(agent): St, Path(id): Path<String>) -> HttpResult {
    agent.deregister_check(&id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `pass`, `warn` and `fail` take the output from `?note=`.
fn ttl_note(agent: &Agent, id: &str, status: &str, q: &[(String, String)]) -> HttpResult {
    agent.update_ttl(id, status, value(q, "note").unwrap_or(""))?;
    Ok(StatusCode::OK.into_response())
}

pub(super) async fn check_pass(
    State(agent): St,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    ttl_note(&agent, &id, PASSING, &q)
}

pub(super) async fn check_warn(
    State(agent): St,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    ttl_note(&agent, &id, WARNING, &q)
}

pub(super) async fn check_fail(
    State(agent): St,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    ttl_note(&agent, &id, CRITICAL, &q)
}

/// Body of `PUT /v1/agent/check/update/:id`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CheckUpdateBody {
    /// New status.
    status: String,
    /// New output.
    output: String,
}

pub(super) async fn check_update(
    State(agent): St,
    Path(id): Path<String>,
    bytes: Bytes,
) -> HttpResult {
    let update: CheckUpdateBody = body(&bytes)?;
    // Consul's handler rejects unknown statuses before looking at the check.
    if update.status.parse::<CheckStatus>().is_err() {
        return Err(
            ApiError::BadRequest(format!("Invalid check status: '{}'", update.status)).into(),
        );
    }
    agent.update_ttl(&id, &update.status, &update.output)?;
    Ok(StatusCode::OK.into_response())
}

// Maintenance.

pub(super) async fn node_maintenance(State(agent): St, Query(q): Params) -> HttpResult {
    let enable = enable_param(&q)?;
    agent
        .set_node_maintenance(enable, value(&q, "reason").unwrap_or(""))
        .await?;
    Ok(StatusCode::OK.into_response())
}

pub(super) async fn service_maintenance(
    State(agent): St,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let enable = enable_param(&q)?;
    agent
        .set_service_maintenance(&id, enable, value(&q, "reason").unwrap_or(""))
        .await?;
    Ok(StatusCode::OK.into_response())
}

// Self, members, local health.

/// This agent as a member.
fn self_member(agent: &Agent) -> AgentMember {
    let config = agent.config();
    AgentMember {
        name: config.node.clone(),
        addr: config.advertise_addr.clone(),
        port: SERF_LAN_PORT,
        tags: member_tags(&config.datacenter, config.server),
        status: MEMBER_ALIVE,
    }
}

/// Serf tags as Consul sets them: the datacenter and the role.
fn member_tags(dc: &str, server: bool) -> Meta {
    let mut tags = Meta::new();
    tags.insert("dc".into(), dc.into());
    tags.insert("role".into(), if server { "consul" } else { "node" }.into());
    tags
}

pub(super) async fn agent_self(State(agent): St) -> HttpResult {
    let config = agent.config();
    let reply = AgentSelf {
        config: AgentSelfConfig {
            datacenter: config.datacenter.clone(),
            node_name: config.node.clone(),
            node_id: config.node_id.clone(),
            server: config.server,
            version: env!("CARGO_PKG_VERSION").into(),
        },
        member: self_member(&agent),
        stats: agent.stats(),
    };
    Ok(Json(reply).into_response())
}

/// `GET /v1/agent/members`. We have no gossip pool, so membership is derived from the
/// catalog: every node with a `serfHealth` check (which the servers keep from the agents'
/// heartbeats) is a member, alive while that check passes and failed when it is critical.
/// Nodes without it were registered through the catalog API, not by an agent, and are not
/// members (as in Consul).
pub(super) async fn members(State(agent): St) -> HttpResult {
    let servers = agent.servers();
    let nodes: Vec<Node> = servers.get_json("/v1/catalog/nodes").await?;
    let checks: Vec<HealthCheck> = servers.get_json("/v1/health/state/any").await?;
    let serf: BTreeMap<&str, &str> = checks
        .iter()
        .filter(|c| c.check_id == SERF_HEALTH_ID)
        .map(|c| (c.node.as_str(), c.status.as_str()))
        .collect();
    let dc = &agent.config().datacenter;
    let mut members: Vec<AgentMember> = nodes
        .iter()
        .filter_map(|n| {
            let status = serf.get(n.node.as_str())?;
            Some(AgentMember {
                name: n.node.clone(),
                addr: n.address.clone(),
                port: SERF_LAN_PORT,
                tags: member_tags(
                    if n.datacenter.is_empty() {
                        dc
                    } else {
                        &n.datacenter
                    },
                    false,
                ),
                status: if *status == CRITICAL {
                    MEMBER_FAILED
                } else {
                    MEMBER_ALIVE
                },
            })
        })
        .collect();
    let me = &agent.config().node;
    match members.iter_mut().find(|m| &m.name == me) {
        Some(m) => m.tags = self_member(&agent).tags,
        // Until the servers have seen our first heartbeat we are still a member, alive.
        None => members.push(self_member(&agent)),
    }
    Ok(Json(members).into_response())
}

pub(super) async fn health_by_name(State(agent): St, Path(name): Path<String>) -> HttpResult {
    let entries = agent.health_by_service_name(&name);
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!("ServiceName {name} Not Found")).into());
    }
    // Consul answers with the worst instance's status: 200 passing, 429 warning, 503 else.
    let code = entries
        .iter()
        .map(|e| match e.aggregated_status.as_str() {
            PASSING => StatusCode::OK,
            WARNING => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        })
        .max_by_key(|c| match *c {
            StatusCode::OK => 0,
            StatusCode::TOO_MANY_REQUESTS => 1,
            _ => 2,
        })
        .unwrap_or(StatusCode::OK);
    Ok((code, Json(entries)).into_response())
}
