//! Who can talk to a server (issue 12 item 3): with a shared key (`--encrypt`)
//! only holders of the key join the cluster, reach HTTP on the RPC port or
//! send agent heartbeats; the RPC port's HTTP side never serves operator or
//! agent endpoints, key or not. Real servers on real TCP on 127.0.0.1.

use registry_api::auth::{generate_key, Purpose, SharedKey, SIGNATURE_HEADER};
use registry_server::{ServerConfig, ServerHandle};
use registry_testkit::cluster::{fast_tuning, wait_until};
use std::time::{Duration, Instant};

/// Free loopback ports, reserved by binding and released at once.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

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
    match reqwest::get(format!("{}/v1/status/peers", h.url())).await {
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
        let conf: serde_json::Value =
            reqwest::get(format!("{}/v1/operator/raft/configuration", first.url()))
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
            let r = reqwest::get(format!("{url}/v1/status/leader")).await.ok()?;
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
    let client = reqwest::Client::new();
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
        ("GET", "/v1/acl/tokens?dc=dc2", ""),
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
