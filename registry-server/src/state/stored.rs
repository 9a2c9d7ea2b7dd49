//! The forms in which the catalog keeps its rows in memory: compact strings and
//! a pointer for the fields most instances leave at their defaults (the memory
//! figures in BENCHMARKS.md depend on them), and their conversion to and from
//! the API's shapes. Owns nothing else: tables, rules and queries are in
//! `catalog.rs`.

use compact_str::CompactString as Str;
use registry_api::types::Meta;
use registry_api::{
    AgentService, HealthCheck, ServiceTaggedAddresses, Weights, PASSING, SERF_HEALTH_ID,
};

/// A service instance as the catalog keeps it. The API's [`AgentService`]
/// minus its id, which is the second half of its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredService {
    /// Service name.
    pub(super) service: Str,
    /// Tags.
    pub(super) tags: Box<[Str]>,
    /// Instance address.
    pub(super) address: Str,
    /// Instance metadata.
    pub(super) meta: Meta,
    /// Port.
    pub(super) port: u16,
    /// Tag override flag.
    pub(super) enable_tag_override: bool,
    /// The fields most instances leave at their defaults; `None` when all are.
    pub(super) extra: Option<Box<ServiceExtra>>,
    /// Raft index that created the instance.
    pub(super) create_index: u64,
    /// Raft index of the last change.
    pub(super) modify_index: u64,
}

/// What an instance carries besides the common fields: kept behind one pointer, so a
/// catalog of instances that set none of them (nearly all) pays 8 bytes each, not ~80.
///
/// The row form (the API's [`AgentService`] as JSON) gained these fields with serde
/// defaults: rows, snapshots and Raft entries written before them decode as the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ServiceExtra {
    /// Consul's service kind.
    pub(super) kind: Str,
    /// Extra addresses.
    pub(super) tagged_addresses: ServiceTaggedAddresses,
    /// DNS SRV weights.
    pub(super) weights: Weights,
    /// Connect proxy configuration, opaque.
    pub(super) proxy: Option<serde_json::Value>,
    /// Connect configuration, opaque.
    pub(super) connect: Option<serde_json::Value>,
}

impl StoredService {
    pub(super) fn new(svc: AgentService) -> Self {
        let extra = ServiceExtra {
            kind: svc.kind.into(),
            tagged_addresses: svc.tagged_addresses,
            weights: svc.weights,
            proxy: svc.proxy,
            connect: svc.connect,
        };
        StoredService {
            service: svc.service.into(),
            tags: svc.tags.into_iter().map(Str::from).collect(),
            address: svc.address.into(),
            meta: svc.meta,
            port: svc.port,
            enable_tag_override: svc.enable_tag_override,
            extra: (extra != ServiceExtra::default()).then(|| Box::new(extra)),
            create_index: svc.create_index,
            modify_index: svc.modify_index,
        }
    }

    /// The API form of instance `id`.
    pub(super) fn to_api(&self, id: &str) -> AgentService {
        let extra = self.extra.as_deref();
        AgentService {
            kind: extra.map(|e| owned(&e.kind)).unwrap_or_default(),
            id: id.to_string(),
            service: owned(&self.service),
            tags: self.tags.iter().map(owned).collect(),
            address: owned(&self.address),
            meta: self.meta.clone(),
            port: self.port,
            tagged_addresses: extra
                .map(|e| e.tagged_addresses.clone())
                .unwrap_or_default(),
            weights: extra.map(|e| e.weights).unwrap_or_default(),
            enable_tag_override: self.enable_tag_override,
            proxy: extra.and_then(|e| e.proxy.clone()),
            connect: extra.and_then(|e| e.connect.clone()),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// A health check as the catalog keeps it: the API's [`HealthCheck`] minus its
/// node and id (its key) and minus its service's name and tags, which are
/// derived from the owning instance when the check is read. Every write of an
/// instance rewrites its checks (`WritePlanner::put_service`), so the derived fields are
/// exactly what a stored copy would hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredCheck {
    pub(super) name: Str,
    pub(super) status: Str,
    pub(super) notes: Str,
    pub(super) output: Str,
    pub(super) service_id: Str,
    pub(super) check_type: Str,
    pub(super) create_index: u64,
    pub(super) modify_index: u64,
}

impl StoredCheck {
    pub(super) fn new(check: HealthCheck) -> Self {
        StoredCheck {
            name: check.name.into(),
            status: check.status.into(),
            notes: check.notes.into(),
            output: check.output.into(),
            service_id: check.service_id.into(),
            check_type: check.check_type.into(),
            create_index: check.create_index,
            modify_index: check.modify_index,
        }
    }

    /// The API form of check `id` on `node`, owned by instance `owner` (None
    /// for a node-level check).
    pub(super) fn to_api(
        &self,
        node: &str,
        id: &str,
        owner: Option<&StoredService>,
    ) -> HealthCheck {
        HealthCheck {
            node: node.to_string(),
            check_id: id.to_string(),
            name: owned(&self.name),
            status: owned(&self.status),
            notes: owned(&self.notes),
            output: owned(&self.output),
            service_id: owned(&self.service_id),
            service_name: owner.map(|s| owned(&s.service)).unwrap_or_default(),
            service_tags: owner
                .map(|s| s.tags.iter().map(owned).collect())
                .unwrap_or_default(),
            check_type: owned(&self.check_type),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// Whether check `id` (`check`) is a passing `serfHealth`.
pub(super) fn is_serf_passing(id: &str, check: &StoredCheck) -> bool {
    id == SERF_HEALTH_ID && check.status == PASSING
}

/// A `String` copy of `s`. (`Str::to_string` would go through `Display` and
/// the formatting machinery, which showed in profiles of the read paths.)
pub(super) fn owned(s: &Str) -> String {
    s.as_str().to_owned()
}
