//! The WAN member table: every gateway this gateway knows of, in every DC, with its liveness and
//! measured round-trip time. Pure state, no I/O: the gossip loop ([`crate::gossip`]) feeds it, the
//! router reads it, and the unit tests below drive it with explicit instants.
//!
//! Liveness follows the SWIM idea of "direct evidence only": a gateway counts as alive while this
//! gateway itself has reached it within `dead_after`. What peers say about a third gateway only adds
//! it to the table (with a grace period of `dead_after` from when we first heard of it), it never
//! refreshes liveness, so a dead gateway cannot be kept alive by rumours.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How many RTT samples are kept per gateway; the median of them is its RTT (robust to one slow
/// probe, unlike the mean).
const RTT_SAMPLES: usize = 5;

/// One gateway as gateways tell each other about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// The gateway's datacenter.
    pub dc: String,
    /// Its advertised `host:port`.
    pub addr: String,
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
    /// The latest round-trip samples, oldest first.
    rtts: VecDeque<Duration>,
}

impl Member {
    /// Alive: reached within `dead_after`, or never reached but heard of within `dead_after`.
    fn alive(&self, now: Instant, dead_after: Duration) -> bool {
        let since = self.last_reached.unwrap_or(self.heard_at);
        now.saturating_duration_since(since) < dead_after
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
    /// A gateway not reached for this long is dead.
    dead_after: Duration,
    /// Keyed by advertised address; a `BTreeMap` so views and listings are in a stable order.
    members: BTreeMap<String, Member>,
}

impl MemberTable {
    /// An empty table for the gateway `me`.
    pub fn new(me: GatewayEntry, dead_after: Duration) -> MemberTable {
        MemberTable {
            me,
            dead_after,
            members: BTreeMap::new(),
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
    pub fn merge_heard(&mut self, entries: &[GatewayEntry], now: Instant) {
        for e in entries {
            if e.addr == self.me.addr || e.addr.is_empty() || e.dc.is_empty() {
                continue;
            }
            if !self.members.contains_key(&e.addr) {
                tracing::info!(dc = %e.dc, addr = %e.addr, "learned of a gateway");
                self.members.insert(
                    e.addr.clone(),
                    Member {
                        dc: e.dc.clone(),
                        heard_at: now,
                        last_reached: None,
                        last_failed: None,
                        rtts: VecDeque::new(),
                    },
                );
            }
        }
    }

    /// Records a completed exchange with `peer` (its own description of itself) that took `rtt`.
    pub fn record_reached(&mut self, peer: &GatewayEntry, rtt: Duration, now: Instant) {
        if peer.addr == self.me.addr {
            return;
        }
        self.merge_heard(std::slice::from_ref(peer), now);
        let Some(m) = self.members.get_mut(&peer.addr) else {
            return;
        };
        if !m.alive(now, self.dead_after) {
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

    /// What this gateway tells its peers: itself and every gateway it knows, dead ones included
    /// (a dead gateway stays listed so that it is probed and noticed when it returns).
    pub fn view(&self) -> WanView {
        WanView {
            me: self.me.clone(),
            members: self
                .members
                .iter()
                .map(|(addr, m)| GatewayEntry {
                    dc: m.dc.clone(),
                    addr: addr.clone(),
                })
                .collect(),
        }
    }

    /// Every known gateway's address, the ones the gossip loop probes.
    pub fn addresses(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// All known DCs: the local one first, then the others by their best live gateway's RTT;
    /// DCs whose gateways were not measured yet come next, and DCs whose gateways are all dead
    /// last (still listed, as Consul lists a DC it cannot currently reach). Ties go by name.
    pub fn datacenters(&self, now: Instant) -> Vec<String> {
        // Per DC: (all dead, best RTT or none).
        let mut best: BTreeMap<&str, (bool, Option<Duration>)> = BTreeMap::new();
        for m in self.members.values() {
            if m.dc == self.me.dc {
                continue;
            }
            let entry = best.entry(m.dc.as_str()).or_insert((true, None));
            if m.alive(now, self.dead_after) {
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
            if m.dc != dc {
                continue;
            }
            known = true;
            if m.alive(now, self.dead_after) {
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
                alive: m.alive(now, self.dead_after),
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

    fn table() -> MemberTable {
        MemberTable::new(entry("dc1", "g1:8302"), DEAD_AFTER)
    }

    #[test]
    fn heard_gateways_are_added_once_and_never_include_self() {
        let now = Instant::now();
        let mut t = table();
        t.merge_heard(&[entry("dc1", "g1:8302"), entry("dc2", "g2:8302")], now);
        t.merge_heard(&[entry("dc9", "g2:8302")], now);
        assert_eq!(t.addresses(), ["g2:8302"]);
        // A rumour does not change a known gateway's DC.
        assert_eq!(t.view().members, [entry("dc2", "g2:8302")]);
        assert_eq!(t.view().me, entry("dc1", "g1:8302"));
    }

    #[test]
    fn liveness_needs_direct_contact_within_dead_after() {
        let t0 = Instant::now();
        let mut t = table();
        t.merge_heard(&[entry("dc2", "g2:8302")], t0);
        // Grace period from first hearing.
        assert_eq!(
            t.route("dc2", t0 + Duration::from_secs(4)),
            Route::Gateways(vec!["g2:8302".into()])
        );
        assert_eq!(t.route("dc2", t0 + DEAD_AFTER), Route::Unreachable);
        // Hearing of it again does not revive it; reaching it does.
        t.merge_heard(&[entry("dc2", "g2:8302")], t0 + DEAD_AFTER);
        assert_eq!(t.route("dc2", t0 + DEAD_AFTER), Route::Unreachable);
        t.record_reached(
            &entry("dc2", "g2:8302"),
            Duration::from_millis(3),
            t0 + DEAD_AFTER,
        );
        assert!(matches!(
            t.route("dc2", t0 + DEAD_AFTER),
            Route::Gateways(_)
        ));
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
        assert_eq!(order(&t), ["b:1", "a:1", "c:1"]);
        t.record_failure("b:1", now + Duration::from_millis(1));
        assert_eq!(order(&t), ["a:1", "c:1", "b:1"]);
        let later = now + Duration::from_millis(2);
        t.record_reached(&entry("dc2", "b:1"), Duration::from_millis(10), later);
        assert_eq!(order(&t), ["b:1", "a:1", "c:1"]);
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
        assert_eq!(t.datacenters(later), ["dc1", "dc3", "dc2", "dc4", "adead"]);
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
}
