//! Measurement 14: a catalog of 1,000,000 instances (issue 20; full bench only). On
//! measurement 5's cluster, after its runs: filled on to the target like measurement 5 fills
//! (256 clients, 10 instances per node, each its own service with one check), then
//!
//! - the leader's and the largest follower's RSS, and the leader's data dir;
//! - a snapshot (`GET /v1/snapshot`): its size and time, and the p99 of `?stale` health
//!   lookups by 64 clients while it is taken, beside the same lookups just before;
//! - a follower stopped while more writes than the log keeps go by (the leader compacts past
//!   it), restarted: the time until it has installed the leader's Raft snapshot and caught up.

use crate::cluster::RegistryCluster;
use crate::load::{http_client, Op, RunStats};
use crate::scenarios::{
    fill_and_measure, follower_recovery, memory_op, read, MemPoint, RecoveryRun,
};
use anyhow::{bail, Context, Result};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes a follower misses in the recovery row. Before checkpoints this was more than the
/// log kept (8,192 applied entries), so the follower caught up from a snapshot; the log is now
/// kept back to the last checkpoint (as many entries as the state has rows, up to 2^20), so at
/// a million instances it catches up from the log. (Catching up by snapshot is in
/// `registry-server/tests/snapshots.rs`; timing it here would take a million missed writes.)
pub const SNAPSHOT_MISSED: u64 = 12_000;
/// Lookup clients of the snapshot row.
const LOOKUP_CLIENTS: usize = 64;
/// Lookups are measured for this long, before and while the snapshot is taken.
const LOOKUP_WINDOW: Duration = Duration::from_secs(5);

/// What measurement 14 measured.
#[derive(Clone, Debug, Default)]
pub struct Scale {
    /// Instances, memory, disk and fill rate (as measurement 5's points).
    pub point: MemPoint,
    /// Size of `GET /v1/snapshot`'s archive.
    pub snapshot_bytes: u64,
    /// Time to receive it.
    pub snapshot_time: Duration,
    /// Lookups just before the snapshot.
    pub lookups_before: RunStats,
    /// Lookups while it was taken (the window starts with it).
    pub lookups_during: RunStats,
    /// A follower's catch-up from a Raft snapshot.
    pub recovery: RecoveryRun,
}

/// Measurement 14 on `cluster`, whose catalog holds `seq`'s instances of measurement 5.
pub async fn measure(
    cluster: &mut RegistryCluster,
    seq: &Arc<AtomicU64>,
    target: u64,
) -> Result<Scale> {
    let urls = cluster.urls();
    let point = fill_and_measure(cluster, seq, target).await?;
    eprintln!(
        "  {target} instances: leader RSS {} MB, follower {} MB, disk {} MB, filled at {:.0}/s ({} errors)",
        point.leader_rss >> 20,
        point.follower_rss >> 20,
        point.disk >> 20,
        point.fill_rate,
        point.errors
    );
    let leader = cluster.leader().await?;

    // Lookups of one service, before and while a snapshot is taken from the leader.
    let lookup = || Op::Lookup {
        service: "mem-svc-1".into(),
        query: "&stale",
    };
    let lookups_before = read(lookup(), &urls, LOOKUP_CLIENTS, LOOKUP_WINDOW, false).await?;
    let http = http_client()?;
    let snapshot_url = format!("{}/v1/snapshot", urls[leader]);
    let snapshot = tokio::spawn(async move {
        let started = Instant::now();
        let mut resp = http
            .get(snapshot_url)
            .timeout(Duration::from_secs(600))
            .send()
            .await?
            .error_for_status()?;
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            bytes += chunk.len() as u64;
        }
        Ok::<_, reqwest::Error>((bytes, started.elapsed()))
    });
    let lookups_during = read(lookup(), &urls, LOOKUP_CLIENTS, LOOKUP_WINDOW, false).await?;
    let (snapshot_bytes, snapshot_time) = snapshot.await?.context("GET /v1/snapshot")?;
    if snapshot_bytes == 0 {
        bail!("GET /v1/snapshot answered nothing");
    }
    eprintln!(
        "  snapshot {} MB in {snapshot_time:?}; lookup p99 {:?} before, {:?} while it was taken",
        snapshot_bytes >> 20,
        lookups_before.p99,
        lookups_during.p99
    );

    let recovery = follower_recovery(
        cluster,
        &memory_op(),
        seq,
        SNAPSHOT_MISSED,
        0,
        "scale-recovery-marker",
    )
    .await?;
    Ok(Scale {
        point,
        snapshot_bytes,
        snapshot_time,
        lookups_before,
        lookups_during,
        recovery,
    })
}
