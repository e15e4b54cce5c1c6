//! What the supervision platform asks: per source, the newest snapshot,
//! the recovery point, the last backup's result and the last drill; per
//! tenant, stored bytes and dedup. Read by `Status` and by each metrics
//! scrape, from snapshot, drill and failure records only (never chunks).

use std::collections::BTreeMap;

use refuge_core::{SnapshotRecord, TenantId};
use refuge_proto::pb;
use refuge_store::Store;
use tonic::Status;

use super::drills::last_drill;
use super::failures::{failure_prefix, get_failure};
use super::slo::judge;
use crate::config::SloConfig;
use crate::floor::store::store_status;

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
/// `now`, the last backup's result, the last drill, and the recovery
/// targets of `slo` it breaches. Reads snapshot, drill and failure records
/// only.
pub(crate) fn sources_of(
    store: &dyn Store,
    tenants: &[TenantId],
    slo: &SloConfig,
    now: i64,
) -> Result<Vec<pb::SourceStatus>, Status> {
    let mut sources = Vec::new();
    for t in tenants {
        let mut newest: BTreeMap<(String, String), (u64, SnapshotRecord)> = BTreeMap::new();
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
        let prefix = failure_prefix(t);
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
                ..Default::default()
            });
        }
    }
    for s in &mut sources {
        judge(s, slo, now);
    }
    Ok(sources)
}
