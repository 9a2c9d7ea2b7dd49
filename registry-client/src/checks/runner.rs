//! The runner of one interval check (HTTP, TCP, gRPC): its own task, its stagger and
//! interval, and Consul's thresholds (`SuccessBeforePassing`, `FailuresBeforeWarning`,
//! `FailuresBeforeCritical`) applied by [`StatusHandler`]. [`CheckRunner`] is also the handle
//! of a TTL check, whose loop is in [`super::ttl`].
//!
//! Owns: scheduling and status decisions. Must not touch: protocol details (each probe module
//! owns its own) or the agent's state; results leave only as [`CheckUpdate`]s.

use super::outbox::Outbox;
use super::spec::{CheckKind, CheckSpec};
use super::ttl::{run_ttl_check, truncate_ttl_output, TtlReport};
use super::Probe;
use registry_api::metrics::{Counter, Family};
use registry_api::types::{CheckStatus, CRITICAL, PASSING, WARNING};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Upper bound of the random delay before a check's first run. Consul staggers over the
/// whole interval to spread load; we cap it so that a new check reports within a second.
const MAX_STAGGER: Duration = Duration::from_secs(1);

/// Floor of the interval given to [`CheckRunner::start`], so a zero interval cannot spin.
/// The agent-facing minimum is [`super::MIN_INTERVAL`], applied by [`super::parse_spec`].
const MIN_RUNNER_INTERVAL: Duration = Duration::from_millis(1);

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
        Self::start_counted(check_id, spec, initial_status, updates, None)
    }

    /// [`CheckRunner::start`], counting every run of an interval check in `runs` by the
    /// check's type and the run's result (the agent's `consul.agent.checks.runs`).
    pub fn start_counted(
        check_id: String,
        spec: CheckSpec,
        initial_status: String,
        updates: mpsc::Sender<CheckUpdate>,
        runs: Option<Family<Counter>>,
    ) -> CheckRunner {
        let shutdown = CancellationToken::new();
        let outbox = Outbox::new(check_id.clone(), updates, initial_status);
        let (ttl_reports, task) = match spec.kind {
            CheckKind::Ttl { ttl } => {
                let (tx, rx) = watch::channel(None);
                let task = tokio::spawn(run_ttl_check(ttl, rx, outbox, shutdown.clone()));
                (Some(tx), task)
            }
            _ => (
                None,
                tokio::spawn(run_interval_check(spec, outbox, runs, shutdown.clone())),
            ),
        };
        CheckRunner {
            check_id,
            ttl_reports,
            shutdown,
            task: Some(task),
        }
    }

    /// Sets a TTL check's status and output now and restarts its TTL, as Consul's
    /// `/v1/agent/check/pass|warn|fail|update` do. The resulting [`CheckUpdate`] arrives on the
    /// updates channel. Output longer than [`super::OUTPUT_MAX_SIZE`] is truncated the way Consul
    /// does.
    /// Errors (as 400 texts): not a TTL check, an unknown status, or a stopped check.
    pub fn update_ttl(&self, status: &str, output: &str) -> Result<(), String> {
        let Some(reports) = &self.ttl_reports else {
            return Err(format!(
                "CheckID {:?} does not have associated TTL",
                self.check_id
            ));
        };
        if status.parse::<CheckStatus>().is_err() {
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

/// The task of an HTTP, TCP or gRPC check: run, apply thresholds, publish, wait, repeat.
async fn run_interval_check(
    spec: CheckSpec,
    mut outbox: Outbox,
    runs: Option<Family<Counter>>,
    shutdown: CancellationToken,
) {
    let kind = match spec.kind {
        CheckKind::Http { .. } => "http",
        CheckKind::Tcp { .. } => "tcp",
        CheckKind::Grpc { .. } => "grpc",
        CheckKind::Ttl { .. } => "ttl",
    };
    let probe = Probe::new(&spec);
    let timeout = spec.effective_timeout();
    let interval = spec.interval.max(MIN_RUNNER_INTERVAL);
    let mut thresholds = StatusHandler::new(&spec);
    // Consul's `lib.RandomStagger`: checks registered together do not all fire together.
    let mut next_run = Instant::now() + random_stagger(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            delivered = outbox.flush(), if outbox.is_holding() => {
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
                tracing::debug!(check = %outbox.check_id(), status = raw_status, "check ran");
                if let Some(runs) = &runs {
                    runs.with(&[kind, raw_status]).inc();
                }
                let status = match thresholds.observe(raw_status) {
                    Some(status) => status.to_owned(),
                    // Below a threshold the status holds but the output is news.
                    None => outbox.status().to_owned(),
                };
                if !outbox.publish(&status, output) {
                    return;
                }
                next_run = Instant::now() + interval;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::test_support::*;
    use std::sync::atomic::Ordering;

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
}
