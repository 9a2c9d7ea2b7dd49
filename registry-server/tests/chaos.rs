//! Randomized fault schedules against a 3-server cluster, with a history
//! checker: writes and default/`?consistent` reads must be linearizable (so no
//! acknowledged write is lost), `?stale` reads from one server never go
//! backwards, there are never two leaders in one term, and a KV lock taken
//! with sessions never has two holders.
//!
//! **Catalog and KV registers.** Clients register (each time a new `Meta.v`),
//! deregister and read 8 service instances, and write, delete and read 8 KV
//! keys `chaos/k<i>`, through all three servers. KV writes are plain `PUT`s,
//! `PUT ?cas=<ModifyIndex>` (the index of the client's last read of the key,
//! or 0 when that read found none), `DELETE` and `DELETE ?cas=`; every value
//! is new. The checker (`registry_testkit::history`) models each key as a
//! register with a compare-and-set: a CAS that answered `true` must linearize
//! while the value whose index it named was current, that is after that
//! write and before any other (an update never lost, never applied to a
//! value that was already replaced); one that answered `false` must
//! linearize where that value was not current (a write that came between
//! explains it, one whose answer never came included); a CAS whose answer
//! never came may have taken effect or not. Indexes become values through
//! the reads: every `(ModifyIndex, value)` a read returned is recorded, and
//! two values at one index of a key (or one value at two) is a failure by
//! itself.
//!
//! **The lock.** Three clients loop as Consul's leader-election recipe does:
//! create a session (TTL 10 s, which these servers lapse after 0.1 TTL = 1 s
//! unrenewed, [`TTL_MULTIPLIER`]; `LockDelay` 1 s; no checks, so only the TTL
//! or the servers can end it), renew it every 300 ms, `PUT
//! chaos/lock?acquire=`, and while holding: confirm with a read of the lock
//! (its `LockIndex` names the acquisition), read `chaos/lock-data` and write
//! it back with `?cas=` plus a segment naming the holder and `LockIndex`;
//! then release, or now and then walk away without releasing (a crashed
//! holder), so that lock-delay has to protect its last writes; a session it
//! stops renewing is watched until the servers drop it. A client acts
//! only before its lease ends: one effective TTL after it sent the last
//! renewal that was answered (the servers stamp a renewal with the leader's
//! clock when it is appended, after the client sent it, and expire a session
//! one effective TTL after that stamp at the earliest); after any renewal
//! error it stops renewing and lets the session lapse. `registry_testkit::locks` checks, each of which a
//! broken server fails: one session per `LockIndex` and no re-hold without a
//! new one, along the `ModifyIndex`es reads saw (never two sessions at
//! overlapping index ranges); no hold begins before the previous holder sent
//! its release or, without one, before its lease end plus the lock-delay (no
//! holder acting on the lock after its session was invalidated plus
//! lock-delay); no session found gone before its lease end; and along
//! `lock-data`'s final value, an append-only log under CAS, the writers'
//! `LockIndex`es never go down, each has one writer, the one that held it,
//! and every write answered `true` is there.
//!
//! That these checks can fail was tried, not assumed: with the sessions'
//! `LockDelay` set to 0 while the check expects 1 s, the fixed regression
//! seed fails ("inside the lock-delay"); with the clients' lease 1.5 times
//! the servers' TTL, seed 3 fails ("gone ... before its lease ended"); with
//! a CAS's `false` recorded as `true`, seed 1 fails the linearizability
//! check on a KV key.
//!
//! Faults, drawn from the seed every 200-600 ms: isolate a server, cut a link
//! both ways or one way, drop 30% of a link's messages, delay a link, kill a
//! server (stop; its RocksDB stays) and restart it from disk, slow a
//! server's disk (every synced write 20-150 ms late), and heal everything.
//!
//! Shorter elections (0.5-1 s, for failover under 1 s) must not flap on a
//! loaded machine: [`slow_disks_alone_start_no_election`] gives every server
//! the schedule's slowest disk at once, under writes through all three, with
//! the production Raft timing, and requires that the term never moves.
//!
//! `make test` runs the fixed seeds below; `make chaos` runs fresh seeds for a
//! while (`CHAOS_SEEDS=random CHAOS_RUNS=n`). A failure prints the seed and the
//! smallest part of the failing key's history that still has no
//! linearization, or the lock property that broke; a seed that failed once
//! belongs in `FIXED_SEEDS`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registry_api::client::ClientError;
use registry_api::{
    AgentService, DeregisterRequest, QueryOptions, RegisterRequest, RegistryClient,
};
use registry_server::leader::sessions::SessionTuning;
use registry_testkit::cluster::*;
use registry_testkit::history::{self, Kind, Op};
use registry_testkit::locks::{self, Gone, Hold, LockHistory, LockObservation, Segment};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seeds run by `make test`, with `CHAOS_SECONDS` (4 s by default).
const FIXED_SEEDS: &[u64] = &[1, 2, 3];

/// Seeds that once failed or hung, with the fault time they had; also run by
/// `make test` (timing differs from run to run, so a seed replays the same
/// fault decisions, not the same history).
/// - 2680179603692032791 at 8 s: the checker searched every subset of 40-odd
///   deregistrations of unknown outcome for minutes; unknown writes that no
///   later read can have seen are now dropped first.
const REGRESSION_SEEDS: &[(u64, u64)] = &[(2680179603692032791, 8)];
/// Service instances, and KV keys, each.
const KEYS: u32 = 8;
/// History keys of the KV keys start here (below: service instances).
const KV_KEY_BASE: u32 = 100;
const CLIENTS: usize = 4;
/// Clients taking the lock.
const LOCKERS: usize = 3;
const LOCK_KEY: &str = "chaos/lock";
const DATA_KEY: &str = "chaos/lock-data";
/// The node the lock sessions belong to (registered by the test; no agent).
const LOCK_NODE: &str = "chaos-lockers";
/// The sessions' TTL as sent (the API's shortest).
const SESSION_TTL_MS: u64 = 10_000;
/// The servers lapse a session after this many TTLs unrenewed (1 s): short,
/// so that in a few seconds of faults sessions lapse, locks are freed by
/// invalidation and lock-delay is put to work several times.
const TTL_MULTIPLIER: f64 = 0.1;
/// The sessions' lock-delay.
const LOCK_DELAY_MS: u64 = 1_000;
/// How often a lock client renews its session.
const RENEW_EVERY: Duration = Duration::from_millis(300);

struct Recorder {
    /// Time zero of the register history.
    start: Instant,
    /// The register history (catalog and KV keys).
    ops: Mutex<Vec<Op>>,
    /// (server, key) -> last `?stale` index seen.
    stale: Mutex<BTreeMap<(usize, u32), u64>>,
    /// What reads of KV keys returned with which `ModifyIndex`.
    kv_index: Mutex<KvIndexes>,
    /// What the lock clients saw.
    locks: Mutex<LockHistory>,
    /// What the lock clients' requests came to (for the summary line: a
    /// seed whose lock clients never got anywhere checks little).
    lock_events: Mutex<BTreeMap<&'static str, usize>>,
    /// Violations found while running.
    problems: Mutex<Vec<String>>,
}

/// CAS indexes become values through these, so each must be a function.
#[derive(Default)]
struct KvIndexes {
    /// (KV key, ModifyIndex) -> the value reads returned at it.
    by_index: BTreeMap<(u32, u64), u64>,
    /// (KV key, value) -> the ModifyIndex reads returned it with.
    by_value: BTreeMap<(u32, u64), u64>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }
    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }
    /// Records that a read of KV key `key` returned `value` at `modify_index`.
    fn kv_seen(&self, key: u32, value: u64, modify_index: u64) {
        let mut maps = self.kv_index.lock().unwrap();
        let v = *maps.by_index.entry((key, modify_index)).or_insert(value);
        let m = *maps.by_value.entry((key, value)).or_insert(modify_index);
        drop(maps);
        if v != value || m != modify_index {
            self.problem(format!(
                "{}: value {value} at ModifyIndex {modify_index}, but also {v} at {modify_index} \
                 or {value} at {m}",
                key_name(key)
            ));
        }
    }
    fn lock_event(&self, what: &'static str) {
        *self.lock_events.lock().unwrap().entry(what).or_default() += 1;
    }
}

/// A history key as a reader of a failure wants it.
fn key_name(key: u32) -> String {
    match key.checked_sub(KV_KEY_BASE) {
        Some(i) => format!("KV key chaos/k{i}"),
        None => format!("service k{key}"),
    }
}

/// The wall clock in ms since the epoch: the clock the servers stamp
/// session renewals and lock-delays with.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn write_req(key: u32, value: u64) -> RegisterRequest {
    let mut meta = BTreeMap::new();
    meta.insert("v".to_string(), value.to_string());
    RegisterRequest {
        node: "chaos".into(),
        address: "10.0.0.1".into(),
        service: Some(AgentService {
            id: format!("k{key}"),
            service: format!("k{key}"),
            meta,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn dereg_req(key: u32) -> DeregisterRequest {
    DeregisterRequest {
        node: "chaos".into(),
        service_id: format!("k{key}"),
        ..Default::default()
    }
}

async fn read(c: &RegistryClient, key: u32, opts: &QueryOptions) -> Option<(Option<u64>, u64)> {
    let (list, meta) = c.catalog_service(&format!("k{key}"), opts).await.ok()?;
    let v = list
        .first()
        .and_then(|s| s.service_meta.get("v"))
        .and_then(|v| v.parse().ok());
    Some((v, meta.index))
}

/// A read of KV key `key`: its value and `ModifyIndex` (None: absent) and
/// the answer's `X-Consul-Index`; None when the read failed. A value the
/// test never writes is a problem.
async fn kv_read(
    c: &RegistryClient,
    rec: &Recorder,
    key: u32,
    opts: &QueryOptions,
) -> Option<(Option<(u64, u64)>, u64)> {
    let (list, meta) = c.kv_get(&format!("chaos/k{key}"), opts, &[]).await.ok()?;
    let Some(entry) = list.and_then(|l| l.into_iter().next()) else {
        return Some((None, meta.index));
    };
    let value = entry.value.as_deref().unwrap_or_default();
    match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
        Some(v) => Some((Some((v, entry.modify_index)), meta.index)),
        None => {
            rec.problem(format!(
                "chaos/k{key} holds {:?}, which no client wrote",
                String::from_utf8_lossy(value)
            ));
            None
        }
    }
}

/// A client with a 3 s timeout that sends `token` (the ACL seed's) on every request.
fn http_client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert("X-Consul-Token", t.parse().unwrap());
    }
    registry_api::tls::client_builder(None)
        .timeout(Duration::from_secs(3))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// One client of the registers: catalog and KV operations at random.
async fn client_loop(
    id: usize,
    seed: u64,
    urls: Vec<String>,
    token: Option<String>,
    rec: Arc<Recorder>,
    until: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((id as u64 + 1) * 0x9e37_79b9));
    let clients: Vec<RegistryClient> = urls
        .iter()
        .map(|u| RegistryClient::with_http(u.clone(), http_client(token.as_deref())))
        .collect();
    let mut seq = 0u64;
    // KV key -> (value, ModifyIndex) as this client last read it (None: absent).
    let mut known: BTreeMap<u32, Option<(u64, u64)>> = BTreeMap::new();
    while Instant::now() < until {
        let server = rng.random_range(0..clients.len());
        let c = &clients[server];
        if rng.random_bool(0.5) {
            catalog_op(id, &mut rng, c, server, &rec, &mut seq).await;
        } else {
            kv_op(id, &mut rng, c, server, &rec, &mut seq, &mut known).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

async fn catalog_op(
    id: usize,
    rng: &mut StdRng,
    c: &RegistryClient,
    server: usize,
    rec: &Recorder,
    seq: &mut u64,
) {
    let key = rng.random_range(0..KEYS);
    match rng.random_range(0..10) {
        0..=3 => {
            // Mostly registrations (each a new value), sometimes a deregistration.
            let value = if rng.random_range(0..4) == 0 {
                None
            } else {
                *seq += 1;
                Some((id as u64 + 1) * 1_000_000 + *seq)
            };
            let invoke = rec.now();
            let result = match value {
                Some(v) => c.catalog_register(&write_req(key, v), None).await,
                None => c.catalog_deregister(&dereg_req(key), None).await,
            };
            let complete = matches!(result, Ok(true)).then(|| rec.now());
            rec.push(Op {
                client: id,
                key,
                kind: Kind::Write(value),
                invoke,
                complete,
            });
        }
        4..=7 => {
            let opts = QueryOptions {
                consistent: rng.random_bool(0.5),
                ..Default::default()
            };
            let invoke = rec.now();
            if let Some((v, _)) = read(c, key, &opts).await {
                let complete = Some(rec.now());
                rec.push(Op {
                    client: id,
                    key,
                    kind: Kind::Read(v),
                    invoke,
                    complete,
                });
            }
        }
        _ => {
            if let Some((_, index)) = read(c, key, &stale()).await {
                stale_index(rec, server, key, index);
            }
        }
    }
}

/// `?stale` reads of one key on one server never go backwards.
fn stale_index(rec: &Recorder, server: usize, key: u32, index: u64) {
    let mut seen = rec.stale.lock().unwrap();
    let last = seen.entry((server, key)).or_insert(0);
    if index < *last {
        let name = key_name(key);
        rec.problem(format!(
            "stale read on server {server} of {name} went back from index {last} to {index}"
        ));
    }
    *last = index.max(*last);
}

async fn kv_op(
    id: usize,
    rng: &mut StdRng,
    c: &RegistryClient,
    server: usize,
    rec: &Recorder,
    seq: &mut u64,
    known: &mut BTreeMap<u32, Option<(u64, u64)>>,
) {
    let key = rng.random_range(0..KEYS);
    let hkey = KV_KEY_BASE + key;
    let name = format!("chaos/k{key}");
    let mut fresh = || {
        *seq += 1;
        (id as u64 + 1) * 1_000_000 + *seq
    };
    let op = |kind, invoke, complete| Op {
        client: id,
        key: hkey,
        kind,
        invoke,
        complete,
    };
    match rng.random_range(0..10) {
        0..=1 => {
            let v = fresh();
            let invoke = rec.now();
            let result = c.kv_put(&name, v.to_string(), &[]).await;
            if matches!(result, Ok(false)) {
                rec.problem(format!("a plain PUT of {name} answered false"));
            }
            let complete = matches!(result, Ok(true)).then(|| rec.now());
            rec.push(op(Kind::Write(Some(v)), invoke, complete));
        }
        2 => match known.get(&key).copied().flatten() {
            Some((v, m)) if rng.random_bool(0.5) => {
                let invoke = rec.now();
                let result = c.kv_delete(&name, &[("cas", &m.to_string())]).await;
                rec.push(cas_op(id, hkey, Some(v), None, invoke, result, rec));
            }
            _ => {
                let invoke = rec.now();
                let result = c.kv_delete(&name, &[]).await;
                let complete = matches!(result, Ok(true)).then(|| rec.now());
                rec.push(op(Kind::Write(None), invoke, complete));
            }
        },
        3..=4 => {
            let v = fresh();
            cas_put(id, c, rec, key, known.get(&key).copied().flatten(), v).await;
        }
        5..=8 => {
            let opts = QueryOptions {
                consistent: rng.random_bool(0.5),
                ..Default::default()
            };
            let invoke = rec.now();
            let Some((entry, _)) = kv_read(c, rec, key, &opts).await else {
                return;
            };
            rec.push(op(Kind::Read(entry.map(|e| e.0)), invoke, Some(rec.now())));
            if let Some((v, m)) = entry {
                rec.kv_seen(hkey, v, m);
            }
            known.insert(key, entry);
            // Read-modify-write, as consul-template's users and Patroni do.
            if rng.random_bool(0.5) {
                let v = fresh();
                cas_put(id, c, rec, key, entry, v).await;
            }
        }
        _ => {
            if let Some((_, index)) = kv_read(c, rec, key, &stale()).await {
                stale_index(rec, server, hkey, index);
            }
        }
    }
}

/// `PUT chaos/k<key>?cas=` with new value `v`, from `last` (the value and
/// ModifyIndex a read returned; None: absent, `?cas=0`).
async fn cas_put(
    id: usize,
    c: &RegistryClient,
    rec: &Recorder,
    key: u32,
    last: Option<(u64, u64)>,
    v: u64,
) {
    let index = last.map_or(0, |(_, m)| m).to_string();
    let invoke = rec.now();
    let result = c
        .kv_put(&format!("chaos/k{key}"), v.to_string(), &[("cas", &index)])
        .await;
    let expect = last.map(|(value, _)| value);
    rec.push(cas_op(
        id,
        KV_KEY_BASE + key,
        expect,
        Some(v),
        invoke,
        result,
        rec,
    ));
}

/// The history operation of a CAS that answered `result`.
fn cas_op(
    client: usize,
    key: u32,
    expect: Option<u64>,
    new: Option<u64>,
    invoke: u64,
    result: Result<bool, ClientError>,
    rec: &Recorder,
) -> Op {
    let (kind, complete) = match result {
        Ok(true) => (Kind::Cas { expect, new }, Some(rec.now())),
        Ok(false) => (Kind::CasFailed { expect, new }, Some(rec.now())),
        Err(_) => (Kind::Cas { expect, new }, None),
    };
    Op {
        client,
        key,
        kind,
        invoke,
        complete,
    }
}

/// A lock client's current session.
struct LockSession {
    /// Its ID.
    id: String,
    /// This client and session, as the data chain names them.
    holder: String,
    /// One effective TTL after the last answered renewal (or the create) was sent.
    lease_end: u64,
    /// False after a renewal failed: the client then lets the session lapse,
    /// so the lease never rests on a renewal sent after one whose outcome it
    /// does not know (the argument needs no assumption about the order in
    /// which renewals apply), and the lapses put lock-delay to work.
    renewable: bool,
    /// When the last renewal was sent.
    last_renew: Instant,
}

/// Whether the server still had the session.
enum Renewal {
    /// Renewed, not due, or unknown: the lease says how long it lasts.
    Kept,
    /// The servers answered that it no longer exists.
    Gone,
}

/// How a hold ended, for the client's session.
enum HoldEnd {
    /// Released; the session goes on.
    Released,
    /// The session is lost, lapsed, or walked away from: make a new one.
    Dropped,
}

/// An answer that says the request was never sent (nothing can apply).
fn never_sent(e: &ClientError) -> bool {
    matches!(e, ClientError::Transport(t) if t.is_connect())
}

/// Records that the servers just said `s` no longer exists.
fn record_gone(rec: &Recorder, s: &LockSession) {
    rec.locks.lock().unwrap().gone.push(Gone {
        holder: s.holder.clone(),
        seen_at: wall_ms(),
        lease_end: s.lease_end,
    });
}

/// Renews `s` if it is due (and still renewable).
async fn renew_if_due(
    c: &RegistryClient,
    s: &mut LockSession,
    rec: &Recorder,
    ttl_ms: u64,
) -> Renewal {
    if !s.renewable || s.last_renew.elapsed() < RENEW_EVERY {
        return Renewal::Kept;
    }
    s.last_renew = Instant::now();
    let sent = wall_ms();
    match c.session_renew(&s.id).await {
        Ok(_) => s.lease_end = s.lease_end.max(sent + ttl_ms),
        Err(e) if e.status() == Some(404) => {
            record_gone(rec, s);
            return Renewal::Gone;
        }
        Err(e) if never_sent(&e) => {}
        Err(_) => {
            rec.lock_event("renewal failed");
            s.renewable = false;
        }
    }
    Renewal::Kept
}

/// Reads the lock key (default consistency) and records what it showed;
/// `Ok(None)`: no such key; `Err`: the read failed.
async fn read_lock(c: &RegistryClient, rec: &Recorder) -> Result<Option<LockObservation>, ()> {
    let (list, _) = c
        .kv_get(LOCK_KEY, &QueryOptions::default(), &[])
        .await
        .map_err(|_| ())?;
    let Some(e) = list.and_then(|l| l.into_iter().next()) else {
        return Ok(None);
    };
    let o = LockObservation {
        modify_index: e.modify_index,
        lock_index: e.lock_index,
        session: e.session,
    };
    rec.locks.lock().unwrap().observations.push(o.clone());
    Ok(Some(o))
}

/// One client taking the lock, over and over, with sessions.
async fn lock_loop(
    id: usize,
    seed: u64,
    urls: Vec<String>,
    token: Option<String>,
    rec: Arc<Recorder>,
    until: Instant,
    ttl_ms: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((id as u64 + 101) * 0x9e37_79b9));
    let clients: Vec<RegistryClient> = urls
        .iter()
        .map(|u| RegistryClient::with_http(u.clone(), http_client(token.as_deref())))
        .collect();
    let mut made = 0;
    let mut writes = 0u64;
    let mut session: Option<LockSession> = None;
    let mut expiries = tokio::task::JoinSet::new();
    while Instant::now() < until {
        let c = &clients[rng.random_range(0..clients.len())];
        let Some(s) = session.as_mut() else {
            let sent = wall_ms();
            let body = serde_json::json!({
                "Name": "chaos-lock", "Node": LOCK_NODE, "NodeChecks": [],
                "TTL": format!("{}s", SESSION_TTL_MS / 1000),
                "LockDelay": format!("{LOCK_DELAY_MS}ms"),
            });
            match c.session_create(&body).await {
                Ok(sid) => {
                    made += 1;
                    let holder = format!("{id}.{made}");
                    let mut locks = rec.locks.lock().unwrap();
                    locks.sessions.insert(holder.clone(), sid.clone());
                    drop(locks);
                    session = Some(LockSession {
                        id: sid,
                        holder,
                        lease_end: sent + ttl_ms,
                        renewable: true,
                        last_renew: Instant::now(),
                    });
                }
                Err(_) => {
                    rec.lock_event("create failed");
                    pause(&mut rng, 50..150).await;
                }
            }
            continue;
        };
        if wall_ms() >= s.lease_end {
            watch_expiry(&mut expiries, c.clone(), s, rec.clone(), until);
            session = None;
            continue;
        }
        if let Renewal::Gone = renew_if_due(c, s, &rec, ttl_ms).await {
            session = None;
            continue;
        }
        let start = match c
            .kv_put(LOCK_KEY, s.holder.clone(), &[("acquire", &s.id)])
            .await
        {
            Ok(true) => Some(wall_ms()),
            Ok(false) => {
                rec.lock_event("acquire refused");
                // Held, or in its lock-delay. Look now and then: every
                // reading is one more point for the index check.
                if rng.random_bool(0.3) {
                    let _ = read_lock(c, &rec).await;
                }
                pause(&mut rng, 20..100).await;
                None
            }
            Err(ClientError::Status { status: 400, body }) if body.contains("invalid session") => {
                rec.lock_event("session gone");
                record_gone(&rec, s);
                session = None;
                continue;
            }
            // No answer: it may have applied. Believe it only once a read
            // shows this session holding the lock.
            Err(_) => {
                rec.lock_event("acquire failed");
                match read_lock(c, &rec).await {
                    Ok(Some(o)) if o.session == s.id => Some(wall_ms()),
                    _ => None,
                }
            }
        };
        if let Some(start) = start {
            let end = hold(
                &mut rng,
                &clients,
                s,
                start,
                &rec,
                ttl_ms,
                &mut writes,
                until,
            )
            .await;
            if let HoldEnd::Dropped = end {
                watch_expiry(&mut expiries, c.clone(), s, rec.clone(), until);
                session = None;
            }
        }
    }
    while expiries.join_next().await.is_some() {}
}

/// Watches a session its client stopped renewing until the servers say it
/// is gone, and records when: never before its lease end (a server that
/// expired sessions early fails here even when nobody took the lock).
fn watch_expiry(
    tasks: &mut tokio::task::JoinSet<()>,
    c: RegistryClient,
    s: &LockSession,
    rec: Arc<Recorder>,
    until: Instant,
) {
    let (id, holder, lease_end) = (s.id.clone(), s.holder.clone(), s.lease_end);
    tasks.spawn(async move {
        while Instant::now() < until {
            if let Ok((info, _)) = c.session_info(&id, &QueryOptions::default()).await {
                if info.is_empty() {
                    let seen_at = wall_ms();
                    let gone = Gone {
                        holder,
                        seen_at,
                        lease_end,
                    };
                    rec.locks.lock().unwrap().gone.push(gone);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Acts as the lock's holder from `start` for a few rounds (each: renew if
/// due, confirm with a read of the lock, append to the data chain under
/// `?cas=`), then releases it or walks away; records the hold.
#[allow(clippy::too_many_arguments)]
async fn hold(
    rng: &mut StdRng,
    clients: &[RegistryClient],
    s: &mut LockSession,
    start: u64,
    rec: &Recorder,
    ttl_ms: u64,
    writes: &mut u64,
    until: Instant,
) -> HoldEnd {
    let mut h = Hold {
        holder: s.holder.clone(),
        session: s.id.clone(),
        lock_index: None,
        start,
        released: None,
        lease_end: s.lease_end,
    };
    let mut end = None;
    for _ in 0..rng.random_range(1..=4) {
        let c = &clients[rng.random_range(0..clients.len())];
        if wall_ms() >= s.lease_end {
            rec.lock_event("lapsed");
            end = Some(HoldEnd::Dropped);
            break;
        }
        if Instant::now() >= until {
            break;
        }
        if let Renewal::Gone = renew_if_due(c, s, rec, ttl_ms).await {
            rec.lock_event("lost");
            end = Some(HoldEnd::Dropped);
            break;
        }
        match read_lock(c, rec).await {
            Ok(Some(o)) if o.session == s.id => h.lock_index = Some(o.lock_index),
            Ok(_) => {
                // Not ours any more: only an invalidation can do that.
                record_gone(rec, s);
                rec.lock_event("lost");
                end = Some(HoldEnd::Dropped);
                break;
            }
            Err(()) => continue,
        }
        let Some(lock_index) = h.lock_index else {
            continue;
        };
        let Ok((list, _)) = c.kv_get(DATA_KEY, &QueryOptions::default(), &[]).await else {
            continue;
        };
        let (value, index) = match list.and_then(|l| l.into_iter().next()) {
            Some(e) => (e.value.unwrap_or_default(), e.modify_index),
            None => (Vec::new(), 0),
        };
        let segment = Segment {
            holder: s.holder.clone(),
            lock_index,
            n: *writes,
        };
        *writes += 1;
        // Act only while the lease runs: this is the moment that counts.
        if wall_ms() >= s.lease_end {
            continue;
        }
        let mut body = value;
        body.extend_from_slice(segment.encode().as_bytes());
        let index = index.to_string();
        if let Ok(true) = c.kv_put(DATA_KEY, body, &[("cas", &index)]).await {
            rec.locks.lock().unwrap().acked.push(segment);
        }
        pause(rng, 0..30).await;
    }
    h.lease_end = s.lease_end;
    let end = match end {
        Some(end) => end,
        None if rng.random_bool(0.9) => {
            h.released = Some(wall_ms());
            let c = &clients[rng.random_range(0..clients.len())];
            let _ = c.kv_put(LOCK_KEY, "", &[("release", &s.id)]).await;
            rec.lock_event("released");
            HoldEnd::Released
        }
        None => {
            // A crashed holder: no release, no renewal; the session lapses
            // and lock-delay covers whatever it had in flight.
            rec.lock_event("walked away");
            HoldEnd::Dropped
        }
    };
    rec.locks.lock().unwrap().holds.push(h);
    end
}

async fn pause(rng: &mut StdRng, ms: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(ms))).await;
}

/// The ACL seed's management token.
const ACL_MANAGEMENT: &str = "chaos-management-0000-0000-000000000001";

/// The rules of the ACL seed's clients: everything they do, and nothing under
/// `forbidden` (which [`intruder_loop`] keeps trying).
const ACL_RULES: &str = r#"
    key_prefix "" { policy = "write" }
    key_prefix "forbidden/" { policy = "deny" }
    service_prefix "" { policy = "write" }
    service_prefix "forbidden" { policy = "deny" }
    node_prefix "" { policy = "write" }
    session_prefix "" { policy = "write" }
"#;

/// With ACLs on (default deny): makes the clients' policy and token with the management
/// token, through any server that answers, and returns the token's secret.
async fn acl_token(urls: &[String]) -> String {
    let http = http_client(Some(ACL_MANAGEMENT));
    wait_until(Duration::from_secs(20), "the chaos token", || async {
        for u in urls {
            let policy = http
                .put(format!("{u}/v1/acl/policy"))
                .body(serde_json::json!({"Name": "chaos", "Rules": ACL_RULES}).to_string())
                .send()
                .await
                .ok()?;
            // A retry after an unknown outcome finds the policy made.
            if !(policy.status().is_success() || policy.status().as_u16() == 400) {
                continue;
            }
            let token = http
                .put(format!("{u}/v1/acl/token"))
                .body(r#"{"Policies":[{"Name":"chaos"}]}"#)
                .send()
                .await
                .ok()?;
            if token.status().is_success() {
                let v: serde_json::Value = token.json().await.ok()?;
                return v["SecretID"].as_str().map(str::to_string);
            }
        }
        None
    })
    .await
}

/// The ACL seed's check that a leader change never lets a denied write through and never
/// denies an allowed one: with the clients' token, writes under `forbidden` must never
/// succeed, and writes under `allowed` must never be refused with a 403 (faults may make
/// either fail otherwise). Returns how many of each were tried.
async fn intruder_loop(
    urls: Vec<String>,
    token: String,
    rec: Arc<Recorder>,
    until: Instant,
) -> (usize, usize) {
    let http = http_client(Some(&token));
    let (mut denied, mut allowed) = (0, 0);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let u = &urls[(n % urls.len() as u64) as usize];
        let attempts = [
            (
                format!("{u}/v1/kv/forbidden/k{n}"),
                String::from("x"),
                false,
            ),
            (
                format!("{u}/v1/catalog/register"),
                format!(
                    r#"{{"Node":"chaos-intruder","Address":"10.0.0.9","Service":{{"Service":"forbidden-{n}"}}}}"#
                ),
                false,
            ),
            (format!("{u}/v1/kv/allowed/k{n}"), String::from("y"), true),
        ];
        for (url, body, ok) in attempts {
            let Ok(resp) = http.put(&url).body(body).send().await else {
                continue;
            };
            let status = resp.status().as_u16();
            if ok {
                allowed += 1;
                if status == 403 {
                    rec.problem(format!("an allowed write was denied: PUT {url}"));
                }
            } else {
                denied += 1;
                if resp.status().is_success() {
                    rec.problem(format!("a denied write went through: PUT {url}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (denied, allowed)
}

/// After an ACL seed: nothing under `forbidden` exists (read with the management token
/// from the leader).
async fn nothing_forbidden(url: &str) -> Result<(), String> {
    let http = http_client(Some(ACL_MANAGEMENT));
    let keys = http
        .get(format!("{url}/v1/kv/forbidden/?keys&consistent"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if keys.status().as_u16() != 404 {
        return Err(format!("keys under forbidden/ exist: {}", keys.status()));
    }
    let services: serde_json::Value = http
        .get(format!("{url}/v1/catalog/services?consistent"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let bad: Vec<&String> = services
        .as_object()
        .map(|o| o.keys().filter(|k| k.starts_with("forbidden")).collect())
        .unwrap_or_default();
    if !bad.is_empty() {
        return Err(format!("denied services registered: {bad:?}"));
    }
    Ok(())
}

/// Runs one seed; returns the faults injected, or the failure. With `acl`, the cluster
/// enforces ACLs (default deny), every client uses a token allowed what it does, and an
/// intruder loop checks that what the token is denied never gets through ([`intruder_loop`]).
async fn run_seed(seed: u64, duration: Duration, acl: bool) -> Result<Vec<String>, String> {
    let mut builder = TestCluster::builder(3)
        .agents(false)
        .sessions(SessionTuning {
            scan_interval: Duration::from_millis(50),
            ttl_multiplier: TTL_MULTIPLIER,
        });
    if acl {
        builder = builder.acl(registry_server::acl::AclConfig {
            enabled: true,
            default_policy: registry_server::acl::AclDefault(
                registry_api::acl::DefaultPolicy::Deny,
            ),
            initial_management: Some(ACL_MANAGEMENT.into()),
            ..Default::default()
        });
    }
    let mut c = builder.start().await;
    let leader = c.wait_leader().await;
    let urls: Vec<String> = (0..3).map(|i| c.node(i).url()).collect();
    let token = if acl {
        Some(acl_token(&urls).await)
    } else {
        None
    };
    // The lock sessions' node, registered before any fault.
    let lc = RegistryClient::with_http(c.node(leader).url(), http_client(token.as_deref()));
    let node = RegisterRequest {
        node: LOCK_NODE.into(),
        address: "10.0.0.2".into(),
        ..Default::default()
    };
    wait_until(
        Duration::from_secs(10),
        "the lock node registered",
        || async { lc.catalog_register(&node, None).await.ok().filter(|ok| *ok) },
    )
    .await;
    let ttl_ms = (SESSION_TTL_MS as f64 * c.sessions.ttl_multiplier) as u64;
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
        stale: Mutex::new(BTreeMap::new()),
        kv_index: Mutex::default(),
        locks: Mutex::default(),
        lock_events: Mutex::default(),
        problems: Mutex::new(Vec::new()),
    });
    let until = Instant::now() + duration;
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        clients.spawn(client_loop(
            id,
            seed,
            urls.clone(),
            token.clone(),
            rec.clone(),
            until,
        ));
    }
    for id in 0..LOCKERS {
        clients.spawn(lock_loop(
            id,
            seed,
            urls.clone(),
            token.clone(),
            rec.clone(),
            until,
            ttl_ms,
        ));
    }
    let intruder = token
        .clone()
        .map(|t| tokio::spawn(intruder_loop(urls.clone(), t, rec.clone(), until)));
    // Leader sampler: never two leaders in one term.
    let leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Arc::default();
    let stop_sampler = tokio_util::sync::CancellationToken::new();
    let statuses: Vec<_> = (0..3).map(|i| c.node(i).raft.clone()).collect();
    let sampler = {
        let (leaders, stop) = (leaders.clone(), stop_sampler.clone());
        let statuses = Arc::new(Mutex::new(statuses));
        let s2 = statuses.clone();
        let task = tokio::spawn(async move {
            while !stop.is_cancelled() {
                for r in s2.lock().unwrap().iter() {
                    let s = r.status();
                    if s.role == registry_server::Role::Leader && s.fatal.is_none() {
                        leaders
                            .lock()
                            .unwrap()
                            .entry(s.term)
                            .or_default()
                            .insert(s.id);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        (task, statuses)
    };

    // The fault schedule.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let mut stopped: Option<usize> = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        let a = rng.random_range(0..3);
        let b = (a + rng.random_range(1..3)) % 3;
        let (na, nb) = (c.names[a].clone(), c.names[b].clone());
        let fault = match rng.random_range(0..8) {
            0 => {
                c.net.isolate(&na);
                format!("isolate {na}")
            }
            1 => {
                c.net.cut(&na, &nb);
                format!("cut {na}<->{nb}")
            }
            2 => {
                c.net.cut_one_way(&na, &nb);
                format!("cut {na}->{nb}")
            }
            3 => {
                c.net.set_drop_rate(&na, &nb, 0.3);
                format!("drop 30% {na}->{nb}")
            }
            4 => {
                c.net
                    .set_delay(&na, &nb, Duration::from_millis(rng.random_range(5..60)));
                format!("delay {na}->{nb}")
            }
            5 => match stopped.take() {
                Some(i) => {
                    c.restart(i).await;
                    sampler.1.lock().unwrap()[i] = c.node(i).raft.clone();
                    format!("restart s{}", i + 1)
                }
                None => {
                    c.stop(a).await;
                    stopped = Some(a);
                    format!("kill s{}", a + 1)
                }
            },
            6 => {
                let ms = rng.random_range(20..150);
                c.disks[a].set_write_delay(Duration::from_millis(ms));
                format!("slow disk s{} ({ms} ms per synced write)", a + 1)
            }
            _ => {
                c.net.heal_all();
                for d in &c.disks {
                    d.set_write_delay(Duration::ZERO);
                }
                "heal".to_string()
            }
        };
        faults.push(fault);
    }
    while clients.join_next().await.is_some() {}
    let intruded = match intruder {
        Some(task) => Some(
            task.await
                .map_err(|e| format!("seed {seed}: intruder: {e}"))?,
        ),
        None => None,
    };
    c.net.heal_all();
    for d in &c.disks {
        d.set_write_delay(Duration::ZERO);
    }
    if let Some(i) = stopped {
        c.restart(i).await;
        sampler.1.lock().unwrap()[i] = c.node(i).raft.clone();
    }
    let leader = c.wait_leader().await;
    // Final linearizable reads of every key join the history: every
    // acknowledged write must still be there.
    let lc = RegistryClient::with_http(c.node(leader).url(), http_client(token.as_deref()));
    let forbidden = if acl {
        nothing_forbidden(&c.node(leader).url()).await.err()
    } else {
        None
    };
    let consistent = QueryOptions {
        consistent: true,
        ..Default::default()
    };
    for key in 0..KEYS {
        let invoke = rec.now();
        let (v, _) = read(&lc, key, &consistent)
            .await
            .ok_or("final read failed")?;
        rec.push(Op {
            client: 99,
            key,
            kind: Kind::Read(v),
            invoke,
            complete: Some(rec.now()),
        });
        let invoke = rec.now();
        let (entry, _) =
            (kv_read(&lc, &rec, key, &consistent).await).ok_or("final KV read failed")?;
        rec.push(Op {
            client: 99,
            key: KV_KEY_BASE + key,
            kind: Kind::Read(entry.map(|e| e.0)),
            invoke,
            complete: Some(rec.now()),
        });
    }
    // The lock's last state, and the data chain's final value.
    let (lock, data) = (
        lc.kv_get(LOCK_KEY, &consistent, &[]).await,
        lc.kv_get(DATA_KEY, &consistent, &[]).await,
    );
    let (Ok((lock, _)), Ok((data, _))) = (lock, data) else {
        return Err(format!("seed {seed}: the final reads of the lock failed"));
    };
    stop_sampler.cancel();
    let _ = sampler.0.await;
    c.shutdown().await;

    let mut problems = rec.problems.lock().unwrap().clone();
    problems.extend(forbidden);
    if let Some((denied, allowed)) = intruded {
        if denied == 0 || allowed == 0 {
            problems.push("the ACL intruder got no answer: nothing was checked".into());
        }
        eprintln!("seed {seed} (ACLs on): {denied} denied and {allowed} allowed writes tried");
    }
    for (term, ids) in leaders.lock().unwrap().iter() {
        if ids.len() > 1 {
            problems.push(format!("two leaders in term {term}: {ids:?}"));
        }
    }
    let ops = rec.ops.lock().unwrap().clone();
    let acked = ops
        .iter()
        .filter(|o| o.kind.is_write() && o.complete.is_some())
        .count();
    let (result, undecided) = history::check_report(&ops);
    if let Err((key, hist)) = result {
        let small = history::shrink(&hist);
        let mut text = format!(
            "{} has no linearization; the smallest failing part of its history \
             ({} of {} operations):\n",
            key_name(key),
            small.len(),
            hist.len()
        );
        for o in small {
            text.push_str(&format!("  {o}\n"));
        }
        problems.push(text);
    }

    let mut locks = rec.locks.lock().unwrap().clone();
    if let Some(e) = lock.and_then(|l| l.into_iter().next()) {
        locks.observations.push(LockObservation {
            modify_index: e.modify_index,
            lock_index: e.lock_index,
            session: e.session,
        });
    }
    let value = data
        .and_then(|l| l.into_iter().next())
        .and_then(|e| e.value);
    match locks::parse_chain(&String::from_utf8_lossy(&value.unwrap_or_default())) {
        Ok(chain) => locks.chain = chain,
        Err(e) => problems.push(format!("chaos/lock-data: {e}")),
    }
    if locks.holds.is_empty() {
        problems
            .push("no lock client ever held the lock: the lock property was not exercised".into());
    }
    problems.extend(locks::check(&locks, LOCK_DELAY_MS));
    // A key the search gave up on is not checked: a run that decides too few
    // keys proves nothing and must not pass.
    let keys = ops.iter().map(|o| o.key).collect::<BTreeSet<_>>().len();
    if undecided.len() * 2 > keys {
        problems.push(format!(
            "{} of {keys} keys undecided within the search budget: the history was not checked",
            undecided.len()
        ));
    }
    if !problems.is_empty() {
        return Err(format!(
            "seed {seed}: {}\nfaults: {faults:?}",
            problems.join("\n")
        ));
    }
    let undecided = match undecided.len() {
        0 => String::new(),
        n => format!(" ({n} key(s) undecided within the search budget: {undecided:?})"),
    };
    let events = rec.lock_events.lock().unwrap().clone();
    eprintln!(
        "seed {seed}: {} operations ({acked} acknowledged writes){undecided}; lock: {} holds, \
         {events:?}, {} sessions, {} data writes acknowledged, {} in the chain; \
         {} faults: {faults:?}",
        ops.len(),
        locks.holds.len(),
        locks.sessions.len(),
        locks.acked.len(),
        locks.chain.len(),
        faults.len()
    );
    Ok(faults)
}

fn seeds() -> Vec<u64> {
    match std::env::var("CHAOS_SEEDS").as_deref() {
        Ok("random") => {
            let runs: usize = std::env::var("CHAOS_RUNS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(5);
            (0..runs).map(|_| rand::random::<u64>()).collect()
        }
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => FIXED_SEEDS.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_schedules_keep_the_history_linearizable() {
    let secs: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut runs: Vec<(u64, u64)> = seeds().into_iter().map(|seed| (seed, secs)).collect();
    if std::env::var("CHAOS_SEEDS").is_err() {
        runs.extend_from_slice(REGRESSION_SEEDS);
    }
    let mut failures = Vec::new();
    for (seed, secs) in runs {
        eprintln!("seed {seed}: {secs} s of faults");
        if let Err(e) = run_seed(seed, Duration::from_secs(secs), false).await {
            eprintln!("{e}");
            failures.push(e);
        }
    }
    // One seed with ACLs on (issue [12]): a leader change never lets a denied write through
    // and never denies an allowed one; the history checks hold as without ACLs.
    let acl_seed = seeds().first().copied().unwrap_or(1);
    eprintln!("seed {acl_seed} with ACLs: {secs} s of faults");
    if let Err(e) = run_seed(acl_seed, Duration::from_secs(secs), true).await {
        eprintln!("{e}");
        failures.push(format!("(ACLs on) {e}"));
    }
    assert!(
        failures.is_empty(),
        "{} seed(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The schedule's slowest disk (150 ms added to every synced write) on all
/// three servers at once, under 8 writers through all of them for 3 s, with
/// the production Raft timing (`RaftTuning::default()`'s tick, election and
/// heartbeat): the term must not move. A slow fsync blocks the Raft thread
/// but must not look like a dead leader; writes go on, slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_disks_alone_start_no_election() {
    let production = registry_server::raft::RaftTuning::default();
    let tuning = registry_server::raft::RaftTuning {
        tick: production.tick,
        election_ticks: production.election_ticks,
        heartbeat_ticks: production.heartbeat_ticks,
        ..fast_tuning()
    };
    let c = TestCluster::builder(3)
        .agents(false)
        .tuning(tuning)
        .start()
        .await;
    let leader = c.wait_leader().await;
    let term = c.status(leader).term;
    for d in &c.disks {
        d.set_write_delay(Duration::from_millis(150));
    }
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8usize {
        let (url, acked) = (c.node(w % 3).url(), acked.clone());
        writers.spawn(async move {
            let client = RegistryClient::with_http(url, http_client(None));
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let r = reg(&format!("slow-{w}-{n}"), "slow", &format!("slow-{w}-{n}"));
                if client.catalog_register(&r, None).await.is_ok_and(|ok| ok) {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    let terms: Vec<u64> = (0..3).map(|i| c.status(i).term).collect();
    let leaders: Vec<u64> = (0..3).map(|i| c.status(i).leader_id).collect();
    for d in &c.disks {
        d.set_write_delay(Duration::ZERO);
    }
    let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
    c.shutdown().await;
    assert!(acked > 0, "no write was acknowledged: the load did not run");
    assert_eq!(
        terms,
        vec![term; 3],
        "an election under slow disks alone ({acked} writes acknowledged); leaders seen: {leaders:?}"
    );
}
