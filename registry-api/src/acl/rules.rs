//! Consul's ACL rules language (<https://developer.hashicorp.com/consul/docs/security/acl/acl-rules>)
//! read into a [`Rules`] value: what one policy (or one synthesised identity) grants, with
//! repeated rules already merged as Consul's `acl/policy_merger.go` merges them. Deciding
//! what a token may do from several [`Rules`] is [`super::Authorizer`]'s job.
//!
//! A policy is HCL (`service "web" { policy = "write" }`, `operator = "read"`) or its JSON
//! form (`{"service": {"web": {"policy": "write"}}, "operator": "read"}`). Both are first
//! brought into the same JSON shape and read by one walker, so that the two forms cannot
//! drift apart.

use serde_json::{Map, Value};
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
    fn takes_list(self) -> bool {
        self == Resource::Key
    }

    /// Whether its rules may carry `intentions` (Consul: services and identities).
    fn takes_intentions(self) -> bool {
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
        if text.len() > MAX_RULES_BYTES {
            return Err(RulesError::TooLong(text.len()));
        }
        let trimmed = text.trim();
        let mut reader = Reader::default();
        if trimmed.is_empty() {
            return Ok(reader.rules);
        }
        if trimmed.starts_with('{') {
            let doc: Value = serde_json::from_str(trimmed).map_err(|e| RulesError::Syntax {
                line: e.line(),
                col: e.column(),
                reason: e.to_string(),
            })?;
            let Value::Object(map) = doc else {
                return Err(RulesError::Syntax {
                    line: 1,
                    col: 1,
                    reason: "the rules must be a JSON object".into(),
                });
            };
            for (key, value) in &map {
                reader.top(key, value)?;
            }
        } else {
            let body = hcl::parse(text).map_err(|e| match &e {
                hcl::Error::Parse(p) => RulesError::Syntax {
                    line: p.location().line(),
                    col: p.location().column(),
                    reason: p.message().to_string(),
                },
                other => RulesError::Syntax {
                    line: 1,
                    col: 1,
                    reason: other.to_string(),
                },
            })?;
            for structure in body.into_inner() {
                let (key, value) = hcl_structure(structure)?;
                reader.top(&key, &value)?;
            }
        }
        Ok(reader.rules)
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

/// One top-level HCL structure in the JSON shape the walker reads: `operator = "read"` is
/// `("operator", "read")`, `service "web" { policy = "write" }` is
/// `("service", {"web": {"policy": "write"}})`.
fn hcl_structure(structure: hcl::Structure) -> Result<(String, Value), RulesError> {
    match structure {
        hcl::Structure::Attribute(attr) => {
            let key = attr.key.to_string();
            let value = hcl_value(&key, attr.expr)?;
            Ok((key, value))
        }
        hcl::Structure::Block(block) => {
            let key = block.identifier.to_string();
            if let Some(scalar) = scalar_keyword(&key) {
                return Err(RulesError::Malformed {
                    at: key,
                    reason: format!("takes a value (`{scalar} = \"read\"`), not a block"),
                });
            }
            if named_keyword(&key).is_none() {
                return Err(RulesError::UnknownKind(key));
            }
            let name = match block.labels.as_slice() {
                [hcl::BlockLabel::String(name)] => name.clone(),
                [hcl::BlockLabel::Identifier(name)] => {
                    return Err(RulesError::Malformed {
                        at: format!("{key} {name}"),
                        reason: "the name must be a quoted string".into(),
                    })
                }
                [] => {
                    return Err(RulesError::Malformed {
                        at: key.clone(),
                        reason: format!("a name is missing (`{key} \"name\" {{ ... }}`)"),
                    })
                }
                _ => {
                    return Err(RulesError::Malformed {
                        at: key,
                        reason: "takes one name, not several".into(),
                    })
                }
            };
            let mut fields = Map::new();
            for inner in block.body.into_inner() {
                match inner {
                    hcl::Structure::Attribute(attr) => {
                        let field = attr.key.to_string();
                        let at = format!("{key} {name:?}");
                        let value = hcl_value(&at, attr.expr)?;
                        fields.insert(field, value);
                    }
                    hcl::Structure::Block(inner) => {
                        return Err(RulesError::Malformed {
                            at: format!("{key} {name:?}"),
                            reason: format!("unexpected block {:?}", inner.identifier.as_str()),
                        })
                    }
                }
            }
            let mut named = Map::new();
            named.insert(name, Value::Object(fields));
            Ok((key, Value::Object(named)))
        }
    }
}

/// An HCL literal as JSON. Rules are data: variables, functions, templates and operators
/// have no meaning in them.
fn hcl_value(at: &str, expr: hcl::Expression) -> Result<Value, RulesError> {
    Ok(match expr {
        hcl::Expression::Null => Value::Null,
        hcl::Expression::Bool(b) => Value::Bool(b),
        // Numbers are wrong wherever they appear; the walker says so with the context.
        hcl::Expression::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        hcl::Expression::String(s) => Value::String(s),
        hcl::Expression::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|e| hcl_value(at, e))
                .collect::<Result<_, _>>()?,
        ),
        hcl::Expression::Object(object) => {
            let mut map = Map::new();
            for (key, value) in object {
                let key = match key {
                    hcl::ObjectKey::Identifier(id) => id.to_string(),
                    hcl::ObjectKey::Expression(hcl::Expression::String(s)) => s,
                    _ => {
                        return Err(RulesError::Malformed {
                            at: at.to_string(),
                            reason: "object keys must be names or quoted strings".into(),
                        })
                    }
                };
                map.insert(key, hcl_value(at, value)?);
            }
            Value::Object(map)
        }
        hcl::Expression::Parenthesis(inner) => hcl_value(at, *inner)?,
        _ => return Err(RulesError::Malformed {
            at: at.to_string(),
            reason:
                "values must be literal strings (no variables, functions or \"${...}\" templates)"
                    .into(),
        }),
    })
}

/// The scalar a top-level keyword names.
fn scalar_keyword(key: &str) -> Option<Scalar> {
    Scalar::ALL.into_iter().find(|s| s.as_str() == key)
}

/// The named family (and match) a top-level keyword names.
fn named_keyword(key: &str) -> Option<(Resource, Match)> {
    Resource::ALL.into_iter().find_map(|r| {
        [Match::Exact, Match::Prefix]
            .into_iter()
            .find(|m| r.keyword(*m) == key)
            .map(|m| (r, m))
    })
}

/// A JSON value's kind, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads the JSON shape of a policy into [`Rules`], counting rules as it goes.
#[derive(Default)]
struct Reader {
    /// What has been read so far.
    rules: Rules,
    /// Rules read, repeated ones included (the bound is on work, not on distinct rules).
    count: usize,
}

impl Reader {
    /// Counts one more rule against [`MAX_RULES`].
    fn count(&mut self) -> Result<(), RulesError> {
        self.count += 1;
        if self.count > MAX_RULES {
            Err(RulesError::TooMany)
        } else {
            Ok(())
        }
    }

    /// One top-level entry: a scalar or a family's rules.
    fn top(&mut self, key: &str, value: &Value) -> Result<(), RulesError> {
        if let Some(scalar) = scalar_keyword(key) {
            self.count()?;
            let Value::String(word) = value else {
                return Err(RulesError::Malformed {
                    at: key.to_string(),
                    reason: format!(
                        "must be a string (read, write or deny), not {}",
                        kind(value)
                    ),
                });
            };
            let access = access_word("policy", word, key.to_string(), false)?;
            self.rules.add_scalar(scalar, access);
            return Ok(());
        }
        let Some((resource, how)) = named_keyword(key) else {
            return Err(RulesError::UnknownKind(key.to_string()));
        };
        match value {
            // {"service": {"web": {...}, "db": {...}}}
            Value::Object(map) => {
                for (name, body) in map {
                    self.bodies(resource, how, name, body)?;
                }
            }
            // [{"web": {...}}, {"db": {...}}], as HCL-to-JSON converters write repeated blocks.
            Value::Array(items) => {
                for item in items {
                    let Value::Object(map) = item else {
                        return Err(RulesError::Malformed {
                            at: key.to_string(),
                            reason: format!(
                                "list items must be objects of names to rules, not {}",
                                kind(item)
                            ),
                        });
                    };
                    for (name, body) in map {
                        self.bodies(resource, how, name, body)?;
                    }
                }
            }
            other => {
                return Err(RulesError::Malformed {
                    at: key.to_string(),
                    reason: format!(
                    "must map names to rules (`{key} \"name\" {{ policy = \"read\" }}`), not {}",
                    kind(other)
                ),
                })
            }
        }
        Ok(())
    }

    /// A name's rule body, or a list of bodies (`{"web": [{"policy": "read"}]}`).
    fn bodies(
        &mut self,
        resource: Resource,
        how: Match,
        name: &str,
        body: &Value,
    ) -> Result<(), RulesError> {
        match body {
            Value::Array(items) => {
                for item in items {
                    self.rule(resource, how, name, item)?;
                }
                Ok(())
            }
            other => self.rule(resource, how, name, other),
        }
    }

    /// One rule: `{"policy": "read", "intentions": "read"}`.
    fn rule(
        &mut self,
        resource: Resource,
        how: Match,
        name: &str,
        body: &Value,
    ) -> Result<(), RulesError> {
        self.count()?;
        let at = format!("{} {name:?}", resource.keyword(how));
        let Value::Object(fields) = body else {
            return Err(RulesError::Malformed {
                at,
                reason: format!("must be a block with a policy, not {}", kind(body)),
            });
        };
        let mut policy = None;
        for (field, value) in fields {
            // Consul reads its policies with Go's HCL, whose field names are not case
            // sensitive; JSON written by other tools sometimes says "Policy".
            let field_name = if field.eq_ignore_ascii_case("policy") {
                "policy"
            } else if field.eq_ignore_ascii_case("intentions") && resource.takes_intentions() {
                "intentions"
            } else {
                return Err(RulesError::Malformed {
                    at,
                    reason: format!(
                        "unknown field {field:?} (want policy{})",
                        if resource.takes_intentions() {
                            " or intentions"
                        } else {
                            ""
                        }
                    ),
                });
            };
            let Value::String(word) = value else {
                return Err(RulesError::Malformed {
                    at,
                    reason: format!("{field_name} must be a string, not {}", kind(value)),
                });
            };
            if field_name == "policy" {
                policy = Some(access_word(
                    "policy",
                    word,
                    at.clone(),
                    resource.takes_list(),
                )?);
            } else {
                // Intentions are not enforced here (no service mesh); the word is still
                // checked so that a policy this registry accepts is one Consul accepts.
                access_word("intentions", word, at.clone(), false)?;
            }
        }
        let Some(access) = policy else {
            return Err(RulesError::Malformed {
                at,
                reason: "the policy is missing (`policy = \"read\"`)".into(),
            });
        };
        self.rules.add(resource, how, name, access);
        Ok(())
    }
}

/// An access word where `list` is valid only if `list_ok` (Consul's `isPolicyValid`; words
/// are lowercase only, as there).
fn access_word(
    field: &'static str,
    word: &str,
    at: String,
    list_ok: bool,
) -> Result<Access, RulesError> {
    match word {
        "read" => Ok(Access::Read),
        "write" => Ok(Access::Write),
        "deny" => Ok(Access::Deny),
        "list" if list_ok => Ok(Access::List),
        _ => Err(RulesError::InvalidPolicy {
            field,
            word: word.to_string(),
            at,
            want: match (list_ok, word) {
                (true, _) => "read, write, list or deny",
                (false, "list") => "read, write or deny; list is only for key and key_prefix",
                (false, _) => "read, write or deny",
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[(Resource, Match, &str, Access)]) -> Rules {
        let mut r = Rules::default();
        for (res, how, name, access) in entries {
            r.add(*res, *how, name, *access);
        }
        r
    }

    #[test]
    fn hcl_and_json_forms_of_one_policy_are_equal() {
        let hcl = r#"
            # A comment, as Consul's examples have.
            operator = "read"
            acl = "deny"
            service "web" {
              policy = "write"
              intentions = "read"
            }
            service "db" {
              policy = "read"
            }
            service_prefix "" { policy = "read" }
            key_prefix "app/" { policy = "list" }
            key "app/secret" { policy = "deny" }
            node_prefix "" { policy = "read" }
            agent "n1" { policy = "write" }
            session_prefix "" { policy = "write" }
            event_prefix "deploy" { policy = "write" }
            query "q" { policy = "read" }
            identity_prefix "w" { policy = "write" }
            keyring = "write"
            mesh = "read"
            peering = "deny"
        "#;
        let json = r#"{
            "operator": "read",
            "acl": "deny",
            "service": {"web": {"policy": "write", "intentions": "read"}, "db": {"policy": "read"}},
            "service_prefix": {"": {"policy": "read"}},
            "key_prefix": {"app/": {"policy": "list"}},
            "key": {"app/secret": {"policy": "deny"}},
            "node_prefix": {"": {"policy": "read"}},
            "agent": {"n1": {"policy": "write"}},
            "session_prefix": {"": {"policy": "write"}},
            "event_prefix": {"deploy": {"policy": "write"}},
            "query": {"q": {"policy": "read"}},
            "identity_prefix": {"w": {"policy": "write"}},
            "keyring": "write",
            "mesh": "read",
            "peering": "deny"
        }"#;
        // What HCL-to-JSON converters write: a family's blocks as a list, a body as a list.
        let json_lists = r#"{
            "operator": "read", "acl": "deny", "keyring": "write", "mesh": "read", "peering": "deny",
            "service": [{"web": [{"policy": "write", "intentions": "read"}]}, {"db": [{"policy": "read"}]}],
            "service_prefix": [{"": [{"policy": "read"}]}],
            "key_prefix": [{"app/": {"policy": "list"}}],
            "key": [{"app/secret": {"policy": "deny"}}],
            "node_prefix": [{"": {"policy": "read"}}],
            "agent": [{"n1": {"policy": "write"}}],
            "session_prefix": [{"": {"policy": "write"}}],
            "event_prefix": [{"deploy": {"policy": "write"}}],
            "query": [{"q": {"policy": "read"}}],
            "identity_prefix": [{"w": {"Policy": "write"}}]
        }"#;
        let from_hcl = Rules::parse(hcl).unwrap();
        assert_eq!(from_hcl, Rules::parse(json).unwrap());
        assert_eq!(from_hcl, Rules::parse(json_lists).unwrap());
        assert_eq!(from_hcl.len(), 16);
        assert_eq!(from_hcl.scalar(Scalar::Operator), Some(Access::Read));
        assert_eq!(from_hcl.scalar(Scalar::Acl), Some(Access::Deny));
        let mut expected = rules(&[
            (Resource::Service, Match::Exact, "web", Access::Write),
            (Resource::Service, Match::Exact, "db", Access::Read),
            (Resource::Service, Match::Prefix, "", Access::Read),
            (Resource::Key, Match::Prefix, "app/", Access::List),
            (Resource::Key, Match::Exact, "app/secret", Access::Deny),
            (Resource::Node, Match::Prefix, "", Access::Read),
            (Resource::Agent, Match::Exact, "n1", Access::Write),
            (Resource::Session, Match::Prefix, "", Access::Write),
            (Resource::Event, Match::Prefix, "deploy", Access::Write),
            (Resource::Query, Match::Exact, "q", Access::Read),
            (Resource::Identity, Match::Prefix, "w", Access::Write),
        ]);
        for (s, a) in [
            (Scalar::Operator, Access::Read),
            (Scalar::Acl, Access::Deny),
            (Scalar::Keyring, Access::Write),
            (Scalar::Mesh, Access::Read),
            (Scalar::Peering, Access::Deny),
        ] {
            expected.add_scalar(s, a);
        }
        assert_eq!(from_hcl, expected);
    }

    #[test]
    fn empty_and_comment_only_texts_are_no_rules() {
        for text in [
            "",
            "  \n\t",
            "# nothing\n// still nothing\n/* none */",
            "{}",
        ] {
            let r = Rules::parse(text).unwrap();
            assert!(r.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn repeated_rules_merge_by_precedence_within_a_policy() {
        let r = Rules::parse(
            r#"
            key "k" { policy = "read" }
            key "k" { policy = "list" }
            service "web" { policy = "write" }
            service "web" { policy = "read" }
            service "web" { policy = "deny" }
            service "web" { policy = "write" }
            "#,
        )
        .unwrap();
        assert_eq!(
            r,
            rules(&[
                (Resource::Key, Match::Exact, "k", Access::List),
                (Resource::Service, Match::Exact, "web", Access::Deny),
            ])
        );
        // Exact and prefix rules of one name are different rules.
        let r = Rules::parse(
            "node \"a\" { policy = \"read\" }\nnode_prefix \"a\" { policy = \"write\" }",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn access_precedence_is_the_variant_order() {
        assert!(Access::Deny > Access::Write);
        assert!(Access::Write > Access::List);
        assert!(Access::List > Access::Read);
        let cases = [
            (Access::Read, Access::Read, true),
            (Access::Read, Access::List, false),
            (Access::Read, Access::Write, false),
            (Access::List, Access::Read, true),
            (Access::List, Access::List, true),
            (Access::List, Access::Write, false),
            (Access::Write, Access::Read, true),
            (Access::Write, Access::List, true),
            (Access::Write, Access::Write, true),
            (Access::Deny, Access::Read, false),
            (Access::Deny, Access::Write, false),
            (Access::Write, Access::Deny, false),
        ];
        for (rule, wanted, allowed) in cases {
            assert_eq!(rule.grants(wanted), allowed, "{rule} grants {wanted}?");
        }
    }

    #[test]
    fn identities_are_consuls_templated_policies() {
        assert_eq!(
            Rules::service_identity("web"),
            Rules::parse(
                r#"
                service "web" { policy = "write" }
                service "web-sidecar-proxy" { policy = "write" }
                service_prefix "" { policy = "read" }
                node_prefix "" { policy = "read" }
                "#
            )
            .unwrap()
        );
        assert_eq!(
            Rules::node_identity("n1"),
            Rules::parse(
                "node \"n1\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }"
            )
            .unwrap()
        );
    }

    #[test]
    fn display_reads_back_to_the_same_rules() {
        let mut r = Rules::service_identity("web");
        r.add(
            Resource::Key,
            Match::Prefix,
            "odd \"name\" \\ ${x} %{y} \n",
            Access::List,
        );
        r.add(Resource::Key, Match::Exact, "ünïcode/ключ", Access::Deny);
        r.add_scalar(Scalar::Operator, Access::Write);
        let text = r.to_string();
        assert_eq!(Rules::parse(&text).unwrap(), r, "{text}");
    }

    #[test]
    fn bad_input_says_what_and_where() {
        let cases: &[(&str, &str)] = &[
            (
                r#"service "web" { policy = "reed" }"#,
                r#"invalid policy "reed" for service "web" (want read, write or deny)"#,
            ),
            (
                r#"service "web" { policy = "list" }"#,
                r#"invalid policy "list" for service "web" (want read, write or deny; list is only for key and key_prefix)"#,
            ),
            (
                r#"key_prefix "a/" { policy = "lst" }"#,
                r#"invalid policy "lst" for key_prefix "a/" (want read, write, list or deny)"#,
            ),
            (
                r#"service "web" { policy = "Write" }"#,
                r#"invalid policy "Write" for service "web" (want read, write or deny)"#,
            ),
            (
                "service \"web\" {\n policy = \"write\"\n intentions = \"all\"\n}",
                r#"invalid intentions "all" for service "web" (want read, write or deny)"#,
            ),
            (
                r#"operator = "list""#,
                r#"invalid policy "list" for operator (want read, write or deny; list is only for key and key_prefix)"#,
            ),
            (
                r#"services "web" { policy = "read" }"#,
                r#"unknown rule kind "services""#,
            ),
            (r#"bogus = "read""#, r#"unknown rule kind "bogus""#),
            (
                r#"service "web" { }"#,
                r#"service "web": the policy is missing"#,
            ),
            (
                "node \"n\" {\n policy = \"read\"\n intentions = \"read\"\n}",
                r#"node "n": unknown field "intentions" (want policy)"#,
            ),
            (
                r#"service web { policy = "read" }"#,
                "service web: the name must be a quoted string",
            ),
            (
                r#"service { policy = "read" }"#,
                "service: a name is missing",
            ),
            (
                r#"service "a" "b" { policy = "read" }"#,
                "service: takes one name, not several",
            ),
            (r#"operator { policy = "read" }"#, "operator: takes a value"),
            (
                r#"operator = 1"#,
                "operator: must be a string (read, write or deny), not a number",
            ),
            (
                r#"service "web" { policy = var.p }"#,
                r#"service "web": values must be literal strings"#,
            ),
            (
                r#"service "web" { policy = "${p}" }"#,
                r#"service "web": values must be literal strings"#,
            ),
            (r#"service "web" {"#, "invalid rules syntax at line 1"),
            (
                r#"{"service": {"web": {"policy": 7}}}"#,
                r#"service "web": policy must be a string, not a number"#,
            ),
            (
                r#"{"service": {"web": "write"}}"#,
                r#"service "web": must be a block with a policy, not a string"#,
            ),
            (
                r#"{"service": ["web"]}"#,
                "service: list items must be objects of names to rules, not a string",
            ),
            (r#"{"service": "web"}"#, "service: must map names to rules"),
            (r#"{"service": "#, "invalid rules syntax at line 1"),
            (r#"{"acl": "write"} x"#, "invalid rules syntax at line 1"),
        ];
        for (text, want) in cases {
            let err = Rules::parse(text).expect_err(text).to_string();
            assert!(err.starts_with(want), "{text}\n got: {err}\nwant: {want}");
        }
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let err =
            Rules::parse("operator = \"read\"\n\nservice \"web\" {\n  policy = \n}\n").unwrap_err();
        let RulesError::Syntax { line, .. } = err else {
            panic!("{err:?}");
        };
        assert!(line >= 4, "{line}");
        let err = Rules::parse("{\n\"acl\": \"read\",\n\"key\": [}").unwrap_err();
        assert!(matches!(err, RulesError::Syntax { line: 3, .. }), "{err:?}");
    }

    #[test]
    fn the_work_is_bounded() {
        let long = format!("# {}", "x".repeat(MAX_RULES_BYTES));
        assert_eq!(Rules::parse(&long), Err(RulesError::TooLong(long.len())));
        let many: String = (0..=MAX_RULES)
            .map(|i| format!("key \"k{i}\" {{ policy = \"read\" }}\n"))
            .collect();
        assert!(many.len() <= MAX_RULES_BYTES);
        assert_eq!(Rules::parse(&many), Err(RulesError::TooMany));
        // The same rule repeated still counts: the bound is on the work.
        let repeated = "key \"k\" { policy = \"read\" }\n".repeat(MAX_RULES + 1);
        assert_eq!(Rules::parse(&repeated), Err(RulesError::TooMany));
        let at_limit: String = (0..MAX_RULES)
            .map(|i| format!("key \"k{i}\" {{ policy = \"read\" }}\n"))
            .collect();
        assert_eq!(Rules::parse(&at_limit).unwrap().len(), MAX_RULES);
        // Deep nesting is a syntax error, not a stack overflow.
        for deep in [
            "a = ".to_string() + &"[".repeat(30_000),
            "{\"a\":".repeat(10_000),
        ] {
            assert!(
                matches!(Rules::parse(&deep), Err(RulesError::Syntax { .. })),
                "{}",
                &deep[..10]
            );
        }
    }

    #[test]
    fn default_policy_words() {
        assert_eq!(
            "allow".parse::<DefaultPolicy>().unwrap(),
            DefaultPolicy::Allow
        );
        assert_eq!(
            "deny".parse::<DefaultPolicy>().unwrap(),
            DefaultPolicy::Deny
        );
        assert!("Allow".parse::<DefaultPolicy>().is_err());
        assert_eq!(DefaultPolicy::Allow.to_string(), "allow");
        assert_eq!(DefaultPolicy::Deny.to_string(), "deny");
    }

    #[test]
    fn words_print_as_consul_writes_them() {
        assert_eq!(
            Resource::ALL.map(|r| r.to_string()).join(","),
            "agent,event,identity,key,node,query,service,session"
        );
        assert_eq!(
            Scalar::ALL.map(|s| s.to_string()).join(","),
            "acl,keyring,mesh,operator,peering"
        );
        assert_eq!(
            [Access::Read, Access::List, Access::Write, Access::Deny].map(|a| a.to_string()),
            ["read", "list", "write", "deny"]
        );
        for (i, r) in Resource::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        for (i, s) in Scalar::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i);
        }
    }
}
