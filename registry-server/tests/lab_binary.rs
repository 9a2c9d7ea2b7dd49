//! What the lab's containers run, with the built binary: `registry-server health` (the
//! container healthcheck), `registry-server init` (the one-shot secrets service) and
//! `--encrypt-file`, and servers that name each other (`localhost:PORT`, as the lab's
//! `dc1-server1:8300`) instead of giving IPs, with a peer name that does not resolve among
//! them: it is retried, never fatal.

use registry_testkit::process::{free_ports, Kill};
use registry_testkit::wait_until;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_registry-server");

/// `registry-server health` with the listen address in the environment, as a container
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

#[test]
fn health_says_unhealthy_with_a_reason_when_nothing_answers() {
    let port = free_ports(1)[0];
    let out = health(&format!("0.0.0.0:{port}"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // 0.0.0.0 is asked on loopback.
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("unhealthy"), "{}", stderr(&out));
}

#[test]
fn init_makes_the_secrets_once_and_encrypt_file_reads_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab");
    let init = || {
        Command::new(BIN)
            .args(["init", "--dir"])
            .arg(&lab)
            .args(["--datacenters", "dc1,dc2", "--extra-client", "dc1"])
            .output()
            .unwrap()
    };
    let out = init();
    assert!(out.status.success(), "{}", stderr(&out));
    let key = std::fs::read_to_string(lab.join("encrypt.key")).unwrap();
    // Only file names are printed, never the key.
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!printed.contains(key.trim()), "{printed}");
    assert!(printed.contains("dc2-server-consul-0.pem"), "{printed}");
    assert!(!lab.join("tls/consul-agent-ca-key.pem").exists());
    // Again (the init container runs on every `up`): nothing changes.
    let again = init();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(lab.join("encrypt.key")).unwrap(),
        key
    );

    // --encrypt and --encrypt-file exclude each other; an unreadable file is named.
    let out = Command::new(BIN)
        .args(["--dev", "--encrypt", key.trim(), "--encrypt-file"])
        .arg(lab.join("encrypt.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = Command::new(BIN)
        .args(["--dev", "--encrypt-file", "/nonexistent/encrypt.key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/encrypt.key"),
        "{}",
        stderr(&out)
    );
}

/// One server of a two-server cluster whose members are given by name.
fn start_server(dir: &Path, name: &str, http: u16, rpc: u16, join: &str, key: &Path) -> Kill {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(BIN)
        .args(["--node", name, "--bootstrap-expect", "2"])
        .arg("--data-dir")
        .arg(dir.join(name))
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
        .args(["--advertise", &format!("localhost:{rpc}")])
        .args(["--retry-join", join])
        .args(["--dns-addr", "127.0.0.1:0"])
        .arg("--encrypt-file")
        .arg(key)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Kill(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_named_by_host_name_form_a_cluster_and_report_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let key = dir.path().join("encrypt.key");
    let ports = free_ports(4);
    let (http, rpc) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    // Both by name, and a third member that does not resolve (a container not started yet):
    // the servers keep greeting it and form the cluster without it.
    let join = format!(
        "localhost:{},localhost:{},not-started-yet.invalid:8300",
        rpc[0], rpc[1]
    );
    let _a = start_server(dir.path(), "s1", http[0], rpc[0], &join, &key);
    // Before the cluster has a leader, health says no.
    let early = health(&format!("0.0.0.0:{}", http[0]));
    assert_eq!(early.status.code(), Some(1), "{}", stderr(&early));
    let _b = start_server(dir.path(), "s2", http[1], rpc[1], &join, &key);

    let log = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.log")));
    let leader = wait_until(
        Duration::from_secs(60),
        "a leader known to both servers",
        || {
            let (a, b) = (
                health(&format!("0.0.0.0:{}", http[0])),
                health(&format!("127.0.0.1:{}", http[1])),
            );
            async move { (a.status.success() && b.status.success()).then(|| stderr(&a)) }
        },
    )
    .await;
    // The leader is named as it advertises itself: by name, not by IP.
    assert!(leader.contains("leader localhost:"), "{leader}");

    let client = registry_api::RegistryClient::new(format!("http://127.0.0.1:{}", http[0]));
    let peers = client.status_peers().await.unwrap();
    let mut expected = vec![
        format!("localhost:{}", rpc[0]),
        format!("localhost:{}", rpc[1]),
    ];
    expected.sort();
    let mut peers = peers;
    peers.sort();
    assert_eq!(peers, expected, "s1: {:?}", log("s1"));
}
