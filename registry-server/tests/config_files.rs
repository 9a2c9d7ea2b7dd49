//! The built `registry-server` with `--config-dir`: the files' settings fill the flags not
//! given, their services go to the server's own agent, and `PUT /v1/agent/reload` re-reads
//! them (a broken file: a 500 naming the file and line, nothing changed); a broken file at
//! start stops the server with exit code 2.

use registry_api::{AgentSelf, AgentServiceInfo, RegistryClient};
use registry_testkit::process::{free_port, Kill};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn server(dir: &std::path::Path, http: u16, rpc: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_registry-server"));
    cmd.args(["--dev", "--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
        .arg("--config-dir")
        .arg(dir)
        .env_remove("REGISTRY_DATACENTER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

async fn services(http: &reqwest::Client, base: &str) -> Vec<String> {
    let Ok(resp) = http.get(format!("{base}/v1/agent/services")).send().await else {
        return Vec::new();
    };
    let s: BTreeMap<String, AgentServiceInfo> = resp.json().await.unwrap_or_default();
    s.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_reads_its_config_dir_and_reloads_it() {
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("10-server.json"),
        r#"{"datacenter": "dc7", "log_level": "INFO",
            "service": {"name": "web", "port": 80, "check": {"ttl": "30s"}}}"#,
    )
    .unwrap();
    let (http_port, rpc_port) = (free_port(), free_port());
    let _guard = Kill(server(conf.path(), http_port, rpc_port).spawn().unwrap());
    let base = format!("http://127.0.0.1:{http_port}");
    let http = registry_api::tls::plain_client();
    registry_testkit::wait_until(WAIT, "the server's agent has web from the file", || async {
        services(&http, &base).await == ["web"]
    })
    .await;
    let me: AgentSelf = http
        .get(format!("{base}/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me.config.datacenter, "dc7", "the file's datacenter applies");

    // A broken file: the reload fails with file:line and nothing changes.
    let broken = conf.path().join("20-db.json");
    std::fs::write(&broken, "{\n\"service\": {\"name\": \"db\" \"port\": 1}\n}").unwrap();
    let client = RegistryClient::new(base.clone());
    let err = client.agent_reload().await.unwrap_err();
    assert_eq!(err.status(), Some(500), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("{}:2:", broken.display())),
        "{err}"
    );
    assert_eq!(services(&http, &base).await, ["web"]);

    std::fs::write(&broken, r#"{"service": {"name": "db", "port": 5432}}"#).unwrap();
    client.agent_reload().await.unwrap();
    assert_eq!(services(&http, &base).await, ["db", "web"]);
}

#[test]
fn a_broken_config_file_stops_the_server_with_exit_code_2() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("bad.json");
    std::fs::write(&file, "{\n  \"datacenter\": 7\n}").unwrap();
    let out = server(conf.path(), free_port(), free_port())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2:3: datacenter: must be a string",
            file.display()
        )),
        "{stderr}"
    );
}
