//! `/v1/catalog/*`: register, deregister and the catalog reads. Must not
//! plan or validate writes beyond calling `CatalogState::validate_*`.

use super::params::read_params;
use super::{acl_retain, json, json_headers, read_then, read_then_probed, HttpResult, Params, St};
use crate::state::{CatalogState, Command};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Authz, Resource};
use registry_api::filter::{schemas, Filter, NodeMeta};
use registry_api::{decode, DeregisterRequest, Error as ApiError, Meta, RegisterRequest};
use std::collections::{BTreeMap, BTreeSet};

pub(super) async fn catalog_register(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
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
    vet_register(&st, &auth, &req)?;
    st.raft.propose(Command::Register(req)).await?;
    json(&st, &true)
}

pub(super) async fn catalog_deregister(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
    let req: DeregisterRequest = decode::from_slice(&body).map_err(ApiError::BadRequest)?;
    if !req.datacenter.is_empty() && req.datacenter != st.datacenter {
        let path = format!("/v1/catalog/deregister?dc={}", req.datacenter);
        return Ok(st
            .wan
            .forward(Method::PUT, &path, &json_headers(), body)
            .await?);
    }
    CatalogState::validate_deregister(&req).map_err(ApiError::BadRequest)?;
    vet_deregister(&st, &auth, &req)?;
    st.raft.propose(Command::Deregister(req)).await?;
    json(&st, &true)
}

/// The ACL step of a catalog register (Consul's `vetRegisterWithACL`): the
/// service's `service:write`, each check's `service:write` (a service check)
/// or `node:write` (a node check), and `node:write` when the node itself is
/// written (not `SkipNodeUpdate`, or a node that does not exist yet).
fn vet_register(st: &super::AppState, auth: &Authz, req: &RegisterRequest) -> Result<(), ApiError> {
    if auth.allows_all() {
        return Ok(());
    }
    // `SkipNodeUpdate` on a node that does not exist yet still creates it.
    let node_written = !req.skip_node_update
        || st
            .raft
            .with_applied(|s, _| s.catalog.node_services(&req.node).0.is_none());
    if node_written {
        auth.require(Resource::Node, &req.node, Access::Write)?;
    }
    let mut services: BTreeMap<&str, &str> = BTreeMap::new();
    if let Some(svc) = &req.service {
        auth.require(Resource::Service, &svc.service, Access::Write)?;
        // Re-registering an instance under another name needs the old name's write too.
        if let Some(old) = stored_service_name(st, &req.node, &svc.id) {
            auth.require(Resource::Service, &old, Access::Write)?;
        }
        services.insert(&svc.id, &svc.service);
    }
    for check in req.check.iter().chain(&req.checks) {
        vet_check_write(st, auth, &req.node, check, &services)?;
    }
    Ok(())
}

/// The name of the instance `id` on `node` as stored, if it exists.
pub(super) fn stored_service_name(st: &super::AppState, node: &str, id: &str) -> Option<String> {
    st.raft.with_applied(|s, _| {
        s.catalog
            .node_services(node)
            .0
            .and_then(|n| n.services.get(id).map(|svc| svc.service.clone()))
    })
}

/// The check `id` on `node` as stored, if it exists.
fn stored_check(st: &super::AppState, node: &str, id: &str) -> Option<registry_api::HealthCheck> {
    st.raft.with_applied(|s, _| {
        s.catalog
            .node_checks(node)
            .0
            .into_iter()
            .find(|c| c.check_id == id)
    })
}

/// The ACL step of writing `check` on `node` (Consul's `vetRegisterWithACL` for checks): a
/// check of a service (its `ServiceID`, named by the request's own service or by the stored
/// one, never by the client's `ServiceName`) needs that service's `service:write`; a node
/// check (no `ServiceID`) needs `node:write`; and an existing check of that ID needs its
/// current owner's write as well.
pub(super) fn vet_check_write(
    st: &super::AppState,
    auth: &Authz,
    node: &str,
    check: &registry_api::HealthCheck,
    in_request: &BTreeMap<&str, &str>,
) -> Result<(), ApiError> {
    if check.service_id.is_empty() {
        auth.require(Resource::Node, node, Access::Write)?;
    } else {
        let name = in_request
            .get(check.service_id.as_str())
            .map(|n| n.to_string())
            .or_else(|| stored_service_name(st, node, &check.service_id))
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "{}: the check's service {:?} is not registered on {node:?}",
                    registry_api::acl::PERMISSION_DENIED,
                    check.service_id
                ))
            })?;
        auth.require(Resource::Service, &name, Access::Write)?;
    }
    if let Some(old) = stored_check(st, node, &check.check_id) {
        if old.service_id.is_empty() {
            auth.require(Resource::Node, node, Access::Write)?;
        } else {
            let owner = stored_service_name(st, node, &old.service_id).unwrap_or(old.service_name);
            auth.require(Resource::Service, &owner, Access::Write)?;
        }
    }
    Ok(())
}

/// The ACL step of a catalog deregister (Consul's `vetDeregisterWithACL`): a
/// whole node needs `node:write`; a service or a check of a service needs that
/// service's `service:write`; a node check, `node:write`.
fn vet_deregister(
    st: &super::AppState,
    auth: &Authz,
    req: &DeregisterRequest,
) -> Result<(), ApiError> {
    if auth.allows_all() {
        return Ok(());
    }
    let service_of = |id: &str| {
        st.raft.with_applied(|s, _| {
            s.catalog
                .node_services(&req.node)
                .0
                .and_then(|n| n.services.get(id).map(|svc| svc.service.clone()))
        })
    };
    if let Some(id) = Some(req.service_id.as_str()).filter(|i| !i.is_empty()) {
        if let Some(name) = service_of(id) {
            auth.require(Resource::Service, &name, Access::Write)?;
        } else {
            auth.require(Resource::Node, &req.node, Access::Write)?;
        }
    } else if let Some(id) = Some(req.check_id.as_str()).filter(|i| !i.is_empty()) {
        let service: Option<String> = st.raft.with_applied(|s, _| {
            let (checks, _) = s.catalog.node_checks(&req.node);
            checks
                .into_iter()
                .find(|c| c.check_id == id)
                .map(|c| c.service_name)
        });
        match service.filter(|s| !s.is_empty()) {
            Some(name) => auth.require(Resource::Service, &name, Access::Write)?,
            None => auth.require(Resource::Node, &req.node, Access::Write)?,
        }
    } else {
        auth.require(Resource::Node, &req.node, Access::Write)?;
    }
    Ok(())
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

pub(super) async fn catalog_nodes(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::NODE)?;
    let meta = p.node_meta.clone();
    let key = format!("nodes{}", p.key_suffix());
    let acl = auth.0.clone();
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| {
            let c = &s.catalog;
            let (mut nodes, index) = c.nodes();
            nodes.retain(|n| meta_ok(&meta, &n.meta));
            (nodes, index)
        },
        filtered(filter, move |n: &registry_api::Node| {
            acl.allows(Resource::Node, &n.node, Access::Read)
        }),
    )
    .await
}

/// Consul filters `/v1/catalog/services` on the instances (its selectors are a
/// catalog service's): a name stays if one of its instances matches, with the
/// tags of the instances that do.
pub(super) async fn catalog_services(
    State(st): St,
    auth: Authorized,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::SERVICE_NODE)?;
    let meta = p.node_meta.clone();
    let key = format!("services{}", p.key_suffix());
    let acl = auth.0.clone();
    let acl_step = move |mut all: BTreeMap<String, Vec<String>>| {
        if acl.allows_all() {
            return (all, false);
        }
        let before = all.len();
        all.retain(|name, _| acl.allows(Resource::Service, name, Access::Read));
        let dropped = all.len() != before;
        (all, dropped)
    };
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| {
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
        },
        acl_step,
    )
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

/// The step after the read lock for a list answer: the items the token may
/// read (`acl`) and `?filter=` keeps, and whether ACLs left any out.
pub(super) fn filtered<T: serde::Serialize>(
    filter: Option<Filter>,
    acl: impl Fn(&T) -> bool,
) -> impl Fn(Vec<T>) -> (Vec<T>, bool) {
    move |mut list| {
        let before = list.len();
        list.retain(|item| acl(item));
        let dropped = list.len() != before;
        list.retain(|item| keep(&filter, item));
        (list, dropped)
    }
}

/// Consul's `allowNode && allowService` for an item of `node` and `service`
/// (empty: a node-level item).
pub(super) fn node_and_service(authz: &Authz, node: &str, service: &str) -> bool {
    authz.allows(Resource::Node, node, Access::Read)
        && (service.is_empty() || authz.allows(Resource::Service, service, Access::Read))
}

pub(super) async fn catalog_service(
    State(st): St,
    auth: Authorized,
    Path(name): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let tags = p.tags.clone();
    let filter = p.filter(schemas::SERVICE_NODE)?;
    let meta = p.node_meta.clone();
    let key = format!("service\0{name}\0{tags:?}{}", p.key_suffix());
    let acl = auth.0.clone();
    read_then_probed(
        &st,
        &auth,
        &p,
        key,
        Some(crate::reads::service_probe(&name)),
        move |s| {
            let c = &s.catalog;
            let (mut list, index) = c.service_nodes(&name, &tags);
            list.retain(|s| meta_ok(&meta, &s.node_meta));
            (list, index)
        },
        filtered(filter, move |s: &registry_api::CatalogService| {
            node_and_service(&acl, &s.node, &s.service_name)
        }),
    )
    .await
}

pub(super) async fn catalog_node(
    State(st): St,
    auth: Authorized,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::AGENT_SERVICE)?;
    let key = format!("node\0{node}{}", p.key_suffix());
    let acl = auth.0.clone();
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| {
            let c = &s.catalog;
            let (mut found, index) = c.node_services(&node);
            if let Some(n) = found.as_mut() {
                n.services.retain(|_, s| keep(&filter, s));
            }
            (found, index)
        },
        move |found| {
            // Consul's `filterNodeServices`: no node:read, no node; then the
            // services the token may read.
            let Some(mut n) = found else {
                return (None, false);
            };
            if acl.allows_all() {
                return (Some(n), false);
            }
            if !acl.allows(Resource::Node, &n.node.node, Access::Read) {
                return (None, true);
            }
            let before = n.services.len();
            n.services
                .retain(|_, s| acl.allows(Resource::Service, &s.service, Access::Read));
            let dropped = n.services.len() != before;
            (Some(n), dropped)
        },
    )
    .await
}

pub(super) async fn catalog_node_services(
    State(st): St,
    auth: Authorized,
    Path(node): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let p = read_params(&q)?;
    let filter = p.filter(schemas::AGENT_SERVICE)?;
    let key = format!("node-services\0{node}{}", p.key_suffix());
    let acl = auth.0.clone();
    // An unknown node is `null`, as in Consul.
    read_then(
        &st,
        &auth,
        &p,
        key,
        move |s| {
            let c = &s.catalog;
            let (mut found, index) = c.node_service_list(&node);
            if let Some(n) = found.as_mut() {
                n.services.retain(|s| keep(&filter, s));
            }
            (found, index)
        },
        move |found| {
            let Some(mut n) = found else {
                return (None, false);
            };
            if acl.allows_all() {
                return (Some(n), false);
            }
            if !acl.allows(Resource::Node, &n.node.node, Access::Read) {
                return (None, true);
            }
            let dropped = acl_retain(&acl, &mut n.services, |s| {
                acl.allows(Resource::Service, &s.service, Access::Read)
            });
            (Some(n), dropped)
        },
    )
    .await
}
