//! The `wan-gateway` binary's key handling: `keygen`, a bad `--encrypt` refused with exit code 2
//! and never echoed, and `--help` that documents the key without showing it.

use std::process::{Command, Output};

fn gateway(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wan-gateway"));
    cmd.args(args).env_remove("REGISTRY_ENCRYPT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn keygen_prints_a_usable_key() {
    let out = gateway(&["keygen"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(registry_api::auth::SharedKey::from_base64(key.trim()).is_ok());
    let again = gateway(&["keygen"], &[]);
    assert_ne!(String::from_utf8(again.stdout).unwrap(), key);
}

#[test]
fn a_bad_key_is_refused_with_exit_code_2_and_never_echoed() {
    // Base64 of 13 bytes: valid base64, wrong length.
    let bad = "c2VjcmV0LXNlY3JldA==";
    let out = gateway(&["--encrypt", bad, "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--encrypt"), "{}", text(&out));
    assert!(!text(&out).contains(bad), "{}", text(&out));

    let bad = "this-is-not/base64-at-all!";
    let out = gateway(&["--listen", "127.0.0.1:0"], &[("REGISTRY_ENCRYPT", bad)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains(bad), "{}", text(&out));
}

#[test]
fn addresses_that_are_not_host_and_port_are_refused_at_start() {
    for args in [
        ["--retry-join-wan", "evil/x?y#:8302"],
        ["--retry-join-wan", "http://gw:8302"],
        ["--advertise", "gw:8302/x"],
        ["--datacenter", "dc 1"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--listen", "127.0.0.1:0"]);
        let out = gateway(&all, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

#[test]
fn help_documents_the_key_and_hides_its_value() {
    let secret = registry_api::auth::generate_key();
    let out = gateway(&["--help"], &[("REGISTRY_ENCRYPT", &secret)]);
    assert!(out.status.success());
    let help = text(&out);
    for word in [
        "--encrypt",
        "REGISTRY_ENCRYPT",
        "keygen",
        "--reconnect-timeout",
        "403",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
    assert!(!help.contains(&secret), "{help}");
}
