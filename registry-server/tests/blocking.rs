//! Blocking queries (`?index=&wait=`): they return when what they watch
//! changes, and only then (or at the wait's end).

use registry_api::QueryOptions;
use registry_testkit::cluster::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_wakes_for_its_service_and_not_for_another() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let client = c.client(leader);
    client
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    client
        .catalog_register(&reg("n2", "db", "db-1"), None)
        .await
        .unwrap();
    let (_, meta) = client
        .health_service("web", &QueryOptions::default())
        .await
        .unwrap();

    // A follower: it evaluates the watch on its own applied state.
    let watcher_server = (leader + 1) % 3;
    let watcher = c.client(watcher_server);
    let opts = QueryOptions {
        index: Some(meta.index),
        wait: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let started = Instant::now();
    let mut watch = tokio::spawn(async move { watcher.health_service("web", &opts).await });

    // Changes to another service do not answer the watch.
    for i in 0..5 {
        client
            .catalog_register(&reg(&format!("m{i}"), "db", &format!("db-x{i}")), None)
            .await
            .unwrap();
    }
    let (_, db) = client
        .health_service("db", &QueryOptions::default())
        .await
        .unwrap();
    // A pending watch proves something only once the watcher's server has applied those
    // changes: the old check (sleep 500 ms, then look) also passed with the bug whenever this
    // follower had not applied them yet. So first wait until a `?stale` read there, which
    // answers from its own applied state, shows db's last index.
    let on_watcher_server = c.client(watcher_server);
    wait_until(
        Duration::from_secs(10),
        "the watcher's server to apply the db writes",
        || async {
            let (_, m) = on_watcher_server
                .health_service("db", &stale())
                .await
                .ok()?;
            (m.index >= db.index).then_some(())
        },
    )
    .await;
    // With the bug (a watch answered by any applied change, e.g. one compared with the
    // server's applied index instead of its service's index), the server has answered the
    // watch by now, or answers it the moment the request arrives; the one-second grace only
    // lets that answer travel back. Without the bug, nothing answers it before "web" changes.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut watch)
            .await
            .is_err(),
        "woken by a change to another service"
    );

    // A change to the watched service answers it promptly.
    let changed_at = Instant::now();
    client
        .catalog_register(&reg("n3", "web", "web-2"), None)
        .await
        .unwrap();
    let (entries, new_meta) = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("the watch must return after the change")
        .unwrap()
        .unwrap();
    assert!(new_meta.index > meta.index);
    assert_eq!(entries.len(), 2);
    eprintln!(
        "watch returned {:?} after the change ({:?} in all)",
        changed_at.elapsed(),
        started.elapsed()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_returns_at_the_end_of_its_wait() {
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let client = c.client(leader);
    client
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    let (_, meta) = client
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let opts = QueryOptions {
        index: Some(meta.index),
        wait: Some(Duration::from_millis(800)),
        ..Default::default()
    };
    let (_, again) = client.catalog_service("web", &opts).await.unwrap();
    let took = started.elapsed();
    assert_eq!(again.index, meta.index);
    // wait plus at most wait/16 of jitter, plus scheduling slack.
    assert!(
        took >= Duration::from_millis(800),
        "returned early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "returned late: {took:?}");
    c.shutdown().await;
}

/// Issue 14 item 2: a blocking KV read looks only at the index while it has
/// not moved: the answer (every value under the prefix, copied under the
/// applied-state lock) is built once, when the watched prefix changes, not
/// after every write elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probed_blocking_read_builds_its_answer_only_once_the_index_moved() {
    use registry_server::reads::Probe;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let client = c.client(leader);
    assert!(client.kv_put("quiet/a", "1", &[]).await.unwrap());
    let raft = c.node(leader).raft.clone();
    let min_index = raft.with_applied(|s, _| s.kv.prefix_index("quiet/"));
    let built = Arc::new(AtomicUsize::new(0));
    let probe = Probe::index(|s: &registry_server::state::StateStore| s.kv.prefix_index("quiet/"));
    let counted = built.clone();
    let watch = spawn_stale_watch(&raft, min_index, "quiet", probe, move |s| {
        counted.fetch_add(1, Ordering::SeqCst);
        s.kv.list("quiet/")
    });
    for i in 0..20 {
        assert!(client.kv_put(&format!("busy/{i}"), "x", &[]).await.unwrap());
    }
    assert!(
        !watch.is_finished(),
        "writes elsewhere do not answer the watch"
    );
    assert_eq!(built.load(Ordering::SeqCst), 0, "nor build its answer");
    assert!(client.kv_put("quiet/b", "2", &[]).await.unwrap());
    let answer = watch_answer(watch).await;
    assert!(answer.index > min_index);
    assert_eq!(built.load(Ordering::SeqCst), 1);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    c.shutdown().await;
}

/// Issue 20: a blocking read of one service is not even woken by writes to other services (it
/// waits on its service's own wake-ups, `raft/wakeups.rs`): with watchers on many services,
/// a write wakes the watchers of what it changed, not every watcher to probe its index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_read_of_one_service_is_not_woken_by_writes_to_others() {
    use registry_server::reads::Probe;
    use registry_server::state::StateStore;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let client = c.client(leader);
    client
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    // A registration is acknowledged just before its service's watchers are woken, so the
    // read below could subscribe in between and be woken once for web-1. One more write,
    // acknowledged, means web-1's wake-up has gone out before it subscribes.
    client
        .catalog_register(&reg("m", "db", "db"), None)
        .await
        .unwrap();
    let raft = c.node(leader).raft.clone();
    let min_index = raft.with_applied(|s, _| s.catalog.service_index("web"));
    let probed = Arc::new(AtomicUsize::new(0));
    let counted = probed.clone();
    let probe = Probe {
        index: move |s: &StateStore| {
            counted.fetch_add(1, Ordering::SeqCst);
            s.catalog.service_index("web")
        },
        service: Some("web".to_string()),
        kv: None,
    };
    let watch = spawn_stale_watch(&raft, min_index, "web", probe, |s| {
        s.catalog.health_service("web", &[], false)
    });
    wait_until(Duration::from_secs(5), "the first probe", || async {
        (probed.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    for i in 0..20 {
        client
            .catalog_register(&reg(&format!("m{i}"), "db", &format!("db-{i}")), None)
            .await
            .unwrap();
    }
    // Had the read waited on every write, each of these 20 (a round trip each) would have
    // woken it to probe; the count at the end below does not depend on when it ran.
    assert!(
        !watch.is_finished(),
        "writes to db do not answer a watch of web"
    );
    assert_eq!(probed.load(Ordering::SeqCst), 1, "nor wake it to probe");
    client
        .catalog_register(&reg("n2", "web", "web-2"), None)
        .await
        .unwrap();
    let answer = watch_answer(watch).await;
    assert!(answer.index > min_index);
    assert_eq!(probed.load(Ordering::SeqCst), 2);
    c.shutdown().await;
}
