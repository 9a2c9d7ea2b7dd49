//! The shared key (`--encrypt`): the agent signs everything it sends to the servers, passes
//! no caller's signature on, and the binary takes the key (and makes one with `keygen`).

mod common;

use common::*;
use registry_api::auth::{generate_key, SharedKey, SIGNATURE_HEADER};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn new_key() -> SharedKey {
    SharedKey::from_base64(&generate_key()).unwrap()
}

#[tokio::test]
async fn an_agent_with_the_key_signs_syncs_heartbeats_and_forwarded_requests() {
    let key = new_key();
    let server = FakeServer::start_signed(key.clone()).await;
    let mut config = test_config("n1", &[server.addr]);
    config.encrypt = Some(key);
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);

    assert_eq!(
        api.put("/v1/agent/service/register", r#"{"Name":"web","Port":80}"#)
            .await
            .0,
        200
    );
    wait_until(WAIT, "the signed sync and heartbeats arrive", || async {
        let c = server.catalog();
        c.node_services("n1").contains_key("web") && c.heartbeats.len() >= 2
    })
    .await;
    // Forwarded reads and writes, with a query the URL parser may touch, and a signature
    // header from the caller that must be replaced, not passed on.
    let r = api
        .http
        .get(format!("{}/v1/kv/a%2Fb/c?dc=dc1&recurse&x=a%20b", api.base))
        .header(
            SIGNATURE_HEADER,
            "v1 0 00000000000000000000000000000000 AAAA",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        api.put("/v1/kv/k?cas=0", "0123456789").await,
        (200, "10".into())
    );
    {
        let c = server.catalog();
        assert!(c.refused.is_empty(), "refused: {:?}", c.refused);
        assert_eq!(c.signed, c.requests, "every request was signed");
    }
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_agent_without_the_right_key_is_refused() {
    let server = FakeServer::start_signed(new_key()).await;
    for encrypt in [None, Some(new_key())] {
        let mut config = test_config("n1", &[server.addr]);
        config.encrypt = encrypt;
        let agent = start_agent(config).await;
        let api = Api::new(agent.http_addr);
        let (code, text) = api.get("/v1/kv/some/key").await;
        assert_eq!(code, 403, "{text}");
        wait_until(WAIT, "a heartbeat is refused", || async {
            server
                .catalog()
                .refused
                .iter()
                .any(|r| r.contains("/v1/internal/heartbeat"))
        })
        .await;
        agent.stop().await;
        server.catalog().refused.clear();
    }
    assert!(server.catalog().heartbeats.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_callers_signature_is_not_passed_on_by_an_agent_without_a_key() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let forged = new_key().sign_request("GET", "/v1/kv/some/key", b"");
    let r = api
        .http
        .get(format!("{}/v1/kv/some/key", api.base))
        .header(SIGNATURE_HEADER, forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    {
        let c = server.catalog();
        assert!(c.requests >= 1);
        assert_eq!(c.signed, 0, "no signature reached the server");
    }
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_embedded_agent_signs_with_the_key_of_its_config() {
    // As a server embeds the agent: its own pool, the key in the agent's configuration.
    let key = new_key();
    let server = FakeServer::start_signed(key.clone()).await;
    let pool = registry_client::ServerPool::new(vec![format!("http://{}", server.addr)]).unwrap();
    let mut config = registry_client::AgentConfig::new("s1");
    config.heartbeat_interval = Duration::from_millis(50);
    config.encrypt = Some(key);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_agent, tasks) = registry_client::Agent::start(config, pool, shutdown.clone())
        .await
        .unwrap();
    wait_until(WAIT, "signed heartbeats arrive", || async {
        server.catalog().heartbeats.len() >= 2
    })
    .await;
    assert!(server.catalog().refused.is_empty());
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    server.stop().await;
}

/// The binary, as built for these tests.
fn binary() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_registry-client"));
    cmd.env_remove("REGISTRY_ENCRYPT");
    // DNS on a free port: parallel tests must not fight over 8600.
    cmd.env("REGISTRY_DNS_ADDR", "127.0.0.1:0");
    cmd
}

#[test]
fn keygen_prints_a_usable_key() {
    let out = binary().arg("keygen").output().unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    SharedKey::from_base64(key.trim()).unwrap();
    let again = binary().arg("keygen").output().unwrap();
    assert_ne!(again.stdout, key.as_bytes(), "a fresh key every time");
}

#[test]
fn a_bad_key_is_a_clear_error_with_exit_code_2_that_does_not_show_it() {
    let bad = "c2VjcmV0LWJ1dC10b28tc2hvcnQ="; // base64, 21 bytes
    let from_flag = binary()
        .args(["--encrypt", bad, "--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let from_env = binary()
        .env("REGISTRY_ENCRYPT", "not base64 at all!")
        .args(["--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    for (out, secret) in [(from_flag, bad), (from_env, "not base64 at all!")] {
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stderr.contains("--encrypt"), "{stderr}");
        assert!(stderr.contains("key"), "{stderr}");
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{stderr}"
        );
    }
}
