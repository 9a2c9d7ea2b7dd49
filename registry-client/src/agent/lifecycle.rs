//! The agent's lifecycle operations (<https://developer.hashicorp.com/consul/api-docs/agent>):
//! reload, a graceful leave, joining a server, and asking the servers to force a failed node
//! out. A server's embedded agent does the server's part of leave and join through
//! [`ServerLifecycle`], which the server installs.
//!
//! - **reload** (`PUT /v1/agent/reload`, `SIGHUP`): the configuration files are read again
//!   and their services added, changed and removed (`config_files`; a broken file fails the
//!   reload with `<file>:<line>:<col>: <reason>` and changes nothing); then every check runner
//!   is restarted from its definition (keeping its status; an interval check runs again
//!   within a second) and a full anti-entropy sync starts at once. Settings other than
//!   services take effect at the next start.
//! - **leave** (`PUT /v1/agent/leave`): syncing and heartbeats stop (an anti-entropy pass in
//!   flight is waited for), the node is deregistered from the catalog through the servers
//!   (its services and checks go with it), then the agent's shutdown token fires: the answer
//!   still goes out (the HTTP server lets answers in flight finish), then the process stops.
//!   If the deregistration fails the agent carries on as before and the caller gets a 500.
//! - **join** (`PUT /v1/agent/join/:address`): the address (a server's RPC address, `:8300`
//!   when no port is given) must answer 2xx to a probe and, when the agent has a shared key,
//!   sign that answer with it ([`crate::servers::ServerPool::probe`]); it is then added to the
//!   server pool (at most [`crate::servers::MAX_JOINED_SERVERS`] joined servers) and a full
//!   sync starts at once. On a server, [`ServerLifecycle::join`] decides instead.
//! - **force-leave** (`PUT /v1/agent/force-leave/:node`): forwarded to the servers, which
//!   decide (`/v1/internal/force-leave/:node`).
//!
//! Owns: the order of these steps on the agent. Must not touch: how a server leaves Raft (its
//! [`ServerLifecycle`]) or how the catalog removes a node.

use super::Agent;
use crate::anti_entropy::encode_segment;
use crate::servers::PoolError;
use http::{Method, StatusCode};
use registry_api::{DeregisterRequest, Error as ApiError};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A boxed future, for [`ServerLifecycle`]'s async step.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The server's part of leave and join, for the agent every server embeds.
pub trait ServerLifecycle: Send + Sync {
    /// Leaves the cluster gracefully: hands leadership over, leaves the Raft configuration
    /// and deregisters the server's node, as far as they apply. The process stops afterwards.
    fn leave(&self) -> BoxFuture<'_, Result<(), ApiError>>;
    /// Greets `addr` (a server's RPC address) as a retry-join target.
    fn join(&self, addr: &str) -> Result<(), ApiError>;
}

/// Consul's server RPC port: what a join address without a port means here (servers answer
/// agents there).
pub const DEFAULT_SERVER_PORT: u16 = 8300;

/// Consul's 500 text for a join that failed (serf's `Failed to join <addr>: <reason>`).
pub fn join_failed(addr: &str, reason: &str) -> ApiError {
    ApiError::Internal(format!("Failed to join {addr}: {reason}"))
}

impl Agent {
    /// Installs the server's part of leave and join (a server's embedded agent); the first
    /// call wins.
    pub fn set_server_lifecycle(&self, lifecycle: Arc<dyn ServerLifecycle>) {
        let _ = self.lifecycle.0.set(lifecycle);
    }

    /// Whether a leave has begun: syncing and heartbeats have stopped.
    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    /// Whether the agent has stopped itself (after a leave) or been stopped.
    pub fn is_stopped(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// `PUT /v1/agent/reload` and `SIGHUP`: see the module docs for what is reloaded.
    pub async fn reload(&self) -> Result<(), ApiError> {
        // Certificates are read and checked first and installed only once the configuration
        // files have been applied: a broken certificate or file fails the reload with the
        // running TLS configuration in place (new connections use new files only if all of
        // them are good). Consul answers a failed reload with a 500 and the reason.
        let tls = match &self.config.tls {
            Some(tls) => Some((
                tls,
                tls.prepare_reload()
                    .map_err(|e| ApiError::Internal(format!("Failed reloading TLS: {e}")))?,
            )),
            None => None,
        };
        let files = self
            .apply_config_files()
            .await
            .map_err(|e| ApiError::Internal(format!("Failed reloading config: {e}")))?;
        if let Some((tls, prepared)) = tls {
            tls.install(prepared);
            tracing::info!(node = %self.config.node, "TLS certificates reloaded");
        }
        let restarted = {
            let mut st = self.lock();
            let ids: Vec<String> = st
                .checks
                .iter()
                .filter(|(_, c)| c.runner.is_some())
                .map(|(id, _)| id.clone())
                .collect();
            let mut restarted = 0usize;
            for id in ids {
                let Some(check) = st.checks.get_mut(&id) else {
                    continue;
                };
                // The definition was valid when registered; a parse that fails now keeps
                // the running check rather than dropping it.
                let spec = match self.prepare_check(check.definition.clone()) {
                    Ok(prepared) => prepared.spec,
                    Err(e) => {
                        tracing::warn!(node = %self.config.node, check = %id, error = %e, "reload: check kept as it runs");
                        continue;
                    }
                };
                if let Some(spec) = spec {
                    if let Some(old) = check.runner.take() {
                        old.stop();
                    }
                    check.runner = Some(crate::checks::CheckRunner::start_counted(
                        id.clone(),
                        spec,
                        check.check.status.clone(),
                        self.updates_tx.clone(),
                        Some(self.metrics.check_runs.clone()),
                    ));
                    restarted += 1;
                }
            }
            restarted
        };
        self.request_full_sync();
        tracing::info!(
            node = %self.config.node,
            checks = restarted,
            added = files.added.len(),
            changed = files.changed.len(),
            removed = files.removed.len(),
            "reloaded: check runners restarted from their definitions, full anti-entropy sync started"
        );
        Ok(())
    }

    /// `PUT /v1/agent/leave`: see the module docs.
    pub async fn leave(&self) -> Result<(), ApiError> {
        self.leaving.store(true, Ordering::SeqCst);
        // An anti-entropy pass in flight could re-register the node after it is gone.
        let gate = self.sync_gate.lock().await;
        tracing::info!(node = %self.config.node, "leaving the cluster");
        let result = match self.lifecycle.0.get() {
            Some(server) => server.leave().await,
            None => self.deregister_node().await,
        };
        drop(gate);
        if let Err(e) = result {
            self.leaving.store(false, Ordering::SeqCst);
            self.request_full_sync();
            tracing::warn!(node = %self.config.node, error = %e, "leave failed; the agent carries on");
            return Err(e);
        }
        tracing::info!(node = %self.config.node, "left the cluster; stopping");
        self.shutdown.cancel();
        Ok(())
    }

    /// Removes this node, its services and its checks from the catalog.
    async fn deregister_node(&self) -> Result<(), ApiError> {
        let req = DeregisterRequest {
            node: self.config.node.clone(),
            ..Default::default()
        };
        self.servers
            .put_json_as(
                "/v1/catalog/deregister",
                &req,
                self.agent_token().as_deref(),
            )
            .await
            .map_err(|e| ApiError::Internal(format!("failed to leave the cluster: {e}")))
    }

    /// `PUT /v1/agent/join/:address` (the LAN; `?wan` is refused by the handler). On a
    /// server, its [`ServerLifecycle::join`] judges the address.
    pub async fn join(&self, addr: &str) -> Result<(), ApiError> {
        if let Some(server) = self.lifecycle.0.get() {
            return server.join(addr);
        }
        let addr = registry_api::names::join_addr(addr, DEFAULT_SERVER_PORT)
            .map_err(|e| join_failed(addr, &e.to_string()))?;
        self.servers
            .probe(&addr)
            .await
            .map_err(|e| join_failed(&addr, &e.to_string()))?;
        let added = self
            .servers
            .add_server(&addr)
            .map_err(|e| join_failed(&addr, &e.to_string()))?;
        tracing::info!(node = %self.config.node, server = %addr, added, "joined a server");
        self.request_full_sync();
        Ok(())
    }

    /// `PUT /v1/agent/force-leave/:node[?prune]`: the servers' answer, passed back. `token`
    /// is the request's: the servers judge it too (`operator:write`).
    pub async fn force_leave(
        &self,
        node: &str,
        prune: bool,
        token: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut path = format!("/v1/internal/force-leave/{}", encode_segment(node));
        if prune {
            path.push_str("?prune");
        }
        let resp = self
            .servers
            .send(
                Method::PUT,
                &path,
                crate::servers::token_headers(token),
                Default::default(),
            )
            .await
            .map_err(|e: PoolError| ApiError::Internal(e.to_string()))?;
        if resp.status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&resp.body).into_owned();
        Err(match resp.status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(text),
            StatusCode::FORBIDDEN => ApiError::Forbidden(text),
            StatusCode::NOT_FOUND => ApiError::NotFound(text),
            _ => ApiError::Internal(text),
        })
    }

    /// Starts a full anti-entropy sync now (the syncer also leaves a retry back-off for it).
    pub(crate) fn request_full_sync(&self) {
        self.full_sync_now.notify_one();
    }

    /// Waits until a full sync is asked for (for the syncer).
    pub(crate) async fn full_sync_requested(&self) {
        self.full_sync_now.notified().await
    }
}
