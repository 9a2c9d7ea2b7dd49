//! `GET /v1/agent/metrics` on servers: the Prometheus text parses with a real parser and
//! names Consul's metrics, its counters move when requests are made, the blocking-query
//! gauge follows a waiting query, each server of a cluster in one process counts its own,
//! the JSON has Consul's shape, and a checkpoint that fails is counted (metric and
//! `/v1/agent/self`) while the log is kept until one succeeds.

use prometheus_parse::{Scrape, Value};
use registry_testkit::cluster::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn http() -> reqwest::Client {
    registry_api::tls::client_builder(None)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Server `base`'s metrics, parsed.
async fn scrape(base: &str) -> Scrape {
    let resp = http()
        .get(format!("{base}/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"));
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines).unwrap()
}

/// The value of sample `name` with `labels` (a gauge, a counter, an untyped sample).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_text_parses_and_its_counters_move_with_requests() {
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let base = c.node(leader).url();
    let client = c.client(leader);

    let before = scrape(&base).await;
    for name in [
        "consul_raft_apply_total",
        "consul_raft_state_leader_total",
        "consul_raft_commitTime_count",
        "consul_raft_rocksdb_storeLogs_count",
        "consul_raft_fsm_apply_count",
        "consul_raft_leader_lastContact",
        "consul_server_isLeader",
        "consul_state_nodes",
        "consul_state_services",
        "consul_state_kv_entries",
        "consul_rpc_queries_blocking",
        "consul_snapshot_save_count",
    ] {
        assert!(value(&before, name, &[]).is_some(), "{name} missing");
    }
    assert_eq!(value(&before, "consul_server_isLeader", &[]), Some(1.0));
    assert!(value(&before, "consul_raft_state_leader_total", &[]).unwrap() >= 1.0);
    let kv_puts = |s: &Scrape| {
        value(
            s,
            "consul_api_http_count",
            &[("method", "PUT"), ("path", "v1_kv_")],
        )
        .unwrap_or(0.0)
    };
    let applied = |s: &Scrape| value(s, "consul_raft_apply_total", &[]).unwrap();
    let commits = |s: &Scrape| value(s, "consul_raft_commitTime_count", &[]).unwrap();

    for i in 0..5 {
        assert!(client.kv_put(&format!("m/k{i}"), "v", &[]).await.unwrap());
    }
    let after = scrape(&base).await;
    assert_eq!(kv_puts(&after) - kv_puts(&before), 5.0);
    assert!(applied(&after) - applied(&before) >= 5.0);
    assert!(commits(&after) - commits(&before) >= 5.0);
    assert_eq!(value(&after, "consul_state_kv_entries", &[]), Some(5.0));
    // Path labels are route templates, never the keys.
    assert!(after
        .samples
        .iter()
        .all(|s| s.labels.get("path").is_none_or(|p| !p.contains("k1"))));
    // A timer is a histogram whose buckets end at +Inf with its count.
    let buckets = after
        .samples
        .iter()
        .find_map(|s| match &s.value {
            Value::Histogram(b) if s.metric == "consul_raft_commitTime" => Some(b.clone()),
            _ => None,
        })
        .expect("commitTime buckets");
    let last = buckets.last().unwrap();
    assert!(last.less_than.is_infinite());
    assert_eq!(last.count, commits(&after));

    // A blocking query holds the gauge up while it waits, and lets it down when woken.
    let (_, meta) = client
        .kv_get("m/k0", &Default::default(), &[])
        .await
        .unwrap();
    let url = format!("{base}/v1/kv/m/k0?index={}&wait=20s", meta.index);
    let watcher = tokio::spawn(async move { http().get(url).send().await.unwrap().status() });
    wait_until(WAIT, "the blocking gauge counts the watcher", || async {
        value(&scrape(&base).await, "consul_rpc_queries_blocking", &[]) == Some(1.0)
    })
    .await;
    assert!(client.kv_put("m/k0", "woken", &[]).await.unwrap());
    assert_eq!(watcher.await.unwrap().as_u16(), 200);
    wait_until(WAIT, "the blocking gauge back to 0", || async {
        value(&scrape(&base).await, "consul_rpc_queries_blocking", &[]) == Some(0.0)
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_of_a_cluster_in_one_process_counts_its_own() {
    let c = TestCluster::builder(3).agents(true).start().await;
    let leader = c.wait_leader().await;
    let mut leaders = 0.0;
    for i in 0..3 {
        let s = scrape(&c.node(i).url()).await;
        let is_leader = value(&s, "consul_server_isLeader", &[]).unwrap();
        assert_eq!(is_leader == 1.0, i == leader, "server {i}");
        leaders += is_leader;
    }
    assert_eq!(leaders, 1.0);
    // Reads sent to one follower are counted there and nowhere else.
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let reads = |s: &Scrape| {
        value(
            s,
            "consul_api_http_count",
            &[("method", "GET"), ("path", "v1_catalog_nodes")],
        )
        .unwrap_or(0.0)
    };
    let (f0, o0) = (
        reads(&scrape(&c.node(follower).url()).await),
        reads(&scrape(&c.node(other).url()).await),
    );
    for _ in 0..3 {
        c.client(follower).catalog_nodes(&stale()).await.unwrap();
    }
    let (f1, o1) = (
        reads(&scrape(&c.node(follower).url()).await),
        reads(&scrape(&c.node(other).url()).await),
    );
    assert_eq!((f1 - f0, o1 - o0), (3.0, 0.0));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_has_consuls_shape() {
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader().await;
    let base = c.node(leader).url();
    assert!(c.client(leader).kv_put("j/a", "1", &[]).await.unwrap());
    let resp = http()
        .get(format!("{base}/v1/agent/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    for field in ["Timestamp", "Gauges", "Points", "Counters", "Samples"] {
        assert!(json.get(field).is_some(), "{field} in {json}");
    }
    assert!(json["Timestamp"].as_str().unwrap().ends_with("+0000 UTC"));
    let sample = json["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == "consul.raft.commitTime")
        .expect("consul.raft.commitTime");
    for field in [
        "Count", "Rate", "Sum", "Min", "Max", "Mean", "Stddev", "Labels",
    ] {
        assert!(sample.get(field).is_some(), "{field} in {sample}");
    }
    assert!(sample["Count"].as_u64().unwrap() >= 1);
    assert!(sample["Max"].as_f64().unwrap() >= sample["Min"].as_f64().unwrap());
    let gauge = json["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == "consul.state.kv_entries")
        .expect("consul.state.kv_entries");
    assert_eq!(gauge["Value"], 1.0);
    let http_sample = json["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == "consul.api.http" && s["Labels"]["path"] == "v1_kv_")
        .expect("consul.api.http for the KV write");
    assert_eq!(http_sample["Labels"]["method"], "PUT");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_is_counted_and_the_log_kept_until_one_succeeds() {
    let mut tuning = fast_tuning();
    tuning.compact_threshold = 20;
    tuning.compact_keep = 0;
    let c = TestCluster::builder(1).tuning(tuning).start().await;
    let leader = c.wait_leader().await;
    let base = c.node(leader).url();
    let client = c.client(leader);
    // (A fresh server: the first checkpoint is 20 entries away.)
    let st = c.status(leader);
    let (before, compacted) = (st.checkpointed_to, st.compacted_to);
    // A directory where the checkpoint's temporary file goes: creating it fails.
    let blocker = c.config(leader).data_dir.unwrap().join("catalog.ckpt.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let failures = |s: &Scrape| value(s, "registry_raft_checkpoint_failures_total", &[]);
    assert_eq!(failures(&scrape(&base).await), Some(0.0));
    for i in 0..50 {
        assert!(client.kv_put(&format!("k{i}"), "v", &[]).await.unwrap());
    }
    wait_until(WAIT, "a checkpoint failed", || async {
        (c.status(leader).checkpoint_failures > 0).then_some(())
    })
    .await;
    let st = c.status(leader);
    assert_eq!(st.checkpointed_to, before, "no checkpoint became durable");
    assert_eq!(st.compacted_to, compacted, "the log is kept");
    assert!(failures(&scrape(&base).await).unwrap() >= 1.0);
    let me: serde_json::Value = http()
        .get(format!("{base}/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = me["Stats"]["raft"]["checkpoint_failures"].as_str().unwrap();
    assert_ne!(shown, "0", "{}", me["Stats"]);
    // Freed: the next checkpoint succeeds, and the log is compacted behind it.
    std::fs::remove_dir(&blocker).unwrap();
    for i in 50..100 {
        assert!(client.kv_put(&format!("k{i}"), "v", &[]).await.unwrap());
    }
    wait_until(WAIT, "a checkpoint after the failures", || async {
        let st = c.status(leader);
        (st.checkpointed_to > before && st.compacted_to > compacted).then_some(())
    })
    .await;
    let s = scrape(&base).await;
    assert!(value(&s, "consul_raft_snapshot_persist_count", &[]).unwrap() >= 1.0);
    c.shutdown().await;
}
