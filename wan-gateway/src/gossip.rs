//! WAN membership by push-pull exchange: every `gossip_interval` this gateway POSTs its view
//! (itself and every gateway it knows) to every gateway it knows, and to each `retry_join_wan`
//! address until one exchange with it succeeded; the reply is the peer's view. Both sides merge, so
//! a gateway pointed at any one member learns every DC and every gateway in a few rounds, with no
//! full list configured anywhere (the push-pull anti-entropy of Consul's memberlist, in its
//! simplest form: the WAN holds a handful of gateways per DC, so full views are small).
//!
//! Each direct exchange is also the liveness probe and the RTT sample of [`MemberTable`]. Dead
//! gateways keep being probed (every `dead_probe_every`), so one that returns is noticed without
//! restarting anything, until they are forgotten after the reconnect timeout.
//!
//! With a shared key (`--encrypt`) both directions are authenticated: the exchange request is
//! signed like every request between the registry's processes ([`registry_api::auth`]), and the
//! reply carries a signature bound to that request's signature ([`reply_scope`]), so neither a
//! gateway without the key nor whoever answers on an address we probe can add members or count
//! as alive.

use crate::members::GatewayEntry;
use crate::members::{MemberTable, WanView};
use registry_api::auth::{Purpose, SharedKey, SIGNATURE_HEADER};
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
/// Largest exchange reply read (a full table of [`crate::members::MAX_MEMBERS`] entries is
/// about 40 KiB).
const MAX_REPLY: usize = 1024 * 1024;
/// The "method" a signed exchange reply is signed under (no request uses it).
pub const REPLY_METHOD: &str = "REPLY";
/// Least time between two warnings about the same gateway refusing our exchanges.
const REFUSED_WARNING_EVERY: Duration = Duration::from_secs(60);

/// What an exchange reply is signed over in place of a path: the exchange path and the signature
/// of the request it answers, so a reply is valid for one request only (a recorded reply cannot
/// be replayed to another probe).
pub fn reply_scope(request_signature: &str) -> String {
    format!("{EXCHANGE_PATH} reply-to {request_signature}")
}

/// How one exchange ended.
#[derive(Debug)]
enum Outcome {
    /// The peer answered with a valid view.
    Reached,
    /// The peer could not be reached (or answered something else than a view).
    Failed,
    /// The peer refused us, or its reply was not signed with our key: most likely a different
    /// `--encrypt` key on one side, which the operator must hear of.
    Refused(String),
}

/// Locks the table. A poisoned lock means a panic while updating plain data; the table is still
/// usable (at worst one update is half applied), and the gateway must keep routing.
pub fn lock(members: &Mutex<MemberTable>) -> std::sync::MutexGuard<'_, MemberTable> {
    members.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the exchange rounds until `shutdown` fires, then waits for the exchanges in flight.
pub async fn run(
    members: Arc<Mutex<MemberTable>>,
    client: reqwest::Client,
    https: bool,
    key: Option<SharedKey>,
    retry_join: Vec<String>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut exchanges: JoinSet<Outcome> = JoinSet::new();
    // Which address each exchange in flight is probing.
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    // Join addresses that answered once; from then on they are probed as members.
    let mut joined: HashSet<String> = HashSet::new();
    // When each gateway that refused us was last warned about.
    let mut refused_warned: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        refused_warned.retain(|_, at| now.saturating_duration_since(*at) < REFUSED_WARNING_EVERY);
        while let Some(done) = exchanges.try_join_next_with_id() {
            let (id, outcome) = match done {
                Ok((id, outcome)) => (id, outcome),
                Err(e) => (e.id(), Outcome::Failed),
            };
            let Some(addr) = in_flight.remove(&id) else {
                continue;
            };
            match outcome {
                Outcome::Reached => {
                    if retry_join.contains(&addr) {
                        joined.insert(addr);
                    }
                }
                Outcome::Refused(reason) => {
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        refused_warned.entry(addr)
                    {
                        // The address is from our flags or our table: a checked `host:port`.
                        tracing::warn!(gateway = %slot.key(), %reason,
                            "gateway exchange refused; check that every gateway and server has the same --encrypt key");
                        slot.insert(now);
                    }
                }
                Outcome::Failed => {}
            }
        }
        let (view, mut targets) = {
            let mut table = lock(&members);
            table.forget_long_dead(now);
            // A join address whose gateway was forgotten is joined again (as at start) when
            // it returns, instead of never being asked again.
            joined.retain(|addr| table.contains(addr));
            (table.view(now), table.probe_targets(now))
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
                https,
                key.clone(),
                addr.clone(),
                view.clone(),
            ));
            in_flight.insert(handle.id(), addr);
        }
    }
    exchanges.shutdown().await;
}

/// Why an exchange did not yield a view.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// Transport, status or body.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The peer answered 403 (it does not accept our signature, or we sent none).
    #[error("403 Forbidden: {0}")]
    Forbidden(String),
    /// The reply is not signed by our key.
    #[error("the reply is not signed with this gateway's key: {0}")]
    Unsigned(registry_api::auth::AuthError),
    /// The reply is over [`MAX_REPLY`].
    #[error("the reply is over {MAX_REPLY} bytes")]
    TooLarge,
    /// The reply is not a view, or names an invalid gateway.
    #[error("invalid reply: {0}")]
    Invalid(String),
}

/// Sends our view to the gateway at `base` (`http(s)://host:port`) and returns its reply,
/// checked.
async fn send_view(
    client: &reqwest::Client,
    key: Option<&SharedKey>,
    base: &str,
    view: &WanView,
) -> Result<WanView, ExchangeError> {
    let body =
        serde_json::to_vec(view).map_err(|e| ExchangeError::Invalid(format!("encoding: {e}")))?;
    let signature = key.map(|k| k.sign_for(Purpose::Exchange, "POST", EXCHANGE_PATH, &body));
    let mut req = client
        .post(format!("{base}{EXCHANGE_PATH}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(EXCHANGE_TIMEOUT)
        .body(body);
    if let Some(sig) = &signature {
        req = req.header(SIGNATURE_HEADER, sig);
    }
    let mut resp = req.send().await?;
    if resp.status() == reqwest::StatusCode::FORBIDDEN {
        // The peer's reason (from `auth::require_signature`) says which side is off; bounded.
        // At most one chunk of it: the peer may be anything, and owes us no more than a line.
        let first = resp.chunk().await.ok().flatten().unwrap_or_default();
        let text = String::from_utf8_lossy(&first[..first.len().min(512)]);
        let reason: String = text.chars().take(200).filter(|c| !c.is_control()).collect();
        return Err(ExchangeError::Forbidden(reason));
    }
    resp = resp.error_for_status()?;
    let reply_signature = resp
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if bytes.len() + chunk.len() > MAX_REPLY {
            return Err(ExchangeError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    if let (Some(key), Some(sig)) = (key, &signature) {
        key.verify_for(
            Purpose::ExchangeReply,
            reply_signature.as_deref(),
            REPLY_METHOD,
            &reply_scope(sig),
            &bytes,
        )
        .map_err(ExchangeError::Unsigned)?;
    }
    let reply: WanView =
        serde_json::from_slice(&bytes).map_err(|e| ExchangeError::Invalid(e.to_string()))?;
    reply.me.check().map_err(ExchangeError::Invalid)?;
    Ok(reply)
}

/// One exchange with the gateway at `addr`.
async fn exchange(
    members: Arc<Mutex<MemberTable>>,
    client: reqwest::Client,
    https: bool,
    key: Option<SharedKey>,
    addr: String,
    view: WanView,
) -> Outcome {
    let started = Instant::now();
    let base = registry_api::forward::base_url_over(&addr, https);
    let result = send_view(&client, key.as_ref(), &base, &view).await;
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
            Outcome::Reached
        }
        Err(e) => {
            tracing::debug!(gateway = %addr, error = %e, "exchange failed");
            table.record_failure(&addr, now);
            // The warning this leads to quotes none of the peer's text.
            match e {
                ExchangeError::Forbidden(_) => {
                    Outcome::Refused("it answered 403 Forbidden".to_owned())
                }
                ExchangeError::Unsigned(_) => Outcome::Refused(e.to_string()),
                _ => Outcome::Failed,
            }
        }
    }
}
