//! Reads of features we do not have (Connect, its gateways): answered as a
//! Consul whose catalog holds no Connect-capable instance and no gateway
//! answers them, an empty list with the `X-Consul-*` headers, never a bare
//! 404 (which clients report as "Missing index header"). They block on
//! `?index=` like Consul's, on the index Consul would watch, so a client
//! polling them waits instead of spinning. Must not invent data: nothing here
//! reads more of the catalog than an index.

use super::params::read_params;
use super::{read, HttpResult, Params, St};
use axum::extract::{Path, Query, State};
use registry_api::filter::{schemas, Schema};

/// An empty answer at `index` (`[]` on the wire).
fn none(index: u64) -> (Vec<serde_json::Value>, u64) {
    (Vec::new(), index)
}

/// Validates the query (`?filter=` against the endpoint's selectors, as Consul
/// does before it runs the query) and answers `[]` at the index `index` gives.
async fn empty_list(
    st: &super::AppState,
    q: &[(String, String)],
    schema: Option<Schema>,
    key: String,
    index: impl Fn(&crate::state::CatalogState) -> u64 + Send + Sync + 'static,
) -> HttpResult {
    let p = read_params(q)?;
    if let Some(schema) = schema {
        p.filter(schema)?;
    }
    // Nothing to filter: the answer is always empty.
    let everyone = registry_api::acl::Authz::disabled();
    read(st, &everyone, &p, key, move |s| none(index(&s.catalog))).await
}

/// `GET /v1/catalog/connect/:service`: the Connect-capable instances of a
/// service; none without Connect. Consul's index is the service's.
pub(super) async fn catalog_connect(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let key = format!("catalog-connect\0{name}");
    empty_list(&st, &q, Some(schemas::SERVICE_NODE), key, move |c| {
        c.service_index(&name)
    })
    .await
}

/// `GET /v1/health/connect/:service`: the health of a service's Connect
/// proxies; none without Connect.
pub(super) async fn health_connect(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let key = format!("health-connect\0{name}");
    empty_list(&st, &q, Some(schemas::SERVICE_ENTRY), key, move |c| {
        c.service_index(&name)
    })
    .await
}

/// `GET /v1/health/ingress/:service`: the ingress gateways of a service;
/// none without gateways.
pub(super) async fn health_ingress(
    State(st): St,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let key = format!("health-ingress\0{name}");
    empty_list(&st, &q, Some(schemas::SERVICE_ENTRY), key, move |c| {
        c.service_index(&name)
    })
    .await
}

/// `GET /v1/catalog/gateway-services/:gateway`: the services a gateway
/// routes to; none without gateways. Consul's index is its gateway-services
/// table's; ours is the services table's, which changes at least as often.
pub(super) async fn catalog_gateway_services(
    State(st): St,
    Path(gateway): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let key = format!("gateway-services\0{gateway}");
    // We have no schema of a gateway-service entry's selectors, so `?filter=`
    // is not checked here (on an empty list it cannot change the answer).
    empty_list(&st, &q, None, key, |c| c.services_index()).await
}
