//! Unit tests of the pack store over an in-memory bucket (the e2e tests
//! run it against a real Ceph gateway).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use refuge_core::{ChunkRef, HostName, ManifestSummary, SourceKind, SourceName, compress_chunk};

use super::*;

/// An in-memory bucket whose writes can be made to fail: all writes and
/// deletions (`fail_puts`: unreachable), or writes larger than `room` (a
/// quota).
struct Faulty {
    inner: Bucket,
    fail_puts: AtomicBool,
    room: AtomicUsize,
}

impl Objects for Faulty {
    fn put(&self, name: &str, body: Vec<u8>) -> Result<(), ObjectError> {
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(ObjectError::Other("the gateway is unreachable".into()));
        }
        if body.len() > self.room.load(Ordering::SeqCst) {
            return Err(ObjectError::Full("QuotaExceeded".into()));
        }
        self.inner.put(name, body)
    }
    fn get(&self, name: &str) -> Result<Bytes, ObjectError> {
        self.inner.get(name)
    }
    fn get_ranges(
        &self,
        reads: Vec<(String, Vec<Range<u64>>)>,
    ) -> Vec<Result<Vec<Bytes>, ObjectError>> {
        self.inner.get_ranges(reads)
    }
    fn delete(&self, name: &str) -> Result<(), ObjectError> {
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(ObjectError::Other("the gateway is unreachable".into()));
        }
        self.inner.delete(name)
    }
    fn describe(&self) -> String {
        "faulty memory".into()
    }
}

struct Temp {
    store: PackStore,
    bucket: Arc<Faulty>,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Temp {
    type Target = PackStore;
    fn deref(&self) -> &PackStore {
        &self.store
    }
}

fn faulty() -> Arc<Faulty> {
    let mem = Arc::new(object_store::memory::InMemory::new());
    Arc::new(Faulty {
        inner: Bucket::over(mem, "node", "memory".into()).unwrap(),
        fail_puts: AtomicBool::new(false),
        room: AtomicUsize::new(usize::MAX),
    })
}

fn temp_with(pack_bytes: usize) -> Temp {
    let dir = tempfile::tempdir().unwrap();
    let bucket = faulty();
    let store = PackStore::open(
        dir.path(),
        &RocksOptions::default(),
        bucket.clone(),
        pack_bytes,
    )
    .unwrap();
    Temp { store, bucket, dir }
}

/// Packs of 256 bytes: the suite's puts fill some and leave others open.
fn temp() -> Temp {
    temp_with(256)
}

refuge_store::conformance_tests!(temp());

/// Every put uploads its own pack.
mod one_pack_per_put {
    use super::*;
    refuge_store::conformance_tests!(temp_with(1));
}

fn tenant() -> TenantId {
    TenantId::new("dept").unwrap()
}

fn chunk(i: u32) -> (ChunkId, StoredChunk) {
    let content = format!("chunk number {i} with some bytes to make it longer").into_bytes();
    (ChunkId::of(&content), compress_chunk(&content, 1))
}

fn snapshot(refs: &[ChunkId]) -> NewSnapshot {
    let mut counts = RefCounts::new();
    for id in refs {
        counts.add(*id);
    }
    NewSnapshot {
        tenant: tenant(),
        host: HostName::new("h").unwrap(),
        source: SourceName::new("s").unwrap(),
        kind: SourceKind::Tree,
        manifest: vec![ChunkRef {
            id: refs[0],
            len: 1,
        }],
        summary: ManifestSummary::default(),
        bytes_uploaded: 0,
        warnings: 0,
        duration_micros: 0,
        refs: counts,
        token: None,
    }
}

#[test]
fn a_commit_after_a_failed_upload_fails_and_an_upload_again_heals_it() {
    let s = temp_with(1 << 20);
    let t = tenant();
    let (id, c) = chunk(1);
    s.put_chunks(&t, &[(id, c.clone())], 10).unwrap();
    assert_eq!(s.chunk_lengths(&t, &[id]).unwrap(), vec![Some(c.raw_len)]);
    s.bucket.fail_puts.store(true, Ordering::SeqCst);
    let e = s.commit(snapshot(&[id]), 20).unwrap_err();
    assert!(e.to_string().contains("unreachable"), "{e}");
    assert!(e.is_retryable());
    // Forgotten: the agent is told to upload it again.
    assert_eq!(s.missing_chunks(&t, &[id]).unwrap(), vec![0]);
    assert!(s.list_snapshots(&t).unwrap().is_empty());
    // The object of the failed upload could not be deleted either.
    assert_eq!(s.orphans.lock().unwrap().len(), 1);
    s.bucket.fail_puts.store(false, Ordering::SeqCst);
    s.put_chunks(&t, &[(id, c.clone())], 30).unwrap();
    s.commit(snapshot(&[id]), 40).unwrap();
    assert_eq!(s.get_chunk(&t, &id).unwrap().unwrap(), c);
    // The next probe finds the bucket back and removes it: nothing of
    // the failed upload is left in the bucket or the catalog.
    assert_eq!(s.orphans.lock().unwrap().len(), 1);
    s.probe_writes();
    assert!(s.orphans.lock().unwrap().is_empty());
    assert!(
        s.catalog
            .with_store(|c| c.unfinished_packs())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_bucket_that_stops_taking_writes_stops_them_until_a_probe_gets_through() {
    let s = temp_with(1 << 20);
    let t = tenant();
    s.probe_writes();
    assert!(s.writes_stopped().is_none());

    // Unreachable: found by a probe while idle, cleared by the next one
    // that gets through.
    s.bucket.fail_puts.store(true, Ordering::SeqCst);
    s.probe_writes();
    let e = s.writes_stopped().unwrap();
    assert!(
        matches!(&e, StoreError::Backend(m) if m.contains("unreachable")),
        "{e:?}"
    );
    s.probe_writes();
    assert!(s.writes_stopped().is_some());
    s.bucket.fail_puts.store(false, Ordering::SeqCst);
    s.probe_writes();
    assert!(s.writes_stopped().is_none());

    // Full: a pack does not fit; a probe of a few bytes would, but the
    // probe writes as much as the pack that failed, so writes stay
    // stopped until the bucket has room for that.
    let chunks: Vec<_> = (0..40).map(chunk).collect();
    let size: usize = chunks.iter().map(|(_, c)| c.data.len()).sum();
    s.bucket.room.store(size / 2, Ordering::SeqCst);
    s.put_chunks(&t, &chunks, 10).unwrap();
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    let e = s.commit(snapshot(&ids), 20).unwrap_err();
    assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
    assert!(matches!(s.writes_stopped(), Some(StoreError::NoSpace(_))));
    s.probe_writes();
    assert!(matches!(s.writes_stopped(), Some(StoreError::NoSpace(_))));
    s.bucket.room.store(usize::MAX, Ordering::SeqCst);
    s.probe_writes();
    assert!(s.writes_stopped().is_none());
    s.put_chunks(&t, &chunks, 30).unwrap();
    s.commit(snapshot(&ids), 40).unwrap();
    assert_eq!(s.get_chunk(&t, &ids[7]).unwrap().unwrap(), chunks[7].1);
}

#[test]
fn an_upload_a_crash_cut_is_removed_at_the_next_open() {
    let s = temp();
    let t = tenant();
    let n = s.catalog.with_store(|c| c.begin_pack(&t)).unwrap();
    s.bucket
        .put(&pack_name(&t, n), b"half a pack".to_vec())
        .unwrap();
    let (bucket, dir) = (s.bucket.clone(), s.dir);
    drop(s.store);
    let again = PackStore::open(dir.path(), &RocksOptions::default(), bucket.clone(), 256).unwrap();
    assert!(matches!(
        bucket.get(&pack_name(&t, n)),
        Err(ObjectError::NotFound(_))
    ));
    assert!(
        again
            .catalog
            .with_store(|c| c.unfinished_packs())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn chunks_from_several_packs_are_read_in_order_and_a_lost_pack_is_corruption() {
    let s = temp_with(200);
    let t = tenant();
    let chunks: Vec<_> = (0..12).map(chunk).collect();
    for c in &chunks {
        s.put_chunks(&t, std::slice::from_ref(c), 5).unwrap();
    }
    s.sync().unwrap();
    let mut ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    ids.reverse();
    ids.push(ChunkId::of(b"absent"));
    let got = s.get_chunks(&t, &ids);
    for (i, (_, c)) in chunks.iter().rev().enumerate() {
        assert_eq!(got[i].as_ref().unwrap().as_ref(), Some(c));
    }
    assert!(got[12].as_ref().unwrap().is_none());
    let loc = s
        .catalog
        .with_store(|c| c.chunk_locations(&t, &[chunks[0].0]))
        .unwrap()[0]
        .unwrap();
    s.bucket.delete(&pack_name(&t, loc.pack)).unwrap();
    let e = s.get_chunk(&t, &chunks[0].0).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    assert!(e.to_string().contains("missing from the bucket"), "{e}");
}

#[test]
fn collection_deletes_dead_packs_and_rewrites_half_dead_ones() {
    let s = temp_with(1 << 20);
    let t = tenant();
    let chunks: Vec<_> = (0..10).map(chunk).collect();
    s.put_chunks(&t, &chunks, 5).unwrap();
    let (kept, gone) = chunks.split_at(3);
    let keep_ids: Vec<ChunkId> = kept.iter().map(|(id, _)| *id).collect();
    s.commit(snapshot(&keep_ids), 6).unwrap();
    let (lonely, lc) = chunk(99);
    s.put_chunks(&t, &[(lonely, lc)], 7).unwrap();
    s.sync().unwrap();
    let before = s
        .catalog
        .with_store(|c| c.chunk_locations(&t, &keep_ids))
        .unwrap();
    let out = s.collect_garbage(100, &mut |_| {}).unwrap();
    assert_eq!(out.deleted, gone.len() as u64 + 1);
    assert_eq!((out.packs_deleted, out.packs_rewritten), (1, 1));
    let after = s
        .catalog
        .with_store(|c| c.chunk_locations(&t, &keep_ids))
        .unwrap();
    assert_ne!(before[0].unwrap().pack, after[0].unwrap().pack);
    for (id, c) in kept {
        assert_eq!(s.get_chunk(&t, id).unwrap().as_ref(), Some(c));
    }
    // The old packs are gone from the bucket; nothing is left to collect.
    for l in &before {
        assert!(matches!(
            s.bucket.get(&pack_name(&t, l.unwrap().pack)),
            Err(ObjectError::NotFound(_))
        ));
    }
    assert!(
        s.catalog
            .with_store(|c| c.pack_garbage())
            .unwrap()
            .is_empty()
    );
    let again = s.collect_garbage(100, &mut |_| {}).unwrap();
    assert_eq!((again.packs_deleted, again.packs_rewritten), (0, 0));
}
