//! `?filter=` on the agent's own lists (`/v1/agent/services`, `/v1/agent/checks`), with
//! Consul's selectors for them; a bad expression is a 400 with the reason.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};

/// `path?filter=<expr>`, encoded.
fn filtered(path: &str, expr: &str) -> String {
    let url = reqwest::Url::parse_with_params(&format!("http://x{path}"), &[("filter", expr)])
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
    format!("{path}?{}", url.query().unwrap_or_default())
}

#[tokio::test]
async fn agent_services_and_checks_take_a_filter() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    for body in [
        r#"{"Name":"web","ID":"web1","Tags":["v1","primary"],"Port":80,"Meta":{"version":"1"},
            "Check":{"Ttl":"30s","CheckID":"web1-ttl"}}"#,
        r#"{"Name":"web","ID":"web2","Tags":["v2"],"Port":81,"Meta":{"version":"2"}}"#,
        r#"{"Name":"db","ID":"db1","Tags":["primary"],"Port":5432}"#,
    ] {
        assert_eq!(api.put("/v1/agent/service/register", body).await.0, 200);
    }

    let rows: &[(&str, &[&str])] = &[
        ("", &["web1", "web2", "db1"]),
        ("Service == web", &["web1", "web2"]),
        ("primary in Tags", &["web1", "db1"]),
        ("Tags contains primary and Service == web", &["web1"]),
        ("Meta.version == \"2\" or Port == 5432", &["web2", "db1"]),
        ("not Meta is empty", &["web1", "web2"]),
        ("Service matches \"^w\" and Port != 80", &["web2"]),
    ];
    for (expr, want) in rows {
        let services: BTreeMap<String, serde_json::Value> =
            api.get_json(&filtered("/v1/agent/services", expr)).await;
        let got: BTreeSet<&str> = services.keys().map(String::as_str).collect();
        assert_eq!(got, want.iter().copied().collect(), "{expr:?}");
    }

    let checks: BTreeMap<String, serde_json::Value> = api
        .get_json(&filtered("/v1/agent/checks", "ServiceID == web1"))
        .await;
    assert_eq!(checks.keys().collect::<Vec<_>>(), ["web1-ttl"]);
    let checks: BTreeMap<String, serde_json::Value> = api
        .get_json(&filtered("/v1/agent/checks", "ServiceID == db1"))
        .await;
    assert!(checks.is_empty(), "{checks:?}");
    // The other selectors agent/check.mdx lists, on a node check and a service check.
    assert_eq!(
        api.put(
            "/v1/agent/check/register",
            r#"{"ID":"disk","Name":"disk space","Notes":"df","TTL":"30s"}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(api.put("/v1/agent/check/warn/disk", "").await.0, 200);
    let rows: &[(&str, &[&str])] = &[
        ("", &["web1-ttl", "disk"]),
        ("Status == warning", &["disk"]),
        ("Status != warning", &["web1-ttl"]),
        ("Name matches \"^disk\"", &["disk"]),
        ("Notes == df", &["disk"]),
        (
            "CheckID == disk or ServiceName == web",
            &["web1-ttl", "disk"],
        ),
        ("primary in ServiceTags", &["web1-ttl"]),
        ("ServiceTags is empty", &["disk"]),
        ("Node == n1 and ServiceID is empty", &["disk"]),
    ];
    for (expr, want) in rows {
        let checks: BTreeMap<String, serde_json::Value> =
            api.get_json(&filtered("/v1/agent/checks", expr)).await;
        let got: BTreeSet<&str> = checks.keys().map(String::as_str).collect();
        assert_eq!(got, want.iter().copied().collect(), "checks {expr:?}");
    }

    for (path, expr, reason) in [
        (
            "/v1/agent/services",
            "Foo == bar",
            "Selector \"Foo\" is not valid",
        ),
        (
            "/v1/agent/services",
            "Tags == v1",
            "Invalid match operator \"Equal\"",
        ),
        ("/v1/agent/services", "foo", "no match found"),
        (
            "/v1/agent/checks",
            "Service == web",
            "Selector \"Service\" is not valid",
        ),
        (
            "/v1/agent/checks",
            "ServiceTags == v1",
            "Invalid match operator \"Equal\"",
        ),
        ("/v1/agent/checks", "Status ==", "no match found"),
    ] {
        let (status, body) = api.get(&filtered(path, expr)).await;
        assert_eq!(status, 400, "{path} {expr:?}: {body}");
        assert!(body.contains(reason), "{path} {expr:?}: {body}");
    }
}
