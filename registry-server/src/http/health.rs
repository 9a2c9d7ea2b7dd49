//! `/v1/health/*`: the health reads.

use super::params::read_params;
use super::{read, HttpResult, Params, St};
use crate::state::CatalogState;
use axum::extract::{Path, Query, State};
use registry_api::Error as ApiError;

pub(super) async fn health_service(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let tags = p.tags.clone();
    let passing = p.passing;
    let key = format!("health-service\0{name}\0{tags:?}\0{passing}");
    read(&st, &p, key, move |c| {
        c.health_service(&name, &tags, passing)
    })
    .await
}

pub(super) async fn health_checks(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    read(&st, &p, format!("checks\0{name}"), move |c| {
        c.service_checks(&name)
    })
    .await
}

pub(super) async fn health_node(
    State(st): St,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    read(&st, &p, format!("health-node\0{node}"), move |c| {
        c.node_checks(&node)
    })
    .await
}

pub(super) async fn health_state(
    State(st): St,
    Path(state): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    // Validate once up front so a bad state is a 400, not an error inside the read.
    CatalogState::new(&st.datacenter)
        .checks_in_state(&state)
        .map_err(ApiError::BadRequest)?;
    read(&st, &p, format!("state\0{state}"), move |c| {
        c.checks_in_state(&state).unwrap_or_default()
    })
    .await
}
