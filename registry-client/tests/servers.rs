//! The way to the servers: failover in the pool, forwarding, heartbeats.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method};
use registry_client::{PoolError, ServerPool};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_pool_fails_over_from_a_dead_server_and_remembers_the_live_one() {
    let dead = free_addr().await;
    let server = FakeServer::start().await;
    let pool = ServerPool::new(vec![
        format!("http://{dead}"),
        format!("http://{}", server.addr),
    ])
    .unwrap();
    for _ in 0..3 {
        let resp = pool
            .send(
                Method::GET,
                "/v1/catalog/nodes",
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status.as_u16(), 200);
        assert_eq!(&resp.body[..], b"[]");
    }
    // An HTTP error status is an answer, not a reason to fail over.
    let resp = pool
        .send(
            Method::GET,
            "/v1/kv/missing",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status.as_u16(), 404);

    server.stop().await;
    let err = pool
        .send(
            Method::GET,
            "/v1/catalog/nodes",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Unreachable { .. }), "{err}");
    let empty = ServerPool::new(vec![]).unwrap();
    let err = empty
        .send(Method::GET, "/", HeaderMap::new(), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "No known Consul servers");
}

#[tokio::test]
async fn the_pool_sticks_to_the_server_that_answered_last() {
    let first_addr = free_addr().await;
    let second = FakeServer::start().await;
    let pool = ServerPool::new(vec![
        format!("http://{first_addr}"),
        format!("http://{}", second.addr),
    ])
    .unwrap();
    let path = "/v1/catalog/node-services/x";
    let _: Option<registry_api::NodeServiceList> = pool.get_json(path).await.unwrap();
    assert_eq!(second.catalog().node_reads, 1);
    // The first server comes back: the pool stays with the one that answered.
    let first = FakeServer::start_with(first_addr, Default::default()).await;
    for _ in 0..3 {
        let _: Option<registry_api::NodeServiceList> = pool.get_json(path).await.unwrap();
    }
    assert_eq!(second.catalog().node_reads, 4);
    assert_eq!(first.catalog().node_reads, 0);
    // Until it dies; then the pool moves on, quickly (connection refused, no timeout).
    second.stop().await;
    let started = tokio::time::Instant::now();
    let _: Option<registry_api::NodeServiceList> = pool.get_json(path).await.unwrap();
    assert_eq!(first.catalog().node_reads, 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    first.stop().await;
}

#[tokio::test]
async fn forwarding_passes_status_headers_and_body() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);

    let r = api
        .http
        .get(format!("{}/v1/kv/some/key?dc=dc1", api.base))
        .header("X-Consul-Token", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-consul-index"], "42");
    assert_eq!(r.headers()["x-consul-knownleader"], "true");
    assert!(r.headers().get("x-other").is_none());
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body[0]["Key"], "some/key");
    assert_eq!(body[0]["Token"], "secret", "X-Consul-Token is passed on");

    let (code, text) = api.get("/v1/kv/missing").await;
    assert_eq!((code, text.as_str()), (404, "no such key"));
    let (code, text) = api.put("/v1/kv/k", "0123456789").await;
    assert_eq!((code, text.as_str()), (200, "10"));
    // Unknown agent paths are not forwarded: they would describe a server's agent.
    assert_eq!(api.get("/v1/agent/nonsense").await.0, 404);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_arrive_regularly() {
    let server = FakeServer::start().await;
    let mut config = test_config("hb-node", &[server.addr]);
    config.advertise_addr = "10.0.0.7".into();
    config.datacenter = "dc2".into();
    let agent = start_agent(config).await;
    wait_for("three heartbeats", WAIT, || async {
        server.catalog().heartbeats.len() >= 3
    })
    .await;
    let hb = server.catalog().heartbeats[0].clone();
    assert_eq!(
        (
            hb.node.as_str(),
            hb.address.as_str(),
            hb.datacenter.as_str()
        ),
        ("hb-node", "10.0.0.7", "dc2")
    );
    agent.stop().await;
    server.stop().await;
}
