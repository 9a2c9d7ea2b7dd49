//! The run, step by step: machine facts, clusters up, measurements 1-4 against
//! both systems, a fresh cluster for 5-6, then the report.

use crate::cluster::{self, EtcdCluster, Federation, RegistryCluster};
use crate::load::Op;
use crate::procs::raise_fd_limit;
use crate::report::{self, Context, Results};
use crate::scenarios;
use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run, by mode.
pub struct Plan {
    quick: bool,
    bin_dir: PathBuf,
    out: PathBuf,
    work_dir: Option<PathBuf>,
    keep: bool,
    /// Load per cell.
    load: Duration,
    /// Runs per cell (the issue asks for at least 3).
    runs: usize,
    register_clients: Vec<usize>,
    lookup_clients: usize,
    /// Watcher counts of the fan-out.
    pub watchers: Vec<usize>,
    /// Measurements to run; empty: all.
    pub only: Vec<String>,
    /// Extra query of the watchers' blocking queries (`&stale` to try another mode).
    pub watch_query: String,
    memory_points: Vec<u64>,
    /// Writes the stopped server misses before its restart.
    missed_writes: u64,
}

impl Plan {
    /// The plan for `make bench` or, with `quick`, `make bench-quick`.
    pub fn new(
        quick: bool,
        bin_dir: PathBuf,
        out: PathBuf,
        work_dir: Option<PathBuf>,
        keep: bool,
    ) -> Self {
        Plan {
            quick,
            bin_dir,
            out,
            work_dir,
            keep,
            load: if quick {
                Duration::from_millis(1500)
            } else {
                Duration::from_secs(5)
            },
            runs: 3,
            register_clients: vec![1, 64, 256],
            lookup_clients: 64,
            watchers: if quick {
                vec![1_000]
            } else {
                vec![1_000, 10_000]
            },
            memory_points: if quick {
                vec![10_000]
            } else {
                vec![10_000, 100_000]
            },
            missed_writes: 1_000,
            only: Vec::new(),
            watch_query: String::new(),
        }
    }

    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "? GiB".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs (nproc), {mem} RAM, {model}")
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the whole benchmark.
pub async fn run(plan: Plan) -> Result<()> {
    let started = Instant::now();
    for b in ["registry-server", "wan-gateway"] {
        if !plan.bin_dir.join(b).is_file() {
            bail!(
                "{} not found: build it first (make bench does)",
                plan.bin_dir.join(b).display()
            );
        }
    }
    let bin = plan.bin_dir.canonicalize()?;
    cluster::ensure_etcd()?;
    let fds = raise_fd_limit();
    let need = plan.watchers.iter().max().copied().unwrap_or(0) as u64 + 1_000;
    if fds < need {
        bail!("RLIMIT_NOFILE is {fds}; {need} needed for the watchers (raise the hard limit)");
    }
    let mut tmp = tempfile::Builder::new();
    tmp.prefix("registry-bench-");
    let dir = match &plan.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tmp.tempdir_in(d)?
        }
        None => tmp.tempdir()?,
    };
    let root = dir.path().to_path_buf();
    eprintln!("data dirs and logs under {}", root.display());
    let cx_machine = machine();
    let mut r = Results {
        quick: plan.quick,
        load_secs: plan.load.as_secs_f64(),
        runs: plan.runs,
        lookup_clients: plan.lookup_clients,
        ..Default::default()
    };

    if ["register", "lookup", "xdc", "fanout"]
        .iter()
        .any(|w| plan.wants(w))
    {
        step("starting 3 etcd members, 3 registry servers (dc1), dc2 and two gateways");
        let mut etcd = EtcdCluster::start(&root)?;
        let gw1 = cluster::gateway_port()?;
        let mut ours =
            RegistryCluster::start(&bin, &root, "dc1", Some(&format!("http://127.0.0.1:{gw1}")))?;
        let urls = ours.urls();
        let mut fed = Federation::start(&bin, &root, gw1, &urls)?;
        etcd.wait_ready(Duration::from_secs(60))
            .await
            .context("etcd")?;
        ours.wait_ready(Duration::from_secs(60))
            .await
            .context("registry cluster")?;
        fed.wait_ready(&urls, "xdc-svc", Duration::from_secs(60))
            .await
            .context("federation")?;
        let etcd_urls = etcd.urls.clone();

        step("1. register vs etcd put");
        let register_runs = if plan.wants("register") { plan.runs } else { 0 };
        let seq = Arc::new(AtomicU64::new(0));
        for &c in plan.register_clients.iter().filter(|_| register_runs > 0) {
            r.register.push((c, Vec::new(), Vec::new()));
        }
        for run in 0..register_runs {
            for (k, &c) in plan.register_clients.iter().enumerate() {
                let o = scenarios::register(
                    Op::Register {
                        prefix: format!("reg{c}"),
                        per_node: 1,
                    },
                    &urls,
                    c,
                    plan.load,
                    &seq,
                )
                .await?;
                ours.check_alive()?;
                let e = scenarios::register(
                    Op::EtcdPut {
                        prefix: format!("reg{c}"),
                    },
                    &etcd_urls,
                    c,
                    plan.load,
                    &seq,
                )
                .await?;
                etcd.check_alive()?;
                eprintln!(
                    "  run {} {c:>3} clients: ours {:.0}/s p50 {:?} ({} err) | etcd {:.0}/s p50 {:?} ({} err)",
                    run + 1,
                    o.ops_per_s,
                    o.p50,
                    o.errors,
                    e.ops_per_s,
                    e.p50,
                    e.errors
                );
                r.register[k].1.push(o);
                r.register[k].2.push(e);
            }
        }

        step("2. health lookups vs etcd range");
        let key = scenarios::setup_lookups(&urls, &etcd_urls).await?;
        let lc = plan.lookup_clients;
        let lookup = |query: &'static str| Op::Lookup {
            service: "lookup-svc".into(),
            query,
        };
        for run in 0..if plan.wants("lookup") { plan.runs } else { 0 } {
            let d = scenarios::read(lookup(""), &urls, lc, plan.load, false).await?;
            let s = scenarios::read(lookup("&stale"), &urls, lc, plan.load, false).await?;
            let c = scenarios::read(lookup("&consistent"), &urls, lc, plan.load, false).await?;
            ours.check_alive()?;
            let range = |serializable| Op::EtcdRange {
                key_b64: key.clone(),
                serializable,
            };
            let es = scenarios::read(range(true), &etcd_urls, lc, plan.load, false).await?;
            let el = scenarios::read(range(false), &etcd_urls, lc, plan.load, false).await?;
            etcd.check_alive()?;
            eprintln!(
                "  run {}: default {:.0}/s, stale {:.0}/s, consistent {:.0}/s | etcd serializable {:.0}/s, linearizable {:.0}/s",
                run + 1,
                d.ops_per_s,
                s.ops_per_s,
                c.ops_per_s,
                es.ops_per_s,
                el.ops_per_s
            );
            r.lookup_default.push(d);
            r.lookup_stale.push(s);
            r.lookup_consistent.push(c);
            r.etcd_serializable.push(es);
            r.etcd_linearizable.push(el);
        }
        // etcd is done; stop it so it does not share the CPUs with what follows.
        drop(etcd);

        step("4. cross-DC lookup through two gateways");
        let xdc = |query: &'static str| Op::Lookup {
            service: "xdc-svc".into(),
            query,
        };
        for run in 0..if plan.wants("xdc") { plan.runs } else { 0 } {
            let remote = scenarios::read(xdc("&dc=dc2"), &urls, 1, plan.load, true).await?;
            let local =
                scenarios::read(xdc(""), std::slice::from_ref(&fed.dc2), 1, plan.load, false)
                    .await?;
            eprintln!(
                "  run {}: ?dc=dc2 p50 {:?} p99 {:?} | local p50 {:?} p99 {:?}",
                run + 1,
                remote.p50,
                remote.p99,
                local.p50,
                local.p99
            );
            r.xdc_remote.push(remote);
            r.xdc_local.push(local);
        }
        drop(fed);

        step("3. blocking-query fan-out");
        for &n in plan.watchers.iter().filter(|_| plan.wants("fanout")) {
            let settle = Duration::from_millis(1000 + n as u64 * 2 / 5);
            let runs = scenarios::fanout(&urls, &plan.watch_query, n, plan.runs, settle).await?;
            ours.check_alive()?;
            r.fanout.push((n, runs));
        }
    }

    if plan.wants("memory") {
        step("5-6. memory, disk and recovery on a fresh 3-server cluster");
        let mut mem = RegistryCluster::start(&bin, &root, "mem", None)?;
        mem.wait_ready(Duration::from_secs(60))
            .await
            .context("memory cluster")?;
        let (points, recovery) = scenarios::memory_and_recovery(
            &mut mem,
            &plan.memory_points,
            plan.runs,
            plan.missed_writes,
        )
        .await?;
        r.memory = points;
        r.recovery = recovery;
    }

    let cx = Context {
        machine: cx_machine,
        ours_version: command_line("git", &["describe", "--always", "--dirty", "--tags"]),
        etcd_version: cluster::etcd_version(),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        wall: started.elapsed(),
    };
    let section = report::section(&r, &cx);
    println!("{section}");
    if plan.only.is_empty() {
        report::write_section(&plan.out, plan.quick, &section)?;
        eprintln!("results written to {}", plan.out.display());
    } else {
        eprintln!(
            "partial run (--only): {} left as it was",
            plan.out.display()
        );
    }
    if plan.keep {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}
