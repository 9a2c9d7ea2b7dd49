//! Why a gateway could not answer a request, and the one place that turns it into a response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use registry_api::error::{NO_PATH_TO_DC, REMOTE_DC_UNREACHABLE};

/// A request the gateway itself fails (an answer from a server, even an error status, is not one
/// of these: it is passed back unchanged).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The DC is not known to any gateway we know, or the request went round in a loop.
    #[error("{}", NO_PATH_TO_DC)]
    NoPathToDc,
    /// The DC is known but none of its gateways (or, locally, none of our servers) answered.
    #[error("{}", REMOTE_DC_UNREACHABLE)]
    Unreachable,
    /// The bound on in-flight forwarded requests was reached.
    #[error("too many requests in flight")]
    Overloaded,
    /// The request body is over the limit.
    #[error("request body too large (limit {limit} bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The gateway is stopping; the client should retry another gateway.
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// Malformed input (a header or JSON body we cannot read).
    #[error("{0}")]
    BadRequest(String),
    /// A path the gateway does not serve.
    #[error("not found")]
    NotFound,
    /// A path that does not cross the WAN ([`registry_api::federated`]).
    #[error(
        "path not allowed across the WAN gateway: {0} \
         (agent, operator, acl, snapshot and internal endpoints are not federated)"
    )]
    NotFederated(String),
    /// A federated path, but not with this method ([`registry_api::federated`]).
    #[error("method {method} not allowed across the WAN gateway for {path}")]
    MethodNotFederated {
        /// The method asked for.
        method: String,
        /// The path asked for.
        path: String,
        /// The methods the gateway forwards for this path (the `Allow` header).
        allow: &'static [&'static str],
    },
}

impl GatewayError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoPathToDc | GatewayError::Unreachable => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            GatewayError::Overloaded | GatewayError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::NotFederated(_) => StatusCode::FORBIDDEN,
            GatewayError::MethodNotFederated { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        // Plain text, as Consul's errors are (DESIGN §4); clients match on the text. A 405 says
        // what is allowed, as DESIGN §4 asks.
        let mut resp = (self.status(), self.to_string()).into_response();
        if let GatewayError::MethodNotFederated { allow, .. } = &self {
            if let Ok(v) = axum::http::HeaderValue::from_str(&allow.join(", ")) {
                resp.headers_mut().insert(axum::http::header::ALLOW, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_texts_and_statuses() {
        assert_eq!(
            GatewayError::NoPathToDc.to_string(),
            "No path to datacenter"
        );
        assert_eq!(
            GatewayError::Unreachable.to_string(),
            "Remote DC has no server currently reachable"
        );
        assert_eq!(GatewayError::NoPathToDc.status(), 500);
        assert_eq!(GatewayError::Overloaded.status(), 503);
        assert_eq!(GatewayError::TooLarge { limit: 1 }.status(), 413);
        assert_eq!(
            GatewayError::NotFederated("/v1/agent/self".into()).status(),
            403
        );
        let resp = GatewayError::MethodNotFederated {
            method: "PUT".into(),
            path: "/v1/health/node/n".into(),
            allow: &["GET", "HEAD"],
        }
        .into_response();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET, HEAD");
    }
}
