//! `registry lock <prefix> <command>`: runs a command while holding a lock in the KV store,
//! as `consul lock` does (<https://developer.hashicorp.com/consul/commands/lock>, with the
//! protocol of Consul's `api/lock.go`):
//!
//! 1. create a session (`TTL` 15s, behaviour `release`) and keep renewing it;
//! 2. acquire `<prefix>/.lock` with `?acquire=<session>` and Consul's lock flag value, waiting
//!    with blocking queries while another session holds it (and retrying after Consul's 5 s
//!    when a lock-delay refuses the acquire); a key with other flags is not a lock: conflict;
//! 3. run the command with `sh -c` in its own process group, and watch the key with blocking
//!    queries: if the session loses the key (or its renewal fails), the child is stopped
//!    (SIGTERM to its group, SIGKILL 5 s later) and we exit 1;
//! 4. when the child exits (or we get SIGINT/SIGTERM, which stop the child), release the key,
//!    delete it if no one holds it (Consul's `Destroy`), destroy the session.
//!
//! The exit code is the child's (128 + the signal when a signal ended it); 1 when the lock
//! could not be taken or was lost.
//!
//! Owns: the lock protocol on the client side. Must not touch: how the servers grant locks
//! and expire sessions.

use super::Ctx;
use crate::{CmdResult, Failure};
use clap::Args;
use registry_api::kv::KvPair;
use registry_api::{QueryOptions, RegistryClient};
use std::time::Duration;
use tokio::sync::watch;

/// Consul's `LockFlagValue`: marks a key as a lock (`api/lock.go`).
pub const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;
/// Consul's `DefaultLockSessionTTL`.
const SESSION_TTL: Duration = Duration::from_secs(15);
/// Consul's `DefaultLockWaitTime`: the blocking queries' wait.
const LOCK_WAIT: Duration = Duration::from_secs(15);
/// Consul's `DefaultLockRetryTime`: the wait after an acquire refused by a lock-delay.
const LOCK_RETRY: Duration = Duration::from_secs(5);
/// Between SIGTERM and SIGKILL for a child that must stop.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// `registry lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// Longest wait for the lock (e.g. `10s`; default: forever).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The session's name (default: "registry lock for <command> at <prefix>").
    #[arg(long)]
    pub name: Option<String>,
    /// Print each step on stderr.
    #[arg(long)]
    pub verbose: bool,
    /// The KV prefix; the lock is `<prefix>/.lock`.
    pub prefix: String,
    /// The command, run with `sh -c` (several words are joined with spaces).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    registry_api::duration::parse(s).map_err(|e| e.to_string())
}

/// Runs `lock`.
pub async fn run(ctx: &Ctx, a: LockArgs) -> CmdResult {
    let prefix = a.prefix.trim_matches('/');
    let key = format!("{prefix}/.lock");
    let command = a.command.join(" ");
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("registry lock for {command:?} at {prefix:?}"));
    let verbose = |msg: &str| {
        if a.verbose {
            eprintln!("{msg}");
        }
    };
    let client = &ctx.client;
    let session = client
        .session_create(&serde_json::json!({
            "Name": name,
            "TTL": registry_api::duration::format(SESSION_TTL),
            "Behavior": registry_api::kv::BEHAVIOR_RELEASE,
        }))
        .await
        .map_err(|e| Failure::doing("creating the session", e))?;
    verbose(&format!("Created session {session}"));
    // Renewal runs for the whole command; `lost` turns true when the session is gone.
    let (lost_tx, lost_rx) = watch::channel(false);
    let renewer = tokio::spawn(renew(client.clone(), session.clone(), lost_tx));

    let code = match acquire(ctx, &key, &session, a.timeout, lost_rx.clone()).await {
        Err(failure) => Err(failure),
        Ok(()) => {
            verbose(&format!("Lock acquired on {key}"));
            let result = hold(ctx, &key, &session, &command, lost_rx).await;
            if let Err(e) = release(client, &key, &session).await {
                eprintln!("{}", e.0);
            }
            verbose("Lock released");
            result
        }
    };
    renewer.abort();
    if let Err(e) = client.session_destroy(&session).await {
        eprintln!("Error destroying the session: {e}");
    }
    code
}

/// Renews `session` well inside its TTL (servers may expire it sooner than Consul's 2 × TTL)
/// until it is gone; then says so on `lost`.
async fn renew(client: RegistryClient, session: String, lost: watch::Sender<bool>) {
    let mut failures = 0;
    loop {
        tokio::time::sleep(SESSION_TTL / 10).await;
        match client.session_renew(&session).await {
            Ok(_) => failures = 0,
            Err(e) if e.status() == Some(404) => break,
            // A server that is briefly away: try again until the TTL would have run out.
            Err(_) if failures < 5 => failures += 1,
            Err(_) => break,
        }
    }
    let _ = lost.send(true);
}

/// The lock key as a read with `opts` finds it.
async fn read_key(
    client: &RegistryClient,
    key: &str,
    opts: &QueryOptions,
) -> Result<(Option<KvPair>, u64), Failure> {
    let (pairs, meta) = client
        .kv_get(key, opts, &[])
        .await
        .map_err(|e| Failure::doing("reading the lock", e))?;
    Ok((pairs.and_then(|p| p.into_iter().next()), meta.index))
}

/// Takes the lock, waiting while another session holds it.
async fn acquire(
    ctx: &Ctx,
    key: &str,
    session: &str,
    timeout: Option<Duration>,
    lost: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let work = async {
        let mut index = 0u64;
        loop {
            if *lost.borrow() {
                return Err(Failure(
                    "Error lock acquisition failed: the session expired".into(),
                ));
            }
            let opts = QueryOptions {
                dc: ctx.dc.clone(),
                index: (index > 0).then_some(index),
                wait: Some(LOCK_WAIT),
                ..Default::default()
            };
            let (pair, new_index) = read_key(&ctx.client, key, &opts).await?;
            if let Some(p) = &pair {
                if p.flags != LOCK_FLAG_VALUE {
                    return Err(Failure(format!(
                        "Error lock acquisition failed: {key} exists and is not a lock (existing key does not match lock use)"
                    )));
                }
                if p.session == session {
                    return Ok(());
                }
                if !p.session.is_empty() {
                    // Held by another session: wait for a change.
                    index = if new_index < index { 0 } else { new_index };
                    continue;
                }
            }
            let flags = LOCK_FLAG_VALUE.to_string();
            let mut q = ctx.dc_query();
            q.push(("acquire", session));
            q.push(("flags", &flags));
            let acquired = ctx
                .client
                .kv_put(key, Vec::new(), &q)
                .await
                .map_err(|e| Failure::doing("acquiring the lock", e))?;
            if acquired {
                return Ok(());
            }
            // Refused (a lock-delay after an invalidated holder): Consul waits and retries.
            tokio::time::sleep(LOCK_RETRY).await;
            index = 0;
        }
    };
    match timeout {
        None => work.await,
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or_else(|_| Err(Failure("Error lock acquisition failed: timeout".into()))),
    }
}

/// Runs the child while the lock is held; its exit code, or 1 when the lock was lost.
async fn hold(
    ctx: &Ctx,
    key: &str,
    session: &str,
    command: &str,
    mut lost: watch::Receiver<bool>,
) -> CmdResult {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::doing("starting the child", e))?;
    let pid = child.id();
    let monitor = monitor(ctx, key, session);
    tokio::pin!(monitor);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::doing("installing signal handlers", e))?;
    let reason = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| Failure::doing("waiting for the child", e))?;
            return Ok(exit_code(status));
        }
        _ = &mut monitor => "Lock lost, killing child",
        _ = lost.wait_for(|l| *l) => "Lock lost (session expired), killing child",
        _ = tokio::signal::ctrl_c() => "Shutdown triggered, killing child",
        _ = sigterm.recv() => "Shutdown triggered, killing child",
    };
    eprintln!("{reason}");
    stop_child(&mut child, pid).await;
    Ok(1)
}

/// Resolves once `session` no longer holds `key` (blocking queries; read errors retried).
async fn monitor(ctx: &Ctx, key: &str, session: &str) {
    let mut index = 0u64;
    let mut errors = 0;
    loop {
        let opts = QueryOptions {
            dc: ctx.dc.clone(),
            index: (index > 0).then_some(index),
            wait: Some(LOCK_WAIT),
            ..Default::default()
        };
        match read_key(&ctx.client, key, &opts).await {
            Ok((pair, new_index)) => {
                errors = 0;
                if pair.is_none_or(|p| p.session != session) {
                    return;
                }
                index = if new_index < index { 0 } else { new_index };
            }
            // Consul's `MonitorRetries`: a few failed reads are not a lost lock.
            Err(_) if errors < 3 => {
                errors += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => return,
        }
    }
}

/// SIGTERM to the child's process group, SIGKILL after [`KILL_GRACE`].
async fn stop_child(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
    }
}

/// The shell's convention: the code, or 128 + the signal that ended the process.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Releases the lock and deletes the key if no one else took it meanwhile (Consul's
/// `Unlock` then `Destroy`).
async fn release(client: &RegistryClient, key: &str, session: &str) -> Result<(), Failure> {
    let flags = LOCK_FLAG_VALUE.to_string();
    client
        .kv_put(key, Vec::new(), &[("release", session), ("flags", &flags)])
        .await
        .map_err(|e| Failure::doing("releasing the lock", e))?;
    let (pair, _) = read_key(client, key, &QueryOptions::default()).await?;
    if let Some(p) = pair.filter(|p| p.session.is_empty() && p.flags == LOCK_FLAG_VALUE) {
        let cas = p.modify_index.to_string();
        client
            .kv_delete(key, &[("cas", &cas)])
            .await
            .map_err(|e| Failure::doing("deleting the lock", e))?;
    }
    Ok(())
}
