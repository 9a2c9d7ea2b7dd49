//! What the run saw: the operation history for the checker, the `?stale`
//! indexes, counters, and a timestamped log of faults and leader changes.

use crate::history::Op;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

/// Counts for the summary.
#[derive(Default, Debug)]
pub struct Counts {
    /// Writes (registrations and deregistrations) acknowledged with 200 `true`.
    pub writes_acked: u64,
    /// Writes that got an error or timed out: outcome unknown.
    pub writes_unknown: u64,
    /// Writes that could not connect (never sent, not recorded).
    pub writes_refused: u64,
    /// Default-consistency reads answered, straight to a dc1 server.
    pub reads_default: u64,
    /// `?consistent` reads answered.
    pub reads_consistent: u64,
    /// `?dc=dc1` reads answered through the dc2 agent and the gateways.
    pub reads_xdc: u64,
    /// `?stale` reads answered.
    pub reads_stale: u64,
    /// Reads that got no answer or an error (not recorded).
    pub reads_failed: u64,
}

/// Shared by the clients, the fault schedule and the leader sampler. The std
/// mutexes are never held across an `.await`.
pub struct Recorder {
    /// Time zero of the history.
    start: Instant,
    /// Every write and linearizable read, for `history::check`.
    pub ops: Mutex<Vec<Op>>,
    /// (client, invoke) -> how the operation was sent (server, mode), to print
    /// beside a failing history: `Op` has no room for it.
    notes: Mutex<HashMap<(usize, u64), String>>,
    /// (server, key) -> highest `X-Consul-Index` a `?stale` read returned.
    stale: Mutex<BTreeMap<(usize, u32), u64>>,
    /// `?stale` reads that went backwards.
    pub stale_violations: Mutex<Vec<String>>,
    /// Counters.
    pub counts: Mutex<Counts>,
    /// Timestamped faults, heals and leader changes, in order.
    pub events: Mutex<Vec<String>>,
}

impl Recorder {
    /// An empty record starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::default(),
            notes: Mutex::default(),
            stale: Mutex::default(),
            stale_violations: Mutex::default(),
            counts: Mutex::default(),
            events: Mutex::default(),
        }
    }

    /// Nanoseconds since the start (the history's clock).
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Logs an event with the time since the start, and prints it at once.
    pub fn event(&self, what: String) {
        let line = format!("[{:8.3}s] {what}", self.start.elapsed().as_secs_f64());
        println!("{line}");
        lock(&self.events).push(line);
    }

    /// Adds one operation to the history, with how it was sent.
    pub fn push(&self, op: Op, note: String) {
        lock(&self.notes).insert((op.client, op.invoke), note);
        lock(&self.ops).push(op);
    }

    /// How `op` was sent, if recorded.
    pub fn note(&self, op: &Op) -> String {
        lock(&self.notes)
            .get(&(op.client, op.invoke))
            .cloned()
            .unwrap_or_default()
    }

    /// Records a `?stale` read's index from `server`; a lower index than one
    /// seen before from the same server for the same key is a violation.
    pub fn stale_index(&self, server: usize, key: u32, index: u64) {
        let mut seen = lock(&self.stale);
        let last = seen.entry((server, key)).or_insert(0);
        if index < *last {
            let at = self.start.elapsed().as_secs_f64();
            lock(&self.stale_violations).push(format!(
                "at {at:.3}s a ?stale read of k{key} on dc1-server{} returned X-Consul-Index {index} after {last}",
                server + 1
            ));
        }
        *last = index.max(*last);
    }

    /// Updates the counters.
    pub fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut lock(&self.counts));
    }
}

/// Locks a mutex, ignoring poisoning: a panicked client must not hide the
/// record of everything else.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
