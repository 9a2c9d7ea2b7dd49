//! The row-key layout of every table (the rows of checkpoints, snapshots and
//! snapshot archives; RocksDB's `store` column family before checkpoints), the
//! small key types the tables share, and the row encoding every table does the
//! same way (JSON and decimal values, index rows, planned writes as row
//! writes). Owns how a key is spelled; must not know what a row means (that is
//! `catalog.rs`, `kv.rs`, `session.rs`) or how rows are written (`storage/`).
//!
//! | prefix | row | value |
//! |---|---|---|
//! | `n/<node>` | a node | Node (JSON, less its defaults: `row_forms.rs`) |
//! | `s/<node>\0<service id>` | a service instance | AgentService (JSON, less its defaults) |
//! | `c/<node>\0<check id>` | a check | HealthCheck (JSON, less its defaults and its service name and tags) |
//! | `i/<index name>` | a catalog blocking-query index | decimal |
//! | `kv/<key>` | a KV entry | `StoredKv` (JSON, value in base64) |
//! | `kt/<key>` | a KV tombstone: the key was deleted at that index | decimal |
//! | `kd/<key>` | a lock-delay: the key cannot be acquired before then | decimal, ms since the epoch |
//! | `se/<session id>` | a session | `StoredSession` (JSON) |
//! | `x/<name>` | the other tables' indexes: `x/sessions`, `x/kv-reaped` | decimal |
//!
//! No prefix is the start of another (`s/` and `se/` differ in their second
//! byte), so [`super::StateStore::from_rows`] dispatches on the prefix alone.
//! KV keys are the rest of the row key, as sent (any UTF-8, `/` included).

use compact_str::CompactString as Str;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Index name of the nodes table.
pub(super) const NODES: &str = "nodes";
/// Index name of the services table.
pub(super) const SERVICES: &str = "services";
/// Index name of the checks table.
pub(super) const CHECKS: &str = "checks";
/// Prefix of the catalog's index rows (`i/<index name>`).
pub(super) const INDEX_PREFIX: &str = "i/";
/// Prefix of a per-service-name index name; no table name starts with it.
pub(super) const SERVICE_INDEX_PREFIX: &str = "service/";

/// One row write produced by apply: recorded in a checkpoint being written
/// (`raft/checkpoints.rs`), and read by the Raft thread to wake watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    /// Row key (see [`super::CatalogState::rows`] for the layout).
    pub key: Vec<u8>,
    /// New value; `None` deletes the row.
    pub value: Option<Vec<u8>>,
}

/// Which rows an apply returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsWanted {
    /// Every row it changes: what a checkpoint being written records.
    All,
    /// Every row but the catalog's node, instance and check rows (`n/`,
    /// `s/`, `c/`): what the Raft thread reads while no checkpoint is being
    /// written (the index and KV rows wake watchers). Encoding the catalog's
    /// rows was a tenth of its work per registration. Their encoding must
    /// never fail (`row_forms.rs`): a server that skips it would otherwise
    /// apply an entry that one writing a checkpoint rejects.
    NoCatalogEntities,
}

impl RowChange {
    /// The service name whose blocking-query index this row moves (its
    /// `i/service/<name>` row). Every write a reader of one service can see
    /// moves that index (`catalog.rs` bumps it with the write), so the Raft
    /// thread wakes that service's watchers, and no others, for such a row.
    pub fn moved_service_index(&self) -> Option<&str> {
        let name = self.key.strip_prefix(INDEX_PREFIX.as_bytes())?;
        let name = name.strip_prefix(SERVICE_INDEX_PREFIX.as_bytes())?;
        std::str::from_utf8(name).ok()
    }

    /// The KV key this row writes or deletes (its entry or its tombstone): a
    /// change the blocking reads of that key and of every prefix of it see.
    pub fn moved_kv_key(&self) -> Option<&str> {
        let key = (self.key.strip_prefix(KV_PREFIX.as_bytes()))
            .or_else(|| self.key.strip_prefix(TOMBSTONE_PREFIX.as_bytes()))?;
        std::str::from_utf8(key).ok()
    }

    /// Whether this row moves the index of every KV read: the floor up to
    /// which tombstones were reaped ([`KV_REAPED_INDEX`]).
    pub fn moves_every_kv_index(&self) -> bool {
        self.key
            .strip_prefix(EXTRA_INDEX_PREFIX.as_bytes())
            .is_some_and(|name| name == KV_REAPED_INDEX.as_bytes())
    }
}

/// `(node, id)`: the key of a service instance or a check, unique per node.
///
/// Names and ids are [`Str`]s: they hold up to 24 bytes inline, which covers
/// nearly every name and id, so a catalog of 100,000 instances is not also
/// 200,000 small heap blocks. (The stored rows' other strings are packed,
/// `stored.rs`.)
pub(super) type NodeKey = (Str, Str);

/// `(node, id)` as a key.
pub(super) fn key_of(node: &str, id: &str) -> NodeKey {
    (Str::from(node), Str::from(id))
}

/// Entries of a (node, id)-keyed map belonging to `node`.
pub(super) fn node_range<'a, V>(
    map: &'a BTreeMap<NodeKey, V>,
    node: &'a str,
) -> impl Iterator<Item = (&'a NodeKey, &'a V)> + 'a {
    let from = (Str::from(node), Str::default());
    map.range(from..).take_while(move |((n, _), _)| n == node)
}

/// JSON row value.
pub(super) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// Decode a JSON row value.
pub(super) fn from_json<T: DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

/// Split `<node>\0<id>`.
pub(super) fn split_pair(rest: &str) -> Option<(&str, &str)> {
    rest.split_once('\0')
}

/// Key of node `name`.
pub(super) fn node_key(name: &str) -> Vec<u8> {
    [b"n/", name.as_bytes()].concat()
}

/// Key of an instance (`s/`) or check (`c/`) `id` on `node`.
pub(super) fn pair_key(prefix: &[u8], node: &str, id: &str) -> Vec<u8> {
    [prefix, node.as_bytes(), b"\0", id.as_bytes()].concat()
}

/// Key of index `name`.
pub(super) fn index_key(name: &str) -> Vec<u8> {
    [INDEX_PREFIX.as_bytes(), name.as_bytes()].concat()
}

/// Prefix of KV entry rows.
pub(super) const KV_PREFIX: &str = "kv/";
/// Prefix of KV tombstone rows.
pub(super) const TOMBSTONE_PREFIX: &str = "kt/";
/// Prefix of lock-delay rows.
pub(super) const LOCK_DELAY_PREFIX: &str = "kd/";
/// Prefix of session rows.
pub(super) const SESSION_PREFIX: &str = "se/";
/// Prefix of the KV and session tables' index rows.
pub(super) const EXTRA_INDEX_PREFIX: &str = "x/";
/// `x/` name of the sessions table's index.
pub(super) const SESSIONS_INDEX: &str = "sessions";
/// `x/` name of the index up to which KV tombstones were reaped.
pub(super) const KV_REAPED_INDEX: &str = "kv-reaped";

/// Row key `<prefix><name>`.
pub(super) fn prefixed(prefix: &str, name: &str) -> Vec<u8> {
    [prefix.as_bytes(), name.as_bytes()].concat()
}

/// A decimal row value.
pub(super) fn decimal(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Decode a decimal row value.
pub(super) fn from_decimal(value: &[u8]) -> Result<u64, String> {
    let n = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
    n.ok_or_else(|| "not a number".to_string())
}

/// The part of an image (`image.rs`) holding `map`'s values as JSON after the
/// key `after`, keyed `<prefix><map key>`. Encoding a stored value (strings,
/// numbers, lists of them) cannot fail; were it to, apply would have rejected
/// the write holding it, so it is left out.
pub(super) fn json_part<'a, V: Serialize>(
    prefix: &'a str,
    map: &'a BTreeMap<String, V>,
    after: Option<(&'a str, &'a str)>,
) -> super::image::Part<'a> {
    super::image::map_part(map, after, move |k, v| {
        Some((prefixed(prefix, k), to_json(v).ok()?))
    })
}

/// The `x/<name>` row of a table's index in a full image; none while the index
/// is 0 (never set).
pub(super) fn extra_index_row(name: &str, index: u64) -> Option<(Vec<u8>, Vec<u8>)> {
    (index > 0).then(|| (prefixed(EXTRA_INDEX_PREFIX, name), decimal(index)))
}

/// The row write that sets the `x/<name>` index of a table.
pub(super) fn extra_index_change(name: &str, index: u64) -> RowChange {
    RowChange {
        key: prefixed(EXTRA_INDEX_PREFIX, name),
        value: Some(decimal(index)),
    }
}

/// Appends one row write per planned write of `writes` (`Some`: the value as JSON;
/// `None`: a delete), at the key `key` spells. A value that cannot be encoded
/// rejects the whole entry; `table` names the table in that error.
pub(super) fn put_rows<K, V: Serialize>(
    rows: &mut Vec<RowChange>,
    table: &str,
    writes: &BTreeMap<K, Option<V>>,
    key: impl Fn(&K) -> Vec<u8>,
) -> Result<(), String> {
    put_rows_as(rows, table, writes, key, to_json)
}

/// [`put_rows`] with the values encoded by `encode` (the catalog's row forms,
/// `row_forms.rs`).
pub(super) fn put_rows_as<K, V>(
    rows: &mut Vec<RowChange>,
    table: &str,
    writes: &BTreeMap<K, Option<V>>,
    key: impl Fn(&K) -> Vec<u8>,
    encode: impl Fn(&V) -> Result<Vec<u8>, serde_json::Error>,
) -> Result<(), String> {
    for (k, v) in writes {
        let value = v.as_ref().map(&encode).transpose();
        let value = value.map_err(|e| format!("cannot encode {table} row: {e}"))?;
        rows.push(RowChange { key: key(k), value });
    }
    Ok(())
}

/// Keys grouped by their owner (the keys a session holds, the sessions of a
/// node): derived from the rows, never persisted, so that a lookup by owner
/// does not scan a table.
pub(super) type Groups = BTreeMap<String, BTreeSet<String>>;

/// Adds `key` to `owner`'s group.
pub(super) fn group_insert(groups: &mut Groups, owner: &str, key: &str) {
    groups
        .entry(owner.to_string())
        .or_default()
        .insert(key.to_string());
}

/// Takes `key` out of `owner`'s group, and the group out once it is empty.
pub(super) fn group_remove(groups: &mut Groups, owner: &str, key: &str) {
    if let Some(keys) = groups.get_mut(owner) {
        keys.remove(key);
        if keys.is_empty() {
            groups.remove(owner);
        }
    }
}
