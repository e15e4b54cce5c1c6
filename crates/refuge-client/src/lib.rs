//! The client side of refuge, shared by `refuge-agent` and the `refuge`
//! operator CLI: configuration, the mutual-TLS connection, every call
//! they make to the node as a typed method of [`Node`], backup, restore
//! and drills, and what both programs share as programs ([`Failure`],
//! [`finish`], [`init_logging`]).
//!
//! Backup reads and chunks data on a blocking thread and calls the node
//! through a [`Node`] handle; restore streams the manifest and writes files
//! through temporary names, so a failed restore never leaves wrong bytes
//! under a real name. Every chunk read back is decompressed under a cap and
//! re-hashed before a byte of it is written.

mod admin_calls;
mod backup;
mod backup_report;
mod calls;
mod clock;
mod command;
mod config;
mod connect;
mod drill;
mod drill_db;
mod drill_mariadb;
mod drill_postgres;
mod file_chunks;
mod manifest_io;
mod mariadb;
mod pg_copy;
mod pg_restore;
mod postgres;
mod progress;
mod remote;
mod restore;
mod restore_direct;
mod restore_target;
mod schedule;
mod upload;

/// Bytes in binary units, for tables and reports.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub use admin_calls::{Enrolled, PurgeInfo, SecondFactorEntry, SecondFactors, SignedIn};
pub use backup::{BackupOptions, backup_source, new_commit_token};
pub use backup_report::{BackupReport, PostgresReport};
pub use calls::{
    CorruptChunk, GcOutcome, Health, HealthPort, LastDrill, NodeDrillReport, NodeStatus,
    PruneDecision, Pruned, Purpose, RecordedDatabase, RecordedDrill, ReplicationRow, Retention,
    Selection, SloBreach, SnapshotQuery, SourceStatus, TenantStatus, Verified,
};
pub use clock::{now_micros, random_u64};
pub use command::{Failure, Outcome, command_config, finish, init_logging};
pub use config::{
    AgentConfig, ChunkingConfig, ConnectionConfig, DrillClientConfig, EncryptionConfig, IoPriority,
    LimitsConfig, MariadbConfig, MariadbDrillConfig, PostgresConfig, PostgresDrillConfig,
    ServiceConfig, SnapshotMethod, SourceChunking, SourceConfig, load_config,
};
pub use connect::{
    Node, NodeChannel, SESSION_HEADER, Session, Transient, channel, connect, connect_serving,
    explain_status, is_transient, rpc_error, who_am_i,
};
pub use drill::{
    CheckOutcome, DrillFailure, DrillOptions, DrillReport, DrillSelection, Point, SourceDrill,
    Unavailable, drill_markdown, drill_snapshot, run_drill, run_shell, secs_text,
};
pub use drill_db::{AmcheckOutcome, DatabaseCheck, QueryOutcome, TableRows};
pub use pg_restore::{WAL_DIR, WalPlan, WalReplay, add_wal, plan_wal};
pub use progress::ProgressMode;
pub use restore::{RestoreOptions, RestoreReport, restore_snapshot};
pub use schedule::Schedule;

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(50 << 20), "50.0 MiB");
    }
}
