//! `/v1/session/*` (<https://developer.hashicorp.com/consul/api-docs/session>):
//! create, destroy and renew through Raft; info, node and list as reads
//! (blocking, every consistency mode). A create that reached this server
//! directly is this server's node's, unless the body names one (an agent
//! fills in its own before forwarding, `registry-client/src/http/session.rs`).
//! Must not validate beyond `state::session::validate_create` (run again at
//! apply, where the node and checks are looked up).

use super::params::read_params;
use super::{json, read, HttpResult, Params, St};
use crate::state::session::{validate_create, SessionId};
use crate::state::{Command, Outcome};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use registry_api::kv::{decode_session_create, SessionCreated};
use registry_api::Error as ApiError;

/// `PUT /v1/session/create`: the new session's ID.
pub(super) async fn session_create(State(st): St, body: Bytes) -> HttpResult {
    let mut session = decode_session_create(&body, &st.node).map_err(ApiError::BadRequest)?;
    // Chosen here, before the proposal: every replica applies the same ID.
    session.id = registry_api::ids::new_uuid();
    validate_create(&mut session).map_err(ApiError::BadRequest)?;
    let id = session.id.clone();
    st.raft.propose(Command::SessionCreate(session)).await?;
    json(&st, &SessionCreated { id })
}

/// `PUT /v1/session/destroy/:id`: `true`, whether or not it still existed
/// (Consul's destroy is idempotent).
pub(super) async fn session_destroy(State(st): St, Path(id): Path<String>) -> HttpResult {
    if !registry_api::ids::is_uuid(&id) {
        // Consul's docs: "If the session UUID is malformed, an error is returned".
        return Err(ApiError::BadRequest(format!("Invalid session ID {id:?}: not a UUID")).into());
    }
    st.raft
        .propose(Command::SessionDestroy(SessionId { id }))
        .await?;
    json(&st, &true)
}

/// `PUT /v1/session/renew/:id`: `[session]`, or 404 once it is gone. The
/// renewal is a Raft write, so it counts on any server and survives a leader
/// change (the leader's TTL timers read it from the applied state).
pub(super) async fn session_renew(State(st): St, Path(id): Path<String>) -> HttpResult {
    let outcome = st
        .raft
        .propose(Command::SessionRenew(SessionId { id: id.clone() }))
        .await?;
    match outcome {
        Outcome::Session(Some(s)) => json(&st, &[s]),
        Outcome::Session(None) => {
            Err(ApiError::NotFound(format!("Session id '{id}' not found")).into())
        }
        other => {
            Err(ApiError::Internal(format!("unexpected outcome of a renewal: {other:?}")).into())
        }
    }
}

/// `GET /v1/session/info/:id`: `[session]`, or `[]` when it does not exist.
pub(super) async fn session_info(
    State(st): St,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let key = format!("session-info\0{id}");
    read(&st, &p, key, move |s| s.sessions.info(&id)).await
}

/// `GET /v1/session/node/:node`.
pub(super) async fn session_node(
    State(st): St,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let key = format!("session-node\0{node}");
    read(&st, &p, key, move |s| s.sessions.node_sessions(&node)).await
}

/// `GET /v1/session/list`.
pub(super) async fn session_list(State(st): St, Query(q): Params) -> HttpResult {
    let p = read_params(&q)?;
    read(&st, &p, "session-list".to_string(), |s| s.sessions.list()).await
}
