//! The built `registry-server` binary: `--dev` starts a working registry, and
//! bad flags are refused with a clear message; `SIGHUP` reloads (the monitor
//! stream its `main` installs shows it, and the catalog is repaired at once),
//! and `PUT /v1/agent/leave` makes it exit 0.

use registry_api::{QueryOptions, RegistryClient};
use registry_testkit::process::{free_port, Kill};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
            // DNS on a free port: parallel tests must not fight over 8600.
            .args(["--dns-addr", "127.0.0.1:0"])
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

/// Reads `resp` until what came contains `needle` (bounded); everything read.
async fn read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(needle) {
            match resp.chunk().await {
                Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                other => panic!("the monitor ended before {needle:?}: {other:?}; got {seen}"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .is_err()
    {
        panic!("no {needle:?} in the monitor; got {seen}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_leave_exits_zero() {
    let (mut guard, client) = start_dev().await;
    let http = registry_api::tls::plain_client();
    let base = client.base().to_string();
    let me: serde_json::Value = http
        .get(format!("{base}/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = me["Config"]["NodeName"].as_str().unwrap().to_string();
    let mut monitor = http
        .get(format!("{base}/v1/agent/monitor?loglevel=info"))
        .send()
        .await
        .unwrap();
    assert_eq!(monitor.status(), 200);

    let put = |path: String, body: String| {
        let http = http.clone();
        async move {
            let r = http.put(path).body(body).send().await.unwrap();
            r.status().as_u16()
        }
    };
    let code = put(
        format!("{base}/v1/agent/service/register"),
        r#"{"Name":"hup","Port":1}"#.into(),
    )
    .await;
    assert_eq!(code, 200);
    read_until(&mut monitor, "service registered").await;
    let present = || async {
        client
            .catalog_service("hup", &QueryOptions::default())
            .await
            .map(|(l, _)| l.len() == 1)
            .unwrap_or(false)
    };
    registry_testkit::wait_until(Duration::from_secs(10), "hup in the catalog", present).await;
    // Removed behind the agent's back; its next full sync is a minute away.
    let code = put(
        format!("{base}/v1/catalog/deregister"),
        format!(r#"{{"Node":"{node}","ServiceID":"hup"}}"#),
    )
    .await;
    assert_eq!(code, 200);
    assert!(!present().await);

    let pid = guard.0.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    read_until(&mut monitor, "SIGHUP: reloading").await;
    registry_testkit::wait_until(Duration::from_secs(10), "hup back after SIGHUP", present).await;
    assert!(guard.0.try_wait().unwrap().is_none(), "SIGHUP stopped it");

    // Leave: 200 first, then the process exits 0.
    let code = put(format!("{base}/v1/agent/leave"), String::new()).await;
    assert_eq!(code, 200);
    let exit = registry_testkit::wait_until(Duration::from_secs(15), "the process exits", || {
        let exited = guard.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(exit.success(), "{exit}");
}

/// One candidate of the README's leader election: the snippet run by `bash`
/// in a process group of its own (so a signal reaches its curls and its
/// renew loop too), its output collected.
struct Candidate {
    /// The bash process.
    child: Child,
    /// Lines it printed.
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Its `NAME`.
    name: &'static str,
}

impl Candidate {
    fn start(script: &str, addr: &str, name: &'static str) -> Candidate {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("bash")
            .args(["-c", script])
            .env("ADDR", addr)
            .env("NAME", name)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (out, seen) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        Candidate { child, lines, name }
    }

    /// Whether it has said it leads.
    fn leads(&self) -> bool {
        let want = format!("{} leads", self.name);
        self.lines.lock().unwrap().contains(&want)
    }

    /// Sends `signal` to its whole process group.
    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args([signal, "--", &group]).status();
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

/// The value and holder of `service/leader`.
async fn leader_key(client: &RegistryClient) -> Option<(String, String)> {
    let (list, _) = client
        .kv_get("service/leader", &QueryOptions::default(), &[])
        .await
        .ok()?;
    let e = list?.into_iter().next()?;
    Some((String::from_utf8(e.value?).ok()?, e.session))
}

/// The README's leader election, run exactly as the README prints it (two
/// candidates, each a bash process with its two loops) against the built
/// binary: one leads and holds the key; stopped with a signal it destroys
/// its session, and the other takes over once the lock-delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_leader_election_elects_one_and_fails_over() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("<!-- leader-election:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- leader-election:end -->").next())
        .expect("the README's leader-election snippet");
    let script = block
        .trim()
        .strip_prefix("```sh")
        .and_then(|s| s.strip_suffix("```"))
        .expect("a sh code block");
    let (_guard, client) = start_dev().await;
    let candidates = [
        Candidate::start(script, client.base(), "a"),
        Candidate::start(script, client.base(), "b"),
    ];
    let first = registry_testkit::wait_until(Duration::from_secs(20), "a leader", || async {
        candidates.iter().position(Candidate::leads)
    })
    .await;
    let (leader, other) = (&candidates[first], &candidates[1 - first]);
    let (value, session) = leader_key(&client).await.unwrap();
    assert_eq!(value, leader.name);
    let (info, _) = client
        .session_info(&session, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(info[0].name, leader.name);
    assert!(!other.leads(), "two leaders");

    // The leader is stopped: its trap destroys the session, the key is
    // released, and the other candidate takes over after the 1 s lock-delay.
    let stopped = Instant::now();
    leader.signal("-TERM");
    registry_testkit::wait_until(Duration::from_secs(20), "the other to lead", || async {
        other.leads()
    })
    .await;
    eprintln!("took over {:?} after the leader stopped", stopped.elapsed());
    assert!(stopped.elapsed() >= Duration::from_secs(1), "lock-delay");
    let (value, new_session) = leader_key(&client).await.unwrap();
    assert_eq!(value, other.name);
    assert_ne!(new_session, session);
    let (gone, _) = client
        .session_info(&session, &QueryOptions::default())
        .await
        .unwrap();
    assert!(gone.is_empty(), "the stopped leader destroyed its session");
}
