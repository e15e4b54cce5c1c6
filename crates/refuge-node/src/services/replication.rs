//! The `Replication` service's handlers (replicas only): what a peer node
//! calls to push snapshots here or pull them from here, for the tenants
//! its certificate grants ([`Replica::admit`], [`Replica::tenant`]). The
//! checks are `work::replica`'s; imports and denials are audited here.
//! Also the copy of a pushing peer's audit log (`AuditCopyHead`,
//! `PutAuditCopy`; `catalog::audit_copy`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use refuge_core::{ChunkId, SnapshotId, TenantId};
use refuge_proto::pb::{self, replication_server::Replication};
use refuge_proto::{MAX_FIND_IDS, MAX_GET_IDS};
use refuge_store::{Imported, Store};
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::audit_copy;
use crate::config::EncryptionPolicy;
use crate::floor::changes::Changes;
use crate::floor::disk::Disk;
use crate::floor::store::{blocking, store_status};
use crate::policy::access::Access;
use crate::policy::access::Replica;
use crate::policy::audit::Outcome;
use crate::work::ingest::missing_and_touch;
use crate::work::replica::{
    chunk_ids, deleted, import, outcome_word, put_verified, read_checked, wanted,
};

/// Largest batch of pushed chunks stored at once.
const PUT_BATCH_BYTES: usize = 32 << 20;
/// Chunk ids per `SnapshotChunks` message.
const ID_BATCH: usize = 8192;
/// Chunks read from the store at a time for `GetChunks`.
const READ_GROUP: usize = 16;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;
/// `work::replica::wanted` or `deleted`: indexes of snapshot ids.
type SnapshotQuery = fn(&dyn Store, &TenantId, &[SnapshotId]) -> Result<Vec<usize>, Status>;
type IdStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkIdBatch, Status>> + Send>>;

/// The replication service (replicas only).
pub struct ReplicationService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
    disk: Arc<Disk>,
    encryption: EncryptionPolicy,
    max_chunk: u32,
    changes: Changes,
    /// One append to an audit copy at a time.
    copy_lock: Arc<std::sync::Mutex<()>>,
}

/// Most audit records one `PutAuditCopy` carries.
const MAX_AUDIT_COPY_BATCH: usize = 1024;

impl ReplicationService {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        access: Arc<Access>,
        disk: Arc<Disk>,
        encryption: EncryptionPolicy,
        max_chunk: u32,
        changes: Changes,
    ) -> Self {
        ReplicationService {
            store,
            access,
            disk,
            encryption,
            max_chunk,
            changes,
            copy_lock: Arc::default(),
        }
    }

    /// The origin of an audit copy: the replica certificate's name, if it
    /// grants every tenant (the log covers them all).
    fn copy_origin(who: &Replica, rpc: &str) -> Result<String, Status> {
        if who.grant != refuge_tls::TenantScope::All {
            let why = format!(
                "{rpc}: copying the audit log needs a replica certificate for every tenant (--all-tenants); this one grants some"
            );
            who.record("", "permission_denied", Outcome::Denied, &why);
            return Err(Status::permission_denied(why));
        }
        refuge_core::HostName::new(who.name.clone())
            .map(|h| h.to_string())
            .map_err(|e| Status::invalid_argument(format!("{rpc}: the replica's name: {e}")))
    }

    /// Refuses a write while the disk is below its reserve (or the store
    /// stopped writes), naming this node as the replica that is full.
    fn writable(&self) -> Result<(), Status> {
        match self.disk.refusal(&*self.store) {
            None => Ok(()),
            Some(s) => Err(Status::resource_exhausted(format!(
                "the receiving node cannot store replicated data: {}",
                s.message()
            ))),
        }
    }

    /// The indexes of the snapshot ids `raw` of `tenant` for which `f`
    /// (`work::replica::wanted` or `deleted`) holds, for `rpc`.
    async fn which(
        &self,
        who: &Replica,
        tenant: &str,
        raw: &[Vec<u8>],
        rpc: &str,
        f: SnapshotQuery,
    ) -> Result<Vec<u32>, Status> {
        let t = who.tenant(tenant, rpc)?;
        let ids = ids_of(raw, "snapshot ids", snapshot_id)?;
        let store = self.store.clone();
        let found = blocking(move || f(&*store, &t, &ids)).await?;
        Ok(found.into_iter().map(|i| i as u32).collect())
    }
}

fn ids_of<T>(
    raw: &[Vec<u8>],
    what: &str,
    parse: impl Fn(&[u8]) -> Result<T, refuge_proto::WireError>,
) -> Result<Vec<T>, Status> {
    if raw.len() > MAX_FIND_IDS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_FIND_IDS} {what} per request, got {}",
            raw.len()
        )));
    }
    Ok(raw
        .iter()
        .map(|b| parse(b))
        .collect::<Result<Vec<_>, _>>()?)
}

fn snapshot_id(b: &[u8]) -> Result<SnapshotId, refuge_proto::WireError> {
    b.try_into()
        .map(SnapshotId)
        .map_err(|_| refuge_proto::WireError(format!("snapshot id of {} bytes", b.len())))
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn list_tenants(
        &self,
        req: Request<pb::ReplicaTenantsRequest>,
    ) -> Result<Response<pb::ReplicaTenantsResponse>, Status> {
        let who = Replica::admit(&self.access, &req, "ListTenants")?;
        let store = self.store.clone();
        let tenants = blocking(move || store.list_tenants().map_err(store_status)).await?;
        Ok(Response::new(pb::ReplicaTenantsResponse {
            tenants: tenants
                .into_iter()
                .filter(|t| who.grant.contains(t))
                .map(|t| t.to_string())
                .collect(),
        }))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ReplicaListRequest>,
    ) -> Result<Response<pb::ReplicaListResponse>, Status> {
        let who = Replica::admit(&self.access, &req, "ListSnapshots")?;
        let t = who.tenant(&req.get_ref().tenant, "ListSnapshots")?;
        let store = self.store.clone();
        let snaps = blocking(move || store.list_snapshots(&t).map_err(store_status)).await?;
        Ok(Response::new(pb::ReplicaListResponse {
            snapshots: snaps.iter().map(refuge_proto::snapshot_to).collect(),
        }))
    }

    async fn want_snapshots(
        &self,
        req: Request<pb::WantSnapshotsRequest>,
    ) -> Result<Response<pb::WantSnapshotsResponse>, Status> {
        let who = Replica::admit(&self.access, &req, "WantSnapshots")?;
        let r = req.into_inner();
        Ok(Response::new(pb::WantSnapshotsResponse {
            wanted: self
                .which(&who, &r.tenant, &r.ids, "WantSnapshots", wanted)
                .await?,
        }))
    }

    async fn deleted_snapshots(
        &self,
        req: Request<pb::DeletedSnapshotsRequest>,
    ) -> Result<Response<pb::DeletedSnapshotsResponse>, Status> {
        let who = Replica::admit(&self.access, &req, "DeletedSnapshots")?;
        let r = req.into_inner();
        Ok(Response::new(pb::DeletedSnapshotsResponse {
            deleted: self
                .which(&who, &r.tenant, &r.ids, "DeletedSnapshots", deleted)
                .await?,
        }))
    }

    async fn audit_copy_head(
        &self,
        req: Request<pb::AuditCopyHeadRequest>,
    ) -> Result<Response<pb::AuditCopyHead>, Status> {
        let who = Replica::admit(&self.access, &req, "AuditCopyHead")?;
        let origin = Self::copy_origin(&who, "AuditCopyHead")?;
        let store = self.store.clone();
        let (seq, hash) = blocking(move || audit_copy::head(&*store, &origin)).await?;
        Ok(Response::new(pb::AuditCopyHead {
            seq,
            hash: if seq == 0 { vec![] } else { hash.to_vec() },
        }))
    }

    async fn put_audit_copy(
        &self,
        req: Request<pb::PutAuditCopyRequest>,
    ) -> Result<Response<pb::AuditCopyHead>, Status> {
        let who = Replica::admit(&self.access, &req, "PutAuditCopy")?;
        let origin = Self::copy_origin(&who, "PutAuditCopy")?;
        self.writable()?;
        let records = req.into_inner().records;
        if records.len() > MAX_AUDIT_COPY_BATCH {
            return Err(Status::invalid_argument(format!(
                "PutAuditCopy: {} records in one call (at most {MAX_AUDIT_COPY_BATCH})",
                records.len()
            )));
        }
        let (store, lock, o) = (self.store.clone(), self.copy_lock.clone(), origin.clone());
        let n = records.len();
        let done = blocking(move || {
            let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
            audit_copy::append(&*store, &o, &records)
        })
        .await;
        let (seq, hash) = match done {
            Ok(h) => h,
            Err(s) => {
                who.record(
                    "",
                    "audit_copy_refused",
                    Outcome::Refused,
                    &format!("audit records of {origin}: {}", s.message()),
                );
                return Err(s);
            }
        };
        // Not an audit record of its own: two nodes that push to each
        // other would otherwise make each other a record every pass.
        if n > 0 {
            tracing::info!(%origin, records = n, head = seq, "audit records of a peer copied");
        }
        Ok(Response::new(pb::AuditCopyHead {
            seq,
            hash: hash.to_vec(),
        }))
    }

    async fn read_audit_log(
        &self,
        req: Request<pb::ReadAuditLogRequest>,
    ) -> Result<Response<pb::AuditLogRecords>, Status> {
        let who = Replica::admit(&self.access, &req, "ReadAuditLog")?;
        let peer = Self::copy_origin(&who, "ReadAuditLog")?;
        let from = req.into_inner().from_seq.max(1);
        let store = self.store.clone();
        let recs = blocking(move || {
            store
                .read_audit(from, MAX_AUDIT_COPY_BATCH)
                .map_err(store_status)
        })
        .await?;
        // Not an audit record of its own (each pass would add one for the
        // next pass to copy): the node's log says it.
        if !recs.is_empty() {
            tracing::info!(%peer, from, records = recs.len(), "audit records read by a pulling peer");
        }
        Ok(Response::new(pb::AuditLogRecords {
            records: recs.iter().map(|r| r.encode()).collect(),
        }))
    }

    type SnapshotChunksStream = IdStream;

    async fn snapshot_chunks(
        &self,
        req: Request<pb::SnapshotChunksRequest>,
    ) -> Result<Response<Self::SnapshotChunksStream>, Status> {
        let who = Replica::admit(&self.access, &req, "SnapshotChunks")?;
        let r = req.into_inner();
        let t = who.tenant(&r.tenant, "SnapshotChunks")?;
        let id = snapshot_id(&r.snapshot_id)?;
        let store = self.store.clone();
        let tenant = t.clone();
        let ids = blocking(move || {
            let rec = store
                .get_snapshot(&tenant, &id)
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("no snapshot {id} of {tenant}")))?;
            chunk_ids(&*store, &rec)
        })
        .await?;
        who.record(
            t.as_str(),
            "replication_read",
            Outcome::Ok,
            &format!(
                "snapshot {id} ({} chunks) read by the replica (pull)",
                ids.len()
            ),
        );
        let batches: Vec<Result<pb::ChunkIdBatch, Status>> = ids
            .chunks(ID_BATCH)
            .map(|b| {
                Ok(pb::ChunkIdBatch {
                    ids: b.iter().map(|i| i.0.to_vec()).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn find_missing(
        &self,
        req: Request<pb::ReplicaFindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        let who = Replica::admit(&self.access, &req, "FindMissing")?;
        let r = req.into_inner();
        let t = who.tenant(&r.tenant, "FindMissing")?;
        let ids = ids_of(&r.ids, "chunk ids", refuge_proto::chunk_id)?;
        let store = self.store.clone();
        let (missing, _) = blocking(move || missing_and_touch(&*store, &t, &ids)).await?;
        Ok(Response::new(pb::FindMissingResponse {
            missing: missing.into_iter().map(|i| i as u32).collect(),
        }))
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<pb::ReplicaChunks>>,
    ) -> Result<Response<pb::PutChunksResponse>, Status> {
        let who = Replica::admit(&self.access, &req, "PutChunks")?;
        self.writable()?;
        let mut stream = req.into_inner();
        let mut resp = pb::PutChunksResponse::default();
        let mut tenant: Option<TenantId> = None;
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        loop {
            let next = stream.message().await;
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    // Cut mid-stream: keep what arrived whole, so that the
                    // next pass does not send it again.
                    if let Some(t) = tenant.clone()
                        && !batch.is_empty()
                    {
                        let (store, max) = (self.store.clone(), self.max_chunk);
                        let b = std::mem::take(&mut batch);
                        let _ = blocking(move || put_verified(&*store, &t, b, max)).await;
                    }
                    return Err(e);
                }
            };
            let done = msg.is_none();
            if let Some(m) = msg {
                if tenant.is_none() {
                    tenant = Some(who.tenant(&m.tenant, "PutChunks")?);
                } else if !m.tenant.is_empty()
                    && Some(m.tenant.as_str()) != tenant.as_ref().map(|t| t.as_str())
                {
                    return Err(Status::invalid_argument(
                        "one PutChunks stream carries one tenant's chunks",
                    ));
                }
                for u in m.chunks {
                    resp.chunks_received += 1;
                    let (id, c) = refuge_proto::upload(u)?;
                    if c.raw_len > self.max_chunk {
                        return Err(Status::invalid_argument(format!(
                            "chunk {id} declares {} bytes, above this node's maximum of {}",
                            c.raw_len, self.max_chunk
                        )));
                    }
                    batch_bytes += c.data.len();
                    batch.push((id, c));
                }
            }
            if (done || batch_bytes >= PUT_BATCH_BYTES)
                && !batch.is_empty()
                && let Some(t) = tenant.clone()
            {
                self.disk.check_now(batch_bytes as u64);
                self.writable()?;
                let (store, max) = (self.store.clone(), self.max_chunk);
                let b = std::mem::take(&mut batch);
                batch_bytes = 0;
                let out = blocking(move || put_verified(&*store, &t, b, max))
                    .await
                    .inspect_err(|s| {
                        who.record(
                            t_name(&tenant),
                            "chunk_rejected",
                            Outcome::Refused,
                            s.message(),
                        )
                    })?;
                resp.chunks_stored += out.stored;
                resp.bytes_stored += out.bytes;
            }
            if done {
                return Ok(Response::new(resp));
            }
        }
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let who = Replica::admit(&self.access, &req, "GetChunks")?;
        let r = req.into_inner();
        let t = who.tenant(&r.tenant, "GetChunks")?;
        if r.ids.len() > MAX_GET_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_GET_IDS} ids per GetChunks, got {}",
                r.ids.len()
            )));
        }
        let ids: Vec<ChunkId> = r
            .ids
            .iter()
            .map(|b| refuge_proto::chunk_id(b))
            .collect::<Result<_, _>>()?;
        let (tx, rx) = tokio::sync::mpsc::channel(READ_GROUP);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for group in ids.chunks(READ_GROUP) {
                match read_checked(&*store, &who.audit, &who.subject, &t, group) {
                    Ok(chunks) => {
                        for (id, c) in chunks {
                            if tx
                                .blocking_send(Ok(refuge_proto::chunk_data_to(&id, c)))
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(s) => {
                        let _ = tx.blocking_send(Err(s));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn import_snapshot(
        &self,
        req: Request<pb::ImportSnapshotRequest>,
    ) -> Result<Response<pb::ImportSnapshotResponse>, Status> {
        let who = Replica::admit(&self.access, &req, "ImportSnapshot")?;
        let snap = req
            .into_inner()
            .snapshot
            .ok_or_else(|| Status::invalid_argument("ImportSnapshot without a snapshot"))?;
        let rec = refuge_proto::snapshot(snap)?;
        who.tenant(rec.tenant.as_str(), "ImportSnapshot")?;
        self.writable()?;
        let store = self.store.clone();
        let must = self.encryption.requires(rec.tenant.as_str());
        let r = rec.clone();
        let done = blocking(move || import(&*store, &r, must)).await;
        let label = format!(
            "snapshot {} of {}/{} (seq {} at its node, {})",
            rec.id,
            rec.host,
            rec.source,
            rec.seq,
            refuge_core::format_time_micros(rec.time_micros)
        );
        match &done {
            Ok(Imported::New) => {
                who.record(
                    rec.tenant.as_str(),
                    "snapshot_imported",
                    Outcome::Ok,
                    &format!("{label}: {} files, {} bytes", rec.files, rec.logical_bytes),
                );
                self.changes.bump();
            }
            Ok(_) => {}
            Err(s) => who.record(
                rec.tenant.as_str(),
                "snapshot_import_refused",
                Outcome::Refused,
                &format!("{label}: {}", s.message()),
            ),
        }
        Ok(Response::new(pb::ImportSnapshotResponse {
            outcome: outcome_word(done?).to_string(),
        }))
    }
}

fn t_name(t: &Option<TenantId>) -> &str {
    t.as_ref().map_or("", |t| t.as_str())
}
