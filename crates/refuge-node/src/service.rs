//! The `Ingest`, `Restore` and `Audit` services. Every handler first
//! admits the caller ([`Access::admit`]: identity, revocation, role);
//! stores are called on the blocking pool.

use std::collections::HashMap;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use refuge_core::{
    ChunkId, ChunkRef, FrameError, ManifestReader, ManifestRecord, SnapshotRecord, SourceKind,
    SourceName, StoredChunk, TenantId, decode_chunk,
};
use refuge_proto::pb::{self, audit_server::Audit, ingest_server::Ingest, restore_server::Restore};
use refuge_proto::{MAX_FIND_IDS, MAX_GET_IDS, MAX_MANIFEST_CHUNKS};
use refuge_store::{NewSnapshot, RefCounts, Store, StoreError};
use refuge_tls::Role;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{Access, Scope};
use crate::audit::{AuditLog, Outcome};
use crate::quota::Quotas;

/// Largest batch of verified chunks written to the store at once.
const PUT_BATCH_BYTES: usize = 32 << 20;
/// A `PutChunks` stream that sends nothing for this long while it holds
/// part of the ingest buffer stores what it has and gives the buffer
/// back: a client that stalls (or opens streams and never finishes them)
/// cannot starve the other agents.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NoSpace(m) => Status::resource_exhausted(format!(
            "node storage is full: {m}; nothing more was stored, restores still work, and the \
             node takes uploads again by itself once space is freed"
        )),
        StoreError::Corrupt(m) => Status::data_loss(format!("stored data is corrupt: {m}")),
        StoreError::Backend(m) => Status::unavailable(format!("node storage error: {m}")),
        StoreError::MissingChunk(m) => Status::failed_precondition(m),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// An agent, admitted: the tenant and host its certificate names.
#[derive(Clone)]
struct AgentCaller {
    tenant: TenantId,
    host: refuge_core::HostName,
    subject: String,
    audit: AuditLog,
    /// The node requires this tenant's snapshots to be encrypted.
    must_encrypt: bool,
}

impl AgentCaller {
    fn admit<T>(access: &Access, req: &Request<T>, rpc: &str) -> Result<Self, Status> {
        let who = access.admit(req, rpc, &[Role::Agent])?;
        let (tenant, host) = who
            .agent_of()
            .ok_or_else(|| Status::internal("agent identity without a tenant and host"))?;
        Ok(AgentCaller {
            tenant,
            host,
            subject: who.subject(),
            audit: access.audit.clone(),
            must_encrypt: false,
        })
    }

    /// Audits an event of this agent's tenant.
    fn record(&self, event: &str, outcome: Outcome, detail: &str) {
        self.audit
            .record(&self.subject, self.tenant.as_str(), event, outcome, detail);
    }
}

/// The ingest service (agents only).
pub struct IngestService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
    quotas: Arc<Quotas>,
    encryption: crate::config::EncryptionPolicy,
    max_chunk: u32,
    /// Uploaded chunk data buffered across all streams, in KiB permits:
    /// node memory for ingest does not grow with the number of agents.
    buffer: Arc<tokio::sync::Semaphore>,
    buffer_kib: u32,
    /// Free space of the store's disk: below the reserve, ingest refuses.
    disk: Arc<crate::health::Disk>,
}

impl IngestService {
    /// Verifies and stores a batch on the blocking pool.
    async fn store_batch(
        &self,
        who: &AgentCaller,
        batch: Vec<(ChunkId, StoredChunk)>,
    ) -> Result<refuge_store::PutOutcome, Status> {
        self.disk
            .check_now(batch.iter().map(|(_, c)| c.data.len() as u64).sum());
        if let Some(s) = self.disk.refusal(&*self.store) {
            return Err(s);
        }
        let store = self.store.clone();
        let w = who.clone();
        let max = self.max_chunk;
        let quotas = self.quotas.clone();
        blocking(move || verify_and_put(&*store, &quotas, &w, batch, max)).await
    }

    pub(crate) fn new(
        store: Arc<dyn Store>,
        access: Arc<Access>,
        quotas: Arc<Quotas>,
        encryption: crate::config::EncryptionPolicy,
        max_chunk: u32,
        buffer_mib: u32,
        disk: Arc<crate::health::Disk>,
    ) -> Self {
        let buffer_kib = buffer_mib.saturating_mul(1024).max(1);
        IngestService {
            store,
            access,
            quotas,
            encryption,
            max_chunk,
            buffer: Arc::new(tokio::sync::Semaphore::new(buffer_kib as usize)),
            buffer_kib,
            disk,
        }
    }
}

/// Verifies a batch and stores the verified prefix; returns the first
/// failure after storing what came before it.
fn verify_and_put(
    store: &dyn Store,
    quotas: &Quotas,
    who: &AgentCaller,
    batch: Vec<(ChunkId, StoredChunk)>,
    max_chunk: u32,
) -> Result<refuge_store::PutOutcome, Status> {
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

/// Reads a manifest stream from stored chunks, verifying each.
pub(crate) struct StoredStream<'a> {
    store: &'a dyn Store,
    tenant: &'a TenantId,
    refs: std::slice::Iter<'a, ChunkRef>,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> StoredStream<'a> {
    /// The manifest made of `refs`, read from `tenant`'s chunks.
    pub(crate) fn new(store: &'a dyn Store, tenant: &'a TenantId, refs: &'a [ChunkRef]) -> Self {
        StoredStream {
            store,
            tenant,
            refs: refs.iter(),
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for StoredStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(r) = self.refs.next() else {
                return Ok(0);
            };
            let c = self
                .store
                .get_chunk(self.tenant, &r.id)
                .map_err(std::io::Error::other)?
                .ok_or_else(|| {
                    std::io::Error::other(format!("manifest chunk {} is missing", r.id))
                })?;
            if c.raw_len != r.len {
                return Err(std::io::Error::other(format!(
                    "manifest chunk {} has the wrong length",
                    r.id
                )));
            }
            self.buf = decode_chunk(&r.id, &c, refuge_core::format::MAX_CHUNK_LEN)
                .map_err(|e| std::io::Error::other(format!("manifest chunk {}: {e}", r.id)))?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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

/// Checks a snapshot's manifest and every chunk it references (stored, with
/// the referenced length), and commits it. A crash anywhere before the
/// store's synced commit leaves no snapshot.
#[allow(clippy::too_many_arguments)] // the parts of one request, checked
fn check_and_commit(
    store: &dyn Store,
    who: &AgentCaller,
    source: SourceName,
    kind: SourceKind,
    manifest: Vec<ChunkRef>,
    bytes_uploaded: u64,
    warnings: u64,
    token: Option<refuge_store::CommitToken>,
) -> Result<refuge_store::Committed, Status> {
    let reject = |msg: String| {
        who.record(
            "commit_rejected",
            Outcome::Refused,
            &format!("{}/{source}: {msg}", who.host),
        );
        Status::failed_precondition(msg)
    };
    if let Some((r, stored)) = first_bad_ref(store, &who.tenant, &manifest)? {
        return Err(reject(match stored {
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
    let stream = StoredStream::new(store, &who.tenant, &manifest);
    let mut reader =
        ManifestReader::new(stream).map_err(|e| reject(format!("invalid manifest: {e}")))?;
    if reader.kind() != kind {
        return Err(reject(format!(
            "manifest is for a {} source but the commit says {}",
            reader.kind().as_str(),
            kind.as_str()
        )));
    }
    if who.must_encrypt && !reader.is_sealed() {
        return Err(reject(format!(
            "tenant {} must back up encrypted (node.toml [encryption]); set [encryption] key_file on this agent",
            who.tenant
        )));
    }
    let mut current = Vec::new();
    // Every stored chunk the snapshot references, counted for the
    // reference counts, and the stored length of each one checked: memory
    // grows with the distinct chunks (which this tenant stored), not with
    // how often a manifest names one, and each is looked up once.
    let mut all_refs = RefCounts::new();
    let mut checked: HashMap<ChunkId, u32> = HashMap::new();
    for r in &manifest {
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
                    bad = first_bad_ref(store, &who.tenant, &unknown)?;
                }
                if let Some((r, stored)) = bad {
                    let file = String::from_utf8_lossy(&current);
                    return Err(reject(match stored {
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
            Err(e) => return Err(reject(format!("invalid manifest: {e}"))),
        }
    }
    drop(checked);
    let summary = reader.summary();
    drop(reader);
    if kind == SourceKind::Image && (summary.entries != 1 || summary.files != 1) {
        return Err(reject(format!(
            "an image manifest has exactly one file entry, this one has {} entries",
            summary.entries
        )));
    }
    let new = NewSnapshot {
        tenant: who.tenant.clone(),
        host: who.host.clone(),
        source,
        kind,
        manifest,
        summary,
        bytes_uploaded,
        warnings,
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

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn find_missing(
        &self,
        req: Request<pb::FindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        let who = AgentCaller::admit(&self.access, &req, "FindMissing")?;
        let req = req.into_inner();
        if req.ids.len() > MAX_FIND_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_FIND_IDS} ids per FindMissing, got {}",
                req.ids.len()
            )));
        }
        let ids = req
            .ids
            .iter()
            .map(|b| refuge_proto::chunk_id(b))
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.store.clone();
        let missing = blocking(move || {
            let missing = store
                .missing_chunks(&who.tenant, &ids)
                .map_err(store_status)?;
            // What the agent is told exists, its commit may reference:
            // keep it from garbage collection for the grace period.
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
                .touch_chunks(&who.tenant, &present, now_micros())
                .map_err(store_status)?;
            who.audit
                .metrics()
                .deduplicated(who.tenant.as_str(), present.len() as u64);
            Ok(missing)
        })
        .await?;
        Ok(Response::new(pb::FindMissingResponse {
            missing: missing.into_iter().map(|i| i as u32).collect(),
        }))
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<pb::ChunkUpload>>,
    ) -> Result<Response<pb::PutChunksResponse>, Status> {
        let who = AgentCaller::admit(&self.access, &req, "PutChunks")?;
        if let Some(s) = self.disk.refusal(&*self.store) {
            return Err(s);
        }
        let mut stream = req.into_inner();
        let mut resp = pb::PutChunksResponse::default();
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut permits = Vec::new();
        // A stream's batch is a fair share of the buffer, at most 32 MiB.
        let batch_limit = PUT_BATCH_BYTES
            .min(self.buffer_kib as usize * 1024 / 4)
            .max(1);
        loop {
            let message = if batch.is_empty() {
                stream.message().await
            } else {
                match tokio::time::timeout(IDLE_FLUSH, stream.message()).await {
                    Ok(m) => m,
                    Err(_) => {
                        let out = self.store_batch(&who, std::mem::take(&mut batch)).await?;
                        batch_bytes = 0;
                        permits.clear();
                        resp.chunks_stored += out.stored;
                        resp.bytes_stored += out.bytes;
                        continue;
                    }
                }
            };
            let next = match message {
                Ok(m) => m,
                Err(e) => {
                    // The client went away (or sent garbage) mid-stream:
                    // keep the chunks that arrived whole and verified, so
                    // that its next try does not send them again.
                    if !batch.is_empty() {
                        let _ = self.store_batch(&who, std::mem::take(&mut batch)).await;
                    }
                    return Err(e);
                }
            };
            let done = next.is_none();
            if let Some(msg) = next {
                resp.chunks_received += 1;
                let (id, chunk) = refuge_proto::upload(msg)?;
                // Sizes first, before any work on the body.
                if chunk.raw_len > self.max_chunk {
                    who.record(
                        "chunk_rejected",
                        Outcome::Refused,
                        &format!(
                            "chunk {id}: declares {} bytes, above the maximum of {}",
                            chunk.raw_len, self.max_chunk
                        ),
                    );
                    return Err(Status::invalid_argument(format!(
                        "chunk {id} declares {} bytes, above the node's maximum of {}",
                        chunk.raw_len, self.max_chunk
                    )));
                }
                // Room in the node's ingest buffer (a chunk larger than the
                // whole buffer takes all of it). Never wait while holding
                // permits: store what this stream has buffered first, so
                // that streams cannot deadlock each other (or themselves).
                let kib = (chunk.data.len().div_ceil(1024) as u32).clamp(1, self.buffer_kib);
                let permit = match self.buffer.clone().try_acquire_many_owned(kib) {
                    Ok(p) => p,
                    Err(_) => {
                        if !batch.is_empty() {
                            let out = self.store_batch(&who, std::mem::take(&mut batch)).await?;
                            batch_bytes = 0;
                            permits.clear();
                            resp.chunks_stored += out.stored;
                            resp.bytes_stored += out.bytes;
                        }
                        self.buffer
                            .clone()
                            .acquire_many_owned(kib)
                            .await
                            .map_err(|_| Status::unavailable("node is shutting down"))?
                    }
                };
                permits.push(permit);
                batch_bytes += chunk.data.len();
                batch.push((id, chunk));
            }
            if !batch.is_empty() && (done || batch_bytes >= batch_limit) {
                let out = self.store_batch(&who, std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
                permits.clear();
                resp.chunks_stored += out.stored;
                resp.bytes_stored += out.bytes;
            }
            if done {
                who.audit.metrics().ingested(
                    who.tenant.as_str(),
                    resp.chunks_received,
                    resp.chunks_stored,
                    resp.bytes_stored,
                );
                return Ok(Response::new(resp));
            }
        }
    }

    async fn report_backup_failure(
        &self,
        req: Request<pb::ReportBackupFailureRequest>,
    ) -> Result<Response<pb::ReportBackupFailureResponse>, Status> {
        let who = AgentCaller::admit(&self.access, &req, "ReportBackupFailure")?;
        let r = req.into_inner();
        let source =
            SourceName::new(r.source).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = self.store.clone();
        let w = who.clone();
        let (src, error) = (source.clone(), r.error.clone());
        blocking(move || {
            crate::supervision::put_failure(
                &*store,
                &w.tenant,
                w.host.as_str(),
                src.as_str(),
                now_micros(),
                &error,
            )
        })
        .await?;
        who.record(
            "backup_failed",
            Outcome::Failed,
            &format!("{}/{source}: {}", who.host, r.error),
        );
        Ok(Response::new(pb::ReportBackupFailureResponse {}))
    }

    async fn list_quarantined(
        &self,
        req: Request<pb::ListQuarantinedRequest>,
    ) -> Result<Response<pb::ListQuarantinedResponse>, Status> {
        const MAX: usize = 100_000;
        let who = AgentCaller::admit(&self.access, &req, "ListQuarantined")?;
        let store = self.store.clone();
        let q = blocking(move || store.list_quarantine(&who.tenant).map_err(store_status)).await?;
        Ok(Response::new(pb::ListQuarantinedResponse {
            truncated: q.len() > MAX,
            ids: q.iter().take(MAX).map(|c| c.id.0.to_vec()).collect(),
        }))
    }

    async fn commit_snapshot(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<pb::CommitSnapshotResponse>, Status> {
        let mut who = AgentCaller::admit(&self.access, &req, "CommitSnapshot")?;
        if let Some(s) = self.disk.refusal(&*self.store) {
            return Err(s);
        }
        who.must_encrypt = self.encryption.requires(who.tenant.as_str());
        let req = req.into_inner();
        let source =
            SourceName::new(req.source).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let kind = refuge_proto::source_kind(req.kind)?;
        if req.manifest.is_empty() || req.manifest.len() > MAX_MANIFEST_CHUNKS {
            return Err(Status::invalid_argument(format!(
                "a manifest has 1 to {MAX_MANIFEST_CHUNKS} chunks, got {}",
                req.manifest.len()
            )));
        }
        let manifest = req
            .manifest
            .iter()
            .map(refuge_proto::chunk_ref)
            .collect::<Result<Vec<_>, _>>()?;
        let token = match req.commit_token.len() {
            0 => None,
            16 => {
                let mut t = [0u8; 16];
                t.copy_from_slice(&req.commit_token);
                Some(t)
            }
            n => {
                return Err(Status::invalid_argument(format!(
                    "a commit token is 16 bytes, got {n}"
                )));
            }
        };
        let store = self.store.clone();
        let quotas = self.quotas.clone();
        let started = std::time::Instant::now();
        let rec = blocking(move || {
            if let Err(s) = quotas.check_commit(&*store, &who.tenant, now_micros()) {
                who.record(
                    "quota_exceeded",
                    Outcome::Refused,
                    &format!("{}/{source}: {}", who.host, s.message()),
                );
                return Err(s);
            }
            let done = check_and_commit(
                &*store,
                &who,
                source,
                kind,
                manifest,
                req.bytes_uploaded,
                req.warnings,
                token,
            )?;
            if !done.replayed {
                quotas.committed(&who.tenant, done.record.time_micros);
                who.audit
                    .metrics()
                    .committed(who.tenant.as_str(), started.elapsed());
            }
            Ok(done)
        })
        .await?;
        Ok(Response::new(pb::CommitSnapshotResponse {
            snapshot: Some(refuge_proto::snapshot_to(&rec.record)),
            replayed: rec.replayed,
        }))
    }
}

/// The restore service: agents read their own tenant, operators the
/// tenants they are granted; admins list snapshot metadata.
pub struct RestoreService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
}

impl RestoreService {
    pub(crate) fn new(store: Arc<dyn Store>, access: Arc<Access>) -> Self {
        RestoreService { store, access }
    }
}

/// Snapshots of `tenants` matching the optional filters.
pub(crate) fn filtered(
    store: &dyn Store,
    tenants: &[TenantId],
    host: &str,
    source: &str,
) -> Result<Vec<SnapshotRecord>, Status> {
    let mut out = Vec::new();
    for t in tenants {
        out.extend(
            store
                .list_snapshots(t)
                .map_err(store_status)?
                .into_iter()
                .filter(|s| host.is_empty() || s.host.as_str() == host)
                .filter(|s| source.is_empty() || s.source.as_str() == source),
        );
    }
    Ok(out)
}

pub(crate) fn resolve(
    snaps: Vec<SnapshotRecord>,
    req: &pb::ResolveSnapshotRequest,
) -> Result<SnapshotRecord, Status> {
    let one_source = |cands: &[SnapshotRecord], what: &str| -> Result<(), Status> {
        if let Some(first) = cands.first()
            && cands
                .iter()
                .any(|s| s.host != first.host || s.source != first.source)
        {
            return Err(Status::failed_precondition(format!(
                "{what} is ambiguous: snapshots of several hosts or sources match; pass --host and --source"
            )));
        }
        Ok(())
    };
    let filter = || {
        let mut f = String::new();
        if !req.host.is_empty() {
            f.push_str(&format!(" for host {}", req.host));
        }
        if !req.source.is_empty() {
            f.push_str(&format!(" for source {}", req.source));
        }
        f
    };
    if req.at_unix_micros != 0 {
        let cands: Vec<_> = snaps
            .into_iter()
            .filter(|s| s.time_micros <= req.at_unix_micros)
            .collect();
        one_source(&cands, "--at")?;
        return cands.into_iter().last().ok_or_else(|| {
            Status::not_found(format!(
                "no snapshot at or before {}{}",
                refuge_core::format_time_micros(req.at_unix_micros),
                filter()
            ))
        });
    }
    let sel = req.selector.trim().to_ascii_lowercase();
    if sel == "latest" {
        one_source(&snaps, "latest")?;
        return snaps
            .into_iter()
            .last()
            .ok_or_else(|| Status::not_found(format!("no snapshots{}", filter())));
    }
    if sel.is_empty() || sel.len() > 64 || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a snapshot id, id prefix or \"latest\"",
            req.selector
        )));
    }
    let mut matches: Vec<_> = snaps
        .into_iter()
        .filter(|s| s.id.to_hex().starts_with(&sel))
        .collect();
    match matches.len() {
        0 => Err(Status::not_found(format!(
            "no snapshot with id {sel}{}",
            filter()
        ))),
        1 => Ok(matches.remove(0)),
        n => Err(Status::failed_precondition(format!(
            "id prefix {sel} is ambiguous: it matches {n} snapshots; give more characters"
        ))),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;

#[tonic::async_trait]
impl Restore for RestoreService {
    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let who = self.access.admit(
            &req,
            "ListSnapshots",
            &[Role::Agent, Role::Operator, Role::Admin],
        )?;
        let r = req.into_inner();
        let store = self.store.clone();
        let snaps = blocking(move || {
            let tenants = Access::listed_tenants(&*store, &who, &r.tenant)?;
            filtered(&*store, &tenants, &r.host, &r.source)
        })
        .await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: snaps.iter().map(refuge_proto::snapshot_to).collect(),
        }))
    }

    async fn resolve_snapshot(
        &self,
        req: Request<pb::ResolveSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let who = self
            .access
            .admit(&req, "ResolveSnapshot", &[Role::Agent, Role::Operator])?;
        let r = req.into_inner();
        let purpose = r.purpose.clone();
        let tenants = match Access::one_tenant(&who, &r.tenant)? {
            Scope::One(t) => vec![t],
            Scope::Nothing => vec![],
        };
        let store = self.store.clone();
        let rec = blocking(move || {
            let snaps = filtered(&*store, &tenants, &r.host, &r.source)?;
            resolve(snaps, &r)
        })
        .await?;
        let event = match purpose.as_str() {
            "restore" => "snapshot_restore_started",
            "parent" => "snapshot_parent_read",
            "drill" => "drill_started",
            _ => "snapshot_opened",
        };
        self.access.audit.record(
            &who.subject(),
            rec.tenant.as_str(),
            event,
            Outcome::Ok,
            &format!(
                "snapshot {} of {}/{} at {}",
                rec.id,
                rec.host,
                rec.source,
                refuge_core::format_time_micros(rec.time_micros)
            ),
        );
        Ok(Response::new(refuge_proto::snapshot_to(&rec)))
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let who = self
            .access
            .admit(&req, "GetChunks", &[Role::Agent, Role::Operator])?;
        let r = req.into_inner();
        if r.ids.len() > MAX_GET_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_GET_IDS} ids per GetChunks, got {}",
                r.ids.len()
            )));
        }
        let ids = r
            .ids
            .iter()
            .map(|b| refuge_proto::chunk_id(b))
            .collect::<Result<Vec<_>, _>>()?;
        // Another tenant's chunks are answered exactly like absent ones.
        let tenant = match Access::one_tenant(&who, &r.tenant)? {
            Scope::One(t) => Some(t),
            Scope::Nothing => None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.store.clone();
        let audit = self.access.audit.clone();
        tokio::task::spawn_blocking(move || {
            // Counted once per request, not per chunk.
            let mut sent = 0u64;
            for id in ids {
                let found = match &tenant {
                    Some(t) => store.get_chunk(t, &id),
                    None => Ok(None),
                };
                let quarantined = |t: &TenantId| store.is_quarantined(t, &id).unwrap_or(false);
                let item = match found {
                    Ok(Some(c)) => {
                        sent += c.data.len() as u64;
                        Ok(refuge_proto::chunk_data_to(&id, c))
                    }
                    Ok(None) if tenant.as_ref().is_some_and(quarantined) => {
                        Err(Status::data_loss(format!(
                            "chunk {id} was found corrupt by verification and is quarantined; \
                             the next backup that contains it heals it"
                        )))
                    }
                    Ok(None) => Err(Status::not_found(format!(
                        "chunk {id} not found on the node"
                    ))),
                    Err(e) => {
                        audit.record(
                            &who.subject(),
                            tenant.as_ref().map_or("", |t| t.as_str()),
                            "chunk_read_failed",
                            Outcome::Failed,
                            &format!("chunk {id}: {e}"),
                        );
                        Err(store_status(e))
                    }
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    break;
                }
            }
            if let Some(t) = &tenant
                && sent > 0
            {
                audit.metrics().restored(t.as_str(), sent);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = self.access.admit(&req, "WhoAmI", &Role::ALL)?;
        let (tenant, host) = who
            .agent_of()
            .map(|(t, h)| (t.to_string(), h.to_string()))
            .unwrap_or_default();
        let tenants = match &who.tenants {
            refuge_tls::TenantScope::All => vec!["*".to_string()],
            refuge_tls::TenantScope::Only(t) => t.iter().map(|t| t.to_string()).collect(),
        };
        Ok(Response::new(pb::WhoAmIResponse {
            tenant,
            host,
            node_version: env!("CARGO_PKG_VERSION").to_string(),
            role: who.role.to_string(),
            name: who.name.clone(),
            tenants,
            serial: who.serial.clone(),
        }))
    }
}

/// Records per `AuditBatch` message.
const AUDIT_BATCH: usize = 1024;

/// The audit service (auditors only).
pub struct AuditService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
}

impl AuditService {
    pub(crate) fn new(store: Arc<dyn Store>, access: Arc<Access>) -> Self {
        AuditService { store, access }
    }
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    type ReadAuditStream = AuditStream;

    async fn read_audit(
        &self,
        req: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<Self::ReadAuditStream>, Status> {
        let who = self.access.admit(&req, "ReadAudit", &[Role::Auditor])?;
        let r = req.into_inner();
        self.access.audit.record(
            &who.subject(),
            "",
            "audit_read",
            Outcome::Ok,
            &format!("from record {}", r.from_seq.max(1)),
        );
        // What was recorded before this read (its own record included) is
        // in the store before reading starts.
        self.access.audit.flush().await;
        let mut next = r.from_seq.max(1);
        let mut left = if r.limit == 0 { u64::MAX } else { r.limit };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            while left > 0 {
                let want = (AUDIT_BATCH as u64).min(left) as usize;
                let item = match store.read_audit(next, want) {
                    Ok(recs) if recs.is_empty() => break,
                    Ok(recs) => {
                        next = recs.last().map_or(next, |r| r.seq + 1);
                        left -= recs.len() as u64;
                        let short = recs.len() < want;
                        let batch = pb::AuditBatch {
                            records: recs.iter().map(|r| r.encode()).collect(),
                        };
                        if tx.blocking_send(Ok(batch)).is_err() || short {
                            break;
                        }
                        continue;
                    }
                    Err(e) => Err(store_status(e)),
                };
                let _ = tx.blocking_send(item);
                break;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
