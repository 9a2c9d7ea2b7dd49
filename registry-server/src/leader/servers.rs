//! The servers in their own catalog, as Consul's leader keeps them
//! (`leader.go`, `reconcileMember`): every voter of the Raft configuration
//! has the service `consul` (ID `consul`, no tags, the server's RPC port) on
//! its node, and a server that left the configuration loses it.
//!
//! It is also how a leader takes office: in each term it first writes its own
//! node (address, `serfHealth` passing) and the voters' `consul` instances,
//! then [`RaftHandle::announce`]s itself. Until then it does not name itself
//! in `/v1/status/leader` and answers no ReadIndex round (`raft/reads.rs`), so
//! a client that waits for a leader and then reads (default or consistent
//! mode, on any server) finds the leader's node, its `serfHealth` and the
//! servers' `consul` service. Stale reads on a follower may lag, as in Consul.
//!
//! Other servers' nodes are created here only if missing (with `serfHealth`
//! passing, as Consul's leader does for alive members); once they exist their
//! fields belong to their agents and their `serfHealth` to
//! [`super::liveness`], which marks a silent one critical after its grace
//! period.
//!
//! Decisions are a pure function of the applied catalog and the voters
//! ([`plan`], unit-tested below); writes go through [`ProposeOnce`]. This
//! module must not reach into Raft beyond [`RaftHandle`]'s status, applied
//! state, proposals and `announce`.

use super::ProposeOnce;
use crate::raft::{RaftError, RaftHandle, Role};
use crate::state::{CatalogState, Command};
use registry_api::{
    AgentService, DeregisterRequest, HealthCheck, RegisterRequest, PASSING, SERF_HEALTH_ID,
    SERF_HEALTH_NAME,
};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Name and ID of the service every server carries (Consul's
/// `structs.ConsulServiceName` / `ConsulServiceID`).
pub const CONSUL_SERVICE: &str = "consul";

/// How often the leader checks the servers' entries without a trigger (an
/// operator or an agent may have removed one).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the loop looks whether this server has just taken office (a
/// status read): taking office waits for this loop.
const POLL: Duration = Duration::from_millis(10);

/// A voter, as the catalog lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// Raft id (also the node ID the server's agent uses).
    pub id: u64,
    /// Node name.
    pub node: String,
    /// Node address: the host of its RPC address.
    pub address: String,
    /// RPC port (the `consul` service's port).
    pub port: u16,
}

impl Server {
    /// From a peer's node name and RPC address; `default_port` when the
    /// address names no port (the in-memory transport's addresses).
    fn from_peer(id: u64, node: &str, rpc_addr: &str, default_port: u16) -> Self {
        let (address, port) = match rpc_addr.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().unwrap_or(default_port)),
            None => (rpc_addr.to_string(), default_port),
        };
        Self {
            id,
            node: node.to_string(),
            address,
            port,
        }
    }
}

/// One write of the reconciliation.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create a server's node (`false`) or complete an existing one
    /// (`true`: applied only if the node still exists then).
    Register(Box<RegisterRequest>, bool),
    /// Remove the `consul` instance of a node that is no longer a server.
    Deregister(DeregisterRequest),
}

/// The `consul` service instance of a server (Consul sets the same `Meta`
/// keys that apply here; no Serf, so no `serf_protocol_*`).
fn consul_service(port: u16) -> AgentService {
    let meta = [
        ("non_voter", "false"),
        ("read_replica", "false"),
        ("raft_version", "3"),
        ("version", env!("CARGO_PKG_VERSION")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    AgentService {
        id: CONSUL_SERVICE.into(),
        service: CONSUL_SERVICE.into(),
        port,
        meta,
        ..Default::default()
    }
}

fn serf_passing(node: &str) -> HealthCheck {
    HealthCheck {
        node: node.into(),
        check_id: SERF_HEALTH_ID.into(),
        name: SERF_HEALTH_NAME.into(),
        status: PASSING.into(),
        output: "Agent alive and reachable".into(),
        check_type: "serf".into(),
        ..Default::default()
    }
}

/// Whether `node` carries the `consul` instance a server on `port` should.
fn has_consul_service(catalog: &CatalogState, node: &str, port: u16) -> bool {
    let want = consul_service(port);
    catalog.node_service_list(node).0.is_some_and(|list| {
        list.services.iter().any(|s| {
            s.id == want.id
                && s.service == want.service
                && s.port == want.port
                && s.tags.is_empty()
                && s.meta == want.meta
        })
    })
}

/// The writes that bring the catalog in line with the servers: each voter's
/// node with its `consul` instance (`me`'s with `serfHealth` passing too),
/// and no `consul` instance on a node that is not in `members` (voters and
/// learners by node name; `None` when not all are known: no removal).
pub fn plan(
    catalog: &CatalogState,
    me: u64,
    voters: &[Server],
    members: Option<&HashSet<String>>,
) -> Vec<Write> {
    let mut writes = Vec::new();
    for s in voters {
        let exists = catalog.has_node(&s.node);
        // The leader knows it is alive; other servers' liveness is judged by
        // their heartbeats once their node exists.
        let serf = (s.id == me && catalog.check_status(&s.node, SERF_HEALTH_ID) != Some(PASSING))
            || !exists;
        if exists && !serf && has_consul_service(catalog, &s.node, s.port) {
            continue;
        }
        let req = RegisterRequest {
            id: format!("{:016x}", s.id),
            node: s.node.clone(),
            address: s.address.clone(),
            skip_node_update: exists,
            service: Some(consul_service(s.port)),
            checks: if serf {
                vec![serf_passing(&s.node)]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        // Conditional on an existing node: a deregister ahead of this entry
        // must not be undone by a register without the node's fields (the
        // next pass creates the node afresh).
        writes.push(Write::Register(Box::new(req), exists));
    }
    let Some(members) = members else {
        return writes;
    };
    let (instances, _) = catalog.service_nodes(CONSUL_SERVICE, &[]);
    for inst in instances {
        // Only a node with an agent's serfHealth was a server of ours: a
        // `consul` instance someone registered for an external node through
        // /v1/catalog/register (as Consul's ESM does) is not ours to remove.
        let agent_node = catalog
            .check_status(&inst.node, registry_api::SERF_HEALTH_ID)
            .is_some();
        if inst.service_id == CONSUL_SERVICE && agent_node && !members.contains(&inst.node) {
            writes.push(Write::Deregister(DeregisterRequest {
                node: inst.node,
                service_id: CONSUL_SERVICE.into(),
                ..Default::default()
            }));
        }
    }
    writes
}

/// What one reconciliation is about: the term and the configuration.
type Key = (u64, Vec<u64>, Vec<u64>);

/// Proposes one write (validated as the HTTP endpoints validate it).
async fn propose(raft: &RaftHandle, once: &ProposeOnce, write: Write) -> Result<(), RaftError> {
    match write {
        Write::Register(req, exists) => {
            let mut req = *req;
            let key = format!(
                "{}\0{}",
                req.node,
                if exists { "complete" } else { "create" }
            );
            once.propose(raft, key, move || {
                CatalogState::validate_register(&mut req).map_err(RaftError::Rejected)?;
                Ok(if exists {
                    Command::RegisterIfNodeExists(req)
                } else {
                    Command::Register(req)
                })
            })
            .await
        }
        Write::Deregister(req) => {
            info!(node = %req.node, "server left the Raft configuration: removing its consul service");
            once.propose(raft, format!("{}\0remove", req.node), move || {
                CatalogState::validate_deregister(&req).map_err(RaftError::Rejected)?;
                Ok(Command::Deregister(req))
            })
            .await
        }
    }
}

/// One reconciliation on the leader; `Ok(term)` once the catalog
/// holds the servers as they should be (or a write was refused as invalid,
/// which retrying would not change).
async fn reconcile(
    raft: &RaftHandle,
    once: &ProposeOnce,
    default_port: u16,
) -> Result<u64, RaftError> {
    // Decide from a state that includes everything committed before this
    // leader took office.
    raft.leader_barrier().await?;
    let (me, term, voters, members) = raft.with_status(|s| {
        let server = |id: &u64| {
            s.peers
                .get(id)
                .map(|p| Server::from_peer(*id, &p.node, &p.rpc_addr, default_port))
        };
        let voters: Vec<Server> = s.voters.iter().filter_map(server).collect();
        let members: HashSet<String> = s
            .voters
            .iter()
            .chain(&s.learners)
            .filter_map(|id| s.peers.get(id).map(|p| p.node.clone()))
            .collect();
        // A member whose name is not known yet could be any node: remove
        // nothing until every one is.
        let members = (members.len() == s.voters.len() + s.learners.len()).then_some(members);
        (s.id, s.term, voters, members)
    });
    let writes = raft.with_applied(|s, _| plan(&s.catalog, me, &voters, members.as_ref()));
    for write in writes {
        match propose(raft, once, write).await {
            Ok(()) => {}
            Err(RaftError::Rejected(reason)) => {
                warn!(%reason, "a server's catalog entry was refused");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(term)
}

/// Runs on every server until shutdown; acts only while this server leads:
/// on taking office (then announces itself), when the Raft configuration
/// changes, and every [`RECONCILE_INTERVAL`].
pub async fn run(raft: RaftHandle, default_port: u16, shutdown: CancellationToken) {
    let once = ProposeOnce::default();
    let mut applied = raft.applied_changes();
    let mut done: Option<Key> = None;
    let mut next_full = Instant::now() + RECONCILE_INTERVAL;
    // Wait after a failed reconciliation, doubling up to the interval.
    let mut retry = POLL;
    loop {
        // Also on a short poll: the applied batch that makes a new leader
        // ready is published before its status says so, and taking office
        // must not wait for the next write or the slow interval.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            changed = applied.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(POLL) => {}
        }
        if Instant::now() >= next_full {
            done = None;
            next_full = Instant::now() + RECONCILE_INTERVAL;
        }
        // Cheap on every wake: only a new term or configuration (or the
        // interval, which cleared `done`) leads to a reconciliation.
        let due = raft.with_status(|s| {
            let leading = s.role == Role::Leader && s.leader_ready;
            let same = done
                .as_ref()
                .is_some_and(|(t, v, l)| *t == s.term && *v == s.voters && *l == s.learners);
            (leading && !same).then(|| (s.term, s.voters.clone(), s.learners.clone()))
        });
        let Some(key) = due else {
            continue;
        };
        match reconcile(&raft, &once, default_port).await {
            Ok(term) => {
                if !raft.with_status(|s| s.announced) {
                    info!(term, "servers are in the catalog: announcing leadership");
                }
                raft.announce(term);
                done = Some(key);
            }
            Err(e) => {
                // Not every poll: a loaded leader must not be loaded more.
                warn!(error = %e, ?retry, "could not write the servers into the catalog; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RECONCILE_INTERVAL);
                continue;
            }
        }
        retry = POLL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: u64, node: &str) -> Server {
        Server::from_peer(id, node, &format!("10.0.0.{id}:8300"), 8300)
    }

    fn apply(catalog: &mut CatalogState, index: u64, writes: Vec<Write>) {
        for w in writes {
            let cmd = match w {
                Write::Register(r, exists) => {
                    let mut r = *r;
                    CatalogState::validate_register(&mut r).unwrap();
                    if exists {
                        Command::RegisterIfNodeExists(r)
                    } else {
                        Command::Register(r)
                    }
                }
                Write::Deregister(d) => Command::Deregister(d),
            };
            catalog.apply(index, &cmd).0.unwrap();
        }
    }

    fn members(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_address_without_a_port_takes_the_default() {
        let s = Server::from_peer(1, "s1", "s1", 8300);
        assert_eq!((s.address.as_str(), s.port), ("s1", 8300));
        let s = Server::from_peer(1, "s1", "10.1.2.3:9300", 8300);
        assert_eq!((s.address.as_str(), s.port), ("10.1.2.3", 9300));
    }

    #[test]
    fn voters_get_their_node_and_consul_service_once() {
        let mut catalog = CatalogState::new("dc1");
        let voters = vec![server(1, "s1"), server(2, "s2")];
        let m = members(&["s1", "s2"]);
        let writes = plan(&catalog, 1, &voters, Some(&m));
        assert_eq!(writes.len(), 2);
        apply(&mut catalog, 1, writes);
        for node in ["s1", "s2"] {
            assert_eq!(catalog.check_status(node, SERF_HEALTH_ID), Some(PASSING));
            assert!(has_consul_service(&catalog, node, 8300));
        }
        assert!(
            plan(&catalog, 1, &voters, Some(&m)).is_empty(),
            "in line: nothing to write"
        );
    }

    #[test]
    fn only_the_leaders_own_serf_health_is_forced_passing() {
        let mut catalog = CatalogState::new("dc1");
        let voters = vec![server(1, "s1"), server(2, "s2")];
        let m = members(&["s1", "s2"]);
        let w = plan(&catalog, 1, &voters, Some(&m));
        apply(&mut catalog, 1, w);
        for node in ["s1", "s2"] {
            let mut req = RegisterRequest {
                node: node.into(),
                skip_node_update: true,
                checks: vec![HealthCheck {
                    status: "critical".into(),
                    ..serf_passing(node)
                }],
                ..Default::default()
            };
            CatalogState::validate_register(&mut req).unwrap();
            catalog.apply(2, &Command::Register(req)).0.unwrap();
        }
        let writes = plan(&catalog, 1, &voters, Some(&m));
        assert_eq!(
            writes.len(),
            1,
            "the leader is alive; s2 is liveness' business"
        );
        apply(&mut catalog, 3, writes);
        assert_eq!(catalog.check_status("s1", SERF_HEALTH_ID), Some(PASSING));
        assert_eq!(catalog.check_status("s2", SERF_HEALTH_ID), Some("critical"));
    }

    #[test]
    fn a_removed_server_loses_its_consul_service_but_not_its_node() {
        let mut catalog = CatalogState::new("dc1");
        let voters = vec![server(1, "s1"), server(2, "s2")];
        let w = plan(&catalog, 1, &voters, Some(&members(&["s1", "s2"])));
        apply(&mut catalog, 1, w);
        let writes = plan(&catalog, 1, &voters[..1], Some(&members(&["s1"])));
        assert_eq!(writes.len(), 1);
        apply(&mut catalog, 2, writes);
        assert!(!has_consul_service(&catalog, "s2", 8300));
        assert!(catalog.has_node("s2"), "the node is its agent's");
        assert!(has_consul_service(&catalog, "s1", 8300));
        // A learner keeps what it has until it is removed or promoted.
        let w = plan(&catalog, 1, &voters, Some(&members(&["s1", "s2"])));
        apply(&mut catalog, 3, w);
        assert!(plan(&catalog, 1, &voters[..1], Some(&members(&["s1", "s2"]))).is_empty());
    }
}
