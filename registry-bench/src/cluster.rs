//! Starting the clusters under test on loopback, each member with its own data
//! dir on the real disk (so every fsync is real), and waiting until they serve.

use crate::load::{http_client, http_client_with_token};
use crate::procs::{free_ports, Proc, ProcSpec};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One of our servers.
pub struct Server {
    /// Node name.
    pub node: String,
    /// `http://127.0.0.1:port`.
    pub http: String,
    /// RPC address, as `/v1/status/leader` reports it.
    pub rpc: String,
    /// Its RocksDB directory.
    pub data_dir: PathBuf,
    /// The process.
    pub proc: Proc,
}

/// The files of a TLS cluster (measurement 9).
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: std::path::PathBuf,
    /// Every server's certificate (`server.dc1.consul`).
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
    /// The load's client certificate.
    pub client_cert: std::path::PathBuf,
    /// Its key.
    pub client_key: std::path::PathBuf,
}

/// Polls `url` (a `/v1/status/leader`) every 100 ms until it names a leader (`true`) or
/// `deadline` passes (`false`); fails as soon as `alive` does (a process it waits on died).
pub async fn names_a_leader(
    http: &reqwest::Client,
    url: &str,
    deadline: Instant,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<bool> {
    loop {
        alive()?;
        let leader = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => String::new(),
        };
        if leader.trim().trim_matches('"').len() > 1 {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a `registry-client` agent named `name` (`program`) in dc1, its data dir
/// `root/name` and its log `root/name.log`, serving HTTP on `addr` (`127.0.0.1:port`),
/// joined to `servers` (RPC addresses, in the order it tries them).
pub fn start_agent(
    program: &Path,
    root: &Path,
    name: &str,
    addr: &str,
    servers: &[String],
) -> Result<Proc> {
    Proc::start(ProcSpec {
        name: name.to_string(),
        program: program.to_path_buf(),
        args: member_args(root, name, addr, servers)?,
        log: root.join(format!("{name}.log")),
    })
}

/// The flags every dc1 member (server or agent) named `name` starts with: its node
/// name, its data dir `root/name` (made here), its HTTP address `addr` and a
/// `--retry-join` for each of `joins`.
fn member_args(root: &Path, name: &str, addr: &str, joins: &[String]) -> Result<Vec<String>> {
    let data_dir = root.join(name);
    std::fs::create_dir_all(&data_dir)?;
    let mut args = vec![
        "--node".into(),
        name.to_string(),
        "--datacenter".into(),
        "dc1".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--http-addr".into(),
        addr.to_string(),
    ];
    for j in joins {
        args.push("--retry-join".into());
        args.push(j.clone());
    }
    Ok(args)
}

/// Three registry servers forming one datacenter with `--bootstrap-expect 3`.
pub struct RegistryCluster {
    /// The servers, in start order.
    pub servers: Vec<Server>,
    /// With ACLs on (measurement 10): the initial management token, which
    /// [`RegistryCluster::wait_ready`] writes and reads with. `None`: ACLs off.
    pub management_token: Option<String>,
}

impl RegistryCluster {
    /// Starts 3 servers of `dc` under `root`, joined over TCP; `gateway` is given as
    /// `--wan-gateway` to each.
    pub fn start(bin: &Path, root: &Path, tag: &str, gateway: Option<&str>) -> Result<Self> {
        Self::start_with(bin, root, tag, gateway, None, None)
    }

    /// [`RegistryCluster::start`] with mutual TLS among the servers and an HTTPS API,
    /// which [`RegistryCluster::urls`] then names.
    pub fn start_tls(bin: &Path, root: &Path, tag: &str, tls: &TlsFiles) -> Result<Self> {
        Self::start_with(bin, root, tag, None, Some(tls), None)
    }

    /// [`RegistryCluster::start`] with ACLs on, default deny, and `management` as the initial
    /// management token (which the leader installs once it leads).
    pub fn start_acl(bin: &Path, root: &Path, tag: &str, management: &str) -> Result<Self> {
        Self::start_with(bin, root, tag, None, None, Some(management))
    }

    fn start_with(
        bin: &Path,
        root: &Path,
        tag: &str,
        gateway: Option<&str>,
        tls: Option<&TlsFiles>,
        management: Option<&str>,
    ) -> Result<Self> {
        let ports = free_ports(9)?;
        let rpcs: Vec<String> = (0..3)
            .map(|i| format!("127.0.0.1:{}", ports[3 + i]))
            .collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let node = format!("{tag}-s{}", i + 1);
            let http = format!("127.0.0.1:{}", ports[i]);
            let mut args = member_args(root, &node, &http, &rpcs)?;
            args.extend([
                "--rpc-addr".into(),
                rpcs[i].clone(),
                "--bootstrap-expect".into(),
                "3".into(),
            ]);
            if let Some(g) = gateway {
                args.push("--wan-gateway".into());
                args.push(g.to_string());
            }
            if let Some(tls) = tls {
                args.extend([
                    "--https-addr".into(),
                    format!("127.0.0.1:{}", ports[6 + i]),
                    "--ca-file".into(),
                    tls.ca.display().to_string(),
                    "--cert-file".into(),
                    tls.cert.display().to_string(),
                    "--key-file".into(),
                    tls.key.display().to_string(),
                    "--verify-incoming".into(),
                    "--verify-outgoing".into(),
                    "--verify-server-hostname".into(),
                ]);
            }
            // On the command line, not in the environment: a bench token, made for this run
            // on loopback, and Proc restarts a server with exactly its arguments.
            if let Some(token) = management {
                args.extend([
                    "--acl-enabled".into(),
                    "--acl-default-policy".into(),
                    "deny".into(),
                    "--acl-initial-management-token".into(),
                    token.to_string(),
                    // Consul's agent token: the embedded agent's own catalog updates stay
                    // allowed under default deny, so both clusters do the same background work.
                    "--acl-agent-token".into(),
                    token.to_string(),
                ]);
            }
            let proc = Proc::start(ProcSpec {
                name: node.clone(),
                program: bin.join("registry-server"),
                args,
                log: root.join(format!("{node}.log")),
            })?;
            servers.push(Server {
                data_dir: root.join(&node),
                node,
                http: match tls {
                    None => format!("http://127.0.0.1:{}", ports[i]),
                    Some(_) => format!("https://127.0.0.1:{}", ports[6 + i]),
                },
                rpc: rpcs[i].clone(),
                proc,
            });
        }
        Ok(RegistryCluster {
            servers,
            management_token: management.map(str::to_string),
        })
    }

    /// The servers' process ids (for their CPU time and memory).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(|s| s.proc.pid()).collect()
    }

    /// Base URLs of the servers.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.http.clone()).collect()
    }

    /// Waits until every server knows the leader and a write made through each
    /// server is visible in every server's local (`?stale`) state (with ACLs on, until the
    /// leader has installed the management token too: the write is made with it).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let http = http_client_with_token(self.management_token.as_deref())?;
        for i in 0..self.servers.len() {
            let url = format!("{}/v1/status/leader", self.servers[i].http);
            if !names_a_leader(&http, &url, deadline, || self.check_alive()).await? {
                bail!("our cluster formed no leader within {timeout:?}");
            }
        }
        for s in &self.servers {
            let body = serde_json::json!({
                "Node": format!("ready-{}", s.node), "Address": "127.0.0.1",
                "Service": {"Service": "bench-ready", "ID": format!("ready-{}", s.node)}
            });
            loop {
                let r = http
                    .put(format!("{}/v1/catalog/register", s.http))
                    .json(&body)
                    .send()
                    .await;
                if matches!(&r, Ok(r) if r.status().is_success()) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "our cluster accepted no write through {} within {timeout:?}",
                        s.node
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for s in &self.servers {
            loop {
                if crate::scenarios::stale_instances(&http, &s.http, "bench-ready").await == 3 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not catch up within {timeout:?}", s.node);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Index of the current leader in `servers`.
    pub async fn leader(&self) -> Result<usize> {
        let http = http_client()?;
        for s in &self.servers {
            if let Ok(r) = http
                .get(format!("{}/v1/status/leader", s.http))
                .send()
                .await
            {
                if let Ok(addr) = r.json::<String>().await {
                    if let Some(i) = self.servers.iter().position(|x| x.rpc == addr) {
                        return Ok(i);
                    }
                }
            }
        }
        bail!("no server names a leader")
    }

    /// Fails if a server has exited by itself.
    pub fn check_alive(&mut self) -> Result<()> {
        for s in &mut self.servers {
            s.proc.check_alive()?;
        }
        Ok(())
    }
}

/// Three etcd members with a static `--initial-cluster`.
pub struct EtcdCluster {
    /// Client URLs (`http://127.0.0.1:port`), the JSON gateway included.
    pub urls: Vec<String>,
    /// The members.
    pub procs: Vec<Proc>,
}

impl EtcdCluster {
    /// The members' process ids (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.pid()).collect()
    }

    /// Starts the three members under `root`.
    pub fn start(root: &Path) -> Result<Self> {
        let ports = free_ports(6)?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
        let initial: Vec<String> = (0..3)
            .map(|i| format!("etcd-{}={}", i + 1, peer(i)))
            .collect();
        let mut urls = Vec::new();
        let mut procs = Vec::new();
        for (i, port) in ports.iter().take(3).enumerate() {
            let name = format!("etcd-{}", i + 1);
            let data_dir = root.join(&name);
            let client = format!("http://127.0.0.1:{port}");
            let args = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client.clone(),
                "--listen-peer-urls".into(),
                peer(i),
                "--initial-advertise-peer-urls".into(),
                peer(i),
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-token".into(),
                "registry-bench".into(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--logger".into(),
                "zap".into(),
            ];
            procs.push(Proc::start(ProcSpec {
                name: name.clone(),
                program: "etcd".into(),
                args,
                log: root.join(format!("{name}.log")),
            })?);
            urls.push(client);
        }
        Ok(EtcdCluster { urls, procs })
    }

    /// Waits until every member reports healthy and accepts a put.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let http = http_client()?;
        for u in &self.urls {
            loop {
                for p in &mut self.procs {
                    p.check_alive()?;
                }
                let put = http
                    .post(format!("{u}/v3/kv/put"))
                    .json(&serde_json::json!({"key": crate::load::b64(b"bench-ready"), "value": crate::load::b64(b"1")}))
                    .send()
                    .await;
                let healthy = match http.get(format!("{u}/health")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default().contains("true"),
                    Err(_) => false,
                };
                if healthy && matches!(&put, Ok(r) if r.status().is_success()) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("etcd member {u} not ready within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Fails if a member has exited by itself.
    pub fn check_alive(&mut self) -> Result<()> {
        crate::procs::all_alive(&mut self.procs)
    }
}

/// A second datacenter (one `--dev` server) and one WAN gateway per DC.
pub struct Federation {
    /// dc2's server, `http://127.0.0.1:port`.
    pub dc2: String,
    /// dc2's server and both gateways.
    pub procs: Vec<Proc>,
}

/// Ports for dc1's gateway, chosen before dc1's servers start (they need its URL).
pub fn gateway_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

impl Federation {
    /// Starts dc2 and the gateways; `gw1_port` is the one given to dc1's servers.
    pub fn start(bin: &Path, root: &Path, gw1_port: u16, dc1_urls: &[String]) -> Result<Self> {
        let p = free_ports(3)?;
        let (dc2_http, dc2_rpc, gw2) = (p[0], p[1], p[2]);
        let dc2_dir = root.join("dc2-s1");
        std::fs::create_dir_all(&dc2_dir)?;
        let spec = |name: &str, program: &str, args: Vec<String>| ProcSpec {
            name: name.into(),
            program: bin.join(program),
            args,
            log: root.join(format!("{name}.log")),
        };
        let mut procs = vec![Proc::start(spec(
            "dc2-s1",
            "registry-server",
            vec![
                "--dev".into(),
                "--node".into(),
                "dc2-s1".into(),
                "--datacenter".into(),
                "dc2".into(),
                "--data-dir".into(),
                dc2_dir.display().to_string(),
                "--http-addr".into(),
                format!("127.0.0.1:{dc2_http}"),
                "--rpc-addr".into(),
                format!("127.0.0.1:{dc2_rpc}"),
                "--wan-gateway".into(),
                format!("http://127.0.0.1:{gw2}"),
            ],
        ))?];
        let mut gw1_args = vec![
            "--datacenter".into(),
            "dc1".into(),
            "--listen".into(),
            format!("127.0.0.1:{gw1_port}"),
        ];
        for u in dc1_urls {
            gw1_args.push("--server".into());
            gw1_args.push(u.clone());
        }
        procs.push(Proc::start(spec("gw-dc1", "wan-gateway", gw1_args))?);
        procs.push(Proc::start(spec(
            "gw-dc2",
            "wan-gateway",
            vec![
                "--datacenter".into(),
                "dc2".into(),
                "--listen".into(),
                format!("127.0.0.1:{gw2}"),
                "--server".into(),
                format!("http://127.0.0.1:{dc2_http}"),
                "--retry-join-wan".into(),
                format!("127.0.0.1:{gw1_port}"),
            ],
        ))?);
        Ok(Federation {
            dc2: format!("http://127.0.0.1:{dc2_http}"),
            procs,
        })
    }

    /// Registers `service` in dc2 and waits until every dc1 server answers `?dc=dc2` for it.
    pub async fn wait_ready(
        &mut self,
        dc1_urls: &[String],
        service: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let http = http_client()?;
        let body = serde_json::json!({
            "Node": "xdc-node-1", "Address": "10.2.0.1",
            "Service": {"Service": service, "ID": format!("{service}-1"), "Port": 80},
            "Check": {"Name": "alive", "CheckID": "xdc-alive", "ServiceID": format!("{service}-1"), "Status": "passing"}
        });
        loop {
            for p in &mut self.procs {
                p.check_alive()?;
            }
            let r = http
                .put(format!("{}/v1/catalog/register", self.dc2))
                .json(&body)
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("dc2 accepted no write within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for u in dc1_urls {
            loop {
                for p in &mut self.procs {
                    p.check_alive()?;
                }
                let url = format!("{u}/v1/health/service/{service}?passing&dc=dc2");
                let found = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .map(|v| v.as_array().is_some_and(|a| !a.is_empty()))
                        .unwrap_or(false),
                    _ => false,
                };
                if found {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{u} could not read dc2 through the gateways within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

/// The first line of `etcd --version`, or why it failed.
pub fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "etcd: unknown version".into())
}

/// Installs Debian's etcd packages when `etcd` is not on PATH.
pub fn ensure_etcd() -> Result<()> {
    let have = |b: &str| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("etcd") {
        return Ok(());
    }
    eprintln!("etcd not found: installing etcd-server and etcd-client with apt-get");
    let root = unsafe { libc::geteuid() } == 0;
    let run = |args: &[&str]| -> Result<bool> {
        let mut cmd = if root {
            std::process::Command::new(args[0])
        } else {
            let mut c = std::process::Command::new("sudo");
            c.arg(args[0]);
            c
        };
        cmd.args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        Ok(cmd
            .status()
            .with_context(|| format!("run {}", args.join(" ")))?
            .success())
    };
    let install = ["apt-get", "install", "-y", "etcd-server", "etcd-client"];
    if !run(&install)? {
        run(&["apt-get", "update"])?;
        if !run(&install)? {
            bail!("apt-get install etcd-server etcd-client failed");
        }
    }
    if !have("etcd") {
        bail!("etcd still not on PATH after installing etcd-server");
    }
    Ok(())
}
