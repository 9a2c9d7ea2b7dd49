//! `registry-bench`: starts 3 registry servers, 3 etcd members, a second DC with
//! gateways, 3 r-nacos servers when given one, drives them all from this process, and
//! prints one table (also written to BENCHMARKS.md). Every child process is killed when
//! the run ends, fails or is interrupted.

mod acl_cost;
mod agents;
mod bench;
mod cluster;
mod dns;
mod failover;
mod load;
mod nacos;
mod procs;
mod report;
mod scale;
mod scenarios;
mod spread;
mod tls_cost;
mod watch;

use clap::Parser;
use std::path::PathBuf;

/// Benchmark of the registry side by side with etcd, on loopback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The everyday variant (about 2.5 minutes): shorter loads, 1,000 watchers,
    /// 10,000 instances for memory and recovery.
    #[arg(long)]
    quick: bool,
    /// Where registry-server and wan-gateway are.
    #[arg(long, default_value = "target/x86_64-unknown-linux-gnu/release")]
    bin_dir: PathBuf,
    /// File whose results section this run replaces.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Parent of the temporary data dirs (must be a real disk, not tmpfs).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the data dirs and logs after a run that succeeds too (their path is printed; a
    /// run that fails always leaves them).
    #[arg(long)]
    keep: bool,
    /// Run only these measurements (comma-separated: register, lookup, kv, fanout, xdc, tls,
    /// acl, memory, dns, failover, nacos, agents), e.g. to profile one; the section written is then partial.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Watcher counts for the fan-out (default 1000,10000; quick: 1000).
    #[arg(long, value_delimiter = ',')]
    watchers: Vec<usize>,
    /// Instance counts at which memory is measured (default 10000,100000; quick: 10000).
    #[arg(long, value_delimiter = ',')]
    memory_points: Vec<u64>,
    /// Instances for measurement 14, the cluster filled on (default 1000000, none in quick);
    /// 0 skips it.
    #[arg(long)]
    scale: Option<u64>,
    /// The r-nacos binary (`scripts/rnacos-bin.sh` installs one and prints its path): with
    /// it, measurement 12 runs r-nacos side by side; without it the report says it was not
    /// installed.
    #[arg(long)]
    rnacos_bin: Option<PathBuf>,
    /// Extra query for the watchers (e.g. `&stale`); the default is Consul's default mode.
    #[arg(long, default_value = "")]
    watch_query: String,
    /// Internal: run as one of the spread fan-out's watcher processes (spread.rs).
    #[arg(long, hide = true)]
    spread_child: bool,
    /// The spread fan-out's size: services and watchers of each (default 1000x100; quick:
    /// 100x20).
    #[arg(long, value_parser = parse_spread)]
    spread: Option<(usize, usize)>,
}

fn parse_spread(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once('x')
        .ok_or("expected SERVICESxEACH, e.g. 1000x100")?;
    Ok((
        a.parse().map_err(|e| format!("{a}: {e}"))?,
        b.parse().map_err(|e| format!("{b}: {e}"))?,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.spread_child {
        return spread::child_main().await;
    }
    let mut plan = bench::Plan::new(a.quick, a.bin_dir, a.out, a.work_dir, a.keep);
    plan.only = a.only;
    plan.watch_query = a.watch_query;
    plan.rnacos = a.rnacos_bin;
    if !a.watchers.is_empty() {
        plan.watchers = a.watchers;
    }
    if !a.memory_points.is_empty() {
        plan.memory_points = a.memory_points;
    }
    if a.spread.is_some() {
        plan.spread = a.spread;
    }
    if let Some(scale) = a.scale {
        plan.scale = (scale > 0).then_some(scale);
    }
    // Dropping the run future on Ctrl-C or SIGTERM drops every process guard in it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = bench::run(plan) => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; all servers stopped"),
        _ = term.recv() => anyhow::bail!("terminated; all servers stopped"),
    }
}
