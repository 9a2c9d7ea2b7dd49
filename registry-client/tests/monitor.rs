//! `GET /v1/agent/monitor`: with the process's log setup installed (the one each binary's
//! `main` installs), the stream shows, as text or as JSON, a line caused after it opened, at
//! the level asked; an unknown level is Consul's 400; and the stream ends once the client is
//! gone (its subscription is dropped, nothing keeps running for it).

mod common;

use common::*;
use registry_api::logs::LogStream;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Reads `resp` until what came contains `needle`; everything read.
async fn read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(needle) {
            match resp.chunk().await {
                Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                other => panic!("the stream ended before {needle:?}: {other:?}; got {seen}"),
            }
        }
    };
    if tokio::time::timeout(WAIT, read).await.is_err() {
        panic!("no line with {needle:?} within {WAIT:?}; got {seen}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_new_lines_and_ends_with_its_client() {
    registry_api::logs::install();
    let stream = LogStream::global();
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("mon", &[server.addr])).await;
    let api = Api::new(agent.http_addr);

    let (code, text) = api.get("/v1/agent/monitor?loglevel=loud").await;
    assert_eq!((code, text.as_str()), (400, "Unknown log level: loud"));
    assert_eq!(stream.subscribers(), 0);

    // Text, at debug.
    let mut text_stream = api
        .http
        .get(format!("{}/v1/agent/monitor?loglevel=debug", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(text_stream.status(), 200);
    assert_eq!(stream.subscribers(), 1);
    api.put(
        "/v1/agent/service/register",
        r#"{"Name":"first-after-open"}"#,
    )
    .await;
    let seen = read_until(&mut text_stream, "first-after-open").await;
    let line = seen
        .lines()
        .find(|l| l.contains("first-after-open"))
        .unwrap();
    assert!(line.contains(" [INFO]  registry_client"), "{line}");
    assert!(line.contains("service registered"), "{line}");
    assert!(line.contains("service=first-after-open"), "{line}");

    // JSON, at warn: an info line is not sent, a warning is.
    let mut json_stream = api
        .http
        .get(format!(
            "{}/v1/agent/monitor?loglevel=WARN&logjson",
            api.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(json_stream.status(), 200);
    api.put("/v1/agent/service/register", r#"{"Name":"quiet-info"}"#)
        .await;
    tracing::warn!(target: "registry_monitor_test", marker = "loud-warning", "a warning");
    let seen = read_until(&mut json_stream, "loud-warning").await;
    assert!(!seen.contains("quiet-info"), "an info line at warn: {seen}");
    let line = seen.lines().find(|l| l.contains("loud-warning")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["@level"], "warn");
    assert_eq!(v["@message"], "a warning");
    assert_eq!(v["@module"], "registry_monitor_test");
    assert_eq!(v["marker"], "loud-warning");
    assert!(v["@timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    // The text monitor saw both.
    read_until(&mut text_stream, "loud-warning").await;

    // Both clients go: their subscriptions go with them, without a further line (the
    // server sees the connection close while the stream waits for one).
    drop(text_stream);
    drop(json_stream);
    wait_until(WAIT, "no monitor left", || async {
        stream.subscribers() == 0
    })
    .await;
    agent.stop().await;
    server.stop().await;
}

/// Issue 21: at most `MAX_MONITORS` monitors stream at once; one more is refused with 429 and
/// a reason (nothing is subscribed for it), and a place comes free when a monitor goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_are_bounded_and_one_more_is_refused() {
    use registry_api::logs::{MonitorLevel, MAX_MONITORS};
    registry_api::logs::install();
    let stream = LogStream::global();
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("mon-cap", &[server.addr])).await;
    let api = Api::new(agent.http_addr);

    // One through the endpoint, the rest held here.
    let first = api
        .http
        .get(format!("{}/v1/agent/monitor", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let mut held = Vec::new();
    while stream.subscribers() < MAX_MONITORS {
        held.push(
            stream
                .subscribe(MonitorLevel::parse("info").unwrap(), false)
                .unwrap(),
        );
    }
    let (code, text) = api.get("/v1/agent/monitor").await;
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("too many monitors"), "{text}");
    assert!(text.contains(&MAX_MONITORS.to_string()), "{text}");
    assert_eq!(stream.subscribers(), MAX_MONITORS);
    assert!(stream
        .subscribe(MonitorLevel::parse("debug").unwrap(), true)
        .is_err());

    // The endpoint's monitor goes: one may start again.
    drop(first);
    wait_until(WAIT, "a place free", || async {
        (stream.subscribers() < MAX_MONITORS).then_some(())
    })
    .await;
    let again = api
        .http
        .get(format!("{}/v1/agent/monitor", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    drop(again);
    drop(held);
    wait_until(WAIT, "no monitor left", || async {
        (stream.subscribers() == 0).then_some(())
    })
    .await;
    agent.stop().await;
    server.stop().await;
}
