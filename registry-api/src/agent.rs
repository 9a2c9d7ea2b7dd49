//! Shapes of the agent endpoints (`/v1/agent/...`), as Consul's agent speaks them
//! (<https://developer.hashicorp.com/consul/api-docs/agent>), and the liveness heartbeat
//! an agent sends to the servers.

use crate::types::{AgentService, HealthCheck, Meta};
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

/// One entry of `GET /v1/agent/services` and the reply of `GET /v1/agent/service/:id`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceInfo {
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
    /// Tag override flag.
    pub enable_tag_override: bool,
    /// The agent's datacenter (Consul includes it since 1.8).
    pub datacenter: String,
}

impl AgentServiceInfo {
    /// The agent's view of `service` in datacenter `dc`.
    pub fn new(service: &AgentService, dc: &str) -> Self {
        AgentServiceInfo {
            id: service.id.clone(),
            service: service.service.clone(),
            tags: service.tags.clone(),
            address: service.address.clone(),
            meta: service.meta.clone(),
            port: service.port,
            enable_tag_override: service.enable_tag_override,
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
    /// Node name.
    pub node_name: String,
    /// Node id (may be empty).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Whether this agent is a server.
    pub server: bool,
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
}

/// Serf's member status "alive".
pub const MEMBER_ALIVE: u8 = 1;
/// Serf's member status "failed".
pub const MEMBER_FAILED: u8 = 4;

/// Reply of `GET /v1/agent/self`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelf {
    /// The agent's configuration.
    pub config: AgentSelfConfig,
    /// The agent as a member.
    pub member: AgentMember,
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
