//! Purges of a tenant or of one source (residual information, docs/
//! security.md "Purge"): the request (`request`), and the purge itself
//! once another admin confirms it after `[purge] delay_secs` (`confirm`).
//!
//! A purge removes every snapshot of what it covers (a `postgres`
//! source's WAL snapshots with it), leaving deletion marks so that a
//! peer's copy is not imported again; then every chunk of the tenant that
//! no snapshot references any more, with no grace period (the tenant's
//! backups are refused meanwhile: `Access::purging`); then the tenant's
//! other records (drills, failures, retention). Last, the store reclaims
//! the space (`Store::reclaim_space`: compaction of records and body
//! files), and the purge counts what is left of it, which must be
//! nothing.

use refuge_core::{HostName, SourceName, TenantId, wal_source_of};
use refuge_tls::ClientIdentity;
use tonic::Status;

use super::maintenance::Maintenance;
use crate::catalog::purges::{self, PurgeRecord, settings_of};
use crate::catalog::snapshots::snapshot_refs;
use crate::floor::clock::{now_micros, random_u64};
use crate::floor::store::store_status;
use crate::policy::audit::Outcome;

/// Who an identity is, as a purge compares requester and confirmer.
fn identity(who: &ClientIdentity) -> String {
    format!("{}:{}", who.role, who.name)
}

impl Maintenance {
    /// Records a purge request (blocking): it may be confirmed by another
    /// admin `delay_secs` from now.
    pub(crate) fn request_purge(
        &self,
        who: &ClientIdentity,
        tenant: &str,
        host: &str,
        source: &str,
        reason: &str,
        delay_secs: u64,
    ) -> Result<PurgeRecord, Status> {
        let t =
            TenantId::new(tenant).map_err(|e| Status::invalid_argument(format!("tenant: {e}")))?;
        if host.is_empty() != source.is_empty() {
            return Err(Status::invalid_argument(
                "give both host and source (one source), or neither (the whole tenant)",
            ));
        }
        if !host.is_empty() {
            HostName::new(host).map_err(|e| Status::invalid_argument(format!("host: {e}")))?;
            SourceName::new(source)
                .map_err(|e| Status::invalid_argument(format!("source: {e}")))?;
        }
        if reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "give a reason (--reason): it is kept with the purge and in the audit log",
            ));
        }
        let now = now_micros();
        let r = PurgeRecord {
            id: format!("{:016x}", random_u64()),
            tenant: t.to_string(),
            host: host.into(),
            source: source.into(),
            reason: reason.chars().take(crate::catalog::MAX_TEXT).collect(),
            requested_by: who.subject(),
            requester: identity(who),
            requested_micros: now,
            not_before_micros: now.saturating_add((delay_secs as i64).saturating_mul(1_000_000)),
            state: "pending".into(),
            ..PurgeRecord::default()
        };
        purges::put(&*self.store, &r)?;
        self.access.audit.record(
            &who.subject(),
            t.as_str(),
            "purge_requested",
            Outcome::Ok,
            &format!(
                "purge {} of {} requested ({}); another admin may confirm it from {}",
                r.id,
                r.what(),
                r.reason,
                refuge_core::format_time_micros(r.not_before_micros)
            ),
        );
        Ok(r)
    }

    /// Cancels a pending purge (blocking).
    pub(crate) fn cancel_purge(
        &self,
        who: &ClientIdentity,
        id: &str,
    ) -> Result<PurgeRecord, Status> {
        let mut r = purges::get(&*self.store, id)?;
        if r.state != "pending" {
            return Err(Status::failed_precondition(format!(
                "purge {id} is {}, not pending",
                r.state
            )));
        }
        r.state = "cancelled".into();
        r.confirmed_by = who.subject();
        r.done_micros = now_micros();
        purges::put(&*self.store, &r)?;
        self.access.audit.record(
            &who.subject(),
            &r.tenant,
            "purge_cancelled",
            Outcome::Ok,
            &format!("purge {id} of {} cancelled", r.what()),
        );
        Ok(r)
    }

    /// Checks that `who` may confirm purge `id` now: pending, past its
    /// delay, and not the requester (refusals are audited).
    pub(crate) fn may_confirm(
        &self,
        who: &ClientIdentity,
        id: &str,
    ) -> Result<PurgeRecord, Status> {
        let r = purges::get(&*self.store, id)?;
        let refuse = |s: Status| {
            self.access.audit.record(
                &who.subject(),
                &r.tenant,
                "purge_refused",
                Outcome::Denied,
                &format!("purge {id}: {}", s.message()),
            );
            Err(s)
        };
        if r.state != "pending" {
            return refuse(Status::failed_precondition(format!(
                "purge {id} is {}, not pending",
                r.state
            )));
        }
        if r.requester == identity(who) {
            return refuse(Status::permission_denied(format!(
                "purge {id} was requested by {}: another admin must confirm it",
                r.requested_by
            )));
        }
        let now = now_micros();
        if now < r.not_before_micros {
            return refuse(Status::failed_precondition(format!(
                "purge {id} may be confirmed from {} ({} s from now; [purge] delay_secs)",
                refuge_core::format_time_micros(r.not_before_micros),
                (r.not_before_micros - now) / 1_000_000 + 1
            )));
        }
        Ok(r)
    }

    /// Runs a confirmed purge (blocking; the caller holds the maintenance
    /// lock and refuses the tenant's backups meanwhile).
    pub(crate) fn purge(
        &self,
        who: &ClientIdentity,
        mut r: PurgeRecord,
    ) -> Result<PurgeRecord, Status> {
        r.confirmed_by = who.subject();
        self.access.audit.record(
            &who.subject(),
            &r.tenant,
            "purge_confirmed",
            Outcome::Ok,
            &format!(
                "purge {} of {} confirmed; requested by {}",
                r.id,
                r.what(),
                r.requested_by
            ),
        );
        match self.purge_now(&mut r) {
            Ok(()) => {
                r.state = "done".into();
                self.access.audit.record(
                    &who.subject(),
                    &r.tenant,
                    "purge_done",
                    if r.snapshots_left + r.chunks_left == 0 {
                        Outcome::Ok
                    } else {
                        Outcome::Failed
                    },
                    &format!(
                        "purge {} of {}: {} snapshots, {} chunks ({} bytes) removed; left: {} snapshots, {} chunks",
                        r.id,
                        r.what(),
                        r.snapshots_removed,
                        r.chunks_removed,
                        r.bytes_removed,
                        r.snapshots_left,
                        r.chunks_left
                    ),
                );
            }
            Err(e) => {
                r.state = "failed".into();
                r.error = e.message().to_string();
                self.access.audit.record(
                    &who.subject(),
                    &r.tenant,
                    "purge_done",
                    Outcome::Failed,
                    &format!("purge {} of {} failed: {}", r.id, r.what(), r.error),
                );
            }
        }
        r.done_micros = now_micros();
        purges::put(&*self.store, &r)?;
        Ok(r)
    }

    fn purge_now(&self, r: &mut PurgeRecord) -> Result<(), Status> {
        let store = &*self.store;
        let t = TenantId::new(&r.tenant).map_err(|e| Status::internal(e.to_string()))?;
        let wal = wal_source_of(&r.source);
        let covered = |host: &str, source: &str| {
            r.host.is_empty() || (host == r.host && (source == r.source || source == wal))
        };
        for rec in store.list_snapshots(&t).map_err(store_status)? {
            if !covered(rec.host.as_str(), rec.source.as_str()) {
                continue;
            }
            let refs = snapshot_refs(store, &rec)?;
            if store
                .delete_snapshot(&t, &rec.id, &refs, now_micros())
                .map_err(store_status)?
            {
                r.snapshots_removed += 1;
            }
        }
        // Every chunk without a reference goes, however new.
        let gc = store
            .collect_tenant_garbage(&t, now_micros().saturating_add(1), &mut |_| {})
            .map_err(store_status)?;
        r.chunks_removed = gc.deleted;
        r.bytes_removed = gc.bytes;
        let (prefixes, keys) = settings_of(r);
        for p in prefixes {
            for (k, _) in store.list_settings(&p).map_err(store_status)? {
                store.put_setting(&k, None).map_err(store_status)?;
            }
        }
        for k in keys {
            store.put_setting(&k, None).map_err(store_status)?;
        }
        store.reclaim_space().map_err(store_status)?;
        // What is left of it: nothing, or the purge failed.
        r.snapshots_left = store
            .list_snapshots(&t)
            .map_err(store_status)?
            .iter()
            .filter(|s| covered(s.host.as_str(), s.source.as_str()))
            .count() as u64;
        r.chunks_left = self.unreferenced_or_all(&t, r.host.is_empty())?;
        Ok(())
    }

    /// Chunks of `t` left after a purge: all of them for a whole tenant,
    /// the unreferenced ones for a source.
    fn unreferenced_or_all(&self, t: &TenantId, all: bool) -> Result<u64, Status> {
        let store = &*self.store;
        let mut left = 0u64;
        let mut after = None;
        loop {
            let ids = store
                .list_chunk_ids(t, after.as_ref(), 4096)
                .map_err(store_status)?;
            let Some(last) = ids.last().copied() else {
                break;
            };
            for id in &ids {
                if all || store.chunk_refcount(t, id).map_err(store_status)? == 0 {
                    left += 1;
                }
            }
            after = Some(last);
        }
        Ok(left)
    }
}
