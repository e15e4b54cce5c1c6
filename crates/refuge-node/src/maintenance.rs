//! Retention, pruning, pins and garbage collection: the `Admin` service
//! and the node's scheduled run of the same work.
//!
//! One maintenance job (prune or garbage collection) runs at a time
//! (`Maintenance::running`). Neither stops backups or restores: a prune
//! removes one snapshot per synced write, and garbage collection holds the
//! store's commit lock only while it deletes one batch
//! (docs/security.md, "What may run beside what").

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use refuge_core::retention::{Candidate, Decision, Policy, decide};
use refuge_core::{ChunkId, ManifestReader, ManifestRecord, SnapshotRecord, TenantId};
use refuge_proto::pb::{self, admin_server::Admin};
use refuge_store::{GcOutcome, RefCounts, Store};
use refuge_tls::Role;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::access::Access;
use crate::audit::Outcome;
use crate::service::{StoredStream, now_micros, resolve, store_status};

fn policy_key(t: &TenantId) -> String {
    format!("retention/{t}")
}

fn pin_prefix(t: &TenantId) -> String {
    format!("pin/{t}/")
}

/// Shared by the `Admin` service and the schedule.
pub(crate) struct Maintenance {
    store: Arc<dyn Store>,
    access: Arc<Access>,
    default_policy: Policy,
    grace: Duration,
    /// Share of chunks a scheduled verification checks.
    verify_sample: u32,
    running: tokio::sync::Mutex<()>,
}

/// What a prune decided for one snapshot.
struct Planned {
    rec: SnapshotRecord,
    decision: Decision,
    pinned: bool,
}

impl Maintenance {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        access: Arc<Access>,
        default_policy: Policy,
        grace: Duration,
        verify_sample: u32,
    ) -> Arc<Self> {
        Arc::new(Maintenance {
            store,
            access,
            default_policy,
            grace,
            verify_sample,
            running: tokio::sync::Mutex::new(()),
        })
    }

    /// The tenant's policy, and whether it is the node's default.
    fn policy(&self, t: &TenantId) -> Result<(Policy, bool), Status> {
        match self
            .store
            .get_setting(&policy_key(t))
            .map_err(store_status)?
        {
            Some(b) => Policy::decode(&b)
                .map(|p| (p, false))
                .map_err(|e| Status::data_loss(format!("retention policy of {t}: {e}"))),
            None => Ok((self.default_policy, true)),
        }
    }

    /// Decisions for every snapshot of `t`, grouped by host and source.
    fn plan(&self, t: &TenantId, now: i64) -> Result<Vec<Planned>, Status> {
        let (policy, _) = self.policy(t)?;
        let pins: HashSet<String> = self
            .store
            .list_settings(&pin_prefix(t))
            .map_err(store_status)?
            .into_iter()
            .map(|(k, _)| k[pin_prefix(t).len()..].to_string())
            .collect();
        let mut groups: BTreeMap<(String, String), Vec<SnapshotRecord>> = BTreeMap::new();
        for rec in self.store.list_snapshots(t).map_err(store_status)? {
            groups
                .entry((rec.host.to_string(), rec.source.to_string()))
                .or_default()
                .push(rec);
        }
        let mut out = Vec::new();
        for (_, recs) in groups {
            let cands: Vec<Candidate> = recs
                .iter()
                .map(|r| Candidate {
                    seq: r.seq,
                    time_micros: r.time_micros,
                    pinned: pins.contains(&r.id.to_hex()),
                })
                .collect();
            let mut by_seq: BTreeMap<u64, SnapshotRecord> =
                recs.into_iter().map(|r| (r.seq, r)).collect();
            for d in decide(&policy, &cands, now) {
                let rec = by_seq
                    .remove(&d.seq)
                    .ok_or_else(|| Status::internal("retention decided on an unknown snapshot"))?;
                let pinned = pins.contains(&rec.id.to_hex());
                out.push(Planned {
                    rec,
                    decision: d,
                    pinned,
                });
            }
        }
        Ok(out)
    }

    /// Every stored chunk `rec` references, as its commit counted them.
    fn snapshot_refs(&self, rec: &SnapshotRecord) -> Result<RefCounts, Status> {
        let store = &*self.store;
        let mut refs: RefCounts = rec.manifest.iter().map(|r| r.id).collect();
        let stream = StoredStream::new(store, &rec.tenant, &rec.manifest);
        let bad = |e: String| {
            Status::data_loss(format!(
                "snapshot {} cannot be removed: its manifest cannot be read ({e}); nothing was changed for it",
                rec.id.short()
            ))
        };
        let mut reader = ManifestReader::new(stream).map_err(|e| bad(e.to_string()))?;
        loop {
            match reader.next_record() {
                Ok(None) => break,
                Ok(Some(ManifestRecord::Entry(_) | ManifestRecord::Sealed { .. })) => {}
                Ok(Some(ManifestRecord::Chunks(rs))) => {
                    for r in rs.iter().filter(|r| !r.is_hole()) {
                        refs.add(r.id);
                    }
                }
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        Ok(refs)
    }

    /// Prunes `tenants` (blocking): returns every decision and how many
    /// snapshots were removed.
    fn prune(
        &self,
        tenants: &[TenantId],
        dry_run: bool,
        subject: &str,
    ) -> Result<(Vec<Planned>, u64), Status> {
        let now = now_micros();
        let mut all = Vec::new();
        let mut removed = 0u64;
        for t in tenants {
            let plan = self.plan(t, now)?;
            let mut gone = Vec::new();
            if !dry_run {
                for p in plan.iter().filter(|p| !p.decision.keep) {
                    let refs = self.snapshot_refs(&p.rec)?;
                    if self
                        .store
                        .delete_snapshot(t, &p.rec.id, &refs, now_micros())
                        .map_err(store_status)?
                    {
                        removed += 1;
                        gone.push(p.rec.id.short());
                    }
                }
                if !gone.is_empty() {
                    self.access.audit.record(
                        subject,
                        t.as_str(),
                        "snapshots_pruned",
                        Outcome::Ok,
                        &format!(
                            "{} snapshots removed by policy ({}): {}",
                            gone.len(),
                            self.policy(t)?.0.describe(),
                            gone.join(" ")
                        ),
                    );
                }
            }
            all.extend(plan);
        }
        Ok((all, removed))
    }

    /// Collects garbage (blocking).
    fn collect(&self, subject: &str) -> Result<GcOutcome, Status> {
        let cutoff = now_micros().saturating_sub(self.grace.as_micros() as i64);
        let out = self
            .store
            .collect_garbage(cutoff, &mut |_| {})
            .map_err(store_status)?;
        self.access.audit.record(
            subject,
            "",
            "garbage_collected",
            Outcome::Ok,
            &format!(
                "{} chunks ({} bytes) deleted; {} examined, {} referenced again, {} kept within the {}s grace period",
                out.deleted,
                out.bytes,
                out.examined,
                out.referenced_again,
                out.kept_recent,
                self.grace.as_secs()
            ),
        );
        Ok(out)
    }

    /// Verifies `tenants`' chunks (blocking): each one read and checked
    /// against its id; a corrupt one is quarantined and reported with the
    /// snapshots that reference it. `sample_percent` (1..=100) checks a
    /// random share.
    fn verify(
        &self,
        tenants: &[TenantId],
        sample_percent: u32,
        subject: &str,
    ) -> Result<pb::VerifyResponse, Status> {
        let sample = u64::from(sample_percent.clamp(1, 100));
        // A fresh random salt per run, so that sampled runs cover
        // different chunks.
        let salt = blake3::hash(&now_micros().to_le_bytes());
        let chosen = |id: &ChunkId| {
            if sample == 100 {
                return true;
            }
            let mut h = blake3::Hasher::new_keyed(salt.as_bytes());
            h.update(&id.0);
            let v = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]));
            v % 100 < sample
        };
        let mut resp = pb::VerifyResponse::default();
        for t in tenants {
            let mut bad: Vec<(ChunkId, String)> = Vec::new();
            let mut after: Option<ChunkId> = None;
            loop {
                let ids = self
                    .store
                    .list_chunk_ids(t, after.as_ref(), refuge_store::GC_BATCH)
                    .map_err(store_status)?;
                let Some(last) = ids.last() else { break };
                after = Some(*last);
                for id in ids.iter().filter(|id| chosen(id)) {
                    resp.checked += 1;
                    let problem = match self.store.get_chunk(t, id) {
                        Ok(None) => continue,
                        Ok(Some(c)) => {
                            resp.bytes += c.data.len() as u64;
                            self.check_chunk(t, id, &c)?
                        }
                        Err(refuge_store::StoreError::Corrupt(m)) => Some(m),
                        Err(e) => return Err(store_status(e)),
                    };
                    if let Some(reason) = problem {
                        self.store
                            .quarantine_chunk(t, id, &reason, now_micros())
                            .map_err(store_status)?;
                        bad.push((*id, reason));
                    }
                }
            }
            if !bad.is_empty() {
                let users = self.snapshots_using(t, &bad)?;
                for ((id, reason), snaps) in bad.into_iter().zip(users) {
                    self.access.audit.record(
                        subject,
                        t.as_str(),
                        "chunk_quarantined",
                        Outcome::Failed,
                        &format!(
                            "chunk {id}: {reason}; used by snapshots {}",
                            snaps
                                .iter()
                                .map(|s| s.short())
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                    );
                    resp.corrupt.push(pb::CorruptChunk {
                        tenant: t.to_string(),
                        chunk_id: id.0.to_vec(),
                        reason,
                        snapshots: snaps.iter().map(|s| s.0.to_vec()).collect(),
                    });
                }
            }
            resp.still_quarantined +=
                self.store.list_quarantine(t).map_err(store_status)?.len() as u64;
        }
        resp.still_quarantined -= resp.corrupt.len() as u64;
        self.access.audit.record(
            subject,
            "",
            "verification",
            if resp.corrupt.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            &format!(
                "{} chunks ({} bytes, {sample}% sample) checked; {} corrupt and quarantined; {} still quarantined from earlier runs",
                resp.checked,
                resp.bytes,
                resp.corrupt.len(),
                resp.still_quarantined
            ),
        );
        Ok(resp)
    }

    /// What is wrong with a stored chunk, if anything: its bytes must
    /// match the checksum recorded when they were stored, and a plain
    /// chunk must also decode to content with its id. (A sealed chunk's
    /// content only its tenant's key can check.)
    fn check_chunk(
        &self,
        t: &TenantId,
        id: &ChunkId,
        c: &refuge_core::StoredChunk,
    ) -> Result<Option<String>, Status> {
        let max = refuge_core::format::MAX_CHUNK_LEN;
        if let Some(sum) = self.store.chunk_checksum(t, id).map_err(store_status)?
            && *blake3::hash(&c.data).as_bytes() != sum
        {
            return Ok(Some(
                "the stored bytes do not match the checksum recorded when they were stored".into(),
            ));
        }
        Ok(refuge_core::verify_stored(id, c, max)
            .err()
            .map(|e| e.to_string()))
    }

    /// For each of `bad`, the snapshots of `t` that reference it (a
    /// snapshot whose manifest cannot be read counts as using them all).
    fn snapshots_using(
        &self,
        t: &TenantId,
        bad: &[(ChunkId, String)],
    ) -> Result<Vec<Vec<refuge_core::SnapshotId>>, Status> {
        let mut out = vec![Vec::new(); bad.len()];
        for rec in self.store.list_snapshots(t).map_err(store_status)? {
            let refs: RefCounts = match self.snapshot_refs(&rec) {
                Ok(r) => r,
                Err(_) => bad.iter().map(|(id, _)| *id).collect(),
            };
            for (i, (id, _)) in bad.iter().enumerate() {
                if refs.contains(id) {
                    out[i].push(rec.id);
                }
            }
        }
        Ok(out)
    }

    /// Runs `job` on the blocking pool every `interval` (the first run
    /// one interval after the start), one maintenance job at a time, until
    /// `stop` changes; a failure is audited as `event`.
    pub(crate) async fn every(
        self: Arc<Self>,
        interval: Duration,
        event: &'static str,
        job: fn(&Maintenance) -> Result<(), Status>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let _one = self.running.lock().await;
            let m = self.clone();
            match tokio::task::spawn_blocking(move || job(&m)).await {
                Ok(Ok(())) => {}
                Ok(Err(s)) => {
                    self.access
                        .audit
                        .record(SCHEDULE, "", event, Outcome::Failed, s.message())
                }
                Err(e) => tracing::error!(error = %e, "scheduled {event} panicked"),
            }
        }
    }

    /// The scheduled retention run: prune every tenant, then collect
    /// garbage.
    pub(crate) fn scheduled_retention(&self) -> Result<(), Status> {
        let tenants = self.store.list_tenants().map_err(store_status)?;
        let (_, removed) = self.prune(&tenants, false, SCHEDULE)?;
        let gc = self.collect(SCHEDULE)?;
        info!(
            removed,
            deleted = gc.deleted,
            bytes = gc.bytes,
            "scheduled retention run done"
        );
        Ok(())
    }

    /// The scheduled verification of every tenant.
    pub(crate) fn scheduled_verify(&self) -> Result<(), Status> {
        let tenants = self.store.list_tenants().map_err(store_status)?;
        self.verify(&tenants, self.verify_sample, SCHEDULE)
            .map(|_| ())
    }
}

/// The subject of scheduled jobs in the audit log.
const SCHEDULE: &str = "node (schedule)";

fn policy_to(p: &Policy, tenant: &TenantId, is_default: bool) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        tenant: tenant.to_string(),
        is_default,
        ..refuge_proto::policy_to(p)
    }
}

fn decision_to(p: &Planned) -> pb::PruneDecision {
    pb::PruneDecision {
        snapshot_id: p.rec.id.0.to_vec(),
        tenant: p.rec.tenant.to_string(),
        host: p.rec.host.to_string(),
        source: p.rec.source.to_string(),
        time_unix_micros: p.rec.time_micros,
        seq: p.rec.seq,
        keep: p.decision.keep,
        reasons: p.decision.reasons.iter().map(|r| r.to_string()).collect(),
        pinned: p.pinned,
    }
}

fn tenant(s: &str) -> Result<TenantId, Status> {
    TenantId::new(s).map_err(|e| Status::invalid_argument(format!("tenant: {e}")))
}

/// The admin service.
pub struct AdminService {
    m: Arc<Maintenance>,
}

impl AdminService {
    pub(crate) fn new(m: Arc<Maintenance>) -> Self {
        AdminService { m }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_retention(
        &self,
        req: Request<pb::GetRetentionRequest>,
    ) -> Result<Response<pb::RetentionPolicy>, Status> {
        self.m.access.admit(&req, "GetRetention", &[Role::Admin])?;
        let t = tenant(&req.into_inner().tenant)?;
        let m = self.m.clone();
        let p = blocking(move || m.policy(&t).map(|(p, d)| policy_to(&p, &t, d))).await?;
        Ok(Response::new(p))
    }

    async fn set_retention(
        &self,
        req: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::RetentionPolicy>, Status> {
        let who = self.m.access.admit(&req, "SetRetention", &[Role::Admin])?;
        let r = req.into_inner();
        let t = tenant(&r.tenant)?;
        let new = if r.reset {
            None
        } else {
            let p = r.policy.ok_or_else(|| {
                Status::invalid_argument("give a policy, or reset to the node's default")
            })?;
            Some(refuge_proto::policy(&p))
        };
        let m = self.m.clone();
        let t2 = t.clone();
        let (old, (now, is_default)) = blocking(move || {
            let old = m.policy(&t2)?.0;
            m.store
                .put_setting(&policy_key(&t2), new.map(|p| p.encode()).as_deref())
                .map_err(store_status)?;
            Ok((old, m.policy(&t2)?))
        })
        .await?;
        self.m.access.audit.record(
            &who.subject(),
            t.as_str(),
            "retention_changed",
            Outcome::Ok,
            &format!(
                "{} -> {}{}",
                old.describe(),
                now.describe(),
                if is_default { " (node default)" } else { "" }
            ),
        );
        Ok(Response::new(policy_to(&now, &t, is_default)))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let who = self.m.access.admit(&req, "Prune", &[Role::Admin])?;
        let r = req.into_inner();
        let dry_run = r.dry_run;
        let _one = self.m.running.lock().await;
        let m = self.m.clone();
        let subject = who.subject();
        let (plan, removed) = blocking(move || {
            let tenants = if r.tenant.is_empty() {
                m.store.list_tenants().map_err(store_status)?
            } else {
                vec![tenant(&r.tenant)?]
            };
            m.prune(&tenants, r.dry_run, &subject)
        })
        .await?;
        Ok(Response::new(pb::PruneResponse {
            decisions: plan.iter().map(decision_to).collect(),
            removed,
            dry_run,
        }))
    }

    async fn set_pinned(
        &self,
        req: Request<pb::SetPinnedRequest>,
    ) -> Result<Response<pb::PruneDecision>, Status> {
        let who = self.m.access.admit(&req, "SetPinned", &[Role::Admin])?;
        let r = req.into_inner();
        let t = tenant(&r.tenant)?;
        let m = self.m.clone();
        let t2 = t.clone();
        let selector = r.snapshot.clone();
        let rec = blocking(move || {
            let snaps = m.store.list_snapshots(&t2).map_err(store_status)?;
            let rec = resolve(
                snaps,
                &pb::ResolveSnapshotRequest {
                    selector,
                    ..Default::default()
                },
            )?;
            let key = format!("{}{}", pin_prefix(&t2), rec.id.to_hex());
            m.store
                .put_setting(&key, r.pinned.then_some(&[][..]))
                .map_err(store_status)?;
            Ok(rec)
        })
        .await?;
        self.m.access.audit.record(
            &who.subject(),
            t.as_str(),
            if r.pinned {
                "snapshot_pinned"
            } else {
                "snapshot_unpinned"
            },
            Outcome::Ok,
            &format!("snapshot {} of {}/{}", rec.id, rec.host, rec.source),
        );
        Ok(Response::new(decision_to(&Planned {
            decision: Decision {
                seq: rec.seq,
                keep: true,
                reasons: Vec::new(),
            },
            rec,
            pinned: r.pinned,
        })))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let who = self.m.access.admit(&req, "Verify", &[Role::Admin])?;
        let r = req.into_inner();
        if r.sample_percent > 100 {
            return Err(Status::invalid_argument(
                "sample_percent is 1 to 100 (0 means 100)",
            ));
        }
        let _one = self.m.running.lock().await;
        let m = self.m.clone();
        let subject = who.subject();
        let resp = blocking(move || {
            let tenants = if r.tenant.is_empty() {
                m.store.list_tenants().map_err(store_status)?
            } else {
                vec![tenant(&r.tenant)?]
            };
            let pct = if r.sample_percent == 0 {
                100
            } else {
                r.sample_percent
            };
            m.verify(&tenants, pct, &subject)
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn collect_garbage(
        &self,
        req: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        let who = self
            .m
            .access
            .admit(&req, "CollectGarbage", &[Role::Admin])?;
        let _one = self.m.running.lock().await;
        let m = self.m.clone();
        let subject = who.subject();
        let o = blocking(move || m.collect(&subject)).await?;
        Ok(Response::new(pb::CollectGarbageResponse {
            examined: o.examined,
            deleted: o.deleted,
            bytes: o.bytes,
            referenced_again: o.referenced_again,
            kept_recent: o.kept_recent,
            grace_secs: self.m.grace.as_secs(),
        }))
    }
}
