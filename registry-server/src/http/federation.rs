//! Requests for other datacenters (`?dc=`): a server hands them to one of its
//! datacenter's WAN gateways (`--wan-gateway`), which routes them to the
//! target datacenter's gateways and servers (DESIGN §1). Data is never
//! replicated between datacenters; federation is queries.
//!
//! Every endpoint that takes `?dc=` is routed here by one middleware, so the
//! handlers only ever see local requests. Agent endpoints are local by
//! definition and never routed.

use super::{AppState, HttpError};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use registry_api::error::NO_PATH_TO_DC;
use registry_api::federated::{self, Refusal};
use registry_api::forward::{
    base_url_over, forwarded_request_header, forwarded_response_header, may_retry_elsewhere,
    read_body, MAX_ANSWER,
};
use registry_api::limits::{forward_timeout, query_of, Hop, HOPS_HEADER, MAX_BODY};
use registry_api::Error as ApiError;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::debug;

/// How long to wait for a gateway to accept a connection before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// This datacenter's gateways and the client that reaches them.
pub struct WanRoute {
    /// Gateway base URLs (`http://host:port`), in the order tried.
    gateways: RwLock<Vec<String>>,
    /// One keep-alive client for every forwarded request.
    http: reqwest::Client,
    /// The shared key: gateways accept only requests signed with it.
    key: Option<registry_api::auth::SharedKey>,
    /// Bare `host:port` gateways are dialled as `https://` (`--verify-outgoing`).
    https: bool,
}

impl WanRoute {
    /// Routes through `gateways` (URLs or `host:port`). With `tls`, `https://` gateways
    /// must show a certificate of this DC's servers (`server.<dc>.<domain>` under
    /// `--verify-server-hostname`), and ours is shown to them.
    pub fn new(
        gateways: &[String],
        key: Option<registry_api::auth::SharedKey>,
        tls: Option<&std::sync::Arc<registry_api::tls::Tls>>,
        datacenter: &str,
    ) -> Self {
        let expect = registry_api::tls::Expect::Server {
            datacenter: datacenter.to_string(),
        };
        let http = registry_api::tls::client_builder(tls.map(|t| (t, expect)))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(registry_api::client::POOL_IDLE_TIMEOUT)
            .build()
            .unwrap_or_default();
        let https = tls.is_some_and(|t| t.settings().dials_tls());
        Self {
            gateways: RwLock::new(gateways.iter().map(|g| base_url_over(g, https)).collect()),
            http,
            key,
            https,
        }
    }

    /// Replaces the gateway list.
    pub fn set(&self, gateways: &[String]) {
        *self.gateways.write().unwrap_or_else(|e| e.into_inner()) = gateways
            .iter()
            .map(|g| base_url_over(g, self.https))
            .collect();
    }

    fn list(&self) -> Vec<String> {
        self.gateways
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// All datacenters the gateways know (local first, then by round-trip
    /// time), or `None` when no gateway is configured or none answers.
    pub async fn datacenters(&self) -> Option<Vec<String>> {
        for gw in self.list() {
            let mut signature = HeaderMap::new();
            registry_api::auth::sign_into(
                self.key.as_ref(),
                &mut signature,
                "GET",
                "/v1/catalog/datacenters",
                b"",
            );
            let resp = self
                .http
                .get(format!("{gw}/v1/catalog/datacenters"))
                .headers(signature)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(resp) = resp {
                if resp.status().is_success() {
                    if let Ok(dcs) = resp.json::<Vec<String>>().await {
                        return Some(dcs);
                    }
                }
            }
        }
        None
    }

    /// Forwards a request to the first gateway that answers and returns its
    /// answer unchanged (status, `Content-Type`, `X-Consul-*`, body).
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let gateways = self.list();
        if gateways.is_empty() {
            return Err(ApiError::Internal(NO_PATH_TO_DC.into()));
        }
        let timeout = forward_timeout(query_of(path_and_query), Hop::Server);
        for gw in gateways {
            let url = reqwest::Url::parse(&format!("{gw}{path_and_query}"))
                .map_err(|e| ApiError::BadRequest(format!("invalid request path: {e}")))?;
            // Signed anew for each attempt (a fresh nonce), over the path and
            // query exactly as the URL puts them on the wire.
            let mut signature = HeaderMap::new();
            registry_api::auth::sign_into(
                self.key.as_ref(),
                &mut signature,
                method.as_str(),
                &registry_api::auth::wire_path_and_query(&url),
                &body,
            );
            let mut req = self
                .http
                .request(method.clone(), url)
                .timeout(timeout)
                .body(body.clone());
            for (name, value) in headers {
                // The hop count travels too: a request that came in from a
                // gateway and goes back out keeps counting towards the loop bound.
                if forwarded_request_header(name.as_str()) || name.as_str() == HOPS_HEADER {
                    req = req.header(name, value);
                }
            }
            match req.headers(signature).send().await {
                Ok(resp) => return Ok(into_response(resp).await),
                // A write that may have reached a gateway is not sent to
                // another one: it could be applied twice.
                Err(e) if !may_retry_elsewhere(e.is_connect(), &method) => {
                    // Without the URL: a `?token=` in it is a secret.
                    return Err(ApiError::Internal(format!(
                        "{}: {}",
                        registry_api::error::REMOTE_DC_UNREACHABLE,
                        e.without_url()
                    )));
                }
                Err(e) => {
                    let e = e.without_url();
                    debug!(gateway = %gw, error = %e, "gateway did not answer; trying the next")
                }
            }
        }
        // None of our own gateways answered: there is no way out of this DC.
        Err(ApiError::Internal(NO_PATH_TO_DC.into()))
    }
}

async fn into_response(resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if forwarded_response_header(name.as_str()) {
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(name.clone(), v);
            }
        }
    }
    match read_body(resp, MAX_ANSWER).await {
        Ok(body) => {
            let mut out = Response::new(Body::from(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        Err(e) => HttpError(ApiError::Internal(format!(
            "{}: {e}",
            registry_api::error::REMOTE_DC_UNREACHABLE
        )))
        .into_response(),
    }
}

/// Middleware: requests for another datacenter go to a gateway; everything
/// else goes on to the local handlers.
pub async fn route_remote_dc(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    // The agent's and the servers' own endpoints are this server's; of the internal ones
    // only the web UI's summaries are reads another DC answers.
    if path.starts_with("/v1/agent/")
        || (path.starts_with("/v1/internal/")
            && !registry_api::federated::UI_SUMMARIES.contains(&path))
    {
        return next.run(req).await;
    }
    let Some(dc) = registry_api::names::requested_dc(req.uri().query()) else {
        return next.run(req).await;
    };
    if dc == st.datacenter {
        return next.run(req).await;
    }
    // Only what federation carries leaves the DC, judged on the path as it
    // will be sent (dot segments resolved): this server signs what it
    // forwards, so it must never sign a client's request for anything else
    // (a gateway's membership exchange, an operator or agent endpoint).
    let sent_path = reqwest::Url::parse(&format!("http://gateway{}", req.uri().path()))
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    match federated::check(req.method().as_str(), &sent_path) {
        Ok(()) => {}
        Err(Refusal::Path) => {
            return HttpError(ApiError::Forbidden(format!(
                "{} is not served across datacenters (only catalog, health, KV, session, txn, \
                 event, query, coordinate and status endpoints are)",
                req.uri().path()
            )))
            .into_response()
        }
        Err(Refusal::Method { allow }) => {
            return HttpError(ApiError::MethodNotAllowed(allow.to_vec())).into_response()
        }
    }
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return HttpError(ApiError::TooLarge(format!(
                "Request body too large, max size: {MAX_BODY} bytes"
            )))
            .into_response()
        }
    };
    match st
        .wan
        .forward(method, &path_and_query, &headers, body)
        .await
    {
        Ok(resp) => resp,
        Err(e) => HttpError(e).into_response(),
    }
}
