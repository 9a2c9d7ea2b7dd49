//! An agent's DNS interface (issue 13): answered by its servers with
//! `?stale` reads (and `&dc=` for another datacenter), a server too long out
//! of touch with its leader asked again without `stale`, failover between
//! servers, and the servers' errors mapped to NXDOMAIN or SERVFAIL. The
//! servers here are a small fake that records what it was asked.

mod common;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use registry_api::{AgentService, CatalogNode, HealthCheck, Node, ServiceEntry};
use registry_testkit::dns::{tcp, udp};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the fake servers share: the requests they saw and how stale they say
/// they are.
#[derive(Default)]
struct Seen {
    /// `path?query` of each request.
    requests: Mutex<Vec<String>>,
    /// `X-Consul-LastContact` of stale answers (ms).
    last_contact_ms: AtomicU64,
}

type Shared = Arc<Seen>;

fn entry(node: &str, address: &str, status: &str) -> ServiceEntry {
    ServiceEntry {
        node: Node {
            node: node.into(),
            address: address.into(),
            ..Default::default()
        },
        service: AgentService {
            id: format!("web-{node}"),
            service: "web".into(),
            port: 8080,
            ..Default::default()
        },
        checks: vec![HealthCheck {
            node: node.into(),
            check_id: "c".into(),
            status: status.into(),
            ..Default::default()
        }],
    }
}

async fn health_service(
    State(seen): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> axum::response::Response {
    let q = q.unwrap_or_default();
    seen.requests
        .lock()
        .unwrap()
        .push(format!("/v1/health/service/{name}?{q}"));
    let stale = q.split('&').any(|p| p == "stale");
    if q.contains("dc=nowhere") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter").into_response();
    }
    if q.contains("dc=broken") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader").into_response();
    }
    let list = match (name.as_str(), stale) {
        ("web", true) => vec![
            entry("n1", "10.0.0.1", "passing"),
            entry("n2", "10.0.0.2", "critical"),
        ],
        // What the leader says, distinct so the test sees who answered.
        ("web", false) => vec![entry("n9", "10.0.0.9", "passing")],
        _ => vec![],
    };
    let mut headers = HeaderMap::new();
    let contact = if stale {
        seen.last_contact_ms.load(Ordering::Relaxed)
    } else {
        0
    };
    headers.insert("X-Consul-LastContact", HeaderValue::from(contact));
    (headers, axum::Json(list)).into_response()
}

async fn catalog_node(
    State(seen): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> axum::response::Response {
    let q = q.unwrap_or_default();
    seen.requests
        .lock()
        .unwrap()
        .push(format!("/v1/catalog/node/{name}?{q}"));
    let node = (name == "n1").then(|| CatalogNode {
        node: Node {
            node: "n1".into(),
            address: "10.0.0.1".into(),
            ..Default::default()
        },
        ..Default::default()
    });
    axum::Json(node).into_response()
}

async fn fake_server(seen: Shared) -> SocketAddr {
    let app = axum::Router::new()
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/catalog/node/{name}", get(catalog_node))
        .with_state(seen);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

async fn agent(servers: &[SocketAddr]) -> registry_client::ClientHandle {
    let mut config = test_config("dns-agent", servers);
    config.dns = Some(registry_dns::DnsConfig::new("127.0.0.1:0".parse().unwrap()));
    start_agent(config).await
}

fn addresses(m: &hickory_proto::op::Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_from_its_servers_with_stale_reads() {
    let seen = Shared::default();
    // The first server is down: the pool moves on to the next.
    let dead = dead_addr().await;
    let live = fake_server(seen.clone()).await;
    let a = agent(&[dead, live]).await;
    let d = a.dns_addr.expect("DNS runs");

    let m = udp(d, "web.service.consul", RecordType::A).await;
    assert_eq!(
        addresses(&m),
        ["10.0.0.1"],
        "the critical instance is left out"
    );
    let m = tcp(d, "web.service.consul", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 1);
    let m = udp(d, "n1.node.consul", RecordType::A).await;
    assert_eq!(addresses(&m), ["10.0.0.1"]);
    let m = udp(d, "nobody.node.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(d, "web.service.dc2.consul", RecordType::A).await;
    assert_eq!(addresses(&m), ["10.0.0.1"]);
    let asked = seen.requests.lock().unwrap().clone();
    assert!(
        asked.iter().all(|r| r.ends_with("stale")),
        "every read was stale: {asked:?}"
    );
    assert!(
        asked.contains(&"/v1/health/service/web?dc=dc2&stale".to_string()),
        "{asked:?}"
    );
    assert!(
        asked.contains(&"/v1/catalog/node/n1?stale".to_string()),
        "{asked:?}"
    );

    // A datacenter nobody knows does not exist; a server that cannot answer
    // is a failure the resolver retries.
    let m = udp(d, "web.service.nowhere.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(d, "web.service.broken.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_stale_is_asked_again_of_the_leader() {
    let seen = Shared::default();
    let server = fake_server(seen.clone()).await;
    let a = agent(&[server]).await;
    let d = a.dns_addr.expect("DNS runs");
    let within = registry_client::dns::MAX_STALE.as_millis() as u64 - 1;
    seen.last_contact_ms.store(within, Ordering::Relaxed);
    let m = udp(d, "web.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), ["10.0.0.1"], "stale but within the bound");
    seen.last_contact_ms.store(within + 2, Ordering::Relaxed);
    seen.requests.lock().unwrap().clear();
    let m = udp(d, "web.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), ["10.0.0.9"], "the leader's answer");
    let asked = seen.requests.lock().unwrap().clone();
    assert_eq!(
        asked,
        ["/v1/health/service/web?stale", "/v1/health/service/web?"],
        "{asked:?}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_dns_runs_none() {
    let seen = Shared::default();
    let server = fake_server(seen).await;
    let a = start_agent(test_config("no-dns", &[server])).await;
    assert!(a.dns_addr.is_none());
    a.stop().await;
}
