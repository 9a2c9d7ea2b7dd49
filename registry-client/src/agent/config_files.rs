//! Services defined in configuration files (`--config-file`, `--config-dir`; Consul's
//! `service`/`services` definitions, read by [`registry_api::config_file`]).
//!
//! At start and on every reload (`PUT /v1/agent/reload`, `SIGHUP`) the files are read again
//! and every definition is validated as a registration would be; only if all of them are
//! valid does anything change: new services are registered, changed ones re-registered (their
//! checks replaced), and services that came from the files but are in none any more are
//! deregistered. Services registered over the API are never touched, unless a file defines
//! the same id (the file's definition then wins, as in Consul). A broken file leaves the
//! running services as they are and the error names the file, line and column.
//!
//! Owns: the diff between the files and the file-sourced services. Must not touch: parsing
//! (registry-api) or how a registration is validated and installed (`registration`).

use super::Agent;
use registry_api::config_file::{self, ConfigError, FileConfig};
use registry_api::{Error as ApiError, ServiceRegistration};
use std::collections::BTreeMap;

/// What applying the files changed, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigFilesApplied {
    /// Ids registered for the first time.
    pub added: Vec<String>,
    /// Ids whose definition changed (or that had been deregistered over the API).
    pub changed: Vec<String>,
    /// Ids removed because no file defines them any more.
    pub removed: Vec<String>,
}

impl Agent {
    /// Reads the configuration files again and applies their services (see the module docs).
    /// Without configuration sources, nothing happens.
    pub async fn apply_config_files(&self) -> Result<ConfigFilesApplied, ApiError> {
        let sources = self.config.config_sources.clone();
        if sources.is_empty() {
            return Ok(ConfigFilesApplied::default());
        }
        let _one_at_a_time = self.config_files_lock.lock().await;
        let loaded: Result<FileConfig, ConfigError> =
            tokio::task::spawn_blocking(move || config_file::load(&sources))
                .await
                .map_err(|e| ApiError::Internal(format!("reading the configuration: {e}")))?;
        let loaded = loaded.map_err(|e| ApiError::Internal(e.to_string()))?;
        for key in &loaded.ignored {
            tracing::warn!(node = %self.config.node, setting = %key, "configuration setting not supported here; ignored");
        }

        // Every definition must be valid before anything changes.
        let mut desired: BTreeMap<String, ServiceRegistration> = BTreeMap::new();
        for (path, def) in &loaded.services {
            self.prepare_service(&def.registration).map_err(|e| {
                ApiError::Internal(format!("{}: {}: {e}", path.display(), def.place))
            })?;
            desired.insert(def.id().to_string(), def.registration.clone());
        }

        let mut applied = ConfigFilesApplied::default();
        let (previous, present): (BTreeMap<String, ServiceRegistration>, Vec<String>) = {
            let mut st = self.lock();
            let previous = std::mem::replace(&mut st.file_services, desired.clone());
            // Removed ones stay marked until deregistered, so they are not persisted meanwhile.
            for (id, reg) in &previous {
                if !desired.contains_key(id) {
                    st.file_services.insert(id.clone(), reg.clone());
                }
            }
            (previous, st.services.keys().cloned().collect())
        };
        for (id, reg) in &desired {
            let unchanged = previous.get(id) == Some(reg) && present.contains(id);
            if unchanged {
                continue;
            }
            self.register_service(reg.clone(), true, None)
                .await
                .map_err(|e| {
                    ApiError::Internal(format!(
                        "registering service {id:?} from the configuration: {e}"
                    ))
                })?;
            if previous.contains_key(id) {
                applied.changed.push(id.clone());
            } else {
                applied.added.push(id.clone());
            }
        }
        for id in previous.keys().filter(|id| !desired.contains_key(*id)) {
            match self.deregister_service(id).await {
                // Already deregistered over the API: nothing left to remove.
                Ok(()) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            self.lock().file_services.remove(id);
            applied.removed.push(id.clone());
        }
        tracing::info!(
            node = %self.config.node,
            services = desired.len(),
            added = applied.added.len(),
            changed = applied.changed.len(),
            removed = applied.removed.len(),
            "configuration files applied"
        );
        Ok(applied)
    }
}
