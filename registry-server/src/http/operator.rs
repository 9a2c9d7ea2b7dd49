//! `/v1/operator/raft/*` and `/v1/operator/autopilot/health`: the Raft
//! configuration, removing a server, handing leadership on, and the leader's
//! view of every server's health. Served on the HTTP port only, never on the
//! RPC port.

use super::params::value;
use super::{json, HttpResult, Params, St};
use crate::raft::{RaftError, RaftStatus, Role};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use registry_api::{duration, Error as ApiError, RaftConfiguration, RaftServer};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

pub(super) async fn raft_configuration(State(st): St) -> HttpResult {
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

pub(super) async fn raft_remove_peer(State(st): St, Query(q): Params) -> HttpResult {
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

/// Marks a request one server passed to its leader, so that a server that is
/// no longer leader when it arrives answers rather than passing it on again.
const FORWARDED_HEADER: &str = "x-registry-forwarded-to-leader";

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
    Query(q): Params,
    headers: HeaderMap,
    uri: Uri,
) -> HttpResult {
    let s = st.raft.status();
    if !s.in_cluster {
        return Err(ApiError::NoLeader.into());
    }
    if s.role != Role::Leader {
        return forward_to_leader(&s, Method::PUT, &uri, &headers).await;
    }
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
    let to = st.raft.transfer_leader(target).await.map_err(|e| match e {
        // Consul's wording: hashicorp/raft's reason behind its own prefix.
        RaftError::Rejected(reason) => {
            ApiError::Internal(format!("Error transferring leadership: {reason}"))
        }
        e => e.into(),
    })?;
    // raft-rs gives up a transfer after an election timeout; wait a little
    // longer than that for the new leader to win its election.
    let tuning = st.raft.tuning();
    let deadline = Instant::now() + tuning.election_timeout() * 3;
    loop {
        let (leader, fatal) = st.raft.with_status(|s| (s.leader_id, s.fatal.is_some()));
        if leader != 0 && leader != s.id {
            info!(from = s.id, to, leader, "leadership transferred");
            return json(&st, &TransferLeaderReply { success: true });
        }
        if fatal || Instant::now() >= deadline {
            return Err(ApiError::Internal(
                "Error transferring leadership: leadership transfer timeout".into(),
            )
            .into());
        }
        tokio::time::sleep(tuning.tick).await;
    }
}

/// `GET /v1/operator/autopilot/health`: the leader's view of every server,
/// 429 when one is unhealthy (as Consul answers). Followers pass it to the
/// leader.
pub(super) async fn autopilot_health(State(st): St, headers: HeaderMap, uri: Uri) -> HttpResult {
    let s = st.raft.status();
    if !s.in_cluster {
        return Err(ApiError::NoLeader.into());
    }
    if s.role != Role::Leader {
        return forward_to_leader(&s, Method::GET, &uri, &headers).await;
    }
    let tuning = st.raft.tuning();
    let threshold = LAST_CONTACT_THRESHOLD.max(tuning.tick * tuning.heartbeat_ticks as u32 * 3);
    let now = Instant::now();
    let leader_index = s.commit;
    let mut servers = Vec::new();
    for (id, voter) in s
        .voters
        .iter()
        .map(|id| (*id, true))
        .chain(s.learners.iter().map(|id| (*id, false)))
    {
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
        servers.push(ServerHealth {
            id: format!("{id:016x}"),
            name: peer.map(|p| p.node.clone()).unwrap_or_default(),
            address: peer.map(|p| p.rpc_addr.clone()).unwrap_or_default(),
            serf_status: if alive { "alive" } else { "failed" },
            version: env!("CARGO_PKG_VERSION").into(),
            leader: id == s.id,
            last_contact: contact
                .map(duration::format)
                .unwrap_or_else(|| "-1ns".into()),
            last_term: s.term,
            last_index: index,
            healthy,
            voter,
            stable_since: stable_since(s.id, id, healthy),
        });
    }
    let healthy_voters = servers.iter().filter(|v| v.voter && v.healthy).count();
    let quorum = s.voters.len() / 2 + 1;
    let reply = AutopilotHealth {
        healthy: servers.iter().all(|v| v.healthy),
        failure_tolerance: healthy_voters.saturating_sub(quorum),
        servers,
    };
    let mut resp = json(&st, &reply)?;
    if !reply.healthy {
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    }
    Ok(resp)
}

/// By (leader, server): its last health and since when it has had it.
type StableTimes = HashMap<(u64, u64), (bool, SystemTime)>;

/// Since when `server`'s health, as leader `me` judges it, has been `healthy`:
/// remembered per (leader, server) for the life of the process (several
/// servers share one process in tests).
fn stable_since(me: u64, server: u64, healthy: bool) -> String {
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
    rfc3339(entry.1)
}

/// `2017-03-06T22:07:51Z` (whole seconds, UTC), without a date library.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
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
    if headers.contains_key(FORWARDED_HEADER) || s.leader_id == 0 || s.leader_id == s.id {
        return Err(ApiError::NoLeader.into());
    }
    let Some(leader) = s.peers.get(&s.leader_id) else {
        return Err(ApiError::NoLeader.into());
    };
    let base = leader_http_base(&leader.http_addr, &leader.rpc_addr).ok_or_else(|| {
        ApiError::Internal(format!("leader {} has no usable HTTP address", leader.node))
    })?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default()
    });
    let resp = client
        .request(method, format!("{base}{path}"))
        .header(FORWARDED_HEADER, "1")
        .send()
        .await
        .map_err(|e| {
            warn!(leader = %leader.node, error = %e, "could not pass an operator request to the leader");
            ApiError::Internal(format!("failed to reach the leader {}: {e}", leader.node))
        })?;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ApiError::Internal(format!("failed to read the leader's answer: {e}")))?;
    let mut out = (status, body).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}

/// `http://host:port` of a server's HTTP port: its advertised HTTP address,
/// with the RPC address's host when it listens on every interface.
fn leader_http_base(http_addr: &str, rpc_addr: &str) -> Option<String> {
    let http: SocketAddr = http_addr.parse().ok()?;
    if !http.ip().is_unspecified() {
        return Some(format!("http://{http}"));
    }
    let host = rpc_addr.rsplit_once(':').map(|(h, _)| h)?;
    Some(format!("http://{host}:{}", http.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_488_838_071);
        assert_eq!(rfc3339(t), "2017-03-06T22:07:51Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn the_leader_is_reached_on_its_http_port() {
        assert_eq!(
            leader_http_base("127.0.0.1:8500", "10.0.0.1:8300").as_deref(),
            Some("http://127.0.0.1:8500")
        );
        assert_eq!(
            leader_http_base("0.0.0.0:8500", "10.0.0.1:8300").as_deref(),
            Some("http://10.0.0.1:8500")
        );
    }
}
