//! Test support: a client agent started in-process and an HTTP client for it. The fakes
//! (a fake registry server, a fixed-answer server, a check target) and the bounded wait are
//! the testkit's, re-exported here.

// Each test file uses a different part of this module and of what it re-exports.
#![allow(dead_code, unused_imports)]

use registry_client::{ClientConfig, ClientHandle};
pub use registry_testkit::fakes::catalog::*;
pub use registry_testkit::fakes::{dead_addr, FixedAnswer, Target};
pub use registry_testkit::wait_until;
use std::net::SocketAddr;
use std::time::Duration;

/// A client configuration for tests: short intervals, loopback, servers `servers`.
pub fn test_config(node: &str, servers: &[SocketAddr]) -> ClientConfig {
    let mut c = ClientConfig::new(node);
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.retry_join = servers.iter().map(|a| a.to_string()).collect();
    c.sync_interval = Duration::from_millis(300);
    c.heartbeat_interval = Duration::from_millis(100);
    c
}

/// Starts a client agent.
pub async fn start_agent(config: ClientConfig) -> ClientHandle {
    registry_client::start(config).await.unwrap()
}

/// A test HTTP client for an agent.
pub struct Api {
    /// The agent's base URL.
    pub base: String,
    /// Shared client.
    pub http: reqwest::Client,
}

impl Api {
    /// For the agent at `addr`.
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: registry_api::tls::plain_client(),
        }
    }

    /// PUT with a body; returns status and text.
    pub async fn put(&self, path: &str, body: &str) -> (u16, String) {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// GET; returns status and text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// GET and decode JSON (asserting 200).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (status, text) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}
