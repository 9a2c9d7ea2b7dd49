//! Health-check runners: the agent's HTTP, TCP, gRPC and TTL checks.
//!
//! Semantics follow Consul's agent (`agent/checks/check.go`, `grpc.go`, and
//! <https://developer.hashicorp.com/consul/docs/services/usage/checks>):
//!
//! - every check is its own task, so a slow target only delays its own next run;
//! - an interval check's raw result goes through a [`StatusHandler`] that applies
//!   `success_before_passing`, `failures_before_warning` and `failures_before_critical`;
//! - a TTL check turns critical when it is not refreshed within its TTL.
//!
//! Results reach the agent as [`CheckUpdate`]s on a bounded channel. A full channel never
//! blocks a check: its task keeps the newest undelivered update and hands it over once the
//! consumer catches up. An update is a whole state, so only the newest one matters.
//!
//! TLS (HTTPS checks, gRPC with `GRPCUseTLS`) is rustls with the `ring` provider, built here
//! rather than through reqwest: reqwest 0.13 offers rustls only with aws-lc-rs or with no
//! provider at all, and the no-provider feature would make every reqwest client in the
//! workspace panic at build time unless a process-wide provider were installed first.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use registry_api::types::{CRITICAL, PASSING, WARNING};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timeout of an HTTP, TCP or gRPC probe when the definition sets none (Consul: 10s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest interval the agent accepts; shorter ones are raised to it with a warning, as
/// Consul's agent does (`checks.MinInterval`).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Most output kept from an HTTP body or a TTL update (Consul's `DefaultBufSize`, 4 KiB).
pub const OUTPUT_MAX_SIZE: usize = 4 * 1024;
/// `User-Agent` of HTTP checks unless the definition sets one (Consul's `UserAgent`).
pub const USER_AGENT: &str = "Consul Health Check";
/// `Accept` of HTTP checks unless the definition sets one (as Consul sends).
const DEFAULT_ACCEPT: &str = "text/plain, text/*, */*";
/// Redirects an HTTP check follows, Go's `http.Client` default that Consul inherits.
const MAX_REDIRECTS: usize = 10;
/// Upper bound of the random delay before a check's first run. Consul staggers over the
/// whole interval to spread load; we cap it so that a new check reports within a second.
const MAX_STAGGER: Duration = Duration::from_secs(1);
/// Floor of the interval given to [`CheckRunner::start`], so a zero interval cannot spin.
/// The agent-facing minimum is [`MIN_INTERVAL`], applied by [`parse_spec`].
const MIN_RUNNER_INTERVAL: Duration = Duration::from_millis(1);
/// Largest gRPC health response body read; the real message is a few bytes.
const GRPC_MAX_RESPONSE: usize = 64 * 1024;
/// The gRPC health service method (grpc/grpc `doc/health-checking.md`).
const GRPC_HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const GRPC_SERVING: u64 = 1;

/// What a check runs, parsed from a Consul check definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `HTTP`: 2xx is passing, 429 warning, anything else or an error critical.
    Http {
        /// Target URL (`http://` or `https://`).
        url: String,
        /// Request method; Consul's default is `GET`.
        method: String,
        /// Extra request headers, each with one or more values.
        headers: BTreeMap<String, Vec<String>>,
        /// Request body; empty sends none.
        body: String,
        /// `TLSSkipVerify`: accept any server certificate for `https` URLs.
        tls_skip_verify: bool,
    },
    /// `TCP`: passing when a connection to `host:port` opens within the timeout.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// `GRPC`: the standard `grpc.health.v1.Health/Check` call.
    Grpc {
        /// `host:port`, or `host:port/service` to ask about one service.
        target: String,
        /// `GRPCUseTLS`: speak TLS (ALPN `h2`) instead of plaintext HTTP/2.
        use_tls: bool,
        /// `TLSSkipVerify`: with `use_tls`, accept any server certificate.
        tls_skip_verify: bool,
    },
    /// `TTL`: the application reports its own status and must do so within `ttl`.
    Ttl {
        /// How long a reported status stays valid.
        ttl: Duration,
    },
}

/// A check to run: what, how often, and how many results it takes to change status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    /// What to run.
    pub kind: CheckKind,
    /// Time between the end of one run and the start of the next; unused by TTL checks.
    pub interval: Duration,
    /// Limit on one run; zero means [`DEFAULT_TIMEOUT`], as in Consul.
    pub timeout: Duration,
    /// Consecutive successes needed to turn passing (0 counts as 1).
    pub success_before_passing: u32,
    /// Consecutive failures needed to turn critical (0 counts as 1).
    pub failures_before_critical: u32,
    /// Consecutive failures after which the check reports warning until it turns
    /// critical; 0 means the same as `failures_before_critical` (Consul >= 1.11).
    pub failures_before_warning: u32,
}

impl CheckSpec {
    /// A spec with Consul's defaults: [`DEFAULT_TIMEOUT`] and no thresholds.
    pub fn new(kind: CheckKind, interval: Duration) -> Self {
        CheckSpec {
            kind,
            interval,
            timeout: DEFAULT_TIMEOUT,
            success_before_passing: 0,
            failures_before_critical: 0,
            failures_before_warning: 0,
        }
    }
}

/// A check's new status or output, as the agent should record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckUpdate {
    /// The check the update belongs to.
    pub check_id: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// What the last run said (or what the application said, for TTL checks).
    pub output: String,
}

/// The check fields of a Consul check definition that [`parse_spec`] reads, as received.
/// Durations are Go duration strings; an empty string means unset.
#[derive(Clone, Debug, Default)]
pub struct CheckFields<'a> {
    /// `HTTP`: URL of an HTTP check.
    pub http: &'a str,
    /// `Method`: HTTP method; empty means `GET`.
    pub method: &'a str,
    /// `Header`: HTTP request headers.
    pub headers: BTreeMap<String, Vec<String>>,
    /// `Body`: HTTP request body.
    pub body: &'a str,
    /// `TLSSkipVerify`: skip certificate verification for HTTPS and gRPC with TLS.
    pub tls_skip_verify: bool,
    /// `TCP`: `host:port` of a TCP check.
    pub tcp: &'a str,
    /// `GRPC`: `host:port[/service]` of a gRPC check.
    pub grpc: &'a str,
    /// `GRPCUseTLS`.
    pub grpc_use_tls: bool,
    /// `TTL`.
    pub ttl: &'a str,
    /// `Interval`.
    pub interval: &'a str,
    /// `Timeout`.
    pub timeout: &'a str,
    /// `SuccessBeforePassing`.
    pub success_before_passing: u32,
    /// `FailuresBeforeCritical`.
    pub failures_before_critical: u32,
    /// `FailuresBeforeWarning`.
    pub failures_before_warning: u32,
}

/// Turns Consul's check fields into a [`CheckSpec`], or a 400 text like Consul's.
///
/// The rules are Consul's `CheckType.Validate` and `Agent.addCheck`: interval checks need an
/// `Interval` (raised to [`MIN_INTERVAL`] if shorter), TTL checks need a positive `TTL`, the two
/// exclude each other, and the first kind set wins in Consul's order (TTL, HTTP, TCP, gRPC).
/// Method, headers and URL are not validated here: like Consul, a check whose request cannot
/// be built is registered and reports critical with the reason.
pub fn parse_spec(fields: &CheckFields<'_>) -> Result<CheckSpec, String> {
    let interval = optional_duration("Interval", fields.interval)?;
    let timeout = optional_duration("Timeout", fields.timeout)?;
    let ttl = optional_duration("TTL", fields.ttl)?;
    let interval_check =
        !fields.http.is_empty() || !fields.tcp.is_empty() || !fields.grpc.is_empty();

    if !interval.is_zero() && !ttl.is_zero() {
        return Err("Interval and TTL cannot both be specified".to_owned());
    }
    if interval_check && interval.is_zero() {
        return Err(
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or gRPC checks".to_owned(),
        );
    }
    if !interval_check && ttl.is_zero() {
        return Err("TTL must be > 0 for TTL checks".to_owned());
    }

    let kind = if !ttl.is_zero() {
        CheckKind::Ttl { ttl }
    } else if !fields.http.is_empty() {
        CheckKind::Http {
            url: fields.http.to_owned(),
            method: if fields.method.is_empty() {
                "GET"
            } else {
                fields.method
            }
            .to_owned(),
            headers: fields.headers.clone(),
            body: fields.body.to_owned(),
            tls_skip_verify: fields.tls_skip_verify,
        }
    } else if !fields.tcp.is_empty() {
        CheckKind::Tcp {
            addr: fields.tcp.to_owned(),
        }
    } else {
        CheckKind::Grpc {
            target: fields.grpc.to_owned(),
            use_tls: fields.grpc_use_tls,
            tls_skip_verify: fields.tls_skip_verify,
        }
    };

    let interval = if interval_check && interval < MIN_INTERVAL {
        tracing::warn!(
            interval = ?interval,
            minimum_interval = ?MIN_INTERVAL,
            "check has interval below minimum"
        );
        MIN_INTERVAL
    } else {
        interval
    };

    Ok(CheckSpec {
        kind,
        interval,
        timeout: if timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            timeout
        },
        success_before_passing: fields.success_before_passing,
        failures_before_critical: fields.failures_before_critical,
        failures_before_warning: fields.failures_before_warning,
    })
}

/// Parses a Go duration field; empty means zero (unset).
fn optional_duration(field: &str, text: &str) -> Result<Duration, String> {
    if text.trim().is_empty() {
        return Ok(Duration::ZERO);
    }
    registry_api::duration::parse(text).map_err(|e| format!("Invalid {field}: {e}"))
}

/// A running check. Stops its task when stopped or dropped.
#[derive(Debug)]
pub struct CheckRunner {
    /// The check's id, for error texts.
    check_id: String,
    /// Status reports of a TTL check, read by its task; `None` for other kinds. A watch
    /// channel because only the newest report matters and sending must never block the
    /// HTTP handler that calls [`CheckRunner::update_ttl`].
    ttl_reports: Option<watch::Sender<Option<TtlReport>>>,
    /// Fired by [`CheckRunner::stop`] and on drop.
    shutdown: CancellationToken,
    /// The check's task, awaited by [`CheckRunner::join`].
    task: Option<JoinHandle<()>>,
}

/// A status reported to a TTL check through [`CheckRunner::update_ttl`].
#[derive(Clone, Debug)]
struct TtlReport {
    /// `passing`, `warning` or `critical`.
    status: String,
    /// Output, already truncated to [`OUTPUT_MAX_SIZE`].
    output: String,
}

impl CheckRunner {
    /// Spawns the check's task on the current Tokio runtime.
    ///
    /// The check starts in `initial_status` (Consul's default is `critical`) with an empty
    /// output; every later change of status or output is sent on `updates`. The first run of
    /// an interval check comes after a random stagger of at most min(interval, 1s).
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub fn start(
        check_id: String,
        spec: CheckSpec,
        initial_status: String,
        updates: mpsc::Sender<CheckUpdate>,
    ) -> CheckRunner {
        let shutdown = CancellationToken::new();
        let outbox = Outbox {
            check_id: check_id.clone(),
            tx: updates,
            status: initial_status,
            output: String::new(),
            pending: None,
        };
        let (ttl_reports, task) = match spec.kind {
            CheckKind::Ttl { ttl } => {
                let (tx, rx) = watch::channel(None);
                let task = tokio::spawn(run_ttl_check(ttl, rx, outbox, shutdown.clone()));
                (Some(tx), task)
            }
            _ => (
                None,
                tokio::spawn(run_interval_check(spec, outbox, shutdown.clone())),
            ),
        };
        CheckRunner {
            check_id,
            ttl_reports,
            shutdown,
            task: Some(task),
        }
    }

    /// The check's id.
    pub fn check_id(&self) -> &str {
        &self.check_id
    }

    /// Sets a TTL check's status and output now and restarts its TTL, as Consul's
    /// `/v1/agent/check/pass|warn|fail|update` do. The resulting [`CheckUpdate`] arrives on the
    /// updates channel. Output longer than [`OUTPUT_MAX_SIZE`] is truncated the way Consul does.
    /// Errors (as 400 texts): not a TTL check, an unknown status, or a stopped check.
    pub fn update_ttl(&self, status: &str, output: &str) -> Result<(), String> {
        let Some(reports) = &self.ttl_reports else {
            return Err(format!(
                "CheckID {:?} does not have associated TTL",
                self.check_id
            ));
        };
        if ![PASSING, WARNING, CRITICAL].contains(&status) {
            return Err(format!("Invalid check status: '{status}'"));
        }
        if self.shutdown.is_cancelled() {
            return Err(format!("CheckID {:?} is stopped", self.check_id));
        }
        let report = TtlReport {
            status: status.to_owned(),
            output: truncate_ttl_output(output),
        };
        reports
            .send(Some(report))
            .map_err(|_| format!("CheckID {:?} is stopped", self.check_id))
    }

    /// Stops the check's task; it sends no update afterwards.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops the check and waits until its task has ended.
    pub async fn join(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(check = %self.check_id, error = %e, "check task failed");
            }
        }
    }
}

impl Drop for CheckRunner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Consul's `CheckTTL.SetStatus` truncation: the first [`OUTPUT_MAX_SIZE`] bytes and a note.
fn truncate_ttl_output(output: &str) -> String {
    if output.len() <= OUTPUT_MAX_SIZE {
        return output.to_owned();
    }
    let mut end = OUTPUT_MAX_SIZE;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} ... (captured {} of {} bytes)",
        &output[..end],
        OUTPUT_MAX_SIZE,
        output.len()
    )
}

/// Consul's text for an expired TTL (`CheckTTL.getExpiredOutput`).
fn ttl_expired_output(last_output: &str) -> String {
    if last_output.is_empty() {
        "TTL expired".to_owned()
    } else {
        format!("TTL expired (last output before timeout follows): {last_output}")
    }
}

/// The sending side of one check: what the agent was last told, and the newest update the
/// channel had no room for.
struct Outbox {
    /// The check's id, stamped on every update.
    check_id: String,
    /// Shared with every other check of the agent.
    tx: mpsc::Sender<CheckUpdate>,
    /// Status last published (initially the registered status).
    status: String,
    /// Output last published.
    output: String,
    /// Newest update not yet delivered because the channel was full.
    pending: Option<CheckUpdate>,
}

impl Outbox {
    /// Publishes a state if it differs from the last one; never waits. Returns false when the
    /// consumer is gone, which ends the check.
    fn publish(&mut self, status: &str, output: String) -> bool {
        if self.status == status && self.output == output {
            return true;
        }
        if self.status != status {
            tracing::info!(check = %self.check_id, from = %self.status, to = %status, "check status changed");
        }
        self.status = status.to_owned();
        self.output = output;
        let update = CheckUpdate {
            check_id: self.check_id.clone(),
            status: self.status.clone(),
            output: self.output.clone(),
        };
        if self.pending.is_some() {
            // Keep order: the older pending update is superseded, not overtaken.
            self.pending = Some(update);
            return true;
        }
        match self.tx.try_send(update) {
            Ok(()) => true,
            Err(TrySendError::Full(update)) => {
                tracing::debug!(check = %self.check_id, "check updates channel full; holding newest update");
                self.pending = Some(update);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Waits for room in the channel and delivers the held update. Cancel-safe: the update
    /// is taken only once room is reserved. Returns false when the consumer is gone.
    async fn flush(&mut self) -> bool {
        match self.tx.reserve().await {
            Ok(permit) => {
                if let Some(update) = self.pending.take() {
                    permit.send(update);
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// The task of an HTTP, TCP or gRPC check: run, apply thresholds, publish, wait, repeat.
async fn run_interval_check(spec: CheckSpec, mut outbox: Outbox, shutdown: CancellationToken) {
    let probe = Probe::new(&spec);
    let timeout = if spec.timeout.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        spec.timeout
    };
    let interval = spec.interval.max(MIN_RUNNER_INTERVAL);
    let mut thresholds = StatusHandler::new(&spec);
    // Consul's `lib.RandomStagger`: checks registered together do not all fire together.
    let mut next_run = Instant::now() + random_stagger(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            delivered = outbox.flush(), if outbox.pending.is_some() => {
                if !delivered {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_run) => {
                let (raw_status, output) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = tokio::time::timeout(timeout, probe.run()) => match result {
                        Ok(result) => result,
                        Err(_) => (CRITICAL, probe.timeout_output(timeout)),
                    },
                };
                tracing::debug!(check = %outbox.check_id, status = raw_status, "check ran");
                let status = match thresholds.observe(raw_status) {
                    Some(status) => status.to_owned(),
                    // Below a threshold the status holds but the output is news.
                    None => outbox.status.clone(),
                };
                if !outbox.publish(&status, output) {
                    return;
                }
                next_run = Instant::now() + interval;
            }
        }
    }
}

/// The task of a TTL check: critical when no report arrives within `ttl` of the last one.
async fn run_ttl_check(
    ttl: Duration,
    mut reports: watch::Receiver<Option<TtlReport>>,
    mut outbox: Outbox,
    shutdown: CancellationToken,
) {
    // Like Consul's timer, expiry fires once and re-arms only on the next report.
    let mut expires_at = Some(Instant::now() + ttl);
    let mut last_output = String::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            delivered = outbox.flush(), if outbox.pending.is_some() => {
                if !delivered {
                    return;
                }
            }
            changed = reports.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(report) = reports.borrow_and_update().clone() else {
                    continue;
                };
                last_output.clone_from(&report.output);
                if !outbox.publish(&report.status, report.output) {
                    return;
                }
                expires_at = Some(Instant::now() + ttl);
            }
            _ = tokio::time::sleep_until(expires_at.unwrap_or_else(Instant::now)), if expires_at.is_some() => {
                expires_at = None;
                tracing::warn!(check = %outbox.check_id, ttl = ?ttl, "check missed TTL, is now critical");
                if !outbox.publish(CRITICAL, ttl_expired_output(&last_output)) {
                    return;
                }
            }
        }
    }
}

/// A random delay in [0, min(interval, [`MAX_STAGGER`])).
fn random_stagger(interval: Duration) -> Duration {
    let cap = interval.min(MAX_STAGGER);
    let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    if cap_nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..cap_nanos))
}

/// Consul's `StatusHandler`: turns raw results into reported statuses using the
/// success/failure thresholds
/// (<https://developer.hashicorp.com/consul/docs/services/usage/checks#success-failures-before-passing-warning-critical>).
#[derive(Debug)]
struct StatusHandler {
    /// Consecutive successes needed to report passing (>= 1).
    success_before_passing: u32,
    /// Consecutive failures needed to report warning.
    failures_before_warning: u32,
    /// Consecutive failures needed to report critical (>= 1).
    failures_before_critical: u32,
    /// Current run of successes (passing or warning results).
    successes: u32,
    /// Current run of failures.
    failures: u32,
}

impl StatusHandler {
    /// Thresholds from the spec, with 0 meaning 1 (and warning defaulting to critical's, as
    /// Consul's agent sets it).
    fn new(spec: &CheckSpec) -> Self {
        let success_before_passing = spec.success_before_passing.max(1);
        let failures_before_critical = spec.failures_before_critical.max(1);
        let failures_before_warning = if spec.failures_before_warning == 0 {
            failures_before_critical
        } else {
            spec.failures_before_warning
        };
        StatusHandler {
            success_before_passing,
            failures_before_warning,
            failures_before_critical,
            // Consul's NewStatusHandler starts both counters at their thresholds so that the
            // first result after registration is reported at once; thresholds govern changes
            // after that.
            successes: success_before_passing,
            failures: failures_before_critical,
        }
    }

    /// Records one raw result; returns the status to report, or `None` to keep the current one.
    fn observe(&mut self, raw: &'static str) -> Option<&'static str> {
        // Warning (HTTP 429) counts as a success, as in Consul.
        if raw == PASSING || raw == WARNING {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            (self.successes >= self.success_before_passing).then_some(raw)
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.failures >= self.failures_before_critical {
                Some(raw)
            } else if self.failures >= self.failures_before_warning {
                Some(WARNING)
            } else {
                None
            }
        }
    }
}

/// One kind of probe, ready to run.
enum Probe {
    /// An HTTP(S) request.
    Http(HttpProbe),
    /// A TCP connect to `host:port`.
    Tcp(String),
    /// A gRPC health call.
    Grpc(GrpcProbe),
    /// A check whose request cannot be built (bad method, header or TLS setup), or a TTL
    /// check handed to the wrong loop: every run reports this text as critical, the way
    /// Consul reports request-construction errors.
    Broken(String),
}

impl Probe {
    /// Prepares the probe once: request parts, TLS configuration.
    fn new(spec: &CheckSpec) -> Probe {
        let timeout = if spec.timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            spec.timeout
        };
        match &spec.kind {
            CheckKind::Http {
                url,
                method,
                headers,
                body,
                tls_skip_verify,
            } => match HttpProbe::new(url, method, headers, body, *tls_skip_verify) {
                Ok(probe) => Probe::Http(probe),
                Err(e) => Probe::Broken(e),
            },
            CheckKind::Tcp { addr } => Probe::Tcp(addr.clone()),
            CheckKind::Grpc {
                target,
                use_tls,
                tls_skip_verify,
            } => match GrpcProbe::new(target, *use_tls, *tls_skip_verify, timeout) {
                Ok(probe) => Probe::Grpc(probe),
                Err(e) => Probe::Broken(e),
            },
            CheckKind::Ttl { .. } => Probe::Broken("TTL checks are not probed".to_owned()),
        }
    }

    /// Runs once; returns the raw status and the output.
    async fn run(&self) -> (&'static str, String) {
        match self {
            Probe::Http(probe) => probe.run().await,
            Probe::Tcp(addr) => match TcpStream::connect(addr.as_str()).await {
                Ok(_) => (PASSING, format!("TCP connect {addr}: Success")),
                Err(e) => (CRITICAL, format!("dial tcp {addr}: {e}")),
            },
            Probe::Grpc(probe) => probe.run().await,
            Probe::Broken(reason) => (CRITICAL, reason.clone()),
        }
    }

    /// Output of a run that hit its timeout.
    fn timeout_output(&self, timeout: Duration) -> String {
        match self {
            Probe::Http(probe) => format!(
                "HTTP {} {}: timed out after {timeout:?}",
                probe.method_text, probe.url_text
            ),
            Probe::Tcp(addr) => format!("dial tcp {addr}: i/o timeout after {timeout:?}"),
            Probe::Grpc(probe) => {
                format!("gRPC check {}: timed out after {timeout:?}", probe.target)
            }
            Probe::Broken(reason) => reason.clone(),
        }
    }
}

/// An HTTP check's prepared request.
struct HttpProbe {
    /// The URL as configured, for output (Consul prints the configured URL).
    url_text: String,
    /// The method as configured, for output.
    method_text: String,
    /// The parsed URL, or why it does not parse (reported on every run, like Go's error).
    url: Result<url::Url, String>,
    /// Parsed method.
    method: Method,
    /// Configured headers plus Consul's defaults.
    headers: HeaderMap,
    /// Request body.
    body: Bytes,
    /// TLS for `https` URLs.
    /// TLS for https URLs (and redirects to them). An error is kept rather
    /// than failing the check's registration: plain-http checks must work on a
    /// host without CA certificates (a FROM-scratch image).
    tls: Result<tokio_rustls::TlsConnector, String>,
}

impl HttpProbe {
    /// Validates method and headers once; errors become the check's critical output.
    fn new(
        url: &str,
        method: &str,
        headers: &BTreeMap<String, Vec<String>>,
        body: &str,
        tls_skip_verify: bool,
    ) -> Result<HttpProbe, String> {
        let method_text = if method.is_empty() { "GET" } else { method };
        let parsed_method = Method::from_bytes(method_text.as_bytes())
            .map_err(|_| format!("net/http: invalid method {method_text:?}"))?;
        let mut header_map = HeaderMap::new();
        for (name, values) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("net/http: invalid header field name {name:?}"))?;
            for value in values {
                let value = HeaderValue::from_str(value)
                    .map_err(|_| format!("net/http: invalid header field value for {name:?}"))?;
                header_map.append(name.clone(), value);
            }
        }
        if !header_map.contains_key(http::header::USER_AGENT) {
            header_map.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        if !header_map.contains_key(http::header::ACCEPT) {
            header_map.insert(
                http::header::ACCEPT,
                HeaderValue::from_static(DEFAULT_ACCEPT),
            );
        }
        // Consul disables keep-alives so a stale pooled connection cannot fail a check.
        header_map.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let tls = tls_client_config(tls_skip_verify, b"http/1.1")
            .map(|config| tokio_rustls::TlsConnector::from(Arc::new(config)));
        Ok(HttpProbe {
            url_text: url.to_owned(),
            method_text: method_text.to_owned(),
            url: url::Url::parse(url).map_err(|e| format!("parse {url:?}: {e}")),
            method: parsed_method,
            headers: header_map,
            body: Bytes::from(body.to_owned()),
            tls,
        })
    }

    /// One check: the request (following redirects), then Consul's status mapping and output.
    async fn run(&self) -> (&'static str, String) {
        let prefix = format!("HTTP {} {}", self.method_text, self.url_text);
        let (status, body) = match self.fetch().await {
            Ok(result) => result,
            Err(e) => return (CRITICAL, format!("{prefix}: {e}")),
        };
        let health = if status.is_success() {
            PASSING
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            // 429 Too Many Requests (RFC 6585): the service is up but shedding load.
            WARNING
        } else {
            CRITICAL
        };
        (health, format!("{prefix}: {status} Output: {body}"))
    }

    /// Sends the request, following redirects as Go's client does, and reads the start of
    /// the final response's body.
    async fn fetch(&self) -> Result<(StatusCode, String), String> {
        let mut url = self.url.clone()?;
        let mut method = self.method.clone();
        let mut body = self.body.clone();
        let mut headers = self.headers.clone();
        for _ in 0..=MAX_REDIRECTS {
            let (mut response, _connection) =
                self.send(&url, &method, &headers, body.clone()).await?;
            let status = response.status();
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            let next = match (status.is_redirection(), location) {
                (true, Some(location)) => url
                    .join(location)
                    .map_err(|e| format!("bad Location {location:?}: {e}"))?,
                // Go returns a 3xx without Location as the response.
                _ => {
                    let text = read_body_prefix(response.body_mut(), OUTPUT_MAX_SIZE).await;
                    return Ok((status, text));
                }
            };
            // Go's redirect rules: 301/302/303 turn into a body-less GET (HEAD stays HEAD);
            // 307/308 repeat the request as it was.
            if matches!(status.as_u16(), 301..=303) && method != Method::HEAD {
                method = Method::GET;
                body = Bytes::new();
            }
            // Go drops credentials when a redirect leaves the original host.
            if next.host_str() != url.host_str() {
                for name in ["authorization", "www-authenticate", "cookie", "cookie2"] {
                    headers.remove(name);
                }
            }
            url = next;
        }
        Err(format!("stopped after {MAX_REDIRECTS} redirects"))
    }

    /// One HTTP/1.1 exchange on a fresh connection (plain or TLS by the URL's scheme).
    async fn send(
        &self,
        url: &url::Url,
        method: &Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), String> {
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("unsupported protocol scheme {other:?}")),
        };
        let host = url.host().ok_or_else(|| "missing host in URL".to_owned())?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "missing port in URL".to_owned())?;
        let (tcp, server_name) = match host {
            url::Host::Domain(name) => (
                TcpStream::connect((name, port)).await,
                ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("invalid host {name:?}: {e}")),
            ),
            url::Host::Ipv4(ip) => (
                TcpStream::connect((ip, port)).await,
                Ok(ServerName::from(std::net::IpAddr::V4(ip))),
            ),
            url::Host::Ipv6(ip) => (
                TcpStream::connect((ip, port)).await,
                Ok(ServerName::from(std::net::IpAddr::V6(ip))),
            ),
        };
        let tcp = tcp.map_err(|e| format!("dial tcp {}: {e}", authority(url)))?;

        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url[url::Position::BeforePath..url::Position::AfterQuery])
            .body(Full::new(body))
            .map_err(|e| format!("building request: {e}"))?;
        *request.headers_mut() = headers.clone();
        // A configured Host header wins, as in Consul (`req.Host = header Host`).
        if !request.headers().contains_key(http::header::HOST) {
            let host =
                HeaderValue::from_str(&authority(url)).map_err(|e| format!("invalid host: {e}"))?;
            request.headers_mut().insert(http::header::HOST, host);
        }

        if https {
            let server_name = server_name?;
            let tls = self
                .tls
                .as_ref()
                .map_err(|e| format!("TLS setup: {e}"))?
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            http1_exchange(tls, request).await
        } else {
            http1_exchange(tcp, request).await
        }
    }
}

/// `host[:port]` of a URL as it goes into `Host`, port omitted when it is the default.
fn authority(url: &url::Url) -> String {
    url[url::Position::BeforeHost..url::Position::AfterPort].to_owned()
}

/// Sends one request over `io`; returns the response with a streaming body and the task that
/// drives the connection, which must be kept while the body is read.
async fn http1_exchange<T>(
    io: T,
    request: Request<Full<Bytes>>,
) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| error_chain(&e))?;
    // The connection must be driven while the body is read; the guard ends it when the
    // check run is done or dropped on timeout, so no connection outlives its run.
    let driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "health check connection ended with an error");
        }
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok((response, driver))
}

/// Aborts a task when dropped, so no connection outlives the check run that opened it.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads up to `limit` bytes of a body; a read error ends the read (Consul logs and keeps
/// what it has). Invalid UTF-8 is replaced, as the output is text.
async fn read_body_prefix(body: &mut hyper::body::Incoming, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let take = data.len().min(limit - buf.len());
                    buf.extend_from_slice(&data[..take]);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "error while reading health check body");
                break;
            }
            None => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// An error and its sources, joined with ": " like Go's wrapped errors.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A gRPC check's prepared call.
struct GrpcProbe {
    /// The target as configured, for output.
    target: String,
    /// `host:port` part of the target.
    server: String,
    /// Service part of the target; empty asks about the whole server.
    service: String,
    /// Sent as `grpc-timeout` so the server can give up when we do.
    timeout: Duration,
    /// TLS connector and server name when `GRPCUseTLS` is set.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl GrpcProbe {
    /// Splits the target as Consul's `NewGrpcHealthProbe` does: `server[/service]`.
    fn new(
        target: &str,
        use_tls: bool,
        tls_skip_verify: bool,
        timeout: Duration,
    ) -> Result<GrpcProbe, String> {
        let (server, service) = target.split_once('/').unwrap_or((target, ""));
        let tls = if use_tls {
            let config = tls_client_config(tls_skip_verify, b"h2")?;
            let host = host_of(server);
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| format!("invalid host {host:?}: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(GrpcProbe {
            target: target.to_owned(),
            server: server.to_owned(),
            service: service.to_owned(),
            timeout,
            tls,
        })
    }

    /// One check, with Consul's outputs.
    async fn run(&self) -> (&'static str, String) {
        match self.call().await {
            Ok(GRPC_SERVING) => (PASSING, format!("gRPC check {}: success", self.target)),
            Ok(status) => (
                CRITICAL,
                format!(
                    "gRPC {} serving status: {}",
                    self.target,
                    serving_status_name(status)
                ),
            ),
            Err(e) => (CRITICAL, format!("gRPC check {}: {e}", self.target)),
        }
    }

    /// Connects and makes the call; returns the serving status.
    async fn call(&self) -> Result<u64, String> {
        let tcp = TcpStream::connect(self.server.as_str())
            .await
            .map_err(|e| format!("dial tcp {}: {e}", self.server))?;
        match &self.tls {
            None => grpc_health_check(tcp, "http", &self.server, &self.service, self.timeout).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                grpc_health_check(tls, "https", &self.server, &self.service, self.timeout).await
            }
        }
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    server.rsplit_once(':').map_or(server, |(host, _)| host)
}

/// `grpc.health.v1.Health/Check` over HTTP/2 on `io`; returns the serving status.
///
/// The wire format is the gRPC HTTP/2 protocol (grpc/grpc `doc/PROTOCOL-HTTP2.md`): a POST
/// with `content-type: application/grpc` and `te: trailers`, a body of length-prefixed
/// messages, and the call's status in the `grpc-status` trailer (or in the headers of a
/// trailers-only response).
async fn grpc_health_check<T>(
    io: T,
    scheme: &str,
    authority: &str,
    service: &str,
    timeout: Duration,
) -> Result<u64, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io)
        .await
        .map_err(|e| error_chain(&e))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "gRPC health check connection ended with an error");
        }
    }));
    let mut client = client.ready().await.map_err(|e| error_chain(&e))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{scheme}://{authority}{GRPC_HEALTH_CHECK_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(
            "grpc-timeout",
            format!("{}m", timeout.as_millis().min(99_999_999)),
        )
        .body(())
        .map_err(|e| format!("building request: {e}"))?;
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| error_chain(&e))?;
    send.send_data(encode_health_check_request(service)?, true)
        .map_err(|e| error_chain(&e))?;
    let response = response.await.map_err(|e| error_chain(&e))?;
    if response.status() != StatusCode::OK {
        return Err(format!("unexpected HTTP status {}", response.status()));
    }
    // A trailers-only response carries the status in its headers.
    if let Some(code) = grpc_status(response.headers())? {
        if code != 0 {
            return Err(rpc_error(code, response.headers()));
        }
    }
    let mut body = response.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
        if message.len() > GRPC_MAX_RESPONSE {
            return Err(format!("response larger than {GRPC_MAX_RESPONSE} bytes"));
        }
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| error_chain(&e))?
        .unwrap_or_default();
    match grpc_status(&trailers)? {
        Some(0) => {}
        Some(code) => return Err(rpc_error(code, &trailers)),
        None if message.is_empty() => return Err("response without grpc-status".to_owned()),
        None => {}
    }
    decode_health_check_response(&message)
}

/// The `grpc-status` of a header block, if present.
fn grpc_status(headers: &HeaderMap) -> Result<Option<u32>, String> {
    headers
        .get("grpc-status")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| format!("invalid grpc-status {v:?}"))
        })
        .transpose()
}

/// Go gRPC's error text: `rpc error: code = Name desc = message`.
fn rpc_error(code: u32, headers: &HeaderMap) -> String {
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    format!(
        "rpc error: code = {} desc = {message}",
        grpc_code_name(code)
    )
}

/// gRPC status code names as Go's `codes.Code` prints them.
fn grpc_code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("Code({code})"), |name| (*name).to_owned())
}

/// `HealthCheckResponse.ServingStatus` names.
fn serving_status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        1 => "SERVING".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        other => other.to_string(),
    }
}

/// `HealthCheckRequest { string service = 1; }` in a gRPC frame: compressed flag 0, 4-byte
/// big-endian length, then the protobuf message (an empty service is omitted, as proto3 does).
fn encode_health_check_request(service: &str) -> Result<Bytes, String> {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, wire type 2 (length-delimited)
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let length = u32::try_from(message.len()).map_err(|_| "service name too long".to_owned())?;
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(length);
    frame.put_slice(&message);
    Ok(frame.freeze())
}

/// Reads the serving status from a gRPC frame holding a `HealthCheckResponse`.
fn decode_health_check_response(body: &[u8]) -> Result<u64, String> {
    let (&compressed, rest) = body
        .split_first()
        .ok_or_else(|| "empty gRPC response".to_owned())?;
    if compressed != 0 {
        return Err("compressed gRPC response not supported".to_owned());
    }
    let length_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "truncated gRPC frame header".to_owned())?;
    let length = usize::try_from(u32::from_be_bytes(length_bytes))
        .map_err(|_| "gRPC frame too large".to_owned())?;
    let message = rest
        .get(4..4 + length)
        .ok_or_else(|| "truncated gRPC message".to_owned())?;
    serving_status_field(message)
}

/// Field 1 (`status`, varint) of a `HealthCheckResponse`; unknown fields are skipped and an
/// absent status is proto3's default, 0 (UNKNOWN).
fn serving_status_field(mut message: &[u8]) -> Result<u64, String> {
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                let value = read_varint(&mut message)?;
                if field == 1 {
                    status = value;
                }
            }
            1 => skip(&mut message, 8)?,
            2 => {
                let length = usize::try_from(read_varint(&mut message)?)
                    .map_err(|_| "protobuf length too large".to_owned())?;
                skip(&mut message, length)?;
            }
            5 => skip(&mut message, 4)?,
            wire_type => return Err(format!("unsupported protobuf wire type {wire_type}")),
        }
    }
    Ok(status)
}

/// Appends a protobuf base-128 varint.
fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Reads a protobuf base-128 varint (at most 10 bytes).
fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf
            .split_first()
            .ok_or_else(|| "truncated protobuf varint".to_owned())?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("protobuf varint too long".to_owned())
}

/// Skips `n` bytes of a protobuf message.
fn skip(buf: &mut &[u8], n: usize) -> Result<(), String> {
    *buf = buf
        .get(n..)
        .ok_or_else(|| "truncated protobuf field".to_owned())?;
    Ok(())
}

/// A rustls client configuration on the `ring` provider: the platform's trust store, or
/// with `skip_verify` (Consul's `TLSSkipVerify`) any certificate.
fn tls_client_config(skip_verify: bool, alpn: &[u8]) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if skip_verify {
        Arc::new(AcceptAnyServerCert {
            algorithms: provider.signature_verification_algorithms,
        })
    } else {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| format!("TLS setup: {e}"))?,
        )
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// `TLSSkipVerify`: trusts any certificate chain and name, but still checks the handshake
/// signatures, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyServerCert {
    /// The provider's signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::routing::{any, get};
    use axum::Router;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Bound on every wait for an update in real time: generous for a loaded 2-core machine.
    const WAIT: Duration = Duration::from_secs(10);

    async fn next_update(rx: &mut mpsc::Receiver<CheckUpdate>) -> CheckUpdate {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(update)) => update,
            Ok(None) => panic!("updates channel closed"),
            Err(_) => panic!("no check update within {WAIT:?}"),
        }
    }

    /// Consumes updates until one has `status`, within [`WAIT`] overall.
    async fn wait_for_status(rx: &mut mpsc::Receiver<CheckUpdate>, status: &str) -> CheckUpdate {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(update)) if update.status == status => return update,
                Ok(Some(_)) => {}
                Ok(None) => panic!("updates channel closed while waiting for {status}"),
                Err(_) => panic!("no {status} update within {WAIT:?}"),
            }
        }
    }

    /// A spec that runs every 20 ms with a 2 s timeout.
    fn fast(kind: CheckKind) -> CheckSpec {
        CheckSpec {
            timeout: Duration::from_secs(2),
            ..CheckSpec::new(kind, Duration::from_millis(20))
        }
    }

    fn http_kind(url: String) -> CheckKind {
        CheckKind::Http {
            url,
            method: "GET".to_owned(),
            headers: BTreeMap::new(),
            body: String::new(),
            tls_skip_verify: false,
        }
    }

    /// The `n=<request number>` that `/script` puts in its body.
    fn request_number(output: &str) -> usize {
        output
            .rsplit("n=")
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request number in {output:?}"))
    }

    /// `/script` answers request n (from 1) with `statuses[n-1]`, the last one repeating.
    struct Script {
        statuses: Vec<u16>,
        hits: AtomicUsize,
    }

    async fn scripted(State(script): State<Arc<Script>>) -> (StatusCode, String) {
        let n = script.hits.fetch_add(1, Ordering::SeqCst) + 1;
        let code = script
            .statuses
            .get(n - 1)
            .or(script.statuses.last())
            .copied()
            .unwrap_or(200);
        (
            StatusCode::from_u16(code).expect("valid test status"),
            format!("n={n}"),
        )
    }

    async fn echo(method: Method, headers: HeaderMap, body: String) -> String {
        let values = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{method} x-test={} ua={} accept={} body={body}",
            values("x-test"),
            values("user-agent"),
            values("accept")
        )
    }

    fn app(script: Arc<Script>) -> Router {
        Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/busy",
                get(|| async { (StatusCode::TOO_MANY_REQUESTS, "slow down") }),
            )
            .route(
                "/error",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
            )
            .route("/hang", get(std::future::pending::<&'static str>))
            .route("/big", get(|| async { "x".repeat(10_000) }))
            .route(
                "/redirect",
                get(|| async { (StatusCode::FOUND, [(http::header::LOCATION, "/ok")]) }),
            )
            .route("/echo", any(echo))
            .route("/script", get(scripted))
            .with_state(script)
    }

    struct HttpServer {
        addr: SocketAddr,
        script: Arc<Script>,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    impl HttpServer {
        async fn start(statuses: Vec<u16>) -> HttpServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let script = Arc::new(Script {
                statuses,
                hits: AtomicUsize::new(0),
            });
            HttpServer::serve(listener, script)
        }

        fn serve(listener: TcpListener, script: Arc<Script>) -> HttpServer {
            let addr = listener.local_addr().expect("local addr");
            let stop = CancellationToken::new();
            let app = app(script.clone());
            let shutdown = stop.clone().cancelled_owned();
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    panic!("test server failed: {e}");
                }
            });
            HttpServer {
                addr,
                script,
                stop,
                task,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        /// Stops serving and waits until the listener is closed.
        async fn shutdown(self) {
            self.stop.cancel();
            tokio::time::timeout(WAIT, self.task)
                .await
                .expect("test server stops")
                .expect("test server task");
        }
    }

    #[tokio::test]
    async fn http_status_codes_map_to_consul_statuses() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let _runners: Vec<CheckRunner> = [("ok", "/ok"), ("busy", "/busy"), ("error", "/error")]
            .into_iter()
            .map(|(id, path)| {
                CheckRunner::start(
                    id.to_owned(),
                    fast(http_kind(server.url(path))),
                    CRITICAL.to_owned(),
                    tx.clone(),
                )
            })
            .collect();
        let mut first = BTreeMap::new();
        while first.len() < 3 {
            let update = next_update(&mut rx).await;
            first.entry(update.check_id.clone()).or_insert(update);
        }
        assert_eq!(first["ok"].status, PASSING);
        assert_eq!(
            first["ok"].output,
            format!("HTTP GET {}: 200 OK Output: fine", server.url("/ok"))
        );
        assert_eq!(first["busy"].status, WARNING);
        assert_eq!(
            first["busy"].output,
            format!(
                "HTTP GET {}: 429 Too Many Requests Output: slow down",
                server.url("/busy")
            )
        );
        assert_eq!(first["error"].status, CRITICAL);
        assert_eq!(
            first["error"].output,
            format!(
                "HTTP GET {}: 500 Internal Server Error Output: boom",
                server.url("/error")
            )
        );
    }

    #[tokio::test]
    async fn http_output_keeps_the_first_4_kib_of_the_body() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let _runner = CheckRunner::start(
            "big".into(),
            fast(http_kind(server.url("/big"))),
            CRITICAL.into(),
            tx,
        );
        let update = next_update(&mut rx).await;
        assert_eq!(
            update.output,
            format!(
                "HTTP GET {}: 200 OK Output: {}",
                server.url("/big"),
                "x".repeat(OUTPUT_MAX_SIZE)
            )
        );
    }

    #[tokio::test]
    async fn http_check_follows_redirects() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let _runner = CheckRunner::start(
            "redir".into(),
            fast(http_kind(server.url("/redirect"))),
            CRITICAL.into(),
            tx,
        );
        let update = next_update(&mut rx).await;
        assert_eq!(update.status, PASSING);
        assert_eq!(
            update.output,
            format!("HTTP GET {}: 200 OK Output: fine", server.url("/redirect"))
        );
    }

    #[tokio::test]
    async fn http_timeout_is_critical() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let spec = CheckSpec {
            timeout: Duration::from_millis(200),
            ..fast(http_kind(server.url("/hang")))
        };
        let _runner = CheckRunner::start("hang".into(), spec, PASSING.into(), tx);
        let update = next_update(&mut rx).await;
        assert_eq!(update.status, CRITICAL);
        assert_eq!(
            update.output,
            format!("HTTP GET {}: timed out after 200ms", server.url("/hang"))
        );
    }

    #[tokio::test]
    async fn http_check_sends_method_headers_and_body() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let kind = CheckKind::Http {
            url: server.url("/echo"),
            method: "PUT".into(),
            headers: BTreeMap::from([("X-Test".to_owned(), vec!["a".to_owned(), "b".to_owned()])]),
            body: "hello".into(),
            tls_skip_verify: false,
        };
        let _runner = CheckRunner::start("echo".into(), fast(kind), CRITICAL.into(), tx);
        let update = next_update(&mut rx).await;
        assert_eq!(update.status, PASSING);
        assert_eq!(
            update.output,
            format!(
                "HTTP PUT {}: 200 OK Output: PUT x-test=a,b ua=Consul Health Check accept=text/plain, text/*, */* body=hello",
                server.url("/echo")
            )
        );
    }

    #[tokio::test]
    async fn http_check_goes_critical_when_server_stops_and_recovers_on_restart() {
        let server = HttpServer::start(vec![200]).await;
        let addr = server.addr;
        let url = server.url("/ok");
        let (tx, mut rx) = mpsc::channel(16);
        let _runner = CheckRunner::start(
            "web".into(),
            fast(http_kind(url.clone())),
            CRITICAL.into(),
            tx,
        );
        wait_for_status(&mut rx, PASSING).await;

        server.shutdown().await;
        let down = wait_for_status(&mut rx, CRITICAL).await;
        assert!(
            down.output
                .starts_with(&format!("HTTP GET {url}: dial tcp {addr}: ")),
            "{}",
            down.output
        );

        let listener = TcpListener::bind(addr).await.expect("rebind the same port");
        let _restarted = HttpServer::serve(
            listener,
            Arc::new(Script {
                statuses: vec![200],
                hits: AtomicUsize::new(0),
            }),
        );
        let up = wait_for_status(&mut rx, PASSING).await;
        assert_eq!(up.output, format!("HTTP GET {url}: 200 OK Output: fine"));
    }

    /// Runs a scripted HTTP check and returns its first `count` updates as
    /// (status, HTTP code, request number).
    async fn scripted_updates(
        statuses: Vec<u16>,
        spec: impl Fn(CheckKind) -> CheckSpec,
        count: usize,
    ) -> Vec<(String, u16, usize)> {
        let server = HttpServer::start(statuses).await;
        let (tx, mut rx) = mpsc::channel(64);
        let _runner = CheckRunner::start(
            "scripted".into(),
            spec(http_kind(server.url("/script"))),
            CRITICAL.into(),
            tx,
        );
        let mut seen = Vec::new();
        while seen.len() < count {
            let update = next_update(&mut rx).await;
            let code = if update.output.contains(": 200 OK ") {
                200
            } else if update.output.contains(": 500 Internal Server Error ") {
                500
            } else {
                panic!("unexpected output {:?}", update.output)
            };
            seen.push((update.status, code, request_number(&update.output)));
        }
        seen
    }

    #[tokio::test]
    async fn thresholds_need_consecutive_results() {
        let seen = scripted_updates(
            vec![200, 200, 500, 500, 500, 200, 200],
            |kind| CheckSpec {
                success_before_passing: 2,
                failures_before_critical: 3,
                ..fast(kind)
            },
            7,
        )
        .await;
        let expected = [
            // The first result is reported at once (Consul preloads the counters).
            (PASSING, 200, 1),
            (PASSING, 200, 2),
            // Failures 1 and 2 of 3: status holds, output changes.
            (PASSING, 500, 3),
            (PASSING, 500, 4),
            (CRITICAL, 500, 5),
            // Success 1 of 2: still critical.
            (CRITICAL, 200, 6),
            (PASSING, 200, 7),
        ];
        let expected: Vec<(String, u16, usize)> = expected
            .iter()
            .map(|(s, c, n)| ((*s).to_owned(), *c, *n))
            .collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn failures_before_warning_reports_warning_before_critical() {
        let seen = scripted_updates(
            vec![200, 500, 500, 500],
            |kind| CheckSpec {
                failures_before_warning: 1,
                failures_before_critical: 3,
                ..fast(kind)
            },
            4,
        )
        .await;
        let expected: Vec<(String, u16, usize)> = [
            (PASSING, 200, 1),
            (WARNING, 500, 2),
            (WARNING, 500, 3),
            (CRITICAL, 500, 4),
        ]
        .iter()
        .map(|(s, c, n)| ((*s).to_owned(), *c, *n))
        .collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_slow_check_does_not_delay_a_fast_one() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(64);
        let slow_spec = CheckSpec {
            timeout: Duration::from_secs(5),
            ..fast(http_kind(server.url("/hang")))
        };
        let _slow = CheckRunner::start("slow".into(), slow_spec, CRITICAL.into(), tx.clone());
        let _fast = CheckRunner::start(
            "fast".into(),
            fast(http_kind(server.url("/script"))),
            CRITICAL.into(),
            tx,
        );
        // Five fast results well before the slow check's 5 s timeout could end.
        let fast_updates = tokio::time::timeout(Duration::from_secs(4), async {
            let mut fast_updates = 0;
            while fast_updates < 5 {
                let update = next_update(&mut rx).await;
                assert_eq!(
                    update.check_id, "fast",
                    "the slow check cannot have finished yet"
                );
                fast_updates += 1;
            }
            fast_updates
        })
        .await
        .expect("the fast check kept running while the slow one hung");
        assert_eq!(fast_updates, 5);
    }

    #[tokio::test]
    async fn a_full_channel_does_not_stall_probing() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(1);
        let spec = CheckSpec {
            interval: Duration::from_millis(10),
            ..fast(http_kind(server.url("/script")))
        };
        let _runner = CheckRunner::start("busy-consumer".into(), spec, CRITICAL.into(), tx);
        // Nobody reads: the check must go on probing.
        let deadline = Instant::now() + WAIT;
        while server.script.hits.load(Ordering::SeqCst) < 6 {
            assert!(
                Instant::now() < deadline,
                "probing stalled at {} requests while the channel was full",
                server.script.hits.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(request_number(&next_update(&mut rx).await.output), 1);
        // Updates 2..=5 were superseded while held; the held one is at least the fifth.
        let held = request_number(&next_update(&mut rx).await.output);
        assert!(held >= 5, "held update is from request {held}");
    }

    #[tokio::test]
    async fn stopping_a_check_ends_its_task() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(64);
        let runner = CheckRunner::start(
            "stop-me".into(),
            fast(http_kind(server.url("/script"))),
            CRITICAL.into(),
            tx,
        );
        next_update(&mut rx).await;
        tokio::time::timeout(WAIT, runner.join())
            .await
            .expect("task ends after stop");
        // The task held the only sender: the channel drains and closes.
        tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} })
            .await
            .expect("updates channel closes");
        let hits = server.script.hits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            server.script.hits.load(Ordering::SeqCst),
            hits,
            "no probe after stop"
        );
    }

    #[tokio::test]
    async fn tcp_open_port_passes_and_closed_port_is_critical() {
        let open = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open_addr = open.local_addr().expect("addr");
        let closed_addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr")
        };
        let (tx, mut rx) = mpsc::channel(16);
        let tcp = |addr: SocketAddr| {
            fast(CheckKind::Tcp {
                addr: addr.to_string(),
            })
        };
        let _open = CheckRunner::start("open".into(), tcp(open_addr), CRITICAL.into(), tx.clone());
        let _closed = CheckRunner::start("closed".into(), tcp(closed_addr), PASSING.into(), tx);
        let mut first = BTreeMap::new();
        while first.len() < 2 {
            let update = next_update(&mut rx).await;
            first.entry(update.check_id.clone()).or_insert(update);
        }
        assert_eq!(first["open"].status, PASSING);
        assert_eq!(
            first["open"].output,
            format!("TCP connect {open_addr}: Success")
        );
        assert_eq!(first["closed"].status, CRITICAL);
        assert!(
            first["closed"]
                .output
                .starts_with(&format!("dial tcp {closed_addr}: ")),
            "{}",
            first["closed"].output
        );
    }

    /// Decodes `HealthCheckRequest.service` from a gRPC frame, independently of the client's
    /// encoder; `None` when the frame is malformed.
    fn decode_service(frame: &[u8]) -> Option<String> {
        let (&flag, rest) = frame.split_first()?;
        let declared = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let message = rest.get(4..)?;
        if flag != 0 || usize::try_from(declared).ok()? != message.len() {
            return None;
        }
        if message.is_empty() {
            return Some(String::new());
        }
        let (&tag, mut rest) = message.split_first()?;
        if tag != 0x0a {
            return None;
        }
        let mut length = 0usize;
        let mut shift = 0;
        loop {
            let (&byte, tail) = rest.split_first()?;
            rest = tail;
            length |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if rest.len() != length {
            return None;
        }
        String::from_utf8(rest.to_vec()).ok()
    }

    /// A gRPC health service: `""` and `up*` are SERVING, `down` NOT_SERVING, `unimplemented`
    /// fails the call, and a malformed request gets INVALID_ARGUMENT.
    async fn answer_health_check(
        request: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let (head, mut body) = request.into_parts();
        let mut frame = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            frame.extend_from_slice(&chunk);
        }
        let well_formed = head.method == Method::POST
            && head.uri.path() == GRPC_HEALTH_CHECK_PATH
            && head
                .headers
                .get("content-type")
                .is_some_and(|v| v == "application/grpc")
            && head.headers.get("te").is_some_and(|v| v == "trailers");
        let service = if well_formed {
            decode_service(&frame)
        } else {
            None
        };
        let reply: Result<u8, (u32, &str)> = match service.as_deref() {
            Some(s) if s.is_empty() || s.starts_with("up") => Ok(1),
            Some("down") => Ok(2),
            Some("unimplemented") => Err((12, "no health service")),
            _ => Err((3, "malformed health check request")),
        };
        match reply {
            Ok(status) => {
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("response head");
                let Ok(mut stream) = respond.send_response(response, false) else {
                    return;
                };
                let _ = stream.send_data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]), false);
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let _ = stream.send_trailers(trailers);
            }
            Err((code, message)) => {
                // Trailers-only response: the status rides in the headers.
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code.to_string())
                    .header("grpc-message", message)
                    .body(())
                    .expect("response head");
                let _ = respond.send_response(response, true);
            }
        }
    }

    async fn serve_h2<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T) {
        let Ok(mut connection) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok((request, respond))) = connection.accept().await {
            tokio::spawn(answer_health_check(request, respond));
        }
    }

    async fn serve_grpc(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_h2(socket).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                serve_h2(stream).await;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1.
    fn self_signed_acceptor(alpn: &[u8]) -> tokio_rustls::TlsAcceptor {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server TLS config");
        config.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    fn grpc_kind(target: String) -> CheckKind {
        CheckKind::Grpc {
            target,
            use_tls: false,
            tls_skip_verify: false,
        }
    }

    /// Starts one check per (id, kind) and returns each one's first update.
    async fn first_updates(
        checks: Vec<(&str, CheckKind)>,
        initial: &str,
    ) -> BTreeMap<String, CheckUpdate> {
        let (tx, mut rx) = mpsc::channel(64);
        let count = checks.len();
        let _runners: Vec<CheckRunner> = checks
            .into_iter()
            .map(|(id, kind)| {
                CheckRunner::start(id.to_owned(), fast(kind), initial.to_owned(), tx.clone())
            })
            .collect();
        let mut first = BTreeMap::new();
        while first.len() < count {
            let update = next_update(&mut rx).await;
            first.entry(update.check_id.clone()).or_insert(update);
        }
        first
    }

    #[tokio::test]
    async fn grpc_check_reports_serving_status() {
        let addr = serve_grpc(None).await;
        let long_service = format!("up{}", "x".repeat(200)); // a two-byte length varint
        let first = first_updates(
            vec![
                ("server", grpc_kind(addr.to_string())),
                ("long", grpc_kind(format!("{addr}/{long_service}"))),
                ("down", grpc_kind(format!("{addr}/down"))),
                ("unimplemented", grpc_kind(format!("{addr}/unimplemented"))),
            ],
            CRITICAL,
        )
        .await;
        assert_eq!(first["server"].status, PASSING);
        assert_eq!(
            first["server"].output,
            format!("gRPC check {addr}: success")
        );
        assert_eq!(first["long"].status, PASSING, "{}", first["long"].output);
        assert_eq!(first["down"].status, CRITICAL);
        assert_eq!(
            first["down"].output,
            format!("gRPC {addr}/down serving status: NOT_SERVING")
        );
        assert_eq!(first["unimplemented"].status, CRITICAL);
        assert_eq!(
            first["unimplemented"].output,
            format!("gRPC check {addr}/unimplemented: rpc error: code = Unimplemented desc = no health service")
        );
    }

    #[tokio::test]
    async fn grpc_check_with_tls() {
        let addr = serve_grpc(Some(self_signed_acceptor(b"h2"))).await;
        let tls = |skip| CheckKind::Grpc {
            target: addr.to_string(),
            use_tls: true,
            tls_skip_verify: skip,
        };
        let first =
            first_updates(vec![("skip", tls(true)), ("verify", tls(false))], CRITICAL).await;
        assert_eq!(first["skip"].status, PASSING, "{}", first["skip"].output);
        assert_eq!(first["skip"].output, format!("gRPC check {addr}: success"));
        assert_eq!(first["verify"].status, CRITICAL);
        assert!(
            first["verify"].output.contains("TLS handshake"),
            "{}",
            first["verify"].output
        );
    }

    /// An HTTPS server that answers every request `200 secure`.
    async fn serve_https() -> SocketAddr {
        let acceptor = self_signed_acceptor(b"http/1.1");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure")
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_check_verifies_certificates_unless_told_to_skip() {
        let addr = serve_https().await;
        let url = format!("https://{addr}/health");
        let https = |skip| CheckKind::Http {
            url: url.clone(),
            method: "GET".into(),
            headers: BTreeMap::new(),
            body: String::new(),
            tls_skip_verify: skip,
        };
        let first = first_updates(
            vec![("skip", https(true)), ("verify", https(false))],
            CRITICAL,
        )
        .await;
        assert_eq!(first["skip"].status, PASSING, "{}", first["skip"].output);
        assert_eq!(
            first["skip"].output,
            format!("HTTP GET {url}: 200 OK Output: secure")
        );
        assert_eq!(first["verify"].status, CRITICAL);
        assert!(
            first["verify"].output.contains("TLS handshake"),
            "{}",
            first["verify"].output
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_check_expires_unless_updated_and_updates_restart_the_timer() {
        let (tx, mut rx) = mpsc::channel(16);
        // A TTL shorter than WAIT, so that no expiry ties with a test timeout.
        let spec = CheckSpec::new(
            CheckKind::Ttl {
                ttl: Duration::from_secs(4),
            },
            Duration::ZERO,
        );
        let runner = CheckRunner::start("ttl".into(), spec, CRITICAL.into(), tx);

        assert!(tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .is_err());
        runner.update_ttl(PASSING, "all good").expect("TTL update");
        let updated_at = Instant::now();
        let update = next_update(&mut rx).await;
        assert_eq!(
            (update.status.as_str(), update.output.as_str()),
            (PASSING, "all good")
        );

        // 6 s after start, 3 s after the update: the restarted TTL has not run out.
        assert!(tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .is_err());
        let expired = next_update(&mut rx).await;
        assert_eq!(Instant::now() - updated_at, Duration::from_secs(4));
        assert_eq!(expired.status, CRITICAL);
        assert_eq!(
            expired.output,
            "TTL expired (last output before timeout follows): all good"
        );

        runner.update_ttl(WARNING, "").expect("TTL update");
        assert_eq!(next_update(&mut rx).await.status, WARNING);
        let expired = next_update(&mut rx).await;
        assert_eq!(
            (expired.status.as_str(), expired.output.as_str()),
            (CRITICAL, "TTL expired")
        );
    }

    /// Lets every task run until idle: under paused time a sleep completes only then.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn updates_held_by_a_full_channel_are_delivered_newest_first() {
        let (tx, mut rx) = mpsc::channel(1);
        let spec = CheckSpec::new(
            CheckKind::Ttl {
                ttl: Duration::from_secs(60),
            },
            Duration::ZERO,
        );
        let runner = CheckRunner::start("ttl".into(), spec, CRITICAL.into(), tx);
        for output in ["a", "b", "c"] {
            runner.update_ttl(PASSING, output).expect("TTL update");
            settle().await;
        }
        // "a" filled the channel; "b" was held, then superseded by "c".
        assert_eq!(next_update(&mut rx).await.output, "a");
        let held = next_update(&mut rx).await;
        assert_eq!((held.status.as_str(), held.output.as_str()), (PASSING, "c"));
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_check_never_updated_expires_after_ttl() {
        let (tx, mut rx) = mpsc::channel(16);
        let spec = CheckSpec::new(
            CheckKind::Ttl {
                ttl: Duration::from_secs(5),
            },
            Duration::ZERO,
        );
        let started = Instant::now();
        let _runner = CheckRunner::start("ttl".into(), spec, PASSING.into(), tx);
        let expired = next_update(&mut rx).await;
        assert_eq!(Instant::now() - started, Duration::from_secs(5));
        assert_eq!(
            (expired.status.as_str(), expired.output.as_str()),
            (CRITICAL, "TTL expired")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn update_ttl_rejects_other_kinds_bad_statuses_and_stopped_checks() {
        let (tx, _rx) = mpsc::channel(16);
        let tcp = CheckRunner::start(
            "tcp".into(),
            fast(CheckKind::Tcp {
                addr: "127.0.0.1:1".into(),
            }),
            CRITICAL.into(),
            tx.clone(),
        );
        let err = tcp.update_ttl(PASSING, "").expect_err("not a TTL check");
        assert_eq!(err, "CheckID \"tcp\" does not have associated TTL");

        let ttl = CheckRunner::start(
            "ttl".into(),
            CheckSpec::new(
                CheckKind::Ttl {
                    ttl: Duration::from_secs(5),
                },
                Duration::ZERO,
            ),
            CRITICAL.into(),
            tx,
        );
        assert_eq!(
            ttl.update_ttl("fine", ""),
            Err("Invalid check status: 'fine'".to_owned())
        );
        assert_eq!(ttl.update_ttl(PASSING, ""), Ok(()));
        ttl.stop();
        assert!(ttl.update_ttl(PASSING, "").is_err());
    }

    #[test]
    fn ttl_output_is_truncated_like_consul() {
        assert_eq!(truncate_ttl_output("short"), "short");
        let long = "é".repeat(3000); // 6000 bytes, two per char
        let truncated = truncate_ttl_output(&long);
        assert_eq!(
            truncated,
            format!("{} ... (captured 4096 of 6000 bytes)", "é".repeat(2048))
        );
    }

    fn thresholds(sbp: u32, fbw: u32, fbc: u32) -> StatusHandler {
        StatusHandler::new(&CheckSpec {
            success_before_passing: sbp,
            failures_before_warning: fbw,
            failures_before_critical: fbc,
            ..CheckSpec::new(
                CheckKind::Tcp {
                    addr: String::new(),
                },
                Duration::from_secs(1),
            )
        })
    }

    fn observe_all(
        handler: &mut StatusHandler,
        results: &[&'static str],
    ) -> Vec<Option<&'static str>> {
        results.iter().map(|raw| handler.observe(raw)).collect()
    }

    #[test]
    fn status_handler_follows_consul() {
        let (p, w, c) = (PASSING, WARNING, CRITICAL);
        assert_eq!(
            observe_all(&mut thresholds(2, 0, 3), &[p, p, c, c, c, p, p]),
            [Some(p), Some(p), None, None, Some(c), None, Some(p)]
        );
        assert_eq!(
            observe_all(&mut thresholds(1, 1, 3), &[p, c, c, c]),
            [Some(p), Some(w), Some(w), Some(c)]
        );
        // A warning result counts as a success.
        assert_eq!(
            observe_all(&mut thresholds(2, 0, 1), &[c, w, w]),
            [Some(c), None, Some(w)]
        );
        // Zero thresholds mean one.
        assert_eq!(
            observe_all(&mut thresholds(0, 0, 0), &[c, p, c]),
            [Some(c), Some(p), Some(c)]
        );
    }

    #[test]
    fn grpc_messages_encode_and_decode() {
        assert_eq!(
            encode_health_check_request("").expect("encode").as_ref(),
            [0, 0, 0, 0, 0]
        );
        assert_eq!(
            encode_health_check_request("svc").expect("encode").as_ref(),
            [0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        let long = "x".repeat(300);
        assert_eq!(
            decode_service(&encode_health_check_request(&long).expect("encode")),
            Some(long)
        );

        // status = SERVING, after an unknown string field 2 = "ab".
        assert_eq!(
            decode_health_check_response(&[0, 0, 0, 0, 6, 0x12, 2, b'a', b'b', 0x08, 1]),
            Ok(1)
        );
        // An empty message is proto3's default status, UNKNOWN.
        assert_eq!(decode_health_check_response(&[0, 0, 0, 0, 0]), Ok(0));
        assert!(decode_health_check_response(&[0, 0, 0, 0, 3, 0x08, 1]).is_err());
        assert!(decode_health_check_response(&[1, 0, 0, 0, 2, 0x08, 1]).is_err());
        assert!(decode_health_check_response(&[0, 0, 0, 0, 1, 0x08]).is_err());
        assert!(decode_health_check_response(&[]).is_err());
        assert_eq!(grpc_code_name(5), "NotFound");
        assert_eq!(grpc_code_name(99), "Code(99)");
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("example.com:50051"), "example.com");
        assert_eq!(host_of("[::1]:50051"), "::1");
        assert_eq!(host_of("10.0.0.1:443"), "10.0.0.1");
    }

    #[test]
    fn parse_spec_rejects_what_consul_rejects() {
        let err = |fields: CheckFields<'_>| parse_spec(&fields).expect_err("invalid definition");
        assert_eq!(
            err(CheckFields {
                http: "http://127.0.0.1/health",
                ..Default::default()
            }),
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or gRPC checks"
        );
        assert_eq!(
            err(CheckFields {
                ttl: "10s",
                interval: "10s",
                ..Default::default()
            }),
            "Interval and TTL cannot both be specified"
        );
        assert_eq!(
            err(CheckFields::default()),
            "TTL must be > 0 for TTL checks"
        );
        assert_eq!(
            err(CheckFields {
                ttl: "0s",
                ..Default::default()
            }),
            "TTL must be > 0 for TTL checks"
        );
        assert!(err(CheckFields {
            tcp: "127.0.0.1:22",
            interval: "ten",
            ..Default::default()
        })
        .starts_with("Invalid Interval: "));
    }

    #[test]
    fn parse_spec_applies_consul_defaults() {
        let http = parse_spec(&CheckFields {
            http: "http://127.0.0.1/health",
            tcp: "127.0.0.1:22", // HTTP wins, as in Consul's addCheck
            interval: "100ms",
            success_before_passing: 2,
            failures_before_warning: 1,
            failures_before_critical: 3,
            ..Default::default()
        })
        .expect("valid HTTP check");
        assert_eq!(
            http,
            CheckSpec {
                kind: CheckKind::Http {
                    url: "http://127.0.0.1/health".into(),
                    method: "GET".into(),
                    headers: BTreeMap::new(),
                    body: String::new(),
                    tls_skip_verify: false,
                },
                interval: MIN_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                success_before_passing: 2,
                failures_before_critical: 3,
                failures_before_warning: 1,
            }
        );

        let grpc = parse_spec(&CheckFields {
            grpc: "127.0.0.1:50051/svc",
            grpc_use_tls: true,
            tls_skip_verify: true,
            interval: "30s",
            timeout: "2s",
            ..Default::default()
        })
        .expect("valid gRPC check");
        assert_eq!(
            grpc.kind,
            CheckKind::Grpc {
                target: "127.0.0.1:50051/svc".into(),
                use_tls: true,
                tls_skip_verify: true,
            }
        );
        assert_eq!(
            (grpc.interval, grpc.timeout),
            (Duration::from_secs(30), Duration::from_secs(2))
        );

        let ttl = parse_spec(&CheckFields {
            ttl: "15s",
            ..Default::default()
        })
        .expect("valid TTL check");
        assert_eq!(
            ttl.kind,
            CheckKind::Ttl {
                ttl: Duration::from_secs(15)
            }
        );
        assert_eq!(ttl.interval, Duration::ZERO);

        let tcp = parse_spec(&CheckFields {
            tcp: "127.0.0.1:22",
            interval: "5s",
            ..Default::default()
        })
        .expect("valid TCP check");
        assert_eq!(
            tcp.kind,
            CheckKind::Tcp {
                addr: "127.0.0.1:22".into()
            }
        );
    }
}
