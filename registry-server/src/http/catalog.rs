//! `/v1/catalog/*`: register, deregister and the catalog reads. Must not
//! plan or validate writes beyond calling `CatalogState::validate_*`.

use super::params::read_params;
use super::{json, json_headers, read, HttpResult, Params, St};
use crate::state::{CatalogState, Command};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use registry_api::{decode, DeregisterRequest, Error as ApiError, RegisterRequest};

pub(super) async fn catalog_register(State(st): St, body: Bytes) -> HttpResult {
    let mut req: RegisterRequest = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !req.datacenter.is_empty() && req.datacenter != st.datacenter {
        // Consul routes by the body's Datacenter as by ?dc=.
        let path = format!("/v1/catalog/register?dc={}", req.datacenter);
        return Ok(st
            .wan
            .forward(Method::PUT, &path, &json_headers(), body)
            .await?);
    }
    CatalogState::validate_register(&mut req).map_err(ApiError::BadRequest)?;
    st.raft.propose(Command::Register(req)).await?;
    json(&st, &true)
}

pub(super) async fn catalog_deregister(State(st): St, body: Bytes) -> HttpResult {
    let req: DeregisterRequest = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !req.datacenter.is_empty() && req.datacenter != st.datacenter {
        let path = format!("/v1/catalog/deregister?dc={}", req.datacenter);
        return Ok(st
            .wan
            .forward(Method::PUT, &path, &json_headers(), body)
            .await?);
    }
    CatalogState::validate_deregister(&req).map_err(ApiError::BadRequest)?;
    st.raft.propose(Command::Deregister(req)).await?;
    json(&st, &true)
}

/// All known datacenters, the local one first and the rest by round-trip
/// time, as this DC's gateways measure it; just the local one without them.
pub(super) async fn catalog_datacenters(State(st): St) -> HttpResult {
    let dcs = st
        .wan
        .datacenters()
        .await
        .filter(|d| d.contains(&st.datacenter))
        .unwrap_or_else(|| vec![st.datacenter.clone()]);
    json(&st, &dcs)
}

pub(super) async fn catalog_nodes(State(st): St, Query(q): Params) -> HttpResult {
    let p = read_params(&q)?;
    read(&st, &p, "nodes".into(), |c| c.nodes()).await
}

pub(super) async fn catalog_services(State(st): St, Query(q): Params) -> HttpResult {
    let p = read_params(&q)?;
    read(&st, &p, "services".into(), |c| c.services()).await
}

pub(super) async fn catalog_service(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let tags = p.tags.clone();
    let key = format!("service\0{name}\0{tags:?}");
    read(&st, &p, key, move |c| c.service_nodes(&name, &tags)).await
}

pub(super) async fn catalog_node(
    State(st): St,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    read(&st, &p, format!("node\0{node}"), move |c| {
        c.node_services(&node)
    })
    .await
}

pub(super) async fn catalog_node_services(
    State(st): St,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    // An unknown node is `null`, as in Consul.
    read(&st, &p, format!("node-services\0{node}"), move |c| {
        c.node_service_list(&node)
    })
    .await
}
