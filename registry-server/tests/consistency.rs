//! Consistency modes and what happens without a leader.

use registry_api::QueryOptions;
use registry_testkit::cluster::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_stale_reads_work_and_default_reads_fail_fast() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.client(leader)
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    let survivor = (leader + 1) % 3;
    // Let the survivor apply the write before the others go.
    let client = c.client(survivor);
    wait_until(Duration::from_secs(10), "the write on the survivor", || {
        let client = client.clone();
        async move {
            let (l, _) = client.catalog_service("web", &stale()).await.ok()?;
            (l.len() == 1).then_some(())
        }
    })
    .await;
    for i in 0..3 {
        if i != survivor {
            c.stop(i).await;
        }
    }
    // Pre-vote keeps the lone survivor from electing itself; it forgets the
    // old leader after an election timeout.
    wait_until(
        Duration::from_secs(10),
        "the survivor to lose its leader",
        || async { (c.status(survivor).leader_id == 0).then_some(()) },
    )
    .await;
    let (list, meta) = client.catalog_service("web", &stale()).await.unwrap();
    assert_eq!(list.len(), 1, "stale reads answer from local state");
    assert!(!meta.known_leader);
    let started = Instant::now();
    let err = client
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "must fail promptly"
    );
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("No cluster leader"), "{err}");
    let err = client
        .catalog_register(&reg("n2", "web", "web-2"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No cluster leader"), "{err}");
    assert_eq!(client.status_leader().await.unwrap(), "");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_reads_and_headers() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.client((leader + 1) % 3);
    follower
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    let consistent = QueryOptions {
        consistent: true,
        ..Default::default()
    };
    let (list, meta) = follower.catalog_service("web", &consistent).await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(meta.known_leader);
    assert!(meta.index > 0);
    let (_, leader_meta) = c
        .client(leader)
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        leader_meta.last_contact_ms, 0,
        "the leader is its own contact"
    );
    let both = QueryOptions {
        consistent: true,
        stale: true,
        ..Default::default()
    };
    let err = follower.catalog_service("web", &both).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    c.shutdown().await;
}
