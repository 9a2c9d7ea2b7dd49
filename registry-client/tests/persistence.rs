//! The agent's state on disk: written so a crash leaves the old or the new state, and read
//! back leniently when a crash or a power loss left it torn anyway.

mod common;

use common::*;
use registry_api::{AgentService, AgentServiceInfo};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

type Services = BTreeMap<String, AgentServiceInfo>;

fn service(id: &str) -> AgentService {
    AgentService {
        id: id.into(),
        service: id.into(),
        port: 80,
        ..Default::default()
    }
}

/// The services persisted in `dir`, which must parse whole.
fn on_disk(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join("services.json")).unwrap();
    let services: Vec<AgentService> = serde_json::from_slice(&bytes).unwrap();
    services.into_iter().map(|s| s.id).collect()
}

#[tokio::test]
async fn an_agent_starts_on_torn_state_files_with_what_it_can_read() {
    let whole = serde_json::to_vec_pretty(&vec![service("kept"), service("torn")]).unwrap();
    let cut = whole[..whole.len() - 15].to_vec();
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        // A power loss after an un-fsynced rename.
        ("zero length", Vec::new(), &[]),
        // Cut in the middle of the second entry: the first is still good.
        ("truncated", cut, &["kept"]),
        ("garbage", b"\x00\x7fELF not json".to_vec(), &[]),
    ];
    let server = FakeServer::start().await;
    for (what, services_json, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("services.json"), &services_json).unwrap();
        std::fs::write(dir.path().join("checks.json"), b"[{\"CheckID\":\"x\",").unwrap();
        let mut config = test_config("n1", &[server.addr]);
        config.data_dir = Some(dir.path().to_path_buf());
        let agent = registry_client::start(config)
            .await
            .unwrap_or_else(|e| panic!("{what}: the agent must start: {e:#}"));
        let api = Api::new(agent.http_addr);
        let services: Services = api.get_json("/v1/agent/services").await;
        assert_eq!(
            services.keys().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "{what}"
        );
        let checks: BTreeMap<String, registry_api::HealthCheck> =
            api.get_json("/v1/agent/checks").await;
        assert!(checks.is_empty(), "{what}");
        // A later change is persisted whole.
        assert_eq!(
            api.put(
                "/v1/agent/service/register",
                r#"{"Name":"web","Port":8080}"#
            )
            .await
            .0,
            200,
            "{what}"
        );
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.push("web".into());
        want.sort();
        assert_eq!(on_disk(dir.path()), want, "{what}");
        wait_until(WAIT, "the registration reaches the catalog", || async {
            server.catalog().node_services("n1").contains_key("web")
        })
        .await;
        agent.stop().await;
        // A torn file that held anything is kept for a look by hand.
        assert_eq!(
            dir.path().join("services.json.corrupt").exists(),
            !services_json.is_empty(),
            "{what}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_write_a_crash_interrupted_is_ignored_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    // The state before the crash, and the temp file of the write it interrupted.
    std::fs::write(
        dir.path().join("services.json"),
        serde_json::to_vec(&vec![service("old")]).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("services.json.tmp"),
        b"[{\"ID\":\"new\",\"Serv",
    )
    .unwrap();
    std::fs::write(dir.path().join("checks.json.tmp"), b"").unwrap();
    let server = FakeServer::start().await;
    let mut config = test_config("n1", &[server.addr]);
    config.data_dir = Some(dir.path().to_path_buf());
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);
    let services: Services = api.get_json("/v1/agent/services").await;
    assert_eq!(services.keys().collect::<Vec<_>>(), ["old"]);
    assert!(!dir.path().join("services.json.tmp").exists());
    assert!(!dir.path().join("checks.json.tmp").exists());
    assert!(!dir.path().join("services.json.corrupt").exists());
    agent.stop().await;
    server.stop().await;
}

/// Group commit (registrations sent at once share the writes of the state files) loses
/// nothing: every registration is on disk when it is acknowledged (checked in the file
/// itself, then by an agent started on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_are_each_on_disk_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let mut config = test_config("n1", &[server.addr]);
    config.data_dir = Some(dir.path().to_path_buf());
    let agent = start_agent(config.clone()).await;
    let api = std::sync::Arc::new(Api::new(agent.http_addr));
    const N: usize = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (api, dir) = (api.clone(), dir.path().to_path_buf());
        tasks.spawn(async move {
            let id = format!("svc-{i:02}");
            let (status, body) = api
                .put(
                    "/v1/agent/service/register",
                    &format!(r#"{{"ID":"{id}","Name":"web","Port":80}}"#),
                )
                .await;
            assert_eq!(status, 200, "{id}: {body}");
            // Acknowledged: already in the file.
            assert!(
                on_disk(&dir).contains(&id),
                "{id} acknowledged but not on disk"
            );
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut want: Vec<String> = (0..N).map(|i| format!("svc-{i:02}")).collect();
    want.sort();
    let mut got = on_disk(dir.path());
    got.sort();
    assert_eq!(got, want);
    agent.stop().await;
    let agent = start_agent(config).await;
    let services: Services = Api::new(agent.http_addr)
        .get_json("/v1/agent/services")
        .await;
    assert_eq!(services.keys().cloned().collect::<Vec<_>>(), want);
    agent.stop().await;
    server.stop().await;
}
