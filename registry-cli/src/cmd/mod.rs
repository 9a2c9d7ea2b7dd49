//! The commands, one module per family, and what they share: the client bound to the agent's
//! address, token and datacenter ([`Ctx`]).
//!
//! Owns: turning the global flags and the environment into a client. Must not touch: output
//! formatting (`output`) or argv (`args`).

pub mod acl;
pub mod catalog;
pub mod kv;
pub mod lock;
pub mod members;
pub mod operator;
pub mod services;
pub mod snapshot;
pub mod watch;

use crate::args::{Format, Global};
use crate::Failure;
use registry_api::{QueryOptions, RegistryClient};

/// The default agent address (Consul's).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// What every command works with.
pub struct Ctx {
    /// The client, bound to the agent's address and the token.
    pub client: RegistryClient,
    /// `-datacenter`.
    pub dc: Option<String>,
    /// `-format`.
    pub format: Format,
}

/// The first of `vars` that is set and not empty.
fn env_first(vars: &[&str]) -> Option<String> {
    vars.iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
}

/// `addr` as a base URL: `host:port` gets `http://`; `http(s)://` is kept.
pub fn base_url(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if addr.starts_with("http://") || addr.starts_with("https://") {
        return Ok(addr.trim_end_matches('/').to_string());
    }
    if addr.contains("://") {
        return Err(format!(
            "unsupported address {addr:?}: only http:// and https:// are spoken"
        ));
    }
    if addr.is_empty() {
        return Err("empty HTTP address".into());
    }
    Ok(format!("http://{addr}"))
}

/// The TLS files the flags and the environment name (Consul's `CONSUL_CACERT`,
/// `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`), read and checked now; `None` without any.
fn tls_settings(
    global: &Global,
) -> Result<Option<std::sync::Arc<registry_api::tls::Tls>>, Failure> {
    let path = |flag: &Option<std::path::PathBuf>, vars: &[&str]| {
        flag.clone()
            .or_else(|| env_first(vars).map(std::path::PathBuf::from))
    };
    let settings = registry_api::tls::TlsSettings {
        ca_file: path(&global.ca_file, &["REGISTRY_CACERT", "CONSUL_CACERT"]),
        cert_file: path(
            &global.client_cert,
            &["REGISTRY_CLIENT_CERT", "CONSUL_CLIENT_CERT"],
        ),
        key_file: path(
            &global.client_key,
            &["REGISTRY_CLIENT_KEY", "CONSUL_CLIENT_KEY"],
        ),
        verify_outgoing: true,
        ..Default::default()
    };
    if !settings.is_configured() {
        return Ok(None);
    }
    registry_api::tls::Tls::load(settings, false).map_err(|e| Failure(format!("Error: TLS: {e}")))
}

impl Ctx {
    /// The context the global flags and the environment describe (an error here is a usage
    /// error).
    pub fn new(global: &Global) -> Result<Self, Failure> {
        let addr = global
            .http_addr
            .clone()
            .or_else(|| env_first(&["REGISTRY_HTTP_ADDR", "CONSUL_HTTP_ADDR"]))
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string());
        let base = base_url(&addr).map_err(|e| Failure(format!("Error: -http-addr: {e}")))?;
        let token = global
            .token
            .clone()
            .or_else(|| env_first(&["REGISTRY_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"]));
        let tls = tls_settings(global)?;
        let expect = registry_api::tls::Expect::Name(
            global
                .tls_server_name
                .clone()
                .or_else(|| env_first(&["REGISTRY_TLS_SERVER_NAME", "CONSUL_TLS_SERVER_NAME"])),
        );
        let client = RegistryClient::with_token_tls(
            base,
            token.as_deref(),
            tls.as_ref().map(|t| (t, expect)),
        )
        .map_err(|e| Failure(format!("Error: -token: {e}")))?;
        Ok(Ctx {
            client,
            dc: global.datacenter.clone(),
            format: global.format,
        })
    }

    /// Read options naming `-datacenter`.
    pub fn opts(&self) -> QueryOptions {
        QueryOptions {
            dc: self.dc.clone(),
            ..Default::default()
        }
    }

    /// `?dc=` for a write, when `-datacenter` was given.
    pub fn dc_query(&self) -> Vec<(&str, &str)> {
        self.dc
            .as_deref()
            .map(|dc| vec![("dc", dc)])
            .unwrap_or_default()
    }

    /// Whether JSON output was asked for.
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// Reads a command's data argument as Consul does: `-` is stdin, `@path` a file, anything
/// else the text itself.
pub async fn data_arg(arg: &str) -> Result<Vec<u8>, String> {
    if arg == "-" {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf)
            .await
            .map_err(|e| format!("reading stdin: {e}"))?;
        return Ok(buf);
    }
    if let Some(path) = arg.strip_prefix('@') {
        return tokio::fs::read(path)
            .await
            .map_err(|e| format!("reading {path}: {e}"));
    }
    Ok(arg.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_become_base_urls() {
        assert_eq!(
            super::base_url("127.0.0.1:8500").unwrap(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            super::base_url("https://h:8501/").unwrap(),
            "https://h:8501"
        );
        assert!(super::base_url("unix:///tmp/s").is_err());
        assert!(super::base_url("").is_err());
    }
}
