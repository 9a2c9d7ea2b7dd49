//! `/v1/acl/*` (<https://developer.hashicorp.com/consul/api-docs/acl>): bootstrap, tokens,
//! policies and roles, in Consul's shapes; and the two internal reads other processes resolve
//! tokens with (`/v1/internal/acl/authority` for agents, `/v1/internal/acl/replication` for
//! a secondary datacenter's leader). Writes go through Raft (`state/acl.rs` checks them again
//! at apply); in a secondary datacenter they are sent to the primary (Consul forwards ACL
//! writes there), except a local token's. Every endpoint answers Consul's `401 ACL support
//! disabled` with ACLs off.

use super::params::{has, read_params, value};
use super::{json, read, AppState, HttpResult, Params, St};
use crate::state::acl::{
    AclBootstrapRequest, AclDeleteRequest, AclPolicySetRequest, AclReplicateRequest,
    AclRoleSetRequest, AclTokenSetRequest,
};
use crate::state::Command;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use registry_api::acl::extract::Authorized;
use registry_api::acl::{
    Access, AclPolicy, AclRole, AclToken, Authz, Scalar, ACL_DISABLED, REDACTED,
};
use registry_api::ids::new_uuid;
use registry_api::{decode, Error as ApiError};
use serde::Serialize;

/// Consul's 401 with ACLs off.
fn enabled(st: &AppState) -> Result<(), ApiError> {
    if st.acl.enabled() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(ACL_DISABLED.into()))
    }
}

/// Middleware on the ACL write routes of a secondary datacenter: the write is made in the
/// primary (through the gateways, with the caller's token), unless it is a local token's.
pub(super) async fn writes_to_primary(State(st): St, req: Request, next: Next) -> Response {
    let write = req.method() == Method::PUT || req.method() == Method::DELETE;
    if !st.acl.enabled() || st.acl.is_primary() || !write {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, registry_api::limits::MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return super::HttpError(ApiError::TooLarge("Request body too large".into()))
                .into_response()
        }
    };
    if is_local_token_write(&st, parts.uri.path(), &body) {
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(body)))
            .await;
    }
    let primary = st.acl.config().primary(&st.datacenter).to_string();
    let path = format!(
        "{}?{}",
        parts.uri.path(),
        with_dc(parts.uri.query().unwrap_or(""), &primary)
    );
    match st
        .wan
        .forward(parts.method, &path, &parts.headers, body)
        .await
    {
        Ok(resp) => resp,
        Err(e) => super::HttpError(e).into_response(),
    }
}

/// `query` with its `dc` (any) replaced by `dc`: the write goes to the primary, once.
fn with_dc(query: &str, dc: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != "dc" {
            out.append_pair(&k, &v);
        }
    }
    out.append_pair("dc", dc);
    out.finish()
}

/// A create of a token with `"Local": true`, or a change to a local token this datacenter
/// holds: made here.
fn is_local_token_write(st: &AppState, path: &str, body: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix("/v1/acl/token") else {
        return false;
    };
    let accessor = rest.trim_start_matches('/').split('/').next().unwrap_or("");
    if !accessor.is_empty() {
        return st
            .raft
            .with_applied(|s, _| s.acl.token(accessor).is_some_and(|t| t.local));
    }
    decode::from_slice::<AclToken>(body).is_ok_and(|t| t.local)
}

/// `PUT /v1/acl/bootstrap`: the first management token, once (Consul's error after).
pub(super) async fn bootstrap(State(st): St) -> HttpResult {
    enabled(&st)?;
    let token = AclToken {
        accessor_id: new_uuid(),
        secret_id: new_uuid(),
        description: "Bootstrap Token (Global Management)".into(),
        ..Default::default()
    };
    let accessor = token.accessor_id.clone();
    st.raft
        .propose(Command::AclBootstrap(AclBootstrapRequest {
            token,
            from_config: false,
        }))
        .await
        .map_err(|e| match ApiError::from(e) {
            // Consul answers a second bootstrap with 403 and this text.
            ApiError::BadRequest(text) if text.starts_with("ACL bootstrap no longer allowed") => {
                ApiError::Forbidden(text)
            }
            other => other,
        })?;
    let token = st.raft.with_applied(|s, _| s.acl.token(&accessor));
    json(
        &st,
        &token.ok_or_else(|| ApiError::Internal("bootstrap token not found".into()))?,
    )
}

/// A token as the caller may see it: the SecretID only with `acl:write` (Consul's
/// redaction).
fn shown(auth: &Authz, mut token: AclToken) -> AclToken {
    if !auth.allows_scalar(Scalar::Acl, Access::Write) {
        token.secret_id = REDACTED.into();
    }
    token
}

/// `PUT /v1/acl/token`: a new token; AccessorID and SecretID are made unless given.
pub(super) async fn token_create(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let mut token: AclToken = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if token.accessor_id.is_empty() {
        token.accessor_id = new_uuid();
    }
    if token.secret_id.is_empty() {
        token.secret_id = new_uuid();
    }
    let accessor = token.accessor_id.clone();
    st.raft
        .propose(Command::AclTokenSet(AclTokenSetRequest {
            token,
            create: true,
        }))
        .await?;
    token_answer(&st, &auth, &accessor)
}

/// The stored token `accessor` as the answer of a write.
fn token_answer(st: &AppState, auth: &Authz, accessor: &str) -> HttpResult {
    let token = st.raft.with_applied(|s, _| s.acl.token(accessor));
    match token {
        Some(t) => json(st, &shown(auth, t)),
        None => Err(ApiError::Internal("the token is gone".into()).into()),
    }
}

/// `GET /v1/acl/token/self`: the caller's own token, secret included.
pub(super) async fn token_self(State(st): St, auth: Authorized, req: Request) -> HttpResult {
    enabled(&st)?;
    // Resolving succeeded (or `Authorized` would have answered 403 ACL not found).
    let _ = auth;
    let secret = registry_api::acl::extract::token_of(&req)
        .unwrap_or_else(|| registry_api::acl::ANONYMOUS_SECRET.into());
    let token = st.raft.with_applied(|s, _| s.acl.token_by_secret(&secret));
    match token {
        Some(t) => json(&st, &t),
        None => Err(ApiError::Forbidden(registry_api::acl::ACL_NOT_FOUND.into()).into()),
    }
}

/// `GET /v1/acl/token/:accessor`.
pub(super) async fn token_read(
    State(st): St,
    auth: Authorized,
    Path(accessor): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    let token = st.raft.with_applied(|s, _| s.acl.token(&accessor));
    match token {
        Some(t) => json(&st, &shown(&auth, t)),
        None => Err(ApiError::NotFound("ACL not found".into()).into()),
    }
}

/// `PUT /v1/acl/token/:accessor`: an update (a body AccessorID, if any, must match).
pub(super) async fn token_update(
    State(st): St,
    auth: Authorized,
    Path(accessor): Path<String>,
    body: Bytes,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let mut token: AclToken = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !token.accessor_id.is_empty() && token.accessor_id != accessor {
        return Err(ApiError::BadRequest(
            "Token Accessor ID in URL and payload do not match".into(),
        )
        .into());
    }
    token.accessor_id = accessor.clone();
    st.raft
        .propose(Command::AclTokenSet(AclTokenSetRequest {
            token,
            create: false,
        }))
        .await?;
    token_answer(&st, &auth, &accessor)
}

/// `PUT /v1/acl/token/:accessor/clone`: a new token with the same links, `Description` from
/// the body if given.
pub(super) async fn token_clone(
    State(st): St,
    auth: Authorized,
    Path(accessor): Path<String>,
    body: Bytes,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let Some(source) = st.raft.with_applied(|s, _| s.acl.token(&accessor)) else {
        return Err(ApiError::NotFound("ACL not found".into()).into());
    };
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct CloneBody {
        description: Option<String>,
    }
    let req: CloneBody = if body.is_empty() {
        CloneBody::default()
    } else {
        decode::from_slice(&body).map_err(ApiError::BadRequest)?
    };
    let token = AclToken {
        accessor_id: new_uuid(),
        secret_id: new_uuid(),
        description: req.description.unwrap_or(source.description),
        policies: source.policies,
        roles: source.roles,
        service_identities: source.service_identities,
        node_identities: source.node_identities,
        local: source.local,
        expiration_time: source.expiration_time,
        ..Default::default()
    };
    let new = token.accessor_id.clone();
    st.raft
        .propose(Command::AclTokenSet(AclTokenSetRequest {
            token,
            create: true,
        }))
        .await?;
    token_answer(&st, &auth, &new)
}

/// `DELETE /v1/acl/token/:accessor`: `true`.
pub(super) async fn token_delete(
    State(st): St,
    auth: Authorized,
    Path(accessor): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    if accessor == auth.accessor() {
        // Consul's rule: a request never deletes the token it is made with.
        return Err(ApiError::Forbidden(
            "Deletion of the request's authorization token is not permitted".into(),
        )
        .into());
    }
    st.raft
        .propose(Command::AclTokenDelete(AclDeleteRequest { id: accessor }))
        .await?;
    json(&st, &true)
}

/// `GET /v1/acl/tokens` (`?policy=`, `?role=` keep the tokens linked to one).
pub(super) async fn token_list(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    let p = read_params(&q)?;
    let policy = value(&q, "policy").unwrap_or("").to_string();
    let role = value(&q, "role").unwrap_or("").to_string();
    let key = format!("acl-tokens\0{policy}\0{role}");
    let acl = auth.0.clone();
    super::read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| {
            let list: Vec<AclToken> = s
                .acl
                .tokens()
                .filter(|t| policy.is_empty() || t.policies.iter().any(|l| l.id == policy))
                .filter(|t| role.is_empty() || t.roles.iter().any(|l| l.id == role))
                .collect();
            (list, s.acl.index())
        },
        move |list: Vec<AclToken>| {
            let list: Vec<AclToken> = list.into_iter().map(|t| shown(&acl, t)).collect();
            (list, false)
        },
    )
    .await
}

/// `PUT /v1/acl/policy`.
pub(super) async fn policy_create(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let mut policy: AclPolicy = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !policy.id.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify an ID when creating a policy (use PUT /v1/acl/policy/:id to update)"
                .into(),
        )
        .into());
    }
    policy.id = new_uuid();
    let id = policy.id.clone();
    st.raft
        .propose(Command::AclPolicySet(AclPolicySetRequest {
            policy,
            create: true,
        }))
        .await?;
    let policy = st.raft.with_applied(|s, _| s.acl.policy(&id).cloned());
    json(&st, &policy)
}

/// `GET /v1/acl/policy/:id`.
pub(super) async fn policy_read(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    found(&st, st.raft.with_applied(|s, _| s.acl.policy(&id).cloned()))
}

/// `GET /v1/acl/policy/name/:name`.
pub(super) async fn policy_read_by_name(
    State(st): St,
    auth: Authorized,
    Path(name): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    found(
        &st,
        st.raft
            .with_applied(|s, _| s.acl.policy_by_name(&name).cloned()),
    )
}

/// `PUT /v1/acl/policy/:id`.
pub(super) async fn policy_update(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
    body: Bytes,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let mut policy: AclPolicy = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !policy.id.is_empty() && policy.id != id {
        return Err(
            ApiError::BadRequest("Policy ID in URL and payload do not match".into()).into(),
        );
    }
    policy.id = id.clone();
    st.raft
        .propose(Command::AclPolicySet(AclPolicySetRequest {
            policy,
            create: false,
        }))
        .await?;
    found(&st, st.raft.with_applied(|s, _| s.acl.policy(&id).cloned()))
}

/// `DELETE /v1/acl/policy/:id`: `true`.
pub(super) async fn policy_delete(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    st.raft
        .propose(Command::AclPolicyDelete(AclDeleteRequest { id }))
        .await?;
    json(&st, &true)
}

/// A policy in a list: Consul's `ACLPolicyListStub` (no rules).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyStub {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    description: String,
    datacenters: Vec<String>,
    create_index: u64,
    modify_index: u64,
}

/// `GET /v1/acl/policies`.
pub(super) async fn policy_list(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    let p = read_params(&q)?;
    read(&st, &auth, &p, "acl-policies".into(), |s| {
        let list: Vec<PolicyStub> = s
            .acl
            .policies()
            .map(|p| PolicyStub {
                id: p.id.clone(),
                name: p.name.clone(),
                description: p.description.clone(),
                datacenters: p.datacenters.clone(),
                create_index: p.create_index,
                modify_index: p.modify_index,
            })
            .collect();
        (list, s.acl.index())
    })
    .await
}

/// `PUT /v1/acl/role`.
pub(super) async fn role_create(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let mut role: AclRole = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !role.id.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify an ID when creating a role (use PUT /v1/acl/role/:id to update)".into(),
        )
        .into());
    }
    role.id = new_uuid();
    let id = role.id.clone();
    st.raft
        .propose(Command::AclRoleSet(AclRoleSetRequest {
            role,
            create: true,
        }))
        .await?;
    found(&st, st.raft.with_applied(|s, _| s.acl.role(&id)))
}

/// `GET /v1/acl/role/:id`.
pub(super) async fn role_read(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    found(&st, st.raft.with_applied(|s, _| s.acl.role(&id)))
}

/// `GET /v1/acl/role/name/:name`.
pub(super) async fn role_read_by_name(
    State(st): St,
    auth: Authorized,
    Path(name): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    found(&st, st.raft.with_applied(|s, _| s.acl.role_by_name(&name)))
}

/// `PUT /v1/acl/role/:id`.
pub(super) async fn role_update(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
    body: Bytes,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let mut role: AclRole = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !role.id.is_empty() && role.id != id {
        return Err(ApiError::BadRequest("Role ID in URL and payload do not match".into()).into());
    }
    role.id = id.clone();
    st.raft
        .propose(Command::AclRoleSet(AclRoleSetRequest {
            role,
            create: false,
        }))
        .await?;
    found(&st, st.raft.with_applied(|s, _| s.acl.role(&id)))
}

/// `DELETE /v1/acl/role/:id`: `true`.
pub(super) async fn role_delete(
    State(st): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    st.raft
        .propose(Command::AclRoleDelete(AclDeleteRequest { id }))
        .await?;
    json(&st, &true)
}

/// `GET /v1/acl/roles` (`?policy=` keeps the roles linked to one).
pub(super) async fn role_list(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Read)?;
    let p = read_params(&q)?;
    let policy = value(&q, "policy").unwrap_or("").to_string();
    let key = format!("acl-roles\0{policy}");
    read(&st, &auth, &p, key, move |s| {
        let list: Vec<AclRole> = s
            .acl
            .roles()
            .filter(|r| policy.is_empty() || r.policies.iter().any(|l| l.id == policy))
            .collect();
        (list, s.acl.index())
    })
    .await
}

/// The item, or Consul's 404.
fn found<T: Serialize>(st: &AppState, item: Option<T>) -> HttpResult {
    match item {
        Some(item) => json(st, &item),
        None => Err(ApiError::NotFound("ACL not found".into()).into()),
    }
}

/// `GET /v1/internal/acl/authority`: what the request's token may do here, for an agent that
/// decides its own endpoints as the servers would (`registry_client::acl`). Any valid token
/// may read its own.
pub(super) async fn authority(State(st): St, req: Request) -> HttpResult {
    let secret = registry_api::acl::extract::token_of(&req);
    let (authority, _) = st.acl.authority(&st.raft, secret.as_deref())?;
    json(&st, &authority)
}

/// `GET /v1/internal/acl/replication`: the primary's policies, roles and global tokens for a
/// secondary's leader (blocking on the ACL index). Needs `acl:write`: it carries secrets.
pub(super) async fn replication(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    if !st.acl.is_primary() {
        return Err(ApiError::BadRequest(format!(
            "datacenter {:?} is not the primary: replicate from {:?}",
            st.datacenter,
            st.acl.config().primary(&st.datacenter)
        ))
        .into());
    }
    let mut p = read_params(&q)?;
    if has(&q, "stale") {
        // Replication reads what the primary has committed: never a stale copy.
        p.mode = crate::reads::Consistency::Default;
    }
    read(&st, &auth, &p, "acl-replication".into(), |s| {
        let replica = AclReplicateRequest {
            policies: s.acl.policies().cloned().collect(),
            roles: s.acl.roles().collect(),
            tokens: s.acl.tokens().filter(|t| !t.local).collect(),
        };
        (replica, s.acl.index())
    })
    .await
}

/// `PUT /v1/agent/token/replication` on a server (Consul's `acl set-agent-token replication`):
/// the token its leader replicates the primary's ACLs with, set at runtime. Needs
/// `acl:write`; body `{"Token": "..."}`; an empty token clears it. Not persisted.
pub(super) async fn set_replication_token(
    State(st): St,
    auth: Authorized,
    body: Bytes,
) -> HttpResult {
    enabled(&st)?;
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct TokenBody {
        token: String,
    }
    let req: TokenBody = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    let token = Some(req.token).filter(|t| !t.is_empty());
    st.acl.set_replication_token(token);
    json(&st, &true)
}

/// What the primary datacenter says the token with `secret` may do (its
/// `/v1/internal/acl/authority`, through the gateways); `None` when it does not know the token
/// or cannot be reached.
pub(super) async fn authority_from(
    wan: &super::federation::WanRoute,
    primary: &str,
    secret: &str,
) -> Option<registry_api::acl::TokenAuthority> {
    let mut headers = axum::http::HeaderMap::new();
    let mut value = axum::http::HeaderValue::from_str(secret).ok()?;
    value.set_sensitive(true);
    headers.insert(registry_api::acl::TOKEN_HEADER, value);
    let path = format!("/v1/internal/acl/authority?dc={primary}");
    let resp = wan
        .forward(Method::GET, &path, &headers, Default::default())
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.ok()?;
    serde_json::from_slice(&body).ok()
}
