//! The standalone agent's side of ACLs (<https://developer.hashicorp.com/consul/docs/security/acl>):
//! its own tokens ([`AgentTokens`]) and the resolver that turns a request's token into what it
//! may do ([`AclResolver`]).
//!
//! An agent holds no ACL tables. It asks its servers what a token may do
//! (`GET /v1/internal/acl/authority`, the token sent as `X-Consul-Token`), builds the same
//! [`registry_api::acl::Authorizer`] the servers use from the answer
//! ([`TokenAuthority::authorizer`]) and keeps it for [`TOKEN_TTL`] (Consul's `acl.token_ttl`).
//! When no server answers, an entry kept past its TTL is used still (Consul's
//! `down_policy = "extend-cache"`); a token never seen is then a 500 that says why. Servers
//! that answer `401 ACL support disabled` (or do not serve the endpoint: a build without ACLs)
//! have ACLs off, and everything is allowed, remembered for the TTL too.
//!
//! An agent that has never heard of ACLs (no server answered yet, not started with
//! `--acl-enabled` or an agent token) takes requests as with ACLs off while its servers are
//! unreachable, so that applications can register before the servers are up (as they could
//! before ACLs existed). Once a server has said ACLs are on, or the operator did, a token
//! that cannot be resolved is refused.
//!
//! Secrets are cache keys only: they are never logged, and errors name the AccessorID.
//!
//! Owns: finding what a token may do, and the agent's own tokens. Must not decide a request
//! (the handlers, with [`registry_api::acl::Authz`]) or know the rules' language.

use crate::servers::{PoolError, ServerPool};
use registry_api::acl::{Authz, TokenAuthority, ACL_DISABLED, ACL_NOT_FOUND, ANONYMOUS_SECRET};
use registry_api::Error as ApiError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long a resolved token is used before the servers are asked again (Consul's
/// `acl.token_ttl` default).
pub const TOKEN_TTL: Duration = Duration::from_secs(30);
/// Most tokens kept; past it the entry resolved longest ago goes (a client sending random
/// secrets gets `ACL not found`, which is not kept, so only real tokens fill it).
pub const CACHE_ENTRIES: usize = 1024;
/// Per-server time limit of one lookup: a request waits on it, so it is short.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the servers answer what a token may do.
pub const AUTHORITY_PATH: &str = "/v1/internal/acl/authority";

/// A token in a configuration: printed as `<hidden>`, so that a configuration's `Debug`
/// (logged by some callers) never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(pub String);

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// The agent's own tokens (Consul's `acl.tokens`), changed at run time by
/// `PUT /v1/agent/token/:type`. Kept in memory only: a restart goes back to the flags.
#[derive(Default)]
pub struct AgentTokens {
    /// `agent`: what the agent's own requests carry (anti-entropy of the node, heartbeats,
    /// reads for `/v1/agent/members`), and what a service registered without a token is
    /// synced with.
    agent: RwLock<Option<String>>,
    /// `default`: what a request that carries no token is taken to carry.
    default: RwLock<Option<String>>,
}

// Secrets never printed.
impl std::fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |t: &RwLock<Option<String>>| {
            if t.read().unwrap_or_else(|e| e.into_inner()).is_some() {
                "<set>"
            } else {
                "<none>"
            }
        };
        f.debug_struct("AgentTokens")
            .field("agent", &set(&self.agent))
            .field("default", &set(&self.default))
            .finish()
    }
}

impl AgentTokens {
    /// Tokens starting with `agent` (`--acl-agent-token`).
    pub fn new(agent: Option<String>) -> Self {
        AgentTokens {
            agent: RwLock::new(agent.filter(|t| !t.is_empty())),
            default: RwLock::new(None),
        }
    }

    /// The agent's own token.
    pub fn agent(&self) -> Option<String> {
        self.agent.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The token of requests that carry none.
    pub fn default_token(&self) -> Option<String> {
        self.default
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the agent's own token (empty: none).
    pub fn set_agent(&self, token: &str) {
        *self.agent.write().unwrap_or_else(|e| e.into_inner()) =
            Some(token.to_string()).filter(|t| !t.is_empty());
    }

    /// Sets the token of requests that carry none (empty: none).
    pub fn set_default(&self, token: &str) {
        *self.default.write().unwrap_or_else(|e| e.into_inner()) =
            Some(token.to_string()).filter(|t| !t.is_empty());
    }
}

/// One resolved token.
struct Cached {
    /// What it may do.
    authz: Arc<Authz>,
    /// When the servers said so.
    resolved_at: Instant,
    /// When the token stops working (ms since the epoch), if ever.
    expires_at_ms: Option<u64>,
}

/// What the servers answered about one token.
enum Lookup {
    /// Its authority, or everything (ACLs off).
    Found(Arc<Authz>, Option<u64>),
    /// A refusal to pass on (`403 ACL not found`, a 400).
    Refused(ApiError),
    /// No server could say: the reason.
    Down(String),
}

/// Resolves tokens through the servers, with a bounded cache (see the module docs).
pub struct AclResolver {
    /// The servers asked.
    servers: ServerPool,
    /// Set when the operator said ACLs are on (`--acl-enabled`, an agent token) or a server
    /// answered a token's authority: unresolvable tokens are refused from then on.
    known_enabled: AtomicBool,
    /// By SecretID (the anonymous token's for a request without one).
    cache: Mutex<HashMap<String, Cached>>,
    /// Everything allowed, shared by every request while ACLs are off.
    disabled: Arc<Authz>,
}

impl std::fmt::Debug for AclResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclResolver")
            .field("known_enabled", &self.known_enabled.load(Ordering::Relaxed))
            .field("cached", &self.lock().len())
            .finish()
    }
}

impl AclResolver {
    /// A resolver asking `servers`; `enabled`: the operator says ACLs are on.
    pub fn new(servers: ServerPool, enabled: bool) -> Self {
        AclResolver {
            servers,
            known_enabled: AtomicBool::new(enabled),
            cache: Mutex::new(HashMap::new()),
            disabled: Arc::new(Authz::disabled()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a request carrying `secret` (none: the anonymous token) may do.
    pub async fn resolve(&self, secret: Option<&str>) -> Result<Arc<Authz>, ApiError> {
        let key = secret.unwrap_or(ANONYMOUS_SECRET);
        let now = Instant::now();
        let stale = {
            let cache = self.lock();
            match cache.get(key) {
                Some(c) if expired(c.expires_at_ms) => None,
                Some(c) if now.duration_since(c.resolved_at) < TOKEN_TTL => {
                    return Ok(c.authz.clone())
                }
                Some(c) => Some(c.authz.clone()),
                None => None,
            }
        };
        match self.lookup(secret).await {
            Lookup::Found(authz, expires_at_ms) => {
                if expires_at_ms.is_some_and(|at| expired(Some(at))) {
                    self.lock().remove(key);
                    return Err(not_found());
                }
                self.insert(key, authz.clone(), expires_at_ms);
                Ok(authz)
            }
            Lookup::Refused(e) => {
                self.lock().remove(key);
                Err(e)
            }
            Lookup::Down(reason) => {
                if let Some(authz) = stale {
                    // Consul's `extend-cache`: what the token could do when last seen.
                    tracing::debug!(accessor = %authz.accessor(), reason = %reason, "servers unreachable; using a token's cached ACLs past their TTL");
                    return Ok(authz);
                }
                if !self.known_enabled.load(Ordering::Acquire) {
                    // Never heard of ACLs: see the module docs.
                    return Ok(self.disabled.clone());
                }
                Err(ApiError::Internal(format!(
                    "{ACL_NOT_FOUND}: this agent could not resolve the request's token: no server answered ({reason}), and the token was not resolved before"
                )))
            }
        }
    }

    /// Asks the servers about `secret`.
    async fn lookup(&self, secret: Option<&str>) -> Lookup {
        let answer = self
            .servers
            .get_with_token(AUTHORITY_PATH, secret, Some(LOOKUP_TIMEOUT))
            .await;
        let resp = match answer {
            Ok(resp) => resp,
            Err(e @ (PoolError::Unreachable { .. } | PoolError::NoServers)) => {
                return Lookup::Down(e.to_string())
            }
            Err(e) => return Lookup::Down(e.to_string()),
        };
        let text = || String::from_utf8_lossy(&resp.body).trim().to_string();
        match resp.status.as_u16() {
            200 => match serde_json::from_slice::<TokenAuthority>(&resp.body) {
                Ok(authority) => {
                    self.known_enabled.store(true, Ordering::Release);
                    match authority.authorizer() {
                        Ok(a) => Lookup::Found(
                            Arc::new(Authz::token(&authority.accessor_id, a)),
                            authority.expires_at_ms,
                        ),
                        Err(e) => Lookup::Refused(ApiError::Internal(format!(
                            "a policy of token {} does not parse: {e}",
                            authority.accessor_id
                        ))),
                    }
                }
                Err(e) => Lookup::Down(format!("bad answer from the servers: {e}")),
            },
            // ACLs off (a server without the endpoint is a build without ACLs) — unless this
            // agent knows they are on (its flags, or a server said so): then one server that
            // answers otherwise is a misconfigured one, and the agent fails closed rather
            // than opening every endpoint.
            401 | 404 if self.known_enabled.load(Ordering::Acquire) => Lookup::Down(format!(
                "a server answered {} to a token lookup although ACLs are on",
                resp.status
            )),
            401 if text().contains(ACL_DISABLED) => Lookup::Found(self.disabled.clone(), None),
            404 => Lookup::Found(self.disabled.clone(), None),
            403 => {
                self.known_enabled.store(true, Ordering::Release);
                Lookup::Refused(ApiError::Forbidden(text()))
            }
            s if (400..500).contains(&s) => Lookup::Refused(ApiError::BadRequest(text())),
            s => Lookup::Down(format!("server answered {s}: {}", text())),
        }
    }

    /// Keeps `authz` for `key`, making room when the cache is full.
    fn insert(&self, key: &str, authz: Arc<Authz>, expires_at_ms: Option<u64>) {
        let mut cache = self.lock();
        if !cache.contains_key(key) && cache.len() >= CACHE_ENTRIES {
            // The one resolved longest ago goes (a linear scan: at most CACHE_ENTRIES, and
            // only when a new token arrives at a full cache).
            if let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, c)| c.resolved_at)
                .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            key.to_string(),
            Cached {
                authz,
                resolved_at: Instant::now(),
                expires_at_ms,
            },
        );
    }

    /// Tokens kept.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    /// Makes every entry `by` older (tests of the TTL without waiting for it).
    #[cfg(test)]
    fn age(&self, by: Duration) {
        for c in self.lock().values_mut() {
            if let Some(t) = c.resolved_at.checked_sub(by) {
                c.resolved_at = t;
            }
        }
    }
}

/// Whether a token with this expiry no longer works.
fn expired(expires_at_ms: Option<u64>) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    expires_at_ms.is_some_and(|at| now >= at)
}

fn not_found() -> ApiError {
    ApiError::Forbidden(ACL_NOT_FOUND.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use registry_api::acl::{Access, Resource, TOKEN_HEADER};
    use std::sync::atomic::AtomicU64;

    /// A server answering the authority of token `web` (write on service `web`), 403 for any
    /// other, counting lookups; or `401 ACL support disabled` for all when `acl_off`.
    async fn authority_server(
        acl_off: bool,
    ) -> (
        ServerPool,
        Arc<AtomicU64>,
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let lookups = Arc::new(AtomicU64::new(0));
        let counter = lookups.clone();
        let app = axum::Router::new().route(
            AUTHORITY_PATH,
            get(move |headers: HeaderMap| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if acl_off {
                        return (StatusCode::UNAUTHORIZED, ACL_DISABLED.to_string());
                    }
                    match headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
                        Some("web") => (
                            StatusCode::OK,
                            serde_json::to_string(&TokenAuthority {
                                accessor_id: "acc-web".into(),
                                rules: vec![r#"service "web" { policy = "write" }"#.into()],
                                default_policy: "deny".into(),
                                ..Default::default()
                            })
                            .unwrap(),
                        ),
                        _ => (StatusCode::FORBIDDEN, ACL_NOT_FOUND.to_string()),
                    }
                }
            }),
        );
        let (url, stop, task) =
            registry_testkit::fakes::serve(app, "127.0.0.1:0".parse().unwrap()).await;
        (ServerPool::new(vec![url]).unwrap(), lookups, stop, task)
    }

    #[tokio::test]
    async fn tokens_are_cached_for_the_ttl_and_extended_while_servers_are_down() {
        let (pool, lookups, stop, task) = authority_server(false).await;
        let resolver = AclResolver::new(pool, false);
        let authz = resolver.resolve(Some("web")).await.unwrap();
        assert!(authz.allows(Resource::Service, "web", Access::Write));
        assert!(!authz.allows(Resource::Service, "db", Access::Write));
        assert_eq!(authz.accessor(), "acc-web");
        // Within the TTL: no second lookup.
        resolver.resolve(Some("web")).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        // Past it: asked again.
        resolver.age(TOKEN_TTL);
        resolver.resolve(Some("web")).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        // An unknown token is the servers' 403, and is not kept.
        let e = resolver.resolve(Some("nope")).await.unwrap_err();
        assert_eq!((e.status(), e.to_string()), (403, ACL_NOT_FOUND.into()));
        assert_eq!(resolver.cached(), 1);

        // The servers go away: the known token keeps working past its TTL (extend-cache),
        // a token never seen is a 500 that says why.
        stop.cancel();
        task.await.unwrap();
        resolver.age(TOKEN_TTL * 10);
        let authz = resolver.resolve(Some("web")).await.unwrap();
        assert!(authz.allows(Resource::Service, "web", Access::Write));
        let e = resolver.resolve(Some("other")).await.unwrap_err();
        assert_eq!(e.status(), 500);
        assert!(
            e.to_string().contains("could not resolve")
                && e.to_string().contains("unreachable")
                && !e.to_string().contains("other"),
            "{e}"
        );
        // Nor does the anonymous token get in.
        assert_eq!(resolver.resolve(None).await.unwrap_err().status(), 500);
    }

    #[tokio::test]
    async fn acls_off_at_the_servers_allow_everything_and_are_remembered() {
        let (pool, lookups, stop, task) = authority_server(true).await;
        let resolver = AclResolver::new(pool, false);
        let authz = resolver.resolve(Some("anything")).await.unwrap();
        assert!(!authz.enabled());
        assert!(authz.allows(Resource::Agent, "n1", Access::Write));
        resolver.resolve(Some("anything")).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        stop.cancel();
        task.await.unwrap();
        // Never told ACLs are on: a new token while the servers are down is let through.
        assert!(!resolver.resolve(Some("new")).await.unwrap().enabled());
    }

    #[tokio::test]
    async fn an_agent_told_acls_are_on_refuses_what_it_cannot_resolve() {
        let pool = ServerPool::new(vec![format!(
            "http://{}",
            registry_testkit::fakes::dead_addr().await
        )])
        .unwrap();
        let resolver = AclResolver::new(pool, true);
        assert_eq!(resolver.resolve(None).await.unwrap_err().status(), 500);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let (pool, _lookups, _stop, _task) = authority_server(false).await;
        let resolver = AclResolver::new(pool, false);
        for i in 0..CACHE_ENTRIES + 5 {
            resolver.insert(&format!("t{i}"), resolver.disabled.clone(), None);
        }
        assert_eq!(resolver.cached(), CACHE_ENTRIES);
    }

    #[test]
    fn tokens_never_show_in_debug() {
        let tokens = AgentTokens::new(Some("s3cret".into()));
        tokens.set_default("d3fault");
        let text = format!("{tokens:?}");
        assert!(
            !text.contains("s3cret") && !text.contains("d3fault"),
            "{text}"
        );
        tokens.set_agent("");
        assert_eq!(tokens.agent(), None);
        assert_eq!(tokens.default_token().as_deref(), Some("d3fault"));
        let config = format!("{:?}", Some(SecretToken("s3cret".into())));
        assert!(!config.contains("s3cret"), "{config}");
    }
}
