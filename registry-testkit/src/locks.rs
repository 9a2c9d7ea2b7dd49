//! A recorded history of clients taking one KV lock with sessions
//! (`PUT /v1/kv/<key>?acquire=<session>`, Consul's leader-election recipe)
//! and the checks that the server kept the lock's promises, for
//! registry-server's `tests/chaos.rs`.
//!
//! What a lock client records, and why each record can be trusted:
//!
//! - [`Hold`]: one stretch during which a client believed it held the lock,
//!   from the answer `true` to its acquire (or a read showing its session as
//!   the holder) until it sent its release, saw the lock gone, or its lease
//!   ran out. Its **lease** ends one effective TTL after it *sent* the last
//!   renewal (or the create) that was answered: the server stamps a renewal
//!   with the leader's clock when it appends it, after the client sent it,
//!   and expires a session no earlier than that stamp plus the effective TTL
//!   (`leader/sessions.rs`). A client acts on the lock only before its lease
//!   ends, and never after sending its release.
//! - [`LockObservation`]: the lock key's `(ModifyIndex, LockIndex, Session)`
//!   as a read returned it (after every acquire, and now and then by clients
//!   that were refused).
//! - [`Gone`]: a moment the server said a session no longer existed (a renew
//!   answered 404, an acquire 400 `invalid session`, a read of the lock that
//!   no longer shows the session that believed it held it).
//! - The data chain: while holding, a client reads `lock-data` and writes it
//!   back with `?cas=<its ModifyIndex>`, appending a [`Segment`] naming
//!   itself, the `LockIndex` it holds and a counter. CAS makes the value an
//!   append-only log of the successful writes in the order they applied.
//!
//! The checks ([`check`]), each of which a broken server can fail:
//!
//! 1. **One holder per acquisition, at the Raft index level**: observations
//!    with the same `ModifyIndex` agree; ordered by `ModifyIndex`, the
//!    `LockIndex` never goes down; one `LockIndex` is only ever held by one
//!    session; once released (no session) at a `LockIndex`, the key is not
//!    held again without a new `LockIndex`. Two sessions holding the key at
//!    overlapping index ranges fail one of these.
//! 2. **Lock-delay, and no overlapping holders in time**: a hold that began
//!    after another hold began must begin at or after that one's release was
//!    sent, or, when it was never released (the holder crashed, was cut off,
//!    or saw its session go), at or after its lease end plus the lock-delay.
//!    The server grants the lock only after a release it received, or after
//!    invalidating the session (no earlier than the lease end) and then
//!    refusing acquires for the lock-delay (both stamped with the leader's
//!    clock, which is the client's clock in an in-process cluster). So every action of
//!    the old holder, all sent before its lease ended, had the lock-delay to
//!    land before anyone else could hold the lock.
//! 3. **No session is invalidated before its TTL**: every [`Gone`] is at or
//!    after that session's lease end.
//! 4. **The data's writers never interleave**: along the chain, `LockIndex`
//!    never goes down and each `LockIndex` has one writer, who is the session
//!    the lock key showed at that `LockIndex`; and every write answered
//!    `true` is in the chain (an acknowledged write is never lost).
//!
//! Times are wall-clock milliseconds since the epoch (the clock the server
//! stamps its entries with), compared with a small [`TOLERANCE_MS`] for
//! the servers' truncation to whole milliseconds.
//!
//! Owns: the records and the checks. Must not touch: how a client takes the
//! lock (the test does that) or any server code.

use std::collections::{BTreeMap, BTreeSet};

/// Slack when comparing a client's clock readings with the servers' stamps
/// (both truncated to whole milliseconds, read a few microseconds apart).
pub const TOLERANCE_MS: u64 = 5;

/// One stretch during which a client believed it held the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The client and its session, as written into the data chain (`"2.5"`:
    /// client 2, its fifth session).
    pub holder: String,
    /// The session's ID.
    pub session: String,
    /// The `LockIndex` a read showed while the client held the lock, if one
    /// did.
    pub lock_index: Option<u64>,
    /// When the client began to believe it held the lock (ms since the epoch).
    pub start: u64,
    /// When it sent its release, if it did.
    pub released: Option<u64>,
    /// Its lease end when the hold ended: an effective TTL after it sent the
    /// last renewal (or the create) that was answered.
    pub lease_end: u64,
}

/// The lock key as one read returned it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockObservation {
    /// The key's `ModifyIndex`.
    pub modify_index: u64,
    /// Its `LockIndex`.
    pub lock_index: u64,
    /// The holding session, empty when none.
    pub session: String,
}

/// The server said a session no longer existed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    /// The client and session, as in [`Hold::holder`].
    pub holder: String,
    /// When the answer that said so arrived (ms since the epoch).
    pub seen_at: u64,
    /// The session's lease end at that moment.
    pub lease_end: u64,
}

/// One write in the data chain: who wrote it, under which `LockIndex`, and
/// its number among that writer's writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    /// As in [`Hold::holder`].
    pub holder: String,
    /// The `LockIndex` the writer held.
    pub lock_index: u64,
    /// The writer's counter.
    pub n: u64,
}

impl Segment {
    /// The segment as it is appended to the chain's value.
    pub fn encode(&self) -> String {
        format!("{}/{}/{};", self.holder, self.lock_index, self.n)
    }
}

/// The segments of a chain's value, in order; an unreadable segment is an
/// error naming it.
pub fn parse_chain(value: &str) -> Result<Vec<Segment>, String> {
    value
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut parts = s.split('/');
            let (Some(holder), Some(l), Some(n), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("unreadable segment {s:?}"));
            };
            Ok(Segment {
                holder: holder.to_string(),
                lock_index: l.parse().map_err(|_| format!("bad LockIndex in {s:?}"))?,
                n: n.parse().map_err(|_| format!("bad counter in {s:?}"))?,
            })
        })
        .collect()
}

/// Everything the lock clients recorded.
#[derive(Clone, Debug, Default)]
pub struct LockHistory {
    /// Every hold.
    pub holds: Vec<Hold>,
    /// Every read of the lock key.
    pub observations: Vec<LockObservation>,
    /// Every time a session was found gone.
    pub gone: Vec<Gone>,
    /// The data chain as the final linearizable read returned it.
    pub chain: Vec<Segment>,
    /// Data writes answered `true`.
    pub acked: Vec<Segment>,
    /// Holder name -> session ID.
    pub sessions: BTreeMap<String, String>,
}

/// Runs every check; returns the violations found (empty: none).
pub fn check(h: &LockHistory, lock_delay_ms: u64) -> Vec<String> {
    let mut problems = Vec::new();
    check_observations(&h.observations, &mut problems);
    check_holds(&h.holds, lock_delay_ms, &mut problems);
    for g in &h.gone {
        if g.seen_at + TOLERANCE_MS < g.lease_end {
            problems.push(format!(
                "session of {} was gone {} ms before its lease ended (TTL not honoured)",
                g.holder,
                g.lease_end - g.seen_at
            ));
        }
    }
    check_chain(h, &mut problems);
    problems
}

/// Check 1 of the module comment.
fn check_observations(obs: &[LockObservation], problems: &mut Vec<String>) {
    let mut by_index: BTreeMap<u64, &LockObservation> = BTreeMap::new();
    for o in obs {
        match by_index.get(&o.modify_index) {
            Some(seen) if *seen != o => problems.push(format!(
                "two different lock entries at ModifyIndex {}: {seen:?} and {o:?}",
                o.modify_index
            )),
            Some(_) => {}
            None => {
                by_index.insert(o.modify_index, o);
            }
        }
    }
    let mut holder_of: BTreeMap<u64, &str> = BTreeMap::new();
    let mut released_at: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last: Option<&LockObservation> = None;
    for (m, o) in &by_index {
        if let Some(prev) = last.filter(|p| p.lock_index > o.lock_index) {
            problems.push(format!(
                "LockIndex went down from {} (ModifyIndex {}) to {} (ModifyIndex {m})",
                prev.lock_index, prev.modify_index, o.lock_index
            ));
        }
        last = Some(o);
        if o.session.is_empty() {
            released_at.entry(o.lock_index).or_insert(*m);
            continue;
        }
        match holder_of.get(&o.lock_index) {
            Some(s) if *s != o.session => problems.push(format!(
                "two sessions held LockIndex {}: {s} and {} (at ModifyIndex {m})",
                o.lock_index, o.session
            )),
            _ => {
                holder_of.insert(o.lock_index, &o.session);
            }
        }
        if let Some(r) = released_at.get(&o.lock_index) {
            problems.push(format!(
                "LockIndex {} was released at ModifyIndex {r} and held again by {} at {m} \
                 without a new LockIndex",
                o.lock_index, o.session
            ));
        }
    }
}

/// Check 2 of the module comment.
fn check_holds(holds: &[Hold], lock_delay_ms: u64, problems: &mut Vec<String>) {
    let mut sorted: Vec<&Hold> = holds.iter().collect();
    sorted.sort_by_key(|h| h.start);
    for (i, a) in sorted.iter().enumerate() {
        let free_after = match a.released {
            Some(r) => r.min(a.lease_end + lock_delay_ms),
            None => a.lease_end + lock_delay_ms,
        };
        for b in &sorted[i + 1..] {
            if b.start + TOLERANCE_MS >= free_after {
                continue;
            }
            let why = if a.released.is_some_and(|r| b.start < r) || b.start < a.lease_end {
                "while the earlier holder still held it"
            } else {
                "inside the lock-delay after the earlier holder's lease ended"
            };
            problems.push(format!(
                "{} acquired the lock at {} ms, {why} ({} from {} ms, released {:?}, lease end {} ms, \
                 lock-delay {lock_delay_ms} ms)",
                b.holder, b.start, a.holder, a.start, a.released, a.lease_end
            ));
        }
    }
}

/// Check 4 of the module comment.
fn check_chain(h: &LockHistory, problems: &mut Vec<String>) {
    let observed: BTreeMap<u64, &str> = (h.observations.iter())
        .filter(|o| !o.session.is_empty())
        .map(|o| (o.lock_index, o.session.as_str()))
        .collect();
    let mut writer_of: BTreeMap<u64, &str> = BTreeMap::new();
    let mut prev: Option<&Segment> = None;
    for s in &h.chain {
        if let Some(p) = prev.filter(|p| p.lock_index > s.lock_index) {
            problems.push(format!(
                "lock-data: {} (LockIndex {}) wrote after {} (LockIndex {}): two holders interleaved",
                s.holder, s.lock_index, p.holder, p.lock_index
            ));
        }
        prev = Some(s);
        match writer_of.get(&s.lock_index) {
            Some(w) if *w != s.holder => problems.push(format!(
                "lock-data: {w} and {} both wrote under LockIndex {}",
                s.holder, s.lock_index
            )),
            _ => {
                writer_of.insert(s.lock_index, &s.holder);
            }
        }
        let session = h.sessions.get(&s.holder).map(String::as_str);
        if let (Some(held), Some(mine)) = (observed.get(&s.lock_index), session) {
            if *held != mine {
                problems.push(format!(
                    "lock-data: {} wrote under LockIndex {}, which session {held} held",
                    s.holder, s.lock_index
                ));
            }
        }
    }
    let chain: BTreeSet<&Segment> = h.chain.iter().collect();
    for a in &h.acked {
        if !chain.contains(a) {
            problems.push(format!(
                "lock-data: the write {} was answered true and is not in the final value",
                a.encode()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(holder: &str, start: u64, released: Option<u64>, lease_end: u64) -> Hold {
        Hold {
            holder: holder.into(),
            session: format!("s-{holder}"),
            lock_index: None,
            start,
            released,
            lease_end,
        }
    }

    fn obs(modify_index: u64, lock_index: u64, session: &str) -> LockObservation {
        LockObservation {
            modify_index,
            lock_index,
            session: session.into(),
        }
    }

    fn seg(holder: &str, lock_index: u64, n: u64) -> Segment {
        Segment {
            holder: holder.into(),
            lock_index,
            n,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = LockHistory {
            holds: vec![
                hold("a", 1_000, Some(1_500), 3_000),
                hold("b", 1_600, None, 2_600),
                // After b's lease end plus the 1 s lock-delay.
                hold("c", 3_600, Some(3_700), 5_000),
            ],
            observations: vec![
                obs(10, 1, "s-a"),
                obs(12, 1, ""),
                obs(13, 2, "s-b"),
                obs(20, 2, ""),
                obs(21, 3, "s-c"),
            ],
            gone: vec![Gone {
                holder: "b".into(),
                seen_at: 2_700,
                lease_end: 2_600,
            }],
            chain: vec![
                seg("a", 1, 0),
                seg("a", 1, 1),
                seg("b", 2, 0),
                seg("c", 3, 0),
            ],
            acked: vec![seg("a", 1, 1), seg("c", 3, 0)],
            sessions: BTreeMap::new(),
        };
        for x in ["a", "b", "c"] {
            h.sessions.insert(x.into(), format!("s-{x}"));
        }
        assert_eq!(check(&h, 1_000), Vec::<String>::new());
        let value: String = h.chain.iter().map(Segment::encode).collect();
        assert_eq!(parse_chain(&value).unwrap(), h.chain);
        assert!(parse_chain("a/1;").is_err());
    }

    #[test]
    fn each_check_can_fail() {
        let fails = |h: &LockHistory, what: &str| {
            let p = check(h, 1_000);
            assert!(p.iter().any(|p| p.contains(what)), "{what}: {p:?}");
        };
        // Two sessions at one LockIndex; a re-hold without a new LockIndex;
        // a LockIndex going down; two entries at one ModifyIndex.
        let mut h = LockHistory {
            observations: vec![obs(10, 1, "x"), obs(11, 1, "y")],
            ..Default::default()
        };
        fails(&h, "two sessions held LockIndex 1");
        h.observations = vec![obs(10, 1, "x"), obs(11, 1, ""), obs(12, 1, "x")];
        fails(&h, "without a new LockIndex");
        h.observations = vec![obs(10, 2, "x"), obs(11, 1, "y")];
        fails(&h, "LockIndex went down");
        h.observations = vec![obs(10, 2, "x"), obs(10, 2, "")];
        fails(&h, "two different lock entries");

        // Holders overlapping, and one let in inside the lock-delay.
        let mut h = LockHistory {
            holds: vec![
                hold("a", 1_000, Some(2_000), 3_000),
                hold("b", 1_500, None, 4_000),
            ],
            ..Default::default()
        };
        fails(&h, "while the earlier holder still held it");
        h.holds = vec![hold("a", 1_000, None, 3_000), hold("b", 3_500, None, 6_000)];
        fails(&h, "inside the lock-delay");
        // A release lets the next holder in at once; no release, only after
        // the lease and the delay.
        h.holds = vec![
            hold("a", 1_000, Some(2_000), 3_000),
            hold("b", 2_001, None, 6_000),
        ];
        assert!(check(&h, 1_000).is_empty());
        h.holds = vec![hold("a", 1_000, None, 3_000), hold("b", 4_000, None, 6_000)];
        assert!(check(&h, 1_000).is_empty());

        // A session gone before its lease ended.
        let h = LockHistory {
            gone: vec![Gone {
                holder: "a".into(),
                seen_at: 1_000,
                lease_end: 2_000,
            }],
            ..Default::default()
        };
        fails(&h, "TTL not honoured");

        // Interleaved writers, two writers under one LockIndex, a writer
        // that did not hold the LockIndex it named, a lost write.
        let mut h = LockHistory {
            chain: vec![seg("a", 1, 0), seg("b", 2, 0), seg("a", 1, 1)],
            ..Default::default()
        };
        fails(&h, "two holders interleaved");
        h.chain = vec![seg("a", 1, 0), seg("b", 1, 0)];
        fails(&h, "both wrote under LockIndex 1");
        h.chain = vec![seg("a", 1, 0)];
        h.observations = vec![obs(10, 1, "s-b")];
        h.sessions.insert("a".into(), "s-a".into());
        fails(&h, "which session s-b held");
        h.observations.clear();
        h.acked = vec![seg("a", 1, 0), seg("a", 1, 1)];
        fails(&h, "a/1/1; was answered true and is not in the final value");
    }
}
