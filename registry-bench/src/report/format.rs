//! How the report writes a figure: medians over runs, durations, counts, cells and ratios.
//! One copy, used by the main table, the targets and each measurement's own table.

use crate::load::RunStats;
use crate::scenarios::SpreadRun;
use std::fmt::Write as _;
use std::time::Duration;

pub(super) fn median_f(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub(super) fn median_d(v: impl Iterator<Item = Duration>) -> Duration {
    Duration::from_secs_f64(median_f(v.map(|d| d.as_secs_f64()).collect()))
}

/// Medians over runs of one cell.
#[derive(Clone, Copy, Default)]
pub(super) struct Agg {
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    pub(super) ops: f64,
    pub(super) errors: u64,
}

pub(super) fn agg(runs: &[RunStats]) -> Agg {
    Agg {
        p50: median_d(runs.iter().map(|r| r.p50)),
        p99: median_d(runs.iter().map(|r| r.p99)),
        ops: median_f(runs.iter().map(|r| r.ops_per_s).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

pub(super) fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m < 10.0 {
        format!("{m:.2} ms")
    } else if m < 1000.0 {
        format!("{m:.1} ms")
    } else {
        format!("{:.2} s", m / 1000.0)
    }
}

pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The median over runs of the servers' CPU time per successful request, in µs.
pub(super) fn cpu_per_op(runs: &[RunStats]) -> String {
    cpu_us(runs, |r| r.cpu_per_op).map_or("not measured".into(), |v| format!("{v:.0} µs"))
}

/// The median over runs of `of` (a CPU time per request), in µs.
pub(super) fn cpu_us(runs: &[RunStats], of: impl Fn(&RunStats) -> Option<Duration>) -> Option<f64> {
    let v: Vec<f64> = (runs.iter())
        .filter_map(of)
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    (!v.is_empty()).then(|| median_f(v))
}

pub(super) fn cell(runs: &[RunStats]) -> String {
    if runs.is_empty() {
        return "not run".into();
    }
    let a = agg(runs);
    let mut s = format!(
        "p50 {} · p99 {} · {} ops/s",
        ms(a.p50),
        ms(a.p99),
        thousands(a.ops.round() as u64)
    );
    if runs.iter().any(|r| r.cpu_per_op.is_some()) {
        let _ = write!(s, " · server CPU {} per request", cpu_per_op(runs));
    }
    if a.errors > 0 {
        let first = runs
            .iter()
            .find_map(|r| r.first_error.clone())
            .unwrap_or_default();
        let _ = write!(
            s,
            " · **{} errors** (first: {})",
            a.errors,
            truncate(&first, 80)
        );
    }
    s
}

pub(super) fn truncate(s: &str, n: usize) -> String {
    let s = s.replace('|', "/").replace('\n', " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

pub(super) fn ratio(ours: &[RunStats], etcd: &[RunStats]) -> String {
    if ours.is_empty() || etcd.is_empty() {
        return "—".into();
    }
    let (o, e) = (agg(ours), agg(etcd));
    let r = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "—".into()
        }
    };
    format!(
        "ops/s {} · p50 {}",
        r(o.ops, e.ops),
        r(o.p50.as_secs_f64(), e.p50.as_secs_f64())
    )
}

pub(super) fn mb(b: u64) -> String {
    format!("{:.0} MB", b as f64 / (1024.0 * 1024.0))
}

pub(super) fn runs_list(v: impl Iterator<Item = Duration>) -> String {
    v.map(ms).collect::<Vec<_>>().join(" / ")
}

pub(super) fn spread_cell(sp: &SpreadRun) -> String {
    let mut s = format!(
        "{} answered · last answer {} after the first write ({} writes took {}) · largest server RSS {} while waiting",
        thousands(sp.answered as u64),
        ms(sp.last),
        thousands(sp.services as u64),
        ms(sp.writes),
        mb(sp.max_rss)
    );
    if sp.agents > 0 {
        let _ = write!(
            s,
            " · through {} client agents (largest RSS {}), which sent {} blocking queries to the servers and answered {} from another's",
            sp.agents,
            mb(sp.agent_rss),
            thousands(sp.upstream),
            thousands(sp.shared)
        );
    }
    if sp.early + sp.failed > 0 {
        let _ = write!(
            s,
            " · **{} failed, {} returned before the writes** (first: {})",
            sp.failed,
            sp.early,
            truncate(sp.first_error.as_deref().unwrap_or(""), 80)
        );
    }
    s
}
