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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The channels, by service name (or KV prefix). An entry lives while a
/// reader holds a receiver of it; the ones nobody holds are dropped when
/// notified, and all of them whenever the map has doubled since its last
/// sweep (checked at every subscription and notification), so the map holds
/// at most about twice the channels readers hold, and never fewer than
/// [`SWEEP_FLOOR`]. Readers subscribe under the applied-state read lock; the
/// Raft thread notifies holding no applied-state lock.
#[derive(Default)]
pub(crate) struct Wakeups {
    inner: Mutex<Channels>,
}

#[derive(Default)]
struct Channels {
    by_name: HashMap<String, Arc<watch::Sender<u64>>>,
    /// Names by byte length (length -> how many): the lengths a written KV
    /// key's prefixes are looked up at.
    lengths: BTreeMap<usize, usize>,
    /// Entries after the last sweep.
    swept_to: usize,
}

impl Channels {
    fn insert(&mut self, name: &str, tx: Arc<watch::Sender<u64>>) {
        if self.by_name.insert(name.to_string(), tx).is_none() {
            *self.lengths.entry(name.len()).or_default() += 1;
        }
    }

    fn remove(&mut self, name: &str) {
        if self.by_name.remove(name).is_some() {
            if let Some(n) = self.lengths.get_mut(&name.len()) {
                *n -= 1;
                if *n == 0 {
                    self.lengths.remove(&name.len());
                }
            }
        }
    }

    /// Drops the channels nobody holds.
    fn sweep(&mut self) {
        self.by_name.retain(|_, tx| tx.receiver_count() > 0);
        self.lengths.clear();
        for name in self.by_name.keys() {
            *self.lengths.entry(name.len()).or_default() += 1;
        }
        self.swept_to = self.by_name.len();
    }

    /// [`Channels::sweep`] once the map has doubled since the last one.
    fn sweep_if_doubled(&mut self) {
        if self.by_name.len() >= (2 * self.swept_to).max(SWEEP_FLOOR) {
            self.sweep();
        }
    }

    /// `name`'s channel, dropped instead if nobody holds it.
    fn held(&mut self, name: &str) -> Option<Arc<watch::Sender<u64>>> {
        let tx = self.by_name.get(name)?;
        if tx.receiver_count() == 0 {
            self.remove(name);
            return None;
        }
        Some(tx.clone())
    }
}

/// Entries below which the map is never swept.
const SWEEP_FLOOR: usize = 64;

/// Distinct prefix lengths up to which a KV write wakes only the watchers of
/// its prefixes. Past it (readers watching prefixes of many lengths) every KV
/// watcher wakes, as all did before per-prefix wake-ups: the Raft thread's
/// work per written key stays at most this many look-ups.
const MAX_PREFIX_LENGTHS: usize = 16;

impl Wakeups {
    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that changes at every later notification of `name`.
    pub(crate) fn subscribe(&self, name: &str) -> watch::Receiver<u64> {
        let mut ch = self.lock();
        if let Some(tx) = ch.by_name.get(name) {
            return tx.subscribe();
        }
        ch.sweep_if_doubled();
        let (tx, rx) = watch::channel(0);
        ch.insert(name, Arc::new(tx));
        rx
    }

    /// Wakes the readers of `names`. The wakers run after the lock is
    /// released: thousands of watchers of one service must not hold up
    /// readers subscribing to others.
    pub(crate) fn notify<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let woken: Vec<_> = {
            let mut ch = self.lock();
            ch.sweep_if_doubled();
            names.into_iter().filter_map(|name| ch.held(name)).collect()
        };
        wake(woken);
    }

    /// Wakes the readers of every name that is a prefix of one of `keys`: the
    /// KV store's channels are by watched prefix (a read of one key watches
    /// that key as a prefix of itself, and is woken by a write to a longer key
    /// too, which its probe then finds unmoved). One look-up per key and
    /// distinct watched length; past [`MAX_PREFIX_LENGTHS`] lengths, every
    /// reader wakes.
    pub(crate) fn notify_prefixes_of<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let woken: Vec<_> = {
            let mut ch = self.lock();
            ch.sweep_if_doubled();
            if ch.lengths.len() > MAX_PREFIX_LENGTHS {
                drop(ch);
                return self.notify_all();
            }
            let lengths: Vec<usize> = ch.lengths.keys().copied().collect();
            let mut woken: Vec<Arc<watch::Sender<u64>>> = Vec::new();
            for key in keys {
                for &n in lengths.iter().take_while(|&&n| n <= key.len()) {
                    if let Some(tx) = key.get(..n).and_then(|p| ch.held(p)) {
                        woken.push(tx);
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
            ch.sweep();
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
        let w = Wakeups::default();
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
        let w = Wakeups::default();
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
    fn readers_that_come_and_go_without_writes_leave_no_channels_behind() {
        // KV reads subscribe to any key a client names, before their index is looked at:
        // with no write to sweep the map, subscribing must.
        let w = Wakeups::default();
        let kept = w.subscribe("kept/");
        for i in 0..10_000 {
            drop(w.subscribe(&format!("random-{i}/")));
        }
        assert!(w.len() <= 2 * SWEEP_FLOOR, "{} channels", w.len());
        assert_eq!(w.receivers("kept/"), 1);
        drop(kept);
    }

    #[test]
    fn prefixes_of_too_many_lengths_wake_every_kv_reader() {
        let w = Wakeups::default();
        let mut far = w.subscribe("elsewhere/");
        let held: Vec<_> = (1..=MAX_PREFIX_LENGTHS)
            .map(|n| w.subscribe(&"p".repeat(n)))
            .collect();
        w.notify_prefixes_of(["q"]);
        assert!(
            !far.has_changed().unwrap(),
            "{} lengths: by prefix",
            held.len() + 1
        );
        let _more = w.subscribe(&"p".repeat(MAX_PREFIX_LENGTHS + 1));
        w.notify_prefixes_of(["q"]);
        assert!(far.has_changed().unwrap(), "past the bound: everyone");
        far.borrow_and_update();
    }

    #[test]
    fn channels_nobody_holds_are_dropped() {
        let w = Wakeups::default();
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
