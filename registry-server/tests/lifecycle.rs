//! Leave, force-leave and join with real servers (in-process, on the in-memory network) and
//! real client agents:
//!
//! - an agent's `PUT /v1/agent/leave` removes its node from the catalog and stops it;
//! - the leader of three leaves: leadership moves, the configuration is two voters, its node
//!   is gone, and the two commit; the only server of a cluster leaves without touching its
//!   configuration and leads again when restarted;
//! - force-leave removes a failed node at once, with and without `?prune` (also asked of an
//!   agent, which passes it to the servers), keeps an alive one, and answers Consul's error
//!   for a node that is not a member; a failed server leaves the Raft configuration too;
//! - an agent started with no servers joins one and then registers; a server started alone
//!   joins a cluster through its join endpoint.

use registry_api::{CatalogService, Node, RaftConfiguration, RegistryClient};
use registry_client::{ClientConfig, ClientHandle};
use registry_server::{ServerConfig, TransportKind};
use registry_testkit::cluster::*;
use registry_testkit::never_within;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn start_agent(name: &str, c: &TestCluster) -> ClientHandle {
    registry_client::start(c.agent_config(name, None))
        .await
        .unwrap()
}

async fn call(method: reqwest::Method, url: &str) -> (u16, String) {
    let resp = registry_api::tls::plain_client()
        .request(method.clone(), url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn put(url: &str) -> (u16, String) {
    put_body(url, "").await
}

async fn put_body(url: &str, body: &str) -> (u16, String) {
    let resp = registry_api::tls::plain_client()
        .put(url)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Registers `service` (a registration body) through the agent at `base`; a 200 or the
/// test fails.
async fn register(base: &str, service: &str) {
    let url = format!("{base}/v1/agent/service/register");
    let (code, body) = put_body(&url, service).await;
    assert_eq!(code, 200, "{body}");
}

/// Whether `node` is in the catalog, as `c` reads it (default mode).
async fn has_node(c: &RegistryClient, node: &str) -> Option<bool> {
    let (nodes, _): (Vec<Node>, _) = c.get("/v1/catalog/nodes", &Default::default()).await.ok()?;
    Some(nodes.iter().any(|n| n.node == node))
}

async fn configuration(c: &RegistryClient) -> Option<RaftConfiguration> {
    c.raft_configuration().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_leaves_its_node_is_gone_and_it_stops() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let agent = start_agent("leaver", &c).await;
    let base = format!("http://{}", agent.http_addr);
    register(&base, r#"{"Name":"web","Port":80}"#).await;
    let server = c.client(0);
    wait_until(WAIT, "the agent's node is in the catalog", || async {
        has_node(&server, "leaver").await == Some(true)
    })
    .await;

    let (code, body) = put(&format!("{base}/v1/agent/leave")).await;
    assert_eq!((code, body.as_str()), (200, ""));
    // The deregistration was applied before the answer.
    assert_eq!(has_node(&server, "leaver").await, Some(false));
    let (web, _): (Vec<CatalogService>, _) = server
        .get("/v1/catalog/service/web", &Default::default())
        .await
        .unwrap();
    assert!(web.is_empty(), "{web:?}");
    tokio::time::timeout(WAIT, agent.stopped())
        .await
        .expect("the agent did not stop");
    agent.stop().await;
    // Nothing brings it back (no sync, no heartbeat, no liveness write): watched past the
    // 1 s liveness timeout of the test servers.
    never_within(
        Duration::from_millis(1500),
        "the node came back",
        || async { (has_node(&server, "leaver").await != Some(false)).then_some("leaver") },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_of_three_leaves_and_two_voters_go_on() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let leaver_id = format!("{:016x}", c.status(leader).id);
    let leaver_name = c.names[leader].clone();
    let (code, body) = put(&format!("{}/v1/agent/leave", c.node(leader).url())).await;
    assert_eq!((code, body.as_str()), (200, ""), "{body}");
    tokio::time::timeout(WAIT, c.node(leader).stopped())
        .await
        .expect("the server did not stop after leaving");
    c.stop(leader).await;

    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader_among(&rest, WAIT).await;
    let client = c.client(new_leader);
    let conf = wait_until(WAIT, "a configuration of two voters", || async {
        configuration(&client)
            .await
            .filter(|conf| conf.servers.iter().filter(|s| s.voter).count() == 2)
    })
    .await;
    assert!(
        conf.servers.iter().all(|s| s.id != leaver_id),
        "{leaver_id} is still in {conf:?}"
    );
    assert_eq!(has_node(&client, &leaver_name).await, Some(false));
    let consul: Vec<CatalogService> = wait_until(WAIT, "two consul instances", || async {
        let (list, _): (Vec<CatalogService>, _) = client
            .get("/v1/catalog/service/consul", &Default::default())
            .await
            .ok()?;
        (list.len() == 2).then_some(list)
    })
    .await;
    assert!(consul.iter().all(|s| s.node != leaver_name));
    // The two still commit.
    assert!(client
        .catalog_register(&reg("after-leave", "db", "db1"), None)
        .await
        .unwrap());
    let other = c.client(*rest.iter().find(|i| **i != new_leader).unwrap());
    wait_until(WAIT, "the write on the other server", || async {
        has_node(&other, "after-leave").await == Some(true)
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_server_leaves_and_keeps_its_configuration() {
    let mut c = TestCluster::start(1).await;
    c.wait_leader().await;
    let id = format!("{:016x}", c.status(0).id);
    let (code, body) = put(&format!("{}/v1/agent/leave", c.node(0).url())).await;
    assert_eq!((code, body.as_str()), (200, ""));
    tokio::time::timeout(WAIT, c.node(0).stopped())
        .await
        .expect("the server did not stop");
    c.stop(0).await;
    c.restart(0).await;
    c.wait_leader().await;
    let conf = configuration(&c.client(0)).await.unwrap();
    assert_eq!(conf.servers.len(), 1);
    assert_eq!(conf.servers[0].id, id);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_leave_removes_failed_nodes_and_keeps_alive_ones() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let server = c.client(0);
    let a = start_agent("failed-a", &c).await;
    let b = start_agent("failed-b", &c).await;
    let alive = start_agent("alive", &c).await;
    for node in ["failed-a", "failed-b", "alive"] {
        wait_until(WAIT, "the agents' nodes are passing", || async {
            serf_status(&server, node, &Default::default())
                .await
                .as_deref()
                == Some("passing")
        })
        .await;
    }
    a.stop().await;
    b.stop().await;
    for node in ["failed-a", "failed-b"] {
        wait_until(WAIT, "the stopped agents' nodes are critical", || async {
            serf_status(&server, node, &Default::default())
                .await
                .as_deref()
                == Some("critical")
        })
        .await;
    }
    let url = |node: &str| format!("{}/v1/agent/force-leave/{node}", c.node(0).url());

    // A failed node, asked of a server: gone at once.
    assert_eq!(put(&url("failed-a")).await, (200, String::new()));
    assert_eq!(has_node(&server, "failed-a").await, Some(false));
    // With ?prune, asked of an agent (which passes it to the servers): the same.
    let via_agent = format!(
        "http://{}/v1/agent/force-leave/failed-b?prune",
        alive.http_addr
    );
    assert_eq!(put(&via_agent).await, (200, String::new()));
    assert_eq!(has_node(&server, "failed-b").await, Some(false));
    // An alive node stays (it would refute the leave).
    assert_eq!(put(&url("alive")).await.0, 200);
    assert_eq!(has_node(&server, "alive").await, Some(true));
    assert_eq!(
        serf_status(&server, "alive", &Default::default())
            .await
            .as_deref(),
        Some("passing")
    );
    // Not a member: Consul's error, from a server and through an agent alike.
    let (code, body) = put(&url("nosuch")).await;
    assert_eq!(code, 500);
    assert_eq!(body, "agent: No node found with name 'nosuch'");
    let (code, body) = put(&format!(
        "http://{}/v1/agent/force-leave/nosuch",
        alive.http_addr
    ))
    .await;
    assert_eq!(
        (code, body.as_str()),
        (500, "agent: No node found with name 'nosuch'")
    );
    // A node registered through the catalog (no agent) is not a member either.
    assert!(server
        .catalog_register(&reg("external", "db", "db1"), None)
        .await
        .unwrap());
    assert_eq!(put(&url("external")).await.0, 500);
    assert_eq!(has_node(&server, "external").await, Some(true));
    alive.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_leave_takes_a_failed_server_out_of_the_configuration() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let gone = (leader + 1) % 3;
    let gone_name = c.names[gone].clone();
    let gone_id = format!("{:016x}", c.status(gone).id);
    c.stop(gone).await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != gone).collect();
    let leader = c.wait_leader_among(&rest, WAIT).await;
    let client = c.client(leader);
    wait_until(WAIT, "the stopped server's node is critical", || async {
        serf_status(&client, &gone_name, &Default::default())
            .await
            .as_deref()
            == Some("critical")
    })
    .await;
    // Asked of the follower that is left: it proposes through the leader.
    let follower = *rest.iter().find(|i| **i != leader).unwrap();
    let (code, body) = put(&format!(
        "{}/v1/agent/force-leave/{gone_name}",
        c.node(follower).url()
    ))
    .await;
    assert_eq!(code, 200, "{body}");
    let conf = configuration(&client).await.unwrap();
    assert_eq!(conf.servers.len(), 2, "{conf:?}");
    assert!(conf.servers.iter().all(|s| s.id != gone_id));
    assert_eq!(has_node(&client, &gone_name).await, Some(false));
    assert!(client
        .catalog_register(&reg("after-force-leave", "db", "db1"), None)
        .await
        .unwrap());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_servers_joins_one_and_registers() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let cfg = ClientConfig {
        retry_join: Vec::new(),
        ..c.agent_config("joiner", None)
    };
    let agent = registry_client::start(cfg).await.unwrap();
    let base = format!("http://{}", agent.http_addr);
    register(&base, r#"{"Name":"late","Port":81}"#).await;
    // Without a server nothing is forwarded.
    let (code, _) = call(reqwest::Method::GET, &format!("{base}/v1/catalog/nodes")).await;
    assert_eq!(code, 500);

    let (code, body) = put(&format!("{base}/v1/agent/join/{}", c.node(0).http_addr)).await;
    assert_eq!((code, body.as_str()), (200, ""));
    let server = c.client(0);
    wait_until(
        WAIT,
        "the joined agent's service in the catalog",
        || async {
            let (list, _): (Vec<CatalogService>, _) = server
                .get("/v1/catalog/service/late", &Default::default())
                .await
                .ok()?;
            (list.len() == 1 && list[0].node == "joiner").then_some(())
        },
    )
    .await;
    wait_until(WAIT, "its node passing", || async {
        serf_status(&server, "joiner", &Default::default())
            .await
            .as_deref()
            == Some("passing")
    })
    .await;
    // And it forwards now.
    let (code, _) = call(reqwest::Method::GET, &format!("{base}/v1/catalog/nodes")).await;
    assert_eq!(code, 200);
    agent.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_started_alone_joins_a_cluster_through_its_join_endpoint() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("s4");
    cfg.data_dir = Some(dir.path().to_path_buf());
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.advertise = Some("s4".into());
    // It knows no member of the cluster: only an address where nobody answers.
    cfg.retry_join = vec!["nobody".into()];
    cfg.tuning = c.tuning.clone();
    cfg.liveness = fast_liveness();
    cfg.agent_heartbeat_interval = Duration::from_millis(100);
    cfg.transport = TransportKind::Mem(c.net.clone());
    let s4 = registry_server::start(cfg).await.unwrap();
    let s4_id = format!("{:016x}", s4.id);
    let client = c.client(leader);
    let (code, body) = put(&format!("{}/v1/agent/join/{}", s4.url(), c.names[leader])).await;
    assert_eq!((code, body.as_str()), (200, ""));
    wait_until(WAIT, "s4 a voter of the configuration", || async {
        configuration(&client)
            .await
            .filter(|conf| conf.servers.iter().any(|s| s.id == s4_id && s.voter))
    })
    .await;
    let (code, body) = put(&format!("{}/v1/agent/join/s1?wan=1", s4.url())).await;
    assert_eq!(code, 400, "{body}");
    s4.stop().await;
    c.shutdown().await;
}
