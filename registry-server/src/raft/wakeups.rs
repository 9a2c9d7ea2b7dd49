//! Per-service and per-KV-prefix wake-ups for blocking reads. A blocking read
//! of one service (`/v1/health/service/<name>`, `/v1/catalog/service/<name>`:
//! what consul-template, Envoy's control planes and every service-discovery
//! client watch) waits on that service's channel here instead of on every
//! applied write: with W watchers over many services, a write wakes the
//! watchers of the services it changed, not all W of them to find their index
//! unmoved. A blocking KV read (one key, or a prefix with `?recurse` or
//! `?keys`) waits likewise on its key or prefix, in a second map of the same
//! kind, woken by writes and deletes of the keys under it.
//!
//! The Raft thread notifies the services whose `i/service/<name>` row an
//! applied batch wrote, and the KV prefixes of the keys it wrote, after the
//! batch is visible to readers; every channel when the state was rebuilt whole
//! (a restore, a snapshot installed), and every KV channel when tombstones were
//! reaped (that moves the index of every KV read). A reader subscribes under
//! the applied-state read lock, so a batch is either in what it reads or
//! notified after it subscribed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The channels, by service name. An entry lives while a reader holds a
/// receiver of it; the ones nobody holds are dropped when notified, and all of
/// them whenever the Raft thread notifies with the map doubled since its last
/// sweep. A reader subscribes only to a name the catalog has, so the map holds
/// at most the catalog's service names. Readers subscribe under the
/// applied-state read lock: they only look up or insert here, and the sweeps
/// run on the Raft thread, which holds no applied-state lock while notifying.
#[derive(Default)]
pub(crate) struct ServiceWakeups {
    inner: Mutex<Channels>,
}

#[derive(Default)]
struct Channels {
    by_name: HashMap<String, Arc<watch::Sender<u64>>>,
    /// Entries after the last sweep.
    swept_to: usize,
}

/// Entries below which the map is never swept.
const SWEEP_FLOOR: usize = 64;

impl ServiceWakeups {
    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that changes at every later notification of `name`.
    pub(crate) fn subscribe(&self, name: &str) -> watch::Receiver<u64> {
        let mut ch = self.lock();
        if let Some(tx) = ch.by_name.get(name) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(0);
        ch.by_name.insert(name.to_string(), Arc::new(tx));
        rx
    }

    /// Wakes the readers of `names`. The wakers run after the lock is
    /// released: thousands of watchers of one service must not hold up
    /// readers subscribing to others.
    pub(crate) fn notify<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let woken: Vec<_> = {
            let mut ch = self.lock();
            if ch.by_name.len() >= (2 * ch.swept_to).max(SWEEP_FLOOR) {
                ch.by_name.retain(|_, tx| tx.receiver_count() > 0);
                ch.swept_to = ch.by_name.len();
            }
            names
                .into_iter()
                .filter_map(|name| {
                    let tx = ch.by_name.get(name)?;
                    if tx.receiver_count() == 0 {
                        ch.by_name.remove(name);
                        return None;
                    }
                    Some(tx.clone())
                })
                .collect()
        };
        wake(woken);
    }

    /// Wakes the readers of every name that is a prefix of one of `keys`: the
    /// KV store's channels are by watched prefix (a read of one key watches
    /// that key as a prefix of itself, and is woken by a write to a longer key
    /// too, which its probe then finds unmoved). Costs a pass over the names'
    /// lengths, then one look-up per key and distinct length.
    pub(crate) fn notify_prefixes_of<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let woken: Vec<_> = {
            let mut ch = self.lock();
            ch.by_name.retain(|_, tx| tx.receiver_count() > 0);
            ch.swept_to = ch.by_name.len();
            let mut lengths: Vec<usize> = ch.by_name.keys().map(String::len).collect();
            lengths.sort_unstable();
            lengths.dedup();
            let mut woken: Vec<Arc<watch::Sender<u64>>> = Vec::new();
            for key in keys {
                for &n in lengths.iter().take_while(|&&n| n <= key.len()) {
                    let prefix = key.get(..n);
                    if let Some(tx) = prefix.and_then(|p| ch.by_name.get(p)) {
                        woken.push(tx.clone());
                    }
                }
            }
            woken.sort_unstable_by_key(Arc::as_ptr);
            woken.dedup_by_key(|tx| Arc::as_ptr(tx));
            woken
        };
        wake(woken);
    }

    /// Wakes every reader (the state was rebuilt whole).
    pub(crate) fn notify_all(&self) {
        let woken: Vec<_> = {
            let mut ch = self.lock();
            ch.by_name.retain(|_, tx| tx.receiver_count() > 0);
            ch.swept_to = ch.by_name.len();
            ch.by_name.values().cloned().collect()
        };
        wake(woken);
    }

    /// Readers holding `name`'s channel.
    pub(crate) fn receivers(&self, name: &str) -> usize {
        (self.lock().by_name.get(name)).map_or(0, |tx| tx.receiver_count())
    }

    /// Names with a channel (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_name.len()
    }
}

/// Moves each channel on, which wakes its readers (outside the map's lock).
fn wake(channels: Vec<Arc<watch::Sender<u64>>>) {
    for tx in channels {
        tx.send_modify(|v| *v = v.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_wakes_the_readers_of_that_service_only() {
        let w = ServiceWakeups::default();
        let mut web = w.subscribe("web");
        let mut web2 = w.subscribe("web");
        let mut db = w.subscribe("db");
        w.notify(["web", "never-watched"]);
        assert!(web.has_changed().unwrap());
        assert!(web2.has_changed().unwrap());
        assert!(!db.has_changed().unwrap());
        web.borrow_and_update();
        w.notify(["db"]);
        assert!(!web.has_changed().unwrap());
        assert!(db.has_changed().unwrap());
        db.borrow_and_update();
        web2.borrow_and_update();
        w.notify_all();
        assert!(web.has_changed().unwrap() && web2.has_changed().unwrap());
        assert!(db.has_changed().unwrap());
    }

    #[test]
    fn a_kv_write_wakes_the_watchers_of_its_prefixes_only() {
        let w = ServiceWakeups::default();
        let mut all = w.subscribe("");
        let mut app = w.subscribe("app/");
        let mut key = w.subscribe("app/db/url");
        let other = w.subscribe("other/");
        w.notify_prefixes_of(["app/db/url"]);
        assert!(all.has_changed().unwrap() && app.has_changed().unwrap());
        assert!(key.has_changed().unwrap());
        assert!(!other.has_changed().unwrap());
        for rx in [&mut all, &mut app, &mut key] {
            rx.borrow_and_update();
        }
        // A sibling key: the prefixes above it, not the key beside it.
        w.notify_prefixes_of(["app/web", "ap"]);
        assert!(all.has_changed().unwrap() && app.has_changed().unwrap());
        assert!(!key.has_changed().unwrap() && !other.has_changed().unwrap());
        // Not a prefix at a character boundary: no panic, no wake-up.
        let mut multi = w.subscribe("é");
        w.notify_prefixes_of(["xé"]);
        assert!(!multi.has_changed().unwrap());
        w.notify_prefixes_of(["éa"]);
        assert!(multi.has_changed().unwrap());
        multi.borrow_and_update();
    }

    #[test]
    fn channels_nobody_holds_are_dropped() {
        let w = ServiceWakeups::default();
        let kept = w.subscribe("kept");
        for i in 0..1_000 {
            drop(w.subscribe(&format!("gone-{i}")));
            // The Raft thread notifies after every batch that moved a service.
            w.notify(["elsewhere"]);
        }
        // Swept whenever the map doubles: never more than twice what is held.
        assert!(w.len() <= 2 * SWEEP_FLOOR, "{} channels", w.len());
        assert_eq!(w.receivers("kept"), 1);
        w.notify_all();
        assert_eq!(w.len(), 1);
        let again = w.subscribe("kept");
        w.notify(["kept"]);
        assert!(again.has_changed().unwrap());
        drop((kept, again));
        w.notify(["kept"]);
        assert_eq!(w.len(), 0);
    }
}
