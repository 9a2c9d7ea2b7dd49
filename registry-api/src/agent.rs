//! Shapes of the agent endpoints (`/v1/agent/...`), as Consul's agent speaks them
//! (<https://developer.hashicorp.com/consul/api-docs/agent>), and the liveness heartbeat
//! an agent sends to the servers.

use crate::types::{AgentService, HealthCheck, Meta, ServiceTaggedAddresses, Weights};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Body of `PUT /v1/agent/service/register` (Consul's `ServiceDefinition`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistration {
    /// Instance id; defaults to `Name`.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name (required).
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Instance address; empty means the node's address.
    pub address: String,
    /// Free-form metadata.
    pub meta: Meta,
    /// Instance port.
    pub port: u16,
    /// Consul's tag override flag, stored and returned as given.
    pub enable_tag_override: bool,
    /// Service kind (`""`, `connect-proxy`, ...), stored and returned as given.
    pub kind: String,
    /// Extra addresses by name (`lan`, `wan`, ...), each `{"Address", "Port"}`.
    pub tagged_addresses: ServiceTaggedAddresses,
    /// DNS SRV weights; absent means Consul's default `{"Passing": 1, "Warning": 1}`.
    pub weights: Option<Weights>,
    /// Connect proxy configuration, opaque (we have no Connect), returned as sent.
    pub proxy: Option<serde_json::Value>,
    /// Connect configuration, opaque, returned as sent.
    pub connect: Option<serde_json::Value>,
    /// One check of the service.
    pub check: Option<CheckRegistration>,
    /// More checks of the service.
    pub checks: Vec<CheckRegistration>,
}

/// A check definition: the body of `PUT /v1/agent/check/register` and the checks embedded in a
/// service registration (Consul's `CheckDefinition` / `AgentServiceCheck`).
///
/// Durations are kept as Go duration strings, as sent; Consul also accepts a number of
/// nanoseconds, which is turned into the equivalent string on decoding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckRegistration {
    /// Check id as `/v1/agent/check/register` names it.
    #[serde(rename = "ID")]
    pub id: String,
    /// Check id as service definitions name it; `ID` wins when both are set.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Display name.
    pub name: String,
    /// Operator notes.
    pub notes: String,
    /// Initial status; Consul's default is `critical`.
    pub status: String,
    /// The service instance the check belongs to; empty for a node-level check.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// URL of an HTTP check.
    #[serde(rename = "HTTP")]
    pub http: String,
    /// HTTP method (default `GET`).
    pub method: String,
    /// HTTP request headers.
    pub header: BTreeMap<String, Vec<String>>,
    /// HTTP request body.
    pub body: String,
    /// Skip TLS verification (HTTPS and gRPC with TLS).
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: bool,
    /// `host:port` of a TCP check.
    #[serde(rename = "TCP")]
    pub tcp: String,
    /// `host:port[/service]` of a gRPC check.
    #[serde(rename = "GRPC")]
    pub grpc: String,
    /// Speak TLS to the gRPC target.
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: bool,
    /// TTL of a TTL check.
    #[serde(rename = "TTL", deserialize_with = "go_duration")]
    pub ttl: String,
    /// Time between runs of an interval check.
    #[serde(deserialize_with = "go_duration")]
    pub interval: String,
    /// Limit on one run.
    #[serde(deserialize_with = "go_duration")]
    pub timeout: String,
    /// Consecutive successes needed to turn passing.
    pub success_before_passing: u32,
    /// Consecutive failures needed to turn critical.
    pub failures_before_critical: u32,
    /// Consecutive failures after which the check reports warning.
    pub failures_before_warning: u32,
    /// Deregister the owning service when this check has been critical this long.
    #[serde(deserialize_with = "go_duration")]
    pub deregister_critical_service_after: String,
    /// Script check command (refused unless script checks are enabled).
    pub args: Vec<String>,
    /// Older name of `Args`.
    pub script_args: Vec<String>,
}

/// Accepts a Go duration string or a number of nanoseconds, as Consul's decoder does.
fn go_duration<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct DurationText;
    impl Visitor<'_> for DurationText {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration string or a number of nanoseconds")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(crate::duration::format(std::time::Duration::from_nanos(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            u64::try_from(v)
                .map(|v| self.visit_u64(v))
                .map_err(|_| E::custom("negative duration"))?
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            if !(0.0..1e21).contains(&v) {
                return Err(E::custom("invalid duration"));
            }
            self.visit_u64(v as u64)
        }
        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }
    d.deserialize_any(DurationText)
}

/// One entry of `GET /v1/agent/services` and the reply of `GET /v1/agent/service/:id`
/// (Consul's `api.AgentService`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceInfo {
    /// Service kind (`""` for a typical service).
    pub kind: String,
    /// Instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Instance address (may be empty).
    pub address: String,
    /// Metadata.
    pub meta: Meta,
    /// Port.
    pub port: u16,
    /// Extra addresses, as registered.
    pub tagged_addresses: ServiceTaggedAddresses,
    /// DNS SRV weights, as registered (or the default).
    pub weights: Weights,
    /// Tag override flag.
    pub enable_tag_override: bool,
    /// Connect proxy configuration as registered; absent when none (as in Consul).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<serde_json::Value>,
    /// Connect configuration as registered; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<serde_json::Value>,
    /// The agent's datacenter (Consul includes it since 1.8).
    pub datacenter: String,
}

impl AgentServiceInfo {
    /// The agent's view of `service` in datacenter `dc`.
    pub fn new(service: &AgentService, dc: &str) -> Self {
        AgentServiceInfo {
            kind: service.kind.clone(),
            id: service.id.clone(),
            service: service.service.clone(),
            tags: service.tags.clone(),
            address: service.address.clone(),
            meta: service.meta.clone(),
            port: service.port,
            tagged_addresses: service.tagged_addresses.clone(),
            weights: service.weights,
            enable_tag_override: service.enable_tag_override,
            proxy: service.proxy.clone(),
            connect: service.connect.clone(),
            datacenter: dc.to_owned(),
        }
    }
}

/// One entry of `GET /v1/agent/health/service/name/:name` (Consul's `AgentServiceChecksInfo`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceChecksInfo {
    /// Worst status among the instance's checks (and the node's maintenance check).
    pub aggregated_status: String,
    /// The instance.
    pub service: AgentServiceInfo,
    /// Its checks.
    pub checks: Vec<HealthCheck>,
}

/// `Config` of `GET /v1/agent/self`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelfConfig {
    /// Datacenter.
    pub datacenter: String,
    /// The primary datacenter (ours: every datacenter is its own primary, we have no ACL
    /// replication).
    pub primary_datacenter: String,
    /// Node name.
    pub node_name: String,
    /// Node id (may be empty).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Whether this agent is a server.
    pub server: bool,
    /// Source revision of the build (empty when unknown).
    pub revision: String,
    /// Software version.
    pub version: String,
}

/// A cluster member as `GET /v1/agent/members` and `/v1/agent/self` list it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentMember {
    /// Node name.
    pub name: String,
    /// Node address.
    pub addr: String,
    /// Gossip port (Consul's LAN Serf port, 8301).
    pub port: u16,
    /// Member tags (`dc`, `role`, ...).
    pub tags: Meta,
    /// Serf member status: 1 alive, 2 leaving, 3 left, 4 failed.
    pub status: u8,
    /// Lowest memberlist protocol spoken (Consul reports memberlist's 1).
    pub protocol_min: u8,
    /// Highest memberlist protocol spoken (memberlist's 5).
    pub protocol_max: u8,
    /// Memberlist protocol in use (memberlist's 2).
    pub protocol_cur: u8,
    /// Lowest Serf delegate protocol (Serf's 2).
    pub delegate_min: u8,
    /// Highest Serf delegate protocol (Serf's 5).
    pub delegate_max: u8,
    /// Serf delegate protocol in use (Serf's 4).
    pub delegate_cur: u8,
}

impl AgentMember {
    /// A member with the protocol figures Consul's members carry (we speak no gossip, so
    /// these are the values a current Consul reports, for clients that read them).
    pub fn new(name: String, addr: String, port: u16, tags: Meta, status: u8) -> Self {
        AgentMember {
            name,
            addr,
            port,
            tags,
            status,
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        }
    }
}

/// A network coordinate in Consul's shape (Serf's Vivaldi `Coordinate`), as
/// `/v1/agent/self`'s `Coord` gives it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Coordinate {
    /// Position in Vivaldi space (8 dimensions).
    pub vec: Vec<f64>,
    /// Confidence in the position.
    pub error: f64,
    /// Adjustment term for local effects.
    pub adjustment: f64,
    /// Height term for the access link.
    pub height: f64,
}

impl Default for Coordinate {
    /// Serf's origin coordinate (`coordinate.NewCoordinate(DefaultConfig())`): we measure no
    /// round-trip times, so every node sits at the origin.
    fn default() -> Self {
        Coordinate {
            vec: vec![0.0; 8],
            error: 1.5,
            adjustment: 0.0,
            height: 1.0e-5,
        }
    }
}

/// Serf's member status "alive".
pub const MEMBER_ALIVE: u8 = 1;
/// Serf's member status "failed".
pub const MEMBER_FAILED: u8 = 4;

/// Reply of `GET /v1/agent/self`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelf {
    /// The agent's configuration.
    pub config: AgentSelfConfig,
    /// The runtime configuration; Consul documents its format as subject to change, clients
    /// read a few keys (`Datacenter`, `NodeName`, `Version`, `ServerMode`, ...).
    pub debug_config: serde_json::Map<String, serde_json::Value>,
    /// The agent's network coordinate.
    pub coord: Coordinate,
    /// The agent as a member.
    pub member: AgentMember,
    /// Node metadata.
    pub meta: Meta,
    /// The xDS server's settings; `null`, as in a Consul without Connect's xDS server.
    #[serde(rename = "xDS")]
    pub xds: Option<serde_json::Value>,
    /// Runtime figures by subsystem, all values strings, as Consul gives them
    /// (a server's `raft` section: `state`, `term`, `commit_index`, ...).
    pub stats: BTreeMap<String, BTreeMap<String, String>>,
}

/// Body of `PUT /v1/internal/heartbeat`: an agent says it is alive. The leader flips the
/// node's `serfHealth` check critical when these stop and passing when they return
/// (our stand-in for Serf's failure detector).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HeartbeatRequest {
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter of the node.
    pub datacenter: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::from_slice;

    #[test]
    fn check_durations_take_strings_or_nanoseconds() {
        let c: CheckRegistration =
            from_slice(br#"{"interval":"10s","TIMEOUT":1000000000,"ttl":null}"#).unwrap();
        assert_eq!(c.interval, "10s");
        assert_eq!(c.timeout, "1s");
        assert_eq!(c.ttl, "");
        assert!(from_slice::<CheckRegistration>(br#"{"Interval":-1}"#).is_err());
        assert!(from_slice::<CheckRegistration>(br#"{"Interval":[1]}"#).is_err());
    }

    #[test]
    fn weights_and_tagged_addresses_decode_as_consul_does() {
        let s: ServiceRegistration = from_slice(
            br#"{"Name":"web","weights":{"passing":5},"TaggedAddresses":{"lan":{"address":"10.0.0.1","PORT":80}},"Proxy":{"Mode":"x"}}"#,
        )
        .unwrap();
        // A sent object's missing half is 0, as Go leaves it; the registration checks it.
        let w = s.weights.unwrap();
        assert_eq!((w.passing, w.warning), (5, 0));
        let lan = &s.tagged_addresses["lan"];
        assert_eq!((lan.address.as_str(), lan.port), ("10.0.0.1", 80));
        assert_eq!(s.proxy, Some(serde_json::json!({"Mode": "x"})));
        let none: ServiceRegistration = from_slice(br#"{"Name":"web","Weights":null}"#).unwrap();
        assert_eq!(none.weights, None);
        // Absent from a stored service, they are Consul's default.
        let svc: AgentService = serde_json::from_str(r#"{"ID":"a","Service":"a"}"#).unwrap();
        assert_eq!(svc.weights, Weights::default());
        assert_eq!((svc.weights.passing, svc.weights.warning), (1, 1));
        assert!(Weights {
            passing: 0,
            warning: 1
        }
        .validate()
        .is_err());
        assert!(Weights {
            passing: 1,
            warning: -1
        }
        .validate()
        .is_err());
        assert!(Weights::default().validate().is_ok());
    }

    #[test]
    fn service_registration_is_case_insensitive() {
        let s: ServiceRegistration = from_slice(
            br#"{"name":"web","ID":"web1","PORT":80,"check":{"http":"http://x","interval":"1s"},"Checks":[{"ttl":"5s"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (s.name.as_str(), s.id.as_str(), s.port),
            ("web", "web1", 80)
        );
        assert_eq!(s.check.unwrap().http, "http://x");
        assert_eq!(s.checks[0].ttl, "5s");
    }
}
