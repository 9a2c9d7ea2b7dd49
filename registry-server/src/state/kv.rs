//! The KV table: entries by key, the tombstones of deleted keys and the
//! lock-delays of keys whose session was invalidated, with Consul's rules for
//! every KV operation (`agent/consul/state/kvs.go`, `txn.go`) and its
//! blocking-query indexes.
//!
//! Writes go through a [`KvView`]: the table plus the writes planned so far
//! in one Raft entry, so that a transaction's later operations see its
//! earlier ones and nothing is installed until the whole entry succeeded
//! ([`KvTable::commit`]). Pure like the rest of `state/`: time comes in as
//! the entry's `at` (the leader's clock), never from a clock here. Owns the
//! KV rows and their rules; must not decide anything about sessions beyond
//! asking whether one exists (`session.rs`).
//!
//! **Indexes.** A read of a key answers with the key's `ModifyIndex`; a read
//! of a prefix (`?recurse`, `?keys`) with the highest `ModifyIndex` or
//! tombstone under it. Every write or delete under a prefix leaves an entry
//! or a tombstone there at its own Raft index, so a watcher of `a/` wakes for
//! `a/x` (and for its delete) and not for `ab/x` or `b/`. Nothing under the
//! prefix, or a key that never existed, answers with the index up to which
//! tombstones were reaped (at least 1).
//!
//! **Why reaping tombstones cannot make a watcher miss a change.** Every
//! answer's index is at least [`KvTable::reaped`], the highest index up to
//! which tombstones were ever reaped. A change under a prefix at index W
//! leaves an entry or a tombstone at W; if a reap later removes that
//! tombstone, it was one at or below the reap's index R, and from then on
//! every answer is at least R ≥ W. Either way the prefix's index after the
//! change is at least W, which is above any index a watcher could have been
//! given before it, so the watcher wakes, however late it looks. The cost is
//! one spurious wake of watchers of quiet prefixes per reap (their index
//! jumps to R), which is why the leader reaps at most once per tombstone
//! TTL (15 minutes), each time every delete older than that
//! (`leader/tombstones.rs`).

use super::image::{map_part, whole_part, Part};
use super::rows::{
    decimal, extra_index_change, extra_index_row, from_decimal, from_json, group_insert,
    group_remove, json_part, prefixed, put_rows, Groups, RowChange, EXTRA_INDEX_PREFIX, KV_PREFIX,
    KV_REAPED_INDEX, LOCK_DELAY_PREFIX, TOMBSTONE_PREFIX,
};
use super::session::SessionView;
use super::{current, current_group};
use registry_api::kv::{base64_value, KvPair, MAX_KEY_LEN, MAX_LOCK_DELAY};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;

/// A KV operation's verb (Consul's `api.KVOp`): the writes of `/v1/kv` and
/// every KV verb of `/v1/txn`, spelt as Consul spells them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KvVerb {
    /// Set the value (keeps a lock holder).
    Set,
    /// Set if `Index` is the key's `ModifyIndex` (0: only if absent).
    Cas,
    /// Acquire the key for `Session` and set the value.
    Lock,
    /// Release the key held by `Session` and set the value.
    Unlock,
    /// Read the key; fails if absent.
    Get,
    /// Read the key; an empty entry if absent.
    GetOrEmpty,
    /// Read every key under the prefix.
    GetTree,
    /// Fail unless the key's `ModifyIndex` is `Index`.
    CheckIndex,
    /// Fail unless `Session` holds the key.
    CheckSession,
    /// Fail if the key exists.
    CheckNotExists,
    /// Delete the key.
    Delete,
    /// Delete every key under the prefix.
    DeleteTree,
    /// Delete if `Index` is the key's `ModifyIndex`.
    DeleteCas,
}

impl KvVerb {
    /// The verb Consul spells `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    /// Whether the verb changes the table (a transaction without any is a read).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            KvVerb::Set
                | KvVerb::Cas
                | KvVerb::Lock
                | KvVerb::Unlock
                | KvVerb::Delete
                | KvVerb::DeleteTree
                | KvVerb::DeleteCas
        )
    }
}

/// One KV operation: the `Kv` command (`PUT`/`DELETE /v1/kv/:key`) and a KV
/// operation of a transaction. Replicated: fields are only ever added.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KvOp {
    /// What to do.
    pub verb: KvVerb,
    /// The key, or the prefix of the `-tree` verbs.
    pub key: String,
    /// The value to write (base64 in the log).
    #[serde(
        with = "base64_value",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Vec<u8>>,
    /// Flags to write.
    #[serde(default)]
    pub flags: u64,
    /// The index of `cas`, `check-index` and `delete-cas`.
    #[serde(default)]
    pub index: u64,
    /// The session of `lock`, `unlock` and `check-session`.
    #[serde(default)]
    pub session: String,
}

/// The `KvReapTombstones` command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TombstoneReap {
    /// Tombstones at or below this index go.
    pub up_to_index: u64,
}

/// A KV entry as the table keeps it: Consul's `DirEntry` without its key
/// (the map's key, and the row key's rest). Also the row's JSON form.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StoredKv {
    /// Times the key was acquired.
    #[serde(default)]
    pub(super) lock_index: u64,
    /// Opaque flags.
    #[serde(default)]
    pub(super) flags: u64,
    /// The value; `None` when empty.
    #[serde(with = "base64_value", default)]
    pub(super) value: Option<Vec<u8>>,
    /// The session holding the key, empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) session: String,
    /// Raft index that created the key.
    pub(super) create_index: u64,
    /// Raft index of its last change.
    pub(super) modify_index: u64,
}

impl StoredKv {
    /// The API form of the entry at `key`, with or without its value.
    pub(super) fn to_api(&self, key: &str, with_value: bool) -> KvPair {
        KvPair {
            lock_index: self.lock_index,
            key: key.to_string(),
            flags: self.flags,
            value: if with_value { self.value.clone() } else { None },
            session: self.session.clone(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }

    /// Equal but for the indexes: such a write changes nothing (Consul's
    /// `DirEntry.Equal`), bumps no index and wakes no watcher.
    fn same_content(&self, other: &StoredKv) -> bool {
        (self.lock_index, self.flags, &self.value, &self.session)
            == (other.lock_index, other.flags, &other.value, &other.session)
    }
}

/// How many parts the KV table's image has ([`KvTable::image_part`]).
pub(super) const IMAGE_PARTS: usize = 4;

/// The KV table of one datacenter, as replicated by Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvTable {
    /// Entries by key.
    entries: BTreeMap<String, StoredKv>,
    /// Deleted keys, with the index of their delete.
    tombstones: BTreeMap<String, u64>,
    /// Keys that cannot be acquired before the time (ms since the epoch).
    lock_delays: BTreeMap<String, u64>,
    /// Tombstones at or below this index were reaped; every read answers at
    /// least this index (see the module comment).
    reaped: u64,
    /// Keys held by each session. Derived, not persisted: invalidating a
    /// session must not scan every key.
    held: Groups,
    /// `tombstones` ordered by index. Derived, not persisted: the leader's
    /// reaper and a reap read only the tombstones due, not all of them.
    tombstones_by_index: ByValue,
    /// `lock_delays` ordered by time. Derived, not persisted, for the same
    /// reason.
    lock_delays_by_time: ByValue,
}

/// A map's `(value, key)` pairs in value order, beside the map: its entries
/// at or below a value are a prefix.
type ByValue = std::collections::BTreeSet<(u64, String)>;

/// The `(value, key)` pairs of `by_value` at or below `max`, in value order:
/// a prefix, so reading them costs what they are, not the whole map.
fn up_to(by_value: &ByValue, max: u64) -> impl Iterator<Item = &(u64, String)> {
    by_value.iter().take_while(move |(v, _)| *v <= max)
}

/// The entries of `map` under `prefix`, in key order.
fn under<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

impl KvTable {
    /// The entry at `key` (Consul's `GET /v1/kv/:key`) and the index a read
    /// of it answers with.
    pub fn get(&self, key: &str) -> (Option<KvPair>, u64) {
        match self.entries.get(key) {
            Some(e) => (Some(e.to_api(key, true)), e.modify_index.max(1)),
            None => (None, self.absent_index(key)),
        }
    }

    /// Every entry under `prefix` (`?recurse`) and the prefix's index.
    pub fn list(&self, prefix: &str) -> (Vec<KvPair>, u64) {
        let list = under(&self.entries, prefix)
            .map(|(k, e)| e.to_api(k, true))
            .collect();
        (list, self.prefix_index(prefix))
    }

    /// The keys under `prefix` (`?keys`), cut after the first `separator`
    /// that follows the prefix and deduplicated, as Consul's
    /// `kvsListKeysTxn` does; the prefix's index.
    pub fn keys(&self, prefix: &str, separator: &str) -> (Vec<String>, u64) {
        let mut keys: Vec<String> = Vec::new();
        for (key, _) in under(&self.entries, prefix) {
            let cut = match separator {
                "" => None,
                sep => key[prefix.len()..]
                    .find(sep)
                    .map(|at| &key[..prefix.len() + at + sep.len()]),
            };
            match cut {
                Some(dir) if keys.last().map(String::as_str) == Some(dir) => {}
                Some(dir) => keys.push(dir.to_string()),
                None => keys.push(key.clone()),
            }
        }
        (keys, self.prefix_index(prefix))
    }

    /// The index [`KvTable::get`] answers with, without copying the entry
    /// (a blocking read's probe, `reads::read_probed`).
    pub fn get_index(&self, key: &str) -> u64 {
        match self.entries.get(key) {
            Some(e) => e.modify_index.max(1),
            None => self.absent_index(key),
        }
    }

    /// The index of a read of `key` when it does not exist: its delete, or
    /// the reap floor (at least 1).
    fn absent_index(&self, key: &str) -> u64 {
        let deleted = self.tombstones.get(key).copied().unwrap_or(0);
        deleted.max(self.reaped).max(1)
    }

    /// The index of a read of everything under `prefix` (what
    /// [`KvTable::list`] and [`KvTable::keys`] answer with, without copying
    /// anything): the highest change there (entry or tombstone), at least the
    /// reap floor and 1.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        let entries = under(&self.entries, prefix).map(|(_, e)| e.modify_index);
        let deletes = under(&self.tombstones, prefix).map(|(_, i)| *i);
        entries
            .chain(deletes)
            .max()
            .unwrap_or(0)
            .max(self.reaped)
            .max(1)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// A restore at `index` (`restore.rs`): every entry modified at `index`
    /// (created at most then), and the tombstones folded into the reap floor
    /// at `index`, so every read answers at least `index`.
    pub(super) fn restamp(&mut self, index: u64) {
        for e in self.entries.values_mut() {
            (e.create_index, e.modify_index) = (e.create_index.min(index), index);
        }
        self.tombstones.clear();
        self.tombstones_by_index.clear();
        self.reaped = index;
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The lowest index of a tombstone still kept, if any (the leader's
    /// reaper proposes a reap only when one is old enough).
    pub fn oldest_tombstone(&self) -> Option<u64> {
        self.tombstones_by_index.first().map(|(index, _)| *index)
    }

    /// The index up to which tombstones were reaped.
    pub fn reaped(&self) -> u64 {
        self.reaped
    }

    /// Whether a lock-delay runs out at or before `at` (ms): a reap would
    /// clear it.
    pub fn has_lock_delay_until(&self, at: u64) -> bool {
        self.lock_delays_by_time
            .first()
            .is_some_and(|(until, _)| *until <= at)
    }

    /// Decode one of this table's rows (`prefix` is the row's prefix,
    /// `name` the rest of its key).
    pub(super) fn load_row(
        &mut self,
        prefix: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), String> {
        match prefix {
            KV_PREFIX => {
                let entry: StoredKv = from_json(value)?;
                if !entry.session.is_empty() {
                    group_insert(&mut self.held, &entry.session, name);
                }
                self.entries.insert(name.to_string(), entry);
            }
            TOMBSTONE_PREFIX => {
                let planned = BTreeMap::from([(name.to_string(), Some(from_decimal(value)?))]);
                apply_indexed(&mut self.tombstones, &mut self.tombstones_by_index, planned);
            }
            LOCK_DELAY_PREFIX => {
                let planned = BTreeMap::from([(name.to_string(), Some(from_decimal(value)?))]);
                apply_indexed(
                    &mut self.lock_delays,
                    &mut self.lock_delays_by_time,
                    planned,
                );
            }
            EXTRA_INDEX_PREFIX if name == KV_REAPED_INDEX => self.reaped = from_decimal(value)?,
            _ => return Err("not a KV row".into()),
        }
        Ok(())
    }

    /// This table's rows, in no particular order (the caller sorts).
    #[cfg(test)]
    pub(super) fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        super::image::table_rows(IMAGE_PARTS, |i| self.image_part(i, None))
    }

    /// Part `i` of the image after `after` (`image.rs`): entries,
    /// tombstones, lock-delays, the reaped index.
    pub(super) fn image_part<'a>(
        &'a self,
        i: usize,
        after: Option<(&'a str, &'a str)>,
    ) -> Part<'a> {
        match i {
            0 => json_part(KV_PREFIX, &self.entries, after),
            1 => map_part(&self.tombstones, after, |k, i| {
                Some((prefixed(TOMBSTONE_PREFIX, k), decimal(*i)))
            }),
            2 => map_part(&self.lock_delays, after, |k, until| {
                Some((prefixed(LOCK_DELAY_PREFIX, k), decimal(*until)))
            }),
            3 => whole_part(after, extra_index_row(KV_REAPED_INDEX, self.reaped)),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Install planned writes. Cannot fail.
    pub(super) fn commit(&mut self, plan: KvPlan) {
        for (key, entry) in plan.entries {
            if let Some(old) = self.entries.remove(&key) {
                group_remove(&mut self.held, &old.session, &key);
            }
            if let Some(entry) = entry {
                if !entry.session.is_empty() {
                    group_insert(&mut self.held, &entry.session, &key);
                }
                self.entries.insert(key, entry);
            }
        }
        let (tombstones, delays) = (plan.tombstones, plan.lock_delays);
        apply_indexed(
            &mut self.tombstones,
            &mut self.tombstones_by_index,
            tombstones,
        );
        apply_indexed(&mut self.lock_delays, &mut self.lock_delays_by_time, delays);
        if let Some(reaped) = plan.reaped {
            self.reaped = reaped;
        }
    }
}

/// Upserts (`Some`) and deletions (`None`) into `map`, keeping `by_value`
/// its `(value, key)` pairs.
fn apply_indexed(
    map: &mut BTreeMap<String, u64>,
    by_value: &mut ByValue,
    planned: BTreeMap<String, Option<u64>>,
) {
    for (k, v) in planned {
        let old = match v {
            Some(v) => {
                by_value.insert((v, k.clone()));
                map.insert(k.clone(), v)
            }
            None => map.remove(&k),
        };
        if let Some(old) = old.filter(|old| Some(*old) != v) {
            by_value.remove(&(old, k));
        }
    }
}

/// KV writes planned for one Raft entry, detached from the table so they can
/// be encoded and then committed.
#[derive(Default)]
pub(super) struct KvPlan {
    /// Entry upserts and deletions.
    entries: BTreeMap<String, Option<StoredKv>>,
    /// Tombstone upserts and removals.
    tombstones: BTreeMap<String, Option<u64>>,
    /// Lock-delay upserts and removals.
    lock_delays: BTreeMap<String, Option<u64>>,
    /// A new reap floor.
    reaped: Option<u64>,
}

impl KvPlan {
    /// Append the rows of these writes.
    pub(super) fn encode(&self, rows: &mut Vec<RowChange>) -> Result<(), String> {
        put_rows(rows, "KV", &self.entries, |key| prefixed(KV_PREFIX, key))?;
        for (prefix, map) in [
            (TOMBSTONE_PREFIX, &self.tombstones),
            (LOCK_DELAY_PREFIX, &self.lock_delays),
        ] {
            for (key, n) in map {
                let (key, value) = (prefixed(prefix, key), n.map(decimal));
                rows.push(RowChange { key, value });
            }
        }
        if let Some(reaped) = self.reaped {
            rows.push(extra_index_change(KV_REAPED_INDEX, reaped));
        }
        Ok(())
    }
}

/// The KV table as one Raft entry sees it while it is planned: the committed
/// table with the writes planned so far laid over it.
pub(super) struct KvView<'a> {
    /// The table before the entry.
    base: &'a KvTable,
    /// The writes so far.
    pub(super) plan: KvPlan,
}

impl<'a> KvView<'a> {
    /// A view with nothing planned yet.
    pub(super) fn new(base: &'a KvTable) -> Self {
        KvView {
            base,
            plan: KvPlan::default(),
        }
    }

    /// The current entry at `key`.
    pub(super) fn get(&self, key: &str) -> Option<&StoredKv> {
        current(&self.plan.entries, &self.base.entries, key)
    }

    /// The current entries under `prefix`, in key order.
    fn list(&self, prefix: &str) -> Vec<(String, StoredKv)> {
        let mut all: BTreeMap<&String, Option<&StoredKv>> = under(&self.base.entries, prefix)
            .map(|(k, e)| (k, Some(e)))
            .collect();
        all.extend(under(&self.plan.entries, prefix).map(|(k, e)| (k, e.as_ref())));
        all.into_iter()
            .filter_map(|(k, e)| Some((k.clone(), e?.clone())))
            .collect()
    }

    /// The current lock-delay of `key` (ms since the epoch).
    fn lock_delay(&self, key: &str) -> Option<u64> {
        current(&self.plan.lock_delays, &self.base.lock_delays, key).copied()
    }

    /// The keys `session` currently holds, in key order.
    pub(super) fn held_by(&self, session: &str) -> Vec<String> {
        let (base, planned) = (&self.base.entries, &self.plan.entries);
        current_group(&self.base.held, planned, base, session, |e| {
            e.session == session
        })
    }

    /// Writes `entry` at `key` at Raft `index`, keeping the key's
    /// CreateIndex; a write that changes nothing is not made (the returned
    /// entry then keeps its ModifyIndex). Returns the entry as it now is.
    fn write(&mut self, key: &str, mut entry: StoredKv, index: u64) -> StoredKv {
        let current = self.get(key);
        entry.create_index = current.map_or(index, |c| c.create_index);
        if let Some(c) = current.filter(|c| c.same_content(&entry)) {
            entry.modify_index = c.modify_index;
            return entry;
        }
        entry.modify_index = index;
        self.plan
            .entries
            .insert(key.to_string(), Some(entry.clone()));
        // A tombstone under a live key says nothing its entry does not.
        if self.base.tombstones.contains_key(key) || self.plan.tombstones.contains_key(key) {
            self.plan.tombstones.insert(key.to_string(), None);
        }
        entry
    }

    /// Deletes `key` at Raft `index`, leaving a tombstone; false if absent.
    fn delete(&mut self, key: &str, index: u64) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        self.plan.entries.insert(key.to_string(), None);
        self.plan.tombstones.insert(key.to_string(), Some(index));
        true
    }

    /// Releases `key` from its holder, as an invalidated session with
    /// Behavior `release` does: the session goes, LockIndex stays, the
    /// ModifyIndex moves (Consul's `deleteSessionTxn`).
    pub(super) fn release(&mut self, key: &str, index: u64) {
        if let Some(current) = self.get(key).cloned() {
            let released = StoredKv {
                session: String::new(),
                ..current
            };
            self.write(key, released, index);
        }
    }

    /// Deletes `key`, as an invalidated session with Behavior `delete` does.
    pub(super) fn delete_held(&mut self, key: &str, index: u64) {
        self.delete(key, index);
    }

    /// `key` cannot be acquired before `until` (ms since the epoch).
    pub(super) fn set_lock_delay(&mut self, key: &str, until: u64) {
        self.plan.lock_delays.insert(key.to_string(), Some(until));
    }

    /// Forgets tombstones at or below `up_to` and lock-delays that ran out at
    /// or before `at`; raises the reap floor.
    pub(super) fn reap(&mut self, max_index: u64, at: u64) {
        for (_, key) in up_to(&self.base.tombstones_by_index, max_index) {
            self.plan.tombstones.insert(key.clone(), None);
        }
        for (_, key) in up_to(&self.base.lock_delays_by_time, at) {
            self.plan.lock_delays.insert(key.clone(), None);
        }
        if max_index > self.base.reaped {
            self.plan.reaped = Some(max_index);
        }
    }
}

/// What one KV operation did, short of a hard error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum KvResult {
    /// It applied (or read): the entries a transaction answers with (values
    /// only for reads). `true` for `/v1/kv`.
    Done(Vec<KvPair>),
    /// It did not apply (a CAS mismatch, a lock held elsewhere, a check that
    /// failed): `false` for `/v1/kv`, this reason in a transaction.
    Refused(String),
}

/// The lock-delay of an invalidated session with `lock_delay_ns`, in ms:
/// capped at Consul's `MaxLockDelay`.
pub(super) fn lock_delay_ms(lock_delay_ns: u64) -> u64 {
    (lock_delay_ns / 1_000_000).min(MAX_LOCK_DELAY.as_millis() as u64)
}

/// Checks a key a write names (Consul's `kvsPreApply`): present, except for
/// a tree delete, and not over [`MAX_KEY_LEN`].
pub(super) fn check_key(op: &KvOp) -> Result<(), String> {
    if op.key.is_empty() && op.verb != KvVerb::DeleteTree && op.verb.is_write() {
        return Err("Must provide key".to_string());
    }
    if op.key.len() > MAX_KEY_LEN {
        return Err(format!("Key is longer than {MAX_KEY_LEN} bytes"));
    }
    Ok(())
}

/// Applies (or, for the read verbs, evaluates) one KV operation at Raft
/// `index` and time `at` (ms, the entry's), with Consul's rules. `Err` is a
/// request that cannot be made at all (no key, an unknown session), which
/// rejects a single write with a 400 and fails a transaction.
pub(super) fn apply_op(
    kv: &mut KvView<'_>,
    sessions: &SessionView<'_>,
    index: u64,
    at: u64,
    op: &KvOp,
) -> Result<KvResult, String> {
    check_key(op)?;
    let key = op.key.as_str();
    let current = kv.get(key).cloned();
    let done = |e: &StoredKv| KvResult::Done(vec![e.to_api(key, false)]);
    let new_entry = |session: &str, lock_index: u64| StoredKv {
        lock_index,
        flags: op.flags,
        value: op.value.clone().filter(|v| !v.is_empty()),
        session: session.to_string(),
        create_index: 0,
        modify_index: 0,
    };
    Ok(match op.verb {
        KvVerb::Set => {
            // A plain write keeps the lock holder and the lock count.
            let c = current.as_ref();
            let session = c.map_or("", |c| c.session.as_str());
            let entry = new_entry(session, c.map_or(0, |c| c.lock_index));
            done(&kv.write(key, entry, index))
        }
        KvVerb::Cas => {
            let stale = match (&current, op.index) {
                (Some(_), 0) => true,
                (Some(c), i) => c.modify_index != i,
                (None, i) => i != 0,
            };
            if stale {
                return Ok(KvResult::Refused(format!(
                    "failed to set key {key:?}, index is stale"
                )));
            }
            let c = current.as_ref();
            let session = c.map_or("", |c| c.session.as_str());
            let entry = new_entry(session, c.map_or(0, |c| c.lock_index));
            done(&kv.write(key, entry, index))
        }
        KvVerb::Lock => {
            if op.session.is_empty() {
                return Err("missing session".to_string());
            }
            if !sessions.exists(&op.session) {
                return Err(format!("invalid session {:?}", op.session));
            }
            if kv.lock_delay(key).is_some_and(|until| at < until) {
                return Ok(KvResult::Refused(format!(
                    "failed to lock key {key:?} due to lock delay"
                )));
            }
            let lock_index = match &current {
                Some(c) if c.session == op.session => c.lock_index,
                Some(c) if !c.session.is_empty() => {
                    return Ok(KvResult::Refused(format!(
                        "failed to lock key {key:?}, lock is already held"
                    )));
                }
                Some(c) => c.lock_index + 1,
                None => 1,
            };
            if kv.lock_delay(key).is_some() {
                // Run out (checked above): forget it with this acquire.
                kv.plan.lock_delays.insert(key.to_string(), None);
            }
            done(&kv.write(key, new_entry(&op.session, lock_index), index))
        }
        KvVerb::Unlock => {
            if op.session.is_empty() {
                return Err("missing session".to_string());
            }
            match &current {
                Some(c) if c.session == op.session => {
                    done(&kv.write(key, new_entry("", c.lock_index), index))
                }
                _ => KvResult::Refused(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                )),
            }
        }
        KvVerb::Get => match &current {
            Some(c) => KvResult::Done(vec![c.to_api(key, true)]),
            None => KvResult::Refused(format!("key {key:?} doesn't exist")),
        },
        KvVerb::GetOrEmpty => KvResult::Done(vec![match &current {
            Some(c) => c.to_api(key, true),
            None => KvPair {
                key: key.to_string(),
                flags: op.flags,
                session: op.session.clone(),
                ..Default::default()
            },
        }]),
        KvVerb::GetTree => KvResult::Done(
            kv.list(key)
                .iter()
                .map(|(k, e)| e.to_api(k, true))
                .collect(),
        ),
        KvVerb::CheckIndex => match &current {
            None => KvResult::Refused(format!("failed to check index, key {key:?} doesn't exist")),
            Some(c) if c.modify_index != op.index => KvResult::Refused(format!(
                "failed index check for key {key:?}, current modify index {} != {}",
                c.modify_index, op.index
            )),
            Some(c) => done(c),
        },
        KvVerb::CheckSession => match &current {
            None => KvResult::Refused(format!(
                "failed to check session, key {key:?} doesn't exist"
            )),
            Some(c) if c.session != op.session => KvResult::Refused(format!(
                "failed session check for key {key:?}, current session {:?} != {:?}",
                c.session, op.session
            )),
            Some(c) => done(c),
        },
        KvVerb::CheckNotExists => match current {
            Some(_) => KvResult::Refused(format!("key {key:?} exists")),
            None => KvResult::Done(Vec::new()),
        },
        KvVerb::Delete => {
            kv.delete(key, index);
            KvResult::Done(Vec::new())
        }
        KvVerb::DeleteTree => {
            for (k, _) in kv.list(key) {
                kv.delete(&k, index);
            }
            KvResult::Done(Vec::new())
        }
        KvVerb::DeleteCas => match &current {
            // Consul answers true for a key that is already gone.
            None => KvResult::Done(Vec::new()),
            Some(c) if c.modify_index != op.index => {
                KvResult::Refused(format!("failed to delete key {key:?}, index is stale"))
            }
            Some(_) => {
                kv.delete(key, index);
                KvResult::Done(Vec::new())
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 item 4: tombstones by index and lock-delays by time, derived
    /// beside their maps, answer the reaper from their first entries and
    /// stay in step through upserts, removals, reaps and loads.
    #[test]
    fn tombstones_and_lock_delays_are_ordered_for_the_reaper() {
        let mut t = KvTable::default();
        let plan = KvPlan {
            tombstones: BTreeMap::from([("a".into(), Some(30)), ("b".into(), Some(10))]),
            lock_delays: BTreeMap::from([("x".into(), Some(5_000)), ("y".into(), Some(9_000))]),
            ..Default::default()
        };
        t.commit(plan);
        assert_eq!(t.oldest_tombstone(), Some(10));
        assert!(!t.has_lock_delay_until(4_999));
        assert!(t.has_lock_delay_until(5_000));
        // A key deleted again moves; a reap takes only what is due.
        let plan = KvPlan {
            tombstones: BTreeMap::from([("b".into(), Some(40))]),
            ..Default::default()
        };
        t.commit(plan);
        assert_eq!(t.oldest_tombstone(), Some(30));
        let mut view = KvView::new(&t);
        view.reap(30, 5_000);
        let plan = view.plan;
        t.commit(plan);
        assert_eq!(t.oldest_tombstone(), Some(40));
        assert_eq!(t.reaped(), 30);
        assert!(!t.has_lock_delay_until(8_999));
        assert!(t.has_lock_delay_until(9_000));
        assert_eq!(t.tombstones.len(), t.tombstones_by_index.len());
        assert_eq!(t.lock_delays.len(), t.lock_delays_by_time.len());
        let mut loaded = KvTable::default();
        for (key, value) in t.rows() {
            let key = String::from_utf8(key).unwrap();
            let cut = if key.starts_with(EXTRA_INDEX_PREFIX) {
                2
            } else {
                3
            };
            loaded.load_row(&key[..cut], &key[cut..], &value).unwrap();
        }
        assert_eq!(loaded, t);
    }
}
