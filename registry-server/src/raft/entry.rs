//! What a Raft log entry carries: a normal entry holds an [`Envelope`] (a
//! versioned command with the proposer's request id, which also rides in the
//! entry's context, and the leader's time), a conf-change entry a
//! [`ConfContext`]. Owns the encoding of entries and the one wall clock of
//! the server ([`now_ms`]); must not apply them.

use super::Fatal;
use crate::rpc::PeerInfo;
use crate::state::command::LogForm;
use crate::state::Command;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use serde::{Deserialize, Serialize};

/// What travels in a normal Raft entry: a versioned envelope around a command,
/// so that a newer binary still reads an older log. Written by
/// [`encode_envelope`], in this order.
#[derive(Deserialize)]
pub(super) struct Envelope {
    /// Format version; only 1 exists.
    pub(super) v: u32,
    /// Request id, to find the waiting caller on the server that proposed it.
    pub(super) id: u64,
    /// When it was appended to the log: the leader's wall clock, ms since
    /// the epoch (the proposer stamps it, and the leader restamps every
    /// normal entry it appends, see [`restamp`]). The state machine's only
    /// notion of time (lock-delays, session renewals), so every replica
    /// computes the same outcome and a follower's clock skew does not move
    /// it; entries written before the field existed read as 0.
    #[serde(default)]
    pub(super) at: u64,
    /// The command.
    pub(super) cmd: Command,
}

/// A normal entry's data: the [`Envelope`] of `cmd`, the command in the
/// log's form ([`Command::log_form`]).
pub(super) fn encode_envelope(id: u64, at: u64, cmd: &Command) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Out<'a> {
        v: u32,
        id: u64,
        at: u64,
        cmd: LogForm<'a>,
    }
    serde_json::to_vec(&Out {
        v: 1,
        id,
        at,
        cmd: cmd.log_form(),
    })
}

/// The wall clock in ms since the epoch: the one clock of this server (log
/// entries' time, session TTLs, lock-delays), offset by `skew_ms` (0 but in
/// tests, see `RaftHandle::set_clock_skew`).
pub(super) fn now_ms(skew_ms: i64) -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    wall.saturating_add_signed(skew_ms)
}

/// Sets a normal entry's time to `at`, the leader's clock, keeping its
/// request id and its command's bytes as they are. Consul stamps time on the
/// leader, so lock-delays and session renewals never depend on the clock of
/// the server a client happened to reach.
///
/// Only the envelope's head (`{"v":..,"id":..,"at":..` before `,"cmd":`,
/// the order [`encode_envelope`] writes) is rewritten: the command is not
/// decoded and encoded again, so a field this binary does not know (a newer
/// follower's) is not dropped, and the command keeps its `Op`-first form for
/// the fast decoder. An entry of any other form is left alone: applying it
/// decides the same way on every replica ([`decode_command`]).
pub(super) fn restamp(e: &mut Entry, at: u64) {
    if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
        return;
    }
    if let Some(data) = restamped(&e.data, at) {
        e.data = data.into();
    }
}

/// `data` with its envelope's time set to `at`, or `None` when its head is
/// not the `v`, `id` and optional `at` numbers this binary writes.
fn restamped(data: &[u8], at: u64) -> Option<Vec<u8>> {
    const CMD: &[u8] = b",\"cmd\":";
    let cmd_at = data.windows(CMD.len()).position(|w| w == CMD)?;
    let head = std::str::from_utf8(&data[..cmd_at])
        .ok()?
        .strip_prefix('{')?;
    let (mut v, mut id) = (None, None);
    for field in head.split(',') {
        let (key, value) = field.split_once(':')?;
        match key {
            "\"v\"" => v = Some(value.parse::<u32>().ok()?),
            "\"id\"" => id = Some(value.parse::<u64>().ok()?),
            "\"at\"" => {
                value.parse::<u64>().ok()?;
            }
            _ => return None,
        }
    }
    let mut out = format!("{{\"v\":{},\"id\":{},\"at\":{at}", v?, id?).into_bytes();
    out.extend_from_slice(&data[cmd_at..]);
    Some(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::session::SessionId;

    fn entry(env: &Envelope) -> Entry {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryNormal);
        e.index = 7;
        e.data = encode_envelope(env.id, env.at, &env.cmd).unwrap().into();
        e.context = env.id.to_be_bytes().to_vec().into();
        e
    }

    #[test]
    fn restamping_sets_the_leaders_time_and_keeps_the_request_id_and_command() {
        let cmd = Command::SessionRenew(SessionId {
            id: "s1".to_string(),
        });
        let mut e = entry(&Envelope {
            v: 1,
            id: 42,
            // A follower whose clock runs an hour ahead.
            at: 5_000_000,
            cmd: cmd.clone(),
        });
        restamp(&mut e, 1_400_000);
        let env = decode_command(&e).unwrap();
        assert_eq!((env.v, env.id, env.at), (1, 42, 1_400_000));
        assert_eq!(env.cmd, cmd);
        assert_eq!(context_request_id(&e), Some(42));
        // Entries that are not commands are left as they are.
        let mut empty = Entry::default();
        restamp(&mut empty, 9);
        assert!(empty.data.is_empty());
    }

    /// The command's bytes are kept as they are: a field this binary does not
    /// know survives, and an envelope from before `at` gains one.
    #[test]
    fn restamping_rewrites_only_the_envelopes_head() {
        let cmd = br#"{"Op":"SessionRenew","ID":"s1","NewerField":[1,2]}"#;
        for head in [r#"{"v":1,"id":42,"at":5000000"#, r#"{"v":1,"id":42"#] {
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryNormal);
            let mut data = head.as_bytes().to_vec();
            data.extend_from_slice(b",\"cmd\":");
            data.extend_from_slice(cmd);
            data.push(b'}');
            e.data = data.into();
            restamp(&mut e, 1_400_000);
            let mut want = br#"{"v":1,"id":42,"at":1400000,"cmd":"#.to_vec();
            want.extend_from_slice(cmd);
            want.push(b'}');
            assert_eq!(&e.data[..], &want[..], "{head}");
            assert_eq!(decode_command(&e).unwrap().at, 1_400_000);
        }
        // A head of another form (a field this binary does not know) is left alone.
        let odd = br#"{"v":1,"id":42,"x":"y","cmd":{"Op":"SessionRenew","ID":"s1"}}"#;
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryNormal);
        e.data = odd.to_vec().into();
        restamp(&mut e, 9);
        assert_eq!(&e.data[..], &odd[..]);
    }

    #[test]
    fn the_clock_skew_offsets_the_wall_clock_both_ways() {
        let (behind, now, ahead) = (now_ms(-60_000), now_ms(0), now_ms(60_000));
        assert!(now - behind >= 59_000 && now - behind <= 61_000);
        assert!(ahead - now >= 59_000 && ahead - now <= 61_000);
    }
}
