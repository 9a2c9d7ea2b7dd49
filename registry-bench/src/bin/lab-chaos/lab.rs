//! The running two-DC lab as this process sees it from the host: HTTP only
//! through the published loopback ports (never a 10.81.x address: only
//! loopback is a permitted target from the host), faults only through the
//! `docker` CLI. Addresses and names are those of `docker-compose.yml`.

use crate::record::Recorder;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// One dc1 server.
pub struct Server {
    /// Container name, also its node name (`dc1-server2`).
    pub name: String,
    /// Its HTTP API through the published host port (`http://127.0.0.1:8502`).
    pub url: String,
    /// Its address on dc1-lan when this process started (Docker's choice, read with
    /// `docker inspect`): given back with `docker network connect --ip` after a
    /// disconnect, so that its published port works again. Never connected to.
    pub lan_ip: String,
}

/// The lab: dc1's servers, the dc2 agent, and the names `docker` knows them by.
pub struct Lab {
    /// dc1-server1..3.
    pub servers: Vec<Server>,
    /// The dc2 agent, for `?dc=dc1` reads across the WAN.
    pub dc2_agent: String,
    /// The Compose network dc1's servers live on (`registry-lab_dc1-lan`).
    pub dc1_lan: String,
    /// dc1's gateway container.
    pub dc1_gateway: String,
    /// For the short control-plane requests (leader lookups).
    http: reqwest::Client,
}

impl Server {
    /// Whether `host`, from an advertised RPC address, is this server: the lab's servers
    /// advertise their name (`dc1-server2:8300`); an IP is matched too.
    fn is(&self, host: &str) -> bool {
        host == self.name || host == self.lan_ip
    }
}

/// A container's address on `network`, as Docker reports it.
fn lan_ip_of(container: &str, network: &str) -> anyhow::Result<String> {
    let format = format!(
        "{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}"
    );
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", &format, container])
        .output()?;
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || ip.is_empty() {
        anyhow::bail!("{container} has no address on {network} (is the lab up?)");
    }
    Ok(ip)
}

/// How long any one `docker` command may take before it counts as failed.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

impl Lab {
    /// The lab of Compose project `project`.
    pub fn new(project: &str) -> anyhow::Result<Self> {
        let dc1_lan = format!("{project}_dc1-lan");
        let servers = (1..=3)
            .map(|i| {
                let name = format!("dc1-server{i}");
                Ok(Server {
                    lan_ip: lan_ip_of(&name, &dc1_lan)?,
                    url: format!("http://127.0.0.1:{}", 8500 + i),
                    name,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            servers,
            dc2_agent: "http://127.0.0.1:9500".into(),
            dc1_lan,
            dc1_gateway: "dc1-gateway".into(),
            http: registry_api::tls::client_builder(None)
                .default_headers(crate::clients::token_headers())
                .timeout(Duration::from_secs(1))
                .build()?,
        })
    }

    /// Runs `docker ARGS`; the error is its stderr (or why it did not run).
    pub async fn docker(&self, args: &[&str]) -> Result<String, String> {
        let run = Command::new("docker")
            .args(args)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(DOCKER_TIMEOUT, run).await {
            Err(_) => Err(format!("docker {} timed out", args.join(" "))),
            Ok(Err(e)) => Err(format!("docker {}: {e}", args.join(" "))),
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
            Ok(Ok(out)) => Err(format!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// What `/v1/status/leader` on server `i` says: the leader's RPC address,
    /// `Some("")` when it knows none, `None` when it does not answer.
    async fn leader_seen_by(&self, i: usize) -> Option<String> {
        let url = format!("{}/v1/status/leader", self.servers[i].url);
        let resp = self.http.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json::<String>().await.ok()
    }

    /// Which server leads dc1, by the first server that names one.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.servers.len() {
            if let Some(addr) = self.leader_seen_by(i).await {
                let host = addr.split(':').next().unwrap_or_default();
                if let Some(l) = self.servers.iter().position(|s| s.is(host)) {
                    return Some(l);
                }
            }
        }
        None
    }

    /// Polls until all three servers answer and name the same leader (as
    /// `scripts/lab-lib.sh`'s `dc_has_leader`); its index, or `None` after `limit`.
    pub async fn wait_agreed_leader(&self, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let mut seen = Vec::new();
            for i in 0..self.servers.len() {
                seen.push(self.leader_seen_by(i).await);
            }
            if let Some(Some(first)) = seen.first() {
                if !first.is_empty() && seen.iter().all(|s| s.as_ref() == Some(first)) {
                    let host = first.split(':').next().unwrap_or_default();
                    return self.servers.iter().position(|s| s.is(host));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Puts every dc1 server and the dc1 gateway back the way Compose made
    /// them, judged from what Docker reports rather than from what the fault
    /// schedule believes it did: unpaused, running, and (servers) on dc1-lan
    /// with their own address.
    pub async fn heal_all(&self, rec: &Recorder) {
        let mut names: Vec<(&str, Option<&str>)> = self
            .servers
            .iter()
            .map(|s| (s.name.as_str(), Some(s.lan_ip.as_str())))
            .collect();
        names.push((self.dc1_gateway.as_str(), None));
        for (name, ip) in names {
            let state = match self
                .docker(&[
                    "inspect",
                    "-f",
                    "{{.State.Status}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}},{{end}}",
                    name,
                ])
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    rec.event(format!("heal: cannot inspect {name}: {e}"));
                    continue;
                }
            };
            let (status, networks) = state.split_once(' ').unwrap_or((state.as_str(), ""));
            let step = match status {
                "paused" => Some(vec!["unpause", name]),
                "running" => None,
                _ => Some(vec!["start", name]),
            };
            if let Some(args) = step {
                let r = self.docker(&args).await;
                rec.event(format!(
                    "heal: docker {} -> {}",
                    args.join(" "),
                    outcome(&r)
                ));
            }
            if let Some(ip) = ip {
                if !networks.split(',').any(|n| n == self.dc1_lan) {
                    let args = ["network", "connect", "--ip", ip, &self.dc1_lan, name];
                    let r = self.docker(&args).await;
                    rec.event(format!(
                        "heal: docker {} -> {}",
                        args.join(" "),
                        outcome(&r)
                    ));
                }
            }
        }
    }
}

/// "ok" or the error, for the event log.
pub fn outcome(r: &Result<String, String>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("FAILED: {e}"),
    }
}
