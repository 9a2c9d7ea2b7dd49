//! Consul fidelity of response shapes on a server (issue 21, "Shapes" and "Endpoints for
//! features we do not have"): each reply is checked against the sample response of Consul's
//! API docs (<https://developer.hashicorp.com/consul/api-docs>) for field names, JSON types
//! and presence, never for values that differ by design (ids, indexes, times, addresses).

use registry_testkit::cluster::*;
use registry_testkit::fakes::shape::assert_shape;
use registry_testkit::wait_until;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    async fn put(&self, path: &str, body: &Value) -> (u16, String) {
        let resp = self
            .http
            .put(format!("{}{}", self.base, path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

async fn one_server() -> (TestCluster, Api) {
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let api = Api {
        base: c.node(leader).url(),
        http: reqwest::Client::new(),
    };
    (c, api)
}

/// The sample of `GET /v1/catalog/service/:name` in Consul's catalog docs, less the
/// Enterprise (`Namespace`, `Partition`), peering and Connect-only fields.
fn catalog_service_sample() -> Value {
    json!({
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "foobar",
        "Address": "192.168.10.10",
        "Datacenter": "dc1",
        // Maps of user data are checked as objects only (their keys are whatever was sent).
        "TaggedAddresses": {},
        "NodeMeta": {},
        "CreateIndex": 51,
        "ModifyIndex": 51,
        "ServiceAddress": "172.17.0.3",
        "ServiceEnableTagOverride": false,
        "ServiceID": "32a2a47f7992:nodea:5000",
        "ServiceName": "foobar",
        "ServiceKind": "",
        "ServicePort": 5000,
        "ServiceMeta": {},
        "ServiceTaggedAddresses": {
            "lan": {"Address": "172.17.0.3", "Port": 5000},
            "wan": {"Address": "198.18.0.1", "Port": 512}
        },
        "ServiceTags": ["tacos"],
        "ServiceWeights": {"Passing": 1, "Warning": 1}
    })
}

/// A service registered with its local agent (here the server's own) comes back from the
/// agent and from the catalog with the `TaggedAddresses`, `Weights`, `Kind`, `Proxy` and
/// `Connect` it was registered with, in the shapes of Consul's docs. Before the fix the agent
/// dropped them, so `TaggedAddresses`/`Weights` did not come back as sent (Nomad then
/// re-registers on every sync) and the catalog had no `ServiceTaggedAddresses`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_service_fields_come_back_from_agent_and_catalog() {
    let (c, api) = one_server().await;
    let tagged = json!({
        "lan": {"Address": "10.0.0.5", "Port": 8000},
        "wan": {"Address": "198.51.100.53", "Port": 80}
    });
    let weights = json!({"Passing": 10, "Warning": 3});
    let proxy = json!({"DestinationServiceName": "web", "LocalServicePort": 8080});
    let reg = json!({
        "Name": "web", "ID": "web1", "Port": 8080, "Tags": ["v1"],
        "TaggedAddresses": tagged, "Weights": weights, "EnableTagOverride": true,
        "Proxy": proxy, "Connect": {"Native": true}, "Kind": ""
    });
    assert_eq!(api.put("/v1/agent/service/register", &reg).await.0, 200);

    let (_, _, one) = api.get("/v1/agent/service/web1").await;
    assert_eq!(one["TaggedAddresses"], tagged);
    assert_eq!(one["Weights"], weights);
    assert_eq!(one["EnableTagOverride"], true);
    assert_eq!(one["Proxy"], proxy);
    assert_eq!(one["Connect"], json!({"Native": true}));
    assert_eq!(one["Datacenter"], "dc1");

    // The catalog (through the agent's sync) and the health view carry them too.
    wait_until(
        WAIT,
        "the catalog has web1 with its tagged addresses",
        || async {
            let (_, _, list) = api.get("/v1/catalog/service/web").await;
            list[0]["ServiceTaggedAddresses"] == tagged
        },
    )
    .await;
    let (_, _, entries) = api.get("/v1/catalog/service/web").await;
    let entry = &entries[0];
    assert_shape(entry, &catalog_service_sample(), "catalog/service[0]");
    assert_eq!(entry["ServiceWeights"], weights);
    assert_eq!(entry["ServiceEnableTagOverride"], true);
    assert_eq!(entry["ServiceProxy"], proxy);

    let (_, _, health) = api.get("/v1/health/service/web").await;
    let service = &health[0]["Service"];
    assert_shape(
        service,
        &json!({
            "ID": "redis", "Service": "redis", "Kind": "", "Tags": ["primary"],
            "Address": "10.1.10.12", "Meta": {}, "Port": 8000,
            "TaggedAddresses": {"lan": {"Address": "10.1.10.12", "Port": 8000}},
            "Weights": {"Passing": 10, "Warning": 1}, "EnableTagOverride": false,
            "CreateIndex": 1, "ModifyIndex": 1
        }),
        "health/service[0].Service",
    );
    assert_eq!(service["TaggedAddresses"], tagged);
    assert_eq!(service["Weights"], weights);
    c.shutdown().await;
}

/// Connect and gateway reads answer `[]` with Consul's index headers, as a Consul with no
/// Connect-capable instance does, and block on `?index=`; before, they were a bare 404
/// without headers ("Missing index header" in clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_gateway_reads_are_empty_lists_with_index_headers() {
    let (c, api) = one_server().await;
    for path in [
        "/v1/catalog/connect/web",
        "/v1/health/connect/web",
        "/v1/health/ingress/web",
        "/v1/catalog/gateway-services/gw",
    ] {
        let (status, headers, body) = api.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body, json!([]), "{path}");
        let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
        assert!(index >= 1, "{path}: {index}");
        assert!(headers.contains_key("x-consul-knownleader"), "{path}");
        assert!(headers.contains_key("x-consul-lastcontact"), "{path}");
        assert_eq!(headers["content-type"], "application/json", "{path}");

        // A blocking read at the current index waits for its `wait`, then answers the same.
        let started = std::time::Instant::now();
        let (status, _, _) = api.get(&format!("{path}?index={index}&wait=300ms")).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(250), "{path}");
    }
    // A bad filter is refused, as on the endpoints these mirror.
    let (status, _, _) = api
        .get("/v1/health/connect/web?filter=NoSuchField%20%3D%3D%201")
        .await;
    assert_eq!(status, 400);
    c.shutdown().await;
}

/// `/v1/agent/self` and `/v1/agent/members` of a server against the samples of Consul's
/// agent docs: `Coord`, `DebugConfig`, `Meta` and `xDS` were missing, members carried only
/// `dc` and `role`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_agent_self_and_members_have_consul_shapes() {
    let (c, api) = one_server().await;
    let member_sample = json!({
        "Name": "foobar", "Addr": "10.1.10.12", "Port": 8301,
        "Tags": {"dc": "dc1", "id": "40e4a748-2192-161a-0510-9bf59fe950b5", "port": "8300",
                 "role": "consul", "vsn": "1", "vsn_max": "1", "vsn_min": "1",
                 "build": "1.0.0:deadbeef", "segment": ""},
        "Status": 1, "ProtocolMin": 1, "ProtocolMax": 2, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 4, "DelegateCur": 4
    });
    let (status, _, me) = api.get("/v1/agent/self").await;
    assert_eq!(status, 200);
    assert_shape(
        &me,
        &json!({
            "Config": {"Datacenter": "dc1", "NodeName": "foobar",
                       "NodeID": "9d754d17-d864-b1d3-e758-f3fe25a9874f", "Server": true,
                       "Revision": "deadbeef", "Version": "1.0.0"},
            "DebugConfig": {"Datacenter": "dc1", "NodeName": "foobar", "Version": "1.0.0",
                            "ServerMode": true},
            "Coord": {"Adjustment": 0, "Error": 1.5, "Vec": [0, 0, 0, 0, 0, 0, 0, 0],
                      "Height": 0},
            "Member": member_sample,
            "Meta": {},
            "Stats": {}
        }),
        "agent/self",
    );
    assert!(me.as_object().unwrap().contains_key("xDS"), "{me}");
    assert_eq!(me["Coord"]["Vec"].as_array().unwrap().len(), 8);
    assert_eq!(me["Member"]["Tags"]["role"], "consul");
    assert_eq!(me["DebugConfig"]["ServerMode"], true);
    assert_eq!(me["DebugConfig"]["NodeName"], me["Config"]["NodeName"]);

    // The server lists itself as a server: its own node is in the `consul` service.
    let name = me["Config"]["NodeName"].as_str().unwrap().to_owned();
    wait_until(WAIT, "the server is a member with role consul", || async {
        let (_, _, members) = api.get("/v1/agent/members").await;
        members.as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["Name"] == name.as_str() && m["Tags"]["role"] == "consul")
        })
    })
    .await;
    let (_, _, members) = api.get("/v1/agent/members").await;
    for m in members.as_array().unwrap() {
        assert_shape(m, &member_sample, "agent/members[]");
    }
    c.shutdown().await;
}

/// In a cluster, every server lists the others as servers too (`role` `consul`, a `port`
/// tag), found through the `consul` service they register; before, every other member was
/// `role` `node`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_cluster_show_every_server_as_a_server() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let api = Api {
        base: c.node(leader).url(),
        http: reqwest::Client::new(),
    };
    wait_until(WAIT, "three members, each with role consul", || async {
        let (_, _, members) = api.get("/v1/agent/members").await;
        members.as_array().is_some_and(|m| {
            m.len() == 3
                && m.iter()
                    .all(|m| m["Tags"]["role"] == "consul" && m["Tags"]["port"].is_string())
        })
    })
    .await;
    c.shutdown().await;
}
