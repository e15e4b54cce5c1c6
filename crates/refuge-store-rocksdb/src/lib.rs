//! The RocksDB implementation of [`refuge_store::Store`].
//!
//! # Layout
//!
//! Twelve column families (byte layouts in `docs/format.md`):
//!
//! | column family | key | value |
//! |---|---|---|
//! | `chunks` | tenant key, chunk id | stored chunk record (header + body), in blob files |
//! | `chunk_index` | tenant key, chunk id | uncompressed length, stored length |
//! | `snapshots` | tenant key, catalog position (big-endian) | snapshot record |
//! | `snapshot_ids` | tenant key, snapshot id | catalog position (big-endian) |
//! | `refcounts` | tenant key, chunk id | references from snapshots (u64, merge-added) |
//! | `unreferenced` | tenant key, chunk id | since when no snapshot references it |
//! | `quarantine` | tenant key, chunk id | when and why verification took it out of service |
//! | `meta` | name | store format version, last sequence, last time, settings, deletion marks |
//! | `audit` | sequence (big-endian) | hash-chained audit record |
//! | `commit_tokens` | tenant key, commit token | sequence (big-endian), commit time |
//! | `packs`, `pack_dead` | see [`packs`](crate::Bodies) | used only when bodies are in packs |
//!
//! A snapshot's catalog position is the sequence number its commit took;
//! an imported snapshot (replication) keeps the sequence number its own
//! node gave it in the record and takes the next local number as its
//! position, so positions never collide. A deleted snapshot leaves a mark
//! in `meta` (`deleted/`, tenant key, id -> time) so that a peer's copy is
//! never imported again.
//!
//! The tenant key is one length byte followed by the tenant name, so one
//! tenant's keys are a contiguous, prefix-free range.
//!
//! A store keeps chunk bodies where it was created to ([`Bodies`], recorded
//! in `meta`): inline, or in pack objects of an object-store backend, in
//! which case `chunks` holds each chunk's location (`packs.rs`).
//!
//! Inline chunk bodies go to RocksDB's integrated blob files (`enable_blob_files`):
//! the LSM tree then holds only small pointers, so compactions do not rewrite
//! chunk bodies. "Do you have these chunks?" reads only `chunk_index`, a
//! small column family with bloom filters, never a blob.
//!
//! # Durability
//!
//! Chunk puts are written to the WAL without syncing. A commit first syncs
//! the WAL (making every earlier put durable), then writes the snapshot
//! record, its id index and the new sequence in one synced write batch:
//! a crash leaves either no snapshot or the whole snapshot, and never a
//! snapshot whose chunks are lost.
//!
//! # Reference counts and garbage collection
//!
//! A commit adds its references (RocksDB merge operands, no read) in the
//! same synced batch as the record; a deletion subtracts them, and marks
//! the chunks that reach zero, in the same synced batch that removes the
//! record. Chunks that reach zero, and new chunks, get an `unreferenced`
//! entry with the time; garbage collection
//! walks only those entries. It deletes a batch under the write side of
//! `gc_lock`; commits check that their chunks exist, and deletions
//! subtract, under the read side, so neither can interleave with a batch.

mod direct_io;
pub mod failpoints;
mod packs;
mod reopen;

pub use packs::{Bodies, Location, PackGarbage, PackInfo, Placed};
pub use reopen::ReopeningStore;

use std::path::Path;
use std::sync::{Mutex, RwLock};

use failpoints::fail_point;
use refuge_core::audit::{AuditEvent, AuditRecord};
use refuge_core::{ChunkId, SnapshotId, SnapshotRecord, StoredChunk, TenantId};
use refuge_store::{
    COMMIT_TOKEN_KEEP_MICROS, Committed, GC_BATCH, GcOutcome, Imported, NewSnapshot, PutOutcome,
    Quarantined, RefCounts, Result, Store, StoreError, build_record, chain_audit, sort_snapshots,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Direction,
    IteratorMode, MergeOperands, Options, WriteBatch, WriteOptions,
};

const CF_CHUNKS: &str = "chunks";
const CF_CHUNK_INDEX: &str = "chunk_index";
const CF_SNAPSHOTS: &str = "snapshots";
const CF_SNAPSHOT_IDS: &str = "snapshot_ids";
const CF_META: &str = "meta";
const CF_AUDIT: &str = "audit";
const CF_REFCOUNTS: &str = "refcounts";
const CF_UNREF: &str = "unreferenced";
const CF_QUARANTINE: &str = "quarantine";
const CF_COMMIT_TOKENS: &str = "commit_tokens";
const CF_PACKS: &str = "packs";
const CF_PACK_DEAD: &str = "pack_dead";
/// Blob garbage collection of the `chunks` family (RocksDB's defaults):
/// compactions relocate live blobs out of the oldest quarter of blob
/// files. [`RocksStore::reclaim`] widens it to every file for one pass.
const BLOB_GC_AGE_CUTOFF: &str = "0.25";
const BLOB_GC_FORCE: &str = "1.0";

const ALL_CFS: [&str; 12] = [
    CF_CHUNKS,
    CF_CHUNK_INDEX,
    CF_SNAPSHOTS,
    CF_SNAPSHOT_IDS,
    CF_META,
    CF_AUDIT,
    CF_REFCOUNTS,
    CF_UNREF,
    CF_QUARANTINE,
    CF_COMMIT_TOKENS,
    CF_PACKS,
    CF_PACK_DEAD,
];
const SETTING_PREFIX: &str = "setting/";

const META_FORMAT: &[u8] = b"format";
const META_SEQ: &[u8] = b"last_seq";
const META_TIME: &[u8] = b"last_time_micros";
const META_DELETED: &[u8] = b"deleted/";
const META_BODIES: &[u8] = b"bodies";
use refuge_core::format::ROCKS_STORE_VERSION as STORE_FORMAT_VERSION;

/// Tunables for the RocksDB store.
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Shared block cache for index/filter/data blocks.
    pub block_cache_bytes: usize,
    /// Memtable size of the chunk column family (chunk bodies wait here
    /// until a flush moves them to blob files).
    pub chunk_write_buffer_bytes: usize,
    /// Values at least this large go to blob files.
    pub min_blob_size: u64,
    /// Where chunk bodies go; a store keeps what it was created with.
    pub bodies: Bodies,
    /// Write flushed and compacted files (and read compactions' inputs)
    /// with `O_DIRECT`, where the file system takes it (`direct_io.rs`).
    pub direct_io: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_bytes: 64 << 20,
            chunk_write_buffer_bytes: 64 << 20,
            min_blob_size: 4096,
            bodies: Bodies::Inline,
            direct_io: false,
        }
    }
}

/// A RocksDB-backed store in one directory.
pub struct RocksStore {
    db: DB,
    /// Serialises commits: they assign sequence numbers and times.
    commit: Mutex<(u64, i64)>,
    /// Serialises audit appends: the last record's sequence and hash.
    audit: Mutex<(u64, [u8; 32])>,
    /// Read side: commits (existence check to write) and deletions;
    /// write side: one garbage collection batch.
    gc_lock: RwLock<()>,
    /// Where chunk bodies are (fixed at creation, checked at open).
    bodies: Bodies,
    /// The last pack number handed out (packs stores).
    packs: Mutex<u64>,
    /// Whether flushes and compactions go past the page cache.
    direct_io: bool,
}

/// Reference counts are i64 little-endian sums of merge operands (a
/// deletion adds negative ones).
fn add_counts(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let read = |v: &[u8]| v.try_into().map(i64::from_le_bytes).unwrap_or(0);
    let mut n = existing.map_or(0, read);
    for op in ops {
        n = n.saturating_add(read(op));
    }
    Some(n.to_le_bytes().to_vec())
}

fn count_of(v: Option<&[u8]>) -> i64 {
    v.and_then(|v| v.try_into().ok())
        .map(i64::from_le_bytes)
        .unwrap_or(0)
}

/// What `chunk_index` says of a chunk.
struct IndexEntry {
    raw_len: u32,
    checksum: Option<[u8; 32]>,
}

fn err(e: rocksdb::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("ENOSPC") {
        return StoreError::NoSpace(text);
    }
    match e.kind() {
        rocksdb::ErrorKind::Corruption => StoreError::Corrupt(text),
        _ => StoreError::Backend(text),
    }
}

/// Options of a synced write: it returns once it is in the WAL on disk.
/// (Only the power-loss test's control, fail point `store.unsynced`,
/// turns the sync off.)
fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(!failpoints::is_set("store.unsynced"));
    wo
}

fn tenant_key(t: &TenantId) -> Vec<u8> {
    let name = t.as_str().as_bytes();
    let mut k = Vec::with_capacity(1 + name.len() + 32);
    k.push(name.len() as u8);
    k.extend_from_slice(name);
    k
}

fn key(t: &TenantId, rest: &[u8]) -> Vec<u8> {
    let mut k = tenant_key(t);
    k.extend_from_slice(rest);
    k
}

/// The `meta` key of the deletion mark of `tenant`'s snapshot `id`.
fn deleted_key(t: &TenantId, id: &SnapshotId) -> Vec<u8> {
    let mut k = META_DELETED.to_vec();
    k.extend_from_slice(&key(t, &id.0));
    k
}

fn u64_of(v: &[u8]) -> Result<u64> {
    let a: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt("meta value is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(a))
}

impl RocksStore {
    /// Whether this store's flushes and compactions use `O_DIRECT`
    /// ([`RocksOptions::direct_io`], and the file system takes it).
    pub fn uses_direct_io(&self) -> bool {
        self.direct_io
    }

    /// Syncs the WAL: every earlier write is durable after this.
    fn sync_wal(&self) -> Result<()> {
        if failpoints::is_set("store.unsynced") {
            return Ok(());
        }
        self.db.flush_wal(true).map_err(err)
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path, o: &RocksOptions) -> Result<Self> {
        Self::open_with(dir, o, false)
    }

    /// Opens the existing store in `dir` for reading only: nothing is
    /// written (the WAL is replayed in memory), so it opens on a full
    /// disk; every write fails.
    pub fn open_read_only(dir: &Path, o: &RocksOptions) -> Result<Self> {
        Self::open_with(dir, o, true)
    }

    fn open_with(dir: &Path, o: &RocksOptions, read_only: bool) -> Result<Self> {
        let cache = Cache::new_lru_cache(o.block_cache_bytes);
        let table = |bloom: bool| {
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            t.set_cache_index_and_filter_blocks(true);
            if bloom {
                t.set_bloom_filter(10.0, false);
            }
            t
        };
        // Opening replays the WAL into memtables without writing table
        // files: a store reopened on a nearly full disk (after its writes
        // stopped there) opens, and keeps serving restores; the replayed
        // data is flushed later like any memtable. (The crate has no
        // setter for this option; the string form sets it.)
        let mut db_opts = Options::default()
            .get_options_from_string("avoid_flush_during_recovery=true")
            .map_err(err)?;
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.set_max_total_wal_size(256 << 20);
        let direct_io = o.direct_io && direct_io::supported(dir, read_only);
        db_opts.set_use_direct_io_for_flush_and_compaction(direct_io);

        let mut chunks = Options::default();
        chunks.set_block_based_table_factory(&table(true));
        chunks.set_enable_blob_files(true);
        chunks.set_min_blob_size(o.min_blob_size);
        chunks.set_blob_file_size(256 << 20);
        // Bodies are already zstd-compressed by the agent.
        chunks.set_blob_compression_type(DBCompressionType::None);
        chunks.set_compression_type(DBCompressionType::None);
        chunks.set_enable_blob_gc(true);
        chunks.set_blob_gc_age_cutoff(BLOB_GC_AGE_CUTOFF.parse().unwrap_or(0.25));
        chunks.set_blob_gc_force_threshold(BLOB_GC_FORCE.parse().unwrap_or(1.0));
        chunks.set_write_buffer_size(o.chunk_write_buffer_bytes);

        let mut small = Options::default();
        small.set_block_based_table_factory(&table(true));
        small.set_compression_type(DBCompressionType::None);
        let mut counts = small.clone();
        counts.set_merge_operator_associative("refuge_add_i64", add_counts);

        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_CHUNKS, chunks),
            ColumnFamilyDescriptor::new(CF_CHUNK_INDEX, small.clone()),
            ColumnFamilyDescriptor::new(CF_SNAPSHOTS, small.clone()),
            ColumnFamilyDescriptor::new(CF_SNAPSHOT_IDS, small.clone()),
            ColumnFamilyDescriptor::new(CF_META, small.clone()),
            ColumnFamilyDescriptor::new(CF_AUDIT, small.clone()),
            ColumnFamilyDescriptor::new(CF_REFCOUNTS, counts),
            ColumnFamilyDescriptor::new(CF_UNREF, small.clone()),
            ColumnFamilyDescriptor::new(CF_QUARANTINE, small.clone()),
            ColumnFamilyDescriptor::new(CF_COMMIT_TOKENS, small.clone()),
            ColumnFamilyDescriptor::new(CF_PACKS, small.clone()),
            ColumnFamilyDescriptor::new(CF_PACK_DEAD, small),
        ];
        let db = if read_only {
            DB::open_cf_descriptors_read_only(&db_opts, dir, cfs, false)
        } else {
            DB::open_cf_descriptors(&db_opts, dir, cfs)
        }
        .map_err(err)?;
        let store = RocksStore {
            db,
            commit: Mutex::new((0, 0)),
            audit: Mutex::new((0, [0; 32])),
            gc_lock: RwLock::new(()),
            bodies: o.bodies,
            packs: Mutex::new(0),
            direct_io,
        };
        let meta = store.cf(CF_META);
        let created = store.db.get_cf(meta, META_FORMAT).map_err(err)?.is_none();
        match store.db.get_cf(meta, META_FORMAT).map_err(err)? {
            None if read_only => {
                return Err(StoreError::Corrupt(
                    "no store format version: not a refuge store".into(),
                ));
            }
            None => {
                let wo = synced();
                store
                    .db
                    .put_cf_opt(meta, META_FORMAT, [STORE_FORMAT_VERSION], &wo)
                    .map_err(err)?;
            }
            Some(v) if v.as_slice() == [STORE_FORMAT_VERSION] => {}
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "store format version {v:?} is not supported by this refuged (supports {STORE_FORMAT_VERSION})"
                )));
            }
        }
        // A store made before bodies were recorded keeps them inline.
        let bodies = match store.db.get_cf(meta, META_BODIES).map_err(err)? {
            Some(v) if v.as_slice() == Bodies::Packs.tag() => Bodies::Packs,
            Some(v) if v.as_slice() == Bodies::Inline.tag() => Bodies::Inline,
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "unknown chunk body placement {:?} in the store",
                    String::from_utf8_lossy(&v)
                )));
            }
            None if created => {
                if !read_only {
                    store
                        .db
                        .put_cf_opt(meta, META_BODIES, o.bodies.tag(), &synced())
                        .map_err(err)?;
                }
                o.bodies
            }
            None => Bodies::Inline,
        };
        if bodies != o.bodies {
            return Err(StoreError::Backend(format!(
                "the store in {} keeps {}, but it was opened for {}",
                dir.display(),
                bodies.describe(),
                o.bodies.describe()
            )));
        }
        if bodies == Bodies::Packs {
            *store.packs.lock().unwrap_or_else(|p| p.into_inner()) = store.read_last_pack()?;
        }
        let seq = match store.db.get_cf(meta, META_SEQ).map_err(err)? {
            Some(v) => u64_of(&v)?,
            None => 0,
        };
        let time = match store.db.get_cf(meta, META_TIME).map_err(err)? {
            Some(v) => u64_of(&v)? as i64,
            None => 0,
        };
        *store.commit.lock().unwrap_or_else(|p| p.into_inner()) = (seq, time);
        let last_audit = store
            .db
            .iterator_cf(store.cf(CF_AUDIT), IteratorMode::End)
            .next()
            .transpose()
            .map_err(err)?;
        if let Some((_, v)) = last_audit {
            let r = AuditRecord::decode(&v)
                .map_err(|e| StoreError::Corrupt(format!("last audit record: {e}")))?;
            *store.audit.lock().unwrap_or_else(|p| p.into_inner()) = (r.seq, r.hash);
        }
        Ok(store)
    }

    /// The snapshot a commit token (its full key) made, if it still exists.
    fn token_snapshot(
        &self,
        tenant: &TenantId,
        token_key: &[u8],
    ) -> Result<Option<SnapshotRecord>> {
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_COMMIT_TOKENS), token_key)
            .map_err(err)?
        else {
            return Ok(None);
        };
        let seq = v
            .get(..8)
            .ok_or_else(|| StoreError::Corrupt("commit token entry is short".into()))?;
        let Some(rec) = self
            .db
            .get_cf(self.cf(CF_SNAPSHOTS), key(tenant, seq))
            .map_err(err)?
        else {
            return Ok(None);
        };
        SnapshotRecord::decode(&rec)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("snapshot record: {e}")))
    }

    /// Removes the commit tokens of commits made before `before_micros`.
    fn forget_tokens(&self, before_micros: i64) -> Result<()> {
        let mut batch = WriteBatch::default();
        for item in self
            .db
            .iterator_cf(self.cf(CF_COMMIT_TOKENS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(err)?;
            let time = v
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map_or(i64::MIN, i64::from_le_bytes);
            if time < before_micros {
                batch.delete_cf(self.cf(CF_COMMIT_TOKENS), k);
            }
        }
        if !batch.is_empty() {
            self.db.write(batch).map_err(err)?;
        }
        Ok(())
    }

    /// The `chunk_index` entries of `ids` (8 bytes without a checksum, as
    /// written before checksums, or 40 with one).
    fn index_entries(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<IndexEntry>>> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| key(tenant, &id.0)).collect();
        self.db
            .batched_multi_get_cf(self.cf(CF_CHUNK_INDEX), keys.iter(), false)
            .into_iter()
            .map(|r| match r.map_err(err)? {
                None => Ok(None),
                Some(v) if v.len() == 8 || v.len() == 40 => Ok(Some(IndexEntry {
                    raw_len: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
                    checksum: v.get(8..40).and_then(|s| s.try_into().ok()),
                })),
                Some(_) => Err(StoreError::Corrupt(
                    "chunk index entry is neither 8 nor 40 bytes".into(),
                )),
            })
            .collect()
    }

    /// The tenants that have keys in `cf` (whose keys start with a tenant
    /// key). Tenant keys are length-prefixed: after one tenant's range,
    /// seek past it rather than reading it all, so this costs one seek per
    /// tenant.
    fn tenants_in(&self, cf: &str) -> Result<Vec<TenantId>> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut it = self
                .db
                .iterator_cf(self.cf(cf), IteratorMode::From(&from, Direction::Forward));
            let Some(item) = it.next() else { break };
            let (k, _) = item.map_err(err)?;
            let n = *k
                .first()
                .ok_or_else(|| StoreError::Corrupt(format!("empty key in {cf}")))?
                as usize;
            let name = k
                .get(1..1 + n)
                .ok_or_else(|| StoreError::Corrupt(format!("short key in {cf}")))?;
            let name = std::str::from_utf8(name)
                .map_err(|_| StoreError::Corrupt("tenant name is not UTF-8".into()))?;
            out.push(TenantId::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            // Longer than any key's remainder (8-byte seq, 32-byte id).
            from = k[..1 + n].to_vec();
            from.extend_from_slice(&[0xff; 40]);
        }
        Ok(out)
    }

    /// Adds `counts` to the reference counts in `batch`, and takes the
    /// chunks they name out of `unreferenced` (new chunks enter it at
    /// upload): otherwise every chunk a backup adds would wait there for
    /// the next garbage collection to find it referenced, which then reads
    /// every chunk added since the last one. The caller holds `commit`, so
    /// no deletion adds an entry between the read and the write.
    fn add_references(
        &self,
        batch: &mut WriteBatch,
        tenant: &TenantId,
        counts: &[(ChunkId, u64)],
    ) -> Result<()> {
        let keys: Vec<Vec<u8>> = counts.iter().map(|(id, _)| key(tenant, &id.0)).collect();
        let unref = self
            .db
            .batched_multi_get_cf(self.cf(CF_UNREF), keys.iter(), false);
        for ((k, (_, n)), u) in keys.iter().zip(counts).zip(unref) {
            batch.merge_cf(self.cf(CF_REFCOUNTS), k, (*n as i64).to_le_bytes());
            if u.map_err(err)?.is_some() {
                batch.delete_cf(self.cf(CF_UNREF), k);
            }
        }
        Ok(())
    }

    /// Renews the unreferenced time of those of `ids` that have one
    /// (the caller holds the read side of `gc_lock`).
    fn touch_unlocked(
        &self,
        tenant: &TenantId,
        ids: &[ChunkId],
        now_micros: i64,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| key(tenant, &id.0)).collect();
        let got = self
            .db
            .batched_multi_get_cf(self.cf(CF_UNREF), keys.iter(), false);
        for (k, v) in keys.iter().zip(got) {
            if v.map_err(err)?.is_some() {
                batch.put_cf(self.cf(CF_UNREF), k, now_micros.to_le_bytes());
            }
        }
        Ok(())
    }

    /// Refuses to handle chunk bodies in a store that keeps them in packs.
    fn require_inline(&self) -> Result<()> {
        match self.bodies {
            Bodies::Inline => Ok(()),
            Bodies::Packs => Err(StoreError::Backend(
                "this store keeps chunk bodies in packs; they are read and written through its pack backend".into(),
            )),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The column families are created at open; absence is a bug.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} missing"))
    }

    /// How many background errors (a flush or compaction that failed,
    /// for example for lack of space) this instance has seen.
    pub fn background_errors(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.background-errors")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Flushes memtables to disk (chunk bodies into blob files). Used at
    /// shutdown so the WAL need not be replayed.
    pub fn flush(&self) -> Result<()> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf)).map_err(err)?;
        }
        Ok(())
    }

    /// Replaces one stored audit record as is, without re-chaining: what an
    /// intruder with write access to the disk could do. For tests that show
    /// `refuge audit verify` detects it; nothing in refuge calls it.
    #[doc(hidden)]
    pub fn overwrite_audit_record(&self, rec: &AuditRecord) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_AUDIT), rec.seq.to_be_bytes(), rec.encode())
            .map_err(err)
    }

    /// Deletes an audit record, as an intruder could; for tests only, like
    /// [`RocksStore::overwrite_audit_record`].
    #[doc(hidden)]
    pub fn delete_audit_record(&self, seq: u64) -> Result<()> {
        self.db
            .delete_cf(self.cf(CF_AUDIT), seq.to_be_bytes())
            .map_err(err)
    }
}

impl RocksStore {
    /// [`Store::collect_garbage`] over the unreferenced chunks whose keys
    /// start with `prefix` (empty: every tenant).
    fn collect_prefix(
        &self,
        prefix: &[u8],
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        let mut out = GcOutcome::default();
        let mut from: Vec<u8> = prefix.to_vec();
        loop {
            // Candidates are read without the lock; each is re-checked
            // under it.
            let mut cands = Vec::with_capacity(GC_BATCH);
            let it = self.db.iterator_cf(
                self.cf(CF_UNREF),
                IteratorMode::From(&from, Direction::Forward),
            );
            for item in it.take(GC_BATCH) {
                let (k, _) = item.map_err(err)?;
                if !k.starts_with(prefix) {
                    break;
                }
                cands.push(k.to_vec());
            }
            let Some(last) = cands.last() else { break };
            from = last.clone();
            from.push(0);
            let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
            let since = self
                .db
                .batched_multi_get_cf(self.cf(CF_UNREF), cands.iter(), false);
            let counts = self
                .db
                .batched_multi_get_cf(self.cf(CF_REFCOUNTS), cands.iter(), false);
            let index = self
                .db
                .batched_multi_get_cf(self.cf(CF_CHUNK_INDEX), cands.iter(), false);
            let mut batch = WriteBatch::default();
            let mut doomed: Vec<Vec<u8>> = Vec::new();
            for (((k, since), count), idx) in cands.iter().zip(since).zip(counts).zip(index) {
                let Some(since) = since.map_err(err)? else {
                    continue;
                };
                out.examined += 1;
                if count_of(count.map_err(err)?.as_deref()) > 0 {
                    batch.delete_cf(self.cf(CF_UNREF), k);
                    out.referenced_again += 1;
                } else if count_of(Some(&since)) < cutoff_micros {
                    batch.delete_cf(self.cf(CF_UNREF), k);
                    batch.delete_cf(self.cf(CF_REFCOUNTS), k);
                    if let Some(idx) = idx.map_err(err)? {
                        let stored = idx
                            .get(4..8)
                            .and_then(|b| b.try_into().ok())
                            .map_or(0, u32::from_le_bytes);
                        doomed.push(k.clone());
                        out.deleted += 1;
                        out.bytes += u64::from(stored);
                    }
                } else {
                    out.kept_recent += 1;
                }
            }
            // Where the doomed chunks lie, in one read (a packs store).
            for (k, loc) in doomed.iter().zip(self.dead_locations(&doomed)?) {
                self.record_dead(&mut batch, k, loc.as_deref())?;
                batch.delete_cf(self.cf(CF_CHUNKS), k);
                batch.delete_cf(self.cf(CF_CHUNK_INDEX), k);
            }
            fail_point!("store.gc.before_batch");
            self.db.write(batch).map_err(err)?;
            drop(_gc);
            fail_point!("store.gc.after_batch");
            progress(&out);
        }
        Ok(out)
    }

    /// Writes every memtable out and compacts every column family to its
    /// last level, with blob garbage collection over every blob file, so
    /// that deleted records leave no bytes on disk: SST files without
    /// their tombstones' keys, blob files rewritten with only live blobs,
    /// write-ahead logs of the deletes' time retired.
    fn reclaim(&self) -> Result<()> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)).map_err(err)?;
        }
        let chunks = self.cf(CF_CHUNKS);
        self.db
            .set_options_cf(
                chunks,
                &[
                    ("blob_garbage_collection_age_cutoff", "1.0"),
                    ("blob_garbage_collection_force_threshold", "0.0"),
                ],
            )
            .map_err(err)?;
        let mut co = rocksdb::CompactOptions::default();
        co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        co.set_exclusive_manual_compaction(true);
        // compact_range reports nothing; a background error shows in the
        // store's health (`background_errors`).
        for name in ALL_CFS {
            self.db
                .compact_range_cf_opt(self.cf(name), None::<&[u8]>, None::<&[u8]>, &co);
        }
        let restore = self.db.set_options_cf(
            chunks,
            &[
                ("blob_garbage_collection_age_cutoff", BLOB_GC_AGE_CUTOFF),
                ("blob_garbage_collection_force_threshold", BLOB_GC_FORCE),
            ],
        );
        restore.map_err(err)?;
        self.db.flush_wal(true).map_err(err)?;
        Ok(())
    }
}

impl Store for RocksStore {
    fn chunk_lengths(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<u32>>> {
        Ok(self
            .index_entries(tenant, ids)?
            .into_iter()
            .map(|e| e.map(|e| e.raw_len))
            .collect())
    }

    fn chunk_checksum(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<[u8; 32]>> {
        Ok(self
            .index_entries(tenant, std::slice::from_ref(id))?
            .remove(0)
            .and_then(|e| e.checksum))
    }

    fn put_chunks(
        &self,
        tenant: &TenantId,
        chunks: &[(ChunkId, StoredChunk)],
        now_micros: i64,
    ) -> Result<PutOutcome> {
        self.require_inline()?;
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        let lens = self.index_entries(tenant, &ids)?;
        let mut batch = WriteBatch::default();
        let mut out = PutOutcome::default();
        let mut seen = std::collections::HashSet::new();
        let mut existing = Vec::new();
        let new_keys: Vec<Vec<u8>> = chunks
            .iter()
            .zip(&lens)
            .filter(|(_, l)| l.is_none())
            .map(|((id, _), _)| key(tenant, &id.0))
            .collect();
        let quarantined: std::collections::HashSet<Vec<u8>> = self
            .db
            .batched_multi_get_cf(self.cf(CF_QUARANTINE), new_keys.iter(), false)
            .into_iter()
            .zip(&new_keys)
            .filter_map(|(v, k)| match v {
                Ok(Some(_)) => Some(Ok(k.clone())),
                Ok(None) => None,
                Err(e) => Some(Err(err(e))),
            })
            .collect::<Result<_>>()?;
        for ((id, c), len) in chunks.iter().zip(lens) {
            let sum = *blake3::hash(&c.data).as_bytes();
            if let Some(e) = len {
                if c.cipher != refuge_core::Cipher::None && e.checksum.is_some_and(|s| s != sum) {
                    out.conflict.get_or_insert(*id);
                }
                existing.push(*id);
                continue;
            }
            if !seen.insert(*id) {
                continue;
            }
            let k = key(tenant, &id.0);
            if quarantined.contains(&k) {
                batch.delete_cf(self.cf(CF_QUARANTINE), &k);
                out.healed += 1;
            }
            let mut idx = [0u8; 40];
            idx[..4].copy_from_slice(&c.raw_len.to_le_bytes());
            idx[4..8].copy_from_slice(&(c.data.len() as u32).to_le_bytes());
            idx[8..].copy_from_slice(&sum);
            batch.put_cf(self.cf(CF_CHUNKS), &k, c.encode_record());
            batch.put_cf(self.cf(CF_CHUNK_INDEX), &k, idx);
            batch.put_cf(self.cf(CF_UNREF), &k, now_micros.to_le_bytes());
            out.stored += 1;
            out.bytes += c.data.len() as u64;
        }
        self.touch_unlocked(tenant, &existing, now_micros, &mut batch)?;
        if !batch.is_empty() {
            self.db.write(batch).map_err(err)?;
        }
        fail_point!("store.put.after_write");
        Ok(out)
    }

    fn touch_chunks(&self, tenant: &TenantId, ids: &[ChunkId], now_micros: i64) -> Result<()> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        self.touch_unlocked(tenant, ids, now_micros, &mut batch)?;
        if !batch.is_empty() {
            self.db.write(batch).map_err(err)?;
        }
        Ok(())
    }

    fn chunk_refcount(&self, tenant: &TenantId, id: &ChunkId) -> Result<u64> {
        let v = self
            .db
            .get_cf(self.cf(CF_REFCOUNTS), key(tenant, &id.0))
            .map_err(err)?;
        Ok(count_of(v.as_deref()).max(0) as u64)
    }

    fn get_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<StoredChunk>> {
        fail_point!("store.get_chunk");
        self.require_inline()?;
        let Some(rec) = self
            .db
            .get_pinned_cf(self.cf(CF_CHUNKS), key(tenant, &id.0))
            .map_err(err)?
        else {
            return Ok(None);
        };
        StoredChunk::decode_record(&rec)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("chunk {}: {e}", id.short())))
    }

    fn sync(&self) -> Result<()> {
        self.sync_wal()
    }

    fn commit(&self, new: NewSnapshot, now_micros: i64) -> Result<Committed> {
        // No garbage collection batch between this check and the write.
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let counts = new.refs.sorted();
        let ids: Vec<ChunkId> = counts.iter().map(|(id, _)| *id).collect();
        let lens = self.chunk_lengths(&new.tenant, &ids)?;
        if let Some((id, _)) = ids.iter().zip(&lens).find(|(_, l)| l.is_none()) {
            return Err(StoreError::missing_chunk(id));
        }
        let mut last = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        // A resent commit: answered with the snapshot its token made, if
        // that still exists (checked under the mutex, so two copies of one
        // commit cannot both make a snapshot).
        let token_key = new.token.map(|t| key(&new.tenant, &t));
        if let Some(k) = &token_key
            && let Some(earlier) = self.token_snapshot(&new.tenant, k)?
        {
            return Ok(Committed {
                record: earlier,
                replayed: true,
            });
        }
        fail_point!("store.commit.before_wal_sync");
        // Chunks first: every put before this commit is durable after this.
        self.sync_wal()?;
        fail_point!("store.commit.after_wal_sync");
        let seq = last.0 + 1;
        let time = now_micros.max(last.1.saturating_add(1));
        let rec = build_record(new, seq, time);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_SNAPSHOTS),
            key(&rec.tenant, &seq.to_be_bytes()),
            rec.encode(),
        );
        batch.put_cf(
            self.cf(CF_SNAPSHOT_IDS),
            key(&rec.tenant, &rec.id.0),
            seq.to_be_bytes(),
        );
        batch.put_cf(self.cf(CF_META), META_SEQ, seq.to_be_bytes());
        batch.put_cf(self.cf(CF_META), META_TIME, (time as u64).to_be_bytes());
        if let Some(k) = &token_key {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&seq.to_be_bytes());
            v[8..].copy_from_slice(&time.to_le_bytes());
            batch.put_cf(self.cf(CF_COMMIT_TOKENS), k, v);
        }
        self.add_references(&mut batch, &rec.tenant, &counts)?;
        let wo = synced();
        self.db.write_opt(batch, &wo).map_err(err)?;
        *last = (seq, time);
        fail_point!("store.commit.after_record");
        Ok(Committed {
            record: rec,
            replayed: false,
        })
    }

    fn import_snapshot(&self, rec: &SnapshotRecord, refs: &RefCounts) -> Result<Imported> {
        if rec.id != rec.compute_id() {
            return Err(StoreError::Corrupt(format!(
                "snapshot record {} does not match its id",
                rec.id.short()
            )));
        }
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let counts = refs.sorted();
        let ids: Vec<ChunkId> = counts.iter().map(|(id, _)| *id).collect();
        let mut last = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        if self.deleted_at(&rec.tenant, &rec.id)?.is_some() {
            return Ok(Imported::Deleted);
        }
        let id_key = key(&rec.tenant, &rec.id.0);
        if self
            .db
            .get_cf(self.cf(CF_SNAPSHOT_IDS), &id_key)
            .map_err(err)?
            .is_some()
        {
            return Ok(Imported::Present);
        }
        let lens = self.chunk_lengths(&rec.tenant, &ids)?;
        if let Some((id, _)) = ids.iter().zip(&lens).find(|(_, l)| l.is_none()) {
            return Err(StoreError::missing_chunk(id));
        }
        self.sync_wal()?;
        let pos = last.0 + 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_SNAPSHOTS),
            key(&rec.tenant, &pos.to_be_bytes()),
            rec.encode(),
        );
        batch.put_cf(self.cf(CF_SNAPSHOT_IDS), &id_key, pos.to_be_bytes());
        batch.put_cf(self.cf(CF_META), META_SEQ, pos.to_be_bytes());
        self.add_references(&mut batch, &rec.tenant, &counts)?;
        self.db.write_opt(batch, &synced()).map_err(err)?;
        last.0 = pos;
        fail_point!("store.import.after_record");
        Ok(Imported::New)
    }

    fn deleted_at(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<i64>> {
        let v = self
            .db
            .get_cf(self.cf(CF_META), deleted_key(tenant, id))
            .map_err(err)?;
        Ok(v.and_then(|b| b.get(..8).and_then(|b| b.try_into().ok()))
            .map(i64::from_le_bytes))
    }

    fn delete_snapshot(
        &self,
        tenant: &TenantId,
        id: &SnapshotId,
        refs: &RefCounts,
        now_micros: i64,
    ) -> Result<bool> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        // Serialised with commits, so that two deletions of one snapshot
        // cannot both subtract its references.
        let _commit = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let id_key = key(tenant, &id.0);
        let Some(seq) = self
            .db
            .get_cf(self.cf(CF_SNAPSHOT_IDS), &id_key)
            .map_err(err)?
        else {
            return Ok(false);
        };
        let counts = refs.sorted();
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_SNAPSHOTS), key(tenant, &seq));
        batch.delete_cf(self.cf(CF_SNAPSHOT_IDS), &id_key);
        batch.put_cf(
            self.cf(CF_META),
            deleted_key(tenant, id),
            now_micros.to_le_bytes(),
        );
        // The references are subtracted and the chunks left without any
        // marked unreferenced in the same synced batch as the removal: a
        // crash leaves the snapshot whole or gone with its counts, never
        // a chunk counted zero that garbage collection would not find.
        // The counts cannot change meanwhile: commits take `commit`, and
        // garbage collection the write side of `gc_lock`.
        for part in counts.chunks(GC_BATCH) {
            let keys: Vec<Vec<u8>> = part.iter().map(|(c, _)| key(tenant, &c.0)).collect();
            let got = self
                .db
                .batched_multi_get_cf(self.cf(CF_REFCOUNTS), keys.iter(), false);
            for ((k, (_, n)), v) in keys.iter().zip(part).zip(got) {
                let now = count_of(v.map_err(err)?.as_deref());
                if now - (*n as i64) <= 0 {
                    batch.delete_cf(self.cf(CF_REFCOUNTS), k);
                    batch.put_cf(self.cf(CF_UNREF), k, now_micros.to_le_bytes());
                } else {
                    batch.merge_cf(self.cf(CF_REFCOUNTS), k, (-(*n as i64)).to_le_bytes());
                }
            }
        }
        let wo = synced();
        self.db.write_opt(batch, &wo).map_err(err)?;
        fail_point!("store.delete.after_write");
        Ok(true)
    }

    fn collect_garbage(
        &self,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        let out = self.collect_prefix(&[], cutoff_micros, progress)?;
        self.forget_tokens(cutoff_micros.saturating_sub(COMMIT_TOKEN_KEEP_MICROS))?;
        Ok(out)
    }

    fn collect_tenant_garbage(
        &self,
        tenant: &TenantId,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        self.collect_prefix(&tenant_key(tenant), cutoff_micros, progress)
    }

    fn reclaim_space(&self) -> Result<()> {
        self.reclaim()
    }

    fn chunk_usage(&self, tenant: &TenantId) -> Result<refuge_store::ChunkUsage> {
        let prefix = tenant_key(tenant);
        let it = self.db.iterator_cf(
            self.cf(CF_CHUNK_INDEX),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut u = refuge_store::ChunkUsage::default();
        for item in it {
            let (k, v) = item.map_err(err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            if v.len() < 8 {
                return Err(StoreError::Corrupt(
                    "chunk index entry shorter than 8 bytes".into(),
                ));
            }
            u.chunks += 1;
            u.raw_bytes += u64::from(u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
            u.stored_bytes += u64::from(u32::from_le_bytes([v[4], v[5], v[6], v[7]]));
        }
        Ok(u)
    }

    fn list_chunk_ids(
        &self,
        tenant: &TenantId,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>> {
        let prefix = tenant_key(tenant);
        let mut from = prefix.clone();
        if let Some(a) = after {
            from.extend_from_slice(&a.0);
            from.push(0);
        }
        let it = self.db.iterator_cf(
            self.cf(CF_CHUNK_INDEX),
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let id: [u8; 32] = k[prefix.len()..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("chunk index key of the wrong length".into()))?;
            out.push(ChunkId(id));
        }
        Ok(out)
    }

    fn quarantine_chunk(
        &self,
        tenant: &TenantId,
        id: &ChunkId,
        reason: &str,
        now_micros: i64,
    ) -> Result<bool> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let k = key(tenant, &id.0);
        if self
            .db
            .get_cf(self.cf(CF_CHUNK_INDEX), &k)
            .map_err(err)?
            .is_none()
        {
            return Ok(false);
        }
        let mut v = now_micros.to_le_bytes().to_vec();
        v.extend_from_slice(reason.as_bytes());
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_QUARANTINE), &k, v);
        self.mark_dead(&mut batch, &k)?;
        batch.delete_cf(self.cf(CF_CHUNKS), &k);
        batch.delete_cf(self.cf(CF_CHUNK_INDEX), &k);
        let wo = synced();
        self.db.write_opt(batch, &wo).map_err(err)?;
        Ok(true)
    }

    fn list_quarantine(&self, tenant: &TenantId) -> Result<Vec<Quarantined>> {
        let prefix = tenant_key(tenant);
        let it = self.db.iterator_cf(
            self.cf(CF_QUARANTINE),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let id: [u8; 32] = k[prefix.len()..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("quarantine key of the wrong length".into()))?;
            let time = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, i64::from_le_bytes);
            out.push(Quarantined {
                id: ChunkId(id),
                time_micros: time,
                reason: String::from_utf8_lossy(v.get(8..).unwrap_or_default()).into_owned(),
            });
        }
        Ok(out)
    }

    fn is_quarantined(&self, tenant: &TenantId, id: &ChunkId) -> Result<bool> {
        Ok(self
            .db
            .get_cf(self.cf(CF_QUARANTINE), key(tenant, &id.0))
            .map_err(err)?
            .is_some())
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_META), format!("{SETTING_PREFIX}{name}"))
            .map_err(err)
    }

    fn put_setting(&self, name: &str, value: Option<&[u8]>) -> Result<()> {
        let k = format!("{SETTING_PREFIX}{name}");
        let wo = synced();
        match value {
            Some(v) => self.db.put_cf_opt(self.cf(CF_META), k, v, &wo),
            None => self.db.delete_cf_opt(self.cf(CF_META), k, &wo),
        }
        .map_err(err)
    }

    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let start = format!("{SETTING_PREFIX}{prefix}");
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(start.as_bytes(), Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(err)?;
            if !k.starts_with(start.as_bytes()) {
                break;
            }
            let name = String::from_utf8_lossy(&k[SETTING_PREFIX.len()..]).into_owned();
            out.push((name, v.to_vec()));
        }
        Ok(out)
    }

    fn list_snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>> {
        let prefix = tenant_key(tenant);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_SNAPSHOTS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(SnapshotRecord::decode(&v).map_err(StoreError::Corrupt)?);
        }
        sort_snapshots(&mut out);
        Ok(out)
    }

    fn get_snapshot(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        let Some(seq) = self
            .db
            .get_cf(self.cf(CF_SNAPSHOT_IDS), key(tenant, &id.0))
            .map_err(err)?
        else {
            return Ok(None);
        };
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_SNAPSHOTS), key(tenant, &seq))
            .map_err(err)?
        else {
            return Err(StoreError::Corrupt(format!(
                "snapshot {} is indexed but its record is missing",
                id.short()
            )));
        };
        SnapshotRecord::decode(&v)
            .map(Some)
            .map_err(StoreError::Corrupt)
    }

    fn list_tenants(&self) -> Result<Vec<TenantId>> {
        let mut all = self.tenants_in(CF_SNAPSHOTS)?;
        all.extend(self.tenants_in(CF_CHUNK_INDEX)?);
        all.sort();
        all.dedup();
        Ok(all)
    }

    fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditRecord>> {
        let mut head = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = *head;
        let recs = chain_audit(&mut next, events);
        let mut batch = WriteBatch::default();
        for r in &recs {
            batch.put_cf(self.cf(CF_AUDIT), r.seq.to_be_bytes(), r.encode());
        }
        let wo = synced();
        self.db.write_opt(batch, &wo).map_err(err)?;
        *head = next;
        Ok(recs)
    }

    fn read_audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let start = from_seq.to_be_bytes();
        let it = self.db.iterator_cf(
            self.cf(CF_AUDIT),
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it.take(limit) {
            let (_, v) = item.map_err(err)?;
            out.push(AuditRecord::decode(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempStore {
        store: RocksStore,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for TempStore {
        type Target = RocksStore;
        fn deref(&self) -> &RocksStore {
            &self.store
        }
    }

    fn temp_store() -> TempStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), &RocksOptions::default()).expect("open");
        TempStore { store, _dir: dir }
    }

    refuge_store::conformance_tests!(temp_store());

    /// The same conformance suite with flushes and compactions through
    /// `O_DIRECT` (`[rocksdb] direct_io = true`).
    mod with_direct_io {
        use super::*;

        fn direct_store() -> TempStore {
            let dir = tempfile::tempdir().expect("tempdir");
            let o = RocksOptions {
                direct_io: true,
                ..RocksOptions::default()
            };
            let store = RocksStore::open(dir.path(), &o).expect("open");
            assert!(store.uses_direct_io(), "the temp dir takes O_DIRECT");
            TempStore { store, _dir: dir }
        }

        refuge_store::conformance_tests!(direct_store());

        #[test]
        fn bodies_flushed_with_direct_io_read_back_after_a_read_only_reopen() {
            let dir = tempfile::tempdir().unwrap();
            let t = TenantId::new("alpha").unwrap();
            let o = RocksOptions {
                direct_io: true,
                // Small memtables: the puts below flush several times.
                chunk_write_buffer_bytes: 1 << 20,
                ..RocksOptions::default()
            };
            // Incompressible bodies (so that they go to blob files) of odd
            // sizes (so that no file ends on a block boundary of its own
            // accord).
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let bodies: Vec<Vec<u8>> = (0..64u32)
                .map(|i| {
                    (0..(100_003 + i * 977))
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                })
                .collect();
            let ids: Vec<ChunkId> = bodies.iter().map(|b| ChunkId::of(b)).collect();
            {
                let s = RocksStore::open(dir.path(), &o).unwrap();
                assert!(s.uses_direct_io());
                for (id, b) in ids.iter().zip(&bodies) {
                    s.put_chunks(&t, &[(*id, refuge_core::compress_chunk(b, 1))], 1)
                        .unwrap();
                }
                s.flush().unwrap();
            }
            assert!(
                std::fs::read_dir(dir.path())
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .any(|e| e.path().extension().is_some_and(|x| x == "blob")),
                "the bodies went to blob files"
            );
            let s = RocksStore::open_read_only(dir.path(), &o).unwrap();
            assert!(s.uses_direct_io());
            for (id, b) in ids.iter().zip(&bodies) {
                let c = s.get_chunk(&t, id).unwrap().unwrap();
                assert_eq!(&refuge_core::decode_chunk(id, &c, 1 << 20).unwrap(), b);
            }
        }
    }

    #[test]
    fn commits_and_chunks_survive_reopen_and_sequence_continues() {
        let dir = tempfile::tempdir().unwrap();
        let t = TenantId::new("alpha").unwrap();
        let content = vec![7u8; 100_000];
        let id = ChunkId::of(&content);
        let first = {
            let s = RocksStore::open(dir.path(), &RocksOptions::default()).unwrap();
            s.put_chunks(&t, &[(id, refuge_core::compress_chunk(&content, 3))], 1)
                .unwrap();
            let new = NewSnapshot {
                tenant: t.clone(),
                host: refuge_core::HostName::new("h").unwrap(),
                source: refuge_core::SourceName::new("s").unwrap(),
                kind: refuge_core::SourceKind::Tree,
                manifest: vec![refuge_core::ChunkRef { id, len: 100_000 }],
                summary: Default::default(),
                bytes_uploaded: 0,
                warnings: 0,
                duration_micros: 0,
                refs: [id, id].into(),
                token: None,
            };
            let r = s.commit_snapshot(new.clone(), 5_000).unwrap();
            // Simulate a crash: no flush, just drop.
            let _ = new;
            r
        };
        let s = RocksStore::open(dir.path(), &RocksOptions::default()).unwrap();
        assert_eq!(s.list_snapshots(&t).unwrap(), vec![first.clone()]);
        let c = s.get_chunk(&t, &id).unwrap().unwrap();
        assert_eq!(
            refuge_core::decode_chunk(&id, &c, 1 << 20).unwrap(),
            content
        );
        let new = NewSnapshot {
            tenant: t.clone(),
            host: refuge_core::HostName::new("h").unwrap(),
            source: refuge_core::SourceName::new("s").unwrap(),
            kind: refuge_core::SourceKind::Tree,
            manifest: vec![],
            summary: Default::default(),
            bytes_uploaded: 0,
            warnings: 0,
            duration_micros: 0,
            refs: RefCounts::new(),
            token: None,
        };
        let second = s.commit_snapshot(new, 1).unwrap();
        assert_eq!(second.seq, first.seq + 1);
        // Reference counts are durable with the record.
        assert_eq!(s.chunk_refcount(&t, &id).unwrap(), 2);
        assert!(second.time_micros > first.time_micros);
    }

    #[test]
    fn a_newer_store_format_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStore::open(dir.path(), &RocksOptions::default()).unwrap();
            s.db.put_cf(s.cf(CF_META), META_FORMAT, [99u8]).unwrap();
        }
        let e = RocksStore::open(dir.path(), &RocksOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}
