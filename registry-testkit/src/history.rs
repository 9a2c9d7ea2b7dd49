//! A recorded history of client operations and a linearizability checker for
//! it (Wing & Gong's search with Lowe's memoisation, as Knossos and Porcupine
//! do), over a register model: each key is one service instance whose
//! `Meta["v"]` is the register's value.
//!
//! Registers compose (Herlihy & Wing: linearizability is local), so every key
//! is checked on its own, which keeps each search small.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Set the key to a value (`Some`: register), or remove it (`None`: deregister).
    Write(Option<u64>),
    /// Read the key (None: the instance is not registered).
    Read(Option<u64>),
}

/// One operation as a client saw it. Times are nanoseconds since the start.
#[derive(Clone, Debug)]
pub struct Op {
    /// Which client.
    pub client: usize,
    /// Which key.
    pub key: u32,
    /// What it did (for reads: what it returned).
    pub kind: Kind,
    /// When it was sent.
    pub invoke: u64,
    /// When its answer came; `None` for a write whose outcome is unknown
    /// (error or timeout): it may take effect at any time after `invoke`.
    pub complete: Option<u64>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .complete
            .map(|c| format!("{:.3}ms", c as f64 / 1e6))
            .unwrap_or_else(|| "?".into());
        write!(
            f,
            "client {} key {} {:?} [{:.3}ms .. {end}]",
            self.client,
            self.key,
            self.kind,
            self.invoke as f64 / 1e6
        )
    }
}

/// A key whose history has no linearization, with that history.
pub type Failure = (u32, Vec<Op>);

/// Checks every key's history; returns the first key whose history has no
/// linearization, with that history. Keys whose search ran out of its budget
/// (see [`Verdict::Unknown`]) do not fail the check; they are named on stderr.
/// (Used by lab-chaos; registry-server's `tests/chaos.rs` uses [`check_report`].)
pub fn check(ops: &[Op]) -> Result<(), Failure> {
    let (result, unknown) = check_report(ops);
    if !unknown.is_empty() {
        eprintln!("linearizability not decided within the search budget for keys {unknown:?}");
    }
    result
}

/// Like [`check`], and also returns the keys left undecided.
pub fn check_report(ops: &[Op]) -> (Result<(), Failure>, Vec<u32>) {
    let mut by_key: BTreeMap<u32, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op.clone());
    }
    let mut unknown = Vec::new();
    for (key, hist) in by_key {
        match verdict(&hist) {
            Verdict::Linearizable => {}
            Verdict::Unknown => unknown.push(key),
            Verdict::NotLinearizable => return (Err((key, hist)), unknown),
        }
    }
    (Ok(()), unknown)
}

/// The outcome of one key's search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The search visited [`SEARCH_BUDGET`] states without deciding (many
    /// writes of unknown outcome overlapping make it exponential).
    Unknown,
}

/// States the search may visit for one key before it gives up.
pub const SEARCH_BUDGET: usize = 2_000_000;

/// Whether one key's history has a linearization from the initial value None
/// (an undecided search counts as yes: only a proof of none is a failure).
pub fn linearizable(hist: &[Op]) -> bool {
    verdict(hist) != Verdict::NotLinearizable
}

/// Searches one key's history for a linearization from the initial value None.
pub fn verdict(hist: &[Op]) -> Verdict {
    // A write whose outcome is unknown may be left out of the linearization,
    // and it may be dropped before the search when no read that completed
    // after its invocation returned its value: a read linearized after it
    // would have to. (Keeping such writes makes the search exponential in
    // the number of failed writes; for deregistrations, reads of "absent"
    // are common, so the completion time matters.)
    let mut ops: Vec<Op> = hist
        .iter()
        .filter(|o| match o.kind {
            Kind::Write(v) => {
                o.complete.is_some()
                    || hist.iter().any(|r| {
                        r.kind == Kind::Read(v) && r.complete.is_some_and(|c| c > o.invoke)
                    })
            }
            Kind::Read(_) => true,
        })
        .cloned()
        .collect();
    ops.sort_by_key(|o| o.invoke);
    let words = ops.len().div_ceil(64).max(1);
    // Operations that must appear: completed ones. Unknown writes may be left out.
    let mut required = vec![0u64; words];
    for (i, o) in ops.iter().enumerate() {
        if o.complete.is_some() {
            required[i / 64] |= 1 << (i % 64);
        }
    }
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut done = vec![0u64; words];
    match search(&ops, &mut done, None, &required, &mut seen) {
        Some(true) => Verdict::Linearizable,
        Some(false) => Verdict::NotLinearizable,
        None => Verdict::Unknown,
    }
}

fn has(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// `Some(found)`, or `None` once the budget is spent.
fn search(
    ops: &[Op],
    done: &mut Vec<u64>,
    value: Option<u64>,
    required: &[u64],
    seen: &mut HashSet<(Vec<u64>, Option<u64>)>,
) -> Option<bool> {
    if done.iter().zip(required).all(|(d, r)| d & r == *r) {
        return Some(true);
    }
    if seen.len() >= SEARCH_BUDGET {
        return None;
    }
    if !seen.insert((done.clone(), value)) {
        return Some(false);
    }
    // An operation can go next only if it was invoked before every pending
    // operation's completion (otherwise that one must come first).
    let horizon = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| !has(done, *i))
        .filter_map(|(_, o)| o.complete)
        .min()
        .unwrap_or(u64::MAX);
    for (i, op) in ops.iter().enumerate() {
        if has(done, i) || op.invoke > horizon {
            continue;
        }
        // Writes of unknown outcome and equal value are interchangeable but
        // for their invocation times, so take them earliest first: any
        // linearization using some of them can use the earliest as many.
        // Without this, 40 timed-out deregistrations are 2^40 subsets.
        if op.complete.is_none()
            && ops[..i]
                .iter()
                .enumerate()
                .any(|(j, o)| o.complete.is_none() && o.kind == op.kind && !has(done, j))
        {
            continue;
        }
        let next = match op.kind {
            Kind::Write(v) => v,
            Kind::Read(r) => {
                if r != value {
                    continue;
                }
                value
            }
        };
        done[i / 64] |= 1 << (i % 64);
        let found = search(ops, done, next, required, seen);
        done[i / 64] &= !(1 << (i % 64));
        match found {
            Some(false) => {}
            other => return other,
        }
    }
    Some(false)
}

/// A smaller history that is still not linearizable, found greedily: drop
/// one operation at a time while the rest still fails. A write is dropped
/// only when no remaining read returned its value, so the result never fails
/// merely because a read lost its writer.
pub fn shrink(hist: &[Op]) -> Vec<Op> {
    let mut cur: Vec<Op> = hist.to_vec();
    cur.sort_by_key(|o| o.invoke);
    if linearizable(&cur) {
        return cur;
    }
    // Passes until one removes nothing: dropping a read can free a write.
    loop {
        let before = cur.len();
        let mut i = cur.len();
        while i > 0 {
            i -= 1;
            if let Kind::Write(Some(v)) = cur[i].kind {
                if cur.iter().any(|o| o.kind == Kind::Read(Some(v))) {
                    continue;
                }
            }
            let mut candidate = cur.clone();
            candidate.remove(i);
            if !linearizable(&candidate) {
                cur = candidate;
            }
        }
        if cur.len() == before {
            break;
        }
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            client: 0,
            key: 0,
            kind,
            invoke,
            complete,
        }
    }

    #[test]
    fn accepts_and_rejects_the_textbook_cases() {
        // Sequential write then read.
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(10)),
            op(Kind::Read(Some(1)), 20, Some(30)),
        ]));
        // A read after a completed write must not see the old value.
        assert!(!linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(10)),
            op(Kind::Read(None), 20, Some(30)),
        ]));
        // Concurrent read may see either.
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(30)),
            op(Kind::Read(None), 10, Some(20)),
        ]));
        // Stale read after a newer value was read: not linearizable.
        assert!(!linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(Some(2)), 6, Some(10)),
            op(Kind::Read(Some(2)), 11, Some(12)),
            op(Kind::Read(Some(1)), 13, Some(14)),
        ]));
        // An unknown write may take effect late, or never.
        assert!(linearizable(&[
            op(Kind::Write(Some(7)), 0, None),
            op(Kind::Read(None), 10, Some(20)),
            op(Kind::Read(Some(7)), 30, Some(40)),
        ]));
        assert!(linearizable(&[
            op(Kind::Write(Some(7)), 0, None),
            op(Kind::Read(None), 30, Some(40))
        ]));
        // A value nobody wrote.
        assert!(!linearizable(&[op(Kind::Read(Some(9)), 0, Some(1))]));
        // A completed deregister removes the value for every later read.
        assert!(!linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(None), 6, Some(10)),
            op(Kind::Read(Some(1)), 11, Some(12)),
        ]));
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(None), 6, Some(10)),
            op(Kind::Read(None), 11, Some(12)),
            op(Kind::Write(Some(2)), 13, None),
            op(Kind::Read(Some(2)), 20, Some(21)),
        ]));
    }

    #[test]
    fn unknown_deregistrations_that_no_later_read_can_see_are_dropped() {
        // The key starts absent (a read of None), is registered, and then 40
        // deregistrations time out while reads go on seeing the value. Each
        // may still take effect at any later time, so the search must not
        // try every subset of them (seed 2680179603692032791 of `make chaos`
        // hung in exactly this).
        let mut hist = vec![
            op(Kind::Read(None), 0, Some(5)),
            op(Kind::Write(Some(1)), 10, Some(20)),
        ];
        for i in 0..40 {
            hist.push(op(Kind::Write(None), 30 + 10 * i, None));
            hist.push(op(Kind::Read(Some(1)), 31 + 10 * i, Some(35 + 10 * i)));
        }
        assert_eq!(verdict(&hist), Verdict::Linearizable);
        // And one that a later read did see still counts.
        hist.push(op(Kind::Read(None), 2_000, Some(2_010)));
        assert_eq!(verdict(&hist), Verdict::Linearizable);
        hist.push(op(Kind::Read(Some(1)), 3_000, Some(3_010)));
        assert_eq!(verdict(&hist), Verdict::NotLinearizable);
    }

    #[test]
    fn shrink_keeps_a_failing_core() {
        let mut hist = vec![
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(Some(2)), 6, Some(10)),
            op(Kind::Read(Some(2)), 11, Some(12)),
            op(Kind::Read(Some(1)), 13, Some(14)),
        ];
        for t in 0..20 {
            hist.push(op(Kind::Read(Some(2)), 100 + 10 * t, Some(105 + 10 * t)));
        }
        let hist: Vec<Op> = hist.into_iter().rev().collect();
        let small = shrink(&hist);
        assert!(!linearizable(&small));
        assert!(small.len() <= 4, "{small:?}");
    }
}
