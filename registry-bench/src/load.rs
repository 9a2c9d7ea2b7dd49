//! Closed-loop load: N simulated clients, each with its own reqwest client (so its
//! own keep-alive connection), each sending its next request as soon as the last
//! one is answered. The same code drives our servers, our agents, etcd's JSON gateway
//! and r-nacos's HTTP API, so all pay the same client costs (HTTP/1.1, encoding and
//! decoding every body).

use anyhow::Result;
use registry_api::acl::TOKEN_HEADER;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The TLS configuration of the bench's clients, once measurement 9 has made its CA: they
/// trust it and show its client certificate to `https://` servers (plain `http://` bases
/// are not affected).
static TRUSTED: std::sync::OnceLock<Arc<registry_api::tls::Tls>> = std::sync::OnceLock::new();

/// Makes every client made from now on trust `files`' CA and show its client certificate.
pub fn trust(files: &crate::cluster::TlsFiles) -> Result<()> {
    let tls = registry_api::tls::Tls::load(
        registry_api::tls::TlsSettings {
            ca_file: Some(files.ca.clone()),
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.client_key.clone()),
            verify_outgoing: true,
            verify_server_hostname: true,
            domain: "consul".into(),
            ..Default::default()
        },
        false,
    )?
    .ok_or_else(|| anyhow::anyhow!("no TLS settings"))?;
    let _ = TRUSTED.set(tls);
    Ok(())
}

/// The HTTP client every simulated client uses: reqwest with keep-alive.
pub fn http_client() -> Result<reqwest::Client> {
    http_client_with_token(None)
}

/// [`http_client`] that sends `token` as `X-Consul-Token` on every request (measurement 10's
/// ACL cluster); with `None` it is exactly [`http_client`]. A default header rather than one
/// per request, so that [`request`] stays the same code for every measurement.
pub fn http_client_with_token(token: Option<&str>) -> Result<reqwest::Client> {
    let expect = registry_api::tls::Expect::Server {
        datacenter: "dc1".into(),
    };
    let mut builder = registry_api::tls::client_builder(TRUSTED.get().map(|t| (t, expect)))
        .pool_max_idle_per_host(usize::MAX)
        // Below the servers' 30 s idle close (both systems get the same client).
        .pool_idle_timeout(registry_api::client::POOL_IDLE_TIMEOUT)
        .timeout(Duration::from_secs(30));
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(token)?;
        // Kept out of reqwest's Debug output, as tokens are out of every log.
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        let name = reqwest::header::HeaderName::from_bytes(TOKEN_HEADER.as_bytes())?;
        headers.insert(name, value);
        builder = builder.default_headers(headers);
    }
    Ok(builder.build()?)
}

/// One kind of request.
#[derive(Clone, Debug)]
pub enum Op {
    /// `PUT /v1/catalog/register` of a new node with a new service and its check.
    Register {
        /// Prefix of the node and service names (keeps runs distinct).
        prefix: String,
        /// Instances per node (1: every registration is a new node).
        per_node: u64,
    },
    /// etcd `POST /v3/kv/put` of a new key whose value is the same register body.
    EtcdPut {
        /// Key prefix.
        prefix: String,
    },
    /// `GET /v1/health/service/:name?passing` plus `query` (`&stale`, `&dc=dc2`...).
    Lookup {
        /// Service name.
        service: String,
        /// Extra query parameters, starting with `&` (or empty).
        query: &'static str,
    },
    /// etcd `POST /v3/kv/range` of one key, or of a prefix.
    EtcdRange {
        /// The key (or the prefix), base64.
        key_b64: String,
        /// For a prefix: etcd's `range_end`, base64 (the prefix with its last byte plus one).
        range_end_b64: Option<String>,
        /// `serializable: true` (local read) or linearizable.
        serializable: bool,
        /// Keys the answer must hold.
        expect: usize,
    },
    /// `PUT /v1/kv/:key` of a new value ([`kv_value`]) each time.
    KvPut {
        /// The key.
        key: String,
    },
    /// etcd `POST /v3/kv/put` of the same key and value as [`Op::KvPut`].
    EtcdKvPut {
        /// The key.
        key: String,
    },
    /// `GET /v1/kv/:key` plus `query` (`?stale`, `?recurse`...).
    KvGet {
        /// The key (or prefix).
        key: String,
        /// Query string, starting with `?` (or empty).
        query: &'static str,
        /// Entries the answer must hold.
        expect: usize,
    },
    /// `PUT /v1/agent/service/register` of a new service with one check, sent to an agent.
    AgentRegister {
        /// Prefix of the service names (keeps runs distinct).
        prefix: String,
    },
    /// r-nacos `POST /nacos/v1/ns/instance` of a new ephemeral instance of a new service.
    NacosRegister {
        /// Prefix of the service names.
        prefix: String,
        /// Instances per IP address (as [`Op::Register`]'s instances per node).
        per_node: u64,
    },
    /// r-nacos `GET /nacos/v1/ns/instance/list?serviceName=..&healthyOnly=true`.
    NacosList {
        /// Service name (in the default group and namespace).
        service: String,
        /// Instances the answer must hold.
        expect: usize,
    },
}

/// Bytes of every value the KV rows write and read.
pub const KV_VALUE_LEN: usize = 128;

/// Value number `n` of the KV rows: [`KV_VALUE_LEN`] ASCII bytes, different for every `n`,
/// the same for both systems.
pub fn kv_value(n: u64) -> Vec<u8> {
    format!("{n:0>KV_VALUE_LEN$}").into_bytes()
}

/// When a load stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this long (measurement).
    For(Duration),
    /// Once the shared sequence reaches this number (filling the catalog).
    Count(u64),
}

/// A load to run.
pub struct Load {
    /// What each request is.
    pub op: Op,
    /// Servers to spread clients over: client `c` talks to `bases[c % len]`.
    pub bases: Vec<String>,
    /// Number of simulated clients.
    pub clients: usize,
    /// When to stop.
    pub stop: Stop,
    /// Shared sequence numbering the requests (distinct names for writes).
    pub seq: Arc<AtomicU64>,
    /// Rotate each client over all `bases` request by request instead of pinning it.
    pub rotate: bool,
    /// ACL token every client sends (`X-Consul-Token`); `None`: no header, as before ACLs.
    pub token: Option<String>,
}

/// What one run of a load measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Median latency of the successful requests.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Successful requests per second of wall time.
    pub ops_per_s: f64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests (status >= 300, transport error, wrong answer).
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// CPU time the measured servers spent per successful request (all members together,
    /// user and system), where the caller measured it ([`RunStats::with_cpu`]).
    pub cpu_per_op: Option<Duration>,
    /// CPU time this process (the load generator) spent per successful request meanwhile,
    /// where [`RunStats::with_cpu`] measured the servers: on two shared cores, what the
    /// client costs bounds the ratio two systems can show.
    pub client_cpu_per_op: Option<Duration>,
}

impl RunStats {
    /// Runs `f` and sets [`RunStats::cpu_per_op`] from the CPU time `pids` used meanwhile.
    /// The figure that says whether a system got faster or only busier: on a machine whose
    /// two cores the load generator shares, throughput alone cannot tell.
    pub async fn with_cpu(
        pids: &[u32],
        f: impl std::future::Future<Output = Result<RunStats>>,
    ) -> Result<RunStats> {
        let me = [std::process::id()];
        let (before, mine) = (
            crate::procs::cpu_time_of(pids),
            crate::procs::cpu_time_of(&me),
        );
        let mut stats = f.await?;
        let used = crate::procs::cpu_time_of(pids).saturating_sub(before);
        let client = crate::procs::cpu_time_of(&me).saturating_sub(mine);
        if stats.ok > 0 {
            stats.cpu_per_op = Some(used / stats.ok as u32);
            stats.client_cpu_per_op = Some(client / stats.ok as u32);
        }
        Ok(stats)
    }
}

/// Runs `load` and returns its statistics. Each client first sends one request that is
/// not counted (it opens the connection); timing starts when all have done so.
pub async fn run(load: Load) -> Result<RunStats> {
    let load = Arc::new(load);
    let barrier = Arc::new(tokio::sync::Barrier::new(load.clients));
    let mut tasks = Vec::with_capacity(load.clients);
    for c in 0..load.clients {
        let http = http_client_with_token(load.token.as_deref())?;
        let load = load.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            let pinned = &load.bases[c % load.bases.len()];
            if let Stop::For(_) = load.stop {
                let n = load.seq.fetch_add(1, Ordering::Relaxed);
                let _ = request(&http, pinned, &load.op, n).await;
            }
            barrier.wait().await;
            let start = Instant::now();
            loop {
                let n = load.seq.fetch_add(1, Ordering::Relaxed);
                match load.stop {
                    Stop::For(d) if start.elapsed() >= d => break,
                    Stop::Count(limit) if n >= limit => break,
                    _ => {}
                }
                let base = if load.rotate {
                    &load.bases[(c + n as usize) % load.bases.len()]
                } else {
                    pinned
                };
                let t = Instant::now();
                match request(&http, base, &load.op, n).await {
                    Ok(()) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (start, Instant::now(), lat, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut stats = RunStats::default();
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for t in tasks {
        let (s, e, lat, errors, fe) = t.await?;
        first = Some(first.map_or(s, |f| f.min(s)));
        last = Some(last.map_or(e, |l| l.max(e)));
        all.extend(lat);
        stats.errors += errors;
        if stats.first_error.is_none() {
            stats.first_error = fe;
        }
    }
    all.sort_unstable();
    stats.ok = all.len() as u64;
    let wall = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    stats.ops_per_s = if wall > 0.0 {
        stats.ok as f64 / wall
    } else {
        0.0
    };
    stats.p50 = Duration::from_micros(percentile(&all, 0.50) as u64);
    stats.p99 = Duration::from_micros(percentile(&all, 0.99) as u64);
    Ok(stats)
}

/// The `q` quantile of sorted `v` (nearest rank); 0 when empty.
pub fn percentile<T: Copy + Default>(v: &[T], q: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The register body for instance `n`: [`registry_testkit::workload::registration`] as JSON.
pub fn register_body(prefix: &str, n: u64, per_node: u64) -> Vec<u8> {
    serde_json::to_vec(&registry_testkit::workload::registration(
        prefix, n, per_node,
    ))
    .unwrap_or_default()
}

/// The agent registration body for instance `n`: the same service, tags, port and check as
/// [`register_body`] (a TTL check, registered passing: the agent runs checks itself, and a
/// TTL check is the one that stays as registered); no node or address, the agent is the node.
pub fn agent_register_body(prefix: &str, n: u64) -> Vec<u8> {
    let svc = format!("{prefix}-svc-{n}");
    let body = serde_json::json!({
        "ID": svc, "Name": svc, "Tags": ["bench", "v1"], "Port": 8080,
        "Check": {"CheckID": format!("{svc}:alive"), "Name": "alive", "TTL": "1h", "Status": "passing"}
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The r-nacos registration form for instance `n`, mirroring [`register_body`]: service
/// `{prefix}-svc-{n}` on the address of node `n / per_node`, port 8080, ephemeral; what Nacos
/// has no field for (the node name, the tags, the check's name) goes into its metadata.
pub fn nacos_register_form(prefix: &str, n: u64, per_node: u64) -> Vec<u8> {
    let node_no = n / per_node.max(1);
    let ip = format!(
        "10.{}.{}.{}",
        (node_no >> 16) & 255,
        (node_no >> 8) & 255,
        node_no & 255
    );
    let metadata = serde_json::json!({
        "node": format!("{prefix}-node-{node_no}"), "tags": "bench,v1", "check": "alive"
    })
    .to_string();
    form_encode(&[
        ("serviceName", &format!("{prefix}-svc-{n}")),
        ("ip", &ip),
        ("port", "8080"),
        ("ephemeral", "true"),
        ("metadata", &metadata),
    ])
    .into_bytes()
}

/// `application/x-www-form-urlencoded` of `pairs` (reqwest's `form` feature is not built).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    (pairs.iter())
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Sends request `n` of `op` to `base` and checks the answer (status, JSON, content);
/// `Err` says what was wrong. The failover writers (measurement 11) send one at a time.
pub async fn request(http: &reqwest::Client, base: &str, op: &Op, n: u64) -> Result<(), String> {
    let resp = match op {
        Op::Register { prefix, per_node } => {
            http.put(format!("{base}/v1/catalog/register"))
                .header("content-type", "application/json")
                .body(register_body(prefix, n, *per_node))
                .send()
                .await
        }
        Op::EtcdPut { prefix } => {
            let key = format!("/registry/services/{prefix}-svc-{n}");
            let body = serde_json::json!({
                "key": b64(key.as_bytes()),
                "value": b64(&register_body(prefix, n, 1)),
            });
            http.post(format!("{base}/v3/kv/put"))
                .json(&body)
                .send()
                .await
        }
        Op::Lookup { service, query } => {
            http.get(format!("{base}/v1/health/service/{service}?passing{query}"))
                .send()
                .await
        }
        Op::EtcdRange {
            key_b64,
            range_end_b64,
            serializable,
            ..
        } => {
            let mut body = serde_json::json!({"key": key_b64, "serializable": serializable});
            if let Some(end) = range_end_b64 {
                body["range_end"] = Value::String(end.clone());
            }
            http.post(format!("{base}/v3/kv/range"))
                .json(&body)
                .send()
                .await
        }
        Op::KvPut { key } => {
            http.put(format!("{base}/v1/kv/{key}"))
                .body(kv_value(n))
                .send()
                .await
        }
        Op::EtcdKvPut { key } => {
            let body = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(&kv_value(n))});
            http.post(format!("{base}/v3/kv/put"))
                .json(&body)
                .send()
                .await
        }
        Op::KvGet { key, query, .. } => http.get(format!("{base}/v1/kv/{key}{query}")).send().await,
        Op::AgentRegister { prefix } => {
            http.put(format!("{base}/v1/agent/service/register"))
                .header("content-type", "application/json")
                .body(agent_register_body(prefix, n))
                .send()
                .await
        }
        Op::NacosRegister { prefix, per_node } => {
            http.post(format!("{base}/nacos/v1/ns/instance"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(nacos_register_form(prefix, n, *per_node))
                .send()
                .await
        }
        Op::NacosList { service, .. } => {
            http.get(format!("{base}/nacos/v1/ns/instance/list"))
                .query(&[("serviceName", service.as_str()), ("healthyOnly", "true")])
                .send()
                .await
        }
    }
    .map_err(|e| format!("transport: {}", crate::scenarios::error_chain(&e)))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    // The two answers that are not JSON: our agent's empty 200 (as Consul's) and r-nacos's
    // plain `ok`.
    match op {
        Op::AgentRegister { .. } if bytes.is_empty() => return Ok(()),
        Op::NacosRegister { .. } if &bytes[..] == b"ok" => return Ok(()),
        Op::AgentRegister { .. } | Op::NacosRegister { .. } => {
            return Err(format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&bytes)
            ))
        }
        _ => {}
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("json: {e}"))?;
    let ok = match op {
        Op::AgentRegister { .. } | Op::NacosRegister { .. } => false,
        Op::NacosList { expect, .. } => v
            .get("hosts")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() == *expect),
        Op::Register { .. } | Op::KvPut { .. } => v == Value::Bool(true),
        Op::EtcdPut { .. } | Op::EtcdKvPut { .. } => v.get("header").is_some(),
        Op::Lookup { .. } => v.as_array().is_some_and(|a| !a.is_empty()),
        Op::KvGet { expect, .. } => v.as_array().is_some_and(|a| a.len() == *expect),
        Op::EtcdRange { expect, .. } => v
            .get("kvs")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() == *expect),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(&bytes)
        ))
    }
}

/// Standard base64 with padding (etcd's JSON gateway encodes bytes fields so).
pub fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn kv_values_are_fixed_length_and_distinct() {
        assert_eq!(kv_value(0).len(), KV_VALUE_LEN);
        assert_eq!(kv_value(u64::MAX).len(), KV_VALUE_LEN);
        assert_ne!(kv_value(1), kv_value(2));
    }

    #[test]
    fn forms_are_percent_encoded() {
        assert_eq!(
            form_encode(&[("a b", "{\"x\":1,y}"), ("k", "v-1.2_*")]),
            "a+b=%7B%22x%22%3A1%2Cy%7D&k=v-1.2_*"
        );
        let form = String::from_utf8(nacos_register_form("reg", 513, 1)).unwrap_or_default();
        assert!(
            form.starts_with(
                "serviceName=reg-svc-513&ip=10.0.2.1&port=8080&ephemeral=true&metadata=%7B"
            ),
            "{form}"
        );
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7u32], 0.99), 7);
        assert_eq!(percentile::<u32>(&[], 0.5), 0);
    }
}
