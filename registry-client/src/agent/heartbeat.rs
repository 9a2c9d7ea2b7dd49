//! Liveness: the agent tells the servers every `heartbeat_interval` that its node is alive;
//! the servers keep the node's `serfHealth` check from these.
//!
//! Owns: the heartbeat task (silent once a leave has begun). Must not touch: local state (a heartbeat carries only who this
//! node is).

use super::Agent;
use registry_api::HeartbeatRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Agent {
    /// Tells the servers this node is alive every `heartbeat_interval` until `shutdown`.
    pub(super) async fn run_heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let body = HeartbeatRequest {
            node: self.config.node.clone(),
            address: self.config.advertise_addr.clone(),
            datacenter: self.config.datacenter.clone(),
        };
        let mut tick = tokio::time::interval(
            self.config
                .heartbeat_interval
                .max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the last round failed: the first failure is a warning (the servers mark
        // this node critical if it lasts), the repeats only debug lines.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A node that is leaving is deregistered; it says nothing more.
            if self.is_leaving() {
                continue;
            }
            // One round tries every server in turn until one takes the heartbeat: an error
            // answer (a server that cannot reach a leader) counts as a failure, like no
            // answer, and the pool then prefers the server that took it.
            // Read each round: `PUT /v1/agent/token/agent` may have changed it.
            let token = self.agent_token();
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.servers.put_json_within_as(
                    "/v1/internal/heartbeat",
                    &body,
                    Some(self.config.heartbeat_interval.max(Duration::from_secs(1))),
                    token.as_deref(),
                ) => r,
            };
            match sent {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(node = %self.config.node, "heartbeats reach the servers again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(node = %self.config.node, error = %e, "no server took the heartbeat; retrying every interval");
                }
                Err(e) => {
                    tracing::debug!(node = %self.config.node, error = %e, "heartbeat failed; retrying next interval");
                }
            }
        }
    }
}
