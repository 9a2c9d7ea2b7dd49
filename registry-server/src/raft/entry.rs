//! What a Raft log entry carries: a normal entry holds an [`Envelope`] (a
//! versioned command with the proposer's request id, which also rides in the
//! entry's context), a conf-change entry a [`ConfContext`]. Owns the encoding
//! of entries; must not apply them.

use super::Fatal;
use crate::rpc::PeerInfo;
use crate::state::Command;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use serde::{Deserialize, Serialize};

/// What travels in a normal Raft entry: a versioned envelope around a command,
/// so that a newer binary still reads an older log.
#[derive(Serialize, Deserialize)]
pub(super) struct Envelope {
    /// Format version; only 1 exists.
    pub(super) v: u32,
    /// Request id, to find the waiting caller on the server that proposed it.
    pub(super) id: u64,
    /// When it was proposed: the proposer's wall clock, ms since the epoch.
    /// The state machine's only notion of time (lock-delays, session
    /// renewals), so every replica computes the same outcome; entries
    /// written before the field existed read as 0.
    #[serde(default)]
    pub(super) at: u64,
    /// The command.
    pub(super) cmd: Command,
}

/// The wall clock in ms since the epoch, as a proposal records it.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What travels in a conf-change entry's context.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct ConfContext {
    /// Request id of the caller, 0 when nobody waits.
    pub(super) id: u64,
    /// The server being added (so every member learns its address).
    pub(super) peer: Option<PeerInfo>,
}

/// The request id in a normal entry's context, if it has one (see
/// `RaftNode::drop_late_proposals`).
pub(super) fn context_request_id(e: &Entry) -> Option<u64> {
    <[u8; 8]>::try_from(&e.context[..])
        .ok()
        .map(u64::from_be_bytes)
}

/// Decodes a committed normal entry's command. An entry this binary cannot
/// read is fatal: applying anything after it would let replicas diverge.
pub(super) fn decode_command(e: &Entry) -> Result<Envelope, Fatal> {
    let env: Envelope =
        serde_json::from_slice(&e.data).map_err(|err| Fatal::BadEntry(e.index, err.to_string()))?;
    if env.v != 1 {
        return Err(Fatal::BadEntry(
            e.index,
            format!("unknown envelope version {}", env.v),
        ));
    }
    Ok(env)
}

/// Either form of conf change raft-rs may hand back in the log.
pub(super) enum AnyConfChange {
    /// raft-rs' first form.
    V1(ConfChange),
    /// The joint-consensus form, which this server proposes.
    V2(ConfChangeV2),
}

/// A conf-change entry's change and context.
pub(super) fn decode_conf_change(e: &Entry) -> Result<(AnyConfChange, Vec<u8>), Fatal> {
    let bad = |err: protobuf::ProtobufError| Fatal::BadEntry(e.index, err.to_string());
    if e.get_entry_type() == EntryType::EntryConfChange {
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(bad)?;
        // RawNode::propose_conf_change puts its context on the entry.
        let ctx = e.context.to_vec();
        Ok((AnyConfChange::V1(cc), ctx))
    } else {
        let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(bad)?;
        let ctx = e.context.to_vec();
        Ok((AnyConfChange::V2(cc), ctx))
    }
}
