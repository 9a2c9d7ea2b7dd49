//! The DNS flags, once for both binaries (`#[command(flatten)]` in the
//! server's and the agent's `main.rs`), with their `REGISTRY_*` variables.
//!
//! Owns: the flags' names, defaults and help, and their validation into a
//! [`DnsConfig`]. Must not touch: anything else in `main`.

use crate::DnsConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// `--dns-addr`, `--domain`, `--alt-domain`, `--recursors`, `--dns-ttl`,
/// `--dns-only-passing` (Consul's `ports.dns`, `domain`, `alt_domain`,
/// `recursors`, `dns_config.service_ttl`/`node_ttl`, `dns_config.only_passing`).
#[derive(clap::Args, Clone, Debug)]
pub struct DnsFlags {
    /// DNS listen address, UDP and TCP; `off` runs no DNS interface.
    #[arg(long, env = "REGISTRY_DNS_ADDR", default_value = crate::DEFAULT_ADDR)]
    pub dns_addr: String,
    /// The DNS domain answered (`<service>.service.<domain>`).
    #[arg(long, env = "REGISTRY_DOMAIN", default_value = crate::DEFAULT_DOMAIN)]
    pub domain: String,
    /// A second DNS domain answered the same way.
    #[arg(long, env = "REGISTRY_ALT_DOMAIN")]
    pub alt_domain: Option<String>,
    /// Upstream DNS servers for names outside the domain (IP or IP:port; repeatable). Without
    /// any, such queries are answered REFUSED.
    #[arg(long, env = "REGISTRY_RECURSORS", value_delimiter = ',')]
    pub recursors: Vec<String>,
    /// TTL of DNS service and node records (0, 30s, 5m; a bare number is seconds).
    #[arg(long, env = "REGISTRY_DNS_TTL", default_value = "0")]
    pub dns_ttl: String,
    /// Answer DNS only with instances whose checks all pass (warning ones are left out too;
    /// critical ones never answer).
    #[arg(long, env = "REGISTRY_DNS_ONLY_PASSING")]
    pub dns_only_passing: bool,
}

impl DnsFlags {
    /// The DNS settings, `None` for `--dns-addr off`, or why they are refused
    /// (the text names the flag).
    pub fn config(&self) -> Result<Option<DnsConfig>, String> {
        if self.dns_addr.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr: SocketAddr = self.dns_addr.parse().map_err(|e| {
            format!(
                "--dns-addr {:?}: {e} (expected IP:port or off)",
                self.dns_addr
            )
        })?;
        let ttl = match self.dns_ttl.trim().parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => registry_api::duration::parse(self.dns_ttl.trim())
                .map_err(|e| format!("--dns-ttl {:?}: {e}", self.dns_ttl))?,
        };
        let mut config = DnsConfig::new(addr);
        config.domain = self.domain.clone();
        config.alt_domain = self.alt_domain.clone().filter(|d| !d.is_empty());
        config.recursors = self.recursors.clone();
        config.ttl = ttl;
        config.only_passing = self.dns_only_passing;
        // Refused here, before anything starts, with the flag's name.
        config.handler_config("dc1")?;
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dns: DnsFlags,
    }

    fn parse(args: &[&str]) -> Result<Option<DnsConfig>, String> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.dns.config()
    }

    #[test]
    fn defaults_are_consuls() {
        let c = parse(&[]).unwrap().unwrap();
        assert_eq!(c.addr, "127.0.0.1:8600".parse().unwrap());
        assert_eq!(c.domain, "consul");
        assert_eq!(c.ttl, Duration::ZERO);
        assert!(!c.only_passing);
        assert!(c.recursors.is_empty());
    }

    #[test]
    fn flags_are_read_and_checked() {
        let c = parse(&[
            "--dns-addr",
            "0.0.0.0:53",
            "--domain",
            "example",
            "--alt-domain",
            "alt",
            "--recursors",
            "1.1.1.1,9.9.9.9:53",
            "--dns-ttl",
            "30s",
            "--dns-only-passing",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert_eq!(c.recursors.len(), 2);
        assert!(c.only_passing);
        assert_eq!(
            parse(&["--dns-ttl", "15"]).unwrap().unwrap().ttl,
            Duration::from_secs(15)
        );
        assert!(parse(&["--dns-addr", "off"]).unwrap().is_none());
        assert!(parse(&["--dns-addr", "nowhere"])
            .unwrap_err()
            .contains("--dns-addr"));
        assert!(parse(&["--recursors", "dns.example"])
            .unwrap_err()
            .contains("--recursors"));
        assert!(parse(&["--dns-ttl", "soon"])
            .unwrap_err()
            .contains("--dns-ttl"));
    }
}
