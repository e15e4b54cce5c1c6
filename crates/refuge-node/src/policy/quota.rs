//! Per-tenant quotas: snapshots and uploaded bytes per 24 hours, so that a
//! compromised agent cannot flood the node. A refusal is
//! `RESOURCE_EXHAUSTED` with the limit named, and an audit record
//! (`quota_exceeded`).
//!
//! Windows slide over the node's clock. The snapshot window is loaded
//! from the catalog the first time a tenant commits after a start, so a
//! restart does not reset it; the byte window lives in memory only and
//! starts empty after a restart. Concurrent commits of one tenant may
//! overshoot a limit by the number in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use refuge_core::TenantId;
use refuge_store::Store;
use tonic::Status;

use crate::config::QuotaConfig;
use crate::floor::store::store_status;

const DAY_MICROS: i64 = 86_400_000_000;

#[derive(Default)]
struct Window {
    loaded: bool,
    commits: VecDeque<i64>,
    uploads: VecDeque<(i64, u64)>,
    upload_sum: u64,
}

impl Window {
    fn expire(&mut self, now: i64) {
        let from = now - DAY_MICROS;
        while self.commits.front().is_some_and(|&t| t < from) {
            self.commits.pop_front();
        }
        while let Some(&(t, n)) = self.uploads.front() {
            if t >= from {
                break;
            }
            self.upload_sum -= n;
            self.uploads.pop_front();
        }
    }
}

/// The quota state of every tenant.
pub(crate) struct Quotas {
    cfg: QuotaConfig,
    windows: Mutex<HashMap<TenantId, Window>>,
}

impl Quotas {
    pub(crate) fn new(cfg: QuotaConfig) -> Self {
        Quotas {
            cfg,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn limits(&self, t: &TenantId) -> (u64, u64) {
        let o = self.cfg.tenants.get(t.as_str());
        (
            o.and_then(|o| o.max_snapshots_per_day)
                .unwrap_or(self.cfg.max_snapshots_per_day),
            o.and_then(|o| o.max_upload_bytes_per_day)
                .unwrap_or(self.cfg.max_upload_bytes_per_day),
        )
    }

    /// Before a commit (blocking: may read the catalog): refuses when the
    /// tenant has committed its limit in the last 24 hours.
    pub(crate) fn check_commit(
        &self,
        store: &dyn Store,
        t: &TenantId,
        now: i64,
    ) -> Result<(), Status> {
        let (max, _) = self.limits(t);
        if max == 0 {
            return Ok(());
        }
        let loaded = self.with(t, now, |w| w.loaded);
        if !loaded {
            let times: VecDeque<i64> = store
                .list_snapshots(t)
                .map_err(store_status)?
                .iter()
                .map(|s| s.time_micros)
                .filter(|&x| x >= now - DAY_MICROS)
                .collect();
            self.with(t, now, |w| {
                if !w.loaded {
                    w.commits = times;
                    w.loaded = true;
                }
            });
        }
        let n = self.with(t, now, |w| w.commits.len() as u64);
        if n >= max {
            return Err(Status::resource_exhausted(format!(
                "tenant {t} has committed {n} snapshots in the last 24 hours, its quota \
                 (quota.max_snapshots_per_day = {max}); more are refused until the oldest is a day old. \
                 If this host is not expected to back up this often, it may be compromised"
            )));
        }
        Ok(())
    }

    /// After a commit.
    pub(crate) fn committed(&self, t: &TenantId, time: i64) {
        self.with(t, time, |w| w.commits.push_back(time));
    }

    /// Whether the tenant has a byte quota.
    pub(crate) fn limits_uploads(&self, t: &TenantId) -> bool {
        self.limits(t).1 > 0
    }

    /// Before storing `bytes` of new chunks.
    pub(crate) fn check_upload(&self, t: &TenantId, now: i64, bytes: u64) -> Result<(), Status> {
        let (_, max) = self.limits(t);
        if max == 0 {
            return Ok(());
        }
        let used = self.with(t, now, |w| w.upload_sum);
        if used.saturating_add(bytes) > max {
            return Err(Status::resource_exhausted(format!(
                "tenant {t} has uploaded {used} bytes in the last 24 hours; {bytes} more would pass its quota \
                 (quota.max_upload_bytes_per_day = {max})"
            )));
        }
        Ok(())
    }

    /// After storing `bytes` of new chunks.
    pub(crate) fn uploaded(&self, t: &TenantId, now: i64, bytes: u64) {
        if bytes > 0 {
            self.with(t, now, |w| {
                w.uploads.push_back((now, bytes));
                w.upload_sum += bytes;
            });
        }
    }

    fn with<R>(&self, t: &TenantId, now: i64, f: impl FnOnce(&mut Window) -> R) -> R {
        let mut g = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = g.entry(t.clone()).or_default();
        w.expire(now);
        f(w)
    }
}
