//! An agent's DNS backend: [`registry_dns::DnsBackend`] answered by the
//! agent's servers, through its [`ServerPool`] (failover, signing), with the
//! same HTTP reads any client makes: `GET /v1/health/service/<name>?stale`
//! and `GET /v1/catalog/node/<node>?stale` (`&dc=` for another datacenter,
//! which the server sends on through its gateways).
//!
//! How stale an answer may be: reads are `?stale`, as Consul's
//! `dns_config.allow_stale` (default true), so any server answers from its
//! own state, also while no leader is known. A server says how long ago it
//! last heard from its leader (`X-Consul-LastContact`); past [`MAX_STALE`]
//! the read is asked again without `?stale` (the leader answers), as Consul's
//! `dns_config.max_stale` does. Answers are bounded by the pool's limit on
//! what it reads from a server.
//!
//! Owns: turning the servers' answers into DNS instances. Must not touch:
//! DNS records or filtering (`registry-dns`), the pool's failover rules.

use crate::servers::{PoolError, ServerPool};
use http::{HeaderMap, Method};
use registry_dns::backend::{
    catalog_node_path, catalog_nodes_path, health_service_path, instances_from_answer,
    node_from_answer,
};
use registry_dns::{BackendError, DnsBackend, Instance, NodeInfo};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The longest a server may have gone without hearing from its leader for
/// its stale answer to be taken (Consul's default `max_stale` is far longer;
/// a short bound keeps a cut-off server from answering DNS for long).
pub const MAX_STALE: Duration = Duration::from_secs(10);

/// The backend of an agent's DNS interface.
pub struct AgentDns {
    /// The agent's servers.
    pool: ServerPool,
}

impl AgentDns {
    /// A backend asking `pool`'s servers.
    pub fn new(pool: ServerPool) -> Self {
        AgentDns { pool }
    }

    /// `GET path_of(stale)` through the pool: first stale, then, if the
    /// server that answered was out of touch with its leader for longer than
    /// [`MAX_STALE`], from the leader.
    async fn get(&self, path_of: impl Fn(bool) -> String) -> Result<(u16, Vec<u8>), BackendError> {
        let send = |path: String| async move {
            self.pool
                .send(Method::GET, &path, HeaderMap::new(), Default::default())
                .await
                .map_err(|e: PoolError| BackendError::Unavailable(e.to_string()))
        };
        let resp = send(path_of(true)).await?;
        let last_contact_ms = resp
            .headers
            .get("X-Consul-LastContact")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if last_contact_ms > MAX_STALE.as_millis() as u64 {
            tracing::warn!(
                last_contact_ms,
                "DNS: the server's answer is too stale; asking the leader"
            );
            let resp = send(path_of(false)).await?;
            return Ok((resp.status.as_u16(), resp.body.to_vec()));
        }
        Ok((resp.status.as_u16(), resp.body.to_vec()))
    }
}

#[async_trait::async_trait]
impl DnsBackend for AgentDns {
    async fn service_instances(
        &self,
        dc: Option<&str>,
        service: &str,
        tag: Option<&str>,
    ) -> Result<Arc<[Instance]>, BackendError> {
        let (status, body) = self
            .get(|stale| health_service_path(service, tag, dc, stale))
            .await?;
        instances_from_answer(status, &body)
    }

    async fn node(&self, dc: Option<&str>, name: &str) -> Result<Option<NodeInfo>, BackendError> {
        let (status, body) = self.get(|stale| catalog_node_path(name, dc, stale)).await?;
        node_from_answer(status, &body)
    }

    async fn node_by_address(&self, ip: IpAddr) -> Result<Option<String>, BackendError> {
        let (status, body) = self.get(catalog_nodes_path).await?;
        if status != 200 {
            return Err(registry_dns::backend::error_from_answer(status, &body));
        }
        let nodes: Vec<registry_api::Node> = serde_json::from_slice(&body)
            .map_err(|e| BackendError::Unavailable(format!("bad nodes answer: {e}")))?;
        Ok(nodes
            .into_iter()
            .find(|n| n.address.parse::<IpAddr>().ok() == Some(ip))
            .map(|n| n.node))
    }
}
