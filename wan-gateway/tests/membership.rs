//! WAN membership: DCs spread from any one gateway, RTT ordering, gateways dying and returning.

mod common;

use axum::routing::post;
use axum::Json;
use common::*;
use std::time::{Duration, Instant};
use wan_gateway::{GatewayEntry, WanView};

const UNREACHABLE: &str = "Remote DC has no server currently reachable";

#[tokio::test]
async fn a_dc_that_joined_only_a_neighbour_is_learned_and_routable() {
    let s1 = FakeServer::start("dc1").await;
    let s3 = FakeServer::start("dc3").await;
    let g1 = gateway("dc1", &[&s1], &[]).await;
    let g2 = gateway("dc2", &[], &[&g1]).await;
    let g3 = gateway("dc3", &[&s3], &[&g2]).await;

    wait_for_dcs(&g1, &["dc1", "dc2", "dc3"]).await;
    wait_for_dcs(&g3, &["dc1", "dc2", "dc3"]).await;
    let dcs = datacenters(&g1).await;
    assert_eq!(dcs[0], "dc1", "local first: {dcs:?}");
    assert_eq!(datacenters(&g3).await[0], "dc3");

    let (status, index, body) = get(&g1, "/v1/catalog/service/web?dc=dc3").await;
    assert_eq!((status, index.as_deref()), (200, Some("42")), "{body}");
    assert!(body.contains(r#""Datacenter":"dc3""#));
    let (status, _, body) = get(&g3, "/v1/catalog/service/web?dc=dc1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""Datacenter":"dc1""#));

    // g1 knows g3 by its address and has reached it directly.
    let g3_addr = g3.addr.to_string();
    wait_until(Duration::from_secs(5), "g1 to reach g3", || async {
        members(&g1)
            .await
            .into_iter()
            .any(|m| m.addr == g3_addr && m.dc == "dc3" && m.alive && m.rtt_ms.is_some())
            .then_some(())
    })
    .await;

    for g in [g3, g2, g1] {
        g.stop().await;
    }
}

/// Starts a stand-in gateway of `dc` that answers exchanges after `delay`, so its RTT is high.
async fn slow_gateway(
    dc: &'static str,
    delay: Duration,
) -> (String, tokio_util::sync::CancellationToken) {
    let addr = dead_addr().await;
    let me = GatewayEntry {
        dc: dc.into(),
        addr: addr.to_string(),
    };
    let app = axum::Router::new().route(
        "/wan/v1/exchange",
        post(move |Json(_): Json<WanView>| {
            let me = me.clone();
            async move {
                tokio::time::sleep(delay).await;
                Json(WanView {
                    me,
                    members: Vec::new(),
                })
            }
        }),
    );
    let (_, token, _task) = serve(app, addr).await;
    (addr.to_string(), token)
}

#[tokio::test]
async fn datacenters_list_local_first_then_by_round_trip() {
    // "dc2" would come first by name; it is far away, so it must come last.
    let (far, far_stop) = slow_gateway("dc2", Duration::from_millis(200)).await;
    let mut cfg = config("dc1", &[], &[]);
    cfg.retry_join_wan = vec![far.clone()];
    let g1 = wan_gateway::start(cfg).await.unwrap();
    let g3 = gateway("dc3", &[], &[&g1]).await;

    wait_until(Duration::from_secs(10), "RTTs to both DCs", || async {
        let m = members(&g1).await;
        let measured = |dc: &str| m.iter().any(|x| x.dc == dc && x.rtt_ms.is_some());
        (measured("dc2") && measured("dc3")).then_some(())
    })
    .await;
    assert_eq!(datacenters(&g1).await, ["dc1", "dc3", "dc2"]);
    let far_rtt = members(&g1)
        .await
        .into_iter()
        .find(|m| m.addr == far)
        .unwrap()
        .rtt_ms
        .unwrap();
    assert!(far_rtt >= 200.0, "{far_rtt}");

    // g3 learned of the far DC through g1; it is local-first too.
    wait_for_dcs(&g3, &["dc1", "dc2", "dc3"]).await;
    assert_eq!(datacenters(&g3).await[0], "dc3");

    // A DC whose gateways all died stays listed, last.
    far_stop.cancel();
    wait_until(Duration::from_secs(5), "the far DC to be dead", || async {
        members(&g1)
            .await
            .iter()
            .any(|m| m.addr == far && !m.alive)
            .then_some(())
    })
    .await;
    assert_eq!(datacenters(&g1).await, ["dc1", "dc3", "dc2"]);
    g3.stop().await;
    g1.stop().await;
}

#[tokio::test]
async fn remote_gateways_fail_over_die_within_the_bound_and_come_back() {
    let s2 = FakeServer::start("dc2").await;
    let g1 = gateway("dc1", &[], &[]).await;
    let g2a = gateway("dc2", &[&s2], &[&g1]).await;
    let g2b = gateway("dc2", &[&s2], &[&g1]).await;
    let g2a_addr = g2a.addr;
    wait_until(
        Duration::from_secs(10),
        "both dc2 gateways alive in dc1",
        || async {
            let m = members(&g1).await;
            (m.iter()
                .filter(|x| x.dc == "dc2" && x.alive && x.rtt_ms.is_some())
                .count()
                == 2)
                .then_some(())
        },
    )
    .await;
    let path = "/v1/catalog/service/web?dc=dc2";
    assert_eq!(get(&g1, path).await.0, 200);

    // One down: every lookup still succeeds, at once.
    g2a.stop().await;
    for _ in 0..5 {
        let (status, _, body) = get(&g1, path).await;
        assert_eq!(status, 200, "{body}");
    }

    // Both down: the clear error within the stated bound (3 s), both before and after dc1 has
    // declared them dead.
    g2b.stop().await;
    let started = Instant::now();
    let (status, _, body) = get(&g1, path).await;
    assert_eq!((status, body.as_str()), (500, UNREACHABLE));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wait_until(
        Duration::from_secs(5),
        "dc2 gateways dead in dc1",
        || async {
            let m = members(&g1).await;
            (!m.iter().any(|x| x.dc == "dc2" && x.alive)).then_some(())
        },
    )
    .await;
    let started = Instant::now();
    let (status, _, body) = get(&g1, path).await;
    assert_eq!((status, body.as_str()), (500, UNREACHABLE));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        datacenters(&g1).await.contains(&"dc2".to_owned()),
        "dc2 stays listed"
    );

    // One comes back on its old address, with no join list: dc1 notices it by probing.
    let mut cfg = config("dc2", &[&s2], &[]);
    cfg.listen = g2a_addr;
    let g2a = wan_gateway::start(cfg).await.unwrap();
    wait_until(Duration::from_secs(5), "lookups to recover", || async {
        (get(&g1, path).await.0 == 200).then_some(())
    })
    .await;
    // And it relearned dc1 from dc1's probes.
    wait_for_dcs(&g2a, &["dc1", "dc2"]).await;

    g2a.stop().await;
    g1.stop().await;
    s2.stop().await;
}
