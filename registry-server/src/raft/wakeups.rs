//! Per-service wake-ups for blocking reads. A blocking read of one service
//! (`/v1/health/service/<name>`, `/v1/catalog/service/<name>`: what
//! consul-template, Envoy's control planes and every service-discovery client
//! watch) waits on that service's channel here instead of on every applied
//! write: with W watchers over many services, a write wakes the watchers of
//! the services it changed, not all W of them to find their index unmoved.
//!
//! The Raft thread notifies the services whose `i/service/<name>` row an
//! applied batch wrote, after the batch is visible to readers, and every
//! service when the state was rebuilt whole (a restore, a snapshot
//! installed). A reader subscribes under the applied-state read lock, so a
//! batch is either in what it reads or notified after it subscribed.

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
