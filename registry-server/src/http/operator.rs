//! `/v1/operator/raft/*` and `/v1/operator/autopilot/health|state`: the Raft
//! configuration, removing a server, handing leadership on, and the leader's
//! view of every server's health (both autopilot answers are built from one
//! [`server_views`]; the leader-only requests are answered or passed on by one
//! [`at_leader`]). Served on the HTTP port only, never on the RPC port.
//! Requests reach the leader through [`crate::leader_client`].

use super::params::value;
use super::{json, AppState, HttpResult, Params, St};
use crate::leader_client::{call_leader, hand_over_leadership, FORWARDED_HEADER};
use crate::raft::{RaftStatus, Role};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Scalar};
use registry_api::{duration, Error as ApiError, RaftConfiguration, RaftServer};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub(super) async fn raft_configuration(State(st): St, auth: Authorized) -> HttpResult {
    auth.require_scalar(Scalar::Operator, Access::Read)?;
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
    let index = st.raft.applied_index();
    json(&st, &RaftConfiguration { servers, index })
}

pub(super) async fn raft_remove_peer(
    State(st): St,
    auth: Authorized,
    Query(q): Params,
) -> HttpResult {
    auth.require_scalar(Scalar::Operator, Access::Write)?;
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

/// Consul's default autopilot `MaxTrailingLogs`: a server this far behind
/// the leader's log is unhealthy.
const MAX_TRAILING_LOGS: u64 = 250;

/// Consul's default autopilot `LastContactThreshold`; ours is at least three
/// Raft heartbeat intervals, so a slow heartbeat setting never reads as unhealthy.
const LAST_CONTACT_THRESHOLD: Duration = Duration::from_millis(200);

/// `{"Success": true}`, the answer of `transfer-leader`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TransferLeaderReply {
    /// Whether another server leads now.
    success: bool,
}

/// `GET /v1/operator/autopilot/health` (Consul's `OperatorHealthReply`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AutopilotHealth {
    /// Every server is healthy.
    healthy: bool,
    /// How many voters may fail before the cluster loses its quorum.
    failure_tolerance: usize,
    /// One entry per server in the Raft configuration.
    servers: Vec<ServerHealth>,
}

/// `GET /v1/operator/autopilot/state` (Consul's `AutopilotState`; the
/// enterprise-only `ReadReplicas`, `RedundancyZones` and `Upgrade` are
/// omitted, as Consul's community edition omits them).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AutopilotState {
    /// Every server is healthy.
    healthy: bool,
    /// How many voters may fail before the cluster loses its quorum.
    failure_tolerance: usize,
    /// The same without redundancy zones (an enterprise feature).
    optimistic_failure_tolerance: usize,
    /// Every server of the configuration, by id.
    servers: BTreeMap<String, AutopilotServer>,
    /// The leader's id.
    leader: String,
    /// The voters' ids.
    voters: Vec<String>,
}

/// One server of [`AutopilotState`] (Consul's `AutopilotServer`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AutopilotServer {
    /// Raft id, as `operator/raft/configuration` shows it.
    #[serde(rename = "ID")]
    id: String,
    /// Node name.
    name: String,
    /// RPC address.
    address: String,
    /// `alive` while the leader hears from it, `failed` after an election
    /// timeout of silence (Raft's view; there is no gossip).
    node_status: &'static str,
    /// The version this (the leader's) binary runs.
    version: String,
    /// Time since the leader last heard from it (Go duration); `null` if never
    /// while leading.
    last_contact: Option<String>,
    /// The leader's current term.
    last_term: u64,
    /// The highest log index known to be on it.
    last_index: u64,
    /// In contact, caught up, and alive.
    healthy: bool,
    /// Since when `healthy` has had its value (RFC 3339).
    stable_since: String,
    /// Read replicas are an enterprise feature: always false.
    read_replica: bool,
    /// `leader`, `voter` or `non-voter` (a learner not yet promoted).
    status: &'static str,
    /// Its node metadata (none is kept for servers).
    meta: BTreeMap<String, String>,
    /// What autopilot wants it to be: `voter` (the only type outside Consul
    /// Enterprise).
    node_type: &'static str,
}

/// One server of [`AutopilotHealth`] (Consul's `ServerHealth`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServerHealth {
    /// Raft id, as `operator/raft/configuration` shows it.
    #[serde(rename = "ID")]
    id: String,
    /// Node name.
    name: String,
    /// RPC address.
    address: String,
    /// `alive` while the leader hears from it, `failed` after an election
    /// timeout of silence (we have no gossip; this is Raft's view).
    serf_status: &'static str,
    /// The version this (the leader's) binary runs; servers do not report theirs.
    version: String,
    /// Whether it leads.
    leader: bool,
    /// Time since the leader last heard from it, as a Go duration (`-1ns`
    /// if it never has while leading).
    last_contact: String,
    /// The leader's current term (followers' last log terms are not tracked).
    last_term: u64,
    /// The highest log index known to be on it.
    last_index: u64,
    /// In contact, caught up, and alive.
    healthy: bool,
    /// Whether it votes.
    voter: bool,
    /// Since when `healthy` has had its current value (RFC 3339), as seen by this leader.
    stable_since: String,
}

/// `PUT /v1/operator/raft/transfer-leader[?id=]`: hands leadership to another
/// voter and answers once another server leads. Followers pass it to the
/// leader, as Consul forwards the RPC.
pub(super) async fn raft_transfer_leader(
    State(st): St,
    auth: Authorized,
    Query(q): Params,
    headers: HeaderMap,
    uri: Uri,
) -> HttpResult {
    auth.require_scalar(Scalar::Operator, Access::Write)?;
    let s = match at_leader(&st, Method::PUT, &uri, &headers).await? {
        AtLeader::Here(s) => s,
        AtLeader::Answered(answer) => return Ok(answer),
    };
    let target = match value(&q, "id").filter(|id| !id.is_empty()) {
        Some(id) => Some(
            u64::from_str_radix(id, 16)
                .ok()
                .filter(|n| s.peers.contains_key(n))
                .or_else(|| s.peers.values().find(|p| p.node == id).map(|p| p.id))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("cannot find peer: unknown server id {id:?}"))
                })?,
        ),
        None => None,
    };
    hand_over_leadership(&st.raft, target).await?;
    json(&st, &TransferLeaderReply { success: true })
}

/// What the leader knows of one server, for both autopilot answers.
struct ServerView {
    /// Raft id.
    id: u64,
    /// Node name.
    name: String,
    /// RPC address.
    address: String,
    /// Heard from within an election timeout.
    alive: bool,
    /// Whether it leads.
    leader: bool,
    /// Time since the leader last heard from it; `None` if never while leading.
    contact: Option<Duration>,
    /// The highest log index known to be on it.
    last_index: u64,
    /// In contact, caught up, and alive.
    healthy: bool,
    /// Whether it votes.
    voter: bool,
    /// Since when `healthy` has had its value.
    stable_since: SystemTime,
}

/// The leader's view of every server of the configuration (Consul's autopilot
/// rules with its default settings: `LastContactThreshold`,
/// `MaxTrailingLogs`), voters first.
fn server_views(s: &RaftStatus, tuning: &crate::raft::RaftTuning) -> Vec<ServerView> {
    let threshold = LAST_CONTACT_THRESHOLD.max(tuning.tick * tuning.heartbeat_ticks as u32 * 3);
    let now = Instant::now();
    let leader_index = s.commit;
    s.voters
        .iter()
        .map(|id| (*id, true))
        .chain(s.learners.iter().map(|id| (*id, false)))
        .map(|(id, voter)| {
            let peer = s.peers.get(&id);
            let (contact, index) = if id == s.id {
                (Some(Duration::ZERO), leader_index)
            } else {
                let p = s.progress.get(&id);
                (
                    p.and_then(|p| p.last_contact)
                        .map(|at| now.saturating_duration_since(at)),
                    p.map(|p| p.matched).unwrap_or(0),
                )
            };
            let alive = contact.is_some_and(|c| c < tuning.election_timeout());
            let healthy = alive
                && contact.is_some_and(|c| c < threshold)
                && index + MAX_TRAILING_LOGS >= leader_index;
            ServerView {
                id,
                name: peer.map(|p| p.node.clone()).unwrap_or_default(),
                address: peer.map(|p| p.rpc_addr.clone()).unwrap_or_default(),
                alive,
                leader: id == s.id,
                contact,
                last_index: index,
                healthy,
                voter,
                stable_since: stable_since(s.id, id, healthy),
            }
        })
        .collect()
}

/// How many voters may fail before the quorum is lost: healthy voters beyond
/// a majority of all voters.
fn failure_tolerance(s: &RaftStatus, views: &[ServerView]) -> usize {
    let healthy_voters = views.iter().filter(|v| v.voter && v.healthy).count();
    healthy_voters.saturating_sub(s.voters.len() / 2 + 1)
}

/// A Raft id as `operator/raft/configuration` names it.
fn server_id(id: u64) -> String {
    format!("{id:016x}")
}

/// `GET /v1/operator/autopilot/health`: the leader's view of every server,
/// 429 when one is unhealthy (as Consul answers). Followers pass it to the
/// leader.
pub(super) async fn autopilot_health(
    State(st): St,
    auth: Authorized,
    headers: HeaderMap,
    uri: Uri,
) -> HttpResult {
    auth.require_scalar(Scalar::Operator, Access::Read)?;
    let s = match at_leader(&st, Method::GET, &uri, &headers).await? {
        AtLeader::Here(s) => s,
        AtLeader::Answered(answer) => return Ok(answer),
    };
    let views = server_views(&s, st.raft.tuning());
    let reply = AutopilotHealth {
        healthy: views.iter().all(|v| v.healthy),
        failure_tolerance: failure_tolerance(&s, &views),
        servers: views
            .iter()
            .map(|v| ServerHealth {
                id: server_id(v.id),
                name: v.name.clone(),
                address: v.address.clone(),
                serf_status: if v.alive { "alive" } else { "failed" },
                version: env!("CARGO_PKG_VERSION").into(),
                leader: v.leader,
                last_contact: v
                    .contact
                    .map(duration::format)
                    .unwrap_or_else(|| "-1ns".into()),
                last_term: s.term,
                last_index: v.last_index,
                healthy: v.healthy,
                voter: v.voter,
                stable_since: duration::rfc3339(v.stable_since),
            })
            .collect(),
    };
    let mut resp = json(&st, &reply)?;
    if !reply.healthy {
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    }
    Ok(resp)
}

/// `GET /v1/operator/autopilot/state` (Consul's `AutopilotState`, the fields
/// Consul's community edition fills): the same view as the health, keyed by
/// server id, always 200. Followers pass it to the leader.
pub(super) async fn autopilot_state(
    State(st): St,
    auth: Authorized,
    headers: HeaderMap,
    uri: Uri,
) -> HttpResult {
    auth.require_scalar(Scalar::Operator, Access::Read)?;
    let s = match at_leader(&st, Method::GET, &uri, &headers).await? {
        AtLeader::Here(s) => s,
        AtLeader::Answered(answer) => return Ok(answer),
    };
    let views = server_views(&s, st.raft.tuning());
    let tolerance = failure_tolerance(&s, &views);
    let servers = views
        .iter()
        .map(|v| {
            let status = match (v.leader, v.voter) {
                (true, _) => "leader",
                (false, true) => "voter",
                (false, false) => "non-voter",
            };
            let server = AutopilotServer {
                id: server_id(v.id),
                name: v.name.clone(),
                address: v.address.clone(),
                node_status: if v.alive { "alive" } else { "failed" },
                version: env!("CARGO_PKG_VERSION").into(),
                last_contact: v.contact.map(duration::format),
                last_term: s.term,
                last_index: v.last_index,
                healthy: v.healthy,
                stable_since: duration::rfc3339(v.stable_since),
                read_replica: false,
                status,
                meta: BTreeMap::new(),
                node_type: "voter",
            };
            (server_id(v.id), server)
        })
        .collect();
    let reply = AutopilotState {
        healthy: views.iter().all(|v| v.healthy),
        failure_tolerance: tolerance,
        optimistic_failure_tolerance: tolerance,
        servers,
        leader: server_id(s.id),
        voters: s.voters.iter().map(|id| server_id(*id)).collect(),
    };
    json(&st, &reply)
}

/// By (leader, server): its last health and since when it has had it.
type StableTimes = HashMap<(u64, u64), (bool, SystemTime)>;

/// Since when `server`'s health, as leader `me` judges it, has been `healthy`:
/// remembered per (leader, server) for the life of the process (several
/// servers share one process in tests).
fn stable_since(me: u64, server: u64, healthy: bool) -> SystemTime {
    static SINCE: OnceLock<Mutex<StableTimes>> = OnceLock::new();
    let mut map = SINCE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let entry = map
        .entry((me, server))
        .or_insert((healthy, SystemTime::now()));
    if entry.0 != healthy {
        *entry = (healthy, SystemTime::now());
    }
    entry.1
}

/// Where an operator request that only the leader answers is answered.
enum AtLeader {
    /// Here: this server leads (its status).
    Here(RaftStatus),
    /// Elsewhere: the leader's answer, passed back as is.
    Answered(Response),
}

/// Whether this server answers a leader-only operator request itself: it does
/// when it leads; outside a cluster the request is `No cluster leader`; on a
/// follower it is passed to the leader with `method` (as Consul forwards the
/// RPC) and the leader's answer is the reply.
async fn at_leader(
    st: &AppState,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> HttpResult<AtLeader> {
    let s = st.raft.status();
    if !s.in_cluster {
        return Err(ApiError::NoLeader.into());
    }
    if s.role != Role::Leader {
        return forward_to_leader(&s, method, uri, headers)
            .await
            .map(AtLeader::Answered);
    }
    Ok(AtLeader::Here(s))
}

/// Passes an operator request to the leader's HTTP port and its answer back.
/// A request that was already passed on once is answered with `No cluster
/// leader` instead (leadership moved meanwhile).
async fn forward_to_leader(
    s: &RaftStatus,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> HttpResult {
    if headers.contains_key(FORWARDED_HEADER) {
        return Err(ApiError::NoLeader.into());
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let answer = call_leader(s, method, path, None).await?;
    let mut out = (answer.status, answer.body).into_response();
    if let Some(ct) = answer.content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}
