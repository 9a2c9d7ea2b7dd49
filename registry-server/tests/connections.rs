//! Clients that hold connections: slow or idle ones are closed, thousands at
//! once are served, and past the bound they are refused with a plain 503 while
//! the server goes on serving. Real TCP on 127.0.0.1, raw HTTP/1.1 bytes.

use registry_api::serve::ServeLimits;
use registry_server::{ServerConfig, ServerHandle};
use registry_testkit::wait_until;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server(limits: ServeLimits) -> (ServerHandle, tempfile::TempDir) {
    registry_api::serve::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("conn-test");
    cfg.dev = true;
    cfg.data_dir = Some(dir.path().to_path_buf());
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.rpc_addr = "127.0.0.1:0".parse().unwrap();
    cfg.agent = false;
    cfg.http_limits = limits;
    let h = registry_server::start(cfg).await.unwrap();
    let url = h.url();
    wait_until(Duration::from_secs(10), "a leader", || {
        let url = url.clone();
        async move {
            let r = registry_api::tls::plain_client()
                .get(format!("{url}/v1/status/leader"))
                .send()
                .await
                .ok()?;
            let body = r.text().await.ok()?;
            (body.len() > 2).then_some(())
        }
    })
    .await;
    (h, dir)
}

/// Reads until the peer closes; returns what arrived and when it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends a keep-alive request for the leader on `c` and expects a 200.
async fn ask_on_keep_alive(c: &mut TcpStream) {
    c.write_all(request("/v1/status/leader", false).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

fn request(path: &str, close: bool) -> String {
    let conn = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {conn}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_time_out_but_blocking_queries_do_not() {
    let timeout = Duration::from_millis(600);
    let (h, _dir) = server(ServeLimits {
        header_read_timeout: timeout,
        max_connections: 1000,
        ..ServeLimits::default()
    })
    .await;
    let addr = h.http_addr;

    // Silent: connects and sends nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    let took = closed.expect("a silent connection was never closed") - t0;
    assert!(took >= timeout / 2, "closed too early: {took:?}");

    // Slowloris: a request head trickling in, a byte every 100 ms.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let head = request("/v1/status/leader", false);
    let mut cut = false;
    for b in head.as_bytes() {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t0.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    if !cut {
        let (got, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a trickled head was never cut off");
        assert!(
            !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
            "a head that took {:?} was served",
            t0.elapsed()
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "slowloris held on");

    // Idle keep-alive: one request served, then nothing; closed after the timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    ask_on_keep_alive(&mut idle).await;
    let t0 = Instant::now();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "an idle keep-alive connection stayed open"
    );
    assert!(closed.unwrap() - t0 >= timeout / 2);

    // A blocking query whose head arrived is answered after its wait, well
    // past the header timeout.
    let index = registry_api::tls::plain_client()
        .get(format!("{}/v1/catalog/services", h.url()))
        .send()
        .await
        .unwrap()
        .headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .to_string();
    let mut blocking = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    blocking
        .write_all(request(&format!("/v1/catalog/services?index={index}&wait=2s"), true).as_bytes())
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut blocking, Duration::from_secs(10)).await;
    assert!(closed.is_some());
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "blocking query: {text}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "the blocking query returned early ({:?})",
        t0.elapsed()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_are_served_at_once() {
    const N: usize = 3000;
    let (h, _dir) = server(ServeLimits::default()).await;
    let addr = h.http_addr;
    // Open them all first, so all are open together.
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in conns {
        tasks.spawn(async move {
            c.write_all(request("/v1/status/leader", true).as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let (got, closed) = read_until_closed(&mut c, Duration::from_secs(60)).await;
            closed.ok_or("no answer in 60 s")?;
            let text = String::from_utf8_lossy(&got).to_string();
            if text.starts_with("HTTP/1.1 200") {
                Ok(())
            } else {
                Err(format!("answer: {text}"))
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {N} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_get_a_plain_503_and_the_server_goes_on() {
    const LIMIT: usize = 100;
    let (h, _dir) = server(ServeLimits {
        header_read_timeout: Duration::from_secs(30),
        max_connections: LIMIT,
        ..ServeLimits::default()
    })
    .await;
    let addr = h.http_addr;
    // Fill the bound with keep-alive connections that each had an answer.
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut c = TcpStream::connect(addr).await.unwrap();
        ask_on_keep_alive(&mut c).await;
        held.push(c);
    }
    // Past it: refused cleanly, with a reason.
    for _ in 0..300 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c
            .write_all(request("/v1/status/leader", true).as_bytes())
            .await;
        let (got, closed) = read_until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a refused connection was left open");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503"), "answer: {text}");
        assert!(text.contains("Too many open connections"), "answer: {text}");
    }
    // The held connections still work.
    for c in held.iter_mut().take(5) {
        ask_on_keep_alive(c).await;
    }
    // Once they go, new clients are served again.
    drop(held);
    let url = h.url();
    wait_until(Duration::from_secs(10), "service after the flood", || {
        let url = url.clone();
        async move {
            let r = registry_api::tls::plain_client()
                .get(format!("{url}/v1/status/leader"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    h.stop().await;
}

/// Issue 12 item 4: a head announcing a large body followed by a byte now and
/// then must not hold the connection (and its handler) for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_is_cut_at_the_body_deadline() {
    let body_timeout = Duration::from_secs(1);
    let (h, _dir) = server(ServeLimits {
        body_read_timeout: body_timeout,
        ..ServeLimits::default()
    })
    .await;
    let mut slow = TcpStream::connect(h.http_addr).await.unwrap();
    slow.write_all(
        b"PUT /v1/catalog/register HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n{",
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    // One byte every 200 ms: the header timeout (30 s) is not what cuts it.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => return Some(String::from_utf8_lossy(&buf[..n]).to_string()),
                Err(_) => {}
            }
        }
        None
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .expect("the trickling body held the connection for 10 s");
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= body_timeout - Duration::from_millis(100),
        "cut before the deadline: {elapsed:?}"
    );
    if let Some(answer) = answer {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    h.stop().await;
}
