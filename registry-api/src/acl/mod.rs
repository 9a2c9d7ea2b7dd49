//! ACLs (Consul's ACL system, <https://developer.hashicorp.com/consul/api-docs/acl>): the wire
//! types of tokens, policies and roles, the rule language (`rules.rs`), the pure decision
//! function (`authorizer.rs`), and what a request carries ([`Authz`]): the one copy of each
//! rule that the server, the agent and the CLI share. Owns what a token may do and how that
//! is written; must not know where tokens are stored (the server's `state/acl.rs`) or how a
//! request's token is found and resolved (the server's `acl.rs`, the agent's `acl.rs`).

pub mod authorizer;
#[cfg(feature = "serve")]
pub mod extract;
mod parse;
pub mod rules;

pub use authorizer::*;
pub use rules::*;

use crate::Error as ApiError;
use serde::{Deserialize, Serialize};

/// The built-in policy that allows everything (Consul's `global-management`).
pub const GLOBAL_MANAGEMENT_ID: &str = "00000000-0000-0000-0000-000000000001";
/// Its name.
pub const GLOBAL_MANAGEMENT_NAME: &str = "global-management";
/// The anonymous token's AccessorID: what a request without a token is.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
/// The anonymous token's SecretID (Consul's).
pub const ANONYMOUS_SECRET: &str = "anonymous";
/// Consul's header for a request's token.
pub const TOKEN_HEADER: &str = "X-Consul-Token";
/// Consul's header on a list some of whose items the token could not see.
pub const FILTERED_HEADER: &str = "X-Consul-Results-Filtered-By-ACLs";
/// What a token without `acl:write` sees instead of another token's SecretID (Consul's
/// `redactedToken`).
pub const REDACTED: &str = "<hidden>";
/// Longest name of a policy or role (Consul's `validPolicyName`: 1-128 of `[A-Za-z0-9_-]`).
pub const MAX_NAME: usize = 128;
/// Longest description of a token, policy or role.
pub const MAX_DESCRIPTION: usize = 4096;
/// Most policies, roles or identities linked from one token or role.
pub const MAX_LINKS: usize = 64;

/// A token's or role's link to a policy or role, by ID or by Name (either is enough in a
/// request; answers carry both).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclLink {
    /// The linked item's ID.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The linked item's name.
    #[serde(default)]
    pub name: String,
}

/// A token's or role's service identity: write on the service (and its sidecar), read on
/// every service and node (Consul's templated policy).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceIdentity {
    /// The service.
    #[serde(default)]
    pub service_name: String,
    /// The datacenters it applies in (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

/// A token's or role's node identity: write on the node, read on every service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeIdentity {
    /// The node.
    #[serde(default)]
    pub node_name: String,
    /// The one datacenter it applies in.
    #[serde(default)]
    pub datacenter: String,
}

/// A token (`/v1/acl/token`), in Consul's shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclToken {
    /// Public identifier (safe to log).
    #[serde(rename = "AccessorID", default)]
    pub accessor_id: String,
    /// The secret a request carries. Never logged.
    #[serde(rename = "SecretID", default)]
    pub secret_id: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Linked policies.
    #[serde(default)]
    pub policies: Vec<AclLink>,
    /// Linked roles.
    #[serde(default)]
    pub roles: Vec<AclLink>,
    /// Service identities.
    #[serde(default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Valid only in the datacenter that made it (not replicated).
    #[serde(default)]
    pub local: bool,
    /// When it stops working (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    /// In a create: the lifetime from now (`"1h"`), turned into `ExpirationTime`.
    #[serde(
        rename = "ExpirationTTL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_ttl: Option<String>,
    /// When it was made (RFC 3339).
    #[serde(default)]
    pub create_time: String,
    /// Raft index of its creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// A policy (`/v1/acl/policy`), in Consul's shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclPolicy {
    /// Identifier.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The rules, in Consul's HCL or JSON (`rules.rs`).
    #[serde(default)]
    pub rules: String,
    /// The datacenters it applies in (empty: all).
    #[serde(default)]
    pub datacenters: Vec<String>,
    /// Raft index of its creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// A role (`/v1/acl/role`): a named set of policies and identities tokens link to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclRole {
    /// Identifier.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Linked policies.
    #[serde(default)]
    pub policies: Vec<AclLink>,
    /// Service identities.
    #[serde(default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Raft index of its creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// What a datacenter's servers answer an agent or another server asking what a token may do
/// (`GET /v1/internal/acl/authority`, with the token): its policies' rules in force in that
/// datacenter, flattened through its roles, so that the asker builds the same
/// [`Authorizer`] the servers use ([`TokenAuthority::authorizer`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TokenAuthority {
    /// The token's AccessorID.
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    /// Linked to `global-management`: allowed everything.
    pub management: bool,
    /// The rules of every policy it has in this datacenter (directly or through roles).
    pub rules: Vec<String>,
    /// Its service identities in this datacenter.
    pub service_identities: Vec<String>,
    /// Its node identities in this datacenter.
    pub node_identities: Vec<String>,
    /// The datacenter's default policy.
    pub default_policy: String,
    /// When it stops working (ms since the epoch), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl TokenAuthority {
    /// The decisions this authority allows. Err when a stored policy does not parse (only a
    /// policy written by another build can: each is checked when it is written).
    pub fn authorizer(&self) -> Result<Authorizer, RulesError> {
        let default: DefaultPolicy = self.default_policy.parse().unwrap_or(DefaultPolicy::Deny);
        if self.management {
            return Ok(Authorizer::management());
        }
        let mut rules = Vec::with_capacity(
            self.rules.len() + self.service_identities.len() + self.node_identities.len(),
        );
        for text in &self.rules {
            rules.push(Rules::parse(text)?);
        }
        rules.extend(
            self.service_identities
                .iter()
                .map(|s| Rules::service_identity(s)),
        );
        rules.extend(self.node_identities.iter().map(|n| Rules::node_identity(n)));
        let refs: Vec<&Rules> = rules.iter().collect();
        Ok(Authorizer::new(&refs, default))
    }
}

/// A request's token: `X-Consul-Token`, else `Authorization: Bearer`, else `?token=` (Consul's
/// order in `agent/http.go` `parseTokenInternal`). `None`: no token (the anonymous token).
pub fn request_token<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    query: Option<&'a str>,
) -> Option<String> {
    if let Some(t) = header(TOKEN_HEADER)
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_string());
    }
    if let Some(auth) = header("authorization") {
        let auth = auth.trim();
        if let Some((scheme, rest)) = auth.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
                return Some(rest.trim().to_string());
            }
        }
    }
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// What one request may do: its token's [`Authorizer`], or everything when ACLs are off. Every
/// handler's authorisation step asks it (`require*`), and every list it answers is filtered
/// through it ([`Authz::allows`]).
#[derive(Clone, Debug)]
pub struct Authz {
    /// The token's AccessorID (empty with ACLs off); safe to log and to put in errors.
    accessor: String,
    /// `None`: ACLs are off.
    authorizer: Option<Authorizer>,
    /// What names this token's filtered answers in a shared cache ([`Authz::cache_key`]).
    key: String,
}

impl Authz {
    /// ACLs off: everything is allowed and nothing is filtered.
    pub fn disabled() -> Self {
        Authz {
            accessor: String::new(),
            authorizer: None,
            key: String::new(),
        }
    }

    /// The token `accessor` with `authorizer`.
    pub fn token(accessor: &str, authorizer: Authorizer) -> Self {
        Authz {
            accessor: accessor.to_string(),
            authorizer: Some(authorizer),
            key: accessor.to_string(),
        }
    }

    /// The same, resolved from ACL tables at `index`: its cached answers are its own at that
    /// index, so a token whose rights changed never gets an answer filtered with the old ones.
    pub fn at_acl_index(mut self, index: u64) -> Self {
        self.key = format!("{}@{index}", self.accessor);
        self
    }

    /// Whether ACLs are on for this request.
    pub fn enabled(&self) -> bool {
        self.authorizer.is_some()
    }

    /// The token's AccessorID (empty with ACLs off).
    pub fn accessor(&self) -> &str {
        &self.accessor
    }

    /// Whether every request this one could make is allowed (ACLs off, or a management
    /// token): lists need no filtering.
    pub fn allows_all(&self) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(Authorizer::is_management)
    }

    /// What distinguishes this token's filtered answers from another's in a shared answer
    /// cache: empty when nothing is filtered.
    pub fn cache_key(&self) -> &str {
        if self.allows_all() {
            ""
        } else {
            &self.key
        }
    }

    /// May `name` of `resource` be accessed at `access`?
    pub fn allows(&self, resource: Resource, name: &str, access: Access) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.allows(resource, name, access))
    }

    /// May the scalar resource be accessed at `access`?
    pub fn allows_scalar(&self, scalar: Scalar, access: Access) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.allows_scalar(scalar, access))
    }

    /// Consul's KeyWritePrefix (a recursive delete).
    pub fn allows_key_write_prefix(&self, prefix: &str) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.key_write_prefix(prefix))
    }

    /// [`Authz::allows`], or Consul's 403.
    pub fn require(&self, resource: Resource, name: &str, access: Access) -> Result<(), ApiError> {
        if self.allows(resource, name, access) {
            Ok(())
        } else {
            Err(self.denied(&format!("{resource}:{access}"), Some(name)))
        }
    }

    /// [`Authz::allows_scalar`], or Consul's 403.
    pub fn require_scalar(&self, scalar: Scalar, access: Access) -> Result<(), ApiError> {
        if self.allows_scalar(scalar, access) {
            Ok(())
        } else {
            Err(self.denied(&format!("{scalar}:{access}"), None))
        }
    }

    /// [`Authz::allows_key_write_prefix`], or Consul's 403.
    pub fn require_key_write_prefix(&self, prefix: &str) -> Result<(), ApiError> {
        if self.allows_key_write_prefix(prefix) {
            Ok(())
        } else {
            Err(self.denied("key:write", Some(prefix)))
        }
    }

    /// Management only (snapshots, Consul's `acl:write`-and-`operator:write` operations).
    pub fn require_management(&self) -> Result<(), ApiError> {
        if self.allows_all() {
            Ok(())
        } else {
            Err(self.denied("management", None))
        }
    }

    /// Consul's text (`acl/errors.go`, `PermissionDeniedByACL`): the AccessorID, never the
    /// secret.
    fn denied(&self, permission: &str, name: Option<&str>) -> ApiError {
        let on = name.map(|n| format!(" on {n:?}")).unwrap_or_default();
        ApiError::Forbidden(format!(
            "{PERMISSION_DENIED}: token with AccessorID '{}' lacks permission '{permission}'{on}",
            self.accessor
        ))
    }
}

/// Consul's text for a denied request (clients match on its start).
pub const PERMISSION_DENIED: &str = "Permission denied";
/// Consul's text for a token nobody knows (or that expired).
pub const ACL_NOT_FOUND: &str = "ACL not found";
/// Consul's text (a 401) for an ACL endpoint with ACLs off.
pub const ACL_DISABLED: &str = "ACL support disabled";

/// A policy's or role's name: 1-128 of `[A-Za-z0-9_-]` (Consul's `validPolicyName`).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "Invalid {kind} name {name:?}: 1 to {MAX_NAME} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "Invalid {kind} name {name:?}: only letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// A token's or role's links and identities are within the bounds.
pub fn check_links(
    policies: &[AclLink],
    roles: &[AclLink],
    services: &[ServiceIdentity],
    nodes: &[NodeIdentity],
    description: &str,
) -> Result<(), String> {
    if description.len() > MAX_DESCRIPTION {
        return Err(format!(
            "Description is longer than {MAX_DESCRIPTION} bytes"
        ));
    }
    for (what, n) in [
        ("policies", policies.len()),
        ("roles", roles.len()),
        ("service identities", services.len()),
        ("node identities", nodes.len()),
    ] {
        if n > MAX_LINKS {
            return Err(format!("at most {MAX_LINKS} {what}, not {n}"));
        }
    }
    for s in services {
        if s.service_name.is_empty() || s.service_name.len() > 256 {
            return Err("a ServiceIdentity needs a ServiceName of 1 to 256 bytes".into());
        }
    }
    for n in nodes {
        if n.node_name.is_empty() || n.datacenter.is_empty() {
            return Err("a NodeIdentity needs a NodeName and a Datacenter".into());
        }
    }
    Ok(())
}

/// `path_and_query` with the value of any `token=` query parameter hidden, for log lines and
/// error texts (a token in the URL is a secret like one in `X-Consul-Token`).
pub fn redact_token(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.into();
    };
    if !query
        .split('&')
        .any(|p| p == "token" || p.starts_with("token="))
    {
        return path_and_query.into();
    }
    let query: Vec<&str> = query
        .split('&')
        .map(|p| {
            if p == "token" || p.starts_with("token=") {
                "token=<hidden>"
            } else {
                p
            }
        })
        .collect();
    format!("{path}?{}", query.join("&")).into()
}

/// `ms` (since the epoch) as RFC 3339, as Consul writes times.
pub fn rfc3339(ms: u64) -> String {
    let ms = i64::try_from(ms.min(MAX_TIME_MS)).unwrap_or(0);
    time::OffsetDateTime::UNIX_EPOCH
        .checked_add(time::Duration::milliseconds(ms))
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The latest time written (9999-12-31T23:59:59.999Z): later expiries are refused, so that
/// every time a server writes can be spelt.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// An RFC 3339 time as ms since the epoch.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("invalid time {text:?}: {e}"))?;
    let ms = (t - time::OffsetDateTime::UNIX_EPOCH).whole_milliseconds();
    u64::try_from(ms).map_err(|_| format!("time {text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_from_the_header_then_bearer_then_the_query() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
            }
        };
        let both = headers(&[("X-Consul-Token", "a"), ("Authorization", "Bearer b")]);
        assert_eq!(request_token(both, Some("token=c")).as_deref(), Some("a"));
        let bearer = headers(&[("authorization", "bearer  b ")]);
        assert_eq!(request_token(bearer, Some("token=c")).as_deref(), Some("b"));
        let basic = headers(&[("authorization", "Basic eA==")]);
        assert_eq!(
            request_token(basic, Some("x=1&token=c%2Fd")).as_deref(),
            Some("c/d")
        );
        assert_eq!(request_token(headers(&[]), Some("token=")), None);
        assert_eq!(request_token(headers(&[]), None), None);
    }

    #[test]
    fn a_token_in_a_query_is_hidden() {
        assert_eq!(
            redact_token("/v1/kv/a?dc=dc2&token=s3cret&x"),
            "/v1/kv/a?dc=dc2&token=<hidden>&x"
        );
        assert_eq!(redact_token("/v1/kv/a?tokens=1"), "/v1/kv/a?tokens=1");
        assert_eq!(rfc3339(u64::MAX), rfc3339(MAX_TIME_MS), "never panics");
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_764_500_000_123;
        let text = rfc3339(ms);
        assert!(text.starts_with("2025-11-30T"), "{text}");
        assert_eq!(parse_rfc3339(&text), Ok(ms));
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn denials_name_the_accessor_and_permission_never_the_secret() {
        let authz = Authz::token("acc-1", Authorizer::new(&[], DefaultPolicy::Deny));
        let e = authz
            .require(Resource::Service, "web", Access::Write)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Permission denied: token with AccessorID 'acc-1' lacks permission 'service:write' on \"web\""
        );
        assert_eq!(e.status(), 403);
        assert!(Authz::disabled()
            .require(Resource::Key, "k", Access::Write)
            .is_ok());
    }
}
