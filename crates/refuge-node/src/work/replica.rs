//! This node's end of a replication, whichever side started it: what a
//! sending node reads from its store (snapshots, the chunks they reference,
//! chunk bodies checked before they leave) and what a receiving node
//! checks before it stores (every chunk verified, every manifest read back,
//! the record's totals compared). Blocking; `services::replication` calls
//! these for a peer, `work::replicate` for its own passes.

use std::collections::HashSet;

use refuge_core::{ChunkId, SnapshotId, SnapshotRecord, StoredChunk, TenantId};
use refuge_store::{Imported, PutOutcome, Store};
use tonic::Status;

use crate::catalog::retention::pins;
use crate::catalog::snapshots::snapshot_refs;
use crate::floor::clock::now_micros;
use crate::floor::store::store_status;
use crate::policy::audit::{AuditLog, Outcome};
use crate::work::ingest::{ManifestRead, read_manifest};
use crate::work::maintenance::chunk_problem;

/// Indexes of `ids` for which `keep` holds, ascending.
fn indexes_where(
    ids: &[SnapshotId],
    mut keep: impl FnMut(&SnapshotId) -> Result<bool, Status>,
) -> Result<Vec<usize>, Status> {
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if keep(id)? {
            out.push(i);
        }
    }
    Ok(out)
}

/// Indexes of `ids` this node deleted (it keeps a mark of each).
pub(crate) fn deleted(
    store: &dyn Store,
    tenant: &TenantId,
    ids: &[SnapshotId],
) -> Result<Vec<usize>, Status> {
    indexes_where(ids, |id| {
        Ok(store
            .deleted_at(tenant, id)
            .map_err(store_status)?
            .is_some())
    })
}

/// Indexes of `ids` this node wants: neither stored nor deleted here.
pub(crate) fn wanted(
    store: &dyn Store,
    tenant: &TenantId,
    ids: &[SnapshotId],
) -> Result<Vec<usize>, Status> {
    indexes_where(ids, |id| {
        Ok(store
            .get_snapshot(tenant, id)
            .map_err(store_status)?
            .is_none()
            && store
                .deleted_at(tenant, id)
                .map_err(store_status)?
                .is_none())
    })
}

/// Deletes this node's copy of `rec` because the peer it was pulled from
/// deleted it (`[[replication]] follow_deletions`), unless it is pinned
/// here: pins are per site. Whether it was deleted.
pub(crate) fn follow_deletion(store: &dyn Store, rec: &SnapshotRecord) -> Result<bool, Status> {
    if pins(store, &rec.tenant)?.contains(&rec.id.to_hex()) {
        return Ok(false);
    }
    let refs = snapshot_refs(store, rec)?;
    store
        .delete_snapshot(&rec.tenant, &rec.id, &refs, now_micros())
        .map_err(store_status)
}

/// Every stored chunk `rec` references, each once: its manifest chunks
/// first, then the data chunks in id order.
pub(crate) fn chunk_ids(store: &dyn Store, rec: &SnapshotRecord) -> Result<Vec<ChunkId>, Status> {
    let refs = snapshot_refs(store, rec)?;
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut out: Vec<ChunkId> = rec
        .manifest
        .iter()
        .map(|r| r.id)
        .filter(|id| seen.insert(*id))
        .collect();
    out.extend(
        refs.sorted()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| seen.insert(*id)),
    );
    Ok(out)
}

/// `tenant`'s chunks `ids`, each checked (checksum, and the id of a plain
/// one) before it is handed out: a corrupt chunk is quarantined here,
/// audited as `subject`'s finding, and fails the call; a missing or
/// quarantined one fails it too. Never sends bad bytes as good.
pub(crate) fn read_checked(
    store: &dyn Store,
    audit: &AuditLog,
    subject: &str,
    tenant: &TenantId,
    ids: &[ChunkId],
) -> Result<Vec<(ChunkId, StoredChunk)>, Status> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let problem = match store.get_chunk(tenant, id) {
            Ok(Some(c)) => match chunk_problem(store, tenant, id, &c)? {
                None => {
                    out.push((*id, c));
                    continue;
                }
                Some(p) => p,
            },
            Ok(None) => {
                let why = if store.is_quarantined(tenant, id).map_err(store_status)? {
                    "is quarantined (verification found it corrupt; an agent's next upload heals it)"
                } else {
                    "is not stored"
                };
                return Err(Status::failed_precondition(format!(
                    "chunk {id} of tenant {tenant} {why}: the snapshots that use it cannot be replicated until it is healed"
                )));
            }
            Err(refuge_store::StoreError::Corrupt(m)) => m,
            Err(e) => return Err(store_status(e)),
        };
        store
            .quarantine_chunk(tenant, id, &problem, now_micros())
            .map_err(store_status)?;
        audit.record(
            subject,
            tenant.as_str(),
            "chunk_quarantined",
            Outcome::Failed,
            &format!("chunk {id}: {problem}; found while reading it for replication"),
        );
        return Err(Status::data_loss(format!(
            "chunk {id} of tenant {tenant} is corrupt here ({problem}): quarantined, not sent; \
             the snapshots that use it are replicated once an agent's upload heals it"
        )));
    }
    Ok(out)
}

/// Verifies chunks that came from a peer (sizes, bounded decompression,
/// the id of a plain chunk) and stores them; the first bad one fails the
/// call after the good ones before it are stored.
pub(crate) fn put_verified(
    store: &dyn Store,
    tenant: &TenantId,
    chunks: Vec<(ChunkId, StoredChunk)>,
    max_chunk: u32,
) -> Result<PutOutcome, Status> {
    let mut good = Vec::with_capacity(chunks.len());
    let mut failure = None;
    for (id, c) in chunks {
        match refuge_core::verify_stored(&id, &c, max_chunk) {
            Ok(()) => good.push((id, c)),
            Err(e) => {
                failure = Some(Status::invalid_argument(format!(
                    "chunk {id} from the peer rejected: {e}; nothing was stored for it"
                )));
                break;
            }
        }
    }
    let out = store
        .put_chunks(tenant, &good, now_micros())
        .map_err(store_status)?;
    if let Some(id) = out.conflict {
        return Err(Status::invalid_argument(format!(
            "chunk {id} from the peer is already stored here with other bytes; nothing was stored for it"
        )));
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(out),
    }
}

/// Imports a snapshot a peer committed, after reading its manifest back
/// from this node's store: every chunk it references must be here with
/// its length, and the record's totals must be the manifest's. A snapshot
/// already here, or deleted here, changes nothing. `must_encrypt` is this
/// node's encryption policy for the tenant.
pub(crate) fn import(
    store: &dyn Store,
    rec: &SnapshotRecord,
    must_encrypt: bool,
) -> Result<Imported, Status> {
    if rec.id != rec.compute_id() {
        return Err(Status::invalid_argument(format!(
            "snapshot {} does not match its id: its fields were changed",
            rec.id.short()
        )));
    }
    if store
        .get_snapshot(&rec.tenant, &rec.id)
        .map_err(store_status)?
        .is_some()
    {
        return Ok(Imported::Present);
    }
    if store
        .deleted_at(&rec.tenant, &rec.id)
        .map_err(store_status)?
        .is_some()
    {
        return Ok(Imported::Deleted);
    }
    let must = must_encrypt.then(|| {
        format!(
            "tenant {} must be encrypted on this node (node.toml [encryption]) and this snapshot is not",
            rec.tenant
        )
    });
    let ManifestRead { refs, summary } =
        read_manifest(store, &rec.tenant, rec.kind, &rec.manifest, must.as_deref()).map_err(
            |e| match e {
                Ok(msg) => Status::failed_precondition(format!(
                    "snapshot {} not imported: {msg}",
                    rec.id.short()
                )),
                Err(s) => s,
            },
        )?;
    let totals = (
        summary.files,
        summary.dirs,
        summary.logical_bytes,
        summary.chunk_refs,
    );
    if totals != (rec.files, rec.dirs, rec.logical_bytes, rec.chunk_refs) {
        return Err(Status::invalid_argument(format!(
            "snapshot {} not imported: its record's totals (files, dirs, bytes, chunk references) \
             {:?} are not its manifest's {totals:?}",
            rec.id.short(),
            (rec.files, rec.dirs, rec.logical_bytes, rec.chunk_refs)
        )));
    }
    store.import_snapshot(rec, &refs).map_err(store_status)
}

/// The wire word for an import's outcome.
pub(crate) fn outcome_word(i: Imported) -> &'static str {
    match i {
        Imported::New => "imported",
        Imported::Present => "present",
        Imported::Deleted => "deleted",
    }
}
