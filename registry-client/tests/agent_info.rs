//! The agent's own facts and one instance's health, in Consul's shapes and codes:
//! `/v1/agent/version`, `/v1/agent/host` and `/v1/agent/health/service/id/:id` (200 passing,
//! 429 warning, 503 critical, 404 unknown; `?format=text` answers the bare status).

mod common;

use common::*;
use registry_api::AgentServiceChecksInfo;
use serde_json::Value;

#[tokio::test]
async fn version_names_this_build() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let (code, body) = api.get("/v1/agent/version").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    for field in ["SHA", "BuildDate", "HumanVersion", "FIPS"] {
        assert!(
            v[field].is_string(),
            "{field} missing or not a string in {v}"
        );
    }
    assert_eq!(v["HumanVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["FIPS"], "");
}

#[tokio::test]
async fn host_has_consuls_sections() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let (code, body) = api.get("/v1/agent/host").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["CPU"].is_array(), "{v}");
    assert!(v["Errors"].is_array(), "{v}");
    assert!(v["CollectionTime"].as_u64().unwrap_or(0) > 0, "{v}");
    for field in ["total", "available", "used", "usedPercent", "free"] {
        assert!(v["Memory"][field].is_number(), "Memory.{field} in {v}");
    }
    for field in [
        "hostname",
        "uptime",
        "bootTime",
        "procs",
        "os",
        "kernelVersion",
    ] {
        assert!(v["Host"].get(field).is_some(), "Host.{field} in {v}");
    }
    for field in ["path", "fstype", "total", "free", "used", "usedPercent"] {
        assert!(v["Disk"].get(field).is_some(), "Disk.{field} in {v}");
    }
    // On Linux, what /proc gives is filled in.
    if cfg!(target_os = "linux") {
        assert!(v["Memory"]["total"].as_u64().unwrap_or(0) > 0, "{v}");
        assert!(!v["CPU"].as_array().unwrap().is_empty(), "{v}");
        assert_eq!(v["Host"]["os"], "linux");
    }
}

#[tokio::test]
async fn health_by_id_answers_consuls_codes_and_text() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    // Two instances of one service: each id answers for itself only.
    for (id, check) in [("api1", "ttl1"), ("api2", "ttl2")] {
        let body =
            format!(r#"{{"Name":"api","ID":"{id}","Check":{{"CheckID":"{check}","TTL":"30s"}}}}"#);
        assert_eq!(api.put("/v1/agent/service/register", &body).await.0, 200);
    }
    assert_eq!(api.put("/v1/agent/check/pass/ttl2", "").await.0, 200);

    for (verb, status, code) in [
        ("pass", "passing", 200),
        ("warn", "warning", 429),
        ("fail", "critical", 503),
    ] {
        let (c, text) = api.put(&format!("/v1/agent/check/{verb}/ttl1"), "").await;
        assert_eq!(c, 200, "{text}");
        let (c, body) = api.get("/v1/agent/health/service/id/api1").await;
        assert_eq!(c, code, "{status}: {body}");
        let info: AgentServiceChecksInfo = serde_json::from_str(&body).unwrap();
        assert_eq!(info.aggregated_status, status);
        assert_eq!(info.service.id, "api1");
        let ids: Vec<&str> = info.checks.iter().map(|c| c.check_id.as_str()).collect();
        assert_eq!(ids, vec!["ttl1"], "only api1's own checks");
        let (c, text) = api
            .get("/v1/agent/health/service/id/api1?format=text")
            .await;
        assert_eq!((c, text.as_str()), (code, status));
    }
    // The other instance is unaffected by api1's failing check.
    let (c, text) = api
        .get("/v1/agent/health/service/id/api2?format=text")
        .await;
    assert_eq!((c, text.as_str()), (200, "passing"));

    let (c, body) = api.get("/v1/agent/health/service/id/nope").await;
    assert_eq!(c, 404, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["AggregatedStatus"], "critical");
    let (c, text) = api
        .get("/v1/agent/health/service/id/nope?format=text")
        .await;
    assert_eq!((c, text.as_str()), (404, "ServiceId nope not found"));
}
