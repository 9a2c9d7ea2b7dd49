//! The server settings of configuration files (`--config-file`, `--config-dir`), merged under
//! the flags: a flag given on the command line or in the environment wins over a file, as in
//! Consul; a file wins over a flag's default. The files' services go to the embedded agent.
//!
//! Owns: which file setting fills which [`ServerConfig`] field. Must not touch: reading the
//! files ([`registry_api::config_file`]).

use crate::ServerConfig;
use registry_api::config_file;
use std::net::{IpAddr, SocketAddr};

impl ServerConfig {
    /// Fills from the configuration files every setting whose flag `given` says was not set
    /// (`given` takes the flag's id, e.g. `"datacenter"`). The error names the file and line,
    /// or the setting.
    pub fn apply_file_settings(&mut self, given: &dyn Fn(&str) -> bool) -> Result<(), String> {
        if self.config_sources.is_empty() {
            return Ok(());
        }
        let files = config_file::load(&self.config_sources).map_err(|e| e.to_string())?;
        let s = files.settings;
        if let Some(v) = s.node_name.clone().filter(|_| !given("node")) {
            self.node = v;
        }
        if let Some(v) = s.datacenter.clone().filter(|_| !given("datacenter")) {
            self.datacenter = v;
        }
        if let Some(v) = s.data_dir.clone().filter(|_| !given("data_dir")) {
            self.data_dir = Some(v);
        }
        if let Some(v) = s.retry_join.clone().filter(|_| !given("retry_join")) {
            self.retry_join = v;
        }
        if let Some(v) = s.bootstrap_expect.filter(|_| !given("bootstrap_expect")) {
            self.bootstrap_expect = v;
        }
        if s.sets_http_addr() && !given("http_addr") {
            self.http_addr = s.http_addr(self.http_addr)?;
        }
        if (s.bind_addr.is_some() || s.server_port.is_some()) && !given("rpc_addr") {
            let ip: IpAddr = match &s.bind_addr {
                Some(h) => h
                    .parse()
                    .map_err(|_| format!("bind_addr: {h:?} is not an IP address"))?,
                None => self.rpc_addr.ip(),
            };
            self.rpc_addr = SocketAddr::new(ip, s.server_port.unwrap_or(self.rpc_addr.port()));
        }
        if let Some(host) = s.advertise_addr.as_deref().filter(|_| !given("advertise")) {
            self.advertise = Some(format!(
                "{host}:{}",
                s.server_port.unwrap_or(self.rpc_addr.port())
            ));
        }
        if let Some(v) = s.encrypt.as_deref().filter(|_| !given("encrypt")) {
            // The key's text never appears in the error.
            self.encrypt = Some(
                registry_api::auth::SharedKey::from_base64(v)
                    .map_err(|e| format!("encrypt: {e}"))?,
            );
        }
        Ok(())
    }
}
