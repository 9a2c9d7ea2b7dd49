//! The agent's HTTP API (`/v1/agent/...`, Consul's shapes and status codes:
//! <https://developer.hashicorp.com/consul/api-docs/agent>) and, for the standalone client,
//! forwarding of every other request to a server.
//!
//! - this file: the two routers;
//! - `acl`: the standalone agent's auth step, the `default` token, the rights the handlers
//!   share and `PUT /v1/agent/token/:type`;
//! - `routes`: the agent endpoints' handlers;
//! - `info`: version, host, and local health by service id and name;
//! - `lifecycle`: reload, leave, force-leave, join and monitor;
//! - `metrics`: `/v1/agent/metrics` (a server's with its agent's);
//! - `params`: query and body decoding shared by the handlers;
//! - `session`: session create, which gets this agent's node before it is forwarded;
//! - `event`: the event list, which a server answers for this agent's node;
//! - `status`: the leader, named once this node is in the catalog;
//! - `forward`: the fallback that proxies everything else to a server;
//! - `coalesce`: one request to a server for identical blocking queries in flight.
//!
//! Errors become responses in one place for every process, [`registry_api::http_error`]: a
//! status from [`registry_api::Error::status`] and a plain-text body.
//!
//! Owns: the mapping between HTTP and the agent's operations. Must not touch: the local
//! state's rules (they are in [`crate::agent`]) or server failover (that is
//! [`crate::servers`]).

mod acl;
mod coalesce;
mod event;
mod forward;
mod info;
mod lifecycle;
mod metrics;
mod params;
mod routes;
mod session;
mod status;

use crate::agent::Agent;
use crate::servers::{PoolError, ServerPool};
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, put};
use axum::Router;
use registry_api::http_error::{plain_text_errors, HttpError};
use registry_api::limits::MAX_BODY;
use registry_api::Error as ApiError;
use std::sync::Arc;

impl From<PoolError> for HttpError {
    fn from(e: PoolError) -> Self {
        HttpError(ApiError::Internal(e.to_string()))
    }
}

/// What a handler returns: a response, or an error that [`HttpError`] turns into one.
type HttpResult<T = Response> = Result<T, HttpError>;

/// Router with only the agent endpoints; a server merges it into its own. It has no auth
/// step of its own: each router it is part of resolves tokens first (the server's, or
/// [`client_router`]'s), and a handler without one refuses ([`registry_api::acl::extract`]).
pub fn agent_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/agent/service/register", put(routes::service_register))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(routes::service_deregister),
        )
        .route("/v1/agent/services", get(routes::services))
        .route("/v1/agent/service/{id}", get(routes::service))
        .route("/v1/agent/checks", get(routes::checks))
        .route("/v1/agent/check/register", put(routes::check_register))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(routes::check_deregister),
        )
        .route("/v1/agent/check/pass/{id}", put(routes::check_pass))
        .route("/v1/agent/check/warn/{id}", put(routes::check_warn))
        .route("/v1/agent/check/fail/{id}", put(routes::check_fail))
        .route("/v1/agent/check/update/{id}", put(routes::check_update))
        .route("/v1/agent/maintenance", put(routes::node_maintenance))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(routes::service_maintenance),
        )
        .route("/v1/agent/self", get(routes::agent_self))
        .route("/v1/agent/members", get(routes::members))
        .route(
            "/v1/agent/health/service/name/{name}",
            get(info::health_by_name),
        )
        .route("/v1/agent/health/service/id/{id}", get(info::health_by_id))
        .route("/v1/agent/version", get(info::version))
        .route("/v1/agent/host", get(info::host))
        .route("/v1/agent/reload", put(lifecycle::reload))
        .route("/v1/agent/leave", put(lifecycle::leave))
        .route("/v1/agent/force-leave/{node}", put(lifecycle::force_leave))
        .route("/v1/agent/join/{address}", put(lifecycle::join))
        .route("/v1/agent/monitor", get(lifecycle::monitor))
        .route("/v1/agent/metrics", get(metrics::metrics))
        .route("/v1/agent/token/{kind}", put(acl::set_token))
        .layer(middleware::from_fn(plain_text_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(agent)
}

/// Router for the standalone client: agent endpoints + forwarding fallback for everything
/// else. Unknown `/v1/agent/` paths are 404 here: they would describe the server's agent, not
/// this one. The query-parameter policy ([`registry_api::query`]) is applied to the agent's
/// own endpoints here; forwarded requests get it from the server that answers them. (A server
/// applies it to its whole router, the agent endpoints it embeds included.)
pub fn client_router(agent: Arc<Agent>, servers: ServerPool) -> Router {
    let forwarder = forward::Forwarder {
        blocking: Arc::new(coalesce::Coalescer::new(agent.metrics())),
        servers,
    };
    let forward = Router::new()
        .fallback(forward::forward)
        .layer(middleware::from_fn(plain_text_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(forwarder);
    // The requests an agent adds to before a server answers them.
    let completed = Router::new()
        .route("/v1/session/create", put(session::create))
        .route("/v1/event/list", get(event::list))
        .route("/v1/status/leader", get(status::leader))
        .layer(middleware::from_fn(plain_text_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(agent.clone());
    let requests = agent.client_request_metrics();
    agent_router(agent.clone())
        .layer(middleware::from_fn(registry_api::query::apply))
        .merge(completed)
        // Timed by route template (bounded); forwarded requests are the servers' to time.
        .route_layer(middleware::from_fn_with_state(
            requests,
            registry_api::metrics::track_requests,
        ))
        // The auth step, for this agent's routes only: the servers judge what is forwarded.
        .route_layer(middleware::from_fn_with_state(
            agent.clone(),
            acl::authenticate,
        ))
        .merge(forward)
        // Outermost: the `default` token is the one of every request without one, forwarded
        // or not.
        .layer(middleware::from_fn_with_state(agent, acl::default_token))
}
