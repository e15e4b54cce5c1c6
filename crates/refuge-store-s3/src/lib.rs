//! The object-store backend of the node's store: chunk bodies in pack
//! objects (tens of MiB each) in an S3-compatible bucket, everything else
//! (catalog, chunk index with each chunk's location, reference counts,
//! audit) in RocksDB on the node.
//!
//! # Writing
//!
//! Chunks a client uploads are appended to the tenant's open pack, in
//! memory, and answered as stored at once (`put_chunks` need not be
//! durable). When the open pack reaches its target size, the put that
//! filled it uploads it: the catalog records the upload (synced), the
//! object is written, then the chunks' locations and index entries are
//! written in one batch (`RocksStore::place_chunks`). A commit first
//! uploads the tenant's open pack and waits for the tenant's uploads in
//! progress, then commits in RocksDB, whose WAL sync makes the placements
//! durable: a commit is acknowledged only after its packs are durable in
//! the bucket and the catalog is synced. A failed upload forgets its chunks
//! (the commit that needs them fails with a missing chunk, and the agent
//! uploads them again); an upload cut by a crash is found at the next open
//! and its object deleted.
//!
//! # Reading
//!
//! A chunk is one ranged GET of its record; [`Store::get_chunks`] groups a
//! batch by pack and reads each pack's ranges together, packs in parallel.
//!
//! # Garbage collection
//!
//! RocksDB's collection removes unreferenced chunks and marks them dead in
//! their packs; then a pack with nothing alive is deleted, and one at least
//! half dead is rewritten with its live chunks only (`gc.rs`). The work
//! follows what became dead.

mod gc;
mod objects;
mod pack;

pub use objects::{Bucket, ObjectError, Objects, S3Config};

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use refuge_core::audit::{AuditEvent, AuditRecord};
use refuge_core::{ChunkId, SnapshotId, SnapshotRecord, StoredChunk, TenantId};
use refuge_store::{
    ChunkUsage, Committed, GcOutcome, Imported, NewSnapshot, PutOutcome, Quarantined, RefCounts,
    Result, Store, StoreError,
};
use refuge_store_rocksdb::{Bodies, Location, Placed, ReopeningStore, RocksOptions};
use tracing::warn;

/// What the catalog needs to know of a chunk waiting in a pack.
#[derive(Debug, Clone, Copy)]
struct Meta {
    raw_len: u32,
    stored_len: u32,
    checksum: [u8; 32],
}

/// One tenant's packing state.
#[derive(Default)]
struct TenantPacks {
    /// The pack being filled.
    open: pack::Builder,
    /// Per record of `open`, in order.
    meta: Vec<Meta>,
    /// The latest time a put gave for `open`'s chunks.
    now: i64,
    /// Chunks in `open` or in an upload in progress: found, not yet in
    /// the catalog.
    pending: HashMap<ChunkId, Meta>,
    /// Uploads in progress.
    uploading: usize,
}

/// A pack taken out of filling, to upload.
struct Sealed {
    tenant: TenantId,
    pack: pack::Builder,
    meta: Vec<Meta>,
    now: i64,
}

/// The object-store backend (see the crate docs).
pub struct PackStore {
    catalog: ReopeningStore,
    bucket: Arc<dyn Objects>,
    pack_bytes: usize,
    packing: Mutex<HashMap<TenantId, TenantPacks>>,
    /// Signalled when an upload ends.
    uploaded: Condvar,
    /// Objects of failed uploads whose deletion failed too: retried by
    /// the next garbage collection.
    orphans: Mutex<Vec<(TenantId, u64)>>,
    /// Why the last upload failed, while no later write has succeeded.
    trouble: Mutex<Option<Trouble>>,
    /// A probe of the bucket is running (one at a time).
    probing: AtomicBool,
}

/// A bucket that refused or failed a write.
#[derive(Debug, Clone)]
struct Trouble {
    /// What the upload got.
    error: StoreError,
    /// Size of the write that failed: a probe writes as much, so that a
    /// bucket with room for a few bytes but not for a pack still counts
    /// as full.
    len: usize,
}

/// The object a probe writes (and deletes when it was a large one).
const PROBE: &str = "probe";

/// The object name of `tenant`'s pack `n`.
fn pack_name(tenant: &TenantId, n: u64) -> String {
    format!("packs/{}/{n:016x}", tenant.as_str())
}

/// The bytes of a pack's records (without its trailer): what the catalog
/// records as the pack's size, against which dead bytes are weighed.
fn records_len(entries: &[pack::Entry]) -> u64 {
    entries.iter().map(|e| u64::from(e.len)).sum()
}

/// A failed write: a missing object there means a missing bucket, not a
/// damaged one.
fn write_error(e: ObjectError) -> StoreError {
    match e {
        ObjectError::NotFound(m) => StoreError::Backend(m),
        e => bucket_error(e),
    }
}

fn bucket_error(e: ObjectError) -> StoreError {
    match e {
        ObjectError::Full(m) => StoreError::NoSpace(m),
        ObjectError::NotFound(m) => StoreError::Corrupt(m),
        ObjectError::Other(m) => StoreError::Backend(m),
    }
}

impl PackStore {
    /// Opens the catalog in `dir` (created with bodies in packs if new)
    /// over `bucket`, and deletes the objects of uploads a crash cut.
    pub fn open(
        dir: &Path,
        opts: &RocksOptions,
        bucket: Arc<dyn Objects>,
        pack_bytes: usize,
    ) -> Result<Self> {
        let opts = RocksOptions {
            bodies: Bodies::Packs,
            ..opts.clone()
        };
        let catalog = ReopeningStore::open(dir, &opts)?;
        let unfinished = catalog.with_store(|s| s.unfinished_packs())?;
        let store = PackStore {
            catalog,
            bucket,
            pack_bytes: pack_bytes.max(1),
            packing: Mutex::default(),
            uploaded: Condvar::new(),
            orphans: Mutex::new(unfinished.into_iter().map(|p| (p.tenant, p.pack)).collect()),
            trouble: Mutex::new(None),
            probing: AtomicBool::new(false),
        };
        store.remove_orphans();
        Ok(store)
    }

    /// Where the bodies are, for messages.
    pub fn describe(&self) -> String {
        self.bucket.describe()
    }

    /// Uploads every open pack and flushes the catalog (at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.flush_packs(None)?;
        self.catalog.flush()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, TenantPacks>> {
        self.packing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the objects of uploads that never completed; what cannot
    /// be deleted now stays listed for the next try.
    fn remove_orphans(&self) {
        let list = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()));
        let mut left = Vec::new();
        for (tenant, n) in list {
            let done = self
                .bucket
                .delete(&pack_name(&tenant, n))
                .map_err(bucket_error)
                .and_then(|()| self.catalog.with_store(|s| s.forget_upload(n)));
            if let Err(e) = done {
                warn!(pack = n, tenant = %tenant.as_str(), error = %e, "cannot remove the object of an unfinished pack upload yet");
                left.push((tenant, n));
            }
        }
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(left);
    }

    fn set_trouble(&self, t: Option<Trouble>) {
        let mut g = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(new), None) = (&t, &*g) {
            warn!(bucket = %self.bucket.describe(), error = %new.error, "the bucket does not take writes: ingest stops until it does");
        }
        *g = t;
    }

    fn trouble(&self) -> Option<Trouble> {
        self.trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes a probe object as large as the write that failed last (a
    /// few bytes when none did), and deletes a large one again.
    fn probe(&self) -> Result<(), ObjectError> {
        let len = self
            .trouble()
            .map_or(16, |t| t.len.clamp(16, self.pack_bytes.max(16)));
        self.bucket.put(PROBE, vec![0; len])?;
        if len > 16 {
            self.bucket.put(PROBE, vec![0; 16])?;
        }
        Ok(())
    }

    /// Takes `tenant`'s open pack out for upload.
    fn seal(tenant: &TenantId, t: &mut TenantPacks) -> Sealed {
        t.uploading += 1;
        Sealed {
            tenant: tenant.clone(),
            pack: std::mem::take(&mut t.open),
            meta: std::mem::take(&mut t.meta),
            now: t.now,
        }
    }

    /// Uploads a sealed pack and records it; its chunks stop being pending
    /// either way.
    fn upload(&self, s: Sealed) -> Result<()> {
        let ids: Vec<ChunkId> = s.pack.entries().iter().map(|e| e.id).collect();
        let tenant = s.tenant.clone();
        let r = self.store_pack(s);
        let mut p = self.lock();
        if let Some(t) = p.get_mut(&tenant) {
            for id in &ids {
                t.pending.remove(id);
            }
            t.uploading -= 1;
        }
        drop(p);
        self.uploaded.notify_all();
        r
    }

    fn store_pack(&self, s: Sealed) -> Result<()> {
        let n = self.catalog.with_store(|c| c.begin_pack(&s.tenant))?;
        let name = pack_name(&s.tenant, n);
        let (bytes, entries) = s.pack.finish();
        let total = records_len(&entries);
        let len = bytes.len();
        let started = std::time::Instant::now();
        let put = self.bucket.put(&name, bytes);
        tracing::debug!(
            pack = %name,
            bytes = len,
            ms = started.elapsed().as_millis() as u64,
            ok = put.is_ok(),
            "pack upload"
        );
        if let Err(e) = put {
            let error = write_error(e);
            self.set_trouble(Some(Trouble {
                error: error.clone(),
                len,
            }));
            // Nothing points into it; what may have arrived goes.
            self.orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((s.tenant.clone(), n));
            self.remove_orphans();
            return Err(error);
        }
        self.set_trouble(None);
        let placed: Vec<Placed> = entries
            .iter()
            .zip(&s.meta)
            .map(|(e, m)| Placed {
                id: e.id,
                raw_len: m.raw_len,
                stored_len: m.stored_len,
                checksum: m.checksum,
                at: Location {
                    pack: n,
                    offset: e.offset,
                    len: e.len,
                },
            })
            .collect();
        self.catalog
            .with_store(|c| c.place_chunks(&s.tenant, n, &placed, total, s.now))?;
        Ok(())
    }

    /// Uploads the open packs of `tenant` (every tenant: `None`) and waits
    /// for their uploads in progress.
    fn flush_packs(&self, tenant: Option<&TenantId>) -> Result<()> {
        let sealed: Vec<Sealed> = {
            let mut p = self.lock();
            p.iter_mut()
                .filter(|(t, tp)| tenant.is_none_or(|x| x == *t) && !tp.open.is_empty())
                .map(|(t, tp)| Self::seal(t, tp))
                .collect()
        };
        let mut first = None;
        for s in sealed {
            if let Err(e) = self.upload(s) {
                first.get_or_insert(e);
            }
        }
        let mut p = self.lock();
        while p
            .iter()
            .any(|(t, tp)| tenant.is_none_or(|x| x == t) && tp.uploading > 0)
        {
            p = self.uploaded.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        first.map_or(Ok(()), Err)
    }

    fn is_pending(&self, tenant: &TenantId, id: &ChunkId) -> bool {
        self.lock()
            .get(tenant)
            .is_some_and(|t| t.pending.contains_key(id))
    }

    /// The records at `locs` (each `Some`), read from their packs.
    fn read_records(
        &self,
        tenant: &TenantId,
        ids: &[ChunkId],
        locs: &[Option<Location>],
    ) -> Vec<Result<Option<StoredChunk>>> {
        let mut by_pack: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, l) in locs.iter().enumerate() {
            if let Some(l) = l {
                by_pack.entry(l.pack).or_default().push(i);
            }
        }
        let mut out: Vec<Result<Option<StoredChunk>>> = locs.iter().map(|_| Ok(None)).collect();
        let packs: Vec<(u64, Vec<usize>)> = by_pack.into_iter().collect();
        let reads = packs
            .iter()
            .map(|(n, idx)| {
                let ranges: Vec<Range<u64>> = idx
                    .iter()
                    .filter_map(|&i| locs[i])
                    .map(|l| l.offset..l.offset + u64::from(l.len))
                    .collect();
                (pack_name(tenant, *n), ranges)
            })
            .collect();
        for ((n, idx), got) in packs.iter().zip(self.bucket.get_ranges(reads)) {
            match got {
                Ok(bodies) => {
                    for (&i, b) in idx.iter().zip(bodies) {
                        out[i] = StoredChunk::decode_record(&b).map(Some).map_err(|e| {
                            StoreError::Corrupt(format!(
                                "chunk {} in pack {n:016x}: {e}",
                                ids[i].short()
                            ))
                        });
                    }
                }
                Err(e) => {
                    let e = match e {
                        ObjectError::NotFound(m) => ObjectError::NotFound(format!(
                            "pack {n:016x} is missing from the bucket: {m}"
                        )),
                        e => e,
                    };
                    for &i in idx {
                        out[i] = Err(bucket_error(e.clone()));
                    }
                }
            }
        }
        out
    }
}

impl Store for PackStore {
    fn chunk_lengths(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<u32>>> {
        let mut lens = self.catalog.chunk_lengths(tenant, ids)?;
        if lens.iter().any(Option::is_none) {
            let p = self.lock();
            if let Some(t) = p.get(tenant) {
                for (l, id) in lens.iter_mut().zip(ids) {
                    if l.is_none() {
                        *l = t.pending.get(id).map(|m| m.raw_len);
                    }
                }
            }
        }
        Ok(lens)
    }

    fn chunk_usage(&self, tenant: &TenantId) -> Result<ChunkUsage> {
        self.flush_packs(Some(tenant))?;
        self.catalog.chunk_usage(tenant)
    }

    fn put_chunks(
        &self,
        tenant: &TenantId,
        chunks: &[(ChunkId, StoredChunk)],
        now_micros: i64,
    ) -> Result<PutOutcome> {
        let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        let known = self.catalog.with_store(|s| s.chunk_sums(tenant, &ids))?;
        let mut out = PutOutcome::default();
        let mut existing = Vec::new();
        let mut fresh = Vec::new();
        for ((id, c), had) in chunks.iter().zip(known) {
            let sum = *blake3::hash(&c.data).as_bytes();
            match had {
                Some((_, stored)) => {
                    if c.cipher != refuge_core::Cipher::None && stored.is_some_and(|s| s != sum) {
                        out.conflict.get_or_insert(*id);
                    }
                    existing.push(*id);
                }
                None => fresh.push((id, c, sum)),
            }
        }
        for (id, _, _) in &fresh {
            if self.catalog.is_quarantined(tenant, id)? {
                out.healed += 1;
            }
        }
        // A pack is sealed as soon as it reaches its size, so one large put
        // may fill several.
        let mut sealed = Vec::new();
        {
            let mut p = self.lock();
            let t = p.entry(tenant.clone()).or_default();
            t.now = t.now.max(now_micros);
            for (id, c, sum) in fresh {
                if let Some(m) = t.pending.get(id) {
                    if c.cipher != refuge_core::Cipher::None && m.checksum != sum {
                        out.conflict.get_or_insert(*id);
                    }
                    continue;
                }
                let m = Meta {
                    raw_len: c.raw_len,
                    stored_len: c.data.len() as u32,
                    checksum: sum,
                };
                t.open.push(*id, &c.encode_record());
                t.meta.push(m);
                t.pending.insert(*id, m);
                out.stored += 1;
                out.bytes += c.data.len() as u64;
                if t.open.len() >= self.pack_bytes {
                    sealed.push(Self::seal(tenant, t));
                }
            }
        }
        if !existing.is_empty() {
            self.catalog.touch_chunks(tenant, &existing, now_micros)?;
        }
        let mut first = None;
        for s in sealed {
            if let Err(e) = self.upload(s) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(out), Err)
    }

    fn touch_chunks(&self, tenant: &TenantId, ids: &[ChunkId], now_micros: i64) -> Result<()> {
        self.catalog.touch_chunks(tenant, ids, now_micros)
    }

    fn chunk_checksum(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<[u8; 32]>> {
        match self.catalog.chunk_checksum(tenant, id)? {
            Some(s) => Ok(Some(s)),
            None => Ok(self
                .lock()
                .get(tenant)
                .and_then(|t| t.pending.get(id))
                .map(|m| m.checksum)),
        }
    }

    fn chunk_refcount(&self, tenant: &TenantId, id: &ChunkId) -> Result<u64> {
        self.catalog.chunk_refcount(tenant, id)
    }

    fn get_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<StoredChunk>> {
        self.get_chunks(tenant, std::slice::from_ref(id))
            .pop()
            .unwrap_or(Ok(None))
    }

    fn get_chunks(&self, tenant: &TenantId, ids: &[ChunkId]) -> Vec<Result<Option<StoredChunk>>> {
        let locate = || self.catalog.with_store(|s| s.chunk_locations(tenant, ids));
        let mut locs = match locate() {
            Ok(l) => l,
            Err(e) => return ids.iter().map(|_| Err(e.clone())).collect(),
        };
        // A chunk still waiting in a pack is uploaded first.
        if ids
            .iter()
            .zip(&locs)
            .any(|(id, l)| l.is_none() && self.is_pending(tenant, id))
        {
            let again = self.flush_packs(Some(tenant)).and_then(|()| locate());
            match again {
                Ok(l) => locs = l,
                Err(e) => return ids.iter().map(|_| Err(e.clone())).collect(),
            }
        }
        let mut out = self.read_records(tenant, ids, &locs);
        // A pack garbage collection rewrote meanwhile: read where the
        // chunks are now, once.
        if out.iter().any(
            |r| matches!(r, Err(StoreError::Corrupt(m)) if m.contains("missing from the bucket")),
        ) && let Ok(now) = locate()
            && now != locs
        {
            out = self.read_records(tenant, ids, &now);
        }
        out
    }

    fn sync(&self) -> Result<()> {
        self.flush_packs(None)?;
        self.catalog.sync()
    }

    fn commit(&self, new: NewSnapshot, now_micros: i64) -> Result<Committed> {
        self.flush_packs(Some(&new.tenant))?;
        self.catalog.commit(new, now_micros)
    }

    fn import_snapshot(&self, rec: &SnapshotRecord, refs: &RefCounts) -> Result<Imported> {
        self.flush_packs(Some(&rec.tenant))?;
        self.catalog.import_snapshot(rec, refs)
    }

    fn deleted_at(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<i64>> {
        self.catalog.deleted_at(tenant, id)
    }

    fn delete_snapshot(
        &self,
        tenant: &TenantId,
        id: &SnapshotId,
        refs: &RefCounts,
        now_micros: i64,
    ) -> Result<bool> {
        self.catalog.delete_snapshot(tenant, id, refs, now_micros)
    }

    fn collect_garbage(
        &self,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        let mut out = self.catalog.collect_garbage(cutoff_micros, progress)?;
        self.remove_orphans();
        self.collect_packs(&mut out)?;
        progress(&out);
        Ok(out)
    }

    fn collect_tenant_garbage(
        &self,
        tenant: &TenantId,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        self.flush_packs(Some(tenant))?;
        let mut out = self
            .catalog
            .collect_tenant_garbage(tenant, cutoff_micros, progress)?;
        self.remove_orphans();
        self.collect_packs_of(Some(tenant), &mut out)?;
        progress(&out);
        Ok(out)
    }

    fn reclaim_space(&self) -> Result<()> {
        self.catalog.reclaim_space()
    }

    fn list_chunk_ids(
        &self,
        tenant: &TenantId,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>> {
        self.flush_packs(Some(tenant))?;
        self.catalog.list_chunk_ids(tenant, after, limit)
    }

    fn quarantine_chunk(
        &self,
        tenant: &TenantId,
        id: &ChunkId,
        reason: &str,
        now_micros: i64,
    ) -> Result<bool> {
        if self.is_pending(tenant, id) {
            self.flush_packs(Some(tenant))?;
        }
        self.catalog
            .quarantine_chunk(tenant, id, reason, now_micros)
    }

    // A quarantined chunk whose healing copy waits in a pack is healed
    // (if that upload fails, it is quarantined again).
    fn list_quarantine(&self, tenant: &TenantId) -> Result<Vec<Quarantined>> {
        let mut q = self.catalog.list_quarantine(tenant)?;
        q.retain(|q| !self.is_pending(tenant, &q.id));
        Ok(q)
    }

    fn is_quarantined(&self, tenant: &TenantId, id: &ChunkId) -> Result<bool> {
        Ok(!self.is_pending(tenant, id) && self.catalog.is_quarantined(tenant, id)?)
    }

    fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.catalog.get_setting(key)
    }

    fn put_setting(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        self.catalog.put_setting(key, value)
    }

    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.catalog.list_settings(prefix)
    }

    fn list_snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>> {
        self.catalog.list_snapshots(tenant)
    }

    fn get_snapshot(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        self.catalog.get_snapshot(tenant, id)
    }

    fn list_tenants(&self) -> Result<Vec<TenantId>> {
        // A tenant whose only chunks wait in a pack is one too.
        self.flush_packs(None)?;
        self.catalog.list_tenants()
    }

    fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditRecord>> {
        self.catalog.append_audit(events)
    }

    fn read_audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.catalog.read_audit(from_seq, limit)
    }

    fn writes_stopped(&self) -> Option<StoreError> {
        self.catalog
            .writes_stopped()
            .or_else(|| self.trouble().map(|t| t.error))
    }

    fn probe_writes(&self) {
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        match self.probe() {
            Ok(()) => {
                self.set_trouble(None);
                // What failed uploads left while the bucket did not answer.
                let left = !self
                    .orphans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if left {
                    self.remove_orphans();
                }
            }
            Err(e) => {
                let len = self.trouble().map_or(16, |t| t.len);
                self.set_trouble(Some(Trouble {
                    error: write_error(e),
                    len,
                }));
            }
        }
        self.probing.store(false, Ordering::SeqCst);
    }

    fn reopen(&self) -> Result<bool> {
        self.catalog.reopen()
    }

    fn reopen_needs_bytes(&self) -> u64 {
        self.catalog.reopen_needs_bytes()
    }
}

#[cfg(test)]
mod tests;
