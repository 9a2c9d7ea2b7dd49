//! The router's auth step: ACL settings, and the resolver that turns a request's token into
//! what it may do ([`registry_api::acl::Authz`]) from this server's own copy of the ACL tables
//! (`state/acl.rs`), so that a secondary datacenter resolves tokens while the primary is
//! unreachable (Consul's `down_policy = "extend-cache"`, with the replica as the cache).
//! Owns finding and resolving tokens; must not decide a request (the rule engine,
//! `registry_api::acl`) or store anything (`state/acl.rs`).

use crate::raft::RaftHandle;
use registry_api::acl::extract::{token_of, ResolvedToken};
use registry_api::acl::{
    Authz, DefaultPolicy, TokenAuthority, ACL_DISABLED, ACL_NOT_FOUND, ANONYMOUS_SECRET,
};
use registry_api::Error as ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// ACL settings (`--acl-*`, `--primary-datacenter`; Consul's `acl` block).
#[derive(Clone, Default)]
pub struct AclConfig {
    /// `--acl-enabled`.
    pub enabled: bool,
    /// `--acl-default-policy` (Consul's default: allow).
    pub default_policy: AclDefault,
    /// `--acl-initial-management-token`: the leader of the primary datacenter installs it.
    pub initial_management: Option<String>,
    /// `--acl-agent-token`: the embedded agent's own token (anti-entropy, heartbeats).
    pub agent_token: Option<String>,
    /// `--acl-replication-token`: what a secondary datacenter's leader reads the primary's
    /// ACLs with (Consul's `acl.tokens.replication`; needs `acl = "write"`).
    pub replication_token: Option<String>,
    /// `--primary-datacenter`: where tokens and policies are written (default: this one).
    pub primary_datacenter: Option<String>,
}

/// The default policy with Consul's default (allow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclDefault(pub DefaultPolicy);

impl Default for AclDefault {
    fn default() -> Self {
        AclDefault(DefaultPolicy::Allow)
    }
}

// Secrets never printed (the Debug of a config is logged at start by some callers).
impl std::fmt::Debug for AclConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |t: &Option<String>| if t.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("AclConfig")
            .field("enabled", &self.enabled)
            .field("default_policy", &self.default_policy.0)
            .field("initial_management", &set(&self.initial_management))
            .field("agent_token", &set(&self.agent_token))
            .field("replication_token", &set(&self.replication_token))
            .field("primary_datacenter", &self.primary_datacenter)
            .finish()
    }
}

impl AclConfig {
    /// The primary datacenter, given `ours`.
    pub fn primary<'a>(&'a self, ours: &'a str) -> &'a str {
        self.primary_datacenter.as_deref().unwrap_or(ours)
    }
}

/// Resolved tokens kept before the cache starts over (a bound: a client sending random
/// secrets gets `ACL not found` and adds nothing; only known tokens are kept).
const CACHE_ENTRIES: usize = 4096;

/// Resolves tokens against the applied ACL tables, caching each known token's decisions
/// until the tables change.
pub struct AclResolver {
    /// The settings.
    config: AclConfig,
    /// This server's datacenter (policies and identities may be limited to some).
    datacenter: String,
    /// What every request gets with ACLs off.
    disabled: Arc<Authz>,
    /// By SecretID: the ACL index it was resolved at, the decisions, the expiry (ms).
    cache: Mutex<HashMap<String, Cached>>,
    /// The replication token: `--acl-replication-token`, or set at runtime with
    /// `PUT /v1/agent/token/replication` (not persisted, as Consul's without
    /// `enable_token_persistence`).
    replication: std::sync::RwLock<Option<String>>,
    /// Secrets the primary did not know, and when it was asked (a secondary asks again only
    /// after [`REMOTE_MISS_TTL`], so a client spraying unknown tokens costs one WAN call per
    /// secret and period, not one per request); bounded like the cache.
    remote_misses: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a secondary remembers that the primary did not know a token.
const REMOTE_MISS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// One cached resolution.
struct Cached {
    /// The ACL tables' index it was resolved at.
    index: u64,
    /// The decisions.
    authz: Arc<Authz>,
    /// When the token stops working (ms since the epoch).
    expires_at_ms: Option<u64>,
}

impl AclResolver {
    /// A resolver for `datacenter` with `config`.
    pub fn new(config: AclConfig, datacenter: &str) -> Self {
        let replication = std::sync::RwLock::new(config.replication_token.clone());
        AclResolver {
            config,
            datacenter: datacenter.to_string(),
            disabled: Arc::new(Authz::disabled()),
            cache: Mutex::new(HashMap::new()),
            replication,
            remote_misses: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AclConfig {
        &self.config
    }

    /// Whether ACLs are on.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The token the leader replicates the primary's ACLs with.
    pub fn replication_token(&self) -> Option<String> {
        self.replication
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the replication token (`PUT /v1/agent/token/replication`).
    pub fn set_replication_token(&self, token: Option<String>) {
        *self.replication.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// This datacenter is the primary (ACL writes are made here).
    pub fn is_primary(&self) -> bool {
        self.config.primary(&self.datacenter) == self.datacenter
    }

    /// What a request with `secret` (none: the anonymous token) may do. `403 ACL not found`
    /// for a token nobody knows or that expired.
    pub fn resolve(&self, raft: &RaftHandle, secret: Option<&str>) -> Result<Arc<Authz>, ApiError> {
        if !self.config.enabled {
            return Ok(self.disabled.clone());
        }
        let secret = secret.unwrap_or(ANONYMOUS_SECRET);
        let now = now_ms();
        let index = raft.with_applied(|s, _| s.acl.index());
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(secret) {
                if c.index == index {
                    return match c.expires_at_ms {
                        Some(at) if now >= at => Err(not_found()),
                        _ => Ok(c.authz.clone()),
                    };
                }
            }
        }
        let (authority, index) = self.authority(raft, Some(secret))?;
        if authority.expires_at_ms.is_some_and(|at| now >= at) {
            return Err(not_found());
        }
        let authorizer = authority
            .authorizer()
            .map_err(|e| ApiError::Internal(format!("a stored policy does not parse: {e}")))?;
        let authz = Arc::new(Authz::token(&authority.accessor_id, authorizer).at_acl_index(index));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            secret.to_string(),
            Cached {
                index,
                authz: authz.clone(),
                expires_at_ms: authority.expires_at_ms,
            },
        );
        Ok(authz)
    }

    /// The token's authority in this datacenter and the ACL index it was read at: what
    /// `GET /v1/internal/acl/authority` answers an agent. `401` with ACLs off.
    pub fn authority(
        &self,
        raft: &RaftHandle,
        secret: Option<&str>,
    ) -> Result<(TokenAuthority, u64), ApiError> {
        if !self.config.enabled {
            return Err(ApiError::Unauthorized(ACL_DISABLED.into()));
        }
        let secret = secret.unwrap_or(ANONYMOUS_SECRET);
        let default = self.config.default_policy.0;
        let (authority, index) = raft.with_applied(|s, _| {
            (
                s.acl.authority(secret, &self.datacenter, default),
                s.acl.index(),
            )
        });
        let authority = authority.ok_or_else(not_found)?;
        if authority.expires_at_ms.is_some_and(|at| now_ms() >= at) {
            return Err(not_found());
        }
        Ok((authority, index))
    }

    /// The auth step for one request: resolves its token and leaves the outcome for the
    /// handler ([`registry_api::acl::extract::Authorized`]).
    ///
    /// In a secondary datacenter a token its replica does not hold yet (made in the primary
    /// a moment ago, or before any replication token was set) is asked of the primary through
    /// the gateways (`ask_primary`), as Consul's secondaries resolve unknown tokens remotely;
    /// what the primary answers is cached like a local resolution.
    pub async fn resolve_request<F, Fut>(
        &self,
        raft: &RaftHandle,
        req: &mut axum::extract::Request,
        ask_primary: F,
    ) where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Option<TokenAuthority>>,
    {
        let token = if self.config.enabled {
            token_of(req)
        } else {
            None
        };
        let mut resolved = self.resolve(raft, token.as_deref());
        if let (Err(ApiError::Forbidden(text)), Some(secret)) = (&resolved, &token) {
            if text == ACL_NOT_FOUND && !self.is_primary() && !self.missed_lately(secret) {
                match ask_primary(secret.clone()).await {
                    Some(authority) => resolved = self.accept_remote(raft, secret, authority),
                    None => self.note_miss(secret),
                }
            }
        }
        req.extensions_mut().insert(ResolvedToken(resolved));
    }

    /// Whether the primary said lately that it does not know `secret`.
    fn missed_lately(&self, secret: &str) -> bool {
        let misses = self.remote_misses.lock().unwrap_or_else(|e| e.into_inner());
        misses
            .get(secret)
            .is_some_and(|at| at.elapsed() < REMOTE_MISS_TTL)
    }

    /// Remembers that the primary did not know `secret` (or could not be asked).
    fn note_miss(&self, secret: &str) {
        let mut misses = self.remote_misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses.len() >= CACHE_ENTRIES {
            misses.retain(|_, at| at.elapsed() < REMOTE_MISS_TTL);
            if misses.len() >= CACHE_ENTRIES {
                misses.clear();
            }
        }
        misses.insert(secret.to_string(), std::time::Instant::now());
    }

    /// A token the primary resolved for this secondary.
    fn accept_remote(
        &self,
        raft: &RaftHandle,
        secret: &str,
        authority: TokenAuthority,
    ) -> Result<Arc<Authz>, ApiError> {
        if authority.expires_at_ms.is_some_and(|at| now_ms() >= at) {
            return Err(not_found());
        }
        let authorizer = authority
            .authorizer()
            .map_err(|e| ApiError::Internal(format!("a primary's policy does not parse: {e}")))?;
        let index = raft.with_applied(|s, _| s.acl.index());
        let authz = Arc::new(Authz::token(&authority.accessor_id, authorizer).at_acl_index(index));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            secret.to_string(),
            Cached {
                index,
                authz: authz.clone(),
                expires_at_ms: authority.expires_at_ms,
            },
        );
        Ok(authz)
    }
}

fn not_found() -> ApiError {
    ApiError::Forbidden(ACL_NOT_FOUND.into())
}

/// Wall-clock ms since the epoch (token expiry is wall-clock time, as Consul's).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
