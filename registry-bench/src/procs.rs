//! The processes the benchmark drives: our servers, gateways and etcd members,
//! each a child process that is killed when its [`Proc`] is dropped (on success,
//! on error and on Ctrl-C, since `main` drops the whole run then).

use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to (re)start one child process.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    /// Short name for messages (`s1`, `etcd-2`, `gw-dc1`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// File that receives its stdout and stderr (appended to across restarts).
    pub log: PathBuf,
}

/// A running (or stopped) child; dropping it kills the child.
pub struct Proc {
    /// How it was started, so that it can be restarted identically.
    pub spec: ProcSpec,
    /// `None` while stopped.
    child: Option<Child>,
}

impl Proc {
    /// Starts `spec`.
    pub fn start(spec: ProcSpec) -> Result<Proc> {
        let mut p = Proc { spec, child: None };
        p.restart()?;
        Ok(p)
    }

    /// Starts the child again with the same arguments (after [`Proc::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.spec.name);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .with_context(|| format!("open {}", self.spec.log.display()))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            // Many servers on one host: each takes a free DNS port unless its
            // arguments name one (a flag wins over the variable).
            .env("REGISTRY_DNS_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // If the bench itself is killed (SIGKILL, OOM) its children must not outlive it.
        // PDEATHSIG fires when the *thread* that forked exits, so children are only ever
        // started from the main future (the runtime's main thread), never from a task.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!("start {} ({})", self.spec.name, self.spec.program.display())
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// The child's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Fails if the child has exited by itself (a crash under load).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child {
            if let Some(status) = c.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited unexpectedly ({status}); see {}",
                    self.spec.name,
                    self.spec.log.display()
                );
            }
        }
        Ok(())
    }

    /// SIGKILL, as a crash or a pulled plug: the process gets no chance to hand anything
    /// over (measurement 11 kills the leader so). Returns once it is reaped.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                eprintln!(
                    "  {} did not stop within {grace:?} of SIGTERM; killing it",
                    self.spec.name
                );
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` distinct free loopback ports for servers to listen on (all bound at once, then
/// released), outside the kernel's range of ephemeral ports. A port from that range (what
/// binding port 0 gives) can become the source port of any connection the bench opens,
/// thousands of them, between its choice here and the server's bind: a dc2 server once
/// failed to start so ("Address already in use", BENCHMARKS.md, session 16). Successive
/// calls hand out different ports (until they have gone round the whole range), as the
/// servers of one call may not have bound theirs when the next call comes.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let (low, high) = listen_port_range();
    let span = u32::from(high - low);
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..span {
        if listeners.len() == n {
            break;
        }
        let at = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = low + u16::try_from(at % span).expect("below the span");
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    if listeners.len() < n {
        bail!("fewer than {n} free loopback ports in {low}-{high}");
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Where [`free_ports`] looks next: a random place in its range at first, so that two
/// benches started at once do not try the same ports in the same order.
static NEXT_PORT: std::sync::LazyLock<std::sync::atomic::AtomicU32> =
    std::sync::LazyLock::new(|| std::sync::atomic::AtomicU32::new(rand::random::<u32>() >> 1));

/// The ports [`free_ports`] chooses from, `low..high`: those outside the ephemeral range,
/// or (a range that covers nearly every port) 10,000-32,767, with a warning.
fn listen_port_range() -> (u16, u16) {
    let (low, high) = ephemeral_ports();
    outside_ephemeral((low, high)).unwrap_or_else(|| {
        eprintln!("the ephemeral port range {low}-{high} leaves no room for the servers' ports: a server may find its port taken");
        (10_000, 32_768)
    })
}

/// Ports below the ephemeral range `(low, high)` (from 10,000) when that leaves 2,000 or
/// more, else above it when that does, as `low..high`; `None` when neither does.
fn outside_ephemeral((low, high): (u16, u16)) -> Option<(u16, u16)> {
    const FLOOR: u16 = 10_000;
    const ROOM: u16 = 2_000;
    if low >= FLOOR + ROOM {
        Some((FLOOR, low))
    } else if high <= u16::MAX - ROOM {
        Some((high + 1, u16::MAX))
    } else {
        None
    }
}

/// The kernel's range of ephemeral ports (`net.ipv4.ip_local_port_range`, inclusive);
/// Linux's default when it cannot be read.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// Disk used under `dir`, as `du` counts it (allocated blocks).
pub fn disk_used(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.blocks() * 512;
        }
    }
    total
}

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/<pid>/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Raises this process's RLIMIT_NOFILE (children inherit it): the soft limit to the hard one,
/// and both to `want` where the process may (root may raise the hard limit up to
/// `fs.nr_open`). 10,000 watchers need 10,000 sockets here and a third of that in each
/// server; 100,000 (measurement 3's spread) ten times as many. Returns the soft limit.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_max < want {
            let higher = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &higher);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
    }
    lim.rlim_cur
}

/// Fails if any of `procs` has exited by itself.
pub fn all_alive(procs: &mut [Proc]) -> Result<()> {
    procs.iter_mut().try_for_each(Proc::check_alive)
}

/// CPU time `pid` has used so far, user plus system (`utime` + `stime` of
/// /proc/<pid>/stat), its threads included; `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// CPU time of all `pids` together (those that are gone count nothing).
pub fn cpu_time_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&p| cpu_time(p)).sum()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Against ports from the ephemeral range (what binding port 0 gives), read here
    /// from the kernel, and against one call handing out the ports of the one before.
    #[test]
    fn free_ports_are_distinct_across_calls_and_outside_the_ephemeral_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let bounds: Vec<u16> = range
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let a = super::free_ports(5).unwrap();
        let b = super::free_ports(5).unwrap();
        let all: BTreeSet<u16> = a.iter().chain(&b).copied().collect();
        assert_eq!(all.len(), 10, "{a:?} {b:?}");
        // A kernel whose range covers nearly every port leaves no choice (free_ports warns).
        let room = super::outside_ephemeral((bounds[0], bounds[1])).is_some();
        for p in all.iter().filter(|_| room) {
            assert!(
                !(bounds[0]..=bounds[1]).contains(p),
                "{p} is in the ephemeral range {range}"
            );
        }
    }
}
