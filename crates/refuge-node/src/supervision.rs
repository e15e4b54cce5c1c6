//! The `Supervision` service: drill records (what a recovery drill of one
//! snapshot found) and their history.
//!
//! A drill runs on a client (`refuge drill`): it restores a snapshot into
//! scratch space, re-reads every file against the manifest, runs an
//! optional check command and measures the restore. The node keeps what it
//! found, durably, next to the catalog, and fills in what only the node
//! knows for sure: the snapshot's host, source and time, and how far it
//! is behind the newest snapshot of its source (the recovery point).
//!
//! Records are settings `drill/TENANT/SEQ` (20 decimal digits), each a
//! version byte (1) and the protobuf `DrillRecord`.

use std::sync::{Arc, Mutex};

use refuge_core::{SnapshotId, TenantId};
use refuge_proto::pb::{self, supervision_server::Supervision};
use refuge_store::Store;
use refuge_tls::Role;
use tonic::{Request, Response, Status};

use refuge_proto::stored::{
    decode_drill_record, decode_failure, encode_drill_record, encode_failure,
};

use crate::access::{Access, Scope};
use crate::audit::Outcome;
use crate::service::{filtered, now_micros, store_status};

/// Setting that holds the last drill sequence number.
const DRILL_SEQ: &str = "drill_seq";
/// Largest `first_failure` and `check_command` kept (bytes).
const MAX_TEXT: usize = 4096;
/// Default and largest number of records one `ListDrills` returns.
const DEFAULT_LIST: usize = 100;
const MAX_LIST: usize = 10_000;

fn key(tenant: &TenantId, seq: u64) -> String {
    format!("drill/{tenant}/{seq:020}")
}

/// Setting with the sequence number (u64 LE) of a source's newest drill
/// record, so that status and metrics find it without a scan.
fn last_key(tenant: &TenantId, host: &str, source: &str) -> String {
    format!("drill_last/{tenant}/{host}/{source}")
}

/// The newest drill record of a source, if any.
fn last_drill(
    store: &dyn Store,
    tenant: &TenantId,
    host: &str,
    source: &str,
) -> Result<Option<pb::DrillRecord>, Status> {
    let Some(v) = store
        .get_setting(&last_key(tenant, host, source))
        .map_err(store_status)?
    else {
        return Ok(None);
    };
    let seq = u64::from_le_bytes(
        v.as_slice()
            .try_into()
            .map_err(|_| Status::data_loss("stored drill_last is not 8 bytes"))?,
    );
    match store.get_setting(&key(tenant, seq)).map_err(store_status)? {
        Some(r) => decode_drill_record(&r)
            .map(Some)
            .map_err(|e| Status::data_loss(format!("drill record {seq}: {e}"))),
        None => Ok(None),
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Drill records of `tenants`, newest first, filtered.
pub(crate) fn list_drills(
    store: &dyn Store,
    tenants: &[TenantId],
    host: &str,
    source: &str,
    limit: usize,
) -> Result<Vec<pb::DrillRecord>, Status> {
    let mut out = Vec::new();
    for t in tenants {
        for (name, v) in store
            .list_settings(&format!("drill/{t}/"))
            .map_err(store_status)?
        {
            let r = decode_drill_record(&v)
                .map_err(|e| Status::data_loss(format!("stored setting {name}: {e}")))?;
            let res = r.result.as_ref();
            if res.is_some_and(|x| {
                (host.is_empty() || x.host == host) && (source.is_empty() || x.source == source)
            }) {
                out.push(r);
            }
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.seq));
    out.truncate(limit);
    Ok(out)
}

/// What the node knows of itself, for `Status`.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// Expiry of the node's certificate (µs since the epoch).
    pub node_cert_not_after: i64,
    /// Expiry of the CA's certificate (µs since the epoch).
    pub ca_cert_not_after: i64,
}

/// The supervision service.
pub struct SupervisionService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
    /// Serialises sequence numbers.
    seq: Arc<Mutex<()>>,
    disk: Arc<crate::health::Disk>,
    metrics: Arc<crate::metrics::Metrics>,
    facts: NodeFacts,
    drills: Arc<crate::drills::NodeDrills>,
}

impl SupervisionService {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        access: Arc<Access>,
        disk: Arc<crate::health::Disk>,
        metrics: Arc<crate::metrics::Metrics>,
        facts: NodeFacts,
        drills: Arc<crate::drills::NodeDrills>,
    ) -> Self {
        SupervisionService {
            store,
            access,
            seq: Arc::new(Mutex::new(())),
            disk,
            metrics,
            facts,
            drills,
        }
    }
}

/// Setting holding the last reported failure of a source's backup.
fn failure_key(tenant: &TenantId, host: &str, source: &str) -> String {
    format!("backup_failure/{tenant}/{host}/{source}")
}

/// Stores a backup failure an agent reported.
pub(crate) fn put_failure(
    store: &dyn Store,
    tenant: &TenantId,
    host: &str,
    source: &str,
    time_micros: i64,
    error: &str,
) -> Result<(), Status> {
    let v = encode_failure(time_micros, &clip(error.to_string()));
    store
        .put_setting(&failure_key(tenant, host, source), Some(&v))
        .map_err(store_status)
}

/// The last reported failure of a source's backup: time and error.
fn get_failure(
    store: &dyn Store,
    tenant: &TenantId,
    host: &str,
    source: &str,
) -> Result<Option<(i64, String)>, Status> {
    let Some(v) = store
        .get_setting(&failure_key(tenant, host, source))
        .map_err(store_status)?
    else {
        return Ok(None);
    };
    decode_failure(&v).map(Some).ok_or_else(|| {
        Status::data_loss(format!(
            "stored backup failure of {tenant}/{host}/{source} is malformed"
        ))
    })
}

/// Per tenant: snapshots, logical bytes, stored chunks and dedup. Reads
/// each tenant's chunk index (see [`Store::chunk_usage`]).
pub(crate) fn usage_of(
    store: &dyn Store,
    tenants: &[TenantId],
) -> Result<Vec<pb::TenantStatus>, Status> {
    let mut out = Vec::new();
    for t in tenants {
        let snaps = store.list_snapshots(t).map_err(store_status)?;
        let usage = store.chunk_usage(t).map_err(store_status)?;
        let logical: u64 = snaps.iter().map(|s| s.logical_bytes).sum();
        out.push(pb::TenantStatus {
            tenant: t.to_string(),
            snapshots: snaps.len() as u64,
            logical_bytes: logical,
            chunks: usage.chunks,
            stored_bytes: usage.stored_bytes,
            dedup_ratio: if usage.stored_bytes == 0 {
                0.0
            } else {
                logical as f64 / usage.stored_bytes as f64
            },
        });
    }
    Ok(out)
}

/// Per tenant and source: the newest snapshot and the recovery point at
/// `now`, the last backup's result, the last drill. Reads snapshot, drill
/// and failure records only.
pub(crate) fn sources_of(
    store: &dyn Store,
    tenants: &[TenantId],
    now: i64,
) -> Result<Vec<pb::SourceStatus>, Status> {
    use std::collections::BTreeMap;
    let mut sources = Vec::new();
    for t in tenants {
        let mut newest: BTreeMap<(String, String), (u64, refuge_core::SnapshotRecord)> =
            BTreeMap::new();
        for s in store.list_snapshots(t).map_err(store_status)? {
            let k = (s.host.to_string(), s.source.to_string());
            match newest.get_mut(&k) {
                Some((n, best)) => {
                    *n += 1;
                    if (s.time_micros, s.seq) > (best.time_micros, best.seq) {
                        *best = s;
                    }
                }
                None => {
                    newest.insert(k, (1, s));
                }
            }
        }
        // Sources that only ever failed have no snapshot, but a status.
        let prefix = format!("backup_failure/{t}/");
        for (name, _) in store.list_settings(&prefix).map_err(store_status)? {
            let Some((host, source)) = name[prefix.len()..].split_once('/') else {
                continue;
            };
            if newest.contains_key(&(host.to_string(), source.to_string())) {
                continue;
            }
            let (ft, error) = get_failure(store, t, host, source)?.unwrap_or_default();
            sources.push(pb::SourceStatus {
                tenant: t.to_string(),
                host: host.to_string(),
                source: source.to_string(),
                last_backup_ok: false,
                last_backup_unix_micros: ft,
                last_backup_error: error,
                ..Default::default()
            });
        }
        for ((host, source), (n, s)) in newest {
            let failure = get_failure(store, t, &host, &source)?;
            let (ok, when, error) = match failure {
                Some((ft, e)) if ft > s.time_micros => (false, ft, e),
                _ => (true, s.time_micros, String::new()),
            };
            let last = last_drill(store, t, &host, &source)?;
            let drill = last
                .as_ref()
                .and_then(|d| d.result.as_ref().map(|r| (d.recorded_unix_micros, r)));
            sources.push(pb::SourceStatus {
                tenant: t.to_string(),
                host,
                source,
                snapshots: n,
                newest_snapshot_id: s.id.0.to_vec(),
                newest_snapshot_unix_micros: s.time_micros,
                rpo_micros: now - s.time_micros,
                newest_logical_bytes: s.logical_bytes,
                last_backup_ok: ok,
                last_backup_unix_micros: when,
                last_backup_error: error,
                drilled: drill.is_some(),
                last_drill_passed: drill.is_some_and(|(_, d)| d.passed),
                last_drill_unix_micros: drill.map(|(at, _)| at).unwrap_or(0),
                last_drill_rto_secs: drill.map(|(_, d)| d.restore_secs).unwrap_or(0.0),
                last_drill_failure: drill
                    .map(|(_, d)| d.first_failure.clone())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(sources)
}

/// Stores `result` (completed from the catalog) as the next drill record.
fn record(
    store: &dyn Store,
    lock: &Mutex<()>,
    tenant: &TenantId,
    mut result: pb::DrillResult,
    by: String,
) -> Result<pb::DrillRecord, Status> {
    let id = SnapshotId(
        result
            .snapshot_id
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("snapshot_id must be 32 bytes"))?,
    );
    let snap = store
        .get_snapshot(tenant, &id)
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no snapshot with id {id}")))?;
    let newest = filtered(
        store,
        std::slice::from_ref(tenant),
        snap.host.as_str(),
        snap.source.as_str(),
    )?
    .into_iter()
    .map(|s| s.time_micros)
    .max()
    .unwrap_or(snap.time_micros);
    for (what, v) in [
        ("restore_secs", result.restore_secs),
        ("verify_secs", result.verify_secs),
        ("check_secs", result.check_secs),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(Status::invalid_argument(format!(
                "{what} must be a non-negative number of seconds"
            )));
        }
    }
    result.tenant = tenant.to_string();
    result.host = snap.host.to_string();
    result.source = snap.source.to_string();
    result.snapshot_time_unix_micros = snap.time_micros;
    result.logical_bytes = snap.logical_bytes;
    result.behind_newest_micros = newest - snap.time_micros;
    result.first_failure = clip(std::mem::take(&mut result.first_failure));
    result.check_command = clip(std::mem::take(&mut result.check_command));
    result.drill_id = clip(std::mem::take(&mut result.drill_id));
    if result.passed && (result.failures > 0 || (result.check_ran && result.check_exit_code != 0)) {
        return Err(Status::invalid_argument(
            "a drill with failures or a failed check cannot be recorded as passed",
        ));
    }
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let seq = match store.get_setting(DRILL_SEQ).map_err(store_status)? {
        Some(v) => {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| Status::data_loss("stored drill_seq is not 8 bytes"))?;
            u64::from_le_bytes(b) + 1
        }
        None => 1,
    };
    store
        .put_setting(DRILL_SEQ, Some(&seq.to_le_bytes()))
        .map_err(store_status)?;
    let rec = pb::DrillRecord {
        result: Some(result),
        seq,
        recorded_unix_micros: now_micros(),
        recorded_by: by,
    };
    store
        .put_setting(&key(tenant, seq), Some(&encode_drill_record(&rec)))
        .map_err(store_status)?;
    let r = rec.result.as_ref().expect("set above");
    store
        .put_setting(
            &last_key(tenant, &r.host, &r.source),
            Some(&seq.to_le_bytes()),
        )
        .map_err(store_status)?;
    Ok(rec)
}

#[tonic::async_trait]
impl Supervision for SupervisionService {
    async fn record_drill(
        &self,
        req: Request<pb::RecordDrillRequest>,
    ) -> Result<Response<pb::DrillRecord>, Status> {
        let who = self
            .access
            .admit(&req, "RecordDrill", &[Role::Agent, Role::Operator])?;
        let result = req
            .into_inner()
            .result
            .ok_or_else(|| Status::invalid_argument("RecordDrill without a result"))?;
        // Out of scope looks exactly like a snapshot that does not exist.
        let tenant = match Access::one_tenant(&who, &result.tenant)? {
            Scope::One(t) => t,
            Scope::Nothing => {
                return Err(Status::not_found(format!(
                    "no snapshot with id {}",
                    hex::encode(&result.snapshot_id)
                )));
            }
        };
        let (store, lock, t, by) = (
            self.store.clone(),
            self.seq.clone(),
            tenant.clone(),
            who.subject(),
        );
        let rec = tokio::task::spawn_blocking(move || record(&*store, &lock, &t, result, by))
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))??;
        let r = rec.result.as_ref().expect("set above");
        self.access.audit.record(
            &who.subject(),
            tenant.as_str(),
            "drill_recorded",
            if r.passed {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            &format!(
                "drill of snapshot {} of {}/{}: {}; restore {:.1}s, {} files checked{}",
                hex::encode(&r.snapshot_id),
                r.host,
                r.source,
                if r.passed { "passed" } else { "FAILED" },
                r.restore_secs,
                r.files_checked,
                if r.first_failure.is_empty() {
                    String::new()
                } else {
                    format!("; {}", r.first_failure)
                }
            ),
        );
        Ok(Response::new(rec))
    }

    async fn list_drills(
        &self,
        req: Request<pb::ListDrillsRequest>,
    ) -> Result<Response<pb::ListDrillsResponse>, Status> {
        let all = [Role::Admin, Role::Auditor];
        let who = self.access.admit(
            &req,
            "ListDrills",
            &[Role::Agent, Role::Operator, Role::Admin, Role::Auditor],
        )?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        };
        let store = self.store.clone();
        let drills = tokio::task::spawn_blocking(move || {
            let tenants = Access::listed_tenants_seen_by(&*store, &who, &r.tenant, &all)?;
            list_drills(&*store, &tenants, &r.host, &r.source, limit)
        })
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))??;
        Ok(Response::new(pb::ListDrillsResponse { drills }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let all = [Role::Admin, Role::Auditor];
        let who = self.access.admit(
            &req,
            "Status",
            &[Role::Operator, Role::Admin, Role::Auditor],
        )?;
        let r = req.into_inner();
        let store = self.store.clone();
        let now = now_micros();
        let (sources, tenants) = tokio::task::spawn_blocking(move || {
            let tenants = Access::listed_tenants_seen_by(&*store, &who, &r.tenant, &all)?;
            Ok::<_, Status>((
                sources_of(&*store, &tenants, now)?,
                usage_of(&*store, &tenants)?,
            ))
        })
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))??;
        use std::sync::atomic::Ordering::Relaxed;
        Ok(Response::new(pb::StatusResponse {
            now_unix_micros: now,
            sources,
            tenants,
            disk_free_bytes: self.disk.free.load(Relaxed),
            disk_total_bytes: self.disk.total.load(Relaxed),
            store_bytes: self.disk.store_bytes.load(Relaxed),
            disk_reserve_bytes: self.disk.min_free.load(Relaxed),
            ingest_serving: !self.disk.low.load(Relaxed),
            node_cert_not_after_unix_micros: self.facts.node_cert_not_after,
            ca_cert_not_after_unix_micros: self.facts.ca_cert_not_after,
            auth_failures_last_hour: self.metrics.auth_failures_last_hour(),
            node_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn start_drill(
        &self,
        req: Request<pb::StartDrillRequest>,
    ) -> Result<Response<pb::StartDrillResponse>, Status> {
        let who = self
            .access
            .admit(&req, "StartDrill", &[Role::Admin, Role::Auditor])?;
        let r = req.into_inner();
        for (what, v) in [
            ("tenant", &r.tenant),
            ("host", &r.host),
            ("source", &r.source),
        ] {
            if v.len() > 64 || v.contains('/') {
                return Err(Status::invalid_argument(format!(
                    "{what} {v:?} is not a name"
                )));
            }
        }
        let sel = refuge_client::DrillSelection {
            tenant: r.tenant,
            host: r.host,
            source: r.source,
        };
        let point = if r.random_point {
            refuge_client::Point::Random(refuge_client::random_u64())
        } else {
            refuge_client::Point::Latest
        };
        let drills = self.drills.clone();
        let by = who.subject();
        let drill_id = tokio::task::spawn_blocking(move || drills.start(sel, point, &by))
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))??;
        Ok(Response::new(pb::StartDrillResponse { drill_id }))
    }

    async fn get_drill_report(
        &self,
        req: Request<pb::GetDrillReportRequest>,
    ) -> Result<Response<pb::GetDrillReportResponse>, Status> {
        self.access
            .admit(&req, "GetDrillReport", &[Role::Admin, Role::Auditor])?;
        let id = req.into_inner().drill_id;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "{id:?} is not a drill id"
            )));
        }
        let drills = self.drills.clone();
        let r = tokio::task::spawn_blocking(move || drills.report(&id))
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))??;
        Ok(Response::new(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_clipped_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let c = clip(s);
        assert!(c.len() <= MAX_TEXT + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }
}
