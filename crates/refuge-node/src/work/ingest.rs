//! The checks behind ingest: a batch of uploaded chunks verified and
//! stored (`verify_and_put`), and a commit's manifest read back from the
//! store and checked reference by reference before the snapshot is
//! committed (`check_and_commit`). Blocking: the handlers in
//! `services::ingest` call these on the blocking pool.

use std::collections::HashMap;

use refuge_core::{
    ChunkId, ChunkRef, FrameError, ManifestReader, ManifestRecord, ManifestSummary, SourceKind,
    SourceName, StoredChunk, TenantId,
};
use refuge_store::{CommitToken, Committed, NewSnapshot, PutOutcome, RefCounts, Store};
use tonic::Status;

use crate::floor::clock::now_micros;
use crate::floor::store::{StoredStream, store_status};
use crate::policy::access::Agent;
use crate::policy::audit::Outcome;
use crate::policy::quota::Quotas;

/// Verifies a batch and stores the verified prefix; returns the first
/// failure after storing what came before it.
pub(crate) fn verify_and_put(
    store: &dyn Store,
    quotas: &Quotas,
    who: &Agent,
    batch: Vec<(ChunkId, StoredChunk)>,
    max_chunk: u32,
) -> Result<PutOutcome, Status> {
    let mut good = Vec::with_capacity(batch.len());
    let mut failure = None;
    for (id, c) in batch {
        // Plain chunks are verified against their id; sealed ones (which
        // only the tenant's key opens) by their sizes.
        match refuge_core::verify_stored(&id, &c, max_chunk) {
            Ok(()) => good.push((id, c)),
            Err(e) => {
                who.record(
                    "chunk_rejected",
                    Outcome::Refused,
                    &format!("chunk {id}: {e}"),
                );
                let msg = match e {
                    FrameError::HashMismatch { actual } => format!(
                        "chunk {id} rejected: its content hashes to {actual}; nothing was stored for it"
                    ),
                    other => format!("chunk {id} rejected: {other}; nothing was stored for it"),
                };
                failure = Some(Status::invalid_argument(msg));
                break;
            }
        }
    }
    let now = now_micros();
    // Only a tenant with a byte quota pays for a second existence lookup.
    if quotas.limits_uploads(&who.tenant) {
        let ids: Vec<ChunkId> = good.iter().map(|(id, _)| *id).collect();
        let lens = store
            .chunk_lengths(&who.tenant, &ids)
            .map_err(store_status)?;
        let new_bytes: u64 = good
            .iter()
            .zip(lens)
            .filter(|(_, l)| l.is_none())
            .map(|((_, c), _)| c.data.len() as u64)
            .sum();
        if let Err(s) = quotas.check_upload(&who.tenant, now, new_bytes) {
            who.record("quota_exceeded", Outcome::Refused, s.message());
            return Err(s);
        }
    }
    let out = store
        .put_chunks(&who.tenant, &good, now)
        .map_err(store_status)?;
    quotas.uploaded(&who.tenant, now, out.bytes);
    if let Some(id) = out.conflict {
        let msg = format!(
            "chunk {id} is already stored with other bytes: an id names exactly one content, \
             and stored chunks are never replaced; nothing was stored for it"
        );
        who.record("chunk_rejected", Outcome::Refused, &msg);
        return Err(Status::invalid_argument(msg));
    }
    if out.healed > 0 {
        who.record(
            "chunk_healed",
            Outcome::Ok,
            &format!(
                "{} quarantined chunks replaced by a verified upload",
                out.healed
            ),
        );
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(out),
    }
}

/// Indexes of `ids` that `tenant` lacks, ascending, and how many it has:
/// those are kept from garbage collection for its grace period, since the
/// caller (an agent's next commit, a peer's import) may reference them.
pub(crate) fn missing_and_touch(
    store: &dyn Store,
    tenant: &TenantId,
    ids: &[ChunkId],
) -> Result<(Vec<usize>, u64), Status> {
    let missing = store.missing_chunks(tenant, ids).map_err(store_status)?;
    let mut is_missing = vec![false; ids.len()];
    for &i in &missing {
        is_missing[i] = true;
    }
    let present: Vec<ChunkId> = ids
        .iter()
        .zip(&is_missing)
        .filter(|(_, m)| !**m)
        .map(|(id, _)| *id)
        .collect();
    store
        .touch_chunks(tenant, &present, now_micros())
        .map_err(store_status)?;
    Ok((missing, present.len() as u64))
}

/// The first reference (holes excepted) that `tenant` has not stored with
/// exactly the referenced length, and the stored length if any.
fn first_bad_ref(
    store: &dyn Store,
    tenant: &TenantId,
    refs: &[ChunkRef],
) -> Result<Option<(ChunkRef, Option<u32>)>, Status> {
    let stored: Vec<&ChunkRef> = refs.iter().filter(|r| !r.is_hole()).collect();
    let ids: Vec<ChunkId> = stored.iter().map(|r| r.id).collect();
    let lens = store.chunk_lengths(tenant, &ids).map_err(store_status)?;
    Ok(stored
        .into_iter()
        .zip(lens)
        .find(|(r, l)| *l != Some(r.len))
        .map(|(r, l)| (*r, l)))
}

/// What reading a manifest back found: every stored chunk it references
/// (counted as the store counts references) and its totals.
pub(crate) struct ManifestRead {
    pub(crate) refs: RefCounts,
    pub(crate) summary: ManifestSummary,
}

/// Reads `tenant`'s manifest `manifest` back from the store and checks it
/// and every chunk it references (stored, with the referenced length); the
/// error is a sentence saying what is wrong. Shared by commits and by
/// imports from a peer (`work::replica`).
pub(crate) fn read_manifest(
    store: &dyn Store,
    tenant: &TenantId,
    kind: SourceKind,
    manifest: &[ChunkRef],
    must_encrypt: Option<&str>,
) -> Result<ManifestRead, Result<String, Status>> {
    if let Some((r, stored)) = first_bad_ref(store, tenant, manifest).map_err(Err)? {
        return Err(Ok(match stored {
            None => format!(
                "manifest chunk {} is not stored on the node; upload it before committing",
                r.id
            ),
            Some(l) => format!(
                "manifest chunk {} is stored with length {l}, not {}",
                r.id, r.len
            ),
        }));
    }
    let stream = StoredStream::new(store, tenant, manifest);
    let mut reader =
        ManifestReader::new(stream).map_err(|e| Ok(format!("invalid manifest: {e}")))?;
    if reader.kind() != kind {
        return Err(Ok(format!(
            "manifest is for a {} source but the commit says {}",
            reader.kind().as_str(),
            kind.as_str()
        )));
    }
    if let Some(why) = must_encrypt
        && !reader.is_sealed()
    {
        return Err(Ok(why.to_string()));
    }
    let mut current = Vec::new();
    // Every stored chunk the snapshot references, counted for the
    // reference counts, and the stored length of each one checked: memory
    // grows with the distinct chunks (which this tenant stored), not with
    // how often a manifest names one, and each is looked up once.
    let mut all_refs = RefCounts::new();
    let mut checked: HashMap<ChunkId, u32> = HashMap::new();
    for r in manifest {
        all_refs.add(r.id);
        checked.insert(r.id, r.len);
    }
    let mut unknown: Vec<ChunkRef> = Vec::new();
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(ManifestRecord::Entry(e))) => current = e.path,
            Ok(Some(ManifestRecord::Sealed { .. })) => current = b"(encrypted entry)".to_vec(),
            Ok(Some(ManifestRecord::Chunks(refs))) => {
                unknown.clear();
                let mut bad = None;
                for r in refs.iter().filter(|r| !r.is_hole()) {
                    match checked.get(&r.id) {
                        Some(&l) if l == r.len => {}
                        Some(&l) => {
                            bad = Some((*r, Some(l)));
                            break;
                        }
                        None => unknown.push(*r),
                    }
                }
                if bad.is_none() {
                    bad = first_bad_ref(store, tenant, &unknown).map_err(Err)?;
                }
                if let Some((r, stored)) = bad {
                    let file = String::from_utf8_lossy(&current);
                    return Err(Ok(match stored {
                        None => format!(
                            "snapshot references chunk {} (file {file:?}) that the node does not have",
                            r.id
                        ),
                        Some(l) => format!(
                            "snapshot references chunk {} (file {file:?}) with length {}, but the node stores it with length {l}",
                            r.id, r.len
                        ),
                    }));
                }
                for r in refs.iter().filter(|r| !r.is_hole()) {
                    all_refs.add(r.id);
                    checked.entry(r.id).or_insert(r.len);
                }
            }
            Err(e) => return Err(Ok(format!("invalid manifest: {e}"))),
        }
    }
    drop(checked);
    let summary = reader.summary();
    drop(reader);
    if kind == SourceKind::Image && (summary.entries != 1 || summary.files != 1) {
        return Err(Ok(format!(
            "an image manifest has exactly one file entry, this one has {} entries",
            summary.entries
        )));
    }
    Ok(ManifestRead {
        refs: all_refs,
        summary,
    })
}

/// What an agent reports about its backup, kept in the record as it says.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reported {
    pub(crate) bytes_uploaded: u64,
    pub(crate) warnings: u64,
    pub(crate) duration_micros: u64,
}

/// Checks a snapshot's manifest and every chunk it references (stored, with
/// the referenced length), and commits it. A crash anywhere before the
/// store's synced commit leaves no snapshot.
pub(crate) fn check_and_commit(
    store: &dyn Store,
    who: &Agent,
    source: SourceName,
    kind: SourceKind,
    manifest: Vec<ChunkRef>,
    reported: Reported,
    token: Option<CommitToken>,
) -> Result<Committed, Status> {
    let reject = |msg: String| {
        who.record(
            "commit_rejected",
            Outcome::Refused,
            &format!("{}/{source}: {msg}", who.host),
        );
        Status::failed_precondition(msg)
    };
    let must = who.must_encrypt.then(|| {
        format!(
            "tenant {} must back up encrypted (node.toml [encryption]); set [encryption] key_file on this agent",
            who.tenant
        )
    });
    let ManifestRead {
        refs: all_refs,
        summary,
    } = read_manifest(store, &who.tenant, kind, &manifest, must.as_deref()).map_err(
        |e| match e {
            Ok(msg) => reject(msg),
            Err(s) => s,
        },
    )?;
    let new = NewSnapshot {
        tenant: who.tenant.clone(),
        host: who.host.clone(),
        source,
        kind,
        manifest,
        summary,
        bytes_uploaded: reported.bytes_uploaded,
        warnings: reported.warnings,
        duration_micros: reported.duration_micros,
        refs: all_refs,
        token,
    };
    let done = store.commit(new, now_micros()).map_err(store_status)?;
    let rec = &done.record;
    if done.replayed {
        who.record(
            "snapshot_commit_replayed",
            Outcome::Ok,
            &format!(
                "commit resent with the token of snapshot {} of {}/{} (seq {}): answered with it, nothing new made",
                rec.id, rec.host, rec.source, rec.seq
            ),
        );
    } else {
        who.record(
            "snapshot_committed",
            Outcome::Ok,
            &format!(
                "snapshot {} of {}/{} (seq {}): {} files, {} bytes, {} bytes uploaded",
                rec.id,
                rec.host,
                rec.source,
                rec.seq,
                rec.files,
                rec.logical_bytes,
                rec.bytes_uploaded
            ),
        );
    }
    Ok(done)
}
