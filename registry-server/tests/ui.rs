//! The web UI in a real browser: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (package `chromium-driver`; `scripts/install-deps.sh` installs both). A
//! `--dev` server with `--ui` runs in-process; the test registers services through the API
//! and asserts on the page's DOM: a service appears with its instance count and follows a new
//! instance without a reload (blocking queries), a failing check shows critical with its
//! output, nodes list and show their checks, a KV key created and edited through the UI is
//! stored (read back through the API), a CAS conflict is reported, and 1,000 services render
//! without freezing the page. Screenshots go to `target/ui-screenshots/`.
//!
//! The WebDriver client is the few calls below over the workspace's HTTP client: a WebDriver
//! crate would add more to compile than these tests use.

use registry_server::{ServerConfig, ServerHandle};
use registry_testkit::process::free_port;
use registry_testkit::wait_until;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the browser is; Debian's package puts it here.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long any one thing may take to show in the page.
const SHOW: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    registry_api::tls::plain_client()
}

/// A `--dev` server with the UI, its data in a temp dir.
async fn dev_server() -> (ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("ui-dev");
    cfg.dev = true;
    cfg.ui = true;
    cfg.data_dir = Some(dir.path().to_path_buf());
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.rpc_addr = "127.0.0.1:0".parse().unwrap();
    let server = registry_server::start(cfg).await.unwrap();
    let url = server.url();
    wait_until(SHOW, "a leader", || {
        let url = url.clone();
        async move {
            let r = http()
                .get(format!("{url}/v1/status/leader"))
                .send()
                .await
                .ok()?;
            (r.text().await.ok()?.len() > 2).then_some(())
        }
    })
    .await;
    (server, dir)
}

/// `PUT /v1/catalog/register` with `body`; panics unless the server says `true`.
async fn register(base: &str, body: Value) {
    let r = http()
        .put(format!("{base}/v1/catalog/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "register {body}: {}", r.status());
}

/// An instance of `service` on its own node `node`, with one check in `status`.
fn instance(node: &str, service: &str, port: u16, status: &str, output: &str) -> Value {
    json!({
        "Node": node,
        "Address": "10.0.0.1",
        "Service": {"ID": node, "Service": service, "Port": port, "Tags": ["v1"], "Meta": {"version": "1.2"}},
        "Check": {"CheckID": format!("{node}-http"), "Name": "HTTP on /health", "Status": status,
                  "ServiceID": node, "Output": output}
    })
}

/// `GET /v1/kv/<key>?raw` as text (None for a 404).
async fn kv_raw(base: &str, key: &str) -> Option<String> {
    let r = http()
        .get(format!("{base}/v1/kv/{key}?raw"))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    Some(r.text().await.unwrap())
}

/// `chromedriver`, killed when the test ends, passing or not (its browsers are closed
/// before, by [`Browser`]'s drop).
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver; a missing browser or driver fails the test (never a silent skip).
async fn driver() -> Driver {
    for (path, package) in [
        (CHROMIUM, "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: the UI tests need Debian's `{package}` package \
             (scripts/install-deps.sh installs it: `apt-get install chromium chromium-driver`)"
        );
    }
    let port = free_port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let status = format!("{}/status", d.url);
    wait_until(SHOW, "chromedriver to answer", || {
        let status = status.clone();
        async move {
            let v: Value = http().get(status).send().await.ok()?.json().await.ok()?;
            (v["value"]["ready"] == true).then_some(())
        }
    })
    .await;
    d
}

/// One browser session; dropping it closes the browser (even when the test panics, so no
/// Chromium outlives it).
struct Browser {
    /// `<driver>/session/<id>`.
    base: String,
    /// chromedriver's `host:port` and the session's path, for the close in `drop`.
    addr: String,
    path: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Blocking, plain HTTP/1.1: a drop cannot await.
        use std::io::{Read as _, Write as _};
        let Ok(mut conn) = std::net::TcpStream::connect(&self.addr) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
        let req = format!(
            "DELETE {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.path, self.addr
        );
        if conn.write_all(req.as_bytes()).is_ok() {
            // chromedriver answers once the browser is closed; one read is that answer (it
            // may keep the connection open, so no read to the end).
            let _ = conn.read(&mut [0u8; 1024]);
        }
    }
}

impl Browser {
    async fn open(driver: &Driver, width: u32, height: u32) -> Browser {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // --no-sandbox: tests run as root in containers, where Chromium's sandbox
                // cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}")]
            },
            "timeouts": {"script": 90000, "pageLoad": 30000}
        }}});
        let v = Self::send(
            reqwest::Method::POST,
            &format!("{}/session", driver.url),
            Some(caps),
        )
        .await;
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Browser {
            base: format!("{}/session/{id}", driver.url),
            addr: driver.url.trim_start_matches("http://").to_string(),
            path: format!("/session/{id}"),
        }
    }

    async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut req = http()
            .request(method, url)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "WebDriver {url}: {v}");
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        Self::send(
            reqwest::Method::POST,
            &format!("{}{path}", self.base),
            Some(body),
        )
        .await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` as in WebDriver) and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Waits until `script` returns something truthy, and returns it; on a timeout the
    /// panic shows what the page said instead.
    async fn wait_js(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + SHOW;
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            if Instant::now() >= deadline {
                let page = self
                    .js("return location.hash + '\\n' + document.body.innerText")
                    .await;
                panic!(
                    "timed out after {SHOW:?} waiting for {what}; the page:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(registry_testkit::wait::POLL).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .wait_js(
                &format!("{css} in the page"),
                &format!(
                    "const e = document.querySelector({}); return !!e && e.offsetParent !== null;",
                    json!(css)
                ),
            )
            .await;
        assert_eq!(v, true);
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element for {css}: {v}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.post(&format!("/element/{el}/click"), json!({})).await;
    }

    /// Types into a field as a user would (key events), after clearing it.
    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.post(&format!("/element/{el}/clear"), json!({})).await;
        self.post(&format!("/element/{el}/value"), json!({ "text": text }))
            .await;
    }

    async fn text(&self, css: &str) -> String {
        let v = self
            .js(&format!(
                "return document.querySelector({})?.textContent ?? null;",
                json!(css)
            ))
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await;
    }

    /// Saves a screenshot as `target/ui-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let v = Self::send(
            reqwest::Method::GET,
            &format!("{}/screenshot", self.base),
            None,
        )
        .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("ui-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_shows_services_checks_nodes_and_edits_kv() {
    let (server, _dir) = dev_server().await;
    let base = server.url();
    register(
        &base,
        instance("web-1", "web", 8080, "passing", "HTTP GET /health: 200 OK"),
    )
    .await;
    register(
        &base,
        instance(
            "web-2",
            "web",
            8081,
            "critical",
            "dial tcp 10.0.0.1:8081: connection refused",
        ),
    )
    .await;
    register(
        &base,
        instance("db-1", "db", 5432, "warning", "replication lag 12s"),
    )
    .await;
    let driver = driver().await;
    let b = Browser::open(&driver, 1280, 860).await;

    // `/` leads to the services list (as Consul's), where web has its two instances.
    b.goto(&format!("{base}/")).await;
    b.wait_js(
        "web with 2 instances",
        r#"return document.querySelector('tr[data-service="web"] .instances')?.textContent === '2';"#,
    )
    .await;
    assert!(b.js("return location.pathname").await == "/ui/");
    let health = b.text(r#"tr[data-service="web"] .health-cell"#).await;
    assert!(
        health.contains("✕ 1") && health.contains("✓"),
        "web's health: {health}"
    );
    // Live: a third instance shows without a reload, through the blocking query.
    register(&base, instance("web-3", "web", 8082, "passing", "ok")).await;
    b.wait_js(
        "web with 3 instances, live",
        r#"return document.querySelector('tr[data-service="web"] .instances')?.textContent === '3';"#,
    )
    .await;
    // The filter keeps db only.
    b.type_into("#filter", "db").await;
    b.wait_js(
        "the filter",
        r#"return document.querySelector('tr[data-service="web"]').hidden &&
                  !document.querySelector('tr[data-service="db"]').hidden;"#,
    )
    .await;
    b.js("const f = document.querySelector('#filter'); f.value = ''; f.dispatchEvent(new Event('input'));")
        .await;
    b.wait_js(
        "the filter cleared",
        r#"return !document.querySelector('tr[data-service="web"]').hidden;"#,
    )
    .await;
    b.screenshot("services").await;

    // One service: each instance with its address, tags, meta and checks; web-2's critical.
    b.click(r#"tr[data-service="web"] a"#).await;
    b.wait_js(
        "web-2's failing check",
        r#"return document.querySelector('[data-instance="web-2/web-2"] [data-check-status="critical"]')?.textContent === 'critical';"#,
    )
    .await;
    let card = b.text(r#"[data-instance="web-2/web-2"]"#).await;
    for part in [
        "10.0.0.1:8081",
        "v1",
        "version",
        "1.2",
        "connection refused",
        "HTTP on /health",
    ] {
        assert!(card.contains(part), "{part:?} not in web-2's card: {card}");
    }
    assert!(b.text("#service-summary").await.contains("3 instances"));
    b.screenshot("service").await;
    // A phone: nothing wider than the screen.
    b.resize(375, 812).await;
    b.wait_js(
        "the page to fit 375 px",
        "return window.innerWidth <= 375 && document.documentElement.scrollWidth <= window.innerWidth;",
    )
    .await;
    b.screenshot("service-phone").await;
    b.resize(1280, 860).await;

    // Nodes, and one node's checks and services.
    b.click("#nav-nodes").await;
    b.click(r#"tr[data-node="db-1"] a"#).await;
    b.wait_js(
        "db-1's warning check",
        r#"return document.querySelector('#node-checks [data-check-status="warning"]') !== null &&
                  document.querySelector('#node-services')?.textContent.includes('db');"#,
    )
    .await;
    b.screenshot("node").await;

    // KV: create through the UI, read back through the API.
    b.click("#nav-kv").await;
    b.click("#kv-create-open").await;
    b.type_into("#kv-new-key", "app/config").await;
    b.type_into("#kv-new-value", "hello <b>world</b>").await;
    b.click("#kv-create-save").await;
    b.wait_js(
        "the new key's page",
        "return document.querySelector('#kv-value')?.textContent === 'hello <b>world</b>';",
    )
    .await;
    assert_eq!(
        kv_raw(&base, "app/config").await.as_deref(),
        Some("hello <b>world</b>")
    );
    // Text, not markup: no <b> element came from the value.
    assert_eq!(
        b.js("return document.querySelectorAll('#kv-value b').length")
            .await,
        0
    );
    // Edit with CAS.
    b.click("#kv-edit").await;
    b.type_into("#kv-edit-value", "hello again").await;
    b.click("#kv-save").await;
    b.wait_js(
        "the edited value",
        "return document.querySelector('#kv-value')?.textContent === 'hello again';",
    )
    .await;
    assert_eq!(
        kv_raw(&base, "app/config").await.as_deref(),
        Some("hello again")
    );
    // A write elsewhere while the form is open: the save is refused, and said so.
    b.click("#kv-edit").await;
    let r = http()
        .put(format!("{base}/v1/kv/app/config"))
        .body("from elsewhere")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    b.type_into("#kv-edit-value", "lost update").await;
    b.click("#kv-save").await;
    b.wait_js(
        "the CAS failure message",
        "return document.querySelector('.message.error')?.textContent.includes('changed by someone else');",
    )
    .await;
    assert_eq!(
        kv_raw(&base, "app/config").await.as_deref(),
        Some("from elsewhere")
    );
    b.screenshot("kv-cas-conflict").await;
    // The folder lists the key.
    b.click("#nav-kv").await;
    b.wait_js(
        "the app/ folder",
        r#"return document.querySelector('li[data-key="app/"] a') !== null;"#,
    )
    .await;

    // The token is kept in the browser, never in the page's URL.
    b.click("#nav-settings").await;
    b.type_into("#token", "s3cret-token").await;
    b.click("#token-save").await;
    assert_eq!(
        b.js("return localStorage.getItem('registry-ui-token')")
            .await,
        "s3cret-token"
    );
    assert!(!b
        .js("return location.href")
        .await
        .as_str()
        .unwrap()
        .contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_renders_a_thousand_services_without_freezing() {
    const N: usize = 1000;
    let (server, _dir) = dev_server().await;
    let base = server.url();
    // 1,000 services on 50 nodes, 16 writers at a time.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let base = base.clone();
        writers.spawn(async move {
            for i in (w..N).step_by(16) {
                let body = json!({
                    "Node": format!("node-{:02}", i % 50),
                    "Address": "10.1.0.1",
                    "Service": {"ID": format!("svc-{i:04}"), "Service": format!("svc-{i:04}"), "Port": 8000 + i},
                });
                register(&base, body).await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let driver = driver().await;
    let b = Browser::open(&driver, 1280, 860).await;
    b.goto(&format!("{base}/ui/#/dc/dc1/nodes")).await;
    b.find(r#"tr[data-node="node-00"]"#).await;

    // Go to the services list and watch the frames while it loads and renders: the longest
    // gap between two frames is how long the page was frozen.
    let started = Instant::now();
    let v = b
        .post(
            "/execute/async",
            json!({"args": [], "script": r#"
                const done = arguments[arguments.length - 1];
                const start = performance.now();
                let last = start, maxGap = 0;
                location.hash = '#/dc/dc1/services';
                const tick = (now) => {
                    maxGap = Math.max(maxGap, now - last);
                    last = now;
                    const t = document.querySelector('table.services');
                    const rendered = Number(t?.dataset.rendered || 0);
                    if (rendered > 1000 || now - start > 60000) {
                        done({ maxGap, ms: now - start, rows: t ? t.tBodies[0].rows.length : 0 });
                    } else {
                        requestAnimationFrame(tick);
                    }
                };
                requestAnimationFrame(tick);
            "#}),
        )
        .await;
    eprintln!("1,000 services: {v} (test side {:?})", started.elapsed());
    // The 1,000 and the server's own `consul`.
    assert_eq!(v["rows"], json!(N + 1), "{v}");
    let max_gap = v["maxGap"].as_f64().unwrap();
    assert!(
        max_gap < 1000.0,
        "the page froze for {max_gap} ms while rendering: {v}"
    );
    assert_eq!(b.text("#service-count").await, format!("({})", N + 1));
    b.screenshot("services-1000").await;

    // Filtering 1,001 rows answers at once.
    b.type_into("#filter", "svc-0999").await;
    b.wait_js(
        "one row left",
        "return [...document.querySelectorAll('table.services tbody tr')].filter(r => !r.hidden).length === 1;",
    )
    .await;
}

/// A client agent with `--ui` serves the page and forwards the UI's summaries to its
/// servers; they carry Consul's index and block like every catalog read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_serves_the_ui_and_forwards_its_summaries_as_blocking_reads() {
    let (server, _dir) = dev_server().await;
    let agent = registry_client::start(registry_client::ClientConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        retry_join: vec![server.rpc_addr.clone()],
        ui: true,
        ..registry_client::ClientConfig::new("ui-agent")
    })
    .await
    .unwrap();
    let base = format!("http://{}", agent.http_addr);

    let page = http().get(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("assets/app.js"));

    // The agent's own node shows up in the summaries once it has synced.
    let (services, index) = wait_until(SHOW, "the agent's node in the UI's node list", || {
        let base = base.clone();
        async move {
            let nodes: Value = http()
                .get(format!("{base}/v1/internal/ui/nodes"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let has_agent = nodes.as_array()?.iter().any(|n| n["Node"] == "ui-agent");
            let r = http()
                .get(format!("{base}/v1/internal/ui/services"))
                .send()
                .await
                .ok()?;
            let index: u64 = r
                .headers()
                .get("X-Consul-Index")?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            let services: Value = r.json().await.ok()?;
            has_agent.then_some((services, index))
        }
    })
    .await;
    let consul = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == "consul")
        .unwrap_or_else(|| panic!("no consul service: {services}"));
    assert_eq!(consul["InstanceCount"], 1, "{consul}");
    assert_eq!(consul["Datacenter"], "dc1", "{consul}");

    // A blocking read waits: once the agents have synced, a read at the current index
    // holds for its whole wait and answers with the same index.
    let index = wait_until(SHOW, "a blocking read that holds for its wait", || {
        let base = base.clone();
        async move {
            let r = http()
                .get(format!(
                    "{base}/v1/internal/ui/services?index={index}&wait=1s"
                ))
                .send()
                .await
                .ok()?;
            let now: u64 = r
                .headers()
                .get("X-Consul-Index")?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            assert!(now >= index, "the index went back: {index} -> {now}");
            let started = Instant::now();
            let again = http()
                .get(format!(
                    "{base}/v1/internal/ui/services?index={now}&wait=1s"
                ))
                .send()
                .await
                .ok()?;
            let after: u64 = again
                .headers()
                .get("X-Consul-Index")?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            (after == now && started.elapsed() >= Duration::from_millis(900)).then_some(now)
        }
    })
    .await;
    // And a registration wakes it.
    let watch = {
        let url = format!("{base}/v1/internal/ui/services?index={index}&wait=30s");
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http().get(url).send().await.unwrap();
            let index: u64 = r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            (started.elapsed(), index, r.json::<Value>().await.unwrap())
        })
    };
    register(
        &server.url(),
        instance("late-1", "late", 9000, "passing", "ok"),
    )
    .await;
    let (took, new_index, list) = tokio::time::timeout(SHOW, watch).await.unwrap().unwrap();
    assert!(new_index > index, "{index} -> {new_index}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(
        list.as_array().unwrap().iter().any(|s| s["Name"] == "late"),
        "{list}"
    );
}
