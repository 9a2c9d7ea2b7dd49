//! The leader sampler: every 100 ms, each dc1 server's `GET /v1/agent/self`,
//! whose `Stats.raft` (as Consul's: strings, `"state": "Leader"`, `"term": "7"`)
//! says what the server believes it is. Two servers that each call themselves
//! leader of the same term is split brain (Raft paper, section 5.2: at most
//! one leader per term).

use crate::lab::Lab;
use crate::record::{lock, Recorder};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the sampler saw.
#[derive(Default)]
pub struct LeaderLog {
    /// term -> the servers that said they led it.
    pub leaders: BTreeMap<u64, BTreeSet<String>>,
    /// Answers that carried `Stats.raft` (0: the field is missing, nothing checked).
    pub samples: u64,
    /// Answers without it.
    pub without_stats: u64,
}

/// How often each server is asked.
const EVERY: Duration = Duration::from_millis(100);

/// One server's view: (node name, state, term), or None when it did not
/// answer or has no `Stats.raft`; `Some(None)` when it answered without it.
async fn sample(http: &reqwest::Client, url: &str) -> Option<Option<(String, String, u64)>> {
    let resp = http.get(format!("{url}/v1/agent/self")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let j: Value = resp.json().await.ok()?;
    let raft = &j["Stats"]["raft"];
    let state = raft["state"].as_str();
    // Consul sends every stat as a string; accept a number too.
    let term = match &raft["term"] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    let name = j["Config"]["NodeName"].as_str().unwrap_or(url).to_string();
    Some(match (state, term) {
        (Some(s), Some(t)) => Some((name, s.to_string(), t)),
        _ => None,
    })
}

/// Samples every server, each on its own clock (a paused server must not
/// slow the samples of the others), until `stop` turns true; logs each
/// (term, leader) the first time it is seen.
pub async fn run(
    lab: Arc<Lab>,
    rec: Arc<Recorder>,
    log: Arc<Mutex<LeaderLog>>,
    stop: watch::Receiver<bool>,
) {
    let http = match registry_api::tls::client_builder(None)
        .default_headers(crate::clients::token_headers())
        .timeout(Duration::from_secs(1))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            rec.event(format!("leader sampler: no HTTP client: {e}"));
            return;
        }
    };
    let mut samplers = JoinSet::new();
    for s in &lab.servers {
        let (http, url, rec, log, mut stop) = (
            http.clone(),
            s.url.clone(),
            rec.clone(),
            log.clone(),
            stop.clone(),
        );
        samplers.spawn(async move {
            while !*stop.borrow() {
                if let Some(answer) = sample(&http, &url).await {
                    note(&rec, &log, answer);
                }
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    r = stop.changed() => if r.is_err() { break },
                }
            }
        });
    }
    while samplers.join_next().await.is_some() {}
}

/// Records one answer.
fn note(rec: &Recorder, log: &Mutex<LeaderLog>, answer: Option<(String, String, u64)>) {
    let mut l = lock(log);
    let Some((name, state, term)) = answer else {
        l.without_stats += 1;
        return;
    };
    l.samples += 1;
    if state != "Leader" || !l.leaders.entry(term).or_default().insert(name.clone()) {
        return;
    }
    let others: Vec<String> = l.leaders[&term]
        .iter()
        .filter(|n| **n != name)
        .cloned()
        .collect();
    drop(l);
    if others.is_empty() {
        rec.event(format!("leader: {name} leads term {term}"));
    } else {
        rec.event(format!(
            "TWO LEADERS: {name} leads term {term}, as did {others:?}"
        ));
    }
}
