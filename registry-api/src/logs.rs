//! The process's log lines, as the binaries print them and as `GET /v1/agent/monitor` streams
//! them (<https://developer.hashicorp.com/consul/api-docs/agent#stream-logs>): one
//! [`install`] for the three binaries (a `fmt` layer filtered by `RUST_LOG`, default `info`,
//! plus the [`LogStream`] layer), and the monitor's subscriptions.
//!
//! A monitor subscribes with a level ([`MonitorLevel`], Consul's names) and gets a bounded
//! channel of its own ([`MONITOR_BUFFER`] lines, Consul's monitor buffer). The layer hands each
//! event to every subscriber whose level admits it with `try_send`: a full channel (a slow
//! reader) loses the line and counts it, so logging never waits for a reader and memory never
//! grows with one. At most [`MAX_MONITORS`] read at once; one more is refused
//! ([`MonitorError`], a 429 from the agent). With no subscriber the layer's filter disables
//! every event it would not otherwise see, the callsite interest cache is rebuilt when the
//! first subscriber comes or the last goes, and the layer checks an atomic count before it
//! builds a line or takes the subscribers' lock, so an idle monitor costs nothing on the
//! logging path.
//!
//! A subscriber is read as a response body ([`MonitorBody`], polled by hyper, no task of its
//! own): when the client goes, hyper drops the body, which unsubscribes.
//!
//! This process's own lines (targets `registry_*`, `wan_gateway`) pass at the level asked; the
//! libraries' only at `INFO` and above: their `DEBUG`/`TRACE` lines include those of writing the
//! stream itself, which would feed back into it. Log lines carry what the code logs and nothing
//! else; no code logs a token or key (STYLE.md 10), so neither does the monitor.
//!
//! Owns: the tracing setup and the monitor's plumbing. Must not touch: HTTP routing (the agent
//! serves the endpoint) or what is logged.

use crate::duration;
use axum::body::Bytes;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::sync::mpsc;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{self, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Lines a monitor may fall behind by before it loses some (Consul's monitor `BufferSize`).
pub const MONITOR_BUFFER: usize = 512;
/// Monitors reading at once, at most: each holds a buffer of [`MONITOR_BUFFER`] lines and
/// costs every log line a send, so whoever reaches the agent cannot open them without end.
pub const MAX_MONITORS: usize = 64;

/// Why a monitor could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MonitorError {
    /// [`MAX_MONITORS`] are reading already.
    #[error("too many monitors: {MAX_MONITORS} are streaming logs already; close one or try again later")]
    TooMany,
}

/// Installs the process's logging: lines on stderr filtered by `RUST_LOG` (default `info`),
/// and the [`LogStream`] the monitor endpoint reads. Called once by each binary's `main`; a
/// second call (a test that starts several nodes) leaves the first setup in place.
pub fn install() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(LogStream::global().layer())
        .try_init();
}

/// A monitor's level: Consul's names (`trace`, `debug`, `info`, `warn`, `err`, `error`), in
/// any case; empty is `info` (`logging.ValidateLogLevel`, `LevelFromString`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorLevel(Level);

impl MonitorLevel {
    /// Parses `?loglevel=`; the error is Consul's 400 text, `Unknown log level: <level>`.
    pub fn parse(text: &str) -> Result<MonitorLevel, String> {
        let level = match text.to_ascii_uppercase().as_str() {
            "" | "INFO" => Level::INFO,
            "TRACE" => Level::TRACE,
            "DEBUG" => Level::DEBUG,
            "WARN" => Level::WARN,
            "ERR" | "ERROR" => Level::ERROR,
            _ => return Err(format!("Unknown log level: {text}")),
        };
        Ok(MonitorLevel(level))
    }

    /// The tracing level.
    pub fn level(self) -> Level {
        self.0
    }
}

/// One event, captured once and formatted by each reader as it asks ([`LogLine::text`] or
/// [`LogLine::json`]).
#[derive(Debug)]
pub struct LogLine {
    /// When it was logged.
    pub at: SystemTime,
    /// Its level.
    pub level: Level,
    /// Its target (the module path), Consul's `@module`.
    pub target: String,
    /// The message.
    pub message: String,
    /// The other fields, in the order they were given.
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    /// hclog's text form: `2024-01-02T03:04:05.678Z [INFO]  target: message: k=v`.
    pub fn text(&self) -> String {
        let bracket = format!("[{}]", self.level);
        let mut out = format!(
            "{} {bracket:<8}{}: {}",
            duration::rfc3339_millis(self.at),
            self.target,
            self.message
        );
        for (i, (k, v)) in self.fields.iter().enumerate() {
            out.push_str(if i == 0 { ": " } else { " " });
            if v.is_empty() || v.contains(char::is_whitespace) || v.contains('"') {
                let _ = write!(out, "{k}={v:?}");
            } else {
                let _ = write!(out, "{k}={v}");
            }
        }
        out.push('\n');
        out
    }

    /// hclog's JSON form: `{"@level":"info","@message":...,"@module":...,"@timestamp":...}`
    /// plus one key per field (a field named like one of those four is dropped).
    pub fn json(&self) -> String {
        let mut obj = serde_json::Map::new();
        for (k, v) in &self.fields {
            obj.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        let level = self.level.as_str().to_ascii_lowercase();
        obj.insert("@level".into(), level.into());
        obj.insert("@message".into(), self.message.clone().into());
        obj.insert("@module".into(), self.target.clone().into());
        obj.insert(
            "@timestamp".into(),
            duration::rfc3339_millis(self.at).into(),
        );
        let mut out = serde_json::Value::Object(obj).to_string();
        out.push('\n');
        out
    }
}

/// One monitor's end of the stream.
struct Monitor {
    /// Its id, to unsubscribe.
    id: u64,
    /// The most verbose level it wants.
    level: Level,
    /// Where its lines go (bounded).
    tx: mpsc::Sender<Arc<LogLine>>,
    /// Lines lost because it was full.
    dropped: Arc<AtomicU64>,
}

/// The process's log stream: the subscriber list the layer feeds and the monitors read.
pub struct LogStream {
    /// The current subscribers.
    subscribers: Mutex<Vec<Monitor>>,
    /// The most verbose level any subscriber wants, as [`LevelFilter`]'s number
    /// ([`level_index`]); [`OFF`] when there is none. Read on the logging path, so atomic.
    max: AtomicUsize,
    /// Source of subscriber ids.
    next_id: AtomicU64,
    /// How many subscribers there are: [`LogStream::publish`] looks here first, so that a
    /// line with nobody to read it never takes the lock.
    count: AtomicUsize,
}

/// `max` when nobody listens.
const OFF: usize = 0;
/// [`level_index`] of `INFO`: the most verbose level of the libraries' lines.
const INFO: usize = 3;

/// A level's verbosity: ERROR 1 .. TRACE 5 (0 is off).
fn level_index(level: &Level) -> usize {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Whether an event comes from this workspace's own crates.
fn own_target(target: &str) -> bool {
    target.starts_with("registry") || target.starts_with("wan_gateway")
}

impl LogStream {
    /// The process's one stream (what [`install`] feeds).
    pub fn global() -> &'static LogStream {
        static STREAM: OnceLock<LogStream> = OnceLock::new();
        STREAM.get_or_init(|| LogStream {
            subscribers: Mutex::new(Vec::new()),
            max: AtomicUsize::new(OFF),
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
        })
    }

    /// The layer that feeds this stream (installed by [`install`]).
    pub fn layer<S>(&'static self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        StreamLayer { stream: self }.with_filter(StreamFilter { stream: self })
    }

    /// How many monitors are reading (tests check that a closed one is gone).
    pub fn subscribers(&self) -> usize {
        self.lock().len()
    }

    /// A new monitor reading lines at `level` and more severe, as `json` or text; refused
    /// when [`MAX_MONITORS`] are reading already.
    pub fn subscribe(
        &'static self,
        level: MonitorLevel,
        json: bool,
    ) -> Result<MonitorBody, MonitorError> {
        let (tx, rx) = mpsc::channel(MONITOR_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        {
            let mut subscribers = self.lock();
            if subscribers.len() >= MAX_MONITORS {
                return Err(MonitorError::TooMany);
            }
            subscribers.push(Monitor {
                id,
                level: level.0,
                tx,
                dropped: dropped.clone(),
            });
            self.count.store(subscribers.len(), Ordering::SeqCst);
        }
        self.levels_changed();
        Ok(MonitorBody {
            rx,
            json,
            guard: Unsubscribe {
                stream: self,
                id,
                dropped,
            },
        })
    }

    /// The list, even if a panic elsewhere poisoned the lock (it holds plain data).
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Monitor>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes the most verbose level wanted and, if it changed, has tracing ask the
    /// filter again about every callsite (outside the lock: that asks [`StreamFilter`]).
    fn levels_changed(&self) {
        // Computed and stored under the lock, so two changes at once cannot leave the older
        // view behind.
        let changed = {
            let subscribers = self.lock();
            let max = subscribers
                .iter()
                .map(|s| level_index(&s.level))
                .max()
                .unwrap_or(OFF);
            self.max.swap(max, Ordering::SeqCst) != max
        };
        if changed {
            tracing::callsite::rebuild_interest_cache();
        }
    }

    /// Whether some subscriber wants events of `meta`.
    fn wants(&self, meta: &Metadata<'_>) -> bool {
        let index = level_index(meta.level());
        index <= self.max.load(Ordering::Relaxed) && (own_target(meta.target()) || index <= INFO)
    }

    /// Hands `line` to every subscriber whose level admits it; a full one loses it.
    fn publish(&self, line: LogLine) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let line = Arc::new(line);
        let own = own_target(&line.target);
        let index = level_index(&line.level);
        for s in self.lock().iter() {
            let wanted = index <= level_index(&s.level);
            if !wanted || (!own && index > INFO) {
                continue;
            }
            if s.tx.try_send(line.clone()).is_err() {
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Removes a subscriber when its body goes (the client closed the stream).
struct Unsubscribe {
    /// The stream it belongs to.
    stream: &'static LogStream,
    /// Its id.
    id: u64,
    /// Lines it lost, reported as Consul does when a monitor ends.
    dropped: Arc<AtomicU64>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        {
            let mut subscribers = self.stream.lock();
            subscribers.retain(|s| s.id != self.id);
            self.stream.count.store(subscribers.len(), Ordering::SeqCst);
        }
        self.stream.levels_changed();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped_count = dropped,
                "Dropped logs during monitor request"
            );
        }
    }
}

/// A monitor's response body: the subscriber's lines, as they come, until the client goes.
pub struct MonitorBody {
    /// The subscriber's channel.
    rx: mpsc::Receiver<Arc<LogLine>>,
    /// hclog's JSON form instead of text (`?logjson`).
    json: bool,
    /// Unsubscribes on drop.
    guard: Unsubscribe,
}

impl MonitorBody {
    /// Lines this monitor lost so far because it read too slowly.
    pub fn dropped(&self) -> u64 {
        self.guard.dropped.load(Ordering::Relaxed)
    }
}

impl hyper::body::Body for MonitorBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(line)) => {
                let text = if self.json { line.json() } else { line.text() };
                Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(text)))))
            }
            // The sender lives in the subscriber list until this body drops, so the channel
            // does not close first; if it ever did, the stream simply ends.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Captures events for the stream.
struct StreamLayer {
    /// The stream fed.
    stream: &'static LogStream,
}

impl<S: Subscriber> Layer<S> for StreamLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: layer::Context<'_, S>) {
        // The filter's interest cache can lag the last unsubscribe; nothing is built then.
        if self.stream.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let meta = event.metadata();
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        self.stream.publish(LogLine {
            at: SystemTime::now(),
            level: *meta.level(),
            target: meta.target().to_string(),
            message: visitor.message,
            fields: visitor.fields,
        });
    }
}

/// The stream layer's own filter: events only while some monitor wants them.
struct StreamFilter {
    /// The stream whose subscribers decide.
    stream: &'static LogStream,
}

impl<S> layer::Filter<S> for StreamFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &layer::Context<'_, S>) -> bool {
        meta.is_event() && self.stream.wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_event() && self.stream.wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match self.stream.max.load(Ordering::Relaxed) {
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            5 => LevelFilter::TRACE,
            _ => LevelFilter::OFF,
        })
    }
}

/// An event's message and fields as text.
#[derive(Default)]
struct Fields {
    /// The `message` field.
    message: String,
    /// Every other field.
    fields: Vec<(String, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_consuls_names_in_any_case() {
        assert_eq!(MonitorLevel::parse("").unwrap().level(), Level::INFO);
        assert_eq!(MonitorLevel::parse("debug").unwrap().level(), Level::DEBUG);
        assert_eq!(MonitorLevel::parse("TRACE").unwrap().level(), Level::TRACE);
        assert_eq!(MonitorLevel::parse("Warn").unwrap().level(), Level::WARN);
        assert_eq!(MonitorLevel::parse("err").unwrap().level(), Level::ERROR);
        assert_eq!(MonitorLevel::parse("error").unwrap().level(), Level::ERROR);
        assert_eq!(
            MonitorLevel::parse("loud").unwrap_err(),
            "Unknown log level: loud"
        );
        assert!(MonitorLevel::parse("warning").is_err());
    }

    #[test]
    fn lines_print_as_hclog_does() {
        let line = LogLine {
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_488_838_071_005),
            level: Level::INFO,
            target: "registry_client::agent".into(),
            message: "service registered".into(),
            fields: vec![
                ("node".into(), "n1".into()),
                ("reason".into(), "two words".into()),
            ],
        };
        assert_eq!(
            line.text(),
            "2017-03-06T22:07:51.005Z [INFO]  registry_client::agent: service registered: \
             node=n1 reason=\"two words\"\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line.json()).unwrap();
        assert_eq!(v["@level"], "info");
        assert_eq!(v["@message"], "service registered");
        assert_eq!(v["@module"], "registry_client::agent");
        assert_eq!(v["@timestamp"], "2017-03-06T22:07:51.005Z");
        assert_eq!(v["node"], "n1");
    }
}
