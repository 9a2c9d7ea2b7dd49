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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_binary_serves_the_api() {
    let http = free_port();
    let rpc = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_registry-server"))
        .args(["--dev", "--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let client = RegistryClient::new(format!("http://127.0.0.1:{http}"));
    let started = Instant::now();
    loop {
        if let Ok(leader) = client.status_leader().await {
            if !leader.is_empty() {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "--dev never became leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
