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
