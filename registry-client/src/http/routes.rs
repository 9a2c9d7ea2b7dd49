//! The agent endpoints' handlers: decode the request ([`super::params`]), call the agent,
//! shape the answer as Consul does. A new endpoint family (metrics, reload, tokens) gets a
//! file of its own beside this one.
//!
//! Every handler that reads or changes anything takes the request's [`Authorized`] and asks it
//! first (Consul's rules, `agent/agent_endpoint.go`): nothing changes for a denied request,
//! and lists leave out what the token may not read, saying so in
//! `X-Consul-Results-Filtered-By-ACLs`.
//!
//! Owns: request and response shapes of `/v1/agent/...`. Must not touch: the local state's
//! rules (the [`Agent`] methods enforce them).

use super::acl::{
    mark_filtered, require_agent, require_check_write, require_service_write, RequestToken,
};
use super::params::{body, enable_param, flag, required_body, value};
use super::HttpResult;
use crate::agent::Agent;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Resource};
use registry_api::filter::{schemas, Filter, Schema};
use registry_api::{
    AgentMember, AgentSelf, AgentSelfConfig, CatalogService, CheckRegistration, CheckStatus,
    Coordinate, Error as ApiError, HealthCheck, Meta, Node, ServiceRegistration, CRITICAL,
    MEMBER_ALIVE, MEMBER_FAILED, PASSING, SERF_HEALTH_ID, WARNING,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Port reported for members: Consul's LAN gossip port.
const SERF_LAN_PORT: u16 = 8301;

/// This build's version, as `Config.Version` and the `build` member tag give it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The name under which servers register themselves in the catalog (Consul's
/// `structs.ConsulServiceName`); its instances' ports are the servers' RPC ports.
const CONSUL_SERVICE: &str = "consul";

/// The agent, as every handler's state.
type St = State<Arc<Agent>>;
/// The query string as pairs, in order (a key may repeat).
type Params = Query<Vec<(String, String)>>;

// Services.

/// `PUT /v1/agent/service/register`: `service:write` on the service (its checks are its
/// own, so the same right covers them), and on the service an existing instance of that id
/// belongs to (Consul's `vetServiceRegister`). The request's token is kept with the service:
/// anti-entropy syncs it with that token.
pub(super) async fn service_register(
    State(agent): St,
    auth: Authorized,
    RequestToken(token): RequestToken,
    Query(q): Params,
    bytes: Bytes,
) -> HttpResult {
    let replace = flag(&q, "replace-existing-checks")?;
    let reg: ServiceRegistration = required_body(&bytes)?;
    // A nameless registration is the agent's 400, whatever the token.
    if !reg.name.is_empty() {
        auth.require(Resource::Service, &reg.name, Access::Write)?;
        let id = if reg.id.is_empty() {
            &reg.name
        } else {
            &reg.id
        };
        if let Some(existing) = agent.service(id).filter(|e| e.service != reg.name) {
            auth.require(Resource::Service, &existing.service, Access::Write)?;
        }
    }
    agent.register_service(reg, replace, token).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/deregister/:id`: `service:write` on the instance's service.
pub(super) async fn service_deregister(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    require_service_write(&agent, &auth, &id)?;
    agent.deregister_service(&id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/agent/services`, with Consul's `?filter=` over each service; only the services
/// the token may read (`service:read`).
pub(super) async fn services(State(agent): St, auth: Authorized, Query(q): Params) -> HttpResult {
    let mut services = agent.services();
    let total = services.len();
    services.retain(|_, s| auth.allows(Resource::Service, &s.service, Access::Read));
    let filtered = services.len() < total;
    if let Some(f) = filter(&q, schemas::AGENT_SERVICE)? {
        services.retain(|_, s| f.matches_item(s));
    }
    Ok(mark_filtered(Json(services).into_response(), filtered))
}

/// `?filter=` parsed against the endpoint's selectors; a bad one is a 400 with the reason,
/// an empty one is none (as in Consul).
fn filter(q: &[(String, String)], schema: Schema) -> Result<Option<Filter>, ApiError> {
    value(q, "filter")
        .filter(|f| !f.trim().is_empty())
        .map(|f| Filter::parse(f, schema).map_err(ApiError::BadRequest))
        .transpose()
}

/// `GET /v1/agent/service/:id`: the service with Consul's `ContentHash`, which Consul also
/// sends as `X-Consul-ContentHash` (agent/service.mdx, "Get Service Configuration"). The
/// hash is of the answer itself, so it changes exactly when what a client reads changes.
/// Hash-based blocking (`?hash=`) is not served.
pub(super) async fn service(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    let svc = agent
        .service(&id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    auth.require(Resource::Service, &svc.service, Access::Read)?;
    let mut body = serde_json::to_value(&svc).map_err(|e| ApiError::Internal(e.to_string()))?;
    let hash = content_hash(&body);
    if let serde_json::Value::Object(fields) = &mut body {
        fields.insert("ContentHash".into(), hash.clone().into());
    }
    Ok(([("X-Consul-ContentHash", hash)], Json(body)).into_response())
}

/// A 64-bit FNV-1a hash of a value's JSON, as 16 hex digits (the form of Consul's hashes).
/// Stable across processes and builds, unlike std's `DefaultHasher`.
fn content_hash(value: &serde_json::Value) -> String {
    let hash = value
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

// Checks.

/// `GET /v1/agent/checks`, with Consul's `?filter=` over each check; only the checks the
/// token may read: a service's by `service:read` on it, a node check by `node:read`.
pub(super) async fn checks(State(agent): St, auth: Authorized, Query(q): Params) -> HttpResult {
    let mut checks = agent.checks();
    let total = checks.len();
    checks.retain(|_, c| {
        if c.service_id.is_empty() {
            auth.allows(Resource::Node, &c.node, Access::Read)
        } else if c.service_name.is_empty() {
            auth.allows(Resource::Service, &c.service_id, Access::Read)
        } else {
            auth.allows(Resource::Service, &c.service_name, Access::Read)
        }
    });
    let filtered = checks.len() < total;
    if let Some(f) = filter(&q, schemas::HEALTH_CHECK)? {
        checks.retain(|_, c| f.matches_item(c));
    }
    Ok(mark_filtered(Json(checks).into_response(), filtered))
}

/// `PUT /v1/agent/check/register`: `service:write` on the service it belongs to, or
/// `node:write` on this node for a node check (Consul's `vetCheckRegister`). The request's
/// token is kept with the check, as with a service.
pub(super) async fn check_register(
    State(agent): St,
    auth: Authorized,
    RequestToken(token): RequestToken,
    bytes: Bytes,
) -> HttpResult {
    let def: CheckRegistration = required_body(&bytes)?;
    if def.service_id.is_empty() {
        auth.require(Resource::Node, &agent.config().node, Access::Write)?;
    } else if let Some(svc) = agent.service(&def.service_id) {
        auth.require(Resource::Service, &svc.service, Access::Write)?;
    } else {
        // An unknown service: the agent's 400, but only to a token that could write its id.
        auth.require(Resource::Service, &def.service_id, Access::Write)?;
    }
    agent.register_check(def, token).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/deregister/:id`: the right to change the check.
pub(super) async fn check_deregister(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
) -> HttpResult {
    require_check_write(&agent, &auth, &id)?;
    agent.deregister_check(&id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `pass`, `warn` and `fail` take the output from `?note=`; the right to change the check.
fn ttl_note(
    agent: &Agent,
    auth: &Authorized,
    id: &str,
    status: &str,
    q: &[(String, String)],
) -> HttpResult {
    require_check_write(agent, auth, id)?;
    agent.update_ttl(id, status, value(q, "note").unwrap_or(""))?;
    Ok(StatusCode::OK.into_response())
}

pub(super) async fn check_pass(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    ttl_note(&agent, &auth, &id, PASSING, &q)
}

pub(super) async fn check_warn(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    ttl_note(&agent, &auth, &id, WARNING, &q)
}

pub(super) async fn check_fail(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    ttl_note(&agent, &auth, &id, CRITICAL, &q)
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

pub(super) async fn check_update(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
    bytes: Bytes,
) -> HttpResult {
    let update: CheckUpdateBody = body(&bytes)?;
    // Consul's handler rejects unknown statuses before looking at the check.
    if update.status.parse::<CheckStatus>().is_err() {
        return Err(
            ApiError::BadRequest(format!("Invalid check status: '{}'", update.status)).into(),
        );
    }
    require_check_write(&agent, &auth, &id)?;
    agent.update_ttl(&id, &update.status, &update.output)?;
    Ok(StatusCode::OK.into_response())
}

// Maintenance.

/// `PUT /v1/agent/maintenance`: `node:write` on this node.
pub(super) async fn node_maintenance(
    State(agent): St,
    auth: Authorized,
    Query(q): Params,
) -> HttpResult {
    let enable = enable_param(&q)?;
    auth.require(Resource::Node, &agent.config().node, Access::Write)?;
    agent
        .set_node_maintenance(enable, value(&q, "reason").unwrap_or(""))
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/maintenance/:id`: `service:write` on the instance's service.
pub(super) async fn service_maintenance(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let enable = enable_param(&q)?;
    require_service_write(&agent, &auth, &id)?;
    agent
        .set_service_maintenance(&id, enable, value(&q, "reason").unwrap_or(""))
        .await?;
    Ok(StatusCode::OK.into_response())
}

// Self, members, local health.

/// This agent as a member.
fn self_member(agent: &Agent) -> AgentMember {
    let config = agent.config();
    let server_port = config.server.then(|| agent.server_port().unwrap_or(0));
    AgentMember::new(
        config.node.clone(),
        config.advertise_addr.clone(),
        SERF_LAN_PORT,
        member_tags(&config.datacenter, &config.node_id, server_port),
        MEMBER_ALIVE,
    )
}

/// Serf tags as Consul sets them (`agent/consul/server_serf.go`, `client_serf.go`): every
/// member's `dc`, `role`, `id`, `segment`, `build` and protocol versions (`vsn`, Consul's
/// protocol 2 of 2..3); a server (`server_port` set: its RPC port, 0 when unknown) adds
/// `port`, `raft_vsn` and `acls` (0: ACLs off).
fn member_tags(dc: &str, node_id: &str, server_port: Option<u16>) -> Meta {
    let mut tags = Meta::new();
    tags.insert("dc".into(), dc.into());
    tags.insert(
        "role".into(),
        if server_port.is_some() {
            "consul"
        } else {
            "node"
        }
        .into(),
    );
    tags.insert("id".into(), node_id.into());
    tags.insert("segment".into(), String::new());
    tags.insert("build".into(), format!("{VERSION}:"));
    tags.insert("vsn".into(), "2".into());
    tags.insert("vsn_min".into(), "2".into());
    tags.insert("vsn_max".into(), "3".into());
    if let Some(port) = server_port {
        tags.insert("port".into(), port.to_string());
        tags.insert("raft_vsn".into(), "3".into());
        tags.insert("acls".into(), "0".into());
    }
    tags
}

/// `GET /v1/agent/self`: `Config` (the stable subset), `DebugConfig` (a few of the runtime
/// settings clients read), `Coord` (the origin: we measure no round-trip times), `Member`,
/// `Stats`, `Meta` (node metadata: none is configurable here, so `{}`) and `xDS` (`null`: no
/// Connect).
pub(super) async fn agent_self(State(agent): St, auth: Authorized) -> HttpResult {
    require_agent(&agent, &auth, Access::Read)?;
    let config = agent.config();
    let mut debug = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        debug.insert(k.to_owned(), v);
    };
    put("Datacenter", config.datacenter.clone().into());
    put("PrimaryDatacenter", config.datacenter.clone().into());
    put("NodeName", config.node.clone().into());
    put("NodeID", config.node_id.clone().into());
    put("ServerMode", config.server.into());
    put("Version", VERSION.into());
    put("Revision", "".into());
    put("AdvertiseAddrLAN", config.advertise_addr.clone().into());
    put("NodeMeta", serde_json::Value::Object(Default::default()));
    put(
        "DataDir",
        config
            .data_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
            .into(),
    );
    let reply = AgentSelf {
        config: AgentSelfConfig {
            datacenter: config.datacenter.clone(),
            primary_datacenter: config.datacenter.clone(),
            node_name: config.node.clone(),
            node_id: config.node_id.clone(),
            server: config.server,
            revision: String::new(),
            version: VERSION.into(),
        },
        debug_config: debug,
        coord: Coordinate::default(),
        member: self_member(&agent),
        stats: agent.stats(),
        meta: Meta::new(),
        xds: None,
    };
    Ok(Json(reply).into_response())
}

/// `GET /v1/agent/members`. We have no gossip pool, so membership is derived from the
/// catalog: every node with a `serfHealth` check (which the servers keep from the agents'
/// heartbeats) is a member, alive while that check passes and failed when it is critical.
/// Nodes without it were registered through the catalog API, not by an agent, and are not
/// members (as in Consul). `?wan=` (the WAN pool: every DC's servers) is a 400: the WAN
/// here is the gateways'.
pub(super) async fn members(State(agent): St, auth: Authorized, Query(q): Params) -> HttpResult {
    // Consul reads `wan` by value (`query.Get("wan") != ""`).
    if value(&q, "wan").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::BadRequest(
            "WAN members are not listed by agents here: the WAN is the WAN gateways' \
             (wan-gateway --retry-join-wan)"
                .into(),
        )
        .into());
    }
    let servers = agent.servers();
    // Read with the agent's token; the request's token filters the members below (Consul
    // lists its gossip members filtered by `node:read`).
    let token = agent.agent_token();
    let token = token.as_deref();
    let nodes: Vec<Node> = servers.get_json_as("/v1/catalog/nodes", token).await?;
    let checks: Vec<HealthCheck> = servers.get_json_as("/v1/health/state/any", token).await?;
    // Servers are the nodes of the `consul` service; its port is their RPC port. Best
    // effort: the two reads above reached the servers, so a failure here is a server that
    // does not list itself (an older one), whose members are then shown without roles.
    let consul: Vec<CatalogService> = servers
        .get_json_as(&format!("/v1/catalog/service/{CONSUL_SERVICE}"), token)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, "members: the consul service could not be read");
            Vec::new()
        });
    let server_ports: BTreeMap<&str, u16> = consul
        .iter()
        .map(|s| (s.node.as_str(), s.service_port))
        .collect();
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
            Some(AgentMember::new(
                n.node.clone(),
                n.address.clone(),
                SERF_LAN_PORT,
                member_tags(
                    if n.datacenter.is_empty() {
                        dc
                    } else {
                        &n.datacenter
                    },
                    &n.id,
                    server_ports.get(n.node.as_str()).copied(),
                ),
                if *status == CRITICAL {
                    MEMBER_FAILED
                } else {
                    MEMBER_ALIVE
                },
            ))
        })
        .collect();
    let me = &agent.config().node;
    match members.iter_mut().find(|m| &m.name == me) {
        Some(m) => m.tags = self_member(&agent).tags,
        // Until the servers have seen our first heartbeat we are still a member, alive.
        None => members.push(self_member(&agent)),
    }
    let total = members.len();
    members.retain(|m| auth.allows(Resource::Node, &m.name, Access::Read));
    let filtered = members.len() < total;
    Ok(mark_filtered(Json(members).into_response(), filtered))
}
