//! Maintenance mode: a critical check with a reserved id on the node
//! (`PUT /v1/agent/maintenance`) or on one service (`PUT /v1/agent/service/maintenance/:id`),
//! as Consul's agent adds it.
//!
//! Owns: the reserved ids and texts and the enable/disable operations. Must not touch: other
//! checks (maintenance checks have no runner).

use super::state::remove_check;
use super::Agent;
use registry_api::{CheckRegistration, Error as ApiError, CRITICAL};

/// Id of the node maintenance check (Consul's `structs.NodeMaint`).
pub const NODE_MAINTENANCE_ID: &str = "_node_maintenance";

/// Prefix of a service maintenance check's id (Consul's `structs.ServiceMaintPrefix`).
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// Consul's notes when node maintenance is enabled without a reason.
const DEFAULT_NODE_MAINT_REASON: &str =
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";

/// Consul's notes when service maintenance is enabled without a reason.
const DEFAULT_SERVICE_MAINT_REASON: &str =
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// Whether a check id is one of the reserved maintenance ids.
pub(super) fn is_maintenance(check_id: &str) -> bool {
    check_id == NODE_MAINTENANCE_ID || check_id.starts_with(SERVICE_MAINTENANCE_PREFIX)
}

impl Agent {
    /// `PUT /v1/agent/maintenance`: adds or removes the node maintenance check.
    pub async fn set_node_maintenance(&self, enable: bool, reason: &str) -> Result<(), ApiError> {
        let notes = if reason.is_empty() {
            DEFAULT_NODE_MAINT_REASON
        } else {
            reason
        };
        let def = CheckRegistration {
            check_id: NODE_MAINTENANCE_ID.into(),
            name: "Node Maintenance Mode".into(),
            notes: notes.into(),
            status: CRITICAL.into(),
            ..Default::default()
        };
        self.set_maintenance(enable, def).await
    }

    /// `PUT /v1/agent/service/maintenance/:id`: adds or removes a service maintenance check.
    pub async fn set_service_maintenance(
        &self,
        service_id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), ApiError> {
        if !self.lock().services.contains_key(service_id) {
            return Err(ApiError::NotFound(format!(
                "Unknown service ID {service_id:?}"
            )));
        }
        let notes = if reason.is_empty() {
            DEFAULT_SERVICE_MAINT_REASON
        } else {
            reason
        };
        let def = CheckRegistration {
            check_id: format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}"),
            name: "Service Maintenance Mode".into(),
            notes: notes.into(),
            status: CRITICAL.into(),
            service_id: service_id.into(),
            ..Default::default()
        };
        self.set_maintenance(enable, def).await
    }

    /// Installs (`enable`) or removes a maintenance check.
    async fn set_maintenance(&self, enable: bool, def: CheckRegistration) -> Result<(), ApiError> {
        let id = def.check_id.clone();
        let p = self.prepare_check(def).map_err(ApiError::BadRequest)?;
        let changed = {
            let mut st = self.lock();
            if enable {
                if !p.check.service_id.is_empty() && !st.services.contains_key(&p.check.service_id)
                {
                    return Err(ApiError::NotFound(format!(
                        "Unknown service ID {:?}",
                        p.check.service_id
                    )));
                }
                let same = st.checks.get(&id).map(|c| &c.definition) == Some(&p.definition);
                if !same {
                    self.install_check(&mut st, p, None);
                }
                !same
            } else {
                remove_check(&mut st, &id)
            }
        };
        // Even unchanged: the same request an instant earlier may still be being written,
        // and this one must not be acknowledged before that (it joins that write).
        self.persist().await?;
        if changed {
            tracing::info!(node = %self.config.node, check = %id, enable, "maintenance mode changed");
            self.wake_syncer();
        }
        Ok(())
    }
}
