//! The values of the catalog's rows (`n/`, `s/`, `c/`, see `rows.rs`): the
//! API's JSON for a [`Node`], an [`AgentService`] and a [`HealthCheck`], less
//! what reading it back fills in anyway; and in the same form, the request of
//! a register command in the Raft log ([`RegisterForm`], for
//! `command.rs`). Owns only that encoding; rows and commands are read back
//! with the API types' own `Deserialize`.
//!
//! Left out:
//! - every field equal to the same field of its type's `Default`: these
//!   types are `#[serde(default)]`, so an absent field reads back as that
//!   value (`Weights` included: Consul's 1/1);
//! - a check's `ServiceName` and `ServiceTags`: the catalog derives them from
//!   the check's instance on every read and drops them when it loads a row.
//!
//! A registration's three rows shrink from ~575 to ~300 bytes, and every
//! byte is written to RocksDB's log, flushed, and rewritten by compaction for
//! as long as the row lives (BENCHMARKS.md, session 13). Rows written before
//! this (every field present) read the same. This form reads the same in a
//! server built before it, from `851b090` on (the first to derive a check's
//! service name and tags rather than keep them): the keys kept are the
//! API's own, and the fields' defaults have not changed.
//!
//! These encodings must never fail (strings, numbers, string-keyed maps and
//! JSON values only): a server not writing a checkpoint skips them
//! ([`super::RowsWanted::NoCatalogEntities`]), so an entry whose rows failed to
//! encode would be rejected by some replicas and applied by others.

use registry_api::{AgentService, HealthCheck, Node, RegisterRequest};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A node's row value.
pub(super) fn node_row(node: &Node) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&NodeRow(node))
}

/// An instance's row value.
pub(super) fn service_row(svc: &AgentService) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&ServiceRow(svc))
}

/// A check's row value.
pub(super) fn check_row(check: &HealthCheck) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&CheckRow(check))
}

/// Writes one field of a form into map `$m`, by its mode: `always`;
/// `default`, unless it equals `$d`, the same field of the container's
/// `Default` (what serde's container-level `#[serde(default)]` gives a
/// missing field); `some(Form)`, an `Option` written as `Form` when set;
/// `nonempty(Form)`, a slice written as `Form` unless empty.
macro_rules! field {
    (always, $m:ident, $key:literal, $v:ident, $d:expr) => {
        $m.serialize_entry($key, $v)?
    };
    (default, $m:ident, $key:literal, $v:ident, $d:expr) => {
        if *$v != $d {
            $m.serialize_entry($key, $v)?
        }
    };
    (some($form:ident), $m:ident, $key:literal, $v:ident, $d:expr) => {
        if let Some(v) = $v {
            $m.serialize_entry($key, &$form(v))?
        }
    };
    (nonempty($form:ident), $m:ident, $key:literal, $v:ident, $d:expr) => {
        if !$v.is_empty() {
            $m.serialize_entry($key, &$form($v))?
        }
    };
}

/// A form of API type `$ty`: its fields as JSON keys, in this order, each
/// written by its mode ([`field!`]), and the `skip` fields never. The value
/// is taken apart with no `..`: a field added to the API type does not
/// compile until it is listed here too (or skipped on purpose, as a check's
/// derived fields are).
macro_rules! form {
    (
        $(#[$doc:meta])*
        $form:ident($ty:ident) {
            $($key:literal $f:ident: $mode:ident $(($inner:ident))?,)*
        }
        $(skip { $($skipped:ident),* })?
    ) => {
        $(#[$doc])*
        pub(super) struct $form<'a>(pub(super) &'a $ty);

        impl Serialize for $form<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $ty { $($f,)* $($($skipped: _,)*)? } = self.0;
                let d = $ty::default();
                let mut m = s.serialize_map(None)?;
                $(field!($mode $(($inner))?, m, $key, $f, d.$f);)*
                m.end()
            }
        }
    };
}

form! {
    NodeRow(Node) {
        "ID" id: default,
        "Node" node: always,
        "Address" address: default,
        "Datacenter" datacenter: default,
        "TaggedAddresses" tagged_addresses: default,
        "Meta" meta: default,
        "CreateIndex" create_index: default,
        "ModifyIndex" modify_index: default,
    }
}

form! {
    ServiceRow(AgentService) {
        "Kind" kind: default,
        "ID" id: always,
        "Service" service: default,
        "Tags" tags: default,
        "Address" address: default,
        "Meta" meta: default,
        "Port" port: default,
        "TaggedAddresses" tagged_addresses: default,
        "Weights" weights: default,
        "EnableTagOverride" enable_tag_override: default,
        "Proxy" proxy: default,
        "Connect" connect: default,
        "CreateIndex" create_index: default,
        "ModifyIndex" modify_index: default,
    }
}

form! {
    CheckRow(HealthCheck) {
        "Node" node: always,
        "CheckID" check_id: always,
        "Name" name: default,
        "Status" status: default,
        "Notes" notes: default,
        "Output" output: default,
        "ServiceID" service_id: default,
        "Type" check_type: default,
        "CreateIndex" create_index: default,
        "ModifyIndex" modify_index: default,
    }
    // Derived from the instance on every read, dropped on load.
    skip { service_name, service_tags }
}

form! {
    /// A [`RegisterRequest`] as a `Register` or `RegisterIfNodeExists` command
    /// carries it in the Raft log: its defaults left out and its instance and
    /// checks in their row forms.
    ///
    /// Leaving out a check's `ServiceName` and `ServiceTags` loses nothing
    /// there either: applying the command fills them in from the check's
    /// instance (`plan.rs`, `put_check`). The benchmark's registration (an
    /// instance with one check) shrinks from 615 to 273 bytes, and every
    /// server writes each entry to its log, and the leader sends it to every
    /// follower. Entries written before this (every field present) read the
    /// same, and a server built before it reads this form (see the module's
    /// first lines).
    RegisterForm(RegisterRequest) {
        "ID" id: default,
        "Node" node: always,
        "Address" address: default,
        "Datacenter" datacenter: default,
        "TaggedAddresses" tagged_addresses: default,
        "NodeMeta" node_meta: default,
        "Service" service: some(ServiceRow),
        "Check" check: some(CheckRow),
        "Checks" checks: nonempty(CheckRows),
        "SkipNodeUpdate" skip_node_update: default,
    }
}

struct CheckRows<'a>(&'a [HealthCheck]);

impl Serialize for CheckRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(CheckRow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_api::{ServiceAddress, Weights};
    use serde::de::DeserializeOwned;
    use std::fmt::Debug;

    fn round_trip<T: DeserializeOwned + PartialEq + Debug>(
        value: &T,
        row: Result<Vec<u8>, serde_json::Error>,
    ) -> String {
        let row = row.expect("encodes");
        let back: T = serde_json::from_slice(&row).expect("decodes");
        assert_eq!(&back, value);
        String::from_utf8(row).expect("UTF-8")
    }

    #[test]
    fn defaults_are_left_out_and_read_back() {
        let node = Node {
            node: "n1".into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            create_index: 4,
            modify_index: 4,
            ..Default::default()
        };
        assert_eq!(
            round_trip(&node, node_row(&node)),
            r#"{"Node":"n1","Address":"10.0.0.1","Datacenter":"dc1","CreateIndex":4,"ModifyIndex":4}"#
        );
        let svc = AgentService {
            id: "web-1".into(),
            service: "web".into(),
            tags: vec!["v1".into()],
            port: 8080,
            create_index: 4,
            modify_index: 5,
            ..Default::default()
        };
        assert_eq!(
            round_trip(&svc, service_row(&svc)),
            r#"{"ID":"web-1","Service":"web","Tags":["v1"],"Port":8080,"CreateIndex":4,"ModifyIndex":5}"#
        );
    }

    #[test]
    fn every_field_set_reads_back() {
        let meta = || [("k".to_string(), "v".to_string())].into();
        let node = Node {
            id: "id".into(),
            node: "n1".into(),
            address: "a".into(),
            datacenter: "dc1".into(),
            tagged_addresses: meta(),
            meta: meta(),
            create_index: 1,
            modify_index: 2,
        };
        round_trip(&node, node_row(&node));
        let svc = AgentService {
            kind: "connect-proxy".into(),
            id: "p".into(),
            service: "p".into(),
            tags: vec!["t".into()],
            address: "a".into(),
            meta: meta(),
            port: 1,
            tagged_addresses: [(
                "lan".to_string(),
                ServiceAddress {
                    address: "b".into(),
                    port: 2,
                },
            )]
            .into(),
            weights: Weights {
                passing: 3,
                warning: 0,
            },
            enable_tag_override: true,
            proxy: Some(serde_json::json!({"DestinationServiceName": "web"})),
            connect: Some(serde_json::json!({"Native": true})),
            create_index: 1,
            modify_index: 2,
        };
        round_trip(&svc, service_row(&svc));
        // A weight of zero is not the default (1/1): it is written.
        let zero = AgentService {
            id: "z".into(),
            weights: Weights {
                passing: 1,
                warning: 0,
            },
            ..Default::default()
        };
        assert!(round_trip(&zero, service_row(&zero)).contains(r#""Weights":"#));
        let check = HealthCheck {
            node: "n1".into(),
            check_id: "c".into(),
            name: "n".into(),
            status: "critical".into(),
            notes: "x".into(),
            output: "o".into(),
            service_id: "p".into(),
            check_type: "ttl".into(),
            create_index: 1,
            modify_index: 2,
            ..Default::default()
        };
        round_trip(&check, check_row(&check));
    }

    #[test]
    fn a_register_request_reads_back_less_its_checks_derived_fields() {
        let form = |req: &RegisterRequest| serde_json::to_vec(&RegisterForm(req));
        let check = |id: &str| HealthCheck {
            node: "n1".into(),
            check_id: id.into(),
            status: "passing".into(),
            service_id: "web-1".into(),
            ..Default::default()
        };
        let small = RegisterRequest {
            node: "n1".into(),
            address: "10.0.0.1".into(),
            service: Some(AgentService {
                id: "web-1".into(),
                service: "web".into(),
                port: 8080,
                ..Default::default()
            }),
            checks: vec![check("c1")],
            ..Default::default()
        };
        assert_eq!(
            round_trip(&small, form(&small)),
            r#"{"Node":"n1","Address":"10.0.0.1","Service":{"ID":"web-1","Service":"web","Port":8080},"Checks":[{"Node":"n1","CheckID":"c1","Status":"passing","ServiceID":"web-1"}]}"#
        );
        let meta = || [("k".to_string(), "v".to_string())].into();
        let every = RegisterRequest {
            id: "id".into(),
            datacenter: "dc1".into(),
            tagged_addresses: meta(),
            node_meta: meta(),
            check: Some(check("c0")),
            checks: vec![check("c1"), check("c2")],
            skip_node_update: true,
            ..small.clone()
        };
        round_trip(&every, form(&every));
        // The derived fields are left out; everything else reads back.
        let mut derived = every.clone();
        for c in derived.check.iter_mut().chain(derived.checks.iter_mut()) {
            c.service_name = "web".into();
            c.service_tags = vec!["v1".into()];
        }
        let back: RegisterRequest = serde_json::from_slice(&form(&derived).unwrap()).unwrap();
        assert_eq!(back, every);
        // So does an empty one (validation refuses it before it is proposed).
        let empty = RegisterRequest::default();
        assert_eq!(round_trip(&empty, form(&empty)), r#"{"Node":""}"#);
    }

    /// A field left out reads back as its type's `Default`, in rows and log
    /// entries written by any build: so those defaults may never change.
    #[test]
    fn the_defaults_that_left_out_fields_read_back_as_stay_the_same() {
        assert_eq!(
            serde_json::to_value(Node::default()).unwrap(),
            serde_json::json!({"ID": "", "Node": "", "Address": "", "Datacenter": "",
                "TaggedAddresses": {}, "Meta": {}, "CreateIndex": 0, "ModifyIndex": 0})
        );
        assert_eq!(
            serde_json::to_value(AgentService::default()).unwrap(),
            serde_json::json!({"Kind": "", "ID": "", "Service": "", "Tags": [], "Address": "",
                "Meta": {}, "Port": 0, "TaggedAddresses": {},
                "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                "CreateIndex": 0, "ModifyIndex": 0})
        );
        assert_eq!(
            serde_json::to_value(HealthCheck::default()).unwrap(),
            serde_json::json!({"Node": "", "CheckID": "", "Name": "", "Status": "", "Notes": "",
                "Output": "", "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                "CreateIndex": 0, "ModifyIndex": 0})
        );
        assert_eq!(
            serde_json::to_value(RegisterRequest::default()).unwrap(),
            serde_json::json!({"ID": "", "Node": "", "Address": "", "Datacenter": "",
                "TaggedAddresses": {}, "NodeMeta": {}, "Service": null, "Check": null,
                "Checks": [], "SkipNodeUpdate": false})
        );
    }

    #[test]
    fn a_checks_service_name_and_tags_are_not_written() {
        let check = HealthCheck {
            node: "n1".into(),
            check_id: "web-1:alive".into(),
            name: "alive".into(),
            status: "passing".into(),
            service_id: "web-1".into(),
            service_name: "web".into(),
            service_tags: vec!["v1".into()],
            create_index: 4,
            modify_index: 4,
            ..Default::default()
        };
        let row = String::from_utf8(check_row(&check).unwrap()).unwrap();
        assert_eq!(
            row,
            r#"{"Node":"n1","CheckID":"web-1:alive","Name":"alive","Status":"passing","ServiceID":"web-1","CreateIndex":4,"ModifyIndex":4}"#
        );
    }
}
