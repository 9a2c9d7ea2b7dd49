//! Who may use a gateway (issue 12 items 1 and 2): with a shared key only its holders can join the
//! federation or send requests through it; addresses are `host:port` only; and whatever the key,
//! only the data endpoints cross the WAN.

mod common;

use axum::routing::post;
use axum::Json;
use common::*;
use registry_api::auth::SIGNATURE_HEADER;
use registry_testkit::never_within;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wan_gateway::{GatewayEntry, WanView};

const EXCHANGE: &str = "/wan/v1/exchange";

#[tokio::test]
async fn an_exchange_without_the_key_is_refused_and_adds_nothing() {
    let key = new_key();
    let s1 = FakeServer::start("dc1").await;
    let g1 = wan_gateway::start(keyed_config("dc1", &[&s1], &[], &key))
        .await
        .unwrap();
    let hijack = br#"{"self":{"dc":"dc9","addr":"127.0.0.1:1"},"members":[]}"#;

    // Unsigned, and signed with another key: 403 with the reason.
    let (status, _, body) = send(&g1.url(), "POST", EXCHANGE, hijack, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("x-registry-signature"), "{body}");
    let (status, _, body) = send(&g1.url(), "POST", EXCHANGE, hijack, Some(&new_key())).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("wrong shared key"), "{body}");
    // The gateway's own read endpoints need the key too.
    for path in ["/v1/catalog/datacenters", "/wan/v1/members"] {
        let (status, _, _) = send(&g1.url(), "GET", path, b"", None).await;
        assert_eq!(status, 403, "{path}");
    }
    // dc9 was never added (with the defect it is listed at once).
    never_within(Duration::from_millis(500), "dc9 was added", || async {
        let dcs = signed_datacenters(&g1, &key).await;
        dcs.iter().any(|d| d == "dc9").then_some(dcs)
    })
    .await;
    assert_eq!(signed_members(&g1, &key).await.len(), 1);

    // Signed, but `self` is not host:port: 400, nothing added.
    let evil = br#"{"self":{"dc":"dc9","addr":"evil/x?y#"},"members":[]}"#;
    let (status, _, body) = send(&g1.url(), "POST", EXCHANGE, evil, Some(&key)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HOST:PORT"), "{body}");
    for bad_self in [
        r#"{"self":{"dc":"dc9","addr":"evil:1/x?"},"members":[]}"#,
        r#"{"self":{"dc":"dc9","addr":"user@evil:1"},"members":[]}"#,
        r#"{"self":{"dc":"dc 9","addr":"127.0.0.1:1"},"members":[]}"#,
    ] {
        let (status, _, body) =
            send(&g1.url(), "POST", EXCHANGE, bad_self.as_bytes(), Some(&key)).await;
        assert_eq!(status, 400, "{bad_self}: {body}");
    }
    assert_eq!(signed_members(&g1, &key).await.len(), 1);

    // A valid caller whose member list holds invalid entries: only the valid ones are kept.
    let mixed = br#"{"self":{"dc":"dc8","addr":"127.0.0.1:2"},"members":[
        {"dc":"dc7","addr":"evil:1/x"},{"dc":"dc7","addr":"http://evil:1"},
        {"dc":"dc/7","addr":"127.0.0.1:3"},{"dc":"dc6","addr":"127.0.0.1:4"}]}"#;
    let (status, _, body) = send(&g1.url(), "POST", EXCHANGE, mixed, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let mut addrs: Vec<String> = signed_members(&g1, &key)
        .await
        .into_iter()
        .map(|m| m.addr)
        .collect();
    addrs.sort();
    let mut want = vec![
        "127.0.0.1:2".to_owned(),
        "127.0.0.1:4".to_owned(),
        g1.addr.to_string(),
    ];
    want.sort();
    assert_eq!(addrs, want);
    assert!(s1.requests().is_empty());
    g1.stop().await;
}

#[tokio::test]
async fn gateways_with_the_key_federate_and_one_with_another_key_never_joins() {
    let key = new_key();
    let s1 = FakeServer::start("dc1").await;
    let s2 = FakeServer::start("dc2").await;
    let s3 = FakeServer::start("dc3").await;
    let g1 = wan_gateway::start(keyed_config("dc1", &[&s1], &[], &key))
        .await
        .unwrap();
    let g2 = wan_gateway::start(keyed_config("dc2", &[&s2], &[&g1], &key))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "dc2 in dc1's list", || async {
        signed_datacenters(&g1, &key)
            .await
            .contains(&"dc2".to_owned())
            .then_some(())
    })
    .await;

    // A signed request for dc2 goes through, signed anew at each hop.
    let path = "/v1/catalog/services?dc=dc2";
    let (status, _, body) = send(&g1.url(), "GET", path, b"", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""Datacenter":"dc2""#), "{body}");
    let seen = s2.requests().pop().unwrap();
    let sig = seen.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(
        key.verify_request(Some(sig), "GET", &seen.path_and_query, &seen.body),
        Ok(())
    );

    // A gateway with another key, pointed at both.
    let other = new_key();
    let g3 = wan_gateway::start(keyed_config("dc3", &[&s3], &[&g1, &g2], &other))
        .await
        .unwrap();
    never_within(
        Duration::from_secs(2),
        "the gateway with another key was let in, or learned the federation",
        || async {
            let dc3 = "dc3".to_owned();
            let in_dc1 = signed_datacenters(&g1, &key).await;
            let in_dc2 = signed_datacenters(&g2, &key).await;
            let in_dc3 = signed_datacenters(&g3, &other).await;
            (in_dc1.contains(&dc3) || in_dc2.contains(&dc3) || in_dc3 != [dc3.clone()])
                .then_some((in_dc1, in_dc2, in_dc3))
        },
    )
    .await;
    assert_eq!(signed_members(&g3, &other).await.len(), 1);
    let g3_addr = g3.addr.to_string();
    for g in [&g1, &g2] {
        assert!(!signed_members(g, &key)
            .await
            .iter()
            .any(|m| m.addr == g3_addr || m.dc == "dc3"));
    }
    // And dc3 is no path from dc1.
    let (status, _, _) = send(
        &g1.url(),
        "GET",
        "/v1/catalog/nodes?dc=dc3",
        b"",
        Some(&key),
    )
    .await;
    assert_eq!(status, 500);
    assert!(s3.requests().is_empty());

    for g in [g3, g2, g1] {
        g.stop().await;
    }
}

/// A stand-in that answers exchanges as a `dc7` gateway would, without the key (an address we
/// probe that someone else took over).
async fn keyless_gateway() -> (String, tokio_util::sync::CancellationToken) {
    let addr = dead_addr().await;
    let me = GatewayEntry {
        dc: "dc7".into(),
        addr: addr.to_string(),
    };
    let app = axum::Router::new().route(
        EXCHANGE,
        post(move |Json(_): Json<WanView>| {
            let me = me.clone();
            async move {
                Json(WanView {
                    me,
                    members: vec![GatewayEntry {
                        dc: "dc8".into(),
                        addr: "127.0.0.1:9".into(),
                    }],
                })
            }
        }),
    );
    let (_, token, _task) = serve(app, addr).await;
    (addr.to_string(), token)
}

#[tokio::test]
async fn an_answer_without_the_key_never_counts_as_a_gateway() {
    let key = new_key();
    let (impostor, stop) = keyless_gateway().await;
    let mut cfg = keyed_config("dc1", &[], &[], &key);
    cfg.retry_join_wan = vec![impostor.clone()];
    let g1 = wan_gateway::start(cfg).await.unwrap();
    never_within(
        Duration::from_secs(1),
        "the impostor was believed",
        || async {
            let m = signed_members(&g1, &key).await;
            (m.len() != 1).then_some(m)
        },
    )
    .await;
    let (status, _, _) = send(
        &g1.url(),
        "GET",
        "/v1/catalog/nodes?dc=dc7",
        b"",
        Some(&key),
    )
    .await;
    assert_eq!(status, 500);
    stop.cancel();
    g1.stop().await;
}

#[tokio::test]
async fn agent_operator_and_internal_paths_never_cross() {
    let s1 = FakeServer::start("dc1").await;
    let s2 = FakeServer::start("dc2").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let g2 = gateway("dc2", &[&s2], &[&g1]).await;
    wait_for_dcs(&g1, &["dc1", "dc2"]).await;

    for (method, path) in [
        ("GET", "/v1/operator/raft/configuration?dc=dc2"),
        ("GET", "/v1/operator/raft/configuration"),
        (
            "DELETE",
            "/v1/operator/raft/peer?dc=dc2&address=10.0.0.1:8300",
        ),
        ("PUT", "/v1/agent/service/register"),
        ("PUT", "/v1/agent/service/register?dc=dc2"),
        ("PUT", "/v1/internal/heartbeat"),
        ("PUT", "/v1/internal/heartbeat?dc=dc2"),
        // (ACL endpoints cross since issue [12]: a secondary's writes are made in the primary,
        // and its leader replicates from `/v1/internal/acl/replication`, tokens deciding.)
        ("GET", "/v1/internal/acl/other?dc=dc2"),
        ("GET", "/v1/snapshot?dc=dc2"),
        ("GET", "/v1/agent/self?dc=dc2"),
    ] {
        let body = br#"{"Name":"x","Check":{"HTTP":"http://169.254.169.254/","Interval":"1s"}}"#;
        let (status, _, text) = send(&g1.url(), method, path, body, None).await;
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(text.contains("not federated"), "{text}");
        // The remote gateway refuses the same on its own (a request that bypassed dc1's).
        let (status, _, _) = send(&g2.url(), method, path, body, None).await;
        assert_eq!(status, 403, "{method} {path} at dc2");
    }
    // A data path with a method it does not take: 405 with Allow.
    let (status, allow, _) = send(&g1.url(), "DELETE", "/v1/health/node/n?dc=dc2", b"", None).await;
    assert_eq!((status, allow.as_deref()), (405, Some("GET, HEAD")));

    // Dot segments do not smuggle a path past the rule (sent raw: an HTTP client would resolve
    // them before sending).
    for raw in [
        "/v1/kv/../agent/self?dc=dc2",
        "/v1/kv/%2e%2e/agent/self?dc=dc2",
        "/v1/catalog/%2E%2E/%2e%2e/v1/operator/raft/configuration",
    ] {
        let mut conn = tokio::net::TcpStream::connect(g1.addr).await.unwrap();
        let head = format!("GET {raw} HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{raw}: {answer}");
    }
    assert!(s1.requests().is_empty(), "{:?}", s1.requests());
    assert!(s2.requests().is_empty(), "{:?}", s2.requests());

    // Data endpoints still cross.
    let (status, _, body) = send(&g1.url(), "GET", "/v1/catalog/services?dc=dc2", b"", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""Datacenter":"dc2""#), "{body}");
    let (status, _, _) = send(&g1.url(), "PUT", "/v1/catalog/register?dc=dc2", b"{}", None).await;
    assert_eq!(status, 200);
    let seen: Vec<String> = s2
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        seen,
        ["/v1/catalog/services?dc=dc2", "/v1/catalog/register?dc=dc2"]
    );
    g2.stop().await;
    g1.stop().await;
}

#[tokio::test]
async fn unsigned_requests_are_refused_with_a_key_and_accepted_without() {
    let key = new_key();
    let s1 = FakeServer::start("dc1").await;
    let g1 = wan_gateway::start(keyed_config("dc1", &[&s1], &[], &key))
        .await
        .unwrap();
    let (status, _, body) = send(&g1.url(), "GET", "/v1/catalog/services", b"", None).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = send(&g1.url(), "PUT", "/v1/kv/x", b"v", Some(&new_key())).await;
    assert_eq!(status, 403);
    assert!(s1.requests().is_empty());

    // Signed: forwarded, and what reaches the server is signed by the gateway over what it got.
    let (status, _, body) = send(&g1.url(), "PUT", "/v1/kv/x?flags=3", b"value", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let seen = s1.requests().pop().unwrap();
    assert_eq!(
        (
            seen.method.as_str(),
            seen.path_and_query.as_str(),
            &seen.body[..]
        ),
        ("PUT", "/v1/kv/x?flags=3", &b"value"[..])
    );
    let sig = seen.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(
        key.verify_request(Some(sig), "PUT", "/v1/kv/x?flags=3", b"value"),
        Ok(())
    );

    // Without a key: today's behaviour, and no signature header travels on.
    let s0 = FakeServer::start("dc1").await;
    let g0 = gateway("dc1", &[&s0], &[]).await;
    let (status, _, body) = send(&g0.url(), "GET", "/v1/catalog/services", b"", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = send(&g0.url(), "GET", "/v1/catalog/nodes", b"", None).await;
    assert_eq!(status, 200);
    assert!(s0
        .requests()
        .iter()
        .all(|r| r.headers.get(SIGNATURE_HEADER).is_none()));
    g0.stop().await;
    g1.stop().await;
}
