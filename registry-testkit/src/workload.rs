//! The bench's workload as requests (feature `workload`): what registry-bench sends and
//! what the memory measurements of the catalog apply (registry-server's
//! `tests/catalog_memory.rs` and `examples/catalog_memory.rs`), one copy of it.

use registry_api::{AgentService, HealthCheck, RegisterRequest};

/// The registration number `n`: node `{prefix}-node-{n / per_node}` (with an address made
/// from that number), service `{prefix}-svc-{n}` (its own name and id, tags `bench` and
/// `v1`, port 8080) with one passing check `{prefix}-svc-{n}:alive`. Measurement 5 fills
/// the catalog with prefix `mem` and 10 per node.
pub fn registration(prefix: &str, n: u64, per_node: u64) -> RegisterRequest {
    let node_no = n / per_node.max(1);
    let svc = format!("{prefix}-svc-{n}");
    RegisterRequest {
        node: format!("{prefix}-node-{node_no}"),
        address: format!(
            "10.{}.{}.{}",
            (node_no >> 16) & 255,
            (node_no >> 8) & 255,
            node_no & 255
        ),
        service: Some(AgentService {
            id: svc.clone(),
            service: svc.clone(),
            tags: vec!["bench".into(), "v1".into()],
            port: 8080,
            ..Default::default()
        }),
        check: Some(HealthCheck {
            check_id: format!("{svc}:alive"),
            name: "alive".into(),
            status: "passing".into(),
            service_id: svc,
            ..Default::default()
        }),
        ..Default::default()
    }
}
