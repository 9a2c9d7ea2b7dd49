//! The write planner: a command's writes computed on top of an unchanged
//! catalog ([`WritePlanner`]), then encoded as rows ([`WritePlan::encode`])
//! before anything is installed, so a command is applied whole or not at all.
//! Named for what it does, not `Txn`: `/v1/txn` (Consul's transactions,
//! `txn.rs`) plans its node, service and check operations with it, one
//! planner for the whole transaction. Owns the CreateIndex/ModifyIndex stamping and which
//! blocking-query indexes a write moves; must not decide whether a command is
//! allowed (that is `catalog.rs`, before planning).

use super::catalog::CatalogState;
use super::row_forms::{check_row, node_row, service_row};
use super::rows::{
    index_key, key_of, node_key, node_range, pair_key, put_rows_as, NodeKey, RowChange, RowsWanted,
    CHECKS, NODES, SERVICES, SERVICE_INDEX_PREFIX,
};
use compact_str::CompactString as Str;
use registry_api::{AgentService, HealthCheck, Node};
use std::collections::{BTreeMap, BTreeSet};

/// Writes planned for one command, detached from the state so they can be
/// encoded and then committed.
pub(super) struct WritePlan {
    /// Raft index the writes happen at.
    pub(super) index: u64,
    /// Node upserts (`Some`) and deletions (`None`).
    pub(super) nodes: BTreeMap<String, Option<Node>>,
    /// Instance upserts and deletions.
    pub(super) services: BTreeMap<NodeKey, Option<AgentService>>,
    /// Check upserts and deletions.
    pub(super) checks: BTreeMap<NodeKey, Option<HealthCheck>>,
    /// Names of the indexes that move to `index`.
    pub(super) bumped: BTreeSet<String>,
}

impl WritePlan {
    /// The rows for these writes, one per key; with [`RowsWanted::NoCatalogEntities`], only
    /// the moved indexes' rows.
    pub(super) fn encode(self, wanted: RowsWanted) -> Result<(WritePlan, Vec<RowChange>), String> {
        let mut rows = Vec::new();
        let (nodes, services, checks) = (&self.nodes, &self.services, &self.checks);
        if wanted == RowsWanted::All {
            put_rows_as(&mut rows, "catalog", nodes, |n| node_key(n), node_row)?;
            let service_key = |(n, id): &NodeKey| pair_key(b"s/", n, id);
            put_rows_as(&mut rows, "catalog", services, service_key, service_row)?;
            let check_key = |(n, id): &NodeKey| pair_key(b"c/", n, id);
            put_rows_as(&mut rows, "catalog", checks, check_key, check_row)?;
        }
        for name in &self.bumped {
            let value = Some(self.index.to_string().into_bytes());
            rows.push(RowChange {
                key: index_key(name),
                value,
            });
        }
        Ok((self, rows))
    }
}

/// Plans writes on top of an unchanged catalog. Reads see the planned writes
/// first, so later steps of a command see earlier ones.
pub(super) struct WritePlanner<'a> {
    /// The state before the command.
    base: &'a CatalogState,
    /// The writes so far.
    pub(super) pending: WritePlan,
}

impl<'a> WritePlanner<'a> {
    /// An empty plan at `index`.
    pub(super) fn new(base: &'a CatalogState, index: u64) -> Self {
        let (nodes, services, checks) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        let bumped = BTreeSet::new();
        let pending = WritePlan {
            index,
            nodes,
            services,
            checks,
            bumped,
        };
        WritePlanner { base, pending }
    }

    /// The catalog the plan is laid over.
    pub(super) fn base(&self) -> &'a CatalogState {
        self.base
    }

    /// Current node `name`.
    pub(super) fn node(&self, name: &str) -> Option<&Node> {
        match self.pending.nodes.get(name) {
            Some(planned) => planned.as_ref(),
            None => self.base.nodes.get(name).map(|n| &**n),
        }
    }

    /// Current instance `id` on `node`.
    pub(super) fn service(&self, node: &str, id: &str) -> Option<AgentService> {
        let key = key_of(node, id);
        match self.pending.services.get(&key) {
            Some(planned) => planned.clone(),
            None => self.base.services.get(node, id).map(|s| s.to_api(id)),
        }
    }

    /// Current check `id` on `node`. A committed check reads as it was
    /// committed: with the name and tags of its committed owner.
    pub(super) fn check(&self, node: &str, id: &str) -> Option<HealthCheck> {
        let key = key_of(node, id);
        match self.pending.checks.get(&key) {
            Some(planned) => planned.clone(),
            None => (self.base.checks.get(node, id)).map(|c| self.base.check_to_api(node, id, c)),
        }
    }

    /// The name of the current node with ID `id`, if any (a scan: only
    /// transactions that name a node by ID alone ask).
    pub(super) fn node_name_by_id(&self, id: &str) -> Option<String> {
        let planned = self.pending.nodes.values().flatten();
        let committed = (self.base.nodes.values().map(|n| &**n))
            .filter(|n| !self.pending.nodes.contains_key(&n.node));
        planned
            .chain(committed)
            .find(|n| n.id == id)
            .map(|n| n.node.clone())
    }

    /// The datacenter stamped on nodes written without one.
    pub(super) fn datacenter(&self) -> &str {
        self.base.datacenter()
    }

    /// The nodes this plan writes or deletes, and those whose checks it
    /// writes or deletes: the only ones whose sessions it can invalidate.
    pub(super) fn touched_nodes(&self) -> std::collections::BTreeSet<&str> {
        let nodes = self.pending.nodes.keys().map(String::as_str);
        nodes
            .chain(self.pending.checks.keys().map(|(n, _)| n.as_str()))
            .collect()
    }

    /// Current instances on `node`, in id order.
    fn services_on(&self, node: &str) -> Vec<AgentService> {
        let base = (self.base.services.on_node(node)).map(|(id, s)| (id, s.to_api(id)));
        current_on(base, &self.pending.services, node)
    }

    /// Current checks on `node`, in id order.
    fn checks_on(&self, node: &str) -> Vec<HealthCheck> {
        let base = (self.base.checks.on_node(node))
            .map(|(id, c)| (id, self.base.check_to_api(node, id, c)));
        current_on(base, &self.pending.checks, node)
    }

    /// Move the index of service `name` and of `table`.
    fn bump(&mut self, table: &str, service: Option<&str>) {
        self.pending.bumped.insert(table.to_string());
        if let Some(name) = service {
            self.pending
                .bumped
                .insert(format!("{SERVICE_INDEX_PREFIX}{name}"));
        }
    }

    /// Move the indexes of every service on `node`: their health and their
    /// flattened node fields depend on the node and its node-level checks.
    fn bump_node_services(&mut self, table: &str, node: &str) {
        self.bump(table, None);
        for svc in self.services_on(node) {
            self.bump(table, Some(&svc.service));
        }
    }

    /// Move the indexes of the services whose health `check` decides.
    fn bump_check(&mut self, check: &HealthCheck) {
        match check.service_id.as_str() {
            "" => self.bump_node_services(CHECKS, &check.node),
            _ => self.bump(CHECKS, Some(&check.service_name)),
        }
    }

    /// Upsert a node; no write when only the indexes would differ.
    pub(super) fn put_node(&mut self, mut node: Node) {
        let old = self.node(&node.node).cloned();
        if stamp(&mut node, old.as_ref(), self.pending.index) {
            self.bump_node_services(NODES, &node.node);
            self.pending.nodes.insert(node.node.clone(), Some(node));
        }
    }

    /// Upsert an instance, then rewrite its checks with its name and tags.
    pub(super) fn put_service(&mut self, node: &str, mut svc: AgentService) {
        let old = self.service(node, &svc.id);
        if !stamp(&mut svc, old.as_ref(), self.pending.index) {
            return;
        }
        if let Some(old) = old {
            self.bump(SERVICES, Some(&old.service));
        }
        self.bump(SERVICES, Some(&svc.service));
        let key = key_of(node, &svc.id);
        self.pending.services.insert(key, Some(svc.clone()));
        for check in self.checks_on(node) {
            if check.service_id == svc.id {
                self.put_check(check);
            }
        }
    }

    /// Upsert a check, filling in its service's name and tags.
    pub(super) fn put_check(&mut self, mut check: HealthCheck) {
        let owner = match check.service_id.as_str() {
            "" => None,
            sid => self.service(&check.node, sid),
        };
        check.service_name = owner
            .as_ref()
            .map(|s| s.service.clone())
            .unwrap_or_default();
        check.service_tags = owner.map(|s| s.tags).unwrap_or_default();
        let old = self.check(&check.node, &check.check_id);
        if !stamp(&mut check, old.as_ref(), self.pending.index) {
            return;
        }
        if let Some(old) = old {
            // The check may have moved to another service or to node level.
            self.bump_check(&old);
        }
        self.bump_check(&check);
        let key = key_of(&check.node, &check.check_id);
        self.pending.checks.insert(key, Some(check));
    }

    /// Remove a check if present.
    pub(super) fn delete_check(&mut self, node: &str, id: &str) {
        if let Some(old) = self.check(node, id) {
            self.bump_check(&old);
            self.pending.checks.insert(key_of(node, id), None);
        }
    }

    /// Remove an instance and its checks if present.
    pub(super) fn delete_service(&mut self, node: &str, id: &str) {
        let Some(old) = self.service(node, id) else {
            return;
        };
        for check in self.checks_on(node) {
            if check.service_id == id {
                self.delete_check(node, &check.check_id);
            }
        }
        self.bump(SERVICES, Some(&old.service));
        self.pending.services.insert(key_of(node, id), None);
    }

    /// Remove a node with all its instances and checks if present.
    pub(super) fn delete_node(&mut self, node: &str) {
        if self.node(node).is_none() {
            return;
        }
        for check in self.checks_on(node) {
            self.delete_check(node, &check.check_id);
        }
        for svc in self.services_on(node) {
            self.delete_service(node, &svc.id);
        }
        self.bump(NODES, None);
        self.pending.nodes.insert(node.to_string(), None);
    }
}

/// The committed values on `node` (`base`, by id) with the planned writes on
/// it laid over them, in id order.
fn current_on<'a, V: Clone>(
    base: impl Iterator<Item = (&'a Str, V)>,
    planned: &'a BTreeMap<NodeKey, Option<V>>,
    node: &'a str,
) -> Vec<V> {
    let mut on: BTreeMap<&Str, Option<V>> = base.map(|(id, v)| (id, Some(v))).collect();
    on.extend(node_range(planned, node).map(|((_, id), v)| (id, v.clone())));
    on.into_values().flatten().collect()
}

/// Values carrying Consul's CreateIndex/ModifyIndex pair.
trait Indexed: Clone + PartialEq {
    /// The (create, modify) index fields.
    fn indexes(&mut self) -> (&mut u64, &mut u64);
}

/// Implements [`Indexed`] for types with `create_index` and `modify_index` fields.
macro_rules! indexed {
    ($($t:ty),*) => {$(
        impl Indexed for $t {
            fn indexes(&mut self) -> (&mut u64, &mut u64) {
                (&mut self.create_index, &mut self.modify_index)
            }
        }
    )*};
}
indexed!(Node, AgentService, HealthCheck);

/// Set `new`'s indexes for a write at `index` over `old`. Returns false when
/// `new` equals `old` apart from the indexes: then nothing is written.
fn stamp<T: Indexed>(new: &mut T, old: Option<&T>, index: u64) -> bool {
    let Some(old) = old else {
        *new.indexes().0 = index;
        *new.indexes().1 = index;
        return true;
    };
    let mut old = old.clone();
    let (create, modify) = old.indexes();
    (*new.indexes().0, *new.indexes().1) = (*create, *modify);
    if *new == old {
        return false;
    }
    *new.indexes().1 = index;
    true
}
