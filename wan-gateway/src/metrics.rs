//! What a gateway measures, under Consul's naming: requests it forwarded, per destination
//! datacenter, with their latency (`consul.wan_gateway.forward`, a timer whose count is the
//! number of forwards) and the ones that failed (`consul.wan_gateway.forward.errors`), and the
//! WAN members it knows. One registry per gateway (tests run many in one process), served at
//! `GET /v1/agent/metrics` (JSON, or Prometheus text with `?format=prometheus`).
//!
//! The `dc` label takes only datacenters a route was found for (this one, or one the member
//! table knows); a `?dc=` naming no known datacenter counts under `unknown`, so a client
//! cannot grow the label set. Owns: the gateway's metric names. Must not touch: the metric
//! types (`registry_api::metrics`).

use crate::error::GatewayError;
use registry_api::metrics::{Counter, Family, Metrics, Timer};
use std::time::Instant;

/// A gateway's metrics.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    /// The registry.
    pub registry: Metrics,
    /// Forwards by destination `dc`, with their latency.
    pub forwards: Family<Timer>,
    /// Forwards that failed, by destination `dc`.
    pub errors: Family<Counter>,
}

impl GatewayMetrics {
    /// A fresh registry with the gateway's metrics.
    pub fn new() -> Self {
        let registry = Metrics::new();
        GatewayMetrics {
            forwards: registry.timer_family(
                "consul.wan_gateway.forward",
                "Requests forwarded, by destination datacenter (ms)",
                &["dc"],
            ),
            errors: registry.counter_family(
                "consul.wan_gateway.forward.errors",
                "Forwarded requests that failed, by destination datacenter",
                &["dc"],
            ),
            registry,
        }
    }

    /// Records one forward to `dc` started at `started` that ended with `result`.
    pub fn record<T>(&self, dc: &str, started: Instant, result: &Result<T, GatewayError>) {
        let dc = match result {
            Err(GatewayError::NoPathToDc) => "unknown",
            _ => dc,
        };
        self.forwards.with(&[dc]).since(started);
        if result.is_err() {
            self.errors.with(&[dc]).inc();
        }
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}
