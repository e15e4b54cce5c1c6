//! The node's watches: the store's disk (free space against the reserve,
//! reopening a store whose writes stopped, moving Ingest in and out of
//! NOT_SERVING, audited) and systemd's watchdog.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use refuge_store::{Store, StoreError};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::warn;

use crate::floor::disk::{self, Disk, REOPEN_MARGIN};
use crate::floor::health::{INGEST, systemd};
use crate::policy::audit::{AuditLog, Outcome};

/// Pings systemd's watchdog (when `WATCHDOG_USEC` is set) at half its
/// interval, each time only after a read of the store on the blocking
/// pool came back in time: a hung store or runtime stops the pings.
pub(crate) async fn watchdog(store: Arc<dyn Store>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = every / 2;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        let probe = tokio::task::spawn_blocking(move || s.get_setting("drill_seq"));
        match tokio::time::timeout(every, probe).await {
            Ok(Ok(Ok(_))) => systemd(&[sd_notify::NotifyState::Watchdog]),
            Ok(Ok(Err(e))) => warn!(error = %e, "watchdog: the store did not answer; not pinging"),
            _ => warn!("watchdog: the store did not answer in time; not pinging"),
        }
    }
}

/// Checks the free space of `dir` and whether the store takes writes
/// every `every` until `stop`: below the reserve, ingest goes NOT_SERVING
/// (audited as `disk_low`), and back to SERVING when space is freed
/// (`disk_ok`); a store whose writes stopped (full inside, a bucket that
/// refuses or does not answer) does the same (`store_writes_stopped`,
/// `store_writes_resumed`), reopened here once its disk has room
/// (`store_reopened`).
pub(crate) async fn monitor_disk(
    dir: PathBuf,
    disk: Arc<Disk>,
    store: Arc<dyn Store>,
    health: HealthReporter,
    audit: AuditLog,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    // What health says of ingest now (the batch check may set `low`
    // between two runs of this loop).
    let mut ingest_low = disk.low.load(Ordering::Relaxed);
    // Why the store's writes had stopped at the last check, if they had.
    let mut was_stopped: Option<StoreError> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let d = dir.clone();
        let probe = tokio::task::spawn_blocking(move || disk::read(&d)).await;
        let (free, total, used) = match probe {
            Ok(Ok(r)) => (r.free, r.total, r.used),
            Ok(Err(e)) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the free space of the store's disk");
                continue;
            }
            Err(_) => continue,
        };
        disk.free.store(free, Ordering::Relaxed);
        disk.total.store(total, Ordering::Relaxed);
        disk.store_bytes.store(used, Ordering::Relaxed);
        let min = disk.min_free.load(Ordering::Relaxed);
        disk.low.store(free < min, Ordering::Relaxed);
        // Storage across the network is asked whether it takes writes; a
        // probe that hangs holds up the other checks for a while only (it
        // goes on by itself, and the store runs one probe at a time).
        let s = store.clone();
        let probe = tokio::task::spawn_blocking(move || s.probe_writes());
        let _ = tokio::time::timeout(every.saturating_mul(3), probe).await;
        // A store whose writes stopped when its disk filled is reopened
        // once there is room again (the reserve and some to spare for
        // what RocksDB writes while it opens).
        let reopen_at = min
            .saturating_add(REOPEN_MARGIN)
            .saturating_add(store.reopen_needs_bytes());
        if let Some(why) = store.writes_stopped()
            && free >= reopen_at
        {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.reopen()).await {
                Ok(Ok(true)) => audit.record(
                    "node",
                    "",
                    "store_reopened",
                    Outcome::Ok,
                    &format!(
                        "{} MiB free in {}: the store, whose writes had stopped ({why}), was reopened",
                        free >> 20,
                        dir.display()
                    ),
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(
                    error = %e,
                    free_mib = free >> 20,
                    "cannot reopen the store yet; trying again at the next check"
                ),
                Err(_) => {}
            }
        }
        let stopped = store.writes_stopped();
        let low = free < min || stopped.is_some();
        if low != ingest_low || (stopped.is_some() != was_stopped.is_some()) {
            ingest_low = low;
            if *stop.borrow() {
                return;
            }
            let (status, event, outcome) = match (&stopped, low) {
                (Some(_), _) => (
                    ServingStatus::NotServing,
                    "store_writes_stopped",
                    Outcome::Failed,
                ),
                (None, true) => (ServingStatus::NotServing, "disk_low", Outcome::Failed),
                (None, false) if was_stopped.is_some() => {
                    (ServingStatus::Serving, "store_writes_resumed", Outcome::Ok)
                }
                (None, false) => (ServingStatus::Serving, "disk_ok", Outcome::Ok),
            };
            health.set_service_status(INGEST, status).await;
            systemd(&[sd_notify::NotifyState::Status(match (&stopped, low) {
                (Some(StoreError::NoSpace(_)), _) => {
                    "serving; ingest refusing: the store is full, taking uploads again once space is freed"
                }
                (Some(_), _) => {
                    "serving; ingest refusing: the store cannot be written, taking uploads again once it answers"
                }
                (None, true) => "serving; ingest refusing: free space below [health] min_free_mib",
                (None, false) => "serving",
            })]);
            let detail = match (&stopped, &was_stopped) {
                (Some(e), _) => format!(
                    "the store's writes stopped ({e}); ingest refuses until they work again (the \
                     node checks every {} s; a full disk of its own must have {} MiB free in {})",
                    every.as_secs(),
                    reopen_at >> 20,
                    dir.display()
                ),
                (None, Some(e)) => format!(
                    "the store takes writes again (they had stopped: {e}); ingest {}",
                    if low {
                        "still refuses: free space is below the reserve"
                    } else {
                        "accepts again"
                    }
                ),
                (None, None) => format!(
                    "{} MiB free in {} (reserve {} MiB): ingest {}",
                    free >> 20,
                    dir.display(),
                    min >> 20,
                    if low {
                        "refuses uploads and commits"
                    } else {
                        "accepts again"
                    }
                ),
            };
            was_stopped = stopped;
            audit.record("node", "", event, outcome, &detail);
        }
    }
}
