//! Hostile input to every HTTP endpoint: seeded random mutations of valid
//! bodies, paths and query strings. The server must answer each with a 2xx or
//! a 4xx (never a 5xx, never a hang or a crash) and stay healthy.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registry_testkit::cluster::*;
use std::time::Duration;

const BODIES: &[(&str, &str)] = &[
    (
        "/v1/catalog/register",
        r#"{"Node":"n1","Address":"10.0.0.1","Service":{"Service":"web","Port":80,"Tags":["a"],"Meta":{"k":"v"}},"Checks":[{"Name":"c","ServiceID":"web","Status":"passing"}]}"#,
    ),
    (
        "/v1/catalog/deregister",
        r#"{"Node":"n1","ServiceID":"web"}"#,
    ),
    (
        "/v1/agent/service/register",
        r#"{"Name":"api","Port":9000,"Check":{"TTL":"30s"},"Checks":[{"HTTP":"http://127.0.0.1:1/x","Interval":"10s"}]}"#,
    ),
    (
        "/v1/agent/check/register",
        r#"{"Name":"ttl","CheckID":"ttl","TTL":"30s","Status":"passing"}"#,
    ),
    (
        "/v1/agent/check/update/ttl",
        r#"{"Status":"warning","Output":"hm"}"#,
    ),
    (
        "/v1/internal/heartbeat",
        r#"{"Node":"n9","Address":"10.0.0.9"}"#,
    ),
];

const GETS: &[&str] = &[
    "/v1/catalog/nodes",
    "/v1/catalog/services",
    "/v1/catalog/service/web",
    "/v1/catalog/node/n1",
    "/v1/catalog/node-services/n1",
    "/v1/health/service/web",
    "/v1/health/checks/web",
    "/v1/health/node/n1",
    "/v1/health/state/any",
    "/v1/status/leader",
    "/v1/status/peers",
    "/v1/operator/raft/configuration",
    "/v1/agent/services",
    "/v1/agent/checks",
    "/v1/agent/self",
    "/v1/agent/service/api",
    "/v1/agent/health/service/name/api",
    "/v1/catalog/datacenters",
];

fn mutate(rng: &mut StdRng, body: &str) -> Vec<u8> {
    let mut b = body.as_bytes().to_vec();
    match rng.random_range(0..9) {
        0 => b.truncate(rng.random_range(0..b.len())),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
        }
        2 => {
            return body
                .replace("80", "\"80\"")
                .replace("9000", "-1")
                .into_bytes()
        }
        3 => {
            return body
                .replace("\"web\"", "null")
                .replace("\"api\"", "[]")
                .into_bytes()
        }
        4 => return "[".repeat(rng.random_range(100..5000)).into_bytes(),
        5 => {
            return body
                .replace("\"n1\"", "\"n\\u0000\"")
                .replace("30s", "30")
                .into_bytes()
        }
        6 => {
            return body
                .replace("passing", "PASSING")
                .replace("10s", "-5s")
                .into_bytes()
        }
        7 => {
            return format!(
                r#"{{"Node":"{}","Address":"x"}}"#,
                "é".repeat(rng.random_range(1..2000))
            )
            .into_bytes()
        }
        _ => {
            return (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect()
        }
    }
    b
}

fn junk_query(rng: &mut StdRng) -> String {
    let parts = [
        "index=abc",
        "index=-1",
        "index=99999999999999999999",
        "wait=1x",
        "wait=-3s",
        "wait=100ms",
        "stale",
        "consistent",
        "tag=%00",
        "tag=%FF%FE",
        "passing=maybe",
        "near=_agent",
        "filter=((",
        "index=1&wait=50ms",
        "%",
        "a=%ZZ",
        "replace-existing-checks=1",
        "note=%E2%9C%93",
    ];
    (0..rng.random_range(0..4))
        .map(|_| parts[rng.random_range(0..parts.len())])
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_never_gets_a_5xx() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let base = c.node(0).url();
    let http = registry_api::tls::client_builder(None)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut failures = Vec::new();
    let (mut ok, mut rejected) = (0, 0);
    for round in 0..1500 {
        let (method, path, body) = if rng.random_bool(0.5) {
            let (p, b) = BODIES[rng.random_range(0..BODIES.len())];
            ("PUT", p.to_string(), mutate(&mut rng, b))
        } else {
            let p = GETS[rng.random_range(0..GETS.len())];
            let p = if rng.random_bool(0.2) {
                format!("{p}%2F..%2F{}", rng.random::<u16>())
            } else {
                p.to_string()
            };
            ("GET", p, Vec::new())
        };
        let q = junk_query(&mut rng);
        let url = if q.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{q}")
        };
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = http.request(m, &url).body(body.clone()).send().await;
        match resp {
            Ok(r) if r.status().is_server_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                failures.push(format!(
                    "#{round} {method} {url} body {:?} -> {status} {text}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(r) if r.status().is_success() => ok += 1,
            Ok(_) => rejected += 1,
            Err(e) => failures.push(format!("#{round} {method} {url} -> {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad answers, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The mutations must exercise both paths, or this test proves nothing.
    assert!(
        ok > 100 && rejected > 100,
        "{ok} accepted, {rejected} rejected"
    );
    // Still healthy.
    assert!(!c.client(0).status_leader().await.unwrap().is_empty());
    c.shutdown().await;
}
