//! Unit tests of [`RaftStore`] on a real RocksDB in a temp dir: the log and
//! its compaction across reopens, and start-up from checkpoints (snapshot
//! installs, crash windows, data dirs from before checkpoints).

use super::*;
use raft::Storage;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = vec![index as u8; 3].into();
    e
}

#[test]
fn log_survives_reopen_and_conflicts_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
        id = rec.node_id;
        let mut b = s.batch();
        s.append(&mut b, &[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 7;
        hs.commit = 2;
        s.set_hard_state(&mut b, &hs);
        s.commit(b, true).unwrap();
        // A new leader overwrites the uncommitted tail from index 3.
        let mut b = s.batch();
        s.append(&mut b, &[entry(3, 2), entry(4, 2)]).unwrap();
        s.commit(b, true).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
    }
    let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!(rec.node_id, id, "the Raft id is stable across restarts");
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(s.term(3).unwrap(), 2);
    assert_eq!(s.term(2).unwrap(), 1);
    let hs = s.initial_state().unwrap().hard_state;
    assert_eq!((hs.term, hs.vote, hs.commit), (2, 7, 2));
    let es = s
        .entries(1, 5, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        es.iter().map(|e| e.term).collect::<Vec<_>>(),
        vec![1, 1, 2, 2]
    );
    let limited = s
        .entries(1, 5, Some(1), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(limited.len(), 1, "max_size still returns one entry");
}

#[test]
fn the_entry_cache_answers_as_rocksdb_after_appends_overwrites_compactions_and_installs() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    let mut seed = 7u64;
    let mut rand = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let (mut term, mut served) = (1, 0);
    // Rounds that overwrote, compacted, installed, failed to write.
    let mut done = [0; 4];
    for round in 0..400 {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        let mut b = s.batch();
        let what = if round % 50 == 49 { 2 } else { rand(10) };
        match what {
            // A new leader overwrites part of the tail.
            0 if last >= first => {
                term += 1;
                let from = first + rand(last - first + 1);
                let es: Vec<_> = (from..from + 1 + rand(20))
                    .map(|i| entry(i, term))
                    .collect();
                s.append(&mut b, &es).unwrap();
                done[0] += 1;
            }
            1 if last > first => {
                s.compact(&mut b, first + rand(last - first)).unwrap();
                done[1] += 1;
            }
            2 => {
                s.install_snapshot(&mut b, &snapshot(last + 5, term))
                    .unwrap();
                done[2] += 1;
            }
            // A write that fails (a full disk) changes nothing.
            3 if last >= first => {
                s.append(&mut b, &[entry(last, term + 1), entry(last + 1, term + 1)])
                    .unwrap();
                s.faults().set_fail_synced_writes(true);
                assert!(s.commit(b, true).is_err());
                s.faults().set_fail_synced_writes(false);
                b = s.batch();
                done[3] += 1;
            }
            _ => {
                // Now and then an entry big enough to shed the oldest.
                let mut es: Vec<_> = (last + 1..last + 1 + rand(40))
                    .map(|i| entry(i, term))
                    .collect();
                if let Some(e) = es.last_mut().filter(|_| rand(8) == 0) {
                    e.data = vec![1u8; 700 << 10].into();
                }
                s.append(&mut b, &es).unwrap();
            }
        }
        s.commit(b, false).unwrap();
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        let ctx = || GetEntriesContext::empty(false);
        for _ in 0..20 {
            if last < first {
                break;
            }
            let low = first + rand(last - first + 1);
            let high = low + 1 + rand(last - low + 1);
            let max = [None, Some(1), Some(rand(4_000))][rand(3) as usize];
            let want = s.read_entries(low, high, max).unwrap();
            assert_eq!(
                s.entries(low, high, max, ctx()).unwrap(),
                want,
                "[{low}, {high}) {max:?}"
            );
            served += usize::from(s.cache.lock().unwrap().get(low, high, max).is_some());
            let i = low + rand(high - low);
            assert_eq!(s.term(i).unwrap(), s.read_entry(i).unwrap().unwrap().term);
        }
    }
    assert!(served > 1_000, "the cache answered {served} reads");
    assert!(
        done.iter().all(|n| *n >= 5),
        "rounds of each kind: {done:?}"
    );
}

#[test]
fn compaction_keeps_the_boundary_term() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    let mut b = s.batch();
    s.append(
        &mut b,
        &(1..=10).map(|i| entry(i, i / 4 + 1)).collect::<Vec<_>>(),
    )
    .unwrap();
    s.commit(b, true).unwrap();
    let mut b = s.batch();
    s.compact(&mut b, 6).unwrap();
    s.commit(b, true).unwrap();
    assert_eq!(s.first_index().unwrap(), 7);
    assert_eq!(s.term(6).unwrap(), 2);
    assert!(matches!(
        s.entries(5, 8, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    assert_eq!(
        s.entries(7, 11, None, GetEntriesContext::empty(false))
            .unwrap()
            .len(),
        4
    );
    drop(s);
    let (s, _) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
    assert_eq!(s.term(6).unwrap(), 2);
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = term;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    snap
}

fn checkpoint_of(snap: &Snapshot, rows: &[(Vec<u8>, Vec<u8>)], dir: &Path) {
    let w = checkpoint::CheckpointWriter::start(dir, DiskFaults::default()).unwrap();
    let meta = snap.get_metadata();
    let end = CheckpointEnd {
        index: meta.index,
        term: meta.term,
        conf_state: meta.get_conf_state().clone(),
    };
    checkpoint::write_whole(&w, rows, end).unwrap();
}

#[test]
fn snapshot_install_replaces_the_log_and_its_checkpoint_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    s.put_legacy_rows(2, &[(b"old".to_vec(), b"x".to_vec())]);
    let mut b = s.batch();
    s.append(&mut b, &[entry(1, 1), entry(2, 1)]).unwrap();
    s.commit(b, true).unwrap();
    let snap = snapshot(50, 4);
    let rows = [(b"new".to_vec(), b"y".to_vec())];
    checkpoint_of(&snap, &rows, dir.path());
    let mut b = s.batch();
    s.install_snapshot(&mut b, &snap).unwrap();
    s.commit(b, true).unwrap();
    drop(s);
    let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!(rec.applied, 50);
    assert_eq!(rec.rows, rows);
    assert!(!s.legacy_rows());
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (51, 50)
    );
    assert_eq!(s.term(50).unwrap(), 4);
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    drop(s);
    // Its rows are in the checkpoint only: without it the data dir is refused.
    std::fs::remove_file(dir.path().join(checkpoint::FILE)).unwrap();
    let err = RaftStore::open(dir.path(), DiskFaults::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_snapshot_whose_checkpoint_was_written_but_not_its_log_is_recorded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    let mut b = s.batch();
    // An old, uncommitted tail that conflicts with the snapshot's history.
    s.append(&mut b, &[entry(1, 1), entry(2, 1), entry(3, 1)])
        .unwrap();
    s.set_commit(&mut b, 1);
    s.commit(b, true).unwrap();
    drop(s);
    // The crash came between the checkpoint and the log's batch.
    checkpoint_of(
        &snapshot(3, 2),
        &[(b"k".to_vec(), b"v".to_vec())],
        dir.path(),
    );
    let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!((rec.applied, rec.rows.len()), (3, 1));
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (4, 3));
    assert_eq!(s.term(3).unwrap(), 2);
    let st = s.initial_state().unwrap();
    assert_eq!(
        st.hard_state.commit, 3,
        "what the checkpoint holds is committed"
    );
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
}

#[test]
fn a_checkpoint_ahead_of_the_stored_commit_index_raises_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    let mut b = s.batch();
    s.append(&mut b, &(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
        .unwrap();
    s.set_commit(&mut b, 4);
    s.commit(b, true).unwrap();
    drop(s);
    checkpoint_of(&snapshot(8, 1), &[], dir.path());
    let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!(rec.applied, 8);
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (1, 10),
        "the log is kept"
    );
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 8);
}

#[test]
fn rows_from_before_checkpoints_load_until_a_checkpoint_retires_them() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    let mut b = s.batch();
    s.append(&mut b, &(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
        .unwrap();
    s.set_commit(&mut b, 10);
    s.commit(b, true).unwrap();
    s.put_legacy_rows(6, &[(b"a".to_vec(), b"1".to_vec())]);
    drop(s);
    let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!((rec.applied, rec.rows.len()), (6, 1));
    assert!(s.legacy_rows());
    drop(s);
    // A checkpoint older than the rows (left by a downgrade) loses to them.
    checkpoint_of(&snapshot(5, 1), &[], dir.path());
    let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!((rec.applied, rec.rows.len()), (6, 1));
    drop(s);
    // A newer one wins; once retired, the rows are gone and a binary from
    // before checkpoints would read an applied index it cannot parse.
    checkpoint_of(
        &snapshot(9, 1),
        &[(b"b".to_vec(), b"2".to_vec())],
        dir.path(),
    );
    let (s, rec) = RaftStore::open(dir.path(), DiskFaults::default()).unwrap();
    assert_eq!(
        (rec.applied, rec.rows),
        (9, vec![(b"b".to_vec(), b"2".to_vec())])
    );
    let mut b = s.batch();
    s.retire_legacy_rows(&mut b);
    s.commit(b, true).unwrap();
    assert!(!s.legacy_rows());
    assert_eq!(s.get_meta(K_APPLIED).unwrap().unwrap(), IN_CHECKPOINT);
    let cf = s.cf(CF_STORE);
    assert!(s.db.iterator_cf(cf, IteratorMode::Start).next().is_none());
}

#[test]
fn snapshot_image_round_trips_and_rejects_garbage() {
    let mut img = SnapshotImage::default();
    img.rows.push((b"k".to_vec(), b"v".to_vec()));
    img.peers.insert(
        3,
        PeerInfo {
            id: 3,
            node: "s3".into(),
            rpc_addr: "a:1".into(),
            http_addr: "a:2".into(),
            datacenter: "dc1".into(),
        },
    );
    assert_eq!(SnapshotImage::decode(&img.encode()).unwrap(), img);
    assert!(SnapshotImage::decode(&[9]).is_err());
    assert!(SnapshotImage::decode(&[1, 0, 0, 0, 9]).is_err());
}
