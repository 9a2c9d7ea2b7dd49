//! Health checks: the agent's HTTP, TCP, gRPC and TTL checks, as Consul's agent runs them
//! (`agent/checks/check.go`, `grpc.go`, and
//! <https://developer.hashicorp.com/consul/docs/services/usage/checks>):
//!
//! - `spec`: a check definition, validated and normalised ([`parse_spec`]);
//! - `runner`: every check is its own task ([`CheckRunner`]), so a slow target only delays
//!   its own next run; interval results go through Consul's thresholds;
//! - `ttl`: a TTL check turns critical when it is not refreshed within its TTL;
//! - `outbox`: results reach the agent as [`CheckUpdate`]s on a bounded channel, and a full
//!   channel never blocks a check (it keeps the newest undelivered update, as an update is a
//!   whole state and only the newest one matters);
//! - the probes, one module per protocol: `http`, `tcp`, `grpc`, and `tls` for the
//!   certificate policy of HTTPS and gRPC over TLS.
//!
//! Owns: running checks and turning results into statuses. Must not touch: the agent's local
//! state, persistence or the catalog: the agent ([`crate::agent`]) consumes the updates.

mod grpc;
mod http;
mod outbox;
mod runner;
mod spec;
mod tcp;
mod tls;
mod ttl;

#[cfg(test)]
mod test_support;

pub use runner::{CheckRunner, CheckUpdate};
pub use spec::{parse_spec, CheckFields, CheckKind, CheckSpec, DEFAULT_TIMEOUT, MIN_INTERVAL};

use grpc::GrpcProbe;
use http::HttpProbe;
use registry_api::types::CRITICAL;
use std::time::Duration;
use tcp::TcpProbe;
use tokio::task::JoinHandle;

/// Most output kept from an HTTP body or a TTL update (Consul's `DefaultBufSize`, 4 KiB).
pub const OUTPUT_MAX_SIZE: usize = 4 * 1024;
/// Longest wait for one address of a check's target to accept the connection; the check's
/// own timeout, which covers the whole run, is usually shorter.
const DIAL_BOUND: Duration = Duration::from_secs(30);

/// One kind of probe, ready to run.
enum Probe {
    /// An HTTP(S) request.
    Http(HttpProbe),
    /// A TCP connect.
    Tcp(TcpProbe),
    /// A gRPC health call.
    Grpc(GrpcProbe),
    /// A check whose request cannot be built (bad method, header or TLS setup), or a TTL
    /// check handed to the wrong loop: every run reports this text as critical, the way
    /// Consul reports request-construction errors.
    Broken(String),
}

impl Probe {
    /// Prepares the probe once: request parts, TLS configuration.
    fn new(spec: &CheckSpec) -> Probe {
        match &spec.kind {
            CheckKind::Http {
                url,
                method,
                headers,
                body,
                tls_skip_verify,
            } => match HttpProbe::new(url, method, headers, body, *tls_skip_verify) {
                Ok(probe) => Probe::Http(probe),
                Err(e) => Probe::Broken(e),
            },
            CheckKind::Tcp { addr } => Probe::Tcp(TcpProbe { addr: addr.clone() }),
            CheckKind::Grpc {
                target,
                use_tls,
                tls_skip_verify,
            } => match GrpcProbe::new(target, *use_tls, *tls_skip_verify, spec.effective_timeout())
            {
                Ok(probe) => Probe::Grpc(probe),
                Err(e) => Probe::Broken(e),
            },
            CheckKind::Ttl { .. } => Probe::Broken("TTL checks are not probed".to_owned()),
        }
    }

    /// Runs once; returns the raw status and the output.
    async fn run(&self) -> (&'static str, String) {
        match self {
            Probe::Http(probe) => probe.run().await,
            Probe::Tcp(probe) => probe.run().await,
            Probe::Grpc(probe) => probe.run().await,
            Probe::Broken(reason) => (CRITICAL, reason.clone()),
        }
    }

    /// Output of a run that hit its timeout.
    fn timeout_output(&self, timeout: Duration) -> String {
        match self {
            Probe::Http(probe) => probe.timeout_output(timeout),
            Probe::Tcp(probe) => probe.timeout_output(timeout),
            Probe::Grpc(probe) => probe.timeout_output(timeout),
            Probe::Broken(reason) => reason.clone(),
        }
    }
}

/// Aborts a task when dropped, so no connection outlives the check run that opened it.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An error and its sources, joined with ": " like Go's wrapped errors.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
