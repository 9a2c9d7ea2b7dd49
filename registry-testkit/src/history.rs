//! A recorded history of client operations and a linearizability checker for
//! it (Wing & Gong's search with Lowe's memoisation, as Knossos and Porcupine
//! do), over a register model: each key is one service instance whose
//! `Meta["v"]` is the register's value, or one KV key whose value is the
//! register's.
//!
//! The register also has a compare-and-set ([`Kind::Cas`]), for Consul's
//! `PUT /v1/kv/:key?cas=<ModifyIndex>` and `DELETE ...?cas=`. The server
//! compares Raft indexes, the model compares values: every write in a history
//! writes a value no other write writes, and gets its own Raft index, so "the
//! key's `ModifyIndex` is `m`" holds exactly when "the key's value is the one
//! written at `m`", and the client that sends `?cas=m` learnt `m` from a read
//! that returned that value along with it (`?cas=0`: the key is absent). A
//! CAS that answered `true` must therefore linearize while the value it named
//! is current (after that write, before any other); one that answered `false`
//! while it is not. Consul's `delete-cas` of a key that is already gone
//! answers `true` (`kvsDeleteCASTxn`), and the model says so too.
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
    /// A compare-and-set that answered `true` (or, with no completion, whose
    /// answer never came, so it may or may not have taken effect): the key
    /// became `new` because its value was `expect` (or, for a delete, because
    /// it was already absent; see [`cas_holds`]).
    Cas {
        /// The value the CAS named (through its index; `None`: `?cas=0`).
        expect: Option<u64>,
        /// The value it writes (`None`: a delete).
        new: Option<u64>,
    },
    /// A compare-and-set that answered `false`: at its linearization point
    /// the condition of [`cas_holds`] was false; it changed nothing.
    CasFailed {
        /// The value the CAS named.
        expect: Option<u64>,
        /// The value it would have written.
        new: Option<u64>,
    },
}

/// Whether a compare-and-set of `expect` to `new` takes effect on `value`:
/// when `value` is `expect`, and for a delete also when the key is already
/// absent (Consul's `delete-cas` answers `true` for a missing key).
pub fn cas_holds(expect: Option<u64>, new: Option<u64>, value: Option<u64>) -> bool {
    value == expect || (new.is_none() && value.is_none())
}

impl Kind {
    /// The register's value after this operation takes effect on `value`, or
    /// `None` when it cannot take effect there (a read of another value, a
    /// CAS whose outcome contradicts `value`).
    fn step(&self, value: Option<u64>) -> Option<Option<u64>> {
        match *self {
            Kind::Write(v) => Some(v),
            Kind::Read(r) => (r == value).then_some(value),
            Kind::Cas { expect, new } => cas_holds(expect, new, value).then_some(new),
            Kind::CasFailed { expect, new } => (!cas_holds(expect, new, value)).then_some(value),
        }
    }

    /// Whether the operation may change the register (a write or a CAS).
    pub fn is_write(&self) -> bool {
        self.written().is_some()
    }

    /// The value an operation of this kind writes when it takes effect, if
    /// it writes.
    fn written(&self) -> Option<Option<u64>> {
        match *self {
            Kind::Write(v) | Kind::Cas { new: v, .. } => Some(v),
            Kind::Read(_) | Kind::CasFailed { .. } => None,
        }
    }

    /// Whether this operation could have needed the value `v` to be current
    /// when it took effect: a read of `v`, a CAS that holds on `v`, a failed
    /// CAS that fails on `v`. A plain write needs nothing.
    fn may_need(&self, v: Option<u64>) -> bool {
        match *self {
            Kind::Write(_) => false,
            Kind::Read(_) | Kind::Cas { .. } | Kind::CasFailed { .. } => self.step(v).is_some(),
        }
    }
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
    let mut ops = relevant(&anonymised(hist));
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

/// The value that stands for every value no operation names (see
/// [`anonymised`]); clients must never write it.
pub const ANONYMOUS: u64 = u64::MAX;

/// `hist` with every written value that no operation names (no read returned
/// it, no CAS named it) replaced by [`ANONYMOUS`].
///
/// An operation looks at the register's value only by comparing it with the
/// values it names and by asking whether the key is absent
/// ([`Kind::step`]), so two values that no operation names are
/// indistinguishable to every operation, and renaming them to one value
/// changes no verdict. What it gains: writes of such values become equal, so
/// that the search takes those of unknown outcome earliest first instead of
/// trying every subset of them (see [`search`]), and states that differ only
/// in such a value are memoised as one. Without it, a history with a few
/// dozen plain writes that timed out and a few CASes answered `false` (each
/// of which any of those writes could explain) ran out of the search budget.
fn anonymised(hist: &[Op]) -> Vec<Op> {
    let named: HashSet<u64> = (hist.iter())
        .filter_map(|o| match o.kind {
            Kind::Read(v) => v,
            Kind::Cas { expect, .. } | Kind::CasFailed { expect, .. } => expect,
            Kind::Write(_) => None,
        })
        .collect();
    let rename = |v: Option<u64>| v.map(|v| if named.contains(&v) { v } else { ANONYMOUS });
    (hist.iter())
        .map(|o| {
            let kind = match o.kind {
                Kind::Write(v) => Kind::Write(rename(v)),
                Kind::Cas { expect, new } => Kind::Cas {
                    expect,
                    new: rename(new),
                },
                Kind::CasFailed { expect, new } => Kind::CasFailed {
                    expect,
                    new: rename(new),
                },
                Kind::Read(v) => Kind::Read(v),
            };
            Op { kind, ..o.clone() }
        })
        .collect()
}

/// The operations the search must consider: every completed one, and each
/// write of unknown outcome that some kept operation may have needed.
///
/// A write whose outcome is unknown may be left out of the linearization,
/// and it may be dropped before the search when no kept operation that
/// could be linearized after it (one that completed after its invocation,
/// or that has no completion either) may need its value
/// ([`Kind::may_need`]). Why that is sound: take a linearization of the
/// whole history and remove the dropped writes; every kept operation still
/// sees the value it saw, because the last write before it was kept (had it
/// been a dropped one, the operation would have needed its value, and so
/// kept it). Keeping such writes makes the search exponential in the number
/// of failed writes, and for deregistrations, reads of "absent" are common,
/// so the completion time matters. The rule is applied until nothing
/// changes, as a kept unknown CAS may need another unknown write.
fn relevant(hist: &[Op]) -> Vec<Op> {
    let mut keep: Vec<bool> = hist.iter().map(|o| o.complete.is_some()).collect();
    loop {
        let mut changed = false;
        for (i, w) in hist.iter().enumerate() {
            if keep[i] {
                continue;
            }
            let Some(v) = w.kind.written() else {
                continue;
            };
            let needed = hist.iter().enumerate().any(|(j, r)| {
                j != i && keep[j] && r.complete.is_none_or(|c| c > w.invoke) && r.kind.may_need(v)
            });
            if needed {
                keep[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    hist.iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(o, _)| o.clone())
        .collect()
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
        let Some(next) = op.kind.step(value) else {
            continue;
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
/// only when no remaining operation may need its value (a read of it, a CAS
/// that named it, a failed CAS it could explain), so the result never fails
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
            if let Some(v) = cur[i].kind.written() {
                let needed = (cur.iter().enumerate()).any(|(j, o)| j != i && o.kind.may_need(v));
                if needed {
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

    fn cas(expect: Option<u64>, new: Option<u64>) -> Kind {
        Kind::Cas { expect, new }
    }

    fn cas_failed(expect: Option<u64>, new: Option<u64>) -> Kind {
        Kind::CasFailed { expect, new }
    }

    #[test]
    fn a_true_cas_follows_the_write_it_named_and_a_false_one_is_explained() {
        // Read 1, CAS 1 -> 2, read 2.
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(10)),
            op(cas(Some(1), Some(2)), 20, Some(30)),
            op(Kind::Read(Some(2)), 40, Some(50)),
        ]));
        // A true CAS that completed before the write it named was sent.
        assert!(!linearizable(&[
            op(cas(Some(1), Some(2)), 0, Some(5)),
            op(Kind::Write(Some(1)), 10, Some(20)),
        ]));
        // A lost update: 1 was overwritten by 3 before the CAS was sent.
        assert!(!linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(Some(3)), 6, Some(8)),
            op(cas(Some(1), Some(2)), 10, Some(12)),
        ]));
        // Two true CASes from the same value: one of them lost an update.
        assert!(!linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(cas(Some(1), Some(2)), 10, Some(20)),
            op(cas(Some(1), Some(3)), 10, Some(20)),
        ]));
        // ?cas=0 creates only an absent key.
        assert!(linearizable(&[op(cas(None, Some(1)), 0, Some(5))]));
        assert!(!linearizable(&[
            op(Kind::Write(Some(5)), 0, Some(2)),
            op(cas(None, Some(1)), 3, Some(4)),
        ]));
        // A false CAS is explained by the write that came between...
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(Some(3)), 6, Some(8)),
            op(cas_failed(Some(1), Some(2)), 10, Some(12)),
        ]));
        // ... or by a concurrent one, or one whose answer never came ...
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(Some(3)), 9, Some(20)),
            op(cas_failed(Some(1), Some(2)), 10, Some(12)),
        ]));
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(Some(3)), 6, None),
            op(cas_failed(Some(1), Some(2)), 10, Some(12)),
        ]));
        // ... but not when the value it named was current all along.
        assert!(!linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(cas_failed(Some(1), Some(2)), 10, Some(12)),
            op(Kind::Read(Some(1)), 20, Some(22)),
        ]));
        // A CAS whose answer never came may have taken effect, or not.
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(cas(Some(1), Some(2)), 6, None),
            op(Kind::Read(Some(2)), 20, Some(22)),
        ]));
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(cas(Some(1), Some(2)), 6, None),
            op(Kind::Read(Some(1)), 20, Some(22)),
        ]));
    }

    #[test]
    fn delete_cas_of_a_missing_key_answers_true_as_consul_does() {
        // Absent from the start: a delete-cas naming any index is true.
        assert!(linearizable(&[
            op(Kind::Read(None), 0, Some(1)),
            op(cas(Some(7), None), 2, Some(3)),
        ]));
        // And false would be wrong.
        assert!(!linearizable(&[
            op(Kind::Read(None), 0, Some(1)),
            op(cas_failed(Some(7), None), 2, Some(3)),
        ]));
        // On a present key it deletes only the value it named.
        assert!(!linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(1)),
            op(cas(Some(7), None), 2, Some(3)),
        ]));
        assert!(linearizable(&[
            op(Kind::Write(Some(1)), 0, Some(1)),
            op(cas(Some(1), None), 2, Some(3)),
            op(Kind::Read(None), 4, Some(5)),
        ]));
    }

    #[test]
    fn unknown_writes_that_only_a_failed_cas_can_need_are_kept() {
        // The failed CAS is explained only by the write of 3, whose answer
        // never came and whose value no read returned: it must not be
        // dropped before the search.
        let hist = [
            op(Kind::Write(Some(1)), 0, Some(5)),
            op(Kind::Write(Some(3)), 6, None),
            op(cas_failed(Some(1), Some(2)), 10, Some(12)),
        ];
        assert_eq!(relevant(&hist).len(), 3);
        // A chain: an unknown CAS 3 -> 4 is needed by a read of 4, and it
        // needs the unknown write of 3.
        let hist = [
            op(Kind::Write(Some(3)), 0, None),
            op(cas(Some(3), Some(4)), 5, None),
            op(Kind::Read(Some(4)), 20, Some(21)),
        ];
        assert_eq!(relevant(&hist).len(), 3);
        assert!(linearizable(&hist));
        // Nobody needs the unknown write of 9.
        let hist = [
            op(Kind::Write(Some(9)), 0, None),
            op(Kind::Read(None), 20, Some(21)),
        ];
        assert_eq!(relevant(&hist).len(), 1);
    }

    #[test]
    fn many_unknown_writes_and_false_cases_stay_cheap_to_decide() {
        // Each false CAS could be explained by any of the 40 plain writes
        // whose answers never came and whose values nobody read: as distinct
        // values that is 2^40 subsets; renamed to one value, the search takes
        // them in order of invocation.
        let mut hist = vec![op(Kind::Write(Some(1)), 0, Some(5))];
        for i in 0..40 {
            let t = 10 + 10 * i;
            hist.push(op(Kind::Write(Some(100 + i)), t, None));
            hist.push(op(cas_failed(Some(1), Some(200 + i)), t + 1, Some(t + 5)));
        }
        hist.push(op(Kind::Read(Some(1)), 1_000, Some(1_010)));
        assert_eq!(verdict(&hist), Verdict::NotLinearizable);
        hist.pop();
        assert_eq!(verdict(&hist), Verdict::Linearizable);
        // Renaming keeps every value some operation names.
        let named = anonymised(&[
            op(Kind::Write(Some(7)), 0, Some(1)),
            op(Kind::Write(Some(8)), 0, Some(1)),
            op(Kind::Read(Some(7)), 2, Some(3)),
        ]);
        assert_eq!(named[0].kind, Kind::Write(Some(7)));
        assert_eq!(named[1].kind, Kind::Write(Some(ANONYMOUS)));
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
