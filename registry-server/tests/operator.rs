//! The operator endpoints Consul has in every version, with its shapes and codes:
//! `PUT /v1/operator/raft/transfer-leader` hands leadership to another voter and answers
//! `{"Success":true}` once another server leads (from a follower too, which passes it to
//! the leader), or Consul's error when there is no other voter; `GET
//! /v1/operator/autopilot/health` is the leader's view of every server, which turns
//! unhealthy (429, `FailureTolerance` 0) when a server stops.

use registry_testkit::cluster::{wait_until, TestCluster};
use serde_json::Value;
use std::time::Duration;

/// Sends `method url` and returns the status and the body (panics on a transport error).
async fn call(http: &reqwest::Client, method: reqwest::Method, url: &str) -> (u16, String) {
    let resp = http
        .request(method.clone(), url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// The autopilot health of the cluster, as server `i` answers it.
async fn health(http: &reqwest::Client, c: &TestCluster, i: usize) -> (u16, Value) {
    let url = format!("{}/v1/operator/autopilot/health", c.node(i).url());
    let (status, body) = call(http, reqwest::Method::GET, &url).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfer_leader_moves_leadership_and_answers_success() {
    let c = TestCluster::start(3).await;
    let http = registry_api::tls::plain_client();
    let first = c.wait_leader().await;
    let first_id = c.status(first).id;

    // Asked of a follower: it passes the request to the leader.
    let follower = (first + 1) % 3;
    let url = format!(
        "{}/v1/operator/raft/transfer-leader",
        c.node(follower).url()
    );
    let (status, body) = call(&http, reqwest::Method::PUT, &url).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"Success": true}));
    let second = c.wait_leader().await;
    assert_ne!(c.status(second).id, first_id, "leadership did not move");

    // With ?id=: to that server, named as operator/raft/configuration names it.
    let target = (0..3).find(|i| *i != second).unwrap();
    let target_id = format!("{:016x}", c.status(target).id);
    let url = format!(
        "{}/v1/operator/raft/transfer-leader?id={target_id}",
        c.node(second).url()
    );
    let (status, body) = call(&http, reqwest::Method::PUT, &url).await;
    assert_eq!(status, 200, "{body}");
    let third = c.wait_leader().await;
    assert_eq!(
        third, target,
        "leadership went elsewhere than the named server"
    );

    // An id that is not a server is refused, and leadership stays.
    let url = format!(
        "{}/v1/operator/raft/transfer-leader?id=nosuchserver",
        c.node(third).url()
    );
    let (status, body) = call(&http, reqwest::Method::PUT, &url).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot find peer"), "{body}");
    assert_eq!(c.wait_leader().await, third);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_without_another_voter_is_an_error() {
    let c = TestCluster::start(1).await;
    let http = registry_api::tls::plain_client();
    c.wait_leader().await;
    let url = format!("{}/v1/operator/raft/transfer-leader", c.node(0).url());
    let (status, body) = call(&http, reqwest::Method::PUT, &url).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        body.trim(),
        "Error transferring leadership: cannot find peer"
    );
    assert_eq!(c.wait_leader().await, 0);

    // A server answers the agent's own endpoints for itself (the agent router is shared).
    let url = format!("{}/v1/agent/version", c.node(0).url());
    let (status, body) = call(&http, reqwest::Method::GET, &url).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["HumanVersion"], env!("CARGO_PKG_VERSION"));
    let url = format!(
        "{}/v1/agent/health/service/id/nope?format=text",
        c.node(0).url()
    );
    let (status, body) = call(&http, reqwest::Method::GET, &url).await;
    assert_eq!((status, body.as_str()), (404, "ServiceId nope not found"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autopilot_health_lists_every_server_and_sees_one_stop() {
    let mut c = TestCluster::start(3).await;
    let http = registry_api::tls::plain_client();
    let leader = c.wait_leader().await;
    let leader_id = format!("{:016x}", c.status(leader).id);
    let follower = (leader + 1) % 3;

    // Healthy once every follower has answered the leader; asked of a follower too.
    for asked in [leader, follower] {
        let v = wait_until(Duration::from_secs(10), "a healthy cluster", || async {
            let (status, v) = health(&http, &c, asked).await;
            (status == 200 && v["Healthy"] == true).then_some(v)
        })
        .await;
        assert_eq!(v["FailureTolerance"], 1, "{v}");
        let servers = v["Servers"].as_array().unwrap();
        assert_eq!(servers.len(), 3, "{v}");
        for s in servers {
            for field in [
                "ID",
                "Name",
                "Address",
                "SerfStatus",
                "Version",
                "Leader",
                "LastContact",
                "LastTerm",
                "LastIndex",
                "Healthy",
                "Voter",
                "StableSince",
            ] {
                assert!(s.get(field).is_some(), "{field} missing in {s}");
            }
            assert_eq!(s["Healthy"], true, "{s}");
            assert_eq!(s["Voter"], true, "{s}");
            assert_eq!(s["SerfStatus"], "alive", "{s}");
        }
        let leaders: Vec<&Value> = servers.iter().filter(|s| s["Leader"] == true).collect();
        assert_eq!(leaders.len(), 1, "{v}");
        assert_eq!(leaders[0]["ID"], leader_id.as_str(), "{v}");
    }

    // One follower stops: the leader reports it unhealthy, and no failure is tolerated.
    let stopped = (leader + 2) % 3;
    let stopped_name = c.names[stopped].clone();
    c.stop(stopped).await;
    let v = wait_until(
        Duration::from_secs(10),
        "the stopped server unhealthy",
        || async {
            let (status, v) = health(&http, &c, leader).await;
            (status == 429 && v["Healthy"] == false).then_some(v)
        },
    )
    .await;
    assert_eq!(v["FailureTolerance"], 0, "{v}");
    let servers = v["Servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{v}");
    for s in servers {
        let is_stopped = s["Name"] == stopped_name.as_str();
        assert_eq!(s["Healthy"], !is_stopped, "{s}");
    }
    c.shutdown().await;
}
