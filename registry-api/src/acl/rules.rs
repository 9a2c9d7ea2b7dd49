//! Consul's ACL rules language (<https://developer.hashicorp.com/consul/docs/security/acl/acl-rules>)
//! read into a [`Rules`] value: what one policy (or one synthesised identity) grants, with
//! repeated rules already merged as Consul's `acl/policy_merger.go` merges them. Deciding
//! what a token may do from several [`Rules`] is [`super::Authorizer`]'s job.
//!
//! A policy is HCL (`service "web" { policy = "write" }`, `operator = "read"`) or its JSON
//! form (`{"service": {"web": {"policy": "write"}}, "operator": "read"}`), read by
//! `parse.rs`; this file holds the vocabulary and the parsed value.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest rules text accepted: policies are stored and replicated to every server and read
/// on every token resolution, so their size is bounded like any other request body.
pub const MAX_RULES_BYTES: usize = 64 * 1024;
/// Most rules (blocks and scalars) in one text: bounds the work of compiling an authorizer.
pub const MAX_RULES: usize = 1000;

/// An access level in a rule (Consul's "read", "list", "write", "deny").
///
/// The order of the variants is Consul's precedence when rules are merged
/// (`takesPrecedenceOver`): deny beats write beats list beats read, so merging is `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Read the resource.
    Read,
    /// List keys under a prefix (and read); only valid in `key`/`key_prefix` rules.
    List,
    /// Read, list and change the resource.
    Write,
    /// Nothing, whatever else applies.
    Deny,
}

impl Access {
    /// Consul's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::List => "list",
            Access::Write => "write",
            Access::Deny => "deny",
        }
    }

    /// Whether a rule granting `self` allows a request that needs `wanted` (Consul's
    /// `enforce` in `acl/policy_authorizer.go`): write covers everything, list covers list
    /// and read, read only read, deny nothing. Nobody "needs" deny: asking for it is never
    /// allowed.
    pub fn grants(self, wanted: Access) -> bool {
        match self {
            Access::Write => wanted != Access::Deny,
            Access::List => matches!(wanted, Access::Read | Access::List),
            Access::Read => wanted == Access::Read,
            Access::Deny => false,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource families that take names (exact `service "web"` or `service_prefix "we"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Agents, by node name (`agent`, `agent_prefix`).
    Agent,
    /// User events, by event name.
    Event,
    /// Workload identities, by name.
    Identity,
    /// KV keys, by key.
    Key,
    /// Catalog nodes, by node name.
    Node,
    /// Prepared queries, by query name.
    Query,
    /// Catalog services, by service name.
    Service,
    /// Sessions, by the name of the node they are tied to.
    Session,
}

impl Resource {
    /// Every family, in the order of their discriminants (the authorizer indexes by them).
    pub const ALL: [Resource; 8] = [
        Resource::Agent,
        Resource::Event,
        Resource::Identity,
        Resource::Key,
        Resource::Node,
        Resource::Query,
        Resource::Service,
        Resource::Session,
    ];

    /// Consul's word for the family (the exact-name rule's keyword).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Agent => "agent",
            Resource::Event => "event",
            Resource::Identity => "identity",
            Resource::Key => "key",
            Resource::Node => "node",
            Resource::Query => "query",
            Resource::Service => "service",
            Resource::Session => "session",
        }
    }

    /// The keyword of its rules that match `how`: `service` or `service_prefix`.
    pub fn keyword(self, how: Match) -> &'static str {
        match (self, how) {
            (r, Match::Exact) => r.as_str(),
            (Resource::Agent, Match::Prefix) => "agent_prefix",
            (Resource::Event, Match::Prefix) => "event_prefix",
            (Resource::Identity, Match::Prefix) => "identity_prefix",
            (Resource::Key, Match::Prefix) => "key_prefix",
            (Resource::Node, Match::Prefix) => "node_prefix",
            (Resource::Query, Match::Prefix) => "query_prefix",
            (Resource::Service, Match::Prefix) => "service_prefix",
            (Resource::Session, Match::Prefix) => "session_prefix",
        }
    }

    /// Whether `list` is a valid access in its rules (Consul: keys only).
    pub(super) fn takes_list(self) -> bool {
        self == Resource::Key
    }

    /// Whether its rules may carry `intentions` (Consul: services and identities).
    pub(super) fn takes_intentions(self) -> bool {
        matches!(self, Resource::Service | Resource::Identity)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a named rule matches names: `service "web"` (exactly "web") or `service_prefix "we"`
/// (every name starting with "we"; `""` matches all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Match {
    /// The name itself.
    Exact,
    /// Every name that starts with it.
    Prefix,
}

/// Resource families that are one scalar (`operator = "read"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scalar {
    /// The ACL system itself (tokens, policies, roles).
    Acl,
    /// The gossip keyring.
    Keyring,
    /// Mesh-wide configuration.
    Mesh,
    /// Cluster operations (Raft, autopilot, ...).
    Operator,
    /// Cluster peering.
    Peering,
}

impl Scalar {
    /// Every scalar, in the order of their discriminants (the authorizer indexes by them).
    pub const ALL: [Scalar; 5] = [
        Scalar::Acl,
        Scalar::Keyring,
        Scalar::Mesh,
        Scalar::Operator,
        Scalar::Peering,
    ];

    /// Consul's keyword for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scalar::Acl => "acl",
            Scalar::Keyring => "keyring",
            Scalar::Mesh => "mesh",
            Scalar::Operator => "operator",
            Scalar::Peering => "peering",
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rules text says is wrong, and where (the rule's keyword and name).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RulesError {
    /// The text is over [`MAX_RULES_BYTES`].
    #[error("rules are {0} bytes long, over the limit of {MAX_RULES_BYTES}")]
    TooLong(usize),
    /// The text holds more than [`MAX_RULES`] rules.
    #[error("more than {MAX_RULES} rules")]
    TooMany,
    /// Not HCL (or not JSON, for a text starting with `{`).
    #[error("invalid rules syntax at line {line}, column {col}: {reason}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What the parser expected.
        reason: String,
    },
    /// A keyword that is no rule family.
    #[error("unknown rule kind {0:?} (want one of acl, agent, agent_prefix, event, event_prefix, identity, identity_prefix, key, key_prefix, keyring, mesh, node, node_prefix, operator, peering, query, query_prefix, service, service_prefix, session, session_prefix)")]
    UnknownKind(String),
    /// An access word that is not valid where it is.
    #[error("invalid {field} {word:?} for {at} (want {want})")]
    InvalidPolicy {
        /// `policy` or `intentions`.
        field: &'static str,
        /// The word given.
        word: String,
        /// The rule: `service "web"`, `operator`.
        at: String,
        /// The valid words there.
        want: &'static str,
    },
    /// A rule of the wrong shape.
    #[error("{at}: {reason}")]
    Malformed {
        /// The rule (or family) it is in.
        at: String,
        /// What is wrong.
        reason: String,
    },
}

/// The default policy of a datacenter's ACLs (`acl.default_policy`): what a request no rule
/// speaks about gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

impl FromStr for DefaultPolicy {
    type Err = RulesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(DefaultPolicy::Allow),
            "deny" => Ok(DefaultPolicy::Deny),
            other => Err(RulesError::InvalidPolicy {
                field: "default policy",
                word: other.to_string(),
                at: "acl".into(),
                want: "allow or deny",
            }),
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        })
    }
}

/// What one policy grants: its named rules and its scalars, each name (per family and
/// match) and each scalar once, repeated rules merged by [`Access`] precedence.
///
/// Two texts that grant the same (HCL and JSON, different order, a rule repeated) are
/// equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Named rules.
    named: BTreeMap<(Resource, Match, String), Access>,
    /// Scalar rules.
    scalars: BTreeMap<Scalar, Access>,
}

impl Rules {
    /// Consul's rules in HCL or in JSON (JSON if the text, trimmed, starts with '{').
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        super::parse::parse(text)
    }

    /// The rules Consul synthesises for a token's ServiceIdentity
    /// (`agent/structs/acl_templated_policy` `service-identity`): write on the service and
    /// its sidecar proxy, read on every service and node (to discover what it connects to).
    pub fn service_identity(name: &str) -> Rules {
        let mut rules = Rules::default();
        rules.add(Resource::Service, Match::Exact, name, Access::Write);
        rules.add(
            Resource::Service,
            Match::Exact,
            &format!("{name}-sidecar-proxy"),
            Access::Write,
        );
        rules.add(Resource::Service, Match::Prefix, "", Access::Read);
        rules.add(Resource::Node, Match::Prefix, "", Access::Read);
        rules
    }

    /// The rules Consul synthesises for a token's NodeIdentity (`node-identity`): write on
    /// the node, read on every service.
    pub fn node_identity(name: &str) -> Rules {
        let mut rules = Rules::default();
        rules.add(Resource::Node, Match::Exact, name, Access::Write);
        rules.add(Resource::Service, Match::Prefix, "", Access::Read);
        rules
    }

    /// Adds a named rule, merged with any rule already there for the same name by
    /// precedence (deny > write > list > read).
    pub fn add(&mut self, resource: Resource, how: Match, name: &str, access: Access) {
        let slot = self
            .named
            .entry((resource, how, name.to_string()))
            .or_insert(access);
        *slot = (*slot).max(access);
    }

    /// Sets a scalar, merged with any value already there by precedence.
    pub fn add_scalar(&mut self, scalar: Scalar, access: Access) {
        let slot = self.scalars.entry(scalar).or_insert(access);
        *slot = (*slot).max(access);
    }

    /// Every rule of `other` added to these (Consul's `MergePolicies`).
    pub fn merge(&mut self, other: &Rules) {
        for (resource, how, name, access) in other.named() {
            self.add(resource, how, name, access);
        }
        for (scalar, access) in other.scalars() {
            self.add_scalar(scalar, access);
        }
    }

    /// The named rules, sorted by family, match and name.
    pub fn named(&self) -> impl Iterator<Item = (Resource, Match, &str, Access)> + '_ {
        self.named
            .iter()
            .map(|((r, m, n), a)| (*r, *m, n.as_str(), *a))
    }

    /// The scalars that are set.
    pub fn scalars(&self) -> impl Iterator<Item = (Scalar, Access)> + '_ {
        self.scalars.iter().map(|(s, a)| (*s, *a))
    }

    /// A scalar's value, if set.
    pub fn scalar(&self, scalar: Scalar) -> Option<Access> {
        self.scalars.get(&scalar).copied()
    }

    /// How many rules (named and scalar).
    pub fn len(&self) -> usize {
        self.named.len() + self.scalars.len()
    }

    /// Whether there are none (an empty policy grants nothing).
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.scalars.is_empty()
    }
}

/// The rules in HCL, one rule per line, in a form [`Rules::parse`] reads back to an equal
/// value (what `GET /v1/acl/policy` shows for a synthesised identity, say).
impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (scalar, access) in self.scalars() {
            writeln!(f, "{scalar} = \"{access}\"")?;
        }
        for (resource, how, name, access) in self.named() {
            writeln!(
                f,
                "{} \"{}\" {{ policy = \"{access}\" }}",
                resource.keyword(how),
                HclEscaped(name)
            )?;
        }
        Ok(())
    }
}

/// A name as the inside of an HCL quoted string: quotes, backslashes and control characters
/// escaped, and `${`/`%{` doubled so that they are not read as template sequences.
struct HclEscaped<'a>(&'a str);

impl fmt::Display for HclEscaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '$' | '%' if chars.peek() == Some(&'{') => write!(f, "{c}{c}")?,
                c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
