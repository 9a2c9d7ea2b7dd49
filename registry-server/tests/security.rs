//! Who can talk to a server (issue 12 item 3): with a shared key (`--encrypt`)
//! only holders of the key join the cluster, reach HTTP on the RPC port or
//! send agent heartbeats; the RPC port's HTTP side never serves operator or
//! agent endpoints, key or not. Real servers on real TCP on 127.0.0.1.

use registry_api::auth::{generate_key, Purpose, SharedKey, SIGNATURE_HEADER};
use registry_server::{ServerConfig, ServerHandle};
use registry_testkit::cluster::{fast_tuning, wait_until};
use registry_testkit::process::free_ports;
use std::time::{Duration, Instant};

fn config(
    node: &str,
    dir: &tempfile::TempDir,
    rpc_port: u16,
    join: &[String],
    expect: usize,
    key: Option<&SharedKey>,
) -> ServerConfig {
    let mut c = ServerConfig::new(node);
    c.data_dir = Some(dir.path().to_path_buf());
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.rpc_addr = format!("127.0.0.1:{rpc_port}").parse().unwrap();
    c.bootstrap_expect = expect;
    c.retry_join = join.to_vec();
    c.tuning = fast_tuning();
    c.agent = false;
    c.encrypt = key.cloned();
    c
}

/// The voters' RPC addresses as `/v1/status/peers` lists them.
async fn peers(h: &ServerHandle) -> Vec<String> {
    match registry_api::tls::plain_client()
        .get(format!("{}/v1/status/peers", h.url()))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_servers_with_the_key_form_and_join_the_cluster() {
    let key = SharedKey::from_base64(&generate_key()).unwrap();
    let ports = free_ports(4);
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = Vec::new();
    for i in 0..3 {
        let c = config(
            &format!("s{i}"),
            &dirs[i],
            ports[i],
            &addrs[..3],
            3,
            Some(&key),
        );
        servers.push(registry_server::start(c).await.unwrap());
    }
    let first = &servers[0];
    wait_until(Duration::from_secs(20), "three voters", || async {
        (peers(first).await.len() == 3).then_some(())
    })
    .await;
    // An intruder with another key points at the cluster and asks to join.
    let other = SharedKey::from_base64(&generate_key()).unwrap();
    let intruder = registry_server::start(config(
        "intruder",
        &dirs[3],
        ports[3],
        &addrs[..3],
        0,
        Some(&other),
    ))
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let p = peers(first).await;
        assert_eq!(p.len(), 3, "membership changed: {p:?}");
        assert!(!p.contains(&addrs[3]), "the intruder joined: {p:?}");
        let conf: serde_json::Value = registry_api::tls::plain_client()
            .get(format!("{}/v1/operator/raft/configuration", first.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            !conf.to_string().contains(&addrs[3]),
            "the intruder is in the configuration (as a learner?): {conf}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        intruder.raft.status().leader_id == 0,
        "the intruder found a leader"
    );
    intruder.stop().await;
    for s in servers {
        s.stop().await;
    }
}

/// A dev server on real TCP, with or without a key.
async fn dev_server(key: Option<&SharedKey>) -> (ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::new("sec");
    c.dev = true;
    c.data_dir = Some(dir.path().to_path_buf());
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.rpc_addr = "127.0.0.1:0".parse().unwrap();
    c.encrypt = key.cloned();
    let h = registry_server::start(c).await.unwrap();
    let url = h.url();
    wait_until(Duration::from_secs(10), "a leader", || {
        let url = url.clone();
        async move {
            let r = registry_api::tls::plain_client()
                .get(format!("{url}/v1/status/leader"))
                .send()
                .await
                .ok()?;
            (r.text().await.ok()?.len() > 2).then_some(())
        }
    })
    .await;
    (h, dir)
}

async fn call(
    method: &str,
    url: &str,
    path: &str,
    body: &str,
    key: Option<&SharedKey>,
) -> (u16, String) {
    call_for(Purpose::Forward, method, url, path, body, key).await
}

async fn call_for(
    purpose: Purpose,
    method: &str,
    url: &str,
    path: &str,
    body: &str,
    key: Option<&SharedKey>,
) -> (u16, String) {
    let client = registry_api::tls::plain_client();
    let mut req = client
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.header(
            SIGNATURE_HEADER,
            key.sign_for(purpose, method, path, body.as_bytes()),
        );
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

const HEARTBEAT: &str = r#"{"Node":"ghost","Address":"10.9.9.9","Datacenter":"dc1"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpc_port_serves_only_data_endpoints_and_with_a_key_only_signed_ones() {
    // Without a key: data yes, operator and agent endpoints never.
    let (h, _d) = dev_server(None).await;
    let rpc = format!("http://{}", h.rpc_addr);
    assert_eq!(
        call("GET", &rpc, "/v1/catalog/services", "", None).await.0,
        200
    );
    for (method, path) in [
        ("GET", "/v1/operator/raft/configuration"),
        ("DELETE", "/v1/operator/raft/peer?address=x"),
        ("PUT", "/v1/operator/raft/transfer-leader"),
        ("GET", "/v1/operator/autopilot/health"),
        ("GET", "/v1/agent/self"),
        ("GET", "/v1/agent/version"),
        ("PUT", "/v1/agent/service/register"),
    ] {
        let (status, text) = call(method, &rpc, path, "", None).await;
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(text.contains("not served on the RPC port"), "{text}");
    }
    // ... while the HTTP port still serves them.
    assert_eq!(
        call("GET", &h.url(), "/v1/operator/raft/configuration", "", None)
            .await
            .0,
        200
    );
    h.stop().await;

    let key = SharedKey::from_base64(&generate_key()).unwrap();
    let wrong = SharedKey::from_base64(&generate_key()).unwrap();
    let (h, _d) = dev_server(Some(&key)).await;
    let rpc = format!("http://{}", h.rpc_addr);
    let (status, text) = call("GET", &rpc, "/v1/catalog/services", "", None).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("--encrypt"), "{text}");
    assert_eq!(
        call("GET", &rpc, "/v1/catalog/services", "", Some(&wrong))
            .await
            .0,
        403
    );
    assert_eq!(
        call("GET", &rpc, "/v1/catalog/services", "", Some(&key))
            .await
            .0,
        200
    );
    // Signed or not, operator paths stay closed on the RPC port.
    assert_eq!(
        call(
            "GET",
            &rpc,
            "/v1/operator/raft/configuration",
            "",
            Some(&key)
        )
        .await
        .0,
        403
    );
    // Heartbeats need the key on both ports: a forged one would keep a dead
    // node "alive" (or create one).
    // A forward signature (what an agent puts on a client's request it
    // passes on) is not a heartbeat signature either.
    for base in [&rpc, &h.url()] {
        let (status, text) = call("PUT", base, "/v1/internal/heartbeat", HEARTBEAT, None).await;
        assert_eq!(status, 403, "{base}: {text}");
        let (status, text) =
            call("PUT", base, "/v1/internal/heartbeat", HEARTBEAT, Some(&key)).await;
        assert_eq!(status, 403, "{base}, forward-signed: {text}");
    }
    for base in [&rpc, &h.url()] {
        let (status, text) = call_for(
            Purpose::Heartbeat,
            "PUT",
            base,
            "/v1/internal/heartbeat",
            HEARTBEAT,
            Some(&key),
        )
        .await;
        assert_eq!(status, 200, "{base}: {text}");
    }
    h.stop().await;
}

/// Review finding: a server signs what it forwards to its gateways with the
/// key, so it must never forward (and sign) a client's request for anything
/// but federated data endpoints: not a gateway's membership exchange, not an
/// operator or agent endpoint of another DC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_forwards_and_signs_only_federated_data_requests() {
    let key = SharedKey::from_base64(&generate_key()).unwrap();
    // A stand-in gateway that records every request it gets.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(req.uri().to_string());
            "[]"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let stub = tokio::spawn(async move { axum::serve(listener, app).await });
    let (h, _d) = dev_server(Some(&key)).await;
    h.set_wan_gateways(&[format!("http://{gw}")]);
    let exchange = r#"{"self":{"dc":"dc9","addr":"10.9.9.9:8302"},"members":[]}"#;
    for (method, path, body) in [
        ("POST", "/wan/v1/exchange?dc=dc2", exchange),
        ("GET", "/wan/v1/members?dc=dc2", ""),
        ("GET", "/v1/operator/raft/configuration?dc=dc2", ""),
        ("DELETE", "/v1/operator/raft/peer?address=x&dc=dc2", ""),
        // (`/v1/acl/*` is federated since issue [12]: a secondary sends its ACL writes to
        // the primary, and each needs a token there; tests/acl.rs.)
        ("GET", "/v1/kv/../agent/self?dc=dc2", ""),
        (
            "GET",
            "/v1/kv/%2e%2e/operator/raft/configuration?dc=dc2",
            "",
        ),
    ] {
        let (status, text) = call(method, &h.url(), path, body, None).await;
        // (The test client resolves `..` itself; then it is a local agent
        // read, answered here, which is fine: it must only not be forwarded.)
        assert!(
            path.contains("..") || status == 403 || status == 405,
            "{method} {path}: {status} {text}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "forwarded: {:?}",
        seen.lock().unwrap()
    );
    // A federated read still goes through.
    let (status, text) = call("GET", &h.url(), "/v1/catalog/services?dc=dc2", "", None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    h.stop().await;
    stub.abort();
}

/// Issue 21, item 1: an agent's force-leave (`/v1/internal/force-leave/:node`)
/// needs the key's signature on the HTTP port too, as heartbeats do (anyone
/// reaching 8500 could otherwise force a briefly critical server out of Raft);
/// the agent's own path still works, as its pool signs what it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_writes_need_the_key_on_both_ports_and_agents_still_force_leave() {
    let key = SharedKey::from_base64(&generate_key()).unwrap();
    let (h, _d) = dev_server(Some(&key)).await;
    let rpc = format!("http://{}", h.rpc_addr);
    // The server itself is the live node to aim at: a server is what a forged
    // force-leave would push out of Raft if its health were briefly critical.
    let url = h.url();
    wait_until(Duration::from_secs(10), "the server's node passing", || {
        let url = url.clone();
        async move {
            let r = registry_api::tls::plain_client()
                .get(format!("{url}/v1/health/node/sec"))
                .send()
                .await
                .ok()?;
            r.text().await.ok()?.contains("\"passing\"").then_some(())
        }
    })
    .await;
    let path = "/v1/internal/force-leave/sec";
    for base in [&rpc, &h.url()] {
        let (status, text) = call("PUT", base, path, "", None).await;
        assert_eq!(status, 403, "{base}, unsigned: {text}");
        assert!(text.contains("--encrypt"), "{text}");
        let wrong = SharedKey::from_base64(&generate_key()).unwrap();
        let (status, text) = call("PUT", base, path, "", Some(&wrong)).await;
        assert_eq!(status, 403, "{base}, another key: {text}");
        let (status, text) = call_for(Purpose::Heartbeat, "PUT", base, path, "", Some(&key)).await;
        assert_eq!(status, 403, "{base}, heartbeat-signed: {text}");
        // Signed as a forward (what an agent sends), it reaches the handler:
        // the node is alive and stays (Consul's force-leave changes nothing).
        let (status, text) = call("PUT", base, path, "", Some(&key)).await;
        assert_eq!(status, 200, "{base}, forward-signed: {text}");
    }
    // A client agent with the key asks through its own endpoint: its pool
    // signs, the server answers (200 for the live node, Consul's 500 for an
    // unknown one, never a 403).
    let agent = registry_client::start(registry_client::ClientConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        retry_join: vec![h.rpc_addr.to_string()],
        encrypt: Some(key.clone()),
        ..registry_client::ClientConfig::new("fl-agent")
    })
    .await
    .unwrap();
    let base = format!("http://{}", agent.http_addr);
    let (status, text) = call("PUT", &base, "/v1/agent/force-leave/sec", "", None).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = call("PUT", &base, "/v1/agent/force-leave/nobody", "", None).await;
    assert_eq!(
        (status, text.as_str()),
        (500, "agent: No node found with name 'nobody'")
    );
    agent.stop().await;
    // The server's embedded agent takes the same path (its caller is on loopback).
    let (status, text) = call("PUT", &h.url(), "/v1/agent/force-leave/sec", "", None).await;
    assert_eq!(status, 200, "{text}");
    h.stop().await;
}

/// Issue 21, items 2 and 3 on a server: its embedded agent's join works for a
/// caller on loopback (the peer address reaches the handlers over real TCP),
/// and joins add at most 64 retry-join targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_takes_at_most_64_joins_from_its_own_host() {
    let (h, _d) = dev_server(None).await;
    // Closed loopback ports: the greetings fail at once.
    for port in 1..=64u16 {
        let (status, text) = call(
            "PUT",
            &h.url(),
            &format!("/v1/agent/join/127.0.0.1:{port}"),
            "",
            None,
        )
        .await;
        assert_eq!(status, 200, "join {port}: {text}");
    }
    // Again: nothing new, still fine.
    let (status, text) = call("PUT", &h.url(), "/v1/agent/join/127.0.0.1:1", "", None).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = call("PUT", &h.url(), "/v1/agent/join/127.0.0.1:65", "", None).await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.starts_with("Failed to join 127.0.0.1:65: ") && text.contains("64"),
        "{text}"
    );
    h.stop().await;
}

/// A fake "server": answers 200 and a leader's address to anything, and counts
/// what it is sent.
async fn fake_server() -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(|| async { "\"127.0.0.1:8300\"" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// Issue 21, item 3 on a client agent: with a key, a join is refused for an
/// address whose answer does not prove the key (a fake server that answers 200
/// to anything, a server with another key), and accepted for a real server on
/// either of its ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_key_joins_only_servers_that_prove_it() {
    let key = SharedKey::from_base64(&generate_key()).unwrap();
    let (h, _d) = dev_server(Some(&key)).await;
    let other = SharedKey::from_base64(&generate_key()).unwrap();
    let (stranger, _d2) = dev_server(Some(&other)).await;
    let (fake, fake_task) = fake_server().await;
    let agent = registry_client::start(registry_client::ClientConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        encrypt: Some(key.clone()),
        ..registry_client::ClientConfig::new("joiner")
    })
    .await
    .unwrap();
    let base = format!("http://{}", agent.http_addr);
    let (status, text) = call("PUT", &base, &format!("/v1/agent/join/{fake}"), "", None).await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.starts_with(&format!("Failed to join {fake}: ")) && text.contains("not signed"),
        "{text}"
    );
    let (status, text) = call(
        "PUT",
        &base,
        &format!("/v1/agent/join/{}", stranger.rpc_addr),
        "",
        None,
    )
    .await;
    assert_eq!(status, 500, "a server with another key: {text}");
    let http_addr = h.url().trim_start_matches("http://").to_owned();
    let stranger_http = stranger.url().trim_start_matches("http://").to_owned();
    let (status, text) = call(
        "PUT",
        &base,
        &format!("/v1/agent/join/{stranger_http}"),
        "",
        None,
    )
    .await;
    assert_eq!(status, 500, "another key, HTTP port: {text}");
    assert!(
        agent.agent.servers().servers().is_empty(),
        "nothing joined yet"
    );
    for server in [h.rpc_addr.to_string(), http_addr] {
        let (status, text) =
            call("PUT", &base, &format!("/v1/agent/join/{server}"), "", None).await;
        assert_eq!((status, text.as_str()), (200, ""), "join {server}");
    }
    assert_eq!(agent.agent.servers().servers().len(), 2);
    agent.stop().await;
    fake_task.abort();
    stranger.stop().await;
    h.stop().await;
}

/// Issue 21, item 6: a KV `?raw` answer keeps Consul's CVE-2020-25864
/// protections (`X-Content-Type-Options: nosniff`, `Content-Security-Policy:
/// sandbox`) when it comes through an agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_kv_answer_keeps_its_browser_protections_through_an_agent() {
    let key = SharedKey::from_base64(&generate_key()).unwrap();
    let (h, _d) = dev_server(Some(&key)).await;
    let agent = registry_client::start(registry_client::ClientConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        retry_join: vec![h.rpc_addr.to_string()],
        encrypt: Some(key.clone()),
        ..registry_client::ClientConfig::new("raw-reader")
    })
    .await
    .unwrap();
    let base = format!("http://{}", agent.http_addr);
    let (status, text) = call("PUT", &base, "/v1/kv/page", "<script>x</script>", None).await;
    assert_eq!((status, text.as_str()), (200, "true"));
    for url in [&base, &h.url()] {
        let resp = registry_api::tls::plain_client()
            .get(format!("{url}/v1/kv/page?raw"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let headers = resp.headers();
        assert_eq!(
            headers
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{url}: {headers:?}"
        );
        assert_eq!(
            headers
                .get("content-security-policy")
                .map(|v| v.to_str().unwrap()),
            Some("sandbox"),
            "{url}: {headers:?}"
        );
        assert_eq!(resp.text().await.unwrap(), "<script>x</script>");
    }
    agent.stop().await;
    h.stop().await;
}
