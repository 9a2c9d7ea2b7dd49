//! WAN membership by push-pull exchange: every `gossip_interval` this gateway POSTs its view
//! (itself and every gateway it knows) to every gateway it knows, and to each `retry_join_wan`
//! address until one exchange with it succeeded; the reply is the peer's view. Both sides merge, so
//! a gateway pointed at any one member learns every DC and every gateway in a few rounds, with no
//! full list configured anywhere (the push-pull anti-entropy of Consul's memberlist, in its
//! simplest form: the WAN holds a handful of gateways per DC, so full views are small).
//!
//! Each direct exchange is also the liveness probe and the RTT sample of [`MemberTable`]. Dead
//! gateways keep being probed, so one that returns is noticed without restarting anything.

use crate::members::GatewayEntry;
use crate::members::{MemberTable, WanView};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Path of the exchange endpoint.
pub const EXCHANGE_PATH: &str = "/wan/v1/exchange";
/// Limit on one exchange (connect included). Exchanges run concurrently and a peer is not probed
/// again while its previous exchange is in flight, so a hanging peer never delays the others.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Locks the table. A poisoned lock means a panic while updating plain data; the table is still
/// usable (at worst one update is half applied), and the gateway must keep routing.
pub fn lock(members: &Mutex<MemberTable>) -> std::sync::MutexGuard<'_, MemberTable> {
    members.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the exchange rounds until `shutdown` fires, then waits for the exchanges in flight.
pub async fn run(
    members: Arc<Mutex<MemberTable>>,
    client: reqwest::Client,
    retry_join: Vec<String>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut exchanges: JoinSet<bool> = JoinSet::new();
    // Which address each exchange in flight is probing.
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    // Join addresses that answered once; from then on they are probed as members.
    let mut joined: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        while let Some(done) = exchanges.try_join_next_with_id() {
            let (id, ok) = match done {
                Ok((id, ok)) => (id, ok),
                Err(e) => (e.id(), false),
            };
            if let Some(addr) = in_flight.remove(&id) {
                if ok && retry_join.contains(&addr) {
                    joined.insert(addr);
                }
            }
        }
        let (view, mut targets) = {
            let table = lock(&members);
            (table.view(), table.addresses())
        };
        for addr in &retry_join {
            if *addr != view.me.addr && !joined.contains(addr) && !targets.contains(addr) {
                targets.push(addr.clone());
            }
        }
        let busy: HashSet<&String> = in_flight.values().collect();
        let targets: Vec<String> = targets.into_iter().filter(|a| !busy.contains(a)).collect();
        for addr in targets {
            let handle = exchanges.spawn(exchange(
                members.clone(),
                client.clone(),
                addr.clone(),
                view.clone(),
            ));
            in_flight.insert(handle.id(), addr);
        }
    }
    exchanges.shutdown().await;
}

/// One exchange with the gateway at `addr`; true when it answered.
async fn exchange(
    members: Arc<Mutex<MemberTable>>,
    client: reqwest::Client,
    addr: String,
    view: WanView,
) -> bool {
    let started = Instant::now();
    let result = async {
        client
            .post(format!("http://{addr}{EXCHANGE_PATH}"))
            .json(&view)
            .timeout(EXCHANGE_TIMEOUT)
            .send()
            .await?
            .error_for_status()?
            .json::<WanView>()
            .await
    }
    .await;
    let now = Instant::now();
    let mut table = lock(&members);
    match result {
        Ok(reply) => {
            // Liveness and round-trip time belong to the address we actually
            // reached; a gateway whose advertised address differs (no
            // --advertise behind NAT or on 0.0.0.0) is still tracked.
            if reply.me.addr != addr {
                tracing::warn!(gateway = %addr, advertised = %reply.me.addr,
                    "gateway advertises another address than the one it answered on; give it --advertise");
            }
            let reached = GatewayEntry {
                dc: reply.me.dc.clone(),
                addr: addr.clone(),
            };
            table.record_reached(&reached, now - started, now);
            table.merge_heard(&reply.members, now);
            true
        }
        Err(e) => {
            tracing::debug!(gateway = %addr, error = %e, "exchange failed");
            table.record_failure(&addr, now);
            false
        }
    }
}
