//! The transport seam: "deliver this [`RpcMessage`] to that address".
//!
//! Two implementations of one small trait: [`super::tcp::TcpTransport`] for real servers and
//! [`super::mem::MemNetwork`] / [`super::mem::MemTransport`] for tests, whose links can be cut,
//! isolated, made lossy or slow (the `Network` of raft-rs' test harness). Sending never blocks and
//! never reports failure: Raft retransmits whatever is lost (Raft paper §5.3), so a message that
//! cannot go out now is simply dropped. Knows nothing of Raft or the catalog beyond the message type.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::RpcMessage;

/// Called for every message that arrives for this node: (sender's advertised address, message).
/// It must not block (it is called from tokio tasks); the node behind it uses try_send.
pub type Deliver = Arc<dyn Fn(String, RpcMessage) + Send + Sync>;

/// Sends messages to other servers by their advertised RPC address ("host:port", or any string for the in-memory network).
pub trait Transport: Send + Sync + 'static {
    /// Queue `msg` for `to`. NEVER blocks and never fails loudly: this is called from the Raft thread
    /// (a plain std thread, NOT inside a tokio runtime context), and Raft retransmits, so a message that cannot be
    /// delivered (peer down, queue full) is dropped (log at debug/trace).
    fn send(&self, to: &str, msg: RpcMessage);
}

/// Locks a mutex, ignoring poisoning: the maps behind it stay consistent because no critical
/// section here can panic half-way through an update.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
