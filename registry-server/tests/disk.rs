//! A data directory short of space (`--min-free-disk`, storage/space.rs):
//! writes are refused with a 503 and the reason, reads go on, nothing
//! acknowledged is lost, and writes resume once space is freed, without a
//! restart. On a real filesystem that fills (a tmpfs with a size, mounted by
//! the test, which needs root), and on a cluster whose leader or follower is
//! given a reserve larger than its disk (any user). And a leader whose disk
//! fails outright while it stores a write.

use registry_server::{ServerConfig, ServerHandle};
use registry_testkit::cluster::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A raw request: status and body as text.
async fn call(method: reqwest::Method, url: String, body: Vec<u8>) -> (u16, String) {
    let resp = registry_api::tls::plain_client()
        .request(method, url)
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn put(url: &str, key: &str, value: &[u8]) -> (u16, String) {
    call(
        reqwest::Method::PUT,
        format!("{url}/v1/kv/{key}"),
        value.to_vec(),
    )
    .await
}

async fn delete(url: &str, key: &str) -> (u16, String) {
    call(
        reqwest::Method::DELETE,
        format!("{url}/v1/kv/{key}"),
        vec![],
    )
    .await
}

/// The raw value of `key` on `url` (`?stale` when `stale`), `None` on a 404.
async fn get(url: &str, key: &str, stale: bool) -> Option<Vec<u8>> {
    let q = if stale { "raw&stale" } else { "raw" };
    let resp = registry_api::tls::plain_client()
        .get(format!("{url}/v1/kv/{key}?{q}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        200 => Some(resp.bytes().await.unwrap().to_vec()),
        404 => None,
        s => panic!(
            "GET {key} on {url}: {s} {}",
            resp.text().await.unwrap_or_default()
        ),
    }
}

fn assert_refused_for_space(what: &str, (status, text): (u16, String)) {
    assert_eq!(status, 503, "{what}: {text}");
    assert!(
        text.contains("insufficient disk space") && text.contains("MiB reserved"),
        "{what}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_short_of_space_refuses_writes_through_any_server_and_takes_them_once_freed() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let (lu, fu) = (c.node(leader).url(), c.node(follower).url());
    assert_eq!(put(&fu, "before/a", b"1").await.0, 200);
    assert_eq!(put(&lu, "before/b", b"2").await.0, 200);
    let (status, body) = call(
        reqwest::Method::PUT,
        format!("{fu}/v1/session/create"),
        br#"{"TTL":"30s"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let session: serde_json::Value = serde_json::from_str(&body).unwrap();
    let session = session["ID"].as_str().unwrap().to_string();

    // The leader's disk: between half its reserve and all of it. Writes
    // refused, through the leader and through a follower (whose own disk is
    // fine: the leader refuses the forwarded write and says why); deletes go.
    let space = c.node(leader).raft.disk_space().clone();
    let free = space.free();
    space.set_reserve(free + free / 2);
    assert_refused_for_space("PUT on the leader", put(&lu, "during/a", b"x").await);
    let resp = registry_api::tls::plain_client()
        .put(format!("{fu}/v1/kv/during/c"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "a 503 says when to ask again"
    );
    assert_refused_for_space("PUT via a follower", put(&fu, "during/b", b"x").await);
    assert_refused_for_space(
        "register via a follower",
        c.client(follower)
            .catalog_register(&reg("n1", "web", "web-1"), None)
            .await
            .map(|_| (200, String::new()))
            .unwrap_or_else(|e| (e.status().unwrap_or(0), e.to_string())),
    );
    assert_eq!(delete(&fu, "before/b").await.0, 200, "a delete frees space");
    // A session renewal goes (else the leader's TTL reaper, whose expiries go,
    // would end healthy sessions); a new session does not.
    let renew = call(
        reqwest::Method::PUT,
        format!("{fu}/v1/session/renew/{session}"),
        vec![],
    )
    .await;
    assert_eq!(renew.0, 200, "{}", renew.1);
    assert_refused_for_space(
        "session create",
        call(
            reqwest::Method::PUT,
            format!("{fu}/v1/session/create"),
            br#"{"TTL":"30s"}"#.to_vec(),
        )
        .await,
    );
    // Reads go on, linearizable ones included.
    assert_eq!(
        get(&fu, "before/a", false).await.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(get(&lu, "before/b", false).await, None);
    assert!(
        space.refused() >= 3,
        "refusals counted: {}",
        space.refused()
    );

    // Under half the reserve: deletes are refused too.
    space.set_reserve(free.saturating_mul(4));
    assert_refused_for_space("DELETE via a follower", delete(&fu, "before/a").await);

    // Space back: writes go at once, through both, and nothing was lost or half-applied.
    space.set_reserve(0);
    assert_eq!(put(&fu, "after/a", b"3").await.0, 200);
    assert_eq!(put(&lu, "after/b", b"4").await.0, 200);
    for key in ["during/a", "during/b", "during/c"] {
        assert_eq!(get(&lu, key, false).await, None, "{key} was refused");
    }
    assert_eq!(
        get(&lu, "before/a", false).await.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(get(&fu, "after/a", false).await.as_deref(), Some(&b"3"[..]));
    assert!(c.status(leader).fatal.is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_nearly_full_disk_lags_instead_of_stopping_and_catches_up() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let (full, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let (lu, fu) = (c.node(leader).url(), c.node(full).url());
    assert_eq!(put(&lu, "k/0", b"0").await.0, 200);
    // The write is acknowledged once one follower has it: wait for this one too.
    wait_until(Duration::from_secs(10), "the follower to apply k/0", || {
        let fu = fu.clone();
        async move { get(&fu, "k/0", true).await.map(|_| ()) }
    })
    .await;
    let term = c.status(leader).term;

    // Less than a quarter of its reserve left: it takes no new entries.
    let space = c.node(full).raft.disk_space().clone();
    space.set_reserve(space.free().saturating_mul(8));
    for i in 1..=20 {
        assert_eq!(put(&lu, &format!("k/{i}"), b"v").await.0, 200, "k/{i}");
    }
    // The other follower has them all; this one, given the same time, none.
    let ou = c.node(other).url();
    wait_until(
        Duration::from_secs(10),
        "the other follower to apply",
        || {
            let ou = ou.clone();
            async move { get(&ou, "k/20", true).await.map(|_| ()) }
        },
    )
    .await;
    registry_testkit::never_within(
        Duration::from_millis(500),
        "the full follower to apply",
        || {
            let fu = fu.clone();
            async move { get(&fu, "k/20", true).await }
        },
    )
    .await;
    // Entries are applied in order, so without k/1 it has none of them. (Its
    // applied index may still move: the leader's own writes that reached it
    // before the reserve, such as a server's catalog registration, commit
    // and apply as they should.)
    assert_eq!(get(&fu, "k/1", true).await, None);
    // It still runs, serves stale reads, and starts no election.
    let st = c.status(full);
    assert!(st.fatal.is_none(), "{:?}", st.fatal);
    assert_eq!(get(&fu, "k/0", true).await.as_deref(), Some(&b"0"[..]));
    assert_eq!((c.status(leader).term, c.status(full).term), (term, term));

    // Space back: it catches up without a restart.
    space.set_reserve(0);
    wait_until(
        Duration::from_secs(10),
        "the full follower to catch up",
        || {
            let fu = fu.clone();
            async move { get(&fu, "k/20", true).await.map(|_| ()) }
        },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_leader_cannot_store_it_is_answered_as_maybe_applied_and_applies() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let lu = c.node(leader).url();
    assert_eq!(put(&lu, "before", b"1").await.0, 200);
    // The leader's own writes (the servers in the catalog) done first, so
    // that its next synced write is this test's.
    wait_until(
        Duration::from_secs(10),
        "the three servers in the catalog",
        || {
            let lu = lu.clone();
            async move {
                let (status, text) = call(
                    reqwest::Method::GET,
                    format!("{lu}/v1/catalog/service/consul"),
                    vec![],
                )
                .await;
                let list: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
                (status == 200 && list.len() == 3).then_some(())
            }
        },
    )
    .await;
    // And nothing else in flight (an agent's first anti-entropy, a revive):
    // commit and applied index equal and unmoved for 300 ms.
    wait_until(Duration::from_secs(10), "the leader to be idle", || {
        let raft = c.node(leader).raft.clone();
        let at = move || (raft.status().commit, raft.applied_index());
        async move {
            let before = at();
            tokio::time::sleep(Duration::from_millis(300)).await;
            (before == at() && before.0 == before.1).then_some(())
        }
    })
    .await;

    // The leader sends the entry to its followers, then fails to store it
    // and stops: the caller cannot be told the write failed, as it may not
    // have (and here it did not).
    c.disks[leader].set_fail_synced_writes(true);
    let (status, text) = put(&lu, "during", b"2").await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("may have applied"), "{text}");
    assert!(c.status(leader).fatal.is_some());
    for i in (0..3).filter(|&i| i != leader) {
        let url = c.node(i).url();
        wait_until(
            Duration::from_secs(20),
            "the next leader to commit the write",
            || {
                let url = url.clone();
                async move { get(&url, "during", true).await }
            },
        )
        .await;
    }
    c.disks[leader].set_fail_synced_writes(false);
    c.shutdown().await;
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` where mounting is not permitted (not root, or a container
    /// without CAP_SYS_ADMIN); any other failure fails the test.
    fn mount(mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("permission denied") {
            return None;
        }
        assert!(out.status.success(), "mount a tmpfs: {err}");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's avail")
}

async fn dev_server(data_dir: PathBuf) -> ServerHandle {
    let mut cfg = ServerConfig::new("disk-test");
    cfg.dev = true;
    cfg.data_dir = Some(data_dir);
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.rpc_addr = "127.0.0.1:0".parse().unwrap();
    cfg.tuning = fast_tuning();
    let h = registry_server::start(cfg).await.unwrap();
    let url = h.url();
    wait_until(Duration::from_secs(10), "a leader", || {
        let url = url.clone();
        async move { (put(&url, "ready", b"1").await.0 == 200).then_some(()) }
    })
    .await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_fills_refuses_writes_keeps_reads_and_resumes_once_freed() {
    let skip = "SKIPPED: mounting a tmpfs needs root (with CAP_SYS_ADMIN); the cluster tests in this file cover the rest";
    if !is_root() {
        eprintln!("{skip}");
        return;
    }
    let Some(fs) = Tmpfs::mount(256) else {
        eprintln!("{skip}");
        return;
    };
    let server = dev_server(fs.path().join("data")).await;
    let url = server.url();

    // Someone else fills the disk: 12 MiB above the default reserve (64 MiB) left.
    let filler = fs.path().join("filler");
    let reserve = registry_server::storage::space::DEFAULT_MIN_FREE;
    let fill = free_bytes(fs.path()).saturating_sub(reserve + (12 << 20));
    std::fs::write(&filler, vec![7u8; fill as usize]).unwrap();

    // The registry's own writes use the rest, until it refuses them.
    let value = vec![b'v'; 32 * 1024];
    let mut acked = Vec::new();
    let refusal = loop {
        let key = format!("fill/{:05}", acked.len());
        let (status, text) = put(&url, &key, &value).await;
        match status {
            200 => acked.push(key),
            503 => break text,
            s => panic!("PUT {key}: {s} {text}"),
        }
        assert!(
            acked.len() < 5000,
            "never refused; free {}",
            free_bytes(fs.path())
        );
    };
    assert!(!acked.is_empty());
    assert!(refusal.contains("insufficient disk space"), "{refusal}");
    // Refused again, not half-applied; reads answer with everything acknowledged.
    assert_refused_for_space("PUT", put(&url, "fill/refused", b"x").await);
    assert_eq!(get(&url, "fill/refused", false).await, None);
    for key in &acked {
        assert_eq!(
            get(&url, key, false).await.as_deref(),
            Some(&value[..]),
            "{key}"
        );
    }
    assert!(server.raft.status().fatal.is_none());
    // The figures are on the metrics page.
    let metrics = registry_api::tls::plain_client()
        .get(format!("{url}/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("registry_disk_writes_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE registry_disk_writes_refused counter"),
        "{metrics}"
    );

    // The disk is freed: writes resume without a restart (within one reading of the space).
    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(5), "writes to resume", || {
        let url = url.clone();
        async move { (put(&url, "fill/after", b"ok").await.0 == 200).then_some(()) }
    })
    .await;
    assert_eq!(
        get(&url, "fill/after", false).await.as_deref(),
        Some(&b"ok"[..])
    );
    assert_eq!(
        get(&url, &acked[0], false).await.as_deref(),
        Some(&value[..])
    );
    server.stop().await;
}

/// Once `full` hold `k/0` (written through `url`), leaves each less than a quarter of its
/// reserve free, so that it drops the leader's appends; returns their space checks and the
/// first write after that, which reaches them and may still apply later (left to time out
/// or apply on its own).
async fn fill_followers(
    c: &TestCluster,
    full: &[usize],
    url: &str,
) -> (
    Vec<std::sync::Arc<registry_server::storage::space::DiskSpace>>,
    tokio::task::JoinHandle<(u16, String)>,
) {
    assert_eq!(put(url, "k/0", b"0").await.0, 200);
    for &f in full {
        let fu = c.node(f).url();
        wait_until(Duration::from_secs(10), "the follower to apply k/0", || {
            let fu = fu.clone();
            async move { get(&fu, "k/0", true).await.map(|_| ()) }
        })
        .await;
    }
    let spaces: Vec<_> = (full.iter())
        .map(|&f| c.node(f).raft.disk_space().clone())
        .collect();
    for space in &spaces {
        space.set_reserve(space.free().saturating_mul(8));
    }
    let url = url.to_string();
    let first = tokio::spawn(async move { put(&url, "k/first", b"v").await });
    (spaces, first)
}

/// Writes through `url` until one is refused with a 503 (the leader has heard from the full
/// followers), and returns its reason.
async fn refusal(url: &str) -> String {
    wait_until(
        Duration::from_secs(20),
        "a 503 for a write",
        || async move {
            let (status, body) = put(url, "k/refused", b"v").await;
            (status == 503).then_some(body)
        },
    )
    .await
}

/// Gives the full followers their room back and waits until a write through `url` goes.
async fn free_and_resume(
    spaces: &[std::sync::Arc<registry_server::storage::space::DiskSpace>],
    url: &str,
    first: tokio::task::JoinHandle<(u16, String)>,
) {
    for space in spaces {
        space.set_reserve(0);
    }
    wait_until(Duration::from_secs(15), "writes to resume", || async move {
        (put(url, "k/after", b"v").await.0 == 200).then_some(())
    })
    .await;
    let _ = first.await;
}

/// When too few servers have room to take entries, nothing can commit: the leader, told by
/// the full followers, refuses new writes at once with a 503 that says why (instead of each
/// waiting out the commit timeout for a 500), reads go on, and writes resume once the
/// followers have room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_of_full_servers_makes_the_leader_refuse_writes_with_a_503() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let lu = c.node(leader).url();
    let (spaces, first) = fill_followers(&c, &[(leader + 1) % 3, (leader + 2) % 3], &lu).await;
    let reason = refusal(&lu).await;
    assert!(reason.contains("short of space"), "{reason}");
    // Reads go on.
    assert_eq!(get(&lu, "k/0", false).await.as_deref(), Some(&b"0"[..]));
    free_and_resume(&spaces, &lu, first).await;
    c.shutdown().await;
}

/// The same through a follower with room: its forwarded writes reach the leader, which
/// refuses them with the same reason while three of five servers are full. (With one full
/// server of three, writes go on: `a_follower_with_a_nearly_full_disk_lags_...` above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_while_a_majority_is_full_are_refused_with_a_503() {
    let c = TestCluster::start(5).await;
    let leader = c.wait_leader().await;
    let others: Vec<usize> = (1..5).map(|k| (leader + k) % 5).collect();
    let (full, via) = (&others[..3], others[3]);
    let vu = c.node(via).url();
    let (spaces, first) = fill_followers(&c, full, &vu).await;
    let reason = refusal(&vu).await;
    assert!(
        reason.contains("short of space") && reason.contains("3 of 5"),
        "{reason}"
    );
    free_and_resume(&spaces, &vu, first).await;
    c.shutdown().await;
}
