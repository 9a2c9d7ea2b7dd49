//! Measurement 13: agents at scale (issue 20). A fresh 3-server cluster and N simulated
//! agents (10,000; 1,000 in quick mode), each a node with one service and one check,
//! registered once and then heartbeating every 2 s (an agent's default interval) through the
//! three servers in turn, as `registry-client` does (`PUT /v1/internal/heartbeat`).
//!
//! - Phase "heartbeats": heartbeats alone for a window. The heartbeat path writes to Raft
//!   only when a node's state flips, so the Raft entries per second here should be those of
//!   the servers' own background work, not one per heartbeat.
//! - Phase "flips": the same heartbeats plus F check flips per second (1,000; 100 quick),
//!   each written as an agent's anti-entropy writes a changed check (`PUT
//!   /v1/catalog/register` of the check with the other status): about F entries per second.
//! - Silence: S agents (100; 20 quick) stop; the time from each one's last acknowledged
//!   heartbeat to its `serfHealth` critical, against the bound `node_timeout +
//!   check_interval` (10 s + 1 s by default, `leader/liveness.rs`).
//!
//! In each phase: heartbeats answered per second, failed heartbeats, p99 of a heartbeat,
//! rounds that could not keep the 2 s interval, the leader's CPU and all servers' (share of
//! one core), and Raft entries per second (the leader's commit index before and after).

use crate::cluster::RegistryCluster;
use crate::load::{http_client, percentile};
use crate::procs::cpu_time;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An agent's heartbeat interval (registry-client's default).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// The servers' bound on silence → critical with default settings: `node_timeout` (10 s)
/// plus one `check_interval` (1 s).
pub const CRITICAL_BOUND: Duration = Duration::from_secs(11);
/// How often the bench looks for silenced agents marked critical: the resolution of the
/// silence figure (a node is seen at most this long after it was marked).
pub const POLL: Duration = Duration::from_millis(100);
/// Tasks sending heartbeats (each owns every `SENDERS`-th agent).
const SENDERS: usize = 64;
/// Tasks sending check flips.
const FLIPPERS: usize = 32;

/// What to run.
pub struct Settings {
    /// Simulated agents.
    pub agents: usize,
    /// Check flips per second in the second phase.
    pub flips_per_s: u64,
    /// Length of each phase.
    pub window: Duration,
    /// Agents that fall silent at the end.
    pub silenced: usize,
}

/// One phase's figures.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// Heartbeats acknowledged per second.
    pub heartbeats_per_s: f64,
    /// Heartbeats that failed (error status or no answer).
    pub heartbeat_errors: u64,
    /// p99 of an acknowledged heartbeat.
    pub heartbeat_p99: Duration,
    /// Sender rounds that took longer than the interval (a late heartbeat).
    pub late_rounds: u64,
    /// Check flips acknowledged per second (0 in the heartbeat phase).
    pub flips_per_s: f64,
    /// Flips that failed.
    pub flip_errors: u64,
    /// Raft entries committed per second (the leader's commit index).
    pub raft_entries_per_s: f64,
    /// The leader's CPU time over the window, as a share of one core.
    pub leader_cpu: f64,
    /// All three servers' CPU time over the window, as a share of one core.
    pub servers_cpu: f64,
}

/// Everything measurement 13 measured.
#[derive(Clone, Debug, Default)]
pub struct Agents {
    /// Simulated agents.
    pub agents: usize,
    /// Flips per second asked for in the second phase.
    pub flips_target: u64,
    /// Length of each phase.
    pub window: Duration,
    /// Heartbeats alone.
    pub heartbeats: Phase,
    /// Heartbeats and flips.
    pub flips: Phase,
    /// Silence → critical of each silenced agent, sorted.
    pub to_critical: Vec<Duration>,
    /// Silenced agents not critical when the bench gave up (2x the bound).
    pub never_critical: usize,
}

/// Counters the sender and flipper tasks share.
#[derive(Default)]
struct Counts {
    heartbeats: AtomicU64,
    heartbeat_errors: AtomicU64,
    late_rounds: AtomicU64,
    flips: AtomicU64,
    flip_errors: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
}

impl Counts {
    fn take(&self) -> (u64, u64, u64, u64, u64, Vec<Duration>) {
        (
            self.heartbeats.swap(0, Ordering::Relaxed),
            self.heartbeat_errors.swap(0, Ordering::Relaxed),
            self.late_rounds.swap(0, Ordering::Relaxed),
            self.flips.swap(0, Ordering::Relaxed),
            self.flip_errors.swap(0, Ordering::Relaxed),
            std::mem::take(&mut *self.latencies.lock().unwrap()),
        )
    }
}

fn node(i: usize) -> String {
    format!("agent-{i:05}")
}

fn address(i: usize) -> String {
    format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
}

/// Agent `i`'s service check with `status`, as its anti-entropy writes it.
fn check(i: usize, status: &str) -> serde_json::Value {
    serde_json::json!({
        "CheckID": format!("service:app-{i}"),
        "Name": "Service 'app' check",
        "Status": status,
        "ServiceID": format!("app-{i}"),
        "Output": format!("HTTP GET http://{}:8080/health: {status}", address(i)),
    })
}

/// The catalog register an agent's anti-entropy sends for its node, service and check.
fn register_body(i: usize, status: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "Node": node(i),
        "Address": address(i),
        "Service": {"ID": format!("app-{i}"), "Service": "app", "Port": 8080, "Tags": ["v1"]},
        "Check": check(i, status),
    }))
    .unwrap_or_default()
}

/// A check flip: the node and service unchanged (`SkipNodeUpdate`), the check's status.
fn flip_body(i: usize, status: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "Node": node(i),
        "Address": address(i),
        "SkipNodeUpdate": true,
        "Check": check(i, status),
    }))
    .unwrap_or_default()
}

fn heartbeat_body(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "Node": node(i), "Address": address(i), "Datacenter": "dc1",
    }))
    .unwrap_or_default()
}

async fn put(http: &reqwest::Client, url: String, body: Vec<u8>) -> Result<(), String> {
    match http.put(url).body(body).send().await {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
            Ok(())
        }
        Ok(r) => Err(format!("{}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

/// The leader's commit index, from its metrics.
async fn commit_index(http: &reqwest::Client, base: &str) -> Result<u64> {
    let text = http
        .get(format!("{base}/v1/agent/metrics?format=prometheus"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("consul_raft_commit_index ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .context("no consul_raft_commit_index in the leader's metrics")
}

/// The nodes whose `serfHealth` is critical.
async fn critical_nodes(http: &reqwest::Client, base: &str) -> Result<HashSet<String>> {
    let checks: Vec<serde_json::Value> = http
        // Filtered on the server: the flipped service checks may be critical by thousands.
        .get(format!("{base}/v1/health/state/critical"))
        .query(&[("stale", ""), ("filter", "CheckID == \"serfHealth\"")])
        .send()
        .await?
        .json()
        .await?;
    Ok(checks
        .into_iter()
        .filter(|c| c["CheckID"] == "serfHealth")
        .filter_map(|c| c["Node"].as_str().map(str::to_string))
        .collect())
}

/// Measurement 13 on a fresh cluster under `root`.
pub async fn measure(bin: &Path, root: &Path, s: &Settings) -> Result<Agents> {
    let mut cluster = RegistryCluster::start(bin, root, "agents", None)?;
    cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .context("agents cluster")?;
    let http = http_client()?;
    let urls = Arc::new(cluster.urls());

    // Every agent's node, service and check, as its first full sync writes them.
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, urls, next, n) = (http.clone(), urls.clone(), next.clone(), s.agents);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<(), String>(());
                }
                let base = &urls[i % urls.len()];
                put(
                    &http,
                    format!("{base}/v1/catalog/register"),
                    register_body(i, "passing"),
                )
                .await
                .map_err(|e| format!("registering {}: {e}", node(i)))?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?.map_err(anyhow::Error::msg)?;
    }
    eprintln!("  {} agents registered", s.agents);

    // The heartbeat senders run until the end; silenced agents are skipped once `silent`.
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let silent = Arc::new(AtomicBool::new(false));
    // The last acknowledged heartbeat of each agent, for the silence figure.
    let last_ack: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..s.agents).map(|_| Mutex::new(None)).collect());
    let mut senders = tokio::task::JoinSet::new();
    for w in 0..SENDERS {
        let (http, urls, counts, stop, silent, last_ack) = (
            http.clone(),
            urls.clone(),
            counts.clone(),
            stop.clone(),
            silent.clone(),
            last_ack.clone(),
        );
        let (agents, silenced) = (s.agents, s.silenced);
        senders.spawn(async move {
            // Spread the senders' rounds over the interval, as agents started at random.
            let offset = HEARTBEAT_INTERVAL * w as u32 / SENDERS as u32;
            let mut round =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, HEARTBEAT_INTERVAL);
            round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mine: Vec<usize> = (w..agents).step_by(SENDERS).collect();
            while !stop.load(Ordering::Relaxed) {
                round.tick().await;
                let began = Instant::now();
                for &i in &mine {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // The first `silenced` agents stop once told.
                    if i < silenced && silent.load(Ordering::Relaxed) {
                        continue;
                    }
                    let base = &urls[i % urls.len()];
                    let sent = Instant::now();
                    match put(
                        &http,
                        format!("{base}/v1/internal/heartbeat"),
                        heartbeat_body(i),
                    )
                    .await
                    {
                        Ok(()) => {
                            let took = sent.elapsed();
                            counts.heartbeats.fetch_add(1, Ordering::Relaxed);
                            counts.latencies.lock().unwrap().push(took);
                            *last_ack[i].lock().unwrap() = Some(Instant::now());
                        }
                        Err(_) => {
                            counts.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if began.elapsed() > HEARTBEAT_INTERVAL {
                    counts.late_rounds.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Two rounds first: every node's serfHealth is written once (its first heartbeat), and
    // the connections are open.
    tokio::time::sleep(HEARTBEAT_INTERVAL * 2 + Duration::from_millis(500)).await;
    counts.take();

    let leader = cluster.leader().await?;
    let pids = cluster.pids();
    let leader_pid = cluster.servers[leader]
        .proc
        .pid()
        .context("the leader's pid")?;
    let leader_url = urls[leader].clone();

    let phase = |flipping: bool| {
        let (http, urls, counts, leader_url, pids) = (
            http.clone(),
            urls.clone(),
            counts.clone(),
            leader_url.clone(),
            pids.clone(),
        );
        let (window, flips_per_s, agents, silenced) =
            (s.window, s.flips_per_s, s.agents, s.silenced);
        async move {
            let flip_stop = Arc::new(AtomicBool::new(false));
            let mut flippers = tokio::task::JoinSet::new();
            if flipping && flips_per_s > 0 {
                // Each flipper sends at its share of the rate, to agents of its own; the
                // silenced ones are left alone so that their only change is their silence.
                let period = Duration::from_secs_f64(FLIPPERS as f64 / flips_per_s as f64);
                for f in 0..FLIPPERS {
                    let (http, urls, counts, flip_stop) = (
                        http.clone(),
                        urls.clone(),
                        counts.clone(),
                        flip_stop.clone(),
                    );
                    flippers.spawn(async move {
                        let mut tick = tokio::time::interval(period);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                        let mine: Vec<usize> = (silenced.max(f)..agents)
                            .filter(|i| i % FLIPPERS == f)
                            .collect();
                        let mut k = 0usize;
                        while !flip_stop.load(Ordering::Relaxed) {
                            tick.tick().await;
                            let i = mine[k % mine.len()];
                            // Every pass over its agents turns them the other way.
                            let status = if (k / mine.len()).is_multiple_of(2) {
                                "critical"
                            } else {
                                "passing"
                            };
                            k += 1;
                            let base = &urls[i % urls.len()];
                            match put(
                                &http,
                                format!("{base}/v1/catalog/register"),
                                flip_body(i, status),
                            )
                            .await
                            {
                                Ok(()) => counts.flips.fetch_add(1, Ordering::Relaxed),
                                Err(_) => counts.flip_errors.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    });
                }
            }
            let c0 = commit_index(&http, &leader_url).await?;
            let (l0, a0) = (
                cpu_time(leader_pid).unwrap_or_default(),
                crate::procs::cpu_time_of(&pids),
            );
            counts.take();
            let t0 = Instant::now();
            tokio::time::sleep(window).await;
            let (hb, hb_err, late, flips, flip_err, mut lat) = counts.take();
            let secs = t0.elapsed().as_secs_f64();
            let (l1, a1) = (
                cpu_time(leader_pid).unwrap_or_default(),
                crate::procs::cpu_time_of(&pids),
            );
            let c1 = commit_index(&http, &leader_url).await?;
            flip_stop.store(true, Ordering::Relaxed);
            while flippers.join_next().await.is_some() {}
            lat.sort_unstable();
            Ok::<Phase, anyhow::Error>(Phase {
                heartbeats_per_s: hb as f64 / secs,
                heartbeat_errors: hb_err,
                heartbeat_p99: percentile(&lat, 0.99),
                late_rounds: late,
                flips_per_s: flips as f64 / secs,
                flip_errors: flip_err,
                raft_entries_per_s: c1.saturating_sub(c0) as f64 / secs,
                leader_cpu: (l1.saturating_sub(l0)).as_secs_f64() / secs,
                servers_cpu: (a1.saturating_sub(a0)).as_secs_f64() / secs,
            })
        }
    };
    let heartbeats = phase(false).await?;
    cluster.check_alive()?;
    eprintln!(
        "  heartbeats alone: {:.0}/s ({} err, p99 {:?}, {} late rounds), Raft {:.1} entries/s, leader CPU {:.0}%, servers {:.0}%",
        heartbeats.heartbeats_per_s,
        heartbeats.heartbeat_errors,
        heartbeats.heartbeat_p99,
        heartbeats.late_rounds,
        heartbeats.raft_entries_per_s,
        heartbeats.leader_cpu * 100.0,
        heartbeats.servers_cpu * 100.0
    );
    let flips = phase(true).await?;
    cluster.check_alive()?;
    eprintln!(
        "  with {} flips/s asked: {:.0} flips/s ({} err), {:.0} heartbeats/s ({} err, p99 {:?}, {} late rounds), Raft {:.1} entries/s, leader CPU {:.0}%, servers {:.0}%",
        s.flips_per_s,
        flips.flips_per_s,
        flips.flip_errors,
        flips.heartbeats_per_s,
        flips.heartbeat_errors,
        flips.heartbeat_p99,
        flips.late_rounds,
        flips.raft_entries_per_s,
        flips.leader_cpu * 100.0,
        flips.servers_cpu * 100.0
    );

    // Silence: the first `silenced` agents stop; each one's time runs from its last
    // acknowledged heartbeat to the first look that sees its serfHealth critical.
    silent.store(true, Ordering::Relaxed);
    let told = Instant::now();
    let mut seen: Vec<Option<Duration>> = vec![None; s.silenced];
    let give_up = told + CRITICAL_BOUND * 2 + HEARTBEAT_INTERVAL;
    while seen.iter().any(Option::is_none) && Instant::now() < give_up {
        tokio::time::sleep(POLL).await;
        // The look's own start: what it shows was true by then at the latest.
        let now = Instant::now();
        let critical = critical_nodes(&http, &leader_url).await?;
        for (i, slot) in seen.iter_mut().enumerate() {
            if slot.is_none() && critical.contains(&node(i)) {
                let last = last_ack[i].lock().unwrap().unwrap_or(told);
                *slot = Some(now.saturating_duration_since(last));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    senders.abort_all();
    cluster.check_alive()?;
    let never_critical = seen.iter().filter(|d| d.is_none()).count();
    let mut to_critical: Vec<Duration> = seen.into_iter().flatten().collect();
    to_critical.sort_unstable();
    if to_critical.is_empty() && s.silenced > 0 {
        bail!(
            "no silenced agent was marked critical within {:?}",
            give_up - told
        );
    }
    eprintln!(
        "  {} silenced agents: critical after median {:?}, max {:?} ({} never)",
        s.silenced,
        to_critical
            .get(to_critical.len() / 2)
            .copied()
            .unwrap_or_default(),
        to_critical.last().copied().unwrap_or_default(),
        never_critical
    );
    Ok(Agents {
        agents: s.agents,
        flips_target: s.flips_per_s,
        window: s.window,
        heartbeats,
        flips,
        to_critical,
        never_critical,
    })
}
