//! Federation: `?dc=` asked anywhere in one datacenter is answered by the
//! other, through the WAN gateways, with failover and clear errors.

use registry_api::{QueryOptions, RegistryClient};
use registry_testkit::cluster::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wan_gateway::GatewayConfig;

fn gateway_config(
    dc: &str,
    servers: Vec<String>,
    join: Vec<String>,
    listen: SocketAddr,
) -> GatewayConfig {
    let mut cfg = GatewayConfig::new(dc);
    cfg.listen = listen;
    cfg.servers = servers;
    cfg.retry_join_wan = join;
    cfg.gossip_interval = Duration::from_millis(100);
    cfg.dead_after = Duration::from_secs(1);
    cfg
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn dc(name: &str) -> QueryOptions {
    QueryOptions {
        dc: Some(name.into()),
        ..Default::default()
    }
}

/// An agent of `servers`' datacenter with its state in `dir`, heartbeating every 200 ms.
fn agent(
    name: &str,
    dir: &std::path::Path,
    servers: &TestCluster,
) -> registry_client::ClientConfig {
    registry_client::ClientConfig {
        heartbeat_interval: Duration::from_millis(200),
        ..servers.agent_config(name, Some(dir))
    }
}

async fn datacenters(c: &RegistryClient) -> Vec<String> {
    c.get("/v1/catalog/datacenters", &QueryOptions::default())
        .await
        .map(|(d, _)| d)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datacenters_answer_each_other_through_their_gateways() {
    let dc1 = TestCluster::builder(3).dc("dc1").start().await;
    let dc2 = TestCluster::builder(1).dc("dc2").start().await;
    dc1.wait_leader().await;
    dc2.wait_leader().await;
    let gw1 = wan_gateway::start(gateway_config("dc1", dc1.urls(), vec![], any_port()))
        .await
        .unwrap();
    let gw2a = wan_gateway::start(gateway_config(
        "dc2",
        dc2.urls(),
        vec![gw1.addr.to_string()],
        any_port(),
    ))
    .await
    .unwrap();
    let gw2b = wan_gateway::start(gateway_config(
        "dc2",
        dc2.urls(),
        vec![gw1.addr.to_string()],
        any_port(),
    ))
    .await
    .unwrap();
    dc1.set_gateways(&[gw1.url()]);
    dc2.set_gateways(&[gw2a.url(), gw2b.url()]);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a1 = registry_client::start(agent("host-1", d1.path(), &dc1))
        .await
        .unwrap();
    let a2 = registry_client::start(agent("host-2", d2.path(), &dc2))
        .await
        .unwrap();
    let c1 = RegistryClient::new(format!("http://{}", a1.http_addr));
    let c2 = RegistryClient::new(format!("http://{}", a2.http_addr));

    wait_until(
        Duration::from_secs(15),
        "both DCs to know each other",
        || async {
            let (l1, l2) = (datacenters(&c1).await, datacenters(&c2).await);
            (l1 == ["dc1", "dc2"] && l2 == ["dc2", "dc1"]).then_some(())
        },
    )
    .await;

    // Register through dc1's agent; read through dc2's agent with ?dc=dc1.
    let put = registry_api::tls::plain_client()
        .put(format!("{}/v1/agent/service/register", c1.base()))
        .body(r#"{"Name":"web","Port":80,"Check":{"TTL":"30s","Status":"passing"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let (list, meta) = wait_until(
        Duration::from_secs(15),
        "dc1's web seen from dc2",
        || async {
            let (l, m) = c2.health_service("web", &dc("dc1")).await.ok()?;
            (l.len() == 1).then_some((l, m))
        },
    )
    .await;
    assert_eq!(list[0].node.node, "host-1");
    assert_eq!(list[0].node.datacenter, "dc1");
    assert!(
        meta.index > 0 && meta.known_leader,
        "X-Consul-* travel: {meta:?}"
    );
    let (cat, _) = c2.catalog_service("web", &dc("dc1")).await.unwrap();
    assert_eq!(cat.len(), 1);
    // The web UI's summary of dc1, asked of dc2's agent (issue 19).
    let ui: serde_json::Value = registry_api::tls::plain_client()
        .get(format!("{}/v1/internal/ui/services?dc=dc1", c2.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let web = ui.as_array().unwrap().iter().find(|s| s["Name"] == "web");
    assert_eq!(
        web.map(|w| (&w["Datacenter"], &w["InstanceCount"])),
        Some((&"dc1".into(), &1.into())),
        "{ui}"
    );
    // And not in dc2 itself.
    assert!(c2
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_empty());

    // Register into dc2 from dc1 with ?dc=dc2.
    assert!(c1
        .catalog_register(&reg("ext-1", "db", "db-1"), Some("dc2"))
        .await
        .unwrap());
    let (l, _) = c2
        .catalog_service("db", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(l.len(), 1, "the write landed in dc2");
    assert!(c1
        .catalog_service("db", &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_empty());

    // KV across datacenters: written into dc2 and read back from dc1's agent,
    // through both datacenters' gateways; it lives in dc2 only.
    assert!(c1
        .kv_put("fed/key", "from-dc1", &[("dc", "dc2")])
        .await
        .unwrap());
    let (list, meta) = c1.kv_get("fed/key", &dc("dc2"), &[]).await.unwrap();
    assert_eq!(list.unwrap()[0].value.as_deref(), Some(&b"from-dc1"[..]));
    assert!(meta.index > 0 && meta.known_leader, "{meta:?}");
    let here = QueryOptions::default();
    assert!(c2.kv_get("fed/key", &here, &[]).await.unwrap().0.is_some());
    assert!(c1.kv_get("fed/key", &here, &[]).await.unwrap().0.is_none());

    // A user event fired into dc2 from dc1's agent is dc2's: listed by dc2's
    // agent, not by dc1's.
    let fired = registry_api::tls::plain_client()
        .put(format!("{}/v1/event/fire/deploy?dc=dc2", c1.base()))
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(fired.status().as_u16(), 200);
    let fired: serde_json::Value = fired.json().await.unwrap();
    let listed = |c: &RegistryClient| {
        let url = format!("{}/v1/event/list?name=deploy", c.base());
        async move {
            let list: Vec<serde_json::Value> = registry_api::tls::plain_client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list.iter()
                .map(|e| e["ID"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&c2).await, [fired["ID"].as_str().unwrap()]);
    assert!(listed(&c1).await.is_empty());

    // A blocking query from dc1 on a dc2 service returns when dc2 changes it.
    let (_, m) = c1.catalog_service("db", &dc("dc2")).await.unwrap();
    let watcher = c1.clone();
    let opts = QueryOptions {
        dc: Some("dc2".into()),
        index: Some(m.index),
        wait: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    let mut watch = tokio::spawn(async move { watcher.catalog_service("db", &opts).await });
    // The old check here (sleep 300 ms, then look) also passed with a watch that came back at
    // once whenever the cross-DC hop took longer than that. Instead, change another service
    // in dc2 and wait until (1) dc2's server has applied it (a `?stale` read there answers
    // from its own applied state) and (2) a later request from dc1 along the watch's own
    // path (agent, dc1 server, gateway, dc2 server) sees it.
    c2.catalog_register(&reg("ext-9", "cache", "cache-1"), None)
        .await
        .unwrap();
    let (_, cache) = c2
        .catalog_service("cache", &QueryOptions::default())
        .await
        .unwrap();
    let dc2_server = dc2.client(0);
    wait_until(
        Duration::from_secs(10),
        "dc2's server to apply the cache write",
        || async {
            let (_, m) = dc2_server.catalog_service("cache", &stale()).await.ok()?;
            (m.index >= cache.index).then_some(())
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "dc1 to see dc2's cache",
        || async {
            let (l, _) = c1.catalog_service("cache", &dc("dc2")).await.ok()?;
            (l.len() == 1).then_some(())
        },
    )
    .await;
    // With the bug (the hop dropping `index`/`wait`, so the watch is answered at once, or a
    // dc2 watch answered by any applied change), dc2 has answered the watch by now; the
    // one-second grace only lets that answer travel back through the gateway.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut watch)
            .await
            .is_err(),
        "the cross-DC watch returned before its service changed"
    );
    c2.catalog_register(&reg("ext-2", "db", "db-2"), None)
        .await
        .unwrap();
    let (l, m2) = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the cross-DC watch returns after the change")
        .unwrap()
        .unwrap();
    assert_eq!(l.len(), 2);
    assert!(m2.index > m.index);

    // Unknown DC.
    let err = c1.catalog_service("db", &dc("nowhere")).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("No path to datacenter"), "{err}");

    // One of dc2's two gateways stops: lookups from dc1 still succeed.
    let gw2a_addr = gw2a.addr;
    gw2a.stop().await;
    for _ in 0..10 {
        let (l, _) = c1.catalog_service("db", &dc("dc2")).await.unwrap();
        assert_eq!(l.len(), 2);
    }
    // Both stop: the clear error, within the bound.
    gw2b.stop().await;
    let t0 = Instant::now();
    let err = c1.catalog_service("db", &dc("dc2")).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("no dc2 gateway: error after {took:?}");
    assert_eq!(err.status(), Some(500));
    assert!(
        err.to_string()
            .contains("Remote DC has no server currently reachable"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // One comes back on its address: lookups recover, nothing else restarted.
    let gw2a = wan_gateway::start(gateway_config(
        "dc2",
        dc2.urls(),
        vec![gw1.addr.to_string()],
        gw2a_addr,
    ))
    .await
    .unwrap();
    wait_until(Duration::from_secs(15), "dc2 reachable again", || async {
        let (l, _) = c1.catalog_service("db", &dc("dc2")).await.ok()?;
        (l.len() == 2).then_some(())
    })
    .await;

    // A third DC whose gateway joins only dc2's gateway shows up in dc1.
    let dc3 = TestCluster::builder(1).dc("dc3").start().await;
    dc3.wait_leader().await;
    let gw3 = wan_gateway::start(gateway_config(
        "dc3",
        dc3.urls(),
        vec![gw2a.addr.to_string()],
        any_port(),
    ))
    .await
    .unwrap();
    dc3.set_gateways(&[gw3.url()]);
    wait_until(Duration::from_secs(15), "dc3 visible in dc1", || async {
        let l = datacenters(&c1).await;
        (l.first().map(String::as_str) == Some("dc1") && l.contains(&"dc3".to_string()))
            .then_some(())
    })
    .await;
    dc3.client(0)
        .catalog_register(&reg("n3", "cache", "cache-3"), None)
        .await
        .unwrap();
    let (l, _) = c1.catalog_service("cache", &dc("dc3")).await.unwrap();
    assert_eq!(l.len(), 1, "dc1 reaches dc3 through dc2's gateway's gossip");

    a1.stop().await;
    a2.stop().await;
    for g in [gw1, gw2a, gw3] {
        g.stop().await;
    }
    dc3.shutdown().await;
    dc2.shutdown().await;
    dc1.shutdown().await;
}
