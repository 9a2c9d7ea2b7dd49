//! The catalog state machine: nodes, service instances and health checks, with
//! Consul's write rules (<https://developer.hashicorp.com/consul/api-docs/catalog>)
//! and Consul's blocking-query indexes.
//!
//! Pure and deterministic: `apply` takes a committed command and its Raft index
//! and returns the rows to persist; it never reads a clock, draws a random
//! number or does I/O, so every replica that applies the same log holds the
//! same catalog. Owns the catalog tables, their validation and queries; must
//! not do I/O or know Raft (`raft/`) or HTTP (`http/`).

use super::command::Command;
use super::plan::{WritePlan, WritePlanner};
use super::rows::{
    from_json, index_key, key_of, node_key, node_range, pair_key, split_pair, to_json, KeySet,
    NodeKey, RowChange, CHECKS, NODES, SERVICES, SERVICE_INDEX_PREFIX,
};
use compact_str::CompactString as Str;
use registry_api::types::Meta;
use registry_api::{
    AgentService, CatalogNode, CatalogService, DeregisterRequest, HealthCheck, Node,
    NodeServiceList, RegisterRequest, ServiceEntry, ServiceTaggedAddresses, Weights, CRITICAL,
    PASSING, SERF_HEALTH_ID, WARNING,
};
use std::collections::{BTreeMap, BTreeSet};

/// Longest node name, service id or check id accepted, in bytes (they are key parts).
const MAX_ID_LEN: usize = 512;

/// A service instance as the catalog keeps it. The API's [`AgentService`]
/// minus its id, which is the second half of its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredService {
    /// Service name.
    service: Str,
    /// Tags.
    tags: Box<[Str]>,
    /// Instance address.
    address: Str,
    /// Instance metadata.
    meta: Meta,
    /// Port.
    port: u16,
    /// Tag override flag.
    enable_tag_override: bool,
    /// The fields most instances leave at their defaults; `None` when all are.
    extra: Option<Box<ServiceExtra>>,
    /// Raft index that created the instance.
    create_index: u64,
    /// Raft index of the last change.
    modify_index: u64,
}

/// What an instance carries besides the common fields: kept behind one pointer, so a
/// catalog of instances that set none of them (nearly all) pays 8 bytes each, not ~80.
///
/// The row form (the API's [`AgentService`] as JSON) gained these fields with serde
/// defaults: rows, snapshots and Raft entries written before them decode as the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServiceExtra {
    /// Consul's service kind.
    kind: Str,
    /// Extra addresses.
    tagged_addresses: ServiceTaggedAddresses,
    /// DNS SRV weights.
    weights: Weights,
    /// Connect proxy configuration, opaque.
    proxy: Option<serde_json::Value>,
    /// Connect configuration, opaque.
    connect: Option<serde_json::Value>,
}

impl StoredService {
    fn new(svc: AgentService) -> Self {
        let extra = ServiceExtra {
            kind: svc.kind.into(),
            tagged_addresses: svc.tagged_addresses,
            weights: svc.weights,
            proxy: svc.proxy,
            connect: svc.connect,
        };
        StoredService {
            service: svc.service.into(),
            tags: svc.tags.into_iter().map(Str::from).collect(),
            address: svc.address.into(),
            meta: svc.meta,
            port: svc.port,
            enable_tag_override: svc.enable_tag_override,
            extra: (extra != ServiceExtra::default()).then(|| Box::new(extra)),
            create_index: svc.create_index,
            modify_index: svc.modify_index,
        }
    }

    /// The API form of instance `id`.
    pub(super) fn to_api(&self, id: &str) -> AgentService {
        let extra = self.extra.as_deref();
        AgentService {
            kind: extra.map(|e| owned(&e.kind)).unwrap_or_default(),
            id: id.to_string(),
            service: owned(&self.service),
            tags: self.tags.iter().map(owned).collect(),
            address: owned(&self.address),
            meta: self.meta.clone(),
            port: self.port,
            tagged_addresses: extra
                .map(|e| e.tagged_addresses.clone())
                .unwrap_or_default(),
            weights: extra.map(|e| e.weights).unwrap_or_default(),
            enable_tag_override: self.enable_tag_override,
            proxy: extra.and_then(|e| e.proxy.clone()),
            connect: extra.and_then(|e| e.connect.clone()),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// A health check as the catalog keeps it: the API's [`HealthCheck`] minus its
/// node and id (its key) and minus its service's name and tags, which are
/// derived from the owning instance when the check is read. Every write of an
/// instance rewrites its checks (`WritePlanner::put_service`), so the derived fields are
/// exactly what a stored copy would hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredCheck {
    name: Str,
    status: Str,
    notes: Str,
    output: Str,
    service_id: Str,
    check_type: Str,
    create_index: u64,
    modify_index: u64,
}

impl StoredCheck {
    fn new(check: HealthCheck) -> Self {
        StoredCheck {
            name: check.name.into(),
            status: check.status.into(),
            notes: check.notes.into(),
            output: check.output.into(),
            service_id: check.service_id.into(),
            check_type: check.check_type.into(),
            create_index: check.create_index,
            modify_index: check.modify_index,
        }
    }

    /// The API form of check `id` on `node`, owned by instance `owner` (None
    /// for a node-level check).
    fn to_api(&self, node: &str, id: &str, owner: Option<&StoredService>) -> HealthCheck {
        HealthCheck {
            node: node.to_string(),
            check_id: id.to_string(),
            name: owned(&self.name),
            status: owned(&self.status),
            notes: owned(&self.notes),
            output: owned(&self.output),
            service_id: owned(&self.service_id),
            service_name: owner.map(|s| owned(&s.service)).unwrap_or_default(),
            service_tags: owner
                .map(|s| s.tags.iter().map(owned).collect())
                .unwrap_or_default(),
            check_type: owned(&self.check_type),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// Whether the check at `key` is a passing `serfHealth`.
fn is_serf_passing(key: &NodeKey, check: &StoredCheck) -> bool {
    key.1 == SERF_HEALTH_ID && check.status == PASSING
}

/// A `String` copy of `s`. (`Str::to_string` would go through `Display` and
/// the formatting machinery, which showed in profiles of the read paths.)
fn owned(s: &Str) -> String {
    s.as_str().to_owned()
}

/// The whole catalog of one datacenter, as replicated by Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogState {
    /// Datacenter stamped on nodes registered without one.
    datacenter: String,
    /// Nodes by name.
    pub(super) nodes: BTreeMap<String, Node>,
    /// Service instances by (node, service id); this order is the reply order.
    pub(super) services: BTreeMap<NodeKey, StoredService>,
    /// Checks by (node, check id).
    pub(super) checks: BTreeMap<NodeKey, StoredCheck>,
    /// Instances by service name. Derived, not persisted: it spares per-service
    /// reads a scan over every instance of every service.
    by_name: BTreeMap<Str, KeySet>,
    /// Blocking-query indexes by name: the three tables, and `service/<name>`
    /// per service name. A service's entry outlives its last instance, so a
    /// watcher of a deleted service sees the removal.
    indexes: BTreeMap<Str, u64>,
    /// Nodes whose `serfHealth` check passes. Derived, not persisted: the
    /// leader's liveness reaper reads it every second, and a scan of every
    /// check instead held up the Raft thread's applies for longer and longer
    /// as the catalog grew (BENCHMARKS.md, 2026-11-30).
    serf_passing: BTreeSet<Str>,
}

impl CatalogState {
    /// An empty catalog for `datacenter`.
    pub fn new(datacenter: &str) -> Self {
        CatalogState {
            datacenter: datacenter.to_string(),
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            by_name: BTreeMap::new(),
            indexes: BTreeMap::new(),
            serf_passing: BTreeSet::new(),
        }
    }

    /// Check and normalize a register request BEFORE it is proposed; Err(text)
    /// becomes a 400 with that text.
    ///
    /// `apply` runs it again, so these rules are part of the replicated
    /// semantics: changing them needs a new `Command` variant, or replicas
    /// replaying old entries with different code would disagree.
    pub fn validate_register(req: &mut RegisterRequest) -> Result<(), String> {
        if req.node.is_empty() {
            return Err("Must provide node".to_string());
        }
        check_key_part("Node name", &req.node)?;
        if req.address.is_empty() && !req.skip_node_update {
            return Err("Must provide address if SkipNodeUpdate is not set".to_string());
        }
        if let Some(svc) = req.service.as_mut() {
            if svc.service.is_empty() {
                return Err("Must provide service name".to_string());
            }
            if svc.id.is_empty() {
                svc.id = svc.service.clone();
            }
            check_key_part("Service name", &svc.service)?;
            check_key_part("Service ID", &svc.id)?;
        }
        if let Some(check) = req.check.take() {
            req.checks.insert(0, check);
        }
        for check in &mut req.checks {
            if check.node.is_empty() {
                check.node = req.node.clone();
            } else if check.node != req.node {
                let (c, n) = (&check.node, &req.node);
                return Err(format!("Check node {c:?} does not match node {n:?}"));
            }
            if check.check_id.is_empty() {
                if check.name.is_empty() {
                    return Err("Must provide check ID or name".to_string());
                }
                check.check_id = check.name.clone();
            }
            check_key_part("Check ID", &check.check_id)?;
            if check.status.is_empty() {
                check.status = CRITICAL.to_string();
            } else if check.status.parse::<registry_api::CheckStatus>().is_err() {
                return Err(format!("Invalid check status: {:?}", check.status));
            }
        }
        Ok(())
    }

    /// Check a deregister request before it is proposed (and again in `apply`).
    pub fn validate_deregister(req: &DeregisterRequest) -> Result<(), String> {
        if req.node.is_empty() {
            return Err("Must provide node".to_string());
        }
        if !req.service_id.is_empty() && !req.check_id.is_empty() {
            return Err("Cannot specify both ServiceID and CheckID".to_string());
        }
        Ok(())
    }

    /// Apply one committed command at Raft `index`. Deterministic (no clock, no
    /// randomness, no I/O). Returns the command's result (Err = rejected: the
    /// state is unchanged and the change list empty, never half-applied) and the
    /// rows to persist. A write that changes nothing produces no rows and bumps
    /// no index, so anti-entropy re-registrations do not wake blocking queries.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> (Result<(), String>, Vec<RowChange>) {
        let planned = match cmd {
            Command::Register(req) => self.plan_register(index, req),
            Command::Deregister(req) => self.plan_deregister(index, req),
            Command::RegisterIfNodeExists(req) if !self.nodes.contains_key(&req.node) => {
                // Validated all the same, so the outcome does not depend on
                // whether the node happens to exist.
                Self::validate_register(&mut req.clone())
                    .map(|()| WritePlanner::new(self, index).pending)
            }
            Command::RegisterIfNodeExists(req) => self.plan_register(index, req),
        };
        // Everything fallible (checks, encoding) happens before `commit`.
        match planned.and_then(WritePlan::encode) {
            Ok((pending, rows)) => {
                self.commit(pending);
                (Ok(()), rows)
            }
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Full image for a Raft snapshot, in key order, in the same format as
    /// [`RowChange`]: `n/<node>` → Node, `s/<node>\0<service id>` → AgentService,
    /// `c/<node>\0<check id>` → HealthCheck (JSON), `i/<index name>` → decimal.
    pub fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let nodes = self.nodes.iter().map(|(n, v)| (node_key(n), to_json(v)));
        let services = self
            .services
            .iter()
            .map(|((n, id), v)| (pair_key(b"s/", n, id), to_json(&v.to_api(id))));
        let checks = self.checks.iter().map(|((n, id), v)| {
            (
                pair_key(b"c/", n, id),
                to_json(&self.check_to_api(n, id, v)),
            )
        });
        let indexes = self
            .indexes
            .iter()
            .map(|(n, i)| (index_key(n), Ok(i.to_string().into_bytes())));
        // Encoding these types cannot fail (strings, numbers, string-keyed maps);
        // were it to, `apply` would have rejected the write holding the value.
        let mut rows: Vec<_> = nodes
            .chain(services)
            .chain(checks)
            .chain(indexes)
            .filter_map(|(k, v)| Some((k, v.ok()?)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Rebuild from rows (restart from RocksDB, or installing a snapshot). Err on
    /// a row it cannot decode, or on a service or check without its node (or
    /// service): such an image would answer reads inconsistently.
    pub fn from_rows<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(
        datacenter: &str,
        rows: I,
    ) -> Result<Self, String> {
        let mut state = CatalogState::new(datacenter);
        for (key, value) in rows {
            state.load_row(&key, &value)?;
        }
        for (node, id) in state.services.keys() {
            if !state.nodes.contains_key(node.as_str()) {
                return Err(format!("service {id:?} on unknown node {node:?}"));
            }
        }
        for ((node, id), check) in &state.checks {
            let owner = (node.clone(), check.service_id.clone());
            if !state.nodes.contains_key(node.as_str())
                || (!check.service_id.is_empty() && !state.services.contains_key(&owner))
            {
                return Err(format!("check {id:?} on node {node:?} has no owner"));
            }
        }
        for (key, svc) in &state.services {
            let keys = state.by_name.entry(svc.service.clone()).or_default();
            keys.insert(key.clone());
        }
        let serf = state.checks.iter().filter(|(k, c)| is_serf_passing(k, c));
        state.serf_passing = serf.map(|((node, _), _)| node.clone()).collect();
        Ok(state)
    }

    /// All nodes by name; index of the nodes table.
    pub fn nodes(&self) -> (Vec<Node>, u64) {
        let nodes = self.nodes.values().map(|n| self.with_dc(n)).collect();
        (nodes, self.index_of(NODES).max(1))
    }

    /// Service name → sorted, deduplicated union of its instances' tags; index
    /// of the services table.
    pub fn services(&self) -> (BTreeMap<String, Vec<String>>, u64) {
        let services = self.by_name.iter().map(|(name, keys)| {
            let tags: BTreeSet<&Str> = keys
                .iter()
                .filter_map(|k| self.services.get(k))
                .flat_map(|s| s.tags.iter())
                .collect();
            (owned(name), tags.into_iter().map(owned).collect())
        });
        (services.collect(), self.index_of(SERVICES).max(1))
    }

    /// Instances of `name` carrying every tag in `tags`, flattened with their
    /// node, ordered by (node, service id); per-service index.
    pub fn service_nodes(&self, name: &str, tags: &[String]) -> (Vec<CatalogService>, u64) {
        let list = self.instances(name, tags).map(|(node, id, svc)| {
            let svc = svc.to_api(id);
            CatalogService {
                id: node.id.clone(),
                node: node.node.clone(),
                address: node.address.clone(),
                datacenter: self.with_dc(node).datacenter,
                tagged_addresses: node.tagged_addresses.clone(),
                node_meta: node.meta.clone(),
                service_kind: svc.kind,
                service_id: svc.id,
                service_name: svc.service,
                service_tags: svc.tags,
                service_address: svc.address,
                service_tagged_addresses: svc.tagged_addresses,
                service_weights: svc.weights,
                service_meta: svc.meta,
                service_port: svc.port,
                service_enable_tag_override: svc.enable_tag_override,
                service_proxy: svc.proxy,
                service_connect: svc.connect,
                create_index: svc.create_index,
                modify_index: svc.modify_index,
            }
        });
        (list.collect(), self.service_index(name))
    }

    /// A node and its instances by id; index max(nodes, services).
    pub fn node_services(&self, node: &str) -> (Option<CatalogNode>, u64) {
        let (found, index) = self.node_service_list(node);
        let found = found.map(|list| CatalogNode {
            node: list.node,
            services: list
                .services
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect(),
        });
        (found, index)
    }

    /// A node and its instances ordered by id; index max(nodes, services).
    pub fn node_service_list(&self, node: &str) -> (Option<NodeServiceList>, u64) {
        let found = self.nodes.get(node).map(|n| NodeServiceList {
            node: self.with_dc(n),
            services: node_range(&self.services, node)
                .map(|((_, id), s)| s.to_api(id))
                .collect(),
        });
        (
            found,
            self.index_of(NODES).max(self.index_of(SERVICES)).max(1),
        )
    }

    /// Instances of `name` with `tags`, each with its node and the checks that
    /// decide its health (the node's own, and the instance's). With `passing`,
    /// only instances whose checks all pass (as Consul's `?passing`, warning
    /// fails). Per-service index.
    pub fn health_service(
        &self,
        name: &str,
        tags: &[String],
        passing: bool,
    ) -> (Vec<ServiceEntry>, u64) {
        let list = self
            .instances(name, tags)
            .map(|(node, id, svc)| ServiceEntry {
                node: self.with_dc(node),
                service: svc.to_api(id),
                checks: node_range(&self.checks, &node.node)
                    .filter_map(|((n, cid), c)| match c.service_id.as_str() {
                        "" => Some(c.to_api(n, cid, None)),
                        sid if sid == id => Some(c.to_api(n, cid, Some(svc))),
                        _ => None,
                    })
                    .collect(),
            })
            .filter(|e| !passing || e.checks.iter().all(|c| c.status == PASSING));
        (list.collect(), self.service_index(name))
    }

    /// Checks of every instance of service `name`; per-service index.
    pub fn service_checks(&self, name: &str) -> (Vec<HealthCheck>, u64) {
        let checks = self.instances(name, &[]).flat_map(|(node, id, svc)| {
            node_range(&self.checks, &node.node)
                .filter(move |(_, c)| c.service_id == id)
                .map(move |((n, cid), c)| c.to_api(n, cid, Some(svc)))
        });
        (checks.collect(), self.service_index(name))
    }

    /// Every check on `node`, node-level and service; index of the checks table.
    pub fn node_checks(&self, node: &str) -> (Vec<HealthCheck>, u64) {
        let checks = node_range(&self.checks, node).map(|((n, id), c)| self.check_to_api(n, id, c));
        (checks.collect(), self.index_of(CHECKS).max(1))
    }

    /// Checks in `state` (`any`, `passing`, `warning` or `critical`); index of
    /// the checks table.
    pub fn checks_in_state(&self, state: &str) -> Result<(Vec<HealthCheck>, u64), String> {
        if !["any", PASSING, WARNING, CRITICAL].contains(&state) {
            return Err("Bad check state".to_string());
        }
        let checks = self
            .checks
            .iter()
            .filter(|(_, c)| state == "any" || c.status == state)
            .map(|((n, id), c)| self.check_to_api(n, id, c));
        Ok((checks.collect(), self.index_of(CHECKS).max(1)))
    }

    /// Nodes whose `serfHealth` check passes, in name order.
    pub fn serf_passing_nodes(&self) -> Vec<String> {
        self.serf_passing.iter().map(owned).collect()
    }

    /// Status of check `check_id` on `node`, if it exists.
    pub fn check_status(&self, node: &str, check_id: &str) -> Option<&str> {
        let check = self.checks.get(&key_of(node, check_id))?;
        Some(check.status.as_str())
    }

    /// Whether `node` is registered.
    pub fn has_node(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// The highest index of any change so far (0 when empty).
    pub fn last_index(&self) -> u64 {
        self.indexes.values().copied().max().unwrap_or(0)
    }

    /// Index `name`, 0 if never bumped.
    fn index_of(&self, name: &str) -> u64 {
        self.indexes.get(name).copied().unwrap_or(0)
    }

    /// Index of the services table (at least 1, as Consul's blocking indexes are).
    pub fn services_index(&self) -> u64 {
        self.index_of(SERVICES).max(1)
    }

    /// Index of service `name`; a name never seen falls back to the services
    /// table, as Consul's `maxIndexForService` does.
    pub fn service_index(&self, name: &str) -> u64 {
        let own = self
            .indexes
            .get(format!("{SERVICE_INDEX_PREFIX}{name}").as_str());
        own.copied().unwrap_or(self.index_of(SERVICES)).max(1)
    }

    /// Instances of `name` having all `tags`, with their nodes and ids, in
    /// (node, id) order.
    fn instances<'a>(
        &'a self,
        name: &str,
        tags: &'a [String],
    ) -> impl Iterator<Item = (&'a Node, &'a str, &'a StoredService)> + 'a {
        let keys = self.by_name.get(name).into_iter().flatten();
        keys.filter_map(|key| {
            let node = self.nodes.get(key.0.as_str())?;
            Some((node, key.1.as_str(), self.services.get(key)?))
        })
        .filter(move |(_, _, svc)| tags.iter().all(|t| has_tag(svc, t)))
    }

    /// The API form of check `id` on `node`, with its owner's name and tags.
    pub(super) fn check_to_api(&self, node: &str, id: &str, check: &StoredCheck) -> HealthCheck {
        let owner = match check.service_id.as_str() {
            "" => None,
            sid => self.services.get(&key_of(node, sid)),
        };
        check.to_api(node, id, owner)
    }

    /// A copy of `node` with the datacenter filled in: replies always carry it.
    fn with_dc(&self, node: &Node) -> Node {
        let mut node = node.clone();
        if node.datacenter.is_empty() {
            node.datacenter = self.datacenter.clone();
        }
        node
    }

    /// Decode one persisted row into the state.
    fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = |why: &str| format!("bad catalog row {:?}: {why}", String::from_utf8_lossy(key));
        let key = std::str::from_utf8(key).map_err(|_| bad("key is not UTF-8"))?;
        let pair = |rest| split_pair(rest).ok_or_else(|| bad("no separator"));
        if let Some(name) = key.strip_prefix("n/") {
            let node: Node = from_json(value).map_err(|e| bad(&e))?;
            if node.node != name {
                return Err(bad("node name differs from key"));
            }
            self.nodes.insert(node.node.clone(), node);
        } else if let Some(rest) = key.strip_prefix("s/") {
            let (node, id) = pair(rest)?;
            let svc: AgentService = from_json(value).map_err(|e| bad(&e))?;
            if svc.id != id {
                return Err(bad("service ID differs from key"));
            }
            self.services
                .insert(key_of(node, id), StoredService::new(svc));
        } else if let Some(rest) = key.strip_prefix("c/") {
            let (node, id) = pair(rest)?;
            let check: HealthCheck = from_json(value).map_err(|e| bad(&e))?;
            if check.node != node || check.check_id != id {
                return Err(bad("check differs from key"));
            }
            // The stored service name and tags are dropped: they are derived.
            self.checks
                .insert(key_of(node, id), StoredCheck::new(check));
        } else if let Some(name) = key.strip_prefix("i/") {
            if ![NODES, SERVICES, CHECKS].contains(&name) && !name.starts_with(SERVICE_INDEX_PREFIX)
            {
                return Err(bad("unknown index"));
            }
            let index = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            let index = index.ok_or_else(|| bad("index is not a number"))?;
            self.indexes.insert(name.into(), index);
        } else {
            return Err(bad("unknown key prefix"));
        }
        Ok(())
    }

    /// Every precondition of a register, then its writes, without mutating.
    fn plan_register(&self, index: u64, req: &RegisterRequest) -> Result<WritePlan, String> {
        let mut req = req.clone();
        Self::validate_register(&mut req)?;
        let svc_id = req.service.as_ref().map(|s| s.id.as_str());
        for check in &req.checks {
            let sid = &check.service_id;
            if !sid.is_empty()
                && svc_id != Some(sid.as_str())
                && !self.services.contains_key(&key_of(&req.node, sid))
            {
                return Err("Missing service registration".to_string());
            }
        }
        let mut plan = WritePlanner::new(self, index);
        // Consul's ChangesNode: SkipNodeUpdate leaves an existing node alone,
        // but a missing node is still created (its services need it).
        if !(req.skip_node_update && self.nodes.contains_key(&req.node)) {
            let datacenter = match req.datacenter.as_str() {
                "" => self.datacenter.clone(),
                dc => dc.to_string(),
            };
            plan.put_node(Node {
                id: req.id,
                node: req.node.clone(),
                address: req.address,
                datacenter,
                tagged_addresses: req.tagged_addresses,
                meta: req.node_meta,
                create_index: 0,
                modify_index: 0,
            });
        }
        if let Some(svc) = req.service {
            plan.put_service(&req.node, svc);
        }
        for check in req.checks {
            plan.put_check(check);
        }
        Ok(plan.pending)
    }

    /// A deregister's writes; a missing target plans nothing (a no-op, as in Consul).
    fn plan_deregister(&self, index: u64, req: &DeregisterRequest) -> Result<WritePlan, String> {
        Self::validate_deregister(req)?;
        let mut plan = WritePlanner::new(self, index);
        if !req.service_id.is_empty() {
            plan.delete_service(&req.node, &req.service_id);
        } else if !req.check_id.is_empty() {
            plan.delete_check(&req.node, &req.check_id);
        } else {
            plan.delete_node(&req.node);
        }
        Ok(plan.pending)
    }

    /// Install planned writes and bump the indexes they touched. Cannot fail.
    fn commit(&mut self, pending: WritePlan) {
        for (name, node) in pending.nodes {
            match node {
                Some(node) => self.nodes.insert(name, node),
                None => self.nodes.remove(&name),
            };
        }
        for (key, svc) in pending.services {
            if let Some(old) = self.services.remove(&key) {
                let keys = self.by_name.get_mut(&old.service);
                if keys.map(|keys| keys.remove(&key) && keys.is_empty()) == Some(true) {
                    self.by_name.remove(&old.service);
                }
            }
            if let Some(svc) = svc {
                let svc = StoredService::new(svc);
                self.by_name
                    .entry(svc.service.clone())
                    .or_default()
                    .insert(key.clone());
                self.services.insert(key, svc);
            }
        }
        for (key, check) in pending.checks {
            let check = check.map(StoredCheck::new);
            if key.1 == SERF_HEALTH_ID {
                match check.as_ref().is_some_and(|c| is_serf_passing(&key, c)) {
                    true => self.serf_passing.insert(key.0.clone()),
                    false => self.serf_passing.remove(&key.0),
                };
            }
            match check {
                Some(check) => self.checks.insert(key, check),
                None => self.checks.remove(&key),
            };
        }
        for name in pending.bumped {
            self.indexes.insert(name.into(), pending.index);
        }
    }
}

/// Reject key parts that would make keys ambiguous (NUL separates them) or huge.
fn check_key_part(what: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{what} {value:?} contains an invalid character"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{what} is longer than {MAX_ID_LEN} bytes"));
    }
    Ok(())
}

/// Tag match, case-insensitive like Consul's `serviceTagFilter`.
fn has_tag(svc: &StoredService, tag: &str) -> bool {
    let tag = tag.to_lowercase();
    svc.tags.iter().any(|t| t.to_lowercase() == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A register of `node` with an address; add to it with [`Build`].
    fn req(node: &str) -> RegisterRequest {
        let address = format!("10.0.0.{}", node.len());
        let node = node.to_string();
        RegisterRequest {
            node,
            address,
            ..Default::default()
        }
    }

    /// Short builders, so each test reads as a list of commands.
    trait Build {
        fn svc(self, name: &str, id: &str, tags: &[&str]) -> Self;
        /// A check; `sid` empty means node-level.
        fn chk(self, id: &str, sid: &str, status: &str) -> Self;
        fn skip(self) -> Self;
    }

    impl Build for RegisterRequest {
        fn svc(mut self, name: &str, id: &str, tags: &[&str]) -> Self {
            let (service, id, tags) = (name.into(), id.into(), strings(tags));
            let svc = AgentService {
                service,
                id,
                tags,
                port: 8080,
                ..Default::default()
            };
            self.service = Some(svc);
            self
        }
        fn chk(mut self, id: &str, sid: &str, status: &str) -> Self {
            let (check_id, service_id) = (id.into(), sid.into());
            let status = status.into();
            let c = HealthCheck {
                check_id,
                service_id,
                status,
                ..Default::default()
            };
            self.checks.push(c);
            self
        }
        fn skip(mut self) -> Self {
            self.skip_node_update = true;
            self
        }
    }

    /// Validate then apply, as the server does; the command must succeed.
    fn reg(s: &mut CatalogState, index: u64, mut r: RegisterRequest) -> Vec<RowChange> {
        CatalogState::validate_register(&mut r).unwrap();
        let (result, rows) = s.apply(index, &Command::Register(r));
        result.unwrap();
        rows
    }

    fn dereq(node: &str, sid: &str, cid: &str) -> DeregisterRequest {
        let (node, service_id, check_id) = (node.into(), sid.into(), cid.into());
        DeregisterRequest {
            node,
            service_id,
            check_id,
            ..Default::default()
        }
    }

    fn dereg(s: &mut CatalogState, index: u64, r: DeregisterRequest) -> Vec<RowChange> {
        let (result, rows) = s.apply(index, &Command::Deregister(r));
        result.unwrap();
        rows
    }

    fn index(s: &CatalogState, service: &str) -> u64 {
        s.service_nodes(service, &[]).1
    }

    /// n1: web1 (tags v1, primary) with a passing check, node check serfHealth passing.
    /// n2: web2 (tag v2) with a passing check; db with a warning check.
    fn sample() -> CatalogState {
        let mut s = CatalogState::new("dc1");
        let n1 = req("n1").svc("web", "web1", &["v1", "primary"]);
        let n1 = n1.chk("serfHealth", "", PASSING);
        reg(&mut s, 1, n1.chk("web1-alive", "web1", PASSING));
        let web2 = req("n2").svc("web", "web2", &["v2"]);
        reg(&mut s, 2, web2.chk("web2-alive", "web2", PASSING));
        let db = req("n2").svc("db", "db", &[]);
        reg(&mut s, 3, db.chk("db-alive", "db", WARNING));
        s
    }

    #[test]
    fn register_normalizes_and_reads_back() {
        let mut s = CatalogState::new("dc1");
        let mut r = req("n1").svc("web", "", &["b", "a"]);
        r = r.chk("mem", "", PASSING);
        let (name, service_id) = ("alive".into(), "web".into());
        r.check = Some(HealthCheck {
            name,
            service_id,
            ..Default::default()
        });
        assert!(!reg(&mut s, 7, r).is_empty());
        let n = &s.nodes().0[0];
        assert_eq!(n.datacenter, "dc1");
        assert_eq!((n.create_index, n.modify_index), (7, 7));
        assert_eq!(s.services().0["web"], strings(&["a", "b"]));
        let list = s.node_service_list("n1").0.unwrap().services;
        assert_eq!(list[0].id, "web");
        assert_eq!(list[0].tags, strings(&["b", "a"]), "order kept");
        let by_id = s.node_services("n1").0.unwrap().services;
        assert!(by_id.contains_key("web"));
        assert!(s.node_services("nope").0.is_none());
        let checks = s.node_checks("n1").0;
        let ids: Vec<&str> = checks.iter().map(|c| c.check_id.as_str()).collect();
        assert_eq!(ids, ["alive", "mem"]);
        let alive = &checks[0];
        assert_eq!(
            (alive.status.as_str(), alive.node.as_str()),
            (CRITICAL, "n1")
        );
        assert_eq!(alive.service_name, "web");
        assert_eq!(alive.service_tags, strings(&["b", "a"]));
        assert!(checks[1].service_name.is_empty() && checks[1].service_tags.is_empty());
        assert_eq!(s.service_checks("web").0.len(), 1);
        assert_eq!(s.last_index(), 7);
    }

    #[test]
    fn validate_rejects_bad_requests() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let mut other_node = req("n").chk("c", "", PASSING);
        other_node.checks[0].node = "m".into();
        let mut no_address = req("n");
        no_address.address.clear();
        let cases = [
            (req(""), "Must provide node"),
            (
                no_address.clone(),
                "Must provide address if SkipNodeUpdate is not set",
            ),
            (req("n").svc("", "id", &[]), "Must provide service name"),
            (
                req("n").chk("", "", PASSING),
                "Must provide check ID or name",
            ),
            (
                req("n").chk("c", "", "sick"),
                "Invalid check status: \"sick\"",
            ),
            (other_node, "Check node \"m\" does not match node \"n\""),
            (
                req("a\0b"),
                "Node name \"a\\0b\" contains an invalid character",
            ),
            (
                req("n").svc("web", &long, &[]),
                "Service ID is longer than 512 bytes",
            ),
        ];
        for (mut r, want) in cases {
            assert_eq!(
                CatalogState::validate_register(&mut r),
                Err(want.to_string())
            );
        }
        assert_eq!(
            CatalogState::validate_register(&mut no_address.skip()),
            Ok(())
        );

        let both = dereq("n", "s", "c");
        let want = Err("Cannot specify both ServiceID and CheckID".to_string());
        assert_eq!(CatalogState::validate_deregister(&both), want);
        let want = Err("Must provide node".to_string());
        assert_eq!(CatalogState::validate_deregister(&dereq("", "", "")), want);
        // apply validates again, so an unvalidated command cannot slip through.
        let mut s = sample();
        let before = s.clone();
        let (result, rows) = s.apply(9, &Command::Deregister(both));
        assert!(result.is_err() && rows.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn identical_reregister_changes_nothing() {
        let mut s = sample();
        let before = s.clone();
        let mut r = req("n1").svc("web", "web1", &["v1", "primary"]);
        r = r.chk("serfHealth", "", PASSING);
        r = r.chk("web1-alive", "web1", PASSING);
        // The datacenter spelled out normalizes to the same node.
        r.datacenter = "dc1".into();
        assert!(reg(&mut s, 6, r).is_empty());
        assert_eq!(s, before);
        assert_eq!((s.last_index(), index(&s, "web")), (3, 2));
        assert_eq!((s.nodes().1, s.node_checks("n1").1), (2, 3));
    }

    #[test]
    fn service_change_bumps_only_its_own_index() {
        let mut s = sample();
        assert_eq!((index(&s, "web"), index(&s, "db")), (2, 3));
        reg(&mut s, 10, req("n2").svc("db", "db", &["new"]));
        assert_eq!(index(&s, "db"), 10);
        assert_eq!(index(&s, "web"), 2, "web is on n2 too, but did not change");
        assert_eq!((s.services().1, s.nodes().1), (10, 2));
        let db = &s.service_nodes("db", &[]).0[0];
        assert_eq!((db.create_index, db.modify_index), (3, 10));
        // The db check's copy of the tags follows, which bumps the checks table.
        let (checks, idx) = s.service_checks("db");
        assert_eq!(checks[0].service_tags, strings(&["new"]));
        assert_eq!((checks[0].modify_index, idx), (10, 10));
        assert_eq!(s.node_checks("n2").1, 10);
    }

    #[test]
    fn node_level_changes_bump_services_on_that_node() {
        let mut s = sample();
        reg(&mut s, 20, req("n1").skip().chk("serfHealth", "", ""));
        let (_, web) = s.health_service("web", &[], false);
        assert_eq!(web, 20, "web1 depends on n1's node checks");
        assert_eq!(s.service_checks("db").1, 3, "db is not on n1");
        assert_eq!(s.checks_in_state("any").unwrap().1, 20);
        assert_eq!(s.nodes().1, 2);
        // A node field change bumps the services on it (they embed node fields).
        let mut r = req("n2");
        r.address = "192.168.1.2".into();
        reg(&mut s, 21, r);
        assert_eq!(
            (index(&s, "db"), index(&s, "web"), s.nodes().1),
            (21, 21, 21)
        );
        let db = &s.service_nodes("db", &[]).0[0];
        assert_eq!((db.address.as_str(), db.modify_index), ("192.168.1.2", 3));
        assert_eq!(s.nodes().0[1].create_index, 2);
    }

    #[test]
    fn rejected_register_changes_nothing() {
        let mut s = sample();
        let before = (s.clone(), s.rows());
        // Would create node n9 and a service, then fails on the orphan check.
        let mut r = req("n9")
            .svc("api", "api", &[])
            .chk("x", "missing", PASSING);
        CatalogState::validate_register(&mut r).unwrap();
        let (result, rows) = s.apply(30, &Command::Register(r));
        assert_eq!(result, Err("Missing service registration".to_string()));
        assert!(rows.is_empty());
        assert_eq!((s.clone(), s.rows()), before);
        assert!(s.node_services("n9").0.is_none());
        // A check may reference a service registered earlier on the same node.
        reg(&mut s, 31, req("n2").chk("db-2", "db", PASSING));
        assert_eq!(s.service_checks("db").0.len(), 2);
    }

    #[test]
    fn deregister_each_shape() {
        let mut s = sample();
        dereg(&mut s, 40, dereq("n2", "db", ""));
        assert!(!s.services().0.contains_key("db"));
        assert!(s.service_checks("db").0.is_empty());
        assert_eq!(s.node_checks("n2").0.len(), 1);
        assert_eq!(index(&s, "db"), 40, "a deleted service keeps its index");
        assert_eq!(index(&s, "web"), 2);
        dereg(&mut s, 41, dereq("n1", "", "serfHealth"));
        assert_eq!((s.node_checks("n1").0.len(), index(&s, "web")), (1, 41));
        dereg(&mut s, 42, dereq("n2", "", ""));
        assert_eq!(s.nodes().0.len(), 1);
        assert_eq!(s.service_nodes("web", &[]).0.len(), 1);
        assert!(s.node_checks("n2").0.is_empty());
        assert_eq!(
            (s.nodes().1, s.services().1, s.node_checks("n1").1),
            (42, 42, 42)
        );
        // Missing targets: Ok, nothing written, nothing bumped.
        let before = s.clone();
        assert!(dereg(&mut s, 43, dereq("n2", "", "")).is_empty());
        assert!(dereg(&mut s, 44, dereq("n1", "nope", "")).is_empty());
        assert!(dereg(&mut s, 45, dereq("n1", "", "nope")).is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn passing_filter_counts_node_level_checks() {
        let mut s = sample();
        let all = s.health_service("web", &[], true).0;
        assert_eq!((all.len(), all[0].checks.len()), (2, 2));
        assert_eq!(all[0].node.datacenter, "dc1");
        let db = s.health_service("db", &[], true).0;
        assert!(db.is_empty(), "warning is not passing");
        assert_eq!(s.health_service("db", &[], false).0.len(), 1);
        reg(&mut s, 50, req("n1").skip().chk("serfHealth", "", CRITICAL));
        let passing = s.health_service("web", &[], true).0;
        assert_eq!(passing.len(), 1);
        assert_eq!(passing[0].service.id, "web2");
        assert_eq!(s.health_service("web", &[], false).0.len(), 2);
    }

    #[test]
    fn tag_filter_requires_every_tag() {
        let s = sample();
        let ids = |tags: &[&str]| -> Vec<String> {
            let list = s.service_nodes("web", &strings(tags)).0;
            list.into_iter().map(|c| c.service_id).collect()
        };
        assert_eq!(ids(&[]), strings(&["web1", "web2"]));
        assert_eq!(ids(&["v1"]), strings(&["web1"]));
        assert_eq!(ids(&["PRIMARY", "v1"]), strings(&["web1"]), "as Consul");
        assert!(ids(&["v1", "v2"]).is_empty());
        let v2 = s.health_service("web", &strings(&["v2"]), false).0;
        assert_eq!(v2[0].service.id, "web2");
        let flat = &s.service_nodes("web", &strings(&["v1"])).0[0];
        assert_eq!(
            (flat.node.as_str(), flat.datacenter.as_str()),
            ("n1", "dc1")
        );
        assert_eq!(flat.service_port, 8080);
    }

    #[test]
    fn checks_in_state_filters_by_status() {
        let s = sample();
        let ids = |state: &str| -> Vec<String> {
            let checks = s.checks_in_state(state).unwrap().0;
            checks.into_iter().map(|c| c.check_id).collect()
        };
        assert_eq!(ids("any").len(), 4);
        assert_eq!(ids(WARNING), strings(&["db-alive"]));
        let passing = strings(&["serfHealth", "web1-alive", "web2-alive"]);
        assert_eq!(ids(PASSING), passing);
        assert!(ids(CRITICAL).is_empty());
        let bad = s.checks_in_state("bogus");
        assert_eq!(bad, Err("Bad check state".to_string()));
    }

    #[test]
    fn rows_round_trip_and_match_the_row_changes() {
        let mut s = sample();
        let mut stored: BTreeMap<Vec<u8>, Vec<u8>> = s.rows().into_iter().collect();
        let mut store = |rows: Vec<RowChange>| {
            for row in rows {
                match row.value {
                    Some(v) => stored.insert(row.key, v),
                    None => stored.remove(&row.key),
                };
            }
        };
        store(reg(&mut s, 4, req("n1").svc("web", "web1", &["v3"])));
        store(dereg(&mut s, 5, dereq("n2", "", "")));
        let api = req("n3").svc("api", "api", &[]);
        store(reg(&mut s, 6, api.chk("a", "api", PASSING)));
        let image: Vec<_> = stored.into_iter().collect();
        assert_eq!(image, s.rows(), "RowChanges rebuild the image");
        let back = CatalogState::from_rows("dc1", s.rows()).unwrap();
        assert_eq!(back, s);
        assert_eq!((index(&back, "db"), back.last_index()), (5, 6));
        let web = back.health_service("web", &[], true);
        assert_eq!(web, s.health_service("web", &[], true));
        assert_eq!(back.services(), s.services());
    }

    #[test]
    fn serf_passing_nodes_follow_every_kind_of_write() {
        let mut s = sample();
        let serf = |s: &CatalogState| s.serf_passing_nodes();
        assert_eq!(serf(&s), ["n1"]);
        reg(&mut s, 4, req("n2").skip().chk("serfHealth", "", PASSING));
        assert_eq!(serf(&s), ["n1", "n2"]);
        assert_eq!(s.check_status("n2", "serfHealth"), Some(PASSING));
        reg(&mut s, 5, req("n1").skip().chk("serfHealth", "", CRITICAL));
        assert_eq!(serf(&s), ["n2"]);
        // Passing again, then its node goes: the check goes with it.
        reg(&mut s, 6, req("n1").skip().chk("serfHealth", "", PASSING));
        dereg(&mut s, 7, dereq("n1", "", ""));
        assert_eq!(serf(&s), ["n2"]);
        assert!(!s.has_node("n1") && s.has_node("n2"));
        dereg(&mut s, 8, dereq("n2", "", "serfHealth"));
        assert!(serf(&s).is_empty());
        assert_eq!(s.check_status("n2", "serfHealth"), None);
        // A check that is not serfHealth never counts, whatever its status.
        reg(&mut s, 9, req("n2").skip().chk("other", "", PASSING));
        assert!(serf(&s).is_empty());
        // Rebuilt from rows (a restart or a snapshot), the set is the same.
        reg(&mut s, 10, req("n3").chk("serfHealth", "", PASSING));
        let back = CatalogState::from_rows("dc1", s.rows()).unwrap();
        assert_eq!((serf(&back), &back), (serf(&s), &s));
    }

    #[test]
    fn from_rows_rejects_undecodable_rows() {
        let good = sample().rows();
        let bad: [(&[u8], &[u8]); 7] = [
            (b"x/n1", b"{}"),
            (b"n/n1", b"not json"),
            (b"n/n1", br#"{"Node":"other"}"#),
            (b"i/nodes", b"twelve"),
            (b"i/whatever", b"1"),
            (b"s/n1", b"{}"),
            (b"s/ghost\0web", br#"{"ID":"web","Service":"web"}"#),
        ];
        for (key, value) in bad {
            let mut rows = good.clone();
            rows.push((key.to_vec(), value.to_vec()));
            let loaded = CatalogState::from_rows("dc1", rows);
            assert!(loaded.is_err(), "accepted {key:?}");
        }
        assert!(CatalogState::from_rows("dc1", good).is_ok());
    }

    #[test]
    fn replicas_fed_the_same_log_agree() {
        let log = [
            Command::Register(req("b").svc("web", "w", &["x"]).chk("c1", "w", "")),
            Command::Register(req("a").svc("web", "w", &["y"])),
            Command::Deregister(dereq("b", "", "c1")),
            Command::Register(req("a").svc("api", "w", &["z"])),
            Command::Register(req("a").chk("c2", "w", PASSING)),
        ];
        let mut replicas = [CatalogState::new("dc1"), CatalogState::new("dc1")];
        for replica in &mut replicas {
            for (i, cmd) in log.iter().enumerate() {
                // Through JSON, as the Raft log stores it.
                let json = serde_json::to_vec(cmd).unwrap();
                let cmd: Command = serde_json::from_slice(&json).unwrap();
                assert_eq!(replica.apply(i as u64 + 1, &cmd).0, Ok(()));
            }
        }
        assert_eq!(replicas[0].rows(), replicas[1].rows());
        // Instance "w" on node a was renamed web -> api at 4: web lost an
        // instance, so its index moved too; the later check names the new service.
        let r = &replicas[0];
        assert_eq!((index(r, "web"), index(r, "api")), (4, 5));
        assert_eq!(r.service_checks("api").0[0].service_name, "api");
        assert_eq!(r.service_nodes("web", &[]).0.len(), 1);
    }

    #[test]
    fn command_json_is_tagged_by_op() {
        let cmd = Command::Deregister(dereq("n", "", ""));
        let json = serde_json::to_value(&cmd).unwrap();
        assert_eq!(json["Op"], "Deregister");
        assert_eq!(json["Node"], "n");
        assert_eq!(serde_json::from_value::<Command>(json).unwrap(), cmd);
    }

    #[test]
    fn skip_node_update_keeps_an_existing_node() {
        let mut s = sample();
        let mut r = req("n1").skip();
        r.address = "1.1.1.1".into();
        assert!(reg(&mut s, 60, r).is_empty());
        assert_eq!(s.nodes().0[0].address, "10.0.0.2");
        // A node that does not exist yet is still created, as in Consul.
        let mut r = req("n7").skip();
        r.address.clear();
        reg(&mut s, 61, r);
        assert_eq!(s.nodes().0.len(), 3);
    }

    #[test]
    fn register_if_node_exists_never_recreates_a_deregistered_node() {
        let mut s = sample();
        let critical = |node: &str| {
            let mut r = req(node).skip().chk(SERF_HEALTH_ID, "", CRITICAL);
            r.address.clear();
            Command::RegisterIfNodeExists(r)
        };
        // On an existing node it is a register.
        let (result, rows) = s.apply(70, &critical("n1"));
        result.unwrap();
        assert!(!rows.is_empty());
        assert_eq!(s.check_status("n1", SERF_HEALTH_ID), Some(CRITICAL));
        // Deregistered before the entry applies: nothing comes back.
        dereg(&mut s, 71, dereq("n1", "", ""));
        let (result, rows) = s.apply(72, &critical("n1"));
        result.unwrap();
        assert!(rows.is_empty());
        assert!(!s.has_node("n1"));
        // Still validated when the node is missing.
        let bad = Command::RegisterIfNodeExists(req("n1").chk("c", "", "bogus"));
        assert!(s.apply(73, &bad).0.is_err());
        // It round-trips through the log's encoding.
        let cmd = critical("n2");
        let bytes = serde_json::to_vec(&cmd).unwrap();
        assert!(bytes.starts_with(br#"{"Op":"RegisterIfNodeExists""#));
        assert_eq!(serde_json::from_slice::<Command>(&bytes).unwrap(), cmd);
    }

    /// `Kind`, `TaggedAddresses`, `Weights`, `Proxy` and `Connect` are stored, survive the
    /// row image, and a re-register with the same values writes nothing; a row written
    /// before these fields existed loads with their defaults.
    #[test]
    fn service_extras_are_stored_and_old_rows_load_with_defaults() {
        let mut s = sample();
        let mut r = req("n3");
        let mut svc = AgentService {
            service: "gw".into(),
            id: "gw1".into(),
            kind: "mesh-gateway".into(),
            weights: Weights {
                passing: 10,
                warning: 2,
            },
            proxy: Some(serde_json::json!({"Config": {"a": 1}})),
            connect: Some(serde_json::json!({"Native": true})),
            ..Default::default()
        };
        svc.tagged_addresses.insert(
            "wan".into(),
            registry_api::ServiceAddress {
                address: "198.51.100.1".into(),
                port: 443,
            },
        );
        r.service = Some(svc.clone());
        reg(&mut s, 4, r.clone());
        let (list, _) = s.service_nodes("gw", &[]);
        assert_eq!(list[0].service_kind, "mesh-gateway");
        assert_eq!(list[0].service_tagged_addresses, svc.tagged_addresses);
        assert_eq!(list[0].service_weights, svc.weights);
        assert_eq!(list[0].service_proxy, svc.proxy);
        assert_eq!(list[0].service_connect, svc.connect);
        assert!(reg(&mut s, 5, r).is_empty(), "an equal re-register writes");
        let back = CatalogState::from_rows("dc1", s.rows()).unwrap();
        assert_eq!(back, s);

        let mut rows = sample().rows();
        rows.retain(|(k, _)| !k.starts_with(b"s/n1\0"));
        rows.push((
            b"s/n1\0web1".to_vec(),
            br#"{"ID":"web1","Service":"web","Tags":["v1"],"Address":"","Meta":{},"Port":80,
                "EnableTagOverride":false,"CreateIndex":1,"ModifyIndex":1}"#
                .to_vec(),
        ));
        let old = CatalogState::from_rows("dc1", rows).unwrap();
        let (list, _) = old.service_nodes("web", &["v1".to_string()]);
        assert_eq!(list[0].service_weights, Weights::default());
        assert!(list[0].service_tagged_addresses.is_empty());
        assert_eq!(
            (list[0].service_kind.as_str(), &list[0].service_proxy),
            ("", &None)
        );
        // Nothing set: no per-instance allocation for the extras.
        assert!(old.services.values().all(|s| s.extra.is_none()));
    }

    #[test]
    fn indexes_are_never_zero_and_fall_back_to_the_services_table() {
        let empty = CatalogState::new("dc1");
        assert_eq!((index(&empty, "x"), empty.nodes().1), (1, 1));
        assert_eq!(empty.last_index(), 0);
        let never = sample().health_service("never", &[], false);
        assert_eq!(never, (Vec::new(), 3));
    }
}
