//! Anti-entropy: keeps the catalog's view of this node equal to the agent's local state.
//!
//! An explicit state machine after Consul's `agent/ae/ae.go`
//! (<https://developer.hashicorp.com/consul/docs/architecture/anti-entropy>):
//!
//! - **FullSync**: read what the catalog holds for this node, mark every local entry that
//!   differs (or is missing) out of sync, note catalog entries the agent does not know for
//!   removal, then push the differences. Runs at start, every `sync_interval` (plus up to 1/8
//!   of random jitter, so agents spread their load), and after any failure.
//! - **PartialSync**: wait for a local change (or the next full sync, or shutdown) and push
//!   only what is out of sync.
//! - **Retry**: after a failure (servers unreachable, no leader), wait with a doubling backoff
//!   and go back to FullSync: a full sync also repairs a catalog that lost our entries.
//!
//! A reload or a join asks for a full sync at once (from PartialSync or Retry). Each pass
//! holds the agent's sync gate and does nothing once a leave has begun, so that no pass
//! re-registers a node that is leaving.
//!
//! With ACLs, each write carries a token, as Consul's `agent/local/state.go` does: the node
//! (and the node checks registered without a token) with the agent's token, each service
//! (with its checks) with the token it was registered with, falling back to the agent's; a
//! service's write does not touch the node (`SkipNodeUpdate`), so a service's token needs no
//! `node:write`. The catalog's refusal of one entry (a 403) is logged and the others go on.
//!
//! The `serfHealth` check belongs to the servers and is never removed. Entries are compared
//! without `CreateIndex`/`ModifyIndex`, so a catalog that is in sync causes no writes.
//!
//! Owns: the syncer's states and the comparison with the catalog. Must not touch: the local
//! state's rules (it only reads the state and sets the sync flags) or failover (the pool's).

use crate::agent::{Agent, LocalState};
use crate::servers::{PoolError, ServerPool};
use rand::Rng;
use registry_api::{
    AgentService, DeregisterRequest, HealthCheck, NodeServiceList, RegisterRequest, SERF_HEALTH_ID,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// First wait after a failed sync.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The syncer's states (Consul's `ae.go` has the same three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    /// Compare with the catalog and push every difference.
    FullSync,
    /// Push local changes as they happen.
    PartialSync,
    /// Wait before the next full sync after a failure.
    Retry,
}

/// The anti-entropy syncer of one agent.
pub struct AntiEntropy {
    /// The agent whose state is pushed.
    agent: Arc<Agent>,
    /// Wait before the next retry; doubles up to [`RETRY_MAX`].
    backoff: Duration,
}

/// One write the syncer makes, with the generations of the entries it carries so that only
/// entries unchanged since are marked in sync afterwards, and the token it carries (Consul
/// syncs each local service with the token it was registered with, and the node with the
/// agent's: `agent/local/state.go`). `None`: the agent's token, read when it is sent.
enum Write {
    /// Register the node with its node-level checks, or one service and its checks (then
    /// without changing the node: `SkipNodeUpdate`, so that a service's token needs no
    /// `node:write`).
    Register {
        /// The body (boxed: it is much larger than the other variants).
        request: Box<RegisterRequest>,
        /// Service carried, with its generation.
        service: Option<(String, u64)>,
        /// Checks carried, with their generations.
        checks: Vec<(String, u64)>,
        /// The token sent.
        token: Option<String>,
    },
    /// Remove a service (with its checks) from the catalog, with its token.
    DeregisterService(String, Option<String>),
    /// Remove a check from the catalog, with its token.
    DeregisterCheck(String, Option<String>),
}

impl AntiEntropy {
    /// A syncer for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        let backoff = retry_min(&agent);
        AntiEntropy { agent, backoff }
    }

    /// Runs the state machine until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut state = SyncState::FullSync;
        let mut next_full = tokio::time::Instant::now();
        loop {
            state = match state {
                SyncState::FullSync => {
                    let result = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = self.full_sync() => r,
                    };
                    match result {
                        Ok(()) => {
                            self.backoff = retry_min(&self.agent);
                            next_full = tokio::time::Instant::now() + self.full_sync_delay();
                            SyncState::PartialSync
                        }
                        Err(e) => {
                            tracing::warn!(node = %self.agent.config().node, error = %e, "anti-entropy full sync failed");
                            SyncState::Retry
                        }
                    }
                }
                SyncState::Retry => {
                    let wait = self.backoff;
                    self.backoff = (self.backoff * 2).min(retry_max(&self.agent));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => SyncState::FullSync,
                        _ = self.agent.full_sync_requested() => SyncState::FullSync,
                    }
                }
                SyncState::PartialSync => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(next_full) => SyncState::FullSync,
                        _ = self.agent.full_sync_requested() => SyncState::FullSync,
                        _ = self.agent.changed() => {
                            let result = tokio::select! {
                                _ = shutdown.cancelled() => return,
                                r = self.sync_changes() => r,
                            };
                            match result {
                                Ok(()) => SyncState::PartialSync,
                                Err(e) => {
                                    tracing::warn!(node = %self.agent.config().node, error = %e, "anti-entropy sync of changes failed");
                                    SyncState::Retry
                                }
                            }
                        }
                    }
                }
            };
        }
    }

    /// `sync_interval` plus up to 1/8 of it at random (Consul scales and staggers the same
    /// way so that agents do not all sync at once).
    fn full_sync_delay(&self) -> Duration {
        let interval = self.agent.config().sync_interval;
        let jitter_ms = (interval.as_millis() / 8) as u64;
        let jitter = if jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_ms)
        };
        interval + Duration::from_millis(jitter)
    }

    /// Reads the catalog's view of this node, marks differences, then pushes them.
    async fn full_sync(&self) -> Result<(), PoolError> {
        let _pass = self.agent.sync_pass().await;
        if self.agent.is_leaving() {
            return Ok(());
        }
        let node = &self.agent.config().node;
        let servers = self.agent.servers();
        let path = encode_segment(node);
        let token = self.agent.agent_token();
        let remote: Option<NodeServiceList> = servers
            .get_json_as(
                &format!("/v1/catalog/node-services/{path}"),
                token.as_deref(),
            )
            .await?;
        let remote_checks: Vec<HealthCheck> = servers
            .get_json_as(&format!("/v1/health/node/{path}"), token.as_deref())
            .await?;
        {
            let mut st = self.agent.lock();
            mark_differences(&mut st, self.agent.config(), remote, remote_checks);
        }
        self.push().await
    }

    /// Pushes every out-of-sync entry and pending removal.
    async fn sync_changes(&self) -> Result<(), PoolError> {
        let _pass = self.agent.sync_pass().await;
        if self.agent.is_leaving() {
            return Ok(());
        }
        self.push().await
    }

    /// [`AntiEntropy::sync_changes`] without the gate (the caller holds it).
    async fn push(&self) -> Result<(), PoolError> {
        let writes = {
            let st = self.agent.lock();
            plan_writes(&st, self.agent.config())
        };
        let servers: &ServerPool = self.agent.servers();
        let config = self.agent.config();
        // The agent's token, read once per pass (`PUT /v1/agent/token/agent` changes it).
        let agent_token = self.agent.agent_token();
        let token_for = |t: &Option<String>| t.clone().or_else(|| agent_token.clone());
        for write in writes {
            match write {
                Write::DeregisterService(id, token) => {
                    let req = DeregisterRequest {
                        node: config.node.clone(),
                        service_id: id.clone(),
                        ..Default::default()
                    };
                    let sent = servers
                        .put_json_as("/v1/catalog/deregister", &req, token_for(&token).as_deref())
                        .await;
                    if deregistered(sent, config, "a service's deregistration")? {
                        tracing::info!(node = %config.node, service = %id, "deregistered service from the catalog");
                    }
                    let mut st = self.agent.lock();
                    st.deleted_services.remove(&id);
                    st.deleted_service_tokens.remove(&id);
                }
                Write::DeregisterCheck(id, token) => {
                    let req = DeregisterRequest {
                        node: config.node.clone(),
                        check_id: id.clone(),
                        ..Default::default()
                    };
                    let sent = servers
                        .put_json_as("/v1/catalog/deregister", &req, token_for(&token).as_deref())
                        .await;
                    if deregistered(sent, config, "a check's deregistration")? {
                        tracing::info!(node = %config.node, check = %id, "deregistered check from the catalog");
                    }
                    let mut st = self.agent.lock();
                    st.deleted_checks.remove(&id);
                    st.deleted_check_tokens.remove(&id);
                }
                Write::Register {
                    request,
                    service,
                    checks,
                    token,
                } => {
                    let sent = servers
                        .put_json_as(
                            "/v1/catalog/register",
                            &request,
                            token_for(&token).as_deref(),
                        )
                        .await;
                    match sent {
                        // The catalog refused this one entry (Consul logs and
                        // goes on): others must still sync.
                        Err(PoolError::Status { status, body }) if status.is_client_error() => {
                            tracing::warn!(node = %config.node, %status, reason = %body, "catalog refused an entry; skipping it");
                            continue;
                        }
                        r => r?,
                    }
                    tracing::debug!(
                        node = %config.node,
                        service = ?service.as_ref().map(|s| &s.0),
                        checks = checks.len(),
                        "synced to the catalog"
                    );
                    let mut st = self.agent.lock();
                    if !request.skip_node_update {
                        st.node_in_sync = true;
                    }
                    if let Some((id, generation)) = service {
                        if let Some(s) = st.services.get_mut(&id) {
                            if s.generation == generation {
                                s.in_sync = true;
                            }
                        }
                    }
                    for (id, generation) in checks {
                        if let Some(c) = st.checks.get_mut(&id) {
                            if c.generation == generation {
                                c.in_sync = true;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A deregistration's outcome: `Ok(true)` done, `Ok(false)` refused by the catalog (a 4xx,
/// such as a token without the right: logged and given up, as Consul gives up a denied
/// removal, so that one entry cannot hold up the others), `Err` for the syncer to retry.
fn deregistered(
    sent: Result<(), PoolError>,
    config: &crate::agent::AgentConfig,
    what: &str,
) -> Result<bool, PoolError> {
    match sent {
        Ok(()) => Ok(true),
        Err(PoolError::Status { status, body }) if status.is_client_error() => {
            tracing::warn!(node = %config.node, %status, reason = %body, "catalog refused {what}; giving it up");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// First retry wait: [`RETRY_MIN`], shorter when the sync interval is (tests use short ones).
fn retry_min(agent: &Agent) -> Duration {
    RETRY_MIN
        .min(agent.config().sync_interval)
        .max(Duration::from_millis(10))
}

/// Longest retry wait: [`RETRY_MAX`], or the sync interval when that is shorter.
fn retry_max(agent: &Agent) -> Duration {
    RETRY_MAX
        .min(agent.config().sync_interval)
        .max(retry_min(agent))
}

/// A node name as one URL path segment.
pub(crate) fn encode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Compares local state with the catalog's entries for this node: local entries that differ
/// or are missing become out of sync, catalog entries unknown locally are marked for removal.
fn mark_differences(
    st: &mut LocalState,
    config: &crate::agent::AgentConfig,
    remote: Option<NodeServiceList>,
    remote_checks: Vec<HealthCheck>,
) {
    let (node, remote_services) = match remote {
        Some(list) => (Some(list.node), list.services),
        None => (None, Vec::new()),
    };
    st.node_in_sync = node.is_some_and(|n| {
        !n.node.is_empty()
            && n.address == config.advertise_addr
            && (config.node_id.is_empty() || n.id == config.node_id)
    });

    let remote_services: BTreeMap<String, AgentService> = remote_services
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    for (id, local) in st.services.iter_mut() {
        local.in_sync = remote_services
            .get(id)
            .is_some_and(|r| same_service(&local.service, r));
    }
    let unknown_services: Vec<String> = remote_services
        .keys()
        // The servers' own `consul` service is kept by their leader, not by
        // the agent (Consul's `structs.ConsulServiceID` is skipped the same way).
        .filter(|id| id.as_str() != "consul")
        .filter(|id| !st.services.contains_key(*id))
        .cloned()
        .collect();
    st.deleted_services.extend(unknown_services);

    let remote_checks: BTreeMap<String, HealthCheck> = remote_checks
        .into_iter()
        .map(|c| (c.check_id.clone(), c))
        .collect();
    for (id, local) in st.checks.iter_mut() {
        local.in_sync = remote_checks
            .get(id)
            .is_some_and(|r| same_check(&local.check, r));
    }
    let unknown_checks: Vec<String> = remote_checks
        .values()
        // serfHealth is the servers' own check of this node (Consul's `structs.IsSerfCheck`).
        .filter(|c| c.check_id != SERF_HEALTH_ID)
        .filter(|c| !st.checks.contains_key(&c.check_id))
        // The checks of a service being removed go with it.
        .filter(|c| c.service_id.is_empty() || !st.deleted_services.contains(&c.service_id))
        .map(|c| c.check_id.clone())
        .collect();
    st.deleted_checks.extend(unknown_checks);
}

/// The writes that bring the catalog in line: removals first, then the node with the
/// node-level checks that sync with the agent's token, then one register per service that is
/// out of sync (or has a check that is), then the node-level checks registered with tokens of
/// their own, one register per token.
fn plan_writes(st: &LocalState, config: &crate::agent::AgentConfig) -> Vec<Write> {
    let mut writes: Vec<Write> = Vec::new();
    writes.extend(st.deleted_services.iter().map(|id| {
        Write::DeregisterService(id.clone(), st.deleted_service_tokens.get(id).cloned())
    }));
    writes.extend(
        st.deleted_checks
            .iter()
            .filter(|id| !st.checks.contains_key(*id))
            .map(|id| Write::DeregisterCheck(id.clone(), st.deleted_check_tokens.get(id).cloned())),
    );
    let node_request = |skip_node_update: bool| RegisterRequest {
        id: config.node_id.clone(),
        node: config.node.clone(),
        address: config.advertise_addr.clone(),
        datacenter: config.datacenter.clone(),
        skip_node_update,
        ..Default::default()
    };
    // Node-level checks by the token they sync with (`None`: the agent's).
    let mut node_checks: BTreeMap<Option<&String>, Vec<&crate::agent::LocalCheck>> =
        BTreeMap::new();
    for c in st.checks.values().filter(|c| c.check.service_id.is_empty()) {
        node_checks.entry(c.token.as_ref()).or_default().push(c);
    }
    let agent_checks = node_checks.remove(&None).unwrap_or_default();
    if !st.node_in_sync || agent_checks.iter().any(|c| !c.in_sync) {
        let mut request = node_request(false);
        request.checks = agent_checks.iter().map(|c| wire_check(&c.check)).collect();
        writes.push(Write::Register {
            request: Box::new(request),
            service: None,
            checks: generations(&agent_checks),
            token: None,
        });
    }
    for (id, local) in &st.services {
        let checks: Vec<_> = st
            .checks
            .values()
            .filter(|c| &c.check.service_id == id)
            .collect();
        if local.in_sync && checks.iter().all(|c| c.in_sync) {
            continue;
        }
        let mut request = node_request(true);
        request.service = Some(local.service.clone());
        request.checks = checks.iter().map(|c| wire_check(&c.check)).collect();
        writes.push(Write::Register {
            request: Box::new(request),
            service: Some((id.clone(), local.generation)),
            checks: generations(&checks),
            token: local.token.clone(),
        });
    }
    for (token, checks) in node_checks {
        if checks.iter().all(|c| c.in_sync) {
            continue;
        }
        let mut request = node_request(true);
        request.checks = checks.iter().map(|c| wire_check(&c.check)).collect();
        writes.push(Write::Register {
            request: Box::new(request),
            service: None,
            checks: generations(&checks),
            token: token.cloned(),
        });
    }
    writes
}

/// The ids and generations of `checks`.
fn generations(checks: &[&crate::agent::LocalCheck]) -> Vec<(String, u64)> {
    checks
        .iter()
        .map(|c| (c.check.check_id.clone(), c.generation))
        .collect()
}

/// A check as sent to the catalog (the catalog fills in the service's name and tags).
fn wire_check(check: &HealthCheck) -> HealthCheck {
    HealthCheck {
        service_name: String::new(),
        service_tags: Vec::new(),
        create_index: 0,
        modify_index: 0,
        ..check.clone()
    }
}

/// Whether the catalog's instance equals the local one, indexes aside.
fn same_service(local: &AgentService, remote: &AgentService) -> bool {
    local.id == remote.id
        && local.service == remote.service
        && local.tags == remote.tags
        && local.address == remote.address
        && local.meta == remote.meta
        && local.port == remote.port
        && local.enable_tag_override == remote.enable_tag_override
        && local.kind == remote.kind
        && local.tagged_addresses == remote.tagged_addresses
        && local.weights == remote.weights
        && local.proxy == remote.proxy
        && local.connect == remote.connect
}

/// Whether the catalog's check equals the local one, in the fields the agent owns (Consul's
/// `HealthCheck.IsSame`); indexes and the catalog-filled service name and tags aside.
fn same_check(local: &HealthCheck, remote: &HealthCheck) -> bool {
    local.check_id == remote.check_id
        && local.name == remote.name
        && local.status == remote.status
        && local.notes == remote.notes
        && local.output == remote.output
        && local.service_id == remote.service_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_ignores_indexes_and_catalog_filled_fields() {
        let local = HealthCheck {
            check_id: "c".into(),
            status: "passing".into(),
            ..Default::default()
        };
        let remote = HealthCheck {
            create_index: 4,
            modify_index: 9,
            service_name: "web".into(),
            ..local.clone()
        };
        assert!(same_check(&local, &remote));
        let changed = HealthCheck {
            status: "critical".into(),
            ..remote
        };
        assert!(!same_check(&local, &changed));
        let svc = AgentService {
            id: "a".into(),
            ..Default::default()
        };
        let remote_svc = AgentService {
            modify_index: 3,
            ..svc.clone()
        };
        assert!(same_service(&svc, &remote_svc));
    }

    #[test]
    fn node_names_are_escaped_in_paths() {
        assert_eq!(encode_segment("node 1/x"), "node%201%2Fx");
    }
}
