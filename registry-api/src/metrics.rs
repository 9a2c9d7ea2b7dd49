//! Metrics, one copy for the server, the agent and the gateway: the metric types (counters,
//! gauges, timers, and bounded families of them by label), a registry per process-role
//! instance, `GET /v1/agent/metrics` in Consul's JSON shape and, with `?format=prometheus`,
//! in the Prometheus (OpenMetrics) text format, and the middleware that times every HTTP
//! request by its route.
//!
//! Names are Consul's (<https://developer.hashicorp.com/consul/docs/reference/agent/telemetry>):
//! dotted in the JSON (`consul.raft.commitTime`), with `.` as `_` in the Prometheus text
//! (`consul_raft_commitTime`), where counters also get OpenMetrics' `_total`. Timers are in
//! milliseconds, as Consul's. The values are cumulative since the process started (Consul's
//! JSON shows its last 10 s interval; the shape is the same).
//!
//! **Why a registry per instance, not a global recorder.** Tests run many servers, agents and
//! gateways in one process; each instance creates its own [`Metrics`], so their numbers never
//! mix. A server's embedded agent [`includes`](Metrics::include) the server's, so the agent's
//! `/v1/agent/metrics` shows both, as a Consul server's does.
//!
//! **Cost on hot paths.** Recording is atomics only: a [`Timer`] keeps count, sum, sum of
//! squares, min, max and fixed buckets in atomics, no lock and no allocation. A [`Family`]
//! looks its member up under a read lock (the HTTP middleware, once per request); the Raft
//! thread holds plain [`Timer`]s and [`Counter`]s. Families are bounded
//! ([`MAX_LABEL_SETS`]): label values come from route templates and datacenter names, never
//! from raw paths or keys, and past the bound new label sets share one `other` member.
//!
//! The Prometheus text is written by `prometheus-client`'s encoder over these types
//! ([`EncodeMetric`]), so the format (escaping, OpenMetrics framing) is its, not ours.
//!
//! Owns: metric types, the registry, both renderings, request timing. Must not touch: what a
//! process measures (each process's own metrics module registers and records its metrics).

pub use crate::metrics_summary::{GaugeValue, MetricsSummary, PointValue, SampledValue};
use crate::Error as ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Most label sets one family keeps; further ones are counted under [`OVERFLOW`].
pub const MAX_LABEL_SETS: usize = 512;
/// The label value of the member that counts label sets past [`MAX_LABEL_SETS`].
pub const OVERFLOW: &str = "other";
/// Upper bounds (ms) of the timers' Prometheus buckets.
const BUCKETS_MS: [f64; 14] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
/// Content type of the Prometheus answer.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Raises the count to `total` (never lowers it): for a count kept elsewhere and read
    /// when the metrics are rendered.
    pub fn raise_to(&self, total: u64) {
        self.0.fetch_max(total, Ordering::Relaxed);
    }
}

/// A value that goes up and down (an f64 in an atomic).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `d` (negative: subtracts).
    pub fn add(&self, d: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + d).to_bits())
            });
    }

    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Durations, in ms: count, sum, sum of squares, min, max and fixed buckets.
#[derive(Debug)]
pub struct Timer {
    count: AtomicU64,
    /// Sum in µs.
    sum_us: AtomicU64,
    /// Sum of squares in ms², as f64 bits.
    sum_sq: AtomicU64,
    /// Min in µs (`u64::MAX` while empty).
    min_us: AtomicU64,
    /// Max in µs.
    max_us: AtomicU64,
    /// Per bucket of [`BUCKETS_MS`], and one past the last.
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
}

impl Default for Timer {
    fn default() -> Self {
        Timer {
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            sum_sq: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
            buckets: Default::default(),
        }
    }
}

impl Timer {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let ms = us as f64 / 1000.0;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        let _ = self
            .sum_sq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + ms * ms).to_bits())
            });
        self.min_us.fetch_min(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        let at = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time since `start`.
    pub fn since(&self, start: Instant) {
        self.record(start.elapsed());
    }

    /// Number of durations recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their sum in ms.
    pub fn sum_ms(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    fn sampled(&self, name: &str, labels: BTreeMap<String, String>, uptime: f64) -> SampledValue {
        let count = self.count();
        let sum = self.sum_ms();
        let (min, max, mean, stddev) = if count == 0 {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            let mean = sum / count as f64;
            let sq = f64::from_bits(self.sum_sq.load(Ordering::Relaxed));
            let var = (sq / count as f64 - mean * mean).max(0.0);
            (
                self.min_us.load(Ordering::Relaxed) as f64 / 1000.0,
                self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
                mean,
                var.sqrt(),
            )
        };
        SampledValue {
            name: name.to_string(),
            count,
            rate: if uptime > 0.0 { sum / uptime } else { 0.0 },
            sum,
            min,
            max,
            mean,
            stddev,
            labels,
        }
    }
}

/// Members of one metric by label values (in the order of the family's label names), bounded
/// by [`MAX_LABEL_SETS`]. Cloning shares the members.
#[derive(Debug)]
pub struct Family<M> {
    names: &'static [&'static str],
    members: Arc<RwLock<BTreeMap<Vec<String>, Arc<M>>>>,
}

impl<M> Clone for Family<M> {
    fn clone(&self) -> Self {
        Family {
            names: self.names,
            members: self.members.clone(),
        }
    }
}

impl<M: Default> Family<M> {
    fn new(names: &'static [&'static str]) -> Self {
        Family {
            names,
            members: Default::default(),
        }
    }

    /// The member with these label values (one per label name), created on first use.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        {
            let members = self.members.read().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = members
                .iter()
                .find(|(k, _)| k.iter().map(String::as_str).eq(values.iter().copied()))
                .map(|(_, m)| m)
            {
                return m.clone();
            }
        }
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let mut key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        if !members.contains_key(&key) && members.len() >= MAX_LABEL_SETS {
            key = vec![OVERFLOW.to_string(); values.len()];
        }
        members.entry(key).or_default().clone()
    }
}

/// A family's member as the renderings take it: its labels as a map (JSON), as pairs
/// (Prometheus), and the metric.
type Member<M> = (BTreeMap<String, String>, Vec<(String, String)>, Arc<M>);

impl<M> Family<M> {
    /// Every member.
    fn snapshot(&self) -> Vec<Member<M>> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members
            .iter()
            .map(|(values, m)| {
                let pairs: Vec<(String, String)> = self
                    .names
                    .iter()
                    .map(|n| n.to_string())
                    .zip(values.iter().cloned())
                    .collect();
                (pairs.iter().cloned().collect(), pairs, m.clone())
            })
            .collect()
    }
}

/// One registered metric.
#[derive(Clone, Debug)]
enum Kind {
    Counter(Family<Counter>),
    Gauge(Family<Gauge>),
    Timer(Family<Timer>),
}

#[derive(Clone, Debug)]
struct Registered {
    /// Consul's dotted name.
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

/// Something run before every rendering: it sets gauges from the current state.
type Collector = Arc<dyn Fn() + Send + Sync>;

/// The metrics of one process-role instance (a server, an agent, a gateway). Cloning shares it.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    registered: RwLock<Vec<Registered>>,
    collectors: RwLock<Vec<Collector>>,
    included: RwLock<Vec<Metrics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Metrics {
            inner: Arc::new(Inner {
                started: Instant::now(),
                registered: Default::default(),
                collectors: Default::default(),
                included: Default::default(),
            }),
        }
    }

    fn register(&self, name: &'static str, help: &'static str, kind: Kind) {
        let mut all = self
            .inner
            .registered
            .write()
            .unwrap_or_else(|e| e.into_inner());
        all.push(Registered { name, help, kind });
    }

    /// A counter without labels.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Arc<Counter> {
        self.counter_family(name, help, &[]).with(&[])
    }

    /// A gauge without labels.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Arc<Gauge> {
        self.gauge_family(name, help, &[]).with(&[])
    }

    /// A timer without labels.
    pub fn timer(&self, name: &'static str, help: &'static str) -> Arc<Timer> {
        self.timer_family(name, help, &[]).with(&[])
    }

    /// Counters by `labels`.
    pub fn counter_family(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Family<Counter> {
        let f = Family::new(labels);
        self.register(name, help, Kind::Counter(f.clone()));
        f
    }

    /// Gauges by `labels`.
    pub fn gauge_family(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Family<Gauge> {
        let f = Family::new(labels);
        self.register(name, help, Kind::Gauge(f.clone()));
        f
    }

    /// Timers by `labels`.
    pub fn timer_family(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Family<Timer> {
        let f = Family::new(labels);
        self.register(name, help, Kind::Timer(f.clone()));
        f
    }

    /// Runs `collect` before every rendering (gauges read from the current state).
    pub fn on_collect(&self, collect: impl Fn() + Send + Sync + 'static) {
        let mut all = self
            .inner
            .collectors
            .write()
            .unwrap_or_else(|e| e.into_inner());
        all.push(Arc::new(collect));
    }

    /// Renders `other`'s metrics with these (a server's under its embedded agent's).
    pub fn include(&self, other: &Metrics) {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return;
        }
        let mut all = self
            .inner
            .included
            .write()
            .unwrap_or_else(|e| e.into_inner());
        all.push(other.clone());
    }

    /// This registry and the included ones, each once, collectors run.
    fn all(&self) -> Vec<Metrics> {
        let mut out: Vec<Metrics> = vec![self.clone()];
        let mut i = 0;
        while i < out.len() {
            let included = out[i]
                .inner
                .included
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for m in included {
                if !out.iter().any(|o| Arc::ptr_eq(&o.inner, &m.inner)) {
                    out.push(m);
                }
            }
            i += 1;
        }
        for m in &out {
            let collectors = m
                .inner
                .collectors
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for c in collectors {
                c();
            }
        }
        out
    }

    fn registered(&self) -> Vec<Registered> {
        self.inner
            .registered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Consul's JSON shape of `/v1/agent/metrics`.
    pub fn summary(&self) -> MetricsSummary {
        let mut out = MetricsSummary {
            timestamp: go_time(SystemTime::now()),
            ..Default::default()
        };
        let uptime = self.inner.started.elapsed().as_secs_f64();
        for m in self.all() {
            for r in m.registered() {
                match &r.kind {
                    Kind::Counter(f) => {
                        for (labels, _, c) in f.snapshot() {
                            // Every counter here adds one at a time, so the sample of its
                            // increments is all ones, as go-metrics reports `IncrCounter(.., 1)`.
                            let n = c.get();
                            let one = if n > 0 { 1.0 } else { 0.0 };
                            out.counters.push(SampledValue {
                                name: r.name.to_string(),
                                count: n,
                                rate: if uptime > 0.0 { n as f64 / uptime } else { 0.0 },
                                sum: n as f64,
                                min: one,
                                max: one,
                                mean: one,
                                stddev: 0.0,
                                labels,
                            });
                        }
                    }
                    Kind::Gauge(f) => {
                        for (labels, _, g) in f.snapshot() {
                            out.gauges.push(GaugeValue {
                                name: r.name.to_string(),
                                value: g.get(),
                                labels,
                            });
                        }
                    }
                    Kind::Timer(f) => {
                        for (labels, _, t) in f.snapshot() {
                            out.samples.push(t.sampled(r.name, labels, uptime));
                        }
                    }
                }
            }
        }
        out
    }

    /// The Prometheus (OpenMetrics) text of every metric.
    pub fn prometheus_text(&self) -> String {
        let mut text = String::new();
        for m in self.all() {
            let mut registry = prometheus_client::registry::Registry::default();
            for r in m.registered() {
                registry.register(prometheus_name(r.name), r.help, Encoded(r.kind.clone()));
            }
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::text::encode_registry(&mut text, &registry);
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut text);
        text
    }

    /// The answer to `GET /v1/agent/metrics` with query pairs `q`: Prometheus text with
    /// `?format=prometheus`, else Consul's JSON.
    pub fn response(&self, q: &[(String, String)]) -> Response {
        let prometheus = q.iter().any(|(k, v)| k == "format" && v == "prometheus");
        if prometheus {
            let mut resp = self.prometheus_text().into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_TYPE),
            );
            return resp;
        }
        match serde_json::to_vec(&self.summary()) {
            Ok(body) => {
                let mut resp = body.into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => {
                crate::http_error::HttpError(ApiError::Internal(e.to_string())).into_response()
            }
        }
    }
}

/// Consul's name as a Prometheus name: every character outside `[a-zA-Z0-9_:]` becomes `_`.
pub fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Go's `time.Time.String()` in UTC, as Consul's `Timestamp` (`2017-08-08 02:55:10 +0000 UTC`).
fn go_time(t: SystemTime) -> String {
    let rfc = crate::duration::rfc3339(t);
    format!(
        "{} +0000 UTC",
        rfc.trim_end_matches('Z').replacen('T', " ", 1)
    )
}

/// A registered metric as `prometheus-client` encodes it.
#[derive(Debug)]
struct Encoded(Kind);

impl EncodeMetric for Encoded {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        fn each<M>(
            f: &Family<M>,
            encoder: &mut MetricEncoder,
            one: impl Fn(&M, &mut MetricEncoder) -> Result<(), std::fmt::Error>,
        ) -> Result<(), std::fmt::Error> {
            for (_, pairs, m) in f.snapshot() {
                if pairs.is_empty() {
                    one(&m, encoder)?;
                } else {
                    let mut e = encoder.encode_family(&pairs)?;
                    one(&m, &mut e)?;
                }
            }
            Ok(())
        }
        match &self.0 {
            Kind::Counter(f) => each(f, &mut encoder, |c, e| {
                e.encode_counter::<NoLabelSet, u64, u64>(&c.get(), None)
            }),
            Kind::Gauge(f) => each(f, &mut encoder, |g, e| e.encode_gauge(&g.get())),
            Kind::Timer(f) => each(f, &mut encoder, |t, e| {
                let mut buckets: Vec<(f64, u64)> = BUCKETS_MS
                    .iter()
                    .zip(&t.buckets)
                    .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
                    .collect();
                let last = t.buckets[BUCKETS_MS.len()].load(Ordering::Relaxed);
                buckets.push((f64::INFINITY, last));
                // The count from the buckets, so that `_count` equals the `+Inf` bucket even
                // while a recording is half done.
                let count = buckets.iter().map(|(_, n)| n).sum();
                e.encode_histogram::<NoLabelSet>(t.sum_ms(), count, &buckets, None)
            }),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.0 {
            Kind::Counter(_) => MetricType::Counter,
            Kind::Gauge(_) => MetricType::Gauge,
            Kind::Timer(_) => MetricType::Histogram,
        }
    }
}

/// The HTTP layer's request metrics: a timer per (method, route) and, optionally, a counter
/// per (method, route) and the gauge of blocking queries now waiting.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    /// Durations by `method` and `path` (the route template, Consul's `v1_kv_` form).
    pub timer: Family<Timer>,
    /// Counts by `method` and `path`, where Consul has a counter of its own.
    pub counter: Option<Family<Counter>>,
    /// Blocking queries (`?index=` above 0) being answered now.
    pub blocking: Option<Arc<Gauge>>,
}

/// The labels of [`RequestMetrics`]' families.
pub const REQUEST_LABELS: &[&str] = &["method", "path"];

/// Middleware (as a `route_layer`, where the matched route is known): times the request under
/// its method and route template; counts it; holds the blocking gauge up while a blocking
/// query is answered.
pub async fn track_requests(State(m): State<RequestMetrics>, req: Request, next: Next) -> Response {
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| path_label(p.as_str()));
    let blocking = crate::limits::blocking_wait(req.uri().query()).is_some();
    let gauge = m.blocking.as_ref().filter(|_| blocking);
    if let Some(g) = gauge {
        g.add(1.0);
    }
    // Lowered again when the answer is ready or when the client goes away mid-wait.
    let _lower = gauge.map(|g| Lower(g.clone()));
    let start = Instant::now();
    let resp = next.run(req).await;
    m.timer.with(&[method, path.as_str()]).since(start);
    if let Some(c) = &m.counter {
        c.with(&[method, path.as_str()]).inc();
    }
    resp
}

/// Lowers a gauge by one when dropped.
struct Lower(Arc<Gauge>);

impl Drop for Lower {
    fn drop(&mut self) {
        self.0.add(-1.0);
    }
}

/// A route template as Consul's `path` label: no leading `/`, parameters dropped, `/` as `_`
/// (`/v1/kv/{*key}` is `v1_kv_`, `/v1/agent/metrics` is `v1_agent_metrics`). Bounded by the
/// routes, whatever the requests' paths.
pub fn path_label(template: &str) -> String {
    let mut out = String::new();
    for seg in template.trim_start_matches('/').split('/') {
        if seg.starts_with('{') {
            out.push('_');
            break;
        }
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(seg);
    }
    if template.ends_with('/') && !out.ends_with('_') {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_become_consuls_path_labels() {
        assert_eq!(path_label("/v1/kv/{*key}"), "v1_kv_");
        assert_eq!(path_label("/v1/kv/"), "v1_kv_");
        assert_eq!(path_label("/v1/agent/metrics"), "v1_agent_metrics");
        assert_eq!(
            path_label("/v1/catalog/service/{name}"),
            "v1_catalog_service_"
        );
        assert_eq!(
            path_label("/v1/agent/check/pass/{id}"),
            "v1_agent_check_pass_"
        );
    }

    #[test]
    fn a_timer_keeps_count_sum_min_max_and_spread() {
        let t = Timer::default();
        for ms in [1u64, 3, 5] {
            t.record(Duration::from_millis(ms));
        }
        let s = t.sampled("x", BTreeMap::new(), 1.0);
        assert_eq!(
            (s.count, s.sum, s.min, s.max, s.mean),
            (3, 9.0, 1.0, 5.0, 3.0)
        );
        assert!(
            (s.stddev - (8.0f64 / 3.0).sqrt()).abs() < 1e-9,
            "{}",
            s.stddev
        );
    }

    #[test]
    fn families_are_bounded() {
        let m = Metrics::new();
        let f = m.counter_family("consul.test", "test", &["k"]);
        for i in 0..MAX_LABEL_SETS + 10 {
            f.with(&[&i.to_string()]).inc();
        }
        let members = f.snapshot();
        assert_eq!(members.len(), MAX_LABEL_SETS + 1);
        let other = members
            .iter()
            .find(|(labels, _, _)| labels["k"] == OVERFLOW)
            .unwrap();
        assert_eq!(other.2.get(), 10);
    }

    #[test]
    fn both_renderings_name_every_metric_and_registries_stay_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.counter("consul.raft.apply", "applied").inc();
        b.counter("consul.raft.apply", "applied");
        a.timer("consul.raft.commitTime", "commit")
            .record(Duration::from_millis(2));
        a.gauge_family("consul.state.nodes", "nodes", &["dc"])
            .with(&["dc1"])
            .set(3.0);
        let text = a.prometheus_text();
        assert!(text.contains("consul_raft_apply_total 1"), "{text}");
        assert!(text.contains("consul_raft_commitTime_count 1"), "{text}");
        assert!(text.contains("consul_state_nodes{dc=\"dc1\"} 3"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert!(b.prometheus_text().contains("consul_raft_apply_total 0"));
        let json = serde_json::to_value(a.summary()).unwrap();
        for field in ["Timestamp", "Gauges", "Points", "Counters", "Samples"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(json["Counters"][0]["Name"], "consul.raft.apply");
        let read: MetricsSummary = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(read.counter("consul.raft.apply", &[]), 1);
        assert_eq!(read.counter("consul.raft.apply", &[("dc", "dc1")]), 0);
        assert_eq!(read.counter("no.such.counter", &[]), 0);
        assert_eq!(json["Samples"][0]["Count"], 1);
        assert_eq!(json["Gauges"][0]["Labels"]["dc"], "dc1");
        // Included registries render with the including one, each once.
        b.include(&a);
        a.include(&b);
        let both = b.summary();
        assert_eq!(both.counters.len(), 2);
    }
}
