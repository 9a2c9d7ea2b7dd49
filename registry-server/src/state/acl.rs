//! The ACL tables (Consul's `acl-tokens`, `acl-policies`, `acl-roles` and its bootstrap
//! record): tokens, policies and roles of one datacenter, their rows, and what a token may do
//! ([`AclTable::authority`]). Pure like the rest of `state/`: a token's creation time and
//! expiry come from the entry's time, its random AccessorID and SecretID from the proposer.
//! Owns what is stored and what a write may change; must not decide a request (the rule
//! engine is `registry_api::acl`) or how a token reaches a server (`crate::acl`).
//!
//! The primary datacenter (`--primary-datacenter`) is the source of policies, roles and
//! global tokens; the others hold a replica (`AclReplicate`, written by their leader's
//! replication loop, `leader/acl_replication.rs`) beside their own local tokens. The
//! built-in `global-management` policy and the anonymous token exist in every table from the
//! start, as in Consul; they cannot be deleted, and the policy's rules cannot change.

use super::rows::RowChange;
use registry_api::acl::{
    self as api, AclLink, AclPolicy, AclRole, AclToken, Rules, TokenAuthority, ANONYMOUS_ACCESSOR,
    ANONYMOUS_SECRET, GLOBAL_MANAGEMENT_ID, GLOBAL_MANAGEMENT_NAME,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Row-key prefix of every ACL row: `a/t/<accessor>` a token, `a/p/<id>` a policy,
/// `a/r/<id>` a role, `a/x` the table's indexes. No other table's prefix starts with `a`.
pub(super) const ACL_PREFIX: &str = "a/";

/// The table's own record (`a/x`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    /// Index of the last change to any token, policy or role (blocking queries, caches).
    index: u64,
    /// Index of the bootstrap (`PUT /v1/acl/bootstrap` or the initial management token);
    /// 0: not bootstrapped yet.
    bootstrap: u64,
}

/// Tokens, policies and roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclTable {
    /// Tokens by AccessorID.
    tokens: BTreeMap<String, AclToken>,
    /// AccessorID by SecretID.
    by_secret: HashMap<String, String>,
    /// Policies by ID.
    policies: BTreeMap<String, AclPolicy>,
    /// Policy ID by name.
    policy_names: BTreeMap<String, String>,
    /// Roles by ID.
    roles: BTreeMap<String, AclRole>,
    /// Role ID by name.
    role_names: BTreeMap<String, String>,
    /// Indexes.
    meta: Meta,
}

impl Default for AclTable {
    fn default() -> Self {
        let mut t = AclTable {
            tokens: BTreeMap::new(),
            by_secret: HashMap::new(),
            policies: BTreeMap::new(),
            policy_names: BTreeMap::new(),
            roles: BTreeMap::new(),
            role_names: BTreeMap::new(),
            meta: Meta::default(),
        };
        t.put_policy(AclPolicy {
            id: GLOBAL_MANAGEMENT_ID.into(),
            name: GLOBAL_MANAGEMENT_NAME.into(),
            description: "Builtin Policy that grants unlimited access".into(),
            rules: String::new(),
            ..Default::default()
        });
        t.put_token(AclToken {
            accessor_id: ANONYMOUS_ACCESSOR.into(),
            secret_id: ANONYMOUS_SECRET.into(),
            description: "Anonymous Token".into(),
            ..Default::default()
        });
        t
    }
}

/// `PUT /v1/acl/bootstrap`, or the leader installing `--acl-initial-management-token`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclBootstrapRequest {
    /// The new management token (AccessorID and SecretID chosen by the proposer).
    pub token: AclToken,
    /// From the configuration: a no-op if a token with this secret exists, and allowed after
    /// a bootstrap (Consul's `initializeACLs`).
    #[serde(default)]
    pub from_config: bool,
}

/// A token create or update.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclTokenSetRequest {
    /// The token as the request gives it (links by ID or name).
    pub token: AclToken,
    /// A create (the AccessorID must be new) rather than an update.
    #[serde(default)]
    pub create: bool,
}

/// A policy create or update.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclPolicySetRequest {
    /// The policy.
    pub policy: AclPolicy,
    /// A create rather than an update.
    #[serde(default)]
    pub create: bool,
}

/// A role create or update.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclRoleSetRequest {
    /// The role.
    pub role: AclRole,
    /// A create rather than an update.
    #[serde(default)]
    pub create: bool,
}

/// A delete of a token, policy or role by its ID.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclDeleteRequest {
    /// AccessorID or ID.
    #[serde(rename = "ID")]
    pub id: String,
}

/// What a secondary datacenter replicates from the primary: its policies, roles and global
/// tokens, whole (`GET /v1/internal/acl/replication` there).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AclReplicateRequest {
    /// Every policy.
    pub policies: Vec<AclPolicy>,
    /// Every role.
    pub roles: Vec<AclRole>,
    /// Every token that is not local.
    pub tokens: Vec<AclToken>,
}

/// One planned ACL change, applied by [`AclTable::commit`].
#[derive(Debug, Default)]
pub(super) struct AclPlan {
    /// The table after the entry (the ACL tables are small: a planned write copies them).
    next: Option<AclTable>,
}

impl AclPlan {
    /// Rows of the planned change.
    pub(super) fn encode(
        &self,
        before: &AclTable,
        rows: &mut Vec<RowChange>,
    ) -> Result<(), String> {
        let Some(next) = &self.next else {
            return Ok(());
        };
        diff_rows(&before.tokens, &next.tokens, "t", rows)?;
        diff_rows(&before.policies, &next.policies, "p", rows)?;
        diff_rows(&before.roles, &next.roles, "r", rows)?;
        if before.meta != next.meta {
            rows.push(RowChange {
                key: format!("{ACL_PREFIX}x").into_bytes(),
                value: Some(serde_json::to_vec(&next.meta).map_err(|e| e.to_string())?),
            });
        }
        Ok(())
    }
}

/// Rows that turn `before` into `after` (`kind`: `t`, `p` or `r`).
fn diff_rows<T: Serialize + PartialEq>(
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
    kind: &str,
    rows: &mut Vec<RowChange>,
) -> Result<(), String> {
    for (id, item) in after {
        if before.get(id) != Some(item) {
            rows.push(RowChange {
                key: format!("{ACL_PREFIX}{kind}/{id}").into_bytes(),
                value: Some(serde_json::to_vec(item).map_err(|e| e.to_string())?),
            });
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        rows.push(RowChange {
            key: format!("{ACL_PREFIX}{kind}/{id}").into_bytes(),
            value: None,
        });
    }
    Ok(())
}

impl AclTable {
    /// Index of the last change (blocking queries on the ACL endpoints, resolver caches).
    pub fn index(&self) -> u64 {
        self.meta.index
    }

    /// Index of the bootstrap, 0 before it.
    pub fn bootstrap_index(&self) -> u64 {
        self.meta.bootstrap
    }

    /// A token by AccessorID, its links as they are now ([`AclTable::view_token`]).
    pub fn token(&self, accessor: &str) -> Option<AclToken> {
        self.tokens.get(accessor).map(|t| self.view_token(t))
    }

    /// A token by SecretID.
    pub fn token_by_secret(&self, secret: &str) -> Option<AclToken> {
        self.token(self.by_secret.get(secret)?)
    }

    /// Every token, by AccessorID.
    pub fn tokens(&self) -> impl Iterator<Item = AclToken> + '_ {
        self.tokens.values().map(|t| self.view_token(t))
    }

    /// A policy by ID.
    pub fn policy(&self, id: &str) -> Option<&AclPolicy> {
        self.policies.get(id)
    }

    /// A policy by name.
    pub fn policy_by_name(&self, name: &str) -> Option<&AclPolicy> {
        self.policies.get(self.policy_names.get(name)?)
    }

    /// Every policy, by ID.
    pub fn policies(&self) -> impl Iterator<Item = &AclPolicy> {
        self.policies.values()
    }

    /// A role by ID.
    pub fn role(&self, id: &str) -> Option<AclRole> {
        self.roles.get(id).map(|r| self.view_role(r))
    }

    /// A role by name.
    pub fn role_by_name(&self, name: &str) -> Option<AclRole> {
        self.role(self.role_names.get(name)?)
    }

    /// Every role, by ID.
    pub fn roles(&self) -> impl Iterator<Item = AclRole> + '_ {
        self.roles.values().map(|r| self.view_role(r))
    }

    /// What the token with `secret` may do in `datacenter` under `default`: its policies in
    /// force there (directly and through its roles; links to deleted items are skipped, as
    /// Consul does), its identities there, and its expiry. `None`: no such token.
    pub fn authority(
        &self,
        secret: &str,
        datacenter: &str,
        default: api::DefaultPolicy,
    ) -> Option<TokenAuthority> {
        let token = self.tokens.get(self.by_secret.get(secret)?)?;
        let in_dc = |dcs: &[String]| dcs.is_empty() || dcs.iter().any(|d| d == datacenter);
        let mut policy_ids: Vec<&str> = token.policies.iter().map(|l| l.id.as_str()).collect();
        let mut services: Vec<String> = Vec::new();
        let mut nodes: Vec<String> = Vec::new();
        let mut identities = |s: &[api::ServiceIdentity], n: &[api::NodeIdentity]| {
            services.extend(
                s.iter()
                    .filter(|s| in_dc(&s.datacenters))
                    .map(|s| s.service_name.clone()),
            );
            nodes.extend(
                n.iter()
                    .filter(|n| n.datacenter == datacenter)
                    .map(|n| n.node_name.clone()),
            );
        };
        identities(&token.service_identities, &token.node_identities);
        for link in &token.roles {
            if let Some(role) = self.roles.get(&link.id) {
                policy_ids.extend(role.policies.iter().map(|l| l.id.as_str()));
                identities(&role.service_identities, &role.node_identities);
            }
        }
        policy_ids.sort_unstable();
        policy_ids.dedup();
        let policies: Vec<&AclPolicy> = policy_ids
            .iter()
            .filter_map(|id| self.policies.get(*id))
            .filter(|p| in_dc(&p.datacenters))
            .collect();
        Some(TokenAuthority {
            accessor_id: token.accessor_id.clone(),
            management: policies.iter().any(|p| p.id == GLOBAL_MANAGEMENT_ID),
            rules: policies.iter().map(|p| p.rules.clone()).collect(),
            service_identities: services,
            node_identities: nodes,
            default_policy: default.to_string(),
            expires_at_ms: token
                .expiration_time
                .as_deref()
                .and_then(|t| api::parse_rfc3339(t).ok()),
        })
    }

    /// `token` with its links as they are now: names of renamed policies and roles updated,
    /// links to deleted ones dropped (Consul's `fixupTokenPolicyLinks`).
    fn view_token(&self, token: &AclToken) -> AclToken {
        let mut t = token.clone();
        t.policies = self.policy_links(&token.policies);
        t.roles = token
            .roles
            .iter()
            .filter_map(|l| {
                self.roles.get(&l.id).map(|r| AclLink {
                    id: r.id.clone(),
                    name: r.name.clone(),
                })
            })
            .collect();
        t
    }

    /// `role` with its policy links as they are now.
    fn view_role(&self, role: &AclRole) -> AclRole {
        let mut r = role.clone();
        r.policies = self.policy_links(&role.policies);
        r
    }

    fn policy_links(&self, links: &[AclLink]) -> Vec<AclLink> {
        links
            .iter()
            .filter_map(|l| {
                self.policies.get(&l.id).map(|p| AclLink {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
            })
            .collect()
    }

    /// Links resolved to existing items by ID or by name (Err names the missing one), each
    /// once.
    fn resolve_links(
        &self,
        links: &[AclLink],
        kind: &str,
        by_id: impl Fn(&str) -> Option<String>,
        by_name: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<AclLink>, String> {
        let mut out: Vec<AclLink> = Vec::new();
        for l in links {
            let found = if !l.id.is_empty() {
                by_id(&l.id).map(|name| (l.id.clone(), name))
            } else if !l.name.is_empty() {
                by_name(&l.name).map(|id| (id, l.name.clone()))
            } else {
                return Err(format!("{kind} link with neither ID nor Name"));
            };
            let Some((id, name)) = found else {
                let what = if l.id.is_empty() { &l.name } else { &l.id };
                return Err(format!("No such ACL {kind}: {what:?}"));
            };
            if !out.iter().any(|o| o.id == id) {
                out.push(AclLink { id, name });
            }
        }
        Ok(out)
    }

    fn resolve_policy_links(&self, links: &[AclLink]) -> Result<Vec<AclLink>, String> {
        self.resolve_links(
            links,
            "policy",
            |id| self.policies.get(id).map(|p| p.name.clone()),
            |name| self.policy_names.get(name).cloned(),
        )
    }

    fn put_token(&mut self, token: AclToken) {
        if let Some(old) = self.tokens.get(&token.accessor_id) {
            self.by_secret.remove(&old.secret_id);
        }
        self.by_secret
            .insert(token.secret_id.clone(), token.accessor_id.clone());
        self.tokens.insert(token.accessor_id.clone(), token);
    }

    fn remove_token(&mut self, accessor: &str) {
        if let Some(old) = self.tokens.remove(accessor) {
            self.by_secret.remove(&old.secret_id);
        }
    }

    fn put_policy(&mut self, policy: AclPolicy) {
        if let Some(old) = self.policies.get(&policy.id) {
            self.policy_names.remove(&old.name);
        }
        self.policy_names
            .insert(policy.name.clone(), policy.id.clone());
        self.policies.insert(policy.id.clone(), policy);
    }

    fn remove_policy(&mut self, id: &str) {
        if let Some(old) = self.policies.remove(id) {
            self.policy_names.remove(&old.name);
        }
    }

    fn put_role(&mut self, role: AclRole) {
        if let Some(old) = self.roles.get(&role.id) {
            self.role_names.remove(&old.name);
        }
        self.role_names.insert(role.name.clone(), role.id.clone());
        self.roles.insert(role.id.clone(), role);
    }

    fn remove_role(&mut self, id: &str) {
        if let Some(old) = self.roles.remove(id) {
            self.role_names.remove(&old.name);
        }
    }

    /// Plans one ACL command at `index` and time `at` (ms): the outcome or `Err` (nothing
    /// changes).
    pub(super) fn plan(
        &self,
        index: u64,
        at: u64,
        cmd: &AclCommand<'_>,
    ) -> Result<(AclPlan, super::Outcome), String> {
        let mut next = self.clone();
        let outcome = match cmd {
            AclCommand::Bootstrap(req) => {
                if req.from_config && self.by_secret.contains_key(&req.token.secret_id) {
                    return Ok((AclPlan::default(), super::Outcome::Bool(false)));
                }
                if !req.from_config && self.meta.bootstrap != 0 {
                    return Err(format!(
                        "ACL bootstrap no longer allowed (reset index: {})",
                        self.meta.bootstrap
                    ));
                }
                let mut token = req.token.clone();
                token.policies = vec![AclLink {
                    id: GLOBAL_MANAGEMENT_ID.into(),
                    name: GLOBAL_MANAGEMENT_NAME.into(),
                }];
                token.roles.clear();
                token.local = false;
                token.expiration_time = None;
                token.expiration_ttl = None;
                next.insert_new_token(token, index, at)?;
                if next.meta.bootstrap == 0 {
                    next.meta.bootstrap = index;
                }
                super::Outcome::Bool(true)
            }
            AclCommand::TokenSet(req) => {
                next.set_token(&req.token, req.create, index, at)?;
                super::Outcome::Done
            }
            AclCommand::TokenDelete(id) => {
                if *id == ANONYMOUS_ACCESSOR {
                    return Err("Deletion of the builtin anonymous token is not permitted".into());
                }
                if !self.tokens.contains_key(*id) {
                    return Ok((AclPlan::default(), super::Outcome::Bool(false)));
                }
                next.remove_token(id);
                super::Outcome::Bool(true)
            }
            AclCommand::PolicySet(req) => {
                next.set_policy(&req.policy, req.create, index)?;
                super::Outcome::Done
            }
            AclCommand::PolicyDelete(id) => {
                if *id == GLOBAL_MANAGEMENT_ID {
                    return Err(
                        "Deletion of the builtin global-management policy is not permitted".into(),
                    );
                }
                if !self.policies.contains_key(*id) {
                    return Ok((AclPlan::default(), super::Outcome::Bool(false)));
                }
                next.remove_policy(id);
                super::Outcome::Bool(true)
            }
            AclCommand::RoleSet(req) => {
                next.set_role(&req.role, req.create, index)?;
                super::Outcome::Done
            }
            AclCommand::RoleDelete(id) => {
                if !self.roles.contains_key(*id) {
                    return Ok((AclPlan::default(), super::Outcome::Bool(false)));
                }
                next.remove_role(id);
                super::Outcome::Bool(true)
            }
            AclCommand::Replicate(req) => {
                next.replicate(req, index)?;
                super::Outcome::Done
            }
        };
        if next == *self {
            return Ok((AclPlan::default(), outcome));
        }
        next.meta.index = index;
        Ok((AclPlan { next: Some(next) }, outcome))
    }

    /// Whether replicating `req` would change anything (the replication loop proposes only
    /// then).
    pub fn replica_differs(&self, req: &AclReplicateRequest) -> bool {
        match self.plan(self.meta.index, 0, &AclCommand::Replicate(req)) {
            Ok((plan, _)) => plan.next.is_some(),
            // A replica this build cannot take: proposing it would only be refused.
            Err(_) => false,
        }
    }

    /// Installs a planned change. Cannot fail.
    pub(super) fn commit(&mut self, plan: AclPlan) {
        if let Some(next) = plan.next {
            *self = next;
        }
    }

    fn insert_new_token(&mut self, mut token: AclToken, index: u64, at: u64) -> Result<(), String> {
        for (what, id) in [
            ("AccessorID", &token.accessor_id),
            ("SecretID", &token.secret_id),
        ] {
            if id.is_empty() || id.len() > 128 {
                return Err(format!("Invalid token {what}: 1 to 128 bytes"));
            }
        }
        if self.tokens.contains_key(&token.accessor_id) {
            return Err(format!(
                "Invalid Token: AccessorID {:?} is already in use",
                token.accessor_id
            ));
        }
        if self.by_secret.contains_key(&token.secret_id) {
            return Err("Invalid Token: SecretID is already in use".into());
        }
        token.create_time = api::rfc3339(at);
        token.create_index = index;
        token.modify_index = index;
        self.put_token(token);
        Ok(())
    }

    /// A token create or update (Consul's `ACL.TokenSet`): links must exist; an update
    /// keeps the SecretID, Local, the expiry and the creation stamps.
    fn set_token(
        &mut self,
        req: &AclToken,
        create: bool,
        index: u64,
        at: u64,
    ) -> Result<(), String> {
        api::check_links(
            &req.policies,
            &req.roles,
            &req.service_identities,
            &req.node_identities,
            &req.description,
        )?;
        let mut token = req.clone();
        token.policies = self.resolve_policy_links(&req.policies)?;
        token.roles = self.resolve_links(
            &req.roles,
            "role",
            |id| self.roles.get(id).map(|r| r.name.clone()),
            |name| self.role_names.get(name).cloned(),
        )?;
        if create {
            let expires = match (&req.expiration_time, &req.expiration_ttl) {
                (Some(_), Some(_)) => {
                    return Err("Expiration TTL and Expiration Time cannot both be set".into())
                }
                (Some(t), None) => Some(api::parse_rfc3339(t)?),
                (None, Some(ttl)) => {
                    let ttl = registry_api::duration::parse(ttl)
                        .map_err(|e| format!("Invalid ExpirationTTL: {e}"))?;
                    if ttl.is_zero() {
                        None
                    } else {
                        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                        Some(at.saturating_add(ttl))
                    }
                }
                (None, None) => None,
            };
            if let Some(t) = expires {
                if t <= at {
                    return Err("ExpirationTime cannot be in the past".into());
                }
                if t > api::MAX_TIME_MS {
                    return Err("ExpirationTime is after the year 9999".into());
                }
            }
            token.expiration_time = expires.map(api::rfc3339);
            token.expiration_ttl = None;
            return self.insert_new_token(token, index, at);
        }
        let Some(old) = self.tokens.get(&req.accessor_id) else {
            return Err(format!("Cannot find token {:?} to update", req.accessor_id));
        };
        if !req.secret_id.is_empty() && req.secret_id != old.secret_id {
            return Err("Changing a token's SecretID is not permitted".into());
        }
        if req.local != old.local {
            return Err("Cannot toggle local mode of a token".into());
        }
        if req.expiration_ttl.is_some()
            || req
                .expiration_time
                .as_ref()
                .is_some_and(|t| Some(t) != old.expiration_time.as_ref())
        {
            return Err("Cannot change expiration time".into());
        }
        token.secret_id = old.secret_id.clone();
        token.expiration_time = old.expiration_time.clone();
        token.expiration_ttl = None;
        token.create_time = old.create_time.clone();
        token.create_index = old.create_index;
        token.modify_index = index;
        if token.accessor_id == ANONYMOUS_ACCESSOR {
            token.description = if req.description.is_empty() {
                old.description.clone()
            } else {
                req.description.clone()
            };
        }
        self.put_token(token);
        Ok(())
    }

    /// A policy create or update: a valid unique name, rules that parse, and the built-in
    /// `global-management` keeps its name and rules.
    fn set_policy(&mut self, req: &AclPolicy, create: bool, index: u64) -> Result<(), String> {
        api::check_name("Policy", &req.name)?;
        if req.description.len() > api::MAX_DESCRIPTION {
            return Err("Description is too long".into());
        }
        if req.rules.len() > 64 << 10 {
            return Err("Rules are longer than 64 KiB".into());
        }
        Rules::parse(&req.rules).map_err(|e| format!("Failed to parse policy: {e}"))?;
        if let Some(other) = self.policy_names.get(&req.name) {
            if *other != req.id {
                return Err(format!(
                    "Invalid Policy: A Policy with Name {:?} already exists",
                    req.name
                ));
            }
        }
        let mut policy = req.clone();
        if create {
            if req.id.is_empty() || self.policies.contains_key(&req.id) {
                return Err("Invalid Policy: ID is missing or already in use".into());
            }
            policy.create_index = index;
        } else {
            let Some(old) = self.policies.get(&req.id) else {
                return Err(format!("Cannot find policy {:?}", req.id));
            };
            if old.id == GLOBAL_MANAGEMENT_ID {
                if req.rules != old.rules {
                    return Err(
                        "Changing the Rules for the builtin global-management policy is not permitted"
                            .into(),
                    );
                }
                if !req.datacenters.is_empty() {
                    return Err("Changing the Datacenters of the builtin global-management policy is not permitted".into());
                }
            }
            policy.create_index = old.create_index;
        }
        policy.modify_index = index;
        self.put_policy(policy);
        Ok(())
    }

    /// A role create or update: a valid unique name, links that exist.
    fn set_role(&mut self, req: &AclRole, create: bool, index: u64) -> Result<(), String> {
        api::check_name("Role", &req.name)?;
        api::check_links(
            &req.policies,
            &[],
            &req.service_identities,
            &req.node_identities,
            &req.description,
        )?;
        if let Some(other) = self.role_names.get(&req.name) {
            if *other != req.id {
                return Err(format!(
                    "Invalid Role: A Role with Name {:?} already exists",
                    req.name
                ));
            }
        }
        let mut role = req.clone();
        role.policies = self.resolve_policy_links(&req.policies)?;
        if create {
            if req.id.is_empty() || self.roles.contains_key(&req.id) {
                return Err("Invalid Role: ID is missing or already in use".into());
            }
            role.create_index = index;
        } else {
            let Some(old) = self.roles.get(&req.id) else {
                return Err(format!("Cannot find role {:?}", req.id));
            };
            role.create_index = old.create_index;
        }
        role.modify_index = index;
        self.put_role(role);
        Ok(())
    }

    /// Replaces every policy, role and global token with the primary's (local tokens stay).
    /// Items equal to the primary's except for their indexes keep their own, so a round
    /// that brings nothing new changes nothing.
    fn replicate(&mut self, req: &AclReplicateRequest, index: u64) -> Result<(), String> {
        let same = |a: &AclPolicy, b: &AclPolicy| {
            (&a.name, &a.description, &a.rules, &a.datacenters)
                == (&b.name, &b.description, &b.rules, &b.datacenters)
        };
        let policies: BTreeMap<String, AclPolicy> = req
            .policies
            .iter()
            .map(|p| {
                let mut p = p.clone();
                match self.policies.get(&p.id) {
                    Some(old) if same(old, &p) => p = old.clone(),
                    Some(old) => (p.create_index, p.modify_index) = (old.create_index, index),
                    None => (p.create_index, p.modify_index) = (index, index),
                }
                (p.id.clone(), p)
            })
            .collect();
        if !policies.contains_key(GLOBAL_MANAGEMENT_ID) {
            return Err("a replica without the global-management policy".into());
        }
        for id in self.policies.keys().cloned().collect::<Vec<_>>() {
            self.remove_policy(&id);
        }
        for p in policies.into_values() {
            self.put_policy(p);
        }
        let roles: Vec<AclRole> = req
            .roles
            .iter()
            .map(|r| {
                let mut r = r.clone();
                match self.roles.get(&r.id) {
                    Some(old) if strip_role(old) == strip_role(&r) => r = old.clone(),
                    Some(old) => (r.create_index, r.modify_index) = (old.create_index, index),
                    None => (r.create_index, r.modify_index) = (index, index),
                }
                r
            })
            .collect();
        for id in self.roles.keys().cloned().collect::<Vec<_>>() {
            self.remove_role(&id);
        }
        for r in roles {
            self.put_role(r);
        }
        let global: Vec<String> = self
            .tokens
            .values()
            .filter(|t| !t.local)
            .map(|t| t.accessor_id.clone())
            .collect();
        let mut kept: BTreeMap<String, AclToken> = BTreeMap::new();
        for id in global {
            if let Some(t) = self.tokens.get(&id) {
                kept.insert(id.clone(), t.clone());
            }
            self.remove_token(&id);
        }
        for t in &req.tokens {
            if t.local {
                continue;
            }
            if self.tokens.contains_key(&t.accessor_id) || self.by_secret.contains_key(&t.secret_id)
            {
                // A local token of ours with the same AccessorID or secret (the global ones
                // were removed above): ours stays, theirs is skipped.
                continue;
            }
            let mut t = t.clone();
            match kept.get(&t.accessor_id) {
                Some(old) if strip_token(old) == strip_token(&t) => t = old.clone(),
                Some(old) => (t.create_index, t.modify_index) = (old.create_index, index),
                None => (t.create_index, t.modify_index) = (index, index),
            }
            self.put_token(t);
        }
        if !self.tokens.contains_key(ANONYMOUS_ACCESSOR) {
            // The primary's anonymous token is always in its replica; a replica without one
            // must not leave requests without a token unresolvable.
            return Err("a replica without the anonymous token".into());
        }
        Ok(())
    }

    /// A snapshot restore at `index`: every item's indexes at most `index`, its last change
    /// `index` (`state/restore.rs`).
    pub(super) fn restamp(&mut self, index: u64) {
        for t in self.tokens.values_mut() {
            t.create_index = t.create_index.min(index);
            t.modify_index = index;
        }
        for p in self.policies.values_mut() {
            p.create_index = p.create_index.min(index);
            p.modify_index = index;
        }
        for r in self.roles.values_mut() {
            r.create_index = r.create_index.min(index);
            r.modify_index = index;
        }
        self.meta.index = index;
        self.meta.bootstrap = self.meta.bootstrap.min(index);
    }

    /// Rows of a full image.
    pub(super) fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rows = Vec::new();
        let mut push = |kind: &str, id: &str, v: Result<Vec<u8>, serde_json::Error>| {
            if let Ok(v) = v {
                rows.push((format!("{ACL_PREFIX}{kind}/{id}").into_bytes(), v));
            }
        };
        for (id, t) in &self.tokens {
            push("t", id, serde_json::to_vec(t));
        }
        for (id, p) in &self.policies {
            push("p", id, serde_json::to_vec(p));
        }
        for (id, r) in &self.roles {
            push("r", id, serde_json::to_vec(r));
        }
        if let Ok(v) = serde_json::to_vec(&self.meta) {
            rows.push((format!("{ACL_PREFIX}x").into_bytes(), v));
        }
        rows
    }

    /// Loads one row (`rest`: the key after [`ACL_PREFIX`]).
    pub(super) fn load_row(&mut self, rest: &str, value: &[u8]) -> Result<(), String> {
        let bad = |e: serde_json::Error| e.to_string();
        match rest.split_once('/') {
            Some(("t", id)) => {
                let t: AclToken = serde_json::from_slice(value).map_err(bad)?;
                if t.accessor_id != id {
                    return Err("token AccessorID differs from its key".into());
                }
                self.put_token(t);
            }
            Some(("p", id)) => {
                let p: AclPolicy = serde_json::from_slice(value).map_err(bad)?;
                if p.id != id {
                    return Err("policy ID differs from its key".into());
                }
                self.put_policy(p);
            }
            Some(("r", id)) => {
                let r: AclRole = serde_json::from_slice(value).map_err(bad)?;
                if r.id != id {
                    return Err("role ID differs from its key".into());
                }
                self.put_role(r);
            }
            None if rest == "x" => self.meta = serde_json::from_slice(value).map_err(bad)?,
            _ => return Err("unknown ACL row".into()),
        }
        Ok(())
    }
}

fn strip_role(r: &AclRole) -> AclRole {
    AclRole {
        create_index: 0,
        modify_index: 0,
        ..r.clone()
    }
}

fn strip_token(t: &AclToken) -> AclToken {
    AclToken {
        create_index: 0,
        modify_index: 0,
        ..t.clone()
    }
}

/// An ACL command as the table plans it (borrowed from [`super::Command`]).
pub(super) enum AclCommand<'a> {
    /// Bootstrap.
    Bootstrap(&'a AclBootstrapRequest),
    /// Token create or update.
    TokenSet(&'a AclTokenSetRequest),
    /// Token delete by AccessorID.
    TokenDelete(&'a str),
    /// Policy create or update.
    PolicySet(&'a AclPolicySetRequest),
    /// Policy delete by ID.
    PolicyDelete(&'a str),
    /// Role create or update.
    RoleSet(&'a AclRoleSetRequest),
    /// Role delete by ID.
    RoleDelete(&'a str),
    /// A replica from the primary.
    Replicate(&'a AclReplicateRequest),
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
