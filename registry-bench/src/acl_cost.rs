//! Measurement 10: what ACL resolution costs. Two fresh 3-server clusters on the same machine
//! in the same run, one with ACLs off and one with `--acl-enabled --acl-default-policy deny`,
//! driven by the same clients over kept-alive connections: register at 64 clients and
//! `?stale` lookups at 64 clients, alternating off and on within each run (off first in odd
//! runs, on first in even ones). On the ACL cluster
//! every request carries a token that is not a management token (policy [`RULES`]), so each is
//! resolved, checked against rules and, for the lookups, filtered, as a real client's would be.

use crate::cluster::RegistryCluster;
use crate::load::{self, Load, Op, RunStats, Stop};
use crate::scenarios;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients in both rows.
pub const CLIENTS: usize = 64;

/// The goal of issue [12]: ACLs cost under 10 % of throughput (ops/s ratio on/off).
pub const GOAL_RATIO: f64 = 0.90;

/// The rules of the load's token: write on every service and node, what a register needs
/// (node and service write) and more than a health lookup needs (service and node read).
pub const RULES: &str =
    "service_prefix \"\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"write\" }";

/// The name of the policy holding [`RULES`].
const POLICY: &str = "bench";

/// The runs of both rows, ACLs off and on.
#[derive(Default)]
pub struct AclCost {
    /// Register, ACLs off (no token sent).
    pub register_off: Vec<RunStats>,
    /// Register with the load's token, ACLs on and default deny.
    pub register_on: Vec<RunStats>,
    /// `?stale` lookups, ACLs off.
    pub stale_off: Vec<RunStats>,
    /// `?stale` lookups with the load's token, ACLs on.
    pub stale_on: Vec<RunStats>,
}

/// Fails unless `resp` is a success; the error names `what` and the answer.
async fn ok(resp: reqwest::Response, what: &str) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    bail!("{what}: {status} {}", body.trim())
}

/// Makes the [`POLICY`] policy and a token with it through `base` with `management`; the
/// token's SecretID.
async fn client_token(base: &str, management: &str) -> Result<String> {
    let http = load::http_client_with_token(Some(management))?;
    let r = http
        .put(format!("{base}/v1/acl/policy"))
        .json(&json!({"Name": POLICY, "Rules": RULES}))
        .send()
        .await?;
    ok(r, "PUT /v1/acl/policy").await?;
    let r = http
        .put(format!("{base}/v1/acl/token"))
        .json(&json!({"Description": "registry-bench load", "Policies": [{"Name": POLICY}]}))
        .send()
        .await?;
    let token: Value = ok(r, "PUT /v1/acl/token").await?.json().await?;
    token
        .get("SecretID")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("the token's answer has no SecretID")
}

/// Waits until every server resolves `token` (`GET /v1/acl/token/self`): it was written on the
/// leader, and a follower that has not applied it yet would answer the load's first requests
/// with `403 ACL not found`.
async fn wait_token(urls: &[String], token: &str, timeout: Duration) -> Result<()> {
    let http = load::http_client_with_token(Some(token))?;
    let deadline = Instant::now() + timeout;
    for u in urls {
        loop {
            let r = http.get(format!("{u}/v1/acl/token/self")).send().await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{u} did not resolve the load's token within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Fails unless `base` refuses a register without a token: the ACL rows must never measure a
/// cluster that does not enforce (flags ignored, default allow).
async fn check_enforced(base: &str) -> Result<()> {
    let http = load::http_client()?;
    let r = http
        .put(format!("{base}/v1/catalog/register"))
        .header("content-type", "application/json")
        .body(load::register_body("acl-anonymous", 0, 1))
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::FORBIDDEN {
        bail!(
            "the ACL cluster answered an anonymous register with {}, not 403: ACLs are not enforced",
            r.status()
        );
    }
    Ok(())
}

/// Runs measurement 10.
pub async fn measure(bin: &Path, root: &Path, runs: usize, secs: Duration) -> Result<AclCost> {
    let management = registry_api::ids::new_uuid();
    let mut off = RegistryCluster::start(bin, root, "acl-off", None)?;
    let mut on = RegistryCluster::start_acl(bin, root, "acl-on", &management)?;
    off.wait_ready(Duration::from_secs(60))
        .await
        .context("cluster with ACLs off")?;
    on.wait_ready(Duration::from_secs(60))
        .await
        .context("cluster with ACLs on")?;
    let (off_urls, on_urls) = (off.urls(), on.urls());
    let token = client_token(&on_urls[0], &management)
        .await
        .context("the load's ACL token")?;
    wait_token(&on_urls, &token, Duration::from_secs(10)).await?;
    check_enforced(&on_urls[0]).await?;
    scenarios::setup_lookup_service(&off_urls).await?;
    scenarios::setup_lookup_service_as(&on_urls, Some(&token)).await?;
    let seq = Arc::new(AtomicU64::new(0));
    // scenarios::register and scenarios::read, with the token: the same loads, pinned
    // clients, register names from one shared sequence, a fresh sequence per read cell.
    let cell = |op: Op, bases: &[String], token: Option<&str>, seq: Arc<AtomicU64>| {
        load::run(Load {
            op,
            bases: bases.to_vec(),
            clients: CLIENTS,
            stop: Stop::For(secs),
            seq,
            rotate: false,
            token: token.map(str::to_string),
        })
    };
    let register = |prefix: &str| Op::Register {
        prefix: prefix.to_string(),
        per_node: 1,
    };
    let stale = || Op::Lookup {
        service: "lookup-svc".into(),
        query: "&stale",
    };
    let fresh = || Arc::new(AtomicU64::new(0));
    let mut r = AclCost::default();
    for run in 0..runs {
        // Which cluster goes first flips run by run: on two shared cores the cell that follows
        // another pays for what that one left behind (RocksDB flushes after thousands of
        // registrations, the load's own dropped connections), and a fixed order would put
        // that cost on one side of the ratio every time.
        let (p, t, sp, st) = if run % 2 == 0 {
            let p = cell(register("ao"), &off_urls, None, seq.clone()).await?;
            let t = cell(register("aa"), &on_urls, Some(&token), seq.clone()).await?;
            let sp = cell(stale(), &off_urls, None, fresh()).await?;
            let st = cell(stale(), &on_urls, Some(&token), fresh()).await?;
            (p, t, sp, st)
        } else {
            let t = cell(register("aa"), &on_urls, Some(&token), seq.clone()).await?;
            let p = cell(register("ao"), &off_urls, None, seq.clone()).await?;
            let st = cell(stale(), &on_urls, Some(&token), fresh()).await?;
            let sp = cell(stale(), &off_urls, None, fresh()).await?;
            (p, t, sp, st)
        };
        off.check_alive()?;
        on.check_alive()?;
        eprintln!(
            "  run {}: register off {:.0}/s on {:.0}/s ({} err) | ?stale off {:.0}/s on {:.0}/s ({} err)",
            run + 1,
            p.ops_per_s,
            t.ops_per_s,
            t.errors,
            sp.ops_per_s,
            st.ops_per_s,
            st.errors
        );
        r.register_off.push(p);
        r.register_on.push(t);
        r.stale_off.push(sp);
        r.stale_on.push(st);
    }
    Ok(r)
}
