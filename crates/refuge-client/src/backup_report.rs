//! What a backup did: the report `refuge-agent backup --json` prints, filled
//! in by the walk (`backup.rs`) and by the reading of each file
//! (`file_chunks.rs`), which both import it.

use serde::Serialize;
use tracing::warn;

/// Warnings kept verbatim in the report (the count is always exact).
const MAX_WARNINGS_KEPT: usize = 100;

/// What a backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupReport {
    /// Source name.
    pub source: String,
    /// Full snapshot id.
    pub snapshot: String,
    /// Short id, as `refuge snapshots` shows it.
    pub short_id: String,
    /// The node (`host:port`) the snapshot was saved at: `[node] address`
    /// or, when that one did not serve, one of `fallback`.
    pub node: String,
    /// Node-assigned time (RFC 3339).
    pub time: String,
    /// Regular files backed up.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file data read.
    pub bytes_read: u64,
    /// Files found unchanged since the parent snapshot (not read again).
    pub files_unchanged: u64,
    /// Files already uploaded by an interrupted run (not read again).
    pub files_resumed: u64,
    /// Bytes of those files.
    pub bytes_reused: u64,
    /// Bytes of changed files and of images that were found unchanged
    /// chunk by chunk against the parent snapshot's chunk list (read and
    /// hashed, but not cut, compressed or sent: the block delta).
    pub bytes_unchanged_blocks: u64,
    /// Bytes of all-zero runs stored as holes.
    pub hole_bytes: u64,
    /// Of those, bytes that were holes in the parent snapshot and are
    /// holes in the file (found with `SEEK_DATA`): not read at all.
    pub hole_bytes_unread: u64,
    /// The parent snapshot compared against, if any.
    pub parent: Option<String>,
    /// Where the data was read from when not the source's path: the
    /// filesystem snapshot made for this backup (`snapshot` in the
    /// source's configuration).
    pub read_from: Option<String>,
    /// Chunks of file data (with repeats).
    pub chunks: u64,
    /// Chunks the node lacked and that were uploaded (data and manifest).
    pub chunks_new: u64,
    /// Uncompressed bytes of the chunks that were new to the node.
    pub bytes_new: u64,
    /// Compressed bytes sent.
    pub bytes_sent: u64,
    /// Bytes read divided by bytes sent (`null` when nothing was sent).
    pub dedup_ratio: Option<f64>,
    /// Seconds from start to acknowledged commit.
    pub duration_secs: f64,
    /// The node had this commit already, from an earlier try whose answer
    /// was lost: `snapshot` is the one made then.
    pub replayed: bool,
    /// Number of files that could not be read (they are not in the snapshot).
    pub warning_count: u64,
    /// The first warnings.
    pub warnings: Vec<String>,
    /// A `postgres` source: where the backup started and ended in the
    /// server's WAL, and the WAL files the snapshot carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresReport>,
}

/// What a `postgres` backup took from the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PostgresReport {
    /// `pg_backup_start`'s WAL position (`0/2000028`).
    pub start_lsn: String,
    /// `pg_backup_stop`'s: restored, the cluster is consistent from here.
    pub stop_lsn: String,
    /// WAL segments (and timeline history files) added under `pg_wal/`.
    pub wal_files: u64,
}

impl BackupReport {
    /// Adds a warning (logged, counted, the first ones kept).
    pub fn warn(&mut self, msg: String) {
        warn!("{msg}");
        self.warning_count += 1;
        if self.warnings.len() < MAX_WARNINGS_KEPT {
            self.warnings.push(msg);
        }
    }
}
