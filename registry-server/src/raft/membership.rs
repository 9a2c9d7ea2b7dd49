//! Cluster membership: greetings (`Hello`) between servers, bootstrapping a
//! new cluster once `--bootstrap-expect` servers agree on who they are,
//! joining an existing one as a learner, promoting caught-up learners, and
//! the peer table (Raft id -> address) with its persistence. The decisions
//! are pure functions at the top, unit-tested below; the `RaftNode` methods
//! carry them out. Must not apply catalog commands.

use super::entry::{AnyConfChange, ConfContext};
use super::node::{raft_config, RaftNode};
use super::{Fatal, RaftError, Reply};
use crate::rpc::{Hello, PeerInfo, RpcMessage};
use crate::storage::StoreBatch;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry};
use raft::RawNode;
use std::collections::BTreeMap;
use std::time::Instant;
use tracing::{debug, info, warn};

/// What a server not yet in a cluster does with the greetings it has seen.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Bootstrap {
    /// Not now: bootstrapping is off, a cluster exists, not every expected
    /// server is seen yet, or their views still differ.
    Wait,
    /// More servers than `--bootstrap-expect` see each other: never
    /// bootstrap (an operator must fix the flags).
    TooMany(usize),
    /// Form the cluster with these voters.
    Form(Vec<u64>),
}

/// The voter a leader `me` hands leadership to: `target` if it is another
/// voter, else the other voter with the most of the log (raft-rs makes it
/// catch up first). The errors are hashicorp/raft's texts, which Consul shows.
pub(super) fn transfer_target(
    me: u64,
    voters: &[u64],
    target: Option<u64>,
    matched: impl Fn(u64) -> u64,
) -> Result<u64, String> {
    match target {
        Some(id) if id == me => Err("cannot transfer leadership to itself".into()),
        Some(id) if voters.contains(&id) => Ok(id),
        Some(id) => Err(format!(
            "cannot find peer: {id:016x} is not a voter in the Raft configuration"
        )),
        None => voters
            .iter()
            .copied()
            .filter(|id| *id != me)
            .max_by_key(|id| (matched(*id), std::cmp::Reverse(*id)))
            .ok_or_else(|| "cannot find peer".into()),
    }
}

/// The bootstrap candidates this server knows: those it has seen and itself,
/// sorted.
fn candidates(me: u64, seen: &BTreeMap<u64, Vec<u64>>) -> Vec<u64> {
    let mut ids: Vec<u64> = seen.keys().copied().collect();
    ids.push(me);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether to bootstrap, given what `me` has seen: each candidate that
/// greeted it, with the candidates that one has seen (`seen`). Bootstrap only
/// when every candidate reports exactly the same set: then all of them pick
/// the same voters, whatever the start order, and no two different clusters
/// can form. A server that saw any member of a cluster only ever joins.
pub(super) fn bootstrap_decision(
    me: u64,
    expect: usize,
    saw_cluster: bool,
    seen: &BTreeMap<u64, Vec<u64>>,
) -> Bootstrap {
    if expect == 0 || saw_cluster {
        return Bootstrap::Wait;
    }
    let ids = candidates(me, seen);
    if ids.len() > expect {
        return Bootstrap::TooMany(ids.len());
    }
    if ids.len() < expect {
        return Bootstrap::Wait;
    }
    let agreed = seen
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .all(|(_, known)| *known == ids);
    if agreed {
        Bootstrap::Form(ids)
    } else {
        Bootstrap::Wait
    }
}

/// What a server does with a `Join` request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum JoinAction {
    /// Not for us: no cluster here, another datacenter, or already a member.
    Ignore,
    /// Pass it to the leader (by Raft id).
    Forward(u64),
    /// Add the joiner as a learner (this server leads).
    AddLearner,
}

/// The decision on `joiner`'s request, on a server `me` that leads or not
/// and knows `leader` (0: none), with configuration `conf`.
pub(super) fn join_action(
    me: &PeerInfo,
    in_cluster: bool,
    is_leader: bool,
    leader: u64,
    conf: &ConfState,
    joiner: &PeerInfo,
) -> JoinAction {
    if !in_cluster || joiner.datacenter != me.datacenter {
        return JoinAction::Ignore;
    }
    if !is_leader {
        return match leader {
            raft::INVALID_ID => JoinAction::Ignore,
            leader if leader == me.id => JoinAction::Ignore,
            leader => JoinAction::Forward(leader),
        };
    }
    if conf.voters.contains(&joiner.id) || conf.learners.contains(&joiner.id) {
        return JoinAction::Ignore;
    }
    JoinAction::AddLearner
}

/// The first learner that has caught up (its log matches up to the entry
/// before `committed`) and may become a voter (Raft thesis §4.2.1: add
/// servers as non-voting members first so they cannot stall commits).
pub(super) fn learner_to_promote(
    learners: &[u64],
    matched: impl Fn(u64) -> u64,
    committed: u64,
) -> Option<u64> {
    learners
        .iter()
        .copied()
        .find(|&id| matched(id) + 1 >= committed)
}

impl RaftNode {
    pub(super) fn propose_conf(
        &mut self,
        id: u64,
        ty: ConfChangeType,
        ctx: &ConfContext,
    ) -> Result<(), RaftError> {
        if self.raw.raft.has_pending_conf() {
            return Err(RaftError::ConfChangeInProgress);
        }
        let mut single = ConfChangeSingle::default();
        single.node_id = id;
        single.set_change_type(ty);
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let ctx = serde_json::to_vec(ctx).unwrap_or_default();
        self.raw
            .propose_conf_change(ctx, cc)
            .map_err(|_| RaftError::NoLeader)
    }

    pub(super) fn in_cluster(&self) -> bool {
        self.store.initialized()
    }

    fn known(&self) -> Vec<u64> {
        candidates(self.me.id, &self.seen)
    }

    fn hello(&self, reply: bool) -> RpcMessage {
        RpcMessage::Hello(Hello {
            from: self.me.clone(),
            in_cluster: self.in_cluster(),
            leader: self.raw.raft.leader_id,
            reply,
            known: if self.in_cluster() {
                Vec::new()
            } else {
                self.known()
            },
        })
    }

    /// Learns the address of a server that sent a Raft message from `addr`:
    /// that is how the address of a server added by another member arrives.
    pub(super) fn learn_peer_address(&mut self, id: u64, addr: String) {
        if id != 0 && !self.peers.contains_key(&id) {
            self.peers.insert(
                id,
                PeerInfo {
                    id,
                    node: String::new(),
                    rpc_addr: addr,
                    http_addr: String::new(),
                    datacenter: self.me.datacenter.clone(),
                },
            );
        }
    }

    pub(super) fn handle_hello(&mut self, h: Hello) -> Result<(), Fatal> {
        if h.from.datacenter != self.me.datacenter {
            warn!(node = %self.me.node, peer = %h.from.node, peer_dc = %h.from.datacenter,
                  "ignoring a server of another datacenter (check --retry-join)");
            return Ok(());
        }
        if h.from.id == self.me.id {
            return Ok(());
        }
        if !h.reply {
            self.transport.send(&h.from.rpc_addr, self.hello(true));
        }
        let known = self.peers.get(&h.from.id);
        if known != Some(&h.from) {
            self.peers.insert(h.from.id, h.from.clone());
            if self.in_cluster() {
                let mut b = self.store.batch();
                self.store.set_peers(&mut b, &self.peers);
                self.store.commit(b, true)?;
                *self
                    .peers_for_snap
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = self.peers.clone();
            }
        }
        if self.in_cluster() {
            return Ok(());
        }
        if h.in_cluster {
            // A cluster exists: ask to be added rather than form a second one.
            self.saw_cluster = true;
            self.transport
                .send(&h.from.rpc_addr, RpcMessage::Join(self.me.clone()));
            return Ok(());
        }
        self.seen.insert(h.from.id, h.known);
        self.maybe_bootstrap()
    }

    pub(super) fn maybe_bootstrap(&mut self) -> Result<(), Fatal> {
        if self.in_cluster() {
            return Ok(());
        }
        match bootstrap_decision(
            self.me.id,
            self.bootstrap_expect,
            self.saw_cluster,
            &self.seen,
        ) {
            Bootstrap::Wait => Ok(()),
            Bootstrap::TooMany(seen) => {
                warn!(node = %self.me.node, expect = self.bootstrap_expect, seen,
                      "more servers than --bootstrap-expect see each other; not bootstrapping");
                Ok(())
            }
            Bootstrap::Form(voters) => self.bootstrap(voters),
        }
    }

    pub(super) fn bootstrap(&mut self, voters: Vec<u64>) -> Result<(), Fatal> {
        info!(node = %self.me.node, ?voters, "bootstrapping the cluster");
        let mut cs = raft::eraftpb::ConfState::default();
        cs.voters = voters;
        let mut b = self.store.batch();
        self.store.bootstrap(&mut b, &cs);
        self.store.set_peers(&mut b, &self.peers);
        self.store.commit(b, true)?;
        {
            let mut applied = self
                .shared
                .applied
                .write()
                .unwrap_or_else(|e| e.into_inner());
            applied.index = applied.index.max(1);
        }
        *self
            .peers_for_snap
            .write()
            .unwrap_or_else(|e| e.into_inner()) = self.peers.clone();
        // Nothing has happened in this RawNode yet (it had no configuration), so
        // it is rebuilt from the now-initialised storage.
        let cfg = raft_config(self.me.id, 1, &self.tuning);
        self.raw = RawNode::new(&cfg, self.store.clone(), &self.logger)?;
        Ok(())
    }

    pub(super) fn handle_join(&mut self, peer: PeerInfo) {
        let conf = self.store.conf_state();
        let leader = self.raw.raft.leader_id;
        let action = join_action(
            &self.me,
            self.in_cluster(),
            self.is_leader(),
            leader,
            &conf,
            &peer,
        );
        match action {
            JoinAction::Ignore => {}
            JoinAction::Forward(leader) => {
                if let Some(addr) = self.peers.get(&leader).map(|p| p.rpc_addr.clone()) {
                    self.transport.send(&addr, RpcMessage::Join(peer));
                }
            }
            JoinAction::AddLearner => {
                info!(node = %self.me.node, joiner = %peer.node, id = peer.id, "adding a server as learner");
                self.peers.insert(peer.id, peer.clone());
                let ctx = ConfContext {
                    id: 0,
                    peer: Some(peer.clone()),
                };
                if let Err(e) = self.propose_conf(peer.id, ConfChangeType::AddLearnerNode, &ctx) {
                    debug!(node = %self.me.node, error = %e, "join deferred");
                }
            }
        }
    }

    /// Proposes one caught-up learner as a voter (one change at a time).
    pub(super) fn promote_learners(&mut self) {
        if self.raw.raft.has_pending_conf() {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let learners = self.store.conf_state().learners;
        let prs = self.raw.raft.prs();
        let matched = |id| prs.get(id).map(|p| p.matched).unwrap_or(0);
        if let Some(id) = learner_to_promote(&learners, matched, committed) {
            info!(node = %self.me.node, id, "promoting caught-up learner to voter");
            let ctx = ConfContext {
                id: 0,
                peer: self.peers.get(&id).cloned(),
            };
            let _ = self.propose_conf(id, ConfChangeType::AddNode, &ctx);
        }
    }

    /// Starts a leadership transfer (`PUT /v1/operator/raft/transfer-leader`)
    /// on the leader; see [`transfer_target`] for the choice.
    pub(super) fn transfer_leader(&mut self, target: Option<u64>) -> Result<u64, RaftError> {
        if !self.is_leader() {
            return Err(RaftError::NoLeader);
        }
        let voters = self.store.conf_state().voters;
        let prs = self.raw.raft.prs();
        let matched = |id| prs.get(id).map(|p| p.matched).unwrap_or(0);
        let to =
            transfer_target(self.me.id, &voters, target, matched).map_err(RaftError::Rejected)?;
        info!(node = %self.me.node, to, "transferring leadership");
        self.raw.transfer_leader(to);
        Ok(to)
    }

    /// Greets every server it knows of, every `hello_interval`.
    pub(super) fn greet(&mut self, now: Instant) {
        let due = self
            .last_hello
            .is_none_or(|t| now.duration_since(t) >= self.tuning.hello_interval);
        if !due {
            return;
        }
        self.last_hello = Some(now);
        let mut targets: Vec<String> = self.retry_join.clone();
        targets.extend(
            self.peers
                .values()
                .filter(|p| p.id != self.me.id)
                .map(|p| p.rpc_addr.clone()),
        );
        targets.sort();
        targets.dedup();
        for t in targets {
            if t != self.me.rpc_addr {
                self.transport.send(&t, self.hello(false));
            }
        }
    }

    /// Applies a committed conf-change entry: the configuration, and the
    /// peer table (a removed server is no longer greeted or listed; an added
    /// one's address comes in the context). Returns the waiting caller's
    /// answer, if one waits, and whether the peer table changed.
    pub(super) fn apply_conf_entry(
        &mut self,
        e: &Entry,
        batch: &mut StoreBatch,
    ) -> Result<(Option<Reply>, bool), Fatal> {
        let mut peers_changed = false;
        let (cc, ctx) = super::entry::decode_conf_change(e)?;
        let ctx: ConfContext = serde_json::from_slice(&ctx).unwrap_or_default();
        // Replayed after a restart (the entries after the last checkpoint):
        // the stored configuration already holds this change and those
        // after it, and raft-rs started from it.
        if e.index <= self.store.conf_index() {
            // Peers too are stored as of that index.
            let done = Ok(crate::state::Outcome::Done);
            return Ok(((ctx.id != 0).then_some((ctx.id, done)), false));
        }
        let (applied_cc, removed) = match &cc {
            AnyConfChange::V1(cc) => (
                self.raw.apply_conf_change(cc),
                (cc.get_change_type() == ConfChangeType::RemoveNode)
                    .then_some(cc.node_id)
                    .into_iter()
                    .collect::<Vec<_>>(),
            ),
            AnyConfChange::V2(cc) => (
                self.raw.apply_conf_change(cc),
                cc.get_changes()
                    .iter()
                    .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                    .map(|c| c.node_id)
                    .collect(),
            ),
        };
        if applied_cc.is_ok() {
            for id in removed {
                if id != self.me.id && self.peers.remove(&id).is_some() {
                    peers_changed = true;
                }
            }
        }
        if let Some(p) = ctx.peer {
            if p.id != self.me.id {
                self.peers.insert(p.id, p);
            }
            peers_changed = true;
        }
        let result = match applied_cc {
            Ok(cs) => {
                info!(node = %self.me.node, index = e.index, voters = ?cs.voters,
                      learners = ?cs.learners, "configuration changed");
                self.store.set_conf_state(batch, &cs, e.index);
                Ok(crate::state::Outcome::Done)
            }
            Err(err) => {
                warn!(node = %self.me.node, error = %err, "configuration change rejected");
                Err(RaftError::Rejected(err.to_string()))
            }
        };
        Ok(((ctx.id != 0).then_some((ctx.id, result)), peers_changed))
    }

    /// Persists the peer table in `batch` and shows it to the snapshot source.
    pub(super) fn store_peers(&self, batch: &mut StoreBatch) {
        self.store.set_peers(batch, &self.peers);
        *self
            .peers_for_snap
            .write()
            .unwrap_or_else(|e| e.into_inner()) = self.peers.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, dc: &str) -> PeerInfo {
        PeerInfo {
            id,
            node: format!("s{id}"),
            rpc_addr: format!("s{id}:8300"),
            http_addr: format!("s{id}:8500"),
            datacenter: dc.into(),
        }
    }

    fn seen(views: &[(u64, &[u64])]) -> BTreeMap<u64, Vec<u64>> {
        views.iter().map(|(id, v)| (*id, v.to_vec())).collect()
    }

    #[test]
    fn bootstrap_waits_until_every_expected_server_reports_the_same_set() {
        // Server 1 expects 3 and has heard from 2 only.
        assert_eq!(
            bootstrap_decision(1, 3, false, &seen(&[(2, &[1, 2])])),
            Bootstrap::Wait
        );
        // It has heard from 2 and 3, but 3 has not seen 2 yet.
        let partial = seen(&[(2, &[1, 2, 3]), (3, &[1, 3])]);
        assert_eq!(bootstrap_decision(1, 3, false, &partial), Bootstrap::Wait);
        // All views agree: the same voters on every server.
        let agreed = seen(&[(2, &[1, 2, 3]), (3, &[1, 2, 3])]);
        assert_eq!(
            bootstrap_decision(1, 3, false, &agreed),
            Bootstrap::Form(vec![1, 2, 3])
        );
        // Whatever order the greetings came in, server 3 decides the same.
        let from_3 = seen(&[(1, &[1, 2, 3]), (2, &[1, 2, 3])]);
        assert_eq!(
            bootstrap_decision(3, 3, false, &from_3),
            Bootstrap::Form(vec![1, 2, 3])
        );
    }

    #[test]
    fn bootstrap_never_happens_past_a_cluster_or_with_too_many_servers() {
        let agreed = seen(&[(2, &[1, 2, 3]), (3, &[1, 2, 3])]);
        // A server that saw a member of a cluster only joins.
        assert_eq!(bootstrap_decision(1, 3, true, &agreed), Bootstrap::Wait);
        // Join-only servers (no --bootstrap-expect) never bootstrap.
        assert_eq!(bootstrap_decision(1, 0, false, &agreed), Bootstrap::Wait);
        // Four servers that each expect three: nobody forms a cluster.
        let four = seen(&[(2, &[]), (3, &[]), (4, &[])]);
        assert_eq!(
            bootstrap_decision(1, 3, false, &four),
            Bootstrap::TooMany(4)
        );
        // --bootstrap-expect 1 (as --dev): alone at once.
        assert_eq!(
            bootstrap_decision(7, 1, false, &BTreeMap::new()),
            Bootstrap::Form(vec![7])
        );
    }

    #[test]
    fn joins_go_to_the_leader_which_adds_new_servers_as_learners() {
        let me = peer(1, "dc1");
        let mut conf = ConfState::default();
        conf.voters = vec![1, 2];
        let joiner = peer(3, "dc1");
        // Not in a cluster, or a server of another datacenter: ignored.
        assert_eq!(
            join_action(&me, false, false, 2, &conf, &joiner),
            JoinAction::Ignore
        );
        let foreign = peer(3, "dc2");
        assert_eq!(
            join_action(&me, true, true, 1, &conf, &foreign),
            JoinAction::Ignore
        );
        // A follower passes it on to the leader it knows, or drops it.
        assert_eq!(
            join_action(&me, true, false, 2, &conf, &joiner),
            JoinAction::Forward(2)
        );
        assert_eq!(
            join_action(&me, true, false, 0, &conf, &joiner),
            JoinAction::Ignore
        );
        // The leader adds a new server, and only once.
        assert_eq!(
            join_action(&me, true, true, 1, &conf, &joiner),
            JoinAction::AddLearner
        );
        conf.learners = vec![3];
        assert_eq!(
            join_action(&me, true, true, 1, &conf, &joiner),
            JoinAction::Ignore
        );
        assert_eq!(
            join_action(&me, true, true, 1, &conf, &peer(2, "dc1")),
            JoinAction::Ignore
        );
    }

    #[test]
    fn leadership_goes_to_the_named_voter_or_the_most_caught_up_other_one() {
        let matched = |id| [0, 5, 9, 7][id as usize];
        assert_eq!(transfer_target(1, &[1, 2, 3], None, matched), Ok(2));
        assert_eq!(transfer_target(2, &[1, 2, 3], None, matched), Ok(3));
        assert_eq!(transfer_target(1, &[1, 2, 3], Some(3), matched), Ok(3));
        assert!(transfer_target(1, &[1], None, matched).is_err());
        assert!(transfer_target(1, &[1, 2], Some(1), matched).is_err());
        assert!(transfer_target(1, &[1, 2], Some(3), matched).is_err());
    }

    #[test]
    fn only_a_caught_up_learner_is_promoted() {
        let matched = |id| match id {
            3 => 5,
            4 => 9,
            _ => 0,
        };
        assert_eq!(learner_to_promote(&[3, 4], matched, 10), Some(4));
        assert_eq!(learner_to_promote(&[3], matched, 10), None);
        assert_eq!(learner_to_promote(&[3], matched, 6), Some(3));
        assert_eq!(learner_to_promote(&[], matched, 1), None);
    }
}
