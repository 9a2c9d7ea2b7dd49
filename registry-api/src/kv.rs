//! Consul's KV, session and transaction shapes
//! (<https://developer.hashicorp.com/consul/api-docs/kv>, `/session`, `/txn`), the rules about
//! them that more than one process applies (a session's defaults, which an agent fills in before
//! it forwards a create), and the typed client's KV and session calls.
//!
//! Owns: the wire forms and their decoding. Must not touch: what a write does (the server's
//! `state/kv.rs`, `state/session.rs`, `state/txn.rs` decide that at apply).

use crate::client::{ClientError, QueryMeta, QueryOptions, RegistryClient};
use crate::types::{AgentService, HealthCheck, Node};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most operations in one transaction (Consul's `maxTxnOps`).
pub const MAX_TXN_OPS: usize = 64;
/// Longest KV key accepted, in bytes. Consul has no limit of its own but its Raft entry size;
/// keys are row keys here, so they are bounded, with a clear 400 above.
pub const MAX_KEY_LEN: usize = 4096;
/// Shortest session TTL (Consul's `session_ttl_min` default).
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
/// Longest session TTL (Consul's `SessionTTLMax`, 24 h).
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// A session's lock-delay when the create body names none (Consul's default).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Longest lock-delay applied, whatever the session asked for (Consul's `MaxLockDelay`).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Invalidation behaviour that releases held keys (the default).
pub const BEHAVIOR_RELEASE: &str = "release";
/// Invalidation behaviour that deletes held keys.
pub const BEHAVIOR_DELETE: &str = "delete";

/// A value as Consul's JSON carries it: a base64 string, or `null` when there is none. An
/// empty value is `null` too, as Consul stores an empty body as no value.
pub mod base64_value {
    use super::*;

    /// Serializes `Some(bytes)` as base64 and `None` or no bytes as `null`.
    pub fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) if !bytes.is_empty() => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            _ => s.serialize_none(),
        }
    }

    /// Reads a base64 string or `null`; bad base64 is an error naming the value.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text.as_deref() {
            None | Some("") => Ok(None),
            Some(t) => base64::engine::general_purpose::STANDARD
                .decode(t)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("failed to decode value: {e}"))),
        }
    }
}

/// A KV entry (Consul's `DirEntry`), as `GET /v1/kv/:key` lists it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct KvPair {
    /// How many times the key was acquired as a lock.
    pub lock_index: u64,
    /// The full key.
    pub key: String,
    /// An opaque number the client attached.
    pub flags: u64,
    /// The value (base64 on the wire, `null` when empty or left out of a txn result).
    #[serde(with = "base64_value")]
    pub value: Option<Vec<u8>>,
    /// The session holding the lock; left out when none does, as Consul does.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Raft index that created the key.
    pub create_index: u64,
    /// Raft index of the key's last change.
    pub modify_index: u64,
}

/// A service check a session depends on (Consul's `ServiceCheck`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceCheck {
    /// The check's ID on the session's node.
    #[serde(rename = "ID")]
    pub id: String,
    /// Enterprise namespace; kept as sent, always empty here.
    pub namespace: String,
}

/// A session as `/v1/session/info|node|list|renew` return it (Consul's `SessionEntry`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionEntry {
    /// The session's UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The node the session belongs to.
    pub node: String,
    /// Lock-delay in nanoseconds (Go's `time.Duration`).
    pub lock_delay: u64,
    /// `release` or `delete`.
    pub behavior: String,
    /// The TTL as sent (`"30s"`), empty without one.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// Node checks whose failure invalidates the session.
    pub node_checks: Vec<String>,
    /// Service checks whose failure invalidates the session (`[]` rather than Consul's `null`
    /// when none: DESIGN §4, clients iterate it unchecked).
    pub service_checks: Vec<ServiceCheck>,
    /// Raft index that created the session.
    pub create_index: u64,
    /// Raft index of the session's last change.
    pub modify_index: u64,
}

/// A session to create: `PUT /v1/session/create`'s body with Consul's defaults applied and
/// the ID the server chose. Replicated as is (the `SessionCreate` command), so fields are only
/// ever added, with defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NewSession {
    /// The session's UUID, chosen by the server that took the request (apply stays
    /// deterministic: no replica draws it).
    #[serde(rename = "ID")]
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The node the session belongs to.
    pub node: String,
    /// Lock-delay in nanoseconds.
    pub lock_delay: u64,
    /// `release` or `delete`.
    pub behavior: String,
    /// The TTL as sent, empty without one.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// Node checks the session depends on.
    pub node_checks: Vec<String>,
    /// Service checks the session depends on.
    pub service_checks: Vec<ServiceCheck>,
}

/// Fills in `Node` of a session-create body when the client left it out (or empty), as
/// Consul's agent does with its own node name; everything else is passed on as sent. An empty
/// body is an empty object. Used by every agent before it forwards the create, and by the
/// server for a create that reached it directly.
pub fn with_default_node(body: &[u8], node: &str) -> Result<Vec<u8>, String> {
    let mut object = parse_object(body)?;
    let has_node = object
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("node") && v.as_str().is_some_and(|n| !n.is_empty()));
    if !has_node {
        object.retain(|k, _| !k.eq_ignore_ascii_case("node"));
        object.insert("Node".into(), serde_json::Value::String(node.to_string()));
    }
    serde_json::to_vec(&object).map_err(|e| format!("Request decode failed: {e}"))
}

/// A session-create body as an object (an empty body is `{}`).
fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(o)) => Ok(o),
        Ok(_) => Err("Request decode failed: the body must be a JSON object".into()),
        Err(e) => Err(format!("Request decode failed: {e}")),
    }
}

/// The fields of a create body, matched case-insensitively (Consul decodes with Go's
/// `encoding/json`).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct SessionCreateBody {
    name: String,
    node: String,
    lock_delay: Option<serde_json::Value>,
    node_checks: Option<Vec<String>>,
    service_checks: Option<Vec<ServiceCheck>>,
    checks: Option<Vec<String>>,
    behavior: String,
    #[serde(rename = "TTL")]
    ttl: String,
}

/// Decodes a session-create body with Consul's defaults (`agent/session_endpoint.go`):
/// `Node` is `default_node` when absent; `LockDelay` is 15 s when absent, a Go duration
/// string or a number of nanoseconds, and a value under 1000 (ns) is taken as seconds, as
/// Consul does for clients that send `5` meaning five seconds; `Checks` (deprecated) joins
/// `NodeChecks`; and when none of `NodeChecks`, `ServiceChecks` and `Checks` is in the body at
/// all, the session depends on `serfHealth`. An explicit empty list means no checks. Checks
/// the values' ranges only where decoding needs to (the server's state validates the rest,
/// at proposal and again at apply). The error text is meant for a 400.
pub fn decode_session_create(body: &[u8], default_node: &str) -> Result<NewSession, String> {
    let object = parse_object(body)?;
    let has = |name: &str| object.keys().any(|k| k.eq_ignore_ascii_case(name));
    let checks_given = has("NodeChecks") || has("ServiceChecks") || has("Checks");
    let raw: SessionCreateBody =
        crate::decode::from_value(serde_json::Value::Object(object.clone()))?;
    let lock_delay = match raw.lock_delay {
        None | Some(serde_json::Value::Null) => DEFAULT_LOCK_DELAY.as_nanos() as u64,
        Some(v) => parse_lock_delay(&v).map_err(|e| format!("Request decode failed: {e}"))?,
    };
    let mut node_checks = raw.node_checks.unwrap_or_default();
    for c in raw.checks.unwrap_or_default() {
        if !node_checks.contains(&c) {
            node_checks.push(c);
        }
    }
    if !checks_given {
        node_checks.push(crate::SERF_HEALTH_ID.to_string());
    }
    Ok(NewSession {
        id: String::new(),
        name: raw.name,
        node: match raw.node.as_str() {
            "" => default_node.to_string(),
            _ => raw.node,
        },
        lock_delay,
        behavior: raw.behavior,
        ttl: raw.ttl,
        node_checks,
        service_checks: raw.service_checks.unwrap_or_default(),
    })
}

/// Consul's `FixupLockDelay`: a duration string or a number of nanoseconds, where anything
/// under 1000 ns is read as seconds.
fn parse_lock_delay(v: &serde_json::Value) -> Result<u64, String> {
    let nanos = match v {
        serde_json::Value::String(s) => crate::duration::parse(s)?.as_nanos(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if (0.0..1e19).contains(&f) => f as u128,
            _ => return Err(format!("invalid LockDelay {n}")),
        },
        other => return Err(format!("invalid LockDelay {other}")),
    };
    let nanos = if nanos < 1000 {
        nanos * 1_000_000_000
    } else {
        nanos
    };
    u64::try_from(nanos).map_err(|_| "LockDelay is too large".to_string())
}

/// `PUT /v1/session/create`'s answer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionCreated {
    /// The new session's ID.
    #[serde(rename = "ID")]
    pub id: String,
}

/// One of a transaction's four kinds, KV, node, service or check, as both an operation of
/// the body ([`TxnOpBody`]) and its result ([`TxnResult`]) carry it (Consul's `api.TxnOp` and
/// `api.TxnResult` share the field names): one is set, the others are left out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct TxnKinds<K, N, S, C> {
    /// The KV one.
    #[serde(rename = "KV", skip_serializing_if = "Option::is_none")]
    pub kv: Option<K>,
    /// The node one.
    #[serde(rename = "Node", skip_serializing_if = "Option::is_none")]
    pub node: Option<N>,
    /// The service one.
    #[serde(rename = "Service", skip_serializing_if = "Option::is_none")]
    pub service: Option<S>,
    /// The check one.
    #[serde(rename = "Check", skip_serializing_if = "Option::is_none")]
    pub check: Option<C>,
}

/// One operation of a `PUT /v1/txn` body, as sent: exactly one of the four is set.
pub type TxnOpBody = TxnKinds<TxnKvBody, TxnNodeBody, TxnServiceBody, TxnCheckBody>;

/// A KV operation of a transaction (Consul's `api.KVTxnOp`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TxnKvBody {
    /// `set`, `cas`, `lock`, `unlock`, `get`, `get-or-empty`, `get-tree`, `check-index`,
    /// `check-session`, `check-not-exists`, `delete`, `delete-tree`, `delete-cas`.
    pub verb: String,
    /// The key (or prefix, for the `-tree` verbs).
    pub key: String,
    /// The value, base64 on the wire.
    #[serde(with = "base64_value")]
    pub value: Option<Vec<u8>>,
    /// Flags to store.
    pub flags: u64,
    /// The index `cas`, `check-index` and `delete-cas` compare with.
    pub index: u64,
    /// The session of `lock`, `unlock` and `check-session`.
    pub session: String,
}

/// A node operation of a transaction.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TxnNodeBody {
    /// `set`, `cas`, `get`, `delete`, `delete-cas`.
    pub verb: String,
    /// The node (its `ModifyIndex` for the CAS verbs).
    pub node: Node,
}

/// A service operation of a transaction.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TxnServiceBody {
    /// `set`, `cas`, `get`, `delete`, `delete-cas`.
    pub verb: String,
    /// The node the instance is on.
    pub node: String,
    /// The instance (its `ModifyIndex` for the CAS verbs).
    pub service: AgentService,
}

/// A check operation of a transaction.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TxnCheckBody {
    /// `set`, `cas`, `get`, `delete`, `delete-cas`.
    pub verb: String,
    /// The check, with its node (its `ModifyIndex` for the CAS verbs).
    pub check: HealthCheck,
}

/// One result of a transaction: what its operation read or wrote (a KV entry has its value
/// only for `get` and `get-tree`).
pub type TxnResult = TxnKinds<KvPair, Node, AgentService, HealthCheck>;

/// Why one operation of a transaction failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TxnError {
    /// The operation's position in the body, from 0.
    pub op_index: usize,
    /// The reason.
    pub what: String,
}

/// `PUT /v1/txn`'s answer: results (200) or errors (409), the other one `null`, as Consul
/// answers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TxnResponse {
    /// The results, in operation order; `null` when the transaction was rolled back.
    pub results: Option<Vec<TxnResult>>,
    /// The failed operations; `null` when it was applied.
    pub errors: Option<Vec<TxnError>>,
}

impl RegistryClient {
    /// `PUT /v1/kv/:key` with the raw `value` and `query` (`flags`, `cas`, `acquire`,
    /// `release`, `dc`): Consul's `true` or `false`.
    pub async fn kv_put(
        &self,
        key: &str,
        value: impl Into<reqwest::Body>,
        query: &[(&str, &str)],
    ) -> Result<bool, ClientError> {
        let resp = self
            .http()
            .put(format!("{}/v1/kv/{key}", self.base()))
            .query(query)
            .body(value)
            .send()
            .await?;
        Ok(Self::check(resp).await?.json().await?)
    }

    /// `GET /v1/kv/:key` with `opts` and extra `query` (`recurse`, ...): the entries, or
    /// `None` for Consul's 404, with the `X-Consul-*` headers either way.
    pub async fn kv_get(
        &self,
        key: &str,
        opts: &QueryOptions,
        query: &[(&str, &str)],
    ) -> Result<(Option<Vec<KvPair>>, QueryMeta), ClientError> {
        let mut q = opts.query();
        q.extend(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut req = self
            .http()
            .get(format!("{}/v1/kv/{key}", self.base()))
            .query(&q);
        if let Some(w) = opts.wait {
            // A blocking query may take up to wait + wait/16 of jitter.
            req = req.timeout(w + w / 16 + Duration::from_secs(5));
        }
        let resp = req.send().await?;
        let meta = QueryMeta::from_headers(resp.headers());
        if resp.status().as_u16() == 404 {
            return Ok((None, meta));
        }
        Ok((Some(Self::check(resp).await?.json().await?), meta))
    }

    /// `DELETE /v1/kv/:key` with `query` (`recurse`, `cas`, `dc`): Consul's `true` or `false`.
    pub async fn kv_delete(&self, key: &str, query: &[(&str, &str)]) -> Result<bool, ClientError> {
        let resp = self
            .http()
            .delete(format!("{}/v1/kv/{key}", self.base()))
            .query(query)
            .send()
            .await?;
        Ok(Self::check(resp).await?.json().await?)
    }

    /// `PUT /v1/session/create` with `body` (a JSON object): the new session's ID.
    pub async fn session_create(&self, body: &serde_json::Value) -> Result<String, ClientError> {
        let created: SessionCreated = self.put("/v1/session/create", &[], body).await?;
        Ok(created.id)
    }

    /// `PUT /v1/session/destroy/:id`.
    pub async fn session_destroy(&self, id: &str) -> Result<bool, ClientError> {
        self.put(&format!("/v1/session/destroy/{id}"), &[], &())
            .await
    }

    /// `PUT /v1/session/renew/:id`: the session, or a 404 error once it is gone.
    pub async fn session_renew(&self, id: &str) -> Result<Vec<SessionEntry>, ClientError> {
        self.put(&format!("/v1/session/renew/{id}"), &[], &()).await
    }

    /// `GET /v1/session/info/:id`: `[]` once the session is gone.
    pub async fn session_info(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<(Vec<SessionEntry>, QueryMeta), ClientError> {
        self.get(&format!("/v1/session/info/{id}"), opts).await
    }

    /// `PUT /v1/txn` with `ops`: the status (200 or 409) and the answer.
    pub async fn txn(
        &self,
        ops: &[TxnOpBody],
        query: &[(&str, &str)],
    ) -> Result<(u16, TxnResponse), ClientError> {
        let resp = self
            .http()
            .put(format!("{}/v1/txn", self.base()))
            .query(query)
            .json(ops)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status == 409 {
            return Ok((status, resp.json().await?));
        }
        let resp = Self::check(resp).await?;
        Ok((status, resp.json().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_base64_or_null_and_sessions_are_left_out_when_none() {
        let pair = KvPair {
            key: "a/b".into(),
            value: Some(b"test".to_vec()),
            ..Default::default()
        };
        let json = serde_json::to_value(&pair).unwrap();
        assert_eq!(json["Value"], "dGVzdA==");
        assert!(json.get("Session").is_none());
        let empty = KvPair {
            value: Some(Vec::new()),
            session: "s".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(&empty).unwrap();
        assert_eq!(json["Value"], serde_json::Value::Null);
        assert_eq!(json["Session"], "s");
        let back: KvPair = serde_json::from_value(serde_json::to_value(&pair).unwrap()).unwrap();
        assert_eq!(back, pair);
        let bad = crate::decode::from_slice::<TxnKvBody>(br#"{"verb":"set","value":"%%%"}"#);
        assert!(bad.unwrap_err().contains("failed to decode value"));
    }

    #[test]
    fn session_create_defaults_follow_consul() {
        let s = decode_session_create(b"", "agent-1").unwrap();
        assert_eq!(s.node, "agent-1");
        assert_eq!(s.lock_delay, 15_000_000_000);
        assert_eq!(s.node_checks, vec!["serfHealth".to_string()]);
        assert!(s.service_checks.is_empty());
        // Case-insensitive fields; a number under 1000 is seconds, a string is a duration.
        let s = decode_session_create(br#"{"node":"n","lockdelay":5,"ttl":"30s"}"#, "x").unwrap();
        assert_eq!(
            (s.node.as_str(), s.lock_delay, s.ttl.as_str()),
            ("n", 5_000_000_000, "30s")
        );
        let s = decode_session_create(br#"{"LockDelay":"250ms"}"#, "x").unwrap();
        assert_eq!(s.lock_delay, 250_000_000);
        let s = decode_session_create(br#"{"LockDelay":0}"#, "x").unwrap();
        assert_eq!(s.lock_delay, 0);
        let s = decode_session_create(br#"{"LockDelay":15000000000}"#, "x").unwrap();
        assert_eq!(s.lock_delay, 15_000_000_000);
        // Any checks key replaces the default, an empty list too; Checks joins NodeChecks.
        let s = decode_session_create(br#"{"NodeChecks":[]}"#, "x").unwrap();
        assert!(s.node_checks.is_empty());
        let s = decode_session_create(
            br#"{"Checks":["a","serfHealth"],"NodeChecks":["serfHealth"],"ServiceChecks":[{"ID":"c"}]}"#,
            "x",
        )
        .unwrap();
        assert_eq!(
            s.node_checks,
            vec!["serfHealth".to_string(), "a".to_string()]
        );
        assert_eq!(s.service_checks[0].id, "c");
        for bad in [
            &b"[1]"[..],
            b"{",
            br#"{"LockDelay":"15"}"#,
            br#"{"LockDelay":true}"#,
        ] {
            let err = decode_session_create(bad, "x").unwrap_err();
            assert!(err.starts_with("Request decode failed"), "{err}");
        }
    }

    #[test]
    fn an_agent_fills_in_its_node_only_when_the_body_names_none() {
        let filled = with_default_node(b"", "agent-1").unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&filled).unwrap(),
            serde_json::json!({"Node": "agent-1"})
        );
        let kept = with_default_node(br#"{"node":"other","TTL":"10s"}"#, "agent-1").unwrap();
        let kept: serde_json::Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(kept["node"], "other");
        assert!(kept.get("Node").is_none());
        let empty = with_default_node(br#"{"NODE":""}"#, "agent-1").unwrap();
        let empty: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(empty, serde_json::json!({"Node": "agent-1"}));
        assert!(with_default_node(b"[]", "a").is_err());
    }
}

/// One entry of `kv export` / `kv import` (Consul's `kvExportEntry`,
/// <https://developer.hashicorp.com/consul/commands/kv/export>): lower-case keys and the value
/// in base64 (`""` for none).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct KvExportEntry {
    /// The full key.
    pub key: String,
    /// The key's flags.
    pub flags: u64,
    /// The value, base64.
    pub value: String,
}

impl KvExportEntry {
    /// The export form of `pair`.
    pub fn from_pair(pair: &KvPair) -> Self {
        KvExportEntry {
            key: pair.key.clone(),
            flags: pair.flags,
            value: base64::engine::general_purpose::STANDARD
                .encode(pair.value.as_deref().unwrap_or_default()),
        }
    }

    /// The value's bytes; the error names the key.
    pub fn value_bytes(&self) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.value)
            .map_err(|e| format!("{}: the value is not base64: {e}", self.key))
    }
}
