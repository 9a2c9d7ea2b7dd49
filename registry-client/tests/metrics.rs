//! `GET /v1/agent/metrics` on a client agent: check runs counted by check type and result,
//! the agent's own requests timed by route, Consul's JSON shape and Prometheus text.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The count of counter `name` with `labels` in the JSON answer (0 when absent).
fn counter(json: &serde_json::Value, name: &str, labels: &[(&str, &str)]) -> u64 {
    let summary: registry_api::metrics::MetricsSummary =
        serde_json::from_value(json.clone()).unwrap();
    summary.counter(name, labels)
}

#[tokio::test]
async fn check_runs_are_counted_by_type_and_result() {
    let server = FakeServer::start().await;
    let ok = FixedAnswer::start(200, "ok").await;
    let busy = FixedAnswer::start(429, "busy").await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let dead = dead_addr().await;
    for (name, body) in [
        (
            "ok",
            format!(
                r#"{{"Name":"ok","Check":{{"HTTP":"http://{}/","Interval":"1s"}}}}"#,
                ok.addr
            ),
        ),
        (
            "busy",
            format!(
                r#"{{"Name":"busy","Check":{{"HTTP":"http://{}/","Interval":"1s"}}}}"#,
                busy.addr
            ),
        ),
        (
            "down",
            format!(
                r#"{{"Name":"down","Check":{{"TCP":"{}","Interval":"1s"}}}}"#,
                dead
            ),
        ),
    ] {
        let (status, text) = api.put("/v1/agent/service/register", &body).await;
        assert_eq!(status, 200, "{name}: {text}");
    }
    let json = wait_until(WAIT, "runs of every kind counted", || async {
        let json: serde_json::Value = api.get_json("/v1/agent/metrics").await;
        let name = "consul.agent.checks.runs";
        (counter(&json, name, &[("type", "http"), ("status", "passing")]) >= 2
            && counter(&json, name, &[("type", "http"), ("status", "warning")]) >= 2
            && counter(&json, name, &[("type", "tcp"), ("status", "critical")]) >= 2)
            .then_some(json)
    })
    .await;
    for field in ["Timestamp", "Gauges", "Points", "Counters", "Samples"] {
        assert!(json.get(field).is_some(), "{field}");
    }
    // No run of the passing target counted as anything else.
    assert_eq!(
        counter(
            &json,
            "consul.agent.checks.runs",
            &[("type", "tcp"), ("status", "passing")]
        ),
        0
    );
    // The agent's own requests, by route template.
    let registered = json["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["Name"] == "consul.api.http"
                && s["Labels"]["method"] == "PUT"
                && s["Labels"]["path"] == "v1_agent_service_register"
        })
        .expect("the registrations were timed");
    assert_eq!(registered["Count"], 3);
    let gauge = json["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == "consul.agent.services")
        .expect("consul.agent.services");
    assert_eq!(gauge["Value"], 3.0);

    // The same numbers as Prometheus text.
    let (status, text) = api.get("/v1/agent/metrics?format=prometheus").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE consul_agent_checks_runs counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"consul_agent_checks_runs_total{type="tcp",status="critical"}"#),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}
