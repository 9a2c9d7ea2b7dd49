//! Snapshots to followers behind the compacted log: a snapshot counts as
//! delivered only once the follower acknowledges it, a lost one is sent again,
//! and a follower that keeps losing them does not make the leader build a new
//! one at every heartbeat reply. And the checkpoints the log is compacted
//! behind: servers restarted together rebuild everything acknowledged from
//! their last checkpoint and the log after it, also from a checkpoint taken
//! in several steps while writes changed the rows it had already written.

use registry_testkit::cluster::*;
use std::time::{Duration, Instant};

/// Three servers that compact their log every 20 entries, keeping none.
async fn compacting_cluster() -> TestCluster {
    let mut tuning = fast_tuning();
    tuning.compact_threshold = 20;
    tuning.compact_keep = 0;
    TestCluster::builder(3)
        .tuning(tuning)
        .agents(false)
        .start()
        .await
}

/// Stops a follower, writes past what the leader's log still holds, and
/// returns (leader, stopped follower, the leader's applied index).
async fn leave_a_follower_behind(c: &mut TestCluster) -> (usize, usize, u64) {
    let leader = c.wait_leader().await;
    let lagger = (leader + 1) % 3;
    let lagger_id = c.status(lagger).id;
    c.stop(lagger).await;
    register_queue(c, leader).await;
    c.wait_compacted_past(leader, lagger_id).await;
    let applied = c.node(leader).raft.applied_index();
    (leader, lagger, applied)
}

/// Registers 60 instances of `queue` (nodes `n0`..`n59`) through server `leader`: three
/// times the log the compacting cluster keeps.
async fn register_queue(c: &TestCluster, leader: usize) {
    for i in 0..60 {
        c.client(leader)
            .catalog_register(&reg(&format!("n{i}"), "queue", &format!("q-{i:02}")), None)
            .await
            .unwrap();
    }
}

/// Waits until server `i` has applied `index` and holds the last write.
async fn wait_caught_up(c: &TestCluster, i: usize, index: u64, timeout: Duration) {
    wait_until(timeout, "the follower caught up", || async {
        let caught_up = c
            .node(i)
            .raft
            .with_applied(|s, applied| applied >= index && s.catalog.has_node("n59"));
        caught_up.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_first_snapshots_are_lost_still_catches_up() {
    let mut c = compacting_cluster().await;
    let (leader, lagger, applied) = leave_a_follower_behind(&mut c).await;
    let (from, to) = (c.names[leader].clone(), c.names[lagger].clone());
    c.net.drop_snapshots(&from, &to, 2);
    c.restart(lagger).await;
    wait_caught_up(&c, lagger, applied, Duration::from_secs(40)).await;
    // (The status is published just after the catalog.)
    wait_until(Duration::from_secs(5), "the install counted", || async {
        (c.status(lagger).snapshots_installed >= 1).then_some(())
    })
    .await;
    let sent = c.status(leader).snapshots_sent;
    assert!(sent >= 3, "two snapshots were lost, yet only {sent} sent");
    // It follows from the log afterwards.
    c.client(leader)
        .catalog_register(&reg("n-late", "queue", "q-late"), None)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the next write", || async {
        let raft = &c.node(lagger).raft;
        raft.with_applied(|s, _| s.catalog.has_node("n-late"))
            .then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_keeps_losing_snapshots_does_not_get_one_per_heartbeat() {
    let mut c = compacting_cluster().await;
    let (leader, lagger, applied) = leave_a_follower_behind(&mut c).await;
    let (from, to) = (c.names[leader].clone(), c.names[lagger].clone());
    // Every snapshot is lost; heartbeats and their replies still pass.
    c.net.drop_snapshots(&from, &to, u64::MAX);
    let before = c.status(leader).snapshots_sent;
    c.restart(lagger).await;
    wait_until(Duration::from_secs(20), "a first snapshot", || async {
        (c.status(leader).snapshots_sent > before).then_some(())
    })
    .await;
    let first = Instant::now();
    // Heartbeats go out every 100 ms; a leader that took each reply from a
    // follower still behind as a cue to send a snapshot (the loss unnoticed)
    // would send dozens here.
    let watch = Duration::from_secs(4);
    tokio::time::sleep(watch).await;
    let sent = c.status(leader).snapshots_sent - before;
    eprintln!("{sent} snapshots sent in {:?}", first.elapsed());
    assert!(
        sent <= 3,
        "{sent} snapshots in {watch:?} to a follower losing them all"
    );
    assert_eq!(c.status(lagger).snapshots_installed, 0);
    // The link heals: the next attempt gets through.
    c.net.drop_snapshots(&from, &to, 0);
    wait_caught_up(&c, lagger, applied, Duration::from_secs(40)).await;
    c.shutdown().await;
}

/// A blocking `?stale` read from `index`, waiting up to a minute.
fn blocking_from(index: u64) -> registry_api::QueryOptions {
    registry_api::QueryOptions {
        stale: true,
        index: Some(index),
        wait: Some(Duration::from_secs(60)),
        ..Default::default()
    }
}

/// With `lagger` cut off since its watcher read at `watched_at` and the leader's log
/// compacted past that, heals it and returns the watcher's answer, which must come from the
/// snapshot it installs: the install held every write, so no later entry's rows woke it.
async fn answered_by_install<T>(
    c: &TestCluster,
    (leader, lagger): (usize, usize),
    watched_at: u64,
    watch: tokio::task::JoinHandle<T>,
) -> T {
    c.wait_compacted_past(leader, c.status(lagger).id).await;
    let compacted_to = c.status(leader).compacted_to;
    assert!(
        compacted_to > watched_at,
        "leader compacted only to {compacted_to}"
    );
    assert!(!watch.is_finished(), "answered while cut off");
    let last_write = c.node(leader).raft.applied_index();
    // A follower may have installed one already, when the cluster formed.
    let installed_before = c.status(lagger).snapshots_installed;
    c.net.heal(&c.names[lagger]);
    let answer = tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .expect("the watcher was answered once the snapshot was installed")
        .unwrap();
    // (The status is published just after the catalog.)
    let installed = wait_until(Duration::from_secs(5), "the install counted", || async {
        let s = c.status(lagger);
        (s.snapshots_installed > installed_before).then_some(s.compacted_to)
    })
    .await;
    assert!(installed >= last_write, "{installed} < {last_write}");
    answer
}

/// A follower that catches up by a snapshot rebuilds its state whole, and no applied entry
/// names what changed: the watchers of one service, which wait on that service's own
/// wake-ups (`raft/wakeups.rs`), must still be answered by the install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_answers_the_watchers_of_a_service() {
    let c = compacting_cluster().await;
    let leader = c.wait_leader().await;
    let lagger = (leader + 1) % 3;
    c.client(leader)
        .catalog_register(&reg("n-first", "queue", "q-first"), None)
        .await
        .unwrap();
    let on_lagger = c.client(lagger);
    let watched_at = wait_until(
        Duration::from_secs(10),
        "the follower has queue",
        || async {
            let (list, meta) = on_lagger.health_service("queue", &stale()).await.ok()?;
            (list.len() == 1).then_some(meta.index)
        },
    )
    .await;
    c.net.isolate(&c.names[lagger]);
    let opts = blocking_from(watched_at);
    let watch = tokio::spawn(async move { on_lagger.health_service("queue", &opts).await });
    register_queue(&c, leader).await;
    c.wait_watching(lagger, "queue").await;
    let (list, meta) = answered_by_install(&c, (leader, lagger), watched_at, watch)
        .await
        .unwrap();
    assert!(meta.index > watched_at);
    assert!(list.len() > 1, "{} instances", list.len());
    c.shutdown().await;
}

/// The KV side of the test above: a watcher of a KV prefix on a follower that catches up by
/// a snapshot waits on its prefix's own wake-ups, and the install must answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_answers_the_watchers_of_a_kv_prefix() {
    let c = compacting_cluster().await;
    let leader = c.wait_leader().await;
    let lagger = (leader + 1) % 3;
    let lc = c.client(leader);
    assert!(lc.kv_put("cfg/first", "1", &[]).await.unwrap());
    let on_lagger = c.client(lagger);
    let watched_at = wait_until(Duration::from_secs(10), "the follower has cfg/", || async {
        let (list, meta) = (on_lagger.kv_get("cfg/", &stale(), &[("recurse", "")]))
            .await
            .ok()?;
        (list?.len() == 1).then_some(meta.index)
    })
    .await;
    c.net.isolate(&c.names[lagger]);
    let opts = blocking_from(watched_at);
    let watch =
        tokio::spawn(async move { on_lagger.kv_get("cfg/", &opts, &[("recurse", "")]).await });
    for i in 0..60 {
        assert!(lc.kv_put(&format!("cfg/k{i:02}"), "v", &[]).await.unwrap());
    }
    let raft = c.node(lagger).raft.clone();
    wait_until(
        Duration::from_secs(10),
        "the watcher subscribed",
        || async { (raft.kv_watchers("cfg/") >= 1).then_some(()) },
    )
    .await;
    let (list, meta) = answered_by_install(&c, (leader, lagger), watched_at, watch)
        .await
        .unwrap();
    assert!(meta.index > watched_at);
    assert!(list.unwrap().len() > 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_restarted_together_rebuild_every_write_from_checkpoint_and_log() {
    let mut c = compacting_cluster().await;
    let leader = c.wait_leader().await;
    register_queue(&c, leader).await;
    // A checkpoint on every server, each log compacted behind its own.
    wait_until(
        Duration::from_secs(20),
        "a checkpoint everywhere",
        || async {
            let st: Vec<_> = (0..3).map(|i| c.status(i)).collect();
            st.iter()
                .all(|s| {
                    s.checkpointed_to > 20
                        && s.compacted_to > 0
                        && s.compacted_to <= s.checkpointed_to
                })
                .then_some(())
        },
    )
    .await;
    // Writes after the checkpoints, which only the log holds: a KV key and
    // the removal of an instance (a delete the checkpoints do not know of).
    let client = c.client(leader);
    assert!(client.kv_put("after/checkpoint", "1", &[]).await.unwrap());
    let gone = registry_api::DeregisterRequest {
        node: "n7".into(),
        ..Default::default()
    };
    client.catalog_deregister(&gone, None).await.unwrap();
    let last = c.node(leader).raft.applied_index();
    let checkpointed: Vec<u64> = (0..3).map(|i| c.status(i).checkpointed_to).collect();
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    let leader = c.wait_leader().await;
    for (i, had) in checkpointed.into_iter().enumerate() {
        let started_from = c.status(i).checkpointed_to;
        // (Usually before `last`: then the log's entries after it rebuilt the
        // rest; a checkpoint may also have been completed past it meanwhile.)
        assert!(
            started_from >= had,
            "s{i} started from checkpoint {started_from}, had {}",
            had
        );
        wait_until(
            Duration::from_secs(20),
            "the restarted server holds every write",
            || async {
                let done = c.node(i).raft.with_applied(|s, applied| {
                    applied >= last
                        && s.catalog.has_node("n59")
                        && !s.catalog.has_node("n7")
                        && s.kv.get("after/checkpoint").0.is_some()
                });
                done.then_some(())
            },
        )
        .await;
    }
    let (services, _) = c
        .node(leader)
        .raft
        .with_applied(|s, _| s.catalog.service_nodes("queue", &[]));
    assert_eq!(
        services.len(),
        59,
        "every instance but the deregistered node's"
    );
    c.shutdown().await;
}

/// Registers `n{from}`..`n{to}` (service `queue`) from 8 tasks at once,
/// each with address `addr`.
async fn register_range(c: &TestCluster, leader: usize, from: usize, to: usize, addr: &str) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (client, addr) = (c.client(leader), addr.to_string());
        tasks.spawn(async move {
            for i in (from + t..to).step_by(8) {
                let mut r = reg(&format!("n{i:04}"), "queue", &format!("q-{i:04}"));
                r.address = addr.clone();
                client.catalog_register(&r, None).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// The rows of server `i`'s nodes named `n…` and their instances (a new
/// leader writes itself into the catalog after a restart).
fn rows_of(c: &TestCluster, i: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    c.node(i).raft.with_applied(|s, _| {
        let ours = |k: &[u8]| k.starts_with(b"n/n") || k.starts_with(b"s/n");
        s.rows().into_iter().filter(|(k, _)| ours(k)).collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_taken_in_steps_while_writes_change_its_rows_restores_the_same_state() {
    let mut c = compacting_cluster().await;
    let leader = c.wait_leader().await;
    // 800 nodes with an instance each: more rows than one step of the image
    // (1,024), so each checkpoint takes several turns of the Raft loop.
    register_range(&c, leader, 0, 800, "10.0.0.1").await;
    let churn_from = c.node(leader).raft.applied_index();
    // Every node again with a new address, until each server has a
    // checkpoint begun during these writes: the rows it had already written
    // (the nodes come first) change under it, and only the rows recorded
    // between its steps carry the change.
    let mut round = 0;
    loop {
        round += 1;
        register_range(&c, leader, 0, 800, &format!("10.1.0.{round}")).await;
        if (0..3).all(|i| c.status(i).checkpointed_to > churn_from) {
            break;
        }
        assert!(round < 10, "no checkpoint during the writes");
    }
    let last = c.node(leader).raft.applied_index();
    let mut before = Vec::new();
    for i in 0..3 {
        wait_until(Duration::from_secs(20), "every write applied", || async {
            (c.node(i).raft.applied_index() >= last).then_some(())
        })
        .await;
        before.push(rows_of(&c, i));
        assert_eq!(before[i].len(), 1_600);
    }
    let checkpointed: Vec<u64> = (0..3).map(|i| c.status(i).checkpointed_to).collect();
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    c.wait_leader().await;
    for (i, rows) in before.into_iter().enumerate() {
        assert!(c.status(i).checkpointed_to >= checkpointed[i]);
        wait_until(Duration::from_secs(20), "the log replayed", || async {
            (c.node(i).raft.applied_index() >= last).then_some(())
        })
        .await;
        assert!(rows_of(&c, i) == rows, "s{i} restarted to another state");
    }
    c.shutdown().await;
}
