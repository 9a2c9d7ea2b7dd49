//! Test support shared by the workspace's integration tests (`tests/` of every crate, as a
//! dev-dependency) and by registry-bench's lab-chaos.
//!
//! - [`wait`]: the one bounded wait ([`wait_until`]) and its negative ([`never_within`]).
//! - [`history`]: a recorded history of client operations and the linearizability checker.
//! - [`locks`]: a recorded history of clients taking a KV lock with sessions, and the checks
//!   that no two held it at once (registry-server's chaos test).
//! - `cluster` (feature `cluster`): a `TestCluster` of real servers in one process, built
//!   with `TestCluster::builder`, and the fixtures server tests share.
//! - `fakes` (feature `fakes`): a fake registry server (`fakes::catalog`), a fake datacenter
//!   (`fakes::dc`), an HTTP check target, a server with one fixed answer, a dead address.
//! - `dns` (feature `dns`): DNS queries through hickory's client over UDP and TCP, and raw
//!   datagrams for the malformed ones.
//! - [`process`]: free loopback ports and a kill-on-drop child, for tests of the built
//!   binaries.
//! - `pki` (feature `pki`): a private CA and server/client certificates in a temp dir, and
//!   the TLS settings that use them.
//! - `workload` (feature `workload`): the bench's registrations, for the bench and for the
//!   catalog's memory measurements.
//!
//! Owns: test helpers used by more than one test binary or crate. Must not touch: product
//! code; no product crate may depend on this one (it is `publish = false`). A helper that
//! needs a product crate sits behind a feature, so the crates that do not need it do not
//! build it. Such a helper serves integration tests (`tests/`) only: a unit test in `src/`
//! of the crate under test would see two copies of that crate and types that do not match.

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "fakes")]
pub mod fakes;
pub mod history;
pub mod locks;
#[cfg(feature = "pki")]
pub mod pki;
pub mod process;
pub mod wait;
#[cfg(feature = "workload")]
pub mod workload;

pub use wait::{never_within, wait_until};
