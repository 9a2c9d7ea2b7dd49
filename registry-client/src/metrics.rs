//! What an agent measures, under Consul's names: its checks' runs by type and result
//! (`consul.agent.checks.runs`), the services and checks it holds, and, on a standalone
//! client, its HTTP requests by route (`consul.api.http`; a server's embedded agent is timed by
//! the server's router, which serves its routes). One registry per agent (tests run many in
//! one process). Owns: the agent's metric names. Must not touch: the metric types and their
//! renderings (`registry_api::metrics`).

use crate::agent::Agent;
use registry_api::metrics::{Counter, Family, Metrics, RequestMetrics, REQUEST_LABELS};
use std::sync::Arc;

/// An agent's metrics.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    /// The registry `/v1/agent/metrics` renders.
    pub registry: Metrics,
    /// Check runs by `type` (`http`, `tcp`, `grpc`) and `status` (the run's own result,
    /// before the thresholds).
    pub check_runs: Family<Counter>,
}

impl AgentMetrics {
    /// A fresh registry with the agent's metrics.
    pub fn new() -> Self {
        let registry = Metrics::new();
        let check_runs = registry.counter_family(
            "consul.agent.checks.runs",
            "Check runs by check type and result",
            &["type", "status"],
        );
        AgentMetrics {
            registry,
            check_runs,
        }
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Agent {
    /// This agent's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics.registry
    }

    /// Adds the gauges of what this agent holds, read when the metrics are rendered, and
    /// returns the request metrics of a standalone client's router.
    pub(crate) fn client_request_metrics(self: &Arc<Self>) -> RequestMetrics {
        let m = &self.metrics.registry;
        let services = m.gauge(
            "consul.agent.services",
            "Services registered with this agent",
        );
        let checks = m.gauge("consul.agent.checks", "Checks registered with this agent");
        let agent = Arc::downgrade(self);
        m.on_collect(move || {
            if let Some(agent) = agent.upgrade() {
                services.set(agent.services().len() as f64);
                checks.set(agent.checks().len() as f64);
            }
        });
        RequestMetrics {
            timer: m.timer_family(
                "consul.api.http",
                "HTTP requests by method and route (ms)",
                REQUEST_LABELS,
            ),
            counter: None,
            blocking: None,
        }
    }
}
