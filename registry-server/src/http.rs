//! The HTTP API (Consul's v1 API) of a server.
//!
//! Every handler does the same steps, in Consul's order: route to the right
//! datacenter, validate, then either replicate a write through Raft or answer a
//! read from the applied catalog in the requested consistency mode, blocking
//! when asked to. Errors become responses in exactly one place
//! ([`HttpError::into_response`]).

use crate::catalog::{CatalogState, Command};
use crate::raft_node::{RaftHandle, Role};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::Router;
use rand::Rng;
use registry_api::error::NO_PATH_TO_DC;
use registry_api::{
    decode, duration, DeregisterRequest, Error as ApiError, RaftConfiguration, RaftServer,
    RegisterRequest,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use registry_api::limits::{DEFAULT_WAIT, MAX_BODY, MAX_WAIT};

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
    pub wan: crate::federation::WanRoute,
    /// Recent answers, shared by readers of the same query at the same state.
    pub answers: AnswerCache,
    /// The shared key (`--encrypt`): required on the RPC port's HTTP side and
    /// on agent heartbeats.
    pub encrypt: Option<Arc<registry_api::auth::SharedKey>>,
}

/// Answers by query, each with the applied index of the state it was computed
/// from: a reader that finds an entry for its query at the current applied
/// index sends those bytes instead of evaluating and serialising again. When a
/// write wakes thousands of blocking queries on one service, one of them does
/// the work and the rest copy a pointer. Bounded in entries, entry size, key
/// length and total bytes: the key is the raw query, so a client that varies it
/// (`?tag=v1&tag=v1&...`) must not be able to pin more than
/// [`ANSWER_CACHE_BYTES`].
#[derive(Default)]
pub struct AnswerCache {
    /// The entries and the bytes they hold (keys and bodies).
    entries: std::sync::Mutex<CacheEntries>,
}

/// What [`AnswerCache`]'s lock guards.
#[derive(Default)]
struct CacheEntries {
    /// Answers by query.
    map: HashMap<String, CachedAnswer>,
    /// Sum of the keys' and bodies' lengths in `map`.
    bytes: usize,
}

#[derive(Clone)]
struct CachedAnswer {
    applied: u64,
    index: u64,
    body: Bytes,
}

/// Entries kept before the cache starts over.
const ANSWER_CACHE_ENTRIES: usize = 1024;
/// Answers larger than this are not kept (they would pin memory).
const ANSWER_CACHE_MAX_BODY: usize = 256 << 10;
/// Queries longer than this are not kept (nobody shares such a query).
const ANSWER_CACHE_MAX_KEY: usize = 1024;
/// Bytes of keys and bodies kept in all; past it the cache starts over.
pub const ANSWER_CACHE_BYTES: usize = 32 << 20;

impl AnswerCache {
    fn get(&self, key: &str, applied: u64) -> Option<CachedAnswer> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .map
            .get(key)
            .filter(|a| a.applied == applied)
            .cloned()
    }

    fn put(&self, key: &str, answer: CachedAnswer) {
        if answer.body.len() > ANSWER_CACHE_MAX_BODY || key.len() > ANSWER_CACHE_MAX_KEY {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entries = &mut *entries;
        let size = key.len() + answer.body.len();
        let old_size = entries.map.get(key).map(|old| key.len() + old.body.len());
        let full = entries.map.len() >= ANSWER_CACHE_ENTRIES && old_size.is_none();
        if full || entries.bytes - old_size.unwrap_or(0) + size > ANSWER_CACHE_BYTES {
            entries.map.clear();
            entries.bytes = 0;
        }
        match entries.map.get_mut(key) {
            Some(old) if old.applied > answer.applied => {}
            Some(old) => {
                entries.bytes = entries.bytes - old.body.len() + answer.body.len();
                *old = answer;
            }
            None => {
                entries.bytes += size;
                entries.map.insert(key.to_string(), answer);
            }
        }
    }

    /// Bytes held (keys and bodies).
    pub fn bytes(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

type St = State<Arc<AppState>>;
type Params = Query<Vec<(String, String)>>;

// Errors become plain-text responses in one place, shared with the agent.
pub use registry_api::http_error::{plain_text_errors, HttpError};

type HttpResult<T = Response> = Result<T, HttpError>;

/// The router with every endpoint of the server; `agent` holds the agent
/// endpoints the server serves for itself (DESIGN §4, item 1).
pub fn router(state: Arc<AppState>, agent: Router) -> Router {
    let remote_dc =
        middleware::from_fn_with_state(state.clone(), crate::federation::route_remote_dc);
    // With a key, an agent heartbeat must be signed by it on this port too:
    // otherwise anyone could keep a dead node "alive".
    let heartbeat_route = match &state.encrypt {
        Some(key) => Router::new().route(
            "/v1/internal/heartbeat",
            put(heartbeat).route_layer(middleware::from_fn_with_state(
                key.clone(),
                registry_api::auth::require_signature,
            )),
        ),
        None => Router::new().route("/v1/internal/heartbeat", put(heartbeat)),
    };
    data_routes()
        .route("/v1/operator/raft/configuration", get(raft_configuration))
        .route("/v1/operator/raft/peer", delete(raft_remove_peer))
        .merge(heartbeat_route)
        .with_state(state)
        .merge(agent)
        .fallback(not_found)
        .layer(middleware::from_fn(plain_text_errors))
        .layer(remote_dc)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// The router for HTTP on the RPC port (`--rpc-addr`), where agents reach
/// their servers: only what agents need, the data endpoints they forward and
/// their heartbeats; never the operator or agent endpoints (a firewall rule for
/// 8500 must not be undone by 8300). With a key (`--encrypt`) every request
/// must be signed with it.
pub fn rpc_router(state: Arc<AppState>) -> Router {
    let remote_dc =
        middleware::from_fn_with_state(state.clone(), crate::federation::route_remote_dc);
    let key = state.encrypt.clone();
    let router = data_routes()
        .route("/v1/internal/heartbeat", put(heartbeat))
        .with_state(state)
        .fallback(not_served_on_rpc_port)
        .layer(middleware::from_fn(plain_text_errors))
        .layer(remote_dc)
        .layer(DefaultBodyLimit::max(MAX_BODY));
    match key {
        Some(key) => router.layer(middleware::from_fn_with_state(
            key,
            registry_api::auth::require_signature,
        )),
        None => router,
    }
}

/// Anything else on the RPC port.
async fn not_served_on_rpc_port(req: Request) -> HttpError {
    HttpError(ApiError::Forbidden(format!(
        "{} {} is not served on the RPC port; only the data endpoints agents forward are \
         (use the HTTP port)",
        req.method(),
        req.uri().path()
    )))
}

/// The catalog, health and status endpoints: served on the HTTP port and,
/// for agents, on the RPC port.
fn data_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/catalog/register", put(catalog_register))
        .route("/v1/catalog/deregister", put(catalog_deregister))
        .route("/v1/catalog/datacenters", get(catalog_datacenters))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog_node_services),
        )
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/health/checks/{name}", get(health_checks))
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
}

async fn not_found(req: Request) -> HttpError {
    HttpError(ApiError::NotFound(format!(
        "Unsupported path: {} {}",
        req.method(),
        req.uri().path()
    )))
}

/// How a read is answered (Consul's consistency modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The leader answers, if it knows it is still the leader.
    Default,
    /// The leader first confirms leadership with a quorum.
    Consistent,
    /// Any server answers from its own state.
    Stale,
}

/// The query parameters shared by reads.
struct ReadParams {
    mode: Mode,
    min_index: Option<u64>,
    wait: Duration,
    tags: Vec<String>,
    passing: bool,
}

fn has(q: &[(String, String)], key: &str) -> bool {
    q.iter().any(|(k, _)| k == key)
}

fn value<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Routes by `?dc=`: only the local datacenter is served until federation
/// exists; anything else is Consul's "No path to datacenter".
fn check_dc(st: &AppState, q: &[(String, String)]) -> Result<(), ApiError> {
    match value(q, "dc") {
        None | Some("") => Ok(()),
        Some(dc) if dc == st.datacenter => Ok(()),
        Some(_) => Err(ApiError::Internal(NO_PATH_TO_DC.into())),
    }
}

fn read_params(st: &AppState, q: &[(String, String)]) -> Result<ReadParams, ApiError> {
    check_dc(st, q)?;
    let stale = has(q, "stale");
    let consistent = has(q, "consistent");
    let mode = match (stale, consistent) {
        (true, true) => {
            return Err(ApiError::BadRequest(
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ))
        }
        (true, false) => Mode::Stale,
        (false, true) => Mode::Consistent,
        (false, false) => Mode::Default,
    };
    let min_index = match value(q, "index") {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Invalid index".into()))?,
        ),
    };
    let wait = match value(q, "wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(v) => duration::parse(v)
            .map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?
            .min(MAX_WAIT),
    };
    let tags = q
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    Ok(ReadParams {
        mode,
        min_index,
        wait,
        tags,
        passing: has(q, "passing"),
    })
}

/// Answers a read: waits for the consistency the mode asks for, then evaluates
/// `query` against the applied catalog, re-evaluating it after each applied
/// change while it is a blocking query whose index has not moved past
/// `?index`. `query` returns the value and the index of the data it covers, so
/// a watcher of one service is not answered because another one changed.
async fn read<T, F>(st: &AppState, p: &ReadParams, key: String, query: F) -> HttpResult
where
    T: Serialize,
    F: Fn(&CatalogState) -> (T, u64),
{
    let raft = &st.raft;
    if let Some(reason) = raft.with_status(|s| s.fatal.clone()) {
        return Err(ApiError::Internal(reason).into());
    }
    match p.mode {
        Mode::Stale => {}
        Mode::Default => raft.default_barrier().await?,
        Mode::Consistent => raft.linearizable_barrier().await?,
    }
    let mut changes = raft.shared.applied_tx.subscribe();
    let deadline = p.min_index.map(|_| {
        // Consul adds up to wait/16 of jitter so that many watchers of one
        // change do not all come back at the same instant.
        let jitter_ms = (p.wait.as_millis() / 16) as u64;
        let jitter = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        Instant::now() + p.wait + jitter
    });
    loop {
        changes.borrow_and_update();
        let (answer, fresh) = {
            let applied = raft
                .shared
                .applied
                .read()
                .unwrap_or_else(|e| e.into_inner());
            match st.answers.get(&key, applied.index) {
                Some(a) => (Ok(a), None),
                None => (Err(query(&applied.catalog)), Some(applied.index)),
            }
        };
        // Serialised after the lock is released, so a large answer does not
        // hold up the Raft thread's next apply.
        let answer = match (answer, fresh) {
            (Ok(a), _) => a,
            (Err((value, index)), applied) => {
                let body =
                    serde_json::to_vec(&value).map_err(|e| ApiError::Internal(e.to_string()))?;
                let a = CachedAnswer {
                    applied: applied.unwrap_or_default(),
                    index: index.max(1),
                    body: Bytes::from(body),
                };
                st.answers.put(&key, a.clone());
                a
            }
        };
        let index = answer.index;
        let done = match (p.min_index, deadline) {
            (Some(min), Some(deadline)) => {
                // Indexes never go back on a server, so "changed" is "greater";
                // a lagging follower keeps a watcher waiting rather than
                // answering it with data older than it has already seen.
                index > min || Instant::now() >= deadline || st.shutdown.is_cancelled()
            }
            _ => true,
        };
        if done {
            return Ok(json_response(st, answer.body, Some(index)));
        }
        let deadline = deadline.unwrap_or_else(Instant::now);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = st.shutdown.cancelled() => {}
        }
    }
}

fn json_response(st: &AppState, body: impl Into<Body>, index: Option<u64>) -> Response {
    let mut resp = Response::new(body.into());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(index) = index {
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
    resp
}

fn json<T: Serialize>(st: &AppState, value: &T) -> HttpResult {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_response(st, body, None))
}

async fn catalog_register(State(st): St, Query(q): Params, body: Bytes) -> HttpResult {
    check_dc(&st, &q)?;
    let mut req: RegisterRequest = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !req.datacenter.is_empty() && req.datacenter != st.datacenter {
        // Consul routes by the body's Datacenter as by ?dc=.
        let path = format!("/v1/catalog/register?dc={}", req.datacenter);
        return Ok(st
            .wan
            .forward(Method::PUT, &path, &json_headers(), body)
            .await?);
    }
    CatalogState::validate_register(&mut req).map_err(ApiError::BadRequest)?;
    st.raft.propose(Command::Register(req)).await?;
    json(&st, &true)
}

async fn catalog_deregister(State(st): St, Query(q): Params, body: Bytes) -> HttpResult {
    check_dc(&st, &q)?;
    let req: DeregisterRequest = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !req.datacenter.is_empty() && req.datacenter != st.datacenter {
        let path = format!("/v1/catalog/deregister?dc={}", req.datacenter);
        return Ok(st
            .wan
            .forward(Method::PUT, &path, &json_headers(), body)
            .await?);
    }
    CatalogState::validate_deregister(&req).map_err(ApiError::BadRequest)?;
    st.raft.propose(Command::Deregister(req)).await?;
    json(&st, &true)
}

fn json_headers() -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

/// All known datacenters, the local one first and the rest by round-trip
/// time, as this DC's gateways measure it; just the local one without them.
async fn catalog_datacenters(State(st): St) -> HttpResult {
    let dcs = st
        .wan
        .datacenters()
        .await
        .filter(|d| d.contains(&st.datacenter))
        .unwrap_or_else(|| vec![st.datacenter.clone()]);
    json(&st, &dcs)
}

async fn catalog_nodes(State(st): St, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    read(&st, &p, "nodes".into(), |c| c.nodes()).await
}

async fn catalog_services(State(st): St, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    read(&st, &p, "services".into(), |c| c.services()).await
}

async fn catalog_service(State(st): St, Path(name): Path<String>, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    let tags = p.tags.clone();
    let key = format!("service\0{name}\0{tags:?}");
    read(&st, &p, key, move |c| c.service_nodes(&name, &tags)).await
}

async fn catalog_node(State(st): St, Path(node): Path<String>, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    read(&st, &p, format!("node\0{node}"), move |c| {
        c.node_services(&node)
    })
    .await
}

async fn catalog_node_services(
    State(st): St,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&st, &q)?;
    // An unknown node is `null`, as in Consul.
    read(&st, &p, format!("node-services\0{node}"), move |c| {
        c.node_service_list(&node)
    })
    .await
}

async fn health_service(State(st): St, Path(name): Path<String>, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    let tags = p.tags.clone();
    let passing = p.passing;
    let key = format!("health-service\0{name}\0{tags:?}\0{passing}");
    read(&st, &p, key, move |c| {
        c.health_service(&name, &tags, passing)
    })
    .await
}

async fn health_checks(State(st): St, Path(name): Path<String>, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    read(&st, &p, format!("checks\0{name}"), move |c| {
        c.service_checks(&name)
    })
    .await
}

async fn health_node(State(st): St, Path(node): Path<String>, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    read(&st, &p, format!("health-node\0{node}"), move |c| {
        c.node_checks(&node)
    })
    .await
}

async fn health_state(State(st): St, Path(state): Path<String>, Query(q): Params) -> HttpResult {
    let p = read_params(&st, &q)?;
    // Validate once up front so a bad state is a 400, not an error inside the read.
    CatalogState::new(&st.datacenter)
        .checks_in_state(&state)
        .map_err(ApiError::BadRequest)?;
    read(&st, &p, format!("state\0{state}"), move |c| {
        c.checks_in_state(&state).unwrap_or_default()
    })
    .await
}

async fn status_leader(State(st): St, Query(q): Params) -> HttpResult {
    check_dc(&st, &q)?;
    json(&st, &st.raft.status().leader_addr().unwrap_or_default())
}

async fn status_peers(State(st): St, Query(q): Params) -> HttpResult {
    check_dc(&st, &q)?;
    let s = st.raft.status();
    let peers: Vec<String> = s
        .voters
        .iter()
        .filter_map(|id| s.peers.get(id).map(|p| p.rpc_addr.clone()))
        .collect();
    json(&st, &peers)
}

async fn raft_configuration(State(st): St, Query(q): Params) -> HttpResult {
    check_dc(&st, &q)?;
    let s = st.raft.status();
    if !s.in_cluster {
        return Err(ApiError::NoLeader.into());
    }
    let server = |id: &u64, voter: bool| {
        let p = s.peers.get(id);
        RaftServer {
            id: format!("{id:016x}"),
            node: p.map(|p| p.node.clone()).unwrap_or_default(),
            address: p.map(|p| p.rpc_addr.clone()).unwrap_or_default(),
            leader: *id == s.leader_id,
            voter,
            protocol_version: "3".into(),
        }
    };
    let mut servers: Vec<RaftServer> = s.voters.iter().map(|id| server(id, true)).collect();
    servers.extend(s.learners.iter().map(|id| server(id, false)));
    let index = st
        .raft
        .shared
        .applied
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .index;
    json(&st, &RaftConfiguration { servers, index })
}

async fn raft_remove_peer(State(st): St, Query(q): Params) -> HttpResult {
    check_dc(&st, &q)?;
    let s = st.raft.status();
    let id = match (value(&q, "id"), value(&q, "address")) {
        (Some(id), _) if !id.is_empty() => u64::from_str_radix(id, 16)
            .ok()
            .or_else(|| s.peers.values().find(|p| p.node == id).map(|p| p.id))
            .ok_or_else(|| ApiError::BadRequest(format!("Unknown peer id {id:?}")))?,
        (_, Some(addr)) if !addr.is_empty() => s
            .peers
            .values()
            .find(|p| p.rpc_addr == addr)
            .map(|p| p.id)
            .ok_or_else(|| ApiError::BadRequest(format!("Unknown peer address {addr:?}")))?,
        _ => {
            return Err(
                ApiError::BadRequest("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove".into()).into(),
            )
        }
    };
    st.raft.remove_peer(id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/internal/heartbeat`: an agent says it is alive (see `liveness.rs`).
async fn heartbeat(State(st): St, body: Bytes) -> HttpResult {
    let hb: crate::rpc::Heartbeat = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if hb.node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()).into());
    }
    if !hb.datacenter.is_empty() && hb.datacenter != st.datacenter {
        return Err(ApiError::BadRequest(format!(
            "agent of datacenter {:?} heartbeating to datacenter {:?}",
            hb.datacenter, st.datacenter
        ))
        .into());
    }
    // 200 only once the leader has it: a server cut off from the leader
    // says so, and the agent moves to another server.
    st.raft.heartbeat(hb).await?;
    json(&st, &true)
}

#[cfg(test)]
mod answer_cache_tests {
    use super::*;

    /// Issue 12 item 4: the key is the raw query, so distinct spellings of one
    /// query each take an entry; what they hold in all stays under the bound.
    #[test]
    fn many_spellings_of_a_query_stay_under_the_byte_bound() {
        let cache = AnswerCache::default();
        let body = Bytes::from(vec![b'x'; ANSWER_CACHE_MAX_BODY]);
        for i in 0..ANSWER_CACHE_ENTRIES {
            let key = format!(
                "/v1/health/service/web?{}",
                "tag=v1&".repeat(i % 100) + &i.to_string()
            );
            cache.put(
                &key,
                CachedAnswer {
                    applied: 1,
                    index: 1,
                    body: body.clone(),
                },
            );
            assert!(
                cache.bytes() <= ANSWER_CACHE_BYTES,
                "{} bytes",
                cache.bytes()
            );
        }
        // Overlong keys are not kept at all.
        let long = "tag=v1&".repeat(ANSWER_CACHE_MAX_KEY);
        cache.put(
            &long,
            CachedAnswer {
                applied: 2,
                index: 2,
                body: Bytes::from_static(b"[]"),
            },
        );
        assert!(cache.get(&long, 2).is_none());
        // Replacing an entry keeps the count right.
        let before = cache.bytes();
        let key = "/v1/catalog/services";
        for applied in 3..10 {
            cache.put(
                key,
                CachedAnswer {
                    applied,
                    index: applied,
                    body: Bytes::from_static(b"{}"),
                },
            );
        }
        assert!(cache.bytes() <= before + key.len() + 2);
        assert_eq!(cache.get(key, 9).map(|a| a.index), Some(9));
    }
}
