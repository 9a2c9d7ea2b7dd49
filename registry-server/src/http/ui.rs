//! `/v1/internal/ui/services` and `/v1/internal/ui/nodes`: the summaries Consul's web UI
//! reads (Consul's `agent/ui_endpoint.go`, `UIServices` and `UINodes`), in Consul's shapes,
//! so that the UI (`registry-ui`) draws a list of services with their health from one
//! request instead of one per service. Blocking queries and `?dc=` work as on every read.
//!
//! Both cover the whole catalog, so their index is the catalog's latest (Consul's
//! `Internal.ServiceDump` and `Internal.NodeDump` take the max of the nodes, services and
//! checks tables). A blocking read probes that index first and copies the catalog out only
//! once it moved past the client's, so a watcher costs an index lookup per write elsewhere.

use super::params::{read_params, ReadParams};
use super::{acl_key, acl_retain, answer_response, HttpResult, Params, St};
use crate::state::StateStore;
use axum::extract::{Query, State};
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Authz, Resource};
use registry_api::{AgentService, Error as ApiError, HealthCheck, CRITICAL, PASSING, WARNING};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One service of `GET /v1/internal/ui/services`: Consul's `ServiceListingSummary`
/// (a `ServiceSummary` and the two Connect flags), with Consul CE's fields. The Connect
/// and gateway fields are always off here: there is no service mesh.
#[derive(Serialize, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceSummary {
    /// The service kind; omitted for a typical service, as Consul's `omitempty` does.
    #[serde(skip_serializing_if = "String::is_empty")]
    kind: String,
    /// The service name.
    name: String,
    /// The datacenter of its instances.
    datacenter: String,
    /// Union of the instances' tags, sorted.
    tags: Vec<String>,
    /// Nodes with an instance, sorted.
    nodes: Vec<String>,
    /// Values of the instances' `external-source` meta, in the order first seen.
    external_sources: Vec<String>,
    /// Instances.
    instance_count: usize,
    /// Checks passing: the instances' and their nodes', each (node, check) counted once.
    checks_passing: usize,
    /// Checks warning, counted as above.
    checks_warning: usize,
    /// Checks critical, counted as above.
    checks_critical: usize,
    /// Gateway settings (none: `{}`).
    gateway_config: GatewayConfig,
    /// Whether every proxy of the service is transparent (no proxies: false).
    transparent_proxy: bool,
    /// Whether an instance is Connect-native.
    connect_native: bool,
    /// Whether a sidecar proxy fronts the service.
    connected_with_proxy: bool,
    /// Whether a gateway fronts the service.
    connected_with_gateway: bool,
}

/// Consul's `GatewayConfig`: both fields `omitempty`, so `{}` without gateways.
#[derive(Serialize, Debug, Default, PartialEq, Eq)]
struct GatewayConfig {}

/// One node of `GET /v1/internal/ui/nodes`: Consul's `NodeInfo` (CE fields).
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NodeInfo {
    /// The node's id.
    #[serde(rename = "ID")]
    id: String,
    /// Its name.
    node: String,
    /// Its address.
    address: String,
    /// Its datacenter.
    datacenter: String,
    /// Its tagged addresses.
    tagged_addresses: registry_api::Meta,
    /// Its metadata.
    meta: registry_api::Meta,
    /// Its service instances, by id.
    services: Vec<AgentService>,
    /// Every check on it, node-level and service.
    checks: Vec<HealthCheck>,
}

/// The read parameters these two endpoints honour: the consistency modes and blocking. The
/// per-item selectors other reads take (`?filter=`, `?node-meta=`, `?tag=`, `?passing`) are
/// refused by name rather than ignored (DESIGN §4: a parameter the server does not support
/// is an error).
fn ui_read_params(q: &[(String, String)]) -> Result<ReadParams, ApiError> {
    for name in ["filter", "node-meta", "tag", "passing"] {
        if q.iter()
            .any(|(k, v)| k == name && (name == "passing" || !v.is_empty()))
        {
            return Err(ApiError::BadRequest(format!(
                "Invalid query parameter: {name:?} - not supported on /v1/internal/ui/*"
            )));
        }
    }
    read_params(q)
}

/// `GET /v1/internal/ui/services`: every service with its instance count, nodes, tags and
/// check counts, sorted by name.
pub(super) async fn ui_services(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    let p = ui_read_params(&q)?;
    let key = format!("ui-services{}", p.key_suffix());
    let acl = auth.0.clone();
    // The services the token may read, each with only the nodes it may read.
    let then = move |mut list: Vec<ServiceSummary>| {
        let mut dropped = acl_retain(&acl, &mut list, |s| {
            acl.allows(Resource::Service, &s.name, Access::Read)
        });
        for s in &mut list {
            dropped |= acl_retain(&acl, &mut s.nodes, |n| {
                acl.allows(Resource::Node, n, Access::Read)
            });
        }
        (list, dropped)
    };
    read_catalog(&st, &auth, &p, key, service_summaries, then).await
}

/// `GET /v1/internal/ui/nodes`: every node with its services and checks, by name.
pub(super) async fn ui_nodes(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    let p = ui_read_params(&q)?;
    let key = format!("ui-nodes{}", p.key_suffix());
    let acl = auth.0.clone();
    // The nodes the token may read, each with only the services (and their checks) it may read.
    let then = move |mut list: Vec<NodeInfo>| {
        let mut dropped = acl_retain(&acl, &mut list, |n| {
            acl.allows(Resource::Node, &n.node, Access::Read)
        });
        for n in &mut list {
            dropped |= acl_retain(&acl, &mut n.services, |s| {
                acl.allows(Resource::Service, &s.service, Access::Read)
            });
            dropped |= acl_retain(&acl, &mut n.checks, |c| {
                c.service_name.is_empty()
                    || acl.allows(Resource::Service, &c.service_name, Access::Read)
            });
        }
        (list, dropped)
    };
    read_catalog(&st, &auth, &p, key, node_dump, then).await
}

/// A read over the whole catalog, probed on the catalog's latest index.
async fn read_catalog<T: Serialize>(
    st: &super::AppState,
    authz: &Authz,
    p: &ReadParams,
    key: String,
    query: fn(&StateStore) -> (T, u64),
    then: impl Fn(T) -> (T, bool),
) -> HttpResult {
    let answer = crate::reads::read_probed(
        &st.raft,
        &st.answers,
        &st.shutdown,
        p.mode_now(&st.raft),
        p.blocking,
        acl_key(key, authz),
        Some(crate::reads::Probe::index(catalog_index)),
        query,
        then,
    )
    .await?;
    Ok(answer_response(st, answer))
}

/// The index of the latest change to nodes, services or checks (at least 1).
fn catalog_index(s: &StateStore) -> u64 {
    s.catalog.last_index().max(1)
}

fn service_summaries(s: &StateStore) -> (Vec<ServiceSummary>, u64) {
    let c = &s.catalog;
    let (names, _) = c.services();
    let list = names
        .into_keys()
        .map(|name| {
            // The instances with their node's checks and their own, as Consul's
            // ServiceDump gives them to `summarizeServices`.
            let (entries, _) = c.health_service(&name, &[], false);
            let mut sum = ServiceSummary {
                name,
                ..Default::default()
            };
            let mut nodes = BTreeSet::new();
            let mut tags = BTreeSet::new();
            // A node check is shared by the node's instances: counted once per service.
            let mut checks = BTreeMap::new();
            for e in &entries {
                sum.instance_count += 1;
                sum.datacenter.clone_from(&e.node.datacenter);
                sum.kind.clone_from(&e.service.kind);
                nodes.insert(e.node.node.clone());
                tags.extend(e.service.tags.iter().cloned());
                if let Some(source) = e.service.meta.get("external-source") {
                    if !source.is_empty() && !sum.external_sources.contains(source) {
                        sum.external_sources.push(source.clone());
                    }
                }
                for check in &e.checks {
                    checks.insert((&check.node, &check.check_id), check.status.as_str());
                }
            }
            for status in checks.values() {
                match *status {
                    PASSING => sum.checks_passing += 1,
                    WARNING => sum.checks_warning += 1,
                    CRITICAL => sum.checks_critical += 1,
                    _ => {}
                }
            }
            sum.nodes = nodes.into_iter().collect();
            sum.tags = tags.into_iter().collect();
            sum
        })
        // A name whose last instance went keeps no summary (Consul's dump has no row).
        .filter(|s| s.instance_count > 0)
        .collect();
    (list, catalog_index(s))
}

fn node_dump(s: &StateStore) -> (Vec<NodeInfo>, u64) {
    let c = &s.catalog;
    let (nodes, _) = c.nodes();
    let list = nodes
        .into_iter()
        .map(|n| {
            let services = c
                .node_service_list(&n.node)
                .0
                .map(|l| l.services)
                .unwrap_or_default();
            let (checks, _) = c.node_checks(&n.node);
            NodeInfo {
                id: n.id,
                node: n.node,
                address: n.address,
                datacenter: n.datacenter,
                tagged_addresses: n.tagged_addresses,
                meta: n.meta,
                services,
                checks,
            }
        })
        .collect();
    (list, catalog_index(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use registry_api::{AgentService, HealthCheck, RegisterRequest};

    fn register(
        s: &mut StateStore,
        index: u64,
        node: &str,
        id: &str,
        service: &str,
        tags: &[&str],
        checks: &[(&str, &str, &str)],
    ) {
        let req = RegisterRequest {
            node: node.into(),
            address: "10.0.0.1".into(),
            service: Some(AgentService {
                id: id.into(),
                service: service.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                port: 80,
                ..Default::default()
            }),
            checks: checks
                .iter()
                .map(|(cid, sid, status)| HealthCheck {
                    check_id: cid.to_string(),
                    name: cid.to_string(),
                    status: status.to_string(),
                    service_id: sid.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let (result, _) = s.apply(index, 0, &Command::Register(req));
        result.unwrap();
    }

    #[test]
    fn a_summary_counts_instances_nodes_tags_and_each_check_once() {
        let mut s = StateStore::new("dc1");
        // web on two nodes; n1's node check is shared by its two web instances.
        register(
            &mut s,
            1,
            "n1",
            "web-1",
            "web",
            &["v1"],
            &[
                ("serfHealth", "", "passing"),
                ("web-1-http", "web-1", "critical"),
            ],
        );
        register(
            &mut s,
            2,
            "n1",
            "web-2",
            "web",
            &["v2"],
            &[("web-2-http", "web-2", "warning")],
        );
        register(
            &mut s,
            3,
            "n2",
            "web-3",
            "web",
            &["v1"],
            &[("serfHealth", "", "passing")],
        );
        register(&mut s, 4, "n2", "db-1", "db", &[], &[]);
        let (list, index) = service_summaries(&s);
        assert!(index >= 4);
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        let web = &list[1];
        assert_eq!(web.instance_count, 3);
        assert_eq!(web.nodes, ["n1", "n2"]);
        assert_eq!(web.tags, ["v1", "v2"]);
        assert_eq!(web.datacenter, "dc1");
        // n1/serfHealth, n2/serfHealth passing; web-1-http critical; web-2-http warning.
        assert_eq!(
            (web.checks_passing, web.checks_warning, web.checks_critical),
            (2, 1, 1)
        );
        let db = &list[0];
        assert_eq!((db.instance_count, db.checks_passing), (1, 1));
        assert!(db.tags.is_empty());

        let json = serde_json::to_value(web).unwrap();
        for field in [
            "Name",
            "Datacenter",
            "Tags",
            "Nodes",
            "ExternalSources",
            "InstanceCount",
            "ChecksPassing",
            "ChecksWarning",
            "ChecksCritical",
            "GatewayConfig",
            "TransparentProxy",
            "ConnectNative",
            "ConnectedWithProxy",
            "ConnectedWithGateway",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert!(
            json.get("Kind").is_none(),
            "a typical service has no Kind: {json}"
        );
        assert_eq!(
            serde_json::to_value(db).unwrap()["Tags"],
            serde_json::json!([])
        );
    }

    #[test]
    fn the_node_dump_has_each_nodes_services_and_checks() {
        let mut s = StateStore::new("dc1");
        register(
            &mut s,
            1,
            "n1",
            "web-1",
            "web",
            &[],
            &[
                ("serfHealth", "", "passing"),
                ("web-1-http", "web-1", "critical"),
            ],
        );
        register(&mut s, 2, "n2", "db-1", "db", &[], &[]);
        let (list, index) = node_dump(&s);
        assert_eq!(index, catalog_index(&s));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].node, "n1");
        assert_eq!(list[0].services.len(), 1);
        assert_eq!(list[0].checks.len(), 2);
        assert!(list[1].checks.is_empty());
        let json = serde_json::to_value(&list[1]).unwrap();
        assert_eq!(json["Checks"], serde_json::json!([]));
        assert_eq!(json["Services"][0]["Service"], "db");
    }
}
