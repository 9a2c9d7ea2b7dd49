//! What the DNS interface asks of a catalog: [`DnsBackend`], the one trait a
//! server (its own applied state) and an agent (its servers, over HTTP)
//! implement, and the plain data it answers with. "Not found" is an empty
//! answer or `None`, never an error: an error is a SERVFAIL (or NXDOMAIN for
//! a datacenter nobody knows), so a name that does not exist and a server that
//! cannot answer now stay distinct for resolvers that cache negative answers.
//!
//! Owns: the shapes and the rule that turns a health entry's checks into one
//! status ([`Health::of_checks`]). Must not touch: DNS records (`answer.rs`)
//! or the passing/warning/critical filter (`handler.rs`, one place).

use registry_api::{ServiceEntry, CRITICAL, PASSING, WARNING};
use std::net::IpAddr;
use std::sync::Arc;

/// An instance's health: the worst of its own checks and its node's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Every check passes (or there are none).
    Passing,
    /// At least one check warns, none is critical.
    Warning,
    /// At least one check is critical (or in a status this registry does not
    /// know, which Consul's DNS would not answer with either).
    Critical,
}

impl Health {
    /// The worst status among `statuses` (`passing` when there is none).
    pub fn of_checks<'a>(statuses: impl IntoIterator<Item = &'a str>) -> Health {
        statuses
            .into_iter()
            .map(|s| match s {
                PASSING => Health::Passing,
                WARNING => Health::Warning,
                CRITICAL => Health::Critical,
                _ => Health::Critical,
            })
            .max()
            .unwrap_or(Health::Passing)
    }
}

/// One service instance as DNS needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The node's name (the SRV target is `<node>.node.<dc>.<domain>`).
    pub node: String,
    /// The node's address.
    pub node_address: String,
    /// The service's own address, empty when it has none (the node's is used).
    pub service_address: String,
    /// The service's port.
    pub port: u16,
    /// The SRV weight while passing (Consul's `Weights.Passing`).
    pub weight_passing: u16,
    /// The SRV weight while warning (Consul's `Weights.Warning`).
    pub weight_warning: u16,
    /// The worst of its checks and its node's.
    pub health: Health,
}

impl Instance {
    /// The instance of a `/v1/health/service/:name` entry: the one conversion
    /// both the server's and the agent's backends use.
    pub fn from_entry(e: &ServiceEntry) -> Instance {
        let weight = |w: i32| u16::try_from(w.max(0)).unwrap_or(u16::MAX);
        Instance {
            node: e.node.node.clone(),
            node_address: e.node.address.clone(),
            service_address: e.service.address.clone(),
            port: e.service.port,
            weight_passing: weight(e.service.weights.passing),
            weight_warning: weight(e.service.weights.warning),
            health: Health::of_checks(e.checks.iter().map(|c| c.status.as_str())),
        }
    }

    /// The address clients should connect to: the service's if set, else the
    /// node's (Consul's rule for DNS and for `ServiceAddress`).
    pub fn address(&self) -> &str {
        if self.service_address.is_empty() {
            &self.node_address
        } else {
            &self.service_address
        }
    }
}

/// A node as DNS needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its name.
    pub node: String,
    /// Its address (an IP, or a host name).
    pub address: String,
}

/// Why a backend could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No datacenter of that name is known (answered NXDOMAIN: the name does
    /// not exist).
    #[error("unknown datacenter {0:?}")]
    UnknownDatacenter(String),
    /// Anything else (no leader, no server reachable, a bad answer):
    /// answered SERVFAIL, so a resolver tries again later.
    #[error("{0}")]
    Unavailable(String),
}

/// The catalog reads DNS needs. `dc` is `None` for the backend's own
/// datacenter. Implementations answer from the same state as the HTTP API.
#[async_trait::async_trait]
pub trait DnsBackend: Send + Sync + 'static {
    /// The instances of `service` carrying `tag` (every instance without
    /// one), whatever their health: the handler filters. Empty when the
    /// service has none.
    async fn service_instances(
        &self,
        dc: Option<&str>,
        service: &str,
        tag: Option<&str>,
    ) -> Result<Arc<[Instance]>, BackendError>;

    /// The node named `name`, or `None`.
    async fn node(&self, dc: Option<&str>, name: &str) -> Result<Option<NodeInfo>, BackendError>;

    /// The name of a node of this datacenter whose address is `ip`, or
    /// `None` (PTR lookups).
    async fn node_by_address(&self, ip: IpAddr) -> Result<Option<String>, BackendError>;
}

/// The query string a backend that reads over HTTP sends: `stale` (any
/// server answers, as Consul's `dns_config.allow_stale`), `tag`, `dc`.
fn query(stale: bool, tag: Option<&str>, dc: Option<&str>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(t) = tag {
        q.append_pair("tag", t);
    }
    if let Some(d) = dc {
        q.append_pair("dc", d);
    }
    let mut q = q.finish();
    if stale {
        q.push_str(if q.is_empty() { "stale" } else { "&stale" });
    }
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

/// A path segment with everything but unreserved characters escaped (a DNS
/// label may hold any byte, `/` and `?` among them).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET` path of a service lookup over the HTTP API.
pub fn health_service_path(
    service: &str,
    tag: Option<&str>,
    dc: Option<&str>,
    stale: bool,
) -> String {
    format!(
        "/v1/health/service/{}{}",
        segment(service),
        query(stale, tag, dc)
    )
}

/// `GET` path of a node lookup over the HTTP API.
pub fn catalog_node_path(node: &str, dc: Option<&str>, stale: bool) -> String {
    format!(
        "/v1/catalog/node/{}{}",
        segment(node),
        query(stale, None, dc)
    )
}

/// `GET` path of the node list (PTR lookups).
pub fn catalog_nodes_path(stale: bool) -> String {
    format!("/v1/catalog/nodes{}", query(stale, None, None))
}

/// An HTTP error answer as a [`BackendError`]: Consul's `No path to
/// datacenter` is an unknown datacenter, anything else a failure.
pub fn error_from_answer(status: u16, body: &[u8]) -> BackendError {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)])
        .trim()
        .to_string();
    if text.starts_with(registry_api::error::NO_PATH_TO_DC) {
        BackendError::UnknownDatacenter(text)
    } else {
        BackendError::Unavailable(format!("{status}: {text}"))
    }
}

/// The instances in a `/v1/health/service/:name` answer.
pub fn instances_from_answer(status: u16, body: &[u8]) -> Result<Arc<[Instance]>, BackendError> {
    if status != 200 {
        return Err(error_from_answer(status, body));
    }
    let entries: Vec<ServiceEntry> = serde_json::from_slice(body)
        .map_err(|e| BackendError::Unavailable(format!("bad health answer: {e}")))?;
    Ok(entries.iter().map(Instance::from_entry).collect())
}

/// The node in a `/v1/catalog/node/:node` answer (`null` or 404: none).
pub fn node_from_answer(status: u16, body: &[u8]) -> Result<Option<NodeInfo>, BackendError> {
    if status == 404 {
        return Ok(None);
    }
    if status != 200 {
        return Err(error_from_answer(status, body));
    }
    let node: Option<registry_api::CatalogNode> = serde_json::from_slice(body)
        .map_err(|e| BackendError::Unavailable(format!("bad node answer: {e}")))?;
    Ok(node.map(|n| NodeInfo {
        node: n.node.node,
        address: n.node.address,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_paths_escape_what_a_label_may_hold() {
        assert_eq!(
            health_service_path("web", Some("v 1"), Some("dc2"), true),
            "/v1/health/service/web?tag=v+1&dc=dc2&stale"
        );
        assert_eq!(
            health_service_path("a/b?", None, None, false),
            "/v1/health/service/a%2Fb%3F"
        );
        assert_eq!(
            catalog_node_path("n1", None, true),
            "/v1/catalog/node/n1?stale"
        );
        assert_eq!(catalog_nodes_path(false), "/v1/catalog/nodes");
    }

    #[test]
    fn no_path_to_datacenter_is_an_unknown_datacenter() {
        assert!(matches!(
            instances_from_answer(500, b"No path to datacenter"),
            Err(BackendError::UnknownDatacenter(_))
        ));
        assert!(matches!(
            instances_from_answer(500, b"No cluster leader"),
            Err(BackendError::Unavailable(_))
        ));
        assert_eq!(node_from_answer(200, b"null").unwrap(), None);
    }

    use super::*;

    #[test]
    fn health_is_the_worst_check() {
        assert_eq!(Health::of_checks([]), Health::Passing);
        assert_eq!(Health::of_checks(["passing", "warning"]), Health::Warning);
        assert_eq!(
            Health::of_checks(["warning", "critical", "passing"]),
            Health::Critical
        );
        assert_eq!(Health::of_checks(["maintenance?"]), Health::Critical);
    }
}
