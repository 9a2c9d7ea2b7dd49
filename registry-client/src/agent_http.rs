//! The agent's HTTP API (`/v1/agent/...`, Consul's shapes and status codes:
//! <https://developer.hashicorp.com/consul/api-docs/agent>) and, for the standalone client,
//! forwarding of every other request to a server.
//!
//! Errors become responses in one place, [`HttpError::into_response`], as in the server:
//! a status from [`ApiError::status`] and a plain-text body.

use crate::agent::Agent;
use crate::servers::{PoolError, ServerPool};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use registry_api::{
    decode, AgentMember, AgentSelf, AgentSelfConfig, CheckRegistration, Error as ApiError,
    HealthCheck, Meta, Node, ServiceRegistration, CRITICAL, MEMBER_ALIVE, MEMBER_FAILED, PASSING,
    SERF_HEALTH_ID, WARNING,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest request body accepted (Consul's KV limit, 512 KiB; agent bodies are far smaller).
/// Larger bodies get 413 and change nothing.
pub const MAX_BODY: usize = 512 * 1024;
/// Port reported for members: Consul's LAN gossip port.
const SERF_LAN_PORT: u16 = 8301;

/// An [`ApiError`] on its way out as a response.
pub struct HttpError(
    /// The error to answer with.
    pub ApiError,
);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl From<PoolError> for HttpError {
    fn from(e: PoolError) -> Self {
        HttpError(ApiError::Internal(e.to_string()))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.0.to_string()).into_response();
        if let ApiError::MethodNotAllowed(allow) = &self.0 {
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
        }
        resp
    }
}

type HttpResult<T = Response> = Result<T, HttpError>;
type St = State<Arc<Agent>>;
type Params = Query<Vec<(String, String)>>;

/// Router with only the agent endpoints (merged into the server's router by the lead).
pub fn agent_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/agent/service/register", put(service_register))
        .route("/v1/agent/service/deregister/{id}", put(service_deregister))
        .route("/v1/agent/services", get(services))
        .route("/v1/agent/service/{id}", get(service))
        .route("/v1/agent/checks", get(checks))
        .route("/v1/agent/check/register", put(check_register))
        .route("/v1/agent/check/deregister/{id}", put(check_deregister))
        .route("/v1/agent/check/pass/{id}", put(check_pass))
        .route("/v1/agent/check/warn/{id}", put(check_warn))
        .route("/v1/agent/check/fail/{id}", put(check_fail))
        .route("/v1/agent/check/update/{id}", put(check_update))
        .route("/v1/agent/maintenance", put(node_maintenance))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(service_maintenance),
        )
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/members", get(members))
        .route("/v1/agent/health/service/name/{name}", get(health_by_name))
        .layer(middleware::from_fn(plain_text_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(agent)
}

/// Router for the standalone client: agent endpoints + forwarding fallback for everything
/// else. Unknown `/v1/agent/` paths are 404 here: they would describe the server's agent, not
/// this one.
pub fn client_router(agent: Arc<Agent>, servers: ServerPool) -> Router {
    let forward = Router::new()
        .fallback(forward)
        .layer(middleware::from_fn(plain_text_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(servers);
    agent_router(agent).merge(forward)
}

/// Framework rejections (wrong method, body too large) get a plain-text reason like every
/// other error.
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
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large, max size: {MAX_BODY} bytes"),
        )
            .into_response();
    }
    resp
}

// ---- query helpers ---------------------------------------------------------------------------

/// The value of a query parameter, if present.
fn value<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Go's `strconv.ParseBool`, which Consul uses for `?enable=`.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A flag parameter (`?replace-existing-checks`): present and empty or true.
fn flag(q: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    match value(q, key) {
        None => Ok(false),
        Some("") => Ok(true),
        Some(v) => {
            parse_bool(v).ok_or_else(|| ApiError::BadRequest(format!("Invalid value for {key}")))
        }
    }
}

/// `?enable=` of the maintenance endpoints: required, a Go bool.
fn enable_param(q: &[(String, String)]) -> Result<bool, ApiError> {
    let text = value(q, "enable")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Missing value for enable".into()))?;
    parse_bool(text)
        .ok_or_else(|| ApiError::BadRequest(format!("Invalid value for enable: {text:?}")))
}

/// Decodes a JSON body case-insensitively; an empty body is the default value.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode::from_slice(bytes).map_err(ApiError::BadRequest)
}

/// Decodes a required JSON body.
fn required_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("Request body is empty".into()));
    }
    decode::from_slice(bytes).map_err(ApiError::BadRequest)
}

// ---- services --------------------------------------------------------------------------------

async fn service_register(State(agent): St, Query(q): Params, bytes: Bytes) -> HttpResult {
    let replace = flag(&q, "replace-existing-checks")?;
    let reg: ServiceRegistration = required_body(&bytes)?;
    agent.register_service(reg, replace).await?;
    Ok(StatusCode::OK.into_response())
}

async fn service_deregister(State(agent): St, Path(id): Path<String>) -> HttpResult {
    agent.deregister_service(&id).await?;
    Ok(StatusCode::OK.into_response())
}

async fn services(State(agent): St) -> HttpResult {
    Ok(Json(agent.services()).into_response())
}

async fn service(State(agent): St, Path(id): Path<String>) -> HttpResult {
    let svc = agent
        .service(&id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    Ok(Json(svc).into_response())
}

// ---- checks ----------------------------------------------------------------------------------

async fn checks(State(agent): St) -> HttpResult {
    Ok(Json(agent.checks()).into_response())
}

async fn check_register(State(agent): St, bytes: Bytes) -> HttpResult {
    let def: CheckRegistration = required_body(&bytes)?;
    agent.register_check(def).await?;
    Ok(StatusCode::OK.into_response())
}

async fn check_deregister(State(agent): St, Path(id): Path<String>) -> HttpResult {
    agent.deregister_check(&id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `pass`, `warn` and `fail` take the output from `?note=`.
fn ttl_note(agent: &Agent, id: &str, status: &str, q: &[(String, String)]) -> HttpResult {
    agent.update_ttl(id, status, value(q, "note").unwrap_or(""))?;
    Ok(StatusCode::OK.into_response())
}

async fn check_pass(State(agent): St, Path(id): Path<String>, Query(q): Params) -> HttpResult {
    ttl_note(&agent, &id, PASSING, &q)
}

async fn check_warn(State(agent): St, Path(id): Path<String>, Query(q): Params) -> HttpResult {
    ttl_note(&agent, &id, WARNING, &q)
}

async fn check_fail(State(agent): St, Path(id): Path<String>, Query(q): Params) -> HttpResult {
    ttl_note(&agent, &id, CRITICAL, &q)
}

/// Body of `PUT /v1/agent/check/update/:id`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CheckUpdateBody {
    /// New status.
    status: String,
    /// New output.
    output: String,
}

async fn check_update(State(agent): St, Path(id): Path<String>, bytes: Bytes) -> HttpResult {
    let update: CheckUpdateBody = body(&bytes)?;
    // Consul's handler rejects unknown statuses before looking at the check.
    if ![PASSING, WARNING, CRITICAL].contains(&update.status.as_str()) {
        return Err(
            ApiError::BadRequest(format!("Invalid check status: '{}'", update.status)).into(),
        );
    }
    agent.update_ttl(&id, &update.status, &update.output)?;
    Ok(StatusCode::OK.into_response())
}

// ---- maintenance -----------------------------------------------------------------------------

async fn node_maintenance(State(agent): St, Query(q): Params) -> HttpResult {
    let enable = enable_param(&q)?;
    agent
        .set_node_maintenance(enable, value(&q, "reason").unwrap_or(""))
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn service_maintenance(
    State(agent): St,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let enable = enable_param(&q)?;
    agent
        .set_service_maintenance(&id, enable, value(&q, "reason").unwrap_or(""))
        .await?;
    Ok(StatusCode::OK.into_response())
}

// ---- self, members, local health -------------------------------------------------------------

/// This agent as a member.
fn self_member(agent: &Agent) -> AgentMember {
    let config = agent.config();
    AgentMember {
        name: config.node.clone(),
        addr: config.advertise_addr.clone(),
        port: SERF_LAN_PORT,
        tags: member_tags(&config.datacenter, config.server),
        status: MEMBER_ALIVE,
    }
}

/// Serf tags as Consul sets them: the datacenter and the role.
fn member_tags(dc: &str, server: bool) -> Meta {
    let mut tags = Meta::new();
    tags.insert("dc".into(), dc.into());
    tags.insert("role".into(), if server { "consul" } else { "node" }.into());
    tags
}

async fn agent_self(State(agent): St) -> HttpResult {
    let config = agent.config();
    let reply = AgentSelf {
        config: AgentSelfConfig {
            datacenter: config.datacenter.clone(),
            node_name: config.node.clone(),
            node_id: config.node_id.clone(),
            server: config.server,
            version: env!("CARGO_PKG_VERSION").into(),
        },
        member: self_member(&agent),
        stats: agent.stats(),
    };
    Ok(Json(reply).into_response())
}

/// `GET /v1/agent/members`. We have no gossip pool, so membership is derived from the
/// catalog: every node with a `serfHealth` check (which the servers keep from the agents'
/// heartbeats) is a member, alive while that check passes and failed when it is critical.
/// Nodes without it were registered through the catalog API, not by an agent, and are not
/// members (as in Consul).
async fn members(State(agent): St) -> HttpResult {
    let servers = agent.servers();
    let nodes: Vec<Node> = servers.get_json("/v1/catalog/nodes").await?;
    let checks: Vec<HealthCheck> = servers.get_json("/v1/health/state/any").await?;
    let serf: BTreeMap<&str, &str> = checks
        .iter()
        .filter(|c| c.check_id == SERF_HEALTH_ID)
        .map(|c| (c.node.as_str(), c.status.as_str()))
        .collect();
    let dc = &agent.config().datacenter;
    let mut members: Vec<AgentMember> = nodes
        .iter()
        .filter_map(|n| {
            let status = serf.get(n.node.as_str())?;
            Some(AgentMember {
                name: n.node.clone(),
                addr: n.address.clone(),
                port: SERF_LAN_PORT,
                tags: member_tags(
                    if n.datacenter.is_empty() {
                        dc
                    } else {
                        &n.datacenter
                    },
                    false,
                ),
                status: if *status == CRITICAL {
                    MEMBER_FAILED
                } else {
                    MEMBER_ALIVE
                },
            })
        })
        .collect();
    let me = &agent.config().node;
    match members.iter_mut().find(|m| &m.name == me) {
        Some(m) => m.tags = self_member(&agent).tags,
        // Until the servers have seen our first heartbeat we are still a member, alive.
        None => members.push(self_member(&agent)),
    }
    Ok(Json(members).into_response())
}

async fn health_by_name(State(agent): St, Path(name): Path<String>) -> HttpResult {
    let entries = agent.health_by_service_name(&name);
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!("ServiceName {name} Not Found")).into());
    }
    // Consul answers with the worst instance's status: 200 passing, 429 warning, 503 else.
    let code = entries
        .iter()
        .map(|e| match e.aggregated_status.as_str() {
            PASSING => StatusCode::OK,
            WARNING => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        })
        .max_by_key(|c| match *c {
            StatusCode::OK => 0,
            StatusCode::TOO_MANY_REQUESTS => 1,
            _ => 2,
        })
        .unwrap_or(StatusCode::OK);
    Ok((code, Json(entries)).into_response())
}

// ---- forwarding ------------------------------------------------------------------------------

/// Request headers passed on to the server: the body's type and Consul's own headers (the
/// ACL token among them). Hop-by-hop headers stay here, and so does a caller's
/// `x-registry-signature`: the pool signs what it sends with this agent's own key.
fn forwarded_request_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, v) in headers {
        let n = name.as_str();
        if n == "content-type"
            || n == "accept"
            || n == "authorization"
            || n.starts_with("x-consul-")
        {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Proxies a request that is not an agent endpoint to a server and passes back its status,
/// `Content-Type`, `X-Consul-*` headers and body.
async fn forward(State(servers): State<ServerPool>, req: Request) -> HttpResult {
    let (parts, body) = req.into_parts();
    if parts.uri.path().starts_with("/v1/agent/") {
        return Err(ApiError::NotFound(format!(
            "Unsupported path: {} {}",
            parts.method,
            parts.uri.path()
        ))
        .into());
    }
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::TooLarge(format!(
            "Request body too large, max size: {MAX_BODY} bytes"
        ))
    })?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let resp = servers
        .send(
            parts.method.clone(),
            path_and_query,
            forwarded_request_headers(&parts.headers),
            body,
        )
        .await?;
    let mut out = Response::new(Body::from(resp.body));
    *out.status_mut() = resp.status;
    for (name, v) in &resp.headers {
        if name == header::CONTENT_TYPE || name.as_str().starts_with("x-consul-") {
            out.headers_mut().append(name.clone(), v.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_parse_like_go() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("F"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        let q = vec![("replace-existing-checks".to_string(), String::new())];
        assert!(flag(&q, "replace-existing-checks").unwrap());
        assert!(!flag(&[], "replace-existing-checks").unwrap());
        assert!(enable_param(&[]).is_err());
    }
}
