//! What the check runners report, and what follows from it: the local status changes (the
//! syncer is woken), TTL updates from the application, and deregistering services whose
//! checks stayed critical past `DeregisterCriticalServiceAfter`.
//!
//! Owns: the agent's check-update task. Must not touch: running the checks themselves
//! ([`crate::checks`]).

use super::state::{set_status, unknown_check};
use super::Agent;
use crate::checks::{CheckRunner, CheckUpdate};
use registry_api::Error as ApiError;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often services whose checks stayed critical past `DeregisterCriticalServiceAfter` are
/// looked for. Consul reaps every 30s with a 1 minute minimum; we look every second so the
/// configured time is kept closely.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

impl Agent {
    /// `PUT /v1/agent/check/pass|warn|fail|update/:id`: sets a TTL check's status and output
    /// and restarts its TTL. The local state changes at once (a read right after sees it);
    /// the runner confirms with an update of its own.
    pub fn update_ttl(&self, id: &str, status: &str, output: &str) -> Result<(), ApiError> {
        let mut st = self.lock();
        let check = st.checks.get_mut(id).ok_or_else(|| unknown_check(id))?;
        let runner = check.runner.as_ref().ok_or_else(|| {
            ApiError::BadRequest(format!("CheckID {id:?} does not have associated TTL"))
        })?;
        runner
            .update_ttl(status, output)
            .map_err(ApiError::BadRequest)?;
        if output.len() <= crate::checks::OUTPUT_MAX_SIZE {
            let generation = st.bump();
            if let Some(check) = st.checks.get_mut(id) {
                if set_status(check, status, output) {
                    check.generation = generation;
                    drop(st);
                    self.wake_syncer();
                }
            }
        }
        Ok(())
    }

    /// Records a runner's update; a change of status or output wakes the syncer.
    fn apply_update(&self, update: CheckUpdate) {
        let mut st = self.lock();
        let generation = st.bump();
        let Some(check) = st.checks.get_mut(&update.check_id) else {
            return;
        };
        if set_status(check, &update.status, &update.output) {
            check.generation = generation;
            drop(st);
            self.wake_syncer();
        }
    }

    /// Deregisters services with a check critical for longer than its
    /// `DeregisterCriticalServiceAfter` (Consul's `reapServices`).
    async fn reap_critical_services(&self) {
        let now = Instant::now();
        let doomed: BTreeSet<String> = self
            .lock()
            .checks
            .values()
            .filter(|c| !c.check.service_id.is_empty())
            .filter_map(|c| match (c.deregister_after, c.critical_since) {
                (Some(after), Some(since)) if now.duration_since(since) > after => {
                    Some(c.check.service_id.clone())
                }
                _ => None,
            })
            .collect();
        for service_id in doomed {
            tracing::info!(node = %self.config.node, service = %service_id, "deregistering service whose check stayed critical");
            if let Err(e) = self.deregister_service(&service_id).await {
                tracing::debug!(service = %service_id, error = %e, "reaping failed");
            }
        }
    }

    /// Applies check updates and reaps critical services until `shutdown`; then stops every
    /// check runner and waits for them.
    pub(super) async fn run_check_updates(
        self: Arc<Self>,
        mut updates: mpsc::Receiver<CheckUpdate>,
        shutdown: CancellationToken,
    ) {
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(update) = updates.recv() => self.apply_update(update),
                _ = reap.tick() => self.reap_critical_services().await,
            }
        }
        let runners: Vec<CheckRunner> = self
            .lock()
            .checks
            .values_mut()
            .filter_map(|c| c.runner.take())
            .collect();
        for runner in runners {
            runner.join().await;
        }
    }
}
