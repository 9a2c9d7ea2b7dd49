//! The agent settings of configuration files (`--config-file`, `--config-dir`), merged under
//! the flags: a flag given on the command line or in the environment wins over a file, as in
//! Consul; a file wins over a flag's default.
//!
//! Owns: which file setting fills which [`ClientConfig`] field. Must not touch: reading the
//! files ([`registry_api::config_file`]) or their services (the agent's `config_files`).

use crate::{ClientConfig, SharedKey};
use registry_api::config_file;

impl ClientConfig {
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
        if let Some(v) = s.advertise_addr.clone().filter(|_| !given("advertise")) {
            self.advertise_addr = v;
        }
        if s.sets_http_addr() && !given("http_addr") {
            self.http_addr = s.http_addr(self.http_addr)?;
        }
        if let Some(v) = s.encrypt.as_deref().filter(|_| !given("encrypt")) {
            // The key's text never appears in the error.
            self.encrypt = Some(SharedKey::from_base64(v).map_err(|e| format!("encrypt: {e}"))?);
        }
        Ok(())
    }
}
