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

    /// Why ingest refuses now, if it does.
    pub(crate) fn refusal(&self) -> Option<tonic::Status> {
        if !self.low.load(Ordering::Relaxed) {
            return None;
        }
        Some(tonic::Status::resource_exhausted(format!(
            "node storage is nearly full: {} MiB free, below the reserve of {} MiB ([health] \
             min_free_mib); nothing was stored, restores still work",
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

/// Checks the free space of `dir` every `every` until `stop`: below the
/// reserve, ingest goes NOT_SERVING (audited as `disk_low`), and back to
/// SERVING when space is freed (`disk_ok`).
pub(crate) async fn monitor_disk(
    dir: PathBuf,
    disk: Arc<Disk>,
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
        let (free, total, store) = match probe {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the free space of the store's disk");
                continue;
            }
            Err(_) => continue,
        };
        disk.free.store(free, Ordering::Relaxed);
        disk.total.store(total, Ordering::Relaxed);
        disk.store_bytes.store(store, Ordering::Relaxed);
        let min = disk.min_free.load(Ordering::Relaxed);
        let low = free < min;
        disk.low.store(low, Ordering::Relaxed);
        if low != ingest_low {
            ingest_low = low;
            if *stop.borrow() {
                return;
            }
            let (status, event, outcome) = if low {
                (ServingStatus::NotServing, "disk_low", Outcome::Failed)
            } else {
                (ServingStatus::Serving, "disk_ok", Outcome::Ok)
            };
            health.set_service_status(INGEST, status).await;
            systemd(&[sd_notify::NotifyState::Status(if low {
                "serving; ingest refusing: free space below [health] min_free_mib"
            } else {
                "serving"
            })]);
            audit.record(
                "node",
                "",
                event,
                outcome,
                &format!(
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
            );
        }
    }
}
