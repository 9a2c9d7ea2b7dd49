//! Configuration files (`--config-file`, `--config-dir`): their services are registered at
//! start; a reload (`PUT /v1/agent/reload`, `SIGHUP`) adds, changes and removes them and
//! leaves services registered over the API alone; a broken file fails the reload (or the
//! start) with `<file>:<line>:<col>` and changes nothing; flags win over the files' settings.

mod common;

use common::*;
use registry_api::config_file::ConfigSources;
use registry_api::AgentServiceInfo;
use registry_testkit::process::Kill;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

type Services = BTreeMap<String, AgentServiceInfo>;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// The agent's services as `id -> port`.
async fn ports(api: &Api) -> BTreeMap<String, u16> {
    let services: Services = api.get_json("/v1/agent/services").await;
    services.into_iter().map(|(id, s)| (id, s.port)).collect()
}

fn expect(pairs: &[(&str, u16)]) -> BTreeMap<String, u16> {
    pairs.iter().map(|(id, p)| (id.to_string(), *p)).collect()
}

#[tokio::test]
async fn reload_adds_changes_and_removes_file_services_and_keeps_api_ones() {
    let server = FakeServer::start().await;
    let conf = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write(
        conf.path(),
        "10-web.json",
        r#"{"service": {"name": "web", "id": "web-1", "port": 8080, "tags": ["v1"],
                         "check": {"ttl": "30s", "name": "web alive"}}}"#,
    );
    write(
        conf.path(),
        "20-db.json",
        r#"{"services": [{"name": "db", "port": 5432}]}"#,
    );
    write(conf.path(), "README.txt", "not a configuration file");
    let mut config = test_config("cfg-node", &[server.addr]);
    config.data_dir = Some(data.path().to_path_buf());
    config.config_sources = ConfigSources {
        files: vec![],
        dirs: vec![conf.path().to_path_buf()],
    };
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);
    assert_eq!(ports(&api).await, expect(&[("db", 5432), ("web-1", 8080)]));
    let checks: BTreeMap<String, registry_api::HealthCheck> =
        api.get_json("/v1/agent/checks").await;
    assert_eq!(checks["service:web-1"].name, "web alive");
    wait_until(WAIT, "the file services reach the catalog", || async {
        let s = server.catalog().node_services("cfg-node");
        s.contains_key("web-1") && s.contains_key("db")
    })
    .await;

    // One registered over the API, which a reload must leave alone.
    let (status, text) = api
        .put(
            "/v1/agent/service/register",
            r#"{"Name":"api-svc","Port":9}"#,
        )
        .await;
    assert_eq!(status, 200, "{text}");

    // web changes port, db's file goes, cache comes.
    write(
        conf.path(),
        "10-web.json",
        r#"{"service": {"name": "web", "id": "web-1", "port": 9090, "tags": ["v2"]}}"#,
    );
    std::fs::remove_file(conf.path().join("20-db.json")).unwrap();
    write(
        conf.path(),
        "30-cache.json",
        r#"{"service": {"name": "cache", "port": 6379}}"#,
    );
    let (status, text) = api.put("/v1/agent/reload", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        ports(&api).await,
        expect(&[("api-svc", 9), ("cache", 6379), ("web-1", 9090)])
    );
    // The changed definition replaced the checks too (the new one has none).
    let checks: BTreeMap<String, registry_api::HealthCheck> =
        api.get_json("/v1/agent/checks").await;
    assert!(!checks.contains_key("service:web-1"), "{checks:?}");
    wait_until(WAIT, "the catalog follows the reload", || async {
        let s = server.catalog().node_services("cfg-node");
        !s.contains_key("db")
            && s.contains_key("cache")
            && s.get("web-1").map(|w| w.port) == Some(9090)
    })
    .await;

    // Only the API's service is persisted: the files are the record of theirs.
    let persisted: Vec<registry_api::AgentService> =
        serde_json::from_slice(&std::fs::read(data.path().join("services.json")).unwrap()).unwrap();
    let ids: Vec<&str> = persisted.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["api-svc"]);
    agent.stop().await;
}

#[tokio::test]
async fn a_broken_file_fails_the_reload_with_file_and_line_and_changes_nothing() {
    let server = FakeServer::start().await;
    let conf = tempfile::tempdir().unwrap();
    write(
        conf.path(),
        "a.json",
        r#"{"service": {"name": "web", "port": 80}}"#,
    );
    let mut config = test_config("broken-node", &[server.addr]);
    config.config_sources = ConfigSources {
        files: vec![],
        dirs: vec![conf.path().to_path_buf()],
    };
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);
    let before = ports(&api).await;
    assert_eq!(before, expect(&[("web", 80)]));

    // A syntax error on line 3 of a new file, beside a valid change.
    write(
        conf.path(),
        "a.json",
        r#"{"service": {"name": "web", "port": 81}}"#,
    );
    write(
        conf.path(),
        "b.json",
        "{\n  \"service\": {\"name\": \"db\",\n    \"port\": 5432,,\n  }\n}",
    );
    let (status, text) = api.put("/v1/agent/reload", "").await;
    assert_eq!(status, 500, "{text}");
    let b = conf.path().join("b.json");
    assert!(
        text.contains(&format!("{}:3:", b.display())),
        "no file:line in {text:?}"
    );
    assert_eq!(
        ports(&api).await,
        before,
        "a failed reload changed services"
    );

    // Valid JSON, but a definition the agent refuses (an HTTP check without an interval).
    write(
        conf.path(),
        "b.json",
        r#"{"service": {"name": "db", "check": {"http": "http://127.0.0.1:1/"}}}"#,
    );
    let (status, text) = api.put("/v1/agent/reload", "").await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("b.json") && text.contains("service"),
        "{text}"
    );
    assert_eq!(
        ports(&api).await,
        before,
        "a failed reload changed services"
    );

    // Fixed: both changes apply.
    write(
        conf.path(),
        "b.json",
        r#"{"service": {"name": "db", "port": 5432}}"#,
    );
    let (status, text) = api.put("/v1/agent/reload", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ports(&api).await, expect(&[("db", 5432), ("web", 81)]));
    agent.stop().await;
}

#[tokio::test]
async fn a_broken_file_stops_the_start() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("agent.json");
    write(
        conf.path(),
        "agent.json",
        "{\n\"services\": [\n  {\"name\": 5}\n]}",
    );
    let mut config = test_config("n", &[dead_addr().await]);
    config.config_sources = ConfigSources {
        files: vec![file.clone()],
        dirs: vec![],
    };
    let err = match registry_client::start(config).await {
        Ok(_) => panic!("an agent started on a broken configuration file"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with(&format!("{}:3:", file.display())), "{err}");
}

#[test]
fn flags_win_over_file_settings_and_files_over_defaults() {
    let conf = tempfile::tempdir().unwrap();
    write(
        conf.path(),
        "10.json",
        r#"{"node_name": "from-file", "datacenter": "dc-file", "retry_join": ["10.0.0.1:8300"],
            "ports": {"http": 18500}, "client_addr": "127.0.0.2"}"#,
    );
    write(conf.path(), "20.json", r#"{"datacenter": "dc-later"}"#);
    let mut config = registry_client::ClientConfig::new("from-flag");
    config.datacenter = "dc-flag".into();
    config.config_sources = ConfigSources {
        files: vec![],
        dirs: vec![conf.path().to_path_buf()],
    };
    // `--datacenter` was given; `--node` and the rest were not.
    let given = |id: &str| id == "datacenter";
    config.apply_file_settings(&given).unwrap();
    assert_eq!(config.node, "from-file");
    assert_eq!(config.datacenter, "dc-flag");
    assert_eq!(config.retry_join, ["10.0.0.1:8300"]);
    assert_eq!(config.http_addr.to_string(), "127.0.0.2:18500");

    // Not given: the later file wins over the earlier.
    let mut config = registry_client::ClientConfig::new("x");
    config.config_sources = ConfigSources {
        files: vec![],
        dirs: vec![conf.path().to_path_buf()],
    };
    config.apply_file_settings(&|_| false).unwrap();
    assert_eq!(config.datacenter, "dc-later");
}

/// The built binary takes settings from its `--config-dir` where no flag was given, and
/// re-reads its services on `SIGHUP`.
#[tokio::test]
async fn sighup_rereads_the_config_dir() {
    let server = FakeServer::start().await;
    let conf = tempfile::tempdir().unwrap();
    write(
        conf.path(),
        "web.json",
        r#"{"service": {"name": "web", "port": 80}}"#,
    );
    write(
        conf.path(),
        "agent.json",
        r#"{"node_name": "file-node", "datacenter": "dc-file"}"#,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_registry-client"))
        .args([
            "--node",
            "hup-node",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--retry-join", &server.addr.to_string()])
        .args(["--dns-addr", "127.0.0.1:0"])
        .arg("--config-dir")
        .arg(conf.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Kill(child);
    // Until the binary listens, a read finds nothing.
    let url = format!("http://127.0.0.1:{port}/v1/agent/services");
    let http = registry_api::tls::plain_client();
    let services = || async {
        let Ok(resp) = http.get(&url).send().await else {
            return Vec::new();
        };
        let s: Services = resp.json().await.unwrap_or_default();
        s.into_keys().collect::<Vec<_>>()
    };
    wait_until(
        WAIT,
        "the binary registers web from its config dir",
        || async { services().await == ["web"] },
    )
    .await;
    // `--node` was given, the datacenter was not.
    let me: registry_api::AgentSelf = http
        .get(format!("http://127.0.0.1:{port}/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me.config.node_name.as_str(), me.config.datacenter.as_str()),
        ("hup-node", "dc-file")
    );

    write(
        conf.path(),
        "db.json",
        r#"{"service": {"name": "db", "port": 5432}}"#,
    );
    std::fs::remove_file(conf.path().join("web.json")).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until(WAIT, "SIGHUP re-reads the config dir", || async {
        services().await == ["db"]
    })
    .await;
}

/// The lab's demo definition (docker/agent-config, mounted into the lab's agents) loads and
/// registers `demo` with its HTTP check.
#[tokio::test]
async fn the_labs_demo_definition_registers_demo() {
    let server = FakeServer::start().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/agent-config");
    let mut config = test_config("lab-node", &[server.addr]);
    config.config_sources = ConfigSources {
        files: vec![],
        dirs: vec![dir],
    };
    let agent = start_agent(config).await;
    let api = Api::new(agent.http_addr);
    assert_eq!(ports(&api).await, expect(&[("demo", 8500)]));
    let checks: BTreeMap<String, registry_api::HealthCheck> =
        api.get_json("/v1/agent/checks").await;
    assert_eq!(checks["service:demo"].name, "agent reaches a leader");
    agent.stop().await;
}
