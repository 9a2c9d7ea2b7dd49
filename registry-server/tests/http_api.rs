//! The HTTP API's shapes and its handling of bad input: the right 4xx with a
//! plain-text reason, no panic, nothing half-applied.

use registry_api::{CatalogService, HealthCheck, Node, QueryOptions, ServiceEntry};
use registry_testkit::cluster::*;
use serde_json::Value;
use std::collections::BTreeMap;

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .http
            .request(m, format!("{}{}", self.base, path))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.text().await.unwrap(), headers)
    }
    async fn put(&self, path: &str, body: &str) -> (u16, String) {
        let (s, b, _) = self.send("PUT", path, body.as_bytes().to_vec()).await;
        (s, b)
    }
    async fn get(&self, path: &str) -> (u16, String) {
        let (s, b, _) = self.send("GET", path, vec![]).await;
        (s, b)
    }
}

async fn one_server() -> (TestCluster, Api) {
    let c = TestCluster::builder(1).agents(false).start().await;
    let leader = c.wait_leader().await;
    let api = Api {
        base: c.node(leader).url(),
        http: registry_api::tls::plain_client(),
    };
    (c, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_health_endpoints_have_consul_shapes() {
    let (c, api) = one_server().await;
    // Field names in any case, as Consul clients send them.
    let (s, b) = api
        .put(
            "/v1/catalog/register",
            r#"{"node":"n1","ADDRESS":"10.1.1.1","NodeMeta":{"rack":"r1"},
                "Service":{"service":"web","Tags":["a","b"],"port":80,"Meta":{"Version":"2"}},
                "Checks":[{"Name":"web alive","ServiceID":"web","Status":"passing"},
                          {"CheckID":"disk","Name":"disk","Status":"warning"}]}"#,
        )
        .await;
    assert_eq!((s, b.as_str()), (200, "true"));
    api.put(
        "/v1/catalog/register",
        r#"{"Node":"n2","Address":"10.1.1.2","Service":{"Service":"web","Tags":["a"],"Port":81},
            "Check":{"Name":"web alive","ServiceID":"web","Status":"critical"}}"#,
    )
    .await;

    let (s, b) = api.get("/v1/catalog/service/web").await;
    assert_eq!(s, 200);
    let list: Vec<CatalogService> = serde_json::from_str(&b).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].node, "n1");
    assert_eq!(list[0].address, "10.1.1.1");
    assert_eq!(list[0].datacenter, "dc1");
    assert_eq!(list[0].service_id, "web");
    assert_eq!(list[0].service_port, 80);
    assert_eq!(
        list[0].service_meta.get("Version").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        list[0].node_meta.get("rack").map(String::as_str),
        Some("r1")
    );
    let raw: Vec<Value> = serde_json::from_str(&b).unwrap();
    assert!(
        raw[1]["ServiceMeta"].is_object(),
        "empty maps are {{}}, not null"
    );
    assert!(raw[1]["ServiceTags"].is_array());

    let (_, b) = api.get("/v1/catalog/service/web?tag=b").await;
    let tagged: Vec<CatalogService> = serde_json::from_str(&b).unwrap();
    assert_eq!(
        tagged.iter().map(|s| s.node.as_str()).collect::<Vec<_>>(),
        vec!["n1"]
    );

    let (_, b) = api.get("/v1/catalog/services").await;
    let services: BTreeMap<String, Vec<String>> = serde_json::from_str(&b).unwrap();
    assert_eq!(services["web"], vec!["a", "b"]);

    let (_, b) = api.get("/v1/catalog/nodes").await;
    let nodes: Vec<Node> = serde_json::from_str(&b).unwrap();
    assert_eq!(nodes.len(), 2);

    let (_, b) = api.get("/v1/catalog/node/n1").await;
    let node: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(node["Node"]["Node"], "n1");
    assert_eq!(node["Services"]["web"]["Port"], 80);
    let (s, b) = api.get("/v1/catalog/node/nope").await;
    assert_eq!((s, b.as_str()), (200, "null"));
    let (_, b) = api.get("/v1/catalog/node-services/n2").await;
    let ns: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(ns["Services"][0]["Service"], "web");

    // Health: n1's instance passes its own check but its node has a warning
    // check, so ?passing drops it; n2's check is critical.
    let (_, b) = api.get("/v1/health/service/web").await;
    let entries: Vec<ServiceEntry> = serde_json::from_str(&b).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].checks.len(), 2, "node check + service check");
    let (_, b) = api.get("/v1/health/service/web?passing").await;
    let passing: Vec<ServiceEntry> = serde_json::from_str(&b).unwrap();
    assert!(passing.is_empty(), "{passing:?}");
    api.put(
        "/v1/catalog/register",
        r#"{"Node":"n1","Address":"10.1.1.1","Check":{"CheckID":"disk","Name":"disk","Status":"passing"}}"#,
    )
    .await;
    let (_, b) = api.get("/v1/health/service/web?passing").await;
    let passing: Vec<ServiceEntry> = serde_json::from_str(&b).unwrap();
    assert_eq!(
        passing
            .iter()
            .map(|e| e.node.node.as_str())
            .collect::<Vec<_>>(),
        vec!["n1"]
    );

    let (_, b) = api.get("/v1/health/checks/web").await;
    let checks: Vec<HealthCheck> = serde_json::from_str(&b).unwrap();
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c.service_name == "web"));
    let (_, b) = api.get("/v1/health/node/n1").await;
    let checks: Vec<HealthCheck> = serde_json::from_str(&b).unwrap();
    assert_eq!(checks.len(), 2);
    let (_, b) = api.get("/v1/health/state/critical").await;
    let checks: Vec<HealthCheck> = serde_json::from_str(&b).unwrap();
    assert_eq!(
        checks.iter().map(|c| c.node.as_str()).collect::<Vec<_>>(),
        vec!["n2"]
    );
    let (s, _) = api.get("/v1/health/state/bogus").await;
    assert_eq!(s, 400);

    // Deregister one instance, then a whole node.
    let (s, _) = api
        .put(
            "/v1/catalog/deregister",
            r#"{"Node":"n1","ServiceID":"web"}"#,
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = api.get("/v1/health/checks/web").await;
    let checks: Vec<HealthCheck> = serde_json::from_str(&b).unwrap();
    assert_eq!(checks.len(), 1, "the instance's checks went with it");
    api.put("/v1/catalog/deregister", r#"{"Node":"n2"}"#).await;
    let (_, b) = api.get("/v1/catalog/service/web").await;
    assert_eq!(b, "[]");

    let (_, b) = api.get("/v1/catalog/datacenters").await;
    assert_eq!(b, r#"["dc1"]"#);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let (c, api) = one_server().await;
    api.put(
        "/v1/catalog/register",
        r#"{"Node":"keep","Address":"10.0.0.9"}"#,
    )
    .await;
    let (_, before) = api.get("/v1/catalog/nodes").await;

    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("PUT", r#"{"Node":"#, 400, "Request decode failed"),
        ("PUT", r#"[1,2]"#, 400, "Request decode failed"),
        ("PUT", r#"{"Node":5}"#, 400, "Request decode failed"),
        (
            "PUT",
            r#"{"Node":"n","Address":"a","Service":{"Service":"s","Port":"80"}}"#,
            400,
            "Request decode failed",
        ),
        (
            "PUT",
            r#"{"Node":"n","Address":"a","Service":{"Service":"s","Port":70000}}"#,
            400,
            "Request decode failed",
        ),
        ("PUT", r#"{"Address":"10.0.0.1"}"#, 400, "Must provide node"),
        ("PUT", r#"{"Node":"n"}"#, 400, "Must provide address"),
        (
            "PUT",
            r#"{"Node":"n","Address":"a","Service":{"Port":1}}"#,
            400,
            "Must provide service name",
        ),
        (
            "PUT",
            r#"{"Node":"n","Address":"a","Check":{"Name":"c","Status":"sideways"}}"#,
            400,
            "Invalid check status",
        ),
    ];
    for (method, body, want_status, want_text) in cases {
        let (s, text, h) = api
            .send(method, "/v1/catalog/register", body.as_bytes().to_vec())
            .await;
        assert_eq!(s, want_status, "{body} -> {text}");
        assert!(
            text.contains(want_text),
            "{body} -> {text:?}, want {want_text:?}"
        );
        let ct = h
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(ct.starts_with("text/plain"), "{body}: content-type {ct:?}");
    }
    // A check for a service that does not exist is rejected as a whole: the
    // node in the same request is not created either.
    let (s, text) = api
        .put(
            "/v1/catalog/register",
            r#"{"Node":"half","Address":"10.0.0.5","Check":{"Name":"c","ServiceID":"ghost","Status":"passing"}}"#,
        )
        .await;
    assert_eq!(s, 400, "{text}");
    let (_, after) = api.get("/v1/catalog/nodes").await;
    let before_nodes: Vec<Node> = serde_json::from_str(&before).unwrap();
    let after_nodes: Vec<Node> = serde_json::from_str(&after).unwrap();
    assert_eq!(before_nodes, after_nodes, "nothing half-applied");

    // Oversized body.
    let big = format!(r#"{{"Node":"big","Address":"{}"}}"#, "x".repeat(600 * 1024));
    let (s, text) = api.put("/v1/catalog/register", &big).await;
    assert_eq!(s, 413, "{text}");
    assert!(!text.is_empty());
    // Unknown path and wrong method.
    let (s, text) = api.get("/v1/nope").await;
    assert_eq!(s, 404);
    assert!(!text.is_empty());
    let (s, text, h) = api.send("GET", "/v1/catalog/register", vec![]).await;
    assert_eq!(s, 405);
    assert!(h.get("allow").unwrap().to_str().unwrap().contains("PUT"));
    assert!(text.contains("not allowed"), "{text}");
    // Bad query parameters.
    assert_eq!(api.get("/v1/catalog/nodes?index=abc").await.0, 400);
    assert_eq!(
        api.get("/v1/catalog/nodes?index=1&wait=forever").await.0,
        400
    );
    let (s, text) = api.get("/v1/catalog/nodes?dc=nowhere").await;
    assert_eq!((s, text.as_str()), (500, "No path to datacenter"));
    let (s, _) = api
        .send("DELETE", "/v1/operator/raft/peer", vec![])
        .await
        .into_two();
    assert_eq!(s, 400);
    let (_, after) = api.get("/v1/catalog/nodes").await;
    assert_eq!(before, after);
    // The server still works.
    let opts = QueryOptions::default();
    assert_eq!(c.client(0).catalog_nodes(&opts).await.unwrap().0.len(), 1);
    c.shutdown().await;
}

trait IntoTwo {
    fn into_two(self) -> (u16, String);
}

impl IntoTwo for (u16, String, reqwest::header::HeaderMap) {
    fn into_two(self) -> (u16, String) {
        (self.0, self.1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_reregistration_does_not_move_the_index() {
    let (c, api) = one_server().await;
    let body = r#"{"Node":"n1","Address":"10.0.0.1","Service":{"Service":"web","Port":80}}"#;
    api.put("/v1/catalog/register", body).await;
    let client = c.client(0);
    let (_, m1) = client
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap();
    api.put("/v1/catalog/register", body).await;
    let (_, m2) = client
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        m1.index, m2.index,
        "anti-entropy re-registers; watchers must not wake"
    );
    c.shutdown().await;
}
