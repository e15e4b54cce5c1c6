//! What the node tells probes (`grpc.health.v1`) and how it guards its
//! disk.
//!
//! States, for `""` (the whole node) and each refuge service by its full
//! name:
//!
//! | phase | `""`, Ingest | Restore, Audit, Admin, Supervision |
//! |---|---|---|
//! | store opening | NOT_SERVING | NOT_SERVING |
//! | open | SERVING | SERVING |
//! | free space below `[health] min_free_mib` | `""` SERVING, Ingest NOT_SERVING | SERVING |
//! | stopping (SIGTERM) | NOT_SERVING | NOT_SERVING |
//!
//! Until the store is open the refuge services themselves answer
//! UNAVAILABLE ([`Gate`]), which clients retry.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::warn;

use crate::audit::{AuditLog, Outcome};

/// Full names of the refuge services, as health checks name them.
pub(crate) const SERVICES: [&str; 5] = [
    INGEST,
    "refuge.v1.Restore",
    "refuge.v1.Audit",
    "refuge.v1.Admin",
    "refuge.v1.Supervision",
];
/// The ingest service's name.
pub(crate) const INGEST: &str = "refuge.v1.Ingest";

/// A service that answers UNAVAILABLE until it is opened with the real
/// one (once the store is open).
pub(crate) struct Gate<S> {
    inner: Arc<OnceLock<S>>,
}

impl<S> Clone for Gate<S> {
    fn clone(&self) -> Self {
        Gate {
            inner: self.inner.clone(),
        }
    }
}

impl<S> Gate<S> {
    pub(crate) fn new() -> Self {
        Gate {
            inner: Arc::new(OnceLock::new()),
        }
    }

    /// From now on, requests go to `s`.
    pub(crate) fn open(&self, s: S) {
        let _ = self.inner.set(s);
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.inner.get() {
            Some(s) => Box::pin(tower::ServiceExt::oneshot(s.clone(), req)),
            None => Box::pin(async {
                Ok(tonic::Status::unavailable(
                    "the node is starting: its store is not open yet (try again shortly)",
                )
                .into_http())
            }),
        }
    }
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) how we are.
pub(crate) fn systemd(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

/// Pings systemd's watchdog (when `WATCHDOG_USEC` is set) at half its
/// interval, each time only after a read of the store on the blocking
/// pool came back in time: a hung store or runtime stops the pings.
pub(crate) async fn watchdog(
    store: Arc<dyn refuge_store::Store>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
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

/// Sets every service (and `""`) to `status`.
pub(crate) async fn set_all(h: &HealthReporter, status: ServingStatus) {
    h.set_service_status("", status).await;
    for s in SERVICES {
        h.set_service_status(s, status).await;
    }
}

/// Removes every status, which ends open `Watch` streams (so that a
/// graceful shutdown does not wait for probes).
pub(crate) async fn clear_all(h: &mut HealthReporter) {
    h.clear_service_status("").await;
    for s in SERVICES {
        h.clear_service_status(s).await;
    }
}

/// Free space of the store's disk, shared by the monitor, ingest and the
/// status report.
#[derive(Debug, Default)]
pub(crate) struct Disk {
    /// The reserve (`[health] min_free_mib`), bytes.
    pub(crate) min_free: AtomicU64,
    /// Free bytes for the node's user at the last check.
    pub(crate) free: AtomicU64,
    /// Size of the file system.
    pub(crate) total: AtomicU64,
    /// Bytes of files in `data_dir` at the last check.
    pub(crate) store_bytes: AtomicU64,
    /// Free space is below the reserve: ingest refuses.
    pub(crate) low: AtomicBool,
    /// The store's directory (empty: not checked, as in unit tests).
    dir: PathBuf,
}

impl Disk {
    pub(crate) fn new(min_free_mib: u64, dir: PathBuf) -> Arc<Self> {
        let d = Disk {
            dir,
            ..Disk::default()
        };
        d.min_free.store(min_free_mib << 20, Ordering::Relaxed);
        Arc::new(d)
    }

    /// Reads the free space now (one statvfs), so that a batch of
    /// `incoming` bytes about to be stored is refused at once when it would
    /// eat into the reserve, not at the monitor's next check. Health
    /// follows at that check.
    pub(crate) fn check_now(&self, incoming: u64) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if let Ok(s) = rustix::fs::statvfs(&self.dir) {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            self.free.store(free, Ordering::Relaxed);
            let low = free
                < self
                    .min_free
                    .load(Ordering::Relaxed)
                    .saturating_add(incoming);
            // Only ever set here: the monitor clears it (and tells health).
            if low {
                self.low.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Why ingest refuses now, if it does: free space below the reserve,
    /// or a store whose writes stopped when its disk filled.
    pub(crate) fn refusal(&self, store: &dyn refuge_store::Store) -> Option<tonic::Status> {
        if let Some(why) = store.writes_stopped() {
            return Some(tonic::Status::resource_exhausted(format!(
                "node storage ran out of space inside its database ({why}); nothing more was \
                 stored, restores still work; the node reopens its store and takes uploads again \
                 by itself once space is freed ([health] min_free_mib keeps a reserve against this)"
            )));
        }
        if !self.low.load(Ordering::Relaxed) {
            return None;
        }
        Some(tonic::Status::resource_exhausted(format!(
            "node storage is nearly full: {} MiB free, too little for this upload above the \
             reserve of {} MiB ([health] min_free_mib); nothing was stored, restores still work",
            self.free.load(Ordering::Relaxed) >> 20,
            self.min_free.load(Ordering::Relaxed) >> 20
        )))
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Free space, above the reserve and what the store says its reopening
/// needs, that a store whose writes stopped must have before it is
/// reopened.
pub(crate) const REOPEN_MARGIN: u64 = 64 << 20;

/// Checks the free space of `dir` every `every` until `stop`: below the
/// reserve, ingest goes NOT_SERVING (audited as `disk_low`), and back to
/// SERVING when space is freed (`disk_ok`).
pub(crate) async fn monitor_disk(
    dir: PathBuf,
    disk: Arc<Disk>,
    store: Arc<dyn refuge_store::Store>,
    health: HealthReporter,
    audit: AuditLog,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    // What health says of ingest now (the batch check may set `low`
    // between two runs of this loop).
    let mut ingest_low = disk.low.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let d = dir.clone();
        let probe = tokio::task::spawn_blocking(move || {
            rustix::fs::statvfs(&d).map(|s| {
                (
                    s.f_bavail.saturating_mul(s.f_frsize),
                    s.f_blocks.saturating_mul(s.f_frsize),
                    dir_bytes(&d),
                )
            })
        })
        .await;
        let (free, total, used) = match probe {
            Ok(Ok(x)) => x,
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
        if low != ingest_low {
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
                (None, false) => (ServingStatus::Serving, "disk_ok", Outcome::Ok),
            };
            health.set_service_status(INGEST, status).await;
            systemd(&[sd_notify::NotifyState::Status(match (&stopped, low) {
                (Some(_), _) => {
                    "serving; ingest refusing: the store ran out of space, reopening once space is freed"
                }
                (None, true) => "serving; ingest refusing: free space below [health] min_free_mib",
                (None, false) => "serving",
            })]);
            let detail = match &stopped {
                Some(why) => format!(
                    "{} MiB free in {}: the store's writes stopped ({why}); ingest refuses until \
                     it is reopened, which the node does once {} MiB are free",
                    free >> 20,
                    dir.display(),
                    reopen_at >> 20
                ),
                None => format!(
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
            audit.record("node", "", event, outcome, &detail);
        }
    }
}
