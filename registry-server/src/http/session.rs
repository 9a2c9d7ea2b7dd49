//! `/v1/session/*` (<https://developer.hashicorp.com/consul/api-docs/session>):
//! create, destroy and renew through Raft; info, node and list as reads
//! (blocking, every consistency mode). A create that reached this server
//! directly is this server's node's, unless the body names one (an agent
//! fills in its own before forwarding, `registry-client/src/http/session.rs`).
//! Must not validate beyond `state::session::validate_create` (run again at
//! apply, where the node and checks are looked up).

use super::params::read_params;
use super::{acl_retain, json, read_then, HttpResult, Params, St};
use crate::state::session::{validate_create, SessionId};
use crate::state::{Command, Outcome};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Authz, Resource};
use registry_api::kv::{decode_session_create, SessionCreated, SessionEntry};
use registry_api::Error as ApiError;

/// `PUT /v1/session/create`: the new session's ID.
pub(super) async fn session_create(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
    let mut session = decode_session_create(&body, &st.node).map_err(ApiError::BadRequest)?;
    auth.require(Resource::Session, &session.node, Access::Write)?;
    // Chosen here, before the proposal: every replica applies the same ID.
    session.id = registry_api::ids::new_uuid();
    validate_create(&mut session).map_err(ApiError::BadRequest)?;
    let id = session.id.clone();
    st.raft.propose(Command::SessionCreate(session)).await?;
    json(&st, &SessionCreated { id })
}

/// `PUT /v1/session/destroy/:id`: `true`, whether or not it still existed
/// (Consul's destroy is idempotent).
pub(super) async fn session_destroy(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    if !registry_api::ids::is_uuid(&id) {
        // Consul's docs: "If the session UUID is malformed, an error is returned".
        return Err(ApiError::BadRequest(format!("Invalid session ID {id:?}: not a UUID")).into());
    }
    vet_session_write(&st, &auth, &id)?;
    st.raft
        .propose(Command::SessionDestroy(SessionId { id }))
        .await?;
    json(&st, &true)
}

/// `PUT /v1/session/renew/:id`: `[session]`, or 404 once it is gone. The
/// renewal is a Raft write, so it counts on any server and survives a leader
/// change (the leader's TTL timers read it from the applied state).
pub(super) async fn session_renew(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    vet_session_write(&st, &auth, &id)?;
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

/// A destroy or renew needs `session:write` on the session's node (Consul's
/// `Session.Apply`); a session that does not exist is left to the command.
fn vet_session_write(st: &super::AppState, auth: &Authz, id: &str) -> Result<(), ApiError> {
    if auth.allows_all() {
        return Ok(());
    }
    let node = st
        .raft
        .with_applied(|s, _| s.sessions.get(id).map(|e| e.node));
    match node {
        Some(node) => auth.require(Resource::Session, &node, Access::Write),
        None => Ok(()),
    }
}

/// The ACL step of a session list: the sessions of nodes the token may read
/// sessions of.
fn visible(auth: &Authorized) -> impl Fn(Vec<SessionEntry>) -> (Vec<SessionEntry>, bool) {
    let acl = auth.0.clone();
    move |mut list| {
        let dropped = acl_retain(&acl, &mut list, |e| {
            acl.allows(Resource::Session, &e.node, Access::Read)
        });
        (list, dropped)
    }
}

/// `GET /v1/session/info/:id`: `[session]`, or `[]` when it does not exist.
pub(super) async fn session_info(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let key = format!("session-info\0{id}");
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| s.sessions.info(&id),
        visible(&auth),
    )
    .await
}

/// `GET /v1/session/node/:node`.
pub(super) async fn session_node(
    State(st): St,
    auth: Authorized,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let key = format!("session-node\0{node}");
    let query = move |s: &crate::state::StateStore| s.sessions.node_sessions(&node);
    read_then(&st, &auth, &p, key, query, visible(&auth)).await
}

/// `GET /v1/session/list`.
pub(super) async fn session_list(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    let p = read_params(&q)?;
    let key = "session-list".to_string();
    read_then(&st, &auth, &p, key, |s| s.sessions.list(), visible(&auth)).await
}
