//! What the lab's gateway containers run, with the built binary: `wan-gateway health` (the
//! container healthcheck), over plain HTTP and over TLS with client certificates required (it
//! shows the gateway's own certificate, as the lab's gateways serve TLS), and `--encrypt-file`.

use registry_testkit::process::{free_port, Kill};
use registry_testkit::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wan-gateway");

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A directory removed when the test ends (no tempfile in this crate's dev-dependencies).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with `env` (the container's environment) and `args`.
fn gateway(env: &[(&str, String)], args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("REGISTRY_ENCRYPT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn healthy_within(env: &[(&str, String)], cwd: &Path) -> String {
    wait_until(Duration::from_secs(20), "the gateway healthy", || {
        let out = gateway(env, &["health"], cwd).output().unwrap();
        async move { out.status.success().then(|| stderr(&out)) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_over_plain_http_and_over_tls_with_its_own_certificate() {
    let dir = TempDir::new("gateway-health");
    // A key in a file, as the lab's init container writes it.
    let key = gateway(&[], &["keygen"], &dir.0).output().unwrap();
    assert!(key.status.success());
    std::fs::write(dir.0.join("encrypt.key"), &key.stdout).unwrap();

    // Plain HTTP.
    let env = vec![
        ("REGISTRY_LISTEN", format!("0.0.0.0:{}", free_port())),
        (
            "REGISTRY_ENCRYPT_FILE",
            dir.0.join("encrypt.key").display().to_string(),
        ),
    ];
    let out = gateway(&env, &["health"], &dir.0).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unhealthy"), "{}", stderr(&out));
    let log = std::fs::File::create(dir.0.join("plain.log")).unwrap();
    let child = gateway(&env, &[], &dir.0)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _plain = Kill(child);
    let seen = healthy_within(&env, &dir.0).await;
    assert!(seen.contains("http://127.0.0.1:"), "{seen}");

    // TLS, client certificates required: health shows the gateway's own.
    for args in [
        vec!["tls", "ca", "create"],
        vec!["tls", "cert", "create", "--server", "--dc", "dc1"],
    ] {
        let out = gateway(&[], &args, &dir.0).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let path = |f: &str| dir.0.join(f).display().to_string();
    let env = vec![
        ("REGISTRY_LISTEN", format!("0.0.0.0:{}", free_port())),
        ("REGISTRY_ENCRYPT_FILE", path("encrypt.key")),
        ("REGISTRY_CA_FILE", path("consul-agent-ca.pem")),
        ("REGISTRY_CERT_FILE", path("dc1-server-consul-0.pem")),
        ("REGISTRY_KEY_FILE", path("dc1-server-consul-0-key.pem")),
        ("REGISTRY_VERIFY_INCOMING", "true".into()),
        ("REGISTRY_VERIFY_OUTGOING", "true".into()),
        ("REGISTRY_VERIFY_SERVER_HOSTNAME", "true".into()),
    ];
    let log = std::fs::File::create(dir.0.join("tls.log")).unwrap();
    let child = gateway(&env, &[], &dir.0)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _tls = Kill(child);
    let seen = healthy_within(&env, &dir.0).await;
    assert!(seen.contains("https://127.0.0.1:"), "{seen}");
    // Without the certificate (plain HTTP to a TLS port) it is not healthy.
    let plain: Vec<(&str, String)> = env[..2].to_vec();
    let out = gateway(&plain, &["health"], &dir.0).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
