//! Test support: gateways on loopback and requests to them. The fake datacenters, the
//! serve loop, the dead address and the bounded wait are the testkit's, re-exported here.

// Each test file uses a different part of this module and of what it re-exports.
#![allow(dead_code, unused_imports)]

pub use registry_testkit::fakes::dc::*;
pub use registry_testkit::fakes::{dead_addr, serve};
pub use registry_testkit::wait_until;
use std::time::Duration;
use wan_gateway::{GatewayConfig, GatewayHandle, MemberStatus};

/// A gateway config for tests: loopback, fast gossip, short death.
pub fn config(dc: &str, servers: &[&FakeServer], join: &[&GatewayHandle]) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        servers: servers.iter().map(|s| s.url.clone()).collect(),
        retry_join_wan: join.iter().map(|g| g.addr.to_string()).collect(),
        gossip_interval: Duration::from_millis(100),
        dead_after: Duration::from_secs(1),
        ..GatewayConfig::new(dc)
    }
}

/// Starts a gateway.
pub async fn gateway(dc: &str, servers: &[&FakeServer], join: &[&GatewayHandle]) -> GatewayHandle {
    wan_gateway::start(config(dc, servers, join)).await.unwrap()
}

/// A plain client for the tests.
pub fn client() -> reqwest::Client {
    registry_api::tls::plain_client()
}

/// `GET /v1/catalog/datacenters` of a gateway.
pub async fn datacenters(gw: &GatewayHandle) -> Vec<String> {
    client()
        .get(format!("{}/v1/catalog/datacenters", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET /wan/v1/members` of a gateway.
pub async fn members(gw: &GatewayHandle) -> Vec<MemberStatus> {
    client()
        .get(format!("{}/wan/v1/members", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `gw` lists every DC in `dcs` (in any order).
pub async fn wait_for_dcs(gw: &GatewayHandle, dcs: &[&str]) {
    wait_until(Duration::from_secs(10), "datacenters to spread", || async {
        let known = datacenters(gw).await;
        dcs.iter()
            .all(|d| known.iter().any(|k| k == d))
            .then_some(())
    })
    .await
}

/// GET `path` through `gw`; returns status, `X-Consul-Index` and body.
pub async fn get(gw: &GatewayHandle, path: &str) -> (u16, Option<String>, String) {
    let resp = client()
        .get(format!("{}{path}", gw.url()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("x-consul-index")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, index, resp.text().await.unwrap())
}

/// A new random shared key.
pub fn new_key() -> wan_gateway::SharedKey {
    wan_gateway::SharedKey::from_base64(&registry_api::auth::generate_key()).unwrap()
}

/// A gateway config for tests that uses the shared key `key`.
pub fn keyed_config(
    dc: &str,
    servers: &[&FakeServer],
    join: &[&GatewayHandle],
    key: &wan_gateway::SharedKey,
) -> GatewayConfig {
    GatewayConfig {
        encrypt: Some(key.clone()),
        ..config(dc, servers, join)
    }
}

/// Sends `method path` with `body` (as JSON when not empty) to `base` (`http://host:port`),
/// signed with `key` if given; returns the status, the `Allow` header and the body.
pub async fn send(
    base: &str,
    method: &str,
    path: &str,
    body: &[u8],
    key: Option<&wan_gateway::SharedKey>,
) -> (u16, Option<String>, String) {
    let mut req = client()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .body(body.to_vec());
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    if let Some(key) = key {
        // Membership endpoints take an exchange signature, everything else a forward one.
        let purpose = if path.starts_with("/wan/") {
            registry_api::auth::Purpose::Exchange
        } else {
            registry_api::auth::Purpose::Forward
        };
        req = req.header(
            registry_api::auth::SIGNATURE_HEADER,
            key.sign_for(purpose, method, path, body),
        );
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, allow, resp.text().await.unwrap())
}

/// `GET /v1/catalog/datacenters` of a gateway that has the key `key`.
pub async fn signed_datacenters(gw: &GatewayHandle, key: &wan_gateway::SharedKey) -> Vec<String> {
    let (status, _, body) = send(&gw.url(), "GET", "/v1/catalog/datacenters", b"", Some(key)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `GET /wan/v1/members` of a gateway that has the key `key`.
pub async fn signed_members(gw: &GatewayHandle, key: &wan_gateway::SharedKey) -> Vec<MemberStatus> {
    let (status, _, body) = send(&gw.url(), "GET", "/wan/v1/members", b"", Some(key)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}
