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
use super::image::{map_part, table_rows, Part};
use super::plan::{WritePlan, WritePlanner};
use super::row_forms::{check_row, node_row, service_row};
use super::rows::{
    decimal, from_json, index_key, node_key, pair_key, split_pair, NodeKey, RowChange, RowsWanted,
    CHECKS, INDEX_PREFIX, NODES, SERVICES, SERVICE_INDEX_PREFIX,
};
use super::stored::{is_serf_passing, owned, StoredCheck, StoredService};
use super::table::{NodeTable, SmallMap};
use compact_str::CompactString as Str;
use registry_api::{
    AgentService, CatalogNode, CatalogService, DeregisterRequest, HealthCheck, Node,
    NodeServiceList, RegisterRequest, ServiceEntry, CRITICAL, PASSING, SERF_HEALTH_ID, WARNING,
};
use std::collections::{BTreeMap, BTreeSet};

/// How many parts the catalog's image has ([`CatalogState::image_part`]).
pub(super) const IMAGE_PARTS: usize = 5;

/// Longest node name, service id or check id accepted, in bytes (they are key parts).
const MAX_ID_LEN: usize = 512;

/// The whole catalog of one datacenter, as replicated by Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogState {
    /// Datacenter stamped on nodes registered without one.
    datacenter: String,
    /// Nodes by name. Boxed, as the instances: the B-tree's empty slots then
    /// cost 8 bytes, not a node's 160.
    pub(super) nodes: BTreeMap<String, Box<Node>>,
    /// Service instances by (node, service id); this order is the reply order.
    /// Boxed, as the checks: a node with many rows keeps them in a B-tree, whose
    /// empty slots then cost 8 bytes, not the value's 88 (56 for a check).
    pub(super) services: NodeTable<Box<StoredService>>,
    /// Checks by (node, check id).
    pub(super) checks: NodeTable<Box<StoredCheck>>,
    /// Per service name: its instances (derived, not persisted: it spares
    /// per-service reads a scan over every instance of every service) and its
    /// blocking-query index (persisted as `i/service/<name>`). A name's entry
    /// outlives its last instance, so a watcher of a deleted service sees the
    /// removal. One map for both: when every instance has a name of its own, a
    /// second map of names was ~60 bytes per instance (BENCHMARKS.md, 2026-12-01).
    by_name: BTreeMap<Str, ServiceName>,
    /// How many of `by_name`'s names have instances (the metrics read it).
    listed_names: usize,
    /// Blocking-query indexes of the three tables.
    indexes: BTreeMap<Str, u64>,
    /// Nodes whose `serfHealth` check passes. Derived, not persisted: the
    /// leader's liveness reaper reads it every second, and a scan of every
    /// check instead held up the Raft thread's applies for longer and longer
    /// as the catalog grew (BENCHMARKS.md, 2026-11-30).
    serf_passing: BTreeSet<Str>,
}

/// The instances of one service name, in key order. When every instance has a
/// name of its own, a `BTreeSet` per name (a whole node, room for eleven keys,
/// for one) made this index the largest part of the catalog's memory.
type KeySet = SmallMap<NodeKey, (), 32>;

/// What the catalog keeps per service name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServiceName {
    /// Its instances, as (node, service id).
    instances: KeySet,
    /// Its blocking-query index; 0 until a write moves it.
    index: u64,
}

impl CatalogState {
    /// An empty catalog for `datacenter`.
    pub fn new(datacenter: &str) -> Self {
        CatalogState {
            datacenter: datacenter.to_string(),
            nodes: BTreeMap::new(),
            services: NodeTable::default(),
            checks: NodeTable::default(),
            by_name: BTreeMap::new(),
            listed_names: 0,
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

    /// Apply one committed catalog command at Raft `index`, on the catalog
    /// alone (unit tests and tools; the server applies through
    /// [`super::StateStore::apply`], which also invalidates the sessions the
    /// write affects). Deterministic (no clock, no randomness, no I/O).
    /// Returns the command's result (Err = rejected: the state is unchanged
    /// and the change list empty, never half-applied) and the rows to
    /// persist. A write that changes nothing produces no rows and bumps no
    /// index, so anti-entropy re-registrations do not wake blocking queries.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> (Result<(), String>, Vec<RowChange>) {
        let mut plan = WritePlanner::new(self, index);
        let planned = self.plan_command(&mut plan, cmd).map(|()| plan.pending);
        // Everything fallible (checks, encoding) happens before `commit`.
        match planned.and_then(|p| p.encode(RowsWanted::All)) {
            Ok((pending, rows)) => {
                self.commit(pending);
                (Ok(()), rows)
            }
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Plans catalog command `cmd` into `plan` (which may already hold
    /// writes); `Err` rejects it. A command of another table is an error.
    pub(super) fn plan_command(
        &self,
        plan: &mut WritePlanner<'_>,
        cmd: &Command,
    ) -> Result<(), String> {
        match cmd {
            Command::Register(req) => self.plan_register(plan, req),
            Command::Deregister(req) => self.plan_deregister(plan, req),
            Command::RegisterIfNodeExists(req) if plan.node(&req.node).is_none() => {
                // Validated all the same, so the outcome does not depend on
                // whether the node happens to exist.
                Self::validate_register(&mut req.clone())
            }
            Command::RegisterIfNodeExists(req) => self.plan_register(plan, req),
            other => Err(format!("{} is not a catalog command", other.name())),
        }
    }

    /// The datacenter stamped on nodes registered without one.
    pub(super) fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// Sizes for the metrics: (nodes, service names, service instances, checks).
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.nodes.len(),
            self.listed_names,
            self.services.len(),
            self.checks.len(),
        )
    }

    /// A restore at `index` (`restore.rs`): every row modified at `index`
    /// (created at most then), every blocking-query index at `index`.
    pub(super) fn restamp(&mut self, index: u64) {
        for n in self.nodes.values_mut() {
            (n.create_index, n.modify_index) = (n.create_index.min(index), index);
        }
        for s in self.services.values_mut() {
            (s.create_index, s.modify_index) = (s.create_index.min(index), index);
        }
        for c in self.checks.values_mut() {
            (c.create_index, c.modify_index) = (c.create_index.min(index), index);
        }
        for name in [NODES, SERVICES, CHECKS] {
            self.indexes.insert(name.into(), index);
        }
        self.indexes.values_mut().for_each(|i| *i = index);
        self.by_name
            .values_mut()
            .filter(|n| n.index != 0)
            .for_each(|n| n.index = index);
    }

    /// Full image for a Raft snapshot, in key order, in the same format as
    /// [`RowChange`]: `n/<node>` → Node, `s/<node>\0<service id>` →
    /// AgentService, `c/<node>\0<check id>` → HealthCheck (JSON in the forms
    /// of `row_forms.rs`), `i/<index name>` → decimal.
    pub fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rows = table_rows(IMAGE_PARTS, |i| self.image_part(i, None));
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Part `i` of the image after `after` (`image.rs`): nodes, instances,
    /// checks, service indexes, table indexes.
    pub(super) fn image_part<'a>(
        &'a self,
        i: usize,
        after: Option<(&'a str, &'a str)>,
    ) -> Part<'a> {
        // Encoding these types cannot fail (strings, numbers, string-keyed maps);
        // were it to, `apply` would have rejected the write holding the value.
        match i {
            0 => map_part(&self.nodes, after, |n, v| {
                Some((node_key(n), node_row(v).ok()?))
            }),
            1 => Box::new(self.services.iter_after(after).map(|(n, id, v)| {
                let row = service_row(&v.to_api(id)).ok();
                (
                    Some((n.as_str(), id.as_str())),
                    row.map(|r| (pair_key(b"s/", n, id), r)),
                )
            })),
            // The check's owner is not looked up: its name and tags are not written.
            2 => Box::new(self.checks.iter_after(after).map(|(n, id, v)| {
                let row = check_row(&v.to_api(n, id, None)).ok();
                (
                    Some((n.as_str(), id.as_str())),
                    row.map(|r| (pair_key(b"c/", n, id), r)),
                )
            })),
            3 => map_part(&self.by_name, after, |name, s| {
                let key = index_key(&format!("{SERVICE_INDEX_PREFIX}{name}"));
                (s.index != 0).then(|| (key, decimal(s.index)))
            }),
            4 => map_part(&self.indexes, after, |n, i| {
                Some((index_key(n), decimal(*i)))
            }),
            _ => Box::new(std::iter::empty()),
        }
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
        state.finish_load()
    }

    /// After every row was loaded: the consistency checks of
    /// [`CatalogState::from_rows`] and the derived indexes.
    pub(super) fn finish_load(mut self) -> Result<Self, String> {
        let state = &mut self;
        for (node, id, _) in state.services.iter() {
            if !state.nodes.contains_key(node.as_str()) {
                return Err(format!("service {id:?} on unknown node {node:?}"));
            }
        }
        for (node, id, check) in state.checks.iter() {
            if !state.nodes.contains_key(node.as_str())
                || (!check.service_id().is_empty()
                    && !state.services.contains(node, check.service_id()))
            {
                return Err(format!("check {id:?} on node {node:?} has no owner"));
            }
        }
        for (node, id, svc) in state.services.iter() {
            let name = state.by_name.entry(svc.service().into()).or_default();
            name.instances.insert((node.clone(), id.clone()), ());
        }
        state.listed_names = (state.by_name.values())
            .filter(|n| !n.instances.is_empty())
            .count();
        let serf = state
            .checks
            .iter()
            .filter(|(_, id, c)| is_serf_passing(id, c));
        state.serf_passing = serf.map(|(node, _, _)| node.clone()).collect();
        Ok(self)
    }

    /// All nodes by name; index of the nodes table.
    pub fn nodes(&self) -> (Vec<Node>, u64) {
        let nodes = self.nodes.values().map(|n| self.with_dc(n)).collect();
        (nodes, self.index_of(NODES).max(1))
    }

    /// Service name → sorted, deduplicated union of its instances' tags; index
    /// of the services table.
    pub fn services(&self) -> (BTreeMap<String, Vec<String>>, u64) {
        let names = self.by_name.iter().filter(|(_, s)| !s.instances.is_empty());
        let services = names.map(|(name, s)| {
            let tags: BTreeSet<&str> = (s.instances.keys())
                .filter_map(|(node, id)| self.services.get(node, id))
                .flat_map(|s| s.tags())
                .collect();
            (owned(name), tags.into_iter().map(str::to_owned).collect())
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
            services: (self.services.on_node(node))
                .map(|(id, s)| s.to_api(id))
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
                checks: (self.checks.on_node(&node.node))
                    .filter_map(|(cid, c)| match c.service_id() {
                        "" => Some(c.to_api(&node.node, cid, None)),
                        sid if sid == id => Some(c.to_api(&node.node, cid, Some(svc))),
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
            (self.checks.on_node(&node.node))
                .filter(move |(_, c)| c.service_id() == id)
                .map(move |(cid, c)| c.to_api(&node.node, cid, Some(svc)))
        });
        (checks.collect(), self.service_index(name))
    }

    /// Every check on `node`, node-level and service; index of the checks table.
    pub fn node_checks(&self, node: &str) -> (Vec<HealthCheck>, u64) {
        let checks = (self.checks.on_node(node)).map(|(id, c)| self.check_to_api(node, id, c));
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
            .filter(|(_, _, c)| state == "any" || c.status() == state)
            .map(|(n, id, c)| self.check_to_api(n, id, c));
        Ok((checks.collect(), self.index_of(CHECKS).max(1)))
    }

    /// Nodes whose `serfHealth` check passes, in name order.
    pub fn serf_passing_nodes(&self) -> Vec<String> {
        self.serf_passing.iter().map(owned).collect()
    }

    /// Status of check `check_id` on `node`, if it exists.
    pub fn check_status(&self, node: &str, check_id: &str) -> Option<&str> {
        let check = self.checks.get(node, check_id)?;
        Some(check.status())
    }

    /// Whether `node` is registered.
    pub fn has_node(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// The highest index of any change so far (0 when empty).
    pub fn last_index(&self) -> u64 {
        // Every write that moves a service's index moves a table's too
        // (`WritePlanner::bump`), and a restore sets them all: the tables' are
        // the highest.
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
        self.own_service_index(name)
            .unwrap_or(self.index_of(SERVICES))
            .max(1)
    }

    /// Index of service `name` if it has its own ([`Self::service_index`]
    /// falls back otherwise). Once it has, only a write that moves it (its
    /// `i/service/<name>` row, [`super::RowChange::moved_service_index`])
    /// or a state rebuilt whole (a restore, a snapshot installed, which may
    /// lack the service) changes what `service_index` answers: no write
    /// clears an own index.
    pub fn own_service_index(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|s| s.index).filter(|&i| i != 0)
    }

    /// Instances of `name` having all `tags`, with their nodes and ids, in
    /// (node, id) order.
    fn instances<'a>(
        &'a self,
        name: &str,
        tags: &'a [String],
    ) -> impl Iterator<Item = (&'a Node, &'a str, &'a StoredService)> + 'a {
        let keys = self.by_name.get(name).into_iter();
        keys.flat_map(|s| s.instances.keys())
            .filter_map(|(node, id)| {
                let svc = self.services.get(node, id)?;
                Some((&**self.nodes.get(node.as_str())?, id.as_str(), &**svc))
            })
            .filter(move |(_, _, svc)| tags.iter().all(|t| has_tag(svc, t)))
    }

    /// The API form of check `id` on `node`, with its owner's name and tags.
    pub(super) fn check_to_api(&self, node: &str, id: &str, check: &StoredCheck) -> HealthCheck {
        let owner = match check.service_id() {
            "" => None,
            sid => self.services.get(node, sid).map(|s| &**s),
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
    pub(super) fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = |why: &str| format!("bad catalog row {:?}: {why}", String::from_utf8_lossy(key));
        let key = std::str::from_utf8(key).map_err(|_| bad("key is not UTF-8"))?;
        let pair = |rest| split_pair(rest).ok_or_else(|| bad("no separator"));
        if let Some(name) = key.strip_prefix("n/") {
            let node: Node = from_json(value).map_err(|e| bad(&e))?;
            if node.node != name {
                return Err(bad("node name differs from key"));
            }
            self.nodes.insert(node.node.clone(), Box::new(node));
        } else if let Some(rest) = key.strip_prefix("s/") {
            let (node, id) = pair(rest)?;
            let svc: AgentService = from_json(value).map_err(|e| bad(&e))?;
            if svc.id != id {
                return Err(bad("service ID differs from key"));
            }
            (self.services).insert(node, id, Box::new(StoredService::new(svc)));
        } else if let Some(rest) = key.strip_prefix("c/") {
            let (node, id) = pair(rest)?;
            let check: HealthCheck = from_json(value).map_err(|e| bad(&e))?;
            if check.node != node || check.check_id != id {
                return Err(bad("check differs from key"));
            }
            // The stored service name and tags are dropped: they are derived.
            (self.checks).insert(node, id, Box::new(StoredCheck::new(check)));
        } else if let Some(name) = key.strip_prefix(INDEX_PREFIX) {
            if ![NODES, SERVICES, CHECKS].contains(&name) && !name.starts_with(SERVICE_INDEX_PREFIX)
            {
                return Err(bad("unknown index"));
            }
            let index = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            let index = index.ok_or_else(|| bad("index is not a number"))?;
            match name.strip_prefix(SERVICE_INDEX_PREFIX) {
                Some(service) => self.by_name.entry(service.into()).or_default().index = index,
                None => _ = self.indexes.insert(name.into(), index),
            }
        } else {
            return Err(bad("unknown key prefix"));
        }
        Ok(())
    }

    /// Every precondition of a register, then its writes into `plan`.
    fn plan_register(
        &self,
        plan: &mut WritePlanner<'_>,
        req: &RegisterRequest,
    ) -> Result<(), String> {
        let mut req = req.clone();
        Self::validate_register(&mut req)?;
        let svc_id = req.service.as_ref().map(|s| s.id.as_str());
        for check in &req.checks {
            let sid = &check.service_id;
            if !sid.is_empty()
                && svc_id != Some(sid.as_str())
                && plan.service(&req.node, sid).is_none()
            {
                return Err("Missing service registration".to_string());
            }
        }
        // Consul's ChangesNode: SkipNodeUpdate leaves an existing node alone,
        // but a missing node is still created (its services need it).
        if !(req.skip_node_update && plan.node(&req.node).is_some()) {
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
        Ok(())
    }

    /// A deregister's writes; a missing target plans nothing (a no-op, as in Consul).
    fn plan_deregister(
        &self,
        plan: &mut WritePlanner<'_>,
        req: &DeregisterRequest,
    ) -> Result<(), String> {
        Self::validate_deregister(req)?;
        if !req.service_id.is_empty() {
            plan.delete_service(&req.node, &req.service_id);
        } else if !req.check_id.is_empty() {
            plan.delete_check(&req.node, &req.check_id);
        } else {
            plan.delete_node(&req.node);
        }
        Ok(())
    }

    /// Install planned writes and bump the indexes they touched. Cannot fail.
    pub(super) fn commit(&mut self, pending: WritePlan) {
        for (name, node) in pending.nodes {
            match node {
                Some(node) => self.nodes.insert(name, Box::new(node)),
                None => self.nodes.remove(&name),
            };
        }
        for (key, svc) in pending.services {
            if let Some(old) = self.services.remove(&key.0, &key.1) {
                if let Some(name) = self.by_name.get_mut(old.service()) {
                    if name.instances.remove(&key).is_some() && name.instances.is_empty() {
                        self.listed_names -= 1;
                        // A name whose index never moved has nothing to keep (the
                        // write removing its last instance moves it below).
                        if name.index == 0 {
                            self.by_name.remove(old.service());
                        }
                    }
                }
            }
            if let Some(svc) = svc {
                let svc = Box::new(StoredService::new(svc));
                let name = self.by_name.entry(svc.service().into()).or_default();
                if name.instances.is_empty() {
                    self.listed_names += 1;
                }
                name.instances.insert(key.clone(), ());
                self.services.insert(&key.0, &key.1, svc);
            }
        }
        for (key, check) in pending.checks {
            let check = check.map(|c| Box::new(StoredCheck::new(c)));
            if key.1 == SERF_HEALTH_ID {
                match check.as_ref().is_some_and(|c| is_serf_passing(&key.1, c)) {
                    true => self.serf_passing.insert(key.0.clone()),
                    false => self.serf_passing.remove(&key.0),
                };
            }
            match check {
                Some(check) => self.checks.insert(&key.0, &key.1, check),
                None => self.checks.remove(&key.0, &key.1),
            };
        }
        for name in pending.bumped {
            match name.strip_prefix(SERVICE_INDEX_PREFIX) {
                Some(service) => {
                    self.by_name.entry(service.into()).or_default().index = pending.index
                }
                None => _ = self.indexes.insert(name.into(), pending.index),
            }
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
    svc.tags().any(|t| t.to_lowercase() == tag)
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
