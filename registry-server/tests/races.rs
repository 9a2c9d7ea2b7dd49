//! Races that hurt healthy nodes or bring back deleted data (issue 12, items
//! 5, 6 and 9): heartbeats sent to a server cut off from the leader, a write
//! that reaches Raft after its caller gave up, and a vote granted by a
//! restarted follower inside the old leader's read lease.

use registry_api::{DeregisterRequest, QueryOptions, RegistryClient};
use registry_client::{ClientConfig, ClientHandle};
use registry_server::raft::RaftTuning;
use registry_server::Role;
use registry_testkit::cluster::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// An agent of `c` whose server list starts with server `first` (its preferred server).
async fn start_agent(c: &TestCluster, name: &str, dir: &Path, first: usize) -> ClientHandle {
    let cfg = ClientConfig {
        retry_join: servers_preferring(c, first),
        ..c.agent_config(name, Some(dir))
    };
    registry_client::start(cfg).await.unwrap()
}

/// HTTP addresses of servers `first` and then the others.
fn servers_preferring(c: &TestCluster, first: usize) -> Vec<String> {
    let mut order = vec![first];
    order.extend(c.running().into_iter().filter(|&i| i != first));
    order
        .into_iter()
        .map(|i| c.node(i).http_addr.to_string())
        .collect()
}

/// Watches `node`'s `serfHealth` on the leader every 500 ms for `how_long`;
/// any critical reading fails the test.
async fn assert_stays_passing(leader: &RegistryClient, node: &str, how_long: Duration) {
    let until = Instant::now() + how_long;
    let (mut passing, mut readings) = (0, 0);
    while Instant::now() < until {
        let status = serf_status(leader, node, &stale()).await;
        readings += 1;
        assert_ne!(
            status.as_deref(),
            Some("critical"),
            "{node} went critical after {readings} readings"
        );
        if status.as_deref() == Some("passing") {
            passing += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        passing * 10 >= readings * 9,
        "{node} read passing only {passing} of {readings} times"
    );
}

/// Item 5: an agent whose preferred server is isolated from the other
/// servers moves to another server and its node stays passing. Before the
/// fix the isolated server answered heartbeats with 200 while it still
/// believed in a leader, and agents did not move on error statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_an_isolated_server_stays_passing() {
    // The isolated server refuses a heartbeat once the leader has not
    // acknowledged it for `heartbeat_ack_timeout`; at the default 1 s that
    // alone used the whole 1 s node timeout of `fast_liveness`, and the node
    // went critical on a loaded machine before the agent could move on.
    let tuning = RaftTuning {
        heartbeat_ack_timeout: Duration::from_millis(300),
        ..fast_tuning()
    };
    let c = TestCluster::builder(3)
        .agents(false)
        .tuning(tuning)
        .start()
        .await;
    let leader = c.wait_leader().await;
    let x = (leader + 1) % 3;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&c, "app-iso", dir.path(), x).await;
    let lc = c.client(leader);
    wait_until(Duration::from_secs(10), "app-iso passing", || async {
        (serf_status(&lc, "app-iso", &stale()).await.as_deref() == Some("passing")).then_some(())
    })
    .await;
    c.net.isolate(&c.names[x]);
    // 30 s is thirty node timeouts (fast_liveness: 1 s).
    assert_stays_passing(&lc, "app-iso", Duration::from_secs(30)).await;
    assert_eq!(
        c.wait_leader_among(&[leader], Duration::from_secs(1)).await,
        leader
    );
    agent.stop().await;
    c.shutdown().await;
}

/// Item 5: a server that hears the leader but cannot reach it (a one-way
/// cut) keeps its leader and fresh contact, so only the leader's ack shows
/// that heartbeats do not arrive. Before the fix it answered 200 and dropped
/// every heartbeat, for as long as the cut lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_reach_the_leader_refuses_heartbeats() {
    let c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    let x = (leader + 1) % 3;
    let y = (leader + 2) % 3;
    let (xc, yc, lc) = (c.client(x), c.client(y), c.client(leader));
    // Acknowledged forwarding works on a healthy cluster.
    assert_eq!(heartbeat(&lc, "app-direct").await, 200);
    assert_eq!(heartbeat(&yc, "app-fwd").await, 200);
    wait_until(Duration::from_secs(10), "a heartbeat through x", || async {
        (heartbeat(&xc, "app-fwd").await == 200).then_some(())
    })
    .await;

    c.net.cut_one_way(&c.names[x], &c.names[leader]);
    c.net.cut_one_way(&c.names[x], &c.names[y]);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let status = heartbeat(&xc, "app-cut").await;
        assert_ne!(status, 200, "a server cut off from the leader said 200");
        let st = c.status(x);
        eprintln!(
            "x answered {status}; x sees leader {:x}, contact {:?} ago",
            st.leader_id,
            st.last_leader_contact.map(|t| t.elapsed())
        );
    }
    // The healthy follower still gets them through.
    assert_eq!(heartbeat(&yc, "app-fwd").await, 200);

    // End to end: an agent preferring x stays passing.
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&c, "app-oneway", dir.path(), x).await;
    wait_until(Duration::from_secs(10), "app-oneway passing", || async {
        (serf_status(&lc, "app-oneway", &stale()).await.as_deref() == Some("passing")).then_some(())
    })
    .await;
    assert_stays_passing(&lc, "app-oneway", Duration::from_secs(10)).await;
    agent.stop().await;
    c.shutdown().await;
}

/// Item 6: a register stuck behind a slow fsync on one server, given up by
/// its caller after 1 s, must not be proposed once the disk recovers: the
/// caller deregistered through another server meanwhile, and the late
/// register would bring the service back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_is_not_proposed_late() {
    let c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    let slow = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (oc, lc) = (c.client(other), c.client(leader));
    let web = reg("app-1", "web", "web-1");
    oc.catalog_register(&web, None).await.unwrap();
    let sc = c.client(slow);
    wait_until(
        Duration::from_secs(10),
        "web on the slow server",
        || async {
            let (l, _) = sc.catalog_service("web", &stale()).await.ok()?;
            (l.len() == 1).then_some(())
        },
    )
    .await;

    // Stall the slow server's Raft thread in a 5 s fsync: another write
    // commits on the leader and `other`, and `slow` starts persisting it.
    c.disks[slow].set_write_delay(Duration::from_secs(5));
    oc.catalog_register(&reg("filler", "filler", "filler-1"), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The agent's register reaches the stalled server; it gives up after 1 s.
    let impatient = RegistryClient::with_http(
        c.node(slow).url(),
        registry_api::tls::client_builder(None)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let gave_up = Instant::now();
    let r = impatient.catalog_register(&web, None).await;
    assert!(r.is_err(), "the stalled server answered: {r:?}");
    eprintln!("register gave up after {:?}", gave_up.elapsed());

    // It deregisters through another server, which commits at once.
    oc.catalog_deregister(
        &DeregisterRequest {
            node: "app-1".into(),
            service_id: "web-1".into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    c.disks[slow].set_write_delay(Duration::ZERO);

    // The stalled fsync ends ~5 s after it began; then the slow server
    // handles the queued register. Watch well past that: the service must
    // never come back.
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        if let Ok((l, _)) = lc.catalog_service("web", &stale()).await {
            assert!(
                l.is_empty(),
                "the deregistered service came back {:?} after the register gave up",
                gave_up.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The slow server caught up and agrees.
    let commit = c.status(leader).commit;
    wait_until(
        Duration::from_secs(10),
        "the slow server to catch up",
        || async { (c.node(slow).raft.applied_index() >= commit).then_some(()) },
    )
    .await;
    assert!(sc
        .catalog_service("web", &stale())
        .await
        .unwrap()
        .0
        .is_empty());
    c.shutdown().await;
}

/// Item 9: a leader serves default reads from a lease for 3/4 of an election
/// timeout after a quorum confirmed it; a follower that restarts inside that
/// lease must not help elect another leader before it ends, or the old leader
/// serves reads that miss the new leader's writes.
///
/// Deterministic: the old leader L and the follower A use a 3 s election
/// timeout (a 2.25 s lease); the other follower B, cut from L, campaigns
/// every 0.2-0.4 s, so without the fix it wins as soon as A restarts, well
/// inside L's lease; with it, no leader is elected before A's 3 s are over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_does_not_vote_inside_the_old_leaders_lease() {
    let long = RaftTuning {
        election_ticks: 60,
        ..fast_tuning()
    };
    let mut c = TestCluster::builder(3)
        .tuning(long)
        .agents(false)
        .start()
        .await;
    let l = c.wait_leader().await;
    let (a, b) = ((l + 1) % 3, (l + 2) % 3);
    c.client(l)
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();

    // B restarts with a short election timeout, and catches up.
    c.stop(b).await;
    let mut cfg = c.config(b);
    cfg.tuning = RaftTuning {
        election_ticks: 4,
        ..fast_tuning()
    };
    c.nodes[b] = Some(registry_server::start(cfg).await.unwrap());
    let l_id = c.status(l).id;
    wait_until(
        Duration::from_secs(20),
        "B following L, caught up",
        || async {
            let (sl, sb) = (c.status(l), c.status(b));
            (sb.leader_id == l_id && sb.commit == sl.commit).then_some(())
        },
    )
    .await;

    // B loses L; A, hearing L, ignores B's (pre-)votes.
    c.net.cut(&c.names[l], &c.names[b]);
    wait_until(Duration::from_secs(10), "B to lose its leader", || async {
        (c.status(b).leader_id == 0).then_some(())
    })
    .await;
    assert_eq!(c.status(a).leader_id, l_id);
    assert_eq!(c.status(l).role, Role::Leader);

    // A quorum (L, A) confirms L's leadership: L holds a lease from here.
    let lease_from = Instant::now();
    let consistent = QueryOptions {
        consistent: true,
        ..Default::default()
    };
    c.client(l)
        .catalog_service("web", &consistent)
        .await
        .unwrap();
    // L is cut off, and A restarts (forgetting that it heard from L).
    c.net.isolate(&c.names[l]);
    c.stop(a).await;
    c.restart(a).await;
    eprintln!("A restarted {:?} into L's lease", lease_from.elapsed());

    // A new leader (B) and a write it commits.
    // A new leader (B, or A once it votes again) and a write it commits.
    let new_leader = c.wait_leader_among(&[a, b], Duration::from_secs(20)).await;
    eprintln!(
        "{} leads {:?} into L's lease",
        c.names[new_leader],
        lease_from.elapsed()
    );
    c.client(new_leader)
        .catalog_register(&reg("n2", "web", "web-2"), None)
        .await
        .unwrap();

    // A default read on L must not miss that write.
    let at = lease_from.elapsed();
    let read = c
        .client(l)
        .catalog_service("web", &QueryOptions::default())
        .await;
    eprintln!("L read {at:?} into its lease: {read:?}");
    if let Ok((list, _)) = read {
        assert!(
            list.iter().any(|s| s.service_id == "web-2"),
            "the old leader served a stale default read {at:?} after its lease began \
             (a new leader had committed web-2)"
        );
    }
    c.shutdown().await;
}
