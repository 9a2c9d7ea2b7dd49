//! `GET /v1/agent/metrics` (<https://developer.hashicorp.com/consul/api-docs/agent#view-metrics>):
//! this agent's metrics, and on a server the server's with them, as Consul's JSON or, with
//! `?format=prometheus`, as Prometheus text. Needs `agent:read` on this node, as Consul's
//! (with ACLs off, served to anyone): it tells counts and timings, never keys, values or
//! tokens.
//!
//! Owns: the route's handler. Must not touch: the renderings (`registry_api::metrics`).

use super::acl::require_agent;
use super::HttpResult;
use crate::agent::Agent;
use axum::extract::{Query, State};
use registry_api::acl::extract::Authorized;
use registry_api::acl::Access;
use std::sync::Arc;

pub(super) async fn metrics(
    State(agent): State<Arc<Agent>>,
    auth: Authorized,
    Query(q): Query<Vec<(String, String)>>,
) -> HttpResult {
    require_agent(&agent, &auth, Access::Read)?;
    Ok(agent.metrics().response(&q))
}
