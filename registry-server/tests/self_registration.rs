//! Servers in their own catalog, as Consul's leader keeps them: once a
//! leader is named, a read finds the leader's node with `serfHealth` passing
//! and every voter as an instance of the service `consul` on its RPC port
//! (on a `--dev` server, on a cluster, and through an agent joining one); a
//! server removed from the Raft configuration loses its instance.
//!
//! The reads follow the first answer of `/v1/status/leader` at once, with no
//! wait in between: that is what clients and test harnesses do.

use registry_server::ServerConfig;
use registry_testkit::cluster::{wait_until, TestCluster};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// GETs `url` and returns its JSON body (panics on a transport error or a
/// non-200 status, naming the URL).
async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let resp = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "GET {url}: {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// Polls `/v1/status/leader` at `base` (every 2 ms) until it names a leader;
/// returns the leader's address.
async fn first_leader(http: &reqwest::Client, base: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = http.get(format!("{base}/v1/status/leader")).send().await {
            if let Ok(Value::String(leader)) = resp.json::<Value>().await {
                if !leader.is_empty() {
                    return leader;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader named at {base}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The status of check `serfHealth` in a `/v1/health/node/<node>` answer.
fn serf_status(checks: &Value) -> Option<String> {
    checks
        .as_array()?
        .iter()
        .find(|c| c["CheckID"] == "serfHealth")
        .and_then(|c| c["Status"].as_str().map(str::to_string))
}

/// `/v1/catalog/service/consul` as (node, service id, port, tags) tuples.
fn consul_instances(list: &Value) -> Vec<(String, String, u64, usize)> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["Node"].as_str().unwrap_or_default().to_string(),
                        s["ServiceID"].as_str().unwrap_or_default().to_string(),
                        s["ServicePort"].as_u64().unwrap_or_default(),
                        s["ServiceTags"]
                            .as_array()
                            .map(Vec::len)
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_server_is_in_its_catalog_as_soon_as_it_names_a_leader() {
    let mut cfg = ServerConfig::new("dev-self");
    cfg.dev = true;
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.rpc_addr = "127.0.0.1:0".parse().unwrap();
    let server = registry_server::start(cfg).await.unwrap();
    let (base, http) = (server.url(), registry_api::tls::plain_client());
    let rpc_port: u64 = server
        .rpc_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the RPC address has a port");

    let leader = first_leader(&http, &base).await;
    assert_eq!(leader, server.rpc_addr);
    // At once, no retry: this is the read that used to come back empty.
    let checks = get_json(&http, &format!("{base}/v1/health/node/dev-self")).await;
    let consul = get_json(&http, &format!("{base}/v1/catalog/service/consul")).await;
    assert_eq!(
        serf_status(&checks).as_deref(),
        Some("passing"),
        "the own node's serfHealth when the leader is named: {checks}"
    );
    assert_eq!(
        consul_instances(&consul),
        vec![("dev-self".to_string(), "consul".to_string(), rpc_port, 0)],
        "the consul service when the leader is named: {consul}"
    );
    let meta = &consul[0]["ServiceMeta"];
    assert_eq!(meta["raft_version"], "3", "{consul}");
    assert!(meta["version"].is_string(), "{consul}");

    // The embedded agent's syncs leave the leader's service alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let consul = get_json(&http, &format!("{base}/v1/catalog/service/consul")).await;
    assert_eq!(consul_instances(&consul).len(), 1, "{consul}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_lists_every_voter_as_consul_once_a_leader_is_named() {
    let c = TestCluster::start(3).await;
    let http = registry_api::tls::plain_client();
    let base = c.node(0).url();
    // Server 0 may be a follower: it names the leader on first contact, and
    // its reads wait (ReadIndex) until the leader has announced itself.
    let leader = first_leader(&http, &base).await;
    let checks = get_json(&http, &format!("{base}/v1/health/node/{leader}")).await;
    let consul = get_json(&http, &format!("{base}/v1/catalog/service/consul")).await;
    assert_eq!(
        serf_status(&checks).as_deref(),
        Some("passing"),
        "the leader's serfHealth when it is named: {checks}"
    );
    let nodes: BTreeSet<String> = consul_instances(&consul)
        .into_iter()
        .map(|(node, id, port, tags)| {
            // The in-memory transport's addresses have no port: the
            // configured RPC port (Consul's 8300) is listed.
            assert_eq!((id.as_str(), port, tags), ("consul", 8300, 0), "{consul}");
            node
        })
        .collect();
    assert_eq!(
        nodes,
        c.names.iter().cloned().collect::<BTreeSet<_>>(),
        "every voter when the leader is named: {consul}"
    );
    // The servers' embedded agents sync every 500 ms here; the `consul`
    // service is the leader's, and an agent's anti-entropy must not remove it
    // as "unknown locally" (three syncs of each agent).
    registry_testkit::never_within(
        Duration::from_millis(1600),
        "a server's consul service missing",
        || async {
            let list = get_json(&http, &format!("{base}/v1/catalog/service/consul")).await;
            (consul_instances(&list).len() != 3).then_some(list)
        },
    )
    .await;
    c.shutdown().await;
}

/// An agent joining a running cluster: once the agent names a leader (its
/// `/v1/status/leader`, which it asks a server), a read through it at once
/// finds its own node with `serfHealth` passing and every voter as `consul`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joining_a_cluster_is_in_the_catalog_once_it_names_a_leader() {
    let c = TestCluster::start(3).await;
    c.wait_leader().await;
    let http = registry_api::tls::plain_client();
    let dir = tempfile::tempdir().unwrap();
    let agent = registry_client::start(c.agent_config("joiner", Some(dir.path())))
        .await
        .unwrap();
    let base = format!("http://{}", agent.http_addr);

    first_leader(&http, &base).await;
    // At once, no retry: what a client of the new agent reads first.
    let checks = get_json(&http, &format!("{base}/v1/health/node/joiner")).await;
    let consul = get_json(&http, &format!("{base}/v1/catalog/service/consul")).await;
    assert_eq!(
        serf_status(&checks).as_deref(),
        Some("passing"),
        "the agent's serfHealth when it names a leader: {checks}"
    );
    let nodes: BTreeSet<String> = consul_instances(&consul)
        .into_iter()
        .map(|(node, ..)| node)
        .collect();
    assert_eq!(
        nodes,
        c.names.iter().cloned().collect::<BTreeSet<_>>(),
        "every voter through the agent: {consul}"
    );
    agent.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_removed_from_the_raft_configuration_loses_its_consul_service() {
    let mut c = TestCluster::start(3).await;
    let http = registry_api::tls::plain_client();
    let leader = c.wait_leader().await;
    let base = c.node(leader).url();
    let consul_nodes = || async {
        let list = get_json(&http, &format!("{base}/v1/catalog/service/consul")).await;
        consul_instances(&list)
            .into_iter()
            .map(|(node, ..)| node)
            .collect::<BTreeSet<String>>()
    };
    let all: BTreeSet<String> = c.names.iter().cloned().collect();
    wait_until(Duration::from_secs(10), "every server listed", || async {
        (consul_nodes().await == all).then_some(())
    })
    .await;

    // A consul instance registered for an external node (no agent, no
    // serfHealth), as Consul's ESM does: not a server of ours, never removed.
    let resp = http
        .put(format!("{base}/v1/catalog/register"))
        .body(r#"{"Node":"esm-node","Address":"192.0.2.9","Service":{"ID":"consul","Service":"consul","Port":8300}}"#)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "external register: {}",
        resp.status()
    );
    let mut all = all;
    all.insert("esm-node".into());

    let gone = (leader + 1) % 3;
    let gone_name = c.names[gone].clone();
    c.stop(gone).await;
    let resp = http
        .delete(format!("{base}/v1/operator/raft/peer?address={gone_name}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "remove peer: {}", resp.status());

    let mut rest = all.clone();
    rest.remove(&gone_name);
    wait_until(
        Duration::from_secs(10),
        "the removed server's consul service gone",
        || async { (consul_nodes().await == rest).then_some(()) },
    )
    .await;
    // Several reconciliation passes later the external one is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        consul_nodes().await,
        rest,
        "the external consul instance was removed"
    );
    c.shutdown().await;
}
