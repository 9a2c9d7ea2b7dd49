//! TCP checks: passing when a connection to `host:port` opens within the timeout.
//!
//! Owns: the connect and its output texts. Must not touch: scheduling and thresholds
//! ([`super::runner`]).

use registry_api::types::{CRITICAL, PASSING};
use std::time::Duration;

/// A TCP check's target.
pub(super) struct TcpProbe {
    /// `host:port`, as configured.
    pub(super) addr: String,
}

impl TcpProbe {
    /// One connect; the connection is closed at once.
    pub(super) async fn run(&self) -> (&'static str, String) {
        let addr = &self.addr;
        // Names through the pure-Rust resolver (the static binary's glibc cannot resolve).
        match registry_api::resolve::connect(addr, super::DIAL_BOUND).await {
            Ok(_) => (PASSING, format!("TCP connect {addr}: Success")),
            Err(e) => (CRITICAL, format!("dial tcp {addr}: {e}")),
        }
    }

    /// Output of a run that hit its timeout.
    pub(super) fn timeout_output(&self, timeout: Duration) -> String {
        format!("dial tcp {}: i/o timeout after {timeout:?}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use crate::checks::test_support::*;
    use crate::checks::{CheckKind, CheckRunner};
    use registry_api::types::{CRITICAL, PASSING};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn tcp_open_port_passes_and_closed_port_is_critical() {
        let open = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open_addr = open.local_addr().expect("addr");
        let closed_addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr")
        };
        let (tx, mut rx) = mpsc::channel(16);
        let tcp = |addr: SocketAddr| {
            fast(CheckKind::Tcp {
                addr: addr.to_string(),
            })
        };
        let _open = CheckRunner::start("open".into(), tcp(open_addr), CRITICAL.into(), tx.clone());
        let _closed = CheckRunner::start("closed".into(), tcp(closed_addr), PASSING.into(), tx);
        let mut first = BTreeMap::new();
        while first.len() < 2 {
            let update = next_update(&mut rx).await;
            first.entry(update.check_id.clone()).or_insert(update);
        }
        assert_eq!(first["open"].status, PASSING);
        assert_eq!(
            first["open"].output,
            format!("TCP connect {open_addr}: Success")
        );
        assert_eq!(first["closed"].status, CRITICAL);
        assert!(
            first["closed"]
                .output
                .starts_with(&format!("dial tcp {closed_addr}: ")),
            "{}",
            first["closed"].output
        );
    }
}
