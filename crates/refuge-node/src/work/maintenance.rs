//! Retention, pruning, verification and garbage collection: the work
//! behind the `Admin` service (`services::admin`) and the node's
//! scheduled runs of the same work.
//!
//! One maintenance job (prune or garbage collection) runs at a time
//! (`Maintenance::running`). Neither stops backups or restores: a prune
//! removes one snapshot per synced write, and garbage collection holds the
//! store's commit lock only while it deletes one batch
//! (docs/security.md, "What may run beside what").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use refuge_core::retention::{Candidate, Decision, Policy, decide, decide_wal};
use refuge_core::{ChunkId, SnapshotRecord, SourceKind, TenantId, base_of_wal};
use refuge_proto::pb;
use refuge_store::{GcOutcome, RefCounts, Store};
use tonic::Status;
use tracing::info;

use crate::catalog::retention::{pins, policy};
use crate::catalog::snapshots::snapshot_refs;
use crate::floor::clock::now_micros;
use crate::floor::store::store_status;
use crate::policy::access::Access;
use crate::policy::audit::Outcome;

/// Shared by the `Admin` service and the schedule.
pub(crate) struct Maintenance {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) access: Arc<Access>,
    default_policy: Policy,
    /// How long unreferenced chunks stay before collection.
    pub(crate) grace: Duration,
    /// Share of chunks a scheduled verification checks.
    verify_sample: u32,
    /// Held by the one maintenance job that runs.
    pub(crate) running: tokio::sync::Mutex<()>,
}

/// What a prune decided for one snapshot.
pub(crate) struct Planned {
    pub(crate) rec: SnapshotRecord,
    pub(crate) decision: Decision,
    pub(crate) pinned: bool,
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
    pub(crate) fn policy(&self, t: &TenantId) -> Result<(Policy, bool), Status> {
        policy(&*self.store, t, self.default_policy)
    }

    /// Decisions for every snapshot of `t`, grouped by host and source;
    /// a `postgres` source's WAL source follows what was decided for its
    /// bases (`decide_wal`), so its groups come last.
    fn plan(&self, t: &TenantId, now: i64) -> Result<Vec<Planned>, Status> {
        let (policy, _) = self.policy(t)?;
        let pins = pins(&*self.store, t)?;
        let mut groups: BTreeMap<(String, String), Vec<SnapshotRecord>> = BTreeMap::new();
        for rec in self.store.list_snapshots(t).map_err(store_status)? {
            groups
                .entry((rec.host.to_string(), rec.source.to_string()))
                .or_default()
                .push(rec);
        }
        let is_wal =
            |recs: &[SnapshotRecord]| recs.iter().any(|r| r.kind == SourceKind::PostgresWal);
        let (wal, bases): (Vec<_>, Vec<_>) = groups.into_iter().partition(|(_, r)| is_wal(r));
        let mut decided: BTreeMap<(String, String), Vec<(u64, bool)>> = BTreeMap::new();
        let mut out = Vec::new();
        for ((host, source), recs) in bases.into_iter().chain(wal) {
            let wal_group = is_wal(&recs);
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
            let decisions = if wal_group {
                let base = base_of_wal(&source).map(|b| (host.clone(), b.to_string()));
                let bases = base
                    .and_then(|b| decided.get(&b))
                    .map_or(&[][..], |v| v.as_slice());
                decide_wal(&cands, bases)
            } else {
                let d = decide(&policy, &cands, now);
                decided.insert(
                    (host.clone(), source.clone()),
                    d.iter().map(|d| (d.seq, d.keep)).collect(),
                );
                d
            };
            for d in decisions {
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

    /// Prunes `tenants` (blocking): returns every decision and how many
    /// snapshots were removed.
    pub(crate) fn prune(
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
                    let refs = snapshot_refs(&*self.store, &p.rec)?;
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
    pub(crate) fn collect(&self, subject: &str) -> Result<GcOutcome, Status> {
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
                "{} chunks ({} bytes) deleted; {} examined, {} referenced again, {} kept within the {}s grace period; {} packs deleted, {} rewritten",
                out.deleted,
                out.bytes,
                out.examined,
                out.referenced_again,
                out.kept_recent,
                self.grace.as_secs(),
                out.packs_deleted,
                out.packs_rewritten
            ),
        );
        Ok(out)
    }

    /// Verifies `tenants`' chunks (blocking): each one read and checked
    /// against its id; a corrupt one is quarantined and reported with the
    /// snapshots that reference it. `sample_percent` (1..=100) checks a
    /// random share.
    pub(crate) fn verify(
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

    fn check_chunk(
        &self,
        t: &TenantId,
        id: &ChunkId,
        c: &refuge_core::StoredChunk,
    ) -> Result<Option<String>, Status> {
        chunk_problem(&*self.store, t, id, c)
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
            let refs: RefCounts = match snapshot_refs(&*self.store, &rec) {
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

/// What is wrong with a stored chunk, if anything: its bytes must match
/// the checksum recorded when they were stored, and a plain chunk must
/// also decode to content with its id. (A sealed chunk's content only its
/// tenant's key can check.) Used by verification and before a chunk is
/// sent to a peer.
pub(crate) fn chunk_problem(
    store: &dyn Store,
    t: &TenantId,
    id: &ChunkId,
    c: &refuge_core::StoredChunk,
) -> Result<Option<String>, Status> {
    let max = refuge_core::format::MAX_CHUNK_LEN;
    if let Some(sum) = store.chunk_checksum(t, id).map_err(store_status)?
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
