//! The replicated commands: ONE variant table ([`commands!`]) from which the
//! `Command` enum, its tagged decoder, the fast-path decoder and the list of
//! variant names are all generated, so a new command is one edit here (plus
//! its arm in `StateStore::apply`, which the compiler demands). Owns the
//! wire form of a log entry's command; must not apply it. The request types
//! of the KV, session and transaction commands live beside their tables
//! (`kv.rs`, `session.rs`, `txn.rs`).
//!
//! On the wire: `{"Op":"Register", ...the request's fields}` (serde's
//! internally tagged form). Decoding is written by hand, because serde's
//! derived decoder for that form first copies the whole object into a buffer
//! of its own to find the tag, and every server decodes every command on its
//! Raft thread. serde writes the tag first, so the fast path reads the tag and
//! then the request straight from the rest of the object; an object whose
//! first key is not `Op` still decodes, the slow way (serde's derived decoder).
//!
//! In the Raft log a register's request is written shorter ([`LogForm`]):
//! every field at its type's `Default` left out, as in the catalog's rows
//! (`row_forms.rs`), and a check's `ServiceName` and `ServiceTags`, which
//! applying fills in from the instance. It reads back with the same decoder.
//!
//! Commands are in the Raft log forever: variants are only ever added, never
//! renamed or removed, a variant's request type only gains optional fields,
//! and the API types' defaults never change (a field left out of an entry
//! reads back as today's default; `row_forms.rs` pins them in a test).

use super::acl::{
    AclBootstrapRequest, AclDeleteRequest, AclPolicySetRequest, AclReplicateRequest,
    AclRoleSetRequest, AclTokenSetRequest,
};
use super::kv::{KvOp, TombstoneReap};
use super::restore::RestoreRequest;
use super::row_forms::RegisterForm;
use super::session::{SessionExpiry, SessionId};
use super::txn::TxnRequest;
use registry_api::event::UserEvent;
use registry_api::kv::NewSession;
use registry_api::{DeregisterRequest, RegisterRequest};
use serde::{Deserialize, Serialize};

/// Generates [`Command`] (serialised with the `Op` tag), `TaggedCommand`
/// (serde's derived decoder of the same form, the slow path),
/// [`Command::NAMES`], [`Command::name`] and the fast-path decoder from one
/// list of `Variant(RequestType)`.
macro_rules! commands {
    ($( $(#[$doc:meta])* $variant:ident($req:ty), )*) => {
        /// A replicated write. Serialized with serde_json inside Raft log
        /// entries; must stay backward compatible (new variants only).
        #[derive(Serialize, Clone, Debug, PartialEq, Eq)]
        #[serde(tag = "Op")]
        // Unboxed on purpose: callers build `Command::Register(req)` directly,
        // and a command lives only as long as one proposal, so its size does
        // not matter.
        #[allow(clippy::large_enum_variant)]
        pub enum Command {
            $( $(#[$doc])* $variant($req), )*
        }

        /// serde's derived decoder of [`Command`]'s wire form, for objects
        /// whose tag does not come first.
        #[derive(Deserialize)]
        #[serde(tag = "Op")]
        #[allow(clippy::large_enum_variant)]
        enum TaggedCommand {
            $( $variant($req), )*
        }

        impl From<TaggedCommand> for Command {
            fn from(tagged: TaggedCommand) -> Self {
                match tagged {
                    $( TaggedCommand::$variant(req) => Command::$variant(req), )*
                }
            }
        }

        impl Command {
            /// Every command's `Op`, in table order.
            pub const NAMES: &'static [&'static str] = &[$( stringify!($variant), )*];

            /// This command's `Op`.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Command::$variant(_) => stringify!($variant), )*
                }
            }

            /// The fast path: the request of command `op`, read straight from
            /// the rest of the object.
            fn decode_request<'de, D>(op: &str, rest: D) -> Result<Self, D::Error>
            where
                D: serde::Deserializer<'de>,
            {
                match op {
                    $( stringify!($variant) => <$req>::deserialize(rest).map(Command::$variant), )*
                    other => Err(serde::de::Error::unknown_variant(other, Self::NAMES)),
                }
            }
        }
    };
}

commands! {
    /// Upsert a node and optionally a service instance and checks.
    Register(RegisterRequest),
    /// Remove a node, a service instance or a check.
    Deregister(DeregisterRequest),
    /// A register that applies only if its node exists when the entry is
    /// applied, and is a no-op otherwise. Liveness writes `serfHealth` with
    /// it: the leader decides from the applied state, and a node deregistered
    /// between that decision and the apply must stay gone (a plain register
    /// with `SkipNodeUpdate` would recreate it without an address).
    RegisterIfNodeExists(RegisterRequest),
    /// One KV write of `PUT` or `DELETE /v1/kv/:key` (set, cas, lock,
    /// unlock, delete, delete-cas, delete-tree); answers true or false.
    Kv(KvOp),
    /// `PUT /v1/txn` with at least one write: every operation, applied
    /// all together or not at all.
    Txn(TxnRequest),
    /// `PUT /v1/session/create`, with the ID the receiving server chose.
    SessionCreate(NewSession),
    /// `PUT /v1/session/destroy/:id`: invalidates the session.
    SessionDestroy(SessionId),
    /// `PUT /v1/session/renew/:id`: records the renewal's time in the
    /// session (replicated, so it survives a leader change).
    SessionRenew(SessionId),
    /// The leader's TTL timer fired: invalidates the session only if it was
    /// not renewed since the leader looked (a racing renewal wins).
    SessionExpire(SessionExpiry),
    /// The leader's tombstone reaper: forgets deletes up to an index old
    /// enough that no watcher still waits on them, and lock-delays that
    /// have run out.
    KvReapTombstones(TombstoneReap),
    /// `PUT /v1/event/fire/:name`: records a user event, with the ID the
    /// receiving server chose, in the datacenter's ring (`events.rs`).
    FireEvent(UserEvent),
    /// `PUT /v1/snapshot`: replaces every table with a snapshot archive's
    /// rows, every index raised to the entry's (`restore.rs`).
    Restore(RestoreRequest),
    /// `PUT /v1/acl/bootstrap`, or the leader installing the initial management token
    /// (`acl.rs`).
    AclBootstrap(AclBootstrapRequest),
    /// A token create or update.
    AclTokenSet(AclTokenSetRequest),
    /// A token delete.
    AclTokenDelete(AclDeleteRequest),
    /// A policy create or update.
    AclPolicySet(AclPolicySetRequest),
    /// A policy delete.
    AclPolicyDelete(AclDeleteRequest),
    /// A role create or update.
    AclRoleSet(AclRoleSetRequest),
    /// A role delete.
    AclRoleDelete(AclDeleteRequest),
    /// A secondary datacenter's leader installing the primary's policies, roles and global
    /// tokens.
    AclReplicate(AclReplicateRequest),
}

impl Command {
    /// The form in which a Raft log entry carries this command ([`LogForm`]).
    pub fn log_form(&self) -> LogForm<'_> {
        LogForm(self)
    }

    /// Whether this command may still go when the data directory is short
    /// of space (`storage/space.rs`), down to half the reserve: those that
    /// remove things (deregistrations, deletes, session ends, the reapers'
    /// cleanups), which free space once the log and RocksDB are compacted
    /// (at first each adds a log entry and a tombstone), and session
    /// renewals, which are tiny and without which the leader's TTL reaper
    /// would invalidate healthy sessions, and release their locks, while the
    /// disk is short.
    pub fn allowed_when_short(&self) -> bool {
        use super::kv::KvVerb;
        match self {
            Command::Deregister(_)
            | Command::SessionRenew(_)
            | Command::SessionDestroy(_)
            | Command::SessionExpire(_)
            | Command::KvReapTombstones(_)
            | Command::AclTokenDelete(_)
            | Command::AclPolicyDelete(_)
            | Command::AclRoleDelete(_) => true,
            Command::Kv(op) => matches!(
                op.verb,
                KvVerb::Delete | KvVerb::DeleteTree | KvVerb::DeleteCas
            ),
            _ => false,
        }
    }
}

/// A command in a Raft log entry: the wire form above, with a register's
/// request in its compact form (`row_forms.rs`, [`RegisterForm`]: no field
/// at its default, no check's `ServiceName` or `ServiceTags`). Both read
/// back with [`Command`]'s own decoder, the fast path included (`Op` is
/// still written first).
pub struct LogForm<'a>(&'a Command);

impl Serialize for LogForm<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// serde's internally tagged form around a request's own.
        #[derive(Serialize)]
        struct Tagged<T> {
            #[serde(rename = "Op")]
            op: &'static str,
            #[serde(flatten)]
            req: T,
        }
        match self.0 {
            Command::Register(req) | Command::RegisterIfNodeExists(req) => Tagged {
                op: self.0.name(),
                req: RegisterForm(req),
            }
            .serialize(s),
            other => other.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CommandVisitor)
    }
}

/// Reads a command object: the fast path when `Op` comes first.
struct CommandVisitor;

impl<'de> serde::de::Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a command object with an Op field")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Command, A::Error> {
        use serde::de::{value::MapAccessDeserializer, Error};
        let Some(first) = map.next_key::<String>()? else {
            return Err(A::Error::missing_field("Op"));
        };
        if first == "Op" {
            let op: String = map.next_value()?;
            return Command::decode_request(&op, MapAccessDeserializer::new(map));
        }
        let mut object = serde_json::Map::new();
        object.insert(first, map.next_value()?);
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            object.insert(k, v);
        }
        TaggedCommand::deserialize(serde_json::Value::Object(object))
            .map(Command::from)
            .map_err(A::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_api::{AgentService, HealthCheck};

    /// One non-trivial command of every kind.
    fn every_command() -> Vec<Command> {
        let mut register = RegisterRequest {
            node: "n1".into(),
            address: "10.0.0.1".into(),
            service: Some(AgentService {
                id: "web1".into(),
                service: "web".into(),
                tags: vec!["v1".into()],
                port: 8080,
                ..Default::default()
            }),
            checks: vec![HealthCheck {
                check_id: "c".into(),
                service_id: "web1".into(),
                status: "passing".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        register.node_meta.insert("k".into(), "v".into());
        let deregister = DeregisterRequest {
            node: "n1".into(),
            service_id: "web1".into(),
            ..Default::default()
        };
        let kv = KvOp {
            verb: super::super::kv::KvVerb::Lock,
            key: "a/b".into(),
            value: Some(b"v".to_vec()),
            flags: 7,
            index: 0,
            session: "s1".into(),
        };
        let txn = TxnRequest {
            ops: vec![
                super::super::txn::TxnOp::Kv(kv.clone()),
                super::super::txn::TxnOp::Node(super::super::txn::NodeOp {
                    verb: super::super::txn::CatalogVerb::Set,
                    node: registry_api::Node {
                        node: "n1".into(),
                        address: "10.0.0.1".into(),
                        ..Default::default()
                    },
                }),
            ],
        };
        vec![
            Command::Register(register.clone()),
            Command::Deregister(deregister),
            Command::RegisterIfNodeExists(RegisterRequest {
                skip_node_update: true,
                ..register
            }),
            Command::Kv(kv),
            Command::Txn(txn),
            Command::SessionCreate(NewSession {
                id: "s1".into(),
                node: "n1".into(),
                lock_delay: 15_000_000_000,
                behavior: "release".into(),
                ttl: "10s".into(),
                node_checks: vec!["serfHealth".into()],
                ..Default::default()
            }),
            Command::SessionDestroy(SessionId { id: "s1".into() }),
            Command::SessionRenew(SessionId { id: "s1".into() }),
            Command::SessionExpire(SessionExpiry {
                id: "s1".into(),
                renewed_at: 42,
            }),
            Command::KvReapTombstones(TombstoneReap { up_to_index: 9 }),
            Command::FireEvent(UserEvent {
                id: "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into(),
                name: "deploy".into(),
                payload: Some(b"v2".to_vec()),
                service_filter: "web".into(),
                version: 1,
                ..Default::default()
            }),
            Command::Restore(RestoreRequest {
                archive: Some(vec![0x1f, 0x8b, 0, 0xff]),
            }),
            Command::AclBootstrap(AclBootstrapRequest {
                token: registry_api::acl::AclToken {
                    accessor_id: "a".into(),
                    secret_id: "s".into(),
                    ..Default::default()
                },
                from_config: true,
            }),
            Command::AclTokenSet(AclTokenSetRequest {
                token: registry_api::acl::AclToken {
                    accessor_id: "a".into(),
                    expiration_ttl: Some("1h".into()),
                    ..Default::default()
                },
                create: true,
            }),
            Command::AclTokenDelete(AclDeleteRequest { id: "a".into() }),
            Command::AclPolicySet(AclPolicySetRequest {
                policy: registry_api::acl::AclPolicy {
                    id: "p".into(),
                    name: "web".into(),
                    rules: "service \"web\" { policy = \"write\" }".into(),
                    ..Default::default()
                },
                create: false,
            }),
            Command::AclPolicyDelete(AclDeleteRequest { id: "p".into() }),
            Command::AclRoleSet(AclRoleSetRequest {
                role: registry_api::acl::AclRole {
                    id: "r".into(),
                    name: "ops".into(),
                    ..Default::default()
                },
                create: true,
            }),
            Command::AclRoleDelete(AclDeleteRequest { id: "r".into() }),
            Command::AclReplicate(AclReplicateRequest::default()),
        ]
    }

    /// Every command in the table survives encoding and both decoders; a
    /// variant added to the table without a sample here fails the first
    /// assertion.
    #[test]
    fn every_command_round_trips_on_both_decoding_paths() {
        let commands = every_command();
        let names: Vec<&str> = commands.iter().map(Command::name).collect();
        assert_eq!(
            names,
            Command::NAMES,
            "every_command() must cover the table"
        );
        for cmd in commands {
            let bytes = serde_json::to_vec(&cmd).unwrap();
            let tag = format!(r#"{{"Op":"{}""#, cmd.name());
            assert!(
                bytes.starts_with(tag.as_bytes()),
                "the tag is written first"
            );
            assert_eq!(serde_json::from_slice::<Command>(&bytes).unwrap(), cmd);
            // The log's form too, no longer than the wire form.
            let logged = serde_json::to_vec(&cmd.log_form()).unwrap();
            assert!(logged.starts_with(tag.as_bytes()), "{cmd:?}");
            assert!(logged.len() <= bytes.len(), "{cmd:?}");
            assert_eq!(serde_json::from_slice::<Command>(&logged).unwrap(), cmd);
            // The tag last: the slow path, same result.
            let serde_json::Value::Object(mut o) = serde_json::to_value(&cmd).unwrap() else {
                unreachable!()
            };
            // Written by hand: a JSON map sorts its keys, which would put
            // `Op` first again before `Ops` or `UpToIndex`.
            let op = o.remove("Op").unwrap();
            let rest = serde_json::to_string(&o).unwrap();
            let moved = format!("{},\"Op\":{op}}}", &rest[..rest.len() - 1]).into_bytes();
            assert!(!moved.starts_with(br#"{"Op":"#));
            assert_eq!(serde_json::from_slice::<Command>(&moved).unwrap(), cmd);
        }
    }

    #[test]
    fn bad_commands_are_errors() {
        for bad in [
            r#"{"Op":"Drop","Node":"n"}"#,
            r#"{"Node":"n"}"#,
            "{}",
            "[1]",
        ] {
            assert!(serde_json::from_str::<Command>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unknown_op_names_the_known_ones() {
        let err = serde_json::from_str::<Command>(r#"{"Op":"Drop","Node":"n"}"#)
            .unwrap_err()
            .to_string();
        for name in Command::NAMES {
            assert!(err.contains(name), "{err}");
        }
    }
}
