//! `GET /v1/event/list` on an agent: the events meant for THIS agent (Consul's agent lists
//! the events it has processed, those whose node, service and tag filters match it). The
//! servers keep the datacenter's recent events and this agent's services (anti-entropy puts
//! them in the catalog), so the agent asks a server for its own node's view,
//! `/v1/internal/event/list/:node`, with the caller's `?name=` and blocking terms. Firing
//! needs nothing of the agent and is forwarded like any request.
//!
//! Owns: that one rewrite. Must not touch: which events match an agent
//! ([`registry_api::event`]) or how the request travels ([`super::forward`]).

use super::forward::relay;
use super::HttpResult;
use crate::agent::Agent;
use crate::anti_entropy::encode_segment;
use axum::extract::{Request, State};
use std::sync::Arc;

/// Relays the list to a server as this node's view. `?dc=` is dropped: the list is this
/// agent's, whatever datacenter a caller names (Consul's agent ignores it too).
pub(super) async fn list(State(agent): State<Arc<Agent>>, req: Request) -> HttpResult {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let mut path = format!(
        "/v1/internal/event/list/{}",
        encode_segment(&agent.config().node)
    );
    let kept: Vec<_> = query.into_iter().filter(|(k, _)| k != "dc").collect();
    if !kept.is_empty() {
        path.push('?');
        path.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish(),
        );
    }
    relay(agent.servers(), req, &path).await
}
