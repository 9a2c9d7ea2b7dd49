//! `PUT /v1/txn` (<https://developer.hashicorp.com/consul/api-docs/txn>):
//! decodes Consul's body into the `Txn` command's operations, then either
//! replicates it as one Raft entry (any write: all or nothing) or, with reads
//! only, answers it from the applied state in the consistency mode asked for
//! (`?stale`, `?consistent`), without Raft. 200 with `Results`, or 409 with
//! `Errors` and nothing applied. Must not run an operation itself
//! (`state/txn.rs` does).

use super::catalog::{stored_service_name, vet_check_write};
use super::kv::key_of;
use super::params::read_params;
use super::{json, HttpResult, St};
use crate::state::kv::{KvOp, KvVerb};
use crate::state::txn::{CatalogVerb, CheckOp, NodeOp, ServiceOp, TxnOp, TxnRequest};
use crate::state::{Command, Outcome};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Authz, Resource};
use registry_api::kv::{TxnError, TxnOpBody, TxnResponse, TxnResult, MAX_TXN_OPS};
use registry_api::Error as ApiError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `PUT /v1/txn`.
pub(super) async fn txn(
    State(st): St,
    auth: Authorized,
    Query(q): Query<Vec<(String, String)>>,
    body: Bytes,
) -> HttpResult {
    // The query first, for writes too: a bad one (`?stale&consistent`) is a
    // 400 before anything is proposed, as it is on every read.
    let p = read_params(&q)?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("Failed to parse body: {e}")))?;
    let bodies: Vec<TxnOpBody> = registry_api::decode::from_value(value).map_err(|e| {
        let e = e.trim_start_matches("Request decode failed: ");
        ApiError::BadRequest(format!("Failed to parse body: {e}"))
    })?;
    if bodies.len() > MAX_TXN_OPS {
        return Err(ApiError::TooLarge(format!(
            "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
            bodies.len()
        ))
        .into());
    }
    let ops = match convert(bodies) {
        Ok(ops) => ops,
        Err(errors) => return answer(&st, Err(errors)),
    };
    if let Err(errors) = vet(&st, &auth, &ops) {
        return answer(&st, Err(errors));
    }
    if ops.iter().any(TxnOp::is_write) {
        return match st.raft.propose(Command::Txn(TxnRequest { ops })).await? {
            Outcome::Txn(mut result) => {
                let filtered = visible(&auth, &mut result);
                let mut resp = answer(&st, result)?;
                if filtered {
                    resp.headers_mut().insert(
                        registry_api::acl::FILTERED_HEADER,
                        axum::http::HeaderValue::from_static("true"),
                    );
                }
                Ok(resp)
            }
            other => Err(ApiError::Internal(format!(
                "unexpected outcome of a transaction: {other:?}"
            ))
            .into()),
        };
    }
    // Reads only: like any read (but never blocking, as in Consul), and not
    // cached (the empty key): nobody else asks this exact transaction.
    let conflict = Arc::new(AtomicBool::new(false));
    let acl = auth.0.clone();
    let seen = conflict.clone();
    let read = crate::reads::read(
        &st.raft,
        &st.answers,
        &st.shutdown,
        p.mode_now(&st.raft),
        None,
        String::new(),
        move |s| (s.read_txn(&ops), 1),
        move |mut result| {
            seen.store(result.is_err(), Ordering::Relaxed);
            let filtered = visible(&acl, &mut result);
            (response_body(result), filtered)
        },
    )
    .await?;
    let mut resp = super::answer_response(&st, read);
    // Consul sets only these two on a read-only transaction.
    resp.headers_mut().remove("X-Consul-Index");
    if conflict.load(Ordering::Relaxed) {
        *resp.status_mut() = StatusCode::CONFLICT;
    }
    Ok(resp)
}

/// The ACL step (Consul's `vetTxnOp` per operation): every operation the
/// token may not do is an error of the answer, as Consul reports it, and
/// nothing is applied. Reads need read, writes write on what they touch; a
/// tree read needs read on its prefix and a tree delete write on everything
/// under it (`key_write_prefix`).
fn vet(st: &super::AppState, auth: &Authz, ops: &[TxnOp]) -> Result<(), Vec<TxnError>> {
    if auth.allows_all() {
        return Ok(());
    }
    let access = |write: bool| if write { Access::Write } else { Access::Read };
    let none = std::collections::BTreeMap::new();
    let errors: Vec<TxnError> = ops
        .iter()
        .enumerate()
        .filter_map(|(op_index, op)| {
            let denied = match op {
                TxnOp::Kv(kv) if kv.verb == KvVerb::DeleteTree => {
                    auth.require_key_write_prefix(&kv.key)
                }
                TxnOp::Kv(kv) => auth.require(Resource::Key, &kv.key, access(kv.verb.is_write())),
                // With ACLs a node is named: one found by its ID alone is not checked.
                TxnOp::Node(n) if n.node.node.is_empty() => Err(ApiError::Forbidden(format!(
                    "{}: a node operation needs the node's name when ACLs are on",
                    registry_api::acl::PERMISSION_DENIED
                ))),
                TxnOp::Node(n) => auth.require(
                    Resource::Node,
                    &n.node.node,
                    access(n.verb != CatalogVerb::Get),
                ),
                // The stored instance's name decides, and a set's new name too.
                TxnOp::Service(s) => {
                    let write = access(s.verb != CatalogVerb::Get);
                    let stored = stored_service_name(st, &s.node, &s.service.id);
                    auth.require(Resource::Service, &s.service.service, write)
                        .and_then(|()| match &stored {
                            Some(name) => auth.require(Resource::Service, name, write),
                            None => Ok(()),
                        })
                }
                TxnOp::Check(c) if c.verb == CatalogVerb::Get => {
                    if super::catalog::node_and_service(auth, &c.check.node, &c.check.service_name)
                    {
                        Ok(())
                    } else {
                        auth.require(Resource::Node, &c.check.node, Access::Read)
                            .and_then(|()| {
                                auth.require(Resource::Service, &c.check.service_name, Access::Read)
                            })
                    }
                }
                TxnOp::Check(c) => vet_check_write(st, auth, &c.check.node, &c.check, &none),
            }
            .err()?;
            Some(TxnError {
                op_index,
                what: denied.to_string(),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Consul's `FilterTxnResults`: results the token may not read are left out (a `get-tree`
/// over a prefix holding denied keys answers without them); true when any was.
fn visible(auth: &Authz, result: &mut Result<Vec<TxnResult>, Vec<TxnError>>) -> bool {
    let Ok(results) = result else {
        return false;
    };
    super::acl_retain(auth, results, |r| {
        r.kv.as_ref()
            .is_none_or(|kv| auth.allows(Resource::Key, &kv.key, Access::Read))
            && r.node
                .as_ref()
                .is_none_or(|n| auth.allows(Resource::Node, &n.node, Access::Read))
            && r.service
                .as_ref()
                .is_none_or(|s| auth.allows(Resource::Service, &s.service, Access::Read))
            && r.check
                .as_ref()
                .is_none_or(|c| super::catalog::node_and_service(auth, &c.node, &c.service_name))
    })
}

/// Consul's answer shape: results and `null` errors, or the reverse.
fn response_body(result: Result<Vec<TxnResult>, Vec<TxnError>>) -> TxnResponse {
    match result {
        Ok(results) => TxnResponse {
            results: Some(results),
            errors: None,
        },
        Err(errors) => TxnResponse {
            results: None,
            errors: Some(errors),
        },
    }
}

/// 200 with the results or 409 with the errors.
fn answer(st: &super::AppState, result: Result<Vec<TxnResult>, Vec<TxnError>>) -> HttpResult {
    let conflict = result.is_err();
    let mut resp: Response = json(st, &response_body(result))?;
    if conflict {
        *resp.status_mut() = StatusCode::CONFLICT;
    }
    Ok(resp)
}

/// The body's operations as the `Txn` command's, or every operation that
/// cannot be one (no operation in it, an unknown verb, a bad key) as
/// Consul's state machine would report them: a 409 with nothing applied.
fn convert(bodies: Vec<TxnOpBody>) -> Result<Vec<TxnOp>, Vec<TxnError>> {
    let mut ops = Vec::with_capacity(bodies.len());
    let mut errors = Vec::new();
    for (op_index, body) in bodies.into_iter().enumerate() {
        match convert_one(body) {
            Ok(op) => ops.push(op),
            Err(what) => errors.push(TxnError { op_index, what }),
        }
    }
    if errors.is_empty() {
        Ok(ops)
    } else {
        Err(errors)
    }
}

/// One operation; an op with several kinds set is the first of KV, Node,
/// Service, Check (as Consul's `convertOps` reads it).
fn convert_one(body: TxnOpBody) -> Result<TxnOp, String> {
    let catalog_verb = |kind: &str, verb: &str| {
        CatalogVerb::parse(verb).ok_or_else(|| format!("unknown {kind} verb {verb:?}"))
    };
    if let Some(kv) = body.kv {
        let verb =
            KvVerb::parse(&kv.verb).ok_or_else(|| format!("unknown KV verb {:?}", kv.verb))?;
        let key = key_of(&kv.key).map_err(|e| e.to_string())?;
        return Ok(TxnOp::Kv(KvOp {
            verb,
            key,
            value: kv.value,
            flags: kv.flags,
            index: kv.index,
            session: kv.session,
        }));
    }
    if let Some(n) = body.node {
        let verb = catalog_verb("Node", &n.verb)?;
        return Ok(TxnOp::Node(NodeOp { verb, node: n.node }));
    }
    if let Some(s) = body.service {
        let verb = catalog_verb("Service", &s.verb)?;
        return Ok(TxnOp::Service(ServiceOp {
            verb,
            node: s.node,
            service: s.service,
        }));
    }
    if let Some(c) = body.check {
        let verb = catalog_verb("Check", &c.verb)?;
        return Ok(TxnOp::Check(CheckOp {
            verb,
            check: c.check,
        }));
    }
    Err("no operation specified".into())
}
