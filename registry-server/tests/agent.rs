//! Three servers and two client agents in one process: registration through
//! one agent is visible through the other; checks flip with their targets;
//! a dead agent's node goes critical and comes back; agents fail over between
//! servers; anti-entropy restores what was removed behind the agent's back.

use registry_api::{QueryOptions, RegistryClient, ServiceEntry};
use registry_client::{ClientConfig, ClientHandle};
use registry_testkit::cluster::*;
use registry_testkit::fakes::Target;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Agent `name` of `c` with its state in `dir`, joined to `servers` (the first is the one
/// it talks to first).
fn agent_config(c: &TestCluster, name: &str, dir: &Path, servers: &[String]) -> ClientConfig {
    ClientConfig {
        retry_join: servers.to_vec(),
        ..c.agent_config(name, Some(dir))
    }
}

async fn put(url: String, body: &str) -> u16 {
    registry_api::tls::plain_client()
        .put(url)
        .body(body.to_string())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn health(c: &RegistryClient, name: &str, passing: bool) -> Option<Vec<ServiceEntry>> {
    let opts = QueryOptions {
        passing,
        ..Default::default()
    };
    c.health_service(name, &opts).await.ok().map(|(l, _)| l)
}

fn client_of(h: &ClientHandle) -> RegistryClient {
    RegistryClient::new(format!("http://{}", h.http_addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_check_forward_and_recover() {
    let mut c = TestCluster::start(3).await;
    c.wait_leader().await;
    let servers = c.http_addrs();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Agent A talks to server 0 first (its pool starts with it).
    let a = registry_client::start(agent_config(&c, "host-a", dir_a.path(), &servers))
        .await
        .unwrap();
    let b = registry_client::start(agent_config(&c, "host-b", dir_b.path(), &servers[1..]))
        .await
        .unwrap();
    let (ca, cb) = (client_of(&a), client_of(&b));
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;

    // 1. Register on A with an HTTP check and a TTL check.
    let body = format!(
        r#"{{"Name":"web","Port":{},"Tags":["v1"],
            "Checks":[{{"Name":"web http","HTTP":"http://{}/health","Interval":"200ms","Timeout":"1s"}},
                      {{"CheckID":"web-ttl","Name":"web ttl","TTL":"1s"}}]}}"#,
        target.addr.port(),
        target.addr
    );
    assert_eq!(
        put(format!("{}/v1/agent/service/register", ca.base()), &body).await,
        200
    );
    assert_eq!(
        put(format!("{}/v1/agent/check/pass/web-ttl", ca.base()), "").await,
        200
    );
    // Visible, healthy, through agent B and on every server. The 1 s TTL is refreshed while
    // waiting: on a loaded machine the HTTP check's first pass and the sync can take longer
    // than the TTL, which would then lapse before both checks ever pass together.
    let pass_url = format!("{}/v1/agent/check/pass/web-ttl", ca.base());
    wait_until(
        Duration::from_secs(15),
        "web passing via agent B",
        || async {
            put(pass_url.clone(), "").await;
            (health(&cb, "web", true).await?.len() == 1).then_some(())
        },
    )
    .await;
    for i in 0..3 {
        let list = health(&c.client(i), "web", false).await.unwrap();
        assert_eq!(list.len(), 1, "on server {i}");
        assert_eq!(list[0].node.node, "host-a");
        assert!(list[0].checks.iter().any(|c| c.check_id == "serfHealth"));
    }
    let (cat, _) = cb
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(cat.len(), 1);

    // 2. The TTL check goes critical when not refreshed; refreshed, it passes.
    wait_until(Duration::from_secs(10), "TTL critical", || async {
        let list = health(&cb, "web", false).await?;
        let ttl = list
            .first()?
            .checks
            .iter()
            .find(|c| c.check_id == "web-ttl")?
            .clone();
        (ttl.status == "critical").then_some(())
    })
    .await;
    // Keep it fresh from now on.
    let ttl_url = format!("{}/v1/agent/check/pass/web-ttl", ca.base());
    let keep = CancellationToken::new();
    {
        let keep = keep.clone();
        tokio::spawn(async move {
            while !keep.is_cancelled() {
                put(ttl_url.clone(), "").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    wait_until(Duration::from_secs(10), "web passing again", || async {
        (health(&cb, "web", true).await?.len() == 1).then_some(())
    })
    .await;

    // 3. The HTTP check flips with its target, within two intervals (+ sync).
    let target_addr = target.addr;
    target.stop().await;
    let t0 = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "web critical after target stops",
        || async { health(&cb, "web", true).await?.is_empty().then_some(()) },
    )
    .await;
    eprintln!("HTTP check critical in catalog after {:?}", t0.elapsed());
    let _target = Target::start(target_addr).await;
    let t0 = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "web passing after target returns",
        || async { (health(&cb, "web", true).await?.len() == 1).then_some(()) },
    )
    .await;
    eprintln!("HTTP check passing in catalog after {:?}", t0.elapsed());

    // 4. Anti-entropy restores a service removed behind the agent's back.
    assert_eq!(
        put(
            format!("{}/v1/catalog/deregister", c.node(0).url()),
            r#"{"Node":"host-a","ServiceID":"web"}"#
        )
        .await,
        200
    );
    wait_until(
        Duration::from_secs(10),
        "anti-entropy to restore web",
        || async { (health(&c.client(1), "web", false).await?.len() == 1).then_some(()) },
    )
    .await;

    // 5. Kill the server A talks to: A's requests still succeed.
    c.stop(0).await;
    let rest = c.running();
    c.wait_leader_among(&rest, Duration::from_secs(20)).await;
    wait_until(
        Duration::from_secs(10),
        "A answers through another server",
        || async { (health(&ca, "web", false).await?.len() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        put(
            format!("{}/v1/agent/service/register", ca.base()),
            r#"{"Name":"api","Port":9000}"#
        )
        .await,
        200
    );
    wait_until(
        Duration::from_secs(10),
        "api registered via another server",
        || async { (health(&cb, "api", false).await?.len() == 1).then_some(()) },
    )
    .await;

    // 6. Kill agent A: its node goes critical within the bound and ?passing
    // drops its services; restarted on the same data dir, they pass again
    // without being registered again.
    keep.cancel();
    a.stop().await;
    let t0 = Instant::now();
    wait_until(Duration::from_secs(10), "host-a critical", || async {
        health(&cb, "api", true).await?.is_empty().then_some(())
    })
    .await;
    eprintln!(
        "dead agent's services left ?passing after {:?}",
        t0.elapsed()
    );
    let a = registry_client::start(agent_config(&c, "host-a", dir_a.path(), &servers[1..]))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(15),
        "host-a passing after restart",
        || async { (health(&cb, "api", true).await?.len() == 1).then_some(()) },
    )
    .await;
    let services = registry_client_services(&client_of(&a)).await;
    assert!(services.contains(&"web".to_string()) && services.contains(&"api".to_string()));

    a.stop().await;
    b.stop().await;
    c.shutdown().await;
}

async fn registry_client_services(c: &RegistryClient) -> Vec<String> {
    let (map, _): (std::collections::BTreeMap<String, serde_json::Value>, _) = c
        .get("/v1/agent/services", &QueryOptions::default())
        .await
        .unwrap();
    map.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_what_the_catalog_would_refuse() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let base = c.node(0).url();
    // The servers own serfHealth: an agent check may not take its id.
    let s = put(
        format!("{base}/v1/agent/check/register"),
        r#"{"CheckID":"serfHealth","Name":"fake","TTL":"10s"}"#,
    )
    .await;
    assert_eq!(s, 400);
    // An id the catalog cannot store is refused up front, so it can never
    // block anti-entropy.
    let s = put(
        format!("{base}/v1/agent/service/register"),
        r#"{"Name":"web","ID":"bad\u0000id","Port":1}"#,
    )
    .await;
    assert_eq!(s, 400);
    let long = format!(r#"{{"Name":"{}","Port":1}}"#, "x".repeat(600));
    assert_eq!(
        put(format!("{base}/v1/agent/service/register"), &long).await,
        400
    );
    // A good registration still syncs.
    assert_eq!(
        put(
            format!("{base}/v1/agent/service/register"),
            r#"{"Name":"ok","Port":1}"#
        )
        .await,
        200
    );
    let client = c.client(0);
    wait_until(Duration::from_secs(10), "ok synced", || async {
        (health(&client, "ok", false).await?.len() == 1).then_some(())
    })
    .await;
    c.shutdown().await;
}

/// The count of counter `name` in an agent's `/v1/agent/metrics` JSON (0 when absent).
async fn agent_counter(base: &str, name: &str) -> u64 {
    let summary: registry_api::metrics::MetricsSummary = registry_api::tls::plain_client()
        .get(format!("{base}/v1/agent/metrics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    summary.counter(name, &[])
}

/// Forty applications on one host watch the same service through their agent: the server
/// holds one blocking query for them, not forty, and every one of them gets the change.
/// A watcher with another question (another index) gets a request of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_blocking_queries_through_an_agent_share_one_server_query() {
    const WATCHERS: u64 = 40;
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let dir = tempfile::tempdir().unwrap();
    let a = registry_client::start(c.agent_config("host-a", Some(dir.path())))
        .await
        .unwrap();
    let base = format!("http://{}", a.http_addr);
    let reg = |id: &str| {
        format!(
            r#"{{"Node":"n-{id}","Address":"10.0.0.1","Service":{{"ID":"{id}","Service":"web","Port":80}}}}"#
        )
    };
    let server = c.node(0).url();
    assert_eq!(
        put(format!("{server}/v1/catalog/register"), &reg("web-1")).await,
        200
    );
    let client = client_of(&a);
    let (_, meta) = client
        .health_service("web", &QueryOptions::default())
        .await
        .unwrap();
    let index = meta.index;
    let http = registry_api::tls::plain_client();
    let watch = |index: u64| {
        let url = format!("{base}/v1/health/service/web?index={index}&wait=30s");
        let http = http.clone();
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let at: u64 = r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, at, body.as_array().unwrap().len())
        })
    };
    let watchers: Vec<_> = (0..WATCHERS).map(|_| watch(index)).collect();
    wait_until(
        Duration::from_secs(20),
        "every watcher at the agent",
        || async {
            (agent_counter(&base, "registry.agent.blocking.shared").await == WATCHERS - 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        agent_counter(&base, "registry.agent.blocking.upstream").await,
        1
    );
    c.wait_watching(0, "web").await;
    assert_eq!(c.node(0).raft.service_watchers("web"), 1);
    // Another question (an older index answers at once) is not folded into the first.
    let (status, at, n) = watch(index - 1).await.unwrap();
    assert_eq!((status, n), (200, 1));
    assert!(at >= index);
    assert_eq!(
        agent_counter(&base, "registry.agent.blocking.upstream").await,
        2
    );

    assert_eq!(
        put(format!("{server}/v1/catalog/register"), &reg("web-2")).await,
        200
    );
    for w in watchers {
        let (status, at, n) = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("every watcher answered")
            .unwrap();
        assert_eq!((status, n), (200, 2));
        assert!(at > index);
    }
    a.stop().await;
    c.shutdown().await;
}
