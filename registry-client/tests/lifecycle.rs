//! The agent's lifecycle endpoints against a fake server: `PUT /v1/agent/reload` restarts the
//! check runners from their definitions and repairs the catalog at once (not at the next
//! full sync, an hour away here); `PUT /v1/agent/leave` deregisters the node, answers 200
//! and stops the agent; `PUT /v1/agent/join/:address` refuses an address where no server
//! answers, a malformed one, and `?wan`. (A join that works, force-leave and the servers'
//! side are in registry-server's `lifecycle.rs`, against real servers.)

mod common;

use axum::routing::get;
use axum::Router;
use common::*;
use registry_api::HealthCheck;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A configuration whose periodic full sync never comes during a test.
fn quiet_config(node: &str, server: std::net::SocketAddr) -> registry_client::ClientConfig {
    let mut c = test_config(node, &[server]);
    c.sync_interval = Duration::from_secs(3600);
    c
}

/// The status of check `service:web` as the agent reports it.
async fn status_of(api: &Api) -> Option<String> {
    let checks: BTreeMap<String, HealthCheck> = api.get_json("/v1/agent/checks").await;
    checks.get("service:web").map(|c| c.status.clone())
}

/// A check target whose answer the test sets.
async fn switchable_target() -> (std::net::SocketAddr, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(500));
    let s = status.clone();
    let app = Router::new().route(
        "/health",
        get(move || {
            let s = s.clone();
            async move { axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, status)
}

#[tokio::test]
async fn reload_restarts_check_runners_and_repairs_the_catalog_at_once() {
    let server = FakeServer::start().await;
    let (target, status) = switchable_target().await;
    let agent = start_agent(quiet_config("n1", server.addr)).await;
    let api = Api::new(agent.http_addr);
    // An HTTP check that runs once, then not for an hour.
    let body =
        format!(r#"{{"Name":"web","Check":{{"HTTP":"http://{target}/health","Interval":"1h"}}}}"#);
    assert_eq!(api.put("/v1/agent/service/register", &body).await.0, 200);
    wait_until(WAIT, "the first run says critical (500)", || async {
        status_of(&api).await.as_deref() == Some("critical")
            && server.catalog().node_services("n1").contains_key("web")
    })
    .await;

    // The target recovers; the check would not look again for an hour.
    status.store(200, Ordering::SeqCst);
    // Someone removes the service from the catalog behind the agent's back.
    server
        .catalog()
        .services
        .remove(&("n1".to_string(), "web".to_string()));
    let (code, text) = api.put("/v1/agent/reload", "").await;
    assert_eq!((code, text.as_str()), (200, ""));
    wait_until(WAIT, "the restarted check passes", || async {
        status_of(&api).await.as_deref() == Some("passing")
    })
    .await;
    wait_until(WAIT, "the catalog has the service again", || async {
        server.catalog().node_services("n1").contains_key("web")
    })
    .await;
    // Only PUT reloads.
    assert_eq!(api.get("/v1/agent/reload").await.0, 405);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn leave_deregisters_the_node_answers_and_stops_the_agent() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    api.put("/v1/agent/service/register", r#"{"Name":"web","Port":80}"#)
        .await;
    wait_until(
        WAIT,
        "the node and its service are in the catalog",
        || async { server.catalog().node_services("n1").contains_key("web") },
    )
    .await;

    let (code, text) = api.put("/v1/agent/leave", "").await;
    assert_eq!((code, text.as_str()), (200, ""));
    {
        let c = server.catalog();
        assert!(!c.nodes.contains_key("n1"), "the node is still registered");
        assert!(c.node_services("n1").is_empty());
    }
    tokio::time::timeout(WAIT, agent.stopped())
        .await
        .expect("the agent did not stop after leaving");
    // Nothing comes back: no sync, no heartbeat re-registers the node.
    let writes = server.catalog().writes;
    let heartbeats = server.catalog().heartbeats.len();
    agent.stop().await;
    {
        let c = server.catalog();
        assert!(!c.nodes.contains_key("n1"));
        assert_eq!(c.writes, writes);
        assert_eq!(c.heartbeats.len(), heartbeats);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_failed_leave_is_a_500_and_the_agent_carries_on() {
    let dead = dead_addr().await;
    let agent = start_agent(test_config("n1", &[dead])).await;
    let api = Api::new(agent.http_addr);
    let (code, text) = api.put("/v1/agent/leave", "").await;
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("failed to leave"), "{text}");
    assert!(!agent.agent.is_stopped());
    assert_eq!(api.get("/v1/agent/self").await.0, 200);
    agent.stop().await;
}

#[tokio::test]
async fn join_refuses_what_is_not_a_server() {
    let dead = dead_addr().await;
    let mut config = test_config("n1", &[]);
    config.retry_join.clear();
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);

    let (code, text) = api.put(&format!("/v1/agent/join/{dead}"), "").await;
    assert_eq!(code, 500, "{text}");
    assert!(
        text.starts_with(&format!("Failed to join {dead}: ")),
        "{text}"
    );
    let (code, text) = api.put("/v1/agent/join/not%20an%20address", "").await;
    assert_eq!(code, 500, "{text}");
    assert!(
        text.starts_with("Failed to join not an address: the host of an address must be"),
        "{text}"
    );
    let (code, text) = api.put("/v1/agent/join/10.0.0.1:0", "").await;
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("port"), "{text}");
    // Something that answers HTTP but is not a server (404 on /v1/status/leader).
    let other = FakeServer::start().await;
    let (code, text) = api.put(&format!("/v1/agent/join/{}", other.addr), "").await;
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("404"), "{text}");
    // WAN joins are the gateways'.
    let (code, text) = api
        .put(&format!("/v1/agent/join/{}?wan=1", other.addr), "")
        .await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("WAN"), "{text}");
    let (code, text) = api.put("/v1/agent/force-leave/x?wan", "").await;
    assert_eq!(code, 400, "{text}");
    // None of it reached the pool.
    assert!(agent.agent.servers().servers().is_empty());
    other.stop().await;
    agent.stop().await;
}
