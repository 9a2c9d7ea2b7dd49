//! `/v1/internal/*`, what agents ask of the servers themselves: an agent's
//! liveness heartbeat, passed to the Raft layer, which takes it to the leader
//! (`leader/liveness.rs` judges), and a force-leave an agent passes on
//! (`crate::lifecycle` decides).

use super::{json, HttpResult, Params, St};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Resource};
use registry_api::{decode, Error as ApiError};

/// `PUT /v1/internal/heartbeat`: an agent says it is alive (see `leader/liveness.rs`).
pub(super) async fn heartbeat(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
    let hb: crate::rpc::Heartbeat = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if hb.node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()).into());
    }
    // Membership is not subject to ACLs in Consul (Serf is authenticated by the gossip key,
    // not by tokens); here a heartbeat signed with the shared key is the same, so a server's
    // own agent keeps its node alive before any token is handed out. Without a key, the
    // agent's token must speak for its node.
    if st.encrypt.is_none() {
        auth.require(Resource::Node, &hb.node, Access::Write)?;
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

/// `PUT /v1/internal/force-leave/:node[?prune]`: what an agent's
/// `PUT /v1/agent/force-leave/:node` asks of the servers.
pub(super) async fn force_leave(
    State(st): St,
    auth: Authorized,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    auth.require_scalar(registry_api::acl::Scalar::Operator, Access::Write)?;
    let prune = q.iter().any(|(k, _)| k == "prune");
    crate::lifecycle::force_leave(&st.raft, &node, prune).await?;
    Ok(StatusCode::OK.into_response())
}
