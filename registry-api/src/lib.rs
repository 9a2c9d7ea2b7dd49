//! Wire types, error type and typed client shared by every registry process.
//!
//! The JSON shapes are Consul's v1 HTTP API field for field
//! (<https://developer.hashicorp.com/consul/api-docs>), so that existing Consul
//! tooling can talk to us unchanged.

pub mod acl;
pub mod agent;
pub mod auth;
pub mod client;
pub mod config_file;
pub mod decode;
pub mod duration;
pub mod error;
pub mod event;
pub mod federated;
pub mod filter;
pub mod forward;
#[cfg(feature = "serve")]
pub mod health;
#[cfg(feature = "serve")]
pub mod http_error;
pub mod ids;
#[cfg(feature = "serve")]
pub mod init;
pub mod kv;
pub mod limits;
#[cfg(feature = "serve")]
pub mod logs;
#[cfg(feature = "serve")]
pub mod metrics;
pub mod metrics_summary;
pub mod names;
#[cfg(feature = "serve")]
pub mod process;
pub mod query;
#[cfg(feature = "resolve")]
pub mod resolve;
#[cfg(feature = "serve")]
pub mod serve;
pub mod service_def;
pub mod snapshot;
pub mod tls;
pub mod types;

pub use agent::*;
pub use client::{QueryMeta, QueryOptions, RegistryClient};
pub use error::Error;
pub use types::*;
