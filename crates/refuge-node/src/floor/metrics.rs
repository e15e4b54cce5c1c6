//! Prometheus metrics of the node, served as text on `[metrics] listen`
//! (`GET /metrics`), following Prometheus naming: units in names,
//! `_total` counters.
//!
//! Counters are fed where things happen (ingest, restore, commits, the
//! audit log: authentication failures, quarantined chunks, quota
//! refusals). Per-source gauges (last backup time, replication lag, last
//! drill) and the disk gauges are set from the catalog at each scrape by
//! the endpoint (`server::metrics_http`): this registry reads nothing
//! itself, so that the audit log, one floor up, can feed it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use refuge_proto::pb;
use tracing::warn;

use super::disk::Disk;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The node's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    events: Family<Labels, Counter>,
    quota: Family<Labels, Counter>,
    auth_failures: Counter,
    corrupt_chunks: Counter,
    chunks: Family<Labels, Counter>,
    ingest_bytes: Family<Labels, Counter>,
    restore_bytes: Family<Labels, Counter>,
    commits: Family<Labels, Counter>,
    commit_seconds: Histogram,
    last_backup: Family<Labels, FGauge>,
    lag: Family<Labels, FGauge>,
    drill_ok: Family<Labels, FGauge>,
    drill_seconds: Family<Labels, FGauge>,
    drill_time: Family<Labels, FGauge>,
    slo_breached: Family<Labels, FGauge>,
    disk_free: FGauge,
    disk_total: FGauge,
    disk_reserve: FGauge,
    store_bytes: FGauge,
    repl_lag: Family<Labels, FGauge>,
    repl_pending: Family<Labels, FGauge>,
    repl_failing: Family<Labels, FGauge>,
    repl_snapshots: Family<Labels, Counter>,
    repl_chunks: Family<Labels, Counter>,
    repl_bytes: Family<Labels, Counter>,
    /// Authentication failures of the last hour (for `Status`).
    recent_auth: Mutex<VecDeque<Instant>>,
}

/// Most authentication failures remembered for the last-hour count.
const RECENT_AUTH: usize = 100_000;

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut r = Registry::default();
        let events = Family::<Labels, Counter>::default();
        let quota = Family::<Labels, Counter>::default();
        let auth_failures = Counter::default();
        let corrupt_chunks = Counter::default();
        let chunks = Family::<Labels, Counter>::default();
        let ingest_bytes = Family::<Labels, Counter>::default();
        let restore_bytes = Family::<Labels, Counter>::default();
        let commits = Family::<Labels, Counter>::default();
        let commit_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let last_backup = Family::<Labels, FGauge>::default();
        let lag = Family::<Labels, FGauge>::default();
        let drill_ok = Family::<Labels, FGauge>::default();
        let drill_seconds = Family::<Labels, FGauge>::default();
        let drill_time = Family::<Labels, FGauge>::default();
        let slo_breached = Family::<Labels, FGauge>::default();
        r.register(
            "refuge_slo_breached",
            "Per source and recovery target ([slo]; kind rpo, drill_age or drill_failed): 1 while breached",
            Family::<Labels, FGauge>::clone(&slo_breached),
        );
        let (disk_free, disk_total, disk_reserve, store_bytes) = Default::default();
        let (repl_lag, repl_pending, repl_failing) = Default::default();
        let (repl_snapshots, repl_chunks, repl_bytes) = Default::default();
        r.register(
            "refuge_replication_peer_lag_seconds",
            "Per peer and tenant: now minus the newest snapshot present on both nodes",
            Family::<Labels, FGauge>::clone(&repl_lag),
        );
        r.register(
            "refuge_replication_pending_snapshots",
            "Per peer and tenant: snapshots of the sending node not yet on the receiving one",
            Family::<Labels, FGauge>::clone(&repl_pending),
        );
        r.register(
            "refuge_replication_failing",
            "Per peer: 1 if its last replication pass failed (the status names the error)",
            Family::<Labels, FGauge>::clone(&repl_failing),
        );
        r.register(
            "refuge_replication_snapshots",
            "Snapshots copied to (push) or from (pull) a peer, per peer and tenant",
            Family::<Labels, Counter>::clone(&repl_snapshots),
        );
        r.register(
            "refuge_replication_chunks",
            "Chunks copied to or from a peer (only those the other side lacked)",
            Family::<Labels, Counter>::clone(&repl_chunks),
        );
        r.register(
            "refuge_replication_bytes",
            "Bytes of chunks (as stored) copied to or from a peer",
            Family::<Labels, Counter>::clone(&repl_bytes),
        );
        r.register(
            "refuge_audit_events",
            "Audit events recorded, by event and outcome",
            events.clone(),
        );
        r.register(
            "refuge_quota_exceeded",
            "Commits and uploads refused by a tenant's quota (alert on any increase)",
            quota.clone(),
        );
        r.register(
            "refuge_auth_failures",
            "Refused handshakes and calls without a valid, unrevoked client certificate",
            auth_failures.clone(),
        );
        r.register(
            "refuge_verify_corrupt_chunks",
            "Chunks that verification found corrupt and quarantined",
            corrupt_chunks.clone(),
        );
        r.register(
            "refuge_ingest_chunks",
            "Chunks offered by agents: new (stored) or deduplicated (already stored)",
            chunks.clone(),
        );
        r.register(
            "refuge_ingest_bytes",
            "Bytes of new chunks stored (compressed)",
            ingest_bytes.clone(),
        );
        r.register(
            "refuge_restore_bytes",
            "Bytes of chunks sent to restores and drills (as stored)",
            restore_bytes.clone(),
        );
        r.register(
            "refuge_snapshots_committed",
            "Snapshots committed",
            commits.clone(),
        );
        r.register(
            "refuge_commit_duration_seconds",
            "Time to check and durably commit a snapshot",
            commit_seconds.clone(),
        );
        r.register(
            "refuge_last_backup_timestamp_seconds",
            "Node time of the newest snapshot of each source",
            last_backup.clone(),
        );
        r.register(
            "refuge_replication_lag_seconds",
            "Recovery point now: seconds since the newest snapshot of each source",
            lag.clone(),
        );
        r.register(
            "refuge_drill_last_success",
            "1 if the last drill of the source passed, 0 if it failed",
            drill_ok.clone(),
        );
        r.register(
            "refuge_drill_last_duration_seconds",
            "Restore time (RTO) measured by the last drill of the source",
            drill_seconds.clone(),
        );
        r.register(
            "refuge_drill_last_timestamp_seconds",
            "When the last drill of the source was recorded",
            drill_time.clone(),
        );
        r.register(
            "refuge_disk_free_bytes",
            "Free bytes on the store's file system",
            FGauge::clone(&disk_free),
        );
        r.register(
            "refuge_disk_size_bytes",
            "Size of the store's file system",
            FGauge::clone(&disk_total),
        );
        r.register(
            "refuge_disk_reserve_bytes",
            "Free space below which ingest refuses ([health] min_free_mib)",
            FGauge::clone(&disk_reserve),
        );
        r.register(
            "refuge_store_size_bytes",
            "Bytes of the store's files (data_dir)",
            FGauge::clone(&store_bytes),
        );
        Arc::new(Metrics {
            registry: r,
            events,
            quota,
            auth_failures,
            corrupt_chunks,
            chunks,
            ingest_bytes,
            restore_bytes,
            commits,
            commit_seconds,
            last_backup,
            lag,
            drill_ok,
            drill_seconds,
            drill_time,
            slo_breached,
            disk_free,
            disk_total,
            disk_reserve,
            store_bytes,
            repl_lag,
            repl_pending,
            repl_failing,
            repl_snapshots,
            repl_chunks,
            repl_bytes,
            recent_auth: Mutex::new(VecDeque::new()),
        })
    }

    /// Counts an audit event (and the counters derived from events).
    pub(crate) fn event(&self, event: &str, outcome: &str, tenant: &str) {
        self.events
            .get_or_create(&labels(&[("event", event), ("outcome", outcome)]))
            .inc();
        match event {
            "quota_exceeded" => {
                self.quota
                    .get_or_create(&labels(&[("tenant", tenant)]))
                    .inc();
            }
            "auth_failed" => {
                self.auth_failures.inc();
                let mut q = self.recent_auth.lock().unwrap_or_else(|p| p.into_inner());
                if q.len() >= RECENT_AUTH {
                    q.pop_front();
                }
                q.push_back(Instant::now());
            }
            "chunk_quarantined" => {
                self.corrupt_chunks.inc();
            }
            _ => {}
        }
    }

    /// Authentication failures in the last hour.
    pub(crate) fn auth_failures_last_hour(&self) -> u64 {
        let mut q = self.recent_auth.lock().unwrap_or_else(|p| p.into_inner());
        let hour = Duration::from_secs(3600);
        while q.front().is_some_and(|t| t.elapsed() > hour) {
            q.pop_front();
        }
        q.len() as u64
    }

    /// A finished `PutChunks`: chunks received, of which new, and the new
    /// chunks' stored bytes.
    pub(crate) fn ingested(&self, tenant: &str, received: u64, new: u64, bytes: u64) {
        self.chunks
            .get_or_create(&labels(&[("tenant", tenant), ("outcome", "new")]))
            .inc_by(new);
        self.chunks
            .get_or_create(&labels(&[("tenant", tenant), ("outcome", "deduplicated")]))
            .inc_by(received.saturating_sub(new));
        self.ingest_bytes
            .get_or_create(&labels(&[("tenant", tenant)]))
            .inc_by(bytes);
    }

    /// Chunks a `FindMissing` found already stored (not sent again).
    pub(crate) fn deduplicated(&self, tenant: &str, present: u64) {
        self.chunks
            .get_or_create(&labels(&[("tenant", tenant), ("outcome", "deduplicated")]))
            .inc_by(present);
    }

    /// Bytes sent by `GetChunks`.
    pub(crate) fn restored(&self, tenant: &str, bytes: u64) {
        self.restore_bytes
            .get_or_create(&labels(&[("tenant", tenant)]))
            .inc_by(bytes);
    }

    /// A committed snapshot and how long the commit took.
    pub(crate) fn committed(&self, tenant: &str, took: Duration) {
        self.commits
            .get_or_create(&labels(&[("tenant", tenant)]))
            .inc();
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// Chunks and snapshots one replication step copied.
    pub(crate) fn replicated(
        &self,
        peer: &str,
        tenant: &str,
        snapshots: u64,
        chunks: u64,
        bytes: u64,
    ) {
        let l = labels(&[("peer", peer), ("tenant", tenant)]);
        self.repl_snapshots.get_or_create(&l).inc_by(snapshots);
        self.repl_chunks.get_or_create(&l).inc_by(chunks);
        self.repl_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// Replaces the replication gauges with these rows.
    pub(crate) fn set_replication(&self, rows: &[pb::ReplicationStatus]) {
        self.repl_lag.clear();
        self.repl_pending.clear();
        self.repl_failing.clear();
        for r in rows {
            let l = labels(&[("peer", &r.peer), ("tenant", &r.tenant)]);
            if !r.tenant.is_empty() {
                self.repl_lag.get_or_create(&l).set(r.lag_secs);
                self.repl_pending
                    .get_or_create(&l)
                    .set(r.pending_snapshots as f64);
            }
            let failing = self
                .repl_failing
                .get_or_create(&labels(&[("peer", &r.peer)]));
            if !r.last_error.is_empty() {
                failing.set(1.0);
            }
        }
    }

    /// Sets the disk gauges and, replacing the previous ones, the
    /// per-source gauges (read from the catalog by the caller; `None`, as
    /// when the catalog could not be read, keeps the previous ones).
    pub(crate) fn set_gauges(&self, disk: &Disk, sources: Option<&[pb::SourceStatus]>) {
        self.disk_free.set(disk.free.load(Ordering::Relaxed) as f64);
        self.disk_total
            .set(disk.total.load(Ordering::Relaxed) as f64);
        self.disk_reserve
            .set(disk.min_free.load(Ordering::Relaxed) as f64);
        self.store_bytes
            .set(disk.store_bytes.load(Ordering::Relaxed) as f64);
        let Some(sources) = sources else {
            return;
        };
        for f in [
            &self.last_backup,
            &self.lag,
            &self.drill_ok,
            &self.drill_seconds,
            &self.drill_time,
            &self.slo_breached,
        ] {
            f.clear();
        }
        for s in sources {
            let l = labels(&[
                ("tenant", &s.tenant),
                ("host", &s.host),
                ("source", &s.source),
            ]);
            if s.snapshots > 0 {
                self.last_backup
                    .get_or_create(&l)
                    .set(s.newest_snapshot_unix_micros as f64 / 1e6);
                self.lag.get_or_create(&l).set(s.rpo_micros as f64 / 1e6);
            }
            if s.drilled {
                self.drill_ok
                    .get_or_create(&l)
                    .set(if s.last_drill_passed { 1.0 } else { 0.0 });
                self.drill_seconds
                    .get_or_create(&l)
                    .set(s.last_drill_rto_secs);
                self.drill_time
                    .get_or_create(&l)
                    .set(s.last_drill_unix_micros as f64 / 1e6);
            }
            // Every target the source has, breached (1) or not (0).
            let kinds = [
                ("rpo", s.rpo_target_secs > 0),
                ("drill_age", s.drill_age_target_secs > 0),
                ("drill_failed", s.drilled),
            ];
            for (kind, applies) in kinds {
                let breached = s.breaches.iter().any(|b| b.kind == kind);
                if !(applies || breached) {
                    continue;
                }
                let mut l = l.clone();
                l.push(("kind".into(), kind.into()));
                self.slo_breached
                    .get_or_create(&l)
                    .set(if breached { 1.0 } else { 0.0 });
            }
        }
    }

    /// The text exposition.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_the_sources_given_and_stay_when_none_are() {
        let m = Metrics::new();
        let disk = Disk::default();
        disk.free.store(7 << 20, Ordering::Relaxed);
        let src = pb::SourceStatus {
            tenant: "t".into(),
            host: "h".into(),
            source: "s".into(),
            snapshots: 1,
            newest_snapshot_unix_micros: 5_000_000,
            rpo_micros: 2_000_000,
            rpo_target_secs: 60,
            breaches: vec![pb::SloBreach {
                kind: "drill_age".into(),
                detail: "never drilled".into(),
            }],
            ..Default::default()
        };
        m.set_gauges(&disk, Some(std::slice::from_ref(&src)));
        let t = m.text();
        assert!(
            t.contains(r#"refuge_slo_breached{tenant="t",host="h",source="s",kind="rpo"} 0.0"#),
            "{t}"
        );
        assert!(
            t.contains(
                r#"refuge_slo_breached{tenant="t",host="h",source="s",kind="drill_age"} 1.0"#
            ),
            "{t}"
        );
        assert!(!t.contains(r#"kind="drill_failed""#), "{t}");
        assert!(t.contains("refuge_disk_free_bytes 7340032"), "{t}");
        assert!(
            t.contains(r#"refuge_replication_lag_seconds{tenant="t",host="h",source="s"} 2.0"#),
            "{t}"
        );
        m.set_gauges(&disk, None);
        assert!(m.text().contains("refuge_replication_lag_seconds{"));
        m.set_gauges(&disk, Some(&[]));
        assert!(!m.text().contains("refuge_replication_lag_seconds{"));
    }
}
