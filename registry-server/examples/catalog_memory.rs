//! The catalog's own memory, without RocksDB, Raft or HTTP: applies N
//! registrations shaped like the benchmark's (10 instances per node, each its
//! own service with one passing check) to a bare `CatalogState` and prints the
//! growth of this process's RSS. BENCHMARKS.md quotes it.
//!
//!     cargo run --release -p registry-server --example catalog_memory [N]

/// The server's allocator (src/main.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use registry_server::state::{CatalogState, Command};

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}
fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(100_000);
    let mut s = CatalogState::new("dc1");
    let before = rss();
    for i in 0..n {
        let req = registry_testkit::workload::registration("mem", i, 10);
        let mut req = req;
        CatalogState::validate_register(&mut req).unwrap();
        let (r, _rows) = s.apply(i + 2, &Command::Register(req));
        r.unwrap();
    }
    let after = rss();
    println!(
        "{n} instances: catalog RSS +{} MB ({} B/instance)",
        (after - before) / 1024,
        (after - before) * 1024 / n
    );
    let rows = s.rows();
    let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
    println!(
        "rows: {} rows, {} MB; RSS now {} MB",
        rows.len(),
        bytes >> 20,
        rss() / 1024
    );
}
