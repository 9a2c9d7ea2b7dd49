//! Snapshots on the leader's side: the image served to raft-rs (built once per
//! applied index and address book, [`SnapshotMemo`]) and the tracking of
//! snapshots sent until the follower acknowledges them. Must not install
//! snapshots (that is the Ready loop in `node.rs`) or touch the log.

use super::node::RaftNode;
use super::Shared;
use crate::rpc::PeerInfo;
use crate::storage::{SnapshotImage, SnapshotSource};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The snapshot source handed to storage: an image of the applied state
/// (every table) and the address book, memoised.
pub(super) fn snapshot_source(
    shared: Arc<Shared>,
    peers: Arc<RwLock<BTreeMap<u64, PeerInfo>>>,
) -> SnapshotSource {
    Arc::new(move || {
        // raft-rs may ask for a snapshot from inside apply_conf_change,
        // while this thread holds the write lock: then the answer is
        // "temporarily unavailable" (raft-rs asks again), not a deadlock.
        let applied = shared.applied.try_read().ok()?;
        let peers = peers.read().unwrap_or_else(|e| e.into_inner()).clone();
        let data = shared
            .snapshot_memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .image(applied.index, peers, || {
                let started = std::time::Instant::now();
                let rows = applied.state.rows();
                shared.metrics.snapshot_create.since(started);
                rows
            });
        Some((applied.index, data))
    })
}

/// The last snapshot image built. Raft asks for a snapshot for each follower
/// that needs one, and again after a lost one; while nothing new was applied
/// (and the address book is the same) the same bytes serve, rather than a
/// second full read and encoding of the catalog on the Raft thread. Dropped
/// once no snapshot is in flight ([`RaftNode::check_snapshots`]) and when
/// this server stops leading: an image holds every row of the catalog (about
/// 50 MB at a million instances, bench measurement 14), too much to keep for
/// a follower that may never fall behind again. The price: a second follower
/// that needs one later, at the same index, has it built again.
#[derive(Default)]
pub(super) struct SnapshotMemo {
    /// Applied index, address book and encoded image of the last build.
    last: Option<(u64, BTreeMap<u64, PeerInfo>, bytes::Bytes)>,
    /// Images built (not served from `last`).
    builds: u64,
}

impl SnapshotMemo {
    /// Forgets the last image (the next request builds one).
    fn forget(&mut self) {
        self.last = None;
    }
}

impl SnapshotMemo {
    /// The image at `index` with `peers`, built from `rows` unless the last
    /// one was of the same index and peers.
    fn image(
        &mut self,
        index: u64,
        peers: BTreeMap<u64, PeerInfo>,
        rows: impl FnOnce() -> Vec<(Vec<u8>, Vec<u8>)>,
    ) -> bytes::Bytes {
        if let Some((i, p, data)) = &self.last {
            if *i == index && *p == peers {
                return data.clone();
            }
        }
        let data = bytes::Bytes::from(
            SnapshotImage {
                peers: peers.clone(),
                rows: rows(),
            }
            .encode(),
        );
        self.builds += 1;
        debug!(
            index,
            bytes = data.len(),
            builds = self.builds,
            "built a snapshot image"
        );
        self.last = Some((index, peers, data.clone()));
        data
    }
}

/// A snapshot handed to the transport for a follower, not yet acknowledged.
pub(super) struct SnapshotInFlight {
    /// The snapshot's index.
    index: u64,
    /// When it was handed to the transport.
    sent: Instant,
}

impl RaftNode {
    /// Notes a snapshot handed to the transport for `to`. Not reported as
    /// finished here: the transport only queued it and may still lose it.
    /// The follower's answer to an installed snapshot is a MsgAppendResponse
    /// at or past its index, on which raft-rs itself leaves the Snapshot state
    /// (no report_snapshot(Finish) needed); no answer in time is reported as
    /// a failure by [`RaftNode::check_snapshots`].
    pub(super) fn snapshot_sent(&mut self, to: u64, index: u64) {
        self.snapshots_sent += 1;
        info!(node = %self.me.node, to, index,
              attempt = self.snapshot_failures.get(&to).copied().unwrap_or(0) + 1,
              "sending a snapshot to a follower");
        self.snapshots_in_flight.insert(
            to,
            SnapshotInFlight {
                index,
                sent: Instant::now(),
            },
        );
    }

    fn forget_snapshot_image(&self) {
        self.shared
            .snapshot_memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget();
    }

    /// How long a follower has to acknowledge a snapshot after `failures`
    /// unacknowledged ones in a row: `snapshot_ack_timeout`, doubling with
    /// each failure up to 16 times that. Until then raft-rs keeps the
    /// follower in its Snapshot state and sends it nothing, so this is also
    /// the least time between two snapshots for one follower: one that keeps
    /// losing them does not cost a full catalog image on the Raft thread at
    /// every heartbeat reply.
    fn snapshot_timeout(&self, failures: u32) -> Duration {
        self.tuning.snapshot_ack_timeout * (1u32 << failures.min(4))
    }

    /// Settles the snapshots in flight: acknowledged ones (raft-rs left the
    /// Snapshot state with the follower's log at or past the snapshot) clear
    /// the follower's failures; one unanswered for too long is reported as a
    /// failure, so that raft-rs probes the follower again and sends a new
    /// snapshot if it still needs one.
    pub(super) fn check_snapshots(&mut self, now: Instant) {
        if self.snapshots_in_flight.is_empty() {
            return;
        }
        if !self.is_leader() {
            // A new leader starts from fresh progress for every follower.
            self.snapshots_in_flight.clear();
            self.snapshot_failures.clear();
            self.forget_snapshot_image();
            return;
        }
        let mut expired = Vec::new();
        let mut acked = Vec::new();
        for (&id, sent) in &self.snapshots_in_flight {
            let Some(pr) = self.raw.raft.prs().get(id) else {
                // No longer a member: nothing to wait for, nothing to remember.
                acked.push((id, true));
                continue;
            };
            if pr.state != raft::ProgressState::Snapshot || pr.pending_snapshot != sent.index {
                acked.push((id, pr.matched >= sent.index));
            } else {
                let failures = self.snapshot_failures.get(&id).copied().unwrap_or(0);
                if now.duration_since(sent.sent) > self.snapshot_timeout(failures) {
                    expired.push((id, sent.index));
                }
            }
        }
        for (id, caught_up) in acked {
            self.snapshots_in_flight.remove(&id);
            if caught_up {
                self.snapshot_failures.remove(&id);
            }
        }
        // Expired ones are still in flight here (removed below).
        if self.snapshots_in_flight.is_empty() {
            debug!(node = %self.me.node, "no snapshot in flight: dropping the image");
            self.forget_snapshot_image();
        }
        for (id, index) in expired {
            self.snapshots_in_flight.remove(&id);
            let failures = self.snapshot_failures.entry(id).or_insert(0);
            *failures = failures.saturating_add(1);
            warn!(node = %self.me.node, to = id, index, failures = *failures,
                  "a follower did not acknowledge its snapshot in time; it will be probed again");
            self.raw.report_snapshot(id, raft::SnapshotStatus::Failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> PeerInfo {
        PeerInfo {
            id,
            node: format!("s{id}"),
            rpc_addr: format!("s{id}:8300"),
            http_addr: format!("s{id}:8500"),
            datacenter: "dc1".into(),
        }
    }

    #[test]
    fn a_snapshot_image_is_built_once_per_applied_index_and_address_book() {
        let mut memo = SnapshotMemo::default();
        let peers: BTreeMap<u64, PeerInfo> = [(1, peer(1))].into();
        let rows = || vec![(b"n/a".to_vec(), b"{}".to_vec())];
        let first = memo.image(7, peers.clone(), rows);
        let again = memo.image(7, peers.clone(), || unreachable!("memoised"));
        assert_eq!((first.clone(), memo.builds), (again, 1));
        let decoded = SnapshotImage::decode(&first).unwrap();
        assert_eq!((decoded.peers, decoded.rows), (peers.clone(), rows()));
        // A newer index, or a changed address book, is a new image.
        memo.image(8, peers.clone(), rows);
        let mut more = peers;
        more.insert(2, peer(2));
        memo.image(8, more.clone(), rows);
        assert_eq!(memo.builds, 3);
        // Forgotten once every follower has its snapshot: the next one is built again.
        memo.forget();
        memo.image(8, more, rows);
        assert_eq!(memo.builds, 4);
    }
}
