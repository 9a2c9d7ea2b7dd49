//! The built `registry-server` binary: `--dev` starts a working registry, and
//! bad flags are refused with a clear message.

use registry_api::{QueryOptions, RegistryClient};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `registry-server --dev` on free ports and waits until it leads.
/// Ports are picked free but can be taken by another test before the child
/// binds them, so a child that exits early is started again on new ports.
async fn start_dev() -> (Kill, RegistryClient) {
    for _attempt in 0..3 {
        let http = free_port();
        let rpc = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_registry-server"))
            .args(["--dev", "--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut guard = Kill(child);
        let client = RegistryClient::new(format!("http://127.0.0.1:{http}"));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(leader) = client.status_leader().await {
                if !leader.is_empty() {
                    return (guard, client);
                }
            }
            if let Ok(Some(status)) = guard.0.try_wait() {
                let err = std::fs::read_to_string(log.path()).unwrap_or_default();
                eprintln!("registry-server --dev exited ({status}), retrying: {err}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let err = std::fs::read_to_string(log.path()).unwrap_or_default();
        eprintln!("registry-server --dev did not lead; its log:\n{err}");
    }
    panic!("--dev never became leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_binary_serves_the_api() {
    let (_guard, client) = start_dev().await;
    let mut reg = registry_api::RegisterRequest {
        node: "laptop".into(),
        address: "127.0.0.1".into(),
        ..Default::default()
    };
    reg.service = Some(registry_api::AgentService {
        service: "web".into(),
        port: 8080,
        ..Default::default()
    });
    assert!(client.catalog_register(&reg, None).await.unwrap());
    let (list, meta) = client
        .catalog_service("web", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].service_port, 8080);
    assert!(meta.known_leader);
}

#[test]
fn missing_data_dir_is_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_registry-server"))
        .args(["--bootstrap-expect", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir"), "{err}");
}

#[test]
fn keygen_prints_a_key_that_encrypt_accepts_and_a_bad_key_is_refused() {
    let bin = env!("CARGO_BIN_EXE_registry-server");
    let out = Command::new(bin).arg("keygen").output().unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(
        registry_api::auth::SharedKey::from_base64(key.trim()).is_ok(),
        "{key:?}"
    );
    let again = Command::new(bin).arg("keygen").output().unwrap();
    assert_ne!(
        again.stdout,
        key.as_bytes(),
        "two keygens gave the same key"
    );
    for bad in ["not-base64!", "c2hvcnQ="] {
        let out = Command::new(bin)
            .args(["--dev", "--encrypt", bad])
            .env("REGISTRY_HTTP_ADDR", "127.0.0.1:1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--encrypt"), "{err}");
        assert!(!err.contains(bad), "the key was echoed: {err}");
    }
}
