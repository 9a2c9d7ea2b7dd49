//! `lab-chaos`: the in-process chaos test (`registry-server/tests/chaos.rs`)
//! against the running two-DC Docker lab. Clients write and read dc1 through
//! the published loopback ports while a seeded schedule kills, pauses and cuts
//! off dc1's servers (and its gateway) with `docker`; then everything is
//! healed and the same properties are checked from outside:
//!
//! 1. no acknowledged write is lost;
//! 2. writes, default, `?consistent` and `?dc=dc1` reads are linearizable;
//! 3. `?stale` reads from one server never go backwards;
//! 4. never two leaders in one term.
//!
//! `make lab-chaos` starts a clean lab, runs this, and always tears it down.
//! Exit 0: all hold; 1: a violation (the seed, the fault log and the failing
//! key's history are printed); 2: the run could not be made (no lab).

mod clients;
mod faults;
mod lab;
mod leaders;
mod record;
mod verdict;

/// The checker of the in-process chaos test (registry-server's `tests/chaos.rs`),
/// shared through the testkit rather than copied so that both test the same model.
use registry_testkit::history;

use anyhow::{anyhow, Context};
use clap::Parser;
use lab::Lab;
use record::{lock, Recorder};
use registry_api::{QueryOptions, RegistryClient};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Fault injection against the running two-DC lab (make lab), checked from outside.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// How long the clients run under faults.
    #[arg(long, env = "LAB_CHAOS_SECONDS", default_value_t = 90)]
    seconds: u64,
    /// Seed of the fault schedule and the clients' choices (default: random;
    /// always printed, give it back to replay the same decisions).
    #[arg(long, env = "LAB_CHAOS_SEED")]
    seed: Option<u64>,
    /// Concurrent clients.
    #[arg(long, env = "LAB_CHAOS_CLIENTS", default_value_t = 4)]
    clients: usize,
    /// Keys (service instances k0..k{N-1} on node "chaos").
    #[arg(long, env = "LAB_CHAOS_KEYS", default_value_t = 8)]
    keys: u32,
    /// Leave out the `?dc=dc1` reads through the dc2 agent.
    #[arg(long, env = "LAB_CHAOS_NO_XDC")]
    no_xdc: bool,
    /// Check the checker: put `?stale` reads into the linearizable history,
    /// which is wrong (a follower may lag), so the run should fail.
    #[arg(long)]
    stale_in_history: bool,
    /// The lab's Compose project (its dc1 network is PROJECT_dc1-lan).
    #[arg(long, env = "COMPOSE_PROJECT_NAME", default_value = "registry-lab")]
    project: String,
}

/// Bound on every wait for the cluster to settle (a leader before and after).
const SETTLE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "lab-chaos seed {seed}: {} s, {} clients, {} keys{} (replay: LAB_CHAOS_SEED={seed} make lab-chaos)",
        args.seconds,
        args.clients,
        args.keys,
        if args.no_xdc { ", no ?dc=dc1 reads" } else { "" }
    );
    if args.stale_in_history {
        println!("--stale-in-history: ?stale reads go into the linearizable history; this run should FAIL");
    }
    let lab = match Lab::new(&args.project) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("lab-chaos seed {seed}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rec = Arc::new(Recorder::new());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lab-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = tokio::select! {
        r = run(&args, seed, lab.clone(), rec.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lab-chaos seed {seed}: {e:#}; healing the lab");
            lab.heal_all(&rec).await;
            ExitCode::from(2)
        }
    }
}

/// The whole run; Ok(whether every property held).
async fn run(args: &Args, seed: u64, lab: Arc<Lab>, rec: Arc<Recorder>) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    let leader = lab
        .wait_agreed_leader(SETTLE)
        .await
        .ok_or_else(|| anyhow!("dc1 has no leader that all three servers agree on within {SETTLE:?}: is the lab up (make lab)?"))?;
    rec.event(format!("start: dc1 leader is {}", lab.servers[leader].name));

    let (stop_sampler, stopped) = watch::channel(false);
    let leader_log = Arc::new(Mutex::new(leaders::LeaderLog::default()));
    let sampler = tokio::spawn(leaders::run(
        lab.clone(),
        rec.clone(),
        leader_log.clone(),
        stopped,
    ));

    // Every key starts deregistered, acknowledged, so the history's initial
    // value (None) holds even on a lab that was used before.
    let admin = args.clients; // client id of the set-up and final operations
    let http = clients::http_client()?;
    let leader_client = || RegistryClient::with_http(lab.servers[leader].url.clone(), http.clone());
    for key in 0..args.keys {
        let deadline = Instant::now() + SETTLE;
        while !clients::write(&rec, &leader_client(), admin, key, None).await {
            if Instant::now() > deadline {
                return Err(anyhow!("could not deregister k{key} before the run"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let until = Instant::now() + Duration::from_secs(args.seconds);
    let plan = clients::Plan {
        keys: args.keys,
        xdc: !args.no_xdc,
        stale_in_history: args.stale_in_history,
    };
    let mut tasks = JoinSet::new();
    for id in 0..args.clients {
        tasks.spawn(clients::client_loop(
            id,
            seed,
            plan,
            lab.clone(),
            rec.clone(),
            until,
        ));
    }
    let mut schedule = faults::FaultSchedule::new(seed);
    schedule.run(&lab, &rec, until).await;
    while let Some(r) = tasks.join_next().await {
        r.context("a client panicked")?.context("a client failed")?;
    }

    rec.event("clients done; healing everything".into());
    lab.heal_all(&rec).await;
    let healed = Instant::now();
    let finals = match lab.wait_agreed_leader(SETTLE).await {
        None => {
            rec.event(format!(
                "no leader all three servers agree on within {SETTLE:?} of healing"
            ));
            None
        }
        Some(l) => {
            rec.event(format!(
                "healed: all three servers follow {} after {:.1} s",
                lab.servers[l].name,
                healed.elapsed().as_secs_f64()
            ));
            final_reads(&lab, &rec, admin, args.keys).await
        }
    };
    let _ = stop_sampler.send(true);
    let _ = sampler.await;

    // The verdict.
    let ops = lock(&rec.ops).clone();
    let properties = [
        verdict::no_lost_write(&rec, &ops, finals.as_deref()),
        verdict::linearizable(&rec, &ops),
        verdict::stale_monotonic(&rec),
        verdict::one_leader_per_term(&lock(&leader_log)),
    ];
    let failed = properties.iter().filter(|p| p.result.is_err()).count();
    let n = lock(&rec.counts);
    println!();
    if failed > 0 {
        println!("lab-chaos seed {seed} FAILED; the run's events:");
        for e in lock(&rec.events).iter() {
            println!("  {e}");
        }
        println!();
    }
    println!(
        "lab-chaos seed {seed}: {} operations ({} acknowledged writes), {} faults: {:?}",
        ops.len() as u64 + n.reads_stale,
        n.writes_acked,
        schedule.injected.len(),
        schedule.injected
    );
    println!(
        "  writes: {} acknowledged, {} unknown outcome, {} refused (never sent); reads: {} default, {} ?consistent, {} ?dc=dc1 via dc2, {} ?stale, {} failed (not recorded); {:.0} s in all",
        n.writes_acked,
        n.writes_unknown,
        n.writes_refused,
        n.reads_default,
        n.reads_consistent,
        n.reads_xdc,
        n.reads_stale,
        n.reads_failed,
        t0.elapsed().as_secs_f64()
    );
    for p in &properties {
        match &p.result {
            Ok(detail) => println!("  PASS  {} ({detail})", p.name),
            Err(why) => println!("  FAIL  {} (seed {seed}):\n{why}", p.name),
        }
    }
    println!("{} passed, {failed} failed", properties.len() - failed);
    Ok(failed == 0)
}

/// A `?consistent` read of every key after healing, each retried on every
/// server in turn until one answers; joins the history. None if a key
/// cannot be read within `SETTLE`.
async fn final_reads(
    lab: &Lab,
    rec: &Recorder,
    admin: usize,
    keys: u32,
) -> Option<Vec<(u32, Option<u64>)>> {
    let http = clients::http_client().ok()?;
    let servers: Vec<RegistryClient> = lab
        .servers
        .iter()
        .map(|s| RegistryClient::with_http(s.url.clone(), http.clone()))
        .collect();
    let opts = QueryOptions {
        consistent: true,
        ..Default::default()
    };
    let mut finals = Vec::new();
    for key in 0..keys {
        let deadline = Instant::now() + SETTLE;
        let mut i = 0;
        loop {
            let server = &servers[i % servers.len()];
            if let Some(value) = clients::linearizable_read(rec, server, admin, key, &opts).await {
                finals.push((key, value));
                break;
            }
            if Instant::now() > deadline {
                rec.event(format!("final read of k{key}: no answer within {SETTLE:?}"));
                return None;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Some(finals)
}
