//! A server's part of the agent's lifecycle endpoints
//! (<https://developer.hashicorp.com/consul/api-docs/agent>): the graceful leave and the join
//! its embedded agent delegates here ([`ServerMembership`]), and the force-leave every agent
//! forwards to the servers ([`force_leave`], served at `/v1/internal/force-leave/:node`).
//!
//! **Leave**, after Consul's `Server.Leave`: a leader first hands leadership over; then the
//! server asks the leader (on its HTTP port, the operator peer-removal path) to remove it from
//! the Raft configuration, and has the leader deregister its node. A server that leaves the
//! configuration never sees the commit of its own removal, so both requests go to the leader
//! rather than through its own Raft node. The only server of a cluster leaves without changing
//! the configuration, as Consul's does (`isLeader && numPeers > 1`): its data dir still holds a
//! working cluster of one, and nothing else could commit its removal anyway.
//!
//! **Force-leave**, after Consul's `Server.RemoveFailedNode` and serf's `forceLeave`: a member
//! (a node with an agent's `serfHealth`, or a server of the configuration) whose `serfHealth`
//! is critical is moved out at once: a server leaves the Raft configuration first, then the
//! node is deregistered with its services and checks (Consul's leader reaps a `left` member
//! the same way). A member that is alive stays: serf marks it leaving and the node refutes it,
//! so Consul's force-leave changes nothing there either. `?prune` makes no difference here:
//! it only drops the `left` entry from serf's member list at once, and membership here is the
//! catalog, which loses the node either way. Anything else is Consul's
//! `agent: No node found with name '<node>'` (500).
//!
//! Owns: the order of these steps on a server. Must not touch: Raft's internals (only
//! [`RaftHandle`]) or the agent's side of them (`registry_client::agent`).

use crate::leader_client::{call_leader, hand_over_leadership};
use crate::raft::{RaftHandle, RaftStatus, Role};
use crate::state::{CatalogState, Command};
use axum::http::Method;
use registry_api::{DeregisterRequest, Error as ApiError, CRITICAL, SERF_HEALTH_ID};
use registry_client::{BoxFuture, ServerLifecycle};
use std::time::{Duration, Instant};
use tracing::info;

/// What a server's embedded agent asks of the server for leave and join.
pub struct ServerMembership {
    /// The server's Raft node.
    pub raft: RaftHandle,
    /// The server's node name.
    pub node: String,
    /// Whether servers reach each other by TCP (addresses are `HOST:PORT`); the in-memory
    /// network of tests names servers freely.
    pub tcp: bool,
    /// The addresses joins added to the retry-join targets, at most [`MAX_JOINS`]. A std
    /// lock, held only to look and insert.
    pub joined: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Most addresses `PUT /v1/agent/join` adds to a server's retry-join targets: each is
/// greeted every `hello_interval` for as long as the server runs, so joins must not grow the
/// list without end.
pub const MAX_JOINS: usize = 64;

impl ServerLifecycle for ServerMembership {
    fn leave(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(self.leave_cluster())
    }

    fn join(&self, addr: &str) -> Result<(), ApiError> {
        let addr = if self.tcp {
            registry_api::names::join_addr(addr, registry_client::agent::DEFAULT_SERVER_PORT)
                .map_err(|e| registry_client::agent::join_failed(addr, &e.to_string()))?
        } else if addr.trim().is_empty() {
            return Err(registry_client::agent::join_failed(addr, "empty address"));
        } else {
            addr.trim().to_string()
        };
        {
            let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
            if !joined.contains(&addr) {
                if joined.len() >= MAX_JOINS {
                    return Err(registry_client::agent::join_failed(
                        &addr,
                        &format!(
                            "this server already greets {MAX_JOINS} addresses added by joins, \
                             the most it keeps; give the right ones with --retry-join and restart it"
                        ),
                    ));
                }
                self.raft.add_retry_join(addr.clone())?;
                joined.insert(addr.clone());
            }
        }
        info!(node = %self.node, target = %addr, "joining: greeting the address as a retry-join target");
        Ok(())
    }
}

impl ServerMembership {
    /// See the module docs.
    async fn leave_cluster(&self) -> Result<(), ApiError> {
        let s = self.raft.status();
        if !s.in_cluster {
            info!(node = %self.node, "leaving: not in a cluster, nothing to leave");
            return Ok(());
        }
        if s.voters.len() + s.learners.len() <= 1 {
            info!(node = %self.node, "leaving: the only server keeps its Raft configuration");
            return Ok(());
        }
        if s.role == Role::Leader {
            info!(node = %self.node, "leaving: handing leadership over first");
            hand_over_leadership(&self.raft, None).await?;
        }
        let me = s.id;
        let remove = format!("/v1/operator/raft/peer?id={me:016x}");
        self.ask_leader(Method::DELETE, &remove, None).await?;
        info!(node = %self.node, "leaving: removed from the Raft configuration");
        let body = serde_json::to_vec(&DeregisterRequest {
            node: self.node.clone(),
            ..Default::default()
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.ask_leader(Method::PUT, "/v1/catalog/deregister", Some(body))
            .await?;
        info!(node = %self.node, "leaving: node deregistered");
        Ok(())
    }

    /// Sends a request to the current leader (another server), retrying while there is none
    /// or a configuration change is in flight, for at most the write timeout.
    async fn ask_leader(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(), ApiError> {
        let tuning = self.raft.tuning();
        let deadline = Instant::now() + tuning.propose_timeout;
        loop {
            let s: RaftStatus = self.raft.status();
            let outcome = match call_leader(&s, method.clone(), path, body.clone()).await {
                Ok(a) if a.status.is_success() => return Ok(()),
                Ok(a) => {
                    let refused = ApiError::Internal(format!(
                        "the leader answered {} to {method} {path}: {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    ));
                    // A refusal is final; a server error (no leader yet, a configuration
                    // change in flight) may pass.
                    if a.status.is_client_error() {
                        return Err(refused);
                    }
                    Err(refused)
                }
                Err(e) => Err(e),
            };
            if Instant::now() >= deadline {
                return outcome;
            }
            tokio::time::sleep(tuning.tick.max(Duration::from_millis(10))).await;
        }
    }
}

/// `/v1/internal/force-leave/:node[?prune]` (every agent's `PUT /v1/agent/force-leave/:node`):
/// see the module docs.
pub async fn force_leave(raft: &RaftHandle, node: &str, prune: bool) -> Result<(), ApiError> {
    let serf = raft.with_applied(|state, _| {
        state
            .catalog
            .check_status(node, SERF_HEALTH_ID)
            .map(str::to_owned)
    });
    let server = raft.with_status(|s| {
        s.peers
            .values()
            .find(|p| p.node == node && (s.voters.contains(&p.id) || s.learners.contains(&p.id)))
            .map(|p| p.id)
    });
    if serf.is_none() && server.is_none() {
        return Err(ApiError::Internal(format!(
            "agent: No node found with name '{node}'"
        )));
    }
    if serf.as_deref() != Some(CRITICAL) {
        info!(%node, prune, "force-leave: the node is alive and stays (it would refute the leave)");
        return Ok(());
    }
    if let Some(id) = server {
        raft.remove_peer(id).await?;
        info!(%node, id, "force-leave: failed server removed from the Raft configuration");
    }
    let req = DeregisterRequest {
        node: node.to_string(),
        ..Default::default()
    };
    CatalogState::validate_deregister(&req).map_err(ApiError::BadRequest)?;
    raft.propose(Command::Deregister(req)).await?;
    info!(%node, prune, "force-leave: failed node removed from the catalog");
    Ok(())
}
