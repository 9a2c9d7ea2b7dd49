//! The run, step by step: machine facts, clusters up, measurements 1, 2 and 7
//! against both systems, 3-4 on ours, a fresh cluster for 5-6, then the report.

use crate::acl_cost;
use crate::agents;
use crate::cluster::{self, EtcdCluster, Federation, RegistryCluster};
use crate::failover;
use crate::load::{Load, Op, RunStats, Stop};
use crate::nacos::{self, Nacos};
use crate::procs::raise_fd_limit;
use crate::report::{self, Context, KvCells, Results};
use crate::scenarios;
use crate::tls_cost;
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
    /// Client counts of the KV rows (measurement 7).
    kv_clients: Vec<usize>,
    /// Watcher counts of the fan-out.
    pub watchers: Vec<usize>,
    /// The spread fan-out: this many services, each with this many watchers (issue 20:
    /// 100,000 watchers over 1,000 services); `None`: not run.
    pub spread: Option<(usize, usize)>,
    /// Measurements to run; empty: all.
    pub only: Vec<String>,
    /// Extra query of the watchers' blocking queries (`&stale` to try another mode).
    pub watch_query: String,
    /// Instance counts at which measurements 5 and 6 take the memory figures.
    pub memory_points: Vec<u64>,
    /// Writes the stopped server misses before its restart.
    missed_writes: u64,
    /// Leaders killed in measurement 11 (issue 20 asks for 20).
    failover_runs: usize,
    /// The steady register load of measurement 11, during which the term must not move.
    failover_steady: Duration,
    /// The r-nacos binary of measurement 12 (`--rnacos-bin`); `None`: not installed.
    pub rnacos: Option<PathBuf>,
    /// Measurement 13: simulated agents, flips per second, window per phase, agents silenced.
    agents: agents::Settings,
    /// Measurement 14: the catalog filled on to this many instances (full bench only,
    /// unless `--scale` says).
    pub scale: Option<u64>,
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
            kv_clients: vec![1, 64],
            watchers: if quick {
                vec![1_000]
            } else {
                vec![1_000, 10_000]
            },
            spread: Some(if quick { (100, 20) } else { (1_000, 100) }),
            memory_points: if quick {
                vec![10_000]
            } else {
                vec![10_000, 100_000]
            },
            missed_writes: 1_000,
            failover_runs: if quick { 5 } else { 20 },
            failover_steady: if quick {
                Duration::from_secs(3)
            } else {
                Duration::from_secs(10)
            },
            only: Vec::new(),
            watch_query: String::new(),
            rnacos: None,
            scale: (!quick).then_some(1_000_000),
            agents: if quick {
                agents::Settings {
                    agents: 1_000,
                    flips_per_s: 100,
                    window: Duration::from_secs(5),
                    silenced: 20,
                }
            } else {
                agents::Settings {
                    agents: 10_000,
                    flips_per_s: 1_000,
                    window: Duration::from_secs(20),
                    silenced: 100,
                }
            },
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

/// Measurement 7: each KV row of ours beside its etcd counterpart, at every client count,
/// cells alternating within each run.
async fn kv(
    plan: &Plan,
    urls: &[String],
    etcd_urls: &[String],
    ours: &mut RegistryCluster,
    etcd: &mut EtcdCluster,
) -> Result<Vec<KvCells>> {
    scenarios::setup_kv(urls, etcd_urls).await?;
    let key = scenarios::KV_KEY.to_string();
    let tree = scenarios::KV_TREE;
    let get = |query: &'static str| Op::KvGet {
        key: key.clone(),
        query,
        expect: 1,
    };
    let recurse = Op::KvGet {
        key: tree.to_string(),
        query: "?recurse",
        expect: scenarios::KV_TREE_KEYS,
    };
    let range = |serializable| Op::EtcdRange {
        key_b64: crate::load::b64(key.as_bytes()),
        range_end_b64: None,
        serializable,
        expect: 1,
    };
    // etcd's range_end for a prefix: the prefix with its last byte plus one ('/' + 1 = '0').
    let end = format!("{}0", tree.trim_end_matches('/'));
    let prefix = Op::EtcdRange {
        key_b64: crate::load::b64(tree.as_bytes()),
        range_end_b64: Some(crate::load::b64(end.as_bytes())),
        serializable: false,
        expect: scenarios::KV_TREE_KEYS,
    };
    let seq = Arc::new(AtomicU64::new(0));
    // A single client goes round all three members of each system, request by request: pinned
    // to member 0 it would measure whichever role that member happens to have (answering on the
    // leader, or forwarding from a follower), and the two systems need not draw the same.
    let cell = |op: Op, bases: &[String], clients: usize| {
        crate::load::run(Load {
            op,
            bases: bases.to_vec(),
            clients,
            stop: Stop::For(plan.load),
            seq: seq.clone(),
            rotate: clients == 1,
            token: None,
        })
    };
    let mut out: Vec<KvCells> = (plan.kv_clients.iter())
        .map(|&clients| KvCells {
            clients,
            ..Default::default()
        })
        .collect();
    for run in 0..plan.runs {
        for cells in out.iter_mut() {
            let c = cells.clients;
            let (put, etcd_put) = (
                Op::KvPut { key: key.clone() },
                Op::EtcdKvPut { key: key.clone() },
            );
            cells.put.push(cell(put, urls, c).await?);
            cells.etcd_put.push(cell(etcd_put, etcd_urls, c).await?);
            cells.get.push(cell(get(""), urls, c).await?);
            cells.get_stale.push(cell(get("?stale"), urls, c).await?);
            cells.etcd_get.push(cell(range(false), etcd_urls, c).await?);
            let serializable = cell(range(true), etcd_urls, c).await?;
            cells.etcd_get_serializable.push(serializable);
            cells.recurse.push(cell(recurse.clone(), urls, c).await?);
            let etcd_prefix = cell(prefix.clone(), etcd_urls, c).await?;
            cells.etcd_prefix.push(etcd_prefix);
            ours.check_alive()?;
            etcd.check_alive()?;
            let last = |v: &[crate::load::RunStats]| v.last().map_or(0.0, |x| x.ops_per_s);
            eprintln!(
                "  run {} {c:>3} clients: put {:.0}/s | etcd {:.0}/s; get {:.0}/s, stale {:.0}/s | etcd lin {:.0}/s, ser {:.0}/s; recurse {:.0}/s | etcd prefix {:.0}/s",
                run + 1,
                last(&cells.put),
                last(&cells.etcd_put),
                last(&cells.get),
                last(&cells.get_stale),
                last(&cells.etcd_get),
                last(&cells.etcd_get_serializable),
                last(&cells.recurse),
                last(&cells.etcd_prefix),
            );
        }
    }
    Ok(out)
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
    // Every watcher is a socket here and one in a server: the limit on open files bounds
    // them. The bench raises it as far as it may (root with CAP_SYS_RESOURCE: to what the
    // spread needs); where it may not (a container without that capability), the spread's
    // watchers ask through client agents from child processes (spread.rs says why).
    // The open-file limit, when the spread's watchers must go through agents.
    let mut spread_via_agents: Option<usize> = None;
    if plan.wants("fanout") {
        let spread = plan.spread.map_or(0, |(services, each)| services * each);
        let watchers = plan.watchers.iter().copied().max().unwrap_or(0);
        let need = watchers.max(spread) as u64 + 1_000;
        let fds = raise_fd_limit(need * 2);
        if fds < watchers as u64 + 1_000 {
            bail!(
                "RLIMIT_NOFILE is {fds}; {} needed for the watchers (raise the hard limit)",
                watchers + 1_000
            );
        }
        if fds < spread as u64 * 2 + 1_000 && plan.spread.is_some() {
            eprintln!(
                "RLIMIT_NOFILE is {fds} and cannot be raised here: the spread fan-out's {spread} watchers ask through client agents, from child processes"
            );
            spread_via_agents = Some(fds as usize);
        }
    }
    let mut tmp = tempfile::Builder::new();
    tmp.prefix("registry-bench-");
    let mut dir = match &plan.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tmp.tempdir_in(d)?
        }
        None => tmp.tempdir()?,
    };
    // Removed at the end of a run that succeeds (unless --keep); a run that fails or is
    // interrupted leaves its servers' logs for a look at what went wrong.
    dir.disable_cleanup(true);
    let root = dir.path().to_path_buf();
    eprintln!(
        "data dirs and logs under {} (left there if the run fails)",
        root.display()
    );
    let cx_machine = machine();
    let mut r = Results {
        quick: plan.quick,
        load_secs: plan.load.as_secs_f64(),
        runs: plan.runs,
        lookup_clients: plan.lookup_clients,
        ..Default::default()
    };

    if ["register", "lookup", "kv", "xdc", "fanout"]
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
        let (our_pids, etcd_pids) = (ours.pids(), etcd.pids());
        for run in 0..register_runs {
            for (k, &c) in plan.register_clients.iter().enumerate() {
                let o = RunStats::with_cpu(
                    &our_pids,
                    scenarios::register(
                        Op::Register {
                            prefix: format!("reg{c}"),
                            per_node: 1,
                        },
                        &urls,
                        c,
                        plan.load,
                        &seq,
                    ),
                )
                .await?;
                ours.check_alive()?;
                let e = RunStats::with_cpu(
                    &etcd_pids,
                    scenarios::register(
                        Op::EtcdPut {
                            prefix: format!("reg{c}"),
                        },
                        &etcd_urls,
                        c,
                        plan.load,
                        &seq,
                    ),
                )
                .await?;
                etcd.check_alive()?;
                eprintln!(
                    "  run {} {c:>3} clients: ours {:.0}/s p50 {:?} CPU/op {:?} (client {:?}, {} err) | etcd {:.0}/s p50 {:?} CPU/op {:?} (client {:?}, {} err)",
                    run + 1,
                    o.ops_per_s,
                    o.p50,
                    o.cpu_per_op.unwrap_or_default(),
                    o.client_cpu_per_op.unwrap_or_default(),
                    o.errors,
                    e.ops_per_s,
                    e.p50,
                    e.cpu_per_op.unwrap_or_default(),
                    e.client_cpu_per_op.unwrap_or_default(),
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
                range_end_b64: None,
                serializable,
                expect: 1,
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
        if plan.wants("kv") {
            step("7. KV vs etcd: put, get, recurse");
            r.kv = kv(&plan, &urls, &etcd_urls, &mut ours, &mut etcd).await?;
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
        if let Some((services, each)) = plan.spread.filter(|_| plan.wants("fanout")) {
            let mut agents = None;
            if let Some(fds) = spread_via_agents {
                step("   starting client agents for the spread");
                let size = (services * each, services, fds);
                let mut a = crate::spread::Agents::start(&bin, &root, size, &ours.servers)?;
                a.wait_ready(Duration::from_secs(60))
                    .await
                    .context("agents")?;
                agents = Some(a);
            }
            let pids = ours.pids();
            r.spread = Some(
                scenarios::fanout_spread(&urls, &pids, services, each, agents.as_ref()).await?,
            );
            drop(agents);
            ours.check_alive()?;
        }
    }

    if plan.wants("tls") {
        step("9. TLS cost: two fresh 3-server clusters, plain and mutual TLS");
        r.tls = Some(tls_cost::measure(&bin, &root, plan.runs, plan.load).await?);
    }

    if plan.wants("acl") {
        step("10. ACL cost: two fresh 3-server clusters, ACLs off and on (default deny)");
        r.acl = Some(acl_cost::measure(&bin, &root, plan.runs, plan.load).await?);
    }

    if plan.wants("memory") {
        step("5-6. memory, disk and recovery on a fresh 3-server cluster");
        let mut mem = RegistryCluster::start(&bin, &root, "mem", None)?;
        mem.wait_ready(Duration::from_secs(60))
            .await
            .context("memory cluster")?;
        let seq = Arc::new(AtomicU64::new(0));
        let (points, recovery) = scenarios::memory_and_recovery(
            &mut mem,
            &plan.memory_points,
            plan.runs,
            plan.missed_writes,
            &seq,
        )
        .await?;
        r.memory = points;
        r.recovery = recovery;
        if let Some(target) = plan.scale {
            step(&format!(
                "14. the same cluster filled on to {target} instances"
            ));
            r.scale = Some(crate::scale::measure(&mut mem, &seq, target).await?);
        }
    }

    if plan.wants("failover") {
        step("11. failover: a fresh 3-server cluster, the leader killed under 8 writers");
        r.failover =
            Some(failover::measure(&bin, &root, plan.failover_runs, plan.failover_steady).await?);
    }

    if plan.wants("nacos") {
        match plan.rnacos.as_deref().filter(|p| p.is_file()) {
            Some(rnacos) => {
                step("12. r-nacos side by side: register (catalog, agent), lookups, memory");
                let rnacos = rnacos.canonicalize()?;
                if !bin.join("registry-client").is_file() {
                    bail!(
                        "{} not found: build it first (make bench does)",
                        bin.join("registry-client").display()
                    );
                }
                let settings = nacos::Settings {
                    bin_dir: &bin,
                    rnacos: &rnacos,
                    root: &root,
                    runs: plan.runs,
                    load: plan.load,
                    register_clients: &plan.register_clients,
                    lookup_clients: plan.lookup_clients,
                    memory_points: &plan.memory_points,
                };
                r.nacos = Some(Nacos::Measured(nacos::measure(&settings).await?));
            }
            None => {
                eprintln!("==> 12. r-nacos not installed (no --rnacos-bin): skipped");
                r.nacos = Some(Nacos::NotInstalled);
            }
        }
    }

    if plan.wants("agents") {
        step(&format!(
            "13. agents at scale: a fresh 3-server cluster, {} simulated agents",
            plan.agents.agents
        ));
        r.agents = Some(agents::measure(&bin, &root, &plan.agents).await?);
    }

    if plan.wants("dns") {
        step("8. DNS: SRV lookups, ours vs NSD serving the same records");
        r.dns = Some(crate::dns::run(&bin, &root, plan.load, plan.runs).await?);
    }

    let cx = Context {
        machine: cx_machine,
        ours_version: command_line("git", &["describe", "--always", "--dirty", "--tags"]),
        etcd_version: cluster::etcd_version(),
        rnacos_version: match &r.nacos {
            Some(Nacos::Measured(n)) => Some(n.version.clone()),
            _ => plan.rnacos.as_deref().map(nacos::version),
        },
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
    } else {
        dir.disable_cleanup(false);
    }
    Ok(())
}
