//! Measurement 12: r-nacos (crates.io `rnacos`, a Nacos server in Rust) side by side with
//! ours, both as 3-node clusters on loopback, driven by the same load (`crate::load`):
//!
//! - instance registration: r-nacos `POST /nacos/v1/ns/instance` (ephemeral instances)
//!   beside our `PUT /v1/catalog/register` and our agent registration
//!   (`PUT /v1/agent/service/register` sent to 3 `registry-client` agents joined to our
//!   servers, client *i* to agent *i* mod 3), at each client count of measurement 1;
//! - instance lists: `GET /nacos/v1/ns/instance/list?healthyOnly=true` beside our `?stale`
//!   health lookup, the listed service holding 3 instances on both;
//! - the RSS of each r-nacos server after it holds as many instances as measurement 5 fills
//!   ours with (a fresh r-nacos cluster, filled by 256 clients).
//!
//! The bench does not build r-nacos: `scripts/rnacos-bin.sh` installs it once per machine and
//! `scripts/bench.sh` passes its path (`--rnacos-bin`); without it the report says so.

use crate::cluster::{start_agent, RegistryCluster};
use crate::load::{self, http_client, Load, Op, RunStats, Stop};
use crate::procs::{free_ports, rss_bytes, Proc, ProcSpec};
use crate::scenarios;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The service both lookup rows read (3 instances on both systems).
const LOOKUP_SERVICE: &str = "lookup-svc";
/// Instances of [`LOOKUP_SERVICE`].
const LOOKUP_INSTANCES: usize = 3;
/// Clients filling the memory cluster (as measurement 5).
const FILL_CLIENTS: usize = 256;
/// How long r-nacos keeps an ephemeral instance healthy, and then at all, without a heartbeat
/// (its defaults are 15 s and 30 s): the bench sends no heartbeats, and the rows must measure
/// the instances that were registered, not a catalog emptying itself while it is read.
const HEALTH_TIMEOUT_SECS: u64 = 3_600;
/// See [`HEALTH_TIMEOUT_SECS`]: the removal follows later, as in its defaults.
const INSTANCE_TIMEOUT_SECS: u64 = 7_200;

/// What measurement 12 found, or why it did not run.
pub enum Nacos {
    /// No `--rnacos-bin` was given.
    NotInstalled,
    /// The rows.
    Measured(NacosResults),
}

/// One client count of the registration rows.
#[derive(Default)]
pub struct RegisterCells {
    /// Concurrent clients.
    pub clients: usize,
    /// Our `PUT /v1/catalog/register`.
    pub catalog: Vec<RunStats>,
    /// Our `PUT /v1/agent/service/register` through the agents.
    pub agent: Vec<RunStats>,
    /// r-nacos `POST /nacos/v1/ns/instance`.
    pub nacos: Vec<RunStats>,
}

/// r-nacos's memory at one size.
#[derive(Default)]
pub struct NacosMem {
    /// Instances registered.
    pub instances: u64,
    /// Failed registrations while filling.
    pub errors: u64,
    /// Each server's RSS in bytes, in start order.
    pub rss: Vec<u64>,
    /// Services each server held when its RSS was read (one instance per service).
    pub held: Vec<u64>,
    /// Registrations per second while filling.
    pub fill_rate: f64,
}

/// Measurement 12's rows.
#[derive(Default)]
pub struct NacosResults {
    /// `rnacos --version`.
    pub version: String,
    /// Registration, one entry per client count.
    pub register: Vec<RegisterCells>,
    /// Clients of the lookup rows.
    pub lookup_clients: usize,
    /// Our `?stale` health lookups.
    pub lookup_stale: Vec<RunStats>,
    /// r-nacos instance lists.
    pub lookup_nacos: Vec<RunStats>,
    /// r-nacos RSS, one entry per size.
    pub memory: Vec<NacosMem>,
}

/// `rnacos --version` (`rnacos 0.8.8`), or why it failed.
pub fn version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "rnacos: unknown version".into())
}

/// Three r-nacos servers forming one Raft cluster (which r-nacos uses for its membership and
/// persistent data; ephemeral instances go through its distro protocol instead).
pub struct NacosCluster {
    /// `http://127.0.0.1:port` of each server.
    pub urls: Vec<String>,
    /// The servers, in start order (node ids 1, 2, 3).
    pub procs: Vec<Proc>,
}

impl NacosCluster {
    /// Starts node 1 (which initialises the cluster), then nodes 2 and 3 one after the other,
    /// each once the cluster holds the ones before it: r-nacos sends its join request once,
    /// 500 ms after start, and never again, so a joiner must find a leader there.
    pub async fn start(bin: &Path, root: &Path, tag: &str, timeout: Duration) -> Result<Self> {
        let ports = free_ports(6)?;
        let grpc = |i: usize| format!("127.0.0.1:{}", ports[3 + i]);
        let mut cluster = NacosCluster {
            urls: Vec::new(),
            procs: Vec::new(),
        };
        let deadline = Instant::now() + timeout;
        for i in 0..3 {
            let name = format!("{tag}-{}", i + 1);
            let data_dir = root.join(&name);
            std::fs::create_dir_all(&data_dir)?;
            // Its settings in an env file (`-e`): r-nacos reads only the environment, and
            // the file stays beside its data for --keep.
            let mut env = vec![
                ("RNACOS_HTTP_PORT", ports[i].to_string()),
                ("RNACOS_GRPC_PORT", ports[3 + i].to_string()),
                // 0 turns the web console off (it would take HTTP port + 2000).
                ("RNACOS_HTTP_CONSOLE_PORT", "0".into()),
                ("RNACOS_SDK_HOST", "127.0.0.1".into()),
                ("RNACOS_CONSOLE_HOST", "127.0.0.1".into()),
                ("RNACOS_DATA_DIR", data_dir.join("db").display().to_string()),
                // Its legacy SQLite file, relative to the working directory by default.
                (
                    "RNACOS_CONFIG_DB_FILE",
                    data_dir.join("config.db").display().to_string(),
                ),
                ("RNACOS_RAFT_NODE_ID", (i + 1).to_string()),
                ("RNACOS_RAFT_NODE_ADDR", grpc(i)),
                ("RNACOS_RAFT_AUTO_INIT", (i == 0).to_string()),
                (
                    "RNACOS_NAMING_HEALTH_TIMEOUT_SECOND",
                    HEALTH_TIMEOUT_SECS.to_string(),
                ),
                (
                    "RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND",
                    INSTANCE_TIMEOUT_SECS.to_string(),
                ),
            ];
            if i > 0 {
                env.push(("RNACOS_RAFT_JOIN_ADDR", grpc(0)));
            }
            let env_file = data_dir.join("rnacos.env");
            let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            std::fs::write(&env_file, text)?;
            cluster.procs.push(Proc::start(ProcSpec {
                name: name.clone(),
                program: bin.to_path_buf(),
                args: vec!["-e".into(), env_file.display().to_string()],
                log: root.join(format!("{name}.log")),
            })?);
            cluster.urls.push(format!("http://127.0.0.1:{}", ports[i]));
            cluster.wait_members(i as u64 + 1, deadline).await?;
        }
        Ok(cluster)
    }

    /// Waits until node 1 has a leader and `n` members (`/nacos/v1/raft/metrics`).
    async fn wait_members(&mut self, n: u64, deadline: Instant) -> Result<()> {
        let http = http_client()?;
        let url = format!("{}/nacos/v1/raft/metrics", self.urls[0]);
        loop {
            self.check_alive()?;
            let m: Option<Value> = match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                _ => None,
            };
            let leader = m.as_ref().and_then(|m| m.get("current_leader")?.as_u64());
            let members = (m.as_ref())
                .and_then(|m| m.get("membership_config")?.get("members")?.as_array())
                .map_or(0, |a| a.len() as u64);
            if leader.is_some() && members >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("r-nacos: node 1 had {members} of {n} members and leader {leader:?} at the deadline");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an instance registered through each server is listed by every server.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let http = http_client()?;
        for (i, u) in self.urls.clone().iter().enumerate() {
            loop {
                self.check_alive()?;
                if register_instance(&http, u, "bench-ready", i).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("r-nacos {u} accepted no registration within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for u in &self.urls.clone() {
            loop {
                self.check_alive()?;
                if listed(&http, u, "bench-ready").await == self.urls.len() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("r-nacos {u} did not list the 3 ready instances within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Fails if a server has exited by itself.
    pub fn check_alive(&mut self) -> Result<()> {
        crate::procs::all_alive(&mut self.procs)
    }
}

/// Registers instance `i` of `service` (ephemeral) through `base`.
async fn register_instance(
    http: &reqwest::Client,
    base: &str,
    service: &str,
    i: usize,
) -> Result<()> {
    let port = (8000 + i).to_string();
    let ip = format!("10.9.0.{}", i % 250 + 1);
    let form = load::form_encode(&[
        ("serviceName", service),
        ("ip", &ip),
        ("port", &port),
        ("ephemeral", "true"),
        ("metadata", r#"{"tags":"bench","check":"alive"}"#),
    ]);
    let r = http
        .post(format!("{base}/nacos/v1/ns/instance"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() || body != "ok" {
        bail!("r-nacos register {service} #{i}: {status} {body}");
    }
    Ok(())
}

/// Healthy instances of `service` that `base` lists; 0 on any error.
async fn listed(http: &reqwest::Client, base: &str, service: &str) -> usize {
    let r = http
        .get(format!("{base}/nacos/v1/ns/instance/list"))
        .query(&[("serviceName", service), ("healthyOnly", "true")])
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.get("hosts")?.as_array().map(Vec::len))
            .unwrap_or(0),
        _ => 0,
    }
}

/// Services in the default group that `base` holds (`/nacos/v1/ns/service/list`'s count);
/// 0 on any error.
async fn services(http: &reqwest::Client, base: &str) -> u64 {
    let r = http
        .get(format!("{base}/nacos/v1/ns/service/list"))
        .query(&[("pageNo", "1"), ("pageSize", "1")])
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.get("count")?.as_u64())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Three `registry-client` agents joined to our servers, each with its own data dir.
pub struct Agents {
    /// `http://127.0.0.1:port` of each agent.
    pub urls: Vec<String>,
    /// The agents, in start order (named `{tag}-a1..3`).
    procs: Vec<Proc>,
}

impl Agents {
    /// Starts the agents `{tag}-a1..3` under `root`, joined to `servers` (RPC addresses).
    pub fn start(bin_dir: &Path, root: &Path, tag: &str, servers: &[String]) -> Result<Self> {
        let ports = free_ports(3)?;
        let mut agents = Agents {
            urls: Vec::new(),
            procs: Vec::new(),
        };
        let program = bin_dir.join("registry-client");
        for (i, port) in ports.iter().enumerate() {
            let node = format!("{tag}-a{}", i + 1);
            let addr = format!("127.0.0.1:{port}");
            (agents.procs).push(start_agent(&program, root, &node, &addr, servers)?);
            agents.urls.push(format!("http://{addr}"));
        }
        Ok(agents)
    }

    /// Waits until every agent answers and reaches a server that knows the leader
    /// (`/v1/status/leader` is forwarded), and its node is in the catalog (its first sync).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let http = http_client()?;
        for i in 0..self.urls.len() {
            let base = self.urls[i].clone();
            let node = self.procs[i].spec.name.clone();
            loop {
                self.check_alive()?;
                let leader = match http.get(format!("{base}/v1/status/leader")).send().await {
                    Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                    _ => String::new(),
                };
                // The catalog answers `null` for a node it does not hold.
                let synced = leader.trim().trim_matches('"').len() > 1
                    && match (http.get(format!("{base}/v1/catalog/node/{node}?stale")))
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            r.json::<Value>().await.is_ok_and(|v| v.is_object())
                        }
                        _ => false,
                    };
                if synced {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("agent {node} not ready within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Fails if an agent has exited by itself.
    pub fn check_alive(&mut self) -> Result<()> {
        crate::procs::all_alive(&mut self.procs)
    }

    /// Stops every agent (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(mut self) -> Result<()> {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(10)).await?;
        }
        Ok(())
    }
}

/// What measurement 12 needs from the plan.
pub struct Settings<'a> {
    /// registry-server and registry-client.
    pub bin_dir: &'a Path,
    /// The r-nacos binary.
    pub rnacos: &'a Path,
    /// Parent of the data dirs and logs.
    pub root: &'a Path,
    /// Runs per cell.
    pub runs: usize,
    /// Load per cell.
    pub load: Duration,
    /// Client counts of the registration rows.
    pub register_clients: &'a [usize],
    /// Clients of the lookup rows.
    pub lookup_clients: usize,
    /// Sizes at which r-nacos's RSS is read.
    pub memory_points: &'a [u64],
}

/// Runs measurement 12: a fresh cluster of ours and a fresh r-nacos cluster for the load rows,
/// then another fresh r-nacos cluster for memory.
pub async fn measure(s: &Settings<'_>) -> Result<NacosResults> {
    let mut out = NacosResults {
        version: version(s.rnacos),
        lookup_clients: s.lookup_clients,
        ..Default::default()
    };
    let mut ours = RegistryCluster::start(s.bin_dir, s.root, "nac", None)?;
    let mut nacos = NacosCluster::start(s.rnacos, s.root, "rnacos", Duration::from_secs(60))
        .await
        .context("r-nacos cluster")?;
    ours.wait_ready(Duration::from_secs(60))
        .await
        .context("registry cluster")?;
    nacos
        .wait_ready(Duration::from_secs(60))
        .await
        .context("r-nacos cluster")?;
    let urls = ours.urls();
    let rpcs: Vec<String> = ours.servers.iter().map(|x| x.rpc.clone()).collect();
    let nurls = nacos.urls.clone();

    let seq = Arc::new(AtomicU64::new(0));
    out.register = (s.register_clients.iter())
        .map(|&clients| RegisterCells {
            clients,
            ..Default::default()
        })
        .collect();
    for run in 0..s.runs {
        for cells in out.register.iter_mut() {
            let c = cells.clients;
            // Fresh agents for every cell: an agent rewrites (and fsyncs) its whole local
            // state on each registration, so agents kept from cell to cell would make each
            // later cell pay for every service of the earlier ones.
            let mut agents = Agents::start(s.bin_dir, s.root, &format!("r{}c{c}", run + 1), &rpcs)?;
            agents
                .wait_ready(Duration::from_secs(30))
                .await
                .context("agents")?;
            let prefix = format!("nreg{c}");
            let catalog = Op::Register {
                prefix: prefix.clone(),
                per_node: 1,
            };
            cells
                .catalog
                .push(scenarios::register(catalog, &urls, c, s.load, &seq).await?);
            ours.check_alive()?;
            let agent = Op::AgentRegister {
                prefix: format!("areg{c}"),
            };
            cells
                .agent
                .push(scenarios::register(agent, &agents.urls, c, s.load, &seq).await?);
            agents.check_alive()?;
            // Stopped before r-nacos's cell: their syncers would still be pushing the
            // services just registered, on the same two cores.
            agents.stop().await?;
            let reg = Op::NacosRegister {
                prefix,
                per_node: 1,
            };
            cells
                .nacos
                .push(scenarios::register(reg, &nurls, c, s.load, &seq).await?);
            nacos.check_alive()?;
            let last = |v: &[RunStats]| v.last().map_or((0.0, 0), |x| (x.ops_per_s, x.errors));
            let (o, a, n) = (last(&cells.catalog), last(&cells.agent), last(&cells.nacos));
            eprintln!(
                "  run {} {c:>3} clients: catalog {:.0}/s ({} err), agent {:.0}/s ({} err) | r-nacos {:.0}/s ({} err)",
                run + 1,
                o.0,
                o.1,
                a.0,
                a.1,
                n.0,
                n.1
            );
        }
    }

    scenarios::setup_lookup_service(&urls).await?;
    let http = http_client()?;
    for i in 0..LOOKUP_INSTANCES {
        register_instance(&http, &nurls[0], LOOKUP_SERVICE, i).await?;
    }
    for u in &nurls {
        let deadline = Instant::now() + Duration::from_secs(10);
        while listed(&http, u, LOOKUP_SERVICE).await != LOOKUP_INSTANCES {
            if Instant::now() > deadline {
                bail!("r-nacos {u} did not list {LOOKUP_INSTANCES} instances of {LOOKUP_SERVICE} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let lc = s.lookup_clients;
    let none = Arc::new(AtomicU64::new(0));
    for run in 0..s.runs {
        let stale = Op::Lookup {
            service: LOOKUP_SERVICE.into(),
            query: "&stale",
        };
        let list = Op::NacosList {
            service: LOOKUP_SERVICE.into(),
            expect: LOOKUP_INSTANCES,
        };
        // Alternating which system goes first, so that drift hits both alike.
        let (o, n) = if run % 2 == 0 {
            let o = scenarios::register(stale, &urls, lc, s.load, &none).await?;
            (
                o,
                scenarios::register(list, &nurls, lc, s.load, &none).await?,
            )
        } else {
            let n = scenarios::register(list, &nurls, lc, s.load, &none).await?;
            (
                scenarios::register(stale, &urls, lc, s.load, &none).await?,
                n,
            )
        };
        ours.check_alive()?;
        nacos.check_alive()?;
        eprintln!(
            "  run {}: ?stale lookup {:.0}/s ({} err) | r-nacos instance list {:.0}/s ({} err)",
            run + 1,
            o.ops_per_s,
            o.errors,
            n.ops_per_s,
            n.errors
        );
        out.lookup_stale.push(o);
        out.lookup_nacos.push(n);
    }
    // Neither shares the cores with the memory fill.
    drop(ours);
    drop(nacos);

    let mut mem = NacosCluster::start(s.rnacos, s.root, "rnacos-mem", Duration::from_secs(60))
        .await
        .context("r-nacos memory cluster")?;
    mem.wait_ready(Duration::from_secs(60))
        .await
        .context("r-nacos memory cluster")?;
    out.memory = fill(&mut mem, s.memory_points).await?;
    Ok(out)
}

/// Fills `cluster` through all servers with 256 clients to each of `points` instances (10 per
/// IP address, each its own service, as measurement 5 fills ours) and reads every server's RSS
/// two seconds after each.
async fn fill(cluster: &mut NacosCluster, points: &[u64]) -> Result<Vec<NacosMem>> {
    let seq = Arc::new(AtomicU64::new(0));
    let op = Op::NacosRegister {
        prefix: "mem".into(),
        per_node: 10,
    };
    let mut out = Vec::new();
    let mut errors = 0;
    for &target in points {
        let from = seq.load(Ordering::Relaxed);
        let t = Instant::now();
        let st = load::run(Load {
            op: op.clone(),
            bases: cluster.urls.clone(),
            clients: FILL_CLIENTS,
            stop: Stop::Count(target),
            seq: seq.clone(),
            rotate: false,
            token: None,
        })
        .await?;
        // Each client takes one number past the limit before it stops.
        seq.store(target, Ordering::Relaxed);
        cluster.check_alive()?;
        errors += st.errors;
        if let Some(e) = &st.first_error {
            eprintln!("  r-nacos fill: {} errors, first: {e}", st.errors);
        }
        let fill_rate = target.saturating_sub(from) as f64 / t.elapsed().as_secs_f64();
        // Every server holds every instance once the asynchronous replication has caught
        // up (bounded: what each holds is reported either way); then, as for ours, 2 s.
        let http = http_client()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut held = Vec::new();
        for u in &cluster.urls {
            let mut n = services(&http, u).await;
            while n < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                n = services(&http, u).await;
            }
            held.push(n);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss: Vec<u64> = (cluster.procs.iter())
            .map(|p| p.pid().and_then(rss_bytes).unwrap_or(0))
            .collect();
        let join = |v: &[u64], f: &dyn Fn(u64) -> u64| {
            v.iter()
                .map(|&b| f(b).to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        };
        eprintln!(
            "  r-nacos memory at {target}: RSS {} MB, services held {}, fill {fill_rate:.0}/s",
            join(&rss, &|b| b >> 20),
            join(&held, &|n| n)
        );
        out.push(NacosMem {
            instances: target,
            errors,
            rss,
            held,
            fill_rate,
        });
    }
    Ok(out)
}
