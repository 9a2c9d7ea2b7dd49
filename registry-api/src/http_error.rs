//! Errors become HTTP responses here, in one place for the server, the agent and the gateway's
//! callers alike: the status from [`ApiError::status`] and the reason as plain text, as Consul
//! answers (clients match on the text, e.g. `No cluster leader`).

use crate::limits::MAX_BODY;
use crate::Error as ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// An [`ApiError`] on its way out as a response.
#[derive(Debug)]
pub struct HttpError(
    /// The error to answer with.
    pub ApiError,
);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.0.to_string()).into_response();
        resp.extensions_mut().insert(OwnReason);
        match &self.0 {
            ApiError::MethodNotAllowed(allow) => {
                if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
            }
            // A condition that passes (space freed): when to ask again.
            ApiError::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// Marks a response made from an [`HttpError`]: its reason is already the one to send (a 413
/// such as `/v1/txn`'s "too many operations" keeps it).
#[derive(Clone, Copy, Debug)]
struct OwnReason;

/// Middleware: framework rejections (a wrong method, a body over [`MAX_BODY`]) get a plain-text
/// reason like every other error.
pub async fn plain_text_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    if status == StatusCode::METHOD_NOT_ALLOWED
        && resp.headers().get(header::CONTENT_TYPE).is_none()
    {
        let (mut parts, _) = resp.into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(format!("Method {method} not allowed")));
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE && resp.extensions().get::<OwnReason>().is_none() {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large, max size: {MAX_BODY} bytes"),
        )
            .into_response();
    }
    resp
}
