//! `/v1/catalog/*`: register, deregister and the catalog reads. Must not
//! plan or validate writes beyond calling `CatalogState::validate_*`.

use super::params::read_params;
use super::{json, json_headers, read, read_then, HttpResult, Params, St};
use crate::state::{CatalogState, Command};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use registry_api::filter::{schemas, Filter, NodeMeta};
use registry_api::{decode, DeregisterRequest, Error as ApiError, Meta, RegisterRequest};
use std::collections::{BTreeMap, BTreeSet};

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
    let filter = p.filter(schemas::NODE)?;
    let meta = p.node_meta.clone();
    let key = format!("nodes{}", p.key_suffix());
    read_then(
        &st,
        &p,
        key,
        move |s| {
            let c = &s.catalog;
            let (mut nodes, index) = c.nodes();
            nodes.retain(|n| meta_ok(&meta, &n.meta));
            (nodes, index)
        },
        filtered(filter),
    )
    .await
}

/// Consul filters `/v1/catalog/services` on the instances (its selectors are a
/// catalog service's): a name stays if one of its instances matches, with the
/// tags of the instances that do.
pub(super) async fn catalog_services(State(st): St, Query(q): Params) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::SERVICE_NODE)?;
    let meta = p.node_meta.clone();
    let key = format!("services{}", p.key_suffix());
    read(&st, &p, key, move |s| {
        let c = &s.catalog;
        let (all, index) = c.services();
        if filter.is_none() && meta.is_empty() {
            return (all, index);
        }
        let kept = all
            .into_keys()
            .filter_map(|name| {
                let (instances, _) = c.service_nodes(&name, &[]);
                let mut hit = false;
                let mut tags = BTreeSet::new();
                for s in instances
                    .iter()
                    .filter(|s| meta_ok(&meta, &s.node_meta) && keep(&filter, *s))
                {
                    hit = true;
                    tags.extend(s.service_tags.iter().cloned());
                }
                hit.then(|| (name, tags.into_iter().collect::<Vec<_>>()))
            })
            .collect::<BTreeMap<_, _>>();
        (kept, index)
    })
    .await
}

/// Whether a node's meta has every `?node-meta=` pair.
pub(super) fn meta_ok(want: &NodeMeta, meta: &Meta) -> bool {
    want.matches(|k| meta.get(k).map(String::as_str))
}

/// Whether `item` passes the filter, if there is one.
pub(super) fn keep<T: serde::Serialize>(filter: &Option<Filter>, item: &T) -> bool {
    filter.as_ref().is_none_or(|f| f.matches_item(item))
}

/// The step after the read lock for a list answer: the items `?filter=` keeps.
pub(super) fn filtered<T: serde::Serialize>(filter: Option<Filter>) -> impl Fn(Vec<T>) -> Vec<T> {
    move |mut list| {
        list.retain(|item| keep(&filter, item));
        list
    }
}

pub(super) async fn catalog_service(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let tags = p.tags.clone();
    let filter = p.filter(schemas::SERVICE_NODE)?;
    let meta = p.node_meta.clone();
    let key = format!("service\0{name}\0{tags:?}{}", p.key_suffix());
    read_then(
        &st,
        &p,
        key,
        move |s| {
            let c = &s.catalog;
            let (mut list, index) = c.service_nodes(&name, &tags);
            list.retain(|s| meta_ok(&meta, &s.node_meta));
            (list, index)
        },
        filtered(filter),
    )
    .await
}

pub(super) async fn catalog_node(
    State(st): St,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::AGENT_SERVICE)?;
    let key = format!("node\0{node}{}", p.key_suffix());
    read(&st, &p, key, move |s| {
        let c = &s.catalog;
        let (mut found, index) = c.node_services(&node);
        if let Some(n) = found.as_mut() {
            n.services.retain(|_, s| keep(&filter, s));
        }
        (found, index)
    })
    .await
}

pub(super) async fn catalog_node_services(
    State(st): St,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::AGENT_SERVICE)?;
    let key = format!("node-services\0{node}{}", p.key_suffix());
    // An unknown node is `null`, as in Consul.
    read(&st, &p, key, move |s| {
        let c = &s.catalog;
        let (mut found, index) = c.node_service_list(&node);
        if let Some(n) = found.as_mut() {
            n.services.retain(|s| keep(&filter, s));
        }
        (found, index)
    })
    .await
}
