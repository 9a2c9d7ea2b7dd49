//! `/v1/kv/*` (<https://developer.hashicorp.com/consul/api-docs/kv>): reads
//! with `?recurse`, `?keys` (`?separator`), `?raw`, blocking and every
//! consistency mode; `PUT` with `?flags`, `?cas`, `?acquire`, `?release`;
//! `DELETE` with `?recurse` and `?cas`. Turns a request into a `Kv` command
//! or a read of the KV table; must not apply a KV rule itself
//! (`state/kv.rs` does, at apply).

use super::params::{has, read_params, value};
use super::{json, json_response, HttpResult, Params, St};
use crate::reads::{Answer, Probe};
use crate::state::kv::{KvOp, KvVerb};
use crate::state::{Command, Outcome, StateStore};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Authz, Resource};
use registry_api::kv::{KvPair, MAX_KEY_LEN};
use registry_api::Error as ApiError;

/// The key a path names: as sent, without leading `/`s (Consul's clients
/// refuse keys that start with one; here none is ever stored, so
/// `/v1/kv//a` is key `a`), at most [`MAX_KEY_LEN`] bytes.
pub(super) fn key_of(raw: &str) -> Result<String, ApiError> {
    let key = raw.trim_start_matches('/');
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::BadRequest(format!(
            "Key is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(key.to_string())
}

/// A `?name=` that must be an unsigned number, if given.
fn number(q: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    value(q, name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::BadRequest(format!("Invalid ?{name}: {v:?} is not an unsigned integer"))
            })
        })
        .transpose()
}

/// Consul's `conflictingFlags`: at most one of `flags` may be given.
fn conflicting(q: &[(String, String)], flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|f| has(q, f)).count() > 1 {
        let given: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(ApiError::BadRequest(format!(
            "Conflicting flags: {}",
            given.join("&")
        )));
    }
    Ok(())
}

/// `GET /v1/kv/` (the root: only with `?recurse` or `?keys`).
pub(super) async fn kv_get_root(
    st: St,
    auth: Authorized,
    q: Query<Vec<(String, String)>>,
) -> HttpResult {
    kv_get(st, auth, Path(String::new()), q).await
}

/// `PUT /v1/kv/` (always `Missing key name`, as in Consul).
pub(super) async fn kv_put_root(st: St, auth: Authorized, q: Params, body: Bytes) -> HttpResult {
    kv_put(st, auth, Path(String::new()), q, body).await
}

/// `DELETE /v1/kv/` (the whole store with `?recurse`).
pub(super) async fn kv_delete_root(st: St, auth: Authorized, q: Params) -> HttpResult {
    kv_delete(st, auth, Path(String::new()), q).await
}

/// `GET /v1/kv/:key`.
pub(super) async fn kv_get(
    State(st): St,
    auth: Authorized,
    Path(key): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let key = key_of(&key)?;
    let p = read_params(&q)?;
    if has(&q, "keys") {
        // Consul still reads the misspelt `seperator` of its first release.
        let sep = value(&q, "separator")
            .or_else(|| value(&q, "seperator"))
            .unwrap_or("")
            .to_string();
        let cache_key = format!("kv-keys\0{key}\0{sep}");
        let prefix = key.clone();
        let probe = Probe::kv(key.clone(), move |s: &StateStore| {
            s.kv.prefix_index(&prefix)
        });
        let acl = auth.0.clone();
        let root = key.is_empty();
        let answer = kv_read(
            &st,
            &auth,
            &p,
            cache_key,
            probe,
            move |s| {
                let (keys, index) = s.kv.keys(&key, &sep);
                (Some(keys), index)
            },
            move |keys: Option<Vec<String>>| {
                let mut keys = keys.unwrap_or_default();
                let dropped = super::acl_retain(&acl, &mut keys, |k| {
                    acl.allows(Resource::Key, k, Access::Read)
                });
                // An empty root is `[]`; an empty prefix is a 404.
                let found = !keys.is_empty() || root;
                (found.then_some(keys), dropped)
            },
        )
        .await?;
        return Ok(found_or_404(&st, answer));
    }
    if has(&q, "recurse") {
        let cache_key = format!("kv-tree\0{key}");
        let prefix = key.clone();
        let probe = Probe::kv(key.clone(), move |s: &StateStore| {
            s.kv.prefix_index(&prefix)
        });
        let acl = auth.0.clone();
        let answer = kv_read(
            &st,
            &auth,
            &p,
            cache_key,
            probe,
            move |s| {
                let (list, index) = s.kv.list(&key);
                (Some(list), index)
            },
            move |list: Option<Vec<KvPair>>| {
                let mut list = list.unwrap_or_default();
                let dropped = super::acl_retain(&acl, &mut list, |e| {
                    acl.allows(Resource::Key, &e.key, Access::Read)
                });
                ((!list.is_empty()).then_some(list), dropped)
            },
        )
        .await?;
        return Ok(found_or_404(&st, answer));
    }
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()).into());
    }
    auth.require(Resource::Key, &key, Access::Read)?;
    // `?raw` shares the cached answer of the plain read.
    let cache_key = format!("kv\0{key}");
    let one = key.clone();
    let probe = Probe::kv(key.clone(), move |s: &StateStore| s.kv.get_index(&one));
    let answer = kv_read(
        &st,
        &Authz::disabled(),
        &p,
        cache_key,
        probe,
        move |s| {
            let (entry, index) = s.kv.get(&key);
            (entry.map(|e| [e]), index)
        },
        |v| (v, false),
    )
    .await?;
    if has(&q, "raw") && answer.body.as_ref() != b"null" {
        return raw(&st, &answer);
    }
    Ok(found_or_404(&st, answer))
}

/// A KV read through [`crate::reads::read_probed`]: `then` answers `None`
/// for Consul's 404 (the body is then `null`) after the ACL step (keys the
/// token may not read are left out); `probe` is the index `query` answers
/// with, so a blocking read copies values only once it moved, and the key or
/// prefix whose writes alone wake a blocking read. `authz` keys the
/// shared answers (disabled: an answer that is the same for every token).
#[allow(clippy::too_many_arguments)]
async fn kv_read<T, U, P, F, S>(
    st: &super::AppState,
    authz: &Authz,
    p: &super::params::ReadParams,
    cache_key: String,
    probe: crate::reads::Probe<P>,
    query: F,
    then: S,
) -> Result<Answer, crate::raft::RaftError>
where
    U: serde::Serialize,
    P: Fn(&StateStore) -> u64,
    F: Fn(&StateStore) -> (T, u64),
    S: Fn(T) -> (Option<U>, bool),
{
    crate::reads::read_probed(
        &st.raft,
        &st.answers,
        &st.shutdown,
        p.mode_now(&st.raft),
        p.blocking,
        super::acl_key(cache_key, authz),
        Some(probe),
        query,
        then,
    )
    .await
}

/// The answer, or Consul's bare 404 with the `X-Consul-*` headers when the
/// read found nothing (its body is `null`).
fn found_or_404(st: &super::AppState, answer: Answer) -> Response {
    if answer.body.as_ref() != b"null" {
        return super::answer_response(st, answer);
    }
    let mut resp = json_response(st, Body::empty(), Some(answer.index));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().remove(header::CONTENT_TYPE);
    resp
}

/// `?raw`: the value alone, as `text/plain` that browsers must not sniff
/// (Consul's answer to CVE-2020-25864).
fn raw(st: &super::AppState, answer: &Answer) -> HttpResult {
    let entries: Vec<KvPair> = serde_json::from_slice(&answer.body)
        .map_err(|e| ApiError::Internal(format!("cannot read the KV answer: {e}")))?;
    let value = entries.into_iter().next().and_then(|e| e.value);
    let mut resp = json_response(
        st,
        Body::from(value.unwrap_or_default()),
        Some(answer.index),
    );
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "Content-Security-Policy",
        HeaderValue::from_static("sandbox"),
    );
    Ok(resp)
}

/// `PUT /v1/kv/:key`: the raw body is the value (the router's body limit
/// answers 413 above 512 KiB before this runs, and nothing is stored).
pub(super) async fn kv_put(
    State(st): St,
    auth: Authorized,
    Path(key): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> HttpResult {
    let key = key_of(&key)?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()).into());
    }
    conflicting(&q, &["cas", "acquire", "release"])?;
    let mut op = KvOp {
        verb: KvVerb::Set,
        key,
        value: Some(body.to_vec()),
        flags: number(&q, "flags")?.unwrap_or(0),
        index: 0,
        session: String::new(),
    };
    if let Some(cas) = number(&q, "cas")? {
        op.verb = KvVerb::Cas;
        op.index = cas;
    }
    if let Some(session) = value(&q, "acquire") {
        op.verb = KvVerb::Lock;
        op.session = session.to_string();
    }
    if let Some(session) = value(&q, "release") {
        op.verb = KvVerb::Unlock;
        op.session = session.to_string();
    }
    auth.require(Resource::Key, &op.key, Access::Write)?;
    answer_bool(&st, st.raft.propose(Command::Kv(op)).await?)
}

/// `DELETE /v1/kv/:key`.
pub(super) async fn kv_delete(
    State(st): St,
    auth: Authorized,
    Path(key): Path<String>,
    Query(q): Params,
) -> HttpResult {
    let key = key_of(&key)?;
    conflicting(&q, &["recurse", "cas"])?;
    let mut op = KvOp {
        verb: KvVerb::Delete,
        key,
        value: None,
        flags: 0,
        index: 0,
        session: String::new(),
    };
    if has(&q, "recurse") {
        op.verb = KvVerb::DeleteTree;
    } else if op.key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()).into());
    }
    if let Some(cas) = number(&q, "cas")? {
        op.verb = KvVerb::DeleteCas;
        op.index = cas;
    }
    if op.verb == KvVerb::DeleteTree {
        auth.require_key_write_prefix(&op.key)?;
    } else {
        auth.require(Resource::Key, &op.key, Access::Write)?;
    }
    answer_bool(&st, st.raft.propose(Command::Kv(op)).await?)
}

/// A KV write's `true` or `false`.
fn answer_bool(st: &super::AppState, outcome: Outcome) -> HttpResult {
    match outcome {
        Outcome::Bool(b) => json(st, &b),
        other => {
            Err(ApiError::Internal(format!("unexpected outcome of a KV write: {other:?}")).into())
        }
    }
}
