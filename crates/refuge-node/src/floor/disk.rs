//! Free space of the store's disk: the reserve below which ingest
//! refuses, read by every batch about to be stored (one statvfs) and by
//! the disk watch (`work::watch`), which also sizes the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

    /// The check at start (one statvfs, no walk of the store): sets the
    /// free and total space and returns whether free space is below the
    /// reserve (ingest starts NOT_SERVING then).
    pub(crate) fn first_check(&self) -> bool {
        if let Ok(s) = rustix::fs::statvfs(&self.dir) {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            self.free.store(free, Ordering::Relaxed);
            self.total
                .store(s.f_blocks.saturating_mul(s.f_frsize), Ordering::Relaxed);
            self.low.store(
                free < self.min_free.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
        self.low.load(Ordering::Relaxed)
    }

    /// Why ingest refuses now, if it does: free space below the reserve,
    /// or a store whose writes stopped (its disk or bucket full: RESOURCE_EXHAUSTED;
    /// its storage not answering: UNAVAILABLE, which clients retry).
    pub(crate) fn refusal(&self, store: &dyn refuge_store::Store) -> Option<tonic::Status> {
        if let Some(e) = store.writes_stopped() {
            return Some(match e {
                refuge_store::StoreError::NoSpace(why) => {
                    tonic::Status::resource_exhausted(format!(
                        "node storage is full ({why}); nothing more was stored, restores still work; \
                     the node takes uploads again by itself once space is freed ([health] \
                     min_free_mib keeps a reserve on the node's own disk against this)"
                    ))
                }
                other => tonic::Status::unavailable(format!(
                    "node storage cannot be written ({other}); nothing more was stored; the node \
                     takes uploads again by itself once its storage answers"
                )),
            });
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

fn dir_bytes(dir: &Path) -> u64 {
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

/// What one statvfs and a walk of the store's directory found.
pub(crate) struct DiskReading {
    /// Free bytes for the node's user.
    pub(crate) free: u64,
    /// Size of the file system.
    pub(crate) total: u64,
    /// Bytes of files under the directory.
    pub(crate) used: u64,
}

/// Reads the free space and size of `dir`'s file system and the bytes of
/// the files under `dir` (blocking).
pub(crate) fn read(dir: &Path) -> std::io::Result<DiskReading> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(DiskReading {
        free: s.f_bavail.saturating_mul(s.f_frsize),
        total: s.f_blocks.saturating_mul(s.f_frsize),
        used: dir_bytes(dir),
    })
}
