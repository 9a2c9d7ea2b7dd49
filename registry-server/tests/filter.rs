//! `?filter=` (Consul's filter language) and `?node-meta=` on the catalog and health
//! reads, every endpoint Consul's docs list `filter` for (catalog nodes, services, service,
//! connect, node, node-services; health node, checks, service, connect, ingress, state): a
//! table of expressions per endpoint with the ids each must return, and invalid
//! expressions that must be a 400 with the reason. Every query of a table runs against one
//! applied state, so an answer cache keyed without the filter would answer them all alike.

use registry_testkit::cluster::*;
use serde_json::Value;
use std::collections::BTreeSet;

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// GET `path` with the query pairs, encoded.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .query(query)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn put(&self, path: &str, body: &str) {
        let resp = self
            .http
            .put(format!("{}{}", self.base, path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}: {body}");
    }
}

/// Three nodes: n1 (rack r1, prod) with web1 [v1 primary] port 80 and a warning disk check,
/// n2 (rack r2, prod) with web2 [v2] port 81 whose check is critical, n3 (rack r1, dev) with
/// db1 [primary].
async fn seeded() -> (TestCluster, Api) {
    let c = TestCluster::builder(1).agents(false).start().await;
    let leader = c.wait_leader().await;
    let api = Api {
        base: c.node(leader).url(),
        http: registry_api::tls::plain_client(),
    };
    api.put(
        "/v1/catalog/register",
        r#"{"Node":"n1","Address":"10.1.1.1","NodeMeta":{"rack":"r1","env":"prod"},
            "Service":{"ID":"web1","Service":"web","Tags":["v1","primary"],"Port":80,
                       "Meta":{"version":"1"}},
            "Checks":[{"CheckID":"web-n1","Name":"web alive","ServiceID":"web1","Status":"passing"},
                      {"CheckID":"disk","Name":"disk","Status":"warning"}]}"#,
    )
    .await;
    api.put(
        "/v1/catalog/register",
        r#"{"Node":"n2","Address":"10.1.1.2","NodeMeta":{"rack":"r2","env":"prod"},
            "Service":{"ID":"web2","Service":"web","Tags":["v2"],"Port":81,"Meta":{"version":"2"}},
            "Check":{"CheckID":"web-n2","Name":"web alive","ServiceID":"web2","Status":"critical"}}"#,
    )
    .await;
    api.put(
        "/v1/catalog/register",
        r#"{"Node":"n3","Address":"10.1.1.3","NodeMeta":{"rack":"r1","env":"dev"},
            "Service":{"ID":"db1","Service":"db","Tags":["primary"],"Port":5432}}"#,
    )
    .await;
    (c, api)
}

/// One row: the query pairs and the ids expected (among the seeded ones: the server's own
/// node and checks may be listed too, and are not counted).
type Row<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

/// Runs `rows` against `path`; `id` names an item of the answer.
async fn table(api: &Api, path: &str, rows: &[Row<'_>], id: impl Fn(&Value) -> String) {
    let seeded: BTreeSet<&str> = [
        "n1", "n2", "n3", "web", "db", "web1", "web2", "db1", "web-n1", "web-n2", "disk",
    ]
    .into();
    for (query, want) in rows {
        let (status, body) = api.get(path, query).await;
        assert_eq!(status, 200, "{path} {query:?}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let items: Vec<Value> = match v {
            Value::Array(a) => a,
            Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| Value::from(vec![Value::from(k), v]))
                .collect(),
            other => panic!("{path}: {other}"),
        };
        let got: BTreeSet<String> = items
            .iter()
            .map(&id)
            .filter(|i| seeded.contains(i.as_str()))
            .collect();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{path} {query:?}");
    }
}

fn field(name: &'static str) -> impl Fn(&Value) -> String {
    move |v| v[name].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_node_meta_select_what_consul_would() {
    let (_c, api) = seeded().await;

    let f = |e: &'static str| -> [(&'static str, &'static str); 1] { [("filter", e)] };
    table(
        &api,
        "/v1/catalog/nodes",
        &[
            (&[], &["n1", "n2", "n3"]),
            (&f("Meta.rack == r1"), &["n1", "n3"]),
            (&f("Meta.rack == \"r1\" and Meta.env == prod"), &["n1"]),
            (&f("Meta.env == dev or Node == n2"), &["n2", "n3"]),
            (&f("not Meta.rack == r1"), &["n2"]),
            (&f("Node matches \"^n[12]$\""), &["n1", "n2"]),
            (&f("\"10.1.1.\" in Address"), &["n1", "n2", "n3"]),
            (&f("Meta.rack is empty and Node == n1"), &[]),
            (&[("node-meta", "rack:r1")], &["n1", "n3"]),
            (
                &[("node-meta", "rack:r1"), ("node-meta", "env:dev")],
                &["n3"],
            ),
            (
                &[("filter", "Meta.rack == r1"), ("node-meta", "env:prod")],
                &["n1"],
            ),
        ],
        field("Node"),
    )
    .await;

    table(
        &api,
        "/v1/catalog/services",
        &[
            (&[], &["web", "db"]),
            (&f("ServiceTags contains primary"), &["web", "db"]),
            (&f("ServiceMeta.version == \"2\""), &["web"]),
            (&f("ServiceName == db"), &["db"]),
            (&[("node-meta", "env:dev")], &["db"]),
        ],
        |v| v[0].as_str().unwrap_or_default().to_string(),
    )
    .await;
    // Only the matching instances' tags.
    let (_, body) = api
        .get("/v1/catalog/services", &f("ServiceMeta.version == \"2\""))
        .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["web"], serde_json::json!(["v2"]), "{body}");

    table(
        &api,
        "/v1/catalog/service/web",
        &[
            (&[], &["web1", "web2"]),
            (&f("ServiceTags contains v1"), &["web1"]),
            (&f("v1 not in ServiceTags"), &["web2"]),
            (&f("NodeMeta.rack == r2"), &["web2"]),
            (&f("ServicePort == 81"), &["web2"]),
            (&f("ServiceMeta.version != \"1\""), &["web2"]),
            (
                &f("ServiceName == web and (Node == n1 or Node == n2)"),
                &["web1", "web2"],
            ),
            (&[("node-meta", "rack:r1")], &["web1"]),
            (
                &[("tag", "primary"), ("filter", "ServicePort == 80")],
                &["web1"],
            ),
        ],
        field("ServiceID"),
    )
    .await;

    table(
        &api,
        "/v1/health/service/web",
        &[
            (&[], &["web1", "web2"]),
            (&f("Checks.Status == critical"), &["web2"]),
            (&f("Checks.Status == warning"), &["web1"]),
            (&f("Checks.Status != critical"), &["web1"]),
            (
                &f("Service.Tags contains primary and Node.Meta.env == prod"),
                &["web1"],
            ),
            (
                &f("Service.Port == 80 or Service.Port == 81"),
                &["web1", "web2"],
            ),
            (
                &f("Service.Meta.version matches `^[12]$`"),
                &["web1", "web2"],
            ),
            (&[("node-meta", "rack:r2")], &["web2"]),
        ],
        |v| v["Service"]["ID"].as_str().unwrap_or_default().to_string(),
    )
    .await;

    table(
        &api,
        "/v1/health/checks/web",
        &[
            (&[], &["n1", "n2"]),
            (&f("Status == passing"), &["n1"]),
            (&f("Node == n2"), &["n2"]),
            (&[("node-meta", "rack:r1")], &["n1"]),
        ],
        field("Node"),
    )
    .await;

    table(
        &api,
        "/v1/health/node/n1",
        &[
            (&[], &["web-n1", "disk"]),
            (&f("Status == warning"), &["disk"]),
            (&f("ServiceName is empty"), &["disk"]),
            (&f("ServiceTags contains v1"), &["web-n1"]),
        ],
        field("CheckID"),
    )
    .await;

    table(
        &api,
        "/v1/health/state/any",
        &[
            (&[], &["web-n1", "web-n2", "disk"]),
            (&f("Node == n2"), &["web-n2"]),
            (&f("Status != passing"), &["web-n2", "disk"]),
            (&[("node-meta", "rack:r1")], &["web-n1", "disk"]),
            (&[("node-meta", "env:dev")], &[]),
        ],
        field("CheckID"),
    )
    .await;
    table(
        &api,
        "/v1/health/state/critical",
        &[(&f("Node == n1"), &[]), (&f("Node == n2"), &["web-n2"])],
        field("CheckID"),
    )
    .await;

    // catalog/node/:node filters its services.
    let (s, body) = api
        .get("/v1/catalog/node/n1", &f("Service == web and Port == 80"))
        .await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["Services"]["web1"].is_object(), "{body}");
    let (_, body) = api.get("/v1/catalog/node/n1", &f("Port == 81")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["Services"], serde_json::json!({}), "{body}");

    // catalog/node-services/:node filters its list of services, with the same selectors.
    for (expr, want) in [
        ("Service == web and Port == 80", vec!["web1"]),
        ("Tags contains primary", vec!["web1"]),
        ("Meta.version == \"1\"", vec!["web1"]),
        ("Port == 81", vec![]),
    ] {
        let (s, body) = api.get("/v1/catalog/node-services/n1", &f(expr)).await;
        assert_eq!(s, 200, "{expr}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let ids: Vec<&str> = v["Services"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["ID"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(ids, want, "node-services {expr}: {body}");
        assert_eq!(v["Node"]["Node"], "n1", "{body}");
    }

    // The reads of features we do not have take the filter of the endpoints they mirror
    // (catalog/service, health/service) and answer none.
    for (path, expr) in [
        ("/v1/catalog/connect/web", "ServiceName == web"),
        ("/v1/health/connect/web", "Service.Service == web"),
        ("/v1/health/ingress/web", "Checks.Status == passing"),
    ] {
        let (s, body) = api.get(path, &f(expr)).await;
        assert_eq!((s, body.as_str()), (200, "[]"), "{path} {expr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filters_are_a_400_with_the_reason() {
    let (_c, api) = seeded().await;
    let rows: &[(&str, &str, &str)] = &[
        (
            "/v1/catalog/nodes",
            "Foo == bar",
            "Selector \"Foo\" is not valid",
        ),
        (
            "/v1/catalog/nodes",
            "Node.Meta.rack == r1",
            "Selector \"Node.Meta.rack\" is not valid",
        ),
        ("/v1/catalog/nodes", "Node ==", "no match found"),
        ("/v1/catalog/nodes", "Node == host-name", "no match found"),
        (
            "/v1/catalog/services",
            "Service == web",
            "Selector \"Service\" is not valid",
        ),
        (
            "/v1/catalog/service/web",
            "ServiceTags == v1",
            "Invalid match operator \"Equal\"",
        ),
        (
            "/v1/catalog/service/web",
            "ServicePort == eighty",
            "Failed to convert value",
        ),
        ("/v1/catalog/node/n1", "ServiceName == web", "is not valid"),
        (
            "/v1/health/service/web",
            "Checks.Status = passing",
            "no match found",
        ),
        (
            "/v1/health/service/web",
            "(Service.ID == web1",
            "expected \")\"",
        ),
        (
            "/v1/health/checks/web",
            "Status matches \"[\"",
            "Failed to compile regular expression",
        ),
        (
            "/v1/health/node/n1",
            "Checks.Status == passing",
            "is not valid",
        ),
        (
            "/v1/health/state/any",
            "Status == passing and",
            "no match found",
        ),
        (
            "/v1/catalog/node-services/n1",
            "ServiceName == web",
            "Selector \"ServiceName\" is not valid",
        ),
        (
            "/v1/catalog/connect/web",
            "Service.ID == web1",
            "Selector \"Service.ID\" is not valid",
        ),
        (
            "/v1/health/connect/web",
            "NoSuchField == 1",
            "Selector \"NoSuchField\" is not valid",
        ),
        (
            "/v1/health/ingress/web",
            "ServiceName == web",
            "Selector \"ServiceName\" is not valid",
        ),
    ];
    for (path, expr, reason) in rows {
        let (status, body) = api.get(path, &[("filter", expr)]).await;
        assert_eq!(status, 400, "{path} {expr:?}: {body}");
        assert!(
            body.starts_with("Failed to create boolean expression evaluator: ")
                && body.contains(reason),
            "{path} {expr:?}: {body:?} lacks {reason:?}"
        );
    }
    // An empty filter is none, as in Consul.
    let (status, body) = api.get("/v1/catalog/nodes", &[("filter", "")]).await;
    assert_eq!(status, 200, "{body}");
}
