//! What the database drills share (`drill_postgres.rs`, `drill_mariadb.rs`):
//! the report of a started database ([`DatabaseCheck`]), the server
//! process stopped at the end whatever happened ([`Server`]), the user it
//! runs as (the restored data directory's owner) and the scratch space
//! opened to that user.

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The end of the server's log kept in a report.
pub(crate) const MAX_LOG: u64 = 8 << 10;
/// How long a stopping server gets before it is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(30);

/// What the started database showed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DatabaseCheck {
    /// `postgres` or `mariadb`.
    pub engine: &'static str,
    /// The server's version as it reports it (`PG_VERSION` until it
    /// answers).
    pub version: String,
    /// Started, answered, every query and count succeeded, amcheck (if
    /// asked for) clean, and stopped within the check timeout.
    pub passed: bool,
    /// Seconds from starting the server to the end of its recovery (the
    /// replay of the snapshot's WAL): its first accepted connection, or,
    /// when it answers read-only during archive recovery, the moment it
    /// says it is out of recovery.
    pub recovery_secs: f64,
    /// Seconds from starting the server to the answer of its first query.
    pub first_query_secs: f64,
    /// The configured queries (or `SELECT 1`).
    pub queries: Vec<QueryOutcome>,
    /// Row counts of the configured tables.
    pub tables: Vec<TableRows>,
    /// `pg_amcheck` run, if configured.
    pub amcheck: Option<AmcheckOutcome>,
    /// Seconds the clean shutdown took.
    pub stop_secs: f64,
    /// Why it failed, when the failure is not one query's or table's.
    pub error: Option<String>,
    /// The end of the server's log (only kept when it failed).
    pub log: String,
}

/// One query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryOutcome {
    /// The SQL.
    pub sql: String,
    /// The first column of its first row, as text (`null` for NULL or no
    /// row).
    pub value: Option<String>,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Seconds it took.
    pub secs: f64,
}

/// One table's row count.
#[derive(Debug, Clone, Serialize)]
pub struct TableRows {
    /// The table as configured.
    pub table: String,
    /// Its rows, if counted.
    pub rows: Option<i64>,
    /// The error, if it could not be counted.
    pub error: Option<String>,
}

/// What `pg_amcheck` said.
#[derive(Debug, Clone, Serialize)]
pub struct AmcheckOutcome {
    /// It exited 0.
    pub passed: bool,
    /// Its exit code (-1 when killed or not started).
    pub exit_code: i32,
    /// Seconds it ran.
    pub secs: f64,
    /// The end of its output.
    pub output: String,
}

impl DatabaseCheck {
    /// A check that could not even start.
    pub(crate) fn failed(engine: &'static str, why: String) -> DatabaseCheck {
        DatabaseCheck {
            engine,
            error: Some(why),
            ..Default::default()
        }
    }

    /// Decides `passed` once the checks ran (`error` set by them if they
    /// stopped), keeping the end of the server's `log` when it failed.
    pub(crate) fn finish(mut self, log: &Path) -> DatabaseCheck {
        self.passed = self.error.is_none()
            && self.queries.iter().all(|q| q.error.is_none())
            && self.tables.iter().all(|t| t.error.is_none())
            && self.amcheck.as_ref().is_none_or(|a| a.passed);
        if !self.passed {
            self.log = tail(log, MAX_LOG);
        }
        self
    }

    /// The first thing that was wrong, as one line.
    pub fn first_problem(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        if let Some(q) = self.queries.iter().find(|q| q.error.is_some()) {
            return format!("query `{}`: {}", q.sql, q.error.as_deref().unwrap_or(""));
        }
        if let Some(t) = self.tables.iter().find(|t| t.error.is_some()) {
            return format!("table {}: {}", t.table, t.error.as_deref().unwrap_or(""));
        }
        if let Some(a) = self.amcheck.as_ref().filter(|a| !a.passed) {
            return format!("pg_amcheck exited {}", a.exit_code);
        }
        String::new()
    }
}

/// The server process, stopped (fast shutdown, then killed) at drop.
pub(crate) struct Server {
    pub(crate) child: Option<Child>,
    pub(crate) stop_secs: f64,
    /// The signal of a clean, fast shutdown.
    pub(crate) signal: rustix::process::Signal,
}

impl Server {
    /// A fast, clean shutdown (`signal`); killed after [`STOP_GRACE`].
    /// Returns whether it stopped by itself.
    pub(crate) fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let started = Instant::now();
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, self.signal);
        }
        let clean = loop {
            match child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if started.elapsed() < STOP_GRACE => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
            }
        };
        self.stop_secs = started.elapsed().as_secs_f64();
        clean
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The user the server runs as: the data directory's owner. A server does
/// not run as root, so a restored directory owned by root (restored by a
/// user who could not keep owners... or a root-owned source) is refused.
pub(crate) fn owner(data: &Path) -> Result<(u32, u32), String> {
    let m = fs::metadata(data).map_err(|e| format!("{}: {e}", data.display()))?;
    if m.uid() == 0 {
        return Err(format!(
            "the restored data directory {} is owned by root, and PostgreSQL does not run as root",
            data.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if me != 0 && me != m.uid() {
        return Err(format!(
            "the restored data directory is owned by uid {}; the drill runs as uid {me} and can \
             only start it as root or as that user",
            m.uid()
        ));
    }
    Ok((m.uid(), m.gid()))
}

/// The end of a file, as text.
pub(crate) fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)));
    let mut b = Vec::new();
    let _ = f.read_to_end(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

/// Stops the server at the end of the checks: a server that had to be
/// killed, or checks past `timeout` since `started`, fail.
pub(crate) fn stop_checked(
    server: &mut Server,
    out: &mut DatabaseCheck,
    started: Instant,
    timeout: Duration,
    what: &str,
) -> Result<(), String> {
    if !server.stop() {
        return Err(format!(
            "the restored {what} did not shut down within {} s and was killed",
            STOP_GRACE.as_secs()
        ));
    }
    out.stop_secs = server.stop_secs;
    if started.elapsed() > timeout {
        return Err(format!(
            "the database checks took longer than the check timeout ({} s)",
            timeout.as_secs()
        ));
    }
    Ok(())
}

/// Lets the server's user (`uid`) reach the data inside the drill's
/// scratch space (made 0700 for whoever runs the drill: opened to 0711)
/// and own `paths` (its run directory and files), when the drill runs as
/// root; nobody else gets to list either.
pub(crate) fn open_to_owner(
    scratch: &Path,
    paths: &[&Path],
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    for p in paths {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    fs::set_permissions(scratch, fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("{}: {e}", scratch.display()))
}

/// The reason a server did not start, with a hint when its log says it
/// could not reach its files.
pub(crate) fn did_not_start(
    status: std::process::ExitStatus,
    log: &Path,
    uid: u32,
    what: &str,
) -> String {
    let hint = if tail(log, MAX_LOG).contains("Permission denied") {
        format!(
            " (the scratch space must be reachable by the data directory's owner, uid {uid}: \
             every directory above it needs the x bit for that user)"
        )
    } else {
        String::new()
    };
    format!("the restored {what} did not start ({status}){hint}; its log is below")
}
