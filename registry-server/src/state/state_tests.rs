//! Unit tests of the KV, session and transaction tables, fed commands like
//! the Raft thread feeds them: no network, no clock (time is each entry's
//! `at`).

use super::kv::{KvOp, KvVerb, TombstoneReap};
use super::session::{SessionExpiry, SessionId};
use super::txn::{CatalogVerb, CheckOp, NodeOp, TxnOp, TxnRequest};
use super::*;
use registry_api::kv::NewSession;
use registry_api::{DeregisterRequest, HealthCheck, Node, RegisterRequest, PASSING};

/// A store applying commands at increasing indexes.
struct Log {
    state: StateStore,
    index: u64,
}

impl Log {
    fn new() -> Self {
        Log {
            state: StateStore::new("dc1"),
            index: 1,
        }
    }

    /// Applies `cmd` at the next index and time `at`; the outcome or the rejection.
    fn try_apply(&mut self, at: u64, cmd: Command) -> Result<Outcome, String> {
        self.index += 1;
        let (result, rows) = self.state.apply(self.index, at, &cmd);
        if result.is_err() {
            assert!(rows.is_empty(), "a rejected command wrote rows");
        }
        result
    }

    fn apply(&mut self, at: u64, cmd: Command) -> Outcome {
        self.try_apply(at, cmd).unwrap()
    }

    fn kv(
        &mut self,
        at: u64,
        verb: KvVerb,
        key: &str,
        value: &str,
        index: u64,
        session: &str,
    ) -> bool {
        let op = KvOp {
            verb,
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            index,
            session: session.into(),
        };
        match self.apply(at, Command::Kv(op)) {
            Outcome::Bool(b) => b,
            other => panic!("{other:?}"),
        }
    }

    fn set(&mut self, key: &str, value: &str) -> bool {
        self.kv(0, KvVerb::Set, key, value, 0, "")
    }

    /// Node `node` with `serfHealth` in `status`.
    fn node(&mut self, node: &str, status: &str) {
        let mut req = RegisterRequest {
            node: node.into(),
            address: "10.0.0.1".into(),
            checks: vec![HealthCheck {
                check_id: "serfHealth".into(),
                name: "Serf Health Status".into(),
                status: status.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        CatalogState::validate_register(&mut req).unwrap();
        self.apply(0, Command::Register(req));
    }

    fn session(&mut self, at: u64, id: &str, node: &str, behavior: &str, lock_delay_ms: u64) {
        let s = NewSession {
            id: id.into(),
            node: node.into(),
            behavior: behavior.into(),
            lock_delay: lock_delay_ms * 1_000_000,
            ttl: "10s".into(),
            node_checks: vec!["serfHealth".into()],
            ..Default::default()
        };
        assert_eq!(self.apply(at, Command::SessionCreate(s)), Outcome::Done);
    }

    fn get(&self, key: &str) -> Option<registry_api::kv::KvPair> {
        self.state.kv.get(key).0
    }
}

#[test]
fn set_cas_and_delete_follow_consul_and_move_the_right_indexes() {
    let mut log = Log::new();
    assert!(log.set("a/x", "1"));
    let first = log.index;
    let e = log.get("a/x").unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, e.value.as_deref()),
        (first, first, Some(&b"1"[..]))
    );
    assert_eq!(log.state.kv.get("a/x").1, first);
    // The same write again changes nothing: no index moves.
    assert!(log.set("a/x", "1"));
    assert_eq!(log.get("a/x").unwrap().modify_index, first);
    // cas 0: only if absent; cas N: only at that ModifyIndex.
    assert!(!log.kv(0, KvVerb::Cas, "a/x", "2", 0, ""));
    assert!(log.kv(0, KvVerb::Cas, "a/new", "2", 0, ""));
    assert!(!log.kv(0, KvVerb::Cas, "a/x", "2", first + 100, ""));
    assert!(log.kv(0, KvVerb::Cas, "a/x", "2", first, ""));
    let written = log.index;
    assert!(!log.kv(0, KvVerb::Cas, "a/gone", "2", 5, ""));
    assert_eq!(log.get("a/x").unwrap().modify_index, written);
    assert_eq!(log.get("a/x").unwrap().create_index, first);
    // Prefix indexes: a/ sees its children, ab/ and b/ do not.
    assert!(log.set("ab/y", "3"));
    assert_eq!(log.state.kv.list("a/").1, written);
    assert_eq!(log.state.kv.list("ab/").1, log.index);
    // A delete leaves a tombstone: the prefix's and the key's index move.
    assert!(log.kv(0, KvVerb::Delete, "a/x", "", 0, ""));
    let deleted = log.index;
    assert_eq!(log.state.kv.list("a/").1, deleted);
    assert_eq!(log.state.kv.get("a/x"), (None, deleted));
    assert_eq!(log.state.kv.list("ab/").1, deleted - 1);
    // delete-cas: true for a key already gone, false at a stale index.
    assert!(log.kv(0, KvVerb::DeleteCas, "a/x", "", 3, ""));
    assert!(!log.kv(0, KvVerb::DeleteCas, "a/new", "", 1, ""));
    let new = log.get("a/new").unwrap().modify_index;
    assert!(log.kv(0, KvVerb::DeleteCas, "a/new", "", new, ""));
    assert!(log.get("a/new").is_none());
    // A key that never existed answers the reap floor, at least 1.
    assert_eq!(log.state.kv.get("never").1, 1);
    assert_eq!(log.state.kv.list("nothing/").1, 1);
    // A missing key is a rejection (400), not a `false`.
    let err = log.try_apply(
        0,
        Command::Kv(KvOp {
            verb: KvVerb::Set,
            key: String::new(),
            value: None,
            flags: 0,
            index: 0,
            session: String::new(),
        }),
    );
    assert_eq!(err.unwrap_err(), "Must provide key");
}

#[test]
fn keys_with_a_separator_are_cut_and_deduplicated() {
    let mut log = Log::new();
    for k in ["web/a", "web/sub/x", "web/sub/y", "web/z", "webx"] {
        log.set(k, "v");
    }
    let (keys, _) = log.state.kv.keys("web/", "/");
    assert_eq!(keys, ["web/a", "web/sub/", "web/z"]);
    let (keys, _) = log.state.kv.keys("web", "");
    assert_eq!(keys.len(), 5);
    let (list, _) = log.state.kv.list("web/sub/");
    assert_eq!(list.len(), 2);
    // A tree delete tombstones every key under the prefix and nothing else.
    assert!(log.kv(0, KvVerb::DeleteTree, "web/", "", 0, ""));
    assert_eq!(log.state.kv.keys("", "").0, ["webx"]);
    assert_eq!(log.state.kv.get("web/sub/x").1, log.index);
}

#[test]
fn locks_follow_consuls_acquire_and_release_rules() {
    let mut log = Log::new();
    log.node("n1", PASSING);
    log.session(0, "s1", "n1", "", 0);
    log.session(0, "s2", "n1", "", 0);
    assert!(log.kv(0, KvVerb::Lock, "lock", "a", 0, "s1"));
    let held = log.get("lock").unwrap();
    assert_eq!((held.session.as_str(), held.lock_index), ("s1", 1));
    // Same session again: true, value updated, LockIndex unchanged.
    assert!(log.kv(0, KvVerb::Lock, "lock", "b", 0, "s1"));
    let again = log.get("lock").unwrap();
    assert_eq!(
        (again.lock_index, again.value.as_deref()),
        (1, Some(&b"b"[..]))
    );
    // Another session: false. A release by a non-holder: false.
    assert!(!log.kv(0, KvVerb::Lock, "lock", "c", 0, "s2"));
    assert!(!log.kv(0, KvVerb::Unlock, "lock", "c", 0, "s2"));
    // A plain write keeps the holder.
    assert!(log.set("lock", "d"));
    assert_eq!(log.get("lock").unwrap().session, "s1");
    // The holder releases (no lock-delay after an explicit release); the
    // other session then acquires, LockIndex 2.
    assert!(log.kv(0, KvVerb::Unlock, "lock", "e", 0, "s1"));
    assert_eq!(log.get("lock").unwrap().session, "");
    assert!(log.kv(0, KvVerb::Lock, "lock", "f", 0, "s2"));
    assert_eq!(log.get("lock").unwrap().lock_index, 2);
    // An unknown session is a rejection with Consul's text.
    let op = KvOp {
        verb: KvVerb::Lock,
        key: "other".into(),
        value: None,
        flags: 0,
        index: 0,
        session: "nope".into(),
    };
    assert_eq!(
        log.try_apply(0, Command::Kv(op)).unwrap_err(),
        "invalid session \"nope\""
    );
}

#[test]
fn a_critical_check_invalidates_its_sessions_in_the_same_entry_and_lock_delay_holds_off_the_next_holder(
) {
    let mut log = Log::new();
    log.node("n1", PASSING);
    log.node("n2", PASSING);
    log.session(1_000, "s1", "n1", "release", 15_000);
    log.session(1_000, "s2", "n2", "release", 0);
    assert!(log.kv(1_000, KvVerb::Lock, "leader", "n1", 0, "s1"));
    let before = log.get("leader").unwrap();
    let sessions_index = log.state.sessions.list().1;
    // n1's serfHealth goes critical at t=2000: s1 goes, its key is released.
    let mut req = RegisterRequest {
        node: "n1".into(),
        skip_node_update: true,
        checks: vec![HealthCheck {
            check_id: "serfHealth".into(),
            status: "critical".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    CatalogState::validate_register(&mut req).unwrap();
    log.apply(2_000, Command::Register(req));
    let invalidated = log.index;
    assert!(log.state.sessions.get("s1").is_none());
    assert!(
        log.state.sessions.get("s2").is_some(),
        "n2's session is untouched"
    );
    assert!(log.state.sessions.list().1 > sessions_index);
    let released = log.get("leader").unwrap();
    assert_eq!(released.session, "");
    assert_eq!(released.lock_index, before.lock_index, "LockIndex kept");
    assert_eq!(released.modify_index, invalidated);
    // Lock-delay: until 2000 + 15000.
    assert!(!log.kv(16_999, KvVerb::Lock, "leader", "n2", 0, "s2"));
    assert!(log.kv(17_000, KvVerb::Lock, "leader", "n2", 0, "s2"));
    assert_eq!(log.get("leader").unwrap().lock_index, 2);
}

#[test]
fn delete_behavior_deletes_and_node_deregistration_and_destroy_invalidate() {
    let mut log = Log::new();
    log.node("n1", PASSING);
    log.session(0, "s1", "n1", "delete", 0);
    log.session(0, "s2", "n1", "release", 60_000);
    assert!(log.kv(0, KvVerb::Lock, "a", "1", 0, "s1"));
    assert!(log.kv(0, KvVerb::Lock, "b", "1", 0, "s2"));
    log.apply(100, Command::SessionDestroy(SessionId { id: "s1".into() }));
    assert!(log.get("a").is_none(), "Behavior delete deletes the key");
    assert_eq!(log.state.kv.get("a").1, log.index, "and leaves a tombstone");
    // Destroying a missing session is a no-op, not an error.
    log.apply(100, Command::SessionDestroy(SessionId { id: "s1".into() }));
    // Deregistering the node invalidates s2; its lock-delay is capped at 60 s.
    log.apply(
        1_000,
        Command::Deregister(DeregisterRequest {
            node: "n1".into(),
            ..Default::default()
        }),
    );
    assert!(log.state.sessions.is_empty());
    assert_eq!(log.get("b").unwrap().session, "");
    log.node("n1", PASSING);
    log.session(0, "s3", "n1", "", 0);
    assert!(!log.kv(60_999, KvVerb::Lock, "b", "1", 0, "s3"));
    assert!(log.kv(61_000, KvVerb::Lock, "b", "1", 0, "s3"));
}

#[test]
fn session_create_is_refused_with_consuls_messages() {
    let mut log = Log::new();
    let create = |node: &str, checks: &[&str]| {
        Command::SessionCreate(NewSession {
            id: "s1".into(),
            node: node.into(),
            node_checks: checks.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        })
    };
    assert_eq!(
        log.try_apply(0, create("nope", &[])).unwrap_err(),
        "Missing node registration"
    );
    log.node("n1", "critical");
    assert_eq!(
        log.try_apply(0, create("n1", &["serfHealth"])).unwrap_err(),
        "Check 'serfHealth' is in critical state"
    );
    assert_eq!(
        log.try_apply(0, create("n1", &["web"])).unwrap_err(),
        "Missing check 'web' registration"
    );
    // No checks at all is allowed, on a critical node too.
    assert_eq!(log.apply(0, create("n1", &[])), Outcome::Done);
    assert_eq!(
        log.try_apply(0, create("n1", &[])).unwrap_err(),
        "Session ID \"s1\" is already in use"
    );
}

#[test]
fn renewals_move_no_index_and_an_expiry_loses_to_a_racing_renewal() {
    let mut log = Log::new();
    log.node("n1", PASSING);
    log.session(1_000, "s1", "n1", "", 0);
    let index = log.state.sessions.list().1;
    let renewed = log.apply(5_000, Command::SessionRenew(SessionId { id: "s1".into() }));
    assert!(matches!(renewed, Outcome::Session(Some(ref s)) if s.id == "s1"));
    assert_eq!(
        log.state.sessions.list().1,
        index,
        "a renewal wakes no watcher"
    );
    assert_eq!(
        log.state.sessions.ttl_sessions().next(),
        Some(("s1", 10_000, 5_000))
    );
    // The leader decided from the renewal at 1000; the one at 5000 wins.
    let stale = Command::SessionExpire(SessionExpiry {
        id: "s1".into(),
        renewed_at: 1_000,
    });
    assert_eq!(log.apply(30_000, stale), Outcome::Bool(false));
    let due = Command::SessionExpire(SessionExpiry {
        id: "s1".into(),
        renewed_at: 5_000,
    });
    assert_eq!(log.apply(30_000, due), Outcome::Bool(true));
    assert!(log.state.sessions.is_empty());
    let missing = log.apply(30_000, Command::SessionRenew(SessionId { id: "s1".into() }));
    assert_eq!(missing, Outcome::Session(None));
}

#[test]
fn a_transaction_with_one_failing_op_changes_nothing_and_names_every_failure() {
    let mut log = Log::new();
    log.set("t/a", "1");
    let before = log.state.clone();
    let op = |verb, key: &str, index| {
        TxnOp::Kv(KvOp {
            verb,
            key: key.into(),
            value: Some(b"x".to_vec()),
            flags: 0,
            index,
            session: String::new(),
        })
    };
    let txn = TxnRequest {
        ops: vec![
            op(KvVerb::Set, "t/b", 0),
            op(KvVerb::Cas, "t/a", 999),
            op(KvVerb::Delete, "t/a", 0),
            op(KvVerb::CheckNotExists, "t/b", 0),
        ],
    };
    log.index += 1;
    let (result, rows) = log.state.apply(log.index, 0, &Command::Txn(txn));
    let Ok(Outcome::Txn(Err(errors))) = result else {
        panic!("{result:?}")
    };
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].op_index, 1);
    assert_eq!(errors[0].what, "failed to set key \"t/a\", index is stale");
    assert_eq!(
        (errors[1].op_index, errors[1].what.as_str()),
        (3, "key \"t/b\" exists")
    );
    assert!(rows.is_empty());
    assert_eq!(log.state, before);
    // The same without the failing ops applies whole, each op seeing the last.
    let txn = TxnRequest {
        ops: vec![
            op(KvVerb::Set, "t/b", 0),
            op(KvVerb::Get, "t/b", 0),
            op(KvVerb::Delete, "t/a", 0),
            op(KvVerb::CheckNotExists, "t/a", 0),
            TxnOp::Node(NodeOp {
                verb: CatalogVerb::Set,
                node: Node {
                    node: "n9".into(),
                    address: "10.0.0.9".into(),
                    ..Default::default()
                },
            }),
            TxnOp::Check(CheckOp {
                verb: CatalogVerb::Set,
                check: HealthCheck {
                    node: "n9".into(),
                    check_id: "c".into(),
                    status: PASSING.into(),
                    ..Default::default()
                },
            }),
        ],
    };
    let Outcome::Txn(Ok(results)) = log.apply(0, Command::Txn(txn)) else {
        panic!()
    };
    assert_eq!(
        results.len(),
        4,
        "set, get, node, check; deletes and checks answer nothing"
    );
    assert_eq!(
        results[0].kv.as_ref().unwrap().value,
        None,
        "only reads carry values"
    );
    assert_eq!(
        results[1].kv.as_ref().unwrap().value.as_deref(),
        Some(&b"x"[..])
    );
    assert_eq!(results[2].node.as_ref().unwrap().datacenter, "dc1");
    assert!(log.get("t/a").is_none());
    assert!(log.state.catalog.has_node("n9"));
    // Reads only, on the applied state.
    let read = log.state.read_txn(&[op(KvVerb::GetTree, "t/", 0)]).unwrap();
    assert_eq!(read.len(), 1);
    let failed = log
        .state
        .read_txn(&[op(KvVerb::Get, "t/a", 0)])
        .unwrap_err();
    assert_eq!(failed[0].what, "key \"t/a\" doesn't exist");
}

#[test]
fn a_transaction_check_going_critical_invalidates_sessions_before_later_ops() {
    let mut log = Log::new();
    log.node("n1", PASSING);
    log.session(0, "s1", "n1", "", 0);
    let critical = TxnOp::Check(CheckOp {
        verb: CatalogVerb::Set,
        check: HealthCheck {
            node: "n1".into(),
            check_id: "serfHealth".into(),
            status: "critical".into(),
            ..Default::default()
        },
    });
    let lock = TxnOp::Kv(KvOp {
        verb: KvVerb::Lock,
        key: "k".into(),
        value: None,
        flags: 0,
        index: 0,
        session: "s1".into(),
    });
    let Outcome::Txn(Err(errors)) = log.apply(
        0,
        Command::Txn(TxnRequest {
            ops: vec![critical, lock],
        }),
    ) else {
        panic!()
    };
    assert_eq!(errors[0].op_index, 1);
    assert_eq!(errors[0].what, "invalid session \"s1\"");
    assert!(log.state.sessions.get("s1").is_some(), "nothing applied");
}

#[test]
fn rows_rebuild_the_same_state_and_reaping_keeps_indexes_from_going_back() {
    let mut log = Log::new();
    log.node("n1", PASSING);
    log.session(0, "s1", "n1", "", 5_000);
    log.session(0, "s2", "n1", "", 0);
    log.kv(0, KvVerb::Lock, "r/held", "1", 0, "s1");
    log.set("r/keep", "1");
    log.set("r/gone", "1");
    log.kv(0, KvVerb::Delete, "r/gone", "", 0, "");
    let deleted = log.index;
    log.apply(
        1_000,
        Command::SessionDestroy(SessionId { id: "s1".into() }),
    );
    log.kv(0, KvVerb::Lock, "r/other", "1", 0, "s2");
    log.apply(
        2_000,
        Command::FireEvent(registry_api::event::UserEvent {
            id: "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into(),
            name: "deploy".into(),
            ..Default::default()
        }),
    );
    assert_eq!(log.state.events.events().count(), 1);
    let rows = log.state.rows();
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "key order");
    let rebuilt = StateStore::from_rows("dc1", rows).unwrap();
    assert_eq!(rebuilt, log.state, "derived indexes included");
    // Reap past the delete: the tombstone goes, the prefix's index does not go back.
    let before = log.state.kv.list("r/").1;
    log.apply(
        10_000,
        Command::KvReapTombstones(TombstoneReap {
            up_to_index: log.index,
        }),
    );
    assert_eq!(log.state.kv.oldest_tombstone(), None);
    assert!(log.state.kv.list("r/").1 >= before);
    assert!(log.state.kv.get("r/gone").1 >= deleted);
    assert!(
        !log.state.kv.has_lock_delay_until(u64::MAX),
        "the run-out lock-delay went too"
    );
    let rebuilt = StateStore::from_rows("dc1", log.state.rows()).unwrap();
    assert_eq!(rebuilt, log.state);
    // An unknown row is an error, not ignored.
    let mut rows = log.state.rows();
    rows.push((b"kz/x".to_vec(), b"1".to_vec()));
    assert!(StateStore::from_rows("dc1", rows).is_err());
}

/// The `i`-th write of a churn over every kind of row: instances with checks
/// registered on a few nodes (past 64 on some, where a node's rows move from a
/// `Vec` to a B-tree) and removed again, whole nodes removed, KV keys set and
/// deleted (tombstones).
fn churn(i: u64) -> Command {
    let node = format!("n{}", i % 3);
    match i % 5 {
        0 | 1 => {
            let mut req = RegisterRequest {
                node,
                address: format!("10.0.0.{}", i % 200),
                service: Some(registry_api::AgentService {
                    id: format!("s{}", i % 301),
                    service: format!("web{}", i % 3),
                    port: (i % 1000) as u16,
                    ..Default::default()
                }),
                checks: vec![HealthCheck {
                    check_id: format!("c{}", i % 301),
                    name: "alive".into(),
                    status: PASSING.into(),
                    service_id: format!("s{}", i % 301),
                    ..Default::default()
                }],
                ..Default::default()
            };
            CatalogState::validate_register(&mut req).unwrap();
            Command::Register(req)
        }
        2 => Command::Deregister(DeregisterRequest {
            node,
            service_id: format!("s{}", (i * 7) % 301),
            ..Default::default()
        }),
        3 if i % 97 == 3 => Command::Deregister(DeregisterRequest {
            node,
            ..Default::default()
        }),
        _ => Command::Kv(KvOp {
            verb: if i.is_multiple_of(3) {
                KvVerb::Delete
            } else {
                KvVerb::Set
            },
            key: format!("k/{}", i % 23),
            value: Some(i.to_string().into_bytes()),
            flags: 0,
            index: 0,
            session: String::new(),
        }),
    }
}

#[test]
fn an_image_in_steps_with_the_rows_written_between_them_is_the_state_at_its_last_step() {
    for budget in [1, 5, 64, usize::MAX] {
        let mut state = StateStore::new("dc1");
        let mut index = 1;
        let mut apply = |state: &mut StateStore, file: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>| {
            index += 1;
            let (result, rows) = state.apply(index, index * 1_000, &churn(index));
            // Some writes are refused (a deregistration of what is gone).
            let _ = result;
            for r in rows {
                file.insert(r.key, r.value);
            }
        };
        // Records as the checkpoint file has them, last one wins; a `None`
        // is a deleted row. Writes before the image began are not in it.
        let mut file = BTreeMap::new();
        for _ in 0..1_000 {
            apply(&mut state, &mut file);
        }
        let most = (0..3)
            .map(|n| state.catalog.services.on_node(&format!("n{n}")).count())
            .max();
        assert!(most > Some(64), "a node with many rows: {most:?}");
        file.clear();
        let mut cursor = ImageCursor::default();
        let mut steps = 0;
        loop {
            let done = state.image_step(&mut cursor, budget, &mut |k, v| {
                file.insert(k, Some(v));
            });
            steps += 1;
            if done {
                break;
            }
            // Writes between the steps, recorded in order with them.
            for _ in 0..3 {
                apply(&mut state, &mut file);
            }
        }
        assert!(cursor.is_done());
        if budget == 1 {
            assert!(steps > 50, "the image was taken in many steps ({steps})");
        }
        let image: Vec<_> = (file.into_iter())
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        assert_eq!(image, state.rows(), "budget {budget}");
        let rebuilt = StateStore::from_rows("dc1", image).unwrap();
        assert_eq!(rebuilt, state, "budget {budget}");
    }
}

#[test]
fn an_apply_without_catalog_entity_rows_changes_the_state_alike_and_leaves_out_only_those() {
    let (mut all, mut fewer) = (StateStore::new("dc1"), StateStore::new("dc1"));
    let entity = |key: &[u8]| {
        [&b"n/"[..], b"s/", b"c/"]
            .iter()
            .any(|p| key.starts_with(p))
    };
    let mut left_out = 0;
    for index in 2..2_000 {
        let cmd = churn(index);
        let (a, a_rows) = all.apply_for(index, index * 1_000, &cmd, RowsWanted::All);
        let (w, w_rows) =
            fewer.apply_for(index, index * 1_000, &cmd, RowsWanted::NoCatalogEntities);
        assert_eq!(a, w, "entry {index}");
        let kept: Vec<_> = a_rows.iter().filter(|r| !entity(&r.key)).cloned().collect();
        left_out += a_rows.len() - kept.len();
        assert_eq!(kept, w_rows, "entry {index}");
    }
    assert!(left_out > 1_000, "catalog rows were left out ({left_out})");
    assert_eq!(all, fewer);
}
