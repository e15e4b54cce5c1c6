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
//!   number and a time that never goes backwards.
//!
//! # Concurrency
//!
//! All methods take `&self` and may be called from many threads. Commits are
//! serialised inside the store (they assign the sequence number); chunk puts
//! and reads run in parallel.

mod mem;

pub mod conformance;

pub use mem::MemStore;

use refuge_core::audit::{AuditEvent, AuditRecord};
use refuge_core::{
    ChunkId, ChunkRef, HostName, ManifestSummary, SnapshotId, SnapshotRecord, SourceKind,
    SourceName, StoredChunk, TenantId,
};

/// What went wrong in a store, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
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
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::NoSpace(_) | StoreError::Backend(_))
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
}

/// The node's chunk store and snapshot catalog.
pub trait Store: Send + Sync + 'static {
    /// For each of `ids`: the uncompressed length of `tenant`'s stored
    /// chunk, or `None` if `tenant` does not have it.
    fn chunk_lengths(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<u32>>>;

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

    /// Stores verified chunks for `tenant`; existing ids are left untouched.
    /// Not necessarily durable until [`Store::sync`] or a commit.
    fn put_chunks(
        &self,
        tenant: &TenantId,
        chunks: &[(ChunkId, StoredChunk)],
    ) -> Result<PutOutcome>;

    /// A stored chunk, or `None` if `tenant` has no chunk with this id.
    fn get_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<StoredChunk>>;

    /// Makes every earlier put durable.
    fn sync(&self) -> Result<()>;

    /// Commits a snapshot durably and atomically, at node time `now_micros`
    /// (raised if needed so that times strictly increase).
    fn commit_snapshot(&self, new: NewSnapshot, now_micros: i64) -> Result<SnapshotRecord>;

    /// All of `tenant`'s snapshots, oldest first.
    fn list_snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>>;

    /// One snapshot of `tenant` by id.
    fn get_snapshot(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<SnapshotRecord>>;

    /// Every tenant that has at least one snapshot, in name order.
    fn list_tenants(&self) -> Result<Vec<TenantId>>;

    /// Appends events to the audit log, chained after the last record, and
    /// makes them durable before returning the records written.
    fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditRecord>>;

    /// Up to `limit` audit records from sequence number `from_seq` on.
    fn read_audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>>;
}

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
    };
    rec.id = rec.compute_id();
    rec
}
