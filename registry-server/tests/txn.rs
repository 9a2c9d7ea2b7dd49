//! Transactions (`PUT /v1/txn`) on a 3-server cluster: all or nothing in one
//! Raft entry (one failing operation changes nothing, and every failure is
//! named); KV, node, service and check operations with Consul's results;
//! read-only transactions answered without Raft, `?stale` even without a
//! leader; malformed bodies, unknown verbs and 65 operations refused with a
//! reason and nothing applied.

use registry_api::kv::{TxnOpBody, TxnResponse};
use registry_api::{QueryOptions, RegistryClient};
use registry_testkit::cluster::*;
use serde_json::{json, Value};
use std::time::Duration;

/// `PUT /v1/txn` with a raw `body` and `query`: status, headers and JSON answer (or text).
async fn txn(
    c: &RegistryClient,
    query: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = registry_api::tls::plain_client()
        .put(format!("{}/v1/txn{query}", c.base()))
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// Base64 as Consul's `Value` carries it, through the API's own encoder.
fn b64(s: &str) -> String {
    let pair = registry_api::kv::KvPair {
        value: Some(s.as_bytes().to_vec()),
        ..Default::default()
    };
    serde_json::to_value(pair).unwrap()["Value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn keys(c: &RegistryClient) -> Vec<String> {
    let (list, _) = c
        .kv_get("", &QueryOptions::default(), &[("recurse", "")])
        .await
        .unwrap();
    list.unwrap_or_default()
        .into_iter()
        .map(|e| e.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_applies_all_or_nothing_with_consuls_answers() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let (lc, fc) = (c.client(leader), c.client((leader + 1) % 3));
    assert!(lc.kv_put("t/existing", "old", &[]).await.unwrap());
    let (list, _) = lc
        .kv_get("t/existing", &QueryOptions::default(), &[])
        .await
        .unwrap();
    let modify = list.unwrap()[0].modify_index;

    // One failing op (a stale cas) among good ones: 409, every failure named,
    // nothing applied.
    let body = json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": b64("1")}},
        {"KV": {"Verb": "cas", "Key": "t/existing", "Value": b64("new"), "Index": modify + 100}},
        {"KV": {"Verb": "delete", "Key": "t/existing"}},
        {"KV": {"Verb": "check-not-exists", "Key": "t/a"}},
    ]);
    let (status, _, text) = txn(&fc, "", &body.to_string()).await;
    assert_eq!(status, 409, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["Results"], Value::Null);
    assert_eq!(
        answer["Errors"],
        json!([
            {"OpIndex": 1, "What": "failed to set key \"t/existing\", index is stale"},
            {"OpIndex": 3, "What": "key \"t/a\" exists"},
        ])
    );
    assert_eq!(keys(&lc).await, ["t/existing"]);
    let (list, _) = lc
        .kv_get("t/existing", &QueryOptions::default(), &[])
        .await
        .unwrap();
    assert_eq!(list.unwrap()[0].modify_index, modify, "untouched");

    // The same without the failures: 200, each op sees the ones before it.
    let body = json!([
        {"kv": {"verb": "set", "key": "t/a", "value": b64("1"), "flags": 7}},
        {"KV": {"Verb": "cas", "Key": "t/existing", "Value": b64("new"), "Index": modify}},
        {"KV": {"Verb": "get", "Key": "t/a"}},
        {"KV": {"Verb": "check-index", "Key": "t/existing", "Index": 0}},
    ]);
    let (status, _, text) = txn(&fc, "", &body.to_string()).await;
    // check-index with a stale index fails: the txn is refused as a whole.
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains("failed index check for key \\\"t/existing\\\""),
        "{text}"
    );
    assert_eq!(keys(&lc).await, ["t/existing"]);
    let body = json!([
        {"kv": {"verb": "set", "key": "t/a", "value": b64("1"), "flags": 7}},
        {"KV": {"Verb": "cas", "Key": "t/existing", "Value": b64("new"), "Index": modify}},
        {"KV": {"Verb": "get", "Key": "t/a"}},
        {"KV": {"Verb": "get-tree", "Key": "t/"}},
        {"KV": {"Verb": "delete-tree", "Key": "gone/"}},
    ]);
    let (status, h, text) = txn(&fc, "", &body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    assert!(h.get("X-Consul-Index").is_none());
    let answer: TxnResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(answer.errors, None);
    let results = answer.results.unwrap();
    assert_eq!(
        results.len(),
        5,
        "set, cas, get, and get-tree's two entries"
    );
    let set = results[0].kv.as_ref().unwrap();
    assert_eq!(
        (set.key.as_str(), set.flags, set.value.as_ref()),
        ("t/a", 7, None)
    );
    let index = set.modify_index;
    assert_eq!(
        results[1].kv.as_ref().unwrap().modify_index,
        index,
        "one Raft entry"
    );
    assert_eq!(
        results[2].kv.as_ref().unwrap().value.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        results[4].kv.as_ref().unwrap().value.as_deref(),
        Some(&b"new"[..])
    );
    let raw: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        raw["Results"][0]["KV"]["Value"],
        Value::Null,
        "only reads carry values"
    );
    assert_eq!(raw["Errors"], Value::Null);
    assert_eq!(keys(&lc).await, ["t/a", "t/existing"]);

    // Locks and their checks in a transaction.
    let session = lc.session_create(&json!({})).await.unwrap();
    let body = json!([
        {"KV": {"Verb": "lock", "Key": "t/lock", "Value": b64("me"), "Session": session}},
        {"KV": {"Verb": "check-session", "Key": "t/lock", "Session": session}},
    ]);
    let (status, _, text) = txn(&lc, "", &body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let body = json!([{"KV": {"Verb": "unlock", "Key": "t/lock", "Session": "00000000-0000-0000-0000-000000000000"}}]);
    let (status, _, text) = txn(&lc, "", &body.to_string()).await;
    assert_eq!(status, 409);
    assert!(text.contains("lock isn't held"), "{text}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_service_and_check_operations_use_the_catalogs_rules() {
    let c = TestCluster::builder(1).agents(false).start().await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    let body = json!([
        {"Node": {"Verb": "set", "Node": {"Node": "txn-node", "Address": "10.1.1.1", "Meta": {"rack": "r1"}}}},
        {"Service": {"Verb": "set", "Node": "txn-node", "Service": {"Service": "web", "Port": 80}}},
        {"Check": {"Verb": "set", "Check": {"Node": "txn-node", "CheckID": "web-alive", "Status": "passing", "ServiceID": "web"}}},
        {"Node": {"Verb": "get", "Node": {"Node": "txn-node"}}},
    ]);
    let (status, _, text) = txn(&lc, "", &body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let results = answer["Results"].as_array().unwrap();
    assert_eq!(results[0]["Node"]["Node"], "txn-node");
    assert_eq!(results[0]["Node"]["Datacenter"], "dc1");
    assert_eq!(results[1]["Service"]["ID"], "web");
    assert_eq!(results[2]["Check"]["ServiceName"], "web");
    assert_eq!(results[3]["Node"]["Meta"]["rack"], "r1");
    let node_index = results[0]["Node"]["ModifyIndex"].as_u64().unwrap();
    let (list, _) = lc
        .health_service(
            "web",
            &QueryOptions {
                passing: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    // CAS refusals and a service on a missing node: 409, nothing applied.
    let body = json!([
        {"Node": {"Verb": "cas", "Node": {"Node": "txn-node", "Address": "10.9.9.9", "ModifyIndex": node_index + 5}}},
        {"Service": {"Verb": "set", "Node": "nowhere", "Service": {"Service": "db"}}},
        {"Check": {"Verb": "delete-cas", "Check": {"Node": "txn-node", "CheckID": "web-alive", "ModifyIndex": 1}}},
        {"Node": {"Verb": "get", "Node": {"Node": "nowhere"}}},
    ]);
    let (status, _, text) = txn(&lc, "", &body.to_string()).await;
    assert_eq!(status, 409, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer["Errors"],
        json!([
            {"OpIndex": 0, "What": "failed to set node \"txn-node\", index is stale"},
            {"OpIndex": 1, "What": "Missing node registration"},
            {"OpIndex": 2, "What": "failed to delete check \"web-alive\" on node \"txn-node\", index is stale"},
            {"OpIndex": 3, "What": "node \"nowhere\" doesn't exist"},
        ])
    );
    // Delete through the transaction.
    let body = json!([
        {"Node": {"Verb": "cas", "Node": {"Node": "txn-node", "Address": "10.9.9.9", "ModifyIndex": node_index}}},
        {"Service": {"Verb": "delete", "Node": "txn-node", "Service": {"ID": "web"}}},
    ]);
    let (status, _, text) = txn(&lc, "", &body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let (list, _) = lc
        .health_service("web", &QueryOptions::default())
        .await
        .unwrap();
    assert!(list.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_need_no_raft_write_and_honour_stale() {
    // Without the embedded agents nothing else writes, so the commit index
    // shows whether a read wrote.
    let mut c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    assert!(lc.kv_put("r/a", "1", &[]).await.unwrap());
    let reader = (leader + 1) % 3;
    let rc = c.client(reader);
    let body = json!([
        {"KV": {"Verb": "get", "Key": "r/a"}},
        {"KV": {"Verb": "get-tree", "Key": "r/"}},
        {"KV": {"Verb": "check-not-exists", "Key": "r/b"}},
    ])
    .to_string();
    wait_until(
        Duration::from_secs(10),
        "the write on the reader",
        || async { txn(&rc, "?stale", &body).await.0 == 200 },
    )
    .await;
    // Answered without a Raft entry: the commit index does not move. On a
    // loaded machine an election may come in between: its new leader writes
    // an empty entry, and a read while no leader is known fails. A round in
    // which any server's term or leader changed proves nothing and is run
    // again; a read that wrote would move the index in every round.
    let missing = json!([{"KV": {"Verb": "get", "Key": "r/none"}}]).to_string();
    let mut rounds = 0;
    loop {
        rounds += 1;
        c.wait_leader().await;
        // Every server's term and leader, and the highest commit index.
        let look = || {
            let all: Vec<_> = (0..3).map(|i| c.status(i)).collect();
            let leaders: Vec<_> = all.iter().map(|s| (s.term, s.leader_id)).collect();
            (leaders, all.iter().map(|s| s.commit).max())
        };
        let (leaders, commit) = look();
        let mut answers = Vec::new();
        for query in ["", "?stale", "?consistent"] {
            answers.push((query, txn(&rc, query, &body).await));
        }
        let (status, _, text) = txn(&rc, "?stale", &missing).await;
        let (leaders_after, commit_after) = look();
        if leaders_after != leaders {
            assert!(rounds < 5, "an election in each of {rounds} rounds");
            continue;
        }
        for (query, (status, h, text)) in answers {
            assert_eq!(status, 200, "{query}: {text}");
            assert!(
                h.get("X-Consul-KnownLeader").is_some() && h.get("X-Consul-LastContact").is_some()
            );
            let answer: TxnResponse = serde_json::from_str(&text).unwrap();
            // get and get-tree answer entries; a check that passes answers nothing.
            assert_eq!(answer.results.unwrap().len(), 2);
        }
        assert_eq!(status, 409);
        assert!(text.contains("key \\\"r/none\\\" doesn't exist"), "{text}");
        assert_eq!(commit_after, commit, "no Raft write for reads");
        break;
    }
    let (status, _, _) = txn(&rc, "?stale&consistent", &body).await;
    assert_eq!(status, 400);
    // Without a leader, ?stale still answers from the reader's own state.
    for i in 0..3 {
        if i != reader {
            c.stop(i).await;
        }
    }
    wait_until(
        Duration::from_secs(10),
        "the reader to lose its leader",
        || async { c.status(reader).leader_id == 0 },
    )
    .await;
    let (status, h, _) = txn(&rc, "?stale", &body).await;
    assert_eq!(status, 200);
    assert_eq!(h["X-Consul-KnownLeader"], "false");
    let (status, _, text) = txn(&rc, "", &body).await;
    assert_eq!((status, text.as_str()), (500, "No cluster leader"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactions_get_a_reason_and_apply_nothing() {
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    let set = |k: &str| json!({"KV": {"Verb": "set", "Key": k, "Value": b64("v")}});
    let too_many: Vec<Value> = (0..65).map(|i| set(&format!("many/{i}"))).collect();
    let cases: Vec<(String, u16, &str)> = vec![
        ("[{\"KV\":".into(), 400, "Failed to parse body"),
        ("{\"KV\":{}}".into(), 400, "Failed to parse body"),
        (
            json!([{"KV": {"Verb": "set", "Key": "b", "Value": "%%%"}}]).to_string(),
            400,
            "failed to decode value",
        ),
        (
            json!([{"KV": {"Verb": "set", "Key": "b", "Flags": "x"}}]).to_string(),
            400,
            "Failed to parse body",
        ),
        (
            json!(too_many).to_string(),
            413,
            "Transaction contains too many operations (65 > 64)",
        ),
        (
            json!([set("ok"), {"KV": {"Verb": "frobnicate", "Key": "x"}}]).to_string(),
            409,
            "unknown KV verb \\\"frobnicate\\\"",
        ),
        (
            json!([set("ok"), {"Node": {"Verb": "explode", "Node": {"Node": "n"}}}]).to_string(),
            409,
            "unknown Node verb",
        ),
        (
            json!([set("ok"), {}]).to_string(),
            409,
            "no operation specified",
        ),
        (
            json!([set("ok"), {"KV": {"Verb": "set", "Key": ""}}]).to_string(),
            409,
            "Must provide key",
        ),
        (
            json!([set("ok"), {"KV": {"Verb": "lock", "Key": "l", "Session": "nope"}}]).to_string(),
            409,
            "invalid session \\\"nope\\\"",
        ),
    ];
    for (body, want, reason) in &cases {
        let (status, _, text) = txn(&lc, "", body).await;
        assert_eq!(status, *want, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
        if *want == 409 {
            let answer: TxnResponse = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (answer.results, answer.errors.map(|e| e[0].op_index)),
                (None, Some(1))
            );
        }
    }
    // The query is checked before a write is proposed (issue 14 item 5).
    let write = json!([set("conflicting")]).to_string();
    let (status, _, text) = txn(&lc, "?stale&consistent", &write).await;
    assert_eq!(status, 400, "{text}");
    assert!(keys(&lc).await.is_empty(), "nothing was applied");
    // 64 operations are fine.
    let ops: Vec<TxnOpBody> = (0..64)
        .map(|i| serde_json::from_value(set(&format!("many/{i:02}"))).unwrap())
        .collect();
    let (status, answer) = lc.txn(&ops, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer.results.unwrap().len(), 64);
    assert_eq!(keys(&lc).await.len(), 64);
    c.shutdown().await;
}
