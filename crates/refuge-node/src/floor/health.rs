//! What the node tells probes (`grpc.health.v1`) and systemd.
//!
//! States, for `""` (the whole node) and each refuge service by its full
//! name:
//!
//! | phase | `""`, Ingest | Restore, Audit, Admin, Supervision | Replication |
//! |---|---|---|---|
//! | store opening | NOT_SERVING | NOT_SERVING | NOT_SERVING |
//! | open | SERVING | SERVING | SERVING |
//! | free space below `[health] min_free_mib` | `""` SERVING, Ingest NOT_SERVING | SERVING | SERVING |
//! | the store's writes stopped (disk full inside, bucket full or unreachable) | `""` SERVING, Ingest NOT_SERVING | SERVING | SERVING |
//! | a peer's last replication pass failed | SERVING | SERVING | NOT_SERVING |
//! | stopping (SIGTERM) | NOT_SERVING | NOT_SERVING | NOT_SERVING |
//!
//! Until the store is open the refuge services themselves answer
//! UNAVAILABLE (`server::gate`), which clients retry. The disk watch
//! (`work::watch`) moves Ingest in and out of NOT_SERVING; each peer's
//! replication task (`work::replicate`) sets Replication after every pass.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Full names of the refuge services, as health checks name them.
pub(crate) const SERVICES: [&str; 6] = [
    INGEST,
    "refuge.v1.Restore",
    "refuge.v1.Audit",
    "refuge.v1.Admin",
    "refuge.v1.Supervision",
    REPLICATION,
];
/// The ingest service's name.
pub(crate) const INGEST: &str = "refuge.v1.Ingest";
/// The replication service's name.
pub(crate) const REPLICATION: &str = "refuge.v1.Replication";

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) how we are.
pub(crate) fn systemd(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
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
