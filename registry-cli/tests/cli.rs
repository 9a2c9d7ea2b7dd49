//! The built `registry` binary against real in-process clusters: every command, its output
//! (tables and `-format json`), its messages and its exit codes (0 ok, 1 an error, 2 usage).

use registry_testkit::cluster::{wait_until, TestCluster};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(15);

/// What a run of the binary gave.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The binary, with no address or token from the test's own environment.
fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_registry"));
    cmd.args(args)
        .env_remove("REGISTRY_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("REGISTRY_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn output(mut cmd: tokio::process::Command) -> Out {
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the command did not finish")
        .expect("the binary runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `registry -http-addr <addr> args...` (Consul's one-dash spelling).
async fn registry(addr: &str, args: &[&str]) -> Out {
    let mut all = vec!["-http-addr", addr];
    all.extend_from_slice(args);
    output(command(&all)).await
}

/// Like [`registry`], asserting exit 0.
async fn ok(addr: &str, args: &[&str]) -> String {
    let out = registry(addr, args).await;
    assert_eq!(out.code, 0, "registry {args:?}: {out:?}");
    out.stdout
}

/// Like [`registry`], asserting exit 1 and an error on stderr.
async fn fails(addr: &str, args: &[&str]) -> String {
    let out = registry(addr, args).await;
    assert_eq!(out.code, 1, "registry {args:?} should fail: {out:?}");
    assert!(out.stderr.starts_with("Error"), "{out:?}");
    out.stderr
}

fn addr(c: &TestCluster, i: usize) -> String {
    c.node(i).http_addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_catalog_as_tables_and_json_with_exit_codes() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let a = addr(&c, 0);
    let node = c.names[0].clone();
    wait_until(WAIT, "the server is a member", || async {
        registry(&a, &["members"]).await.stdout.contains(&node)
    })
    .await;

    let table = ok(&a, &["members"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[2], row[3]),
        (node.as_str(), "alive", "server"),
        "{table}"
    );
    assert_eq!(*row.last().unwrap(), "dc1");
    let json: Value = serde_json::from_str(&ok(&a, &["members", "-format", "json"]).await).unwrap();
    assert_eq!(json[0]["Name"], node.as_str());
    assert_eq!(json[0]["Status"], 1);
    // Two dashes work as well, and so does the environment (ours, then Consul's).
    ok(&a, &["--format=json", "members"]).await;
    for var in ["REGISTRY_HTTP_ADDR", "CONSUL_HTTP_ADDR"] {
        let mut cmd = command(&["members"]);
        cmd.env(var, &a);
        let out = output(cmd).await;
        assert_eq!(out.code, 0, "{var}: {out:?}");
        assert!(out.stdout.contains(&node), "{var}: {out:?}");
    }

    assert_eq!(ok(&a, &["catalog", "datacenters"]).await, "dc1\n");
    let nodes = ok(&a, &["catalog", "nodes"]).await;
    assert!(
        nodes.starts_with("Node") && nodes.contains(&node),
        "{nodes}"
    );
    let nodes: Value =
        serde_json::from_str(&ok(&a, &["catalog", "nodes", "-format", "json"]).await).unwrap();
    assert!(nodes
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["Node"] == node.as_str()));
    let services = ok(&a, &["catalog", "services"]).await;
    assert!(services.lines().any(|l| l == "consul"), "{services}");
    let services: Value =
        serde_json::from_str(&ok(&a, &["catalog", "services", "-format", "json"]).await).unwrap();
    assert!(services.get("consul").is_some(), "{services}");
    let err = fails(&a, &["catalog", "nodes", "-datacenter", "nowhere"]).await;
    assert!(err.starts_with("Error listing nodes:"), "{err}");

    // Usage errors exit 2; API and connection errors exit 1.
    assert_eq!(registry(&a, &["kv"]).await.code, 2);
    assert_eq!(registry(&a, &["members", "-no-such-flag"]).await.code, 2);
    assert_eq!(registry(&a, &["no-such-command"]).await.code, 2);
    assert_eq!(registry("unix:///x", &["members"]).await.code, 2);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let err = fails(&dead_addr, &["members"]).await;
    assert!(err.starts_with("Error retrieving members:"), "{err}");
    assert_eq!(
        ok(&a, &["reload"]).await,
        "Configuration reload triggered\n"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_register_and_deregister_definition_files() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let a = addr(&c, 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(
        &file,
        r#"{"service": {"name": "web", "id": "web-1", "port": 8080, "tags": ["v1"],
                         "check": {"ttl": "30s"}},
            "services": [{"name": "db", "port": 5432}]}"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = ok(&a, &["services", "register", f]).await;
    assert_eq!(out, "Registered service: web\nRegistered service: db\n");
    let agent = c.node(0).agent().unwrap().clone();
    let ids: Vec<String> = agent.services().into_keys().collect();
    assert_eq!(ids, ["db", "web-1"]);
    assert!(agent.checks().contains_key("service:web-1"));
    wait_until(WAIT, "web in the catalog", || async {
        ok(&a, &["catalog", "services", "-tags"])
            .await
            .lines()
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols == ["web", "v1"]
            })
    })
    .await;
    wait_until(WAIT, "the catalog's nodes filter by service", || async {
        ok(&a, &["catalog", "nodes", "-service", "web"])
            .await
            .lines()
            .count()
            == 2
    })
    .await;

    let out = ok(&a, &["services", "deregister", f]).await;
    assert_eq!(
        out,
        "Deregistered service: web-1\nDeregistered service: db\n"
    );
    assert!(agent.services().is_empty());
    ok(&a, &["services", "register", f]).await;
    assert_eq!(
        ok(&a, &["services", "deregister", "-id", "db"]).await,
        "Deregistered service: db\n"
    );
    let err = fails(&a, &["services", "deregister", "-id", "db"]).await;
    assert!(
        err.starts_with("Error deregistering service \"db\":"),
        "{err}"
    );

    // A broken file: the file and the line, nothing registered.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\n \"service\": {\"name\": \"x\",,}\n}").unwrap();
    let err = fails(&a, &["services", "register", broken.to_str().unwrap()]).await;
    assert!(
        err.starts_with(&format!("Error parsing {}:2:", broken.display())),
        "{err}"
    );
    // A definition the agent refuses: its reason.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"service": {"name": "x", "check": {"http": "http://h/"}}}"#,
    )
    .unwrap();
    let err = fails(&a, &["services", "register", bad.to_str().unwrap()]).await;
    assert!(
        err.starts_with("Error registering service \"x\": 400"),
        "{err}"
    );
    assert_eq!(registry(&a, &["services", "register"]).await.code, 2);
    // HCL, as Consul's files may be.
    let hcl = dir.path().join("api.hcl");
    std::fs::write(&hcl, "service {\n  name = \"api\"\n  port = 9000\n}\n").unwrap();
    let out = ok(&a, &["services", "register", hcl.to_str().unwrap()]).await;
    assert_eq!(out, "Registered service: api\n");
    assert_eq!(agent.services()["api"].port, 9000);
    assert!(!agent.services().contains_key("x"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_get_put_delete_export_and_import() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let a = addr(&c, 0);
    assert_eq!(
        ok(&a, &["kv", "put", "app/name", "web"]).await,
        "Success! Data written to: app/name\n"
    );
    assert_eq!(ok(&a, &["kv", "get", "app/name"]).await, "web\n");
    let err = fails(&a, &["kv", "get", "app/missing"]).await;
    assert_eq!(err, "Error! No key exists at: app/missing\n");

    // From stdin and from a file, with flags.
    let mut put = command(&[
        "-http-addr",
        &a,
        "kv",
        "put",
        "-flags",
        "42",
        "app/stdin",
        "-",
    ]);
    put.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = put.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"from stdin").await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.txt");
    std::fs::write(&file, "from a file").unwrap();
    ok(
        &a,
        &["kv", "put", "app/file", &format!("@{}", file.display())],
    )
    .await;
    let pair: Value =
        serde_json::from_str(&ok(&a, &["kv", "get", "-format", "json", "app/stdin"]).await)
            .unwrap();
    assert_eq!(pair["Flags"], 42);
    assert_eq!(pair["Value"], "ZnJvbSBzdGRpbg==");
    let detailed = ok(&a, &["kv", "get", "-detailed", "app/stdin"]).await;
    assert!(
        detailed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Flags", "42"]),
        "{detailed}"
    );

    // Check-and-set: index 0 means "only if absent".
    let err = fails(
        &a,
        &[
            "kv",
            "put",
            "-cas",
            "-modify-index",
            "0",
            "app/name",
            "other",
        ],
    )
    .await;
    assert_eq!(err, "Error! Did not write to app/name: CAS failed\n");
    assert_eq!(ok(&a, &["kv", "get", "app/name"]).await, "web\n");

    let recurse = ok(&a, &["kv", "get", "-recurse", "app/"]).await;
    assert_eq!(
        recurse,
        "app/file:from a file\napp/name:web\napp/stdin:from stdin\n"
    );
    let keys = ok(&a, &["kv", "get", "-keys", "app/"]).await;
    assert_eq!(keys, "app/file\napp/name\napp/stdin\n");

    // Export, wipe, import: the same keys, values and flags.
    let export = ok(&a, &["kv", "export", "app/"]).await;
    let entries: Value = serde_json::from_str(&export).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 3);
    assert_eq!(
        entries[1],
        serde_json::json!({"key": "app/name", "flags": 0, "value": "d2Vi"})
    );
    assert_eq!(
        ok(&a, &["kv", "delete", "app/name"]).await,
        "Success! Deleted key: app/name\n"
    );
    fails(&a, &["kv", "get", "app/name"]).await;
    assert_eq!(
        ok(&a, &["kv", "delete", "-recurse", "app/"]).await,
        "Success! Deleted keys with prefix: app/\n"
    );
    assert_eq!(ok(&a, &["kv", "get", "-recurse", "app/"]).await, "");
    let export_file = dir.path().join("export.json");
    std::fs::write(&export_file, &export).unwrap();
    let out = ok(
        &a,
        &["kv", "import", &format!("@{}", export_file.display())],
    )
    .await;
    assert_eq!(
        out,
        "Imported: app/file\nImported: app/name\nImported: app/stdin\n"
    );
    assert_eq!(ok(&a, &["kv", "export", "app/"]).await, export);
    // Consul's own import shape, with a prefix.
    let consul = r#"[{"key":"k","flags":7,"value":"dg=="}]"#;
    ok(&a, &["kv", "import", "-prefix", "imported/", consul]).await;
    let pair: Value =
        serde_json::from_str(&ok(&a, &["kv", "get", "-format", "json", "imported/k"]).await)
            .unwrap();
    assert_eq!(
        (pair["Flags"].as_u64(), pair["Value"].as_str()),
        (Some(7), Some("dg=="))
    );
    let err = fails(&a, &["kv", "import", "not json"]).await;
    assert!(err.starts_with("Error parsing the data:"), "{err}");
    c.shutdown().await;
}

/// The lock key's holder, if any.
async fn lock_holder(c: &TestCluster, key: &str) -> Option<String> {
    let (pairs, _) = c
        .client(0)
        .kv_get(key, &Default::default(), &[])
        .await
        .ok()?;
    pairs?
        .into_iter()
        .next()
        .map(|p| p.session)
        .filter(|s| !s.is_empty())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_runs_the_command_holding_the_lock_one_at_a_time() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let a = addr(&c, 0);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let go = dir.path().join("go");
    // A: records its start, waits for the test's go, records its end, exits 3.
    let script_a = format!(
        "echo a-start >> {log}; while [ ! -e {go} ]; do sleep 0.05; done; echo a-end >> {log}; exit 3",
        log = log.display(),
        go = go.display()
    );
    let lock_a = command(&["-http-addr", &a, "lock", "jobs", &script_a])
        .spawn()
        .unwrap();
    wait_until(WAIT, "A runs", || async { read(&log) == "a-start\n" }).await;
    let holder = lock_holder(&c, "jobs/.lock")
        .await
        .expect("A holds jobs/.lock");

    // B waits for the lock while A holds it.
    let script_b = format!("echo b >> {}", log.display());
    let lock_b = command(&["-http-addr", &a, "lock", "jobs", &script_b])
        .spawn()
        .unwrap();
    wait_until(WAIT, "B's session exists", || async {
        let (sessions, _): (Vec<Value>, _) = c
            .client(0)
            .get("/v1/session/list", &Default::default())
            .await
            .unwrap();
        sessions.len() == 2
    })
    .await;
    // As strong as B's chance to take the lock within this second.
    registry_testkit::never_within(
        Duration::from_secs(1),
        "B runs while A holds the lock",
        || async {
            let l = read(&log);
            (l != "a-start\n").then_some(l)
        },
    )
    .await;
    assert_eq!(
        lock_holder(&c, "jobs/.lock").await.as_deref(),
        Some(holder.as_str())
    );

    std::fs::write(&go, "").unwrap();
    let out_a = tokio::time::timeout(WAIT, lock_a.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out_a.status.code(),
        Some(3),
        "A's exit code is its child's: {out_a:?}"
    );
    let out_b = tokio::time::timeout(WAIT, lock_b.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out_b.status.code(), Some(0), "{out_b:?}");
    assert_eq!(read(&log), "a-start\na-end\nb\n");
    // Released and cleaned up: no key, no session.
    assert_eq!(lock_holder(&c, "jobs/.lock").await, None);
    let (sessions, _): (Vec<Value>, _) = c
        .client(0)
        .get("/v1/session/list", &Default::default())
        .await
        .unwrap();
    assert!(sessions.is_empty(), "{sessions:?}");

    // A key that is not a lock is a conflict; a lock held elsewhere times out.
    ok(&a, &["kv", "put", "plain/.lock", "x"]).await;
    let out = registry(&a, &["lock", "plain", "true"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not a lock"), "{out:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_loss_stops_the_child() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let a = addr(&c, 0);
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let script = format!("touch {}; sleep 60", started.display());
    let mut lock = command(&["-http-addr", &a, "lock", "svc", &script]);
    lock.stderr(Stdio::piped());
    let lock = lock.spawn().unwrap();
    wait_until(WAIT, "the child runs", || async { started.exists() }).await;
    let session = lock_holder(&c, "svc/.lock").await.expect("held");
    // Destroying the session releases the key: the lock is lost.
    let _: bool = c
        .client(0)
        .put(&format!("/v1/session/destroy/{session}"), &[], &())
        .await
        .unwrap();
    let out = tokio::time::timeout(WAIT, lock.wait_with_output())
        .await
        .expect("the lock command stops once the lock is lost")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Lock lost"), "{stderr}");
    c.shutdown().await;
}

/// Reads JSON documents from a watch's stdout, one per result.
struct Watch {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Watch {
    fn start(a: &str, args: &[&str]) -> Watch {
        let mut all = vec!["-http-addr", a, "watch"];
        all.extend_from_slice(args);
        let mut cmd = command(&all);
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Watch { child, lines }
    }

    /// The next result (pretty JSON spans lines: read until a whole document parses).
    async fn next(&mut self) -> Value {
        let mut text = String::new();
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the watch ended");
                text.push_str(&line);
                text.push('\n');
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    return v;
                }
            }
        })
        .await
        .expect("no result from the watch")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_json_on_each_change() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let a = addr(&c, 0);

    let mut key = Watch::start(&a, &["-type", "key", "-key", "cfg/x"]);
    assert_eq!(key.next().await, Value::Null, "a missing key");
    ok(&a, &["kv", "put", "cfg/x", "1"]).await;
    let v = key.next().await;
    assert_eq!(
        (v["Key"].as_str(), v["Value"].as_str()),
        (Some("cfg/x"), Some("MQ=="))
    );
    // A write to another key changes the index but not this view: nothing is printed.
    ok(&a, &["kv", "put", "cfg/y", "1"]).await;
    ok(&a, &["kv", "put", "cfg/x", "2"]).await;
    let v = key.next().await;
    assert_eq!(
        v["Value"], "Mg==",
        "the unchanged view was printed again: {v}"
    );
    key.child.kill().await.unwrap();

    let mut prefix = Watch::start(&a, &["-type", "keyprefix", "-prefix", "cfg/"]);
    assert_eq!(prefix.next().await.as_array().unwrap().len(), 2);
    ok(&a, &["kv", "delete", "cfg/y"]).await;
    assert_eq!(prefix.next().await.as_array().unwrap().len(), 1);
    prefix.child.kill().await.unwrap();

    let mut service = Watch::start(&a, &["-type", "service", "-service", "web"]);
    assert_eq!(service.next().await, serde_json::json!([]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(&file, r#"{"service": {"name": "web", "port": 80}}"#).unwrap();
    ok(&a, &["services", "register", file.to_str().unwrap()]).await;
    let v = service.next().await;
    assert_eq!(v[0]["Service"]["Service"], "web", "{v}");
    service.child.kill().await.unwrap();

    // -count ends the watch; nodes and checks read their views.
    let out = ok(&a, &["watch", "-type", "nodes", "-count", "1"]).await;
    let nodes: Value = serde_json::from_str(&out).unwrap();
    assert!(!nodes.as_array().unwrap().is_empty());
    let out = ok(
        &a,
        &["watch", "-type", "checks", "-state", "any", "-count", "1"],
    )
    .await;
    let checks: Value = serde_json::from_str(&out).unwrap();
    assert!(checks
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["CheckID"] == "serfHealth"));
    let out = ok(
        &a,
        &["watch", "-type", "checks", "-service", "web", "-count", "1"],
    )
    .await;
    assert!(serde_json::from_str::<Value>(&out).unwrap().is_array());
    // A handler gets the JSON on its stdin.
    let got = dir.path().join("handler-got");
    let handler = format!("cat > {}", got.display());
    ok(
        &a,
        &[
            "watch", "-type", "key", "-key", "cfg/x", "-count", "1", &handler,
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&read(&got)).unwrap();
    assert_eq!(v["Key"], "cfg/x");
    // Missing arguments are errors.
    let err = fails(&a, &["watch", "-type", "key"]).await;
    assert!(err.contains("-key"), "{err}");
    assert_eq!(registry(&a, &["watch", "-type", "bogus"]).await.code, 2);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_raft_list_transfer_and_remove() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let a = addr(&c, leader);
    let peers = ok(&a, &["operator", "raft", "list-peers"]).await;
    let mut lines = peers.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{peers}");
    assert_eq!(
        rows.iter().filter(|r| r[3] == "leader").count(),
        1,
        "{peers}"
    );
    let conf: Value =
        serde_json::from_str(&ok(&a, &["operator", "raft", "list-peers", "-format", "json"]).await)
            .unwrap();
    assert_eq!(conf["Servers"].as_array().unwrap().len(), 3);

    assert_eq!(
        ok(&a, &["operator", "raft", "transfer-leader"]).await,
        "Success\n"
    );
    let second = c.wait_leader().await;
    assert_ne!(c.status(second).id, c.status(leader).id);

    let err = fails(
        &addr(&c, second),
        &[
            "operator",
            "raft",
            "remove-peer",
            "-address",
            "10.9.9.9:8300",
        ],
    )
    .await;
    assert!(err.starts_with("Error removing peer:"), "{err}");
    assert_eq!(
        registry(&a, &["operator", "raft", "remove-peer"])
            .await
            .code,
        2
    );

    // Stop a follower and remove it by id.
    let follower = (0..3).find(|i| *i != second).unwrap();
    let follower_id = format!("{:016x}", c.status(follower).id);
    c.stop(follower).await;
    let b = addr(&c, second);
    let out = ok(
        &b,
        &["operator", "raft", "remove-peer", "-id", &follower_id],
    )
    .await;
    assert_eq!(out, format!("Removed peer with ID {follower_id:?}\n"));
    wait_until(WAIT, "two peers left", || async {
        ok(&b, &["operator", "raft", "list-peers"])
            .await
            .lines()
            .count()
            == 3
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_inspect_and_restore() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let a = addr(&c, 0);
    ok(&a, &["kv", "put", "snap/k", "before"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let f = file.to_str().unwrap();
    let out = ok(&a, &["snapshot", "save", f]).await;
    assert!(
        out.starts_with("Saved and verified snapshot to index "),
        "{out}"
    );
    assert!(!dir.path().join("backup.snap.tmp").exists());
    let inspect = ok(&a, &["snapshot", "inspect", f]).await;
    assert!(inspect.lines().any(|l| l.starts_with("Index")), "{inspect}");
    let info: Value =
        serde_json::from_str(&ok(&a, &["snapshot", "inspect", "-format", "json", f]).await)
            .unwrap();
    assert_eq!(info["Datacenter"], "dc1");
    assert!(info["Rows"].as_u64().unwrap() > 0);

    ok(&a, &["kv", "put", "snap/k", "after"]).await;
    assert_eq!(
        ok(&a, &["snapshot", "restore", f]).await,
        "Restored snapshot\n"
    );
    wait_until(WAIT, "the restored value", || async {
        registry(&a, &["kv", "get", "snap/k"]).await.stdout == "before\n"
    })
    .await;

    // A damaged file is refused locally and by the server.
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, b"not a snapshot").unwrap();
    let b = bad.to_str().unwrap();
    let err = fails(&a, &["snapshot", "inspect", b]).await;
    assert!(err.starts_with("Error verifying snapshot:"), "{err}");
    let err = fails(&a, &["snapshot", "restore", b]).await;
    assert!(err.starts_with("Error restoring snapshot: 400"), "{err}");
    let err = fails(&a, &["snapshot", "inspect", "/nonexistent/x.snap"]).await;
    assert!(err.starts_with("Error opening snapshot file:"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_makes_certificates_and_talks_https_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let in_dir = |args: &[&str]| {
        let mut cmd = command(args);
        cmd.current_dir(dir.path());
        output(cmd)
    };
    for args in [
        &["tls", "ca", "create"][..],
        &["tls", "cert", "create", "-server", "-dc", "dc1"][..],
        &["tls", "cert", "create", "-client", "-dc", "dc1"][..],
    ] {
        let out = in_dir(args).await;
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(out.stdout.contains("==> Saved"), "{out:?}");
    }
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let tls = registry_api::tls::Tls::load(
        registry_api::tls::TlsSettings {
            ca_file: Some(p("consul-agent-ca.pem").into()),
            cert_file: Some(p("dc1-server-consul-0.pem").into()),
            key_file: Some(p("dc1-server-consul-0-key.pem").into()),
            verify_incoming: true,
            verify_outgoing: true,
            domain: "consul".into(),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let mut config = registry_server::ServerConfig::new("tls-cli");
    config.dev = true;
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.https_addr = Some("127.0.0.1:0".parse().unwrap());
    config.rpc_addr = "127.0.0.1:0".parse().unwrap();
    config.tls = tls;
    let server = registry_server::start(config).await.unwrap();
    let https = format!("https://{}", server.https_addr.unwrap());
    let with_cert = [
        "-ca-file",
        &p("consul-agent-ca.pem"),
        "-client-cert",
        &p("dc1-client-consul-0.pem"),
        "-client-key",
        &p("dc1-client-consul-0-key.pem"),
    ];
    wait_until(WAIT, "members over HTTPS", || async {
        let mut args = with_cert.to_vec();
        args.extend(["members", "-format", "json"]);
        let out = registry(&https, &args).await;
        (out.code == 0 && out.stdout.contains("tls-cli")).then_some(())
    })
    .await;
    // Dialled as 127.0.0.1 (in the certificate), or checked for server.dc1.consul.
    let mut args = with_cert.to_vec();
    args.extend([
        "-tls-server-name",
        "server.dc1.consul",
        "catalog",
        "datacenters",
    ]);
    assert!(ok(&https, &args).await.contains("dc1"));
    let mut args = with_cert.to_vec();
    args.extend([
        "-tls-server-name",
        "server.dc2.consul",
        "catalog",
        "datacenters",
    ]);
    fails(&https, &args).await;
    // Without a client certificate the server refuses the handshake.
    fails(&https, &["-ca-file", &p("consul-agent-ca.pem"), "members"]).await;
    // A file that is not there is a usage error naming it.
    let out = registry(&https, &["-ca-file", &p("nope.pem"), "members"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("nope.pem"), "{out:?}");
    server.stop().await;
}

/// `registry acl ...` against a server with ACLs on (default deny): bootstrap once, a
/// policy from a file, a token for it, `token read -self` with that token, its limits, and a
/// delete by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_bootstrap_policy_and_token() {
    let c = TestCluster::builder(1)
        .agents(false)
        .acl(registry_server::acl::AclConfig {
            enabled: true,
            default_policy: registry_server::acl::AclDefault(
                registry_api::acl::DefaultPolicy::Deny,
            ),
            ..Default::default()
        })
        .start()
        .await;
    c.wait_leader().await;
    let a = addr(&c, 0);
    let boot = ok(&a, &["acl", "bootstrap", "-format", "json"]).await;
    let boot: Value = serde_json::from_str(&boot).unwrap();
    let mgmt = boot["SecretID"].as_str().unwrap().to_string();
    let again = fails(&a, &["acl", "bootstrap"]).await;
    assert!(again.contains("ACL bootstrap no longer allowed"), "{again}");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("web.hcl");
    std::fs::write(
        &rules,
        "service \"web\" {\n  policy = \"write\"\n}\nnode_prefix \"\" {\n  policy = \"write\"\n}\n",
    )
    .unwrap();
    let rules_arg = format!("@{}", rules.display());
    let policy = ok(
        &a,
        &[
            "-token", &mgmt, "acl", "policy", "create", "-name", "web", "-rules", &rules_arg,
        ],
    )
    .await;
    assert!(policy.contains("Name:         web"), "{policy}");
    let listed = ok(&a, &["-token", &mgmt, "acl", "policy", "list"]).await;
    assert!(
        listed.contains("global-management") && listed.contains("web"),
        "{listed}"
    );
    let token = ok(
        &a,
        &[
            "-token",
            &mgmt,
            "acl",
            "token",
            "create",
            "-description",
            "web app",
            "-policy-name",
            "web",
            "-format",
            "json",
        ],
    )
    .await;
    let token: Value = serde_json::from_str(&token).unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_string();
    let own = ok(&a, &["-token", &secret, "acl", "token", "read", "-self"]).await;
    assert!(
        own.contains("SecretID:         ") && own.contains("web app"),
        "{own}"
    );
    // Without acl rights the token cannot list tokens.
    let denied = fails(&a, &["-token", &secret, "acl", "token", "list"]).await;
    assert!(denied.contains("Permission denied"), "{denied}");
    let deleted = ok(
        &a,
        &["-token", &mgmt, "acl", "policy", "delete", "-name", "web"],
    )
    .await;
    assert!(deleted.contains("deleted successfully"), "{deleted}");
    c.shutdown().await;
}
