//! `PUT /v1/session/create` through an agent: a session belongs to a node, and one created
//! through an agent without naming one is the agent's (Consul's agent fills in its own node
//! name, <https://developer.hashicorp.com/consul/api-docs/session>), not the server's that
//! happens to answer. The body gets this agent's node when it names none
//! ([`registry_api::kv::with_default_node`], the one copy of that rule) and then goes on like
//! every other forwarded request.
//!
//! Owns: that one default. Must not touch: the session's other rules (the server's) or how
//! requests are forwarded ([`super::forward`]).

use super::forward::{path_and_query, relay};
use super::HttpResult;
use crate::agent::Agent;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use registry_api::limits::MAX_BODY;
use registry_api::Error as ApiError;
use std::sync::Arc;

/// Fills in `Node` and forwards the create to a server.
pub(super) async fn create(State(agent): State<Arc<Agent>>, req: Request) -> HttpResult {
    let (mut parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::TooLarge(format!(
            "Request body too large, max size: {MAX_BODY} bytes"
        ))
    })?;
    let body = registry_api::kv::with_default_node(&body, &agent.config().node)
        .map_err(ApiError::BadRequest)?;
    parts.headers.remove(header::CONTENT_LENGTH);
    let path_and_query = path_and_query(&parts.uri);
    let req = Request::from_parts(parts, Body::from(body));
    relay(agent.servers(), req, &path_and_query).await
}
