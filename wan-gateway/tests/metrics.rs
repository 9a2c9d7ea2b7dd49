//! `GET /v1/agent/metrics` on a gateway: forwards counted per destination datacenter with
//! their latency, failures counted, and a `?dc=` naming no known datacenter kept out of the
//! label set.

mod common;

use common::*;

/// The count of timer `name` for `dc` in the JSON answer (0 when absent).
fn samples(json: &serde_json::Value, name: &str, dc: &str) -> u64 {
    json["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == name && s["Labels"]["dc"] == dc)
        .map_or(0, |s| s["Count"].as_u64().unwrap())
}

#[tokio::test]
async fn forwards_are_counted_per_datacenter_with_their_latency() {
    let s1 = FakeServer::start("dc1").await;
    let s2 = FakeServer::start("dc2").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let g2 = gateway("dc2", &[&s2], &[&g1]).await;
    wait_for_dcs(&g1, &["dc1", "dc2"]).await;

    for _ in 0..3 {
        assert_eq!(get(&g1, "/v1/catalog/nodes?dc=dc2").await.0, 200);
    }
    assert_eq!(get(&g1, "/v1/catalog/nodes").await.0, 200);
    for dc in ["nowhere", "elsewhere"] {
        assert_eq!(get(&g1, &format!("/v1/catalog/nodes?dc={dc}")).await.0, 500);
    }

    let (status, _, body) = get(&g1, "/v1/agent/metrics").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let name = "consul.wan_gateway.forward";
    assert_eq!(samples(&json, name, "dc2"), 3);
    assert_eq!(samples(&json, name, "dc1"), 1);
    assert_eq!(samples(&json, name, "unknown"), 2);
    assert_eq!(
        samples(&json, name, "nowhere"),
        0,
        "no label for an unknown dc"
    );
    let sample = json["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == name && s["Labels"]["dc"] == "dc2")
        .unwrap();
    assert!(sample["Max"].as_f64().unwrap() > 0.0, "{sample}");

    let (status, _, text) = get(&g1, "/v1/agent/metrics?format=prometheus").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"consul_wan_gateway_forward_errors_total{dc="unknown"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"consul_wan_gateway_forward_count{dc="dc2"} 3"#),
        "{text}"
    );
    // The remote gateway counted the same requests as forwards to its own servers.
    let (_, _, remote) = get(&g2, "/v1/agent/metrics").await;
    let remote: serde_json::Value = serde_json::from_str(&remote).unwrap();
    assert_eq!(samples(&remote, name, "dc2"), 3);
    g1.stop().await;
    g2.stop().await;
}
