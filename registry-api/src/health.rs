//! The `health` subcommand of the three binaries: asks the process running beside it (same
//! flags, same `REGISTRY_*` environment, so the same address) whether it is serving, and exits
//! 0 (healthy) or 1 (not), with a one-line reason on stderr.
//!
//! Why a subcommand: the lab's images are `FROM scratch`, with no shell and no curl, so a
//! container healthcheck can only run the binary itself (`healthcheck: test:
//! ["CMD", "/usr/local/bin/registry-server", "health"]`).
//!
//! What "healthy" means for each (the least that lets a dependant start usefully):
//! - server: its HTTP API answers `GET /v1/status/leader` with a leader's address;
//! - agent: it answers `GET /v1/agent/self`;
//! - gateway: it answers `GET /v1/agent/metrics` (the one path it serves without a signature),
//!   over TLS with its own certificate when it serves TLS.

use crate::tls::{Expect, Tls};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long the whole probe may take: Docker's healthcheck timeout is longer, so a process
/// that does not answer is reported by this probe, with its reason, rather than killed by
/// Docker without one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the answer must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// A server: `/v1/status/leader` names a leader.
    KnowsLeader,
    /// An agent: `/v1/agent/self` answers 200.
    AgentAnswers,
    /// A gateway: `/v1/agent/metrics` answers 200.
    GatewayAnswers,
}

impl Expectation {
    fn path(self) -> &'static str {
        match self {
            Expectation::KnowsLeader => "/v1/status/leader",
            Expectation::AgentAnswers => "/v1/agent/self",
            Expectation::GatewayAnswers => "/v1/agent/metrics",
        }
    }
}

/// One probe of the local process.
pub struct Probe {
    /// Where the process listens (its `--http-addr` / `--listen`); a wildcard address is
    /// asked on loopback.
    pub addr: SocketAddr,
    /// `Some` when that port serves TLS: the process's own TLS files, whose certificate is
    /// shown (the port may require one) and whose CA checks the answer.
    pub tls: Option<Arc<Tls>>,
    /// What counts as healthy.
    pub expect: Expectation,
}

/// The address to ask for a listen address: `0.0.0.0` and `::` are not destinations.
pub fn local_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

impl Probe {
    /// The URL asked.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "{scheme}://{}{}",
            local_target(self.addr),
            self.expect.path()
        )
    }

    /// Asks once; `Ok(what was seen)` when healthy, `Err(why not)` otherwise.
    pub async fn check(&self) -> Result<String, String> {
        // The CA checks the answer; the name does not matter on loopback.
        let builder =
            crate::tls::client_builder(self.tls.as_ref().map(|t| (t, Expect::SignedByCa)));
        let client = builder
            .timeout(PROBE_TIMEOUT)
            .connect_timeout(PROBE_TIMEOUT)
            // A proxy from the environment must never see (or break) a loopback probe.
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let url = self.url();
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: no answer: {}", error_chain(&e)))?;
        let status = resp.status();
        // An agent whose ACLs deny the anonymous token still answers: it is up and serving
        // (a healthcheck carries no token, as Consul's do not).
        let answering = status.as_u16() == 403 && self.expect == Expectation::AgentAnswers;
        if !status.is_success() && !answering {
            return Err(format!("{url}: HTTP {status}"));
        }
        match self.expect {
            Expectation::KnowsLeader => {
                let leader: String = resp
                    .json()
                    .await
                    .map_err(|e| format!("{url}: not a JSON string: {e}"))?;
                if leader.is_empty() {
                    Err(format!("{url}: no leader known yet"))
                } else {
                    Ok(format!("leader {leader}"))
                }
            }
            Expectation::AgentAnswers | Expectation::GatewayAnswers => {
                Ok(format!("{url}: {status}"))
            }
        }
    }

    /// Asks once and reports as the `health` subcommand does: a line on stderr, and the exit
    /// code (0 healthy, 1 not).
    pub async fn report(&self) -> i32 {
        match self.check().await {
            Ok(seen) => {
                eprintln!("healthy: {seen}");
                0
            }
            Err(why) => {
                eprintln!("unhealthy: {why}");
                1
            }
        }
    }

    /// [`Probe::report`] for a `main` without a runtime (the gateway's).
    pub fn report_blocking(&self) -> i32 {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(self.report()),
            Err(e) => {
                eprintln!("unhealthy: cannot start the runtime: {e}");
                1
            }
        }
    }
}

/// An error with its causes, as reqwest's own text omits them ("error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_asked_on_loopback() {
        assert_eq!(
            local_target("0.0.0.0:8500".parse().unwrap()),
            "127.0.0.1:8500".parse().unwrap()
        );
        assert_eq!(
            local_target("[::]:8302".parse().unwrap()),
            "[::1]:8302".parse().unwrap()
        );
        assert_eq!(
            local_target("10.0.0.5:8500".parse().unwrap()),
            "10.0.0.5:8500".parse().unwrap()
        );
    }

    #[test]
    fn urls_follow_scheme_and_expectation() {
        let p = Probe {
            addr: "0.0.0.0:8500".parse().unwrap(),
            tls: None,
            expect: Expectation::KnowsLeader,
        };
        assert_eq!(p.url(), "http://127.0.0.1:8500/v1/status/leader");
    }

    #[tokio::test]
    async fn nothing_listening_is_unhealthy_with_a_reason() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = Probe {
            addr,
            tls: None,
            expect: Expectation::AgentAnswers,
        };
        let why = p.check().await.unwrap_err();
        assert!(why.contains("no answer"), "{why}");
        assert_eq!(p.report().await, 1);
    }
}
