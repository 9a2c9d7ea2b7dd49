//! The tables of the measurements that have their own (TLS, ACL, failover, r-nacos): each
//! one's rows from its own result type, in the shapes of [`super::format`].

use super::format::*;
use crate::scenarios::MemPoint;
use std::fmt::Write as _;

/// Measurement 9's table: TLS beside plain HTTP, and the cost as a ratio.
pub(super) fn tls_table(t: &crate::tls_cost::TlsCost) -> String {
    let c = crate::tls_cost::CLIENTS;
    let mut s = String::from(
        "| # | Benchmark (same machine, same run) | TLS | plain HTTP | TLS/plain |\n|---|---|---|---|---|\n",
    );
    for (what, tls, plain) in [
        (
            format!("register, {c} clients"),
            &t.register_tls,
            &t.register_plain,
        ),
        (
            format!("`?stale` lookup, {c} clients"),
            &t.stale_tls,
            &t.stale_plain,
        ),
    ] {
        let _ = writeln!(
            s,
            "| 9 | {what} (mutual TLS, verify-server-hostname) | {} | {} | {} |",
            cell(tls),
            cell(plain),
            ratio(tls, plain)
        );
    }
    s.push_str("\nGoal (issue [11]): TLS costs under 15 % throughput (ops/s ratio above 0.85x).\n");
    s
}

/// Measurement 12's table: ours beside r-nacos, ratios ours / r-nacos; the memory row takes
/// ours from measurement 5 (`ours`) at the same size.
pub(super) fn nacos_table(n: &crate::nacos::Nacos, ours: &[MemPoint]) -> String {
    let n = match n {
        crate::nacos::Nacos::Measured(n) => n,
        crate::nacos::Nacos::NotInstalled => {
            return "Measurement 12 (r-nacos side by side): **r-nacos not installed** (no `--rnacos-bin`; `scripts/bench.sh` installs it with `scripts/rnacos-bin.sh`), not run.\n".into();
        }
    };
    let mut s = String::from(
        "| # | Benchmark (same machine, same run) | Ours | r-nacos | Ours/r-nacos |\n|---|---|---|---|---|\n",
    );
    let nacos_reg = "r-nacos `POST /nacos/v1/ns/instance` (ephemeral)";
    for c in &n.register {
        let clients = format!(
            "{} client{}",
            c.clients,
            if c.clients == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            s,
            "| 12 | register `PUT /v1/catalog/register`, {clients} / {nacos_reg} | {} | {} | {} |",
            cell(&c.catalog),
            cell(&c.nacos),
            ratio(&c.catalog, &c.nacos)
        );
        let _ = writeln!(
            s,
            "| 12 | agent register `PUT /v1/agent/service/register` (3 agents), {clients} / {nacos_reg} | {} | {} | {} |",
            cell(&c.agent),
            cell(&c.nacos),
            ratio(&c.agent, &c.nacos)
        );
    }
    if !n.lookup_stale.is_empty() {
        let _ = writeln!(
            s,
            "| 12 | health lookup `?passing&stale` (3 instances), {} clients / r-nacos `GET /nacos/v1/ns/instance/list?healthyOnly=true` | {} | {} | {} |",
            n.lookup_clients,
            cell(&n.lookup_stale),
            cell(&n.lookup_nacos),
            ratio(&n.lookup_stale, &n.lookup_nacos)
        );
    }
    for m in &n.memory {
        let largest = m.rss.iter().copied().max().unwrap_or(0);
        let mine = ours.iter().find(|p| p.instances == m.instances);
        let (ours_cell, r) = match mine {
            Some(p) if largest > 0 => (
                format!(
                    "leader RSS **{}** (largest follower {}; measurement 5)",
                    mb(p.leader_rss),
                    mb(p.follower_rss)
                ),
                format!("{:.2}x", p.leader_rss as f64 / largest as f64),
            ),
            _ => ("measurement 5 not run".to_string(), "—".to_string()),
        };
        let rss: Vec<String> = m.rss.iter().map(|&b| mb(b)).collect();
        let held: Vec<String> = m.held.iter().map(|&h| thousands(h)).collect();
        let mut theirs = format!(
            "RSS per server **{}** (services held {}) · filled at {} registrations/s",
            rss.join(" / "),
            held.join(" / "),
            thousands(m.fill_rate.round() as u64)
        );
        if m.errors > 0 {
            let _ = write!(theirs, " · **{} failed registrations**", m.errors);
        }
        let _ = writeln!(
            s,
            "| 12 | memory at {} instances: our leader / r-nacos's largest server | {ours_cell} | {theirs} | {r} |",
            thousands(m.instances)
        );
    }
    s
}

/// Measurement 10's table: ACLs on beside ACLs off, the cost as a ratio, and the goal.
pub(super) fn acl_table(a: &crate::acl_cost::AclCost) -> String {
    let c = crate::acl_cost::CLIENTS;
    let mut s = String::from(
        "| # | Benchmark (same machine, same run) | ACLs on | ACLs off | on/off |\n|---|---|---|---|---|\n",
    );
    let rows = [
        (
            format!("register, {c} clients"),
            &a.register_on,
            &a.register_off,
        ),
        (
            format!("`?stale` lookup, {c} clients"),
            &a.stale_on,
            &a.stale_off,
        ),
    ];
    for (what, on, off) in &rows {
        let _ = writeln!(
            s,
            "| 10 | {what} (default deny, non-management token) | {} | {} | {} |",
            cell(on),
            cell(off),
            ratio(on, off)
        );
    }
    let goal = crate::acl_cost::GOAL_RATIO;
    let verdicts: Vec<String> = rows
        .iter()
        .filter(|(_, on, off)| !on.is_empty() && !off.is_empty())
        .map(|(what, on, off)| {
            let x = agg(on).ops / agg(off).ops.max(1e-9);
            if x >= goal {
                format!("{what} {x:.2}x: met")
            } else {
                format!("{what} {x:.2}x: **missed by {:.2}x**", goal - x)
            }
        })
        .collect();
    let _ = writeln!(
        s,
        "\nGoal (issue [12]): ACL resolution costs under 10 % throughput (ops/s ratio on/off at least {goal:.2}x): {}.",
        verdicts.join("; ")
    );
    s
}

/// Measurement 11's table: failover figures over the runs, and elections under load.
pub(super) fn failover_table(f: &crate::failover::Failover) -> String {
    use crate::failover::{leader_known_median, summary, STEADY_CLIENTS, WRITERS};
    let mut s = String::from(
        "| # | Failover (fresh 3-server cluster, SIGKILL of the leader) | Ours |\n|---|---|---|\n",
    );
    let (median, p90, max) = summary(f);
    let _ = writeln!(
        s,
        "| 11 | kill → first acknowledged write, {WRITERS} writers through all servers, {} runs | median **{}** · p90 {} · max {} |",
        f.runs.len(),
        ms(median),
        ms(p90),
        ms(max)
    );
    let known_max = f
        .runs
        .iter()
        .map(|r| r.leader_known)
        .max()
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "| 11 | kill → a surviving server names the new leader | median {} · max {} |",
        ms(leader_known_median(f)),
        ms(known_max)
    );
    let mut by_count = std::collections::BTreeMap::<u64, usize>::new();
    for r in &f.runs {
        *by_count.entry(r.elections).or_default() += 1;
    }
    let elections: Vec<String> = by_count
        .iter()
        .map(|(e, n)| format!("{e} in {n} run{}", if *n == 1 { "" } else { "s" }))
        .collect();
    let _ = writeln!(
        s,
        "| 11 | terms per failover (1: the first election won) | {} |",
        elections.join(", ")
    );
    let _ = writeln!(
        s,
        "| 11 | term changes during register at {STEADY_CLIENTS} clients for {:.0} s ({} ops/s{}) | **{}** |",
        f.steady_for.as_secs_f64(),
        thousands(f.steady.ops_per_s.round() as u64),
        if f.steady.errors > 0 {
            format!(", {} errors", f.steady.errors)
        } else {
            String::new()
        },
        f.steady_elections
    );
    let _ = writeln!(
        s,
        "\nRuns (kill → first write / → leader named): {}.",
        f.runs
            .iter()
            .map(|r| format!("{} / {}", ms(r.first_write), ms(r.leader_known)))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    s
}

/// Measurement 13's table: simulated agents, heartbeats alone and with check flips, and
/// silence → critical.
pub(super) fn agents_table(a: &crate::agents::Agents) -> String {
    let mut s = format!(
        "| # | {} simulated agents on a fresh 3-server cluster, heartbeats every 2 s, {:.0} s per phase | heartbeats alone | + {} check flips/s asked |\n|---|---|---|---|\n",
        thousands(a.agents as u64),
        a.window.as_secs_f64(),
        thousands(a.flips_target)
    );
    let (h, f) = (&a.heartbeats, &a.flips);
    type Cell = Box<dyn Fn(&crate::agents::Phase) -> String>;
    let rows: [(&str, Cell); 7] = [
        (
            "heartbeats answered/s (failed)",
            Box::new(|p| {
                format!(
                    "{} ({})",
                    thousands(p.heartbeats_per_s.round() as u64),
                    p.heartbeat_errors
                )
            }),
        ),
        ("heartbeat p99", Box::new(|p| ms(p.heartbeat_p99))),
        (
            "sender rounds over 2 s",
            Box::new(|p| p.late_rounds.to_string()),
        ),
        (
            "check flips acknowledged/s (failed)",
            Box::new(|p| {
                format!(
                    "{} ({})",
                    thousands(p.flips_per_s.round() as u64),
                    p.flip_errors
                )
            }),
        ),
        (
            "**Raft entries/s** (leader's commit index)",
            Box::new(|p| format!("**{:.1}**", p.raft_entries_per_s)),
        ),
        (
            "leader CPU (share of one core)",
            Box::new(|p| format!("{:.0}%", p.leader_cpu * 100.0)),
        ),
        (
            "all 3 servers' CPU",
            Box::new(|p| format!("{:.0}%", p.servers_cpu * 100.0)),
        ),
    ];
    for (what, f_) in rows.iter() {
        let _ = writeln!(s, "| 13 | {what} | {} | {} |", f_(h), f_(f));
    }
    let n = a.to_critical.len();
    let _ = writeln!(
        s,
        "| 13 | {} agents silenced: last heartbeat → serfHealth critical | median {} · max {}{} | bound {} |",
        n + a.never_critical,
        ms(a.to_critical.get(n / 2).copied().unwrap_or_default()),
        ms(a.to_critical.last().copied().unwrap_or_default()),
        if a.never_critical > 0 {
            format!(" · **{} never**", a.never_critical)
        } else {
            String::new()
        },
        ms(crate::agents::CRITICAL_BOUND)
    );
    s
}

/// Measurement 13's rows in the targets table (issue 20's "agents at scale").
pub(super) fn agents_targets(t: &mut String, a: &crate::agents::Agents) {
    let pass = |ok: bool, gap: String| {
        if ok {
            "PASS".to_string()
        } else {
            format!("**MISS**: {gap}")
        }
    };
    let (h, f) = (&a.heartbeats, &a.flips);
    // Heartbeats write nothing: what Raft carries then is the servers' own background work,
    // far below one entry per heartbeat.
    // At most one entry a second (the servers' own background work; 0.0 measured), with
    // heartbeats answered at all.
    let quiet = h.heartbeats_per_s > 0.0 && h.raft_entries_per_s <= 1.0;
    let _ = writeln!(
        t,
        "| {} agents heartbeating: Raft writes only on flips | {:.1} entries/s at {} heartbeats/s | {} |",
        thousands(a.agents as u64),
        h.raft_entries_per_s,
        thousands(h.heartbeats_per_s.round() as u64),
        pass(quiet, format!("{:.1} entries/s", h.raft_entries_per_s))
    );
    let kept = f.flips_per_s >= a.flips_target as f64 * 0.95 && f.flip_errors == 0;
    let bounded = f.raft_entries_per_s <= f.flips_per_s * 1.1 + h.raft_entries_per_s + 2.0;
    let _ = writeln!(
        t,
        "| {} check flips/s with them: every flip written, writes bounded by the flips | {:.0} flips/s, {:.0} entries/s, leader CPU {:.0}% | {} |",
        thousands(a.flips_target),
        f.flips_per_s,
        f.raft_entries_per_s,
        f.leader_cpu * 100.0,
        pass(
            kept && bounded,
            format!("{:.0} of {} flips/s, {} failed, {:.0} entries/s", f.flips_per_s, a.flips_target, f.flip_errors, f.raft_entries_per_s)
        )
    );
    // Every agent heard every 2 s: no failures, no late rounds, the full rate.
    let due = a.agents as f64 / crate::agents::HEARTBEAT_INTERVAL.as_secs_f64();
    let no_errors = h.heartbeat_errors + f.heartbeat_errors == 0
        && h.late_rounds + f.late_rounds == 0
        && h.heartbeats_per_s.min(f.heartbeats_per_s) >= 0.95 * due;
    let _ = writeln!(
        t,
        "| heartbeats of {} agents every 2 s, all answered, none late | {} failed, {} late rounds, {:.0} and {:.0} answered/s of {due:.0} due | {} |",
        thousands(a.agents as u64),
        h.heartbeat_errors + f.heartbeat_errors,
        h.late_rounds + f.late_rounds,
        h.heartbeats_per_s,
        f.heartbeats_per_s,
        pass(
            no_errors,
            format!("{} failed, {} late rounds", h.heartbeat_errors + f.heartbeat_errors, h.late_rounds + f.late_rounds)
        )
    );
    // Seen by a look every POLL: a node marked at the bound is seen up to POLL later.
    let max = a.to_critical.last().copied().unwrap_or_default();
    let bound = crate::agents::CRITICAL_BOUND + crate::agents::POLL;
    let within = a.never_critical == 0 && max <= bound;
    let _ = writeln!(
        t,
        "| a silent agent's node critical within its bound ({}, looked at every {}) | max {} over {} agents | {} |",
        ms(crate::agents::CRITICAL_BOUND),
        ms(crate::agents::POLL),
        ms(max),
        a.to_critical.len() + a.never_critical,
        pass(
            within,
            if a.never_critical > 0 {
                format!("{} never critical", a.never_critical)
            } else {
                format!(
                    "over by {}",
                    ms(max.saturating_sub(crate::agents::CRITICAL_BOUND))
                )
            }
        )
    );
}

/// Measurement 14's table: the catalog at 1,000,000 instances.
pub(super) fn scale_table(sc: &crate::scale::Scale) -> String {
    let mut s = String::from(
        "| # | Measurement 5's cluster filled on (256 clients, 10 instances per node) | Ours |\n|---|---|---|\n",
    );
    let _ = writeln!(
        s,
        "| 14 | memory and disk at {} instances | leader RSS **{}** (largest follower {}) · leader data dir {} · filled at {} registrations/s{} |",
        thousands(sc.point.instances),
        mb(sc.point.leader_rss),
        mb(sc.point.follower_rss),
        mb(sc.point.disk),
        thousands(sc.point.fill_rate.round() as u64),
        if sc.point.errors > 0 {
            format!(" · {} failed", sc.point.errors)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "| 14 | `GET /v1/snapshot` from the leader | {} in {} |",
        mb(sc.snapshot_bytes),
        ms(sc.snapshot_time)
    );
    let _ = writeln!(
        s,
        "| 14 | `?stale` health lookup, 64 clients, p99: before / while the snapshot is taken | {} / **{}** ({} / {} ops/s) |",
        ms(sc.lookups_before.p99),
        ms(sc.lookups_during.p99),
        thousands(sc.lookups_before.ops_per_s.round() as u64),
        thousands(sc.lookups_during.ops_per_s.round() as u64)
    );
    let _ = writeln!(
        s,
        "| 14 | follower stopped, {} writes missed, restarted: caught up (from the log, which is kept back to the last checkpoint: up to 2^20 entries at this size) | **{}** (HTTP up after {}) |",
        thousands(sc.recovery.missed_writes),
        ms(sc.recovery.caught_up),
        ms(sc.recovery.http_up)
    );
    s
}

/// Measurement 14's row in the targets table.
pub(super) fn scale_targets(t: &mut String, sc: &crate::scale::Scale) {
    let gb = 1024 * 1024 * 1024;
    let _ = writeln!(
        t,
        "| < 1 GB RSS at {} instances | leader {} | {} |",
        thousands(sc.point.instances),
        mb(sc.point.leader_rss),
        if sc.point.errors > 0 || sc.point.leader_rss == 0 {
            format!(
                "**not measured**: {} failed registrations, RSS read {}",
                sc.point.errors,
                mb(sc.point.leader_rss)
            )
        } else if sc.point.leader_rss < gb {
            "PASS".to_string()
        } else {
            format!("**MISS** by {}", mb(sc.point.leader_rss - gb))
        }
    );
}
