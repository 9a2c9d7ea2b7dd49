//! Sessions and locks on a 3-server cluster: Consul's session endpoints and
//! their refusals; a lock taken through a follower is released when its
//! holder's node dies (its `serfHealth` goes critical through liveness) and
//! lock-delay holds off the next holder; TTLs expire on the leader, across a
//! leader change, and renewals keep a session alive; a session created
//! through a client agent belongs to the agent's node.

use registry_api::kv::SessionEntry;
use registry_api::{QueryOptions, RegistryClient};
use registry_testkit::cluster::*;
use registry_testkit::never_within;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn put(url: String, body: &str) -> (u16, String) {
    let resp = registry_api::tls::plain_client()
        .put(url)
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The holder of `key` as `c` reads it (`None`: no key; `Some("")`: unheld).
async fn holder(c: &RegistryClient, key: &str) -> Option<String> {
    let (list, _) = c.kv_get(key, &QueryOptions::default(), &[]).await.ok()?;
    Some(list?.into_iter().next()?.session)
}

/// Heartbeats for `node` through `c` every 100 ms until `stop` fires.
fn keep_alive(c: RegistryClient, node: &'static str, stop: CancellationToken) {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            heartbeat(&c, node).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// `Some(())` once session `id` is gone as `c` reads it; `None` while it exists or `c`
/// does not answer.
async fn session_gone(c: &RegistryClient, id: &str) -> Option<()> {
    let (info, _) = c.session_info(id, &QueryOptions::default()).await.ok()?;
    info.is_empty().then_some(())
}

async fn wait_passing(c: &RegistryClient, node: &str) {
    wait_until(Duration::from_secs(10), "serfHealth passing", || async {
        serf_status(c, node, &QueryOptions::default())
            .await
            .as_deref()
            == Some("passing")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_endpoints_answer_and_refuse_as_consul() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let f = (leader + 1) % 3;
    let (lc, fc) = (c.client(leader), c.client(f));
    // Defaults: the answering server's node, serfHealth, 15 s, release (so
    // that node's serfHealth must be passing: the leader writes it just
    // after it takes office).
    wait_passing(&fc, &c.names[f]).await;
    let id = fc.session_create(&json!({})).await.unwrap();
    assert!(registry_api::ids::is_uuid(&id), "{id}");
    let (info, meta) = lc
        .session_info(&id, &QueryOptions::default())
        .await
        .unwrap();
    let want = SessionEntry {
        id: id.clone(),
        node: c.names[f].clone(),
        lock_delay: 15_000_000_000,
        behavior: "release".into(),
        node_checks: vec!["serfHealth".into()],
        create_index: meta.index,
        modify_index: meta.index,
        ..Default::default()
    };
    assert_eq!(info, [want]);
    let (status, body) = (
        200,
        registry_api::tls::plain_client()
            .get(format!("{}/v1/session/info/{id}", lc.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let shape: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    for field in [
        "ID",
        "Name",
        "Node",
        "LockDelay",
        "Behavior",
        "TTL",
        "NodeChecks",
        "ServiceChecks",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(shape[0].get(field).is_some(), "{field} in {shape}");
    }
    // Everything named, case-insensitively; LockDelay as a number of seconds.
    let node = c.names[leader].clone();
    let named = lc
        .session_create(&json!({"name": "web-lock", "NODE": node, "lockdelay": 3, "Behavior": "delete", "TTL": "30s", "NodeChecks": []}))
        .await
        .unwrap();
    let (info, _) = fc
        .session_info(
            &named,
            &QueryOptions {
                consistent: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let s = &info[0];
    assert_eq!(
        (
            s.name.as_str(),
            s.node.as_str(),
            s.lock_delay,
            s.behavior.as_str(),
            s.ttl.as_str()
        ),
        ("web-lock", node.as_str(), 3_000_000_000, "delete", "30s")
    );
    assert!(s.node_checks.is_empty());
    // node/:node and list.
    let (on_node, _) = lc
        .get::<Vec<SessionEntry>>(
            &format!("/v1/session/node/{node}"),
            &QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(on_node.len(), 1);
    let (all, list_meta) = lc
        .get::<Vec<SessionEntry>>("/v1/session/list", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    // Renew: the session; a missing one is a 404 with Consul's text.
    let renewed = fc.session_renew(&named).await.unwrap();
    assert_eq!(renewed[0].id, named);
    let (_, after_renew) = lc
        .get::<Vec<SessionEntry>>("/v1/session/list", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        after_renew.index, list_meta.index,
        "a renewal moves no index"
    );
    // Destroy: true, then info is [] and renew 404.
    assert!(fc.session_destroy(&named).await.unwrap());
    let (gone, _) = lc
        .session_info(&named, &QueryOptions::default())
        .await
        .unwrap();
    assert!(gone.is_empty());
    let (status, body) = put(format!("{}/v1/session/renew/{named}", fc.base()), "").await;
    assert_eq!(
        (status, body),
        (404, format!("Session id '{named}' not found"))
    );
    assert!(
        fc.session_destroy(&named).await.unwrap(),
        "destroy is idempotent"
    );

    // Refusals, with Consul's texts; nothing is created.
    let cases = [
        (
            json!({"TTL": "5s"}),
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]",
        ),
        (json!({"TTL": "86401s"}), "Invalid Session TTL"),
        (json!({"TTL": "soon"}), "Session TTL 'soon' invalid"),
        (
            json!({"Behavior": "keep"}),
            "Invalid Behavior setting 'keep'",
        ),
        (json!({"Node": "nowhere"}), "Missing node registration"),
        (
            json!({"NodeChecks": ["serfHealth", "nope"]}),
            "Missing check 'nope' registration",
        ),
        (json!({"LockDelay": "15"}), "Request decode failed"),
    ];
    for (body, reason) in cases {
        let (status, text) = put(
            format!("{}/v1/session/create", lc.base()),
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
    }
    let (status, text) = put(format!("{}/v1/session/create", lc.base()), "{").await;
    assert!(
        status == 400 && text.starts_with("Request decode failed"),
        "{text}"
    );
    // A critical check, on a node no agent owns (an agent would remove it).
    lc.catalog_register(&reg_with_check("ext-node", "svc", "critical"), None)
        .await
        .unwrap();
    let (status, text) = put(
        format!("{}/v1/session/create", lc.base()),
        &json!({"Node": "ext-node", "ServiceChecks": [{"ID": "svc-check"}]}).to_string(),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (400, "Check 'svc-check' is in critical state")
    );
    let (status, _) = put(format!("{}/v1/session/destroy/not-a-uuid", lc.base()), "").await;
    assert_eq!(status, 400);
    let (all, _) = lc
        .get::<Vec<SessionEntry>>("/v1/session/list", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "only the first session is left: {all:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lock_is_released_and_lock_delay_holds_off_the_next_holder() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.client((leader + 1) % 3);
    let other = c.client((leader + 2) % 3);
    // Two application nodes, kept alive by heartbeats (as their agents would).
    let (app1, app2) = (CancellationToken::new(), CancellationToken::new());
    keep_alive(follower.clone(), "app-1", app1.clone());
    keep_alive(other.clone(), "app-2", app2.clone());
    wait_passing(&follower, "app-1").await;
    wait_passing(&other, "app-2").await;
    // app-1 takes the lock through a follower, with a 3 s lock-delay.
    let s1 = follower
        .session_create(&json!({"Node": "app-1", "LockDelay": "3s"}))
        .await
        .unwrap();
    let s2 = other
        .session_create(&json!({"Node": "app-2"}))
        .await
        .unwrap();
    assert!(follower
        .kv_put("service/leader", "app-1", &[("acquire", &s1)])
        .await
        .unwrap());
    assert!(!other
        .kv_put("service/leader", "app-2", &[("acquire", &s2)])
        .await
        .unwrap());
    assert_eq!(
        holder(&other, "service/leader").await.as_deref(),
        Some(s1.as_str())
    );

    // app-1 dies: within the serfHealth bound (1 s timeout + 100 ms scan
    // in tests) its session is invalidated and the lock released.
    let died = Instant::now();
    app1.cancel();
    wait_until(
        Duration::from_secs(10),
        "the lock to be released",
        || async { holder(&other, "service/leader").await.as_deref() == Some("") },
    )
    .await;
    let released_after = died.elapsed();
    eprintln!("lock released {released_after:?} after the holder's last heartbeat");
    assert!(
        released_after < Duration::from_secs(3),
        "{released_after:?}"
    );
    let (gone, _) = other
        .session_info(&s1, &QueryOptions::default())
        .await
        .unwrap();
    assert!(gone.is_empty(), "the session was invalidated");
    let entry = other
        .kv_get("service/leader", &QueryOptions::default(), &[])
        .await
        .unwrap()
        .0
        .unwrap();
    assert_eq!(entry[0].lock_index, 1, "LockIndex is kept on release");

    // Lock-delay: app-2 cannot acquire for 3 s after the invalidation...
    let mut refused = 0;
    let acquired_at = loop {
        if other
            .kv_put("service/leader", "app-2", &[("acquire", &s2)])
            .await
            .unwrap()
        {
            break died.elapsed();
        }
        refused += 1;
        assert!(died.elapsed() < Duration::from_secs(15), "never acquired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("acquired {acquired_at:?} after the holder died, after {refused} refusals");
    assert!(
        refused > 0,
        "the first acquire after the release must be held off"
    );
    // The delay counts from the invalidation, which came >= 1 s after death.
    assert!(acquired_at >= Duration::from_secs(3), "{acquired_at:?}");
    let entry = other
        .kv_get("service/leader", &QueryOptions::default(), &[])
        .await
        .unwrap()
        .0
        .unwrap();
    assert_eq!(
        (entry[0].session.as_str(), entry[0].lock_index),
        (s2.as_str(), 2)
    );
    // ... while an explicit release sets no lock-delay: s2 releases and
    // re-acquires at once.
    assert!(other
        .kv_put("service/leader", "", &[("release", &s2)])
        .await
        .unwrap());
    assert!(other
        .kv_put("service/leader", "app-2", &[("acquire", &s2)])
        .await
        .unwrap());
    app2.cancel();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_expire_on_the_leader_across_a_leader_change_and_renewals_keep_sessions() {
    let mut c = TestCluster::builder(3)
        .sessions(fast_sessions())
        .start()
        .await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let fc = c.client(follower);
    // Both on a node that stays up (a follower's): TTL 10 s, which lapses in
    // 2 s with the test multiplier (0.2).
    let node = c.names[follower].clone();
    wait_passing(&fc, &node).await;
    let body = json!({"Node": node, "TTL": "10s", "LockDelay": "0s"});
    let lapsing = fc.session_create(&body).await.unwrap();
    let renewed = fc.session_create(&body).await.unwrap();
    assert!(fc
        .kv_put("ttl/lapsing", "x", &[("acquire", &lapsing)])
        .await
        .unwrap());
    // Renew one every 300 ms, through whichever server, each renewal on its
    // own (one lost with the old leader must not hold up the next ones).
    let stop = CancellationToken::new();
    {
        let (stop, id) = (stop.clone(), renewed.clone());
        let clients: Vec<RegistryClient> = (0..3).map(|i| c.client(i)).collect();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                let (client, id) = (clients[i % 3].clone(), id.clone());
                tokio::spawn(async move { client.session_renew(&id).await });
                i += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    // The leader goes before the TTL lapses; the new one re-arms the timers
    // in full and expires the session that is not renewed.
    c.stop(leader).await;
    let stopped = Instant::now();
    let rest = c.running();
    c.wait_leader_among(&rest, Duration::from_secs(20)).await;
    wait_until(
        Duration::from_secs(15),
        "the unrenewed session to expire",
        || session_gone(&fc, &lapsing),
    )
    .await;
    eprintln!("expired {:?} after the leader stopped", stopped.elapsed());
    assert_eq!(
        holder(&fc, "ttl/lapsing").await.as_deref(),
        Some(""),
        "its lock was released"
    );
    // The renewed one lives on for several more TTL periods.
    never_within(
        Duration::from_secs(5),
        "the renewed session expired",
        || session_gone(&fc, &renewed),
    )
    .await;
    // Once renewals stop, it lapses too.
    stop.cancel();
    wait_until(
        Duration::from_secs(10),
        "the session to lapse once renewals stop",
        || session_gone(&fc, &renewed),
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_through_an_agent_belongs_to_the_agents_node() {
    let c = TestCluster::start(3).await;
    c.wait_leader().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = registry_client::start(c.agent_config("app-host", Some(dir.path())))
        .await
        .unwrap();
    let ac = RegistryClient::new(format!("http://{}", agent.http_addr));
    wait_passing(&ac, "app-host").await;
    // No Node: the agent's. Body keys in any case.
    let id = ac
        .session_create(&json!({"name": "via-agent", "ttl": "10s"}))
        .await
        .unwrap();
    let (info, _) = ac
        .session_info(&id, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(info[0].node, "app-host");
    assert_eq!(info[0].name, "via-agent");
    // An empty body too; a named node is kept.
    let (status, body) = put(format!("{}/v1/session/create", ac.base()), "").await;
    assert_eq!(status, 200, "{body}");
    let id: registry_api::kv::SessionCreated = serde_json::from_str(&body).unwrap();
    let (info, _) = ac
        .session_info(&id.id, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(info[0].node, "app-host");
    let named = ac
        .session_create(&json!({"Node": c.names[0]}))
        .await
        .unwrap();
    let (info, _) = ac
        .session_info(&named, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(info[0].node, c.names[0]);
    // KV and txn go through the agent as well.
    assert!(ac
        .kv_put("via/agent", "1", &[("acquire", &id.id)])
        .await
        .unwrap());
    let (list, _) = ac
        .kv_get("via/agent", &QueryOptions::default(), &[])
        .await
        .unwrap();
    assert_eq!(list.unwrap()[0].session, id.id);
    let (status, _) = put(format!("{}/v1/session/create", ac.base()), "[]").await;
    assert_eq!(status, 400);
    agent.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_time_is_the_leaders_so_a_fast_follower_clock_cannot_cut_a_lock_delay_short() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let f = (leader + 1) % 3;
    // The follower's clock runs an hour ahead: were its proposals stamped
    // with it, the lock-delay below would have run out long ago.
    c.node(f).raft.set_clock_skew(3_600_000);
    let (lc, fc) = (c.client(leader), c.client(f));
    // Sessions need their node's serfHealth passing: the leader registers
    // itself just after it takes office.
    wait_passing(&fc, &c.names[leader]).await;
    let s1 = lc
        .session_create(&json!({"Node": c.names[leader], "LockDelay": "30s"}))
        .await
        .unwrap();
    let s2 = fc
        .session_create(&json!({"Node": c.names[leader]}))
        .await
        .unwrap();
    assert!(lc
        .kv_put("skew/lock", "1", &[("acquire", &s1)])
        .await
        .unwrap());
    assert!(lc.session_destroy(&s1).await.unwrap());
    assert_eq!(holder(&fc, "skew/lock").await.as_deref(), Some(""));
    assert!(
        !fc.kv_put("skew/lock", "2", &[("acquire", &s2)])
            .await
            .unwrap(),
        "an acquire through the fast follower is held off by the lock-delay"
    );
    assert_eq!(c.wait_leader().await, leader, "no leader change meanwhile");
    c.shutdown().await;
}
