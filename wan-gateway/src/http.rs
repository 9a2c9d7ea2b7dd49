//! The gateway's HTTP routes: `/v1/catalog/datacenters` answered here, the WAN membership
//! endpoints under `/wan/v1/`, and the federated `/v1/...` requests ([`registry_api::federated`])
//! routed by their `?dc=`. With a shared key, every route requires a signed request.

use crate::error::GatewayError;
use crate::forward::{Answer, Forwarder, OutboundRequest, HOPS_HEADER, MAX_BODY, MAX_HOPS};
use crate::gossip::{lock, reply_scope, EXCHANGE_PATH, REPLY_METHOD};
use crate::members::{MemberStatus, MemberTable, Route, WanView};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use registry_api::auth::{self, SharedKey, SIGNATURE_HEADER};
use registry_api::federated::{self, Refusal};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How many gateways of a remote DC one request tries at most. With the 1 s connect timeout this
/// bounds the time to `Remote DC has no server currently reachable` (see the crate docs).
pub const MAX_GATEWAY_ATTEMPTS: usize = 3;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Gateway {
    /// This gateway's datacenter.
    pub dc: String,
    /// The WAN member table (std mutex: held only for table operations, never across an await).
    pub members: Arc<Mutex<MemberTable>>,
    /// The shared client and this DC's servers.
    pub forwarder: Forwarder,
    /// Bound on forwarded requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// Fires when the gateway stops; requests in flight then end with 503 instead of holding the
    /// shutdown for the length of a blocking query.
    pub shutdown: CancellationToken,
    /// The shared key (`--encrypt`): when set, every request must be signed with it, and
    /// exchange replies are signed with it.
    pub key: Option<Arc<SharedKey>>,
    /// This gateway's metrics.
    pub metrics: crate::metrics::GatewayMetrics,
}

/// The router of one gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let key = gateway.key.clone();
    // Membership needs an exchange signature: a request a server or an agent signed on a
    // client's behalf (a forward) never passes for one, whatever path the client chose.
    let membership = Router::new()
        .route(EXCHANGE_PATH, post(exchange))
        .route("/wan/v1/members", get(members));
    let membership = match &key {
        Some(key) => membership.route_layer(axum::middleware::from_fn_with_state(
            auth::Verifier::new(key.clone(), auth::Purpose::Exchange),
            auth::require_signature,
        )),
        None => membership,
    };
    let data = Router::new()
        .route("/v1/catalog/datacenters", get(datacenters))
        .fallback(forward);
    let data = match &key {
        // Layered after the fallback, so it covers every forwarded request too.
        Some(key) => data.layer(axum::middleware::from_fn_with_state(
            auth::Verifier::new(key.clone(), auth::Purpose::Forward),
            auth::require_signature,
        )),
        None => data,
    };
    // Read-only and unsigned, as Consul serves it: a scraper holds no key.
    let metrics = Router::new().route("/v1/agent/metrics", get(metrics));
    membership.merge(metrics).merge(data).with_state(gateway)
}

/// `GET /v1/agent/metrics`: this gateway's metrics.
async fn metrics(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    gw.metrics.registry.response(&q)
}

/// `GET /v1/catalog/datacenters`: the local DC first, then the others by RTT.
async fn datacenters(State(gw): State<Arc<Gateway>>) -> Json<Vec<String>> {
    Json(lock(&gw.members).datacenters(Instant::now()))
}

/// `GET /wan/v1/members`: the member table.
async fn members(State(gw): State<Arc<Gateway>>) -> Json<Vec<MemberStatus>> {
    Json(lock(&gw.members).statuses(Instant::now()))
}

/// `POST /wan/v1/exchange`: merge the caller's view (the caller only as heard of: liveness comes
/// from our own probes) and answer with ours. A caller whose own entry is not a valid
/// `host:port` and DC name gets 400 and nothing is merged; invalid entries among its members are
/// skipped. With a key, the reply is signed for this one request ([`reply_scope`]).
async fn exchange(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Json(view): Json<WanView>,
) -> Response {
    if let Err(reason) = view.me.check() {
        tracing::debug!(%reason, "refused an exchange from an invalid gateway entry");
        return GatewayError::BadRequest(format!("invalid \"self\" in exchange: {reason}"))
            .into_response();
    }
    let now = Instant::now();
    let reply = {
        let mut table = lock(&gw.members);
        table.merge_heard(std::slice::from_ref(&view.me), now);
        table.merge_heard(&view.members, now);
        table.view(now)
    };
    let body = match serde_json::to_vec(&reply) {
        Ok(body) => body,
        Err(e) => {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    };
    let mut signature = None;
    if let Some(key) = &gw.key {
        // `require_signature` has checked the request's signature before this handler ran.
        if let Some(request_sig) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) {
            signature = HeaderValue::from_str(&key.sign_for(
                auth::Purpose::ExchangeReply,
                REPLY_METHOD,
                &reply_scope(request_sig),
                &body,
            ))
            .ok();
        }
    }
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(sig) = signature {
        resp.headers_mut().insert(SIGNATURE_HEADER, sig);
    }
    resp
}

/// Every other request: route it, or say why not.
async fn forward(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match gw.forward(req).await {
        Ok(answer) => {
            let mut resp = Response::new(Body::from(answer.body));
            *resp.status_mut() = answer.status;
            *resp.headers_mut() = answer.headers;
            resp
        }
        Err(e) => e.into_response(),
    }
}

impl Gateway {
    /// Routes one request by its `?dc=` (see the crate docs for the rules).
    async fn forward(&self, req: Request) -> Result<Answer, GatewayError> {
        let (parts, body) = req.into_parts();
        if !parts.uri.path().starts_with("/v1/") {
            return Err(GatewayError::NotFound);
        }
        // The path and query as the next hop will receive them: the HTTP client resolves dot
        // segments (`/v1/kv/../agent/...`, `%2e%2e` included), so the federation rule is
        // applied to, and the request sent and signed with, the resolved form.
        let raw = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |pq| pq.as_str());
        let url = reqwest::Url::parse(&format!("http://gateway.invalid{raw}"))
            .map_err(|_| GatewayError::BadRequest("invalid request path".into()))?;
        let path = url.path();
        match federated::check(parts.method.as_str(), path) {
            Ok(()) => {}
            Err(Refusal::Path) => {
                tracing::debug!(method = %parts.method, "refused a request for a path that is not federated");
                return Err(GatewayError::NotFederated(path.to_owned()));
            }
            Err(Refusal::Method { allow }) => {
                return Err(GatewayError::MethodNotFederated {
                    method: parts.method.to_string(),
                    path: path.to_owned(),
                    allow,
                })
            }
        }
        let hops = match parts.headers.get(HOPS_HEADER) {
            None => 0,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| GatewayError::BadRequest(format!("invalid {HOPS_HEADER} header")))?,
        };
        if hops >= MAX_HOPS {
            tracing::warn!(hops, "refusing a request that went round in a loop");
            return Err(GatewayError::NoPathToDc);
        }
        let query = url.query();
        let dc = registry_api::names::requested_dc(query).unwrap_or_else(|| self.dc.clone());
        let _permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded)?;
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(GatewayError::TooLarge { limit: MAX_BODY })
            }
            Err(e) => return Err(GatewayError::BadRequest(format!("reading body: {e}"))),
        };
        let path_and_query = url[url::Position::BeforePath..].to_owned();
        let out = OutboundRequest::new(
            parts.method.clone(),
            path_and_query,
            query,
            &parts.headers,
            body,
            hops,
        );
        let started = Instant::now();
        let answer = tokio::select! {
            answer = self.route(&dc, &out) => answer,
            _ = self.shutdown.cancelled() => Err(GatewayError::ShuttingDown),
        };
        self.metrics.record(&dc, started, &answer);
        answer
    }

    /// Sends `out` to this DC's servers or to a gateway of `dc`.
    async fn route(&self, dc: &str, out: &OutboundRequest) -> Result<Answer, GatewayError> {
        if dc == self.dc {
            return self.forwarder.to_servers(out).await;
        }
        let route = lock(&self.members).route(dc, Instant::now());
        match route {
            Route::Unknown => Err(GatewayError::NoPathToDc),
            Route::Unreachable => {
                tracing::debug!(dc, "every gateway of the datacenter is dead");
                Err(GatewayError::Unreachable)
            }
            Route::Gateways(mut gateways) => {
                gateways.truncate(MAX_GATEWAY_ATTEMPTS);
                self.forwarder
                    .to_gateways(&gateways, out, |addr| {
                        lock(&self.members).record_failure(addr, Instant::now())
                    })
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::{GatewayEntry, Liveness};
    use std::time::Duration;

    #[tokio::test]
    async fn requests_over_the_in_flight_bound_get_503() {
        let me = GatewayEntry {
            dc: "dc1".into(),
            addr: "127.0.0.1:1".into(),
        };
        let gateway = Arc::new(Gateway {
            dc: "dc1".into(),
            members: Arc::new(Mutex::new(MemberTable::new(
                me,
                Liveness {
                    dead_after: Duration::from_secs(5),
                    dead_probe_every: Duration::from_secs(10),
                    reconnect_timeout: Duration::from_secs(3600),
                },
            ))),
            forwarder: Forwarder::new(&[], None, None, "dc1").unwrap(),
            // No permit left: every forwarded request is over the bound.
            in_flight: Arc::new(Semaphore::new(0)),
            shutdown: CancellationToken::new(),
            key: None,
            metrics: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let serve = axum::serve(listener, router(gateway))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let server = tokio::spawn(async move { serve.await });
        let client = registry_api::tls::plain_client();
        let resp = client
            .get(format!("http://{addr}/v1/catalog/nodes"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.text().await.unwrap(), "too many requests in flight");
        // The gateway's own endpoints are not forwarded and not bounded.
        let resp = client
            .get(format!("http://{addr}/v1/catalog/datacenters"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), r#"["dc1"]"#);
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
