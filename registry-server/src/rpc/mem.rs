//! [`MemNetwork`]: the in-memory network of tests, whose links can be cut (both ways or one),
//! isolated, made lossy or slow, and whose nodes restart with a new incarnation. Test-only in
//! purpose, but compiled always so that integration tests and benches can use it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tracing::trace;

use super::transport::{lock, Deliver, Transport};
use crate::rpc::RpcMessage;

/// In-memory network for tests: every node registers an address; links between addresses can be faulted.
#[derive(Clone)]
pub struct MemNetwork {
    /// Runtime for delayed deliveries; senders may be plain threads.
    runtime: Handle,
    /// Nodes, faults and counters. Never held while calling a `Deliver`, which may send in turn.
    state: Arc<Mutex<MemState>>,
}

/// A setting for the directed link `from -> to`; "*" on either side stands for any address.
type LinkRule<T> = (String, String, T);

/// Registered nodes, the faults between them, and what happened to messages so far.
#[derive(Default)]
struct MemState {
    /// Current node at each address: (incarnation, delivery target). The incarnation tells a
    /// restarted node from its killed predecessor at the same address.
    nodes: HashMap<String, (u64, Deliver)>,
    /// Source of incarnations.
    next_incarnation: u64,
    /// Cut directed links.
    cuts: Vec<LinkRule<()>>,
    /// Addresses cut from everyone else.
    isolated: HashSet<String>,
    /// Drop probability per link.
    drop_rates: Vec<LinkRule<f64>>,
    /// Delivery delay per link.
    delays: Vec<LinkRule<Duration>>,
    /// Messages handed to a `Deliver`.
    delivered: u64,
    /// Messages lost to a fault or a missing node.
    dropped: u64,
    /// Raft snapshots still to drop per directed link (see [`MemNetwork::drop_snapshots`]).
    snapshot_drops: HashMap<(String, String), u64>,
}

fn set_rule<T>(rules: &mut Vec<LinkRule<T>>, from: &str, to: &str, value: T) {
    rules.retain(|(f, t, _)| f != from || t != to);
    rules.push((from.to_owned(), to.to_owned(), value));
}

/// The largest setting that applies to `from -> to`.
fn strongest<T: Copy + PartialOrd>(rules: &[LinkRule<T>], from: &str, to: &str) -> Option<T> {
    rules
        .iter()
        .filter(|(f, t, _)| (f == from || f == "*") && (t == to || t == "*"))
        .map(|&(_, _, value)| value)
        .reduce(|a, b| if b > a { b } else { a })
}

impl MemState {
    fn is_current(&self, addr: &str, incarnation: u64) -> bool {
        self.nodes.get(addr).is_some_and(|(i, _)| *i == incarnation)
    }

    /// Why a message from `from` to `to` is lost, if it is.
    fn fault(&self, from: &str, to: &str) -> Option<&'static str> {
        if from != to && (self.isolated.contains(from) || self.isolated.contains(to)) {
            return Some("isolated");
        }
        if strongest(&self.cuts, from, to).is_some() {
            return Some("link cut");
        }
        match strongest(&self.drop_rates, from, to) {
            Some(p) if rand::random::<f64>() < p => Some("random drop"),
            _ => None,
        }
    }

    fn count_drop(&mut self, from: &str, to: &str, reason: &str) {
        trace!(from, to, reason, "in-memory message dropped");
        self.dropped += 1;
    }
}

impl MemNetwork {
    /// An empty network; delayed messages are delivered by tasks on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        MemNetwork {
            runtime,
            state: Arc::default(),
        }
    }

    /// Attach a node at `addr`; returns its transport. Re-registering an address (a restarted node) replaces the old delivery target.
    pub fn register(&self, addr: &str, deliver: Deliver) -> Arc<MemTransport> {
        let mut state = lock(&self.state);
        state.next_incarnation += 1;
        let incarnation = state.next_incarnation;
        state.nodes.insert(addr.to_owned(), (incarnation, deliver));
        let (network, addr) = (self.clone(), addr.to_owned());
        Arc::new(MemTransport {
            network,
            addr,
            incarnation,
        })
    }

    /// Detach (the node was killed): messages to it vanish, messages it still tries to send vanish too.
    pub fn unregister(&self, addr: &str) {
        lock(&self.state).nodes.remove(addr);
    }

    /// Cut both directions between a and b.
    pub fn cut(&self, a: &str, b: &str) {
        let mut state = lock(&self.state);
        set_rule(&mut state.cuts, a, b, ());
        set_rule(&mut state.cuts, b, a, ());
    }

    /// Cut only messages from `from` to `to`.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        set_rule(&mut lock(&self.state).cuts, from, to, ());
    }

    /// Cut `a` from every other address (current and future).
    pub fn isolate(&self, a: &str) {
        lock(&self.state).isolated.insert(a.to_owned());
    }

    /// Remove every cut, isolation, drop rate and delay involving `a`. Settings made with "*" on
    /// both sides involve no address in particular and stay until [`MemNetwork::heal_all`].
    pub fn heal(&self, a: &str) {
        let mut state = lock(&self.state);
        state.cuts.retain(|(f, t, _)| f != a && t != a);
        state.isolated.remove(a);
        state.drop_rates.retain(|(f, t, _)| f != a && t != a);
        state.delays.retain(|(f, t, _)| f != a && t != a);
        state.snapshot_drops.retain(|(f, t), _| f != a && t != a);
    }

    /// Remove all faults.
    pub fn heal_all(&self) {
        let mut state = lock(&self.state);
        state.cuts.clear();
        state.isolated.clear();
        state.drop_rates.clear();
        state.delays.clear();
        state.snapshot_drops.clear();
    }

    /// Drop each message from `from` to `to` with probability p (0.0..=1.0). "*" as from or to means any.
    pub fn set_drop_rate(&self, from: &str, to: &str, p: f64) {
        set_rule(
            &mut lock(&self.state).drop_rates,
            from,
            to,
            p.clamp(0.0, 1.0),
        );
    }

    /// Delay every message from `from` to `to` by d (spawned on the runtime handle with tokio::time::sleep; order between delayed messages is not guaranteed — like a real network). "*" wildcard as above.
    pub fn set_delay(&self, from: &str, to: &str, d: Duration) {
        set_rule(&mut lock(&self.state).delays, from, to, d);
    }

    /// Drop the next `n` Raft snapshots from `from` to `to` (exact addresses) while everything
    /// else on the link passes: a snapshot lost on its way, as a frame over a transport's cap or
    /// a connection that breaks mid-send loses one.
    pub fn drop_snapshots(&self, from: &str, to: &str, n: u64) {
        let link = (from.to_owned(), to.to_owned());
        lock(&self.state).snapshot_drops.insert(link, n);
    }

    /// Counters for tests: messages delivered and dropped so far.
    pub fn stats(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.delivered, state.dropped)
    }

    /// Routes one message from the node registered as (`from`, `incarnation`).
    fn route(&self, from: &str, incarnation: u64, to: &str, msg: RpcMessage) {
        let (target, deliver, delay) = {
            let mut state = lock(&self.state);
            if matches!(&msg, RpcMessage::Raft(m) if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
            {
                let link = (from.to_owned(), to.to_owned());
                if let Some(left) = state.snapshot_drops.get_mut(&link).filter(|n| **n > 0) {
                    *left -= 1;
                    return state.count_drop(from, to, "snapshot dropped");
                }
            }
            let verdict = match state.nodes.get(to) {
                _ if !state.is_current(from, incarnation) => Err("sender detached"),
                None => Err("no node at address"),
                Some((target, deliver)) => match state.fault(from, to) {
                    Some(reason) => Err(reason),
                    None => Ok((
                        *target,
                        Arc::clone(deliver),
                        strongest(&state.delays, from, to),
                    )),
                },
            };
            match verdict {
                Err(reason) => return state.count_drop(from, to, reason),
                Ok(route) => {
                    state.delivered += u64::from(route.2.is_none());
                    route
                }
            }
        };
        let Some(delay) = delay else {
            return deliver(from.to_owned(), msg);
        };
        let (network, from, to) = (self.clone(), from.to_owned(), to.to_owned());
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            {
                let mut state = lock(&network.state);
                // The target may have been killed or restarted while the message was in flight.
                if !state.is_current(&to, target) {
                    return state.count_drop(&from, &to, "target gone while delayed");
                }
                state.delivered += 1;
            }
            deliver(from, msg);
        });
    }
}

/// One node's attachment to a [`MemNetwork`].
pub struct MemTransport {
    /// The network it sends through.
    network: MemNetwork,
    /// Its address, given to receivers as `from`.
    addr: String,
    /// Which registration of `addr` this is; a killed node's transport stops working.
    incarnation: u64,
}

impl Transport for MemTransport {
    fn send(&self, to: &str, msg: RpcMessage) {
        self.network.route(&self.addr, self.incarnation, to, msg);
    }
}
