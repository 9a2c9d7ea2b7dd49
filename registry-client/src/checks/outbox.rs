//! The sending side of one check: what the agent was last told, and the newest update the
//! channel had no room for.
//!
//! Owns: delivery of [`CheckUpdate`]s without ever blocking a check. Must not touch: when or
//! how a check runs, or what a status means.

use super::runner::CheckUpdate;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// The sending side of one check: what the agent was last told, and the newest update the
/// channel had no room for.
pub(super) struct Outbox {
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
    /// An outbox for check `check_id` that starts in `initial_status` with an empty output.
    pub(super) fn new(
        check_id: String,
        tx: mpsc::Sender<CheckUpdate>,
        initial_status: String,
    ) -> Outbox {
        Outbox {
            check_id,
            tx,
            status: initial_status,
            output: String::new(),
            pending: None,
        }
    }

    /// The check's id.
    pub(super) fn check_id(&self) -> &str {
        &self.check_id
    }

    /// The status last published.
    pub(super) fn status(&self) -> &str {
        &self.status
    }

    /// Whether an update waits for room in the channel ([`Outbox::flush`] delivers it).
    pub(super) fn is_holding(&self) -> bool {
        self.pending.is_some()
    }

    /// Publishes a state if it differs from the last one; never waits. Returns false when the
    /// consumer is gone, which ends the check.
    pub(super) fn publish(&mut self, status: &str, output: String) -> bool {
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
    pub(super) async fn flush(&mut self) -> bool {
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

#[cfg(test)]
mod tests {
    use crate::checks::test_support::next_update;
    use crate::checks::{CheckKind, CheckRunner, CheckSpec};
    use registry_api::types::{CRITICAL, PASSING};
    use std::time::Duration;
    use tokio::sync::mpsc;

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
}
