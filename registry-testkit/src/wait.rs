//! The one bounded wait of every test in the workspace: poll a condition until it holds or a
//! limit passes, never a fixed sleep followed by an assertion. Uses tokio's clock, so it also
//! works (and takes no real time) under `#[tokio::test(start_paused = true)]`.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How often a condition is polled. Short, so a test waits little past the moment its
/// condition holds; every poll is one cheap request or one lock, which a 2-core machine
/// affords at this rate.
pub const POLL: Duration = Duration::from_millis(20);

/// What a polled condition answers: a `bool`, or an `Option` carrying what the wait returns.
pub trait Ready {
    /// What [`wait_until`] returns once the condition holds.
    type Value;
    /// `Some` once the condition holds.
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` every [`POLL`] until it holds (`true` or `Some(v)`) and returns what it
/// carried; panics naming `what` if it still does not hold after `limit`.
pub async fn wait_until<R, F, Fut>(limit: Duration, what: &str, mut check: F) -> R::Value
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await.ready() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `bad` every [`POLL`] for `period` and panics (naming `what` and what `bad`
/// returned) as soon as it returns `Some`: for things that must never happen. Only as
/// strong as `period` is long compared with how soon the defect would show; say so at
/// the call.
pub async fn never_within<T, F, Fut>(period: Duration, what: &str, mut bad: F)
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if let Some(v) = bad().await {
            panic!("{what}: {v:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_what_the_condition_carried_once_it_holds() {
        let mut polls = 0;
        let got = wait_until(Duration::from_secs(1), "the third poll", || {
            polls += 1;
            let now = polls;
            async move { (now == 3).then_some(now * 10) }
        })
        .await;
        assert_eq!(got, 30);
        let mut polls = 0;
        wait_until(Duration::from_secs(1), "a bool", || {
            polls += 1;
            let now = polls;
            async move { now == 2 }
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for never")]
    async fn panics_after_the_limit() {
        wait_until(Duration::from_secs(1), "never", || async { false }).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "it happened: 7")]
    async fn never_within_fails_as_soon_as_it_happens() {
        let started = Instant::now();
        never_within(Duration::from_secs(5), "it happened", || async move {
            (started.elapsed() > Duration::from_secs(1)).then_some(7)
        })
        .await;
    }
}
