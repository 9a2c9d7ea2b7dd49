//! TTL checks: the application reports its own status, and the check turns critical when no
//! report arrives within the TTL (Consul's `CheckTTL`).
//!
//! Owns: the TTL loop, Consul's output truncation and expiry texts. Must not touch: interval
//! checks or the agent's state; reports arrive through [`super::CheckRunner::update_ttl`].

use super::outbox::Outbox;
use super::OUTPUT_MAX_SIZE;
use registry_api::types::CRITICAL;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A status reported to a TTL check through [`super::CheckRunner::update_ttl`].
#[derive(Clone, Debug)]
pub(super) struct TtlReport {
    /// `passing`, `warning` or `critical`.
    pub(super) status: String,
    /// Output, already truncated to [`OUTPUT_MAX_SIZE`].
    pub(super) output: String,
}

/// Consul's `CheckTTL.SetStatus` truncation: the first [`OUTPUT_MAX_SIZE`] bytes and a note.
pub(super) fn truncate_ttl_output(output: &str) -> String {
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

/// The task of a TTL check: critical when no report arrives within `ttl` of the last one.
pub(super) async fn run_ttl_check(
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
            delivered = outbox.flush(), if outbox.is_holding() => {
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
                tracing::warn!(check = %outbox.check_id(), ttl = ?ttl, "check missed TTL, is now critical");
                if !outbox.publish(CRITICAL, ttl_expired_output(&last_output)) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::test_support::*;
    use crate::checks::{CheckKind, CheckRunner, CheckSpec};
    use registry_api::types::{PASSING, WARNING};
    use tokio::sync::mpsc;

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
}
