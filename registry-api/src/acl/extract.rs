//! How a handler gets its request's [`Authz`]: the router's auth step (the server's and the
//! agent's `acl.rs`) resolves the token once per request and leaves a [`ResolvedToken`] in the
//! request's extensions; a handler that decides anything takes an [`Authorized`] argument,
//! which hands over the `Authz` or answers the resolution's error (`403 ACL not found`).
//! Handlers that decide nothing (status) take none, so a bad token does not break them, as in
//! Consul. A route without the auth step fails closed: `Authorized` is then a 500, never an
//! allow.

use super::Authz;
use crate::http_error::HttpError;
use crate::Error as ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::Arc;

/// The auth step's outcome for one request.
#[derive(Clone, Debug)]
pub struct ResolvedToken(pub Result<Arc<Authz>, ApiError>);

/// A handler's argument: what the request's token may do.
#[derive(Clone, Debug)]
pub struct Authorized(pub Arc<Authz>);

impl std::ops::Deref for Authorized {
    type Target = Authz;
    fn deref(&self) -> &Authz {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authorized {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<ResolvedToken>() {
            Some(ResolvedToken(Ok(authz))) => Ok(Authorized(authz.clone())),
            Some(ResolvedToken(Err(e))) => Err(HttpError(e.clone())),
            None => Err(HttpError(ApiError::Internal(
                "this route has no ACL step; refusing rather than allowing".into(),
            ))),
        }
    }
}

/// The request's token as [`super::request_token`] finds it in a request.
pub fn token_of(req: &axum::extract::Request) -> Option<String> {
    super::request_token(
        |name| req.headers().get(name).and_then(|v| v.to_str().ok()),
        req.uri().query(),
    )
}
