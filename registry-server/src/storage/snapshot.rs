//! The snapshot image: what a Raft snapshot carries besides Raft's metadata,
//! in a versioned format a newer binary still reads. Must not know what the
//! rows mean.

use crate::rpc::PeerInfo;
use std::collections::BTreeMap;

/// What a snapshot carries besides Raft's metadata: the peer address book
/// (a server that joins by snapshot must learn where the others are) and the
/// catalog rows.
#[derive(Debug, Default, PartialEq)]
pub struct SnapshotImage {
    /// Known servers.
    pub peers: BTreeMap<u64, PeerInfo>,
    /// Catalog rows.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Version byte of the snapshot format; a newer binary must still read older ones.
const SNAPSHOT_V1: u8 = 1;

impl SnapshotImage {
    /// Encodes as: version, peers JSON (length-prefixed), then length-prefixed rows.
    pub fn encode(&self) -> Vec<u8> {
        let peers = serde_json::to_vec(&self.peers).unwrap_or_default();
        let size: usize = self.rows.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut out = Vec::with_capacity(1 + 4 + peers.len() + size);
        out.push(SNAPSHOT_V1);
        out.extend_from_slice(&(peers.len() as u32).to_be_bytes());
        out.extend_from_slice(&peers);
        for (k, v) in &self.rows {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    /// Decodes [`SnapshotImage::encode`]'s output.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if data.len() < n {
                return Err("truncated".into());
            }
            let (head, rest) = data.split_at(n);
            *data = rest;
            Ok(head)
        }
        fn take_len(data: &mut &[u8]) -> Result<usize, String> {
            let b = take(data, 4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        if data.is_empty() {
            return Ok(Self::default());
        }
        let mut rest = data;
        let version = take(&mut rest, 1)?[0];
        if version != SNAPSHOT_V1 {
            return Err(format!("unknown snapshot version {version}"));
        }
        let n = take_len(&mut rest)?;
        let peers = serde_json::from_slice(take(&mut rest, n)?).map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        while !rest.is_empty() {
            let kn = take_len(&mut rest)?;
            let k = take(&mut rest, kn)?.to_vec();
            let vn = take_len(&mut rest)?;
            let v = take(&mut rest, vn)?.to_vec();
            rows.push((k, v));
        }
        Ok(Self { peers, rows })
    }
}
