//! `GET|PUT /v1/snapshot` on a 3-server cluster: a saved archive restores through Raft onto
//! every server (catalog, KV, sessions), every index moves forward, a blocking query wakes,
//! a restarted server keeps the restored state; a damaged archive (a flipped bit, a cut, a
//! version this build does not read, rows that make no state) is refused with a reason and
//! changes nothing.

use registry_api::snapshot::{inspect, MAX_ARCHIVE};
use registry_api::QueryOptions;
use registry_server::state::StateStore;
use registry_testkit::cluster::*;
use std::io::{Read, Write};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    registry_api::tls::client_builder(None)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn index_of(h: &reqwest::header::HeaderMap) -> u64 {
    h.get("X-Consul-Index")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// `GET /v1/snapshot` from `base`: the archive and its `X-Consul-Index`.
async fn save(base: &str) -> (Vec<u8>, u64) {
    let resp = http()
        .get(format!("{base}/v1/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-gzip"
    );
    let index = index_of(resp.headers());
    (resp.bytes().await.unwrap().to_vec(), index)
}

/// `PUT /v1/snapshot` to `base`: status and body.
async fn restore(base: &str, archive: Vec<u8>) -> (u16, String) {
    let resp = http()
        .put(format!("{base}/v1/snapshot"))
        .body(archive)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Every running server's state, once all have applied the same index.
async fn converged(c: &TestCluster) -> (StateStore, u64) {
    wait_until(WAIT, "every server at one applied index", || async {
        let states: Vec<(StateStore, u64)> = c
            .running()
            .into_iter()
            .map(|i| c.node(i).raft.with_applied(|s, index| (s.clone(), index)))
            .collect();
        let (first, index) = states[0].clone();
        states
            .iter()
            .all(|(s, i)| *i == index && *s == first)
            .then_some((first, index))
    })
    .await
}

/// A catalog write, keys and a session, written through `c`'s server `i`.
async fn write_state(c: &TestCluster, i: usize) -> String {
    let client = c.client(i);
    client
        .catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    assert!(client.kv_put("app/a", "1", &[]).await.unwrap());
    assert!(client.kv_put("app/b", "2", &[]).await.unwrap());
    client
        .session_create(&serde_json::json!({"Node": "n1", "NodeChecks": [], "TTL": "30s"}))
        .await
        .unwrap()
}

async fn kv_value(c: &TestCluster, i: usize, key: &str) -> Option<String> {
    let (list, _) = c.client(i).kv_get(key, &stale(), &[]).await.unwrap();
    let pair = list?.into_iter().next()?;
    Some(String::from_utf8(pair.value.unwrap_or_default()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_onto_every_server_and_moves_indexes_forward() {
    let mut c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let kept_session = write_state(&c, leader).await;
    let base = c.node(leader).url();

    let (archive, saved_at) = save(&base).await;
    let info = inspect(&archive).unwrap();
    assert_eq!(info.index, saved_at);
    assert_eq!(info.datacenter, "dc1");
    assert_eq!(info.size, archive.len() as u64);
    assert_eq!(info.tables["kv"], 2);
    assert_eq!(info.tables["nodes"], 1);
    assert_eq!(info.tables["sessions"], 1);
    let (saved_state, _) = converged(&c).await;

    // Change everything after the save: a node, a changed and a deleted key, a new
    // session, the saved session destroyed.
    let lc = c.client(leader);
    lc.catalog_register(&reg("n2", "db", "db-1"), None)
        .await
        .unwrap();
    assert!(lc.kv_put("app/a", "changed", &[]).await.unwrap());
    assert!(lc.kv_delete("app/b", &[]).await.unwrap());
    let new_session = lc
        .session_create(&serde_json::json!({"Node": "n2", "NodeChecks": []}))
        .await
        .unwrap();
    assert!(lc.session_destroy(&kept_session).await.unwrap());
    let (_, before_restore) = converged(&c).await;

    // A watcher of the changed key, blocked at its current index.
    let (_, meta) = lc
        .kv_get("app/a", &QueryOptions::default(), &[])
        .await
        .unwrap();
    let watched_at = meta.index;
    let watcher = {
        let url = format!(
            "{}/v1/kv/app/a?index={watched_at}&wait=30s",
            c.node(follower).url()
        );
        tokio::spawn(async move {
            let resp = http().get(url).send().await.unwrap();
            let index = index_of(resp.headers());
            let body: serde_json::Value = resp.json().await.unwrap();
            (index, body)
        })
    };

    // A watcher of a service the archive does not hold: it waits on that service's own
    // wake-ups (`raft/wakeups.rs`), and the restore must wake it though the service is
    // gone (its index falls back to the services table's, restamped past it; the restore
    // deletes the service's index row, which wakes it).
    let (_, db_meta) = lc
        .health_service("db", &QueryOptions::default())
        .await
        .unwrap();
    let db_watcher = {
        let watcher = c.client(follower);
        let opts = QueryOptions {
            index: Some(db_meta.index),
            wait: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        tokio::spawn(async move { watcher.health_service("db", &opts).await })
    };
    c.wait_watching(follower, "db").await;

    // Restored through a follower: the entry goes to the leader inside Raft.
    let (status, text) = restore(&c.node(follower).url(), archive.clone()).await;
    assert_eq!((status, text.as_str()), (200, ""));

    let (restored, restored_at) = converged(&c).await;
    assert!(restored_at > before_restore);
    for i in 0..3 {
        assert_eq!(kv_value(&c, i, "app/a").await.as_deref(), Some("1"));
        assert_eq!(kv_value(&c, i, "app/b").await.as_deref(), Some("2"));
        let nodes: Vec<String> = c
            .node(i)
            .raft
            .with_applied(|s, _| s.catalog.nodes().0)
            .into_iter()
            .map(|n| n.node)
            .collect();
        assert_eq!(nodes, ["n1"], "server {i}");
        let ci = c.client(i);
        let (kept, meta) = ci.session_info(&kept_session, &stale()).await.unwrap();
        assert_eq!(kept.len(), 1, "the saved session is back on server {i}");
        assert!(meta.index > before_restore, "session index moved forward");
        let (gone, _) = ci.session_info(&new_session, &stale()).await.unwrap();
        assert!(gone.is_empty(), "the later session is gone on server {i}");
        // Every index a reader sees is past everything before the restore.
        let (_, meta) = ci
            .kv_get("app/", &stale(), &[("recurse", "")])
            .await
            .unwrap();
        assert!(meta.index > before_restore && meta.index <= restored_at);
        let (_, meta) = ci.kv_get("app/missing", &stale(), &[]).await.unwrap();
        assert!(meta.index > before_restore);
        let (_, meta) = ci.catalog_nodes(&stale()).await.unwrap();
        assert!(meta.index > before_restore);
    }
    // The content is the saved content: the same rows but for the indexes and renewals.
    assert_eq!(
        restored.kv.get("app/a").0.map(|p| p.value),
        saved_state.kv.get("app/a").0.map(|p| p.value)
    );
    assert_eq!(restored.catalog.sizes(), saved_state.catalog.sizes());

    // The watcher woke with the restored value at an index past the one it had.
    let (index, body) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the blocking query woke on the restore")
        .unwrap();
    assert!(index > watched_at, "{index} > {watched_at}");
    assert_eq!(body[0]["Value"], "MQ==", "{body}");
    let (db, meta) = tokio::time::timeout(Duration::from_secs(10), db_watcher)
        .await
        .expect("the watcher of a service the restore removed woke")
        .unwrap()
        .unwrap();
    assert!(db.is_empty(), "{db:?}");
    assert!(
        meta.index > db_meta.index,
        "{} > {}",
        meta.index,
        db_meta.index
    );

    // A write after the restore is above everything the restore wrote.
    assert!(lc.kv_put("app/c", "3", &[]).await.unwrap());
    let (list, _) = lc
        .kv_get("app/c", &QueryOptions::default(), &[])
        .await
        .unwrap();
    assert!(list.unwrap()[0].modify_index > restored_at);

    // A restarted server comes back with the restored state (from its own disk).
    let (state, _) = converged(&c).await;
    c.stop(follower).await;
    c.restart(follower).await;
    let (again, _) = converged(&c).await;
    assert_eq!(again, state);
    c.shutdown().await;
}

/// The content of a gzip archive.
fn gunzip(archive: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(archive)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(content: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(content).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_archive_is_refused_with_a_reason_and_changes_nothing() {
    let c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    write_state(&c, leader).await;
    let base = c.node(leader).url();
    let (archive, _) = save(&base).await;
    assert!(c
        .client(leader)
        .kv_put("app/a", "after", &[])
        .await
        .unwrap());
    let (before, before_index) = converged(&c).await;

    let mut flipped = archive.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x04;
    let truncated = archive[..archive.len() - 20].to_vec();
    let mut v2 = gunzip(&archive);
    v2[8..12].copy_from_slice(&2u32.to_be_bytes());
    let v2 = gzip(&v2);
    // What a flipped bit breaks depends on where it lands (the deflate stream, a frame,
    // the checksum); each reason names it.
    let damaged: &[&str] = &["corrupt", "checksum mismatch", "truncated"];
    for (what, bad, reasons) in [
        ("a flipped bit", flipped, damaged),
        ("a truncated archive", truncated, &["truncated"][..]),
        (
            "another version",
            v2,
            &["unsupported snapshot version 2"][..],
        ),
        (
            "not an archive",
            b"{\"Key\":\"v\"}".to_vec(),
            &["not a snapshot archive"][..],
        ),
        ("nothing", Vec::new(), &["not a snapshot archive"][..]),
    ] {
        let (status, text) = restore(&base, bad).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(reasons.iter().any(|r| text.contains(r)), "{what}: {text}");
        assert!(text.starts_with("snapshot refused"), "{what}: {text}");
    }
    // Rows that decode but make no state (a service on a node that is not there).
    let mut content = gunzip(&archive);
    let orphan = br#"{"ID":"x","Service":"x"}"#;
    // Rebuild an archive by hand with one orphan row added: header says one row more.
    let header_len = u32::from_be_bytes(content[12..16].try_into().unwrap()) as usize;
    let mut header: serde_json::Value =
        serde_json::from_slice(&content[16..16 + header_len]).unwrap();
    header["Rows"] = serde_json::json!(header["Rows"].as_u64().unwrap() + 1);
    let header = serde_json::to_vec(&header).unwrap();
    let rows = content[16 + header_len..content.len() - 32].to_vec();
    content.truncate(12);
    content.extend_from_slice(&(header.len() as u32).to_be_bytes());
    content.extend_from_slice(&header);
    content.extend_from_slice(&rows);
    let key = b"s/ghost\0x";
    content.extend_from_slice(&(key.len() as u32).to_be_bytes());
    content.extend_from_slice(key);
    content.extend_from_slice(&(orphan.len() as u32).to_be_bytes());
    content.extend_from_slice(orphan);
    let digest = ring_sha256(&content);
    content.extend_from_slice(&digest);
    let (status, text) = restore(&base, gzip(&content)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("unknown node"), "{text}");

    // Over the size bound: 413 before anything is read.
    let (status, _) = restore(&base, vec![0u8; MAX_ARCHIVE + 1]).await;
    assert_eq!(status, 413);

    // Nothing changed anywhere, and nothing was proposed.
    let (after, after_index) = converged(&c).await;
    assert_eq!(after_index, before_index);
    assert_eq!(after, before);
    assert_eq!(
        kv_value(&c, leader, "app/a").await.as_deref(),
        Some("after")
    );
    c.shutdown().await;
}

/// SHA-256, the archive's checksum.
fn ring_sha256(content: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, content)
        .as_ref()
        .to_vec()
}

/// Bytes that gzip cannot shrink (a xorshift stream), so an archive of them is as large.
fn incompressible(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_agent_forwards_a_save_and_a_restore_larger_than_the_kv_limit() {
    let c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    let lc = c.client(leader);
    for i in 0..4u64 {
        let value = incompressible(200 << 10, i + 1);
        assert!(lc.kv_put(&format!("big/{i}"), value, &[]).await.unwrap());
    }
    let agent = registry_client::start(c.agent_config("host-a", None))
        .await
        .unwrap();
    let via_agent = format!("http://{}", agent.http_addr);
    let (archive, _) = save(&via_agent).await;
    assert!(
        archive.len() > registry_api::limits::MAX_BODY,
        "{} bytes",
        archive.len()
    );
    assert_eq!(inspect(&archive).unwrap().tables["kv"], 4);
    assert!(lc.kv_delete("big/0", &[]).await.unwrap());
    let (status, text) = restore(&via_agent, archive).await;
    assert_eq!((status, text.as_str()), (200, ""));
    wait_until(WAIT, "big/0 back on every server", || async {
        let mut back = true;
        for i in 0..3 {
            back &= kv_value_len(&c, i, "big/0").await == Some(200 << 10);
        }
        back
    })
    .await;
    agent.stop().await;
    c.shutdown().await;
}

async fn kv_value_len(c: &TestCluster, i: usize, key: &str) -> Option<usize> {
    let (list, _) = c.client(i).kv_get(key, &stale(), &[]).await.ok()?;
    Some(list?.into_iter().next()?.value?.len())
}

/// A watcher of a service on a follower that has not applied a restore yet, at an index
/// the restore reached elsewhere: the restore removes the service, so its index becomes the
/// services table's, still not past the watcher's; the next write to any other service
/// moves it, and must answer the watcher, though that write never names the service whose
/// own wake-ups the watcher subscribed to (`reads.rs` switches it to every write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_of_a_service_a_restore_removed_wakes_at_the_next_write_to_any_service() {
    let c = TestCluster::builder(3).agents(false).start().await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let lc = c.client(leader);
    lc.catalog_register(&reg("n1", "web", "web-1"), None)
        .await
        .unwrap();
    let (archive, _) = save(&c.node(leader).url()).await;
    lc.catalog_register(&reg("n2", "db", "db-1"), None)
        .await
        .unwrap();
    let on_follower = c.client(follower);
    wait_until(WAIT, "the follower has db", || async {
        let (list, _) = on_follower.health_service("db", &stale()).await.ok()?;
        (list.len() == 1).then_some(())
    })
    .await;

    c.net.isolate(&c.names[follower]);
    let (status, text) = restore(&c.node(leader).url(), archive).await;
    assert_eq!((status, text.as_str()), (200, ""));
    let (gone, meta) = lc
        .health_service("db", &QueryOptions::default())
        .await
        .unwrap();
    assert!(gone.is_empty(), "{gone:?}");
    let restored_at = meta.index;

    // The cut-off follower still has db, at an index below the restore's: its watcher
    // waits on db's own wake-ups.
    let watch = {
        let opts = QueryOptions {
            stale: true,
            index: Some(restored_at),
            wait: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        tokio::spawn(async move { on_follower.health_service("db", &opts).await })
    };
    c.wait_watching(follower, "db").await;
    c.net.heal(&c.names[follower]);
    let applied = c.node(leader).raft.applied_index();
    let raft = &c.node(follower).raft;
    wait_until(WAIT, "the follower applied the restore", || async {
        (raft.applied_index() >= applied).then_some(())
    })
    .await;
    // The restore woke it; db's index is now the services table's, the restore's index.
    assert!(
        !watch.is_finished(),
        "answered without a change past its index"
    );

    lc.catalog_register(&reg("n3", "other", "other-1"), None)
        .await
        .unwrap();
    let (list, meta) = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the next write to another service answered the watcher")
        .unwrap()
        .unwrap();
    assert!(list.is_empty(), "{list:?}");
    assert!(meta.index > restored_at, "{} > {restored_at}", meta.index);
    c.shutdown().await;
}
