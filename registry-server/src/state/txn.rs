//! Transactions (`PUT /v1/txn`, Consul's `agent/consul/state/txn.go`): up to
//! 64 KV, node, service and check operations run in order against one
//! scratch view of the state (`Scratch` in `mod.rs`), each seeing the ones
//! before it. Every operation runs even after one failed, so the answer
//! names every failure, as Consul's does; if any failed, the caller drops the
//! scratch and nothing is applied. A transaction with only reads runs the
//! same way on a server's applied state, without Raft.
//!
//! Owns the transaction's operation types (the `Txn` command) and their
//! dispatch; must not decide a KV rule (`kv.rs`) or a catalog rule
//! (`catalog.rs`, `plan.rs`), only call them.

use super::catalog::CatalogState;
use super::kv::{apply_op, KvOp, KvResult};
use super::Scratch;
use registry_api::kv::{TxnError, TxnResult};
use registry_api::{AgentService, HealthCheck, Node, RegisterRequest};
use serde::{Deserialize, Serialize};

/// The `Txn` command: the operations, in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TxnRequest {
    /// The operations.
    pub ops: Vec<TxnOp>,
}

/// One operation of a transaction (Consul's `TxnOp`), spelt on the log as on
/// the wire (`{"KV": {...}}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// A KV operation.
    #[serde(rename = "KV")]
    Kv(KvOp),
    /// A node operation.
    Node(NodeOp),
    /// A service operation.
    Service(ServiceOp),
    /// A check operation.
    Check(CheckOp),
}

impl TxnOp {
    /// Whether the operation changes the state (a transaction without any is
    /// answered as a read).
    pub fn is_write(&self) -> bool {
        match self {
            TxnOp::Kv(op) => op.verb.is_write(),
            TxnOp::Node(NodeOp { verb, .. })
            | TxnOp::Service(ServiceOp { verb, .. })
            | TxnOp::Check(CheckOp { verb, .. }) => *verb != CatalogVerb::Get,
        }
    }
}

/// The verbs of node, service and check operations.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CatalogVerb {
    /// Upsert.
    Set,
    /// Upsert if `ModifyIndex` is the current one (0: only if absent).
    Cas,
    /// Read; fails if absent.
    Get,
    /// Delete.
    Delete,
    /// Delete if `ModifyIndex` is the current one.
    DeleteCas,
}

impl CatalogVerb {
    /// The verb Consul spells `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }
}

/// A node operation: the node by name (or, with no name, by its ID).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeOp {
    /// What to do.
    pub verb: CatalogVerb,
    /// The node; its `ModifyIndex` for the CAS verbs.
    pub node: Node,
}

/// A service operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceOp {
    /// What to do.
    pub verb: CatalogVerb,
    /// The node the instance is on.
    pub node: String,
    /// The instance; its `ModifyIndex` for the CAS verbs.
    pub service: AgentService,
}

/// A check operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct CheckOp {
    /// What to do.
    pub verb: CatalogVerb,
    /// The check with its node; its `ModifyIndex` for the CAS verbs.
    pub check: HealthCheck,
}

/// Runs `ops` in order against `scratch`: the results in order, or every
/// failure (the caller then applies nothing).
pub(super) fn run(
    scratch: &mut Scratch<'_>,
    ops: &[TxnOp],
) -> Result<Vec<TxnResult>, Vec<TxnError>> {
    let mut results = Vec::with_capacity(ops.len());
    let mut errors = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        let outcome = match op {
            TxnOp::Kv(op) => kv(scratch, op),
            TxnOp::Node(op) => node(scratch, op),
            TxnOp::Service(op) => service(scratch, op),
            TxnOp::Check(op) => check(scratch, op),
        };
        if !matches!(op, TxnOp::Kv(_)) {
            // In the same step as Consul's catalog writes: a later operation
            // must not find a session this one invalidated.
            scratch.invalidate_for_catalog();
        }
        match outcome {
            Ok(r) => results.extend(r),
            Err(what) => errors.push(TxnError { op_index, what }),
        }
    }
    if errors.is_empty() {
        Ok(results)
    } else {
        Err(errors)
    }
}

/// A KV operation: its entries (values only for the reads), or why it failed.
fn kv(scratch: &mut Scratch<'_>, op: &KvOp) -> Result<Vec<TxnResult>, String> {
    let (index, at) = (scratch.index, scratch.at);
    match apply_op(&mut scratch.kv, &scratch.sessions, index, at, op)? {
        KvResult::Done(entries) => Ok(entries
            .into_iter()
            .map(|kv| TxnResult {
                kv: Some(kv),
                ..Default::default()
            })
            .collect()),
        KvResult::Refused(why) => Err(why),
    }
}

/// Whether a CAS with `wanted` may write over `current` (Consul's
/// `ensureNodeCASTxn` and its siblings): 0 only over nothing, else only
/// over that exact ModifyIndex.
fn cas_ok(current: Option<u64>, wanted: u64) -> bool {
    match current {
        None => wanted == 0,
        Some(modify) => wanted != 0 && wanted == modify,
    }
}

/// The name of the node `node` names: its name, or with none its ID's.
fn node_name(scratch: &Scratch<'_>, node: &Node) -> String {
    if node.node.is_empty() && !node.id.is_empty() {
        if let Some(name) = scratch.catalog.node_name_by_id(&node.id) {
            return name;
        }
    }
    node.node.clone()
}

/// A node operation.
fn node(scratch: &mut Scratch<'_>, op: &NodeOp) -> Result<Vec<TxnResult>, String> {
    let name = node_name(scratch, &op.node);
    let current = scratch.catalog.node(&name).cloned();
    let result = |n: Option<Node>| {
        n.map(|n| TxnResult {
            node: Some(n),
            ..Default::default()
        })
        .into_iter()
        .collect()
    };
    match op.verb {
        CatalogVerb::Get => match current {
            Some(n) => Ok(result(Some(n))),
            None => Err(format!("node {name:?} doesn't exist")),
        },
        CatalogVerb::Set | CatalogVerb::Cas => {
            if op.verb == CatalogVerb::Cas
                && !cas_ok(current.map(|n| n.modify_index), op.node.modify_index)
            {
                return Err(format!("failed to set node {name:?}, index is stale"));
            }
            let mut check = RegisterRequest {
                node: name.clone(),
                skip_node_update: true,
                ..Default::default()
            };
            CatalogState::validate_register(&mut check)?;
            let mut n = Node {
                node: name.clone(),
                ..op.node.clone()
            };
            if n.datacenter.is_empty() {
                n.datacenter = scratch.catalog.datacenter().to_string();
            }
            scratch.catalog.put_node(n);
            Ok(result(scratch.catalog.node(&name).cloned()))
        }
        CatalogVerb::Delete => {
            scratch.catalog.delete_node(&name);
            Ok(Vec::new())
        }
        CatalogVerb::DeleteCas => match current {
            Some(n) if n.modify_index == op.node.modify_index => {
                scratch.catalog.delete_node(&name);
                Ok(Vec::new())
            }
            _ => Err(format!("failed to delete node {name:?}, index is stale")),
        },
    }
}

/// A service operation.
fn service(scratch: &mut Scratch<'_>, op: &ServiceOp) -> Result<Vec<TxnResult>, String> {
    let (node, id) = (op.node.as_str(), op.service.id.as_str());
    let id = if id.is_empty() {
        op.service.service.as_str()
    } else {
        id
    };
    let current = scratch.catalog.service(node, id);
    let result = |s: Option<AgentService>| {
        s.map(|s| TxnResult {
            service: Some(s),
            ..Default::default()
        })
        .into_iter()
        .collect()
    };
    match op.verb {
        CatalogVerb::Get => match current {
            Some(s) => Ok(result(Some(s))),
            None => Err(format!("service {id:?} on node {node:?} doesn't exist")),
        },
        CatalogVerb::Set | CatalogVerb::Cas => {
            if op.verb == CatalogVerb::Cas
                && !cas_ok(current.map(|s| s.modify_index), op.service.modify_index)
            {
                return Err(format!(
                    "failed to set service {id:?} on node {node:?}, index is stale"
                ));
            }
            let mut req = RegisterRequest {
                node: node.to_string(),
                skip_node_update: true,
                service: Some(op.service.clone()),
                ..Default::default()
            };
            CatalogState::validate_register(&mut req)?;
            if scratch.catalog.node(node).is_none() {
                return Err("Missing node registration".into());
            }
            let Some(svc) = req.service else {
                return Err("Must provide service".into());
            };
            let id = svc.id.clone();
            scratch.catalog.put_service(node, svc);
            Ok(result(scratch.catalog.service(node, &id)))
        }
        CatalogVerb::Delete => {
            scratch.catalog.delete_service(node, id);
            Ok(Vec::new())
        }
        CatalogVerb::DeleteCas => match current {
            Some(s) if s.modify_index == op.service.modify_index => {
                scratch.catalog.delete_service(node, id);
                Ok(Vec::new())
            }
            _ => Err(format!(
                "failed to delete service {id:?} on node {node:?}, index is stale"
            )),
        },
    }
}

/// A check operation.
fn check(scratch: &mut Scratch<'_>, op: &CheckOp) -> Result<Vec<TxnResult>, String> {
    let node = op.check.node.as_str();
    let id = match op.check.check_id.as_str() {
        "" => op.check.name.as_str(),
        id => id,
    };
    let current = scratch.catalog.check(node, id);
    let result = |c: Option<HealthCheck>| {
        c.map(|c| TxnResult {
            check: Some(c),
            ..Default::default()
        })
        .into_iter()
        .collect()
    };
    match op.verb {
        CatalogVerb::Get => match current {
            Some(c) => Ok(result(Some(c))),
            None => Err(format!("check {id:?} on node {node:?} doesn't exist")),
        },
        CatalogVerb::Set | CatalogVerb::Cas => {
            if op.verb == CatalogVerb::Cas
                && !cas_ok(current.map(|c| c.modify_index), op.check.modify_index)
            {
                return Err(format!(
                    "failed to set check {id:?} on node {node:?}, index is stale"
                ));
            }
            let mut req = RegisterRequest {
                node: node.to_string(),
                skip_node_update: true,
                checks: vec![op.check.clone()],
                ..Default::default()
            };
            CatalogState::validate_register(&mut req)?;
            if scratch.catalog.node(node).is_none() {
                return Err("Missing node registration".into());
            }
            let Some(check) = req.checks.pop() else {
                return Err("Must provide check".into());
            };
            let sid = check.service_id.as_str();
            if !sid.is_empty() && scratch.catalog.service(node, sid).is_none() {
                return Err("Missing service registration".into());
            }
            let id = check.check_id.clone();
            scratch.catalog.put_check(check);
            Ok(result(scratch.catalog.check(node, &id)))
        }
        CatalogVerb::Delete => {
            scratch.catalog.delete_check(node, id);
            Ok(Vec::new())
        }
        CatalogVerb::DeleteCas => match current {
            Some(c) if c.modify_index == op.check.modify_index => {
                scratch.catalog.delete_check(node, id);
                Ok(Vec::new())
            }
            _ => Err(format!(
                "failed to delete check {id:?} on node {node:?}, index is stale"
            )),
        },
    }
}
