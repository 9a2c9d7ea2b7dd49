//! Checkpoints: the applied state written whole to one file, `catalog.ckpt`
//! in the data dir, every so many entries, in place of each entry's rows in
//! RocksDB (which cost a fifth of the servers' CPU: BENCHMARKS.md, session 17).
//! Between checkpoints the state lives in memory and the Raft log (durable
//! before anything applies) is what a restart replays on top of the last one.
//!
//! The file is a sequence of records, last one wins: `put` (key, value) and
//! `delete` (key) rows, then `end` (the index and term of the last entry the
//! state holds, and the configuration then), then a CRC-32 of everything
//! before it. The Raft thread writes the rows of the state a slice at a time
//! (`state/image.rs`) and, in between, the rows of the entries it applies, so
//! the records read in order give the state at `end` although no single
//! moment of it was copied. It is written to `catalog.ckpt.tmp` by a thread of
//! its own ([`CheckpointWriter`]), fsynced, and renamed over the last one.
//!
//! Owns the file format and its writing; when to take one is the Raft thread's
//! (`raft/checkpoints.rs`).

use super::{corrupt, DiskFaults, StorageFailure};
use protobuf::Message as _;
use raft::eraftpb::ConfState;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};

/// The checkpoint's file name in the data dir.
pub const FILE: &str = "catalog.ckpt";
/// Where a checkpoint is written before it is complete.
const TMP_FILE: &str = "catalog.ckpt.tmp";
const MAGIC: &[u8; 8] = b"RGCKPT01";
const PUT: u8 = 1;
const DELETE: u8 = 2;
const END: u8 = 0xff;

/// What a checkpoint holds: the state after the entry at `index` (of `term`),
/// when the configuration was `conf_state`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointEnd {
    /// Index of the last entry applied.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The configuration at that index.
    pub conf_state: ConfState,
}

/// Row records being assembled for the writer, in order.
#[derive(Default)]
pub struct Records {
    buf: Vec<u8>,
}

impl Records {
    /// Records row `key` set to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.buf.push(PUT);
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, value);
    }

    /// Records row `key` deleted.
    pub fn delete(&mut self, key: &[u8]) {
        self.buf.push(DELETE);
        put_bytes(&mut self.buf, key);
    }

    /// Bytes assembled so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Rows and keys are capped far below 4 GiB (`registry_api::snapshot`).
    buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn end_record(end: &CheckpointEnd) -> Vec<u8> {
    let mut buf = vec![END];
    buf.extend_from_slice(&end.index.to_le_bytes());
    buf.extend_from_slice(&end.term.to_le_bytes());
    put_bytes(
        &mut buf,
        &end.conf_state.write_to_bytes().unwrap_or_default(),
    );
    buf
}

enum Msg {
    /// Start a new checkpoint (abandoning any unfinished one).
    Begin,
    /// Records of the one begun.
    Data(Vec<u8>),
    /// Complete it: write `end`, fsync, rename; then answer (its size).
    Finish(CheckpointEnd, SyncSender<Result<u64, String>>),
}

/// The thread that writes checkpoints: the Raft thread hands it records in
/// order, and it does the file's I/O. Dropping the handle stops the thread
/// (a checkpoint not finished by then is left as the temporary file, which
/// the next start removes).
pub struct CheckpointWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CheckpointWriter {
    /// Waits for the thread to end, so that no rename of a server stopped in
    /// this process lands after another started on the same data dir.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to a finished checkpoint: its size in bytes once it is durable.
pub type Finished = Receiver<Result<u64, String>>;

impl CheckpointWriter {
    /// Starts the writer for checkpoints in `dir`.
    pub fn start(dir: &Path, faults: DiskFaults) -> std::io::Result<Self> {
        // A bounded queue: were the disk slower than the Raft thread encodes,
        // the Raft thread waits for it rather than buffering without end.
        let (tx, rx) = mpsc::sync_channel(64);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || write_loop(&dir, &faults, rx))?;
        Ok(CheckpointWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Sends `msg`; gives it back if the thread has stopped.
    fn send(&self, msg: Msg) -> Option<Msg> {
        match &self.tx {
            Some(tx) => tx.send(msg).err().map(|e| e.0),
            None => Some(msg),
        }
    }

    /// Starts a new checkpoint.
    pub fn begin(&self) {
        let _ = self.send(Msg::Begin);
    }

    /// Hands over the records assembled so far (none: nothing is sent).
    pub fn write(&self, records: &mut Records) {
        if !records.is_empty() {
            let _ = self.send(Msg::Data(records.take()));
        }
    }

    /// Completes the checkpoint with `end`; the answer comes once it is
    /// durable (or failed).
    pub fn finish(&self, records: &mut Records, end: CheckpointEnd) -> Finished {
        self.write(records);
        let (tx, rx) = mpsc::sync_channel(1);
        if let Some(Msg::Finish(_, tx)) = self.send(Msg::Finish(end, tx)) {
            let _ = tx.send(Err("the checkpoint writer has stopped".into()));
        }
        rx
    }
}

/// The checkpoint being written.
struct Open {
    file: BufWriter<File>,
    crc: crc32fast::Hasher,
}

impl Open {
    /// Creates (truncates) `path` and writes the header.
    fn create(path: &Path) -> std::io::Result<Self> {
        let mut o = Open {
            file: BufWriter::with_capacity(1 << 20, File::create(path)?),
            crc: crc32fast::Hasher::new(),
        };
        o.crc.update(MAGIC);
        o.file.write_all(MAGIC)?;
        Ok(o)
    }
}

fn write_loop(dir: &Path, faults: &DiskFaults, rx: Receiver<Msg>) {
    let tmp = dir.join(TMP_FILE);
    // `Err`: the current checkpoint failed (why); its later records are dropped.
    let mut open: Result<Option<Open>, String> = Ok(None);
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Begin => {
                // An abandoned one is dropped unflushed: its buffered bytes
                // written after the truncation below would land, at their old
                // offset, in the new file.
                if let Ok(Some(o)) = std::mem::replace(&mut open, Ok(None)) {
                    drop(o.file.into_parts());
                }
                open = Open::create(&tmp)
                    .map(Some)
                    .map_err(|e| format!("create {}: {e}", tmp.display()));
            }
            Msg::Data(bytes) => {
                if let Ok(Some(o)) = &mut open {
                    o.crc.update(&bytes);
                    if let Err(e) = o.file.write_all(&bytes) {
                        open = Err(format!("write {}: {e}", tmp.display()));
                    }
                }
            }
            Msg::Finish(end, answer) => {
                let result = match std::mem::replace(&mut open, Ok(None)) {
                    Ok(Some(o)) => complete(dir, o, &end, faults),
                    Ok(None) => Err("no checkpoint was begun".into()),
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                let _ = answer.send(result);
            }
        }
    }
}

/// Writes the end record and the CRC, makes the file durable and puts it in place.
fn complete(
    dir: &Path,
    mut o: Open,
    end: &CheckpointEnd,
    faults: &DiskFaults,
) -> Result<u64, String> {
    let tmp = dir.join(TMP_FILE);
    let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", tmp.display());
    let end = end_record(end);
    o.crc.update(&end);
    o.file.write_all(&end).map_err(|e| io("write", e))?;
    let crc = o.crc.finalize();
    o.file
        .write_all(&crc.to_le_bytes())
        .map_err(|e| io("write", e))?;
    let file = o
        .file
        .into_inner()
        .map_err(|e| io("write", e.into_error()))?;
    faults.before_sync().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    let size = file.metadata().map_err(|e| io("stat", e))?.len();
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| io("rename", e))?;
    // The rename is durable once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync {}: {e}", dir.display()))?;
    Ok(size)
}

/// Writes a whole checkpoint of `rows` at `end` from the calling thread
/// (a snapshot from the leader, which replaces the state at once); its size.
pub fn write_whole<'a>(
    writer: &CheckpointWriter,
    rows: impl IntoIterator<Item = &'a (Vec<u8>, Vec<u8>)>,
    end: CheckpointEnd,
) -> Result<u64, String> {
    writer.begin();
    let mut records = Records::default();
    for (k, v) in rows {
        records.put(k, v);
        if records.len() >= 1 << 20 {
            writer.write(&mut records);
        }
    }
    writer
        .finish(&mut records, end)
        .recv()
        .unwrap_or_else(|_| Err("the checkpoint writer has stopped".into()))
}

/// A checkpoint read back: its end and the rows, in key order.
pub struct Loaded {
    /// What it holds.
    pub end: CheckpointEnd,
    /// The state's rows.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads the checkpoint in `dir`, if there is one (and removes an unfinished
/// one). Err if it is damaged: a CRC that does not match, a record cut short.
pub fn load(dir: &Path) -> Result<Option<Loaded>, StorageFailure> {
    let _ = std::fs::remove_file(dir.join(TMP_FILE));
    let path: PathBuf = dir.join(FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(corrupt(
                "checkpoint",
                format!("open {}: {e}", path.display()),
            ))
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        left: size,
    };
    let bad = |detail: String| corrupt("checkpoint", format!("{}: {detail}", path.display()));
    if r.bytes(8).map_err(&bad)? != MAGIC {
        return Err(bad("not a checkpoint file".into()));
    }
    let mut rows = BTreeMap::new();
    let end = loop {
        match r.u8().map_err(&bad)? {
            PUT => {
                let key = r.sized().map_err(&bad)?;
                let value = r.sized().map_err(&bad)?;
                rows.insert(key, value);
            }
            DELETE => {
                let key = r.sized().map_err(&bad)?;
                rows.remove(&key);
            }
            END => {
                let index = r.u64().map_err(&bad)?;
                let term = r.u64().map_err(&bad)?;
                let conf = r.sized().map_err(&bad)?;
                let conf_state = ConfState::parse_from_bytes(&conf)
                    .map_err(|e| bad(format!("configuration: {e}")))?;
                break CheckpointEnd {
                    index,
                    term,
                    conf_state,
                };
            }
            other => return Err(bad(format!("unknown record {other}"))),
        }
    };
    let want = r.crc.clone().finalize();
    let got = u32::from_le_bytes(r.array().map_err(&bad)?);
    if got != want || r.left != 0 {
        return Err(bad("checksum mismatch".into()));
    }
    Ok(Some(Loaded {
        end,
        rows: rows.into_iter().collect(),
    }))
}

/// Reads a checkpoint, counting what is left (so no length read from the
/// file makes it allocate more than the file holds) and summing the CRC.
struct Reader {
    inner: BufReader<File>,
    crc: crc32fast::Hasher,
    left: u64,
}

impl Reader {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        if n > self.left {
            return Err("cut short".into());
        }
        let mut buf = vec![0; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| e.to_string())?;
        self.left -= n;
        self.crc.update(&buf);
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if N as u64 > self.left {
            return Err("cut short".into());
        }
        let mut a = [0; N];
        self.inner.read_exact(&mut a).map_err(|e| e.to_string())?;
        self.left -= N as u64;
        self.crc.update(&a);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn sized(&mut self) -> Result<Vec<u8>, String> {
        let n = u32::from_le_bytes(self.array()?);
        self.bytes(u64::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(index: u64) -> CheckpointEnd {
        let mut conf_state = ConfState::default();
        conf_state.voters = vec![1, 2, 3];
        CheckpointEnd {
            index,
            term: 4,
            conf_state,
        }
    }

    fn row(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn the_last_record_of_a_row_wins_and_only_a_finished_checkpoint_counts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none(), "none yet");
        let w = CheckpointWriter::start(dir.path(), DiskFaults::default()).unwrap();
        w.begin();
        let mut r = Records::default();
        r.put(b"a", b"1");
        r.put(b"b", b"1");
        w.write(&mut r);
        r.delete(b"a");
        r.put(b"b", b"2");
        r.put(b"c", b"");
        w.finish(&mut r, end(7)).recv().unwrap().unwrap();
        let ck = load(dir.path()).unwrap().unwrap();
        assert_eq!(ck.end, end(7));
        assert_eq!(ck.rows, vec![row("b", "2"), row("c", "")]);

        // One begun and never finished (a crash) leaves the last one in place.
        w.begin();
        r.put(b"z", b"9");
        w.write(&mut r);
        drop(w);
        let tmp = dir.path().join(TMP_FILE);
        for _ in 0..500 {
            if tmp.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(tmp.exists(), "the unfinished one was begun");
        let ck = load(dir.path()).unwrap().unwrap();
        assert_eq!((ck.end.index, ck.rows.len()), (7, 2));
        assert!(!tmp.exists(), "the unfinished one is removed");

        // A whole one replaces it.
        let w = CheckpointWriter::start(dir.path(), DiskFaults::default()).unwrap();
        write_whole(&w, &[row("x", "1")], end(9)).unwrap();
        let ck = load(dir.path()).unwrap().unwrap();
        assert_eq!((ck.end.index, ck.rows), (9, vec![row("x", "1")]));
    }

    #[test]
    fn a_checkpoint_begun_over_an_abandoned_one_holds_only_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let w = CheckpointWriter::start(dir.path(), DiskFaults::default()).unwrap();
        // More than the writer buffers (1 MiB), then abandoned without a finish,
        // as a snapshot install abandons a checkpoint under way.
        w.begin();
        let mut r = Records::default();
        for i in 0..3_000 {
            r.put(format!("big{i:05}").as_bytes(), &[7; 1000]);
        }
        w.write(&mut r);
        write_whole(&w, &[row("small", "1")], end(9)).unwrap();
        let ck = load(dir.path()).unwrap().unwrap();
        assert_eq!((ck.end.index, ck.rows), (9, vec![row("small", "1")]));
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_not_half_read() {
        let dir = tempfile::tempdir().unwrap();
        let w = CheckpointWriter::start(dir.path(), DiskFaults::default()).unwrap();
        let rows: Vec<_> = (0..100)
            .map(|i| row(&format!("k{i:03}"), "value"))
            .collect();
        write_whole(&w, &rows, end(100)).unwrap();
        let path = dir.path().join(FILE);
        let good = std::fs::read(&path).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().rows, rows);
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        for (what, bytes) in [
            ("a flipped bit", flipped),
            ("cut short", good[..good.len() - 3].to_vec()),
            ("cut before the end", good[..good.len() / 2].to_vec()),
            ("trailing bytes", [good.as_slice(), b"x"].concat()),
            ("not a checkpoint", b"hello".to_vec()),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let err = load(dir.path())
                .err()
                .unwrap_or_else(|| panic!("{what} was read"));
            assert!(err.to_string().contains("checkpoint"), "{what}: {err}");
        }
    }

    #[test]
    fn a_failed_fsync_fails_the_checkpoint_and_keeps_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let faults = DiskFaults::default();
        let w = CheckpointWriter::start(dir.path(), faults.clone()).unwrap();
        write_whole(&w, &[row("a", "1")], end(5)).unwrap();
        faults.set_fail_synced_writes(true);
        assert!(write_whole(&w, &[row("a", "2")], end(6)).is_err());
        faults.set_fail_synced_writes(false);
        let ck = load(dir.path()).unwrap().unwrap();
        assert_eq!((ck.end.index, ck.rows), (5, vec![row("a", "1")]));
        write_whole(&w, &[row("a", "3")], end(7)).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().end.index, 7);
    }
}
