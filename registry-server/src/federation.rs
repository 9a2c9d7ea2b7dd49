//! Requests for other datacenters (`?dc=`): a server hands them to one of its
//! datacenter's WAN gateways (`--wan-gateway`), which routes them to the
//! target datacenter's gateways and servers (DESIGN §1). Data is never
//! replicated between datacenters; federation is queries.
//!
//! Every endpoint that takes `?dc=` is routed here by one middleware, so the
//! handlers only ever see local requests. Agent endpoints are local by
//! definition and never routed.

use crate::http::{AppState, HttpError, MAX_BODY};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use registry_api::error::NO_PATH_TO_DC;
use registry_api::Error as ApiError;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::debug;

/// How long to wait for a gateway to accept a connection before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of an ordinary (non-blocking) forwarded request: longer than the
/// gateways' own (15 s plus 2 s per remaining hop), so the far side's clear
/// error arrives before we give up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(25);

/// This datacenter's gateways and the client that reaches them.
pub struct WanRoute {
    /// Gateway base URLs (`http://host:port`), in the order tried.
    gateways: RwLock<Vec<String>>,
    /// One keep-alive client for every forwarded request.
    http: reqwest::Client,
    /// The shared key: gateways accept only requests signed with it.
    key: Option<registry_api::auth::SharedKey>,
}

fn normalise(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

impl WanRoute {
    /// Routes through `gateways` (URLs or `host:port`).
    pub fn new(gateways: &[String], key: Option<registry_api::auth::SharedKey>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(registry_api::client::POOL_IDLE_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            gateways: RwLock::new(gateways.iter().map(|g| normalise(g)).collect()),
            http,
            key,
        }
    }

    /// Replaces the gateway list.
    pub fn set(&self, gateways: &[String]) {
        *self.gateways.write().unwrap_or_else(|e| e.into_inner()) =
            gateways.iter().map(|g| normalise(g)).collect();
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
        let timeout = hop_timeout(path_and_query);
        for gw in gateways {
            // Signed anew for each attempt, so each carries a fresh nonce.
            let mut signature = HeaderMap::new();
            registry_api::auth::sign_into(
                self.key.as_ref(),
                &mut signature,
                method.as_str(),
                path_and_query,
                &body,
            );
            let mut req = self
                .http
                .request(method.clone(), format!("{gw}{path_and_query}"))
                .timeout(timeout)
                .body(body.clone());
            for (name, value) in headers {
                let n = name.as_str();
                if n == "content-type"
                    || n == "accept"
                    || n == "authorization"
                    || n.starts_with("x-consul-")
                    || n == "x-registry-hops"
                {
                    req = req.header(name, value);
                }
            }
            match req.headers(signature).send().await {
                Ok(resp) => return Ok(into_response(resp).await),
                // A write that may have reached a gateway is not sent to
                // another one: it could be applied twice.
                Err(e) if !e.is_connect() && method != Method::GET && method != Method::HEAD => {
                    return Err(ApiError::Internal(format!(
                        "{}: {e}",
                        registry_api::error::REMOTE_DC_UNREACHABLE
                    )));
                }
                Err(e) => {
                    debug!(gateway = %gw, error = %e, "gateway did not answer; trying the next")
                }
            }
        }
        // None of our own gateways answered: there is no way out of this DC.
        Err(ApiError::Internal(NO_PATH_TO_DC.into()))
    }
}

/// A blocking query may legitimately take `wait` plus up to `wait/16` of
/// jitter at the far end; every hop allows that plus slack.
fn hop_timeout(path_and_query: &str) -> Duration {
    let query = path_and_query.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut index = false;
    let mut wait = Duration::from_secs(5 * 60);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "index" => index = true,
            "wait" => {
                if let Ok(w) = registry_api::duration::parse(&v) {
                    wait = w.min(Duration::from_secs(10 * 60));
                }
            }
            _ => {}
        }
    }
    if index {
        wait + wait / 16 + Duration::from_secs(15)
    } else {
        REQUEST_TIMEOUT
    }
}

async fn into_response(resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if n == "content-type" || n == "allow" || n.starts_with("x-consul-") {
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(name.clone(), v);
            }
        }
    }
    match resp.bytes().await {
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

/// The `?dc=` named in a query string, if any and not empty.
fn requested_dc(query: Option<&str>) -> Option<String> {
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "dc")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Middleware: requests for another datacenter go to a gateway; everything
/// else goes on to the local handlers.
pub async fn route_remote_dc(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path.starts_with("/v1/agent/") || path.starts_with("/v1/internal/") {
        return next.run(req).await;
    }
    let Some(dc) = requested_dc(req.uri().query()) else {
        return next.run(req).await;
    };
    if dc == st.datacenter {
        return next.run(req).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_requested_dc_and_blocking_timeouts() {
        assert_eq!(requested_dc(Some("a=1&dc=dc2")), Some("dc2".into()));
        assert_eq!(requested_dc(Some("dc=")), None);
        assert_eq!(requested_dc(None), None);
        assert_eq!(hop_timeout("/v1/x?dc=a"), REQUEST_TIMEOUT);
        assert_eq!(
            hop_timeout("/v1/x?index=4&wait=16s"),
            Duration::from_secs(16 + 1 + 15)
        );
        assert_eq!(normalise("gw:8302/"), "http://gw:8302");
    }
}
