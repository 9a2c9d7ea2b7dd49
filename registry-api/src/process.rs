//! What every binary does with its process: stop on a signal, name itself after the host.

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

/// This host's name, for `--node`'s default (Consul defaults to the hostname).
pub fn hostname_or(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}
