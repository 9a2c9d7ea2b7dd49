//! The KV store on a 3-server cluster: every verb and flag of `/v1/kv`
//! against Consul's documented answers, through the leader and the
//! followers; blocking watches on a prefix that wake for a child and not for
//! a sibling; bad input refused with a reason and nothing stored; KV and
//! sessions kept across a full restart and a snapshot install.

use registry_api::kv::KvPair;
use registry_api::{QueryOptions, RegistryClient};
use registry_testkit::cluster::*;
use registry_testkit::never_within;
use std::time::{Duration, Instant};

/// A raw request: status, headers and body.
async fn call(
    method: reqwest::Method,
    url: String,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = registry_api::tls::plain_client()
        .request(method, url)
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn index_of(h: &reqwest::header::HeaderMap) -> u64 {
    h.get("X-Consul-Index")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// `GET /v1/kv/<key>` on `c` with `query`: the entries (None for a 404) and the index.
async fn kv(c: &RegistryClient, key: &str, query: &[(&str, &str)]) -> (Option<Vec<KvPair>>, u64) {
    let (list, meta) = c
        .kv_get(key, &QueryOptions::default(), query)
        .await
        .unwrap();
    (list, meta.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kv_verb_and_flag_answers_as_consul_on_three_servers() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    let (lc, fc, gc) = (c.client(leader), c.client(f1), c.client(f2));

    // PUT through a follower (raw body, ?flags); read through the other one.
    assert!(fc
        .kv_put("app/config", "hello", &[("flags", "42")])
        .await
        .unwrap());
    let (list, index) = kv(&gc, "app/config", &[]).await;
    let e = &list.unwrap()[0];
    assert_eq!(
        (e.key.as_str(), e.flags, e.value.as_deref()),
        ("app/config", 42, Some(&b"hello"[..]))
    );
    assert_eq!((e.lock_index, e.create_index), (0, e.modify_index));
    assert_eq!(index, e.modify_index, "a key's index is its ModifyIndex");
    // The JSON shape: Value base64, no Session when unheld.
    let (status, h, body) = call(
        reqwest::Method::GET,
        format!("{}/v1/kv/app/config", gc.base()),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json[0]["Value"], "aGVsbG8=");
    assert!(json[0].get("Session").is_none(), "{json}");
    for field in ["LockIndex", "Key", "Flags", "CreateIndex", "ModifyIndex"] {
        assert!(json[0].get(field).is_some(), "{field} in {json}");
    }
    assert_eq!(h["X-Consul-KnownLeader"], "true");
    // ?raw: the bytes alone, not sniffable.
    let (status, h, body) = call(
        reqwest::Method::GET,
        format!("{}/v1/kv/app/config?raw", fc.base()),
        "",
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(index_of(&h), index);
    // A leading slash is not part of the key.
    assert!(lc.kv_put("/app/slash", "s", &[]).await.unwrap());
    assert!(kv(&fc, "app/slash", &[("consistent", "")])
        .await
        .0
        .is_some());
    // An empty value reads as null.
    assert!(lc.kv_put("app/empty", "", &[]).await.unwrap());
    let (list, _) = kv(&lc, "app/empty", &[]).await;
    assert_eq!(list.unwrap()[0].value, None);

    // A missing key: 404 with the index headers, in every mode.
    for mode in [&[][..], &[("stale", "")][..], &[("consistent", "")][..]] {
        let (list, index) = kv(&gc, "app/missing", mode).await;
        assert!(list.is_none() && index >= 1, "{mode:?}");
    }

    // ?recurse and ?keys (with a separator); an empty prefix is a 404.
    for k in ["app/sub/a", "app/sub/b", "apples"] {
        assert!(lc.kv_put(k, "v", &[]).await.unwrap());
    }
    let (list, tree_index) = kv(&fc, "app/", &[("recurse", ""), ("consistent", "")]).await;
    let keys: Vec<String> = list.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [
            "app/config",
            "app/empty",
            "app/slash",
            "app/sub/a",
            "app/sub/b"
        ]
    );
    assert!(tree_index >= index);
    let (status, _, body) = call(
        reqwest::Method::GET,
        format!("{}/v1/kv/app/?keys&separator=/&consistent", gc.base()),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let keys: Vec<String> = serde_json::from_slice(&body).unwrap();
    assert_eq!(keys, ["app/config", "app/empty", "app/slash", "app/sub/"]);
    assert!(kv(&gc, "nothing/", &[("recurse", "")]).await.0.is_none());
    let (status, h, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/kv/nothing/?keys", gc.base()),
        "",
    )
    .await;
    assert!(status == 404 && index_of(&h) >= 1);
    let (status, _, body) = call(
        reqwest::Method::GET,
        format!("{}/v1/kv/?keys&separator=/", lc.base()),
        "",
    )
    .await;
    assert_eq!(
        (status, text(&body)),
        (200, r#"["app/","apples"]"#.to_string())
    );

    // ?cas: 0 only if absent, else only at the key's ModifyIndex.
    let modify = e.modify_index;
    assert!(!fc.kv_put("app/config", "x", &[("cas", "0")]).await.unwrap());
    assert!(fc.kv_put("app/new", "x", &[("cas", "0")]).await.unwrap());
    assert!(!fc
        .kv_put("app/config", "x", &[("cas", &(modify + 1000).to_string())])
        .await
        .unwrap());
    assert!(fc
        .kv_put("app/config", "x", &[("cas", &modify.to_string())])
        .await
        .unwrap());
    // DELETE ?cas, plain, ?recurse.
    assert!(!gc.kv_delete("app/config", &[("cas", "1")]).await.unwrap());
    let (list, _) = kv(&lc, "app/config", &[]).await;
    let now = list.unwrap()[0].modify_index.to_string();
    assert!(gc.kv_delete("app/config", &[("cas", &now)]).await.unwrap());
    assert!(kv(&lc, "app/config", &[]).await.0.is_none());
    assert!(gc.kv_delete("app/slash", &[]).await.unwrap());
    assert!(gc.kv_delete("app/sub/", &[("recurse", "")]).await.unwrap());
    assert!(kv(&lc, "app/sub/", &[("recurse", "")]).await.0.is_none());
    assert!(
        kv(&lc, "apples", &[]).await.0.is_some(),
        "a sibling prefix is untouched"
    );
    // Every server ends with the same store (stale reads answer locally).
    let want = kv(&lc, "", &[("recurse", "")]).await.0;
    for i in 0..3 {
        let client = c.client(i);
        wait_until(Duration::from_secs(10), "every server to apply", || async {
            (kv(&client, "", &[("recurse", ""), ("stale", "")]).await.0 == want).then_some(())
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kv_requests_get_a_reason_and_store_nothing() {
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let base = c.client(leader).base().to_string();
    let put = |path: &str, body: Vec<u8>| call(reqwest::Method::PUT, format!("{base}{path}"), body);
    // Over 512 KiB: 413 with a reason, and nothing stored.
    let (status, _, body) = put("/v1/kv/big", vec![b'x'; 512 * 1024 + 1]).await;
    assert_eq!(status, 413, "{}", text(&body));
    assert!(text(&body).contains("too large"), "{}", text(&body));
    // Exactly 512 KiB is fine.
    let (status, _, _) = put("/v1/kv/max", vec![b'x'; 512 * 1024]).await;
    assert_eq!(status, 200);
    let cases: &[(&str, u16, &str)] = &[
        ("/v1/kv/", 400, "Missing key name"),
        ("/v1/kv/a?flags=minus", 400, "flags"),
        ("/v1/kv/a?cas=x", 400, "cas"),
        ("/v1/kv/a?cas=0&acquire=s", 400, "Conflicting flags"),
        ("/v1/kv/a?acquire=no-such-session", 400, "invalid session"),
    ];
    for (path, want, reason) in cases {
        let (status, _, body) = put(path, b"v".to_vec()).await;
        assert_eq!(status, *want, "{path}: {}", text(&body));
        assert!(text(&body).contains(reason), "{path}: {}", text(&body));
    }
    let long = format!("/v1/kv/{}", "k".repeat(4097));
    let (status, _, body) = put(&long, b"v".to_vec()).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("longer than 4096"), "{}", text(&body));
    let (status, _, body) = call(reqwest::Method::GET, format!("{base}/v1/kv/"), "").await;
    assert_eq!((status, text(&body)), (400, "Missing key name".to_string()));
    let (status, _, _) = call(
        reqwest::Method::DELETE,
        format!("{base}/v1/kv/?cas=1&recurse"),
        "",
    )
    .await;
    assert_eq!(status, 400);
    let (status, h, _) = call(reqwest::Method::POST, format!("{base}/v1/kv/a"), "").await;
    assert_eq!(status, 405);
    assert!(h["allow"].to_str().unwrap().contains("PUT"));
    // Nothing but the 512 KiB key was stored.
    let (keys, _) = c
        .client(leader)
        .kv_get("", &QueryOptions::default(), &[("recurse", "")])
        .await
        .unwrap();
    let keys: Vec<String> = keys.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["max"]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_watch_wakes_for_a_child_and_its_delete_and_not_for_a_sibling() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let writer = c.client(leader);
    assert!(writer.kv_put("a/first", "1", &[]).await.unwrap());
    assert!(writer.kv_put("ab/x", "1", &[]).await.unwrap());
    let (_, index) = kv(&writer, "a/", &[("recurse", "")]).await;

    // Watched on a follower, which evaluates the watch on its own state.
    let watcher_server = (leader + 1) % 3;
    let watch = |min: u64| {
        let client = c.client(watcher_server);
        tokio::spawn(async move {
            let opts = QueryOptions {
                index: Some(min),
                wait: Some(Duration::from_secs(30)),
                ..Default::default()
            };
            client
                .kv_get("a/", &opts, &[("recurse", "")])
                .await
                .unwrap()
        })
    };
    let mut pending = watch(index);
    // Siblings change: `ab/x`, `b/y`. Once the watcher's server has applied
    // them (a stale read there shows `b/y`), the watch must still wait.
    assert!(writer.kv_put("ab/x", "2", &[]).await.unwrap());
    assert!(writer.kv_put("b/y", "1", &[]).await.unwrap());
    let on_watcher = c.client(watcher_server);
    wait_until(
        Duration::from_secs(10),
        "the sibling writes to apply there",
        || async { kv(&on_watcher, "b/y", &[("stale", "")]).await.0.is_some() },
    )
    .await;
    never_within(Duration::from_secs(1), "woken by a sibling prefix", || {
        let done = pending.is_finished();
        async move { done.then_some(()) }
    })
    .await;
    // A child: the watch returns promptly with the child and a higher index.
    let at = Instant::now();
    assert!(writer.kv_put("a/child", "1", &[]).await.unwrap());
    let (list, meta) = tokio::time::timeout(Duration::from_secs(5), &mut pending)
        .await
        .expect("the watch must return after a child's write")
        .unwrap();
    assert!(meta.index > index);
    assert_eq!(list.unwrap().len(), 2);
    eprintln!("woken {:?} after the child's write", at.elapsed());
    // A delete under the prefix wakes it too (its tombstone carries the index).
    let pending = watch(meta.index);
    assert!(writer.kv_delete("a/first", &[]).await.unwrap());
    let (list, after_delete) = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the watch must return after a delete")
        .unwrap();
    assert!(after_delete.index > meta.index);
    assert_eq!(list.unwrap().len(), 1);
    // A watch on a missing key wakes when it is created.
    let (none, missing) = kv(&writer, "later", &[]).await;
    assert!(none.is_none());
    let client = c.client(watcher_server);
    let pending = tokio::spawn(async move {
        let opts = QueryOptions {
            index: Some(missing),
            wait: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        client.kv_get("later", &opts, &[]).await.unwrap()
    });
    assert!(writer.kv_put("later", "now", &[]).await.unwrap());
    let (found, _) = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the watch on a missing key must return once it exists")
        .unwrap();
    assert_eq!(found.unwrap()[0].value.as_deref(), Some(&b"now"[..]));
    c.shutdown().await;
}

/// The names of the user events a server lists for its own node.
async fn event_names(server: &RegistryClient) -> Vec<String> {
    let url = format!("{}/v1/event/list", server.base());
    let list: Vec<serde_json::Value> = registry_api::tls::plain_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.iter()
        .map(|e| e["Name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_sessions_survive_a_full_restart_and_a_snapshot_install() {
    let mut tuning = fast_tuning();
    tuning.compact_threshold = 20;
    tuning.compact_keep = 0;
    let mut c = TestCluster::builder(3).tuning(tuning).start().await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    // The session is the leader's node's, which its leader loop registers
    // just after the election (until then: `Missing node registration`).
    let session = wait_until(
        Duration::from_secs(10),
        "a session on the leader's node",
        || {
            let lc = lc.clone();
            async move {
                lc.session_create(&serde_json::json!({"Name": "keeper", "LockDelay": "1s"}))
                    .await
                    .ok()
            }
        },
    )
    .await;
    assert!(lc
        .kv_put("kept/lock", "me", &[("acquire", &session)])
        .await
        .unwrap());
    assert!(lc.kv_put("kept/gone", "x", &[]).await.unwrap());
    assert!(lc.kv_delete("kept/gone", &[]).await.unwrap());
    // A user event: the ring is part of the state (rows `ev/`) too.
    let fired = registry_api::tls::plain_client()
        .put(format!("{}/v1/event/fire/kept", lc.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(fired.status().as_u16(), 200);
    // A follower is stopped, then the leader writes past the compaction
    // threshold: the follower can only catch up by snapshot.
    let lagger = (leader + 1) % 3;
    let lagger_id = c.status(lagger).id;
    c.stop(lagger).await;
    for i in 0..40 {
        assert!(lc.kv_put(&format!("kept/n{i:02}"), "v", &[]).await.unwrap());
    }
    c.wait_compacted_past(leader, lagger_id).await;
    let (want, want_index) = kv(&lc, "kept/", &[("recurse", "")]).await;
    let (want_sessions, _) = lc
        .session_info(&session, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(want_sessions.len(), 1);
    c.restart(lagger).await;
    let lagging = c.client(lagger);
    wait_until(
        Duration::from_secs(20),
        "the follower to catch up",
        || async {
            (kv(&lagging, "kept/", &[("recurse", ""), ("stale", "")]).await
                == (want.clone(), want_index))
                .then_some(())
        },
    )
    .await;
    assert!(
        c.status(lagger).snapshots_installed >= 1,
        "caught up by a snapshot"
    );
    let (sessions, _) = lagging.session_info(&session, &stale()).await.unwrap();
    assert_eq!(sessions, want_sessions);
    // The deleted key's tombstone came along: its index is the delete's.
    let (_, gone_index) = kv(&lagging, "kept/gone", &[("stale", "")]).await;
    let (_, gone_on_leader) = kv(&lc, "kept/gone", &[]).await;
    assert_eq!(gone_index, gone_on_leader);
    assert_eq!(event_names(&lagging).await, ["kept"]);

    // A full restart, in another order: everything is still there.
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in [2, 0, 1] {
        c.restart(i).await;
    }
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    wait_until(
        Duration::from_secs(20),
        "the KV store after a restart",
        || async {
            let (list, _) = lc
                .kv_get("kept/", &QueryOptions::default(), &[("recurse", "")])
                .await
                .ok()?;
            (list == want).then_some(())
        },
    )
    .await;
    let (sessions, _) = lc
        .session_info(&session, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(sessions, want_sessions);
    assert_eq!(event_names(&lc).await, ["kept"]);
    let (held, _) = kv(&lc, "kept/lock", &[]).await;
    assert_eq!(held.unwrap()[0].session, session);
    c.shutdown().await;
}

/// One server, no agents, whose leader reaps a KV tombstone half a second after the delete.
async fn reaping_cluster() -> TestCluster {
    let tombstones = registry_server::leader::tombstones::TombstoneTuning {
        ttl: Duration::from_millis(500),
        check_interval: Duration::from_millis(100),
    };
    TestCluster::builder(1)
        .agents(false)
        .tombstones(tombstones)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaped_tombstones_never_make_a_late_watcher_miss_a_delete() {
    let c = reaping_cluster().await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    assert!(lc.kv_put("w/keep", "1", &[]).await.unwrap());
    assert!(lc.kv_put("w/gone", "1", &[]).await.unwrap());
    // A watcher read the prefix before the delete, then went quiet.
    let (_, seen) = kv(&lc, "w/", &[("recurse", "")]).await;
    assert!(lc.kv_delete("w/gone", &[]).await.unwrap());
    let (_, deleted) = kv(&lc, "w/gone", &[]).await;
    // The leader reaps the delete's tombstone once it is old enough.
    let raft = c.node(leader).raft.clone();
    wait_until(
        Duration::from_secs(10),
        "the tombstone to be reaped",
        || async {
            raft.with_applied(|s, _| s.kv.oldest_tombstone().is_none() && s.kv.reaped() >= deleted)
        },
    )
    .await;
    // The late watcher comes back with its old index: it is answered at once,
    // at an index past the delete, not left waiting as if nothing changed.
    let opts = QueryOptions {
        index: Some(seen),
        wait: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let started = Instant::now();
    let (list, meta) = lc.kv_get("w/", &opts, &[("recurse", "")]).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the watcher waited"
    );
    assert!(meta.index >= deleted, "{} < {deleted}", meta.index);
    let keys: Vec<String> = list.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["w/keep"]);
    c.shutdown().await;
}

/// A blocking KV read waits on its prefix's own wake-ups (`raft/wakeups.rs`): writes and
/// deletes elsewhere in the store do not wake it to probe its index (a prefix scan), and a
/// delete under it does answer it; a read of one key is answered by a write to that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_kv_read_is_woken_by_changes_under_its_prefix_only() {
    use registry_server::reads::Probe;
    use registry_server::state::StateStore;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let c = TestCluster::builder(1).agents(false).start().await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    assert!(lc.kv_put("app/db", "1", &[]).await.unwrap());
    assert!(lc.kv_put("app/web", "1", &[]).await.unwrap());
    // As in the service test (blocking.rs): one more acknowledged write, so that the
    // wake-up of the last write under app/ has gone out before the read subscribes.
    assert!(lc.kv_put("other/0", "1", &[]).await.unwrap());
    let raft = c.node(leader).raft.clone();
    let min_index = raft.with_applied(|s, _| s.kv.prefix_index("app/"));
    let watch = |prefix: &'static str, probed: Arc<AtomicUsize>| {
        let probe = Probe::kv(prefix.to_string(), move |s: &StateStore| {
            probed.fetch_add(1, Ordering::SeqCst);
            s.kv.prefix_index(prefix)
        });
        spawn_stale_watch(&raft, min_index, prefix, probe, move |s| s.kv.list(prefix))
    };
    let (on_app, on_key) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let app = watch("app/", on_app.clone());
    let key = watch("app/db", on_key.clone());
    wait_until(Duration::from_secs(5), "both subscribed", || async {
        (raft.kv_watchers("app/") == 1 && raft.kv_watchers("app/db") == 1).then_some(())
    })
    .await;
    for i in 0..20 {
        assert!(lc.kv_put(&format!("other/{i}"), "2", &[]).await.unwrap());
    }
    assert!(lc.kv_delete("other/0", &[]).await.unwrap());
    // Had the reads waited on every write, each of these 21 would have woken them to probe.
    assert!(!app.is_finished() && !key.is_finished());
    assert_eq!(on_app.load(Ordering::SeqCst), 1);
    assert_eq!(on_key.load(Ordering::SeqCst), 1);
    // A delete under app/ (a tombstone) answers the prefix's watcher; app/web is not
    // under app/db, so the key's watcher sleeps on until its own key changes.
    assert!(lc.kv_delete("app/web", &[]).await.unwrap());
    let answer = watch_answer(app).await;
    assert!(answer.index > min_index);
    assert!(!String::from_utf8_lossy(&answer.body).contains("app/web"));
    assert!(!key.is_finished());
    assert_eq!(on_key.load(Ordering::SeqCst), 1);
    assert!(lc.kv_put("app/db", "3", &[]).await.unwrap());
    let answer = watch_answer(key).await;
    assert!(answer.index > min_index);
    c.shutdown().await;
}

/// A watcher of a prefix with nothing under it waits at the reap floor's index; when the
/// leader reaps tombstones elsewhere the floor moves, so does every KV read's index, and
/// the watcher is answered (it waits on its prefix's channel, which a reap wakes too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_of_an_empty_prefix_is_answered_when_tombstones_are_reaped() {
    let c = reaping_cluster().await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    assert!(lc.kv_put("w/gone", "1", &[]).await.unwrap());
    let (none, seen) = kv(&lc, "empty/", &[("recurse", "")]).await;
    assert!(none.is_none());
    let watcher = {
        let lc = c.client(leader);
        tokio::spawn(async move {
            let opts = QueryOptions {
                index: Some(seen),
                wait: Some(Duration::from_secs(60)),
                ..Default::default()
            };
            lc.kv_get("empty/", &opts, &[("recurse", "")]).await
        })
    };
    let raft = c.node(leader).raft.clone();
    wait_until(Duration::from_secs(5), "the watcher subscribed", || async {
        (raft.kv_watchers("empty/") == 1).then_some(())
    })
    .await;
    assert!(lc.kv_delete("w/gone", &[]).await.unwrap());
    let (_, deleted) = kv(&lc, "w/gone", &[]).await;
    let (_, meta) = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .expect("answered once the tombstone was reaped, well within its 60 s wait")
        .unwrap()
        .unwrap();
    assert!(meta.index >= deleted, "{} < {deleted}", meta.index);
    assert!(raft.with_applied(|s, _| s.kv.reaped()) >= deleted);
    c.shutdown().await;
}

/// With many writers putting and deleting the same few keys, the entries of one applied batch
/// change one key several times (`node.rs`, `apply_entries`, writes their rows in one RocksDB
/// batch): the rows a restarted server loads from disk must be exactly the state it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_rewritten_within_a_batch_are_stored_as_the_last_write_left_them() {
    let mut c = TestCluster::builder(1).agents(false).start().await;
    let leader = c.wait_leader().await;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let lc = c.client(leader);
            tokio::spawn(async move {
                for i in 0..40 {
                    let key = format!("batch/k{}", (w + i) % 4);
                    assert!(lc.kv_put(&key, format!("{w}-{i}"), &[]).await.unwrap());
                    let gone = format!("batch/k{}", (w + i + 1) % 4);
                    assert!(lc.kv_delete(&gone, &[]).await.unwrap());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let st = c.status(leader);
    assert!(
        st.entries_synced > st.syncs,
        "the writes were batched ({} entries in {} syncs)",
        st.entries_synced,
        st.syncs
    );
    let kv_rows = |c: &TestCluster| {
        let rows = c.node(leader).raft.with_applied(|s, _| s.rows());
        rows.into_iter()
            .filter(|(k, _)| k.starts_with(b"kv/batch/") || k.starts_with(b"kt/batch/"))
            .collect::<Vec<_>>()
    };
    let before = kv_rows(&c);
    assert!(!before.is_empty());
    c.stop(leader).await;
    c.restart(leader).await;
    c.wait_leader().await;
    assert_eq!(kv_rows(&c), before);
    c.shutdown().await;
}
