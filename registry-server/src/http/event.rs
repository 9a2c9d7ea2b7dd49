//! `/v1/event/*` (<https://developer.hashicorp.com/consul/api-docs/event>):
//! fire records an event through Raft (`state/events.rs` keeps the
//! datacenter's last 256); list answers the events meant for one agent (this
//! server's own, or, on `/v1/internal/event/list/:node`, the agent that asks
//! for its node) from this server's applied state, as Consul's agent answers
//! from the events it has seen: no consistency modes, and a blocking wait
//! that ends when the index differs from the caller's (it is the last event's
//! ID folded to 64 bits, not a Raft index, so it does not grow). Must not
//! decide which agent an event is for (`registry_api::event`).

use super::params::{read_params, value};
use super::{json, json_response, HttpResult, Params, St};
use crate::state::{Command, StateStore};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Authz, Resource};
use registry_api::event::{event_index, validate_fire, EventTargets, UserEvent};
use registry_api::Error as ApiError;
use std::collections::HashMap;
use std::time::Instant;

/// `PUT /v1/event/fire/:name` with `?node=`, `?service=`, `?tag=` (regexes)
/// and the payload as the body: the recorded event.
pub(super) async fn event_fire(
    State(st): St,
    auth: Authorized,
    Path(name): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> HttpResult {
    let filter = |k| value(&q, k).unwrap_or_default().to_string();
    let mut event = UserEvent {
        // Chosen here, before the proposal: every replica records the same ID.
        id: registry_api::ids::new_uuid(),
        name,
        payload: (!body.is_empty()).then(|| body.to_vec()),
        node_filter: filter("node"),
        service_filter: filter("service"),
        tag_filter: filter("tag"),
        version: 1,
        ltime: 0,
    };
    validate_fire(&event).map_err(ApiError::BadRequest)?;
    auth.require(Resource::Event, &event.name, Access::Write)?;
    st.raft.propose(Command::FireEvent(event.clone())).await?;
    // Consul answers with the event as sent, before any agent has seen it:
    // its Lamport time is not known to the caller yet.
    event.ltime = 0;
    json(&st, &event)
}

/// `GET /v1/event/list` on a server: the events meant for this server's own
/// agent, `?name=` to keep one name.
pub(super) async fn event_list(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    let node = st.node.clone();
    list_for(&st, &auth, &node, &q).await
}

/// `GET /v1/internal/event/list/:node`: what `GET /v1/event/list` answers on
/// the agent of `node` (the standalone agent asks for it: which events are
/// its own depends on its services, which this server's catalog holds).
pub(super) async fn event_list_for_node(
    State(st): St,
    auth: Authorized,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    list_for(&st, &auth, &node, &q).await
}

/// The events for the agent of `node`, oldest first, with the index Consul's
/// clients expect; with `?index=`, waits until that index differs. A wait
/// looks again after each applied entry, but works out the list again only
/// when the ring or the services have changed, and compiles each event's
/// filters once per request.
async fn list_for(
    st: &super::AppState,
    auth: &Authz,
    node: &str,
    q: &[(String, String)],
) -> HttpResult {
    let params = read_params(q)?;
    let name = value(q, "name").filter(|n| !n.is_empty());
    let deadline = params.blocking.map(|b| Instant::now() + b.wait);
    let mut changes = st.raft.applied_changes();
    let mut targets = Targets::new();
    let mut seen: Option<(Option<u64>, u64)> = None;
    let mut events = Vec::new();
    loop {
        changes.borrow_and_update();
        let now = st.raft.with_applied(|s: &StateStore, _| {
            let last = s.events.events().next_back().map(|e| e.ltime);
            (last, s.catalog.services_index())
        });
        if seen != Some(now) {
            events = events_for(st, node, name, &mut targets);
            seen = Some(now);
        }
        let index = event_index(events.last().map(|e| e.id.as_str()));
        let waiting = match (params.blocking, deadline) {
            (Some(b), Some(deadline)) => {
                index == b.min_index && Instant::now() < deadline && !st.shutdown.is_cancelled()
            }
            _ => false,
        };
        if !waiting {
            // Consul's `filterEvents`: the events whose name the token may read (the index is
            // still the last event's, as Consul's agent computes it before filtering).
            let mut shown = events.clone();
            let dropped = super::acl_retain(auth, &mut shown, |e| {
                auth.allows(Resource::Event, &e.name, Access::Read)
            });
            let body = serde_json::to_vec(&shown).map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut resp = json_response(st, body, Some(index));
            if dropped {
                resp.headers_mut().insert(
                    registry_api::acl::FILTERED_HEADER,
                    axum::http::HeaderValue::from_static("true"),
                );
            }
            return Ok(resp);
        }
        let deadline = deadline.unwrap_or_else(Instant::now);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = st.shutdown.cancelled() => {}
        }
    }
}

/// Compiled filters by event ID, for one request (at most the ring's size).
type Targets = HashMap<String, Option<EventTargets>>;

/// The recorded events the agent of `node` would have processed (Consul's
/// `shouldProcessUserEvent`, over that node's services in the catalog),
/// named `name` if given. Only the copying happens under the applied-state
/// lock; the filters are compiled (once each, kept in `targets`) and run
/// after it is released.
fn events_for(
    st: &super::AppState,
    node: &str,
    name: Option<&str>,
    targets: &mut Targets,
) -> Vec<UserEvent> {
    let (events, services) = st.raft.with_applied(|s: &StateStore, _| {
        let events: Vec<UserEvent> = s
            .events
            .events()
            .filter(|e| name.is_none_or(|n| e.name == n))
            .cloned()
            .collect();
        let (services, _) = s.catalog.node_service_list(node);
        (events, services.map(|l| l.services).unwrap_or_default())
    });
    targets.retain(|id, _| events.iter().any(|e| &e.id == id));
    events
        .into_iter()
        .filter(|e| {
            // Recorded events' filters compiled when they were fired; one
            // that no longer does (another regex version) reaches nobody.
            let t = targets
                .entry(e.id.clone())
                .or_insert_with(|| EventTargets::of(e).ok());
            t.as_ref().is_some_and(|t| {
                t.include(
                    node,
                    services
                        .iter()
                        .map(|s| (s.id.as_str(), s.service.as_str(), s.tags.as_slice())),
                )
            })
        })
        .collect()
}
