//! Loops that run only on the leader: the ACL bootstrap and replication
//! ([`acl`]), the liveness reaper ([`liveness`]),
//! the servers' own catalog entries ([`servers`]), session TTLs
//! ([`sessions`]) and KV tombstone reaping ([`tombstones`]). They decide
//! from the applied state (through [`RaftHandle::with_applied`]) and write
//! only through [`RaftHandle::propose`], each change once ([`ProposeOnce`]);
//! they must not touch Raft's internals or storage.

pub mod acl;
pub mod liveness;
pub mod servers;
pub mod sessions;
pub mod tombstones;

use crate::raft::{RaftError, RaftHandle};
use crate::state::Command;
use std::collections::HashSet;
use std::sync::Mutex;

/// The changes a leader loop has proposed and not yet seen applied, by key:
/// the same change is not proposed twice while the first is in flight (a
/// burst of heartbeats from one node is one write, not hundreds).
#[derive(Default)]
pub struct ProposeOnce {
    /// Keys of the changes in flight.
    in_flight: Mutex<HashSet<String>>,
}

impl ProposeOnce {
    /// Proposes `cmd` unless a change under `key` is in flight; `Ok` at once
    /// if one is (the caller's change is that one).
    pub async fn propose(
        &self,
        raft: &RaftHandle,
        key: String,
        cmd: impl FnOnce() -> Result<Command, RaftError>,
    ) -> Result<(), RaftError> {
        self.propose_new(raft, key, cmd).await.map(|_| ())
    }

    /// [`ProposeOnce::propose`], telling whether this call made the change
    /// (`Ok(false)`: one under `key` was in flight, and that one is the caller's).
    pub async fn propose_new(
        &self,
        raft: &RaftHandle,
        key: String,
        cmd: impl FnOnce() -> Result<Command, RaftError>,
    ) -> Result<bool, RaftError> {
        if !self.lock().insert(key.clone()) {
            return Ok(false);
        }
        let result = match cmd() {
            Ok(cmd) => raft.propose(cmd).await.map(|_| true),
            Err(e) => Err(e),
        };
        self.lock().remove(&key);
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}
