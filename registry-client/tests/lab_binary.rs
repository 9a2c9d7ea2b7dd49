//! What the lab's agent containers run, with the built binary: `registry-client health` (the
//! container healthcheck) and an `--advertise` given as a name (the container's hostname),
//! which the agent resolves to its address at start.

use registry_testkit::process::{free_ports, Kill};
use registry_testkit::wait_until;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_registry-client");

/// `registry-client health` with the listen address in the environment, as a container
/// healthcheck runs it.
fn health(http_addr: &str) -> Output {
    Command::new(BIN)
        .arg("health")
        .env("REGISTRY_HTTP_ADDR", http_addr)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_agent_and_a_named_advertise_becomes_its_address() {
    let ports = free_ports(2);
    let (http, no_server) = (ports[0], ports[1]);
    let addr = format!("0.0.0.0:{http}");
    let before = health(&addr);
    assert_eq!(before.status.code(), Some(1), "{}", stderr(&before));
    assert!(stderr(&before).contains("unhealthy"), "{}", stderr(&before));

    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    // No server answers: the agent still serves its own API, which is what health asks.
    let child = Command::new(BIN)
        .args(["--node", "app1", "--advertise", "localhost"])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--retry-join", &format!("127.0.0.1:{no_server}")])
        .args(["--dns-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = Kill(child);
    let seen = wait_until(Duration::from_secs(20), "the agent healthy", || {
        let out = health(&addr);
        async move { out.status.success().then(|| stderr(&out)) }
    })
    .await;
    assert!(seen.contains("healthy"), "{seen}");

    // The name was resolved once, at start: the agent registers an address, not a name.
    let body: serde_json::Value = registry_api::tls::plain_client()
        .get(format!("http://127.0.0.1:{http}/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let advertised = body["Member"]["Addr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let logged = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(
        advertised
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        "Member.Addr {advertised:?} in {body}; log: {logged}"
    );

    // Stopped: unhealthy again.
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    let after = health(&addr);
    assert_eq!(after.status.code(), Some(1), "{}", stderr(&after));
}
