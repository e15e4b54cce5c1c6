//! The storage trait of the backup node, an in-memory implementation for
//! unit tests, and the conformance suite that every implementation passes.
//!
//! This crate must not depend on any storage engine: RocksDB lives in
//! `refuge-store-rocksdb`, and a future object-store or TiKV backend would
//! be another crate implementing [`Store`] and running [`conformance`].
//!
//! # Contract
//!
//! * Everything is scoped by tenant: a chunk or snapshot stored for one
//!   tenant is invisible to every other (it is simply "not found").
//! * [`Store::put_chunks`] receives chunks the caller has already verified
//!   (id recomputed, sizes checked). Putting an id that exists is a no-op:
//!   stored chunks are never overwritten.
//! * [`Store::commit_snapshot`] makes every earlier `put_chunks` and the new
//!   record durable, atomically, before it returns; it assigns the sequence
//!   number and a time that never goes backwards. It refuses a snapshot
//!   that references a chunk the store does not have.
//! * [`Store::import_snapshot`] stores a record another node committed
//!   (replication) with its id, time and sequence number unchanged; a
//!   deleted snapshot leaves a mark, so a peer's copy never brings it back.
//! * Reference counts: a commit adds the references counted in
//!   [`NewSnapshot::refs`], [`Store::delete_snapshot`] removes them, in the
//!   same atomic write as the record. A chunk whose count is zero is
//!   *unreferenced* from that moment (or from its upload, for a chunk no
//!   commit has used yet); [`Store::touch_chunks`] renews that moment.
//!   [`Store::collect_garbage`] deletes only chunks that are unreferenced
//!   and untouched since before its cutoff, so its work is proportional to
//!   what became unreferenced, never to the size of the store.
//!
//! # Concurrency
//!
//! All methods take `&self` and may be called from many threads. Commits are
//! serialised inside the store (they assign the sequence number); chunk puts
//! and reads run in parallel. Garbage collection excludes commits and
//! deletions only while it removes one batch of chunks (a reader-writer
//! lock, held for one RocksDB write): a commit can never reference a chunk
//! that a concurrent collection deletes, because the commit checks that its
//! chunks exist under the same lock.

mod mem;

pub mod conformance;

pub use mem::MemStore;

use refuge_core::audit::{AuditEvent, AuditRecord};
use refuge_core::{
    ChunkId, ChunkRef, HostName, ManifestSummary, SnapshotId, SnapshotRecord, SourceKind,
    SourceName, StoredChunk, TenantId,
};

/// What went wrong in a store, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk is full. Retrying after space is freed can help.
    #[error("the store's disk is full: {0}")]
    NoSpace(String),
    /// Stored bytes failed a checksum or could not be parsed. Retrying
    /// will not help; the data needs to be re-uploaded or restored.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other engine failure (I/O error, engine shut down).
    #[error("storage engine error: {0}")]
    Backend(String),
    /// A commit references a chunk the store does not have (for example
    /// one garbage collection removed during a long backup). Uploading the
    /// chunk again and retrying the commit can help.
    #[error("{0}")]
    MissingChunk(String),
}

impl StoreError {
    /// The refusal of a commit that references chunk `id` the store lacks.
    pub fn missing_chunk(id: &ChunkId) -> Self {
        StoreError::MissingChunk(format!(
            "chunk {id} is not stored (it may have been removed by garbage collection during this backup); upload it again"
        ))
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::NoSpace(_) | StoreError::Backend(_) | StoreError::MissingChunk(_)
        )
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a batch of puts changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// Chunks that were new.
    pub stored: u64,
    /// Their stored (compressed) bytes.
    pub bytes: u64,
    /// Of the new chunks, how many replaced a quarantined copy.
    pub healed: u64,
    /// A sealed chunk whose id is already stored with other bytes (the
    /// first one found); it was not stored. Plain chunks cannot conflict:
    /// their content is verified against their id.
    pub conflict: Option<ChunkId>,
}

/// What a tenant's chunks take up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkUsage {
    /// Chunks stored.
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub raw_bytes: u64,
    /// Their bytes as stored (compressed, sealed).
    pub stored_bytes: u64,
}

/// A chunk taken out of service because it failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The chunk.
    pub id: ChunkId,
    /// When it was quarantined (node time, µs).
    pub time_micros: i64,
    /// What verification found.
    pub reason: String,
}

/// A snapshot to commit; the store assigns id, sequence and time.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// Owner.
    pub tenant: TenantId,
    /// Source host.
    pub host: HostName,
    /// Source name.
    pub source: SourceName,
    /// Tree or image.
    pub kind: SourceKind,
    /// Manifest chunks in order.
    pub manifest: Vec<ChunkRef>,
    /// Totals the node computed by reading the manifest.
    pub summary: ManifestSummary,
    /// Reported by the agent.
    pub bytes_uploaded: u64,
    /// Reported by the agent.
    pub warnings: u64,
    /// Reported by the agent: how long the backup took, µs.
    pub duration_micros: u64,
    /// Every stored chunk the snapshot references: its manifest chunks and
    /// the data chunks in the manifest, holes excluded, each counted as
    /// often as it occurs. The commit adds these references.
    pub refs: RefCounts,
    /// The agent's id for this commit (one per backup run, kept across
    /// its retries). A commit whose token the tenant already used for a
    /// snapshot that still exists makes nothing and answers with that
    /// snapshot: a commit resent after a lost answer is not doubled.
    pub token: Option<CommitToken>,
}

/// An agent's id for one commit (see [`NewSnapshot::token`]).
pub type CommitToken = [u8; 16];

/// The answer to [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The snapshot made, or the one made earlier under the same token.
    pub record: SnapshotRecord,
    /// Whether the token was already used: nothing new was made.
    pub replayed: bool,
}

/// What [`Store::import_snapshot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The snapshot is now stored here, with its references added.
    New,
    /// It was already stored here: nothing changed.
    Present,
    /// It was stored here once and deleted (retention, an admin):
    /// nothing changed, because deletions at one site are never undone by
    /// a peer's copy.
    Deleted,
}

/// How long the token of a commit is remembered (after it, garbage
/// collection forgets it): a day, far beyond any retry of a commit.
pub const COMMIT_TOKEN_KEEP_MICROS: i64 = 86_400 * 1_000_000;

/// What one garbage collection removed and left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Unreferenced-chunk entries looked at.
    pub examined: u64,
    /// Chunks deleted.
    pub deleted: u64,
    /// Pack objects deleted because none of their chunks was used any
    /// more (object-store backends).
    pub packs_deleted: u64,
    /// Pack objects rewritten without their unused chunks.
    pub packs_rewritten: u64,
    /// Their stored (compressed) bytes.
    pub bytes: u64,
    /// Entries dropped because a commit referenced the chunk again.
    pub referenced_again: u64,
    /// Unreferenced chunks kept because they were unreferenced or touched
    /// after the cutoff (a backup may be about to use them).
    pub kept_recent: u64,
}

impl GcOutcome {
    /// Adds another batch's figures.
    pub fn add(&mut self, o: &GcOutcome) {
        self.examined += o.examined;
        self.deleted += o.deleted;
        self.packs_deleted += o.packs_deleted;
        self.packs_rewritten += o.packs_rewritten;
        self.bytes += o.bytes;
        self.referenced_again += o.referenced_again;
        self.kept_recent += o.kept_recent;
    }
}

/// The node's chunk store and snapshot catalog.
pub trait Store: Send + Sync + 'static {
    /// For each of `ids`: the uncompressed length of `tenant`'s stored
    /// chunk, or `None` if `tenant` does not have it.
    fn chunk_lengths(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<u32>>>;

    /// How many chunks `tenant` has and what they take up. Reads the
    /// tenant's whole chunk index (never a chunk body): the cost grows with
    /// its number of chunks.
    fn chunk_usage(&self, tenant: &TenantId) -> Result<ChunkUsage>;

    /// Indexes of `ids` that `tenant` does not have, ascending.
    fn missing_chunks(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<usize>> {
        Ok(self
            .chunk_lengths(tenant, ids)?
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_none())
            .map(|(i, _)| i)
            .collect())
    }

    /// Stores verified chunks for `tenant`; existing ids are left untouched
    /// (but touched, see [`Store::touch_chunks`]). New chunks are
    /// unreferenced as of `now_micros` until a commit references them. Not
    /// necessarily durable until [`Store::sync`] or a commit.
    fn put_chunks(
        &self,
        tenant: &TenantId,
        chunks: &[(ChunkId, StoredChunk)],
        now_micros: i64,
    ) -> Result<PutOutcome>;

    /// Renews the unreferenced-since time of those of `ids` that no
    /// snapshot references, to `now_micros`: called for chunks a client
    /// was told exist, which its next commit may reference.
    fn touch_chunks(&self, tenant: &TenantId, ids: &[ChunkId], now_micros: i64) -> Result<()>;

    /// The BLAKE3 of the bytes stored for `tenant`'s chunk, recorded when
    /// it was stored (`None` if absent): how the node checks sealed chunks
    /// it cannot open.
    fn chunk_checksum(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<[u8; 32]>>;

    /// How many references `tenant`'s chunk has (0 if none or absent).
    fn chunk_refcount(&self, tenant: &TenantId, id: &ChunkId) -> Result<u64>;

    /// A stored chunk, or `None` if `tenant` has no chunk with this id.
    fn get_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<StoredChunk>>;

    /// [`Store::get_chunk`] for each of `ids`, in order: a backend whose
    /// reads have latency (object storage) fetches them together.
    fn get_chunks(&self, tenant: &TenantId, ids: &[ChunkId]) -> Vec<Result<Option<StoredChunk>>> {
        ids.iter().map(|id| self.get_chunk(tenant, id)).collect()
    }

    /// Makes every earlier put durable.
    fn sync(&self) -> Result<()>;

    /// Commits a snapshot durably and atomically, at node time `now_micros`
    /// (raised if needed so that times strictly increase), adding a
    /// the references `new.refs`. Fails with
    /// [`StoreError::MissingChunk`] if one of them is not stored.
    ///
    /// With a [`NewSnapshot::token`] the tenant used for a snapshot that
    /// still exists, nothing is written and that snapshot is the answer
    /// (`replayed`). A token whose snapshot was removed since is reused.
    fn commit(&self, new: NewSnapshot, now_micros: i64) -> Result<Committed>;

    /// [`Store::commit`], for callers that need only the record.
    fn commit_snapshot(&self, new: NewSnapshot, now_micros: i64) -> Result<SnapshotRecord> {
        self.commit(new, now_micros).map(|c| c.record)
    }

    /// Stores a snapshot another node committed (replication), as it is:
    /// its id, node time and sequence number are kept, durably and
    /// atomically with the references `refs` (counted as in
    /// [`NewSnapshot::refs`], by the caller, from the manifest it read
    /// here). Refuses a record whose id does not match its fields
    /// ([`StoreError::Corrupt`]) and one that references a chunk the store
    /// lacks ([`StoreError::MissingChunk`]). An id already stored, or
    /// deleted here earlier ([`Store::deleted_at`]), changes nothing.
    ///
    /// The record takes a catalog position after every earlier commit and
    /// import; the next local commit's sequence number is above it.
    fn import_snapshot(&self, rec: &SnapshotRecord, refs: &RefCounts) -> Result<Imported>;

    /// When `tenant`'s snapshot `id` was deleted here (node time, µs), if
    /// it was: every [`Store::delete_snapshot`] leaves this mark, so that
    /// a peer's copy of the snapshot is not imported again.
    fn deleted_at(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<i64>>;

    /// Removes `tenant`'s snapshot `id` and the references `refs` (the
    /// snapshot's, as in [`NewSnapshot::refs`]), durably and
    /// atomically, and marks it deleted ([`Store::deleted_at`]); chunks
    /// left without references become unreferenced as of `now_micros`.
    /// Returns `false` (and changes nothing) if there is no such
    /// snapshot.
    fn delete_snapshot(
        &self,
        tenant: &TenantId,
        id: &SnapshotId,
        refs: &RefCounts,
        now_micros: i64,
    ) -> Result<bool>;

    /// Deletes every chunk that no snapshot references and that has been
    /// unreferenced (and untouched) since before `cutoff_micros`, in
    /// batches; `progress` sees the running totals after each batch.
    fn collect_garbage(
        &self,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome>;

    /// Like [`Store::collect_garbage`], for `tenant`'s chunks only (a
    /// purge: other tenants' uploads in flight are not touched).
    fn collect_tenant_garbage(
        &self,
        tenant: &TenantId,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome>;

    /// Makes what was deleted leave the disk (and the bucket) too:
    /// compaction of every record and body file, so that no byte of a
    /// deleted chunk or snapshot stays where the store keeps its data.
    /// Slow (it rewrites the store); a purge calls it. Provided: nothing
    /// to do (a store that overwrites nothing in place).
    fn reclaim_space(&self) -> Result<()> {
        Ok(())
    }

    /// Up to `limit` of `tenant`'s chunk ids after `after`, in id order.
    fn list_chunk_ids(
        &self,
        tenant: &TenantId,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>>;

    /// Takes a chunk that failed verification out of service: it is no
    /// longer found (so `FindMissing` asks for it again and the next
    /// upload heals it) and is listed by [`Store::list_quarantine`].
    /// Returns `false` if the chunk was not stored.
    fn quarantine_chunk(
        &self,
        tenant: &TenantId,
        id: &ChunkId,
        reason: &str,
        now_micros: i64,
    ) -> Result<bool>;

    /// `tenant`'s quarantined chunks, in id order.
    fn list_quarantine(&self, tenant: &TenantId) -> Result<Vec<Quarantined>>;

    /// Whether `tenant`'s chunk `id` is quarantined.
    fn is_quarantined(&self, tenant: &TenantId, id: &ChunkId) -> Result<bool>;

    /// A node setting (retention policy, pin), or `None`.
    fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Sets (`Some`) or removes (`None`) a node setting, durably.
    fn put_setting(&self, key: &str, value: Option<&[u8]>) -> Result<()>;

    /// Every setting whose key starts with `prefix`, in key order.
    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// All of `tenant`'s snapshots, oldest first: by node time, then id
    /// (imported snapshots are listed by their time, not by when they
    /// arrived).
    fn list_snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>>;

    /// One snapshot of `tenant` by id.
    fn get_snapshot(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<SnapshotRecord>>;

    /// Every tenant that has at least one snapshot or stored chunk, in
    /// name order.
    fn list_tenants(&self) -> Result<Vec<TenantId>>;

    /// Appends events to the audit log, chained after the last record, and
    /// makes them durable before returning the records written.
    fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditRecord>>;

    /// Up to `limit` audit records from sequence number `from_seq` on.
    fn read_audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>>;

    /// Why writes fail now, if they do, as the error a write would get:
    /// [`StoreError::NoSpace`] for an engine that ran out of space inside
    /// (RocksDB keeps such a background error until [`Store::reopen`]) or
    /// a bucket that refuses more, [`StoreError::Backend`] for storage that
    /// does not answer. Reads keep working as far as the storage answers.
    /// Cheap: no I/O beyond a local probe.
    fn writes_stopped(&self) -> Option<StoreError> {
        None
    }

    /// Checks that a write would reach where the store keeps its data
    /// (for storage across the network: that it answers and takes a
    /// write), setting or clearing [`Store::writes_stopped`]. The node
    /// calls it at every health check, off the async threads.
    fn probe_writes(&self) {}

    /// Reopens a store whose [`Store::writes_stopped`] is set, once the
    /// caller has seen space come back: `Ok(true)` if it reopened,
    /// `Ok(false)` if there was nothing to do or it is busy (try again
    /// later).
    fn reopen(&self) -> Result<bool> {
        Ok(false)
    }

    /// Free space, beyond what the caller keeps anyway, that a reopen
    /// needs (RocksDB may flush what its write-ahead log holds while it
    /// opens).
    fn reopen_needs_bytes(&self) -> u64 {
        0
    }
}

/// A snapshot's references counted by chunk id: the reference count
/// changes of a commit or a deletion.
///
/// Memory is bounded by the number of *distinct* ids, never by how often
/// a manifest repeats one: a hostile manifest that names one chunk a
/// billion times costs one entry (issue 6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefCounts {
    counts: std::collections::HashMap<ChunkId, u64>,
}

impl RefCounts {
    /// No references.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one reference to `id`.
    pub fn add(&mut self, id: ChunkId) {
        *self.counts.entry(id).or_insert(0) += 1;
    }

    /// Whether `id` is referenced.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.counts.contains_key(id)
    }

    /// Each distinct id with its count, in id order.
    pub fn sorted(&self) -> Vec<(ChunkId, u64)> {
        let mut out: Vec<(ChunkId, u64)> = self.counts.iter().map(|(i, n)| (*i, *n)).collect();
        out.sort_unstable();
        out
    }
}

impl FromIterator<ChunkId> for RefCounts {
    fn from_iter<I: IntoIterator<Item = ChunkId>>(iter: I) -> Self {
        let mut c = RefCounts::new();
        for id in iter {
            c.add(id);
        }
        c
    }
}

impl<const N: usize> From<[ChunkId; N]> for RefCounts {
    fn from(ids: [ChunkId; N]) -> Self {
        ids.into_iter().collect()
    }
}

/// Batch size of [`Store::collect_garbage`]: chunks examined per exclusive
/// hold of the commit lock.
pub const GC_BATCH: usize = 1024;

/// Chains `events` after `head` (last sequence number and hash; `(0,
/// zeros)` for an empty log) and moves the head: the shared part of every
/// implementation's `append_audit`.
pub fn chain_audit(head: &mut (u64, [u8; 32]), events: Vec<AuditEvent>) -> Vec<AuditRecord> {
    events
        .into_iter()
        .map(|e| {
            let r = AuditRecord::chain(head.0 + 1, e, head.1);
            *head = (r.seq, r.hash);
            r
        })
        .collect()
}

/// Sorts records oldest first, as [`Store::list_snapshots`] lists them.
pub fn sort_snapshots(recs: &mut [SnapshotRecord]) {
    recs.sort_by_key(|r| (r.time_micros, r.id));
}

/// Builds the record a commit stores: the shared part of every
/// implementation's `commit_snapshot`.
pub fn build_record(new: NewSnapshot, seq: u64, time_micros: i64) -> SnapshotRecord {
    let mut rec = SnapshotRecord {
        id: SnapshotId([0; 32]),
        tenant: new.tenant,
        host: new.host,
        source: new.source,
        kind: new.kind,
        time_micros,
        seq,
        manifest: new.manifest,
        files: new.summary.files,
        dirs: new.summary.dirs,
        logical_bytes: new.summary.logical_bytes,
        chunk_refs: new.summary.chunk_refs,
        bytes_uploaded: new.bytes_uploaded,
        warnings: new.warnings,
        duration_micros: new.duration_micros,
    };
    rec.id = rec.compute_id();
    rec
}
