//! A datacenter's recent user events (`PUT /v1/event/fire/:name`): the last
//! [`MAX_EVENTS`] fired, oldest first, as Consul's agents keep them. Consul
//! spreads events by gossip and each agent keeps its own ring in memory; here
//! an event is one Raft entry, so every server holds the same ring, it
//! survives restarts and snapshots, and an agent lists the events meant for it
//! from any server (`http/event.rs`). Owns the ring and its rows; must not
//! decide which agent an event is for (`registry_api::event`).

use super::rows::RowChange;
use registry_api::event::{check_fire_shape, UserEvent, MAX_EVENTS};
use std::collections::VecDeque;

/// Row-key prefix of an event: `ev/<LTime, 20 decimal digits>`, so that key
/// order is firing order.
pub(super) const EVENT_PREFIX: &str = "ev/";

/// The ring of recent events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventTable {
    /// Oldest first; at most [`MAX_EVENTS`].
    ring: VecDeque<UserEvent>,
}

impl EventTable {
    /// Plans recording `event`, fired by the entry at `index` (its LTime):
    /// the event as it will be kept, and the rows that keep it and drop the
    /// oldest past the bound. A fire whose shape breaks the rules is refused
    /// (they are checked before the proposal too, so this only catches an
    /// entry from a binary with other rules); its filters are not compiled
    /// here, as that outcome may differ between regex crate versions
    /// (`registry_api::event::check_fire_shape`).
    pub(super) fn plan(
        &self,
        index: u64,
        event: &UserEvent,
    ) -> Result<(UserEvent, Vec<RowChange>), String> {
        check_fire_shape(event)?;
        let mut event = event.clone();
        event.ltime = index;
        event.version = 1;
        let value = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        let mut rows = vec![RowChange {
            key: row_key(index),
            value: Some(value),
        }];
        let evicted = (self.ring.len() + 1).saturating_sub(MAX_EVENTS);
        for old in self.ring.iter().take(evicted) {
            rows.push(RowChange {
                key: row_key(old.ltime),
                value: None,
            });
        }
        Ok((event, rows))
    }

    /// Keeps a planned event, dropping the oldest past the bound. Cannot fail.
    pub(super) fn commit(&mut self, event: UserEvent) {
        self.ring.push_back(event);
        while self.ring.len() > MAX_EVENTS {
            self.ring.pop_front();
        }
    }

    /// A snapshot restore at `index` (`state/restore.rs`): the events keep their order and
    /// take the LTimes up to `index` (the newest `index` itself), so every LTime is at most
    /// the restore's and later fires, stamped with later indexes, sort after them on every
    /// server, restarted or not. Events that would need an LTime below 1 are dropped (only
    /// a restore at an index smaller than the ring can cause that).
    pub(super) fn restamp(&mut self, index: u64) {
        let keep = usize::try_from(index)
            .unwrap_or(usize::MAX)
            .min(self.ring.len());
        while self.ring.len() > keep {
            self.ring.pop_front();
        }
        let n = self.ring.len() as u64;
        for (i, event) in self.ring.iter_mut().enumerate() {
            event.ltime = index - (n - 1 - i as u64);
        }
    }

    /// The events, oldest first.
    pub fn events(&self) -> impl DoubleEndedIterator<Item = &UserEvent> {
        self.ring.iter()
    }

    /// The rows of a full image.
    pub(super) fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.ring
            .iter()
            .filter_map(|e| Some((row_key(e.ltime), serde_json::to_vec(e).ok()?)))
            .collect()
    }

    /// Loads one `ev/` row (`name` is the key after the prefix). Rows come in
    /// key order, which is firing order.
    pub(super) fn load_row(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let event: UserEvent = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        if name.parse::<u64>().ok() != Some(event.ltime) {
            return Err("event LTime differs from its key".into());
        }
        self.ring.push_back(event);
        if self.ring.len() > MAX_EVENTS {
            self.ring.pop_front();
        }
        Ok(())
    }
}

/// `ev/<index>` with the index zero-padded, so keys sort as numbers.
fn row_key(ltime: u64) -> Vec<u8> {
    format!("{EVENT_PREFIX}{ltime:020}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(name: &str) -> UserEvent {
        UserEvent {
            id: registry_api::ids::new_uuid(),
            name: name.into(),
            ..Default::default()
        }
    }

    /// The ring keeps the newest [`MAX_EVENTS`], stamps each with its entry's
    /// index, and its rows rebuild the same ring.
    #[test]
    fn the_ring_keeps_the_newest_and_rebuilds_from_rows() {
        let mut t = EventTable::default();
        let mut rows = std::collections::BTreeMap::new();
        for i in 1..=(MAX_EVENTS as u64 + 10) {
            let (event, planned) = t.plan(i, &fire(&format!("e{i}"))).unwrap();
            t.commit(event);
            for r in planned {
                match r.value {
                    Some(v) => rows.insert(r.key, v),
                    None => rows.remove(&r.key),
                };
            }
        }
        assert_eq!(t.events().count(), MAX_EVENTS);
        assert_eq!(t.events().next().map(|e| e.ltime), Some(11));
        assert_eq!(t.events().last().map(|e| e.name.as_str()), Some("e266"));
        assert_eq!(rows.len(), MAX_EVENTS, "evicted events leave no rows");
        let mut back = EventTable::default();
        for (k, v) in &rows {
            let name = std::str::from_utf8(k)
                .unwrap()
                .strip_prefix(EVENT_PREFIX)
                .unwrap();
            back.load_row(name, v).unwrap();
        }
        assert_eq!(back, t);
        let image: Vec<_> = t.rows();
        assert_eq!(image, rows.into_iter().collect::<Vec<_>>());
    }

    /// A restore gives the events LTimes ending at its index, in their order, so a fire
    /// after it sorts last on a server that rebuilds the ring from rows as well.
    #[test]
    fn a_restore_restamps_the_ring_below_its_index() {
        let mut t = EventTable::default();
        for (i, ltime) in [900u64, 950, 999].into_iter().enumerate() {
            let (event, _) = t.plan(ltime, &fire(&format!("e{i}"))).unwrap();
            t.commit(event);
        }
        t.restamp(50);
        let ltimes: Vec<u64> = t.events().map(|e| e.ltime).collect();
        assert_eq!(ltimes, [48, 49, 50]);
        let names: Vec<&str> = t.events().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["e0", "e1", "e2"]);
        let (later, _) = t.plan(51, &fire("after")).unwrap();
        t.commit(later);
        let mut back = EventTable::default();
        for (k, v) in t.rows() {
            let key = String::from_utf8(k).unwrap();
            back.load_row(key.strip_prefix(EVENT_PREFIX).unwrap(), &v)
                .unwrap();
        }
        assert_eq!(back, t, "rows rebuild the same order");
        t.restamp(2);
        let ltimes: Vec<u64> = t.events().map(|e| e.ltime).collect();
        assert_eq!(ltimes, [1, 2], "no LTime below 1");
    }

    #[test]
    fn a_fire_against_the_rules_is_refused() {
        let t = EventTable::default();
        assert!(t.plan(1, &fire("_reserved")).is_err());
        assert_eq!(t.events().count(), 0);
    }
}
