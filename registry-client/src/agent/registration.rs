//! The agent endpoints' operations on local state: registering and deregistering services
//! and checks (each validated whole before anything changes), and the local reads.
//!
//! Owns: validation and normalisation of definitions, and installing their runners. Must not
//! touch: HTTP (the handlers in [`crate::http`] call these) or the catalog (the syncer pushes
//! the changes).

use super::maintenance::{is_maintenance, SERVICE_MAINTENANCE_PREFIX};
use super::state::{
    aggregated_status, filled_check, key_part, remove_check, remove_service, unknown_check,
    LocalCheck, LocalService, LocalState, PreparedCheck,
};
use super::Agent;
use crate::checks::{parse_spec, CheckFields, CheckKind, CheckRunner};
use registry_api::{
    duration, AgentService, AgentServiceChecksInfo, AgentServiceInfo, CheckRegistration,
    CheckStatus, Error as ApiError, HealthCheck, ServiceRegistration, Weights, CRITICAL,
};
use std::collections::{BTreeMap, BTreeSet};
use tokio::time::Instant;

/// Consul's refusal of script checks when they are not enabled (`agent.go`, `addCheck`).
pub const SCRIPT_CHECKS_DISABLED: &str = "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true";

impl Agent {
    /// `PUT /v1/agent/service/register`. The whole registration, every check included, is
    /// validated before anything changes. `token` (the request's) is what the service and
    /// its checks are synced with from then on (`None`: the agent's token).
    pub async fn register_service(
        &self,
        reg: ServiceRegistration,
        replace_existing_checks: bool,
        token: Option<String>,
    ) -> Result<(), ApiError> {
        let (id, service, prepared) = self.prepare_service(&reg)?;
        let ids: BTreeSet<String> = prepared.iter().map(|p| p.check.check_id.clone()).collect();

        {
            let mut st = self.lock();
            if let Some(other) = prepared
                .iter()
                .filter_map(|p| st.checks.get(&p.check.check_id))
                .find(|c| !c.check.service_id.is_empty() && c.check.service_id != id)
            {
                return Err(ApiError::BadRequest(format!(
                    "Check ID {:?} belongs to service {:?}",
                    other.check.check_id, other.check.service_id
                )));
            }
            let generation = st.bump();
            let changed = st.services.get(&id).map(|s| &s.service) != Some(&service);
            if changed {
                st.services.insert(
                    id.clone(),
                    LocalService {
                        service,
                        in_sync: false,
                        generation,
                        token: token.clone(),
                    },
                );
            } else if let Some(s) = st.services.get_mut(&id) {
                // The same service registered with another token syncs with that one now.
                s.token = token.clone();
            }
            st.deleted_service_tokens.remove(&id);
            st.deleted_services.remove(&id);
            if replace_existing_checks {
                let stale: Vec<String> = st
                    .checks
                    .values()
                    .filter(|c| c.check.service_id == id)
                    .filter(|c| !c.check.check_id.starts_with(SERVICE_MAINTENANCE_PREFIX))
                    .filter(|c| !ids.contains(c.check.check_id.as_str()))
                    .map(|c| c.check.check_id.clone())
                    .collect();
                for check_id in stale {
                    remove_check(&mut st, &check_id);
                }
            }
            for p in prepared {
                self.install_check(&mut st, p, token.clone());
            }
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, service = %id, "service registered");
        self.wake_syncer();
        Ok(())
    }

    /// Validates a service registration whole (the service and every check) without changing
    /// anything: its instance id, the service as stored and its checks ready to install.
    pub(super) fn prepare_service(
        &self,
        reg: &ServiceRegistration,
    ) -> Result<(String, AgentService, Vec<PreparedCheck>), ApiError> {
        if reg.name.is_empty() {
            return Err(ApiError::BadRequest("Missing service name".into()));
        }
        let id = if reg.id.is_empty() {
            reg.name.clone()
        } else {
            reg.id.clone()
        };
        key_part("Service name", &reg.name).map_err(ApiError::BadRequest)?;
        key_part("Service ID", &id).map_err(ApiError::BadRequest)?;
        // Consul checks sent weights and fills in {1, 1} when there are none.
        let weights = match reg.weights {
            Some(w) => {
                w.validate()
                    .map_err(|e| ApiError::BadRequest(format!("Invalid Weights: {e}")))?;
                w
            }
            None => Weights::default(),
        };
        // Everything the client sent comes back as sent: clients such as Nomad compare what
        // they read with what they registered and re-register on any difference.
        let service = AgentService {
            kind: reg.kind.clone(),
            id: id.clone(),
            service: reg.name.clone(),
            tags: reg.tags.clone(),
            address: reg.address.clone(),
            meta: reg.meta.clone(),
            port: reg.port,
            tagged_addresses: reg.tagged_addresses.clone(),
            weights,
            enable_tag_override: reg.enable_tag_override,
            proxy: reg.proxy.clone(),
            connect: reg.connect.clone(),
            create_index: 0,
            modify_index: 0,
        };
        let defs: Vec<&CheckRegistration> = reg.check.iter().chain(reg.checks.iter()).collect();
        let mut prepared = Vec::with_capacity(defs.len());
        for (i, def) in defs.iter().enumerate() {
            // Consul's default ids: "service:<id>", numbered from 1 when there are several.
            let default_id = if defs.len() > 1 {
                format!("service:{id}:{}", i + 1)
            } else {
                format!("service:{id}")
            };
            let mut def = (*def).clone();
            def.service_id = id.clone();
            if def.name.is_empty() {
                def.name = format!("Service '{}' check", reg.name);
            }
            if def.id.is_empty() && def.check_id.is_empty() {
                def.check_id = default_id;
            }
            prepared.push(self.prepare_check(def).map_err(ApiError::BadRequest)?);
        }
        let ids: BTreeSet<&str> = prepared.iter().map(|p| p.check.check_id.as_str()).collect();
        if ids.len() != prepared.len() {
            return Err(ApiError::BadRequest(
                "Duplicate check ID in registration".into(),
            ));
        }
        Ok((id, service, prepared))
    }

    /// `PUT /v1/agent/service/deregister/:id`: removes the service and its checks.
    pub async fn deregister_service(&self, id: &str) -> Result<(), ApiError> {
        {
            let mut st = self.lock();
            if !remove_service(&mut st, id) {
                return Err(ApiError::NotFound(format!(
                    "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                )));
            }
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, service = %id, "service deregistered");
        self.wake_syncer();
        Ok(())
    }

    /// `GET /v1/agent/services`.
    pub fn services(&self) -> BTreeMap<String, AgentServiceInfo> {
        self.lock()
            .services
            .iter()
            .map(|(id, s)| {
                let info = AgentServiceInfo::new(&s.service, &self.config.datacenter);
                (id.clone(), info)
            })
            .collect()
    }

    /// `GET /v1/agent/service/:id`.
    pub fn service(&self, id: &str) -> Option<AgentServiceInfo> {
        self.lock()
            .services
            .get(id)
            .map(|s| AgentServiceInfo::new(&s.service, &self.config.datacenter))
    }

    /// The name of the service local check `id` belongs to: `Some(None)` for a node check,
    /// `None` for an unknown check (for the handlers' ACL step).
    pub fn check_service_name(&self, id: &str) -> Option<Option<String>> {
        let st = self.lock();
        let check = st.checks.get(id)?;
        if check.check.service_id.is_empty() {
            return Some(None);
        }
        // A check whose service is gone is judged by its service id (Consul's fallback).
        Some(Some(st.services.get(&check.check.service_id).map_or_else(
            || check.check.service_id.clone(),
            |s| s.service.service.clone(),
        )))
    }

    /// `GET /v1/agent/checks`, with `Node`, `ServiceName` and `ServiceTags` filled in.
    pub fn checks(&self) -> BTreeMap<String, HealthCheck> {
        let st = self.lock();
        st.checks
            .iter()
            .map(|(id, c)| (id.clone(), filled_check(&st, &c.check)))
            .collect()
    }

    /// `PUT /v1/agent/check/register`; `token` as for [`Agent::register_service`].
    pub async fn register_check(
        &self,
        mut def: CheckRegistration,
        token: Option<String>,
    ) -> Result<(), ApiError> {
        if def.name.is_empty() {
            return Err(ApiError::BadRequest("Missing check name".into()));
        }
        if def.id.is_empty() && def.check_id.is_empty() {
            def.check_id = def.name.clone();
        }
        let p = self.prepare_check(def).map_err(ApiError::BadRequest)?;
        let check_id = p.check.check_id.clone();
        {
            let mut st = self.lock();
            let sid = &p.check.service_id;
            if !sid.is_empty() && !st.services.contains_key(sid) {
                return Err(ApiError::BadRequest(format!(
                    "ServiceID {sid:?} does not exist"
                )));
            }
            self.install_check(&mut st, p, token);
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, check = %check_id, "check registered");
        self.wake_syncer();
        Ok(())
    }

    /// `PUT /v1/agent/check/deregister/:id`.
    pub async fn deregister_check(&self, id: &str) -> Result<(), ApiError> {
        {
            let mut st = self.lock();
            if !remove_check(&mut st, id) {
                return Err(unknown_check(id));
            }
        }
        self.persist().await?;
        tracing::info!(node = %self.config.node, check = %id, "check deregistered");
        self.wake_syncer();
        Ok(())
    }

    /// `GET /v1/agent/health/service/name/:name`: the local instances of a service with their
    /// checks (the node's checks included, as Consul does) and the worst status among them.
    pub fn health_by_service_name(&self, name: &str) -> Vec<AgentServiceChecksInfo> {
        let st = self.lock();
        st.services
            .values()
            .filter(|s| s.service.service == name)
            .map(|s| {
                let checks: Vec<HealthCheck> = st
                    .checks
                    .values()
                    .filter(|c| c.check.service_id.is_empty() || c.check.service_id == s.service.id)
                    .map(|c| filled_check(&st, &c.check))
                    .collect();
                AgentServiceChecksInfo {
                    aggregated_status: aggregated_status(&checks),
                    service: AgentServiceInfo::new(&s.service, &self.config.datacenter),
                    checks,
                }
            })
            .collect()
    }

    /// Validates a check definition and normalises it (`CheckID` from `ID`, default status).
    /// Maintenance checks are recognised by their reserved ids and get no runner.
    pub(super) fn prepare_check(
        &self,
        mut def: CheckRegistration,
    ) -> Result<PreparedCheck, String> {
        if !def.id.is_empty() {
            def.check_id = std::mem::take(&mut def.id);
        }
        if def.check_id.is_empty() {
            return Err("Missing check ID".into());
        }
        key_part("Check ID", &def.check_id)?;
        if def.check_id == registry_api::SERF_HEALTH_ID {
            // The servers own every node's serfHealth check (liveness).
            return Err(format!(
                "CheckID {:?} is reserved for the node's liveness check",
                def.check_id
            ));
        }
        if def.name.is_empty() {
            def.name = def.check_id.clone();
        }
        if def.status.is_empty() {
            def.status = CRITICAL.into();
        } else if def.status.parse::<CheckStatus>().is_err() {
            return Err(format!("Invalid check status: {:?}", def.status));
        }
        let maintenance = is_maintenance(&def.check_id);
        let spec = if maintenance {
            None
        } else {
            if !def.args.is_empty() || !def.script_args.is_empty() {
                return Err(SCRIPT_CHECKS_DISABLED.into());
            }
            Some(parse_spec(&CheckFields {
                http: &def.http,
                method: &def.method,
                headers: def.header.clone(),
                body: &def.body,
                tls_skip_verify: def.tls_skip_verify,
                tcp: &def.tcp,
                grpc: &def.grpc,
                grpc_use_tls: def.grpc_use_tls,
                ttl: &def.ttl,
                interval: &def.interval,
                timeout: &def.timeout,
                success_before_passing: def.success_before_passing,
                failures_before_critical: def.failures_before_critical,
                failures_before_warning: def.failures_before_warning,
            })?)
        };
        let deregister_after = match def.deregister_critical_service_after.trim() {
            "" => None,
            text => Some(
                duration::parse(text)
                    .map_err(|e| format!("Invalid DeregisterCriticalServiceAfter: {e}"))?,
            ),
        };
        let check_type = match spec.as_ref().map(|s| &s.kind) {
            None => "maintenance",
            Some(CheckKind::Http { .. }) => "http",
            Some(CheckKind::Tcp { .. }) => "tcp",
            Some(CheckKind::Grpc { .. }) => "grpc",
            Some(CheckKind::Ttl { .. }) => "ttl",
        };
        let check = HealthCheck {
            node: self.config.node.clone(),
            check_id: def.check_id.clone(),
            name: def.name.clone(),
            status: def.status.clone(),
            notes: def.notes.clone(),
            output: String::new(),
            service_id: def.service_id.clone(),
            check_type: check_type.into(),
            ..Default::default()
        };
        Ok(PreparedCheck {
            check,
            definition: def,
            spec,
            deregister_after,
        })
    }

    /// Puts a prepared check in place, starting its runner. A re-registration with the same
    /// definition keeps the running check and its status, so re-registering a service does
    /// not reset its health (Consul keeps the status of a re-registered check too).
    pub(super) fn install_check(
        &self,
        st: &mut LocalState,
        p: PreparedCheck,
        token: Option<String>,
    ) {
        let id = p.check.check_id.clone();
        st.deleted_checks.remove(&id);
        st.deleted_check_tokens.remove(&id);
        if let Some(c) = st.checks.get_mut(&id) {
            if c.definition == p.definition {
                c.token = token;
                return;
            }
        }
        if let Some(old) = st.checks.remove(&id) {
            if let Some(runner) = &old.runner {
                runner.stop();
            }
        }
        let runner = p.spec.map(|spec| {
            CheckRunner::start_counted(
                id.clone(),
                spec,
                p.check.status.clone(),
                self.updates_tx.clone(),
                Some(self.metrics.check_runs.clone()),
            )
        });
        let critical_since = (p.check.status == CRITICAL).then(Instant::now);
        let generation = st.bump();
        st.checks.insert(
            id,
            LocalCheck {
                check: p.check,
                definition: p.definition,
                runner,
                deregister_after: p.deregister_after,
                critical_since,
                in_sync: false,
                generation,
                token,
            },
        );
    }
}
