//! `/v1/health/*`: the health reads.

use super::catalog::{filtered, meta_ok, node_and_service};
use super::params::read_params;
use super::{read_then, read_then_probed, HttpResult, Params, St};
use crate::state::CatalogState;
use axum::extract::{Path, Query, State};
use registry_api::acl::extract::Authorized;
use registry_api::filter::{schemas, NodeMeta};
use registry_api::{Error as ApiError, HealthCheck, ServiceEntry};
use std::collections::BTreeSet;

pub(super) async fn health_service(
    State(st): St,
    auth: Authorized,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let tags = p.tags.clone();
    let passing = p.passing;
    let filter = p.filter(schemas::SERVICE_ENTRY)?;
    let meta = p.node_meta.clone();
    let key = format!(
        "health-service\0{name}\0{tags:?}\0{passing}{}",
        p.key_suffix()
    );
    let acl = auth.0.clone();
    read_then_probed(
        &st,
        &auth,
        &p,
        key,
        Some(crate::reads::service_probe(&name)),
        move |s| {
            let c = &s.catalog;
            let (mut list, index) = c.health_service(&name, &tags, passing);
            list.retain(|e| meta_ok(&meta, &e.node.meta));
            (list, index)
        },
        filtered(filter, move |e: &ServiceEntry| {
            node_and_service(&acl, &e.node.node, &e.service.service)
        }),
    )
    .await
}

pub(super) async fn health_checks(
    State(st): St,
    auth: Authorized,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::HEALTH_CHECK)?;
    let meta = p.node_meta.clone();
    let key = format!("checks\0{name}{}", p.key_suffix());
    let acl = auth.0.clone();
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| {
            let c = &s.catalog;
            let (mut checks, index) = c.service_checks(&name);
            retain_checks(c, &mut checks, &meta);
            (checks, index)
        },
        filtered(filter, move |c: &HealthCheck| {
            node_and_service(&acl, &c.node, &c.service_name)
        }),
    )
    .await
}

pub(super) async fn health_node(
    State(st): St,
    auth: Authorized,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::HEALTH_CHECK)?;
    let key = format!("health-node\0{node}{}", p.key_suffix());
    let acl = auth.0.clone();
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| s.catalog.node_checks(&node),
        filtered(filter, move |c: &HealthCheck| {
            node_and_service(&acl, &c.node, &c.service_name)
        }),
    )
    .await
}

pub(super) async fn health_state(
    State(st): St,
    auth: Authorized,
    Path(state): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    // Validate once up front so a bad state is a 400, not an error inside the read.
    CatalogState::new(&st.datacenter)
        .checks_in_state(&state)
        .map_err(ApiError::BadRequest)?;
    let filter = p.filter(schemas::HEALTH_CHECK)?;
    let meta = p.node_meta.clone();
    let key = format!("state\0{state}{}", p.key_suffix());
    let acl = auth.0.clone();
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| {
            let c = &s.catalog;
            let (mut checks, index) = c.checks_in_state(&state).unwrap_or_default();
            retain_checks(c, &mut checks, &meta);
            (checks, index)
        },
        filtered(filter, move |c: &HealthCheck| {
            node_and_service(&acl, &c.node, &c.service_name)
        }),
    )
    .await
}

/// Keeps the checks of nodes whose meta has every `?node-meta=` pair (a check
/// does not carry its node's meta, so the nodes are looked up).
fn retain_checks(c: &CatalogState, checks: &mut Vec<HealthCheck>, meta: &NodeMeta) {
    if meta.is_empty() {
        return;
    }
    let (nodes, _) = c.nodes();
    let wanted: BTreeSet<String> = nodes
        .into_iter()
        .filter(|n| meta_ok(meta, &n.meta))
        .map(|n| n.node)
        .collect();
    checks.retain(|h| wanted.contains(&h.node));
}
