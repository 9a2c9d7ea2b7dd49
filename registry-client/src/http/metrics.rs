//! `GET /v1/agent/metrics` (<https://developer.hashicorp.com/consul/api-docs/agent#view-metrics>):
//! this agent's metrics, and on a server the server's with them, as Consul's JSON or, with
//! `?format=prometheus`, as Prometheus text. Read-only and served to anyone, as Consul serves
//! it on its HTTP port: it tells counts and timings, never keys, values or tokens.
//!
//! Owns: the route's handler. Must not touch: the renderings (`registry_api::metrics`).

use crate::agent::Agent;
use axum::extract::{Query, State};
use axum::response::Response;
use std::sync::Arc;

pub(super) async fn metrics(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    agent.metrics().response(&q)
}
