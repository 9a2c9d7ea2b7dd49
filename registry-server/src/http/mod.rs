//! The HTTP API (Consul's v1 API) of a server: the routers and what every
//! handler shares. Every handler does the same steps, in Consul's order: the
//! router sends requests for another datacenter to `federation.rs` (before
//! any handler runs), the RPC port's router checks the shared key (the HTTP
//! port checks it on the `/v1/internal/*` writes agents send, and serves the
//! embedded agent's membership changes only to its own host), then the
//! handler validates and either replicates a write through Raft or answers a
//! read through `crate::reads`. Errors become responses in exactly one
//! place (`HttpError`, and the `RaftError` mapping below). One file per
//! endpoint family; handlers must not lock Raft's state (they go through
//! `RaftHandle` and `crate::reads`).

mod acl;
mod catalog;
mod event;
mod features_off;
pub mod federation;
mod health;
mod internal;
mod kv;
mod operator;
mod params;
mod session;
mod snapshot;
mod status;
mod txn;
mod ui;

use crate::raft::{RaftError, RaftHandle, Role};
use crate::reads::{Answer, AnswerCache};
use crate::state::StateStore;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::Router;
use registry_api::acl::Authz;
use registry_api::auth::{Purpose, SharedKey, Verifier};
use registry_api::limits::MAX_BODY;
use registry_api::Error as ApiError;
use serde::Serialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every handler can reach.
pub struct AppState {
    /// The Raft node.
    pub raft: RaftHandle,
    /// This server's datacenter.
    pub datacenter: String,
    /// This server's node name.
    pub node: String,
    /// Fires at shutdown, so blocking queries return instead of holding it up.
    pub shutdown: CancellationToken,
    /// Route to other datacenters through this DC's gateways.
    pub wan: federation::WanRoute,
    /// Recent answers, shared by readers of the same query at the same state.
    pub answers: AnswerCache,
    /// The shared key (`--encrypt`): required on the RPC port's HTTP side and
    /// on agent heartbeats.
    pub encrypt: Option<Arc<registry_api::auth::SharedKey>>,
    /// This server's metrics (requests, snapshots; the Raft thread's are in
    /// the same registry).
    pub metrics: crate::metrics::ServerMetrics,
    /// ACLs: the settings and the token resolver (the auth step, [`authenticate`]).
    pub acl: Arc<crate::acl::AclResolver>,
}

type St = State<Arc<AppState>>;
type Params = Query<Vec<(String, String)>>;

// Errors become plain-text responses in one place, shared with the agent.
pub use registry_api::http_error::{plain_text_errors, HttpError};

type HttpResult<T = Response> = Result<T, HttpError>;

/// The one mapping of the Raft layer's errors to API errors: a refused request
/// is a 400 with the reason, no leader (or a read that could not catch up,
/// whose usual cause is a lost leader) is Consul's `No cluster leader`, a
/// write refused for want of disk space a 503 with the reason, and
/// anything else a 500 with the reason.
impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::Rejected(reason) => ApiError::BadRequest(reason),
            RaftError::NoLeader | RaftError::ReadTimeout => ApiError::NoLeader,
            RaftError::NoSpace(reason) => ApiError::Unavailable(reason),
            RaftError::Overloaded
            | RaftError::ShuttingDown
            | RaftError::CommitTimeout
            | RaftError::OutcomeUnknown
            | RaftError::TooLate
            | RaftError::ConfChangeInProgress
            | RaftError::Encode(_)
            | RaftError::Broken(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<RaftError> for HttpError {
    fn from(e: RaftError) -> Self {
        HttpError(e.into())
    }
}

/// The router with every endpoint of the server; `agent` holds the agent
/// endpoints the server serves for itself (DESIGN §4, item 1).
pub fn router(state: Arc<AppState>, agent: Router) -> Router {
    let state_key = state.encrypt.clone();
    let router = data_routes()
        .route(
            "/v1/operator/raft/configuration",
            get(operator::raft_configuration),
        )
        .route("/v1/operator/raft/peer", delete(operator::raft_remove_peer))
        // Consul registers it for POST only (http_register.go), and its Go client posts; PUT
        // is kept for the clients written against this registry before.
        .route(
            "/v1/operator/raft/transfer-leader",
            put(operator::raft_transfer_leader).post(operator::raft_transfer_leader),
        )
        .route(
            "/v1/operator/autopilot/health",
            get(operator::autopilot_health),
        )
        .route(
            "/v1/operator/autopilot/state",
            get(operator::autopilot_state),
        )
        .merge(signed_internal_writes(&state))
        .merge(snapshot_routes())
        .merge(acl_routes(&state))
        // The embedded agent's `/v1/agent/token/{agent,default}` are its own; this one is
        // the server's.
        .route(
            "/v1/agent/token/replication",
            put(acl::set_replication_token),
        )
        .with_state(state.clone())
        .merge(agent.layer(middleware::from_fn(agent_membership_from_loopback)))
        // Timed by route template (bounded), after routing: every route above.
        .route_layer(middleware::from_fn_with_state(
            state.metrics.http.clone(),
            registry_api::metrics::track_requests,
        ))
        .fallback(not_found);
    let router = every_request(&state, router);
    match &state_key {
        Some(key) => router.layer(middleware::from_fn_with_state(
            key.clone(),
            sign_probe_replies,
        )),
        None => router,
    }
}

/// What every request to either router goes through before routing, outermost first:
/// the body limit, Consul's index headers on errors, the query-parameter policy, `?dc=`
/// forwarding, the auth step, plain-text errors. One stack before routing
/// ([`registry_api::serve::before_routing`]), not six wrappers of every route.
fn every_request(state: &Arc<AppState>, routes: Router) -> Router {
    let layers = tower::ServiceBuilder::new()
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            index_headers_on_errors,
        ))
        .layer(middleware::from_fn(registry_api::query::apply))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            federation::route_remote_dc,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(plain_text_errors));
    registry_api::serve::before_routing(routes, layers)
}

/// Every known read path answers with Consul's `X-Consul-Index`,
/// `X-Consul-KnownLeader` and `X-Consul-LastContact` on an error too (a bad
/// `?filter=`, a refused parameter, `No cluster leader`), as Consul's
/// deferred `setMeta` does whatever the outcome. The known read paths are the
/// GET routes of Consul's blocking endpoints
/// ([`registry_api::query::carries_index`]); an unknown path matches no route
/// (the fallback marks its answer [`UnknownPath`]) and stays a plain 404. A
/// handler's own headers are kept; the index is the applied one (at least 1,
/// as Consul's `setIndex` never sends 0).
async fn index_headers_on_errors(State(st): St, req: Request, next: middleware::Next) -> Response {
    let read = req.method() == axum::http::Method::GET
        && registry_api::query::carries_index(req.uri().path());
    let mut resp = next.run(req).await;
    if read
        && !resp.status().is_success()
        && resp.extensions().get::<UnknownPath>().is_none()
        && !resp.headers().contains_key("X-Consul-Index")
    {
        let index = st.raft.applied_index().max(1);
        consul_headers(&st, resp.headers_mut(), index);
    }
    resp
}

/// The router for HTTP on the RPC port (`--rpc-addr`), where agents reach
/// their servers: only what agents need, the data endpoints they forward and
/// their heartbeats; never the operator or agent endpoints (a firewall rule for
/// 8500 must not be undone by 8300). With a key (`--encrypt`) every request
/// must be signed with it.
pub fn rpc_router(state: Arc<AppState>) -> Router {
    let key = state.encrypt.clone();
    let router = data_routes()
        // Signed by the check on this whole router when there is a key.
        .merge(internal_writes())
        // Agents forward `/v1/snapshot` like every other request (see `snapshot.rs`).
        .merge(snapshot_routes())
        .merge(acl_routes(&state))
        .with_state(state.clone())
        .route_layer(middleware::from_fn_with_state(
            state.metrics.rpc.clone(),
            registry_api::metrics::track_requests,
        ))
        .fallback(not_served_on_rpc_port);
    let router = every_request(&state, router);
    match key {
        // Outermost, so nothing (not even `?dc=` forwarding, which this
        // server would sign) happens for a request that is not signed.
        Some(key) => router
            .layer(middleware::from_fn_with_state(
                key.clone(),
                sign_probe_replies,
            ))
            .layer(middleware::from_fn_with_state(key, rpc_signature)),
        None => router,
    }
}

/// The `/v1/internal/*` writes agents send to their servers: heartbeats and
/// the force-leave an agent passes on. Every state-changing internal route
/// belongs here, so that both routers serve the same list and the HTTP port
/// gates it ([`signed_internal_writes`]). (`GET
/// /v1/internal/event/list/:node` is a read, open like `/v1/event/list`.)
fn internal_writes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/internal/heartbeat", put(internal::heartbeat))
        .route(
            "/v1/internal/force-leave/{node}",
            put(internal::force_leave),
        )
}

/// [`internal_writes`] for the HTTP port: with a key, each must be signed by
/// it there too, for the purpose the RPC port checks ([`rpc_signature`]);
/// otherwise anyone reaching 8500 could keep a dead node "alive" or force a
/// server whose `serfHealth` is briefly critical out of the Raft
/// configuration. Agents sign both (their server pool signs everything it
/// sends), so they work on either port.
fn signed_internal_writes(state: &AppState) -> Router<Arc<AppState>> {
    match &state.encrypt {
        Some(key) => internal_writes()
            .route_layer(middleware::from_fn_with_state(key.clone(), rpc_signature)),
        None => internal_writes(),
    }
}

/// The paths of the embedded agent's membership changes (`PUT
/// /v1/agent/leave`, `/v1/agent/force-leave/:node`, `/v1/agent/join/:address`)
/// that a server serves only to callers on its own host.
fn is_agent_membership_change(method: &axum::http::Method, path: &str) -> bool {
    (method == axum::http::Method::PUT
        && (path == "/v1/agent/leave"
            || path.starts_with("/v1/agent/force-leave/")
            || path.starts_with("/v1/agent/join/")))
        // The monitor streams the server's own logs, and its 64 places would
        // otherwise be anyone's to fill (found by review).
        || (method == axum::http::Method::GET && path == "/v1/agent/monitor")
}

/// A server's embedded agent takes membership changes only from loopback
/// (README, "Security"): a server listens on `0.0.0.0:8500` by default where
/// Consul's agents listen on `127.0.0.1` (`client_addr`), and a leave takes a
/// server out of the Raft configuration for good, a force-leave takes a
/// briefly failed one out, and a join points the server at any address. An
/// operator runs them on the server's host (`curl localhost:8500/...`, the
/// CLI), as with Consul; a later ACL issue may allow them to tokens with
/// `operator:write`/`agent:write`. A request whose peer is unknown is
/// refused. Client agents (on 127.0.0.1 by default) are not affected.
async fn agent_membership_from_loopback(req: Request, next: middleware::Next) -> Response {
    if !is_agent_membership_change(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    // Canonical: a dual-stack listener sees 127.0.0.1 as `::ffff:127.0.0.1`.
    if peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) {
        return next.run(req).await;
    }
    tracing::warn!(
        peer = ?peer,
        path = %req.uri().path(),
        "refused a membership change from another host"
    );
    HttpError(ApiError::Forbidden(format!(
        "{} {} is served by a server only to callers on its own host (loopback); \
         run it there",
        req.method(),
        req.uri().path()
    )))
    .into_response()
}

/// The RPC port's signature check: an agent's heartbeat must carry a
/// heartbeat signature, every other request a forward signature (what an
/// agent puts on a client's request it passes on), so neither passes for the
/// other.
async fn rpc_signature(
    State(key): State<Arc<SharedKey>>,
    req: Request,
    next: middleware::Next,
) -> Response {
    let purpose = if req.uri().path() == "/v1/internal/heartbeat" {
        Purpose::Heartbeat
    } else {
        Purpose::Forward
    };
    let verifier = Verifier::new(key, purpose);
    registry_api::auth::require_signature(State(verifier), req, next).await
}

/// Largest probe answer signed (the leader's address as a JSON string).
const MAX_PROBE_REPLY: usize = 4096;

/// An agent's join probe ([`registry_api::auth::PROBE_PATH`], signed with the
/// key): its answer is signed too, bound to the probe, so that the agent knows
/// a holder of the key answered and not whatever listens at an address
/// (`registry_client::servers::ServerPool::probe`). On both ports, as agents
/// may join either; a probe whose signature does not verify is answered as
/// any other request there (refused on the RPC port, unsigned on the HTTP
/// port).
async fn sign_probe_replies(
    State(key): State<Arc<SharedKey>>,
    req: Request,
    next: middleware::Next,
) -> Response {
    let probe_signature = (req.method() == axum::http::Method::GET
        && req.uri().path() == registry_api::auth::PROBE_PATH)
        .then(|| {
            req.headers()
                .get(registry_api::auth::SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .flatten()
        .filter(|sig| {
            let path_and_query = req
                .uri()
                .path_and_query()
                .map_or(registry_api::auth::PROBE_PATH, |p| p.as_str());
            key.verify_request(Some(sig), "GET", path_and_query, b"")
                .is_ok()
        });
    let resp = next.run(req).await;
    let Some(request_sig) = probe_signature else {
        return resp;
    };
    if !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PROBE_REPLY).await else {
        return HttpError(ApiError::Internal("probe answer too large to sign".into()))
            .into_response();
    };
    if let Ok(v) = HeaderValue::from_str(&key.sign_probe_reply(&request_sig, &bytes)) {
        parts
            .headers
            .insert(registry_api::auth::SIGNATURE_HEADER, v);
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Anything else on the RPC port (a plain answer, like an unknown path's).
async fn not_served_on_rpc_port(req: Request) -> Response {
    let mut resp = HttpError(ApiError::Forbidden(format!(
        "{} {} is not served on the RPC port; only the data endpoints agents forward are \
         (use the HTTP port)",
        req.method(),
        req.uri().path()
    )))
    .into_response();
    resp.extensions_mut().insert(UnknownPath);
    resp
}

/// The catalog, health, status, KV, session and txn endpoints: served on the
/// HTTP port and, for agents, on the RPC port.
fn data_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/catalog/register", put(catalog::catalog_register))
        .route("/v1/catalog/deregister", put(catalog::catalog_deregister))
        .route("/v1/catalog/datacenters", get(catalog::catalog_datacenters))
        .route("/v1/catalog/nodes", get(catalog::catalog_nodes))
        .route("/v1/catalog/services", get(catalog::catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog::catalog_service))
        .route("/v1/catalog/node/{node}", get(catalog::catalog_node))
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog::catalog_node_services),
        )
        .route("/v1/health/service/{name}", get(health::health_service))
        .route("/v1/health/checks/{name}", get(health::health_checks))
        .route("/v1/health/node/{node}", get(health::health_node))
        .route("/v1/health/state/{state}", get(health::health_state))
        // Features we do not have: answered as Consul does with them off.
        .route(
            "/v1/catalog/connect/{name}",
            get(features_off::catalog_connect),
        )
        .route(
            "/v1/catalog/gateway-services/{gateway}",
            get(features_off::catalog_gateway_services),
        )
        .route(
            "/v1/health/connect/{name}",
            get(features_off::health_connect),
        )
        .route(
            "/v1/health/ingress/{name}",
            get(features_off::health_ingress),
        )
        .route("/v1/status/leader", get(status::status_leader))
        .route("/v1/status/peers", get(status::status_peers))
        // KV, sessions and transactions (issue 14).
        .route(
            "/v1/kv/",
            get(kv::kv_get_root)
                .put(kv::kv_put_root)
                .delete(kv::kv_delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::kv_get).put(kv::kv_put).delete(kv::kv_delete),
        )
        .route("/v1/session/create", put(session::session_create))
        .route("/v1/session/destroy/{id}", put(session::session_destroy))
        .route("/v1/session/renew/{id}", put(session::session_renew))
        .route("/v1/session/info/{id}", get(session::session_info))
        .route("/v1/session/node/{node}", get(session::session_node))
        .route("/v1/session/list", get(session::session_list))
        .route("/v1/txn", put(txn::txn))
        .route("/v1/event/fire/{name}", put(event::event_fire))
        .route("/v1/event/list", get(event::event_list))
        .route(
            "/v1/internal/event/list/{node}",
            get(event::event_list_for_node),
        )
        // The web UI's summaries (issue 19), reads like the catalog's.
        .route("/v1/internal/ui/services", get(ui::ui_services))
        .route("/v1/internal/ui/nodes", get(ui::ui_nodes))
}

/// `/v1/acl/*` and the internal ACL reads (`acl.rs`), served on both ports (agents forward
/// them); in a secondary datacenter the writes go to the primary.
fn acl_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/acl/bootstrap", put(acl::bootstrap))
        .route("/v1/acl/token", put(acl::token_create))
        .route("/v1/acl/token/self", get(acl::token_self))
        .route(
            "/v1/acl/token/{accessor}",
            get(acl::token_read)
                .put(acl::token_update)
                .delete(acl::token_delete),
        )
        .route("/v1/acl/token/{accessor}/clone", put(acl::token_clone))
        .route("/v1/acl/tokens", get(acl::token_list))
        .route("/v1/acl/policy", put(acl::policy_create))
        .route(
            "/v1/acl/policy/{id}",
            get(acl::policy_read)
                .put(acl::policy_update)
                .delete(acl::policy_delete),
        )
        .route("/v1/acl/policy/name/{name}", get(acl::policy_read_by_name))
        .route("/v1/acl/policies", get(acl::policy_list))
        .route("/v1/acl/role", put(acl::role_create))
        .route(
            "/v1/acl/role/{id}",
            get(acl::role_read)
                .put(acl::role_update)
                .delete(acl::role_delete),
        )
        .route("/v1/acl/role/name/{name}", get(acl::role_read_by_name))
        .route("/v1/acl/roles", get(acl::role_list))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            acl::writes_to_primary,
        ))
        .route("/v1/internal/acl/authority", get(acl::authority))
        .route("/v1/internal/acl/replication", get(acl::replication))
}

/// `GET|PUT /v1/snapshot`, the restore with a body limit of its own (an archive, not a KV
/// value): larger is a 413 before anything is read into memory.
fn snapshot_routes() -> Router<Arc<AppState>> {
    Router::new().route(
        "/v1/snapshot",
        get(snapshot::save)
            .put(snapshot::restore)
            .layer(DefaultBodyLimit::max(registry_api::snapshot::MAX_ARCHIVE)),
    )
}

/// Marks the answer of a path no route knows (see [`index_headers_on_errors`]).
#[derive(Clone, Copy)]
struct UnknownPath;

async fn not_found(req: Request) -> Response {
    let mut resp = HttpError(ApiError::NotFound(format!(
        "Unsupported path: {} {}",
        req.method(),
        req.uri().path()
    )))
    .into_response();
    resp.extensions_mut().insert(UnknownPath);
    resp
}

/// Answers a read through [`crate::reads::read`] in the mode and with the
/// blocking terms `p` asks for, as a JSON response with Consul's headers. For
/// a read whose ACL step was decided before it (a `require`), or that filters
/// nothing; `authz` still keys the shared answers.
async fn read<T, F>(
    st: &AppState,
    authz: &Authz,
    p: &params::ReadParams,
    key: String,
    query: F,
) -> HttpResult
where
    T: Serialize,
    F: Fn(&StateStore) -> (T, u64),
{
    read_then(st, authz, p, key, query, |v| (v, false)).await
}

/// [`read`] with a step on the copied-out value that runs after the
/// applied-state lock is released: the ACL filter (what the token may not read
/// is left out) and a `?filter=`; it answers the value and whether ACLs left
/// anything out (Consul's `X-Consul-Results-Filtered-By-ACLs`). The token is
/// part of the shared answers' key whenever ACLs filter its answers.
async fn read_then<T, U, F, S>(
    st: &AppState,
    authz: &Authz,
    p: &params::ReadParams,
    key: String,
    query: F,
    then: S,
) -> HttpResult
where
    U: Serialize,
    F: Fn(&StateStore) -> (T, u64),
    S: Fn(T) -> (U, bool),
{
    let no_probe: Option<crate::reads::Probe<crate::reads::IndexFn>> = None;
    read_then_probed(st, authz, p, key, no_probe, query, then).await
}

/// [`read_then`] with a `probe` for blocking reads: the index `query` would
/// answer with, computed without copying anything (see
/// [`crate::reads::read_probed`]). Blocking reads of one service among many
/// (the common watch) then cost an index lookup per unrelated write, not an
/// evaluation or a trip through the shared answers.
async fn read_then_probed<T, U, P, F, S>(
    st: &AppState,
    authz: &Authz,
    p: &params::ReadParams,
    key: String,
    probe: Option<crate::reads::Probe<P>>,
    query: F,
    then: S,
) -> HttpResult
where
    U: Serialize,
    P: Fn(&StateStore) -> u64,
    F: Fn(&StateStore) -> (T, u64),
    S: Fn(T) -> (U, bool),
{
    let answer: Answer = crate::reads::read_probed(
        &st.raft,
        &st.answers,
        &st.shutdown,
        p.mode_now(&st.raft),
        p.blocking,
        acl_key(key, authz),
        probe,
        query,
        then,
    )
    .await?;
    Ok(answer_response(st, answer))
}

/// `key` for the shared answers of `authz`'s token.
fn acl_key(key: String, authz: &Authz) -> String {
    match authz.cache_key() {
        "" => key,
        accessor => format!("{key}\0acl\0{accessor}"),
    }
}

/// A read's answer as a JSON response with Consul's headers.
fn answer_response(st: &AppState, answer: Answer) -> Response {
    let mut resp = json_response(st, answer.body, Some(answer.index));
    if answer.acl_filtered {
        resp.headers_mut().insert(
            registry_api::acl::FILTERED_HEADER,
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// The ACL step of a list: keeps the items `allowed` says the token may read;
/// true when it left any out.
fn acl_retain<T>(authz: &Authz, items: &mut Vec<T>, allowed: impl Fn(&T) -> bool) -> bool {
    if authz.allows_all() {
        return false;
    }
    let before = items.len();
    items.retain(allowed);
    items.len() != before
}

/// The auth step, on every router: resolves the request's token once
/// ([`crate::acl::AclResolver`]) and leaves the outcome for the handlers
/// (`registry_api::acl::extract::Authorized`). Inside the `?dc=` routing, so a
/// request for another datacenter is resolved there, from its replica.
async fn authenticate(State(st): St, mut req: Request, next: middleware::Next) -> Response {
    let primary = st.acl.config().primary(&st.datacenter).to_string();
    let wan = &st.wan;
    st.acl
        .resolve_request(&st.raft, &mut req, |secret| async move {
            acl::authority_from(wan, &primary, &secret).await
        })
        .await;
    next.run(req).await
}

fn json_response(st: &AppState, body: impl Into<Body>, index: Option<u64>) -> Response {
    let mut resp = Response::new(body.into());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(index) = index {
        consul_headers(st, h, index);
    }
    resp
}

/// Consul's `X-Consul-Index`, `X-Consul-KnownLeader` and
/// `X-Consul-LastContact` (ms) for an answer at `index`.
fn consul_headers(st: &AppState, h: &mut axum::http::HeaderMap, index: u64) {
    let (known_leader, last_contact) = st.raft.with_status(|s| {
        let last_contact = match (s.role, s.last_leader_contact) {
            (Role::Leader, _) => 0,
            (_, Some(at)) => at.elapsed().as_millis() as u64,
            (_, None) => 0,
        };
        (s.leader_id != 0, last_contact)
    });
    h.insert("X-Consul-Index", HeaderValue::from(index));
    h.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if known_leader { "true" } else { "false" }),
    );
    h.insert("X-Consul-LastContact", HeaderValue::from(last_contact));
}

fn json<T: Serialize>(st: &AppState, value: &T) -> HttpResult {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_response(st, body, None))
}

fn json_headers() -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    use tower::ServiceExt as _;

    /// A stand-in for the embedded agent's routes, behind the same rule.
    fn agent_routes() -> Router {
        let ok = || async { "ok" };
        Router::new()
            .route("/v1/agent/leave", put(ok))
            .route("/v1/agent/force-leave/{node}", put(ok))
            .route("/v1/agent/join/{address}", put(ok))
            .route("/v1/agent/reload", put(ok))
            .route("/v1/agent/self", get(ok))
            .route("/v1/agent/monitor", get(ok))
            .layer(middleware::from_fn(agent_membership_from_loopback))
    }

    async fn status(method: &str, path: &str, peer: Option<&str>) -> u16 {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        if let Some(peer) = peer {
            let peer: SocketAddr = peer.parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        agent_routes().oneshot(req).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn a_server_takes_membership_changes_only_from_its_own_host() {
        let changes = [
            "/v1/agent/leave",
            "/v1/agent/force-leave/web-1",
            "/v1/agent/join/10.0.0.9:8300",
        ];
        for path in changes {
            for local in [
                "127.0.0.1:5000",
                "[::1]:5000",
                "127.0.0.2:1",
                "[::ffff:127.0.0.1]:5000",
            ] {
                assert_eq!(
                    status("PUT", path, Some(local)).await,
                    200,
                    "{path} {local}"
                );
            }
            for remote in [
                "10.1.2.3:5000",
                "[2001:db8::1]:5000",
                "0.0.0.0:1",
                "[::ffff:10.1.2.3]:5000",
            ] {
                assert_eq!(
                    status("PUT", path, Some(remote)).await,
                    403,
                    "{path} {remote}"
                );
            }
            assert_eq!(status("PUT", path, None).await, 403, "{path}, peer unknown");
        }
        // The monitor (the server's own logs) likewise.
        assert_eq!(
            status("GET", "/v1/agent/monitor", Some("10.1.2.3:5000")).await,
            403
        );
        assert_eq!(
            status("GET", "/v1/agent/monitor", Some("127.0.0.1:5000")).await,
            200
        );
        // Everything else is as open as before.
        assert_eq!(
            status("PUT", "/v1/agent/reload", Some("10.1.2.3:5000")).await,
            200
        );
        assert_eq!(
            status("GET", "/v1/agent/self", Some("10.1.2.3:5000")).await,
            200
        );
    }
}
