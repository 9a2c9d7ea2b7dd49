//! The sessions table (Consul's `sessions`, `agent/consul/state/session.go`):
//! sessions by ID, each tied to a node and to checks on it, with the time of
//! its last renewal so the leader can run TTL timers
//! (`leader/sessions.rs`).
//!
//! What happens to a session lives in `mod.rs` (`Scratch`), because it
//! reaches into the other tables in the same Raft entry: creating one checks
//! its node and checks in the catalog; invalidating one (destroy, TTL expiry,
//! a check gone critical or deregistered, its node deregistered) releases or
//! deletes the keys it holds and sets their lock-delays. Owns the session
//! rows, their validation and reads; must not touch the catalog or the KV
//! table itself.

use super::image::{whole_part, Part};
use super::rows::{
    extra_index_change, extra_index_row, from_decimal, from_json, group_insert, group_remove,
    json_part, prefixed, put_rows, Groups, RowChange, EXTRA_INDEX_PREFIX, SESSIONS_INDEX,
    SESSION_PREFIX,
};
use super::{current, current_group};
use registry_api::kv::{
    NewSession, ServiceCheck, SessionEntry, BEHAVIOR_DELETE, BEHAVIOR_RELEASE, SESSION_TTL_MAX,
    SESSION_TTL_MIN,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `SessionDestroy` and `SessionRenew` commands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SessionId {
    /// The session.
    #[serde(rename = "ID")]
    pub id: String,
}

/// The `SessionExpire` command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SessionExpiry {
    /// The session.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its last renewal as the leader saw it: the expiry applies only if the
    /// session was not renewed since.
    pub renewed_at: u64,
}

/// A session as the table keeps it: the API's [`SessionEntry`] without its
/// ID (the map's key), plus its last renewal. Also the row's JSON form.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct StoredSession {
    /// Human-readable name.
    pub(super) name: String,
    /// The node it belongs to.
    pub(super) node: String,
    /// Lock-delay, ns.
    pub(super) lock_delay: u64,
    /// `release` or `delete`.
    pub(super) behavior: String,
    /// The TTL as sent.
    #[serde(rename = "TTL")]
    pub(super) ttl: String,
    /// Node checks it depends on.
    pub(super) node_checks: Vec<String>,
    /// Service checks it depends on.
    pub(super) service_checks: Vec<ServiceCheck>,
    /// Raft index that created it.
    pub(super) create_index: u64,
    /// Raft index of its last change (renewals do not count: they wake no
    /// watcher, as in Consul, where they never reach the state store).
    pub(super) modify_index: u64,
    /// When it was created or last renewed: the `at` (ms since the epoch) of
    /// that Raft entry.
    pub(super) renewed_at: u64,
}

impl StoredSession {
    /// The API form of session `id`.
    pub(super) fn to_api(&self, id: &str) -> SessionEntry {
        SessionEntry {
            id: id.to_string(),
            name: self.name.clone(),
            node: self.node.clone(),
            lock_delay: self.lock_delay,
            behavior: self.behavior.clone(),
            ttl: self.ttl.clone(),
            node_checks: self.node_checks.clone(),
            service_checks: self.service_checks.clone(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }

    /// Every check ID on its node it depends on.
    pub(super) fn check_ids(&self) -> impl Iterator<Item = &str> {
        let node = self.node_checks.iter().map(String::as_str);
        node.chain(self.service_checks.iter().map(|c| c.id.as_str()))
    }

    /// The TTL in ms, 0 without one (validated at create, so it parses).
    pub(super) fn ttl_ms(&self) -> u64 {
        parse_ttl(&self.ttl).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A TTL as Consul reads it: empty is none, else a Go duration.
fn parse_ttl(ttl: &str) -> Result<Duration, String> {
    match ttl {
        "" => Ok(Duration::ZERO),
        t => {
            registry_api::duration::parse(t).map_err(|e| format!("Session TTL '{t}' invalid: {e}"))
        }
    }
}

/// Checks and normalizes a session to create BEFORE it is proposed (`Err` is
/// a 400 with Consul's text), and again at apply: these rules are part of the
/// replicated semantics, like `CatalogState::validate_register`'s.
pub fn validate_create(s: &mut NewSession) -> Result<(), String> {
    if s.id.is_empty() {
        return Err("Must provide ID".into());
    }
    if s.node.is_empty() {
        return Err("Must provide Node".into());
    }
    match s.behavior.as_str() {
        "" => s.behavior = BEHAVIOR_RELEASE.to_string(),
        BEHAVIOR_RELEASE | BEHAVIOR_DELETE => {}
        other => return Err(format!("Invalid Behavior setting '{other}'")),
    }
    let ttl = parse_ttl(&s.ttl)?;
    if !ttl.is_zero() && !(SESSION_TTL_MIN..=SESSION_TTL_MAX).contains(&ttl) {
        return Err(format!(
            "Invalid Session TTL '{}', must be between [{}={}]",
            ttl.as_nanos(),
            registry_api::duration::format(SESSION_TTL_MIN),
            registry_api::duration::format(SESSION_TTL_MAX)
        ));
    }
    for c in s.service_checks.iter().map(|c| &c.id).chain(&s.node_checks) {
        if c.is_empty() {
            return Err("Session checks must have an ID".into());
        }
    }
    Ok(())
}

/// How many parts the sessions' image has ([`SessionTable::image_part`]).
pub(super) const IMAGE_PARTS: usize = 2;

/// The sessions of one datacenter, as replicated by Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTable {
    /// Sessions by ID.
    sessions: BTreeMap<String, StoredSession>,
    /// The table's blocking-query index: the last create or invalidation.
    index: u64,
    /// Session IDs by node. Derived, not persisted: a catalog write looks
    /// only at the sessions of the nodes it touched.
    by_node: Groups,
    /// The sessions with a TTL by (last renewal + TTL, ID), each with its
    /// TTL in ms (parsed once, at load or commit). Derived, not persisted:
    /// the leader's once-a-second scan reads only the sessions whose TTL has
    /// lapsed, in deadline order, not every session.
    by_ttl_deadline: BTreeMap<(u64, String), u64>,
}

impl SessionTable {
    /// Session `id` as a list (`/v1/session/info/:id`: `[]` when it does not
    /// exist) and the table's index.
    pub fn info(&self, id: &str) -> (Vec<SessionEntry>, u64) {
        let found = self.sessions.get(id).map(|s| s.to_api(id));
        (found.into_iter().collect(), self.index.max(1))
    }

    /// The sessions of `node` and the table's index.
    pub fn node_sessions(&self, node: &str) -> (Vec<SessionEntry>, u64) {
        let ids = self.by_node.get(node).into_iter().flatten();
        let list = ids.filter_map(|id| Some(self.sessions.get(id)?.to_api(id)));
        (list.collect(), self.index.max(1))
    }

    /// Every session and the table's index.
    pub fn list(&self) -> (Vec<SessionEntry>, u64) {
        let list = self.sessions.iter().map(|(id, s)| s.to_api(id));
        (list.collect(), self.index.max(1))
    }

    /// Session `id`, if it exists.
    pub fn get(&self, id: &str) -> Option<SessionEntry> {
        self.sessions.get(id).map(|s| s.to_api(id))
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// A restore at `index` and time `at` (`restore.rs`): every session
    /// modified at `index` (created at most then) and renewed at `at`, the
    /// table's index at `index`. The derived indexes are rebuilt by the
    /// caller.
    pub(super) fn restamp(&mut self, index: u64, at: u64) {
        for s in self.sessions.values_mut() {
            (s.create_index, s.modify_index) = (s.create_index.min(index), index);
            s.renewed_at = at;
        }
        self.index = index;
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The sessions with a TTL: (ID, TTL in ms, last renewal in ms since the
    /// epoch), for the leader's timers.
    pub fn ttl_sessions(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.ttl_sessions_lapsed(u64::MAX)
    }

    /// The sessions with a TTL whose last renewal plus one TTL is at or
    /// before `until` (ms since the epoch), in that order: (ID, TTL in ms,
    /// last renewal). Reads only those.
    pub fn ttl_sessions_lapsed(&self, until: u64) -> impl Iterator<Item = (&str, u64, u64)> {
        self.by_ttl_deadline
            .iter()
            .take_while(move |((lapse, _), _)| *lapse <= until)
            .map(|((lapse, id), ttl)| (id.as_str(), *ttl, lapse - ttl))
    }

    /// Adds or removes session `id` to or from the derived indexes.
    fn index(&mut self, id: &str, s: &StoredSession, add: bool) {
        if add {
            group_insert(&mut self.by_node, &s.node, id);
        } else {
            group_remove(&mut self.by_node, &s.node, id);
        }
        let ttl = s.ttl_ms();
        if ttl > 0 {
            let key = (s.renewed_at.saturating_add(ttl), id.to_string());
            if add {
                self.by_ttl_deadline.insert(key, ttl);
            } else {
                self.by_ttl_deadline.remove(&key);
            }
        }
    }

    /// Decode one of this table's rows.
    pub(super) fn load_row(
        &mut self,
        prefix: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), String> {
        match prefix {
            SESSION_PREFIX => {
                let s: StoredSession = from_json(value)?;
                if let Some(old) = self.sessions.remove(name) {
                    self.index(name, &old, false);
                }
                self.index(name, &s, true);
                self.sessions.insert(name.to_string(), s);
            }
            EXTRA_INDEX_PREFIX if name == SESSIONS_INDEX => self.index = from_decimal(value)?,
            _ => return Err("not a session row".into()),
        }
        Ok(())
    }

    /// This table's rows, in no particular order.
    #[cfg(test)]
    pub(super) fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        super::image::table_rows(IMAGE_PARTS, |i| self.image_part(i, None))
    }

    /// Part `i` of the image after `after` (`image.rs`): the sessions, the
    /// table's index.
    pub(super) fn image_part<'a>(
        &'a self,
        i: usize,
        after: Option<(&'a str, &'a str)>,
    ) -> Part<'a> {
        match i {
            0 => json_part(SESSION_PREFIX, &self.sessions, after),
            1 => whole_part(after, extra_index_row(SESSIONS_INDEX, self.index)),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Install planned writes. Cannot fail.
    pub(super) fn commit(&mut self, plan: SessionPlan) {
        for (id, session) in plan.sessions {
            if let Some(old) = self.sessions.remove(&id) {
                self.index(&id, &old, false);
            }
            if let Some(s) = session {
                self.index(&id, &s, true);
                self.sessions.insert(id, s);
            }
        }
        if let Some(index) = plan.index {
            self.index = index;
        }
    }
}

/// Session writes planned for one Raft entry.
#[derive(Default)]
pub(super) struct SessionPlan {
    /// Upserts and deletions.
    sessions: BTreeMap<String, Option<StoredSession>>,
    /// The table's new index, when a session was created or invalidated.
    index: Option<u64>,
}

impl SessionPlan {
    /// Append the rows of these writes.
    pub(super) fn encode(&self, rows: &mut Vec<RowChange>) -> Result<(), String> {
        put_rows(rows, "session", &self.sessions, |id| {
            prefixed(SESSION_PREFIX, id)
        })?;
        if let Some(index) = self.index {
            rows.push(extra_index_change(SESSIONS_INDEX, index));
        }
        Ok(())
    }
}

/// The sessions as one Raft entry sees them while it is planned.
pub(super) struct SessionView<'a> {
    /// The table before the entry.
    base: &'a SessionTable,
    /// The writes so far.
    pub(super) plan: SessionPlan,
}

impl<'a> SessionView<'a> {
    /// A view with nothing planned yet.
    pub(super) fn new(base: &'a SessionTable) -> Self {
        SessionView {
            base,
            plan: SessionPlan::default(),
        }
    }

    /// Current session `id`.
    pub(super) fn get(&self, id: &str) -> Option<&StoredSession> {
        current(&self.plan.sessions, &self.base.sessions, id)
    }

    /// Whether session `id` currently exists.
    pub(super) fn exists(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// The current sessions of `node`, in ID order.
    pub(super) fn on_node(&self, node: &str) -> Vec<String> {
        let (base, planned) = (&self.base.sessions, &self.plan.sessions);
        current_group(&self.base.by_node, planned, base, node, |s| s.node == node)
    }

    /// Creates session `id` at Raft `index`.
    pub(super) fn create(&mut self, id: &str, session: StoredSession, index: u64) {
        self.plan.sessions.insert(id.to_string(), Some(session));
        self.plan.index = Some(index);
    }

    /// Records a renewal at `at`: the row changes, the index does not.
    pub(super) fn renew(&mut self, id: &str, at: u64) -> Option<SessionEntry> {
        let mut s = self.get(id)?.clone();
        s.renewed_at = at;
        let entry = s.to_api(id);
        self.plan.sessions.insert(id.to_string(), Some(s));
        Some(entry)
    }

    /// Removes session `id` at Raft `index` (the caller releases its keys).
    pub(super) fn remove(&mut self, id: &str, index: u64) {
        self.plan.sessions.insert(id.to_string(), None);
        self.plan.index = Some(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 item 4: the leader's scan reads only the sessions whose TTL
    /// lapsed, earliest first; renewals move a session, removals and loads
    /// keep the derived index in step with the sessions.
    #[test]
    fn the_ttl_index_reads_only_lapsed_sessions_in_deadline_order() {
        let mut t = SessionTable::default();
        let mk = |ttl: &str, renewed_at| StoredSession {
            node: "n1".into(),
            ttl: ttl.into(),
            renewed_at,
            ..Default::default()
        };
        let mut v = SessionView::new(&t);
        v.create("b", mk("30s", 0), 1);
        v.create("a", mk("10s", 1_000), 2);
        v.create("none", mk("", 0), 3);
        let plan = v.plan;
        t.commit(plan);
        assert_eq!(t.ttl_sessions_lapsed(10_999).count(), 0);
        let lapsed: Vec<_> = t.ttl_sessions_lapsed(30_000).collect();
        assert_eq!(lapsed, vec![("a", 10_000, 1_000), ("b", 30_000, 0)]);
        let mut v = SessionView::new(&t);
        v.renew("a", 40_000);
        v.remove("b", 4);
        let plan = v.plan;
        t.commit(plan);
        let all: Vec<_> = t.ttl_sessions().collect();
        assert_eq!(all, vec![("a", 10_000, 40_000)]);
        let mut loaded = SessionTable::default();
        for (key, value) in t.rows() {
            let key = String::from_utf8(key).unwrap();
            let cut = if key.starts_with(EXTRA_INDEX_PREFIX) {
                2
            } else {
                3
            };
            loaded.load_row(&key[..cut], &key[cut..], &value).unwrap();
        }
        assert_eq!(loaded, t);
    }

    fn new_session() -> NewSession {
        NewSession {
            id: "0b3b6f4e-55a1-4f35-a3a2-5a4a6b2cfe10".into(),
            node: "n1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_is_validated_with_consuls_texts() {
        let mut s = new_session();
        validate_create(&mut s).unwrap();
        assert_eq!(s.behavior, "release");
        for (ttl, ok) in [
            ("", true),
            ("0s", true),
            ("10s", true),
            ("86400s", true),
            ("24h", true),
        ] {
            let mut s = NewSession {
                ttl: ttl.into(),
                ..new_session()
            };
            assert_eq!(validate_create(&mut s).is_ok(), ok, "{ttl}");
        }
        let mut s = NewSession {
            ttl: "5s".into(),
            ..new_session()
        };
        assert_eq!(
            validate_create(&mut s).unwrap_err(),
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
        );
        let mut s = NewSession {
            ttl: "86401s".into(),
            ..new_session()
        };
        assert!(validate_create(&mut s)
            .unwrap_err()
            .starts_with("Invalid Session TTL"));
        let mut s = NewSession {
            ttl: "soon".into(),
            ..new_session()
        };
        assert!(validate_create(&mut s)
            .unwrap_err()
            .starts_with("Session TTL 'soon' invalid"));
        let mut s = NewSession {
            behavior: "keep".into(),
            ..new_session()
        };
        assert_eq!(
            validate_create(&mut s).unwrap_err(),
            "Invalid Behavior setting 'keep'"
        );
        let mut s = NewSession {
            node: String::new(),
            ..new_session()
        };
        assert_eq!(validate_create(&mut s).unwrap_err(), "Must provide Node");
    }
}
