//! A [`RocksStore`] that reopens itself after its disk filled.
//!
//! When RocksDB runs out of space inside (a WAL append, a flush or a
//! compaction, with no reserve left or another process racing it), it
//! keeps a background error and refuses every write until the database is
//! closed and opened again; the C API the `rocksdb` crate wraps has no
//! `Resume`. [`ReopeningStore`] notes the first `NoSpace` error, answers
//! `writes_stopped`, and on [`Store::reopen`] (which the node calls once
//! free space is back) closes and reopens the database: everything
//! acknowledged was in the synced WAL and is replayed.
//!
//! If that open fails (the space went again meanwhile), the store is
//! opened read-only, which writes nothing: restores keep working, writes
//! stay stopped, and the next check tries again.
//!
//! Operations hold the read side of a lock for their duration; a reopen
//! takes the write side only when it is free (`try_write`), so it never
//! waits behind a long verification and never blocks new operations: it
//! is simply tried again at the next check.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use refuge_core::audit::{AuditEvent, AuditRecord};
use refuge_core::{ChunkId, SnapshotId, SnapshotRecord, StoredChunk, TenantId};
use refuge_store::{
    ChunkUsage, Committed, GcOutcome, Imported, NewSnapshot, PutOutcome, Quarantined, RefCounts,
    Result, Store, StoreError,
};

use crate::{RocksOptions, RocksStore};

/// The setting a probe write removes (it never exists).
const PROBE_KEY: &str = "refuge.write-probe";

/// A [`RocksStore`] that reopens after a full disk (see the module docs).
pub struct ReopeningStore {
    db: RwLock<Option<RocksStore>>,
    dir: PathBuf,
    opts: RocksOptions,
    stopped: AtomicBool,
    /// Background errors of the open instance already probed.
    probed: AtomicU64,
    /// The error that stopped writes.
    why: Mutex<String>,
}

impl ReopeningStore {
    /// Opens the store in `dir`.
    pub fn open(dir: &Path, opts: &RocksOptions) -> Result<Self> {
        Ok(ReopeningStore {
            db: RwLock::new(Some(RocksStore::open(dir, opts)?)),
            dir: dir.to_path_buf(),
            opts: opts.clone(),
            stopped: AtomicBool::new(false),
            probed: AtomicU64::new(0),
            why: Mutex::new(String::new()),
        })
    }

    /// Whether the open store uses direct I/O
    /// ([`RocksStore::uses_direct_io`]); false while it is closed.
    pub fn uses_direct_io(&self) -> bool {
        self.with(|s| Ok(s.uses_direct_io())).unwrap_or(false)
    }

    /// Flushes every column family (at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.with(|s| s.flush())
    }

    /// Runs `f` on the open instance (the pack backend's catalog calls),
    /// noting a `NoSpace` error like every store call.
    pub fn with_store<T>(&self, f: impl FnOnce(&RocksStore) -> Result<T>) -> Result<T> {
        self.with(f)
    }

    fn with<T>(&self, f: impl FnOnce(&RocksStore) -> Result<T>) -> Result<T> {
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        let Some(s) = g.as_ref() else {
            return Err(StoreError::NoSpace(format!(
                "the store is closed after its disk filled ({}); it reopens when space is freed",
                self.why.lock().unwrap_or_else(|p| p.into_inner())
            )));
        };
        let r = f(s);
        self.note(&r);
        r
    }

    /// Records the first `NoSpace` error.
    fn note<T>(&self, r: &Result<T>) {
        if let Err(StoreError::NoSpace(m)) = r
            && !self.stopped.swap(true, Ordering::SeqCst)
        {
            *self.why.lock().unwrap_or_else(|p| p.into_inner()) = m.clone();
        }
    }
}

impl Store for ReopeningStore {
    fn chunk_lengths(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<u32>>> {
        self.with(|s| s.chunk_lengths(tenant, ids))
    }
    fn chunk_usage(&self, tenant: &TenantId) -> Result<ChunkUsage> {
        self.with(|s| s.chunk_usage(tenant))
    }
    fn missing_chunks(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<usize>> {
        self.with(|s| s.missing_chunks(tenant, ids))
    }
    fn put_chunks(
        &self,
        tenant: &TenantId,
        chunks: &[(ChunkId, StoredChunk)],
        now_micros: i64,
    ) -> Result<PutOutcome> {
        self.with(|s| s.put_chunks(tenant, chunks, now_micros))
    }
    fn touch_chunks(&self, tenant: &TenantId, ids: &[ChunkId], now_micros: i64) -> Result<()> {
        self.with(|s| s.touch_chunks(tenant, ids, now_micros))
    }
    fn chunk_checksum(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<[u8; 32]>> {
        self.with(|s| s.chunk_checksum(tenant, id))
    }
    fn chunk_refcount(&self, tenant: &TenantId, id: &ChunkId) -> Result<u64> {
        self.with(|s| s.chunk_refcount(tenant, id))
    }
    fn get_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<StoredChunk>> {
        self.with(|s| s.get_chunk(tenant, id))
    }
    fn sync(&self) -> Result<()> {
        self.with(|s| s.sync())
    }
    fn commit(&self, new: NewSnapshot, now_micros: i64) -> Result<Committed> {
        self.with(|s| s.commit(new, now_micros))
    }
    fn import_snapshot(&self, rec: &SnapshotRecord, refs: &RefCounts) -> Result<Imported> {
        self.with(|s| s.import_snapshot(rec, refs))
    }

    fn deleted_at(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<i64>> {
        self.with(|s| s.deleted_at(tenant, id))
    }

    fn delete_snapshot(
        &self,
        tenant: &TenantId,
        id: &SnapshotId,
        refs: &RefCounts,
        now_micros: i64,
    ) -> Result<bool> {
        self.with(|s| s.delete_snapshot(tenant, id, refs, now_micros))
    }
    fn collect_garbage(
        &self,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        self.with(|s| s.collect_garbage(cutoff_micros, progress))
    }
    fn collect_tenant_garbage(
        &self,
        tenant: &TenantId,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        self.with(|s| s.collect_tenant_garbage(tenant, cutoff_micros, progress))
    }
    fn reclaim_space(&self) -> Result<()> {
        self.with(|s| s.reclaim_space())
    }
    fn list_chunk_ids(
        &self,
        tenant: &TenantId,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>> {
        self.with(|s| s.list_chunk_ids(tenant, after, limit))
    }
    fn quarantine_chunk(
        &self,
        tenant: &TenantId,
        id: &ChunkId,
        reason: &str,
        now_micros: i64,
    ) -> Result<bool> {
        self.with(|s| s.quarantine_chunk(tenant, id, reason, now_micros))
    }
    fn list_quarantine(&self, tenant: &TenantId) -> Result<Vec<Quarantined>> {
        self.with(|s| s.list_quarantine(tenant))
    }
    fn is_quarantined(&self, tenant: &TenantId, id: &ChunkId) -> Result<bool> {
        self.with(|s| s.is_quarantined(tenant, id))
    }
    fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with(|s| s.get_setting(key))
    }
    fn put_setting(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        self.with(|s| s.put_setting(key, value))
    }
    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.with(|s| s.list_settings(prefix))
    }
    fn list_snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>> {
        self.with(|s| s.list_snapshots(tenant))
    }
    fn get_snapshot(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        self.with(|s| s.get_snapshot(tenant, id))
    }
    fn list_tenants(&self) -> Result<Vec<TenantId>> {
        self.with(|s| s.list_tenants())
    }
    fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditRecord>> {
        self.with(|s| s.append_audit(events))
    }
    fn read_audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.with(|s| s.read_audit(from_seq, limit))
    }

    fn writes_stopped(&self) -> Option<StoreError> {
        // A flush that failed in the background stops writes before any
        // caller's write has seen it: one small write finds out why.
        // Once per new background error: one that RocksDB recovered from
        // by itself leaves writes working, and costs one probe.
        if !self.stopped.load(Ordering::SeqCst)
            && let Ok(g) = self.db.try_read()
            && let Some(s) = g.as_ref()
        {
            let n = s.background_errors();
            if n > self.probed.swap(n, Ordering::SeqCst) {
                self.note(&s.put_setting(PROBE_KEY, None));
            }
        }
        self.stopped.load(Ordering::SeqCst).then(|| {
            StoreError::NoSpace(self.why.lock().unwrap_or_else(|p| p.into_inner()).clone())
        })
    }

    fn reopen_needs_bytes(&self) -> u64 {
        // The write-ahead logs (`NNNNNN.log`): replaying them may flush
        // as much as they hold.
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn reopen(&self) -> Result<bool> {
        if !self.stopped.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let Ok(mut g) = self.db.try_write() else {
            return Ok(false);
        };
        // Close first: RocksDB holds a lock file, so the new instance can
        // only open once the old one is gone.
        drop(g.take());
        match RocksStore::open(&self.dir, &self.opts) {
            Ok(s) => {
                *g = Some(s);
                self.probed.store(0, Ordering::SeqCst);
                self.stopped.store(false, Ordering::SeqCst);
                Ok(true)
            }
            Err(e) => {
                // Space went again meanwhile: serve reads from a read-only
                // instance (it writes nothing) until a later try opens the
                // store for writing; writes stay stopped.
                *self.why.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                if let Ok(ro) = RocksStore::open_read_only(&self.dir, &self.opts) {
                    *g = Some(ro);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Temp {
        store: ReopeningStore,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Temp {
        type Target = ReopeningStore;
        fn deref(&self) -> &ReopeningStore {
            &self.store
        }
    }

    fn temp() -> Temp {
        let dir = tempfile::tempdir().unwrap();
        let store = ReopeningStore::open(dir.path(), &RocksOptions::default()).unwrap();
        Temp { store, _dir: dir }
    }

    refuge_store::conformance_tests!(temp());

    #[test]
    fn a_stopped_store_reopens_in_place_with_its_data_and_takes_writes_again() {
        let s = temp();
        assert!(s.writes_stopped().is_none());
        assert!(!s.reopen().unwrap(), "nothing to do while writes work");
        s.put_setting("k", Some(b"before")).unwrap();
        // What a NoSpace error from RocksDB records.
        s.stopped.store(true, Ordering::SeqCst);
        *s.why.lock().unwrap() = "IO error: No space left on device".into();
        assert!(s.writes_stopped().unwrap().to_string().contains("No space"));
        // Busy (an operation holds the read side): not now, no waiting.
        {
            let _op = s.db.read().unwrap();
            assert!(!s.reopen().unwrap());
        }
        assert!(s.reopen().unwrap());
        assert!(s.writes_stopped().is_none());
        assert_eq!(s.get_setting("k").unwrap().as_deref(), Some(&b"before"[..]));
        s.put_setting("k", Some(b"after")).unwrap();
        assert_eq!(s.get_setting("k").unwrap().as_deref(), Some(&b"after"[..]));
    }

    #[test]
    fn a_reopen_that_fails_keeps_reads_working_read_only_until_one_succeeds() {
        let s = temp();
        s.put_setting("k", Some(b"v1")).unwrap();
        s.stopped.store(true, Ordering::SeqCst);
        // The open fails: another instance holds the database's lock
        // file (as ENOSPC would fail it).
        drop(s.db.write().unwrap().take());
        let blocker = RocksStore::open(s._dir.path(), &RocksOptions::default()).unwrap();
        assert!(s.reopen().is_err());
        assert!(s.writes_stopped().is_some());
        assert_eq!(s.get_setting("k").unwrap().as_deref(), Some(&b"v1"[..]));
        assert!(s.put_setting("k", Some(b"v2")).is_err(), "read-only");
        drop(blocker);
        assert!(s.reopen().unwrap());
        assert!(s.writes_stopped().is_none());
        s.put_setting("k", Some(b"v2")).unwrap();
        assert_eq!(s.get_setting("k").unwrap().as_deref(), Some(&b"v2"[..]));
    }

    #[test]
    fn a_store_closed_without_a_read_only_fallback_says_so() {
        let s = temp();
        s.stopped.store(true, Ordering::SeqCst);
        drop(s.db.write().unwrap().take());
        let e = s.get_setting("k").unwrap_err();
        assert!(e.to_string().contains("reopens when space is freed"), "{e}");
    }
}
