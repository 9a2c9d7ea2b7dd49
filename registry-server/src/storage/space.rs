//! Free space in the data directory, and the rule that keeps a server from
//! filling it: writes are refused, with a reason, before the disk is full.
//!
//! A RocksDB write that fails for want of space stops the Raft thread (a
//! storage failure is fatal: the node cannot tell what reached the disk), and
//! a stopped server serves nothing until it is restarted. So a server keeps a
//! reserve (`--min-free-disk`, 64 MiB by default) and checks it before a write
//! enters the log:
//!
//! - with less than the reserve free, writes are refused (`503` with the
//!   free and reserved space in the text) except deregistrations, deletes
//!   and session renewals (`Command::allowed_when_short`), which still go
//!   until half the reserve is left;
//! - the leader checks writes forwarded by followers the same way, as the
//!   entry goes into its log, and tells the follower why it dropped them;
//! - a follower with less than a quarter of the reserve free stops taking new
//!   entries from the leader (it lags, and catches up once space is back),
//!   rather than failing a write and stopping;
//! - reads are never refused, and writes resume by themselves once space is
//!   freed: the figure is read again every [`REFRESH`].
//!
//! Owns: measuring free space and deciding from it. Must not know what a
//! write is (the caller says whether it frees space).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// How long one reading of the free space is used before the next.
pub const REFRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// At most one line about a change of state this often.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The default reserve: enough for RocksDB to flush its memtables and finish
/// a compaction of a catalog of a few hundred thousand instances.
pub const DEFAULT_MIN_FREE: u64 = 64 * 1024 * 1024;

/// What a server knows of the free space of its data directory. Shared by
/// the HTTP tasks (which check before proposing) and the Raft thread (which
/// checks forwarded writes and entries from the leader).
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    /// The reserve in bytes; 0 turns the checks off.
    reserve: AtomicU64,
    /// The last reading, in bytes available to this (unprivileged) process.
    free: AtomicU64,
    /// When it was taken, in µs since `epoch`; `u64::MAX` before the first.
    read_at_us: AtomicU64,
    epoch: Instant,
    /// Whether writes are being refused (for logging the change once).
    refusing: AtomicBool,
    /// Whether a follower stopped taking entries (likewise).
    paused: AtomicBool,
    /// Whether the last reading failed (logged once per failure spell).
    unreadable: AtomicBool,
    /// When a change of state (refusing, paused) was last logged at warn or
    /// info level, in µs since `epoch`; `u64::MAX`: never.
    logged_at_us: AtomicU64,
    /// Writes refused since start.
    refused: AtomicU64,
}

/// Why a write was refused: shown to the caller as it is.
pub fn refusal(free: u64, reserve: u64) -> String {
    format!(
        "insufficient disk space for writes: {} MiB free in the data directory, {} MiB reserved (--min-free-disk); reads still work, and writes resume once space is freed",
        free / (1024 * 1024),
        reserve / (1024 * 1024)
    )
}

impl DiskSpace {
    /// Watches `dir` with `reserve` bytes kept free (0: no checks).
    pub fn new(dir: impl Into<PathBuf>, reserve: u64) -> Arc<Self> {
        Arc::new(DiskSpace {
            dir: dir.into(),
            reserve: AtomicU64::new(reserve),
            free: AtomicU64::new(u64::MAX),
            read_at_us: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            refusing: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            unreadable: AtomicBool::new(false),
            logged_at_us: AtomicU64::new(u64::MAX),
            refused: AtomicU64::new(0),
        })
    }

    /// Changes the reserve while the server runs (tests; 0 turns the checks off).
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
        // Read again at the next check, so the change shows at once.
        self.read_at_us.store(u64::MAX, Ordering::Relaxed);
    }

    /// The reserve in bytes.
    pub fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    /// Bytes free at the last reading, `None` if it could not be read.
    pub fn free_if_known(&self) -> Option<u64> {
        let free = self.free();
        (free != u64::MAX).then_some(free)
    }

    /// Writes refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Bytes free for this process in the data directory, at most [`REFRESH`] old.
    /// One caller at a time reads it again; the others use the last reading.
    pub fn free(&self) -> u64 {
        let now = self.epoch.elapsed().as_micros() as u64;
        let at = self.read_at_us.load(Ordering::Relaxed);
        let stale = at == u64::MAX || now.saturating_sub(at) >= REFRESH.as_micros() as u64;
        if stale
            && self
                .read_at_us
                .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            match rustix::fs::statvfs(&self.dir) {
                Ok(s) => {
                    self.unreadable.store(false, Ordering::Relaxed);
                    self.free
                        .store(s.f_bavail.saturating_mul(s.f_frsize), Ordering::Relaxed)
                }
                // A data dir that cannot be examined is not treated as full:
                // RocksDB's own errors say more than a guess would.
                Err(e) => {
                    if !self.unreadable.swap(true, Ordering::Relaxed) {
                        warn!(dir = %self.dir.display(), error = %e, "cannot read the data directory's free space; not checking it until it can be read");
                    }
                    self.free.store(u64::MAX, Ordering::Relaxed);
                }
            }
        }
        self.free.load(Ordering::Relaxed)
    }

    /// Checks a write before it enters the log: `Err` with the reason to show
    /// when it must be refused. `allowed_when_short`: a write that removes
    /// something or renews a session (allowed down to half the reserve).
    pub fn admit(&self, allowed_when_short: bool) -> Result<(), String> {
        let reserve = self.reserve();
        if reserve == 0 {
            return Ok(());
        }
        let free = self.free();
        let floor = if allowed_when_short {
            reserve / 2
        } else {
            reserve
        };
        let short = free < reserve;
        if short != self.refusing.swap(short, Ordering::Relaxed) && self.may_log() {
            if short {
                warn!(dir = %self.dir.display(), free_mib = free / (1024 * 1024), reserve_mib = reserve / (1024 * 1024),
                      "data directory short of space: refusing writes (deletes still go until half the reserve is left)");
            } else {
                info!(dir = %self.dir.display(), free_mib = free / (1024 * 1024), "data directory has space again: taking writes");
            }
        }
        if free < floor {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(refusal(free, reserve));
        }
        Ok(())
    }

    /// Whether a change of state may be logged now: at most one line every
    /// [`LOG_EVERY`], so that free space hovering at the reserve (RocksDB's
    /// flushes and compactions move it by megabytes) does not flood the log.
    /// The state itself follows every reading; the gauges show it.
    fn may_log(&self) -> bool {
        let now = self.epoch.elapsed().as_micros() as u64;
        let last = self.logged_at_us.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= LOG_EVERY.as_micros() as u64;
        due && self
            .logged_at_us
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether less than the reserve is free (no count, no log): the cheap
    /// look before examining writes one by one.
    pub fn short(&self) -> bool {
        let reserve = self.reserve();
        reserve != 0 && self.free() < reserve
    }

    /// Whether a follower must stop taking entries from the leader: less than
    /// a quarter of the reserve is left (the leader refuses writes at the
    /// whole reserve, so this is reached only when this disk is fuller than
    /// the leader's).
    pub fn too_full_to_follow(&self) -> bool {
        self.too_full_to_take(0)
    }

    /// [`DiskSpace::too_full_to_follow`] without recording or logging the
    /// change (a look that drops nothing: the follower's heartbeat path).
    pub fn below_follow_floor(&self) -> bool {
        self.room_for(0).0
    }

    /// Whether taking `bytes` more would leave less than a quarter of the
    /// reserve free (never, with no reserve), and the free bytes read.
    fn room_for(&self, bytes: u64) -> (bool, u64) {
        let reserve = self.reserve();
        if reserve == 0 {
            return (false, 0);
        }
        let free = self.free();
        (free < (reserve / 4).saturating_add(bytes), free)
    }

    /// [`DiskSpace::too_full_to_follow`] for taking `bytes` more (a snapshot
    /// from the leader, which must fit with a quarter of the reserve left).
    pub fn too_full_to_take(&self, bytes: u64) -> bool {
        if self.reserve() == 0 {
            return false;
        }
        let (full, free) = self.room_for(bytes);
        if full != self.paused.swap(full, Ordering::Relaxed) && self.may_log() {
            if full {
                warn!(dir = %self.dir.display(), free_mib = free / (1024 * 1024),
                      "data directory nearly full: not taking new entries from the leader until space is freed");
            } else {
                info!(dir = %self.dir.display(), free_mib = free / (1024 * 1024), "data directory has space again: taking entries from the leader");
            }
        }
        full
    }
}

/// Reads a size given on the command line: bytes, or a number with one of
/// `KB`, `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 64MiB, 1GB, 0)"))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_writes_then_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 0);
        assert_eq!(space.admit(false), Ok(()));
        let free = space.free();
        assert!(free > 0 && free < u64::MAX);
        // Between the reserve and half of it: deletes go, other writes do not.
        space.set_reserve(free + free / 2);
        let reason = space.admit(false).unwrap_err();
        assert!(reason.contains("insufficient disk space"), "{reason}");
        assert_eq!(space.admit(true), Ok(()));
        // Under half of it: nothing goes.
        space.set_reserve(free.saturating_mul(4));
        assert!(space.admit(true).is_err());
        // Under a quarter of it: a follower stops taking entries.
        space.set_reserve(free.saturating_mul(8));
        assert!(space.too_full_to_follow());
        assert_eq!(space.refused(), 2);
        space.set_reserve(0);
        assert_eq!(space.admit(false), Ok(()));
        assert!(!space.too_full_to_follow());
    }
}
