//! What every binary does with its process: stop on a signal, reload on `SIGHUP`, name itself
//! after the host.

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and systemd send); the binaries cancel
/// their shutdown token on it.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `SIGHUP`s, as Consul takes them: reload what is reloadable (`PUT /v1/agent/reload` does the
/// same). `None` when the handler cannot be installed (then only the endpoint reloads).
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// The next `SIGHUP` from [`hangups`]; never, without a handler.
pub async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) {
    match hangups {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// This host's name, for `--node`'s default (Consul defaults to the hostname).
pub fn hostname_or(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}
