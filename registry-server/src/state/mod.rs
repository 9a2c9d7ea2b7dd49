//! The replicated state machine, pure: [`StateStore::apply`] takes a
//! committed command with its Raft index and its time (the leader's clock,
//! carried in the log entry) and returns the outcome and the rows to persist.
//! It reads no clock, draws no random number and does no I/O, so every
//! replica that applies the same log holds the same state.
//!
//! One state, several tables, a file each: `catalog.rs` (nodes, services,
//! checks; its write planner `plan.rs`), `kv.rs` (keys, tombstones,
//! lock-delays), `session.rs` (sessions), `txn.rs` (transactions over
//! all of them), and `restore.rs` (a snapshot archive replacing them
//! all); their commands in `command.rs`, their row keys in
//! `rows.rs` and the catalog's row values in `row_forms.rs`. A command
//! is planned on a [`Scratch`] view (the tables with the entry's writes
//! so far laid over them), encoded, and only then
//! committed to every table at once: a rejected command or a failed
//! transaction leaves nothing behind. What crosses tables happens here, in
//! the same entry as its cause: a catalog write that deregisters a node or a
//! check, or turns one critical, invalidates the sessions that depend on it,
//! and invalidating a session releases or deletes its keys and sets their
//! lock-delays. Storage (`storage/`) persists the rows (checkpoints); Raft
//! (`raft/`) decides the order.

pub mod acl;
pub mod catalog;
pub mod command;
pub mod events;
mod image;
pub mod kv;
mod packed;
mod plan;
pub mod restore;
mod row_forms;
mod rows;
pub mod session;
mod stored;
mod table;
pub mod txn;

pub use acl::AclTable;
pub use catalog::CatalogState;
pub use command::Command;
pub use events::EventTable;
pub use image::ImageCursor;
pub use kv::KvTable;
pub use rows::{RowChange, RowsWanted};
pub use session::SessionTable;

use plan::WritePlanner;
use registry_api::kv::{NewSession, SessionEntry, TxnError, TxnResult};
use registry_api::CRITICAL;
use rows::{EXTRA_INDEX_PREFIX, KV_PREFIX, LOCK_DELAY_PREFIX, SESSION_PREFIX, TOMBSTONE_PREFIX};
use session::{SessionExpiry, StoredSession};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

/// What an applied command answers its proposer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; nothing to say (catalog writes, session create and destroy).
    Done,
    /// Consul's `true` or `false` (KV writes, a TTL expiry).
    Bool(bool),
    /// A renewal: the session, `None` when it does not exist.
    Session(Option<SessionEntry>),
    /// A transaction: its results, or every failed operation (then nothing
    /// was applied).
    Txn(Result<Vec<TxnResult>, Vec<TxnError>>),
}

/// The whole replicated state of one datacenter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateStore {
    /// Nodes, services, checks.
    pub catalog: CatalogState,
    /// The KV store.
    pub kv: KvTable,
    /// Sessions.
    pub sessions: SessionTable,
    /// The recent user events.
    pub events: EventTable,
    /// ACL tokens, policies and roles.
    pub acl: AclTable,
}

impl StateStore {
    /// An empty state for `datacenter`.
    pub fn new(datacenter: &str) -> Self {
        StateStore {
            catalog: CatalogState::new(datacenter),
            kv: KvTable::default(),
            sessions: SessionTable::default(),
            events: EventTable::default(),
            acl: AclTable::default(),
        }
    }

    /// Apply one committed command at Raft `index`, proposed at `at` (ms
    /// since the epoch, the leader's clock; 0 in entries written before
    /// the field existed). Returns the outcome (`Err` = rejected: nothing
    /// changed and no rows, never half-applied) and the rows to persist.
    pub fn apply(
        &mut self,
        index: u64,
        at: u64,
        cmd: &Command,
    ) -> (Result<Outcome, String>, Vec<RowChange>) {
        self.apply_for(index, at, cmd, RowsWanted::All)
    }

    /// [`Self::apply`], with the rows `wanted`: with [`RowsWanted::NoCatalogEntities`], the
    /// catalog's node, instance and check rows are left out (the Raft thread
    /// needs them only while a checkpoint is being written). The outcome is
    /// the same either way: the catalog's row forms cannot fail to encode
    /// (strings, numbers, string-keyed maps and JSON values only; see
    /// `row_forms.rs`).
    pub fn apply_for(
        &mut self,
        index: u64,
        at: u64,
        cmd: &Command,
        wanted: RowsWanted,
    ) -> (Result<Outcome, String>, Vec<RowChange>) {
        if let Command::Restore(req) = cmd {
            // Replaces every table at once (`restore.rs`), never planned with other writes.
            return match self.apply_restore(index, at, req) {
                Ok(rows) => (Ok(Outcome::Done), rows),
                Err(e) => (Err(e), Vec::new()),
            };
        }
        let mut scratch = Scratch::new(self, index, at);
        let outcome = match scratch.plan(cmd) {
            Ok(outcome) => outcome,
            Err(e) => return (Err(e), Vec::new()),
        };
        if matches!(outcome, Outcome::Txn(Err(_))) {
            // A failed transaction applies nothing (its scratch is dropped).
            return (Ok(outcome), Vec::new());
        }
        // Everything fallible (checks, encoding) happens before the commit.
        match scratch.encode(wanted) {
            Ok((plans, rows)) => {
                self.commit(plans);
                (Ok(outcome), rows)
            }
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Runs a transaction's operations against the applied state without
    /// changing it: the read-only transactions, which no Raft entry carries.
    pub fn read_txn(&self, ops: &[txn::TxnOp]) -> Result<Vec<TxnResult>, Vec<TxnError>> {
        let mut scratch = Scratch::new(self, 0, 0);
        txn::run(&mut scratch, ops)
    }

    /// Full image for a Raft snapshot, every table, in key order, in the same
    /// format as [`RowChange`] (the layout is in `rows.rs`).
    pub fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rows = Vec::new();
        self.image_step(&mut ImageCursor::default(), usize::MAX, &mut |k, v| {
            rows.push((k, v))
        });
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Rebuild from rows (restart from RocksDB, or installing a snapshot),
    /// each row to its table by its key's prefix. Err on a row nothing can
    /// decode, or on a catalog that does not hold together.
    pub fn from_rows<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(
        datacenter: &str,
        rows: I,
    ) -> Result<Self, String> {
        let mut state = StateStore::new(datacenter);
        for (key, value) in rows {
            let text = std::str::from_utf8(&key).ok();
            let split = text.and_then(|k| {
                [
                    KV_PREFIX,
                    TOMBSTONE_PREFIX,
                    LOCK_DELAY_PREFIX,
                    SESSION_PREFIX,
                    EXTRA_INDEX_PREFIX,
                    events::EVENT_PREFIX,
                ]
                .into_iter()
                .find_map(|p| Some((p, k.strip_prefix(p)?)))
            });
            if let Some(rest) = text.and_then(|k| k.strip_prefix(acl::ACL_PREFIX)) {
                state
                    .acl
                    .load_row(rest, &value)
                    .map_err(|e| format!("bad row {text:?}: {e}"))?;
                continue;
            }
            let loaded = match split {
                Some((p @ SESSION_PREFIX, name)) => state.sessions.load_row(p, name, &value),
                Some((events::EVENT_PREFIX, name)) => state.events.load_row(name, &value),
                Some((p @ EXTRA_INDEX_PREFIX, name)) if name == rows::SESSIONS_INDEX => {
                    state.sessions.load_row(p, name, &value)
                }
                Some((p, name)) => state.kv.load_row(p, name, &value),
                None => {
                    state.catalog.load_row(&key, &value)?;
                    continue;
                }
            };
            loaded.map_err(|e| format!("bad row {:?}: {e}", String::from_utf8_lossy(&key)))?;
        }
        state.catalog = state.catalog.finish_load()?;
        Ok(state)
    }

    /// Install a planned entry in every table. Cannot fail.
    fn commit(&mut self, plans: Plans) {
        self.catalog.commit(plans.catalog);
        self.kv.commit(plans.kv);
        self.sessions.commit(plans.sessions);
        if let Some(event) = plans.event {
            self.events.commit(event);
        }
        self.acl.commit(plans.acl);
    }
}

/// One entry's planned writes, encoded and ready to commit.
struct Plans {
    /// The catalog's.
    catalog: plan::WritePlan,
    /// The KV table's.
    kv: kv::KvPlan,
    /// The sessions table's.
    sessions: session::SessionPlan,
    /// A fired user event, as it will be kept.
    event: Option<registry_api::event::UserEvent>,
    /// The ACL tables'.
    acl: acl::AclPlan,
}

/// The state as one Raft entry sees it while it is planned: every table with
/// the entry's writes so far laid over it. Reads through it see earlier
/// writes of the same entry; nothing reaches the tables until
/// [`StateStore::commit`].
struct Scratch<'a> {
    /// The entry's Raft index: what its writes are stamped with.
    index: u64,
    /// The entry's time, ms since the epoch (lock-delays, renewals).
    at: u64,
    /// The catalog.
    catalog: WritePlanner<'a>,
    /// The KV table.
    kv: kv::KvView<'a>,
    /// The sessions.
    sessions: session::SessionView<'a>,
    /// The user events.
    events: &'a EventTable,
    /// A user event this entry fires, with its rows.
    event: Option<(registry_api::event::UserEvent, Vec<RowChange>)>,
    /// The ACL tables.
    acl: &'a AclTable,
    /// This entry's ACL change.
    acl_plan: acl::AclPlan,
}

impl<'a> Scratch<'a> {
    /// A view of `state` for an entry at `index` and `at`.
    fn new(state: &'a StateStore, index: u64, at: u64) -> Self {
        Scratch {
            index,
            at,
            catalog: WritePlanner::new(&state.catalog, index),
            kv: kv::KvView::new(&state.kv),
            sessions: session::SessionView::new(&state.sessions),
            events: &state.events,
            event: None,
            acl: &state.acl,
            acl_plan: acl::AclPlan::default(),
        }
    }

    /// Plans `cmd`: its outcome, or `Err` to reject it.
    fn plan(&mut self, cmd: &Command) -> Result<Outcome, String> {
        Ok(match cmd {
            Command::Register(_) | Command::Deregister(_) | Command::RegisterIfNodeExists(_) => {
                let base = self.catalog.base();
                base.plan_command(&mut self.catalog, cmd)?;
                self.invalidate_for_catalog();
                Outcome::Done
            }
            Command::Kv(op) => {
                let (index, at) = (self.index, self.at);
                match kv::apply_op(&mut self.kv, &self.sessions, index, at, op)? {
                    kv::KvResult::Done(_) => Outcome::Bool(true),
                    kv::KvResult::Refused(_) => Outcome::Bool(false),
                }
            }
            Command::Txn(req) => Outcome::Txn(txn::run(self, &req.ops)),
            Command::SessionCreate(s) => {
                self.create_session(s)?;
                Outcome::Done
            }
            Command::SessionDestroy(s) => {
                self.invalidate_session(&s.id);
                Outcome::Done
            }
            Command::SessionRenew(s) => Outcome::Session(self.sessions.renew(&s.id, self.at)),
            Command::SessionExpire(SessionExpiry { id, renewed_at }) => {
                let due = (self.sessions.get(id)).is_some_and(|s| s.renewed_at == *renewed_at);
                if due {
                    self.invalidate_session(id);
                }
                Outcome::Bool(due)
            }
            Command::KvReapTombstones(reap) => {
                self.kv.reap(reap.up_to_index, self.at);
                Outcome::Done
            }
            Command::FireEvent(event) => {
                self.event = Some(self.events.plan(self.index, event)?);
                Outcome::Done
            }
            Command::AclBootstrap(r) => self.plan_acl(acl::AclCommand::Bootstrap(r))?,
            Command::AclTokenSet(r) => self.plan_acl(acl::AclCommand::TokenSet(r))?,
            Command::AclTokenDelete(r) => self.plan_acl(acl::AclCommand::TokenDelete(&r.id))?,
            Command::AclPolicySet(r) => self.plan_acl(acl::AclCommand::PolicySet(r))?,
            Command::AclPolicyDelete(r) => self.plan_acl(acl::AclCommand::PolicyDelete(&r.id))?,
            Command::AclRoleSet(r) => self.plan_acl(acl::AclCommand::RoleSet(r))?,
            Command::AclRoleDelete(r) => self.plan_acl(acl::AclCommand::RoleDelete(&r.id))?,
            Command::AclReplicate(r) => self.plan_acl(acl::AclCommand::Replicate(r))?,
            // `StateStore::apply` applies a restore whole, before any scratch exists.
            Command::Restore(_) => return Err("a restore cannot be part of another write".into()),
        })
    }

    /// Plans an ACL write (one per entry: ACL commands are never part of a transaction).
    fn plan_acl(&mut self, cmd: acl::AclCommand<'_>) -> Result<Outcome, String> {
        let (plan, outcome) = self.acl.plan(self.index, self.at, &cmd)?;
        self.acl_plan = plan;
        Ok(outcome)
    }

    /// Creates a session (Consul's `sessionCreateTxn`): its node must exist
    /// and each of its checks exist on it and not be critical.
    fn create_session(&mut self, s: &NewSession) -> Result<(), String> {
        let mut s = s.clone();
        session::validate_create(&mut s)?;
        if self.sessions.exists(&s.id) {
            return Err(format!("Session ID {:?} is already in use", s.id));
        }
        if self.catalog.node(&s.node).is_none() {
            return Err("Missing node registration".into());
        }
        let stored = StoredSession {
            name: s.name,
            node: s.node,
            lock_delay: s.lock_delay,
            behavior: s.behavior,
            ttl: s.ttl,
            node_checks: s.node_checks,
            service_checks: s.service_checks,
            create_index: self.index,
            modify_index: self.index,
            renewed_at: self.at,
        };
        for id in stored.check_ids() {
            match self.catalog.check(&stored.node, id) {
                None => return Err(format!("Missing check '{id}' registration")),
                Some(c) if c.status == CRITICAL => {
                    return Err(format!("Check '{id}' is in {CRITICAL} state"))
                }
                Some(_) => {}
            }
        }
        self.sessions.create(&s.id, stored, self.index);
        Ok(())
    }

    /// Invalidates session `id` if it exists (Consul's `deleteSessionTxn`):
    /// removes it, releases (Behavior `release`: the holder cleared,
    /// LockIndex kept) or deletes (Behavior `delete`) every key it holds,
    /// and keeps each of those keys from being acquired for the session's
    /// lock-delay (at most 60 s) from this entry's time.
    fn invalidate_session(&mut self, id: &str) {
        let Some(s) = self.sessions.get(id).cloned() else {
            return;
        };
        self.sessions.remove(id, self.index);
        let delay = kv::lock_delay_ms(s.lock_delay);
        for key in self.kv.held_by(id) {
            if s.behavior == registry_api::kv::BEHAVIOR_DELETE {
                self.kv.delete_held(&key, self.index);
            } else {
                self.kv.release(&key, self.index);
            }
            if delay > 0 {
                self.kv.set_lock_delay(&key, self.at.saturating_add(delay));
            }
        }
    }

    /// After catalog writes: invalidates every session of the nodes they
    /// touched whose node is gone or one of whose checks is gone or
    /// critical. Only those nodes' sessions are looked at, so a write on a
    /// node without sessions costs one map lookup.
    fn invalidate_for_catalog(&mut self) {
        let nodes: Vec<String> = self
            .catalog
            .touched_nodes()
            .into_iter()
            .map(str::to_string)
            .collect();
        for node in nodes {
            for id in self.sessions.on_node(&node) {
                let Some(s) = self.sessions.get(&id) else {
                    continue;
                };
                let invalid = self.catalog.node(&node).is_none()
                    || s.check_ids().any(|check| {
                        self.catalog
                            .check(&node, check)
                            .is_none_or(|c| c.status == CRITICAL)
                    });
                if invalid {
                    self.invalidate_session(&id);
                }
            }
        }
    }

    /// Encodes every table's planned writes as rows (the catalog's as `wanted`).
    fn encode(self, wanted: RowsWanted) -> Result<(Plans, Vec<RowChange>), String> {
        let (catalog, mut rows) = self.catalog.pending.encode(wanted)?;
        self.kv.plan.encode(&mut rows)?;
        self.sessions.plan.encode(&mut rows)?;
        self.acl_plan.encode(self.acl, &mut rows)?;
        let event = self.event.map(|(event, event_rows)| {
            rows.extend(event_rows);
            event
        });
        Ok((
            Plans {
                catalog,
                kv: self.kv.plan,
                sessions: self.sessions.plan,
                event,
                acl: self.acl_plan,
            },
            rows,
        ))
    }
}

/// The value at `key` as a Raft entry sees it while it is planned: the
/// entry's planned write (`None`: a delete) if any, else the committed one.
/// The tables' views read through this, but for the catalog's nodes, which are
/// boxed in the committed table (`WritePlanner::node`).
fn current<'a, K, Q, V>(
    planned: &'a BTreeMap<K, Option<V>>,
    base: &'a BTreeMap<K, V>,
    key: &Q,
) -> Option<&'a V>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    planned
        .get(key)
        .map_or_else(|| base.get(key), Option::as_ref)
}

/// The keys of `owner`'s group as a Raft entry sees them while it is planned:
/// of the committed group (`groups`) and of the entry's planned writes, those
/// whose current value `belongs` to it, in key order.
fn current_group<V>(
    groups: &rows::Groups,
    planned: &BTreeMap<String, Option<V>>,
    base: &BTreeMap<String, V>,
    owner: &str,
    belongs: impl Fn(&V) -> bool,
) -> Vec<String> {
    let committed = groups.get(owner).into_iter().flatten();
    let candidates: BTreeSet<&String> = committed.chain(planned.keys()).collect();
    candidates
        .into_iter()
        .filter(|k| current(planned, base, k.as_str()).is_some_and(&belongs))
        .cloned()
        .collect()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
