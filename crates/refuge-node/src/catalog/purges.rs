//! Purge records (`purge/ID`, JSON): what was asked to be purged, by
//! whom, when it may be confirmed, and what the purge removed. Also the
//! settings that hold a tenant's or a source's other records, which a
//! purge removes with its snapshots and chunks.

use refuge_proto::pb;
use refuge_store::Store;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::floor::store::store_status;

const PREFIX: &str = "purge/";

/// One purge, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub(crate) struct PurgeRecord {
    pub(crate) id: String,
    pub(crate) tenant: String,
    /// Both empty: the whole tenant.
    pub(crate) host: String,
    pub(crate) source: String,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    /// The requester's role and CN: another identity must confirm.
    pub(crate) requester: String,
    pub(crate) requested_micros: i64,
    pub(crate) not_before_micros: i64,
    /// pending, done, cancelled or failed.
    pub(crate) state: String,
    pub(crate) confirmed_by: String,
    pub(crate) done_micros: i64,
    pub(crate) snapshots_removed: u64,
    pub(crate) chunks_removed: u64,
    pub(crate) bytes_removed: u64,
    pub(crate) error: String,
    pub(crate) snapshots_left: u64,
    pub(crate) chunks_left: u64,
}

impl PurgeRecord {
    /// What it covers, as the audit log names it.
    pub(crate) fn what(&self) -> String {
        if self.host.is_empty() {
            format!("tenant {}", self.tenant)
        } else {
            format!(
                "source {} of host {} (tenant {})",
                self.source, self.host, self.tenant
            )
        }
    }

    pub(crate) fn to_pb(&self) -> pb::Purge {
        pb::Purge {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            host: self.host.clone(),
            source: self.source.clone(),
            reason: self.reason.clone(),
            requested_by: self.requested_by.clone(),
            requested_unix_micros: self.requested_micros,
            not_before_unix_micros: self.not_before_micros,
            state: self.state.clone(),
            confirmed_by: self.confirmed_by.clone(),
            done_unix_micros: self.done_micros,
            snapshots_removed: self.snapshots_removed,
            chunks_removed: self.chunks_removed,
            bytes_removed: self.bytes_removed,
            error: self.error.clone(),
            snapshots_left: self.snapshots_left,
            chunks_left: self.chunks_left,
        }
    }
}

pub(crate) fn put(store: &dyn Store, r: &PurgeRecord) -> Result<(), Status> {
    let v = serde_json::to_vec(r).map_err(|e| Status::internal(e.to_string()))?;
    store
        .put_setting(&format!("{PREFIX}{}", r.id), Some(&v))
        .map_err(store_status)
}

pub(crate) fn get(store: &dyn Store, id: &str) -> Result<PurgeRecord, Status> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(format!(
            "purge id {id:?}: give the hex id `refuge admin purge list` shows"
        )));
    }
    let v = store
        .get_setting(&format!("{PREFIX}{id}"))
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no purge {id}")))?;
    serde_json::from_slice(&v)
        .map_err(|e| Status::data_loss(format!("purge record {id} is damaged: {e}")))
}

/// Every purge, oldest request first.
pub(crate) fn list(store: &dyn Store) -> Result<Vec<PurgeRecord>, Status> {
    let mut out = Vec::new();
    for (k, v) in store.list_settings(PREFIX).map_err(store_status)? {
        let r: PurgeRecord = serde_json::from_slice(&v)
            .map_err(|e| Status::data_loss(format!("purge record {k} is damaged: {e}")))?;
        out.push(r);
    }
    out.sort_by_key(|r| (r.requested_micros, r.id.clone()));
    Ok(out)
}

/// The settings that hold records of `r`'s tenant (or source) besides
/// snapshots and chunks: its drill records and last drills, backup
/// failures and (for a tenant) retention policy; as (prefixes, keys).
pub(crate) fn settings_of(r: &PurgeRecord) -> (Vec<String>, Vec<String>) {
    let t = &r.tenant;
    if r.host.is_empty() {
        (
            vec![
                format!("drill/{t}/"),
                format!("drill_last/{t}/"),
                format!("backup_failure/{t}/"),
            ],
            vec![format!("retention/{t}")],
        )
    } else {
        (
            Vec::new(),
            vec![format!("drill_last/{t}/{}/{}", r.host, r.source)],
        )
    }
}
