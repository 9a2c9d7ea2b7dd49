//! The agent endpoints' ACL step (Consul's rules in `agent/agent_endpoint.go`, documented in
//! the "ACL" table of each endpoint on <https://developer.hashicorp.com/consul/api-docs/agent>):
//! the standalone agent's auth step ([`authenticate`], the server's is its own router's), the
//! `default` token for requests that carry none ([`default_token`]), the checks the handlers
//! share, and `PUT /v1/agent/token/:type`.
//!
//! Owns: which right each local object needs. Must not touch: how a token is resolved
//! ([`crate::acl`]) or what a right allows ([`registry_api::acl`]).

use super::params::body;
use super::HttpResult;
use crate::agent::Agent;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use registry_api::acl::extract::{token_of, Authorized, ResolvedToken};
use registry_api::acl::{Access, Authz, Resource, Scalar, FILTERED_HEADER, TOKEN_HEADER};
use registry_api::Error as ApiError;
use serde::Deserialize;
use std::sync::Arc;

/// The standalone agent's auth step: resolves the request's token through the servers
/// ([`crate::acl::AclResolver`]) and leaves the outcome for the handlers' [`Authorized`].
pub(super) async fn authenticate(
    State(agent): State<Arc<Agent>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = token_of(&req);
    let resolved = agent.acl().resolve(token.as_deref()).await;
    req.extensions_mut().insert(ResolvedToken(resolved));
    next.run(req).await
}

/// Gives a request that carries no token the agent's `default` token (Consul's
/// `acl.tokens.default`), as a header, so that the auth step and a server answering a
/// forwarded request both see it.
pub(super) async fn default_token(
    State(agent): State<Arc<Agent>>,
    mut req: Request,
    next: Next,
) -> Response {
    if token_of(&req).is_none() {
        if let Some(v) = agent
            .tokens()
            .default_token()
            .and_then(|t| HeaderValue::from_str(&t).ok())
        {
            let mut v = v;
            v.set_sensitive(true);
            req.headers_mut().insert(TOKEN_HEADER, v);
        }
    }
    next.run(req).await
}

/// The request's token as sent (`X-Consul-Token`, `Authorization: Bearer`, `?token=`), for
/// the operations that keep it (a service is synced with the token it was registered with).
pub(super) struct RequestToken(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestToken(registry_api::acl::request_token(
            |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
            parts.uri.query(),
        )))
    }
}

/// `service:write` on the service of local instance `id`; Consul's 404 for an unknown one
/// (after the rights: an unknown id tells nothing to a token that may not write).
pub(super) fn require_service_write(agent: &Agent, auth: &Authz, id: &str) -> Result<(), ApiError> {
    match agent.service(id) {
        Some(svc) => auth.require(Resource::Service, &svc.service, Access::Write),
        None => Err(ApiError::NotFound(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        ))),
    }
}

/// The right to change local check `id` (Consul's `vetCheckUpdate`): `service:write` on its
/// service, `node:write` on this node for a node check; 404 for an unknown check.
pub(super) fn require_check_write(agent: &Agent, auth: &Authz, id: &str) -> Result<(), ApiError> {
    match agent.check_service_name(id) {
        Some(Some(service)) => auth.require(Resource::Service, &service, Access::Write),
        Some(None) => auth.require(Resource::Node, &agent.config().node, Access::Write),
        None => Err(ApiError::NotFound(format!(
            "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
        ))),
    }
}

/// `agent:read` (or `:write`) on this agent's node.
pub(super) fn require_agent(agent: &Agent, auth: &Authz, access: Access) -> Result<(), ApiError> {
    auth.require(Resource::Agent, &agent.config().node, access)
}

/// Marks an answer some of whose items the token could not see (Consul's header).
pub(super) fn mark_filtered(mut resp: Response, filtered: bool) -> Response {
    if filtered {
        resp.headers_mut()
            .insert(FILTERED_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

/// Body of `PUT /v1/agent/token/:type`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct TokenBody {
    /// The new token (empty: none).
    token: String,
}

/// `PUT /v1/agent/token/:type` for `agent` and `default` (Consul's `acl:write`). The token is
/// kept in memory only: a restart goes back to `--acl-agent-token` (Consul persists it with
/// `enable_token_persistence`, which this agent does not offer).
pub(super) async fn set_token(
    State(agent): State<Arc<Agent>>,
    auth: Authorized,
    Path(kind): Path<String>,
    bytes: axum::body::Bytes,
) -> HttpResult {
    auth.require_scalar(Scalar::Acl, Access::Write)?;
    let TokenBody { token } = body(&bytes)?;
    match kind.as_str() {
        // `acl_agent_token` is Consul's legacy name of the same.
        "agent" | "acl_agent_token" => {
            agent.tokens().set_agent(&token);
            // What the last passes were refused may go through with this one.
            agent.request_full_sync();
        }
        "default" | "acl_token" => agent.tokens().set_default(&token),
        other => {
            return Err(ApiError::NotFound(format!("Token {other:?} is unknown")).into());
        }
    }
    tracing::info!(node = %agent.config().node, kind = %kind, by = %auth.accessor(), set = !token.is_empty(), "agent token updated");
    Ok(StatusCode::OK.into_response())
}
