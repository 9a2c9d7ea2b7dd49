//! A server's DNS backend: [`registry_dns::DnsBackend`] over this server's
//! applied state, read through [`crate::reads`] like the HTTP API and with
//! the same catalog queries (`health_service`, `node_services`, `nodes`), so
//! DNS and HTTP answer from the same state. Reads are stale (any server
//! answers from its own state, as Consul's `dns_config.allow_stale` defaults
//! to): DNS must keep answering while an election runs. Another datacenter
//! is asked through this DC's gateways, the path `?dc=` takes
//! (`http/federation.rs`), with `?stale` too.
//!
//! Owns: the conversion of catalog reads into DNS instances and a small cache
//! of them per applied index. Must not touch: DNS records or filtering
//! (`registry-dns`).

use crate::http::AppState;
use crate::raft::RaftError;
use crate::reads::{read_value, Consistency};
use axum::http::{HeaderMap, Method};
use registry_dns::backend::{
    catalog_node_path, health_service_path, instances_from_answer, node_from_answer,
};
use registry_dns::{BackendError, DnsBackend, Instance, NodeInfo};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Service lookups kept per applied index: a popular name asked thousands of
/// times a second is read from the catalog once per change.
const CACHE_ENTRIES: usize = 1024;

/// Instances by (service, tag), with the applied index they were read at.
type InstanceCache = HashMap<(String, Option<String>), (u64, Arc<[Instance]>)>;

/// The backend of a server's DNS interface.
pub struct ServerDns {
    /// The HTTP layer's state: the Raft node whose applied state is read,
    /// and the way to other datacenters.
    app: Arc<AppState>,
    /// Recent service lookups.
    cache: Mutex<InstanceCache>,
}

impl ServerDns {
    /// A backend reading the state the HTTP API reads.
    pub fn new(app: Arc<AppState>) -> Self {
        ServerDns {
            app,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A `GET` of `path` in another datacenter, through the gateways.
    async fn remote(&self, path: &str) -> Result<(u16, Vec<u8>), BackendError> {
        let resp = self
            .app
            .wan
            .forward(Method::GET, path, &HeaderMap::new(), Default::default())
            .await
            .map_err(|e| registry_dns::backend::error_from_answer(500, e.to_string().as_bytes()))?;
        let status = resp.status().as_u16();
        // The gateways' answers are already bounded (`read_body` in the forwarder).
        let body = axum::body::to_bytes(resp.into_body(), registry_api::forward::MAX_ANSWER)
            .await
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        Ok((status, body.to_vec()))
    }
}

fn unavailable(e: RaftError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl DnsBackend for ServerDns {
    async fn service_instances(
        &self,
        dc: Option<&str>,
        service: &str,
        tag: Option<&str>,
    ) -> Result<Arc<[Instance]>, BackendError> {
        if let Some(dc) = dc {
            let (status, body) = self
                .remote(&health_service_path(service, tag, Some(dc), true))
                .await?;
            return instances_from_answer(status, &body);
        }
        let key = (service.to_string(), tag.map(str::to_string));
        let tags: Vec<String> = tag.into_iter().map(str::to_string).collect();
        let cache = &self.cache;
        read_value(&self.app.raft, Consistency::Stale, |state, applied| {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, hit)) = cache.get(&key) {
                if *at == applied {
                    return hit.clone();
                }
            }
            let (entries, _) = state.catalog.health_service(service, &tags, false);
            let instances: Arc<[Instance]> = entries.iter().map(Instance::from_entry).collect();
            if cache.len() >= CACHE_ENTRIES && !cache.contains_key(&key) {
                cache.retain(|_, (at, _)| *at == applied);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, (applied, instances.clone()));
            instances
        })
        .await
        .map_err(unavailable)
    }

    async fn node(&self, dc: Option<&str>, name: &str) -> Result<Option<NodeInfo>, BackendError> {
        if let Some(dc) = dc {
            let (status, body) = self
                .remote(&catalog_node_path(name, Some(dc), true))
                .await?;
            return node_from_answer(status, &body);
        }
        read_value(&self.app.raft, Consistency::Stale, |state, _| {
            let (node, _) = state.catalog.node_services(name);
            node.map(|n| NodeInfo {
                node: n.node.node,
                address: n.node.address,
            })
        })
        .await
        .map_err(unavailable)
    }

    async fn node_by_address(&self, ip: IpAddr) -> Result<Option<String>, BackendError> {
        read_value(&self.app.raft, Consistency::Stale, |state, _| {
            let (nodes, _) = state.catalog.nodes();
            nodes
                .into_iter()
                .find(|n| n.address.parse::<IpAddr>().ok() == Some(ip))
                .map(|n| n.node)
        })
        .await
        .map_err(unavailable)
    }
}
