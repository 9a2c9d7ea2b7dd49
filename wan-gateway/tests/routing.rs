//! Request routing through gateways: local servers, remote DCs, errors, limits, blocking queries.

mod common;

use common::*;
use std::time::{Duration, Instant};

const NO_PATH: &str = "No path to datacenter";
const UNREACHABLE: &str = "Remote DC has no server currently reachable";

#[tokio::test]
async fn a_request_for_another_dc_reaches_its_server_and_comes_back_unchanged() {
    let s1 = FakeServer::start("dc1").await;
    let s2 = FakeServer::start("dc2").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let g2 = gateway("dc2", &[&s2], &[&g1]).await;
    wait_for_dcs(&g1, &["dc1", "dc2"]).await;

    // A read: status, X-Consul-* and body unchanged; other headers stay behind.
    let resp = client()
        .get(format!(
            "{}/v1/catalog/service/web?dc=dc2&tag=a%20b",
            g1.url()
        ))
        .header("x-consul-token", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-consul-index"], "42");
    assert_eq!(resp.headers()["x-consul-knownleader"], "true");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().get("x-other").is_none());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["Datacenter"], "dc2");
    assert_eq!(
        body["PathAndQuery"],
        "/v1/catalog/service/web?dc=dc2&tag=a%20b"
    );
    assert!(s1.requests().is_empty(), "dc1's server was not asked");
    let seen = &s2.requests()[0];
    assert_eq!(seen.headers["x-consul-token"], "secret");
    assert_eq!(seen.headers["x-registry-hops"], "2");

    // A write with a body travels too.
    let resp = client()
        .put(format!("{}/v1/kv/greeting?dc=dc2", g1.url()))
        .header("content-type", "application/octet-stream")
        .body("hello from dc1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let put = s2
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.path_and_query, "/v1/kv/greeting?dc=dc2");
    assert_eq!(&put.body[..], b"hello from dc1");
    assert_eq!(put.headers["content-type"], "application/octet-stream");

    // An error status is an answer, passed back as is.
    let (status, index, _) = get(&g1, "/v1/kv/missing?dc=dc2").await;
    assert_eq!((status, index.as_deref()), (404, Some("42")));

    // No dc, an empty dc and the local dc's name all stay local; so do requests from dc2 to dc1.
    for path in [
        "/v1/catalog/nodes",
        "/v1/catalog/nodes?dc=",
        "/v1/catalog/nodes?dc=dc1",
    ] {
        let (status, _, body) = get(&g1, path).await;
        assert_eq!(status, 200);
        assert!(body.contains(r#""Datacenter":"dc1""#), "{path}: {body}");
    }
    let (_, _, body) = get(&g2, "/v1/catalog/nodes?dc=dc1").await;
    assert!(body.contains(r#""Datacenter":"dc1""#), "{body}");

    g2.stop().await;
    g1.stop().await;
}

#[tokio::test]
async fn an_unknown_dc_or_a_loop_has_no_path() {
    let s1 = FakeServer::start("dc1").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let (status, _, body) = get(&g1, "/v1/catalog/nodes?dc=nowhere").await;
    assert_eq!((status, body.as_str()), (500, NO_PATH));

    let resp = client()
        .get(format!("{}/v1/catalog/nodes", g1.url()))
        .header("x-registry-hops", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), NO_PATH);
    assert!(s1.requests().is_empty());

    // Not an API path at all.
    let (status, _, _) = get(&g1, "/metrics").await;
    assert_eq!(status, 404);
    g1.stop().await;
}

#[tokio::test]
async fn local_servers_fail_over_and_all_down_is_unreachable() {
    let live = FakeServer::start("dc1").await;
    let dead = format!("http://{}", dead_addr().await);
    // Start with no servers, as an in-process test that starts the gateway first would.
    let g1 = gateway("dc1", &[], &[]).await;
    let (status, _, body) = get(&g1, "/v1/catalog/nodes").await;
    assert_eq!((status, body.as_str()), (500, UNREACHABLE));

    // The dead server comes first; bare host:port works too.
    let bare = live.url.trim_start_matches("http://").to_owned();
    g1.set_servers(vec![dead.clone(), bare]);
    let (status, _, body) = get(&g1, "/v1/catalog/nodes").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live.requests().len(), 1);

    let started = Instant::now();
    g1.set_servers(vec![dead.clone(), dead]);
    let (status, _, body) = get(&g1, "/v1/catalog/nodes").await;
    assert_eq!((status, body.as_str()), (500, UNREACHABLE));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    g1.stop().await;
    live.stop().await;
}

#[tokio::test]
async fn a_blocking_query_is_held_across_dcs_not_cut() {
    let s1 = FakeServer::start("dc1").await;
    let s2 = FakeServer::start("dc2").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let g2 = gateway("dc2", &[&s2], &[&g1]).await;
    wait_for_dcs(&g1, &["dc2"]).await;

    let started = Instant::now();
    let (status, index, body) = get(&g1, "/v1/catalog/service/web?dc=dc2&index=5&wait=2s").await;
    assert_eq!((status, index.as_deref()), (200, Some("42")), "{body}");
    assert!(body.contains(r#""Datacenter":"dc2""#));
    // The fake server held it for 1 s: it was waited for, not cut short.
    assert!(started.elapsed() >= Duration::from_secs(1));
    g2.stop().await;
    g1.stop().await;
}

#[tokio::test]
async fn bodies_over_512_kib_are_refused() {
    let s1 = FakeServer::start("dc1").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let resp = client()
        .put(format!("{}/v1/kv/big", g1.url()))
        .body(vec![b'x'; 512 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = client()
        .put(format!("{}/v1/kv/fits", g1.url()))
        .body(vec![b'x'; 512 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s1.requests().len(), 1);
    g1.stop().await;
}

#[tokio::test]
async fn stopping_ends_requests_in_flight_instead_of_waiting_for_them() {
    let s1 = FakeServer::start("dc1").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let url = format!("{}/v1/catalog/service/web?index=5&wait=1m", g1.url());
    // The fake server holds a blocking query for 1 s.
    let held = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    wait_until(
        Duration::from_secs(5),
        "the query to reach the server",
        || async { (!s1.requests().is_empty()).then_some(()) },
    )
    .await;
    let started = Instant::now();
    g1.stop().await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(held.await.unwrap(), 503);
    s1.stop().await;
}
