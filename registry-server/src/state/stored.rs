//! The forms in which the catalog keeps its rows in memory: strings packed into
//! one block (`packed.rs`) and a pointer for the fields most instances leave at
//! their defaults (the memory figures in BENCHMARKS.md depend on them), and
//! their conversion to and from the API's shapes. Owns nothing else: tables,
//! rules and queries are in `catalog.rs`, the containers in `table.rs` and
//! `packed.rs`.

use super::packed::{Packed, PackedList};
use compact_str::CompactString as Str;
use registry_api::types::Meta;
use registry_api::{
    AgentService, HealthCheck, ServiceTaggedAddresses, Weights, PASSING, SERF_HEALTH_ID,
};

/// A service instance as the catalog keeps it. The API's [`AgentService`]
/// minus its id, which is the second half of its key.
///
/// Name, address and tags are [`PackedList`]ed: 88 bytes inline and two small
/// blocks, where inline strings and a block of tags took 120 and 48 for an
/// instance with two tags (BENCHMARKS.md, 2026-12-01).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredService {
    /// Service name, address, then each tag.
    text: PackedList,
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
        let fixed = [svc.service.as_str(), svc.address.as_str()];
        let text = PackedList::new(fixed.into_iter().chain(svc.tags.iter().map(String::as_str)));
        StoredService {
            text,
            meta: svc.meta,
            port: svc.port,
            enable_tag_override: svc.enable_tag_override,
            extra: (extra != ServiceExtra::default()).then(|| Box::new(extra)),
            create_index: svc.create_index,
            modify_index: svc.modify_index,
        }
    }

    /// Service name.
    pub(super) fn service(&self) -> &str {
        self.text.get(0)
    }

    /// Instance address (empty: the node's).
    pub(super) fn address(&self) -> &str {
        self.text.get(1)
    }

    /// Tags, in the order given.
    pub(super) fn tags(&self) -> impl Iterator<Item = &str> {
        (2..self.text.len()).map(|i| self.text.get(i))
    }

    /// The API form of instance `id`.
    pub(super) fn to_api(&self, id: &str) -> AgentService {
        let extra = self.extra.as_deref();
        AgentService {
            kind: extra.map(|e| owned(&e.kind)).unwrap_or_default(),
            id: id.to_string(),
            service: self.service().to_owned(),
            tags: self.tags().map(str::to_owned).collect(),
            address: self.address().to_owned(),
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
///
/// Its six strings are [`Packed`] into one block: 56 bytes and the strings' own
/// length, where six inline strings took 160 (BENCHMARKS.md, 2026-12-01). A
/// check is never changed in place (every write makes a new one), so the
/// packing costs nothing on the write path but the copy it already made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredCheck {
    /// Name, status, notes, output, owning service id, type.
    text: Packed<6>,
    pub(super) create_index: u64,
    pub(super) modify_index: u64,
}

impl StoredCheck {
    pub(super) fn new(check: HealthCheck) -> Self {
        let text = Packed::new([
            &check.name,
            &check.status,
            &check.notes,
            &check.output,
            &check.service_id,
            &check.check_type,
        ]);
        StoredCheck {
            text,
            create_index: check.create_index,
            modify_index: check.modify_index,
        }
    }

    /// Its status (`passing`, `warning` or `critical`).
    pub(super) fn status(&self) -> &str {
        self.text.get(1)
    }

    /// The id of the instance it belongs to; empty for a node-level check.
    pub(super) fn service_id(&self) -> &str {
        self.text.get(4)
    }

    /// The API form of check `id` on `node`, owned by instance `owner` (None
    /// for a node-level check).
    pub(super) fn to_api(
        &self,
        node: &str,
        id: &str,
        owner: Option<&StoredService>,
    ) -> HealthCheck {
        let text = |i| self.text.get(i).to_owned();
        HealthCheck {
            node: node.to_string(),
            check_id: id.to_string(),
            name: text(0),
            status: text(1),
            notes: text(2),
            output: text(3),
            service_id: text(4),
            service_name: owner.map(|s| s.service().to_owned()).unwrap_or_default(),
            service_tags: owner
                .map(|s| s.tags().map(str::to_owned).collect())
                .unwrap_or_default(),
            check_type: text(5),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// Whether check `id` (`check`) is a passing `serfHealth`.
pub(super) fn is_serf_passing(id: &str, check: &StoredCheck) -> bool {
    id == SERF_HEALTH_ID && check.status() == PASSING
}

/// A `String` copy of `s`. (`Str::to_string` would go through `Display` and
/// the formatting machinery, which showed in profiles of the read paths.)
pub(super) fn owned(s: &Str) -> String {
    s.as_str().to_owned()
}
