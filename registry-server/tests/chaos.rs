//! Randomized fault schedules against a 3-server cluster, with a history
//! checker: writes and default/`?consistent` reads must be linearizable (so no
//! acknowledged write is lost), `?stale` reads from one server never go
//! backwards, and there are never two leaders in one term.
//!
//! Clients register (each time a new `Meta.v`), deregister and read 8 keys
//! (service instances) through all three servers. Faults, drawn from the
//! seed every 200-600 ms: isolate a server, cut a link both ways or one way,
//! drop 30% of a link's messages, delay a link, kill a server (stop; its
//! RocksDB stays) and restart it from disk, slow a server's disk (every synced
//! write 20-150 ms late), and heal everything.
//!
//! `make test` runs the fixed seeds below; `make chaos` runs fresh seeds for a
//! while (`CHAOS_SEEDS=random CHAOS_RUNS=n`). A failure prints the seed and the
//! smallest part of the failing key's history that still has no
//! linearization; a seed that failed once belongs in `FIXED_SEEDS`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registry_api::{
    AgentService, DeregisterRequest, QueryOptions, RegisterRequest, RegistryClient,
};
use registry_testkit::cluster::*;
use registry_testkit::history::{self, Kind, Op};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seeds run by `make test`, with `CHAOS_SECONDS` (4 s by default).
const FIXED_SEEDS: &[u64] = &[1, 2, 3];

/// Seeds that once failed or hung, with the fault time they had; also run by
/// `make test` (timing differs from run to run, so a seed replays the same
/// fault decisions, not the same history).
/// - 2680179603692032791 at 8 s: the checker searched every subset of 40-odd
///   deregistrations of unknown outcome for minutes; unknown writes that no
///   later read can have seen are now dropped first.
const REGRESSION_SEEDS: &[(u64, u64)] = &[(2680179603692032791, 8)];
const KEYS: u32 = 8;
const CLIENTS: usize = 4;

struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// (server, key) -> last `?stale` index seen.
    stale: Mutex<BTreeMap<(usize, u32), u64>>,
    /// Violations found while running.
    problems: Mutex<Vec<String>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }
}

fn write_req(key: u32, value: u64) -> RegisterRequest {
    let mut meta = BTreeMap::new();
    meta.insert("v".to_string(), value.to_string());
    RegisterRequest {
        node: "chaos".into(),
        address: "10.0.0.1".into(),
        service: Some(AgentService {
            id: format!("k{key}"),
            service: format!("k{key}"),
            meta,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn dereg_req(key: u32) -> DeregisterRequest {
    DeregisterRequest {
        node: "chaos".into(),
        service_id: format!("k{key}"),
        ..Default::default()
    }
}

async fn read(c: &RegistryClient, key: u32, opts: &QueryOptions) -> Option<(Option<u64>, u64)> {
    let (list, meta) = c.catalog_service(&format!("k{key}"), opts).await.ok()?;
    let v = list
        .first()
        .and_then(|s| s.service_meta.get("v"))
        .and_then(|v| v.parse().ok());
    Some((v, meta.index))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

async fn client_loop(id: usize, seed: u64, urls: Vec<String>, rec: Arc<Recorder>, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((id as u64 + 1) * 0x9e37_79b9));
    let clients: Vec<RegistryClient> = urls
        .iter()
        .map(|u| RegistryClient::with_http(u.clone(), http_client()))
        .collect();
    let mut seq = 0u64;
    while Instant::now() < until {
        let key = rng.random_range(0..KEYS);
        let server = rng.random_range(0..clients.len());
        let c = &clients[server];
        match rng.random_range(0..10) {
            0..=3 => {
                // Mostly registrations (each a new value), sometimes a deregistration.
                let value = if rng.random_range(0..4) == 0 {
                    None
                } else {
                    seq += 1;
                    Some((id as u64 + 1) * 1_000_000 + seq)
                };
                let invoke = rec.now();
                let result = match value {
                    Some(v) => c.catalog_register(&write_req(key, v), None).await,
                    None => c.catalog_deregister(&dereg_req(key), None).await,
                };
                let complete = matches!(result, Ok(true)).then(|| rec.now());
                rec.ops.lock().unwrap().push(Op {
                    client: id,
                    key,
                    kind: Kind::Write(value),
                    invoke,
                    complete,
                });
            }
            4..=7 => {
                let opts = QueryOptions {
                    consistent: rng.random_bool(0.5),
                    ..Default::default()
                };
                let invoke = rec.now();
                if let Some((v, _)) = read(c, key, &opts).await {
                    let complete = Some(rec.now());
                    rec.ops.lock().unwrap().push(Op {
                        client: id,
                        key,
                        kind: Kind::Read(v),
                        invoke,
                        complete,
                    });
                }
            }
            _ => {
                if let Some((_, index)) = read(c, key, &stale()).await {
                    let mut seen = rec.stale.lock().unwrap();
                    let last = seen.entry((server, key)).or_insert(0);
                    if index < *last {
                        rec.problem(format!("stale read on server {server} key {key} went back from index {last} to {index}"));
                    }
                    *last = index.max(*last);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

/// Runs one seed; returns the faults injected, or the failure.
async fn run_seed(seed: u64, duration: Duration) -> Result<Vec<String>, String> {
    let mut c = TestCluster::builder(3).agents(false).start().await;
    c.wait_leader().await;
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
        stale: Mutex::new(BTreeMap::new()),
        problems: Mutex::new(Vec::new()),
    });
    let urls: Vec<String> = (0..3).map(|i| c.node(i).url()).collect();
    let until = Instant::now() + duration;
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        clients.spawn(client_loop(id, seed, urls.clone(), rec.clone(), until));
    }
    // Leader sampler: never two leaders in one term.
    let leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Arc::default();
    let stop_sampler = tokio_util::sync::CancellationToken::new();
    let statuses: Vec<_> = (0..3).map(|i| c.node(i).raft.clone()).collect();
    let sampler = {
        let (leaders, stop) = (leaders.clone(), stop_sampler.clone());
        let statuses = Arc::new(Mutex::new(statuses));
        let s2 = statuses.clone();
        let task = tokio::spawn(async move {
            while !stop.is_cancelled() {
                for r in s2.lock().unwrap().iter() {
                    let s = r.status();
                    if s.role == registry_server::Role::Leader && s.fatal.is_none() {
                        leaders
                            .lock()
                            .unwrap()
                            .entry(s.term)
                            .or_default()
                            .insert(s.id);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        (task, statuses)
    };

    // The fault schedule.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let mut stopped: Option<usize> = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        let a = rng.random_range(0..3);
        let b = (a + rng.random_range(1..3)) % 3;
        let (na, nb) = (c.names[a].clone(), c.names[b].clone());
        let fault = match rng.random_range(0..8) {
            0 => {
                c.net.isolate(&na);
                format!("isolate {na}")
            }
            1 => {
                c.net.cut(&na, &nb);
                format!("cut {na}<->{nb}")
            }
            2 => {
                c.net.cut_one_way(&na, &nb);
                format!("cut {na}->{nb}")
            }
            3 => {
                c.net.set_drop_rate(&na, &nb, 0.3);
                format!("drop 30% {na}->{nb}")
            }
            4 => {
                c.net
                    .set_delay(&na, &nb, Duration::from_millis(rng.random_range(5..60)));
                format!("delay {na}->{nb}")
            }
            5 => match stopped.take() {
                Some(i) => {
                    c.restart(i).await;
                    sampler.1.lock().unwrap()[i] = c.node(i).raft.clone();
                    format!("restart s{}", i + 1)
                }
                None => {
                    c.stop(a).await;
                    stopped = Some(a);
                    format!("kill s{}", a + 1)
                }
            },
            6 => {
                let ms = rng.random_range(20..150);
                c.disks[a].set_write_delay(Duration::from_millis(ms));
                format!("slow disk s{} ({ms} ms per synced write)", a + 1)
            }
            _ => {
                c.net.heal_all();
                for d in &c.disks {
                    d.set_write_delay(Duration::ZERO);
                }
                "heal".to_string()
            }
        };
        faults.push(fault);
    }
    while clients.join_next().await.is_some() {}
    c.net.heal_all();
    for d in &c.disks {
        d.set_write_delay(Duration::ZERO);
    }
    if let Some(i) = stopped {
        c.restart(i).await;
        sampler.1.lock().unwrap()[i] = c.node(i).raft.clone();
    }
    let leader = c.wait_leader().await;
    // Final linearizable reads of every key join the history: every
    // acknowledged write must still be there.
    let lc = c.client(leader);
    for key in 0..KEYS {
        let opts = QueryOptions {
            consistent: true,
            ..Default::default()
        };
        let invoke = rec.now();
        let (v, _) = read(&lc, key, &opts).await.ok_or("final read failed")?;
        rec.ops.lock().unwrap().push(Op {
            client: 99,
            key,
            kind: Kind::Read(v),
            invoke,
            complete: Some(rec.now()),
        });
    }
    stop_sampler.cancel();
    let _ = sampler.0.await;
    c.shutdown().await;

    let mut problems = rec.problems.lock().unwrap().clone();
    for (term, ids) in leaders.lock().unwrap().iter() {
        if ids.len() > 1 {
            problems.push(format!("two leaders in term {term}: {ids:?}"));
        }
    }
    let ops = rec.ops.lock().unwrap().clone();
    let acked = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)) && o.complete.is_some())
        .count();
    let (result, undecided) = history::check_report(&ops);
    if let Err((key, hist)) = result {
        let small = history::shrink(&hist);
        let mut text = format!(
            "key {key} has no linearization; the smallest failing part of its history \
             ({} of {} operations):\n",
            small.len(),
            hist.len()
        );
        for o in small {
            text.push_str(&format!("  {o}\n"));
        }
        problems.push(text);
    }
    if !problems.is_empty() {
        return Err(format!(
            "seed {seed}: {}\nfaults: {faults:?}",
            problems.join("\n")
        ));
    }
    let undecided = match undecided.len() {
        0 => String::new(),
        n => format!(" ({n} key(s) undecided within the search budget: {undecided:?})"),
    };
    eprintln!(
        "seed {seed}: {} operations ({acked} acknowledged writes){undecided}, {} faults: {faults:?}",
        ops.len(),
        faults.len()
    );
    Ok(faults)
}

fn seeds() -> Vec<u64> {
    match std::env::var("CHAOS_SEEDS").as_deref() {
        Ok("random") => {
            let runs: usize = std::env::var("CHAOS_RUNS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(5);
            (0..runs).map(|_| rand::random::<u64>()).collect()
        }
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => FIXED_SEEDS.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_schedules_keep_the_history_linearizable() {
    let secs: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut runs: Vec<(u64, u64)> = seeds().into_iter().map(|seed| (seed, secs)).collect();
    if std::env::var("CHAOS_SEEDS").is_err() {
        runs.extend_from_slice(REGRESSION_SEEDS);
    }
    let mut failures = Vec::new();
    for (seed, secs) in runs {
        eprintln!("seed {seed}: {secs} s of faults");
        if let Err(e) = run_seed(seed, Duration::from_secs(secs)).await {
            eprintln!("{e}");
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} seed(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
