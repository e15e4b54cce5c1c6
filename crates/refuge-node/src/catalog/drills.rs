//! Drill records and the reports of the node's own drills.
//!
//! A drill runs on a client (`refuge drill`) or on the node
//! (`work::drills`): it restores a snapshot into scratch space, re-reads
//! every file against the manifest, runs an optional check command and
//! measures the restore. The node keeps what it found, durably, next to
//! the catalog, and fills in what only the node knows for sure: the
//! snapshot's host, source and time, and how far it is behind the newest
//! snapshot of its source (the recovery point).
//!
//! Records are settings `drill/TENANT/SEQ` (20 decimal digits), each a
//! version byte (1) and the protobuf `DrillRecord`
//! (`refuge_proto::stored`), with a `drill_last/TENANT/HOST/SOURCE`
//! pointer to the newest one of each source so that status and scrapes
//! do not scan the history. A node drill's report is the setting
//! `drill_report/ID`: a version byte (1) and JSON `{state, error,
//! report_json, report_markdown}`.

use std::sync::Mutex;

use refuge_core::{SnapshotId, TenantId};
use refuge_proto::pb;
use refuge_proto::stored::{decode_drill_record, encode_drill_record};
use refuge_store::Store;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::clip;
use super::snapshots::filtered;
use crate::floor::clock::now_micros;
use crate::floor::store::store_status;

/// Setting that holds the last drill sequence number.
const DRILL_SEQ: &str = "drill_seq";

fn key(tenant: &TenantId, seq: u64) -> String {
    format!("drill/{tenant}/{seq:020}")
}

/// Setting with the sequence number (u64 LE) of a source's newest drill
/// record, so that status and metrics find it without a scan.
fn last_key(tenant: &TenantId, host: &str, source: &str) -> String {
    format!("drill_last/{tenant}/{host}/{source}")
}

/// The newest drill record of a source, if any.
pub(crate) fn last_drill(
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
    get_drill(store, tenant, seq)
}

/// Drill record `seq` of `tenant`, if there is one.
pub(crate) fn get_drill(
    store: &dyn Store,
    tenant: &TenantId,
    seq: u64,
) -> Result<Option<pb::DrillRecord>, Status> {
    match store.get_setting(&key(tenant, seq)).map_err(store_status)? {
        Some(r) => decode_drill_record(&r)
            .map(Some)
            .map_err(|e| Status::data_loss(format!("drill record {seq}: {e}"))),
        None => Ok(None),
    }
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

/// Stores `result` (completed from the catalog) as the next drill record,
/// recorded by `by` at this node's `site`.
pub(crate) fn record(
    store: &dyn Store,
    lock: &Mutex<()>,
    tenant: &TenantId,
    mut result: pb::DrillResult,
    by: String,
    site: String,
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
        ("database_recovery_secs", result.database_recovery_secs),
        (
            "database_first_query_secs",
            result.database_first_query_secs,
        ),
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
    if result.passed
        && (result.failures > 0
            || (result.check_ran && result.check_exit_code != 0)
            || (result.database_checked && !result.database_passed))
    {
        return Err(Status::invalid_argument(
            "a drill with failures, a failed check or a failed database cannot be recorded as passed",
        ));
    }
    if !result.database_checked
        && (result.database_passed
            || result.database_recovery_secs != 0.0
            || result.database_first_query_secs != 0.0)
    {
        return Err(Status::invalid_argument(
            "database results without database_checked",
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
        site,
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

/// Version of a kept node drill report.
const REPORT_VERSION: u8 = 1;

fn report_key(id: &str) -> String {
    format!("drill_report/{id}")
}

/// What is kept of a node drill: its state (`running`, `passed`,
/// `failed`, `error`), the error if any, and the report as JSON and
/// Markdown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Kept {
    pub(crate) state: String,
    pub(crate) error: String,
    pub(crate) report_json: String,
    pub(crate) report_markdown: String,
}

/// Keeps (or replaces) the report of node drill `id`.
pub(crate) fn keep_report(store: &dyn Store, id: &str, k: &Kept) -> Result<(), Status> {
    let mut v = vec![REPORT_VERSION];
    v.extend_from_slice(&serde_json::to_vec(k).map_err(|e| Status::internal(e.to_string()))?);
    store
        .put_setting(&report_key(id), Some(&v))
        .map_err(store_status)
}

/// The kept report of node drill `id`.
pub(crate) fn report(store: &dyn Store, id: &str) -> Result<Kept, Status> {
    let v = store
        .get_setting(&report_key(id))
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no node drill with id {id:?}")))?;
    match v.split_first() {
        Some((&REPORT_VERSION, rest)) => serde_json::from_slice(rest)
            .map_err(|e| Status::data_loss(format!("stored drill report {id}: {e}"))),
        _ => Err(Status::data_loss(format!(
            "stored drill report {id} has an unknown version"
        ))),
    }
}
