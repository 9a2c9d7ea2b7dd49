//! Consul's JSON shapes. Field names are PascalCase on the wire; empty lists
//! serialise as `[]` and empty maps as `{}`, never `null` (clients iterate them
//! without checking).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Free-form string metadata (`Meta`, `NodeMeta`, `ServiceMeta`, `TaggedAddresses`).
pub type Meta = BTreeMap<String, String>;

/// A check's status as Consul spells it.
pub const PASSING: &str = "passing";
/// See [`PASSING`].
pub const WARNING: &str = "warning";
/// See [`PASSING`].
pub const CRITICAL: &str = "critical";

/// A check's status, as read from a request: exactly one of Consul's three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// [`PASSING`].
    Passing,
    /// [`WARNING`].
    Warning,
    /// [`CRITICAL`].
    Critical,
}

impl CheckStatus {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => PASSING,
            CheckStatus::Warning => WARNING,
            CheckStatus::Critical => CRITICAL,
        }
    }
}

impl std::str::FromStr for CheckStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            PASSING => Ok(CheckStatus::Passing),
            WARNING => Ok(CheckStatus::Warning),
            CRITICAL => Ok(CheckStatus::Critical),
            _ => Err(format!(
                "Invalid check status {s:?}: must be one of {PASSING}, {WARNING}, {CRITICAL}"
            )),
        }
    }
}

/// The node-level liveness check every node carries (Consul's Serf health check).
pub const SERF_HEALTH_ID: &str = "serfHealth";
/// Display name of [`SERF_HEALTH_ID`].
pub const SERF_HEALTH_NAME: &str = "Serf Health Status";

/// One of a service instance's extra addresses (Consul's `ServiceAddress`), the values of its
/// `TaggedAddresses` (`lan`, `wan`, `lan_ipv4`, ...).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceAddress {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
}

/// A service instance's DNS SRV weights (Consul's `Weights`): `Passing` when its checks pass,
/// `Warning` when one warns.
///
/// Absent, they are Consul's default `{"Passing": 1, "Warning": 1}`; sent, a missing half is
/// 0, as Go's decoder leaves it (so the default is on the whole object, not on each field).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while every check passes.
    #[serde(default)]
    pub passing: i32,
    /// Weight while a check warns.
    #[serde(default)]
    pub warning: i32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

impl Weights {
    /// Consul's check of sent weights (`structs.ValidateWeights`).
    pub fn validate(&self) -> Result<(), String> {
        if self.passing < 1 {
            return Err("Passing must be greater than 0".into());
        }
        if self.warning < 0 {
            return Err("Warning must be greater or equal than 0".into());
        }
        Ok(())
    }
}

/// A service instance's extra addresses by name.
pub type ServiceTaggedAddresses = BTreeMap<String, ServiceAddress>;

/// A service instance as registered on a node (Consul's `AgentService` / `NodeService`).
///
/// The fields added after the first release (`Kind`, `TaggedAddresses`, `Weights`, `Proxy`,
/// `Connect`) default when absent, so catalog rows, snapshots, Raft entries and agents'
/// `services.json` written before them still decode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    /// Consul's service kind: empty for a typical service, `connect-proxy`, `mesh-gateway`,
    /// ...; stored and returned as given (nothing here acts on it).
    pub kind: String,
    /// Instance id, unique on its node; defaults to the service name.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name, shared by all instances.
    pub service: String,
    /// Tags used for filtering (`?tag=`).
    pub tags: Vec<String>,
    /// Address of the instance; empty means "the node's address".
    pub address: String,
    /// Free-form metadata.
    pub meta: Meta,
    /// Port of the instance.
    pub port: u16,
    /// Extra addresses of the instance, as sent.
    pub tagged_addresses: ServiceTaggedAddresses,
    /// DNS SRV weights.
    pub weights: Weights,
    /// Consul's anti-entropy tag override flag, stored and returned as given.
    pub enable_tag_override: bool,
    /// Connect proxy configuration, kept as opaque JSON and returned as sent (we have no
    /// Connect); absent when not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<serde_json::Value>,
    /// Connect configuration (`Native`, `SidecarService`), opaque like `Proxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<serde_json::Value>,
    /// Raft index that created this instance.
    pub create_index: u64,
    /// Raft index of the last change to this instance.
    pub modify_index: u64,
}

/// A health check (Consul's `HealthCheck`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// Node the check belongs to.
    pub node: String,
    /// Check id, unique on its node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Human-readable name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Operator notes.
    pub notes: String,
    /// Output of the last run.
    pub output: String,
    /// Service instance the check belongs to; empty for node-level checks.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Name of that service (filled in by the catalog).
    pub service_name: String,
    /// Tags of that service (filled in by the catalog).
    pub service_tags: Vec<String>,
    /// Kind of check (`http`, `tcp`, `ttl`, `grpc`, `serf`, or empty).
    #[serde(rename = "Type")]
    pub check_type: String,
    /// Raft index that created this check.
    pub create_index: u64,
    /// Raft index of the last change to this check.
    pub modify_index: u64,
}

/// Body of `PUT /v1/catalog/register`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RegisterRequest {
    /// Optional node UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name (required).
    pub node: String,
    /// Node address (required unless `SkipNodeUpdate`).
    pub address: String,
    /// Target datacenter; empty means the one answering.
    pub datacenter: String,
    /// Extra addresses of the node (`lan`, `wan`, ...).
    pub tagged_addresses: Meta,
    /// Node metadata.
    pub node_meta: Meta,
    /// Service instance to register on the node.
    pub service: Option<AgentService>,
    /// One check to register.
    pub check: Option<HealthCheck>,
    /// More checks to register.
    pub checks: Vec<HealthCheck>,
    /// Leave the node's own fields alone (register only the service/checks).
    pub skip_node_update: bool,
}

/// Body of `PUT /v1/catalog/deregister`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeregisterRequest {
    /// Node name (required).
    pub node: String,
    /// Target datacenter; empty means the one answering.
    pub datacenter: String,
    /// Remove only this service instance (and its checks).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Remove only this check.
    #[serde(rename = "CheckID")]
    pub check_id: String,
}

/// A node as listed by `/v1/catalog/nodes` and embedded in other replies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node UUID, if one was given.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter of the node.
    pub datacenter: String,
    /// Extra addresses.
    pub tagged_addresses: Meta,
    /// Node metadata.
    pub meta: Meta,
    /// Raft index that created the node.
    pub create_index: u64,
    /// Raft index of the last change to the node.
    pub modify_index: u64,
}

/// One entry of `/v1/catalog/service/:name`: a service instance flattened with its node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogService {
    /// Node UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Node's extra addresses.
    pub tagged_addresses: Meta,
    /// Node metadata.
    pub node_meta: Meta,
    /// Instance kind (see [`AgentService::kind`]).
    pub service_kind: String,
    /// Instance id.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Instance tags.
    pub service_tags: Vec<String>,
    /// Instance address (may be empty: use `Address`).
    pub service_address: String,
    /// Instance's extra addresses.
    pub service_tagged_addresses: ServiceTaggedAddresses,
    /// Instance's DNS SRV weights.
    pub service_weights: Weights,
    /// Instance metadata.
    pub service_meta: Meta,
    /// Instance port.
    pub service_port: u16,
    /// Tag override flag.
    pub service_enable_tag_override: bool,
    /// Instance's Connect proxy configuration, as sent (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_proxy: Option<serde_json::Value>,
    /// Instance's Connect configuration, as sent (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_connect: Option<serde_json::Value>,
    /// Raft index that created the instance.
    pub create_index: u64,
    /// Raft index of the last change to the instance.
    pub modify_index: u64,
}

/// One entry of `/v1/health/service/:name`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    /// The node running the instance.
    pub node: Node,
    /// The instance.
    pub service: AgentService,
    /// Node-level checks and the instance's own checks.
    pub checks: Vec<HealthCheck>,
}

/// Reply of `/v1/catalog/node/:node`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogNode {
    /// The node.
    pub node: Node,
    /// Its instances by id.
    pub services: BTreeMap<String, AgentService>,
}

/// Reply of `/v1/catalog/node-services/:node`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeServiceList {
    /// The node.
    pub node: Node,
    /// Its instances.
    pub services: Vec<AgentService>,
}

/// One server of `/v1/operator/raft/configuration`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RaftServer {
    /// Raft id of the server.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name of the server.
    pub node: String,
    /// Advertised RPC address.
    pub address: String,
    /// Whether it is the current leader.
    pub leader: bool,
    /// Whether it votes (learners do not).
    pub voter: bool,
    /// Consul reports its Raft protocol version here; we report "3" like Consul does.
    pub protocol_version: String,
}

/// Reply of `/v1/operator/raft/configuration`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RaftConfiguration {
    /// The servers.
    pub servers: Vec<RaftServer>,
    /// Index of the configuration.
    pub index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_collections_are_never_null() {
        let json = serde_json::to_value(ServiceEntry::default()).unwrap();
        assert_eq!(json["Checks"], serde_json::json!([]));
        assert_eq!(json["Service"]["Tags"], serde_json::json!([]));
        assert_eq!(json["Service"]["Meta"], serde_json::json!({}));
        assert_eq!(json["Node"]["TaggedAddresses"], serde_json::json!({}));
        assert!(json["Service"].get("ID").is_some());
        assert!(json["Checks"].as_array().is_some());
    }
}

#[cfg(test)]
mod check_status_tests {
    use super::*;

    #[test]
    fn check_statuses_parse_exactly() {
        for st in [
            CheckStatus::Passing,
            CheckStatus::Warning,
            CheckStatus::Critical,
        ] {
            assert_eq!(st.as_str().parse::<CheckStatus>(), Ok(st));
        }
        for bad in ["", "Passing", "ok", "maintenance", "any"] {
            assert!(bad.parse::<CheckStatus>().is_err(), "{bad}");
        }
    }
}
