//! Replication passes to and from the peers of `[[replication]]`: one task
//! per peer. A pass copies, tenant by tenant, every snapshot the sending
//! end has and the receiving end wants (neither has it nor deleted it),
//! oldest first, with the chunks the receiving end lacks; then it imports
//! the record. Push sends from this node's store ([`Local`]) to the peer
//! ([`Remote`]); pull the other way round; the pass is the same code.
//!
//! An interrupted pass leaves chunks the receiver already stored (kept from
//! garbage collection for its grace period) and snapshots already imported;
//! the next pass asks again and sends only the rest. Deletions do not
//! travel: a receiver that deleted a snapshot does not want it back, and
//! only a pulling node with `follow_deletions` deletes its copies of what
//! its source deleted ([`Local::follow_deletions`]).
//!
//! The node's connection to a peer is the client library's mutual-TLS
//! channel (`refuge_client::channel`): a node is a client of its peer, with
//! its replica certificate, and the handshake errors a user can act on are
//! written there once.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use refuge_core::{ChunkId, SnapshotId, SnapshotRecord, StoredChunk, TenantId};
use refuge_proto::pb::{self, replication_client::ReplicationClient};
use refuge_proto::{MAX_FIND_IDS, MAX_GET_IDS};
use refuge_store::{Imported, Store};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::catalog::audit_copy;
use crate::config::{Direction, EncryptionPolicy, ReplicationPeer};
use crate::floor::changes::Changes;
use crate::floor::clock::now_micros;
use crate::floor::disk::Disk;
use crate::floor::health::REPLICATION;
use crate::floor::store::{blocking, store_status};
use crate::policy::audit::{AuditLog, Outcome};
use crate::work::ingest::missing_and_touch;
use crate::work::replica;

/// Chunks fetched and sent per step: bounded memory (at most two steps'
/// chunk bodies in flight per peer: one being stored by the receiver, the
/// next being read by the sender).
const STEP_CHUNKS: usize = 32;

/// What every peer's passes found, for status, metrics and health; keyed
/// by (peer, tenant), with tenant `""` for a pass that failed before it
/// reached any tenant.
#[derive(Clone, Default)]
pub(crate) struct Board(Arc<RwLock<BTreeMap<(String, String), pb::ReplicationStatus>>>);

impl Board {
    /// Every row, by peer then tenant.
    pub(crate) fn rows(&self) -> Vec<pb::ReplicationStatus> {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        let now = now_micros();
        g.values()
            .map(|r| {
                let mut r = r.clone();
                // Lag grows between passes: it is measured against now.
                if r.lag_secs > 0.0 && r.last_pass_unix_micros > 0 {
                    r.lag_secs += (now - r.last_pass_unix_micros).max(0) as f64 / 1e6;
                }
                r
            })
            .collect()
    }

    /// The rows a caller may see: those of `tenants`, and a peer's own
    /// failure (no tenant) only for a `node_wide` caller.
    pub(crate) fn rows_seen(
        &self,
        tenants: &[TenantId],
        node_wide: bool,
    ) -> Vec<pb::ReplicationStatus> {
        self.rows()
            .into_iter()
            .filter(|r| {
                if r.tenant.is_empty() {
                    node_wide
                } else {
                    tenants.iter().any(|t| t.as_str() == r.tenant)
                }
            })
            .collect()
    }

    fn update(
        &self,
        peer: &ReplicationPeer,
        tenant: &str,
        f: impl FnOnce(&mut pb::ReplicationStatus),
    ) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        let row = g
            .entry((peer.name.clone(), tenant.to_string()))
            .or_insert_with(|| pb::ReplicationStatus {
                peer: peer.name.clone(),
                address: peer.address.clone(),
                direction: peer.direction.as_str().into(),
                tenant: tenant.into(),
                ..Default::default()
            });
        f(row);
    }

    fn clear_error(&self, peer: &ReplicationPeer) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        g.remove(&(peer.name.clone(), String::new()));
    }

    /// Whether every peer's last pass succeeded.
    fn all_ok(&self) -> bool {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        g.values().all(|r| r.last_error.is_empty())
    }
}

/// One end of a replication: this node's store or a peer.
pub(crate) trait End: Send + Sync {
    /// The tenants this end has.
    fn tenants(&self) -> impl Future<Output = anyhow::Result<Vec<TenantId>>> + Send;
    /// Every snapshot of `t`, oldest first.
    fn snapshots(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = anyhow::Result<Vec<SnapshotRecord>>> + Send;
    /// Indexes of `ids` (at most `MAX_FIND_IDS`) this end wants.
    fn wanted(
        &self,
        t: &TenantId,
        ids: &[SnapshotId],
    ) -> impl Future<Output = anyhow::Result<Vec<usize>>> + Send;
    /// Every chunk `rec` references, each once.
    fn chunk_ids(
        &self,
        rec: &SnapshotRecord,
    ) -> impl Future<Output = anyhow::Result<Vec<ChunkId>>> + Send;
    /// Indexes of `ids` (at most `MAX_FIND_IDS`) this end lacks.
    fn missing(
        &self,
        t: &TenantId,
        ids: &[ChunkId],
    ) -> impl Future<Output = anyhow::Result<Vec<usize>>> + Send;
    /// The chunks `ids`, checked, in order.
    fn get(
        &self,
        t: &TenantId,
        ids: &[ChunkId],
    ) -> impl Future<Output = anyhow::Result<Vec<(ChunkId, StoredChunk)>>> + Send;
    /// Stores chunks (verified by the receiving node).
    fn put(
        &self,
        t: &TenantId,
        chunks: Vec<(ChunkId, StoredChunk)>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Imports a record whose chunks are all here.
    fn import(&self, rec: &SnapshotRecord)
    -> impl Future<Output = anyhow::Result<Imported>> + Send;
}

/// This node's store as an end.
pub(crate) struct Local {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) audit: AuditLog,
    /// How the audit log names this replication (`replication:PEER`).
    pub(crate) subject: String,
    pub(crate) encryption: EncryptionPolicy,
    pub(crate) max_chunk: u32,
    pub(crate) disk: Arc<Disk>,
    pub(crate) changes: Changes,
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow!("{}", e.message())
}

impl End for Local {
    async fn tenants(&self) -> anyhow::Result<Vec<TenantId>> {
        let s = self.store.clone();
        blocking(move || s.list_tenants().map_err(store_status))
            .await
            .map_err(status_error)
    }

    async fn snapshots(&self, t: &TenantId) -> anyhow::Result<Vec<SnapshotRecord>> {
        let (s, t) = (self.store.clone(), t.clone());
        blocking(move || s.list_snapshots(&t).map_err(store_status))
            .await
            .map_err(status_error)
    }

    async fn wanted(&self, t: &TenantId, ids: &[SnapshotId]) -> anyhow::Result<Vec<usize>> {
        let (s, t, ids) = (self.store.clone(), t.clone(), ids.to_vec());
        blocking(move || replica::wanted(&*s, &t, &ids))
            .await
            .map_err(status_error)
    }

    async fn chunk_ids(&self, rec: &SnapshotRecord) -> anyhow::Result<Vec<ChunkId>> {
        let (s, r) = (self.store.clone(), rec.clone());
        blocking(move || replica::chunk_ids(&*s, &r))
            .await
            .map_err(status_error)
    }

    async fn missing(&self, t: &TenantId, ids: &[ChunkId]) -> anyhow::Result<Vec<usize>> {
        let (s, t, ids) = (self.store.clone(), t.clone(), ids.to_vec());
        blocking(move || missing_and_touch(&*s, &t, &ids).map(|(m, _)| m))
            .await
            .map_err(status_error)
    }

    async fn get(
        &self,
        t: &TenantId,
        ids: &[ChunkId],
    ) -> anyhow::Result<Vec<(ChunkId, StoredChunk)>> {
        let (s, a, who) = (self.store.clone(), self.audit.clone(), self.subject.clone());
        let (t, ids) = (t.clone(), ids.to_vec());
        blocking(move || replica::read_checked(&*s, &a, &who, &t, &ids))
            .await
            .map_err(status_error)
    }

    async fn put(&self, t: &TenantId, chunks: Vec<(ChunkId, StoredChunk)>) -> anyhow::Result<()> {
        let bytes: u64 = chunks.iter().map(|(_, c)| c.data.len() as u64).sum();
        self.disk.check_now(bytes);
        if let Some(s) = self.disk.refusal(&*self.store) {
            return Err(anyhow!(
                "this node cannot store replicated data: {}",
                s.message()
            ));
        }
        let (s, t, max) = (self.store.clone(), t.clone(), self.max_chunk);
        blocking(move || replica::put_verified(&*s, &t, chunks, max))
            .await
            .map(|_| ())
            .map_err(status_error)
    }

    async fn import(&self, rec: &SnapshotRecord) -> anyhow::Result<Imported> {
        let s = self.store.clone();
        let r = rec.clone();
        let must = self.encryption.requires(rec.tenant.as_str());
        let done = blocking(move || replica::import(&*s, &r, must))
            .await
            .map_err(status_error)?;
        if done == Imported::New {
            self.audit.record(
                &self.subject,
                rec.tenant.as_str(),
                "snapshot_imported",
                Outcome::Ok,
                &format!(
                    "snapshot {} of {}/{} (seq {} at its node, {}) pulled: {} files, {} bytes",
                    rec.id,
                    rec.host,
                    rec.source,
                    rec.seq,
                    refuge_core::format_time_micros(rec.time_micros),
                    rec.files,
                    rec.logical_bytes
                ),
            );
            self.changes.bump();
        }
        Ok(done)
    }
}

/// A peer node as an end, over its `Replication` service.
pub(crate) struct Remote {
    client: ReplicationClient<Channel>,
    timeout: Duration,
    name: String,
}

impl Remote {
    async fn call<T, F>(&self, what: &str, f: F) -> anyhow::Result<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let stalled = || {
            anyhow!(
                "{what} at peer {}: no answer within {} s (call_timeout_secs): the link or the peer is stalled",
                self.name,
                self.timeout.as_secs()
            )
        };
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            // The request's own deadline (grpc-timeout) fired first.
            Ok(Err(s)) if s.message().contains("Timeout expired") => Err(stalled()),
            Ok(Err(s)) => Err(refuge_client::rpc_error(
                &format!("{what} at peer {}", self.name),
                &s,
            )),
            Err(_) => Err(stalled()),
        }
    }

    fn req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.set_timeout(self.timeout);
        r
    }
}

impl End for Remote {
    async fn tenants(&self) -> anyhow::Result<Vec<TenantId>> {
        let mut c = self.client.clone();
        let r = self
            .call(
                "listing tenants",
                c.list_tenants(self.req(pb::ReplicaTenantsRequest {})),
            )
            .await?;
        r.tenants
            .into_iter()
            .map(|t| TenantId::new(t).map_err(|e| anyhow!("peer named a bad tenant: {e}")))
            .collect()
    }

    async fn snapshots(&self, t: &TenantId) -> anyhow::Result<Vec<SnapshotRecord>> {
        let mut c = self.client.clone();
        let r = self
            .call(
                "listing snapshots",
                c.list_snapshots(self.req(pb::ReplicaListRequest {
                    tenant: t.to_string(),
                })),
            )
            .await?;
        let mut out = Vec::with_capacity(r.snapshots.len());
        for s in r.snapshots {
            let rec = refuge_proto::snapshot(s)?;
            if rec.tenant != *t || rec.id != rec.compute_id() {
                anyhow::bail!(
                    "peer {} listed snapshot {} that is not a valid record of tenant {t}",
                    self.name,
                    rec.id.short()
                );
            }
            out.push(rec);
        }
        Ok(out)
    }

    async fn wanted(&self, t: &TenantId, ids: &[SnapshotId]) -> anyhow::Result<Vec<usize>> {
        let mut c = self.client.clone();
        let r = self
            .call(
                "asking which snapshots it wants",
                c.want_snapshots(self.req(pb::WantSnapshotsRequest {
                    tenant: t.to_string(),
                    ids: ids.iter().map(|i| i.0.to_vec()).collect(),
                })),
            )
            .await?;
        indexes(r.wanted, ids.len())
    }

    async fn chunk_ids(&self, rec: &SnapshotRecord) -> anyhow::Result<Vec<ChunkId>> {
        let mut c = self.client.clone();
        let mut stream = self
            .call(
                "listing a snapshot's chunks",
                c.snapshot_chunks(self.req(pb::SnapshotChunksRequest {
                    tenant: rec.tenant.to_string(),
                    snapshot_id: rec.id.0.to_vec(),
                })),
            )
            .await?;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(self.timeout, stream.message())
                .await
                .map_err(|_| anyhow!("peer {} stalled listing chunks", self.name))?;
            match next {
                Ok(Some(b)) => {
                    for id in b.ids {
                        out.push(refuge_proto::chunk_id(&id)?);
                    }
                }
                Ok(None) => return Ok(out),
                Err(s) => return Err(refuge_client::rpc_error("listing a snapshot's chunks", &s)),
            }
        }
    }

    async fn missing(&self, t: &TenantId, ids: &[ChunkId]) -> anyhow::Result<Vec<usize>> {
        let mut c = self.client.clone();
        let r = self
            .call(
                "asking which chunks it lacks",
                c.find_missing(self.req(pb::ReplicaFindMissingRequest {
                    tenant: t.to_string(),
                    ids: ids.iter().map(|i| i.0.to_vec()).collect(),
                })),
            )
            .await?;
        indexes(r.missing, ids.len())
    }

    async fn get(
        &self,
        t: &TenantId,
        ids: &[ChunkId],
    ) -> anyhow::Result<Vec<(ChunkId, StoredChunk)>> {
        let mut c = self.client.clone();
        let mut stream = self
            .call(
                "fetching chunks",
                c.get_chunks(self.req(pb::GetChunksRequest {
                    ids: ids.iter().map(|i| i.0.to_vec()).collect(),
                    tenant: t.to_string(),
                })),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        loop {
            let next = tokio::time::timeout(self.timeout, stream.message())
                .await
                .map_err(|_| anyhow!("peer {} stalled sending chunks", self.name))?;
            match next {
                Ok(Some(d)) => {
                    let (id, chunk) = refuge_proto::chunk_data(d)?;
                    if ids.get(out.len()) != Some(&id) {
                        anyhow::bail!("peer {} sent chunk {id} out of order", self.name);
                    }
                    out.push((id, chunk));
                }
                Ok(None) if out.len() == ids.len() => return Ok(out),
                Ok(None) => anyhow::bail!(
                    "peer {} sent {} of {} chunks",
                    self.name,
                    out.len(),
                    ids.len()
                ),
                Err(s) => return Err(refuge_client::rpc_error("fetching chunks", &s)),
            }
        }
    }

    async fn put(&self, t: &TenantId, chunks: Vec<(ChunkId, StoredChunk)>) -> anyhow::Result<()> {
        let mut c = self.client.clone();
        let tenant = t.to_string();
        let msgs: Vec<pb::ReplicaChunks> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, (id, chunk))| pb::ReplicaChunks {
                tenant: if i == 0 {
                    tenant.clone()
                } else {
                    String::new()
                },
                chunks: vec![refuge_proto::upload_to(&id, chunk)],
            })
            .collect();
        self.call(
            "storing chunks",
            c.put_chunks(self.req(tokio_stream::iter(msgs))),
        )
        .await
        .map(|_| ())
    }

    async fn import(&self, rec: &SnapshotRecord) -> anyhow::Result<Imported> {
        let mut c = self.client.clone();
        let r = self
            .call(
                "importing a snapshot",
                c.import_snapshot(self.req(pb::ImportSnapshotRequest {
                    snapshot: Some(refuge_proto::snapshot_to(rec)),
                })),
            )
            .await?;
        match r.outcome.as_str() {
            "imported" => Ok(Imported::New),
            "present" => Ok(Imported::Present),
            "deleted" => Ok(Imported::Deleted),
            o => Err(anyhow!("peer {} answered the import with {o:?}", self.name)),
        }
    }
}

/// Audit records sent to a peer per call.
const AUDIT_COPY_BATCH: usize = 1024;

impl Remote {
    /// Sends this node's audit records the peer's copy lacks, in order;
    /// returns how many were sent.
    async fn copy_audit(&self, store: &Arc<dyn Store>) -> anyhow::Result<u64> {
        let head = self
            .call(
                "asking for the copy of our audit log",
                self.client
                    .clone()
                    .audit_copy_head(self.req(pb::AuditCopyHeadRequest {})),
            )
            .await?;
        let mut next = head.seq + 1;
        let mut sent = 0;
        loop {
            let s = store.clone();
            let recs = blocking(move || s.read_audit(next, AUDIT_COPY_BATCH).map_err(store_status))
                .await
                .map_err(status_error)?;
            let Some(last) = recs.last() else { break };
            let n = recs.len();
            let to = last.seq;
            let records: Vec<Vec<u8>> = recs.iter().map(|r| r.encode()).collect();
            self.call(
                "copying our audit log",
                self.client
                    .clone()
                    .put_audit_copy(self.req(pb::PutAuditCopyRequest { records })),
            )
            .await?;
            sent += n as u64;
            next = to + 1;
            if n < AUDIT_COPY_BATCH {
                break;
            }
        }
        Ok(sent)
    }
}

impl Remote {
    /// Fetches the peer's audit records this node's copy of its log
    /// (origin `origin`) lacks, in order, and appends them along the
    /// chain; returns how many were added.
    async fn fetch_audit(&self, store: &Arc<dyn Store>, origin: &str) -> anyhow::Result<u64> {
        let mut added = 0;
        loop {
            let (s, o) = (store.clone(), origin.to_string());
            let (seq, _) = blocking(move || audit_copy::head(&*s, &o))
                .await
                .map_err(status_error)?;
            let r = self
                .call(
                    "reading the peer's audit log",
                    self.client
                        .clone()
                        .read_audit_log(self.req(pb::ReadAuditLogRequest { from_seq: seq + 1 })),
                )
                .await?;
            let n = r.records.len();
            if n == 0 {
                break;
            }
            let (s, o) = (store.clone(), origin.to_string());
            blocking(move || audit_copy::append(&*s, &o, &r.records))
                .await
                .map_err(|e| {
                    anyhow!(
                        "the peer's audit records do not continue our copy: {}",
                        e.message()
                    )
                })?;
            added += n as u64;
            if n < AUDIT_COPY_BATCH {
                break;
            }
        }
        Ok(added)
    }

    /// Indexes of `ids` (at most `MAX_FIND_IDS`) the peer deleted.
    async fn deleted(&self, t: &TenantId, ids: &[SnapshotId]) -> anyhow::Result<Vec<usize>> {
        let mut c = self.client.clone();
        let r = self
            .call(
                "asking which snapshots it deleted",
                c.deleted_snapshots(self.req(pb::DeletedSnapshotsRequest {
                    tenant: t.to_string(),
                    ids: ids.iter().map(|i| i.0.to_vec()).collect(),
                })),
            )
            .await?;
        indexes(r.deleted, ids.len())
    }
}

impl Local {
    /// Deletes this node's copies of `t`'s snapshots that `peer` deleted
    /// (`follow_deletions`, pull only), pinned ones excepted; audited.
    /// `listed` is what the peer listed in this pass. How many were
    /// deleted.
    async fn follow_deletions(
        &self,
        remote: &Remote,
        t: &TenantId,
        listed: &[SnapshotId],
    ) -> anyhow::Result<u64> {
        let theirs: std::collections::HashSet<&SnapshotId> = listed.iter().collect();
        let gone_there: Vec<SnapshotRecord> = self
            .snapshots(t)
            .await?
            .into_iter()
            .filter(|s| !theirs.contains(&s.id))
            .collect();
        let mut n = 0;
        for batch in gone_there.chunks(MAX_FIND_IDS) {
            let ids: Vec<SnapshotId> = batch.iter().map(|s| s.id).collect();
            for i in remote.deleted(t, &ids).await? {
                let (s, rec) = (self.store.clone(), batch[i].clone());
                let done = blocking(move || replica::follow_deletion(&*s, &rec))
                    .await
                    .map_err(status_error)?;
                let rec = &batch[i];
                let what = format!(
                    "snapshot {} of {}/{} ({}), deleted at peer {}",
                    rec.id.short(),
                    rec.host,
                    rec.source,
                    refuge_core::format_time_micros(rec.time_micros),
                    remote.name
                );
                if done {
                    n += 1;
                    self.audit.record(
                        &self.subject,
                        t.as_str(),
                        "snapshot_deleted",
                        Outcome::Ok,
                        &format!("{what}: deleted here too ([[replication]] follow_deletions)"),
                    );
                } else {
                    tracing::info!("{what}: kept here, it is pinned");
                }
            }
        }
        Ok(n)
    }
}

fn indexes(got: Vec<u32>, len: usize) -> anyhow::Result<Vec<usize>> {
    got.into_iter()
        .map(|i| {
            let i = i as usize;
            if i < len {
                Ok(i)
            } else {
                Err(anyhow!("peer answered with an index out of range"))
            }
        })
        .collect()
}

/// A bandwidth limit: waits so that bytes sent stay under `per_sec`.
struct Limiter {
    per_sec: u64,
    start: Instant,
    sent: u64,
}

impl Limiter {
    fn new(mib: u64) -> Self {
        Limiter {
            per_sec: mib << 20,
            start: Instant::now(),
            sent: 0,
        }
    }

    async fn take(&mut self, bytes: u64) {
        if self.per_sec == 0 {
            return;
        }
        self.sent += bytes;
        let due = Duration::from_secs_f64(self.sent as f64 / self.per_sec as f64);
        let spent = self.start.elapsed();
        if due > spent {
            tokio::time::sleep(due - spent).await;
        }
    }
}

/// Copies what `dst` wants of `src`'s snapshots of tenant `t`, oldest
/// first; the board row of `(peer, t)` follows each step. Returns how
/// many were imported and the ids `src` listed.
async fn tenant_pass<S: End, D: End>(
    src: &S,
    dst: &D,
    t: &TenantId,
    peer: &ReplicationPeer,
    board: &Board,
    metrics: &AuditLog,
    limiter: &mut Limiter,
) -> anyhow::Result<(u64, Vec<SnapshotId>)> {
    let snaps = src.snapshots(t).await?;
    let ids: Vec<SnapshotId> = snaps.iter().map(|s| s.id).collect();
    let mut want = Vec::new();
    for (n, batch) in ids.chunks(MAX_FIND_IDS).enumerate() {
        want.extend(
            dst.wanted(t, batch)
                .await?
                .into_iter()
                .map(|i| n * MAX_FIND_IDS + i),
        );
    }
    let mut pending: std::collections::BTreeSet<usize> = want.iter().copied().collect();
    let lag_of = |pending: &std::collections::BTreeSet<usize>| -> f64 {
        let now = now_micros();
        let both = snaps
            .iter()
            .enumerate()
            .filter(|(i, _)| !pending.contains(i))
            .map(|(_, s)| s.time_micros)
            .max();
        match (both, snaps.first()) {
            (Some(t), _) => (now - t).max(0) as f64 / 1e6,
            (None, Some(first)) => (now - first.time_micros).max(0) as f64 / 1e6,
            (None, None) => 0.0,
        }
    };
    let show = |pending: &std::collections::BTreeSet<usize>| {
        let lag = lag_of(pending);
        board.update(peer, t.as_str(), |r| {
            r.lag_secs = lag;
            r.pending_snapshots = pending.len() as u64;
            r.last_pass_unix_micros = now_micros();
        });
    };
    show(&pending);
    let mut imported = 0;
    for i in want {
        let rec = &snaps[i];
        let chunks = src.chunk_ids(rec).await?;
        for batch in chunks.chunks(MAX_FIND_IDS.min(MAX_GET_IDS * 8)) {
            let missing: Vec<ChunkId> = dst
                .missing(t, batch)
                .await?
                .into_iter()
                .map(|j| batch[j])
                .collect();
            // Two steps in flight: the sender reads and checks the next
            // step while the receiver checks and stores this one.
            let steps: Vec<&[ChunkId]> = missing.chunks(STEP_CHUNKS).collect();
            let mut next = match steps.first() {
                Some(first) => Some(src.get(t, first).await?),
                None => None,
            };
            for k in 0..steps.len() {
                let got = next.take().expect("read ahead");
                let bytes: u64 = got.iter().map(|(_, c)| c.data.len() as u64).sum();
                limiter.take(bytes).await;
                let n = got.len() as u64;
                match steps.get(k + 1) {
                    Some(following) => {
                        let (put, read) = tokio::join!(dst.put(t, got), src.get(t, following));
                        put?;
                        next = Some(read?);
                    }
                    None => dst.put(t, got).await?,
                }
                metrics
                    .metrics()
                    .replicated(&peer.name, t.as_str(), 0, n, bytes);
                board.update(peer, t.as_str(), |r| {
                    r.chunks_sent += n;
                    r.bytes_sent += bytes;
                });
            }
        }
        let outcome = dst.import(rec).await.with_context(|| {
            format!("snapshot {} of {}/{}", rec.id.short(), rec.host, rec.source)
        })?;
        if outcome == Imported::New {
            imported += 1;
            metrics
                .metrics()
                .replicated(&peer.name, t.as_str(), 1, 0, 0);
            board.update(peer, t.as_str(), |r| r.snapshots_sent += 1);
        }
        pending.remove(&i);
        show(&pending);
    }
    Ok((imported, ids))
}

/// Everything one peer's task needs.
pub(crate) struct PeerTask {
    pub(crate) peer: ReplicationPeer,
    pub(crate) local: Local,
    pub(crate) board: Board,
    pub(crate) health: HealthReporter,
}

impl PeerTask {
    fn connection(&self) -> refuge_client::ConnectionConfig {
        let p = &self.peer;
        refuge_client::ConnectionConfig {
            address: p.address.clone(),
            fallback: Vec::new(),
            server_name: p.server_name.clone(),
            ca: p.ca.clone(),
            cert: p.cert.clone(),
            key: p.key.clone(),
            connect_timeout_secs: p.connect_timeout_secs,
            keepalive_secs: 10,
            keepalive_timeout_secs: p.call_timeout_secs.clamp(1, 20),
            call_timeout_secs: p.call_timeout_secs,
        }
    }

    /// A new mutual-TLS channel to the peer, with a first call (WhoAmI)
    /// so that a peer that rejected this node's certificate after the
    /// handshake (TLS 1.3 checks it then) is reported as that, not as a
    /// cut connection in the middle of a pass.
    async fn connect(&self) -> anyhow::Result<Channel> {
        let ch = refuge_client::channel(&self.connection()).await?;
        let mut probe = pb::restore_client::RestoreClient::new(ch.clone());
        let settings = format!("`cert` and `key` of [[replication]] {:?}", self.peer.name);
        let call = refuge_client::who_am_i(&mut probe, &self.peer.address, &settings);
        match tokio::time::timeout(
            Duration::from_secs(self.peer.call_timeout_secs.max(1)),
            call,
        )
        .await
        {
            Ok(r) => r.map(|_| ch),
            Err(_) => Err(anyhow!(
                "the peer at {} did not answer within {} s (call_timeout_secs)",
                self.peer.address,
                self.peer.call_timeout_secs
            )),
        }
    }

    /// One pass over every tenant; returns snapshots imported.
    async fn pass(&self, remote: &Remote) -> anyhow::Result<u64> {
        let p = &self.peer;
        let mut limiter = Limiter::new(p.bandwidth_mib);
        let tenants = match p.direction {
            Direction::Push => self.local.tenants().await?,
            Direction::Pull => remote.tenants().await?,
        };
        let mut total = 0;
        let mut first_error = None;
        for t in tenants.iter().filter(|t| p.copies(t.as_str())) {
            let done = match p.direction {
                Direction::Push => tenant_pass(
                    &self.local,
                    remote,
                    t,
                    p,
                    &self.board,
                    &self.local.audit,
                    &mut limiter,
                )
                .await
                .map(|(n, _)| n),
                Direction::Pull => {
                    let copied = tenant_pass(
                        remote,
                        &self.local,
                        t,
                        p,
                        &self.board,
                        &self.local.audit,
                        &mut limiter,
                    )
                    .await;
                    match copied {
                        Ok((n, listed)) if p.follow_deletions => self
                            .local
                            .follow_deletions(remote, t, &listed)
                            .await
                            .map(|_| n),
                        other => other.map(|(n, _)| n),
                    }
                }
            };
            match done {
                Ok(n) => {
                    total += n;
                    self.board.update(p, t.as_str(), |r| r.last_error.clear());
                }
                Err(e) => {
                    let text = format!("tenant {t}: {e:#}");
                    self.board
                        .update(p, t.as_str(), |r| r.last_error = text.clone());
                    first_error.get_or_insert(anyhow!(text));
                }
            }
        }
        // A pushing node keeps a copy of its audit log at the peer; a
        // pulling node keeps a copy of the peer's, under the peer's name.
        if p.copy_audit {
            let copied = match p.direction {
                Direction::Push => remote.copy_audit(&self.local.store).await,
                Direction::Pull => remote.fetch_audit(&self.local.store, &p.name).await,
            };
            if let Err(e) = copied {
                let text = format!("audit log: {e:#}");
                self.board.update(p, "", |r| r.last_error = text.clone());
                first_error.get_or_insert(anyhow!(text));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Runs passes until `stop`: every `interval_secs`, and (continuous
    /// push) soon after each commit or import here.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let p = self.peer.clone();
        let mut changed = self.local.changes.subscribe();
        let mut remote: Option<Remote> = None;
        let mut failing: Option<String> = None;
        let subject = self.local.subject.clone();
        loop {
            if *stop.borrow() {
                return;
            }
            if remote.is_none() {
                match self.connect().await {
                    Ok(ch) => {
                        remote = Some(Remote {
                            client: ReplicationClient::new(ch)
                                .max_decoding_message_size(refuge_proto::MAX_MESSAGE_BYTES)
                                .max_encoding_message_size(refuge_proto::MAX_MESSAGE_BYTES),
                            timeout: Duration::from_secs(p.call_timeout_secs.max(1)),
                            name: p.name.clone(),
                        })
                    }
                    Err(e) => self.failed(&mut failing, &subject, format!("{e:#}")),
                }
            }
            if let Some(r) = &remote {
                let started = Instant::now();
                match self.pass(r).await {
                    Ok(n) => {
                        self.board.clear_error(&p);
                        if let Some(was) = failing.take() {
                            self.local.audit.record(
                                &subject,
                                "",
                                "replication_resumed",
                                Outcome::Ok,
                                &format!(
                                    "{} {}: passes succeed again (after: {was})",
                                    p.direction.as_str(),
                                    p.name
                                ),
                            );
                        }
                        if n > 0 {
                            self.local.audit.record(
                                &subject,
                                "",
                                "replication_pass",
                                Outcome::Ok,
                                &format!(
                                    "{} {} ({}): {n} snapshots copied in {:.1} s",
                                    p.direction.as_str(),
                                    p.name,
                                    p.address,
                                    started.elapsed().as_secs_f64()
                                ),
                            );
                        }
                    }
                    Err(e) => {
                        // The next pass opens a new connection: a stalled
                        // link is not retried on the socket that stalled
                        // (one handshake per failed pass costs nothing).
                        remote = None;
                        self.failed(&mut failing, &subject, format!("{e:#}"));
                    }
                }
            }
            let status = if self.board.all_ok() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            self.health.set_service_status(REPLICATION, status).await;
            let wait = tokio::time::sleep(Duration::from_secs(p.interval_secs));
            tokio::select! {
                _ = wait => {}
                _ = stop.changed() => return,
                r = changed.changed(), if p.continuous && p.direction == Direction::Push && failing.is_none() => {
                    if r.is_err() {
                        return;
                    }
                    // Let a burst of commits settle into one pass.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    changed.mark_unchanged();
                }
            }
        }
    }

    /// Records a failed pass: on the board, and in the audit log when the
    /// error is new (not once per retry).
    fn failed(&self, failing: &mut Option<String>, subject: &str, text: String) {
        let p = &self.peer;
        self.board.update(p, "", |r| {
            r.last_error = text.clone();
            r.last_pass_unix_micros = now_micros();
        });
        tracing::warn!(peer = %p.name, "replication pass failed: {text}");
        if failing.as_deref() != Some(text.as_str()) {
            self.local.audit.record(
                subject,
                "",
                "replication_failed",
                Outcome::Failed,
                &format!(
                    "{} {} ({}): {text}; retried every {} s",
                    p.direction.as_str(),
                    p.name,
                    p.address,
                    p.interval_secs
                ),
            );
        }
        *failing = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bandwidth_limit_holds_the_sender_to_its_rate() {
        // 8 MiB at 16 MiB/s cannot take less than half a second.
        let started = Instant::now();
        let mut l = Limiter::new(16);
        for _ in 0..8 {
            l.take(1 << 20).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(480),
            "{:?}",
            started.elapsed()
        );
        // No limit: no wait at all, whatever was sent.
        let mut free = Limiter::new(0);
        free.take(1 << 40).await;
        assert_eq!(free.sent, 0);
    }
}
