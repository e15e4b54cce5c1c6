//! The node's RPCs as typed calls: refuge types (or small plain structs)
//! in and out, so that no program outside this crate builds a wire
//! message or reads one. `refuge`, `refuge-agent` and the drill call
//! these; the backup and restore data paths (FindMissing, PutChunks,
//! GetChunks, CommitSnapshot, the parent lookup) keep their own calls in
//! `backup.rs`, `upload.rs` and `remote.rs`, with deadlines and retries
//! of their own.
//!
//! Every failed call becomes an error through [`rpc_error`] and nothing
//! else: the message names what the call was for, then the cause in
//! words a user can act on ([`crate::explain_status`]).

use std::future::Future;

use anyhow::{Context, anyhow};
use refuge_core::audit::AuditRecord;
use refuge_core::retention::Policy;
use refuge_core::{ChunkId, SnapshotId, SnapshotRecord};
use refuge_proto::pb;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::ConnectionConfig;
use crate::connect::{Node, channel, rpc_error};

/// The answer of one unary call, or its failure as [`rpc_error`]`(what)`.
pub(crate) async fn answer<T>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(|s| rpc_error(what, &s))
}

/// An error about a malformed answer of the node.
fn bad_answer(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("node's answer: {e}")
}

fn snapshot_id(b: &[u8]) -> anyhow::Result<SnapshotId> {
    b.try_into()
        .map(SnapshotId)
        .map_err(|_| bad_answer(format!("snapshot id of {} bytes", b.len())))
}

/// Which tenants, hosts and sources; an empty field matches all that the
/// certificate may see.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Tenant (one the certificate acts for; any other matches nothing).
    pub tenant: String,
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
}

/// Why a snapshot is resolved; the node audits it (`drill_started` for a
/// drill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `refuge restore`.
    Restore,
    /// A recovery drill.
    Drill,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Restore => "restore",
            Purpose::Drill => "drill",
        }
    }
}

/// The snapshot to resolve: by `selector` (an id, a unique id prefix or
/// `latest`), or, with an empty selector, the newest at or before
/// `at_micros`; among the snapshots of `selection`.
#[derive(Debug, Clone)]
pub struct SnapshotQuery {
    /// Id, unique id prefix or `latest`; empty to use `at_micros`.
    pub selector: String,
    /// A point in time, microseconds since the epoch (node clock).
    pub at_micros: i64,
    /// Narrowing (needed when several tenants, hosts or sources match).
    pub selection: Selection,
    /// What for.
    pub purpose: Purpose,
}

/// A tenant's retention policy, as the node applies it.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The tenant.
    pub tenant: String,
    /// The node's default applies (the tenant has no policy of its own).
    pub is_default: bool,
    /// The rules.
    pub policy: Policy,
}

impl Retention {
    fn from_pb(p: &pb::RetentionPolicy) -> Self {
        Retention {
            tenant: p.tenant.clone(),
            is_default: p.is_default,
            policy: refuge_proto::policy(p),
        }
    }
}

/// What retention decided about one snapshot.
#[derive(Debug, Clone)]
pub struct PruneDecision {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Its tenant.
    pub tenant: String,
    /// Its host.
    pub host: String,
    /// Its source.
    pub source: String,
    /// Its time (node clock), microseconds since the epoch.
    pub time_micros: i64,
    /// Its sequence number.
    pub seq: u64,
    /// Kept (or removed, or would be with a dry run).
    pub keep: bool,
    /// Pinned.
    pub pinned: bool,
    /// Which rules keep it.
    pub reasons: Vec<String>,
}

impl PruneDecision {
    fn from_pb(d: pb::PruneDecision) -> anyhow::Result<Self> {
        Ok(PruneDecision {
            snapshot: snapshot_id(&d.snapshot_id)?,
            tenant: d.tenant,
            host: d.host,
            source: d.source,
            time_micros: d.time_unix_micros,
            seq: d.seq,
            keep: d.keep,
            pinned: d.pinned,
            reasons: d.reasons,
        })
    }
}

/// What a prune did (or, with a dry run, would do).
#[derive(Debug, Clone)]
pub struct Pruned {
    /// Every snapshot considered.
    pub decisions: Vec<PruneDecision>,
    /// Snapshots removed (0 for a dry run).
    pub removed: u64,
}

/// What a garbage collection did (serialized as `refuge admin gc --json`
/// prints it).
#[derive(Debug, Clone, Serialize)]
pub struct GcOutcome {
    /// Unreferenced chunks deleted.
    pub deleted: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Chunks examined.
    pub examined: u64,
    /// Chunks referenced again while it ran (kept).
    pub referenced_again: u64,
    /// Unreferenced chunks kept for the grace period.
    pub kept_recent: u64,
    /// The grace period, seconds.
    pub grace_secs: u64,
    /// Pack objects deleted (object-store backend).
    pub packs_deleted: u64,
    /// Pack objects rewritten without their unused chunks.
    pub packs_rewritten: u64,
}

/// A stored chunk that failed verification (now quarantined).
#[derive(Debug, Clone)]
pub struct CorruptChunk {
    /// Its tenant.
    pub tenant: String,
    /// The chunk.
    pub chunk: ChunkId,
    /// What was wrong.
    pub reason: String,
    /// The snapshots that use it.
    pub snapshots: Vec<SnapshotId>,
}

/// What a verification run found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Chunks checked.
    pub checked: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks found corrupt in this run.
    pub corrupt: Vec<CorruptChunk>,
    /// Chunks quarantined by earlier runs, not yet healed.
    pub still_quarantined: u64,
}

/// The node itself, as `Supervision.Status` describes it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The node's version.
    pub version: String,
    /// The node's clock, microseconds since the epoch.
    pub now_micros: i64,
    /// Free bytes on the store's disk.
    pub disk_free_bytes: u64,
    /// Size of the store's disk.
    pub disk_total_bytes: u64,
    /// Free bytes below which ingest refuses.
    pub disk_reserve_bytes: u64,
    /// Bytes the store takes.
    pub store_bytes: u64,
    /// Ingest accepts backups.
    pub ingest_serving: bool,
    /// The node certificate's expiry, microseconds since the epoch.
    pub node_cert_not_after_micros: i64,
    /// The CA certificate's expiry, microseconds since the epoch.
    pub ca_cert_not_after_micros: i64,
    /// Failed authentications in the last hour.
    pub auth_failures_last_hour: u64,
    /// Per tenant.
    pub tenants: Vec<TenantStatus>,
    /// Per tenant, host and source.
    pub sources: Vec<SourceStatus>,
    /// The node's site name.
    pub site: String,
    /// Replication to and from its peers, per peer and tenant.
    pub replication: Vec<ReplicationRow>,
}

/// One peer and tenant in [`NodeStatus`] (serialized as `refuge status
/// --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationRow {
    /// The peer's name in the node's configuration.
    pub peer: String,
    /// Its address.
    pub address: String,
    /// `push` or `pull`.
    pub direction: String,
    /// The tenant (empty: a failure before any tenant was reached).
    pub tenant: String,
    /// Now minus the newest snapshot on both nodes, seconds.
    pub lag_secs: f64,
    /// Snapshots not yet copied.
    pub pending_snapshots: u64,
    /// Copied since the node started.
    pub snapshots_sent: u64,
    /// Chunks copied since the node started.
    pub chunks_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// The last pass's error; empty when it succeeded.
    pub last_error: String,
}

/// One tenant in [`NodeStatus`] (serialized as `refuge status --json`
/// prints it).
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatus {
    /// The tenant.
    pub tenant: String,
    /// Its snapshots.
    pub snapshots: u64,
    /// Their logical bytes.
    pub logical_bytes: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
    /// Logical over stored bytes.
    pub dedup_ratio: f64,
}

/// One source in [`NodeStatus`].
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Tenant.
    pub tenant: String,
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// Its snapshots.
    pub snapshots: u64,
    /// The newest one (`None` without snapshots).
    pub newest_snapshot: Option<SnapshotId>,
    /// Its time, microseconds since the epoch.
    pub newest_snapshot_micros: i64,
    /// Recovery point now: the newest snapshot's age, microseconds.
    pub rpo_micros: i64,
    /// The newest snapshot's logical bytes.
    pub newest_logical_bytes: u64,
    /// The last backup committed (not reported as failed).
    pub last_backup_ok: bool,
    /// The last backup's time, microseconds since the epoch.
    pub last_backup_micros: i64,
    /// The last failed backup's error.
    pub last_backup_error: String,
    /// The last drill, if any was recorded.
    pub last_drill: Option<LastDrill>,
    /// The tenant's RPO target (node.toml `[slo]`), seconds; 0: none.
    pub rpo_target_secs: u64,
    /// The tenant's drill-age target, seconds; 0: none.
    pub drill_age_target_secs: u64,
    /// The targets breached now.
    pub breaches: Vec<SloBreach>,
}

/// A recovery target a source breaches (in [`SourceStatus`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SloBreach {
    /// `rpo`, `drill_age` or `drill_failed`.
    pub kind: String,
    /// The target and how far the source is from it.
    pub detail: String,
}

/// The last drill of a source in [`SourceStatus`].
#[derive(Debug, Clone)]
pub struct LastDrill {
    /// It passed.
    pub passed: bool,
    /// When, microseconds since the epoch.
    pub time_micros: i64,
    /// Its recovery time, seconds.
    pub rto_secs: f64,
    /// Its first failure.
    pub failure: String,
}

/// A drill result recorded on the node (`refuge drills`).
#[derive(Debug, Clone)]
pub struct RecordedDrill {
    /// Position in the node's drill history.
    pub seq: u64,
    /// When the node recorded it, microseconds since the epoch.
    pub recorded_micros: i64,
    /// Who recorded it (`role:name`).
    pub recorded_by: String,
    /// The site of the node that recorded it: which copy the drill proved.
    pub site: String,
    /// The drill run it belongs to.
    pub drill_id: String,
    /// Tenant.
    pub tenant: String,
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// The snapshot drilled.
    pub snapshot: SnapshotId,
    /// Its time, microseconds since the epoch.
    pub snapshot_time_micros: i64,
    /// It passed.
    pub passed: bool,
    /// Recovery time: seconds the restore took.
    pub rto_secs: f64,
    /// Seconds the verification pass took.
    pub verify_secs: f64,
    /// The snapshot's age when the drill started, microseconds.
    pub age_micros: i64,
    /// How far it was behind its source's newest snapshot, microseconds.
    pub behind_newest_micros: i64,
    /// Files checked.
    pub files_checked: u64,
    /// Bytes read back and compared.
    pub bytes_verified: u64,
    /// Failures found.
    pub failures: u64,
    /// The first of them.
    pub first_failure: String,
    /// The check command.
    pub check_command: String,
    /// Its exit code, if it ran.
    pub check_exit_code: Option<i32>,
    /// A database source's restored server, if it was started.
    pub database: Option<RecordedDatabase>,
}

/// The started database of a recorded drill.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedDatabase {
    /// It started, answered and passed its checks.
    pub passed: bool,
    /// Seconds from its start to its first accepted connection.
    pub recovery_secs: f64,
    /// Seconds from its start to its first query's answer.
    pub first_query_secs: f64,
}

impl RecordedDrill {
    fn from_pb(d: pb::DrillRecord) -> anyhow::Result<Self> {
        let r = d
            .result
            .ok_or_else(|| bad_answer("a drill record without its result"))?;
        Ok(RecordedDrill {
            seq: d.seq,
            recorded_micros: d.recorded_unix_micros,
            recorded_by: d.recorded_by,
            site: d.site,
            drill_id: r.drill_id,
            tenant: r.tenant,
            host: r.host,
            source: r.source,
            snapshot: snapshot_id(&r.snapshot_id)?,
            snapshot_time_micros: r.snapshot_time_unix_micros,
            passed: r.passed,
            rto_secs: r.restore_secs,
            verify_secs: r.verify_secs,
            age_micros: r.age_micros,
            behind_newest_micros: r.behind_newest_micros,
            files_checked: r.files_checked,
            bytes_verified: r.bytes_verified,
            failures: r.failures,
            first_failure: r.first_failure,
            check_command: r.check_command,
            check_exit_code: r.check_ran.then_some(r.check_exit_code),
            database: r.database_checked.then_some(RecordedDatabase {
                passed: r.database_passed,
                recovery_secs: r.database_recovery_secs,
                first_query_secs: r.database_first_query_secs,
            }),
        })
    }
}

/// The state of a drill the node runs itself.
#[derive(Debug, Clone)]
pub struct NodeDrillReport {
    /// `running`, `passed`, `failed` or `error`.
    pub state: String,
    /// Why it could not run (state `error`).
    pub error: String,
    /// The report as JSON (empty while running).
    pub report_json: String,
    /// The report as Markdown (empty while running).
    pub report_markdown: String,
}

impl Node {
    /// The snapshots of `sel`, as the node lists them.
    pub async fn list_snapshots(&self, sel: &Selection) -> anyhow::Result<Vec<SnapshotRecord>> {
        let req = pb::ListSnapshotsRequest {
            tenant: sel.tenant.clone(),
            host: sel.host.clone(),
            source: sel.source.clone(),
        };
        answer(
            "listing snapshots",
            self.restore.clone().list_snapshots(req),
        )
        .await?
        .snapshots
        .into_iter()
        .map(|s| refuge_proto::snapshot(s).map_err(bad_answer))
        .collect()
    }

    /// The one snapshot `q` names.
    pub async fn resolve_snapshot(&self, q: &SnapshotQuery) -> anyhow::Result<SnapshotRecord> {
        let req = pb::ResolveSnapshotRequest {
            selector: q.selector.clone(),
            at_unix_micros: q.at_micros,
            host: q.selection.host.clone(),
            source: q.selection.source.clone(),
            tenant: q.selection.tenant.clone(),
            purpose: q.purpose.as_str().into(),
        };
        let what = format!("resolving the snapshot to {}", q.purpose.as_str());
        let s = answer(&what, self.restore.clone().resolve_snapshot(req)).await?;
        refuge_proto::snapshot(s).map_err(bad_answer)
    }

    /// Tells the node that the backup of `source` failed with `error`, so
    /// that its status shows it (agents only).
    pub async fn report_backup_failure(&self, source: &str, error: &str) -> anyhow::Result<()> {
        let req = pb::ReportBackupFailureRequest {
            source: source.into(),
            error: error.into(),
        };
        answer(
            "reporting the failed backup",
            self.ingest.clone().report_backup_failure(req),
        )
        .await?;
        Ok(())
    }

    /// The retention policy in effect for `tenant` (admin).
    pub async fn retention(&self, tenant: &str) -> anyhow::Result<Retention> {
        let req = pb::GetRetentionRequest {
            tenant: tenant.into(),
        };
        let p = answer(
            "reading the retention policy",
            self.admin.clone().get_retention(req),
        )
        .await?;
        Ok(Retention::from_pb(&p))
    }

    /// Sets `tenant`'s policy, or with `None` removes it so the node's
    /// default applies (admin); returns the policy now in effect.
    pub async fn set_retention(
        &self,
        tenant: &str,
        policy: Option<Policy>,
    ) -> anyhow::Result<Retention> {
        let req = pb::SetRetentionRequest {
            tenant: tenant.into(),
            reset: policy.is_none(),
            policy: policy.as_ref().map(refuge_proto::policy_to),
        };
        let p = answer(
            "setting the retention policy",
            self.admin.clone().set_retention(req),
        )
        .await?;
        Ok(Retention::from_pb(&p))
    }

    /// Removes the snapshots that retention no longer keeps, of `tenant`
    /// or of every tenant (admin); with `dry_run` only says which.
    pub async fn prune(&self, tenant: Option<&str>, dry_run: bool) -> anyhow::Result<Pruned> {
        let req = pb::PruneRequest {
            tenant: tenant.unwrap_or_default().into(),
            dry_run,
        };
        let r = answer("pruning", self.admin.clone().prune(req)).await?;
        Ok(Pruned {
            decisions: r
                .decisions
                .into_iter()
                .map(PruneDecision::from_pb)
                .collect::<anyhow::Result<_>>()?,
            removed: r.removed,
        })
    }

    /// Pins (or unpins) a snapshot of `tenant` named by id or unique id
    /// prefix (admin).
    pub async fn set_pinned(
        &self,
        tenant: &str,
        snapshot: &str,
        pinned: bool,
    ) -> anyhow::Result<PruneDecision> {
        let req = pb::SetPinnedRequest {
            tenant: tenant.into(),
            snapshot: snapshot.into(),
            pinned,
        };
        let d = answer("pinning the snapshot", self.admin.clone().set_pinned(req)).await?;
        PruneDecision::from_pb(d)
    }

    /// Deletes the chunks no snapshot references, after the node's grace
    /// period (admin).
    pub async fn collect_garbage(&self) -> anyhow::Result<GcOutcome> {
        let o = answer(
            "collecting garbage",
            self.admin
                .clone()
                .collect_garbage(pb::CollectGarbageRequest {}),
        )
        .await?;
        Ok(GcOutcome {
            deleted: o.deleted,
            bytes: o.bytes,
            examined: o.examined,
            referenced_again: o.referenced_again,
            kept_recent: o.kept_recent,
            grace_secs: o.grace_secs,
            packs_deleted: o.packs_deleted,
            packs_rewritten: o.packs_rewritten,
        })
    }

    /// Re-reads `sample_percent` of the stored chunks of `tenant` (or of
    /// every tenant) against their ids; corrupt ones are quarantined
    /// (admin).
    pub async fn verify(
        &self,
        tenant: Option<&str>,
        sample_percent: u32,
    ) -> anyhow::Result<Verified> {
        let req = pb::VerifyRequest {
            tenant: tenant.unwrap_or_default().into(),
            sample_percent,
        };
        let r = answer("verifying stored chunks", self.admin.clone().verify(req)).await?;
        let corrupt = r
            .corrupt
            .into_iter()
            .map(|c| {
                Ok(CorruptChunk {
                    tenant: c.tenant,
                    chunk: refuge_proto::chunk_id(&c.chunk_id).map_err(bad_answer)?,
                    reason: c.reason,
                    snapshots: c
                        .snapshots
                        .iter()
                        .map(|s| snapshot_id(s))
                        .collect::<anyhow::Result<_>>()?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Verified {
            checked: r.checked,
            bytes: r.bytes,
            corrupt,
            still_quarantined: r.still_quarantined,
        })
    }

    /// Every record of the audit log from `from_seq` on, decoded
    /// (auditor). The chain is not checked here: see
    /// `refuge_core::audit::verify_chain`.
    pub async fn read_audit(&self, from_seq: u64) -> anyhow::Result<Vec<AuditRecord>> {
        self.read_audit_of(from_seq, None).await
    }

    /// [`Self::read_audit`] of the node's own log (`None`) or of the copy
    /// it keeps of peer `origin`'s log.
    pub async fn read_audit_of(
        &self,
        from_seq: u64,
        origin: Option<&str>,
    ) -> anyhow::Result<Vec<AuditRecord>> {
        const WHAT: &str = "reading the audit log";
        let req = pb::ReadAuditRequest {
            from_seq,
            limit: 0,
            origin: origin.unwrap_or_default().to_string(),
        };
        let mut stream = answer(WHAT, self.audit.clone().read_audit(req)).await?;
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await.map_err(|s| rpc_error(WHAT, &s))? {
            for bytes in batch.records {
                let r = AuditRecord::decode(&bytes).with_context(|| {
                    format!(
                        "audit record after {} cannot be read",
                        out.last()
                            .map_or(from_seq.saturating_sub(1), |r: &AuditRecord| r.seq)
                    )
                })?;
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The node, its tenants and their sources (of `tenant` only, or of
    /// all the caller may see).
    pub async fn status(&self, tenant: Option<&str>) -> anyhow::Result<NodeStatus> {
        let req = pb::StatusRequest {
            tenant: tenant.unwrap_or_default().into(),
        };
        let r = answer(
            "asking for the node's status",
            self.supervision.clone().status(req),
        )
        .await?;
        let sources = r
            .sources
            .into_iter()
            .map(|s| {
                Ok(SourceStatus {
                    newest_snapshot: match s.newest_snapshot_id.as_slice() {
                        [] => None,
                        id => Some(snapshot_id(id)?),
                    },
                    tenant: s.tenant,
                    host: s.host,
                    source: s.source,
                    snapshots: s.snapshots,
                    newest_snapshot_micros: s.newest_snapshot_unix_micros,
                    rpo_micros: s.rpo_micros,
                    newest_logical_bytes: s.newest_logical_bytes,
                    last_backup_ok: s.last_backup_ok,
                    last_backup_micros: s.last_backup_unix_micros,
                    last_backup_error: s.last_backup_error,
                    last_drill: s.drilled.then_some(LastDrill {
                        passed: s.last_drill_passed,
                        time_micros: s.last_drill_unix_micros,
                        rto_secs: s.last_drill_rto_secs,
                        failure: s.last_drill_failure,
                    }),
                    rpo_target_secs: s.rpo_target_secs,
                    drill_age_target_secs: s.drill_age_target_secs,
                    breaches: s
                        .breaches
                        .into_iter()
                        .map(|b| SloBreach {
                            kind: b.kind,
                            detail: b.detail,
                        })
                        .collect(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(NodeStatus {
            version: r.node_version,
            now_micros: r.now_unix_micros,
            disk_free_bytes: r.disk_free_bytes,
            disk_total_bytes: r.disk_total_bytes,
            disk_reserve_bytes: r.disk_reserve_bytes,
            store_bytes: r.store_bytes,
            ingest_serving: r.ingest_serving,
            node_cert_not_after_micros: r.node_cert_not_after_unix_micros,
            ca_cert_not_after_micros: r.ca_cert_not_after_unix_micros,
            auth_failures_last_hour: r.auth_failures_last_hour,
            tenants: r
                .tenants
                .into_iter()
                .map(|t| TenantStatus {
                    tenant: t.tenant,
                    snapshots: t.snapshots,
                    logical_bytes: t.logical_bytes,
                    chunks: t.chunks,
                    stored_bytes: t.stored_bytes,
                    dedup_ratio: t.dedup_ratio,
                })
                .collect(),
            sources,
            site: r.site,
            replication: r
                .replication
                .into_iter()
                .map(|x| ReplicationRow {
                    peer: x.peer,
                    address: x.address,
                    direction: x.direction,
                    tenant: x.tenant,
                    lag_secs: x.lag_secs,
                    pending_snapshots: x.pending_snapshots,
                    snapshots_sent: x.snapshots_sent,
                    chunks_sent: x.chunks_sent,
                    bytes_sent: x.bytes_sent,
                    last_error: x.last_error,
                })
                .collect(),
        })
    }

    /// The drills recorded on the node for `sel`, newest first, at most
    /// `limit`.
    pub async fn list_drills(
        &self,
        sel: &Selection,
        limit: u32,
    ) -> anyhow::Result<Vec<RecordedDrill>> {
        let req = pb::ListDrillsRequest {
            tenant: sel.tenant.clone(),
            host: sel.host.clone(),
            source: sel.source.clone(),
            limit,
        };
        answer("listing drills", self.supervision.clone().list_drills(req))
            .await?
            .drills
            .into_iter()
            .map(RecordedDrill::from_pb)
            .collect()
    }

    /// Asks the node to run a drill of `sel` itself, in the background
    /// (admin or auditor); returns its id.
    pub async fn start_node_drill(
        &self,
        sel: &Selection,
        random_point: bool,
    ) -> anyhow::Result<String> {
        let req = pb::StartDrillRequest {
            tenant: sel.tenant.clone(),
            host: sel.host.clone(),
            source: sel.source.clone(),
            random_point,
        };
        let r = answer(
            "starting a node drill",
            self.supervision.clone().start_drill(req),
        )
        .await?;
        Ok(r.drill_id)
    }

    /// The state and report of the node drill `id`.
    pub async fn node_drill_report(&self, id: &str) -> anyhow::Result<NodeDrillReport> {
        let req = pb::GetDrillReportRequest {
            drill_id: id.into(),
        };
        let r = answer(
            "reading the node drill's report",
            self.supervision.clone().get_drill_report(req),
        )
        .await?;
        Ok(NodeDrillReport {
            state: r.state,
            error: r.error,
            report_json: r.report_json,
            report_markdown: r.report_markdown,
        })
    }
}

/// The node's `grpc.health.v1` service.
pub struct Health {
    client: HealthClient<tonic::transport::Channel>,
}

/// The node's loopback plaintext health port, not yet connected.
pub struct HealthPort {
    address: String,
    endpoint: tonic::transport::Endpoint,
}

impl Health {
    /// Over mutual TLS, with any client certificate of the node's CA (no
    /// `WhoAmI`: this works while the node's store is still opening).
    pub async fn tls(cfg: &ConnectionConfig) -> anyhow::Result<Self> {
        Ok(Health {
            client: HealthClient::new(channel(cfg).await?),
        })
    }

    /// The plaintext health port at `address` (HOST:PORT); fails only
    /// when that is not an address.
    pub fn plaintext(address: &str) -> anyhow::Result<HealthPort> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| anyhow!("{address:?} is not host:port: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5));
        Ok(HealthPort {
            address: address.into(),
            endpoint,
        })
    }

    /// How `service` is (`""` is the whole node): `SERVING`,
    /// `NOT_SERVING`, `SERVICE_UNKNOWN`, ... as `grpc.health.v1` names
    /// it, `UNKNOWN` for a value it does not define.
    pub async fn check(&mut self, service: &str) -> anyhow::Result<&'static str> {
        let req = HealthCheckRequest {
            service: service.into(),
        };
        match self.client.check(req).await {
            Ok(r) => Ok(match ServingStatus::try_from(r.into_inner().status) {
                Ok(s) => s.as_str_name(),
                Err(_) => "UNKNOWN",
            }),
            Err(st) if st.code() == tonic::Code::NotFound => Ok("SERVICE_UNKNOWN"),
            Err(st) => Err(rpc_error("asking the node's health service", &st)),
        }
    }
}

impl HealthPort {
    /// Connects to it.
    pub async fn connect(self) -> anyhow::Result<Health> {
        let channel = self.endpoint.connect().await.map_err(|e| {
            anyhow!(
                "cannot reach the plaintext health port {}: {e}",
                self.address
            )
        })?;
        Ok(Health {
            client: HealthClient::new(channel),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wire_answers_become_refuge_types_or_errors() {
        assert_eq!(snapshot_id(&[7; 32]).unwrap(), SnapshotId([7; 32]));
        let e = snapshot_id(&[7; 31]).unwrap_err().to_string();
        assert!(e.contains("node's answer") && e.contains("31 bytes"), "{e}");
        let e = RecordedDrill::from_pb(pb::DrillRecord::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without its result"), "{e}");
        let d = RecordedDrill::from_pb(pb::DrillRecord {
            seq: 4,
            result: Some(pb::DrillResult {
                snapshot_id: vec![1; 32],
                check_exit_code: 3,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (d.seq, d.snapshot, d.check_exit_code),
            (4, SnapshotId([1; 32]), None)
        );
        let p = PruneDecision::from_pb(pb::PruneDecision {
            snapshot_id: vec![2; 32],
            keep: true,
            reasons: vec!["keep-last".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(p.keep && p.reasons == ["keep-last"] && p.snapshot.short() == "02020202");
    }
}
