//! Storage of one server: the Raft log and its metadata in RocksDB, a column
//! family for each, and checkpoints of the applied catalog in a file beside them.
//!
//! - `logs`:  Raft entries, key = index as 8 big-endian bytes (so they sort).
//! - `meta`:  hard state, conf state (and the index of the change it is),
//!   the (index, term) of the last compaction/snapshot, this server's Raft id
//!   and the peer address book; `applied`, the index of the rows in `store` in
//!   a data dir from before checkpoints, then a marker that they were retired.
//! - `store`: the state machine's rows (`state/rows.rs`) in a data dir from
//!   before checkpoints, loaded until its first checkpoint retires them.
//! - `catalog.ckpt`: the whole applied state at one index (`checkpoint.rs`).
//!
//! The Raft thread writes one RocksDB batch per Ready with one fsync, which is
//! what batches many proposals into one disk sync. Applied entries write
//! nothing: their effects are rebuilt from the last checkpoint and the log
//! after it, which is kept until a newer checkpoint is durable.
//!
//! `rocks.rs` holds [`RaftStore`] (RocksDB), `entry_cache.rs` the newest log
//! entries in memory (what raft-rs reads back), `checkpoint.rs` the checkpoint
//! file and its writer thread, `snapshot.rs` the snapshot image format and
//! `space.rs` the free-space reserve that refuses writes before the disk
//! fills. Owns durability and the on-disk format; must not interpret catalog
//! rows (`state/`) or decide anything Raft decides (`raft/`).

pub mod checkpoint;
mod entry_cache;
mod rocks;
mod snapshot;
pub mod space;

pub use rocks::{RaftStore, Recovered, SnapshotSource, StoreBatch};
pub use snapshot::SnapshotImage;

use std::sync::Arc;

/// A storage failure. Any of these means the node cannot go on safely.
#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    /// RocksDB refused an operation.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored bytes did not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// A synced write failed on purpose ([`DiskFaults::set_fail_synced_writes`]).
    #[error("synced write failed (injected fault)")]
    Injected,
}

pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> StorageFailure {
    StorageFailure::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// Disk fault injection for tests: a delay added before every synced write,
/// as a slow or overloaded disk adds to each fsync, or the failure of every
/// synced write, as a dying disk's. Cloned handles share the settings, so a
/// test keeps one and changes it while the server runs.
#[derive(Clone, Default, Debug)]
pub struct DiskFaults {
    write_delay_us: Arc<std::sync::atomic::AtomicU64>,
    fail_synced: Arc<std::sync::atomic::AtomicBool>,
}

impl DiskFaults {
    /// Sets the delay (zero: a healthy disk).
    pub fn set_write_delay(&self, delay: std::time::Duration) {
        self.write_delay_us.store(
            delay.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Makes every synced write fail (before it reaches RocksDB) while set.
    pub fn set_fail_synced_writes(&self, fail: bool) {
        self.fail_synced
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    /// Called before each synced write: waits out the delay, then fails if told to.
    pub(crate) fn before_sync(&self) -> Result<(), StorageFailure> {
        let us = self
            .write_delay_us
            .load(std::sync::atomic::Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
        if self.fail_synced.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageFailure::Injected);
        }
        Ok(())
    }
}
