//! Configuration reloads: the revocation list and the disk reserve are
//! re-read from node.toml on SIGHUP and when the file changes; every
//! other setting applies at the next restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::config::NodeConfig;
use crate::floor::disk::Disk;
use crate::policy::access::Access;
use crate::policy::audit::Outcome;

/// How often the config file's modification time is checked.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Re-reads the revocation list and the disk reserve (`[health]
/// min_free_mib`) from `path` on SIGHUP and whenever the file's
/// modification time or size changes; a file that no longer parses keeps
/// the previous values (and says so in the audit log).
pub(crate) async fn watch_config(
    path: std::path::PathBuf,
    access: Arc<Access>,
    disk: Arc<Disk>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the config file is still watched");
            None
        }
    };
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(CONFIG_POLL);
    loop {
        let why = tokio::select! {
            _ = stop.changed() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == last { continue; }
                last = now;
                "file changed"
            }
        };
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || NodeConfig::load(&p)).await;
        match loaded {
            Ok(Ok(cfg)) => {
                let revoked = cfg.tls.revoked();
                let n = revoked.len();
                access.set_revoked(revoked);
                disk.min_free
                    .store(cfg.health.min_free_mib << 20, Ordering::Relaxed);
                access.audit.record(
                    "node",
                    "",
                    "config_reloaded",
                    Outcome::Ok,
                    &format!(
                        "{} ({why}): {n} revoked serials and a disk reserve of {} MiB in effect; other settings apply at the next restart",
                        path.display(),
                        cfg.health.min_free_mib
                    ),
                );
            }
            Ok(Err(e)) => access.audit.record(
                "node",
                "",
                "config_reloaded",
                Outcome::Failed,
                &format!(
                    "{} ({why}): {e:#}; the previous revocation list stays in effect",
                    path.display()
                ),
            ),
            Err(e) => warn!(error = %e, "config reload failed"),
        }
    }
}
