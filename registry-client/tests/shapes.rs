//! Consul fidelity of the agent endpoints' shapes (issue 21, "Shapes"): what a client
//! registers comes back as sent, and the replies have the fields, JSON types and presence of
//! the sample responses in Consul's agent docs
//! (<https://developer.hashicorp.com/consul/api-docs/agent>), values that differ by design
//! (ids, addresses, versions) aside.

mod common;

use common::*;
use registry_testkit::fakes::shape::{agent_service_sample, assert_shape};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn get_value(api: &Api, path: &str) -> Value {
    api.get_json(path).await
}

/// Nomad's check: a service registered with `TaggedAddresses`, `Weights` (and `Kind`,
/// `EnableTagOverride`, `Proxy`, `Connect`) reads back from `/v1/agent/services` and
/// `/v1/agent/service/:id` exactly as sent, reaches the catalog with them, and then stays in
/// sync (no catalog write on later syncs). Before the fix the agent dropped
/// `TaggedAddresses`, `Weights`, `Kind`, `Proxy` and `Connect`, so the read-back differed and
/// Nomad re-registered on every sync.
#[tokio::test]
async fn registered_fields_come_back_as_sent_and_stay_in_sync() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);

    // Consul's docs spell the inner fields in lower case; Go's decoder (and ours) ignore case.
    let reg = json!({
        "Name": "redis", "ID": "redis1", "Port": 8000, "Tags": ["primary"],
        "Meta": {"redis_version": "4.0"},
        "TaggedAddresses": {
            "lan": {"address": "127.0.0.1", "port": 8000},
            "wan": {"address": "198.51.100.53", "port": 80}
        },
        "Weights": {"Passing": 10, "Warning": 1},
        "EnableTagOverride": true,
        "Kind": "",
        "Proxy": {"Config": {"foo": "bar"}, "Upstreams": []},
        "Connect": {"Native": true}
    });
    let (code, text) = api
        .put("/v1/agent/service/register", &reg.to_string())
        .await;
    assert_eq!(code, 200, "{text}");
    let tagged = json!({
        "lan": {"Address": "127.0.0.1", "Port": 8000},
        "wan": {"Address": "198.51.100.53", "Port": 80}
    });

    let all = get_value(&api, "/v1/agent/services").await;
    let mut one = get_value(&api, "/v1/agent/service/redis1").await;
    // The single service carries Consul's `ContentHash` (16 hex digits); the list does not.
    let hash = one.as_object_mut().and_then(|m| m.remove("ContentHash"));
    assert!(
        hash.as_ref()
            .and_then(Value::as_str)
            .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit())),
        "ContentHash {hash:?}"
    );
    assert_eq!(all["redis1"], one);
    assert_shape(&one, &agent_service_sample(), "agent/service");
    assert_eq!(one["TaggedAddresses"], tagged);
    assert_eq!(one["Weights"], reg["Weights"]);
    assert_eq!(one["EnableTagOverride"], true);
    assert_eq!(one["Kind"], "");
    assert_eq!(one["Proxy"], reg["Proxy"]);
    assert_eq!(one["Connect"], reg["Connect"]);
    assert_eq!(one["Datacenter"], "dc1");
    assert_eq!(one["Meta"], reg["Meta"]);

    // The catalog receives them with the sync...
    wait_until(
        WAIT,
        "the catalog has redis1's tagged addresses",
        || async {
            let c = server.catalog();
            c.node_services("n1").get("redis1").map(|s| {
                (
                    serde_json::to_value(&s.tagged_addresses).unwrap(),
                    s.weights.passing,
                    s.proxy.is_some(),
                )
            }) == Some((tagged.clone(), 10, true))
        },
    )
    .await;
    // ...and later syncs find it equal: no more catalog writes.
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
        "a sync rewrote the service"
    );
    agent.stop().await;
}

/// A registration without `Weights` gets Consul's default `{"Passing": 1, "Warning": 1}` and
/// `TaggedAddresses` `{}`; weights Consul refuses are a 400 with its reason.
#[tokio::test]
async fn weights_default_and_are_validated() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let (code, _) = api
        .put("/v1/agent/service/register", r#"{"Name":"web","Port":80}"#)
        .await;
    assert_eq!(code, 200);
    let web = get_value(&api, "/v1/agent/service/web").await;
    assert_eq!(web["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(web["TaggedAddresses"], json!({}));
    assert_eq!(web["Kind"], "");
    assert!(
        web.get("Proxy").is_none() && web.get("Connect").is_none(),
        "{web}"
    );

    for (weights, reason) in [
        (
            r#"{"Passing":0,"Warning":1}"#,
            "Passing must be greater than 0",
        ),
        (r#"{"Warning":1}"#, "Passing must be greater than 0"),
        (
            r#"{"Passing":1,"Warning":-1}"#,
            "Warning must be greater or equal than 0",
        ),
    ] {
        let body = format!(r#"{{"Name":"bad","Port":80,"Weights":{weights}}}"#);
        let (code, text) = api.put("/v1/agent/service/register", &body).await;
        assert_eq!(code, 400, "{weights}: {text}");
        assert!(
            text.contains("Invalid Weights") && text.contains(reason),
            "{text}"
        );
    }
    let (code, _) = api.get("/v1/agent/service/bad").await;
    assert_eq!(code, 404);
    agent.stop().await;
}

/// An agent's `services.json` written before these fields existed still loads, with the
/// defaults.
#[tokio::test]
async fn services_persisted_without_the_new_fields_still_load() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("services.json"),
        br#"[{"ID":"old","Service":"old","Tags":[],"Address":"","Meta":{},"Port":80,
             "EnableTagOverride":false,"CreateIndex":0,"ModifyIndex":0}]"#,
    )
    .unwrap();
    let mut config = test_config("n1", &[server.addr]);
    config.data_dir = Some(dir.path().to_path_buf());
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);
    let old = get_value(&api, "/v1/agent/service/old").await;
    assert_eq!(old["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(old["TaggedAddresses"], json!({}));
    agent.stop().await;
}

/// `/v1/agent/self` and `/v1/agent/members` of a client agent against the docs' samples:
/// `Coord`, `DebugConfig`, `Meta`, `xDS` and the member tags Consul sets.
#[tokio::test]
async fn client_agent_self_and_members_have_consul_shapes() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let member_sample = json!({
        "Name": "foobar", "Addr": "10.1.10.12", "Port": 8301,
        "Tags": {"dc": "dc1", "id": "40e4a748-2192-161a-0510-9bf59fe950b5", "role": "node",
                 "vsn": "2", "vsn_max": "3", "vsn_min": "2", "build": "1.0.0:deadbeef",
                 "segment": ""},
        "Status": 1, "ProtocolMin": 1, "ProtocolMax": 2, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 4, "DelegateCur": 4
    });
    let me = get_value(&api, "/v1/agent/self").await;
    assert_shape(
        &me,
        &json!({
            "Config": {"Datacenter": "dc1", "NodeName": "foobar",
                       "NodeID": "9d754d17-d864-b1d3-e758-f3fe25a9874f", "Server": true,
                       "Revision": "deadbeef", "Version": "1.0.0"},
            "DebugConfig": {"Datacenter": "dc1", "NodeName": "foobar", "Version": "1.0.0",
                            "ServerMode": false},
            "Coord": {"Adjustment": 0, "Error": 1.5, "Vec": [0, 0, 0, 0, 0, 0, 0, 0],
                      "Height": 0},
            "Member": member_sample,
            "Meta": {},
            "Stats": {}
        }),
        "agent/self",
    );
    assert!(me.as_object().unwrap().contains_key("xDS"), "{me}");
    assert_eq!(
        me["Coord"]["Vec"],
        json!([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    );
    assert_eq!(me["Member"]["Tags"]["role"], "node");
    assert!(
        me["Member"]["Tags"].get("port").is_none(),
        "a client has no RPC port"
    );
    assert_eq!(me["DebugConfig"]["ServerMode"], false);
    assert_eq!(me["DebugConfig"]["NodeName"], "n1");
    assert_eq!(me["DebugConfig"]["Datacenter"], "dc1");

    let members = get_value(&api, "/v1/agent/members").await;
    let members = members.as_array().unwrap();
    assert!(!members.is_empty());
    for m in members {
        assert_shape(m, &member_sample, "agent/members[]");
    }
    agent.stop().await;
}
