//! `/v1/status/*`: the leader and the voters, from Raft's status.

use super::{json, HttpResult, St};
use axum::extract::State;

pub(super) async fn status_leader(State(st): St) -> HttpResult {
    json(&st, &st.raft.status().leader_addr().unwrap_or_default())
}

pub(super) async fn status_peers(State(st): St) -> HttpResult {
    let s = st.raft.status();
    let peers: Vec<String> = s
        .voters
        .iter()
        .filter_map(|id| s.peers.get(id).map(|p| p.rpc_addr.clone()))
        .collect();
    json(&st, &peers)
}
