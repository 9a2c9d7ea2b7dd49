//! Consensus behaviour of a 3-server datacenter: election, replication,
//! failover, partitions, restarts and catch-up by snapshot.

use registry_api::{QueryOptions, RegistryClient};
use registry_server::Role;
use registry_testkit::cluster::*;
use std::time::{Duration, Instant};

async fn service_ids(c: &RegistryClient, name: &str, opts: &QueryOptions) -> Option<Vec<String>> {
    let (list, _) = c.catalog_service(name, opts).await.ok()?;
    let mut ids: Vec<String> = list.into_iter().map(|s| s.service_id).collect();
    ids.sort();
    Some(ids)
}

/// Waits until server `i` answers a `?stale` read of `name` with exactly `ids`.
async fn wait_stale_ids(c: &TestCluster, i: usize, name: &str, ids: &[String]) {
    let client = c.client(i);
    wait_until(
        Duration::from_secs(20),
        &format!("s{} to hold {ids:?}", i + 1),
        || {
            let client = client.clone();
            async move {
                (service_ids(&client, name, &stale()).await.as_deref() == Some(ids)).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_elect_one_leader_and_replicate_writes() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    // A write sent to a follower is forwarded to the leader and acknowledged.
    assert!(c
        .client(follower)
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap());
    assert!(c
        .client(leader)
        .catalog_register(&reg("n2", "web", "web-2"), None)
        .await
        .unwrap());
    let want = vec!["web-1".to_string(), "web-2".to_string()];
    for i in 0..3 {
        // Default mode on any server: linearizable, so both writes are visible at once.
        let got = service_ids(&c.client(i), "web", &QueryOptions::default()).await;
        assert_eq!(
            got.as_deref(),
            Some(&want[..]),
            "default read on s{}",
            i + 1
        );
        wait_stale_ids(&c, i, "web", &want).await;
    }
    let peers = c.client(0).status_peers().await.unwrap();
    assert_eq!(peers.len(), 3);
    let leader_addr = c.client(follower).status_leader().await.unwrap();
    assert_eq!(leader_addr, c.names[leader]);
    let conf = c.client(0).raft_configuration().await.unwrap();
    assert_eq!(conf.servers.iter().filter(|s| s.leader).count(), 1);
    assert!(conf.servers.iter().all(|s| s.voter));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_loses_nothing() {
    let mut c = TestCluster::start(3).await;
    let old = c.wait_leader().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("api-{i:02}");
        c.client(old)
            .catalog_register(&reg(&format!("n{i}"), "api", &id), None)
            .await
            .unwrap();
        acked.push(id);
    }
    let killed_at = Instant::now();
    c.stop(old).await;
    let rest: Vec<usize> = c.running();
    let new = c.wait_leader_among(&rest, Duration::from_secs(20)).await;
    let failover = killed_at.elapsed();
    eprintln!("failover took {failover:?}");
    assert_ne!(new, old);
    // Bound: a few election timeouts (0.5-1 s each here).
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    for &i in &rest {
        let got = service_ids(&c.client(i), "api", &QueryOptions::default()).await;
        assert_eq!(
            got.as_deref(),
            Some(&acked[..]),
            "acknowledged writes on s{}",
            i + 1
        );
    }
    c.client(rest[0])
        .catalog_register(&reg("n-after", "api", "api-after"), None)
        .await
        .unwrap();
    acked.push("api-after".into());
    acked.sort();
    // The old leader comes back as a follower and catches up.
    c.restart(old).await;
    wait_stale_ids(&c, old, "api", &acked).await;
    let leader = c.wait_leader().await;
    assert_ne!(
        leader, old,
        "the restarted server must not disrupt the new leader"
    );
    assert_eq!(c.status(old).role, Role::Follower);
    c.shutdown().await;
}

/// A write made through a follower just as its leader vanishes is forwarded
/// into the void; it is answered (an error: it may or may not apply) once the
/// follower stops following that leader, within the election, not after the
/// whole propose timeout: a client then retries while the new leader takes
/// over instead of waiting out the timeout (issue 20's failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_lost_leader_is_answered_within_the_election() {
    let tuning = registry_server::raft::RaftTuning {
        propose_timeout: Duration::from_secs(30),
        ..fast_tuning()
    };
    let c = TestCluster::builder(3).tuning(tuning).start().await;
    let old = c.wait_leader().await;
    let follower = (old + 1) % 3;
    c.client(follower)
        .catalog_register(&reg("n0", "db", "db-0"), None)
        .await
        .unwrap();
    c.net.isolate(&c.names[old]);
    let sent = Instant::now();
    let answer = c
        .client(follower)
        .catalog_register(&reg("n1", "db", "db-1"), None)
        .await;
    let waited = sent.elapsed();
    assert!(
        answer.is_err(),
        "a write that never reached a leader was acknowledged: {answer:?}"
    );
    // Elections take 0.5-1 s here; the propose timeout is 30 s.
    assert!(
        waited < Duration::from_secs(10),
        "the write was answered only after {waited:?}"
    );
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = c
        .wait_leader_among(&majority, Duration::from_secs(20))
        .await;
    c.client(new)
        .catalog_register(&reg("n2", "db", "db-2"), None)
        .await
        .unwrap();
    c.net.heal_all();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_and_the_majority_moves_on() {
    let c = TestCluster::start(3).await;
    let old = c.wait_leader().await;
    c.client(old)
        .catalog_register(&reg("n0", "db", "db-0"), None)
        .await
        .unwrap();
    c.net.isolate(&c.names[old]);
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = c
        .wait_leader_among(&majority, Duration::from_secs(20))
        .await;
    assert_ne!(new, old);
    c.client(new)
        .catalog_register(&reg("n1", "db", "db-1"), None)
        .await
        .unwrap();

    // The isolated old leader cannot commit: its write is not acknowledged.
    let lonely = c.client(old);
    let res = lonely
        .catalog_register(&reg("n2", "db", "db-lost"), None)
        .await;
    assert!(
        res.is_err(),
        "a minority must not acknowledge a write: {res:?}"
    );
    // Check-quorum makes it step down, after which default reads fail fast
    // with Consul's text instead of answering as a leader.
    wait_until(
        Duration::from_secs(10),
        "the old leader to step down",
        || async { (c.status(old).role != Role::Leader).then_some(()) },
    )
    .await;
    let err = wait_until(Duration::from_secs(10), "default reads to fail", || {
        let lonely = lonely.clone();
        async move {
            lonely
                .catalog_service("db", &QueryOptions::default())
                .await
                .err()
        }
    })
    .await;
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("No cluster leader"), "{err}");

    c.net.heal_all();
    c.wait_leader().await;
    let want = vec!["db-0".to_string(), "db-1".to_string()];
    for i in 0..3 {
        wait_stale_ids(&c, i, "db", &want).await;
    }
    // One log: every server reports the same index for the same data.
    let mut indexes = Vec::new();
    for i in 0..3 {
        let (_, meta) = c.client(i).catalog_service("db", &stale()).await.unwrap();
        indexes.push(meta.index);
    }
    assert!(indexes.windows(2).all(|w| w[0] == w[1]), "{indexes:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_in_another_order_keeps_catalog_and_indexes() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    for i in 0..10 {
        c.client(leader)
            .catalog_register(&reg(&format!("n{i}"), "cache", &format!("cache-{i}")), None)
            .await
            .unwrap();
    }
    let (before, meta_before) = c
        .client(leader)
        .catalog_service("cache", &QueryOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in [2, 0, 1] {
        c.restart(i).await;
    }
    let leader = c.wait_leader().await;
    let (after, meta_after) = c
        .client(leader)
        .catalog_service("cache", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        before, after,
        "same instances with the same Create/ModifyIndex"
    );
    assert_eq!(meta_before.index, meta_after.index);
    // The restarted cluster did not bootstrap a new configuration over its data.
    assert_eq!(c.client(0).status_peers().await.unwrap().len(), 3);
    c.client(leader)
        .catalog_register(&reg("n-new", "cache", "cache-new"), None)
        .await
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut tuning = fast_tuning();
    tuning.compact_threshold = 20;
    tuning.compact_keep = 0;
    let mut c = TestCluster::builder(3).tuning(tuning).start().await;
    let leader = c.wait_leader().await;
    let lagger = (leader + 1) % 3;
    let lagger_id = c.status(lagger).id;
    c.stop(lagger).await;
    let mut want = Vec::new();
    for i in 0..60 {
        let id = format!("q-{i:02}");
        c.client(leader)
            .catalog_register(&reg(&format!("n{i}"), "queue", &id), None)
            .await
            .unwrap();
        want.push(id);
    }
    // The leader's log no longer holds what the stopped follower lacks.
    c.wait_compacted_past(leader, lagger_id).await;
    c.restart(lagger).await;
    wait_stale_ids(&c, lagger, "queue", &want).await;
    assert!(
        c.status(lagger).snapshots_installed >= 1,
        "the follower must have been caught up by a snapshot"
    );
    // And it keeps following from the log afterwards.
    c.client(leader)
        .catalog_register(&reg("n-late", "queue", "q-late"), None)
        .await
        .unwrap();
    want.push("q-late".into());
    wait_stale_ids(&c, lagger, "queue", &want).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_over_tcp_form_a_cluster_whatever_the_start_order() {
    // Real TCP transport: reserve three RPC ports, then start the servers in
    // reverse order with --bootstrap-expect 3 and each other's addresses.
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut handles = Vec::new();
    for i in [2usize, 1, 0] {
        let mut cfg = registry_server::ServerConfig::new(format!("t{i}"));
        cfg.data_dir = Some(dirs[i].path().to_path_buf());
        cfg.http_addr = "127.0.0.1:0".parse().unwrap();
        cfg.rpc_addr = addrs[i].parse().unwrap();
        cfg.bootstrap_expect = 3;
        cfg.retry_join = addrs.clone();
        cfg.tuning = fast_tuning();
        handles.push(registry_server::start(cfg).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let clients: Vec<RegistryClient> = handles
        .iter()
        .map(|h| RegistryClient::new(h.url()))
        .collect();
    let leader_addr = wait_until(Duration::from_secs(20), "a leader over TCP", || async {
        let mut seen = Vec::new();
        for c in &clients {
            seen.push(c.status_leader().await.ok()?);
        }
        (!seen[0].is_empty() && seen.iter().all(|l| *l == seen[0])).then(|| seen[0].clone())
    })
    .await;
    assert!(addrs.contains(&leader_addr));
    wait_until(Duration::from_secs(20), "a write over TCP", || async {
        clients[0]
            .catalog_register(&reg("n1", "tcp", "tcp-1"), None)
            .await
            .ok()
    })
    .await;
    for c in &clients {
        let got = service_ids(c, "tcp", &QueryOptions::default()).await;
        assert_eq!(got, Some(vec!["tcp-1".to_string()]));
    }
    // The RPC port answers HTTP too: that is how agents reach servers by
    // their --retry-join (RPC) addresses.
    for addr in &addrs {
        let via_rpc = RegistryClient::new(format!("http://{addr}"));
        let got = service_ids(&via_rpc, "tcp", &QueryOptions::default()).await;
        assert_eq!(
            got,
            Some(vec!["tcp-1".to_string()]),
            "HTTP on RPC port {addr}"
        );
    }
    for h in handles {
        h.stop().await;
    }
}

/// Starts a fourth server, `s4`, that joins `c` and waits until `leader` has made it a voter.
async fn join_fourth(
    c: &TestCluster,
    leader: usize,
) -> (registry_server::ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = c.config(0);
    cfg.node = "s4".into();
    cfg.advertise = Some("s4".into());
    cfg.data_dir = Some(dir.path().to_path_buf());
    cfg.bootstrap_expect = 0;
    let s4 = registry_server::start(cfg).await.unwrap();
    let s4_id = s4.id;
    wait_until(Duration::from_secs(20), "s4 to become a voter", || async {
        let s = c.status(leader);
        (s.voters.contains(&s4_id) && !s.learners.contains(&s4_id)).then_some(())
    })
    .await;
    (s4, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_joins_as_learner_is_promoted_and_can_be_removed() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.client(leader)
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    let (s4, _dir) = join_fourth(&c, leader).await;
    let s4_id = s4.id;
    let s4_client = RegistryClient::new(s4.url());
    let got = service_ids(&s4_client, "web", &stale()).await;
    assert_eq!(
        got,
        Some(vec!["web-1".to_string()]),
        "s4 received the catalog"
    );
    assert_eq!(c.client(0).status_peers().await.unwrap().len(), 4);

    // Operator removal by address, under concurrent writes on a slow disk:
    // the answer must not leave before the new configuration is stored and
    // published, so that the caller reads it back at once. (Other writes are
    // answered before their Ready's fsync; a configuration change waits.)
    let leader = c.wait_leader().await;
    c.disks[leader].set_write_delay(Duration::from_millis(100));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (client, stop) = (c.client(leader), stop.clone());
        load.spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = reg(&format!("load-{w}-{i}"), "load", &format!("l-{w}-{i}"));
                let _ = client.catalog_register(&r, None).await;
                i += 1;
            }
        });
    }
    let resp = registry_api::tls::plain_client()
        .delete(format!(
            "{}/v1/operator/raft/peer?address=s4",
            c.node(leader).url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    let voters = c.status(leader).voters;
    assert!(
        !voters.contains(&s4_id),
        "answered before the configuration was published: {voters:?}"
    );
    assert_eq!(c.client(leader).status_peers().await.unwrap().len(), 3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    c.disks[leader].set_write_delay(Duration::ZERO);
    s4.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_fsyncs() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let before = c.status(leader);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = c.client(i % 3);
        writes.spawn(async move {
            client
                .catalog_register(&reg(&format!("n{i}"), "batch", &format!("b-{i}")), None)
                .await
        });
    }
    while let Some(r) = writes.join_next().await {
        assert!(r.unwrap().unwrap());
    }
    let after = c.status(leader);
    let entries = after.entries_synced - before.entries_synced;
    let syncs = after.syncs - before.syncs;
    eprintln!("{entries} entries in {syncs} fsyncs on the leader");
    assert!(entries >= 200, "{entries}");
    assert!(
        syncs * 2 <= entries,
        "{entries} entries needed {syncs} fsyncs: no batching"
    );
    let (list, _) = c
        .client(leader)
        .catalog_service("batch", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(list.len(), 200);
    c.shutdown().await;
}

/// The log after the last checkpoint is replayed at a start, and with it the
/// configuration changes the stored configuration already holds: they must
/// not be applied again (a server added and then removed would come back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_restarted_right_after_membership_changes_keep_the_last_configuration() {
    let mut c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    let ids: Vec<u64> = (0..3).map(|i| c.status(i).id).collect();
    let before_changes = c.node(leader).raft.applied_index();
    let (s4, _dir) = join_fourth(&c, leader).await;
    let s4_id = s4.id;
    c.client(leader)
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    s4.stop().await;
    c.client(leader)
        .raft_remove_peer(&[("id", &format!("{s4_id:x}"))])
        .await
        .unwrap();
    c.client(leader)
        .catalog_register(&reg("n2", "web", "web-2"), None)
        .await
        .unwrap();
    let last = c.node(leader).raft.applied_index();
    // No checkpoint since the start (the default spacing is 8,192 entries):
    // each restart replays the additions and the removal.
    for i in 0..3 {
        assert!(c.status(i).checkpointed_to <= before_changes);
    }
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    let leader = c.wait_leader().await;
    for i in 0..3 {
        wait_until(Duration::from_secs(20), "the log replayed", || async {
            (c.node(i).raft.applied_index() >= last).then_some(())
        })
        .await;
        let st = c.status(i);
        let mut voters = st.voters.clone();
        voters.sort_unstable();
        let mut want = ids.clone();
        want.sort_unstable();
        assert_eq!(voters, want, "s{i}'s voters");
        assert!(st.learners.is_empty(), "s{i}'s learners: {:?}", st.learners);
        assert!(!st.peers.contains_key(&s4_id), "s{i} still greets s4");
    }
    assert_eq!(c.client(leader).status_peers().await.unwrap().len(), 3);
    // The three are a cluster of three (not of four, where two could not
    // commit): with one of them stopped, a write still commits.
    let gone = (leader + 1) % 3;
    c.stop(gone).await;
    let leader = c
        .wait_leader_among(&[leader, (leader + 2) % 3], Duration::from_secs(20))
        .await;
    c.client(leader)
        .catalog_register(&reg("n3", "web", "web-3"), None)
        .await
        .unwrap();
    let got = service_ids(&c.client(leader), "web", &stale()).await;
    assert_eq!(
        got,
        Some(vec!["web-1".into(), "web-2".into(), "web-3".into()])
    );
    c.shutdown().await;
}
