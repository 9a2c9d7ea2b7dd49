//! What the catalog costs in memory, counted exactly: every allocation of this
//! test binary goes through a counting allocator, and 100,000 instances are
//! applied as the bench's measurement 5 registers them (10 per node, each its
//! own service with two tags and one check). A guard against regressions of
//! the in-memory forms (`state/stored.rs`, `state/catalog.rs`); the process's
//! RSS, which adds RocksDB, the binary and the allocator, is the bench's.

use registry_server::state::{CatalogState, Command, StateStore};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a
// counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes per instance the catalog may hold at most. 2026-12-01: 986 before the
/// services and checks were boxed in their B-trees, 784 after, 609 with the
/// rows grouped by node (`state/table.rs`) and the per-service indexes kept
/// with the names' instances, 485 with the strings of checks and instances
/// packed (`state/stored.rs`), 475 with the nodes boxed.
const MAX_BYTES_PER_INSTANCE: isize = 510;

#[test]
fn a_hundred_thousand_instances_stay_under_their_memory_budget() {
    const N: u64 = 100_000;
    let mut state = StateStore::new("dc1");
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for n in 0..N {
        let mut req = registry_testkit::workload::registration("mem", n, 10);
        CatalogState::validate_register(&mut req).unwrap();
        let (outcome, _rows) = state.apply(n + 1, 0, &Command::Register(req));
        outcome.unwrap();
    }
    let per_instance = (LIVE_BYTES.load(Ordering::Relaxed) - before) / N as isize;
    assert_eq!(state.catalog.sizes().2, N as usize, "every instance is in");
    eprintln!("the catalog holds {N} instances in {per_instance} bytes each");
    assert!(
        per_instance <= MAX_BYTES_PER_INSTANCE,
        "{per_instance} bytes per instance, more than {MAX_BYTES_PER_INSTANCE}"
    );
}
