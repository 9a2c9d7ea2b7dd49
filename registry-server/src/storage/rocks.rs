//! [`RaftStore`]: the Raft log and Raft metadata in one RocksDB database, a
//! column family for each (`logs`, `meta`; `store` held the applied rows
//! before checkpoints, `checkpoint.rs`), and [`raft::Storage`] over them. All
//! writes come from the Raft thread.

use super::checkpoint::{self, CheckpointEnd};
use super::entry_cache::{within_max_size, CacheOp, EntryCache};
use super::{corrupt, DiskFaults, SnapshotImage, StorageFailure};
use crate::rpc::PeerInfo;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const CF_STORE: &str = "store";

const K_HARD_STATE: &[u8] = b"hard_state";
const K_CONF_STATE: &[u8] = b"conf_state";
/// Index of the entry whose configuration change `conf_state` holds (absent
/// in data dirs from before checkpoints: there nothing applied is replayed).
const K_CONF_INDEX: &[u8] = b"conf_index";
/// The applied index of the rows in `store`, 8 bytes; since checkpoints,
/// [`IN_CHECKPOINT`] instead.
const K_APPLIED: &[u8] = b"applied";
/// What `applied` holds once the rows are in the checkpoint file: not 8 bytes,
/// so a binary from before checkpoints refuses the data dir ("corrupt applied
/// index") rather than start from the stale rows left in `store`.
const IN_CHECKPOINT: &[u8] = b"rows in catalog.ckpt";
const K_SNAP_INDEX: &[u8] = b"snapshot_index";
const K_SNAP_TERM: &[u8] = b"snapshot_term";
const K_NODE_ID: &[u8] = b"node_id";
const K_PEERS: &[u8] = b"peers";

/// The small, hot part of the state, mirrored in memory so that Raft's
/// `term`/`first_index`/`last_index` calls do not read the disk.
#[derive(Clone, Debug, Default)]
struct Mirror {
    hard_state: HardState,
    conf_state: ConfState,
    /// The index `conf_state` is of: a restart replays the entries after the
    /// last checkpoint, and the configuration changes among them up to this
    /// index are already in `conf_state`.
    conf_index: u64,
    /// Index and term of the last entry removed by compaction or a snapshot.
    snapshot_index: u64,
    snapshot_term: u64,
    /// Last index in the log (== snapshot_index when the log is empty).
    last_index: u64,
    /// Term of the entry at `last_index`.
    last_term: u64,
    /// Whether `store` still holds rows and their index from before
    /// checkpoints (or a data dir with none yet), to retire once one is durable.
    legacy_rows: bool,
}

/// What was found on disk at start-up.
pub struct Recovered {
    /// This server's Raft id (created on first start).
    pub node_id: u64,
    /// The applied index of the stored catalog (its checkpoint's, or of the
    /// rows in `store` in a data dir from before checkpoints).
    pub applied: u64,
    /// The stored catalog rows.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Known servers by Raft id.
    pub peers: BTreeMap<u64, PeerInfo>,
}

/// Shared handle to the server's RocksDB; cheap to clone. It implements
/// [`raft::Storage`] for the Raft node; all writes come from the Raft thread.
#[derive(Clone)]
pub struct RaftStore {
    db: Arc<DB>,
    dir: PathBuf,
    faults: DiskFaults,
    mirror: Arc<RwLock<Mirror>>,
    /// The newest log entries, as written (`entry_cache.rs`).
    cache: Arc<Mutex<EntryCache>>,
    /// Provides the state-machine image for [`raft::Storage::snapshot`]; set by
    /// the Raft node, which owns the catalog.
    snapshot_source: Arc<RwLock<Option<SnapshotSource>>>,
}

/// Builds snapshot data of the applied state: returns (applied index, data),
/// or `None` when the state is being changed right now (try again later).
/// The data is shared (`Bytes`), so a source may hand out the same image
/// again while the applied index has not moved.
pub type SnapshotSource = Arc<dyn Fn() -> Option<(u64, bytes::Bytes)> + Send + Sync>;

fn u64_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn read_u64(bytes: &[u8], what: &'static str) -> Result<u64, StorageFailure> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| corrupt(what, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

impl RaftStore {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path, faults: DiskFaults) -> Result<(Self, Recovered), StorageFailure> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // Memory: RocksDB's defaults (a 64 MiB memtable, up to two, and a
        // 32 MiB block cache, per column family) would let three families
        // hold ~500 MiB. Everything we read often is in memory already (the
        // catalog, the log tail in raft-rs), so the store is written far more
        // than read: small memtables, one small cache, and a cap on all
        // memtables together (reaching it flushes the largest). 2 MiB for the
        // log (its entries are read back from the memtable by replication and
        // deleted soon after), 4 MiB for the rows, 8 MiB in all, and a 4 MiB
        // cache (2026-12-01: was 8, 24 and 8 MiB, then 4, 12 and 8; each step
        // took RSS at 100,000 instances down and filling the catalog went no
        // slower: BENCHMARKS.md, issue 20's section).
        opts.set_db_write_buffer_size(8 << 20);
        // A write-ahead log file is kept until every family's memtable holding
        // its writes is flushed. With the rows gone from `store` (checkpoints),
        // `store` and `meta` fill their memtables slowly or never, and kept
        // 48 files (91 MB) in a register bench run where the log and the
        // checkpoint took 100 MB. Past 32 MiB RocksDB flushes the families
        // holding the oldest file.
        opts.set_max_total_wal_size(32 << 20);
        let cache = rocksdb::Cache::new_lru_cache(4 << 20);
        let cf_options = |write_buffer: usize| {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            let mut o = Options::default();
            o.set_write_buffer_size(write_buffer);
            o.set_max_write_buffer_number(2);
            o.set_block_based_table_factory(&table);
            o
        };
        let cfs = [(CF_LOGS, 2 << 20), (CF_META, 1 << 20), (CF_STORE, 4 << 20)]
            .into_iter()
            .map(|(name, write_buffer)| {
                let mut o = cf_options(write_buffer);
                if name == CF_STORE {
                    // The rows fit in one level while the catalog is small, so each
                    // level-0 compaction rewrites all of them: at RocksDB's trigger of
                    // 4 files (16 MiB of 4 MiB memtables), compaction went from 4 % to
                    // 17 % of the servers' CPU over one register measurement as the
                    // catalog grew. 16 files rewrite them a quarter as often. Nothing
                    // reads these rows but the load at start-up (the catalog lives in
                    // memory), so more level-0 files cost no lookups.
                    o.set_level_zero_file_num_compaction_trigger(16);
                    o.set_level_zero_slowdown_writes_trigger(32);
                    o.set_level_zero_stop_writes_trigger(48);
                }
                ColumnFamilyDescriptor::new(name, o)
            });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let store = RaftStore {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            faults,
            mirror: Arc::new(RwLock::new(Mirror::default())),
            cache: Arc::default(),
            snapshot_source: Arc::new(RwLock::new(None)),
        };
        let recovered = store.load()?;
        Ok((store, recovered))
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The three families are created by `open`; their absence is a bug.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} missing"))
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFailure> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    fn load(&self) -> Result<Recovered, StorageFailure> {
        let mut m = Mirror::default();
        if let Some(b) = self.get_meta(K_HARD_STATE)? {
            m.hard_state = HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?;
        }
        if let Some(b) = self.get_meta(K_CONF_STATE)? {
            m.conf_state = ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?;
        }
        if let Some(b) = self.get_meta(K_CONF_INDEX)? {
            m.conf_index = read_u64(&b, "configuration index")?;
        }
        if let Some(b) = self.get_meta(K_SNAP_INDEX)? {
            m.snapshot_index = read_u64(&b, "snapshot index")?;
        }
        if let Some(b) = self.get_meta(K_SNAP_TERM)? {
            m.snapshot_term = read_u64(&b, "snapshot term")?;
        }
        m.last_index = m.snapshot_index;
        m.last_term = m.snapshot_term;
        let mut it = self.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::End);
        if let Some(item) = it.next() {
            let (k, v) = item?;
            let e = Entry::parse_from_bytes(&v).map_err(|e| corrupt("log entry", e))?;
            m.last_index = read_u64(&k, "log key")?;
            m.last_term = e.term;
        }
        drop(it);

        let node_id = match self.get_meta(K_NODE_ID)? {
            Some(b) => read_u64(&b, "node id")?,
            None => {
                // Raft ids must never be reused, so a fresh random one per data dir.
                let id = loop {
                    let id: u64 = rand::random::<u64>() >> 1;
                    if id != 0 {
                        break id;
                    }
                };
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db
                    .put_cf_opt(self.cf(CF_META), K_NODE_ID, u64_key(id), &wo)?;
                id
            }
        };
        let peers = match self.get_meta(K_PEERS)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt("peers", e))?,
            None => BTreeMap::new(),
        };
        // The rows in `store` and their index, in a data dir from before
        // checkpoints (or one that has none yet: no rows, index 0 or 1).
        let legacy_applied = match self.get_meta(K_APPLIED)? {
            Some(b) if b == IN_CHECKPOINT => None,
            Some(b) => Some(read_u64(&b, "applied index")?),
            None => Some(0),
        };
        m.legacy_rows = legacy_applied.is_some();
        let loaded = checkpoint::load(&self.dir)?;
        let (applied, rows) = match (loaded, legacy_applied) {
            // Both: the newer wins (the rows in `store` are newer only after
            // a binary from before checkpoints ran on this data dir).
            (Some(ck), legacy) if legacy.is_none_or(|a| ck.end.index >= a) => {
                self.recover_checkpoint_end(&mut m, &ck.end)?;
                (ck.end.index, ck.rows)
            }
            (_, Some(applied)) => {
                let mut rows = Vec::new();
                for item in self.db.iterator_cf(self.cf(CF_STORE), IteratorMode::Start) {
                    let (k, v) = item?;
                    rows.push((k.to_vec(), v.to_vec()));
                }
                (applied, rows)
            }
            (_, None) => {
                return Err(corrupt(
                    "data dir",
                    format!(
                        "the catalog is kept in {}, which is missing",
                        checkpoint::FILE
                    ),
                ))
            }
        };
        *self.mirror.write().unwrap_or_else(|e| e.into_inner()) = m;
        Ok(Recovered {
            node_id,
            applied,
            rows,
            peers,
        })
    }

    /// Makes the log agree with a checkpoint at `end` found at start-up.
    ///
    /// A checkpoint holds only applied entries, so its index is committed; the
    /// stored commit index, written without an fsync, may be behind it after a
    /// crash, and raft-rs refuses to start with more applied than committed.
    /// A snapshot from the leader is written as a checkpoint before the log
    /// records it: a crash in between leaves a checkpoint past (or off) the
    /// log, and what the log would have recorded is recorded now.
    fn recover_checkpoint_end(
        &self,
        m: &mut Mirror,
        end: &CheckpointEnd,
    ) -> Result<(), StorageFailure> {
        if end.index < m.snapshot_index {
            return Err(corrupt(
                "checkpoint",
                format!(
                    "at index {}, before the log's start ({})",
                    end.index, m.snapshot_index
                ),
            ));
        }
        let mut b = WriteBatch::default();
        let in_log = end.index <= m.last_index && self.term_of(m, end.index)? == end.term;
        if !in_log {
            let logs = self.cf(CF_LOGS);
            b.delete_range_cf(logs, u64_key(0), u64_key(u64::MAX));
            let meta_cf = self.cf(CF_META);
            b.put_cf(meta_cf, K_SNAP_INDEX, u64_key(end.index));
            b.put_cf(meta_cf, K_SNAP_TERM, u64_key(end.term));
            b.put_cf(
                meta_cf,
                K_CONF_STATE,
                end.conf_state.write_to_bytes().unwrap_or_default(),
            );
            b.put_cf(meta_cf, K_CONF_INDEX, u64_key(end.index));
            m.conf_index = end.index;
            m.snapshot_index = end.index;
            m.snapshot_term = end.term;
            m.last_index = end.index;
            m.last_term = end.term;
            m.conf_state = end.conf_state.clone();
            m.hard_state.term = m.hard_state.term.max(end.term);
            if m.legacy_rows {
                // As the install would have: an older binary must not start
                // from the rows in `store` with the log they need gone.
                b.delete_range_cf(self.cf(CF_STORE), &[][..], &[0xffu8; 16][..]);
                b.put_cf(meta_cf, K_APPLIED, IN_CHECKPOINT);
                m.legacy_rows = false;
            }
        }
        if !in_log || m.hard_state.commit < end.index {
            m.hard_state.commit = m.hard_state.commit.max(end.index);
            let hs = m.hard_state.write_to_bytes().unwrap_or_default();
            b.put_cf(self.cf(CF_META), K_HARD_STATE, hs);
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(b, &wo)?;
        }
        Ok(())
    }

    /// Makes every write so far durable (RocksDB's WAL fsynced): before a
    /// checkpoint counts, the configuration, peers and commit index it
    /// assumes must be on disk too, as they are written without an fsync.
    pub fn sync_wal(&self) -> Result<(), StorageFailure> {
        self.faults.before_sync()?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The data dir (where the checkpoints are written too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The disk faults in force (tests).
    pub fn faults(&self) -> &DiskFaults {
        &self.faults
    }

    /// Whether `store` still holds rows from before checkpoints (to retire
    /// once one is durable).
    pub fn legacy_rows(&self) -> bool {
        self.with_mirror(|m| m.legacy_rows)
    }

    /// Sets the function that images the state machine for snapshots.
    pub fn set_snapshot_source(&self, source: SnapshotSource) {
        *self
            .snapshot_source
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    fn mirror(&self) -> Mirror {
        self.with_mirror(Mirror::clone)
    }

    /// Reads the mirror in place: raft-rs asks for indexes and terms many
    /// times per message, and a clone copies the conf state's vectors.
    fn with_mirror<R>(&self, f: impl FnOnce(&Mirror) -> R) -> R {
        f(&self.mirror.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The stored conf state.
    pub fn conf_state(&self) -> ConfState {
        self.with_mirror(|m| m.conf_state.clone())
    }

    /// Whether this server belongs to a formed cluster.
    pub fn initialized(&self) -> bool {
        self.with_mirror(|m| !m.conf_state.voters.is_empty() || !m.conf_state.learners.is_empty())
    }

    /// Index of the last compaction or installed snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.with_mirror(|m| m.snapshot_index)
    }

    /// Starts a batch of writes that [`RaftStore::commit`] makes durable at once.
    pub fn batch(&self) -> StoreBatch {
        StoreBatch {
            batch: WriteBatch::default(),
            mirror: self.mirror(),
            cache_ops: Vec::new(),
            dirty: false,
        }
    }

    /// Writes the batch (fsync when `sync`) and then publishes its in-memory effects.
    pub fn commit(&self, b: StoreBatch, sync: bool) -> Result<(), StorageFailure> {
        if !b.dirty {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        if sync {
            self.faults.before_sync()?;
        }
        self.db.write_opt(b.batch, &wo)?;
        *self.mirror.write().unwrap_or_else(|e| e.into_inner()) = b.mirror;
        if !b.cache_ops.is_empty() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for op in b.cache_ops {
                cache.apply(op);
            }
        }
        Ok(())
    }

    /// Adds `entries` to the batch, first removing any conflicting suffix
    /// (Raft may overwrite an uncommitted tail after a leader change).
    pub fn append(&self, b: &mut StoreBatch, entries: &[Entry]) -> Result<(), StorageFailure> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let m = &mut b.mirror;
        if first.index <= m.snapshot_index {
            return Err(corrupt(
                "append",
                format!(
                    "entries from {} overwrite the compacted log (compacted to {})",
                    first.index, m.snapshot_index
                ),
            ));
        }
        if first.index > m.last_index + 1 {
            return Err(corrupt(
                "append",
                format!(
                    "gap: last index {}, appending {}",
                    m.last_index, first.index
                ),
            ));
        }
        let logs = self.cf(CF_LOGS);
        if first.index <= m.last_index {
            b.batch
                .delete_range_cf(logs, u64_key(first.index), u64_key(m.last_index + 1));
        }
        for e in entries {
            let bytes = e.write_to_bytes().map_err(|e| corrupt("entry encode", e))?;
            b.batch.put_cf(logs, u64_key(e.index), bytes);
        }
        b.cache_ops.push(CacheOp::Append(entries.to_vec()));
        m.last_index = last.index;
        m.last_term = last.term;
        b.dirty = true;
        Ok(())
    }

    /// Records a new hard state.
    pub fn set_hard_state(&self, b: &mut StoreBatch, hs: &HardState) {
        let bytes = hs.write_to_bytes().unwrap_or_default();
        b.batch.put_cf(self.cf(CF_META), K_HARD_STATE, bytes);
        b.mirror.hard_state = hs.clone();
        b.dirty = true;
    }

    /// Records a new commit index in the hard state.
    pub fn set_commit(&self, b: &mut StoreBatch, commit: u64) {
        let mut hs = b.mirror.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(b, &hs);
    }

    /// Records a new conf state, that of the entry at `index` (after a conf
    /// change or at bootstrap).
    pub fn set_conf_state(&self, b: &mut StoreBatch, cs: &ConfState, index: u64) {
        let bytes = cs.write_to_bytes().unwrap_or_default();
        b.batch.put_cf(self.cf(CF_META), K_CONF_STATE, bytes);
        b.batch
            .put_cf(self.cf(CF_META), K_CONF_INDEX, u64_key(index));
        b.mirror.conf_state = cs.clone();
        b.mirror.conf_index = index;
        b.dirty = true;
    }

    /// The index of the entry whose configuration the stored one is.
    pub fn conf_index(&self) -> u64 {
        self.with_mirror(|m| m.conf_index)
    }

    /// Once a checkpoint is durable: drops the rows in `store` and marks the
    /// data dir as one whose rows are in the checkpoint file (no-op after).
    pub fn retire_legacy_rows(&self, b: &mut StoreBatch) {
        if !b.mirror.legacy_rows {
            return;
        }
        let store = self.cf(CF_STORE);
        b.batch.delete_range_cf(store, &[][..], &[0xffu8; 16][..]);
        b.batch.put_cf(self.cf(CF_META), K_APPLIED, IN_CHECKPOINT);
        b.mirror.legacy_rows = false;
        b.dirty = true;
    }

    /// Records the peer address book.
    pub fn set_peers(&self, b: &mut StoreBatch, peers: &BTreeMap<u64, PeerInfo>) {
        let bytes = serde_json::to_vec(peers).unwrap_or_default();
        b.batch.put_cf(self.cf(CF_META), K_PEERS, bytes);
        b.dirty = true;
    }

    /// Replaces everything with a snapshot received from the leader, whose
    /// rows are already in a checkpoint: the log is emptied and the
    /// snapshot's (index, term) and conf state recorded so that
    /// `term(first_index - 1)` still answers.
    pub fn install_snapshot(
        &self,
        b: &mut StoreBatch,
        snap: &Snapshot,
    ) -> Result<(), StorageFailure> {
        let meta = snap.get_metadata();
        let m = &mut b.mirror;
        if meta.index < m.snapshot_index {
            return Err(corrupt(
                "snapshot",
                format!("out of date: {} < {}", meta.index, m.snapshot_index),
            ));
        }
        let logs = self.cf(CF_LOGS);
        b.batch.delete_range_cf(logs, u64_key(0), u64_key(u64::MAX));
        b.cache_ops.push(CacheOp::Clear);
        self.retire_legacy_rows(b);
        let m = &mut b.mirror;
        let meta_cf = self.cf(CF_META);
        b.batch.put_cf(meta_cf, K_SNAP_INDEX, u64_key(meta.index));
        b.batch.put_cf(meta_cf, K_SNAP_TERM, u64_key(meta.term));
        m.snapshot_index = meta.index;
        m.snapshot_term = meta.term;
        m.last_index = meta.index;
        m.last_term = meta.term;
        let mut hs = m.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        b.batch.put_cf(
            meta_cf,
            K_HARD_STATE,
            hs.write_to_bytes().unwrap_or_default(),
        );
        m.hard_state = hs;
        self.set_conf_state(b, meta.get_conf_state(), meta.index);
        Ok(())
    }

    /// Forms a new cluster: records `cs` as the configuration of an initial
    /// snapshot at index 1, term 1. Every bootstrapping server writes the same,
    /// and a server that joins later (with an empty log) is behind that
    /// snapshot, so the leader sends it one, which is how it learns the
    /// configuration (TiKV bootstraps regions the same way).
    pub fn bootstrap(&self, b: &mut StoreBatch, cs: &ConfState) {
        let meta_cf = self.cf(CF_META);
        b.batch.put_cf(meta_cf, K_SNAP_INDEX, u64_key(1));
        b.batch.put_cf(meta_cf, K_SNAP_TERM, u64_key(1));
        if b.mirror.legacy_rows {
            b.batch.put_cf(meta_cf, K_APPLIED, u64_key(1));
        }
        b.mirror.snapshot_index = 1;
        b.mirror.snapshot_term = 1;
        b.mirror.last_index = b.mirror.last_index.max(1);
        b.mirror.last_term = b.mirror.last_term.max(1);
        let mut hs = b.mirror.hard_state.clone();
        hs.term = hs.term.max(1);
        hs.commit = hs.commit.max(1);
        self.set_hard_state(b, &hs);
        self.set_conf_state(b, cs, 1);
    }

    /// Drops log entries up to and including `index` (which must be applied).
    pub fn compact(&self, b: &mut StoreBatch, index: u64) -> Result<(), StorageFailure> {
        let m = b.mirror.clone();
        if index <= m.snapshot_index || index > m.last_index {
            return Ok(());
        }
        let term = self.term_of(&m, index)?;
        let logs = self.cf(CF_LOGS);
        b.batch
            .delete_range_cf(logs, u64_key(0), u64_key(index + 1));
        b.cache_ops.push(CacheOp::CompactTo(index));
        let meta_cf = self.cf(CF_META);
        b.batch.put_cf(meta_cf, K_SNAP_INDEX, u64_key(index));
        b.batch.put_cf(meta_cf, K_SNAP_TERM, u64_key(term));
        b.mirror.snapshot_index = index;
        b.mirror.snapshot_term = term;
        b.dirty = true;
        Ok(())
    }

    /// The entries in `[low, high)` from RocksDB (what the entry cache does
    /// not hold), cut by `max_size` as [`raft::Storage::entries`] is.
    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let iter = self.db.iterator_cf(
            self.cf(CF_LOGS),
            IteratorMode::From(&u64_key(low), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| storage_err(e.into()))?;
            let idx = read_u64(&k, "log key").map_err(storage_err)?;
            if idx >= high {
                break;
            }
            let e =
                Entry::parse_from_bytes(&v).map_err(|e| storage_err(corrupt("log entry", e)))?;
            if e.index != low + out.len() as u64 {
                return Err(storage_err(corrupt("log", format!("hole before {idx}"))));
            }
            if !within_max_size(&e, out.len(), &mut size, max_size) {
                break;
            }
            out.push(e);
        }
        if out.is_empty() && low < high {
            return Err(storage_err(corrupt("log", format!("entry {low} missing"))));
        }
        Ok(out)
    }

    fn read_entry(&self, index: u64) -> Result<Option<Entry>, StorageFailure> {
        match self.db.get_cf(self.cf(CF_LOGS), u64_key(index))? {
            Some(b) => Ok(Some(
                Entry::parse_from_bytes(&b).map_err(|e| corrupt("log entry", e))?,
            )),
            None => Ok(None),
        }
    }

    fn term_of(&self, m: &Mirror, idx: u64) -> Result<u64, StorageFailure> {
        if idx == m.snapshot_index {
            return Ok(m.snapshot_term);
        }
        if idx == m.last_index {
            return Ok(m.last_term);
        }
        match self.read_entry(idx)? {
            Some(e) => Ok(e.term),
            None => Err(corrupt("log", format!("entry {idx} missing"))),
        }
    }

    /// Writes rows and their applied index as a binary from before
    /// checkpoints did (tests of the upgrade).
    #[cfg(test)]
    fn put_legacy_rows(&self, applied: u64, rows: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = WriteBatch::default();
        for (k, v) in rows {
            b.put_cf(self.cf(CF_STORE), k, v);
        }
        b.put_cf(self.cf(CF_META), K_APPLIED, u64_key(applied));
        self.db.write(b).unwrap();
    }

    /// Decodes snapshot data into (peers, rows).
    pub fn decode_snapshot(data: &[u8]) -> Result<SnapshotImage, StorageFailure> {
        SnapshotImage::decode(data).map_err(|e| corrupt("snapshot", e))
    }
}

/// A batch of writes being assembled for one Ready.
pub struct StoreBatch {
    batch: WriteBatch,
    /// The in-memory mirror as it will be once the batch is written.
    mirror: Mirror,
    /// The changes to the log, for the entry cache once the batch is written.
    cache_ops: Vec<CacheOp>,
    dirty: bool,
}

fn storage_err(e: StorageFailure) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let m = self.mirror();
        Ok(RaftState::new(m.hard_state, m.conf_state))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (snapshot_index, last_index) = self.with_mirror(|m| (m.snapshot_index, m.last_index));
        if low <= snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let cached =
            (self.cache.lock().unwrap_or_else(|e| e.into_inner())).get(low, high, max_size);
        match cached {
            Some(entries) => Ok(entries),
            None => self.read_entries(low, high, max_size),
        }
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (snapshot_index, snapshot_term, last_index, last_term) =
            self.with_mirror(|m| (m.snapshot_index, m.snapshot_term, m.last_index, m.last_term));
        if idx == snapshot_index {
            return Ok(snapshot_term);
        }
        if idx < snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == last_index {
            return Ok(last_term);
        }
        if let Some(term) = (self.cache.lock().unwrap_or_else(|e| e.into_inner())).term(idx) {
            return Ok(term);
        }
        match self.read_entry(idx) {
            Ok(Some(e)) => Ok(e.term),
            Ok(None) => Err(storage_err(corrupt("log", format!("entry {idx} missing")))),
            Err(e) => Err(storage_err(e)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.with_mirror(|m| m.snapshot_index + 1))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.with_mirror(|m| m.last_index))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let source = self
            .snapshot_source
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(source) = source else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let Some((applied, data)) = source() else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let m = self.mirror();
        // While a restart replays the entries after its checkpoint, the
        // stored configuration is ahead of the applied state: not a pair to
        // send.
        if applied < request_index || applied < m.conf_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let term = self.term_of(&m, applied).map_err(storage_err)?;
        let mut snap = Snapshot::default();
        snap.data = data;
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(m.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
#[path = "rocks_tests.rs"]
mod tests;
