//! Messages between servers on the RPC port (`--rpc-addr`, 8300), and the
//! transports that carry them: [`transport`] (the trait), [`tcp`] (production)
//! and [`mem`] (the faultable in-memory network of tests). Owns the wire form
//! of server-to-server messages; must not act on them (that is `raft/`).
//!
//! Everything is a one-way message: Raft traffic, and the small handshake that
//! forms the cluster (`Hello`) and adds servers to it (`Join`). Replies, where
//! there are any, are messages the other way. This keeps the transport a plain
//! "deliver these bytes to that address" that can be faulted in tests.

pub mod mem;
pub mod tcp;
pub mod transport;
#[cfg(test)]
mod transport_tests;

pub use mem::{MemNetwork, MemTransport};
pub use tcp::{HandedOver, HttpHandoff, RpcTls, TcpTransport};
pub use transport::{Deliver, Transport};

use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

/// What a server says about itself to the servers it knows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Raft id (random, chosen on first start, persisted; never reused).
    pub id: u64,
    /// Node name (`--node`).
    pub node: String,
    /// Advertised RPC address (`--advertise`), where Raft messages reach it.
    pub rpc_addr: String,
    /// HTTP address, for humans and `operator` replies.
    pub http_addr: String,
    /// Datacenter, so that servers of different DCs never form one cluster.
    pub datacenter: String,
}

/// Cluster-formation handshake.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender.
    pub from: PeerInfo,
    /// Whether the sender already belongs to a formed cluster (has a Raft configuration).
    pub in_cluster: bool,
    /// The sender's current view of the leader (Raft id, 0 if none).
    pub leader: u64,
    /// Whether this is an answer to a Hello (answers are not answered).
    pub reply: bool,
    /// Raft ids of the not-yet-clustered servers the sender has seen,
    /// itself included: servers bootstrap only once all their views agree.
    #[serde(default)]
    pub known: Vec<u64>,
}

/// An agent's liveness heartbeat (see `leader/liveness.rs`), passed from the server
/// that received it to the leader, which alone keeps last-seen times.
pub use registry_api::HeartbeatRequest as Heartbeat;

/// One message between servers.
#[derive(Clone, Debug, PartialEq)]
pub enum RpcMessage {
    /// A Raft message, delivered to the Raft node.
    Raft(Message),
    /// Handshake (see [`Hello`]).
    Hello(Hello),
    /// A server that has no cluster asks to be added as a learner.
    Join(PeerInfo),
    /// An agent heartbeat on its way to the leader.
    Heartbeat(Heartbeat),
    /// An agent heartbeat passed to the leader by a server that waits for
    /// the leader's [`RpcMessage::HeartbeatAck`] before answering the agent.
    HeartbeatForward(HeartbeatForward),
    /// The leader recorded the forwarded heartbeat with this id.
    HeartbeatAck(u64),
    /// The leader dropped these writes a follower forwarded, unproposed (its
    /// data directory is short of space, `storage/space.rs`).
    WritesRefused(WritesRefused),
    /// A follower too short of space to take new entries tells the leader,
    /// which refuses writes while too few voters can take them.
    TooFull(TooFull),
}

/// A follower that drops the leader's appends for want of disk space.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TooFull {
    /// Its Raft id.
    pub from: u64,
    /// Why, as the leader's refused callers are told.
    pub reason: String,
    /// Its last log index when it said so: an acknowledgement up to there
    /// (sent after the entries reached its disk, so possibly after this)
    /// shows nothing about its room now. 0 from servers that did not send it.
    #[serde(default)]
    pub last_index: u64,
}

/// Writes the leader would not put in its log, by the forwarding server's
/// request ids, and why (shown to the callers as it is).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WritesRefused {
    /// The forwarding server's request ids (the entries' contexts).
    pub ids: Vec<u64>,
    /// Why.
    pub reason: String,
}

/// A forwarded agent heartbeat that asks for an acknowledgement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatForward {
    /// Request id, echoed in the ack so the forwarding server finds its waiter.
    pub id: u64,
    /// Raft id of the forwarding server, where the ack goes.
    pub from: u64,
    /// The heartbeat itself.
    pub heartbeat: Heartbeat,
}

const TAG_RAFT: u8 = 1;
const TAG_HELLO: u8 = 2;
const TAG_JOIN: u8 = 3;
const TAG_HEARTBEAT: u8 = 4;
const TAG_HEARTBEAT_FORWARD: u8 = 5;
const TAG_HEARTBEAT_ACK: u8 = 6;
const TAG_WRITES_REFUSED: u8 = 7;
const TAG_TOO_FULL: u8 = 8;

/// Encodes a message: one tag byte, then protobuf (Raft) or JSON (handshake).
pub fn encode(msg: &RpcMessage) -> Vec<u8> {
    let (tag, body) = match msg {
        RpcMessage::Raft(m) => (
            TAG_RAFT,
            protobuf::Message::write_to_bytes(m).unwrap_or_default(),
        ),
        RpcMessage::Hello(h) => (TAG_HELLO, serde_json::to_vec(h).unwrap_or_default()),
        RpcMessage::Join(p) => (TAG_JOIN, serde_json::to_vec(p).unwrap_or_default()),
        RpcMessage::Heartbeat(h) => (TAG_HEARTBEAT, serde_json::to_vec(h).unwrap_or_default()),
        RpcMessage::HeartbeatForward(h) => (
            TAG_HEARTBEAT_FORWARD,
            serde_json::to_vec(h).unwrap_or_default(),
        ),
        RpcMessage::HeartbeatAck(id) => (TAG_HEARTBEAT_ACK, id.to_be_bytes().to_vec()),
        RpcMessage::WritesRefused(w) => (
            TAG_WRITES_REFUSED,
            serde_json::to_vec(w).unwrap_or_default(),
        ),
        RpcMessage::TooFull(t) => (TAG_TOO_FULL, serde_json::to_vec(t).unwrap_or_default()),
    };
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(&body);
    out
}

/// Whether `frame` carries a kind of message this version knows. A frame of a
/// newer kind (from a newer server, during a rolling upgrade) is skipped by
/// the reader rather than taken for garbage, which would close the
/// connection that also carries that server's Raft traffic.
pub fn known_kind(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(&(TAG_RAFT..=TAG_TOO_FULL)))
}

/// Decodes what [`encode`] produced. Bad bytes from the network are an error, not a panic.
pub fn decode(bytes: &[u8]) -> Result<RpcMessage, String> {
    let (tag, body) = bytes.split_first().ok_or("empty RPC frame")?;
    match *tag {
        TAG_RAFT => {
            let mut m = Message::default();
            protobuf::Message::merge_from_bytes(&mut m, body).map_err(|e| e.to_string())?;
            Ok(RpcMessage::Raft(m))
        }
        TAG_HELLO => serde_json::from_slice(body)
            .map(RpcMessage::Hello)
            .map_err(|e| e.to_string()),
        TAG_JOIN => serde_json::from_slice(body)
            .map(RpcMessage::Join)
            .map_err(|e| e.to_string()),
        TAG_HEARTBEAT => serde_json::from_slice(body)
            .map(RpcMessage::Heartbeat)
            .map_err(|e| e.to_string()),
        TAG_HEARTBEAT_FORWARD => serde_json::from_slice(body)
            .map(RpcMessage::HeartbeatForward)
            .map_err(|e| e.to_string()),
        TAG_HEARTBEAT_ACK => <[u8; 8]>::try_from(body)
            .map(|b| RpcMessage::HeartbeatAck(u64::from_be_bytes(b)))
            .map_err(|_| "heartbeat ack is not 8 bytes".to_string()),
        TAG_WRITES_REFUSED => serde_json::from_slice(body)
            .map(RpcMessage::WritesRefused)
            .map_err(|e| e.to_string()),
        TAG_TOO_FULL => serde_json::from_slice(body)
            .map(RpcMessage::TooFull)
            .map_err(|e| e.to_string()),
        t => Err(format!("unknown RPC message tag {t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut m = Message::default();
        m.set_to(2);
        m.set_from(1);
        m.set_term(7);
        let msg = RpcMessage::Raft(m);
        assert_eq!(decode(&encode(&msg)).unwrap(), msg);
        let refused = RpcMessage::WritesRefused(WritesRefused {
            ids: vec![3, 9],
            reason: "insufficient disk space".into(),
        });
        assert_eq!(decode(&encode(&refused)).unwrap(), refused);
        let full = RpcMessage::TooFull(TooFull {
            from: 2,
            reason: "short of space".into(),
            last_index: 41,
        });
        assert_eq!(decode(&encode(&full)).unwrap(), full);
        assert!(known_kind(&encode(&full)));
        assert!(decode(&[TAG_WRITES_REFUSED, b'[']).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 1, 2]).is_err());
        assert!(known_kind(&encode(&refused)) && known_kind(&[TAG_RAFT]));
        assert!(!known_kind(&[9, 1, 2]) && !known_kind(&[0]) && !known_kind(&[]));
        assert!(decode(&[TAG_HELLO, b'{']).is_err());
    }
}
