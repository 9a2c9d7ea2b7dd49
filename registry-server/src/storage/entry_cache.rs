//! The newest Raft log entries, kept in memory beside RocksDB: raft-rs reads
//! back every entry it commits (to apply it) and every entry the leader sends
//! a follower, almost always among the last few hundred written. Reading them
//! from RocksDB (an iterator per read) was 3 % of a server's CPU under
//! registration load; from here it is a clone of each entry (its data is
//! reference-counted).
//!
//! It mirrors what is durable: [`super::RaftStore::commit`] applies a batch's
//! changes here only once RocksDB has written the batch, in the order they
//! were made. It holds one contiguous run of indexes ending at the log's last
//! one, at most [`MAX_ENTRIES`] entries and [`MAX_BYTES`] of data; a read it
//! does not wholly cover goes to RocksDB. Owns nothing on disk.

use raft::eraftpb::Entry;
use std::collections::VecDeque;

/// The most entries kept.
const MAX_ENTRIES: usize = 4096;
/// The most bytes of entry data kept: a server's memory goal is counted in
/// megabytes, and a follower far behind is caught up from RocksDB anyway.
const MAX_BYTES: usize = 2 << 20;

/// A change to the log, applied once its batch is written.
pub(super) enum CacheOp {
    /// Entries appended (replacing any from the first one's index on).
    Append(Vec<Entry>),
    /// Entries up to and including this index compacted away.
    CompactTo(u64),
    /// The whole log replaced (a snapshot installed).
    Clear,
}

/// See the module doc.
#[derive(Default)]
pub(super) struct EntryCache {
    /// Consecutive entries, oldest first, the last one the log's last.
    entries: VecDeque<Entry>,
    /// Data bytes held.
    bytes: usize,
}

/// What an entry counts for against [`MAX_BYTES`].
fn weight(e: &Entry) -> usize {
    e.data.len() + e.context.len()
}

/// [`raft::Storage::entries`]'s cut by `max_size`: adds `e`'s encoded size to
/// `size`, the total of the `taken` entries before it, and says whether `e`
/// is returned too (the first one always is, as raft-rs requires).
pub(super) fn within_max_size(e: &Entry, taken: usize, size: &mut u64, max: Option<u64>) -> bool {
    *size += u64::from(protobuf::Message::compute_size(e));
    taken == 0 || max.is_none_or(|max| *size <= max)
}

impl EntryCache {
    /// Applies `op`, then sheds the oldest entries beyond the bounds.
    pub(super) fn apply(&mut self, op: CacheOp) {
        match op {
            CacheOp::Append(new) => {
                let Some(first) = new.first().map(|e| e.index) else {
                    return;
                };
                // Entries from `first` on are replaced.
                while self.entries.back().is_some_and(|e| e.index >= first) {
                    self.drop_back();
                }
                // Not contiguous with what is held: start afresh.
                if self.entries.back().is_some_and(|e| e.index + 1 != first) {
                    self.clear();
                }
                for e in new {
                    self.bytes += weight(&e);
                    self.entries.push_back(e);
                }
                while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
                    self.drop_front();
                }
            }
            CacheOp::CompactTo(index) => {
                while self.entries.front().is_some_and(|e| e.index <= index) {
                    self.drop_front();
                }
            }
            CacheOp::Clear => self.clear(),
        }
    }

    fn drop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= weight(&e);
        }
    }

    fn drop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= weight(&e);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries in `[low, high)` if all are held, cut as
    /// [`raft::Storage::entries`] cuts by `max_size` (at least one).
    pub(super) fn get(&self, low: u64, high: u64, max_size: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index;
        let last = self.entries.back()?.index;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let from = usize::try_from(low - first).ok()?;
        let count = usize::try_from(high - low).ok()?;
        let mut out = Vec::with_capacity(count.min(1024));
        let mut size = 0u64;
        for e in self.entries.range(from..from + count) {
            if !within_max_size(e, out.len(), &mut size, max_size) {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    /// The term of the entry at `index`, if held.
    pub(super) fn term(&self, index: u64) -> Option<u64> {
        let first = self.entries.front()?.index;
        let e = self
            .entries
            .get(usize::try_from(index.checked_sub(first)?).ok()?)?;
        Some(e.term)
    }
}
