//! The WAN member table: every gateway this gateway knows of, in every DC, with its liveness and
//! measured round-trip time. Pure state, no I/O: the gossip loop ([`crate::gossip`]) feeds it, the
//! router reads it, and the unit tests below drive it with explicit instants.
//!
//! Liveness follows the SWIM idea of "direct evidence only": a gateway counts as alive while this
//! gateway itself has reached it within `dead_after`. What peers say about a third gateway only adds
//! it to the table (with a grace period of `dead_after` from when we first heard of it), it never
//! refreshes liveness, so a dead gateway cannot be kept alive by rumours. For the same reason a
//! gateway passes on only the gateways it has itself reached within `dead_after`: a dead one is
//! not spread to gateways that never knew it, and once forgotten it is not brought back.
//!
//! The table is bounded ([`MAX_MEMBERS`], [`MAX_PER_DC`]; beyond them new rumours are ignored), a
//! dead gateway is probed only every `dead_probe_every`, and one not reached for
//! `reconnect_timeout` (Consul's `reconnect_timeout_wan`, 72 h by default) is forgotten: removed,
//! no longer probed nor listed. Entries whose address is not `host:port` or whose DC name is not
//! a DC name ([`registry_api::names`]) are never stored, so nothing a peer says ends up in a URL.

use registry_api::names::{check_datacenter, check_gateway_addr};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many RTT samples are kept per gateway; the median of them is its RTT (robust to one slow
/// probe, unlike the mean).
const RTT_SAMPLES: usize = 5;
/// Most gateways the table holds. A WAN has a handful of gateways per DC; the bound only stops a
/// misbehaving member from growing the table (and every exchange) without limit.
pub const MAX_MEMBERS: usize = 512;
/// Most gateways the table holds for one DC.
pub const MAX_PER_DC: usize = 64;
/// Most new gateways one exchange can add: a peer (or whoever holds the key) cannot fill the
/// table in one message.
pub const MAX_NEW_PER_MERGE: usize = 32;
/// Least time between two "table full" warnings.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// When the table gives up on a gateway, step by step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// A gateway not reached for this long is dead: skipped for routing, probed less often.
    pub dead_after: Duration,
    /// A dead gateway is probed at most once per this.
    pub dead_probe_every: Duration,
    /// A gateway not reached for this long is forgotten (Consul's `reconnect_timeout_wan`).
    pub reconnect_timeout: Duration,
}

/// One gateway as gateways tell each other about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// The gateway's datacenter.
    pub dc: String,
    /// Its advertised `host:port`.
    pub addr: String,
}

impl GatewayEntry {
    /// Checks what a peer says about a gateway before it is stored or used: the address is
    /// `host:port` and the DC a valid name ([`registry_api::names`]). The reason never quotes the input.
    pub fn check(&self) -> Result<(), String> {
        check_gateway_addr(&self.addr).map_err(|e| e.to_string())?;
        check_datacenter(&self.dc)
    }
}

/// What a gateway sends in an exchange and gets back: itself and everything it knows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WanView {
    /// The sender.
    #[serde(rename = "self")]
    pub me: GatewayEntry,
    /// Every other gateway the sender knows, alive or dead.
    pub members: Vec<GatewayEntry>,
}

/// One row of `GET /wan/v1/members`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The gateway's datacenter.
    pub dc: String,
    /// Its advertised `host:port`.
    pub addr: String,
    /// Whether it is used for routing (reached within `dead_after`, or heard of recently).
    pub alive: bool,
    /// Median measured round trip in milliseconds; `None` until it was reached once.
    pub rtt_ms: Option<f64>,
}

/// Where a request for a DC can go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The DC is not in the table.
    Unknown,
    /// The DC is known but all of its gateways are dead.
    Unreachable,
    /// Live gateways of the DC, best first.
    Gateways(Vec<String>),
}

/// What the table holds about one remote gateway.
#[derive(Clone, Debug)]
struct Member {
    /// Its datacenter.
    dc: String,
    /// When this gateway first heard of it; the start of its grace period.
    heard_at: Instant,
    /// When this gateway last completed an exchange with it.
    last_reached: Option<Instant>,
    /// When a request or an exchange to it last failed; a failure newer than `last_reached` sorts
    /// it after its healthy siblings without waiting for `dead_after`.
    last_failed: Option<Instant>,
    /// When the gossip loop last chose it as a probe target (dead gateways are probed rarely).
    last_probed: Option<Instant>,
    /// The latest round-trip samples, oldest first.
    rtts: VecDeque<Duration>,
}

impl Member {
    /// Time since the last evidence of it: since it was last reached, or first heard of.
    fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_reached.unwrap_or(self.heard_at))
    }

    /// Alive: reached by this gateway itself (a signed exchange) within `dead_after`. Only
    /// direct evidence counts: a gateway merely heard of is never routed to, never listed as a
    /// DC and never passed on, so nobody can point traffic (and the tokens it carries) at an
    /// address of their choosing by naming it in an exchange.
    fn alive(&self, now: Instant, dead_after: Duration) -> bool {
        self.last_reached
            .is_some_and(|r| now.saturating_duration_since(r) < dead_after)
    }

    /// Heard of within `dead_after` and never reached yet: probed every round until it answers.
    fn fresh(&self, now: Instant, dead_after: Duration) -> bool {
        self.last_reached.is_none() && now.saturating_duration_since(self.heard_at) < dead_after
    }

    /// Failed more recently than it was reached.
    fn suspect(&self) -> bool {
        match (self.last_failed, self.last_reached) {
            (Some(f), Some(r)) => f > r,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// The median of the RTT samples.
    fn rtt(&self) -> Option<Duration> {
        if self.rtts.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = self.rtts.iter().copied().collect();
        v.sort();
        Some(v[v.len() / 2])
    }
}

/// Every known gateway (other than this one), keyed by address.
#[derive(Debug)]
pub struct MemberTable {
    /// This gateway's own entry; never stored in `members`.
    me: GatewayEntry,
    /// When gateways are dead, probed rarely and forgotten.
    liveness: Liveness,
    /// Keyed by advertised address; a `BTreeMap` so views and listings are in a stable order.
    members: BTreeMap<String, Member>,
    /// When the table last warned that it is full (the warning is rate-limited).
    last_full_warning: Option<Instant>,
}

impl MemberTable {
    /// An empty table for the gateway `me`.
    pub fn new(me: GatewayEntry, liveness: Liveness) -> MemberTable {
        MemberTable {
            me,
            liveness,
            members: BTreeMap::new(),
            last_full_warning: None,
        }
    }

    /// This gateway's own entry.
    pub fn me(&self) -> &GatewayEntry {
        &self.me
    }

    /// Whether `addr` is in the table.
    pub fn contains(&self, addr: &str) -> bool {
        self.members.contains_key(addr)
    }

    /// Adds the gateways a peer told us about that we did not know yet. Known entries are left as
    /// they are: only a gateway itself is authoritative about its DC (see [`Self::record_reached`]).
    /// Entries that are not a valid address and DC name are ignored (logged at debug, without
    /// their text), and so are new ones beyond [`MAX_MEMBERS`] or [`MAX_PER_DC`].
    pub fn merge_heard(&mut self, entries: &[GatewayEntry], now: Instant) {
        // Counted once per merge, not once per entry: a view may be long.
        let mut per_dc: Option<HashMap<String, usize>> = None;
        let mut added = 0;
        for e in entries {
            if e.addr == self.me.addr || self.members.contains_key(&e.addr) {
                continue;
            }
            if added == MAX_NEW_PER_MERGE {
                tracing::debug!("ignoring the rest of a view with many new gateways");
                break;
            }
            if let Err(reason) = e.check() {
                tracing::debug!(%reason, "ignoring an invalid gateway entry");
                continue;
            }
            let per_dc = per_dc.get_or_insert_with(|| {
                let mut counts = HashMap::new();
                for m in self.members.values() {
                    *counts.entry(m.dc.clone()).or_insert(0) += 1;
                }
                counts
            });
            let in_dc = per_dc.entry(e.dc.clone()).or_insert(0);
            if self.members.len() >= MAX_MEMBERS || *in_dc >= MAX_PER_DC {
                if self
                    .last_full_warning
                    .is_none_or(|t| now.saturating_duration_since(t) >= FULL_WARNING_EVERY)
                {
                    self.last_full_warning = Some(now);
                    tracing::warn!(
                        members = self.members.len(),
                        max_members = MAX_MEMBERS,
                        max_per_dc = MAX_PER_DC,
                        "WAN member table full; ignoring newly heard gateways"
                    );
                }
                continue;
            }
            *in_dc += 1;
            added += 1;
            // Both fields passed `GatewayEntry::check`: a small alphabet, safe to log.
            tracing::info!(dc = %e.dc, addr = %e.addr, "learned of a gateway");
            self.members.insert(
                e.addr.clone(),
                Member {
                    dc: e.dc.clone(),
                    heard_at: now,
                    last_reached: None,
                    last_failed: None,
                    last_probed: None,
                    rtts: VecDeque::new(),
                },
            );
        }
    }

    /// Records a completed exchange with `peer` (its own description of itself) that took `rtt`.
    pub fn record_reached(&mut self, peer: &GatewayEntry, rtt: Duration, now: Instant) {
        if peer.addr == self.me.addr {
            return;
        }
        if let Err(reason) = peer.check() {
            tracing::debug!(%reason, "ignoring an answer with an invalid gateway entry");
            return;
        }
        if !self.members.contains_key(&peer.addr) {
            // Direct evidence beats rumours: a full table makes room for it.
            self.evict_for_direct_evidence(&peer.dc, now);
        }
        self.merge_heard(std::slice::from_ref(peer), now);
        let Some(m) = self.members.get_mut(&peer.addr) else {
            return;
        };
        if !m.alive(now, self.liveness.dead_after) {
            tracing::info!(dc = %peer.dc, addr = %peer.addr, "gateway is back");
        }
        if m.dc != peer.dc {
            tracing::warn!(addr = %peer.addr, old = %m.dc, new = %peer.dc, "gateway changed datacenter");
            m.dc = peer.dc.clone();
            m.rtts.clear();
        }
        m.last_reached = Some(now);
        if m.rtts.len() == RTT_SAMPLES {
            m.rtts.pop_front();
        }
        m.rtts.push_back(rtt);
    }

    /// Records that an exchange or a forwarded request to `addr` failed at the transport level.
    pub fn record_failure(&mut self, addr: &str, now: Instant) {
        if let Some(m) = self.members.get_mut(addr) {
            m.last_failed = Some(now);
        }
    }

    /// What this gateway tells its peers: itself and every gateway it has itself reached within
    /// `dead_after`. A dead gateway stays in this table (probed, and noticed when it returns) but
    /// is not spread: a peer that never knew it has no use for it, and a forgotten one is not
    /// brought back by a rumour.
    pub fn view(&self, now: Instant) -> WanView {
        WanView {
            me: self.me.clone(),
            members: self
                .members
                .iter()
                .filter(|(_, m)| m.alive(now, self.liveness.dead_after))
                .map(|(addr, m)| GatewayEntry {
                    dc: m.dc.clone(),
                    addr: addr.clone(),
                })
                .collect(),
        }
    }

    /// Every known gateway's address.
    pub fn addresses(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// The gateways to probe in this round: every live one, and a dead one only when it was not
    /// chosen within `dead_probe_every` (so a long-dead gateway costs one probe per that period).
    pub fn probe_targets(&mut self, now: Instant) -> Vec<String> {
        let liveness = self.liveness;
        let mut out = Vec::new();
        for (addr, m) in &mut self.members {
            let due = m.alive(now, liveness.dead_after)
                || m.fresh(now, liveness.dead_after)
                || m.last_probed
                    .is_none_or(|p| now.saturating_duration_since(p) >= liveness.dead_probe_every);
            if due {
                m.last_probed = Some(now);
                out.push(addr.clone());
            }
        }
        out
    }

    /// Forgets the gateways not reached for `reconnect_timeout`, and the ones never reached at
    /// all once they had time for a few probes ([`Self::unproven_for`]): a rumour that never
    /// answered must not hold a place in the table for days; returns how many.
    pub fn forget_long_dead(&mut self, now: Instant) -> usize {
        let before = self.members.len();
        let timeout = self.liveness.reconnect_timeout;
        let unproven = self.unproven_for();
        self.members.retain(|addr, m| {
            let limit = if m.last_reached.is_some() { timeout } else { unproven };
            let keep = m.silent_for(now) < limit;
            if !keep {
                tracing::info!(dc = %m.dc, %addr, ?timeout, "forgetting a gateway not reached for the reconnect timeout");
            }
            keep
        });
        before - self.members.len()
    }

    /// How long a gateway heard of but never reached is kept: its first `dead_after` of probes
    /// every round, then three of the rare probes of dead gateways.
    fn unproven_for(&self) -> Duration {
        (self.liveness.dead_after + self.liveness.dead_probe_every * 3)
            .min(self.liveness.reconnect_timeout)
    }

    /// Makes room for a gateway that answered us directly when the table is full: forgets the
    /// member with the oldest evidence among those never reached or dead. Returns false when
    /// every member is alive (then the newcomer waits).
    fn evict_for_direct_evidence(&mut self, dc: &str, now: Instant) -> bool {
        let dead_after = self.liveness.dead_after;
        let in_dc = self.members.values().filter(|m| m.dc == dc).count();
        let full = self.members.len() >= MAX_MEMBERS;
        let victim = self
            .members
            .iter()
            .filter(|(_, m)| !m.alive(now, dead_after))
            .filter(|(_, m)| full || m.dc == dc)
            .min_by_key(|(_, m)| {
                (
                    m.last_reached.is_some(),
                    m.last_reached.unwrap_or(m.heard_at),
                )
            })
            .map(|(addr, _)| addr.clone());
        match victim {
            Some(addr) if full || in_dc >= MAX_PER_DC => {
                self.members.remove(&addr);
                true
            }
            _ => !full && in_dc < MAX_PER_DC,
        }
    }

    /// All known DCs: the local one first, then the others by their best live gateway's RTT;
    /// DCs whose gateways were not measured yet come next, and DCs whose gateways are all dead
    /// last (still listed, as Consul lists a DC it cannot currently reach). Ties go by name.
    pub fn datacenters(&self, now: Instant) -> Vec<String> {
        // Per DC: (all dead, best RTT or none).
        let mut best: BTreeMap<&str, (bool, Option<Duration>)> = BTreeMap::new();
        for m in self.members.values() {
            // A DC is listed once one of its gateways answered us; rumours alone do not add one.
            if m.dc == self.me.dc || m.last_reached.is_none() {
                continue;
            }
            let entry = best.entry(m.dc.as_str()).or_insert((true, None));
            if m.alive(now, self.liveness.dead_after) {
                entry.0 = false;
                if let Some(rtt) = m.rtt() {
                    entry.1 = Some(entry.1.map_or(rtt, |b| b.min(rtt)));
                }
            }
        }
        let mut others: Vec<(&str, (bool, Option<Duration>))> = best.into_iter().collect();
        // `(dead, rtt.is_none(), rtt)` puts measured before unmeasured before dead; the stable
        // sort keeps name order among equals.
        others.sort_by_key(|(_, (dead, rtt))| (*dead, rtt.is_none(), *rtt));
        std::iter::once(self.me.dc.clone())
            .chain(others.into_iter().map(|(dc, _)| dc.to_owned()))
            .collect()
    }

    /// Where to send a request for `dc`: its live gateways, those that did not just fail first,
    /// then lowest RTT first (unmeasured after measured).
    pub fn route(&self, dc: &str, now: Instant) -> Route {
        let mut known = false;
        let mut live: Vec<(bool, bool, Option<Duration>, &str)> = Vec::new();
        for (addr, m) in &self.members {
            // As for the DC list: known once one of its gateways answered us.
            if m.dc != dc || m.last_reached.is_none() {
                continue;
            }
            known = true;
            if m.alive(now, self.liveness.dead_after) {
                let rtt = m.rtt();
                live.push((m.suspect(), rtt.is_none(), rtt, addr));
            }
        }
        if !known {
            return Route::Unknown;
        }
        if live.is_empty() {
            return Route::Unreachable;
        }
        live.sort();
        Route::Gateways(live.into_iter().map(|(.., a)| a.to_owned()).collect())
    }

    /// The table for humans and tests: this gateway first, then the others by address.
    pub fn statuses(&self, now: Instant) -> Vec<MemberStatus> {
        let me = MemberStatus {
            dc: self.me.dc.clone(),
            addr: self.me.addr.clone(),
            alive: true,
            rtt_ms: None,
        };
        std::iter::once(me)
            .chain(self.members.iter().map(|(addr, m)| MemberStatus {
                dc: m.dc.clone(),
                addr: addr.clone(),
                alive: m.alive(now, self.liveness.dead_after),
                rtt_ms: m.rtt().map(|d| d.as_secs_f64() * 1e3),
            }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dc: &str, addr: &str) -> GatewayEntry {
        GatewayEntry {
            dc: dc.into(),
            addr: addr.into(),
        }
    }

    const DEAD_AFTER: Duration = Duration::from_secs(5);
    const DEAD_PROBE_EVERY: Duration = Duration::from_secs(10);
    const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

    fn table() -> MemberTable {
        MemberTable::new(
            entry("dc1", "g1:8302"),
            Liveness {
                dead_after: DEAD_AFTER,
                dead_probe_every: DEAD_PROBE_EVERY,
                reconnect_timeout: RECONNECT_TIMEOUT,
            },
        )
    }

    #[test]
    fn heard_gateways_are_added_once_and_never_include_self() {
        let now = Instant::now();
        let mut t = table();
        t.merge_heard(&[entry("dc1", "g1:8302"), entry("dc2", "g2:8302")], now);
        t.merge_heard(&[entry("dc9", "g2:8302")], now);
        assert_eq!(t.addresses(), ["g2:8302"]);
        // A rumour does not change a known gateway's DC.
        assert_eq!(t.statuses(now)[1].dc, "dc2");
        assert_eq!(t.view(now).me, entry("dc1", "g1:8302"));
    }

    #[test]
    fn invalid_addresses_and_dc_names_are_never_stored() {
        let now = Instant::now();
        let mut t = table();
        t.merge_heard(
            &[
                entry("dc2", "evil/x?y#:1"),
                entry("dc2", "evil:1/x"),
                entry("dc2", "user@evil:1"),
                entry("dc2", "http://evil:1"),
                entry("dc2", "evil"),
                entry("dc2", ""),
                entry("dc 2", "ok:1"),
                entry("", "ok:1"),
                entry(&"d".repeat(65), "ok:1"),
                entry("dc2", "good:1"),
            ],
            now,
        );
        assert_eq!(t.addresses(), ["good:1"]);
        // Nor through a reply to our own probe.
        t.record_reached(&entry("dc/3", "good2:1"), Duration::from_millis(1), now);
        assert_eq!(t.addresses(), ["good:1"]);
    }

    #[test]
    fn the_table_is_bounded_in_total_and_per_dc() {
        let now = Instant::now();
        let mut t = table();
        let dc2: Vec<GatewayEntry> = (0..MAX_PER_DC + 10)
            .map(|i| entry("dc2", &format!("a{i}:1")))
            .collect();
        for chunk in dc2.chunks(MAX_NEW_PER_MERGE) {
            t.merge_heard(chunk, now);
        }
        assert_eq!(t.addresses().len(), MAX_PER_DC);
        // Another DC still has room.
        t.merge_heard(&[entry("dc3", "b:1")], now);
        assert!(t.contains("b:1"));
        // Fill the table up to its total bound with many DCs, then nothing more gets in.
        let many: Vec<GatewayEntry> = (0..MAX_MEMBERS)
            .map(|i| entry(&format!("x{}", i % 100), &format!("c{i}:1")))
            .collect();
        for chunk in many.chunks(MAX_NEW_PER_MERGE) {
            t.merge_heard(chunk, now);
        }
        assert_eq!(t.addresses().len(), MAX_MEMBERS);
        // A rumour does not get in...
        t.merge_heard(&[entry("dc4", "late:1")], now);
        assert!(!t.contains("late:1"));
        // ... a gateway that answered us does, in place of a rumour, and the bound holds.
        t.record_reached(&entry("dc4", "late:1"), Duration::from_millis(1), now);
        assert!(t.contains("late:1"));
        assert_eq!(t.addresses().len(), MAX_MEMBERS);
        assert_eq!(t.route("dc4", now), Route::Gateways(vec!["late:1".into()]));
    }

    #[test]
    fn dead_gateways_are_probed_rarely_then_forgotten() {
        let t0 = Instant::now();
        let mut t = table();
        t.record_reached(&entry("dc2", "a:1"), Duration::from_millis(1), t0);
        t.record_reached(&entry("dc3", "b:1"), Duration::from_millis(1), t0);
        let s = Duration::from_secs;
        // Both alive: probed every round.
        assert_eq!(t.probe_targets(t0 + s(1)), ["a:1", "b:1"]);
        assert_eq!(t.probe_targets(t0 + s(2)), ["a:1", "b:1"]);
        // b keeps answering; a is dead from t0 + 5 s and probed once per DEAD_PROBE_EVERY.
        let mut probed_a = Vec::new();
        for sec in 3..40 {
            let now = t0 + s(sec);
            t.record_reached(&entry("dc3", "b:1"), Duration::from_millis(1), now);
            let targets = t.probe_targets(now);
            assert!(targets.contains(&"b:1".to_owned()), "{sec}");
            if targets.contains(&"a:1".to_owned()) {
                probed_a.push(sec);
            }
        }
        // Alive until 4 s; dead from 5 s (last probed at 4 s), then every 10 s.
        assert_eq!(probed_a, [3, 4, 14, 24, 34]);
        // Dead members are kept (and route as unreachable) but not passed on.
        let now = t0 + s(40);
        t.record_reached(&entry("dc3", "b:1"), Duration::from_millis(1), now);
        assert_eq!(t.view(now).members, [entry("dc3", "b:1")]);
        assert_eq!(t.route("dc2", now), Route::Unreachable);
        // Forgotten once not reached for the reconnect timeout.
        assert_eq!(t.forget_long_dead(t0 + RECONNECT_TIMEOUT - s(1)), 0);
        assert!(t.contains("a:1"));
        assert_eq!(t.forget_long_dead(t0 + RECONNECT_TIMEOUT), 1);
        assert!(!t.contains("a:1"));
        assert!(t.contains("b:1"));
        assert_eq!(t.route("dc2", t0 + RECONNECT_TIMEOUT), Route::Unknown);
        assert!(!t
            .probe_targets(t0 + RECONNECT_TIMEOUT)
            .contains(&"a:1".to_owned()));
        // A gateway heard of and never reached is forgotten on the same clock.
        let later = t0 + RECONNECT_TIMEOUT;
        t.merge_heard(&[entry("dc5", "c:1")], later);
        assert_eq!(t.forget_long_dead(later + RECONNECT_TIMEOUT), 2);
    }

    #[test]
    fn only_gateways_reached_recently_are_passed_on() {
        let t0 = Instant::now();
        let mut t = table();
        t.merge_heard(&[entry("dc2", "heard:1")], t0);
        t.record_reached(&entry("dc3", "reached:1"), Duration::from_millis(1), t0);
        assert_eq!(t.view(t0).members, [entry("dc3", "reached:1")]);
        assert!(t.view(t0 + DEAD_AFTER).members.is_empty());
    }

    #[test]
    fn liveness_needs_direct_contact_within_dead_after() {
        let t0 = Instant::now();
        let mut t = table();
        t.merge_heard(&[entry("dc2", "g2:8302")], t0);
        // Heard of is not reached: no traffic goes to a rumour (whoever named it could have
        // named any address), and the DC is not known until one of its gateways answers.
        assert_eq!(t.route("dc2", t0), Route::Unknown);
        assert_eq!(t.datacenters(t0), ["dc1"]);
        assert_eq!(t.view(t0).members, []);
        let t1 = t0 + Duration::from_secs(1);
        t.record_reached(&entry("dc2", "g2:8302"), Duration::from_millis(3), t1);
        assert_eq!(t.route("dc2", t1), Route::Gateways(vec!["g2:8302".into()]));
        // Silent for dead_after: known but dead; hearing of it again does not revive it.
        let t2 = t1 + DEAD_AFTER;
        assert_eq!(t.route("dc2", t2), Route::Unreachable);
        t.merge_heard(&[entry("dc2", "g2:8302")], t2);
        assert_eq!(t.route("dc2", t2), Route::Unreachable);
        t.record_reached(&entry("dc2", "g2:8302"), Duration::from_millis(3), t2);
        assert!(matches!(t.route("dc2", t2), Route::Gateways(_)));
        assert_eq!(t.route("dc7", t0), Route::Unknown);
    }

    #[test]
    fn routes_prefer_healthy_then_low_rtt() {
        let now = Instant::now();
        let mut t = table();
        t.record_reached(&entry("dc2", "a:1"), Duration::from_millis(50), now);
        t.record_reached(&entry("dc2", "b:1"), Duration::from_millis(10), now);
        t.merge_heard(&[entry("dc2", "c:1")], now);
        let order = |t: &MemberTable| match t.route("dc2", now) {
            Route::Gateways(g) => g,
            other => panic!("{other:?}"),
        };
        // c:1 was only heard of: never routed to.
        assert_eq!(order(&t), ["b:1", "a:1"]);
        t.record_failure("b:1", now + Duration::from_millis(1));
        assert_eq!(order(&t), ["a:1", "b:1"]);
        let later = now + Duration::from_millis(2);
        t.record_reached(&entry("dc2", "b:1"), Duration::from_millis(10), later);
        assert_eq!(order(&t), ["b:1", "a:1"]);
    }

    #[test]
    fn rtt_is_the_median_of_recent_samples() {
        let now = Instant::now();
        let mut t = table();
        for ms in [10, 500, 12, 11, 9, 13] {
            t.record_reached(&entry("dc2", "a:1"), Duration::from_millis(ms), now);
        }
        // The first sample (10) was dropped; median of [500, 12, 11, 9, 13] is 12.
        assert_eq!(t.statuses(now)[1].rtt_ms, Some(12.0));
    }

    #[test]
    fn datacenters_local_first_then_rtt_then_unmeasured_then_dead() {
        let t0 = Instant::now();
        let mut t = table();
        t.record_reached(&entry("dc1", "g1b:1"), Duration::from_millis(1), t0);
        t.record_reached(&entry("dc2", "a:1"), Duration::from_millis(80), t0);
        t.record_reached(&entry("dc3", "b:1"), Duration::from_millis(20), t0);
        t.record_reached(&entry("adead", "d:1"), Duration::from_millis(1), t0);
        let later = t0 + DEAD_AFTER;
        t.record_reached(&entry("dc2", "a:1"), Duration::from_millis(80), later);
        t.record_reached(&entry("dc3", "b:1"), Duration::from_millis(20), later);
        t.merge_heard(&[entry("dc4", "c:1")], later);
        // dc4 was only heard of: not listed until one of its gateways answers.
        assert_eq!(t.datacenters(later), ["dc1", "dc3", "dc2", "adead"]);
    }

    #[test]
    fn a_gateway_is_authoritative_about_its_own_dc() {
        let now = Instant::now();
        let mut t = table();
        t.merge_heard(&[entry("dc2", "a:1")], now);
        t.record_reached(&entry("dc3", "a:1"), Duration::from_millis(1), now);
        assert_eq!(t.route("dc2", now), Route::Unknown);
        assert_eq!(t.route("dc3", now), Route::Gateways(vec!["a:1".into()]));
    }

    #[test]
    fn rumours_that_never_answer_are_forgotten_and_make_room_for_gateways_that_do() {
        let t0 = Instant::now();
        let mut t = table();
        // Fill the table with rumours, in exchanges of at most MAX_NEW_PER_MERGE each.
        let junk: Vec<GatewayEntry> = (0..MAX_MEMBERS * 2)
            .map(|i| {
                entry(
                    &format!("junk{}", i % 100),
                    &format!("10.9.{}.{}:8302", i / 250, i % 250),
                )
            })
            .collect();
        t.merge_heard(&junk, t0);
        assert_eq!(
            t.addresses().len(),
            MAX_NEW_PER_MERGE,
            "one exchange adds a bounded number"
        );
        for chunk in junk.chunks(MAX_NEW_PER_MERGE) {
            t.merge_heard(chunk, t0);
        }
        assert_eq!(t.addresses().len(), MAX_MEMBERS);
        assert_eq!(t.datacenters(t0), ["dc1"], "rumours list no DC");
        // A real gateway answers a probe: it gets a place at once, full table or not.
        t.record_reached(&entry("dc2", "real:8302"), Duration::from_millis(2), t0);
        assert!(t.contains("real:8302"));
        assert_eq!(t.datacenters(t0), ["dc1", "dc2"]);
        // Rumours that never answered are gone after a few rare probes, not after 72 h.
        let later = t0 + t.unproven_for();
        t.record_reached(&entry("dc2", "real:8302"), Duration::from_millis(2), later);
        t.forget_long_dead(later);
        assert_eq!(t.addresses(), ["real:8302"]);
    }
}
