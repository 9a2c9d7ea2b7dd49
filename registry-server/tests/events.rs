//! User events (`/v1/event/fire/:name`, `/v1/event/list`) on three servers
//! and an agent: a fire through the agent is recorded once for the DC and
//! listed by every agent it is meant for, filters choose those agents as
//! Consul's do, a blocking list wakes on the next fire, the index is the one
//! Consul's clients derive from the last event's ID, and bad fires are 400s
//! that record nothing. Firing into another DC is in `federation.rs`.

use registry_api::event::event_index;
use registry_client::ClientConfig;
use registry_testkit::cluster::*;
use registry_testkit::never_within;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A request's status, `X-Consul-Index` and body.
async fn call(method: reqwest::Method, url: String, body: &str) -> (u16, Option<u64>, String) {
    let resp = registry_api::tls::plain_client()
        .request(method, &url)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (status, index, resp.text().await.unwrap_or_default())
}

async fn fire(base: &str, name_and_query: &str, payload: &str) -> Value {
    let (status, _, body) = call(
        reqwest::Method::PUT,
        format!("{base}/v1/event/fire/{name_and_query}"),
        payload,
    )
    .await;
    assert_eq!(status, 200, "fire {name_and_query}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The names in a list answer, and its index.
async fn list(base: &str, query: &str) -> (Vec<String>, u64, Value) {
    let (status, index, body) = call(
        reqwest::Method::GET,
        format!("{base}/v1/event/list{query}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "list: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let names = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap().to_string())
        .collect();
    (names, index.expect("X-Consul-Index"), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_agents_they_are_meant_for() {
    let c = TestCluster::start(3).await;
    c.wait_leader().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ClientConfig {
        sync_interval: Duration::from_millis(300),
        ..c.agent_config("host-a", Some(dir.path()))
    };
    let a = registry_client::start(cfg).await.unwrap();
    let agent = format!("http://{}", a.http_addr);
    let (status, _, body) = call(
        reqwest::Method::PUT,
        format!("{agent}/v1/agent/service/register"),
        r#"{"Name":"web","ID":"web-1","Port":80,"Tags":["blue"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The agent's service must be in the catalog for the servers to match
    // service filters against it.
    let server0 = c.urls()[0].clone();
    wait_until(Duration::from_secs(10), "web in the catalog", || async {
        let (_, _, body) = call(
            reqwest::Method::GET,
            format!("{server0}/v1/catalog/service/web"),
            "",
        )
        .await;
        body.contains("host-a").then_some(())
    })
    .await;

    // An empty list: index 1, as Consul's (no hot loop for watchers).
    let (names, index, _) = list(&agent, "").await;
    assert!(names.is_empty());
    assert_eq!(index, 1);

    // Fired through the agent: Consul's answer.
    let ev = fire(&agent, "deploy", "v42").await;
    assert_eq!(ev["Name"], "deploy");
    assert_eq!(ev["Payload"], "djQy", "base64 of the payload");
    assert_eq!(ev["Version"], 1);
    let id = ev["ID"].as_str().unwrap().to_string();
    assert!(registry_api::ids::is_uuid(&id), "{id}");

    // Listed by the agent and by every server (one record for the DC).
    let (names, index, listed) = list(&agent, "").await;
    assert_eq!(names, ["deploy"]);
    assert_eq!(index, event_index(Some(&id)));
    assert_eq!(listed[0]["ID"], id.as_str());
    assert!(listed[0]["LTime"].as_u64().unwrap() > 0, "{listed}");
    for base in c.urls() {
        wait_until(Duration::from_secs(5), "every server lists it", || async {
            (list(&base, "").await.0 == ["deploy"]).then_some(())
        })
        .await;
    }

    // Filters choose agents: by node, by service, by service and tag.
    fire(&agent, "for-a?node=%5Ehost-a%24", "").await;
    fire(&agent, "for-web-blue?service=web&tag=%5Eblue%24", "").await;
    fire(&agent, "for-web-green?service=web&tag=green", "").await;
    fire(&agent, "for-db?service=%5Edb%24", "").await;
    let (names, _, _) = list(&agent, "").await;
    assert_eq!(names, ["deploy", "for-a", "for-web-blue"]);
    // A server's own agent runs `consul`, not `web`, and is not host-a.
    let (names, _, _) = list(&c.urls()[1], "").await;
    assert_eq!(names, ["deploy"]);
    // `?name=` keeps one name.
    let (names, _, _) = list(&agent, "?name=for-a").await;
    assert_eq!(names, ["for-a"]);

    // A blocking list returns at once when the index differs, and otherwise
    // wakes on the next event meant for this agent.
    let (_, index, _) = list(&agent, "").await;
    let (names, again, _) = list(&agent, "?index=1&wait=5s").await;
    assert_eq!(
        (names.len(), again),
        (3, index),
        "a different index answers at once"
    );
    let watch = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = list(&agent, &format!("?index={index}&wait=10s")).await;
            (got, started.elapsed())
        })
    };
    // An event meant for another agent changes nothing here: no wake. (A
    // second is many times what a fire takes to reach every server here.)
    fire(&agent, "not-mine?service=%5Edb%24", "").await;
    never_within(
        Duration::from_secs(1),
        "woken by another agent's event",
        || {
            let done = watch.is_finished();
            async move { done.then_some(()) }
        },
    )
    .await;
    let next = fire(&agent, "next", "").await;
    let ((names, woke_index, _), took) = watch.await.unwrap();
    assert_eq!(names.last().map(String::as_str), Some("next"));
    assert_eq!(woke_index, event_index(next["ID"].as_str()));
    assert!(
        took < Duration::from_secs(5),
        "woken by the fire, not the wait: {took:?}"
    );

    // Bad fires: 400 with a reason, nothing recorded.
    let before = list(&c.urls()[0], "").await.0.len();
    for (what, path, payload) in [
        ("reserved name", "_internal", String::new()),
        ("tag without service", "x?tag=blue", String::new()),
        ("bad regex", "x?node=(", String::new()),
        ("payload too large", "x", "p".repeat(9 * 1024 + 1)),
    ] {
        let (status, _, body) = call(
            reqwest::Method::PUT,
            format!("{agent}/v1/event/fire/{path}"),
            &payload,
        )
        .await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(!body.is_empty(), "{what}: a reason");
    }
    assert_eq!(list(&c.urls()[0], "").await.0.len(), before);
    a.stop().await;
}
