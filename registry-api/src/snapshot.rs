//! The snapshot archive of `GET|PUT /v1/snapshot` (Consul's
//! <https://developer.hashicorp.com/consul/api-docs/snapshot>): one format, written by the
//! server, restored by the server, and read by the CLI (`registry snapshot inspect`). Owns the
//! container (framing, version, checksum, compression); must not know what a row means (the
//! server's `state/rows.rs` owns the row keys and values).
//!
//! An archive is one gzip stream whose content is:
//!
//! | part | bytes |
//! |---|---|
//! | magic | `RGSNAP\r\n` (8; the `\r\n` catches a text-mode copy) |
//! | version | u32, big-endian ([`SNAPSHOT_VERSION`]) |
//! | header | u32 length, then [`SnapshotHeader`] as JSON |
//! | rows | `header.Rows` times: u32 key length, key, u32 value length, value |
//! | checksum | SHA-256 of every byte above (32) |
//!
//! The rows are the server's storage rows, in the encoding its Raft snapshots use. gzip has
//! its own CRC, but the SHA-256 covers the content whatever carried it, and is what
//! [`SnapshotInfo::checksum`] reports. Reading checks everything (gzip, magic, version, header,
//! every row's framing, the checksum, nothing after it) before it returns a row, so a restore
//! refuses a damaged archive before it proposes anything. Reading is bounded: at most
//! [`MAX_EXPANDED`] bytes of content and [`MAX_ROW`] bytes per key or value, so a small
//! archive cannot expand into an unbounded allocation.

// The `bufread` decoder reads no further than the gzip stream, so what follows it is seen.
use flate2::bufread::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// The only version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// First bytes of an archive's content.
const MAGIC: &[u8; 8] = b"RGSNAP\r\n";
/// Largest archive `PUT /v1/snapshot` accepts (larger: 413).
pub const MAX_ARCHIVE: usize = 64 << 20;
/// Largest content an archive may expand to.
pub const MAX_EXPANDED: u64 = 1 << 30;
/// Largest key or value of one row.
pub const MAX_ROW: usize = 16 << 20;
/// Largest header.
const MAX_HEADER: usize = 1 << 20;
/// Length of the SHA-256 checksum.
const CHECKSUM_LEN: usize = 32;

/// What an archive says about itself, inside the checksum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotHeader {
    /// The Raft index of the applied state it holds.
    pub index: u64,
    /// The Raft term at that point.
    pub term: u64,
    /// The datacenter it was taken in.
    pub datacenter: String,
    /// The server that took it.
    #[serde(default)]
    pub node: String,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// Number of rows.
    pub rows: u64,
    /// Rows per table (the server names the tables).
    #[serde(default)]
    pub tables: BTreeMap<String, u64>,
}

/// What `registry snapshot inspect` shows: the header and what reading the archive found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotInfo {
    /// Archive format version.
    pub version: u32,
    /// The Raft index of the state it holds.
    pub index: u64,
    /// The Raft term at that point.
    pub term: u64,
    /// The datacenter it was taken in.
    pub datacenter: String,
    /// The server that took it.
    pub node: String,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// The archive's size in bytes (compressed, as stored).
    pub size: u64,
    /// `sha256:<hex>` of the content (verified).
    pub checksum: String,
    /// Number of rows.
    pub rows: u64,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
}

/// Why an archive was refused; the text is the 400's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Not gzip, or not our content.
    #[error("not a snapshot archive: {0}")]
    NotAnArchive(String),
    /// A version this build does not read.
    #[error("unsupported snapshot version {0} (this build reads version {current})", current = SNAPSHOT_VERSION)]
    UnsupportedVersion(u32),
    /// The archive ends early.
    #[error("snapshot archive is truncated: {0}")]
    Truncated(String),
    /// Damaged bytes (gzip's CRC, a bad frame, bytes after the end).
    #[error("snapshot archive is corrupt: {0}")]
    Corrupt(String),
    /// The content's SHA-256 is not the one stored.
    #[error("snapshot checksum mismatch: the archive says {stored}, its content is {computed}")]
    ChecksumMismatch {
        /// The checksum in the archive.
        stored: String,
        /// The checksum of what was read.
        computed: String,
    },
    /// Over a bound.
    #[error("snapshot archive too large: {0}")]
    TooLarge(String),
    /// Could not be written.
    #[error("cannot write snapshot archive: {0}")]
    Encode(String),
}

/// Rows as the server's storage keeps them: (key, value).
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A read archive: what it says and its rows, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Header and verification results.
    pub info: SnapshotInfo,
    /// The rows.
    pub rows: Rows,
}

/// Writes an archive of `rows` described by `header` (whose `rows` count is set here).
pub fn write_archive(
    header: &SnapshotHeader,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<u8>, SnapshotError> {
    let mut header = header.clone();
    header.rows = rows.len() as u64;
    let header = serde_json::to_vec(&header).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let len = |n: usize| -> Result<[u8; 4], SnapshotError> {
        u32::try_from(n)
            .map(u32::to_be_bytes)
            .map_err(|_| SnapshotError::TooLarge(format!("a part of {n} bytes")))
    };
    // Level 1: a catalog's JSON rows shrink several times even so, and a large one is
    // written in a fraction of the time the default level takes.
    let gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut out = Hashing::new(gz);
    let io = |e: std::io::Error| SnapshotError::Encode(e.to_string());
    out.write_all(MAGIC).map_err(io)?;
    out.write_all(&SNAPSHOT_VERSION.to_be_bytes()).map_err(io)?;
    out.write_all(&len(header.len())?).map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (k, v) in rows {
        out.write_all(&len(k.len())?).map_err(io)?;
        out.write_all(k).map_err(io)?;
        out.write_all(&len(v.len())?).map_err(io)?;
        out.write_all(v).map_err(io)?;
    }
    let (mut gz, digest) = out.finish();
    gz.write_all(digest.as_ref()).map_err(io)?;
    gz.finish().map_err(io)
}

/// Reads and verifies a whole archive.
pub fn read_archive(bytes: &[u8]) -> Result<Archive, SnapshotError> {
    let mut rows = Vec::new();
    let info = read(bytes, |k, v| rows.push((k, v)))?;
    Ok(Archive { info, rows })
}

/// Reads and verifies an archive, keeping none of its rows: what it says about itself.
pub fn inspect(bytes: &[u8]) -> Result<SnapshotInfo, SnapshotError> {
    read(bytes, |_, _| {})
}

/// Reads `bytes`, handing each row to `row`, and returns the verified description.
fn read(
    bytes: &[u8],
    mut row: impl FnMut(Vec<u8>, Vec<u8>),
) -> Result<SnapshotInfo, SnapshotError> {
    if bytes.len() < 2 || bytes[..2] != [0x1f, 0x8b] {
        return Err(SnapshotError::NotAnArchive(
            "it is not a gzip stream".into(),
        ));
    }
    let mut gz = GzDecoder::new(bytes);
    let mut input = Hashing::new((&mut gz).take(MAX_EXPANDED + 1));
    let mut magic = [0u8; 8];
    read_exact(&mut input, &mut magic, "the magic")?;
    if &magic != MAGIC {
        return Err(SnapshotError::NotAnArchive(
            "its content does not start with the snapshot magic".into(),
        ));
    }
    let version = read_u32(&mut input, "the version")?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let header_len = read_len(&mut input, MAX_HEADER, "the header")?;
    let mut header = vec![0u8; header_len];
    read_exact(&mut input, &mut header, "the header")?;
    let header: SnapshotHeader = serde_json::from_slice(&header)
        .map_err(|e| SnapshotError::Corrupt(format!("bad header: {e}")))?;
    for i in 0..header.rows {
        let what = || format!("row {i} of {}", header.rows);
        let kn = read_len(&mut input, MAX_ROW, &what())?;
        let mut k = vec![0u8; kn];
        read_exact(&mut input, &mut k, &what())?;
        let vn = read_len(&mut input, MAX_ROW, &what())?;
        let mut v = vec![0u8; vn];
        read_exact(&mut input, &mut v, &what())?;
        row(k, v);
    }
    let (mut rest, computed) = input.finish();
    let mut stored = [0u8; CHECKSUM_LEN];
    read_exact(&mut rest, &mut stored, "the checksum")?;
    if stored != computed.as_ref() {
        return Err(SnapshotError::ChecksumMismatch {
            stored: hex(&stored),
            computed: hex(computed.as_ref()),
        });
    }
    // Nothing may follow; reading to the end also makes gzip check its CRC and length.
    let mut tail = [0u8; 1];
    match rest.read(&mut tail) {
        Ok(0) => {}
        Ok(_) => return Err(SnapshotError::Corrupt("bytes after the checksum".into())),
        Err(e) => return Err(io_error(e, "the end")),
    }
    if rest.limit() == 0 {
        return Err(SnapshotError::TooLarge(format!(
            "it expands to more than {MAX_EXPANDED} bytes"
        )));
    }
    if !gz.into_inner().is_empty() {
        return Err(SnapshotError::Corrupt(
            "bytes after the end of the gzip stream".into(),
        ));
    }
    Ok(SnapshotInfo {
        version,
        index: header.index,
        term: header.term,
        datacenter: header.datacenter,
        node: header.node,
        created: header.created,
        size: bytes.len() as u64,
        checksum: format!("sha256:{}", hex(computed.as_ref())),
        rows: header.rows,
        tables: header.tables,
    })
}

/// A reader or writer that hashes what passes through it.
struct Hashing<T> {
    inner: T,
    ctx: ring::digest::Context,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn finish(self) -> (T, ring::digest::Digest) {
        (self.inner, self.ctx.finish())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// An I/O error of the decoder as the archive's fault.
fn io_error(e: std::io::Error, what: &str) -> SnapshotError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SnapshotError::Truncated(format!("it ends inside {what}"))
    } else {
        SnapshotError::Corrupt(format!("{e} (while reading {what})"))
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| io_error(e, what))
}

fn read_u32(input: &mut impl Read, what: &str) -> Result<u32, SnapshotError> {
    let mut b = [0u8; 4];
    read_exact(input, &mut b, what)?;
    Ok(u32::from_be_bytes(b))
}

fn read_len(input: &mut impl Read, max: usize, what: &str) -> Result<usize, SnapshotError> {
    let n = read_u32(input, what)? as usize;
    if n > max {
        return Err(SnapshotError::Corrupt(format!(
            "{what} claims {n} bytes (at most {max})"
        )));
    }
    Ok(n)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SnapshotHeader, Rows) {
        let header = SnapshotHeader {
            index: 42,
            term: 3,
            datacenter: "dc1".into(),
            node: "s1".into(),
            created: "2026-11-30T12:00:00Z".into(),
            rows: 0,
            tables: [("nodes".to_string(), 1), ("kv".to_string(), 1)].into(),
        };
        let rows = vec![
            (b"kv/a".to_vec(), br#"{"Value":"dg=="}"#.to_vec()),
            (b"n/node1".to_vec(), br#"{"Node":"node1"}"#.to_vec()),
        ];
        (header, rows)
    }

    /// The content of `archive`, gunzipped.
    fn content(archive: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(archive).read_to_end(&mut out).unwrap();
        out
    }

    fn gzip(content: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(content).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn an_archive_round_trips_and_describes_itself() {
        let (header, rows) = sample();
        let archive = write_archive(&header, &rows).unwrap();
        let read = read_archive(&archive).unwrap();
        assert_eq!(read.rows, rows);
        let info = inspect(&archive).unwrap();
        assert_eq!(info, read.info);
        assert_eq!(
            (info.version, info.index, info.term, info.rows, info.size),
            (1, 42, 3, 2, archive.len() as u64)
        );
        assert_eq!(info.datacenter, "dc1");
        assert_eq!(info.tables["nodes"], 1);
        assert!(info.checksum.starts_with("sha256:") && info.checksum.len() == 7 + 64);
        let json = serde_json::to_value(&info).unwrap();
        for field in [
            "Index",
            "Term",
            "Datacenter",
            "Created",
            "Size",
            "Checksum",
            "Tables",
        ] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
    }

    #[test]
    fn every_flipped_bit_or_cut_is_refused() {
        let (header, rows) = sample();
        let archive = write_archive(&header, &rows).unwrap();
        for at in 0..archive.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = archive.clone();
                bad[at] ^= bit;
                // A flip in bytes gzip does not read (the header's mtime and OS, the
                // deflate stream's padding) may pass, but never with other content.
                if let Ok(read) = read_archive(&bad) {
                    assert_eq!(read.rows, rows, "byte {at} bit {bit:#x}");
                }
            }
        }
        for cut in 0..archive.len() {
            assert!(read_archive(&archive[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = archive.clone();
        longer.push(0);
        assert!(matches!(
            read_archive(&longer),
            Err(SnapshotError::Corrupt(_))
        ));
    }

    #[test]
    fn the_reasons_say_what_is_wrong() {
        let (header, rows) = sample();
        let archive = write_archive(&header, &rows).unwrap();
        let mut v2 = content(&archive);
        v2[8..12].copy_from_slice(&2u32.to_be_bytes());
        let err = read_archive(&gzip(&v2)).unwrap_err();
        assert_eq!(err, SnapshotError::UnsupportedVersion(2));
        assert!(err.to_string().contains("version 2"), "{err}");

        let mut tampered = content(&archive);
        let last_row = tampered.len() - CHECKSUM_LEN - 2;
        tampered[last_row] ^= 0x20;
        let err = read_archive(&gzip(&tampered)).unwrap_err();
        assert!(
            matches!(err, SnapshotError::ChecksumMismatch { .. }),
            "{err}"
        );

        let full = content(&archive);
        let err = read_archive(&gzip(&full[..full.len() - 5])).unwrap_err();
        assert!(matches!(err, SnapshotError::Truncated(_)), "{err}");

        assert!(matches!(
            read_archive(b"{\"not\":\"gzip\"}"),
            Err(SnapshotError::NotAnArchive(_))
        ));
        assert!(matches!(
            read_archive(&gzip(b"something else entirely")),
            Err(SnapshotError::NotAnArchive(_))
        ));
    }

    #[test]
    fn a_row_claiming_more_than_the_bound_is_refused_before_allocating() {
        let mut content = MAGIC.to_vec();
        content.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        let header = serde_json::to_vec(&SnapshotHeader {
            rows: 1,
            ..Default::default()
        })
        .unwrap();
        content.extend_from_slice(&(header.len() as u32).to_be_bytes());
        content.extend_from_slice(&header);
        content.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read_archive(&gzip(&content)).unwrap_err();
        assert!(matches!(err, SnapshotError::Corrupt(_)), "{err}");
    }
}
