//! Restoring a snapshot archive (`PUT /v1/snapshot`): the `Restore` command's request and its
//! apply, which replaces every table with the archive's rows in one Raft entry, so every
//! server ends with the same state (Consul restores through Raft too). Pure like the rest of
//! `state/`: the archive travels inside the entry and is read here with no I/O. Owns what a
//! restore does to indexes and timers; must not know the archive's container format
//! (`registry_api::snapshot`) or how a restore is requested (`http/snapshot.rs`).
//!
//! **Indexes move forward, never back.** The restored rows were written at indexes of their
//! own, which may be below what watchers have already seen (a restore of an older archive) or
//! above this cluster's log (an archive of another cluster). Consul moves its Raft index past
//! the archive's; a Raft entry here cannot choose its index, so the rows move instead: a
//! restore is a write of every row at the restore entry's index R. Every row's `ModifyIndex`
//! becomes R (its `CreateIndex` at most R), every table's blocking-query index becomes R, and
//! the KV tombstones are folded into the KV reap floor (R), so every blocking query wakes and
//! every later write is above everything a reader saw. A CAS with an index read before the
//! restore fails, as it should: the value it checked is gone.
//!
//! **Sessions** are renewed at the restore's time: their TTL timers start afresh rather than
//! expiring at once for the time the archive sat on disk.
//!
//! A new table must add its restamp to [`restamped`] (its rows' indexes to R).

use super::RowChange;
use super::StateStore;
use registry_api::snapshot::Rows;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// `PUT /v1/snapshot`: the archive, verified by the receiving server before it is proposed
/// and read again by every server as it applies the entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RestoreRequest {
    /// The whole archive as uploaded (gzip; base64 in the log entry's JSON).
    #[serde(with = "registry_api::kv::base64_value", default)]
    pub archive: Option<Vec<u8>>,
}

impl RestoreRequest {
    /// The state the archive holds for `datacenter`, as it will be after a restore at `index`
    /// and time `at`: everything a restore checks, without changing anything. `Err` says why
    /// the archive cannot be restored (shown to the operator as a 400).
    pub fn restored_state(
        &self,
        datacenter: &str,
        index: u64,
        at: u64,
    ) -> Result<(StateStore, Rows), String> {
        let bytes = self.archive.as_deref().unwrap_or_default();
        let archive = registry_api::snapshot::read_archive(bytes).map_err(|e| e.to_string())?;
        let state = StateStore::from_rows(datacenter, archive.rows)
            .map_err(|e| format!("the archive's rows do not make a state: {e}"))?;
        restamped(state, datacenter, index, at)
    }
}

/// `state` with every index raised as the module comment says, rebuilt from its rows so that
/// every derived index (sessions by deadline, tombstones by index) follows; and those rows.
fn restamped(
    mut state: StateStore,
    datacenter: &str,
    index: u64,
    at: u64,
) -> Result<(StateStore, Rows), String> {
    state.catalog.restamp(index);
    state.kv.restamp(index);
    state.sessions.restamp(index, at);
    state.events.restamp(index);
    state.acl.restamp(index);
    let rows = state.rows();
    let state = StateStore::from_rows(datacenter, rows.clone())?;
    Ok((state, rows))
}

/// Rows per table of a full image, for an archive's header (`registry snapshot inspect`),
/// by the prefixes of `rows.rs`; a prefix this build does not name counts under itself.
pub fn table_counts(rows: &Rows) -> BTreeMap<String, u64> {
    use super::rows::{
        EXTRA_INDEX_PREFIX, INDEX_PREFIX, KV_PREFIX, LOCK_DELAY_PREFIX, SESSION_PREFIX,
        TOMBSTONE_PREFIX,
    };
    let mut counts = BTreeMap::new();
    for (key, _) in rows {
        let prefix = key
            .iter()
            .position(|b| *b == b'/')
            .map_or(&key[..], |at| &key[..=at]);
        let prefix = String::from_utf8_lossy(prefix);
        let name = match prefix.as_ref() {
            "n/" => "nodes",
            "s/" => "services",
            "c/" => "checks",
            p if p == INDEX_PREFIX => "indexes",
            p if p == EXTRA_INDEX_PREFIX => "indexes",
            p if p == KV_PREFIX => "kv",
            p if p == TOMBSTONE_PREFIX => "kv-tombstones",
            p if p == LOCK_DELAY_PREFIX => "kv-lock-delays",
            p if p == SESSION_PREFIX => "sessions",
            p if p == super::events::EVENT_PREFIX => "events",
            p if p == super::acl::ACL_PREFIX => "acl",
            other => other.trim_end_matches('/'),
        };
        *counts.entry(name.to_string()).or_insert(0) += 1;
    }
    counts
}

impl StateStore {
    /// Applies a restore at `index` and time `at`: the archive's state replaces every table,
    /// and the rows to persist delete every current row the archive does not have.
    pub(super) fn apply_restore(
        &mut self,
        index: u64,
        at: u64,
        req: &RestoreRequest,
    ) -> Result<Vec<RowChange>, String> {
        let datacenter = self.catalog.datacenter().to_string();
        let (state, rows) = req.restored_state(&datacenter, index, at)?;
        let kept: BTreeSet<&[u8]> = rows.iter().map(|(k, _)| k.as_slice()).collect();
        let mut changes: Vec<RowChange> = self
            .rows()
            .into_iter()
            .filter(|(k, _)| !kept.contains(k.as_slice()))
            .map(|(key, _)| RowChange { key, value: None })
            .collect();
        changes.extend(rows.into_iter().map(|(key, value)| RowChange {
            key,
            value: Some(value),
        }));
        *self = state;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use registry_api::snapshot::{write_archive, SnapshotHeader};

    fn register(node: &str, svc: &str) -> Command {
        Command::Register(registry_api::RegisterRequest {
            node: node.into(),
            address: "10.0.0.1".into(),
            service: Some(registry_api::AgentService {
                id: svc.into(),
                service: svc.into(),
                port: 80,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn kv_set(key: &str, value: &str) -> Command {
        Command::Kv(crate::state::kv::KvOp {
            verb: crate::state::kv::KvVerb::Set,
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            index: 0,
            session: String::new(),
        })
    }

    fn archive_of(state: &StateStore) -> Vec<u8> {
        write_archive(&SnapshotHeader::default(), &state.rows()).unwrap()
    }

    fn restore(archive: Vec<u8>) -> Command {
        Command::Restore(RestoreRequest {
            archive: Some(archive),
        })
    }

    /// Applies `cmd` to `s` and its rows to `disk`, as the Raft thread and storage do.
    fn apply(
        s: &mut StateStore,
        disk: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
        index: u64,
        cmd: &Command,
    ) -> Result<super::super::Outcome, String> {
        let (result, rows) = s.apply(index, index * 100, cmd);
        for r in rows {
            match r.value {
                Some(v) => disk.insert(r.key, v),
                None => disk.remove(&r.key),
            };
        }
        result
    }

    #[test]
    fn a_restore_replaces_every_table_and_moves_every_index_forward() {
        let (mut s, mut disk) = (StateStore::new("dc1"), Default::default());
        apply(&mut s, &mut disk, 10, &register("n1", "web")).unwrap();
        apply(&mut s, &mut disk, 11, &kv_set("a", "1")).unwrap();
        let archive = archive_of(&s);
        // Changes after the save: a new service, a new key, a changed key.
        apply(&mut s, &mut disk, 20, &register("n2", "db")).unwrap();
        apply(&mut s, &mut disk, 21, &kv_set("b", "2")).unwrap();
        apply(&mut s, &mut disk, 22, &kv_set("a", "changed")).unwrap();
        let restored = apply(&mut s, &mut disk, 30, &restore(archive));
        assert_eq!(restored, Ok(super::super::Outcome::Done));
        // The archive's content, at the restore's index.
        assert_eq!(s.kv.get("a").0.unwrap().value, Some(b"1".to_vec()));
        assert!(s.kv.get("b").0.is_none());
        let nodes: Vec<String> = s.catalog.nodes().0.into_iter().map(|n| n.node).collect();
        assert_eq!(nodes, ["n1"]);
        assert_eq!(s.kv.get("a").1, 30);
        assert_eq!(s.kv.get("b").1, 30, "a read of a key the restore removed");
        assert_eq!(s.kv.prefix_index(""), 30);
        assert_eq!(s.catalog.service_index("web"), 30);
        assert_eq!(s.catalog.service_index("db"), 30);
        assert_eq!(s.catalog.nodes().1, 30);
        let a = s.kv.get("a").0.unwrap();
        assert_eq!((a.create_index, a.modify_index), (11, 30));
        // The rows persisted rebuild exactly this state (what the archive lacks was deleted).
        let rebuilt = StateStore::from_rows("dc1", disk).unwrap();
        assert_eq!(rebuilt, s);
    }

    /// A state with `n` nodes, each with a service, and `n` keys, the keys' values `v`.
    fn populated(n: usize, v: &str) -> StateStore {
        let mut s = StateStore::new("dc1");
        for i in 0..n {
            let index = 2 * i as u64 + 1;
            s.apply(
                index,
                1_000,
                &register(&format!("n{i}"), &format!("s{}", i % 7)),
            )
            .0
            .unwrap();
            s.apply(index + 1, 1_000, &kv_set(&format!("k{i}"), v))
                .0
                .unwrap();
        }
        s
    }

    #[test]
    fn a_checkpoint_taken_across_a_restore_holds_the_restored_state() {
        // An archive with fewer rows than the state, and one with more: the
        // image's rows from before the restore must be deleted or replaced.
        for archived in [populated(20, "old"), populated(300, "new")] {
            let mut s = populated(100, "now");
            let archive = archive_of(&archived);
            // The checkpoint file's records, last one wins (`None`: deleted).
            let mut file = std::collections::BTreeMap::new();
            let mut cursor = crate::state::ImageCursor::default();
            let mut steps = 0;
            while !s.image_step(&mut cursor, 7, &mut |k, v| {
                file.insert(k, Some(v));
            }) {
                steps += 1;
                if steps == 10 {
                    // Mid-image, as the Raft thread records an applied entry's rows.
                    let (result, rows) = s.apply(10_000, 9_000, &restore(archive.clone()));
                    result.unwrap();
                    for r in rows {
                        file.insert(r.key, r.value);
                    }
                }
            }
            assert!(steps > 10, "the restore came before the image's end");
            let image: Vec<_> = (file.into_iter())
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            assert_eq!(image, s.rows());
            let rebuilt = StateStore::from_rows("dc1", image).unwrap();
            assert_eq!(rebuilt, s);
            assert_eq!(s.kv.len(), archived.kv.len(), "the archive's keys, no more");
        }
    }

    #[test]
    fn an_archive_from_further_ahead_is_brought_down_to_the_restore_index() {
        let mut ahead = StateStore::new("dc1");
        ahead.apply(5_000, 1_000, &kv_set("a", "1")).0.unwrap();
        let mut s = StateStore::new("dc1");
        s.apply(3, 1_000, &kv_set("z", "0")).0.unwrap();
        s.apply(7, 9_000, &restore(archive_of(&ahead))).0.unwrap();
        let a = s.kv.get("a").0.unwrap();
        assert_eq!((a.create_index, a.modify_index), (7, 7));
        assert_eq!(s.kv.prefix_index(""), 7);
    }

    #[test]
    fn a_bad_archive_changes_nothing() {
        let mut s = StateStore::new("dc1");
        s.apply(10, 1_000, &kv_set("a", "1")).0.unwrap();
        let before = s.clone();
        let mut bad = archive_of(&before);
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        for archive in [bad, Vec::new(), b"not gzip".to_vec()] {
            let (result, rows) = s.apply(11, 2_000, &restore(archive));
            assert!(result.is_err());
            assert!(rows.is_empty());
            assert_eq!(s, before);
        }
    }
}
