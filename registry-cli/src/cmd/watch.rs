//! `registry watch -type key|keyprefix|service|nodes|checks`: a blocking-query loop over one
//! view (<https://developer.hashicorp.com/consul/docs/dynamic-app-config/watches>) that prints
//! the view's JSON at start and after each change, or pipes it to a handler command
//! (`sh -c`, the JSON on its stdin) as `consul watch` does. A result equal to the last one is
//! not printed again (Consul's plan compares them too). It runs until a signal stops it, or
//! after `-count` results.
//!
//! Owns: the loop and which endpoint each type reads. Must not touch: blocking-query rules
//! (the servers').

use super::Ctx;
use crate::{CmdResult, Failure};
use clap::{Args, ValueEnum};
use registry_api::QueryOptions;
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The longest wait of one blocking query (Consul's default 5 minutes).
const WATCH_WAIT: Duration = Duration::from_secs(300);
/// Between reads of a view that gives no index to block on.
const POLL_WITHOUT_INDEX: Duration = Duration::from_secs(1);
/// The longest pause between retries after a failed read.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The views a watch can follow.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchType {
    /// One key (`-key`).
    Key,
    /// Every key under a prefix (`-prefix`).
    Keyprefix,
    /// A service's instances with their checks (`-service`).
    Service,
    /// The catalog's nodes.
    Nodes,
    /// Checks, of a service (`-service`) or in a state (`-state`, default any).
    Checks,
}

/// `registry watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// What to watch.
    #[arg(long = "type", value_enum)]
    pub kind: WatchType,
    /// The key (`-type key`).
    #[arg(long)]
    pub key: Option<String>,
    /// The prefix (`-type keyprefix`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// The service (`-type service`, `-type checks`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only instances with this tag (`-type service`).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Only instances whose checks pass (`-type service`).
    #[arg(long)]
    pub passingonly: bool,
    /// Checks in this state (`-type checks`: any, passing, warning, critical).
    #[arg(long)]
    pub state: Option<String>,
    /// Stop after this many results (default: run until stopped).
    #[arg(long)]
    pub count: Option<u64>,
    /// A handler command, run with `sh -c` for each result, the JSON on its stdin.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub handler: Vec<String>,
}

/// What one read of the view gives: the JSON and the index to block on next.
async fn fetch(ctx: &Ctx, a: &WatchArgs, opts: &QueryOptions) -> Result<(Value, u64), String> {
    let enc = registry_api::client::path_segment;
    let need = |v: &Option<String>, flag: &str| {
        v.clone()
            .ok_or_else(|| format!("-type {:?} needs -{flag}", a.kind).to_lowercase())
    };
    let get = |path: String| async move {
        ctx.client
            .get::<Value>(&path, opts)
            .await
            .map(|(v, m)| (v, m.index))
            .map_err(|e| e.to_string())
    };
    match a.kind {
        WatchType::Key | WatchType::Keyprefix => {
            let (key, query): (String, &[(&str, &str)]) = if a.kind == WatchType::Key {
                (need(&a.key, "key")?, &[])
            } else {
                (need(&a.prefix, "prefix")?, &[("recurse", "")])
            };
            let (pairs, meta) = ctx
                .client
                .kv_get(&key, opts, query)
                .await
                .map_err(|e| e.to_string())?;
            let value = match (a.kind, pairs) {
                (WatchType::Key, Some(p)) => serde_json::to_value(p.into_iter().next()),
                (WatchType::Key, None) => Ok(Value::Null),
                (_, p) => serde_json::to_value(p.unwrap_or_default()),
            }
            .map_err(|e| e.to_string())?;
            Ok((value, meta.index))
        }
        WatchType::Service => {
            let service = need(&a.service, "service")?;
            let mut o = opts.clone();
            o.tags = a.tag.clone();
            o.passing = a.passingonly;
            ctx.client
                .get::<Value>(&format!("/v1/health/service/{}", enc(&service)), &o)
                .await
                .map(|(v, m)| (v, m.index))
                .map_err(|e| e.to_string())
        }
        WatchType::Nodes => get("/v1/catalog/nodes".into()).await,
        WatchType::Checks => match (&a.service, &a.state) {
            (Some(_), Some(_)) => Err("-type checks takes -service or -state, not both".into()),
            (Some(s), None) => get(format!("/v1/health/checks/{}", enc(s))).await,
            (None, state) => {
                get(format!(
                    "/v1/health/state/{}",
                    enc(state.as_deref().unwrap_or("any"))
                ))
                .await
            }
        },
    }
}

/// Prints `value`, or hands it to the handler.
async fn emit(handler: &[String], value: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    if handler.is_empty() {
        println!("{text}");
        return Ok(());
    }
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(handler.join(" "))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Failure::doing("starting the handler", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that does not read its input is its business.
        let _ = stdin.write_all(text.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    match child.wait().await {
        Ok(s) if !s.success() => eprintln!("Error: the handler exited with {s}"),
        Err(e) => eprintln!("Error waiting for the handler: {e}"),
        _ => {}
    }
    Ok(())
}

/// Runs `watch`.
pub async fn run(ctx: &Ctx, a: WatchArgs) -> CmdResult {
    let mut index = 0u64;
    let mut last: Option<Value> = None;
    let mut emitted = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        let opts = QueryOptions {
            dc: ctx.dc.clone(),
            index: (index > 0).then_some(index),
            wait: (index > 0).then_some(WATCH_WAIT),
            ..Default::default()
        };
        let (value, new_index) = match fetch(ctx, &a, &opts).await {
            Ok(r) => r,
            // Nothing was printed yet: a wrong address or argument is the user's to fix.
            Err(e) if last.is_none() => return Err(Failure::doing("watching", e)),
            Err(e) => {
                eprintln!("Error watching: {e}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        // An index that went backwards (a restored snapshot, another server): start over.
        index = if new_index < index {
            0
        } else {
            new_index.max(1)
        };
        if last.as_ref() == Some(&value) {
            if new_index == 0 {
                // A view without an index cannot block: poll it gently instead.
                tokio::time::sleep(POLL_WITHOUT_INDEX).await;
            }
            continue;
        }
        emit(&a.handler, &value).await?;
        last = Some(value);
        emitted += 1;
        if a.count.is_some_and(|n| emitted >= n) {
            return Ok(0);
        }
    }
}
