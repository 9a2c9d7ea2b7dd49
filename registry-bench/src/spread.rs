//! The spread fan-out at its full size (issue 20: 100,000 watchers over 1,000 services) where
//! one process may not open that many sockets.
//!
//! Each watcher is a socket in the process that watches and one in the process it asks. Where
//! the open-file limit's hard bound is below that (a container without `CAP_SYS_RESOURCE`:
//! 20,000 on the machine these figures come from) neither the bench nor three servers can hold
//! 100,000. So the watchers ask as applications do in a Consul datacenter: through client
//! agents (`registry-client`), ten thousand per agent, each agent joined to the three servers;
//! and they live in child processes of the bench (this same binary, `--spread-child`), at most
//! [`PER_CHILD`] each. The agents send one blocking query per distinct question to a server
//! (`registry-client`'s `coalesce.rs`), which is what lets the servers hold a whole
//! datacenter's watchers.
//!
//! A child reads its watchers from stdin (`source <ip>`, then `<addr> <path> <index>` per
//! watcher) and writes to stdout `asked <n>` (requests written so far) and one line per answer:
//! `ok <unix µs>` or `err <unix µs> <reason>`, stamped when the answer arrived.

use crate::cluster::{names_a_leader, start_agent, Server};
use crate::procs::{free_ports, Proc};
use crate::watch;
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;

/// Watchers one child process holds (below a 20,000 open-file limit, with room to spare).
pub const PER_CHILD: usize = 16_000;
/// Watchers one agent answers (each is a socket there, plus one per distinct question).
pub const PER_AGENT: usize = 10_000;
/// How long a watcher waits for its answer in all (the query's own `wait` is shorter).
pub const WATCHER_LIMIT: Duration = Duration::from_secs(300);

/// Client agents of the bench's datacenter.
pub struct Agents {
    procs: Vec<Proc>,
    /// Their HTTP addresses (`127.0.0.1:port`).
    pub addrs: Vec<String>,
    /// Watchers each child process of the bench holds.
    pub per_child: usize,
}

impl Agents {
    /// Starts enough agents under `root` for `watchers` watchers of `services` services
    /// within the open-file limit `fds` (at most [`PER_AGENT`] each), each joined to every
    /// one of `servers`, agent `i` preferring server `i % 3` (so the three share the
    /// agents' queries).
    pub fn start(
        bin: &Path,
        root: &Path,
        (watchers, services, fds): (usize, usize, usize),
        servers: &[Server],
    ) -> Result<Agents> {
        let program = bin.join("registry-client");
        if !program.is_file() {
            bail!("{} not found: build it first", program.display());
        }
        // An agent holds its watchers' sockets and one query per service to a server.
        let per_agent = PER_AGENT.min(fds.saturating_sub(services + 1_000));
        let per_child = PER_CHILD.min(fds.saturating_sub(1_000));
        if per_agent < 100 || per_child < 100 {
            bail!("RLIMIT_NOFILE is {fds}: too low for the spread fan-out through agents");
        }
        let n = watchers.div_ceil(per_agent);
        let ports = free_ports(n)?;
        let joins: Vec<String> = servers
            .iter()
            .map(|s| s.http.trim_start_matches("http://").to_string())
            .collect();
        let mut agents = Agents {
            procs: Vec::new(),
            addrs: Vec::new(),
            per_child,
        };
        for (i, port) in ports.into_iter().enumerate() {
            let name = format!("bench-agent-{i}");
            let mut order = joins.clone();
            order.rotate_left(i % joins.len().max(1));
            let addr = format!("127.0.0.1:{port}");
            (agents.procs).push(start_agent(&program, root, &name, &addr, &order)?);
            agents.addrs.push(addr);
        }
        Ok(agents)
    }

    /// Waits until every agent answers `/v1/status/leader` with a leader (which it does once
    /// its own node is in the catalog).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let http = crate::load::http_client()?;
        for (addr, proc) in self.addrs.iter().zip(&mut self.procs) {
            let url = format!("http://{addr}/v1/status/leader");
            if !names_a_leader(&http, &url, deadline, || proc.check_alive()).await? {
                bail!("agent {addr} not ready within {timeout:?}");
            }
        }
        Ok(())
    }

    /// The agents' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(Proc::pid).collect()
    }

    /// Blocking queries the agents sent to servers and those they answered from another's
    /// request (`registry.agent.blocking.upstream` and `.shared`), summed.
    pub async fn blocking_counts(&self) -> Result<(u64, u64)> {
        let http = crate::load::http_client()?;
        let (mut upstream, mut shared) = (0, 0);
        for a in &self.addrs {
            let summary: registry_api::metrics_summary::MetricsSummary = http
                .get(format!("http://{a}/v1/agent/metrics"))
                .send()
                .await?
                .json()
                .await?;
            upstream += summary.counter("registry.agent.blocking.upstream", &[]);
            shared += summary.counter("registry.agent.blocking.shared", &[]);
        }
        Ok((upstream, shared))
    }
}

/// One watcher: ask `addr` for `path` and expect an index past `min`.
pub struct Target {
    pub addr: String,
    pub path: String,
    pub min: u64,
}

/// The child processes holding the watchers; dropping this kills them.
pub struct Children {
    _children: Vec<tokio::process::Child>,
    asked: Vec<Arc<AtomicUsize>>,
    /// Watchers whose outcome is known (an answer, an error, or their process gone).
    finished: Arc<AtomicUsize>,
}

impl Children {
    /// Starts one child per `per_child` of `targets` (child `c` binds its sockets to
    /// 127.0.1.`c+1`), and forwards each answer to `done` with the instant it came.
    pub async fn start(
        targets: Vec<Target>,
        per_child: usize,
        done: UnboundedSender<(Instant, Result<(), String>)>,
    ) -> Result<Children> {
        let exe = std::env::current_exe().context("the bench's own executable")?;
        let mut out = Children {
            _children: Vec::new(),
            asked: Vec::new(),
            finished: Arc::new(AtomicUsize::new(0)),
        };
        for (c, chunk) in targets.chunks(per_child.max(1)).enumerate() {
            let mut child = tokio::process::Command::new(&exe)
                .arg("--spread-child")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("start a watcher process")?;
            let mut input = format!("source 127.0.1.{}\n", c + 1);
            for t in chunk {
                input.push_str(&format!("{} {} {}\n", t.addr, t.path, t.min));
            }
            let mut stdin = child.stdin.take().context("child stdin")?;
            stdin.write_all(input.as_bytes()).await?;
            drop(stdin);
            let stdout = child.stdout.take().context("child stdout")?;
            let asked = Arc::new(AtomicUsize::new(0));
            let reader = Reader {
                watchers: chunk.len(),
                asked: asked.clone(),
                finished: out.finished.clone(),
                done: done.clone(),
            };
            tokio::spawn(reader.run(stdout));
            out.asked.push(asked);
            out._children.push(child);
        }
        Ok(out)
    }

    /// Requests written by all children so far.
    pub fn asked(&self) -> usize {
        self.asked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Watchers that asked or whose outcome is known (a failure before asking, or their
    /// process gone): once that is every watcher, nobody is left to wait for.
    pub fn settled(&self) -> usize {
        self.asked() + self.finished.load(Ordering::Relaxed)
    }
}

/// Reads one child's stdout.
struct Reader {
    /// Watchers the child holds.
    watchers: usize,
    asked: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    done: UnboundedSender<(Instant, Result<(), String>)>,
}

impl Reader {
    async fn run(self, stdout: tokio::process::ChildStdout) {
        let mut lines = BufReader::new(stdout).lines();
        let mut reported = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.splitn(3, ' ');
            let outcome = match (parts.next(), parts.next()) {
                (Some("asked"), Some(n)) => {
                    self.asked.store(n.parse().unwrap_or(0), Ordering::Relaxed);
                    continue;
                }
                (Some("ok"), Some(t)) => (instant_of(t), Ok(())),
                (Some("err"), Some(t)) => (instant_of(t), Err(parts.next().unwrap_or("").into())),
                _ => continue,
            };
            reported += 1;
            self.finished.fetch_add(1, Ordering::Relaxed);
            let _ = self.done.send(outcome);
        }
        // The child is gone (or closed its output): its watchers that never reported failed
        // there, not in the servers, and say so.
        for _ in reported..self.watchers {
            self.finished.fetch_add(1, Ordering::Relaxed);
            let why = "the watcher process exited before this watcher was answered";
            let _ = self.done.send((Instant::now(), Err(why.into())));
        }
    }
}

/// The instant of a wall-clock time in µs since the epoch (the child's stamp; one clock).
fn instant_of(micros: &str) -> Instant {
    let at = micros.parse::<u64>().unwrap_or(0);
    let now = Instant::now();
    now.checked_sub(Duration::from_micros(unix_micros().saturating_sub(at)))
        .unwrap_or(now)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `registry-bench --spread-child`: the watchers read from stdin, answers to stdout.
pub async fn child_main() -> Result<()> {
    crate::procs::raise_fd_limit(0);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut source: Option<IpAddr> = None;
    let mut targets = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let mut f = line.split(' ');
        match (f.next(), f.next(), f.next()) {
            (Some("source"), Some(ip), None) => source = Some(ip.parse()?),
            (Some(addr), Some(path), Some(min)) => targets.push(Target {
                addr: addr.to_string(),
                path: path.to_string(),
                min: min.parse()?,
            }),
            _ => bail!("bad watcher line {line:?}"),
        }
    }
    let n = targets.len();
    let asked = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut tasks = Vec::with_capacity(n);
    for (w, t) in targets.into_iter().enumerate() {
        let (tx, asked) = (tx.clone(), asked.clone());
        tasks.push(tokio::spawn(async move {
            let slot = watch::Slot::default();
            let r = watch::get_from(&slot, source, &t.addr, &t.path, Some(&asked));
            let line = match watch::changed(r, WATCHER_LIMIT, t.min).await {
                Ok(()) => format!("ok {}\n", unix_micros()),
                Err(e) => format!("err {} {}\n", unix_micros(), e.replace('\n', " ")),
            };
            let _ = tx.send(line);
        }));
        // Open connections in waves so no listen backlog overflows.
        if w % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(tx);
    let mut out = tokio::io::stdout();
    let mut reported = usize::MAX;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { break };
                out.write_all(line.as_bytes()).await?;
                out.flush().await?;
            }
            _ = tick.tick() => {
                let now = asked.load(Ordering::Relaxed);
                if now != reported {
                    out.write_all(format!("asked {now}\n").as_bytes()).await?;
                    out.flush().await?;
                    reported = now;
                }
            }
        }
    }
    Ok(())
}
