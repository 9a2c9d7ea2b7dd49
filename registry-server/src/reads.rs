//! Reads of the applied state, for every interface that answers them (HTTP
//! today, DNS next): the consistency modes, blocking waits and the
//! shared-answer cache. A read waits for the freshness its mode asks for,
//! evaluates a query against the applied state (every table), and, when
//! blocking, waits for the data's index to move. Must not know HTTP (no axum here): callers
//! turn an [`Answer`] into their own response.

use crate::raft::{RaftError, RaftHandle};
use crate::state::StateStore;
use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How a read is answered (Consul's consistency modes,
/// <https://developer.hashicorp.com/consul/api-docs/features/consistency>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// The leader answers, if it knows it is still the leader.
    Default,
    /// The leader first confirms leadership with a quorum.
    Consistent,
    /// Any server answers from its own state.
    Stale,
}

/// A blocking query's terms (`?index=` and `?wait=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// Answer once the data's index is past this.
    pub min_index: u64,
    /// Or once this much time has passed (plus jitter).
    pub wait: Duration,
}

/// A read's answer: the JSON body and the index of the data it covers.
#[derive(Clone)]
pub struct Answer {
    /// The applied index of the state it was computed from.
    applied: u64,
    /// The data's index (`X-Consul-Index`), at least 1.
    pub index: u64,
    /// The JSON body.
    pub body: Bytes,
    /// ACLs left out items the token may not read (Consul's
    /// `X-Consul-Results-Filtered-By-ACLs`).
    pub acl_filtered: bool,
}

/// Answers by query, each with the applied index of the state it was computed
/// from: a reader that finds an entry for its query at the current applied
/// index sends those bytes instead of evaluating and serialising again. When a
/// write wakes thousands of blocking queries on one service, one of them does
/// the work and the rest copy a pointer. Bounded in entries, entry size, key
/// length and total bytes: the key is the raw query, so a client that varies it
/// (`?tag=v1&tag=v1&...`) must not be able to pin more than
/// [`ANSWER_CACHE_BYTES`].
#[derive(Default)]
pub struct AnswerCache {
    /// The entries and the bytes they hold (keys and bodies).
    entries: std::sync::Mutex<CacheEntries>,
}

/// What [`AnswerCache`]'s lock guards.
#[derive(Default)]
struct CacheEntries {
    /// Answers by query.
    map: HashMap<String, Answer>,
    /// Sum of the keys' and bodies' lengths in `map`.
    bytes: usize,
}

/// Entries kept before the cache starts over.
const ANSWER_CACHE_ENTRIES: usize = 1024;
/// Answers larger than this are not kept (they would pin memory).
const ANSWER_CACHE_MAX_BODY: usize = 256 << 10;
/// Queries longer than this are not kept (nobody shares such a query).
const ANSWER_CACHE_MAX_KEY: usize = 1024;
/// Bytes of keys and bodies kept in all; past it the cache starts over.
pub const ANSWER_CACHE_BYTES: usize = 32 << 20;

impl AnswerCache {
    fn get(&self, key: &str, applied: u64) -> Option<Answer> {
        if key.is_empty() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .map
            .get(key)
            .filter(|a| a.applied == applied)
            .cloned()
    }

    fn put(&self, key: &str, answer: Answer) {
        if answer.body.len() > ANSWER_CACHE_MAX_BODY
            || key.len() > ANSWER_CACHE_MAX_KEY
            || key.is_empty()
        {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entries = &mut *entries;
        let size = key.len() + answer.body.len();
        let over = |e: &CacheEntries| {
            (e.map.len() >= ANSWER_CACHE_ENTRIES && !e.map.contains_key(key))
                || e.bytes - e.map.get(key).map_or(0, |old| key.len() + old.body.len()) + size
                    > ANSWER_CACHE_BYTES
        };
        if over(entries) {
            // Answers for an older applied index can never be served again (a
            // reader takes only the current one): they go first. Only if that
            // is not enough do current answers go too, so a client that varies
            // its query string cannot empty the cache for everyone else.
            let current = answer.applied;
            entries.map.retain(|_, a| a.applied >= current);
            entries.bytes = entries
                .map
                .iter()
                .map(|(k, a)| k.len() + a.body.len())
                .sum();
            while over(entries) {
                let Some(victim) = entries.map.keys().find(|k| k.as_str() != key).cloned() else {
                    break;
                };
                if let Some(old) = entries.map.remove(&victim) {
                    entries.bytes -= victim.len() + old.body.len();
                }
            }
        }
        match entries.map.get_mut(key) {
            Some(old) if old.applied > answer.applied => {}
            Some(old) => {
                entries.bytes = entries.bytes - old.body.len() + answer.body.len();
                *old = answer;
            }
            None => {
                entries.bytes += size;
                entries.map.insert(key.to_string(), answer);
            }
        }
    }

    /// Bytes held (keys and bodies).
    pub fn bytes(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// A read for an interface that does not answer in JSON (DNS): waits for the
/// consistency `mode` asks for, then evaluates `query` against the applied
/// state and its applied index. No blocking and no shared-answer cache: the
/// caller keeps its own.
pub async fn read_value<T>(
    raft: &RaftHandle,
    mode: Consistency,
    query: impl FnOnce(&StateStore, u64) -> T,
) -> Result<T, RaftError> {
    raft.check_running()?;
    match mode {
        Consistency::Stale => {}
        Consistency::Default => raft.default_barrier().await?,
        Consistency::Consistent => raft.linearizable_barrier().await?,
    }
    Ok(raft.with_applied(query))
}

/// A probe's index function, as a plain function (for reads without a probe).
pub type IndexFn = fn(&StateStore) -> u64;

/// What a blocking read probes between evaluations (see [`read_probed`]).
pub struct Probe<P> {
    /// The index the query would answer with, computed without copying the data.
    pub index: P,
    /// The service whose index `index` is, when it is one: the read then
    /// waits for that service's writes alone
    /// ([`RaftHandle::service_changes`]), not for every applied write.
    pub service: Option<String>,
    /// The KV key or prefix whose index `index` is, when it is one: the read
    /// then waits for writes under it alone ([`RaftHandle::kv_changes`]).
    pub kv: Option<String>,
}

impl<P: Fn(&StateStore) -> u64> Probe<P> {
    /// A probe of `index` alone: the read wakes at every applied write.
    pub fn index(index: P) -> Self {
        Probe {
            index,
            service: None,
            kv: None,
        }
    }

    /// A probe of the index of KV reads of `prefix` (or of one key): the read
    /// wakes at writes and deletes under it, and when tombstones are reaped.
    pub fn kv(prefix: String, index: P) -> Self {
        Probe {
            index,
            service: None,
            kv: Some(prefix),
        }
    }
}

/// The probe of a read of service `name`'s instances (the health and catalog
/// service endpoints): the service's index ([`crate::state::CatalogState::service_index`])
/// and the service's wake-ups.
pub fn service_probe(name: &str) -> Probe<impl Fn(&StateStore) -> u64> {
    let of = name.to_string();
    Probe {
        index: move |s: &StateStore| s.catalog.service_index(&of),
        service: Some(name.to_string()),
        kv: None,
    }
}

/// Answers a read: waits for the consistency `mode` asks for, then evaluates
/// `query` against the applied state, re-evaluating it after each applied
/// change while it is a `blocking` query whose index has not moved past
/// `min_index`. `query` returns the value and the index of the data it
/// covers, so a watcher of one service is not answered because another one
/// changed. `key` names the query in `cache` (its raw form will do: equal
/// keys must mean equal answers at one applied index, so a token whose
/// answers ACLs filter must be part of it); an empty key is never cached (a
/// read-only transaction, which nobody else asks). `then` runs after the
/// applied-state lock is released and answers the value to send and whether
/// ACLs left anything out.
#[allow(clippy::too_many_arguments)]
pub async fn read<T, U, F, S>(
    raft: &RaftHandle,
    cache: &AnswerCache,
    shutdown: &CancellationToken,
    mode: Consistency,
    blocking: Option<Blocking>,
    key: String,
    query: F,
    then: S,
) -> Result<Answer, RaftError>
where
    U: Serialize,
    F: Fn(&StateStore) -> (T, u64),
    S: Fn(T) -> (U, bool),
{
    let no_probe: Option<Probe<IndexFn>> = None;
    read_probed(
        raft, cache, shutdown, mode, blocking, key, no_probe, query, then,
    )
    .await
}

/// [`read`], with an optional `probe`: the index `query` would answer with,
/// computed without copying the data. A blocking read then evaluates `query`
/// (which copies every value it answers with, under the applied-state read
/// lock) and serialises it only once the index moved past `min_index` or
/// the wait ended, not after every applied entry: a watcher of a large,
/// quiet KV prefix costs one index lookup per write elsewhere, and a watcher
/// of one service is not even woken by writes to others.
#[allow(clippy::too_many_arguments)]
pub async fn read_probed<T, U, P, F, S>(
    raft: &RaftHandle,
    cache: &AnswerCache,
    shutdown: &CancellationToken,
    mode: Consistency,
    blocking: Option<Blocking>,
    key: String,
    probe: Option<Probe<P>>,
    query: F,
    then: S,
) -> Result<Answer, RaftError>
where
    U: Serialize,
    P: Fn(&StateStore) -> u64,
    F: Fn(&StateStore) -> (T, u64),
    S: Fn(T) -> (U, bool),
{
    raft.check_running()?;
    match mode {
        Consistency::Stale => {}
        Consistency::Default => raft.default_barrier().await?,
        Consistency::Consistent => raft.linearizable_barrier().await?,
    }
    // The service whose own channel the read waits on, while it does.
    let mut on_service = probe.as_ref().and_then(|p| p.service.as_deref());
    let own = on_service.filter(|_| blocking.is_some());
    let kv = probe.as_ref().and_then(|p| p.kv.as_deref());
    let mut changes = match own.and_then(|name| raft.service_changes(name)) {
        Some(changes) => changes,
        None => {
            on_service = None;
            match kv.filter(|_| blocking.is_some()) {
                Some(prefix) => raft.kv_changes(prefix),
                None => raft.applied_changes(),
            }
        }
    };
    let deadline = blocking.map(|b| {
        // Consul adds up to wait/16 of jitter so that many watchers of one
        // change do not all come back at the same instant.
        let jitter_ms = (b.wait.as_millis() / 16) as u64;
        let jitter = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        Instant::now() + b.wait + jitter
    });
    // Whether a blocking read must go on waiting with the data at `index`.
    // Indexes never go back on a server, so "changed" is "greater"; a
    // lagging follower keeps a watcher waiting rather than answering it with
    // data older than it has already seen.
    let keep_waiting = |index: u64| match (blocking, deadline) {
        (Some(b), Some(deadline)) => {
            index.max(1) <= b.min_index && Instant::now() < deadline && !shutdown.is_cancelled()
        }
        _ => false,
    };
    // One timer for the whole wait, not one per wake-up: a watcher of a quiet
    // service among many is woken by every applied write, and re-arming a timer
    // each time was a measurable part of what 100,000 such watchers cost.
    let timer = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into());
    tokio::pin!(timer);
    loop {
        changes.borrow_and_update();
        let moved = match &probe {
            Some(probe) => !keep_waiting(raft.with_applied(|state, _| {
                // A state rebuilt whole (a restore, a snapshot installed)
                // may lack the service: its index is then the services
                // table's, which writes to any service move, so from here
                // the read waits on every write (switched under the lock
                // its probe reads under: no batch falls in between).
                if on_service.is_some_and(|name| state.catalog.own_service_index(name).is_none()) {
                    changes = raft.applied_changes();
                    on_service = None;
                }
                (probe.index)(state)
            })),
            None => true,
        };
        if moved {
            let (answer, fresh) =
                raft.with_applied(|state, applied| match cache.get(&key, applied) {
                    Some(a) => (Ok(a), None),
                    None => (Err(query(state)), Some(applied)),
                });
            // `then` (a client's `?filter=`, which costs per item) and the
            // serialisation run after the lock is released, so neither holds
            // up the Raft thread's next apply: `query` only copies out what
            // it needs.
            let answer = match (answer, fresh) {
                (Ok(a), _) => a,
                (Err((value, index)), applied) => {
                    let (value, acl_filtered) = then(value);
                    let body =
                        serde_json::to_vec(&value).map_err(|e| RaftError::Encode(e.to_string()))?;
                    let a = Answer {
                        applied: applied.unwrap_or_default(),
                        index: index.max(1),
                        body: Bytes::from(body),
                        acl_filtered,
                    };
                    cache.put(&key, a.clone());
                    a
                }
            };
            if !keep_waiting(answer.index) {
                return Ok(answer);
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = &mut timer => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that varies its query string must not empty the cache for
    /// everyone: answers no reader can take any more (an older state) go first.
    #[test]
    fn answers_for_older_states_are_evicted_before_current_ones() {
        let cache = AnswerCache::default();
        let big = Bytes::from(vec![b'x'; ANSWER_CACHE_MAX_BODY]);
        let at = |applied, body: &Bytes| Answer {
            applied,
            index: applied,
            body: body.clone(),
            acl_filtered: false,
        };
        // Answers for an older state, as many as the bound holds.
        for i in 0..(2 * ANSWER_CACHE_BYTES / ANSWER_CACHE_MAX_BODY) {
            cache.put(&format!("/v1/catalog/services?x={i}"), at(1, &big));
        }
        cache.put("/v1/health/service/hot", at(2, &Bytes::from_static(b"[]")));
        // A current answer that needs room: the old ones make it, the hot one stays.
        cache.put("/v1/catalog/nodes", at(2, &big));
        assert!(cache.get("/v1/health/service/hot", 2).is_some());
        assert!(cache.get("/v1/catalog/nodes", 2).is_some());
        assert!(cache.bytes() <= ANSWER_CACHE_BYTES);
    }

    /// Issue 12 item 4: the key is the raw query, so distinct spellings of one
    /// query each take an entry; what they hold in all stays under the bound.
    #[test]
    fn many_spellings_of_a_query_stay_under_the_byte_bound() {
        let cache = AnswerCache::default();
        let body = Bytes::from(vec![b'x'; ANSWER_CACHE_MAX_BODY]);
        for i in 0..ANSWER_CACHE_ENTRIES {
            let key = format!(
                "/v1/health/service/web?{}",
                "tag=v1&".repeat(i % 100) + &i.to_string()
            );
            cache.put(
                &key,
                Answer {
                    applied: 1,
                    index: 1,
                    body: body.clone(),
                    acl_filtered: false,
                },
            );
            assert!(
                cache.bytes() <= ANSWER_CACHE_BYTES,
                "{} bytes",
                cache.bytes()
            );
        }
        // Overlong keys are not kept at all.
        let long = "tag=v1&".repeat(ANSWER_CACHE_MAX_KEY);
        cache.put(
            &long,
            Answer {
                applied: 2,
                index: 2,
                body: Bytes::from_static(b"[]"),
                acl_filtered: false,
            },
        );
        assert!(cache.get(&long, 2).is_none());
        // Replacing an entry keeps the count right.
        let before = cache.bytes();
        let key = "/v1/catalog/services";
        for applied in 3..10 {
            cache.put(
                key,
                Answer {
                    applied,
                    index: applied,
                    body: Bytes::from_static(b"{}"),
                    acl_filtered: false,
                },
            );
        }
        assert!(cache.bytes() <= before + key.len() + 2);
        assert_eq!(cache.get(key, 9).map(|a| a.index), Some(9));
    }
}
