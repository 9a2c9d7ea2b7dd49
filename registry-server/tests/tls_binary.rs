//! TLS as an operator meets it, with the built binary and curl: `registry-server tls ca
//! create` and `tls cert create` make Consul's files, a `--dev` server serves HTTPS with
//! `--verify-incoming`, `curl --cacert` with a client certificate gets answers and without
//! one is refused, and settings that cannot work stop the server at start with a reason.

use registry_testkit::process::{free_port, Kill};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_registry-server");

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `tls ca create`, then a server and a client certificate for dc1, in `dir`.
fn make_pki(dir: &Path) {
    for args in [
        &["tls", "ca", "create"][..],
        &["tls", "cert", "create", "--server", "--dc", "dc1"][..],
        &["tls", "cert", "create", "--client", "--dc", "dc1"][..],
    ] {
        let out = run_in(dir, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("==> Saved"), "{}", text(&out));
    }
    for f in [
        "consul-agent-ca.pem",
        "consul-agent-ca-key.pem",
        "dc1-server-consul-0.pem",
        "dc1-server-consul-0-key.pem",
        "dc1-client-consul-0.pem",
        "dc1-client-consul-0-key.pem",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // Never over an existing file.
    let out = run_in(dir, &["tls", "ca", "create"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl must be installed (Debian package curl)")
}

#[test]
fn a_dev_server_serves_https_to_curl_with_the_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_pki(d);
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let (http, https, rpc) = (free_port(), free_port(), free_port());
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(BIN)
            .args(["--dev", "--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--https-addr", &format!("127.0.0.1:{https}")])
            .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
            .args(["--ca-file", &p("consul-agent-ca.pem")])
            .args(["--cert-file", &p("dc1-server-consul-0.pem")])
            .args(["--key-file", &p("dc1-server-consul-0-key.pem")])
            .args([
                "--verify-incoming",
                "--verify-outgoing",
                "--verify-server-hostname",
            ])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut guard = Kill(child);
        let url = format!("https://127.0.0.1:{https}/v1/status/leader");
        let with_cert = [
            "--cacert",
            &p("consul-agent-ca.pem"),
            "--cert",
            &p("dc1-client-consul-0.pem"),
            "--key",
            &p("dc1-client-consul-0-key.pem"),
            &url,
        ];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let out = curl(&with_cert);
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && body.contains(&format!("127.0.0.1:{rpc}")) {
                // The CA alone is not enough under --verify-incoming.
                let out = curl(&["--cacert", &p("consul-agent-ca.pem"), &url]);
                assert!(!out.status.success(), "served without a client certificate");
                // Nor is a client that does not trust the CA (curl's own roots).
                let out = curl(&[
                    "--cert",
                    &p("dc1-client-consul-0.pem"),
                    "--key",
                    &p("dc1-client-consul-0-key.pem"),
                    &url,
                ]);
                assert!(!out.status.success(), "curl trusted an unknown CA");
                // The certificate is for server.dc1.consul: curl checks the name too.
                let out = curl(&[
                    "--cacert",
                    &p("consul-agent-ca.pem"),
                    "--cert",
                    &p("dc1-client-consul-0.pem"),
                    "--key",
                    &p("dc1-client-consul-0-key.pem"),
                    "--resolve",
                    &format!("server.dc1.consul:{https}:127.0.0.1"),
                    &format!("https://server.dc1.consul:{https}/v1/status/leader"),
                ]);
                assert!(out.status.success(), "{}", text(&out));
                return;
            }
            if let Ok(Some(_)) = guard.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        last_log = std::fs::read_to_string(log.path()).unwrap_or_default();
    }
    panic!("the HTTPS server never answered; its log:\n{last_log}");
}

fn refused_at_start(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args([
            "--dev",
            "--http-addr",
            "127.0.0.1:0",
            "--rpc-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    text(&out)
}

#[test]
fn settings_that_cannot_work_stop_the_server_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_pki(d);
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let err = refused_at_start(&[
        "--cert-file",
        &p("dc1-server-consul-0.pem"),
        "--key-file",
        &p("dc1-server-consul-0-key.pem"),
        "--verify-incoming",
    ]);
    assert!(err.contains("--ca-file"), "{err}");
    let err = refused_at_start(&[
        "--ca-file",
        &p("consul-agent-ca.pem"),
        "--cert-file",
        &p("dc1-server-consul-0.pem"),
        "--key-file",
        &p("dc1-client-consul-0-key.pem"),
    ]);
    assert!(err.contains("is not the key of"), "{err}");
    let err = refused_at_start(&["--ca-file", &p("missing.pem")]);
    assert!(err.contains("missing.pem"), "{err}");
    let err = refused_at_start(&["--https-addr", "127.0.0.1:0"]);
    assert!(err.contains("--cert-file"), "{err}");
    // An expired certificate, signed by the same CA.
    let ca_cert = std::fs::read_to_string(d.join("consul-agent-ca.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(d.join("consul-agent-ca-key.pem")).unwrap(),
    )
    .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["server.dc1.consul".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(d.join("old.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("old-key.pem"), key.serialize_pem()).unwrap();
    let err = refused_at_start(&[
        "--ca-file",
        &p("consul-agent-ca.pem"),
        "--cert-file",
        &p("old.pem"),
        "--key-file",
        &p("old-key.pem"),
    ]);
    assert!(err.contains("expired on"), "{err}");
}
