//! Compatibility only: registry-server's test support (TestCluster and its builder, the
//! fixtures, `wait_until`) lives in registry-testkit's `cluster` module. New tests say
//! `use registry_testkit::cluster::*;` instead of `mod common;`; this file goes once no
//! test file includes it.
#![allow(unused_imports)]

pub use registry_testkit::cluster::*;
