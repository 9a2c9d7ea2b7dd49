//! `/v1/operator/raft/*`: the Raft configuration, and removing a server.
//! Served on the HTTP port only, never on the RPC port.

use super::params::value;
use super::{json, HttpResult, Params, St};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use registry_api::{Error as ApiError, RaftConfiguration, RaftServer};

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
