//! Anti-entropy against a fake server: pushing, repairing, removing strangers, recovering,
//! and persistence across agent restarts.

mod common;

use common::*;
use registry_api::{AgentService, HealthCheck, RegisterRequest};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn stranger_registration(node: &str) -> RegisterRequest {
    RegisterRequest {
        node: node.into(),
        address: "127.0.0.1".into(),
        service: Some(AgentService {
            id: "stale".into(),
            service: "stale".into(),
            ..Default::default()
        }),
        checks: vec![
            HealthCheck {
                check_id: "serfHealth".into(),
                name: "Serf Health Status".into(),
                status: "passing".into(),
                ..Default::default()
            },
            HealthCheck {
                check_id: "stale-node-check".into(),
                status: "passing".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn removes_what_the_agent_does_not_know_but_never_serf_health() {
    let server = FakeServer::start().await;
    {
        let mut c = server.catalog();
        c.register(stranger_registration("n1"));
        // Another node's entries are not this agent's business.
        c.register(stranger_registration("n2"));
    }
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    api.put("/v1/agent/service/register", r#"{"Name":"web","Port":80}"#)
        .await;
    wait_until(
        WAIT,
        "the stale service and check of n1 are removed",
        || async {
            let c = server.catalog();
            let services = c.node_services("n1");
            let checks = c.node_checks("n1");
            !services.contains_key("stale")
                && services.contains_key("web")
                && !checks.contains_key("stale-node-check")
        },
    )
    .await;
    // Several more full syncs: serfHealth stays, n2 is untouched.
    let reads = server.catalog().node_reads;
    wait_until(WAIT, "three more full syncs", || async {
        server.catalog().node_reads >= reads + 3
    })
    .await;
    {
        let c = server.catalog();
        assert!(c.node_checks("n1").contains_key("serfHealth"));
        assert!(c.node_services("n2").contains_key("stale"));
        assert_eq!(c.node_checks("n2").len(), 2);
    }
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_in_sync_catalog_gets_no_writes_and_a_lost_one_is_repaired() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    api.put(
        "/v1/agent/service/register",
        r#"{"Name":"web","Tags":["a"],"Checks":[{"TTL":"30s","Status":"passing"},{"TTL":"30s"}]}"#,
    )
    .await;
    api.put(
        "/v1/agent/check/register",
        r#"{"Name":"node-ttl","TTL":"30s"}"#,
    )
    .await;
    wait_until(WAIT, "the catalog has everything", || async {
        let c = server.catalog();
        c.node_services("n1").contains_key("web")
            && ["service:web:1", "service:web:2", "node-ttl"]
                .iter()
                .all(|id| c.node_checks("n1").contains_key(*id))
    })
    .await;
    {
        let c = server.catalog();
        assert_eq!(c.node_checks("n1")["service:web:1"].status, "passing");
        assert_eq!(c.node_checks("n1")["service:web:2"].status, "critical");
    }

    // Let a full sync settle, then several full syncs must not write anything.
    let reads = server.catalog().node_reads;
    wait_until(WAIT, "a full sync", || async {
        server.catalog().node_reads > reads
    })
    .await;
    let (writes, reads) = {
        let c = server.catalog();
        (c.writes, c.node_reads)
    };
    wait_until(WAIT, "three more full syncs", || async {
        server.catalog().node_reads >= reads + 3
    })
    .await;
    assert_eq!(
        server.catalog().writes,
        writes,
        "an in-sync catalog got writes"
    );

    // The catalog loses this node (servers wiped): the next full sync puts it all back.
    {
        let mut c = server.catalog();
        c.nodes.clear();
        c.services.clear();
        c.checks.clear();
    }
    wait_until(WAIT, "the catalog is repaired", || async {
        let c = server.catalog();
        c.nodes.contains_key("n1")
            && c.node_services("n1").contains_key("web")
            && c.node_checks("n1").len() == 3
    })
    .await;
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn recovers_when_the_server_comes_up_later() {
    let addr = dead_addr().await;
    let agent = start_agent(test_config("n1", &[addr])).await;
    let api = Api::new(agent.http_addr);
    let (code, text) = api
        .put(
            "/v1/agent/service/register",
            r#"{"Name":"early","Check":{"TTL":"30s"}}"#,
        )
        .await;
    assert_eq!(code, 200, "registration must not need the servers: {text}");
    // Forwarded requests fail with a plain-text 500 while no server answers.
    let (code, text) = api.get("/v1/kv/x").await;
    assert_eq!(code, 500);
    assert!(text.contains("all servers unreachable"), "{text}");

    let server = FakeServer::start_with(addr, Default::default()).await;
    wait_until(WAIT, "the late server receives the service", || async {
        let c = server.catalog();
        c.node_services("n1").contains_key("early")
            && c.node_checks("n1").contains_key("service:early")
    })
    .await;
    wait_until(WAIT, "heartbeats arrive too", || async {
        !server.catalog().heartbeats.is_empty()
    })
    .await;
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_agent_brings_back_its_services_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let mut config = test_config("n1", &[server.addr]);
    config.data_dir = Some(dir.path().to_path_buf());

    let agent = start_agent(config.clone()).await;
    let api = Api::new(agent.http_addr);
    let body = format!(
        r#"{{"Name":"web","Port":80,"Meta":{{"k":"v"}},"Checks":[
            {{"CheckID":"web-http","HTTP":"http://{}/health","Interval":"1s"}},
            {{"CheckID":"web-ttl","TTL":"30s"}}]}}"#,
        target.addr
    );
    assert_eq!(api.put("/v1/agent/service/register", &body).await.0, 200);
    api.put(
        "/v1/agent/check/register",
        r#"{"ID":"node-ttl","Name":"node ttl","TTL":"30s","Notes":"n"}"#,
    )
    .await;
    api.put("/v1/agent/maintenance?enable=true&reason=r", "")
        .await;
    let before: std::collections::BTreeMap<String, HealthCheck> =
        api.get_json("/v1/agent/checks").await;
    agent.stop().await;
    assert!(dir.path().join("services.json").exists());
    assert!(dir.path().join("checks.json").exists());

    // A new agent on the same data dir, against a server that lost everything.
    server.stop().await;
    let server = FakeServer::start().await;
    config.retry_join = vec![server.addr.to_string()];
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);
    let services: std::collections::BTreeMap<String, registry_api::AgentServiceInfo> =
        api.get_json("/v1/agent/services").await;
    assert_eq!(services["web"].port, 80);
    assert_eq!(services["web"].meta["k"], "v");
    let after: std::collections::BTreeMap<String, HealthCheck> =
        api.get_json("/v1/agent/checks").await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(after["node-ttl"].name, "node ttl");
    assert_eq!(after["node-ttl"].notes, "n");
    assert_eq!(after["_node_maintenance"].notes, "r");
    // The runners are back: the HTTP check passes again, the TTL check takes updates.
    assert_eq!(api.put("/v1/agent/check/pass/web-ttl", "").await.0, 200);
    wait_until(
        WAIT,
        "the new catalog gets everything, with live statuses",
        || async {
            let c = server.catalog();
            let checks = c.node_checks("n1");
            c.node_services("n1").contains_key("web")
                && checks.len() == 4
                && checks.get("web-http").map(|c| c.status.as_str()) == Some("passing")
                && checks.get("web-ttl").map(|c| c.status.as_str()) == Some("passing")
        },
    )
    .await;
    agent.stop().await;
    target.stop().await;
    server.stop().await;
}
