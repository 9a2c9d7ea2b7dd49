//! The Consul compatibility suite (issue 21, "Show it"): for every endpoint a server serves
//! today (the agent endpoints it serves for itself, its lifecycle endpoints, catalog, health,
//! KV, sessions, transactions, events, status, operator, and the Connect and gateway reads of
//! features we do not have), one request and the sample response of Consul's API docs
//! (<https://developer.hashicorp.com/consul/api-docs>, the pages named at each row), checked
//! with [`assert_shape`] for field names, JSON types and presence, never for values that
//! differ by design (ids, indexes, times, addresses, versions). Each row also holds the
//! status code Consul answers and which of its query headers Consul sets ([`Meta`]: its
//! `setMeta`, which the catalog, health, KV and session reads call and the agent, status,
//! operator and write endpoints do not; the event list sets only the index, a read-only
//! transaction only the leader and contact headers).
//!
//! How the samples were copied, once for all rows:
//! - Enterprise-only fields (`Namespace`, `Partition`) are left out: Consul OSS omits them.
//! - The contents of maps of user data (`Meta`, `NodeMeta`, `ServiceMeta`, a node's
//!   `TaggedAddresses`) are whatever a client registered, so a sample keeps such a map as `{}`
//!   (an object, its keys not checked). The keys of an answer that is a map of ids (agent
//!   services and checks, catalog services) are the ids the seed registers, the docs' own.
//! - Where a docs sample is not what Consul sends, Consul wins, noted at the row: a service's
//!   tagged addresses are `{"Address", "Port"}` (Go's `structs.ServiceAddress` has no JSON
//!   tags; the docs' own agent health samples spell them so), and a health check has no `ID`.
//! - A field the docs show and this registry does not send is left out with a note `(not
//!   sent)`; each is in the README's list of differences.
//!
//! The seed registers the docs' own sample payloads first, so no list is empty (an empty list
//! proves no shape): the rows of [`seed`] are writes, checked the same way.
//!
//! Owns: the table of endpoints and samples. Must not touch: what a single endpoint does
//! beyond its shape (each family's own test file has that).

use registry_server::ServerConfig;
use registry_testkit::cluster::*;
use registry_testkit::fakes::shape::{agent_service_sample, assert_shape};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Bound on waiting for the embedded agent's sync to reach the catalog.
const WAIT: Duration = Duration::from_secs(15);

/// The dev server's node name.
const NODE: &str = "compat";

/// Which of Consul's query headers an answer carries.
#[derive(Clone, Copy, Debug)]
enum Meta {
    /// `X-Consul-Index` (at least 1), `X-Consul-KnownLeader` and `X-Consul-LastContact`.
    Query,
    /// `X-Consul-Index` (at least 1) alone required: Consul's event list calls `setIndex`
    /// only (event_endpoint.go), its index the last event's ID folded to 64 bits.
    Index,
    /// `X-Consul-KnownLeader` and `X-Consul-LastContact` without `X-Consul-Index`: a
    /// read-only transaction, which Consul answers with `setLastContact` and
    /// `setKnownLeader` only (txn_endpoint.go: it does not block, so it has no index).
    Contact,
    /// None required (Consul's handler does not call `setMeta`).
    None,
}

/// What the body of an answer must be.
enum Expect {
    /// Empty: Consul's agent writes answer a bare 200.
    Empty,
    /// JSON in the sample's shape; a list or map must not be empty.
    Shape(Value),
    /// A list whose element with `pointer` equal to `value` has the shape of the sample's
    /// first element (the element the docs describe, among others the seed makes).
    Element {
        /// A JSON pointer into one element.
        pointer: &'static str,
        /// The string it must equal.
        value: &'static str,
        /// The docs' sample list.
        sample: Value,
    },
    /// `[]` with the query headers, and a blocking read at its index waits: a feature we do
    /// not have, answered as Consul with it off. The sample is the docs' for when it is on.
    EmptyList(Value),
    /// This text alone as `text/plain` that browsers must not sniff: a KV `?raw` read
    /// (kvs_endpoint.go `KVSGet` sets `Content-Type: text/plain`,
    /// `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`).
    Raw(&'static str),
    /// Exactly this JSON: a write whose answer is its outcome (`true` or `false`), where a
    /// shape would let either pass.
    Equal(Value),
    /// A transaction's answer in the sample's shape, each of the sample's `Results` matched
    /// with the first result of the same kind (`KV`, `Node`, `Service`, `Check`): a list of
    /// results differs by kind, and [`assert_shape`] compares a list's first element only.
    Results(Value),
    /// An object in the sample's shape whose map at `map` (a JSON pointer) is keyed by ids
    /// that differ by design (the sample keeps it as `{}`), every entry of it in the shape of
    /// `entry`.
    Keyed {
        /// The docs' sample, the map's keys left out.
        sample: Value,
        /// A JSON pointer to the map.
        map: &'static str,
        /// The docs' sample of one entry.
        entry: Value,
    },
}

/// One row of the suite: a request and what Consul answers to it.
struct Case {
    /// The HTTP method.
    method: &'static str,
    /// The path and query, as a client sends them.
    path: String,
    /// The request body of a write: JSON, or a string sent as it is (a KV value, an
    /// event's payload).
    body: Option<Value>,
    /// The status Consul answers.
    status: u16,
    /// The query headers Consul sets.
    meta: Meta,
    /// The body Consul answers.
    expect: Expect,
    /// The docs page (under api-docs/) the sample is from.
    doc: &'static str,
}

/// A `GET` row.
fn get(path: impl Into<String>, meta: Meta, expect: Expect, doc: &'static str) -> Case {
    Case {
        method: "GET",
        path: path.into(),
        body: None,
        status: 200,
        meta,
        expect,
        doc,
    }
}

/// A `PUT` row.
fn put(path: impl Into<String>, body: Option<Value>, expect: Expect, doc: &'static str) -> Case {
    Case {
        method: "PUT",
        path: path.into(),
        body,
        status: 200,
        meta: Meta::None,
        expect,
        doc,
    }
}

/// A `DELETE` row (Consul's KV deletes answer `true` or `false`).
fn delete(path: impl Into<String>, expect: Expect, doc: &'static str) -> Case {
    Case {
        method: "DELETE",
        ..put(path, None, expect, doc)
    }
}

impl Case {
    /// The same row with another status.
    fn status(self, status: u16) -> Case {
        Case { status, ..self }
    }

    /// The same row with other query headers.
    fn meta(self, meta: Meta) -> Case {
        Case { meta, ..self }
    }
}

/// The answer to one request.
struct Reply {
    /// Its status.
    status: u16,
    /// Its headers.
    headers: reqwest::header::HeaderMap,
    /// Its body as text.
    text: String,
}

impl Reply {
    /// The body as JSON (panics, naming the request, if it is not).
    fn json(&self, what: &str) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", self.text))
    }

    /// A header as text.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// HTTP to one server.
struct Api {
    /// Its base URL.
    base: String,
    /// Shared client.
    http: reqwest::Client,
}

impl Api {
    fn new(base: String) -> Api {
        Api {
            base,
            http: registry_api::tls::plain_client(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        match body {
            Some(Value::String(raw)) => req = req.body(raw.clone()),
            Some(body) => req = req.body(body.to_string()),
            None => {}
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            text,
        }
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.send("GET", path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.json(path)
    }
}

/// Asserts that `r` carries Consul's query headers.
fn assert_query_headers(r: &Reply, what: &str) {
    assert_index_header(r, what);
    assert_contact_headers(r, what);
}

/// Asserts that `r` carries an `X-Consul-Index` of at least 1 (Consul's `setIndex` never
/// sends 0).
fn assert_index_header(r: &Reply, what: &str) {
    let index: u64 = r
        .header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no X-Consul-Index in {:?}", r.headers));
    assert!(index >= 1, "{what}: X-Consul-Index {index}");
}

/// Asserts that `r` carries `X-Consul-KnownLeader` and `X-Consul-LastContact`.
fn assert_contact_headers(r: &Reply, what: &str) {
    assert!(
        matches!(r.header("x-consul-knownleader"), Some("true" | "false")),
        "{what}: X-Consul-KnownLeader in {:?}",
        r.headers
    );
    assert!(
        r.header("x-consul-lastcontact")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{what}: X-Consul-LastContact in {:?}",
        r.headers
    );
}

/// Sends `case` and checks its status, headers and body; returns the answer's JSON (or
/// `Null` for an empty body).
async fn check(api: &Api, case: &Case) -> Value {
    let what = format!("{} {} ({})", case.method, case.path, case.doc);
    let r = api.send(case.method, &case.path, case.body.as_ref()).await;
    assert_eq!(r.status, case.status, "{what}: {}", r.text);
    match case.meta {
        Meta::Query => assert_query_headers(&r, &what),
        Meta::Index => assert_index_header(&r, &what),
        Meta::Contact => {
            assert_contact_headers(&r, &what);
            assert!(
                r.header("x-consul-index").is_none(),
                "{what}: Consul sends no X-Consul-Index here: {:?}",
                r.headers
            );
        }
        Meta::None => {}
    }
    if let Expect::Empty = case.expect {
        assert_eq!(r.text, "", "{what}: Consul answers no body");
        return Value::Null;
    }
    if let Expect::Raw(text) = case.expect {
        assert_eq!(r.text, text, "{what}");
        for (name, value) in [
            ("content-type", "text/plain"),
            ("x-content-type-options", "nosniff"),
            ("content-security-policy", "sandbox"),
        ] {
            assert_eq!(r.header(name), Some(value), "{what}: {name}");
        }
        return Value::Null;
    }
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{what}: Content-Type {:?}",
        r.header("content-type")
    );
    let body = r.json(&what);
    match &case.expect {
        Expect::Empty | Expect::Raw(_) => {}
        Expect::Shape(sample) => {
            let empty = match &body {
                Value::Array(a) => a.is_empty(),
                Value::Object(m) => m.is_empty(),
                _ => false,
            };
            assert!(!empty, "{what}: an empty answer proves no shape: {body}");
            assert_shape(&body, sample, &what);
        }
        Expect::Element {
            pointer,
            value,
            sample,
        } => {
            let list = body
                .as_array()
                .unwrap_or_else(|| panic!("{what}: not a list: {body}"));
            let item = list
                .iter()
                .find(|e| e.pointer(pointer).and_then(Value::as_str) == Some(*value))
                .unwrap_or_else(|| panic!("{what}: no element with {pointer} = {value}: {body}"));
            assert_shape(item, &sample[0], &what);
        }
        Expect::Equal(expected) => assert_eq!(&body, expected, "{what}"),
        Expect::Results(sample) => {
            let results = body["Results"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no Results: {body}"));
            for s in sample["Results"].as_array().into_iter().flatten() {
                let kind = s
                    .as_object()
                    .and_then(|o| o.keys().next())
                    .unwrap_or_else(|| panic!("{what}: a sample result without a kind: {s}"));
                let found = results
                    .iter()
                    .find(|r| r.get(kind).is_some())
                    .unwrap_or_else(|| panic!("{what}: no {kind} result: {body}"));
                assert_shape(found, s, &format!("{what} Results[{kind}]"));
            }
            assert_shape(
                &body,
                &json!({"Results": [], "Errors": sample["Errors"]}),
                &what,
            );
        }
        Expect::Keyed { sample, map, entry } => {
            assert_shape(&body, sample, &what);
            let entries = body
                .pointer(map)
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| panic!("{what}: no entries at {map}: {body}"));
            for (id, e) in entries {
                assert_shape(e, entry, &format!("{what} {map}/{id}"));
            }
        }
        Expect::EmptyList(sample) => {
            // A list, as the docs' sample is: with the feature off, an empty one.
            assert_shape(&body, sample, &what);
            assert_eq!(body, json!([]), "{what}");
            // A client polling it blocks on the index instead of spinning.
            let index = r.header("x-consul-index").unwrap_or("1");
            let sep = if case.path.contains('?') { '&' } else { '?' };
            let started = Instant::now();
            let again = api
                .send(
                    "GET",
                    &format!("{}{sep}index={index}&wait=300ms", case.path),
                    None,
                )
                .await;
            assert_eq!(again.status, 200, "{what} blocking: {}", again.text);
            assert!(
                started.elapsed() >= Duration::from_millis(250),
                "{what}: a read at the current index returned at once"
            );
        }
    }
    body
}

/// A `--dev` server (its own leader, its embedded agent serving the agent endpoints), as a
/// newcomer runs it.
async fn dev_server() -> (registry_server::ServerHandle, Api) {
    let mut cfg = ServerConfig::new(NODE);
    cfg.dev = true;
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.rpc_addr = "127.0.0.1:0".parse().unwrap();
    let server = registry_server::start(cfg).await.unwrap();
    let api = Api::new(server.url());
    wait_until(WAIT, "the dev server names a leader", || async {
        let r = api.send("GET", "/v1/status/leader", None).await;
        r.status == 200 && r.text.len() > 2
    })
    .await;
    (server, api)
}

/// A service's tagged addresses as Consul sends them back (`Address`, `Port`), whatever case
/// the registration used.
fn redis_tagged_addresses() -> Value {
    json!({
        "lan": {"Address": "127.0.0.1", "Port": 8000},
        "wan": {"Address": "198.51.100.53", "Port": 80}
    })
}

/// The `Proxy` of the docs' `web-sidecar-proxy` (agent/service.mdx, "Get Service
/// Configuration").
fn sidecar_proxy() -> Value {
    json!({
        "DestinationServiceName": "web",
        "DestinationServiceID": "web",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 8080,
        "Mode": "transparent",
        "TransparentProxy": {"OutboundListenerPort": 22500},
        "Config": {"foo": "bar"},
        "Upstreams": [
            {"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191}
        ]
    })
}

/// The writes that fill the server, each one of Consul's write endpoints with the docs'
/// sample payload (adapted where noted), in an order that leaves every check passing.
fn seed() -> Vec<Case> {
    // agent/service.mdx "Register Service" sample payload, with the docs' list sample's id
    // `redis`, its `TaggedAddresses` (lower case, as the docs send them), and a TTL check in
    // place of the script check (`Args`): script checks are not run here.
    let redis = json!({
        "ID": "redis",
        "Name": "redis",
        "Tags": ["primary", "v1"],
        "Address": "127.0.0.1",
        "Port": 8000,
        "Meta": {"redis_version": "4.0"},
        "EnableTagOverride": false,
        "TaggedAddresses": {
            "lan": {"address": "127.0.0.1", "port": 8000},
            "wan": {"address": "198.51.100.53", "port": 80}
        },
        "Check": {
            "CheckID": "service:redis",
            "Name": "Service 'redis' check",
            "TTL": "30s",
            "DeregisterCriticalServiceAfter": "90m"
        },
        "Weights": {"Passing": 10, "Warning": 1}
    });
    let sidecar = json!({
        "Kind": "connect-proxy",
        "ID": "web-sidecar-proxy",
        "Name": "web-sidecar-proxy",
        "Port": 18080,
        "EnableTagOverride": true,
        "Proxy": sidecar_proxy()
    });
    // agent/check.mdx "Register Check" sample payload's id, name and notes, as a TTL check
    // (the sample mixes the fields of several kinds of check to show them all).
    let mem = json!({
        "ID": "mem",
        "Name": "Memory utilization",
        "Notes": "Ensure we don't oversubscribe memory",
        "TTL": "30s"
    });
    // catalog.mdx "Register Entity" sample payload (its `Namespace` fields left out).
    let t2 = json!({
        "Datacenter": "dc1",
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "t2.320",
        "Address": "192.168.10.10",
        "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"},
        "NodeMeta": {"somekey": "somevalue"},
        "Service": {
            "ID": "redis1",
            "Service": "redis",
            "Tags": ["primary", "v1"],
            "Address": "127.0.0.1",
            "TaggedAddresses": {
                "lan": {"address": "127.0.0.1", "port": 8000},
                "wan": {"address": "198.18.0.1", "port": 80}
            },
            "Meta": {"redis_version": "4.0"},
            "Port": 8000
        },
        "Check": {
            "Node": "t2.320",
            "CheckID": "service:redis1",
            "Name": "Redis health check",
            "Notes": "Script based health check",
            "Status": "passing",
            "ServiceID": "redis1",
            "Definition": {
                "TCP": "localhost:8888",
                "Interval": "5s",
                "Timeout": "1s",
                "DeregisterCriticalServiceAfter": "30s"
            }
        },
        "SkipNodeUpdate": false
    });
    // The catalog.mdx "List Services" sample's third service.
    let postgresql = json!({
        "Node": "t2.320",
        "Address": "192.168.10.10",
        "SkipNodeUpdate": true,
        "Service": {"Service": "postgresql", "Tags": ["primary", "secondary"], "Port": 5432}
    });
    let (agent, check, catalog) = ("agent/service.mdx", "agent/check.mdx", "catalog.mdx");
    vec![
        put(
            "/v1/agent/service/register",
            Some(redis),
            Expect::Empty,
            agent,
        ),
        put(
            "/v1/agent/service/register?replace-existing-checks=true",
            Some(sidecar),
            Expect::Empty,
            agent,
        ),
        put("/v1/agent/check/register", Some(mem), Expect::Empty, check),
        put(
            "/v1/agent/check/warn/mem?note=high",
            None,
            Expect::Empty,
            check,
        ),
        put("/v1/agent/check/fail/mem", None, Expect::Empty, check),
        put(
            "/v1/agent/check/update/mem",
            Some(json!({"Status": "passing", "Output": "fine"})),
            Expect::Empty,
            check,
        ),
        put(
            "/v1/agent/check/pass/service:redis?note=ok",
            None,
            Expect::Empty,
            check,
        ),
        put(
            "/v1/agent/maintenance?enable=true&reason=For+API+docs",
            None,
            Expect::Empty,
            "agent/index.mdx",
        ),
        put(
            "/v1/agent/maintenance?enable=false",
            None,
            Expect::Empty,
            "agent/index.mdx",
        ),
        put(
            "/v1/agent/service/maintenance/redis?enable=true&reason=For+the+docs",
            None,
            Expect::Empty,
            agent,
        ),
        put(
            "/v1/agent/service/maintenance/redis?enable=false",
            None,
            Expect::Empty,
            agent,
        ),
        // Consul's catalog writes answer `true`.
        put(
            "/v1/catalog/register",
            Some(t2),
            Expect::Shape(json!(true)),
            catalog,
        ),
        put(
            "/v1/catalog/register",
            Some(postgresql),
            Expect::Shape(json!(true)),
            catalog,
        ),
    ]
}

/// A health check as the health.mdx samples show it (without their `ID`: Consul's
/// `structs.HealthCheck` has none, and `api.HealthCheck` neither).
fn health_check_sample() -> Value {
    json!([
        {
            "Node": "foobar",
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": []
        },
        {
            "Node": "foobar",
            "CheckID": "service:redis",
            "Name": "Service 'redis' check",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": "redis",
            "ServiceName": "redis",
            "ServiceTags": ["primary"]
        }
    ])
}

/// A node as the catalog.mdx and health.mdx samples show it. Its `TaggedAddresses` is what
/// a catalog registration sent; for an agent's own node Consul sets `lan`, `lan_ipv4`,
/// `wan`, `wan_ipv4` there (not sent here: the map is empty).
fn node_sample() -> Value {
    json!({
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "t2.320",
        "Address": "10.1.10.12",
        "Datacenter": "dc1",
        "TaggedAddresses": {},
        "Meta": {}
    })
}

/// The catalog.mdx "List Nodes for Service" sample (the docs show `web`; the seed's service
/// is `redis`).
fn catalog_service_sample() -> Value {
    json!([{
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "t2.320",
        "Address": "192.168.10.10",
        "Datacenter": "dc1",
        "TaggedAddresses": {},
        "NodeMeta": {},
        "CreateIndex": 51,
        "ModifyIndex": 51,
        "ServiceAddress": "172.17.0.3",
        "ServiceEnableTagOverride": false,
        "ServiceID": "32a2a47f7992:nodea:5000",
        "ServiceName": "web",
        "ServicePort": 5000,
        "ServiceMeta": {},
        "ServiceTaggedAddresses": {
            "lan": {"Address": "172.17.0.3", "Port": 5000},
            "wan": {"Address": "198.18.0.1", "Port": 512}
        },
        "ServiceTags": ["prod"],
        // (Not sent for a service without them: "ServiceProxy", "ServiceConnect". Consul
        // sends their zero values, `{"MeshGateway":{},"Expose":{}}` and `{}`.)
    }])
}

/// The servers' own `consul` service among a node's services, as the catalog.mdx samples of
/// `/v1/catalog/node/:node` and `/v1/catalog/node-services/:node` list them.
fn consul_node_service_sample() -> Value {
    json!({"ID": "consul", "Service": "consul", "Tags": null, "Meta": {}, "Port": 8300})
}

/// The seed's `redis` among a node's services, as the catalog.mdx samples of
/// `/v1/catalog/node/:node` and `/v1/catalog/node-services/:node` list it.
fn redis_node_service_sample() -> Value {
    json!({
        "ID": "redis", "Service": "redis",
        "TaggedAddresses": {
            "lan": {"Address": "10.1.10.12", "Port": 8000},
            "wan": {"Address": "198.18.1.2", "Port": 80}
        },
        "Tags": ["v1"], "Meta": {}, "Port": 8000
    })
}

/// The health.mdx "List Service Instances for Service" sample.
fn health_service_sample() -> Value {
    json!([{
        "Node": node_sample(),
        "Service": {
            "ID": "redis",
            "Service": "redis",
            "Tags": ["primary"],
            "Address": "10.1.10.12",
            "TaggedAddresses": {
                "lan": {"Address": "10.1.10.12", "Port": 8000},
                "wan": {"Address": "198.18.1.2", "Port": 80}
            },
            "Meta": {},
            "Port": 8000,
            "Weights": {"Passing": 10, "Warning": 1}
        },
        "Checks": health_check_sample()
    }])
}

/// A service of an agent's local health, as agent/service.mdx "Get local service health"
/// shows it (without `SocketPath`: not sent, as no registration here has a socket).
fn agent_health_sample() -> Value {
    json!({
        "AggregatedStatus": "passing",
        "Service": {
            "ID": "web1",
            "Service": "web",
            "Tags": ["rails"],
            "Meta": {},
            "Port": 80,
            "Address": "",
            "TaggedAddresses": {
                "lan": {"Address": "127.0.0.1", "Port": 8000},
                "wan": {"Address": "198.51.100.53", "Port": 80}
            },
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": false,
            "Datacenter": "dc1"
        },
        "Checks": [{
            "Node": "server1",
            "CheckID": "service:web2",
            "Name": "Service 'web' check",
            "Status": "critical",
            "Notes": "",
            "Output": "",
            "ServiceID": "web2",
            "ServiceName": "web",
            "ServiceTags": ["rails"],
            "Type": "",
            "CreateIndex": 0,
            "ModifyIndex": 0
            // (Not sent: "Definition", the check's definition as Consul's agent keeps it.)
        }]
    })
}

/// A member as agent/index.mdx "List Members" and "Read Configuration" show it, without the
/// `bootstrap` tag (not sent: Consul sets it in bootstrap mode, which `-dev` implies).
fn member_sample() -> Value {
    json!({
        "Name": "foobar",
        "Addr": "10.1.10.12",
        "Port": 8301,
        "Tags": {
            "dc": "dc1",
            "id": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "port": "8300",
            "role": "consul",
            "vsn": "1",
            "vsn_max": "1",
            "vsn_min": "1"
        },
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 2,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 4,
        "DelegateCur": 4
    })
}

/// kv.mdx "Read Key" (its metadata response): the docs' key `zip`, held by a session. A
/// key no session holds has no `Session` (Consul's `structs.DirEntry` omits it when empty).
fn dir_entry_sample() -> Value {
    json!([{
        "CreateIndex": 100,
        "ModifyIndex": 200,
        "LockIndex": 200,
        "Key": "zip",
        "Flags": 0,
        "Value": "dGVzdA==",
        "Session": "adf4238a-882b-9ddc-4a9d-5b6758e4159e"
    }])
}

/// session.mdx "Read Session", the entry that "List Sessions for Node", "List Sessions" and
/// "Renew Session" show too.
fn session_sample() -> Value {
    json!([{
        "ID": "adf4238a-882b-9ddc-4a9d-5b6758e4159e",
        "Name": "test-session",
        "Node": "raja-laptop-02",
        "LockDelay": 15000000000u64,
        "Behavior": "release",
        "TTL": "30s",
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": null,
        "CreateIndex": 1086449,
        "ModifyIndex": 1086449
    }])
}

/// event.mdx "List Events". "Fire Event" answers the same object; its sample's `Payload` is
/// `null` and `LTime` 0 (fired without a payload, and no agent has seen it yet).
fn event_sample() -> Value {
    json!({
        "ID": "b54fe110-7af5-cafc-d1fb-afc8ba432b1c",
        "Name": "deploy",
        "Payload": "MTYwOTAzMA==",
        "NodeFilter": "",
        "ServiceFilter": "",
        "TagFilter": "",
        "Version": 1,
        "LTime": 19
    })
}

/// txn.mdx "Create Transaction" sample payload on the docs' node `bar`: a KV `set` of the
/// docs' value, the node, a service `web1` for its check (the docs delete a `db1` of a node
/// `foo` the seed does not have), and the check, `set` where the docs `cas` at index 22 (an
/// index that need not be the check's here).
fn txn_payload() -> Value {
    json!([
        {"KV": {"Verb": "set", "Key": "txn/zip", "Value": "dGVzdA==", "Flags": 0}},
        {"Node": {"Verb": "set", "Node": {
            "ID": "67539c9d-b948-ba67-edd4-d07a676d6673",
            "Node": "bar",
            "Address": "192.168.0.1",
            "Datacenter": "dc1",
            "Meta": {"instance_type": "m2.large"}
        }}},
        {"Service": {"Verb": "set", "Node": "bar", "Service": {
            "ID": "web1", "Service": "web", "Port": 80
        }}},
        {"Check": {"Verb": "set", "Check": {
            "Node": "bar",
            "CheckID": "service:web1",
            "Name": "Web HTTP Check",
            "Status": "critical",
            "ServiceID": "web1",
            "ServiceName": "web",
            // As the docs (and the Go client) send it: null is read as no tags.
            "ServiceTags": null,
            "Definition": {"HTTP": "http://localhost:8080", "Interval": "10s"}
        }}}
    ])
}

/// txn.mdx "Create Transaction" sample response's `Results`, its placeholders (`<index>`,
/// `<flags>`, ...) as numbers and its KV `Value` ("Base64-encoded blob of data, or null")
/// as `null`.
fn txn_results_sample() -> Value {
    json!([
        {"KV": {
            "LockIndex": 0,
            "Key": "txn/zip",
            "Flags": 0,
            "Value": null,
            "CreateIndex": 32,
            "ModifyIndex": 32
        }},
        {"Node": {
            "ID": "67539c9d-b948-ba67-edd4-d07a676d6673",
            "Node": "bar",
            "Address": "192.168.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": null,
            "Meta": {},
            "CreateIndex": 32,
            "ModifyIndex": 32
        }},
        {"Check": {
            "Node": "bar",
            "CheckID": "service:web1",
            "Name": "Web HTTP Check",
            "Status": "critical",
            "Notes": "",
            "Output": "",
            "ServiceID": "web1",
            "ServiceName": "web",
            "ServiceTags": null,
            "CreateIndex": 22,
            "ModifyIndex": 35
            // (Not sent: "Definition", the check's definition as registered.)
        }}
    ])
}

/// operator/autopilot.mdx "Read the Autopilot State" without what Consul OSS omits
/// (`ReadReplicas`, `RedundancyZones`, `Upgrade`: `omitempty` in its `api.AutopilotState`)
/// and with `Servers` as `{}` (keyed by server ID; see [`autopilot_server_sample`]).
fn autopilot_state_sample() -> Value {
    json!({
        "Healthy": true,
        "FailureTolerance": 1,
        "OptimisticFailureTolerance": 4,
        "Servers": {},
        "Leader": "5e26a3af-f4fc-4104-a8bb-4da9f19cb278",
        "Voters": [
            "5e26a3af-f4fc-4104-a8bb-4da9f19cb278",
            "10b71f14-4b08-4ae5-840c-f86d39e7d330",
            "1fd52e5e-2f72-47d3-8cfc-2af760a0c8c2"
        ]
    })
}

/// operator/autopilot.mdx "Server Response Format" without `RedundancyZone` and
/// `UpgradeVersion` (Enterprise; `omitempty` in Consul's `api.AutopilotServer`).
fn autopilot_server_sample() -> Value {
    json!({
        "ID": "1c3e3278-3f88-4a97-9f6a-1058584e8058",
        "Name": "node1",
        "Address": "198.18.0.1:8300",
        "NodeStatus": "alive",
        "Version": "1.9.0+ent",
        "LastContact": "1.321ms",
        "LastTerm": 4,
        "LastIndex": 42,
        "Healthy": true,
        "StableSince": "2020-08-12T12:13:14Z",
        "ReadReplica": false,
        "Status": "voter",
        "Meta": {},
        "NodeType": "redundancy-zone-voter"
    })
}

/// The session the KV and session rows use: session.mdx "Create Session" sample payload,
/// for this server's node and its `serfHealth` (the docs' `foobar` and checks `a`, `b`, `c`
/// are not registered here).
fn session_create() -> Case {
    put(
        "/v1/session/create",
        Some(json!({
            "LockDelay": "15s",
            "Name": "my-service-lock",
            "Node": NODE,
            "Checks": ["serfHealth"],
            "Behavior": "release",
            "TTL": "30s"
        })),
        Expect::Shape(json!({"ID": "adf4238a-882b-9ddc-4a9d-5b6758e4159e"})),
        "session.mdx",
    )
}

/// The KV, transaction and event writes, once the catalog has this server's node and
/// `session` (its ID) exists.
fn data_writes(session: &str) -> Vec<Case> {
    let (kv, txn) = ("kv.mdx", "txn.mdx");
    vec![
        // kv.mdx "Create/Update Key": the docs' key `zip` (value `test`, their sample's
        // `dGVzdA==`) taken by the session; then a CAS at index 0, which only creates: `false`.
        put(
            format!("/v1/kv/zip?flags=42&acquire={session}"),
            Some(json!("test")),
            Expect::Equal(json!(true)),
            kv,
        ),
        put(
            "/v1/kv/zip?cas=0",
            Some(json!("other")),
            Expect::Equal(json!(false)),
            kv,
        ),
        // The keys of the docs' "Keys Response".
        put(
            "/v1/kv/web/bar",
            Some(json!("b")),
            Expect::Equal(json!(true)),
            kv,
        ),
        put(
            "/v1/kv/web/foo",
            Some(json!("f")),
            Expect::Equal(json!(true)),
            kv,
        ),
        put(
            "/v1/kv/web/subdir/baz",
            Some(json!("z")),
            Expect::Equal(json!(true)),
            kv,
        ),
        put(
            "/v1/txn",
            Some(txn_payload()),
            Expect::Results(json!({"Results": txn_results_sample(), "Errors": null})),
            txn,
        ),
        // txn.mdx: "a status code of 409 will be returned if it was rolled back", with the
        // failed operations in `Errors` (the `set` before the failing `get` is not applied:
        // see the 404 of `txn/never` among the reads).
        put(
            "/v1/txn",
            Some(json!([
                {"KV": {"Verb": "set", "Key": "txn/never", "Value": "dGVzdA=="}},
                {"KV": {"Verb": "get", "Key": "txn/missing"}}
            ])),
            Expect::Shape(json!({
                "Results": null,
                "Errors": [{"OpIndex": 1, "What": "key \"txn/missing\" doesn't exist"}]
            })),
            txn,
        )
        .status(409),
        // event.mdx "Fire Event", with the payload of its "List Events" sample.
        put(
            "/v1/event/fire/deploy",
            Some(json!("1609030")),
            Expect::Shape(event_sample()),
            "event.mdx",
        ),
    ]
}

/// Every read a server serves, with the docs' sample of each; `session` is the ID of the
/// session [`session_create`] made.
fn reads(session: &str) -> Vec<Case> {
    use Meta::{None as Plain, Query};
    let (catalog, health, agent, svc, check) = (
        "catalog.mdx",
        "health.mdx",
        "agent/index.mdx",
        "agent/service.mdx",
        "agent/check.mdx",
    );
    let (kv, sessions) = ("kv.mdx", "session.mdx");
    vec![
        // Catalog.
        get(
            "/v1/catalog/datacenters",
            Plain,
            Expect::Shape(json!(["dc1", "dc2"])),
            catalog,
        ),
        get(
            "/v1/catalog/nodes",
            Query,
            Expect::Element {
                pointer: "/Node",
                value: "t2.320",
                sample: json!([node_sample()]),
            },
            catalog,
        ),
        get(
            "/v1/catalog/services",
            Query,
            Expect::Shape(json!({
                "consul": [],
                "redis": [],
                "postgresql": ["primary", "secondary"]
            })),
            catalog,
        ),
        get(
            "/v1/catalog/service/redis",
            Query,
            Expect::Element {
                pointer: "/ServiceID",
                value: "redis",
                sample: catalog_service_sample(),
            },
            catalog,
        ),
        get(
            format!("/v1/catalog/node/{NODE}"),
            Query,
            Expect::Shape(json!({
                "Node": node_sample(),
                "Services": {
                    "consul": consul_node_service_sample(),
                    "redis": redis_node_service_sample()
                }
            })),
            catalog,
        ),
        get(
            format!("/v1/catalog/node-services/{NODE}"),
            Query,
            Expect::Shape(json!({
                "Node": node_sample(),
                "Services": [consul_node_service_sample(), redis_node_service_sample()]
            })),
            catalog,
        ),
        get(
            "/v1/catalog/connect/redis",
            Query,
            Expect::EmptyList(catalog_service_sample()),
            catalog,
        ),
        get(
            "/v1/catalog/gateway-services/my-terminating-gateway",
            Query,
            Expect::EmptyList(json!([{
                "Gateway": {"Name": "my-terminating-gateway"},
                "Service": {"Name": "api"},
                "GatewayKind": "terminating-gateway",
                "CAFile": "/etc/certs/ca.pem",
                "CertFile": "/etc/certs/api/client.pem",
                "KeyFile": "/etc/certs/api/client.key",
                "SNI": "api.my-domain",
                "CreateIndex": 16,
                "ModifyIndex": 16
            }])),
            catalog,
        ),
        // Health.
        get(
            format!("/v1/health/node/{NODE}"),
            Query,
            Expect::Element {
                pointer: "/CheckID",
                value: "serfHealth",
                sample: health_check_sample(),
            },
            health,
        ),
        get(
            "/v1/health/checks/redis",
            Query,
            Expect::Element {
                pointer: "/CheckID",
                value: "service:redis",
                sample: json!([health_check_sample()[1]]),
            },
            health,
        ),
        get(
            "/v1/health/service/redis",
            Query,
            Expect::Element {
                pointer: "/Service/ID",
                value: "redis",
                sample: health_service_sample(),
            },
            health,
        ),
        get(
            "/v1/health/connect/redis",
            Query,
            Expect::EmptyList(health_service_sample()),
            health,
        ),
        get(
            "/v1/health/ingress/redis",
            Query,
            Expect::EmptyList(health_service_sample()),
            health,
        ),
        get(
            "/v1/health/state/passing",
            Query,
            Expect::Element {
                pointer: "/CheckID",
                value: "serfHealth",
                sample: health_check_sample(),
            },
            health,
        ),
        // Status.
        get(
            "/v1/status/leader",
            Plain,
            Expect::Shape(json!("10.1.10.12:8300")),
            "status.mdx",
        ),
        get(
            "/v1/status/peers",
            Plain,
            Expect::Shape(json!([
                "10.1.10.12:8300",
                "10.1.10.11:8300",
                "10.1.10.10:8300"
            ])),
            "status.mdx",
        ),
        // Operator.
        get(
            "/v1/operator/raft/configuration",
            Plain,
            Expect::Shape(json!({
                "Servers": [{
                    "ID": "127.0.0.1:8300",
                    "Node": "alice",
                    "Address": "127.0.0.1:8300",
                    "Leader": true,
                    "Voter": true
                }],
                "Index": 22
            })),
            "operator/raft.mdx",
        ),
        get(
            "/v1/operator/autopilot/health",
            Plain,
            Expect::Shape(json!({
                "Healthy": true,
                "FailureTolerance": 0,
                "Servers": [{
                    "ID": "e349749b-3303-3ddf-959c-b5885a0e1f6e",
                    "Name": "node1",
                    "Address": "127.0.0.1:8300",
                    "SerfStatus": "alive",
                    "Version": "0.7.4",
                    "Leader": true,
                    "LastContact": "0s",
                    "LastTerm": 2,
                    "LastIndex": 46,
                    "Healthy": true,
                    "Voter": true,
                    "StableSince": "2017-03-06T22:07:51Z"
                }]
            })),
            "operator/autopilot.mdx",
        ),
        get(
            "/v1/operator/autopilot/state",
            Plain,
            Expect::Keyed {
                sample: autopilot_state_sample(),
                map: "/Servers",
                entry: autopilot_server_sample(),
            },
            "operator/autopilot.mdx",
        ),
        // KV.
        get("/v1/kv/zip", Query, Expect::Shape(dir_entry_sample()), kv),
        get(
            "/v1/kv/zi?recurse",
            Query,
            Expect::Shape(dir_entry_sample()),
            kv,
        ),
        get(
            "/v1/kv/web/?keys&separator=/",
            Query,
            Expect::Shape(json!(["/web/bar", "/web/foo", "/web/subdir/"])),
            kv,
        ),
        get("/v1/kv/zip?raw", Query, Expect::Raw("test"), kv),
        // "If no key exists at the given path, a 404 is returned": no body, the query
        // headers set before it (kvs_endpoint.go `KVSGet`).
        get("/v1/kv/txn/never", Query, Expect::Empty, kv).status(404),
        // A read-only transaction: answered like a read, without an index.
        put(
            "/v1/txn",
            Some(json!([{"KV": {"Verb": "get", "Key": "txn/zip"}}])),
            Expect::Results(json!({"Results": [txn_results_sample()[0]], "Errors": null})),
            "txn.mdx",
        )
        .meta(Meta::Contact),
        // Sessions.
        get(
            format!("/v1/session/info/{session}"),
            Query,
            Expect::Shape(session_sample()),
            sessions,
        ),
        get(
            format!("/v1/session/node/{NODE}"),
            Query,
            Expect::Shape(session_sample()),
            sessions,
        ),
        get(
            "/v1/session/list",
            Query,
            Expect::Shape(session_sample()),
            sessions,
        ),
        // Events.
        get(
            "/v1/event/list",
            Meta::Index,
            Expect::Shape(json!([event_sample()])),
            "event.mdx",
        ),
        // The agent the server runs for itself.
        get(
            "/v1/agent/services",
            Plain,
            Expect::Shape(json!({"redis": agent_service_sample()})),
            svc,
        ),
        get(
            "/v1/agent/service/web-sidecar-proxy",
            Plain,
            Expect::Shape(json!({
                "Kind": "connect-proxy",
                "ID": "web-sidecar-proxy",
                "Service": "web-sidecar-proxy",
                "Tags": null,
                "Meta": null,
                "Port": 18080,
                "Address": "",
                "TaggedAddresses": {},
                "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": false,
                "Datacenter": "dc1",
                "ContentHash": "4ecd29c7bc647ca8",
                "Proxy": sidecar_proxy()
            })),
            svc,
        ),
        get(
            "/v1/agent/checks",
            Plain,
            // agent/check.mdx shows the same check as health.mdx.
            Expect::Shape(json!({"service:redis": health_check_sample()[1]})),
            check,
        ),
        get(
            "/v1/agent/self",
            Plain,
            Expect::Shape(json!({
                "Config": {
                    "Datacenter": "dc1",
                    "NodeName": "foobar",
                    "NodeID": "9d754d17-d864-b1d3-e758-f3fe25a9874f",
                    "Server": true,
                    "Revision": "deadbeef",
                    "Version": "1.0.0"
                },
                // The docs show "... full runtime configuration ...": an object.
                "DebugConfig": {},
                "Coord": {"Adjustment": 0, "Error": 1.5, "Vec": [0, 0, 0, 0, 0, 0, 0, 0]},
                "Member": member_sample(),
                "Meta": {}
            })),
            agent,
        ),
        get(
            "/v1/agent/members",
            Plain,
            Expect::Shape(json!([member_sample()])),
            agent,
        ),
        get(
            "/v1/agent/health/service/name/redis",
            Plain,
            Expect::Shape(json!([agent_health_sample()])),
            svc,
        ),
        get(
            "/v1/agent/health/service/id/redis",
            Plain,
            Expect::Shape(agent_health_sample()),
            svc,
        ),
        // The docs show no sample; Consul answers its `version.GetBuildInfo()`
        // (agent_endpoint.go `AgentVersion`).
        get(
            "/v1/agent/version",
            Plain,
            Expect::Shape(json!({
                "SHA": "", "BuildDate": "", "HumanVersion": "1.13.0", "FIPS": ""
            })),
            agent,
        ),
        get("/v1/agent/host", Plain, Expect::Shape(host_sample()), agent),
    ]
}

/// agent/index.mdx "Retrieve host information" (gopsutil's field names; one CPU of four).
fn host_sample() -> Value {
    json!({
        "Memory": {
            "total": 8192864256u64, "available": 7154810880u64, "used": 1406787584,
            "usedPercent": 17.17088847126628, "free": 1683918848, "active": 2873405440u64,
            "inactive": 2777124864u64, "wired": 0, "laundry": 0, "buffers": 131567616,
            "cached": 4970590208u64, "writeBack": 0, "dirty": 1069056, "writeBackTmp": 0,
            "shared": 9121792, "slab": 770506752, "sreclaimable": 0, "sunreclaim": 0,
            "pageTables": 5103616, "swapCached": 143360, "commitLimit": 4201283584u64,
            "committedAS": 1514496000, "highTotal": 0, "highFree": 0, "lowTotal": 0,
            "lowFree": 0, "swapTotal": 104853504, "swapFree": 99696640, "mapped": 313540608,
            "vmallocTotal": 269240696832u64, "vmallocUsed": 25956352, "vmallocChunk": 0,
            "hugePagesTotal": 0, "hugePagesFree": 0, "hugePageSize": 0
        },
        "CPU": [{
            "cpu": 0, "vendorId": "", "family": "", "model": "", "stepping": 0,
            "physicalId": "", "coreId": "0", "cores": 1, "modelName": "", "mhz": 1500,
            "cacheSize": 0, "flags": ["fp", "asimd", "evtstrm", "crc32", "cpuid"],
            "microcode": ""
        }],
        "Host": {
            "hostname": "hashicorp-consul-server-2", "uptime": 6855759,
            "bootTime": 1620226737, "procs": 1, "os": "linux", "platform": "alpine",
            "platformFamily": "alpine", "platformVersion": "3.13.5",
            "kernelVersion": "5.10.17-v8+", "kernelArch": "aarch64",
            "virtualizationSystem": "", "virtualizationRole": "",
            "hostId": "7a8ef887-9dbe-4ed3-b45b-c04d7ee6476f"
        },
        "Disk": {
            "path": "/", "fstype": "", "total": 125550247936u64, "free": 93488398336u64,
            "used": 26909102080u64, "usedPercent": 22.350216563486036,
            "inodesTotal": 7684080, "inodesUsed": 442088, "inodesFree": 7241992,
            "inodesUsedPercent": 5.753297727249065
        },
        "CollectionTime": 1627082496166088783u64,
        "Errors": null
    })
}

/// The writes that take the seed, [`data_writes`] and `session` away again; afterwards the
/// lists no longer hold them.
fn teardown(session: &str) -> Vec<Case> {
    let (agent, check, catalog) = ("agent/service.mdx", "agent/check.mdx", "catalog.mdx");
    let (kv, sessions) = ("kv.mdx", "session.mdx");
    vec![
        put(
            format!("/v1/session/renew/{session}"),
            None,
            Expect::Shape(session_sample()),
            sessions,
        ),
        put(
            format!("/v1/kv/zip?release={session}"),
            Some(json!("test")),
            Expect::Equal(json!(true)),
            kv,
        ),
        // kv.mdx "Delete Key": `true`, or with `?cas=` whether the index matched (the key
        // was written long after index 1).
        delete("/v1/kv/zip?cas=1", Expect::Equal(json!(false)), kv),
        delete("/v1/kv/zip", Expect::Equal(json!(true)), kv),
        delete("/v1/kv/web?recurse", Expect::Equal(json!(true)), kv),
        delete("/v1/kv/txn?recurse", Expect::Equal(json!(true)), kv),
        put(
            format!("/v1/session/destroy/{session}"),
            None,
            Expect::Equal(json!(true)),
            sessions,
        ),
        put(
            "/v1/catalog/deregister",
            Some(json!({"Datacenter": "dc1", "Node": "bar"})),
            Expect::Shape(json!(true)),
            catalog,
        ),
        put("/v1/agent/check/deregister/mem", None, Expect::Empty, check),
        put(
            "/v1/agent/service/deregister/web-sidecar-proxy",
            None,
            Expect::Empty,
            agent,
        ),
        // catalog.mdx "Deregister Entity": its three sample payloads.
        put(
            "/v1/catalog/deregister",
            Some(json!({"Datacenter": "dc1", "Node": "t2.320", "ServiceID": "postgresql"})),
            Expect::Shape(json!(true)),
            catalog,
        ),
        put(
            "/v1/catalog/deregister",
            Some(json!({"Datacenter": "dc1", "Node": "t2.320", "CheckID": "service:redis1"})),
            Expect::Shape(json!(true)),
            catalog,
        ),
        put(
            "/v1/catalog/deregister",
            Some(json!({"Datacenter": "dc1", "Node": "t2.320"})),
            Expect::Shape(json!(true)),
            catalog,
        ),
    ]
}

/// Every endpoint of a `--dev` server, writes and reads, against the docs' samples; then
/// the values a client sent come back as sent (Nomad compares them on every sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_in_the_shape_of_consuls_docs() {
    let (server, api) = dev_server().await;
    for case in seed() {
        check(&api, &case).await;
    }
    // The embedded agent's registrations reach the catalog by its sync.
    wait_until(
        WAIT,
        "the agent's services and checks in the catalog",
        || async {
            let checks = api.get_json(&format!("/v1/health/node/{NODE}")).await;
            let passing = |id: &str| {
                checks.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|c| c["CheckID"] == id && c["Status"] == "passing")
                })
            };
            let maintenance = checks.as_array().is_some_and(|a| {
                a.iter().any(|c| {
                    c["CheckID"]
                        .as_str()
                        .is_some_and(|i| i.contains("maintenance"))
                })
            });
            let services = api.get_json(&format!("/v1/catalog/node/{NODE}")).await;
            passing("serfHealth")
                && passing("service:redis")
                && passing("mem")
                && !maintenance
                && services["Services"]["web-sidecar-proxy"].is_object()
        },
    )
    .await;

    let created = check(&api, &session_create()).await;
    let session = created["ID"].as_str().unwrap_or_default().to_string();
    for case in data_writes(&session) {
        check(&api, &case).await;
    }

    for case in reads(&session) {
        check(&api, &case).await;
    }
    // The autopilot state's `Leader` and `Voters` index its `Servers`.
    let state = api.get_json("/v1/operator/autopilot/state").await;
    for id in
        std::iter::once(&state["Leader"]).chain(state["Voters"].as_array().into_iter().flatten())
    {
        let id = id.as_str().unwrap_or_default();
        assert!(state["Servers"].get(id).is_some(), "{id} not in {state}");
    }

    // What was registered comes back as sent, from the agent and from the catalog.
    let redis = api.get_json("/v1/agent/service/redis").await;
    assert_eq!(redis["TaggedAddresses"], redis_tagged_addresses());
    assert_eq!(redis["Weights"], json!({"Passing": 10, "Warning": 1}));
    let sidecar = api.get_json("/v1/agent/service/web-sidecar-proxy").await;
    assert_eq!(sidecar["Proxy"], sidecar_proxy());
    assert_eq!(sidecar["EnableTagOverride"], true);
    let hash = sidecar["ContentHash"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = api
        .send("GET", "/v1/agent/service/web-sidecar-proxy", None)
        .await;
    assert_eq!(r.header("x-consul-contenthash"), Some(hash.as_str()));
    assert_ne!(
        hash,
        redis["ContentHash"].as_str().unwrap_or_default(),
        "two services, one hash"
    );
    let entries = api.get_json("/v1/catalog/service/redis").await;
    let entry = entries
        .as_array()
        .and_then(|a| a.iter().find(|e| e["ServiceID"] == "redis"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["ServiceTaggedAddresses"], redis_tagged_addresses());
    assert_eq!(
        entry["ServiceWeights"],
        json!({"Passing": 10, "Warning": 1})
    );
    let proxies = api.get_json("/v1/catalog/service/web-sidecar-proxy").await;
    assert_eq!(proxies[0]["ServiceProxy"], sidecar_proxy(), "{proxies}");
    assert_eq!(proxies[0]["ServiceKind"], "connect-proxy");
    assert_eq!(proxies[0]["ServiceEnableTagOverride"], true);
    let node = api.get_json(&format!("/v1/catalog/node/{NODE}")).await;
    assert_eq!(
        node["Services"]["web-sidecar-proxy"]["Proxy"],
        sidecar_proxy()
    );
    assert_eq!(
        node["Services"]["web-sidecar-proxy"]["Kind"],
        "connect-proxy"
    );
    let rpc_port: Option<u64> = server
        .rpc_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok());
    assert_eq!(node["Services"]["consul"]["Port"].as_u64(), rpc_port);
    let health = api.get_json("/v1/health/service/redis").await;
    let mine = health
        .as_array()
        .and_then(|a| a.iter().find(|e| e["Service"]["ID"] == "redis"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(mine["Service"]["TaggedAddresses"], redis_tagged_addresses());

    // Values Consul fixes by design: a server's self and member.
    let me = api.get_json("/v1/agent/self").await;
    assert!(
        me.as_object().is_some_and(|m| m.contains_key("xDS")),
        "{me}"
    );
    assert_eq!(me["Coord"]["Vec"].as_array().map(Vec::len), Some(8));
    assert_eq!(me["Member"]["Tags"]["role"], "consul");
    assert_eq!(me["DebugConfig"]["ServerMode"], true);
    assert_eq!(me["DebugConfig"]["NodeName"], NODE);
    assert_eq!(me["Config"]["NodeName"], NODE);

    for case in teardown(&session) {
        check(&api, &case).await;
    }
    assert_eq!(api.get_json("/v1/session/list").await, json!([]));
    // The root of an empty store lists `[]` (no 404 for the root: kvs_endpoint.go).
    assert_eq!(api.get_json("/v1/kv/?keys").await, json!([]));
    let checks = api.get_json("/v1/agent/checks").await;
    assert!(checks.get("mem").is_none(), "{checks}");
    let nodes = api.get_json("/v1/catalog/nodes").await;
    assert!(
        nodes
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["Node"] != "t2.320")),
        "{nodes}"
    );
    server.stop().await;
}

/// Errors on known read paths keep Consul's status and, where Consul's handler sets them
/// before it fails (its deferred `setMeta`), the query headers; an unknown path is a plain
/// 404 without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_on_read_paths_keep_consuls_status_and_headers() {
    let (server, api) = dev_server().await;
    // (path, status, query headers, text the body contains)
    let rows: &[(&str, u16, Meta, &str)] = &[
        ("/v1/health/state/bogus", 400, Meta::Query, ""),
        (
            "/v1/catalog/nodes?filter=Foo%20%3D%3D%20x",
            400,
            Meta::Query,
            "Selector \"Foo\" is not valid",
        ),
        (
            "/v1/catalog/nodes?dc=nowhere",
            500,
            Meta::Query,
            "No path to datacenter",
        ),
        // Consul's node read answers `null` for an unknown node.
        ("/v1/catalog/node/nope", 200, Meta::Query, "null"),
        ("/v1/health/node/nope", 200, Meta::Query, "[]"),
        (
            "/v1/agent/service/nope",
            404,
            Meta::None,
            "unknown service ID: nope",
        ),
        (
            "/v1/agent/health/service/id/nope",
            404,
            Meta::None,
            "\"AggregatedStatus\":\"critical\"",
        ),
        ("/v1/agent/health/service/name/nope", 404, Meta::None, "[]"),
    ];
    for (path, status, meta, text) in rows {
        let r = api.send("GET", path, None).await;
        assert_eq!(r.status, *status, "{path}: {}", r.text);
        assert!(
            !r.text.is_empty() && r.text.contains(text),
            "{path}: {:?}",
            r.text
        );
        if let Meta::Query = meta {
            assert_query_headers(&r, path);
        }
    }
    let r = api.send("GET", "/v1/no/such/path", None).await;
    assert_eq!(r.status, 404);
    assert!(r.header("x-consul-index").is_none());
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain")));
    // A wrong method: 405 naming the allowed ones.
    let r = api.send("POST", "/v1/catalog/nodes", None).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert!(r.header("allow").is_some_and(|v| v.contains("GET")));
    server.stop().await;
}

/// In a cluster, every server lists the others as servers too (`role` `consul`, a `port`
/// tag), in the member shape of the docs (before, every other member was `role` `node`);
/// and a leadership transfer answers to Consul's method, `POST` (operator/raft.mdx; its Go
/// client's `RaftLeaderTransfer` posts), with its `{"Success": true}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_answers_members_and_leader_transfer_as_consul_does() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let api = Api::new(c.node(leader).url());
    wait_until(WAIT, "three members, each with role consul", || async {
        let members = api.get_json("/v1/agent/members").await;
        members.as_array().is_some_and(|m| {
            m.len() == 3
                && m.iter()
                    .all(|m| m["Tags"]["role"] == "consul" && m["Tags"]["port"].is_string())
        })
    })
    .await;
    let members = api.get_json("/v1/agent/members").await;
    for m in members.as_array().into_iter().flatten() {
        assert_shape(m, &member_sample(), "agent/members[]");
    }

    let first_id = c.status(leader).id;
    let r = api
        .send("POST", "/v1/operator/raft/transfer-leader", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json("transfer-leader"), json!({"Success": true}));
    let now = c.wait_leader().await;
    assert_ne!(c.status(now).id, first_id, "leadership did not move");
    c.shutdown().await;
}

/// The agent's lifecycle endpoints (agent/index.mdx: reload, join, force-leave, monitor,
/// leave), on a `--dev` server of their own, as leave stops it. The docs show no sample
/// response for any: Consul answers the writes with a bare 200 and streams the monitor's log
/// lines as plain text (agent_endpoint.go `AgentMonitor` sets no `Content-Type`, so Go's
/// server sniffs its first, empty write: `text/plain; charset=utf-8`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_endpoints_answer_as_consuls_agent_does() {
    let (server, api) = dev_server().await;
    // Force-leave needs a member: the server's own node, alive, so it stays.
    wait_until(WAIT, "the server's node passing", || async {
        let checks = api.get_json(&format!("/v1/health/node/{NODE}")).await;
        checks.as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "passing")
        })
    })
    .await;
    let agent = "agent/index.mdx";
    let rows = [
        put("/v1/agent/reload", None, Expect::Empty, agent),
        // Its own RPC address: a server may be among its own join targets.
        put(
            format!("/v1/agent/join/{}", server.rpc_addr),
            None,
            Expect::Empty,
            agent,
        ),
        put(
            format!("/v1/agent/force-leave/{NODE}"),
            None,
            Expect::Empty,
            agent,
        ),
        put(
            format!("/v1/agent/force-leave/{NODE}?prune"),
            None,
            Expect::Empty,
            agent,
        ),
    ];
    for case in &rows {
        check(&api, case).await;
    }
    let nodes = api.get_json("/v1/catalog/nodes").await;
    assert!(
        nodes
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["Node"] == NODE)),
        "an alive member was forced out: {nodes}"
    );

    // The monitor answers its headers at once and then streams until the client goes.
    let resp = tokio::time::timeout(
        WAIT,
        api.http
            .get(format!("{}/v1/agent/monitor?loglevel=debug", api.base))
            .send(),
    )
    .await
    .expect("the monitor's headers did not come")
    .expect("GET /v1/agent/monitor");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; charset=utf-8")
    );
    assert!(resp.headers().get("x-consul-index").is_none());
    drop(resp);

    // Leave last: a bare 200, then the server stops.
    check(&api, &put("/v1/agent/leave", None, Expect::Empty, agent)).await;
    tokio::time::timeout(WAIT, server.stopped())
        .await
        .expect("the server did not stop after leaving");
    server.stop().await;
}
