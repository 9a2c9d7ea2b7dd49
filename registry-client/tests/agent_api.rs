//! The agent endpoints: registration, validation, TTL updates, maintenance, self and members.

mod common;

use common::*;
use registry_api::{AgentMember, AgentSelf, AgentServiceChecksInfo, AgentServiceInfo, HealthCheck};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

type Services = BTreeMap<String, AgentServiceInfo>;
type Checks = BTreeMap<String, HealthCheck>;

#[tokio::test]
async fn service_with_http_check_is_listed_and_reaches_the_catalog() {
    let server = FakeServer::start().await;
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);

    let body = format!(
        r#"{{"Name":"web","ID":"web1","Tags":["v1"],"Port":8080,"Meta":{{"Version":"1"}},
            "Check":{{"HTTP":"http://{}/health","Interval":"1s"}}}}"#,
        target.addr
    );
    assert_eq!(api.put("/v1/agent/service/register", &body).await.0, 200);

    let services: Services = api.get_json("/v1/agent/services").await;
    let web = &services["web1"];
    assert_eq!((web.service.as_str(), web.port), ("web", 8080));
    assert_eq!(web.datacenter, "dc1");
    assert_eq!(web.meta["Version"], "1");
    let one: AgentServiceInfo = api.get_json("/v1/agent/service/web1").await;
    assert_eq!(&one, web);

    let checks: Checks = api.get_json("/v1/agent/checks").await;
    let check = &checks["service:web1"];
    assert_eq!(check.name, "Service 'web' check");
    assert_eq!(check.node, "n1");
    assert_eq!(check.service_name, "web");
    assert_eq!(check.service_tags, vec!["v1".to_string()]);
    assert_eq!(check.check_type, "http");

    wait_until(WAIT, "the check passes locally", || async {
        let checks: Checks = api.get_json("/v1/agent/checks").await;
        checks["service:web1"].status == "passing"
    })
    .await;
    wait_until(
        WAIT,
        "the catalog has the service and its passing check",
        || async {
            let c = server.catalog();
            c.node_services("n1").get("web1").map(|s| s.port) == Some(8080)
                && c.node_checks("n1")
                    .get("service:web1")
                    .map(|c| c.status.clone())
                    == Some("passing".into())
                && c.nodes.get("n1").map(|n| n.address.clone()) == Some("127.0.0.1".into())
        },
    )
    .await;

    // The target goes away: the check turns critical, locally and in the catalog.
    let target_addr = target.addr;
    target.stop().await;
    wait_until(WAIT, "the catalog sees the check critical", || async {
        server
            .catalog()
            .node_checks("n1")
            .get("service:web1")
            .map(|c| c.status.clone())
            == Some("critical".into())
    })
    .await;
    let (code, _) = api.get("/v1/agent/health/service/name/web").await;
    assert_eq!(code, 503);

    // And back.
    let target = Target::start(target_addr).await;
    wait_until(WAIT, "the catalog sees the check passing again", || async {
        server
            .catalog()
            .node_checks("n1")
            .get("service:web1")
            .map(|c| c.status.clone())
            == Some("passing".into())
    })
    .await;
    let (code, text) = api.get("/v1/agent/health/service/name/web").await;
    assert_eq!(code, 200, "{text}");
    let entries: Vec<AgentServiceChecksInfo> = serde_json::from_str(&text).unwrap();
    assert_eq!(entries[0].aggregated_status, "passing");
    assert_eq!(entries[0].service.id, "web1");
    assert_eq!(api.get("/v1/agent/health/service/name/nope").await.0, 404);

    agent.stop().await;
    target.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn bodies_are_case_insensitive() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    for (i, body) in [
        r#"{"name":"a","port":1,"check":{"ttl":"10s"}}"#,
        r#"{"NAME":"b","PORT":2,"CHECKS":[{"TTL":"10s","NAME":"bc"}]}"#,
        r#"{"Name":"c","Port":3,"Check":{"Ttl":"10s","CheckId":"cc"}}"#,
    ]
    .iter()
    .enumerate()
    {
        let (code, text) = api.put("/v1/agent/service/register", body).await;
        assert_eq!(code, 200, "{body}: {text}");
        let services: Services = api.get_json("/v1/agent/services").await;
        assert_eq!(services.len(), i + 1);
    }
    let checks: Checks = api.get_json("/v1/agent/checks").await;
    let ids: Vec<&str> = checks.keys().map(String::as_str).collect();
    assert_eq!(ids, ["cc", "service:a", "service:b"]);
    assert_eq!(checks["service:b"].name, "bc");
    assert_eq!(
        api.put(
            "/v1/agent/check/register",
            r#"{"name":"mem","ttl":"5s","serviceid":"a"}"#
        )
        .await
        .0,
        200
    );
    let checks: Checks = api.get_json("/v1/agent/checks").await;
    assert_eq!(checks["mem"].service_id, "a");
    assert_eq!(checks["mem"].service_name, "a");
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_400_and_change_nothing() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    assert_eq!(
        api.put(
            "/v1/agent/service/register",
            r#"{"Name":"keep","Check":{"TTL":"5s"}}"#
        )
        .await
        .0,
        200
    );
    let before_services: Services = api.get_json("/v1/agent/services").await;
    let before_checks: Checks = api.get_json("/v1/agent/checks").await;

    for (body, reason) in [
        ("", "empty"),
        ("{", "Request decode failed"),
        (r#"{"Port":80}"#, "Missing service name"),
        (r#"{"Name":"x","Port":"eighty"}"#, "Request decode failed"),
        (r#"{"Name":"x","Port":70000}"#, "Request decode failed"),
        // The second check is bad: the first must not be installed either.
        (
            r#"{"Name":"x","Checks":[{"TTL":"5s"},{"HTTP":"http://x"}]}"#,
            "Interval must be > 0",
        ),
        (
            r#"{"Name":"x","Check":{"TTL":"5s","Status":"bogus"}}"#,
            "Invalid check status",
        ),
        (
            r#"{"Name":"x","Check":{"TTL":"5s","Interval":"1s"}}"#,
            "cannot both",
        ),
        (
            r#"{"Name":"x","Check":{"Args":["/bin/true"],"Interval":"1s"}}"#,
            "Scripts are disabled",
        ),
        (r#"{"Name":"keep","Check":{"TTL":"nope"}}"#, "Invalid TTL"),
    ] {
        let (code, text) = api.put("/v1/agent/service/register", body).await;
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
    }
    for (body, reason) in [
        (r#"{"TTL":"5s"}"#, "Missing check name"),
        (
            r#"{"Name":"c","TTL":"5s","ServiceID":"ghost"}"#,
            "does not exist",
        ),
        (r#"{"Name":"c"}"#, "TTL must be > 0"),
    ] {
        let (code, text) = api.put("/v1/agent/check/register", body).await;
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
    }
    let after_services: Services = api.get_json("/v1/agent/services").await;
    let after_checks: Checks = api.get_json("/v1/agent/checks").await;
    assert_eq!(before_services, after_services);
    assert_eq!(
        before_checks.keys().collect::<Vec<_>>(),
        after_checks.keys().collect::<Vec<_>>()
    );

    // Wrong method: 405 with Allow; oversized body: 413.
    let r = api
        .http
        .post(format!("{}/v1/agent/service/register", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers().get("allow").is_some());
    let big = format!(
        r#"{{"Name":"big","Meta":{{"x":"{}"}}}}"#,
        "x".repeat(600 * 1024)
    );
    assert_eq!(api.put("/v1/agent/service/register", &big).await.0, 413);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn deregistration_and_unknown_ids() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let (code, text) = api.put("/v1/agent/service/deregister/ghost", "").await;
    assert_eq!(code, 404);
    assert!(text.contains("Unknown service ID"), "{text}");
    assert_eq!(api.put("/v1/agent/check/deregister/ghost", "").await.0, 404);
    assert_eq!(api.get("/v1/agent/service/ghost").await.0, 404);
    assert_eq!(api.put("/v1/agent/check/pass/ghost", "").await.0, 404);

    api.put(
        "/v1/agent/service/register",
        r#"{"Name":"web","Check":{"TTL":"30s"}}"#,
    )
    .await;
    wait_until(WAIT, "the catalog has web", || async {
        server.catalog().node_services("n1").contains_key("web")
    })
    .await;
    assert_eq!(api.put("/v1/agent/service/deregister/web", "").await.0, 200);
    let services: Services = api.get_json("/v1/agent/services").await;
    assert!(services.is_empty());
    let checks: Checks = api.get_json("/v1/agent/checks").await;
    assert!(
        checks.is_empty(),
        "the service's checks go with it: {checks:?}"
    );
    wait_until(WAIT, "the catalog drops web and its check", || async {
        let c = server.catalog();
        c.node_services("n1").is_empty() && c.node_checks("n1").is_empty()
    })
    .await;
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn ttl_checks_take_pass_warn_fail_and_update() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    api.put(
        "/v1/agent/service/register",
        r#"{"Name":"api","Check":{"CheckID":"api-ttl","TTL":"30s"}}"#,
    )
    .await;
    let status = |checks: &Checks| {
        let c = &checks["api-ttl"];
        (c.status.clone(), c.output.clone())
    };
    let checks: Checks = api.get_json("/v1/agent/checks").await;
    assert_eq!(status(&checks).0, "critical", "TTL checks start critical");

    for (path, body, want) in [
        (
            "/v1/agent/check/pass/api-ttl?note=all%20good",
            "",
            ("passing", "all good"),
        ),
        ("/v1/agent/check/warn/api-ttl", "", ("warning", "")),
        (
            "/v1/agent/check/fail/api-ttl?note=down",
            "",
            ("critical", "down"),
        ),
        (
            "/v1/agent/check/update/api-ttl",
            r#"{"status":"passing","output":"fine"}"#,
            ("passing", "fine"),
        ),
    ] {
        let (code, text) = api.put(path, body).await;
        assert_eq!(code, 200, "{path}: {text}");
        let checks: Checks = api.get_json("/v1/agent/checks").await;
        assert_eq!(
            status(&checks),
            (want.0.to_string(), want.1.to_string()),
            "{path}"
        );
    }
    let (code, text) = api
        .put("/v1/agent/check/update/api-ttl", r#"{"Status":"bogus"}"#)
        .await;
    assert_eq!(code, 400, "{text}");
    wait_until(WAIT, "the catalog has the last TTL status", || async {
        server
            .catalog()
            .node_checks("n1")
            .get("api-ttl")
            .map(|c| (c.status.clone(), c.output.clone()))
            == Some(("passing".into(), "fine".into()))
    })
    .await;

    // A TTL update on a non-TTL check is a 400.
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    api.put(
        "/v1/agent/check/register",
        &format!(
            r#"{{"Name":"tcp","TCP":"{}","Interval":"1s"}}"#,
            target.addr
        ),
    )
    .await;
    let (code, text) = api.put("/v1/agent/check/pass/tcp", "").await;
    assert_eq!(code, 400, "{text}");
    agent.stop().await;
    target.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn maintenance_adds_and_removes_critical_checks() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    api.put(
        "/v1/agent/service/register",
        r#"{"Name":"web","Check":{"TTL":"30s","Status":"passing"}}"#,
    )
    .await;

    assert_eq!(api.put("/v1/agent/maintenance", "").await.0, 400);
    assert_eq!(
        api.put("/v1/agent/maintenance?enable=maybe", "").await.0,
        400
    );
    assert_eq!(
        api.put("/v1/agent/maintenance?enable=true&reason=patching", "")
            .await
            .0,
        200
    );
    let checks: Checks = api.get_json("/v1/agent/checks").await;
    let m = &checks["_node_maintenance"];
    assert_eq!(
        (m.name.as_str(), m.status.as_str(), m.notes.as_str()),
        ("Node Maintenance Mode", "critical", "patching")
    );
    assert_eq!(api.get("/v1/agent/health/service/name/web").await.0, 503);

    assert_eq!(
        api.put("/v1/agent/service/maintenance/ghost?enable=true", "")
            .await
            .0,
        404
    );
    assert_eq!(
        api.put("/v1/agent/service/maintenance/web?enable=true", "")
            .await
            .0,
        200
    );
    let checks: Checks = api.get_json("/v1/agent/checks").await;
    let s = &checks["_service_maintenance:web"];
    assert_eq!(s.service_id, "web");
    assert_eq!(s.status, "critical");
    assert!(s.notes.contains("no reason was provided"), "{}", s.notes);
    wait_until(WAIT, "the catalog has both maintenance checks", || async {
        let c = server.catalog().node_checks("n1");
        c.contains_key("_node_maintenance") && c.contains_key("_service_maintenance:web")
    })
    .await;

    assert_eq!(
        api.put("/v1/agent/maintenance?enable=false", "").await.0,
        200
    );
    assert_eq!(
        api.put("/v1/agent/service/maintenance/web?enable=false", "")
            .await
            .0,
        200
    );
    let checks: Checks = api.get_json("/v1/agent/checks").await;
    assert_eq!(checks.keys().collect::<Vec<_>>(), ["service:web"]);
    wait_until(
        WAIT,
        "the catalog drops both maintenance checks",
        || async {
            let c = server.catalog().node_checks("n1");
            !c.contains_key("_node_maintenance") && !c.contains_key("_service_maintenance:web")
        },
    )
    .await;
    assert_eq!(api.get("/v1/agent/health/service/name/web").await.0, 200);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn self_and_members() {
    let server = FakeServer::start().await;
    {
        let mut c = server.catalog();
        for (node, status) in [("alive-node", "passing"), ("dead-node", "critical")] {
            c.register(registry_api::RegisterRequest {
                node: node.into(),
                address: format!("10.0.0.{}", node.len()),
                checks: vec![HealthCheck {
                    check_id: "serfHealth".into(),
                    status: status.into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        // Registered through the catalog API, not by an agent: not a member.
        c.register(registry_api::RegisterRequest {
            node: "external".into(),
            address: "10.9.9.9".into(),
            ..Default::default()
        });
    }
    let mut config = test_config("n1", &[server.addr]);
    config.advertise_addr = "10.1.1.1".into();
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);

    let me: AgentSelf = api.get_json("/v1/agent/self").await;
    assert_eq!(me.config.node_name, "n1");
    assert_eq!(me.config.datacenter, "dc1");
    assert!(!me.config.server);
    assert_eq!(me.member.addr, "10.1.1.1");
    assert_eq!(me.member.status, 1);

    let members: Vec<AgentMember> = api.get_json("/v1/agent/members").await;
    let by_name: BTreeMap<&str, &AgentMember> =
        members.iter().map(|m| (m.name.as_str(), m)).collect();
    assert_eq!(by_name["alive-node"].status, 1);
    assert_eq!(by_name["dead-node"].status, 4);
    assert_eq!(by_name["n1"].status, 1);
    assert_eq!(by_name["n1"].port, 8301);
    assert_eq!(by_name["alive-node"].tags["dc"], "dc1");
    assert!(!by_name.contains_key("external"));
    agent.stop().await;

    // Members need the servers: without them it is a 500 with a reason.
    let dead = dead_addr().await;
    let agent = start_agent(test_config("n1", &[dead])).await;
    let api = Api::new(agent.http_addr);
    let (code, text) = api.get("/v1/agent/members").await;
    assert_eq!(code, 500);
    assert!(text.contains("unreachable"), "{text}");
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn critical_services_are_reaped_after_the_configured_time() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    api.put(
        "/v1/agent/service/register",
        r#"{"Name":"doomed","Check":{"TTL":"30s","DeregisterCriticalServiceAfter":"1s"}}"#,
    )
    .await;
    api.put("/v1/agent/service/register", r#"{"Name":"healthy","Check":{"TTL":"30s","Status":"passing","DeregisterCriticalServiceAfter":"1s"}}"#)
        .await;
    wait_until(
        WAIT,
        "the critical service is deregistered locally and in the catalog",
        || async {
            let services: Services = api.get_json("/v1/agent/services").await;
            !services.contains_key("doomed")
                && !server.catalog().node_services("n1").contains_key("doomed")
        },
    )
    .await;
    let services: Services = api.get_json("/v1/agent/services").await;
    assert!(services.contains_key("healthy"));
    agent.stop().await;
    server.stop().await;
}
