//! The clients: as `registry-server/tests/chaos.rs`'s `client_loop`, but over
//! real HTTP to the lab's published ports. Each client is sequential (one
//! operation at a time), picks a random key and a random dc1 server, and
//! records what it saw.

use crate::history::{Kind, Op};
use crate::lab::Lab;
use crate::record::Recorder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registry_api::client::ClientError;
use registry_api::{
    AgentService, DeregisterRequest, QueryOptions, RegisterRequest, RegistryClient,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node every key's service instance lives on.
const NODE: &str = "chaos";

/// Per-request bound: a request to a paused or cut-off server must not stall
/// its client for long. A write that hits it has an unknown outcome.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The lab's token (it runs with ACLs on, default deny): `REGISTRY_HTTP_TOKEN`, which
/// scripts/lab-chaos.sh sets from .lab/acl/management.token, as `X-Consul-Token` on every request.
pub fn token_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(mut v) = std::env::var("REGISTRY_HTTP_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .and_then(|t| reqwest::header::HeaderValue::from_str(&t).ok())
    {
        v.set_sensitive(true);
        headers.insert("X-Consul-Token", v);
    }
    headers
}

/// The HTTP client of one simulated client.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(registry_api::tls::client_builder(None)
        .default_headers(token_headers())
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// The registration that sets key `key` to `value`.
fn register(key: u32, value: u64) -> RegisterRequest {
    let mut meta = BTreeMap::new();
    meta.insert("v".to_string(), value.to_string());
    RegisterRequest {
        node: NODE.into(),
        // TEST-NET-1 (RFC 5737): an address nothing answers on.
        address: "192.0.2.1".into(),
        service: Some(AgentService {
            id: format!("k{key}"),
            service: format!("k{key}"),
            meta,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The deregistration that sets key `key` to None.
fn deregister(key: u32) -> DeregisterRequest {
    DeregisterRequest {
        node: NODE.into(),
        service_id: format!("k{key}"),
        ..Default::default()
    }
}

/// Sends one write (`Some(v)`: register with `Meta.v = v`; `None`:
/// deregister) through `c` and records it: acknowledged only on 200 `true`,
/// otherwise its outcome is unknown (`complete: None`).
pub async fn write(
    rec: &Recorder,
    c: &RegistryClient,
    client: usize,
    key: u32,
    value: Option<u64>,
) -> bool {
    let invoke = rec.now();
    let r = match value {
        Some(v) => c.catalog_register(&register(key, v), None).await,
        None => c.catalog_deregister(&deregister(key), None).await,
    };
    if let Err(ClientError::Transport(e)) = &r {
        if e.is_connect() {
            // No connection, so not a byte of the request was sent: it cannot
            // take effect. Leaving it out keeps the history free of "unknown"
            // writes that could later explain away a lost one (a killed
            // server's published port refuses at once, many times a second).
            rec.count(|n| n.writes_refused += 1);
            return false;
        }
    }
    let acked = matches!(r, Ok(true));
    let complete = acked.then(|| rec.now());
    rec.count(|n| {
        if acked {
            n.writes_acked += 1
        } else {
            n.writes_unknown += 1
        }
    });
    let what = if value.is_some() {
        "register"
    } else {
        "deregister"
    };
    let how = match &r {
        Ok(true) => "ok".to_string(),
        Ok(false) => "answered false".to_string(),
        Err(e) => e.to_string().chars().take(120).collect(),
    };
    rec.push(
        Op {
            client,
            key,
            kind: Kind::Write(value),
            invoke,
            complete,
        },
        format!("{what} via {} ({how})", c.base()),
    );
    acked
}

/// Reads key `key` through `c`: the value (None: not registered) and the
/// `X-Consul-Index`, or None when the read failed.
pub async fn read(c: &RegistryClient, key: u32, opts: &QueryOptions) -> Option<(Option<u64>, u64)> {
    let (list, meta) = c.catalog_service(&format!("k{key}"), opts).await.ok()?;
    // A value that does not parse is recorded as one nobody wrote, which the
    // checker rejects: it must not pass for "not registered".
    let value = list.iter().find(|s| s.node == NODE).map(|s| {
        s.service_meta
            .get("v")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    });
    Some((value, meta.index))
}

/// A read that belongs in the linearizable history (default, `?consistent`,
/// or `?dc=dc1` from dc2): the value read, or None when it failed (a failed
/// read is not recorded).
pub async fn linearizable_read(
    rec: &Recorder,
    c: &RegistryClient,
    client: usize,
    key: u32,
    opts: &QueryOptions,
) -> Option<Option<u64>> {
    let invoke = rec.now();
    let Some((value, index)) = read(c, key, opts).await else {
        rec.count(|n| n.reads_failed += 1);
        return None;
    };
    let complete = Some(rec.now());
    let mode = match (&opts.dc, opts.consistent, opts.stale) {
        (Some(dc), _, _) => format!("?dc={dc}"),
        (None, true, _) => "?consistent".into(),
        (None, false, true) => "?stale".into(),
        (None, false, false) => "default".into(),
    };
    rec.count(|n| match (&opts.dc, opts.consistent, opts.stale) {
        (Some(_), _, _) => n.reads_xdc += 1,
        (None, true, _) => n.reads_consistent += 1,
        (None, false, true) => n.reads_stale += 1,
        (None, false, false) => n.reads_default += 1,
    });
    rec.push(
        Op {
            client,
            key,
            kind: Kind::Read(value),
            invoke,
            complete,
        },
        format!("{mode} read via {} (X-Consul-Index {index})", c.base()),
    );
    Some(value)
}

/// What the clients do.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Keys k0..k{keys-1}.
    pub keys: u32,
    /// Also `?dc=dc1` reads through the dc2 agent.
    pub xdc: bool,
    /// Put `?stale` reads into the linearizable history: wrong on purpose
    /// (a follower may lag), to see the checker fail.
    pub stale_in_history: bool,
}

/// One simulated client until `until`.
pub async fn client_loop(
    id: usize,
    seed: u64,
    plan: Plan,
    lab: Arc<Lab>,
    rec: Arc<Recorder>,
    until: Instant,
) -> anyhow::Result<()> {
    // The same mixing as chaos.rs, so client i's choices follow from the seed.
    let mut rng = StdRng::seed_from_u64(seed ^ ((id as u64 + 1) * 0x9e37_79b9));
    let http = http_client()?;
    let servers: Vec<RegistryClient> = lab
        .servers
        .iter()
        .map(|s| RegistryClient::with_http(s.url.clone(), http.clone()))
        .collect();
    let dc2_agent = RegistryClient::with_http(lab.dc2_agent.clone(), http);
    let mut seq = 0u64;
    while Instant::now() < until {
        let key = rng.random_range(0..plan.keys);
        let server = rng.random_range(0..servers.len());
        let c = &servers[server];
        match rng.random_range(0..20) {
            // Registrations with values unique over the run.
            0..=5 => {
                seq += 1;
                let value = (id as u64 + 1) * 1_000_000_000 + seq;
                write(&rec, c, id, key, Some(value)).await;
            }
            6..=7 => {
                write(&rec, c, id, key, None).await;
            }
            8..=13 => {
                let opts = QueryOptions {
                    consistent: rng.random_bool(0.5),
                    ..Default::default()
                };
                linearizable_read(&rec, c, id, key, &opts).await;
            }
            // Default consistency across the WAN: dc2 agent -> dc2 server ->
            // gateways -> a dc1 server -> dc1's leader, so it is as
            // linearizable as a local default read.
            14..=15 if plan.xdc => {
                let opts = QueryOptions {
                    dc: Some("dc1".into()),
                    ..Default::default()
                };
                linearizable_read(&rec, &dc2_agent, id, key, &opts).await;
            }
            _ => {
                let opts = QueryOptions {
                    stale: true,
                    ..Default::default()
                };
                if plan.stale_in_history {
                    linearizable_read(&rec, c, id, key, &opts).await;
                } else {
                    match read(c, key, &opts).await {
                        Some((_, index)) => {
                            rec.count(|n| n.reads_stale += 1);
                            rec.stale_index(server, key, index);
                        }
                        None => rec.count(|n| n.reads_failed += 1),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
    Ok(())
}
