//! The properties, checked on what the run recorded.

use crate::history::{self, Kind, Op};
use crate::leaders::LeaderLog;
use crate::record::{lock, Recorder};
use std::fmt::Write as _;
use std::time::Duration;

/// How long shrinking a failing history may take before the full one has to do.
const SHRINK_LIMIT: Duration = Duration::from_secs(120);

/// One property's outcome: `Ok(detail)` or `Err(why it failed)`.
pub struct Property {
    /// What it claims.
    pub name: &'static str,
    /// Passed (with a detail) or failed (with the evidence).
    pub result: Result<String, String>,
}

/// No acknowledged write is lost: each key's final `?consistent` read (after
/// healing) returns the value of a write that no acknowledged write began
/// after. `finals` is None when the final reads could not be made.
pub fn no_lost_write(
    rec: &Recorder,
    ops: &[Op],
    finals: Option<&[(u32, Option<u64>)]>,
) -> Property {
    let name = "no acknowledged write lost (final ?consistent read of every key after healing)";
    let Some(finals) = finals else {
        return Property {
            name,
            result: Err("the final reads could not be made (no leader after healing?)".into()),
        };
    };
    let mut problems = String::new();
    for &(key, value) in finals {
        let on_key = || ops.iter().filter(move |o| o.key == key);
        // The last moment the final value can have been written; None: it
        // may have been written at any time (a write of unknown outcome).
        let writers: Vec<&Op> = on_key().filter(|o| o.kind == Kind::Write(value)).collect();
        if writers.is_empty() {
            let _ = writeln!(
                problems,
                "  k{key}: the final read returned {value:?}, which no client wrote"
            );
            continue;
        }
        let last = if writers.iter().any(|o| o.complete.is_none()) {
            u64::MAX
        } else {
            writers.iter().filter_map(|o| o.complete).max().unwrap_or(0)
        };
        let lost: Vec<&Op> = on_key()
            .filter(|o| matches!(o.kind, Kind::Write(_)) && o.kind != Kind::Write(value))
            .filter(|o| o.complete.is_some() && o.invoke > last)
            .collect();
        if !lost.is_empty() {
            let _ = writeln!(
                problems,
                "  k{key}: the final read returned {value:?} (written by {}), but these acknowledged writes began after that write had completed:",
                rec.note(writers[0])
            );
            for o in lost {
                let _ = writeln!(problems, "    {o}  {}", rec.note(o));
            }
        }
    }
    Property {
        name,
        result: if problems.is_empty() {
            Ok(format!("{} keys", finals.len()))
        } else {
            Err(problems)
        },
    }
}

/// Writes, default, `?consistent` and `?dc=dc1` reads are linearizable
/// (`history::check`, a WGL search per key).
pub fn linearizable(rec: &Recorder, ops: &[Op]) -> Property {
    let name = "linearizable: writes, default, ?consistent and ?dc=dc1 reads (WGL per key)";
    let owned = ops.to_vec();
    // The search recurses once per operation of a key's history: thousands
    // deep for a long run, far more than a default thread stack holds.
    let verdict = std::thread::Builder::new()
        .name("wgl".into())
        .stack_size(1 << 30)
        .spawn(move || history::check(&owned))
        .map_err(|e| e.to_string())
        .and_then(|h| h.join().map_err(|_| "the checker panicked".to_string()));
    let result = match verdict {
        Err(e) => Err(format!("could not run the checker: {e}")),
        Ok(Ok(())) => Ok(format!("{} operations", ops.len())),
        Ok(Err((key, mut hist))) => {
            hist.sort_by_key(|o| o.invoke);
            // Printed at once: shrinking re-runs the search many times and
            // may take long on a big history.
            println!(
                "lab-chaos: k{key} has no linearization; its history ({} operations):",
                hist.len()
            );
            for o in &hist {
                println!("    {o}  {}", rec.note(o));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("shrink".into())
                .stack_size(1 << 30)
                .spawn(move || tx.send(history::shrink(&hist)));
            let mut text = format!("  k{key} has no linearization (its history is printed above)");
            match spawned.map(|_| rx.recv_timeout(SHRINK_LIMIT)) {
                Ok(Ok(mut small)) => {
                    small.sort_by_key(|o| o.invoke);
                    let _ = writeln!(
                        text,
                        "; shrunk to {} operations that still fail:",
                        small.len()
                    );
                    for o in &small {
                        let _ = writeln!(text, "    {o}  {}", rec.note(o));
                    }
                }
                _ => {
                    let _ = writeln!(text, " (not shrunk within {SHRINK_LIMIT:?})");
                }
            }
            Err(text)
        }
    };
    Property { name, result }
}

/// `?stale` reads from one server never go backwards (per server and key).
pub fn stale_monotonic(rec: &Recorder) -> Property {
    let violations = lock(&rec.stale_violations).clone();
    let reads = lock(&rec.counts).reads_stale;
    Property {
        name: "?stale reads from one server never go backwards (X-Consul-Index per server and key)",
        result: if violations.is_empty() {
            Ok(format!("{reads} reads"))
        } else {
            Err(violations.iter().map(|v| format!("  {v}\n")).collect())
        },
    }
}

/// Never two leaders in one term.
pub fn one_leader_per_term(log: &LeaderLog) -> Property {
    let name = "never two leaders in one term (Stats.raft of /v1/agent/self, every 100 ms)";
    let split: Vec<String> = log
        .leaders
        .iter()
        .filter(|(_, who)| who.len() > 1)
        .map(|(term, who)| format!("  term {term}: {who:?}\n"))
        .collect();
    let result = if log.samples == 0 {
        // A property that cannot fail is not a check.
        Err(format!(
            "nothing to check: {} answers of /v1/agent/self had no Stats.raft.state/term",
            log.without_stats
        ))
    } else if !split.is_empty() {
        Err(split.concat())
    } else {
        let terms: Vec<String> = log
            .leaders
            .iter()
            .map(|(t, who)| {
                format!(
                    "{t}:{}",
                    who.iter().next().map(String::as_str).unwrap_or("")
                )
            })
            .collect();
        Ok(format!(
            "{} samples; leaders by term: {}",
            log.samples,
            terms.join(" ")
        ))
    };
    Property { name, result }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, kind: Kind, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            client,
            key: 0,
            kind,
            invoke,
            complete,
        }
    }

    /// Reset to None, then two acknowledged writes one after the other.
    fn two_writes() -> Vec<Op> {
        vec![
            op(9, Kind::Write(None), 0, Some(1)),
            op(0, Kind::Write(Some(1)), 10, Some(20)),
            op(1, Kind::Write(Some(2)), 30, Some(40)),
        ]
    }

    #[test]
    fn a_final_value_older_than_an_acknowledged_write_is_a_lost_write() {
        let rec = Recorder::new();
        let ops = two_writes();
        assert!(no_lost_write(&rec, &ops, Some(&[(0, Some(2))]))
            .result
            .is_ok());
        for lost in [Some(1), None] {
            assert!(no_lost_write(&rec, &ops, Some(&[(0, lost)]))
                .result
                .is_err());
        }
        // A value nobody wrote; no final reads at all.
        assert!(no_lost_write(&rec, &ops, Some(&[(0, Some(7))]))
            .result
            .is_err());
        assert!(no_lost_write(&rec, &ops, None).result.is_err());
        // A write of unknown outcome may land last.
        let mut late = ops.clone();
        late[1].complete = None;
        assert!(no_lost_write(&rec, &late, Some(&[(0, Some(1))]))
            .result
            .is_ok());
    }

    #[test]
    fn the_checker_is_the_shared_one_and_it_bites() {
        let rec = Recorder::new();
        let mut ops = two_writes();
        ops.push(op(2, Kind::Read(Some(2)), 50, Some(60)));
        assert!(linearizable(&rec, &ops).result.is_ok());
        ops.push(op(3, Kind::Read(Some(1)), 70, Some(80)));
        let failed = linearizable(&rec, &ops).result.unwrap_err();
        assert!(failed.contains("shrunk to"), "{failed}");
    }

    #[test]
    fn a_stale_index_going_back_on_one_server_is_caught() {
        let rec = Recorder::new();
        rec.stale_index(0, 1, 5);
        rec.stale_index(1, 1, 3); // another server may lag
        rec.stale_index(0, 2, 1); // another key has its own index
        assert!(stale_monotonic(&rec).result.is_ok());
        rec.stale_index(0, 1, 4);
        assert!(stale_monotonic(&rec).result.is_err());
    }

    #[test]
    fn two_leaders_in_a_term_or_no_samples_fail() {
        let mut log = LeaderLog::default();
        assert!(one_leader_per_term(&log).result.is_err(), "nothing sampled");
        log.samples = 10;
        log.leaders.entry(2).or_default().insert("a".into());
        log.leaders.entry(3).or_default().insert("b".into());
        assert!(one_leader_per_term(&log).result.is_ok());
        log.leaders.entry(3).or_default().insert("c".into());
        assert!(one_leader_per_term(&log).result.is_err());
    }
}
