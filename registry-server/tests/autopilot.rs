//! `GET /v1/operator/autopilot/state` on three servers: Consul's `AutopilotState` shape
//! (field names, types, the community edition's fields) with this cluster's values, asked of
//! a follower (which passes it to the leader); then, with one server stopped, that server
//! failed and unhealthy, the cluster unhealthy and no failure left to tolerate, still 200.

use registry_testkit::cluster::{wait_until, TestCluster};
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// The state as server `i` answers it; `None` while the cluster has no leader (a loaded
/// machine may see an election): `No cluster leader` is a 500, any other error fails.
async fn state(c: &TestCluster, i: usize) -> Option<Value> {
    let url = format!("{}/v1/operator/autopilot/state", c.node(i).url());
    let resp = registry_api::tls::plain_client()
        .get(&url)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    if status == 500 && body == "No cluster leader" {
        return None;
    }
    assert_eq!(status, 200, "{url}: {body}");
    Some(serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}")))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    k.sort_unstable();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autopilot_state_has_consuls_shape_and_the_clusters_values() {
    let mut c = TestCluster::start(3).await;
    let first = c.wait_leader().await;
    let ids: Vec<String> = (0..3).map(|i| format!("{:016x}", c.status(i).id)).collect();

    // Every server healthy once the leader has heard from all of them (asked of a follower
    // of the first leader; a loaded machine may elect another meanwhile, so the leader and
    // its term are read from the answer and checked against the servers' own view).
    // Also until the leader knows every server's log position: a leader elected a moment
    // ago (a loaded machine's second election) reports 0 for a follower it has not yet heard
    // an append answer from, and counts it healthy meanwhile, as Consul does.
    let v = wait_until(WAIT, "a healthy cluster", || async {
        state(&c, (first + 1) % 3).await.filter(|v| {
            v["Healthy"] == true
                && v["Servers"]
                    .as_object()
                    .is_some_and(|s| s.values().all(|s| s["LastIndex"].as_u64() > Some(0)))
        })
    })
    .await;
    let leader = ids
        .iter()
        .position(|id| v["Leader"] == id.as_str())
        .unwrap_or_else(|| panic!("the leader is no server: {v}"));
    // The leader's term when it answered: at most the term it is in now.
    let term = v["Servers"][&ids[leader]]["LastTerm"].as_u64().unwrap();
    assert!(term >= 1 && term <= c.status(leader).term, "{term}");
    assert_eq!(
        keys(&v),
        [
            "FailureTolerance",
            "Healthy",
            "Leader",
            "OptimisticFailureTolerance",
            "Servers",
            "Voters"
        ]
    );
    assert_eq!(v["FailureTolerance"], 1);
    assert_eq!(v["OptimisticFailureTolerance"], 1);
    let mut voters: Vec<String> = v["Voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    voters.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(voters, want);
    let servers = v["Servers"].as_object().unwrap();
    assert_eq!(servers.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let s = &servers[id];
        assert_eq!(
            keys(s),
            [
                "Address",
                "Healthy",
                "ID",
                "LastContact",
                "LastIndex",
                "LastTerm",
                "Meta",
                "Name",
                "NodeStatus",
                "NodeType",
                "ReadReplica",
                "StableSince",
                "Status",
                "Version"
            ]
        );
        assert_eq!(s["ID"], id.as_str());
        assert_eq!(s["Name"], c.names[i].as_str());
        // The in-memory network's address of a server is its name.
        assert_eq!(s["Address"], c.names[i].as_str());
        assert_eq!(s["NodeStatus"], "alive");
        assert_eq!(s["Version"], env!("CARGO_PKG_VERSION"));
        assert!(s["LastContact"].is_string(), "{s}");
        assert_eq!(s["LastTerm"], term);
        assert!(s["LastIndex"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["Healthy"], true);
        let since = s["StableSince"].as_str().unwrap();
        assert!(
            since.len() == 20 && since.ends_with('Z') && since.as_bytes()[10] == b'T',
            "{since}"
        );
        assert_eq!(s["ReadReplica"], false);
        assert_eq!(s["Status"], if i == leader { "leader" } else { "voter" });
        assert_eq!(s["Meta"], serde_json::json!({}));
        assert_eq!(s["NodeType"], "voter");
    }
    assert_eq!(servers[&ids[leader]]["LastContact"], "0s");

    // One server stops: failed, unhealthy, and nothing left to tolerate; still a 200.
    let stopped = (leader + 2) % 3;
    c.stop(stopped).await;
    let v = wait_until(WAIT, "the stopped server failed", || async {
        state(&c, leader)
            .await
            .filter(|v| v["Servers"][&ids[stopped]]["NodeStatus"] == "failed")
    })
    .await;
    assert_eq!(v["Healthy"], false);
    assert_eq!(v["FailureTolerance"], 0);
    assert_eq!(v["Servers"][&ids[stopped]]["Healthy"], false);
    assert_eq!(v["Servers"][&ids[leader]]["Healthy"], true);
    c.shutdown().await;
}
