//! When the Raft thread takes a checkpoint of the applied state
//! (`storage/checkpoint.rs` has the file): once as many entries applied since
//! the last as the state has rows (at least [`super::RaftTuning::compact_threshold`],
//! at most [`MAX_SPACING`]), so writing them costs about one row per entry up
//! to a million rows, and a restart replays at most that many. The image is taken a slice
//! at a time between Readies, interleaved with the rows of the entries applied
//! meanwhile, so no apply waits for the whole catalog; the log is compacted
//! only up to the newest durable checkpoint (`node.rs`, `maybe_compact`).
//! Must not touch the log or decide anything else Raft decides.

use super::node::RaftNode;
use crate::state::{ImageCursor, RowChange, RowsWanted};
use crate::storage::checkpoint::{self, CheckpointEnd, CheckpointWriter, Finished, Records};
use crate::storage::{RaftStore, StorageFailure};
use std::sync::mpsc::TryRecvError;
use std::time::Instant;
use tracing::{debug, info, warn};

/// Rows of the image written per step: about a millisecond of encoding.
const STEP_ROWS: usize = 1024;
/// The most entries between two checkpoints, however large the state: a
/// restart replays up to this many, and the log keeps up to about twice as
/// many (a few hundred MB of registrations). Past a million rows a checkpoint
/// then costs more than a row per entry.
const MAX_SPACING: u64 = 1 << 20;
/// Records handed to the writer once this many bytes are assembled.
const HAND_OVER: usize = 256 << 10;

/// The Raft thread's side of the checkpoints.
pub(super) struct Checkpoints {
    writer: CheckpointWriter,
    /// The image being written, and its rows so far.
    run: Option<(ImageCursor, usize)>,
    /// Records not yet handed to the writer.
    records: Records,
    /// A finished checkpoint not yet durable: its index, rows and answer.
    finishing: Option<(u64, usize, Finished)>,
    /// Index of the newest durable checkpoint (or of the rows in RocksDB in a
    /// data dir from before checkpoints): the log is kept after it.
    durable: u64,
    /// Rows in it.
    durable_rows: usize,
    /// Its size in bytes (0 until one was written since start).
    durable_bytes: u64,
    /// Applied index when the last checkpoint (durable or not) began.
    began_at: u64,
    /// And when.
    began: Instant,
    /// Checkpoints made durable since start.
    written: u64,
    /// Checkpoints that failed since start (abandoned for a failed WAL sync,
    /// or the writer's I/O failed): while the last one failed, the log grows.
    failed: u64,
}

impl Checkpoints {
    /// For a store whose recovered state is at `applied`, with `rows` rows.
    pub(super) fn new(
        store: &RaftStore,
        applied: u64,
        rows: usize,
    ) -> Result<Self, StorageFailure> {
        let writer = CheckpointWriter::start(store.dir(), store.faults().clone())
            .map_err(|e| crate::storage::corrupt("checkpoint writer", e))?;
        Ok(Checkpoints {
            writer,
            run: None,
            records: Records::default(),
            finishing: None,
            durable: applied,
            durable_rows: rows,
            durable_bytes: 0,
            began_at: applied,
            began: Instant::now(),
            written: 0,
            failed: 0,
        })
    }

    /// Index of the newest durable checkpoint.
    pub(super) fn durable(&self) -> u64 {
        self.durable
    }

    /// Checkpoints that failed since start.
    pub(super) fn failed(&self) -> u64 {
        self.failed
    }

    /// Records the rows an applied entry changed, when an image is being
    /// written (its rows written before them may hold older values).
    pub(super) fn record(&mut self, rows: &[RowChange]) {
        if self.run.is_none() {
            return;
        }
        for r in rows {
            match &r.value {
                Some(v) => self.records.put(&r.key, v),
                None => self.records.delete(&r.key),
            }
        }
    }

    /// The rows the next applied entries must return: all of them while an
    /// image is being written ([`Self::record`]), else all but the catalog's
    /// node, instance and check rows (the Raft thread reads the rest to wake
    /// watchers).
    pub(super) fn rows_wanted(&self) -> RowsWanted {
        if self.run.is_some() {
            RowsWanted::All
        } else {
            RowsWanted::NoCatalogEntities
        }
    }

    /// Drops the image under way (the next begin starts the file afresh).
    fn abandon(&mut self) {
        self.run = None;
        self.records = Records::default();
    }

    /// After a snapshot from the leader replaced the state: writes it whole
    /// as a checkpoint and waits until it is durable (the log will start after
    /// it). Any checkpoint under way is abandoned.
    pub(super) fn write_whole(
        &mut self,
        rows: &[(Vec<u8>, Vec<u8>)],
        end: CheckpointEnd,
    ) -> Result<(), StorageFailure> {
        self.abandon();
        self.finishing = None;
        let index = end.index;
        let size = checkpoint::write_whole(&self.writer, rows, end)
            .map_err(|e| crate::storage::corrupt("checkpoint", e))?;
        self.durable = index;
        self.durable_rows = rows.len();
        self.durable_bytes = size;
        self.began_at = index;
        self.written += 1;
        Ok(())
    }
}

impl RaftNode {
    /// Moves the checkpoints on: notes a finished one that became durable,
    /// writes the next slice of the image being written (completing it when
    /// it was the last), or begins one when enough entries have applied.
    pub(super) fn checkpoint_step(&mut self) -> Result<(), StorageFailure> {
        self.poll_finished_checkpoint()?;
        if self.checkpoints.run.is_none() {
            // Called after every batch of events: raft-rs's applied index (the
            // state's, once the Readies are handled) spares the state's lock.
            let index = self.raw.raft.raft_log.applied;
            if self.checkpoint_due(index) {
                debug!(node = %self.me.node, index, "checkpoint begun");
                let c = &mut self.checkpoints;
                c.writer.begin();
                c.run = Some((ImageCursor::default(), 0));
                c.began_at = index;
                c.began = Instant::now();
            }
            return Ok(());
        }
        let shared = self.shared.clone();
        let applied = shared.applied.read().unwrap_or_else(|e| e.into_inner());
        let c = &mut self.checkpoints;
        let Some((cursor, rows)) = &mut c.run else {
            return Ok(());
        };
        let records = &mut c.records;
        let done = applied.state.image_step(cursor, STEP_ROWS, &mut |k, v| {
            records.put(&k, &v);
            *rows += 1;
        });
        if !done {
            if c.records.len() >= HAND_OVER {
                c.writer.write(&mut c.records);
            }
            return Ok(());
        }
        let index = applied.index;
        drop(applied);
        // (raft-rs answers 0 for an index outside its log.)
        let term = self.raw.raft.raft_log.term(index).ok().filter(|t| *t != 0);
        // The configuration, peers and commit index this checkpoint goes
        // with are written without an fsync: they must be durable before it
        // is, or a power cut could leave it with an older configuration.
        let synced = self.store.sync_wal();
        let c = &mut self.checkpoints;
        let (Some(term), Ok(())) = (term, &synced) else {
            // No term cannot happen (the log is kept after the last
            // checkpoint); were it to, a checkpoint without it must not be
            // written. A failed sync: the next synced write will fail too.
            warn!(node = %self.me.node, index, error = ?synced.err(), "checkpoint abandoned");
            c.abandon();
            c.failed += 1;
            self.shared.metrics.checkpoint_failures.inc();
            return Ok(());
        };
        let end = CheckpointEnd {
            index,
            term,
            conf_state: self.store.conf_state(),
        };
        let rows = c.run.take().map_or(0, |(_, rows)| rows);
        let answer = c.writer.finish(&mut c.records, end);
        c.finishing = Some((index, rows, answer));
        Ok(())
    }

    /// Whether to begin a checkpoint now, at applied index `applied`.
    fn checkpoint_due(&self, applied: u64) -> bool {
        let c = &self.checkpoints;
        let every = (c.durable_rows as u64)
            .min(MAX_SPACING)
            .max(self.tuning.compact_threshold.max(1));
        // Not while a restart replays configuration changes the stored
        // configuration already holds: they would not be the state's.
        let replaying = applied < self.store.conf_index();
        // Room for a second copy beside the last one, on top of the reserve
        // kept for RocksDB's writes (`storage/space.rs`).
        let space = &self.shared.space;
        let room = space.reserve() == 0
            || space
                .free_if_known()
                .is_none_or(|free| free >= space.reserve() + 2 * c.durable_bytes);
        c.finishing.is_none() && !replaying && room && applied.saturating_sub(c.began_at) >= every
    }

    fn poll_finished_checkpoint(&mut self) -> Result<(), StorageFailure> {
        let c = &mut self.checkpoints;
        let Some((index, rows, answer)) = &c.finishing else {
            return Ok(());
        };
        let result = match answer.try_recv() {
            Err(TryRecvError::Empty) => return Ok(()),
            Ok(result) => result,
            Err(TryRecvError::Disconnected) => Err("the checkpoint writer has stopped".into()),
        };
        let (index, rows) = (*index, *rows);
        c.finishing = None;
        match result {
            Ok(bytes) => {
                if c.written == 0 {
                    info!(node = %self.me.node, index, rows, bytes, "first checkpoint written");
                }
                debug!(node = %self.me.node, index, rows, bytes, "checkpoint durable");
                c.durable = index;
                c.durable_rows = rows;
                c.durable_bytes = bytes;
                c.written += 1;
                // (Noticed here, up to one turn of the loop after the fsync.)
                self.shared.metrics.snapshot_persist.since(c.began);
                if self.store.legacy_rows() {
                    let mut b = self.store.batch();
                    self.store.retire_legacy_rows(&mut b);
                    self.store.commit(b, true)?;
                }
            }
            // Not fatal: the state is in memory and the log is kept; the next
            // one is tried after as many entries again.
            Err(e) => {
                warn!(node = %self.me.node, index, error = %e,
                      "checkpoint failed; the log is kept until one succeeds");
                c.failed += 1;
                self.shared.metrics.checkpoint_failures.inc();
            }
        }
        Ok(())
    }
}
