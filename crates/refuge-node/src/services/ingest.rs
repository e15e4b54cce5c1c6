//! The `Ingest` service's handlers (agents only): `FindMissing`,
//! `PutChunks` (streamed uploads, batched into a bounded buffer shared
//! by every stream), `CommitSnapshot`, `ReportBackupFailure` and
//! `ListQuarantined`. Every handler first admits the caller
//! ([`Agent::admit`]); the checks themselves are `work::ingest`.

use std::sync::Arc;

use refuge_core::{ChunkId, SourceName, StoredChunk};
use refuge_proto::pb::{self, ingest_server::Ingest};
use refuge_proto::{MAX_FIND_IDS, MAX_MANIFEST_CHUNKS};
use refuge_store::{PutOutcome, Store};
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::failures::put_failure;
use crate::config::{EncryptionPolicy, LimitsConfig};
use crate::floor::changes::Changes;
use crate::floor::clock::now_micros;
use crate::floor::disk::Disk;
use crate::floor::store::{blocking, store_status};
use crate::policy::access::{Access, Agent};
use crate::policy::audit::Outcome;
use crate::policy::quota::Quotas;
use crate::work::ingest::{Reported, check_and_commit, missing_and_touch, verify_and_put};

/// Largest batch of verified chunks written to the store at once.
const PUT_BATCH_BYTES: usize = 32 << 20;
/// A `PutChunks` stream that sends nothing for this long while it holds
/// part of the ingest buffer stores what it has and gives the buffer
/// back: a client that stalls (or opens streams and never finishes them)
/// cannot starve the other agents.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// The ingest service (agents only).
pub struct IngestService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
    quotas: Arc<Quotas>,
    encryption: EncryptionPolicy,
    max_chunk: u32,
    /// Uploaded chunk data buffered across all streams, in KiB permits:
    /// node memory for ingest does not grow with the number of agents.
    buffer: Arc<tokio::sync::Semaphore>,
    buffer_kib: u32,
    /// Free space of the store's disk: below the reserve, ingest refuses.
    disk: Arc<Disk>,
    /// Told of every commit (continuous replication starts a pass).
    changes: Changes,
}

impl IngestService {
    /// Verifies and stores a batch on the blocking pool.
    async fn store_batch(
        &self,
        who: &Agent,
        batch: Vec<(ChunkId, StoredChunk)>,
    ) -> Result<PutOutcome, Status> {
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
        encryption: EncryptionPolicy,
        limits: &LimitsConfig,
        disk: Arc<Disk>,
        changes: Changes,
    ) -> Self {
        let max_chunk = limits.max_chunk_size;
        let buffer_kib = limits.ingest_buffer_mib.saturating_mul(1024).max(1);
        IngestService {
            store,
            access,
            quotas,
            encryption,
            max_chunk,
            buffer: Arc::new(tokio::sync::Semaphore::new(buffer_kib as usize)),
            buffer_kib,
            disk,
            changes,
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn find_missing(
        &self,
        req: Request<pb::FindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        let who = Agent::admit(&self.access, &req, "FindMissing")?;
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
            let (missing, present) = missing_and_touch(&*store, &who.tenant, &ids)?;
            who.audit
                .metrics()
                .deduplicated(who.tenant.as_str(), present);
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
        let who = Agent::admit(&self.access, &req, "PutChunks")?;
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
        let who = Agent::admit(&self.access, &req, "ReportBackupFailure")?;
        let r = req.into_inner();
        let source =
            SourceName::new(r.source).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = self.store.clone();
        let w = who.clone();
        let (src, error) = (source.clone(), r.error.clone());
        blocking(move || {
            put_failure(
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
        let who = Agent::admit(&self.access, &req, "ListQuarantined")?;
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
        let mut who = Agent::admit(&self.access, &req, "CommitSnapshot")?;
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
                Reported {
                    bytes_uploaded: req.bytes_uploaded,
                    warnings: req.warnings,
                    duration_micros: req.duration_micros,
                },
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
        if !rec.replayed {
            self.changes.bump();
        }
        Ok(Response::new(pb::CommitSnapshotResponse {
            snapshot: Some(refuge_proto::snapshot_to(&rec.record)),
            replayed: rec.replayed,
        }))
    }
}
