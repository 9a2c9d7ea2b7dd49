//! The six measurements of issue 6, each a function that drives running clusters
//! and returns raw per-run numbers; `report` turns them into the table.

use crate::cluster::RegistryCluster;
use crate::load::{self, http_client, Load, Op, RunStats, Stop};
use crate::procs::{disk_used, rss_bytes};
use crate::spread;
use crate::watch;
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many instances of `service` `base` holds in its own state (`?stale`); 0 on error.
pub async fn stale_instances(http: &reqwest::Client, base: &str, service: &str) -> usize {
    array_len(http, &format!("{base}/v1/catalog/service/{service}?stale")).await
}

/// The length of the JSON array `url` answers with; 0 on an error or anything else.
async fn array_len(http: &reqwest::Client, url: &str) -> usize {
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0),
        _ => 0,
    }
}

/// Registers instance `i` of `service` on its own node through `base`.
pub async fn register_instance(
    http: &reqwest::Client,
    base: &str,
    service: &str,
    i: usize,
) -> Result<()> {
    let body = serde_json::json!({
        "Node": format!("{service}-node-{i}"), "Address": format!("10.9.0.{}", i % 250 + 1),
        "Service": {"Service": service, "ID": format!("{service}-{i}"), "Port": 8000 + i, "Tags": ["bench"]},
        "Check": {"Name": "alive", "CheckID": format!("{service}-{i}:alive"),
                  "ServiceID": format!("{service}-{i}"), "Status": "passing"}
    });
    let r = http
        .put(format!("{base}/v1/catalog/register"))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "register {service}-{i}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// One closed-loop write cell on one system at one concurrency (measurements 1 and 12),
/// clients pinned to `bases[i % len]`.
pub async fn register(
    op: Op,
    bases: &[String],
    clients: usize,
    secs: Duration,
    seq: &Arc<AtomicU64>,
) -> Result<RunStats> {
    load::run(Load {
        op,
        bases: bases.to_vec(),
        clients,
        stop: Stop::For(secs),
        seq: seq.clone(),
        rotate: false,
        token: None,
    })
    .await
}

/// `lookup-svc` with 3 passing instances, visible in every server's own state.
pub async fn setup_lookup_service(ours: &[String]) -> Result<()> {
    setup_lookup_service_as(ours, None).await
}

/// [`setup_lookup_service`] with `token` on every request (a cluster with ACLs on).
pub async fn setup_lookup_service_as(ours: &[String], token: Option<&str>) -> Result<()> {
    let http = load::http_client_with_token(token)?;
    for i in 0..3 {
        register_instance(&http, &ours[0], "lookup-svc", i).await?;
    }
    for u in ours {
        let deadline = Instant::now() + Duration::from_secs(10);
        while stale_instances(&http, u, "lookup-svc").await < 3 {
            if Instant::now() > deadline {
                bail!("{u} did not see lookup-svc within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Sets up measurement 2: `lookup-svc` with 3 passing instances, visible on every
/// server; etcd gets one key holding exactly the JSON our default lookup returns, so
/// both answer with the same payload.
pub async fn setup_lookups(ours: &[String], etcd: &[String]) -> Result<String> {
    setup_lookup_service(ours).await?;
    let http = http_client()?;
    let body = http
        .get(format!("{}/v1/health/service/lookup-svc?passing", ours[0]))
        .send()
        .await?
        .bytes()
        .await?;
    let key = load::b64(b"/registry/health/lookup-svc");
    let r = http
        .post(format!("{}/v3/kv/put", etcd[0]))
        .json(&serde_json::json!({"key": key, "value": load::b64(&body)}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("etcd put of the lookup payload: {}", r.status());
    }
    Ok(key)
}

/// The key of measurement 7's single-key rows.
pub const KV_KEY: &str = "bench/k";
/// The prefix of measurement 7's recurse row (with the `/`).
pub const KV_TREE: &str = "bench-tree/";
/// Keys under [`KV_TREE`].
pub const KV_TREE_KEYS: usize = 1_000;

/// Sets up measurement 7 in both systems: [`KV_KEY`] and [`KV_TREE_KEYS`] keys under
/// [`KV_TREE`], with the same values ([`load::kv_value`]); waits until every one of our
/// servers holds them all in its own state (`?stale`), so that no read row starts on a
/// server still catching up.
pub async fn setup_kv(ours: &[String], etcd: &[String]) -> Result<()> {
    let mut keys = vec![KV_KEY.to_string()];
    keys.extend((0..KV_TREE_KEYS).map(|i| format!("{KV_TREE}key-{i:04}")));
    let keys = Arc::new(keys);
    // 16 writers per system: 1,001 sequential round trips would take a few seconds.
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (keys, our, their) = (keys.clone(), ours[0].clone(), etcd[0].clone());
        tasks.spawn(async move {
            let http = http_client()?;
            for (i, key) in keys.iter().enumerate().skip(w).step_by(16) {
                let value = load::kv_value(i as u64);
                let r = http
                    .put(format!("{our}/v1/kv/{key}"))
                    .body(value.clone())
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("PUT /v1/kv/{key}: {}", r.status());
                }
                let body = serde_json::json!({"key": load::b64(key.as_bytes()), "value": load::b64(&value)});
                let r = http
                    .post(format!("{their}/v3/kv/put"))
                    .json(&body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("etcd put of {key}: {}", r.status());
                }
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let http = http_client()?;
    for u in ours {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held = array_len(&http, &format!("{u}/v1/kv/{KV_TREE}?recurse&stale")).await;
            if held == KV_TREE_KEYS {
                break;
            }
            if Instant::now() > deadline {
                bail!("{u} holds {held} of the {KV_TREE_KEYS} KV keys after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// A read load over `bases` with `clients` clients.
pub async fn read(
    op: Op,
    bases: &[String],
    clients: usize,
    secs: Duration,
    rotate: bool,
) -> Result<RunStats> {
    load::run(Load {
        op,
        bases: bases.to_vec(),
        clients,
        stop: Stop::For(secs),
        seq: Arc::new(AtomicU64::new(0)),
        rotate,
        token: None,
    })
    .await
}

/// The watchers' answers of one fan-out, counted.
struct Tally {
    answered: usize,
    early: usize,
    failed: usize,
    first_error: Option<String>,
}

/// Takes the answers of `n` watchers from `done` for at most `wait` (each with the instant
/// it came): one that came before `sent` (the write) is early, an error after it failed,
/// a success after it answered (passed to `answered`); a watcher with no answer in time
/// failed.
async fn tally_answers(
    done: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Result<(), String>)>,
    n: usize,
    sent: Instant,
    wait: Duration,
    mut answered: impl FnMut(Instant),
) -> Tally {
    let deadline = Instant::now() + wait;
    let mut t = Tally {
        answered: 0,
        early: 0,
        failed: 0,
        first_error: None,
    };
    let mut received = 0;
    while received < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((at, res))) = tokio::time::timeout(left, done.recv()).await else {
            break;
        };
        received += 1;
        match res {
            Err(e) if at < sent => {
                t.early += 1;
                t.first_error.get_or_insert(e);
            }
            Ok(()) if at < sent => t.early += 1,
            Err(e) => {
                t.failed += 1;
                t.first_error.get_or_insert(e);
            }
            Ok(()) => {
                t.answered += 1;
                answered(at);
            }
        }
    }
    if received < n {
        t.failed += n - received;
        t.first_error.get_or_insert(format!(
            "{} watchers had no answer {} s after the write",
            n - received,
            wait.as_secs()
        ));
    }
    t
}

/// One run of measurement 3.
#[derive(Clone, Debug, Default)]
pub struct FanoutRun {
    /// Watchers answered after the write was sent (the ones that count).
    pub answered: usize,
    /// Watchers that returned before the write (spurious wake-up, timeout, error).
    pub early: usize,
    /// Watchers with no answer 30 s after the write, or with an error after it.
    pub failed: usize,
    /// Median time from the write's acknowledgement to a watcher's answer.
    pub p50: Duration,
    /// Time from the write's acknowledgement to the last watcher's answer.
    pub last: Duration,
    /// The first error seen.
    pub first_error: Option<String>,
}

/// Measurement 3: `n` blocking queries on `watch-svc` spread over `urls`, then one write.
pub async fn fanout(
    urls: &[String],
    extra_query: &str,
    n: usize,
    runs: usize,
    settle: Duration,
) -> Result<Vec<FanoutRun>> {
    let http = http_client()?;
    // One connection per watcher, kept for the next run (crate::watch says why not reqwest).
    let slots: Vec<watch::Slot> = (0..n).map(|_| watch::Slot::default()).collect();
    register_instance(&http, &urls[0], "watch-svc", 0).await?;
    let mut out = Vec::new();
    for run in 0..runs {
        let r = http
            .get(format!("{}/v1/health/service/watch-svc", urls[0]))
            .send()
            .await?;
        let index: u64 = r
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("no X-Consul-Index on the watch read")?;
        // Answers arrive on a channel, so that the order in which watchers are collected
        // can never make one wait for another.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(n);
        for (w, slot) in slots.iter().enumerate() {
            let slot = slot.clone();
            let base = &urls[w % urls.len()];
            let addr = base.strip_prefix("http://").unwrap_or(base).to_string();
            let path = format!("/v1/health/service/watch-svc?index={index}&wait=60s{extra_query}");
            let done = done_tx.clone();
            tasks.push(tokio::spawn(async move {
                let r = watch::get(&slot, &addr, &path);
                let result = watch::changed(r, Duration::from_secs(90), index).await;
                let _ = done.send((Instant::now(), result));
            }));
            // Open connections in waves so the listen backlog never overflows.
            if w % 250 == 249 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(settle).await;
        let sent = Instant::now();
        // A new instance for every run of every size: re-registering one that
        // exists unchanged would not move the index, and wake nobody.
        register_instance(&http, &urls[0], "watch-svc", n + run + 1).await?;
        let acked = Instant::now();
        let mut result = FanoutRun::default();
        let mut delays = Vec::with_capacity(n);
        let tally = tally_answers(&mut done_rx, n, sent, Duration::from_secs(30), |at| {
            delays.push(at.saturating_duration_since(acked))
        })
        .await;
        (
            result.answered,
            result.early,
            result.failed,
            result.first_error,
        ) = (tally.answered, tally.early, tally.failed, tally.first_error);
        for t in &tasks {
            t.abort();
        }
        delays.sort_unstable();
        result.p50 = load::percentile(&delays, 0.5);
        result.last = delays.last().copied().unwrap_or_default();
        eprintln!(
            "  fan-out {n}: run {}: last {:?}, p50 {:?}, answered {}, early {}, failed {} {}",
            run + 1,
            result.last,
            result.p50,
            result.answered,
            result.early,
            result.failed,
            result.first_error.as_deref().unwrap_or("")
        );
        out.push(result);
    }
    Ok(out)
}

/// Measurement 3's spread run: many watchers over many services.
#[derive(Clone, Debug, Default)]
pub struct SpreadRun {
    /// Services watched.
    pub services: usize,
    /// Watchers in all.
    pub watchers: usize,
    /// Watchers answered after the writes began, with a higher index.
    pub answered: usize,
    /// Watchers that returned before the writes (spurious wake-up, timeout, error).
    pub early: usize,
    /// Watchers with no answer 60 s after the last write, or with an error after the writes.
    pub failed: usize,
    /// Time from the first write's start to the last write's acknowledgement.
    pub writes: Duration,
    /// Time from the first write's start to the last watcher's answer.
    pub last: Duration,
    /// The servers' largest RSS with every watcher waiting.
    pub max_rss: u64,
    /// The first error seen.
    pub first_error: Option<String>,
    /// Client agents the watchers asked (0: they asked the servers).
    pub agents: usize,
    /// The agents' largest RSS after the answers.
    pub agent_rss: u64,
    /// Blocking queries the agents sent to the servers, over the whole run.
    pub upstream: u64,
    /// Blocking queries the agents answered from another's request.
    pub shared: u64,
}

/// Measurement 3's spread run (issue 20): `each` blocking queries on each of `services`
/// services (`spread-<i>`), spread over `urls` as everywhere else (or, with `agents`, over the
/// agents, in child processes: `spread.rs` says why), then one new instance on every service,
/// written by 64 clients at once; every watcher must be answered. Connections leave from
/// several loopback source addresses (see [`watch::get_from`]).
pub async fn fanout_spread(
    urls: &[String],
    pids: &[u32],
    services: usize,
    each: usize,
    agents: Option<&spread::Agents>,
) -> Result<SpreadRun> {
    let http = http_client()?;
    let n = services * each;
    eprintln!("  spread: registering {services} services");
    let register_all = |offset: usize| {
        let http = http.clone();
        async move {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for c in 0..64.min(services) {
                let (http, next, base) = (http.clone(), next.clone(), urls[c % urls.len()].clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let s = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if s >= services {
                            return Ok::<_, anyhow::Error>(());
                        }
                        register_instance(&http, &base, &format!("spread-{s}"), offset).await?;
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    register_all(0).await?;
    // Each service's current index, from the servers' own view (?stale on the server its
    // watchers use would race with replication; the leader's default read is the reference).
    let mut index = Vec::with_capacity(services);
    for s in 0..services {
        let r = http
            .get(format!("{}/v1/health/service/spread-{s}", urls[0]))
            .send()
            .await?;
        index.push(
            r.headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .context("no X-Consul-Index on a spread read")?,
        );
    }
    let via = agents.map_or("the servers".to_string(), |a| {
        format!("{} agents", a.addrs.len())
    });
    eprintln!("  spread: opening {n} watchers through {via}");
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let targets: Vec<spread::Target> = (0..n)
        .map(|w| {
            let s = w % services;
            let addr = match agents {
                // Each agent gets every service, `each / agents` watchers of each.
                Some(a) => a.addrs[(w / services) % a.addrs.len()].clone(),
                None => {
                    let base = &urls[w % urls.len()];
                    base.strip_prefix("http://").unwrap_or(base).to_string()
                }
            };
            spread::Target {
                addr,
                path: format!("/v1/health/service/spread-{s}?index={}&wait=240s", index[s]),
                min: index[s],
            }
        })
        .collect();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    let children = match agents {
        Some(a) => Some(spread::Children::start(targets, a.per_child, done_tx.clone()).await?),
        None => {
            for (w, t) in targets.into_iter().enumerate() {
                let source = std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                    127,
                    0,
                    1,
                    (w / 20_000) as u8 + 1,
                ));
                let (done, asked) = (done_tx.clone(), asked.clone());
                tasks.push(tokio::spawn(async move {
                    let slot = watch::Slot::default();
                    let r = watch::get_from(&slot, Some(source), &t.addr, &t.path, Some(&asked));
                    let result = watch::changed(r, spread::WATCHER_LIMIT, t.min).await;
                    let _ = done.send((Instant::now(), result));
                }));
                if w % 250 == 249 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            None
        }
    };
    let asked_now = || match &children {
        Some(c) => c.asked(),
        None => asked.load(Ordering::Relaxed),
    };
    let settled = || match &children {
        Some(c) => c.settled() >= n,
        None => tasks.iter().all(|t| t.is_finished()),
    };
    // Every watcher has sent its request before the writes, so the writes are measured
    // alone (one that failed first is counted below, once every task has ended or after
    // four minutes); then a second for the last requests to be read.
    let asking = Instant::now();
    while asked_now() < n && !settled() && asking.elapsed() < Duration::from_secs(240) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "  spread: {} of {n} watchers asked within {:?}",
        asked_now(),
        asking.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut result = SpreadRun {
        services,
        watchers: n,
        ..Default::default()
    };
    result.max_rss = pids.iter().filter_map(|&p| rss_bytes(p)).max().unwrap_or(0);
    eprintln!("  spread: one write to each of {services} services");
    let sent = Instant::now();
    register_all(1).await?;
    result.writes = sent.elapsed();
    let mut last = sent;
    let tally = tally_answers(&mut done_rx, n, sent, Duration::from_secs(60), |at| {
        last = last.max(at)
    })
    .await;
    (
        result.answered,
        result.early,
        result.failed,
        result.first_error,
    ) = (tally.answered, tally.early, tally.failed, tally.first_error);
    for t in &tasks {
        t.abort();
    }
    drop(children);
    result.last = last.saturating_duration_since(sent);
    if let Some(a) = agents {
        result.agents = a.addrs.len();
        result.agent_rss = a
            .pids()
            .iter()
            .filter_map(|&p| rss_bytes(p))
            .max()
            .unwrap_or(0);
        (result.upstream, result.shared) = a.blocking_counts().await?;
        eprintln!(
            "  spread: the agents sent {} blocking queries to servers and answered {} from another's",
            result.upstream, result.shared
        );
    }
    eprintln!(
        "  spread {n} over {services}: writes {:?}, last answer {:?}, answered {}, early {}, failed {} {}",
        result.writes,
        result.last,
        result.answered,
        result.early,
        result.failed,
        result.first_error.as_deref().unwrap_or("")
    );
    Ok(result)
}

/// Measurement 5 at one size.
#[derive(Clone, Debug, Default)]
pub struct MemPoint {
    /// Instances registered by the bench (10 per node, each with one check).
    pub instances: u64,
    /// Failed registrations while filling.
    pub errors: u64,
    /// Leader RSS in bytes.
    pub leader_rss: u64,
    /// Largest follower RSS in bytes.
    pub follower_rss: u64,
    /// `du` of the leader's data dir in bytes.
    pub disk: u64,
    /// Registrations per second while filling (256 clients).
    pub fill_rate: f64,
}

/// One run of measurement 6.
#[derive(Clone, Debug, Default)]
pub struct RecoveryRun {
    /// Instances in the catalog when the server was stopped.
    pub instances: u64,
    /// Writes made while it was down.
    pub missed_writes: u64,
    /// From the restart to its HTTP API answering.
    pub http_up: Duration,
    /// From the restart to its `?stale` catalog showing the last write.
    pub caught_up: Duration,
}

/// What measurements 5 and 14 register: 10 instances per node, each its own service with one
/// check (`registry_testkit::workload::registration` with prefix `mem`).
pub fn memory_op() -> Op {
    Op::Register {
        prefix: "mem".into(),
        per_node: 10,
    }
}

/// Fills `cluster` with [`memory_op`]'s registrations (256 clients, numbered on from `seq`)
/// until `target`, lets the last batch settle, and measures: RSS of the leader and the
/// largest follower, the leader's data dir, the fill rate, this fill's failed registrations.
pub async fn fill_and_measure(
    cluster: &mut RegistryCluster,
    seq: &Arc<AtomicU64>,
    target: u64,
) -> Result<MemPoint> {
    let from = seq.load(Ordering::Relaxed);
    let t = Instant::now();
    let st = load::run(Load {
        op: memory_op(),
        bases: cluster.urls(),
        clients: 256,
        stop: Stop::Count(target),
        seq: seq.clone(),
        rotate: false,
        token: None,
    })
    .await?;
    // Each client takes one number past the limit before it stops (and sends nothing with
    // it): the next fill starts at the target (never below where this one started).
    seq.store(target.max(from), Ordering::Relaxed);
    cluster.check_alive()?;
    if let Some(e) = &st.first_error {
        eprintln!("  fill: {} errors, first: {e}", st.errors);
    }
    let registered = target.saturating_sub(from).saturating_sub(st.errors);
    let fill_rate = registered as f64 / t.elapsed().as_secs_f64();
    // Let the last batch be applied everywhere and memtables settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.leader().await?;
    let rss = |i: usize| {
        cluster.servers[i]
            .proc
            .pid()
            .and_then(rss_bytes)
            .unwrap_or(0)
    };
    Ok(MemPoint {
        instances: target,
        errors: st.errors,
        leader_rss: rss(leader),
        follower_rss: (0..3).filter(|&i| i != leader).map(rss).max().unwrap_or(0),
        disk: disk_used(&cluster.servers[leader].data_dir),
        fill_rate,
    })
}

/// Measurements 5 and 6 on `cluster` (a fresh one): fill to each of `points`, then
/// stop, write past and restart a follower `runs` times.
pub async fn memory_and_recovery(
    cluster: &mut RegistryCluster,
    points: &[u64],
    runs: usize,
    missed_writes: u64,
    seq: &Arc<AtomicU64>,
) -> Result<(Vec<MemPoint>, Vec<RecoveryRun>)> {
    let op = memory_op();
    let mut mem = Vec::new();
    let mut errors = 0;
    for &target in points {
        let mut point = fill_and_measure(cluster, seq, target).await?;
        errors += point.errors;
        point.errors = errors;
        eprintln!(
            "  memory at {target}: leader RSS {} MB, disk {} MB, fill {:.0}/s",
            point.leader_rss >> 20,
            point.disk >> 20,
            point.fill_rate
        );
        mem.push(point);
    }

    let mut rec = Vec::new();
    for run in 0..runs {
        let marker = format!("recovery-marker-{run}");
        rec.push(follower_recovery(cluster, &op, seq, missed_writes, run, &marker).await?);
    }
    Ok((mem, rec))
}

/// Measurement 6's run (and measurement 14's catch-up by snapshot): stops follower number
/// `run % 2`, makes `missed_writes` registrations of `op` (numbered from `seq`) through the
/// others, registers `marker`, restarts the follower and times until its `?stale` catalog
/// shows the marker.
pub async fn follower_recovery(
    cluster: &mut RegistryCluster,
    op: &Op,
    seq: &Arc<AtomicU64>,
    missed_writes: u64,
    run: usize,
    marker: &str,
) -> Result<RecoveryRun> {
    let http = http_client()?;
    let urls = cluster.urls();
    let leader = cluster.leader().await?;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let f = followers[run % followers.len()];
    let instances = seq.load(Ordering::Relaxed);
    cluster.servers[f]
        .proc
        .stop(Duration::from_secs(20))
        .await?;
    let others: Vec<String> = (0..3)
        .filter(|&i| i != f)
        .map(|i| urls[i].clone())
        .collect();
    let from = seq.load(Ordering::Relaxed);
    let missed = load::run(Load {
        op: op.clone(),
        bases: others.clone(),
        clients: 64,
        stop: Stop::Count(from + missed_writes),
        seq: seq.clone(),
        rotate: false,
        token: None,
    })
    .await?;
    if missed.errors > 0 {
        // Fewer writes than said were missed: the figure would not be what it claims.
        bail!(
            "{} of the writes the stopped follower should miss failed: {}",
            missed.errors,
            missed.first_error.unwrap_or_default()
        );
    }
    seq.store(from + missed_writes, Ordering::Relaxed);
    register_instance(&http, &others[0], marker, 0).await?;
    let start = Instant::now();
    cluster.servers[f].proc.restart()?;
    let deadline = start + Duration::from_secs(300);
    let mut http_up = None;
    loop {
        cluster.servers[f].proc.check_alive()?;
        if http_up.is_none()
            && http
                .get(format!("{}/v1/status/leader", urls[f]))
                .send()
                .await
                .is_ok()
        {
            http_up = Some(start.elapsed());
        }
        if stale_instances(&http, &urls[f], marker).await > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not catch up within 300 s of its restart",
                cluster.servers[f].node
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = RecoveryRun {
        instances,
        missed_writes,
        http_up: http_up.unwrap_or_default(),
        caught_up: start.elapsed(),
    };
    eprintln!(
        "  recovery run {}: {} restarted after {} missed writes, HTTP up after {:?}, caught up after {:?}",
        run + 1,
        cluster.servers[f].node,
        missed_writes,
        r.http_up,
        r.caught_up
    );
    Ok(r)
}

/// An error with its sources (reqwest's own text hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
