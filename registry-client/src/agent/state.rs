//! The agent's local state: services and checks, with the sync flags the anti-entropy syncer
//! reads, and the rules every change follows (status changes, removals, what the catalog
//! would refuse).
//!
//! Owns: the data and the pure functions over it. Must not touch: I/O (no files, no network,
//! no task): callers hold the agent's lock around these and persist afterwards.

use super::maintenance::is_maintenance;
use crate::checks::{CheckRunner, CheckSpec};
use registry_api::{
    AgentService, CheckRegistration, Error as ApiError, HealthCheck, CRITICAL, PASSING, WARNING,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// The local state. Every entry carries an `in_sync` flag (does the catalog match it?) and a
/// `generation` that changes with it, so the syncer marks an entry in sync only if it did not
/// change while the sync was in flight (Consul's `local.State` does the same with `InSync`).
#[derive(Debug, Default)]
pub(crate) struct LocalState {
    /// Services by instance id.
    pub(crate) services: BTreeMap<String, LocalService>,
    /// Checks by check id.
    pub(crate) checks: BTreeMap<String, LocalCheck>,
    /// Services removed locally that the catalog may still hold.
    pub(crate) deleted_services: BTreeSet<String>,
    /// Checks removed locally that the catalog may still hold.
    pub(crate) deleted_checks: BTreeSet<String>,
    /// The tokens of removed services that had one, by instance id: their deregistration
    /// carries it (in memory only; after a restart the agent token removes them).
    pub(crate) deleted_service_tokens: BTreeMap<String, String>,
    /// The tokens of removed checks that had one, by check id.
    pub(crate) deleted_check_tokens: BTreeMap<String, String>,
    /// Whether the catalog's node entry matches this agent.
    pub(crate) node_in_sync: bool,
    /// Services defined in configuration files, by instance id, as last applied: a reload
    /// adds, changes and removes these only, and they are not persisted (the files are their
    /// record, as in Consul).
    pub(crate) file_services: BTreeMap<String, registry_api::ServiceRegistration>,
    /// Source of generations.
    next_generation: u64,
}

impl LocalState {
    /// A fresh generation number.
    pub(super) fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// A local service.
#[derive(Debug)]
pub(crate) struct LocalService {
    /// The instance as registered (indexes zero).
    pub(crate) service: AgentService,
    /// Whether the catalog holds exactly this.
    pub(crate) in_sync: bool,
    /// Changes whenever the service changes.
    pub(crate) generation: u64,
    /// The token it was registered with, which its syncs carry (Consul keeps one per local
    /// service); `None`: the agent's token. Never logged.
    pub(crate) token: Option<String>,
}

/// A local check.
#[derive(Debug)]
pub(crate) struct LocalCheck {
    /// Current state: definition fields plus status and output.
    pub(crate) check: HealthCheck,
    /// The definition as registered (normalised: `CheckID`, `Name`, `ServiceID` filled in).
    pub(super) definition: CheckRegistration,
    /// The running check; `None` for maintenance checks, which nothing runs.
    pub(super) runner: Option<CheckRunner>,
    /// `DeregisterCriticalServiceAfter`.
    pub(super) deregister_after: Option<Duration>,
    /// Since when the check is critical.
    pub(super) critical_since: Option<Instant>,
    /// Whether the catalog holds exactly this.
    pub(crate) in_sync: bool,
    /// Changes whenever the check changes.
    pub(crate) generation: u64,
    /// The token it was registered with. A node check's syncs carry it (`None`: the agent's
    /// token); a service's checks travel with their service, under the service's token.
    pub(crate) token: Option<String>,
}

/// A check definition validated and ready to install.
#[derive(Debug)]
pub(super) struct PreparedCheck {
    /// Initial state.
    pub(super) check: HealthCheck,
    /// Normalised definition, as persisted.
    pub(super) definition: CheckRegistration,
    /// What to run; `None` for maintenance checks.
    pub(super) spec: Option<CheckSpec>,
    /// `DeregisterCriticalServiceAfter`.
    pub(super) deregister_after: Option<Duration>,
}

/// Sets a check's status and output; returns whether anything changed (then the check is
/// out of sync with the catalog).
pub(super) fn set_status(check: &mut LocalCheck, status: &str, output: &str) -> bool {
    if check.check.status == status && check.check.output == output {
        return false;
    }
    if status == CRITICAL {
        check.critical_since.get_or_insert_with(Instant::now);
    } else {
        check.critical_since = None;
    }
    check.check.status = status.to_owned();
    check.check.output = output.to_owned();
    check.in_sync = false;
    true
}

/// Removes a check; returns whether it existed.
pub(super) fn remove_check(st: &mut LocalState, id: &str) -> bool {
    let Some(check) = st.checks.remove(id) else {
        return false;
    };
    if let Some(runner) = &check.runner {
        runner.stop();
    }
    st.deleted_checks.insert(id.to_owned());
    match check.token {
        Some(token) => st.deleted_check_tokens.insert(id.to_owned(), token),
        None => st.deleted_check_tokens.remove(id),
    };
    true
}

/// Removes a service and its checks; returns whether it existed. The catalog drops a
/// service's checks with it, so only the service needs deregistering there.
pub(super) fn remove_service(st: &mut LocalState, id: &str) -> bool {
    let Some(service) = st.services.remove(id) else {
        return false;
    };
    match service.token {
        Some(token) => st.deleted_service_tokens.insert(id.to_owned(), token),
        None => st.deleted_service_tokens.remove(id),
    };
    let owned: Vec<String> = st
        .checks
        .values()
        .filter(|c| c.check.service_id == id)
        .map(|c| c.check.check_id.clone())
        .collect();
    for check_id in owned {
        if let Some(check) = st.checks.remove(&check_id) {
            if let Some(runner) = &check.runner {
                runner.stop();
            }
        }
        st.deleted_checks.remove(&check_id);
        st.deleted_check_tokens.remove(&check_id);
    }
    st.deleted_services.insert(id.to_owned());
    true
}

/// A check with `ServiceName` and `ServiceTags` of its service, as the agent reports it.
pub(crate) fn filled_check(st: &LocalState, check: &HealthCheck) -> HealthCheck {
    let mut out = check.clone();
    if let Some(s) = st.services.get(&check.service_id) {
        out.service_name = s.service.service.clone();
        out.service_tags = s.service.tags.clone();
    }
    out
}

/// Consul's aggregated status: `maintenance` when a maintenance check is present, else the
/// worst status (`passing` with no checks).
pub(super) fn aggregated_status(checks: &[HealthCheck]) -> String {
    if checks.iter().any(|c| is_maintenance(&c.check_id)) {
        return "maintenance".into();
    }
    let worst = checks
        .iter()
        .map(|c| match c.status.as_str() {
            PASSING => 0,
            WARNING => 1,
            _ => 2,
        })
        .max()
        .unwrap_or(0);
    [PASSING, WARNING, CRITICAL][worst].into()
}

/// The catalog keys rows by these names (separated by NUL, at most 512
/// bytes): anything it would refuse is refused here at registration, rather
/// than blocking anti-entropy later.
pub(super) fn key_part(what: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{what} {value:?} contains an invalid character"));
    }
    if value.len() > 512 {
        return Err(format!("{what} is longer than 512 bytes"));
    }
    Ok(())
}

/// Consul's 404 text for an unknown check.
pub(super) fn unknown_check(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::NODE_MAINTENANCE_ID;

    fn check(id: &str, status: &str) -> HealthCheck {
        HealthCheck {
            check_id: id.into(),
            status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn aggregated_status_is_the_worst_or_maintenance() {
        assert_eq!(aggregated_status(&[]), PASSING);
        assert_eq!(
            aggregated_status(&[check("a", PASSING), check("b", WARNING)]),
            WARNING
        );
        assert_eq!(
            aggregated_status(&[check("a", CRITICAL), check("b", WARNING)]),
            CRITICAL
        );
        assert_eq!(
            aggregated_status(&[check("a", PASSING), check(NODE_MAINTENANCE_ID, CRITICAL)]),
            "maintenance"
        );
    }
}
