//! Recovery drills: restore a snapshot into scratch space, re-read every
//! restored file against the manifest, run an optional check command on
//! the restored data, measure the restore (recovery time) and the age of
//! the restored point (recovery point), and clean up.
//!
//! The restore itself already verifies every chunk it writes; the drill's
//! second pass reads what landed on disk, independently of the restore
//! code, and compares kind, size, mode, mtime, symlink targets and the
//! content of every chunk range (holes must read as zeros).

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use refuge_core::crypto::TenantKey;
use refuge_core::{
    ChunkRef, Entry, EntryKind, ManifestReader, ManifestRecord, SnapshotRecord, SourceKind,
    format_time_micros,
};
use refuge_proto::pb;
use serde::Serialize;
use tokio::runtime::Handle;

use crate::calls::{Purpose, Selection, SnapshotQuery, answer};
use crate::clock::now_micros;
use crate::connect::Node;
use crate::progress::{Progress, ProgressMode};
use crate::remote::{Fetcher, RemoteStream};
use crate::restore::{RestoreOptions, restore_snapshot};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Failures listed in a report (all are counted).
const MAX_LISTED_FAILURES: usize = 100;
/// Output of a check command kept in the report (the end of it).
const MAX_CHECK_OUTPUT: usize = 16 << 10;

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Directory in which each drill makes (and removes) its scratch space.
    pub scratch: PathBuf,
    /// Shell command run in the restored data (`sh -c`); its exit code
    /// decides. It sees `REFUGE_DRILL_DIR` (restored tree or the image's
    /// directory), `REFUGE_DRILL_IMAGE` (an image's file), and
    /// `REFUGE_DRILL_TENANT`, `_HOST`, `_SOURCE`, `_SNAPSHOT`.
    pub check: Option<String>,
    /// Check commands per source name (`[drill.checks]` in the client
    /// configuration); a source without one gets `check`.
    pub checks: BTreeMap<String, String>,
    /// What the drills of `postgres` sources check in the started
    /// cluster, per source name (`[drill.postgres.NAME]`).
    pub postgres: BTreeMap<String, crate::config::PostgresDrillConfig>,
    /// The same for `mariadb` sources (`[drill.mariadb.NAME]`).
    pub mariadb: BTreeMap<String, crate::config::MariadbDrillConfig>,
    /// The check command is killed after this long (and fails); so is a
    /// restored database that has not started and been checked by then.
    pub check_timeout: Duration,
    /// Keep the restored data (the report names where).
    pub keep: bool,
    /// Restore workers.
    pub threads: usize,
    /// The tenant key, for encrypted snapshots.
    pub key: Option<Arc<TenantKey>>,
    /// Progress of the restore.
    pub progress: ProgressMode,
}

/// A file that did not restore as the manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct DrillFailure {
    /// Path in the snapshot (`.` is its root), or empty when the failure
    /// is not about one file.
    pub path: String,
    /// What was wrong.
    pub reason: String,
}

/// What the check command did.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    /// The command.
    pub command: String,
    /// Its exit code (-1 when killed or not started).
    pub exit_code: i32,
    /// It exited with 0 in time.
    pub passed: bool,
    /// Seconds it ran.
    pub duration_secs: f64,
    /// The end of its standard output and error, interleaved.
    pub output: String,
}

/// The drill of one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SourceDrill {
    /// Tenant, host and source.
    pub tenant: String,
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// `tree`, `image` or `postgres`.
    pub kind: &'static str,
    /// Full snapshot id.
    pub snapshot: String,
    /// Snapshot time (node clock), RFC 3339.
    pub snapshot_time: String,
    /// Snapshot time, microseconds since the epoch.
    pub snapshot_time_unix_micros: i64,
    /// The newest snapshot of this source, RFC 3339.
    pub newest_time: String,
    /// Logical size of the snapshot.
    pub logical_bytes: u64,
    /// When this drill started, RFC 3339.
    pub started: String,
    /// When this drill started, microseconds since the epoch.
    pub started_unix_micros: i64,
    /// Passed: restored, every file checked without a failure, and the
    /// check command (if any) exited 0.
    pub passed: bool,
    /// Recovery time: seconds the restore took.
    pub rto_secs: f64,
    /// Seconds the verification pass took.
    pub verify_secs: f64,
    /// Recovery point: how far the restored snapshot is behind the newest
    /// snapshot of its source, in seconds.
    pub rpo_behind_newest_secs: f64,
    /// Recovery point: the restored snapshot's age when the drill started.
    pub rpo_age_secs: f64,
    /// Files (and directories and symlinks) checked against the manifest.
    pub files_checked: u64,
    /// File bytes read back and compared.
    pub bytes_verified: u64,
    /// Number of failures (the first 100 are listed).
    pub failure_count: u64,
    /// The failures.
    pub failures: Vec<DrillFailure>,
    /// The check command, if one ran.
    pub check: Option<CheckOutcome>,
    /// A `postgres` source: the restored cluster started and checked.
    pub database: Option<crate::drill_db::DatabaseCheck>,
    /// Where the restored data is (kept with `--keep`, else removed).
    pub restored_to: String,
    /// Whether it was kept.
    pub kept: bool,
}

/// Recording lives here, beside what it records, so that `calls` (the
/// typed calls this module uses) does not need the drill's types.
impl Node {
    /// Records the drill of one snapshot (part of drill run `drill_id`)
    /// on the node, which fills in what it knows itself; returns its
    /// position in the node's drill history.
    pub async fn record_drill(&self, d: &SourceDrill, drill_id: &str) -> anyhow::Result<u64> {
        let snapshot_id = hex::decode(&d.snapshot).context("snapshot id")?;
        let check = d.check.as_ref();
        let req = pb::RecordDrillRequest {
            result: Some(pb::DrillResult {
                tenant: d.tenant.clone(),
                snapshot_id,
                started_unix_micros: d.started_unix_micros,
                passed: d.passed,
                restore_secs: d.rto_secs,
                verify_secs: d.verify_secs,
                check_secs: check.map(|c| c.duration_secs).unwrap_or(0.0),
                age_micros: d.started_unix_micros - d.snapshot_time_unix_micros,
                files_checked: d.files_checked,
                bytes_verified: d.bytes_verified,
                failures: d.failure_count,
                first_failure: d.first_failure(),
                check_command: check.map(|c| c.command.clone()).unwrap_or_default(),
                check_exit_code: check.map(|c| c.exit_code).unwrap_or(0),
                check_ran: check.is_some(),
                drill_id: drill_id.to_string(),
                database_checked: d.database.is_some(),
                database_passed: d.database.as_ref().is_some_and(|db| db.passed),
                database_recovery_secs: d.database.as_ref().map_or(0.0, |db| db.recovery_secs),
                database_first_query_secs: d
                    .database
                    .as_ref()
                    .map_or(0.0, |db| db.first_query_secs),
                ..Default::default()
            }),
        };
        let rec = answer(
            "recording the drill",
            self.supervision.clone().record_drill(req),
        )
        .await?;
        Ok(rec.seq)
    }
}

impl SourceDrill {
    /// The first failure as one line (empty if none).
    pub fn first_failure(&self) -> String {
        match self.failures.first() {
            Some(f) if f.path.is_empty() => f.reason.clone(),
            Some(f) => format!("{}: {}", f.path, f.reason),
            None => match (&self.check, &self.database) {
                (Some(c), _) if !c.passed => format!("check command exited {}", c.exit_code),
                (_, Some(db)) if !db.passed => format!("database: {}", db.first_problem()),
                _ => String::new(),
            },
        }
    }
}

fn secs(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// Drills `snap`; `newest_micros` is the time of its source's newest
/// snapshot. Never fails: whatever goes wrong is in the result.
pub async fn drill_snapshot(
    node: &Node,
    snap: &SnapshotRecord,
    newest_micros: i64,
    opts: &DrillOptions,
) -> SourceDrill {
    let started_micros = now_micros();
    let mut d = SourceDrill {
        tenant: snap.tenant.to_string(),
        host: snap.host.to_string(),
        source: snap.source.to_string(),
        kind: snap.kind.as_str(),
        snapshot: snap.id.to_hex(),
        snapshot_time: format_time_micros(snap.time_micros),
        snapshot_time_unix_micros: snap.time_micros,
        newest_time: format_time_micros(newest_micros),
        logical_bytes: snap.logical_bytes,
        started: format_time_micros(started_micros),
        started_unix_micros: started_micros,
        passed: false,
        rto_secs: 0.0,
        verify_secs: 0.0,
        rpo_behind_newest_secs: secs(newest_micros - snap.time_micros),
        rpo_age_secs: secs(started_micros - snap.time_micros),
        files_checked: 0,
        bytes_verified: 0,
        failure_count: 0,
        failures: Vec::new(),
        check: None,
        database: None,
        restored_to: String::new(),
        kept: opts.keep,
    };
    let fail = |d: &mut SourceDrill, path: String, reason: String| {
        d.failure_count += 1;
        if d.failures.len() < MAX_LISTED_FAILURES {
            d.failures.push(DrillFailure { path, reason });
        }
    };
    let scratch = match fs::create_dir_all(&opts.scratch).and_then(|()| {
        tempfile::Builder::new()
            .prefix(&format!("refuge-drill-{}-", snap.source))
            .tempdir_in(&opts.scratch)
    }) {
        Ok(s) => s,
        Err(e) => {
            let why = format!(
                "cannot make scratch space in {}: {e}",
                opts.scratch.display()
            );
            fail(&mut d, String::new(), why);
            return d;
        }
    };
    let target = match snap.kind {
        SourceKind::Tree => scratch.path().join("tree"),
        SourceKind::Postgres => scratch.path().join("pgdata"),
        SourceKind::PostgresWal => scratch.path().join("wal"),
        SourceKind::Mariadb => scratch.path().join("datadir"),
        SourceKind::Image => scratch.path().join("image"),
    };
    d.restored_to = target.display().to_string();
    let restore = restore_snapshot(
        node,
        snap,
        RestoreOptions {
            target: target.clone(),
            include: None,
            progress: opts.progress,
            resume: false,
            threads: opts.threads,
            key: opts.key.clone(),
        },
    )
    .await;
    match restore {
        Ok(r) => d.rto_secs = r.duration_secs,
        Err(e) => {
            let text = format!("{e:#}");
            let (path, reason) = split_restore_error(&text);
            fail(&mut d, path, format!("restore failed: {reason}"));
        }
    }
    if d.failure_count == 0 {
        let started = Instant::now();
        let (node, snap2, t, key) = (node.clone(), snap.clone(), target.clone(), opts.key.clone());
        let rt = Handle::current();
        let progress = opts.progress;
        let v = tokio::task::spawn_blocking(move || {
            verify_restored(rt, &node, &snap2, &t, key, progress)
        })
        .await
        .map_err(|e| anyhow!("verification worker failed: {e}"))
        .and_then(|r| r);
        d.verify_secs = started.elapsed().as_secs_f64();
        match v {
            Ok(v) => {
                d.files_checked = v.checked;
                d.bytes_verified = v.bytes;
                for (p, r) in v.failures {
                    fail(&mut d, p, r);
                }
                d.failure_count = d.failure_count.max(v.failure_count);
            }
            Err(e) => fail(&mut d, String::new(), format!("verification failed: {e:#}")),
        }
    }
    if d.failure_count == 0
        && let Some(cmd) = opts
            .checks
            .get(snap.source.as_str())
            .or(opts.check.as_ref())
    {
        let dir = match snap.kind {
            SourceKind::Tree
            | SourceKind::Postgres
            | SourceKind::PostgresWal
            | SourceKind::Mariadb => target.clone(),
            SourceKind::Image => scratch.path().to_path_buf(),
        };
        let image = (snap.kind == SourceKind::Image).then_some(target.as_path());
        let (cmd, env) = (cmd.clone(), check_env(snap, &dir, image));
        let timeout = opts.check_timeout;
        let c = tokio::task::spawn_blocking(move || run_shell(&cmd, &dir, &env, timeout))
            .await
            .unwrap_or_else(|e| CheckOutcome {
                command: String::new(),
                exit_code: -1,
                passed: false,
                duration_secs: 0.0,
                output: format!("check worker failed: {e}"),
            });
        d.check = Some(c);
    }
    if d.failure_count == 0 && matches!(snap.kind, SourceKind::Postgres | SourceKind::Mariadb) {
        let kind = snap.kind;
        let source = snap.source.to_string();
        let (pg, maria) = (
            opts.postgres.get(&source).cloned().unwrap_or_default(),
            opts.mariadb.get(&source).cloned().unwrap_or_default(),
        );
        let (data, dir, timeout) = (
            target.clone(),
            scratch.path().to_path_buf(),
            opts.check_timeout,
        );
        let rt = Handle::current();
        let db = tokio::task::spawn_blocking(move || match kind {
            SourceKind::Mariadb => crate::drill_mariadb::check(&data, &dir, &maria, timeout),
            _ => crate::drill_postgres::check(&rt, &data, &dir, &pg, timeout),
        })
        .await
        .unwrap_or_else(|e| {
            crate::drill_db::DatabaseCheck::failed(
                if kind == SourceKind::Mariadb {
                    "mariadb"
                } else {
                    "postgres"
                },
                format!("database check worker failed: {e}"),
            )
        });
        d.database = Some(db);
    }
    d.passed = d.failure_count == 0
        && d.check.as_ref().is_none_or(|c| c.passed)
        && d.database.as_ref().is_none_or(|db| db.passed);
    if opts.keep {
        let _ = scratch.keep();
    } else if let Err(e) = scratch.close() {
        tracing::warn!("drill: cannot remove its scratch space: {e}");
    }
    d
}

/// Splits a restore error "… restoring PATH: reason" into the path and the
/// reason, so a report names the file.
fn split_restore_error(text: &str) -> (String, String) {
    if let Some(i) = text.find("restoring ") {
        let rest = &text[i + "restoring ".len()..];
        if let Some(j) = rest.find(": ") {
            return (rest[..j].to_string(), rest[j + 2..].to_string());
        }
    }
    (String::new(), text.to_string())
}

fn check_env(snap: &SnapshotRecord, dir: &Path, image: Option<&Path>) -> Vec<(String, String)> {
    let mut env = vec![
        ("REFUGE_DRILL_DIR".into(), dir.display().to_string()),
        ("REFUGE_DRILL_TENANT".into(), snap.tenant.to_string()),
        ("REFUGE_DRILL_HOST".into(), snap.host.to_string()),
        ("REFUGE_DRILL_SOURCE".into(), snap.source.to_string()),
        ("REFUGE_DRILL_SNAPSHOT".into(), snap.id.to_hex()),
    ];
    if let Some(i) = image {
        env.push(("REFUGE_DRILL_IMAGE".into(), i.display().to_string()));
    }
    env
}

/// Runs `sh -c cmd` in `dir`, its output going to a temporary file, and
/// kills it (and its process group) after `timeout`: drill checks and the
/// agent's pre/post hooks.
pub fn run_shell(
    cmd: &str,
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> CheckOutcome {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let mut out = CheckOutcome {
        command: cmd.to_string(),
        exit_code: -1,
        passed: false,
        duration_secs: 0.0,
        output: String::new(),
    };
    let log = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => {
            out.output = format!("cannot make a file for its output: {e}");
            return out;
        }
    };
    let spawned = log.try_clone().and_then(|err| {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(err)
            .process_group(0)
            .spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            out.output = format!("cannot start sh: {e}");
            return out;
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() >= timeout => {
                // The whole group (the check runs in its own): a shell's
                // children die with it.
                if let Some(pgid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    out.duration_secs = started.elapsed().as_secs_f64();
    let mut text = Vec::new();
    let mut f = log;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(MAX_CHECK_OUTPUT as u64);
    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from));
    let _ = f.read_to_end(&mut text);
    out.output = String::from_utf8_lossy(&text).into_owned();
    match status {
        Some(s) => {
            out.exit_code = s.code().unwrap_or(-1);
            out.passed = s.success();
        }
        None => {
            out.output.push_str(&format!(
                "\n[refuge: killed after its timeout of {} s]",
                timeout.as_secs()
            ));
        }
    }
    out
}

/// What the verification pass found.
struct Verified {
    checked: u64,
    bytes: u64,
    failure_count: u64,
    failures: Vec<(String, String)>,
}

/// The file whose chunk ranges are being compared.
struct Open {
    path: String,
    file: File,
    off: u64,
    /// A failure was already reported for it: skip its remaining ranges.
    bad: bool,
}

/// Reads the snapshot's manifest again and compares `target` with it.
fn verify_restored(
    rt: Handle,
    node: &Node,
    snap: &SnapshotRecord,
    target: &Path,
    key: Option<Arc<TenantKey>>,
    progress: ProgressMode,
) -> anyhow::Result<Verified> {
    let stream = RemoteStream::new(
        Fetcher::new(rt, node.clone(), snap.tenant.to_string(), key.clone()),
        snap.manifest.clone(),
    );
    let mut reader = match &key {
        Some(k) => ManifestReader::with_key(stream, k.clone()),
        None => ManifestReader::new(stream),
    }
    .context("reading the snapshot's manifest")?;
    let bar = Progress::new(progress, "verify", Some(snap.logical_bytes));
    let mut v = Verified {
        checked: 0,
        bytes: 0,
        failure_count: 0,
        failures: Vec::new(),
    };
    let mut fail = |v: &mut Verified, path: &str, why: String| {
        v.failure_count += 1;
        if v.failures.len() < MAX_LISTED_FAILURES {
            v.failures.push((path.to_string(), why));
        }
    };
    let mut open: Option<Open> = None;
    let mut buf = Vec::new();
    let close =
        |o: Option<Open>, v: &mut Verified, fail: &mut dyn FnMut(&mut Verified, &str, String)| {
            if let Some(o) = o
                && !o.bad
                && let Ok(m) = o.file.metadata()
                && m.len() != o.off
            {
                fail(
                    v,
                    &o.path,
                    format!(
                        "is {} bytes; the manifest's chunks cover {}",
                        m.len(),
                        o.off
                    ),
                );
            }
        };
    while let Some(rec) = reader
        .next_record()
        .context("reading the snapshot's manifest")?
    {
        match rec {
            ManifestRecord::Sealed { .. } => {
                anyhow::bail!("the snapshot is encrypted: verifying it needs its tenant's key")
            }
            ManifestRecord::Entry(e) => {
                close(open.take(), &mut v, &mut fail);
                let path = String::from_utf8_lossy(&e.path).into_owned();
                v.checked += 1;
                let on_disk = match snap.kind {
                    SourceKind::Image => target.to_path_buf(),
                    _ if e.path == b"." => target.to_path_buf(),
                    _ => target.join(std::ffi::OsStr::from_bytes(&e.path)),
                };
                match check_entry(&e, &on_disk, snap.kind) {
                    Ok(Some(file)) => {
                        open = Some(Open {
                            path,
                            file,
                            off: 0,
                            bad: false,
                        })
                    }
                    Ok(None) => {}
                    Err(why) => fail(&mut v, &path, why),
                }
            }
            ManifestRecord::Chunks(refs) => {
                let Some(o) = open.as_mut() else { continue };
                for r in &refs {
                    if !o.bad
                        && let Err(why) = check_range(&o.file, o.off, r, key.as_deref(), &mut buf)
                    {
                        o.bad = true;
                        fail(&mut v, &o.path, why);
                    }
                    o.off += u64::from(r.len);
                    v.bytes += u64::from(r.len);
                    bar.inc(u64::from(r.len));
                }
            }
        }
    }
    close(open.take(), &mut v, &mut fail);
    bar.finish();
    Ok(v)
}

/// Checks one entry's kind and metadata on disk; a regular file is
/// returned open for its content check.
fn check_entry(e: &Entry, p: &Path, kind: SourceKind) -> Result<Option<File>, String> {
    let m = fs::symlink_metadata(p).map_err(|err| format!("missing after restore: {err}"))?;
    let ft = m.file_type();
    match e.kind {
        EntryKind::Dir => {
            if !ft.is_dir() {
                return Err("is not a directory".into());
            }
            if m.mode() & 0o7777 != e.mode & 0o7777 {
                return Err(format!(
                    "mode {:o}, the snapshot has {:o}",
                    m.mode() & 0o7777,
                    e.mode & 0o7777
                ));
            }
            Ok(None)
        }
        EntryKind::Symlink => {
            if !ft.is_symlink() {
                return Err("is not a symlink".into());
            }
            let t = fs::read_link(p).map_err(|err| format!("cannot read the link: {err}"))?;
            if t.as_os_str().as_bytes() != e.target.as_slice() {
                return Err(format!(
                    "points to {:?}, the snapshot has {:?}",
                    t.display(),
                    String::from_utf8_lossy(&e.target)
                ));
            }
            Ok(None)
        }
        EntryKind::File => {
            if !ft.is_file() {
                return Err("is not a regular file".into());
            }
            if m.len() != e.size {
                return Err(format!("is {} bytes, the snapshot has {}", m.len(), e.size));
            }
            // An image restored to a file keeps the image's mode and time
            // too; both are compared.
            if m.mode() & 0o7777 != e.mode & 0o7777 {
                return Err(format!(
                    "mode {:o}, the snapshot has {:o}",
                    m.mode() & 0o7777,
                    e.mode & 0o7777
                ));
            }
            if kind.is_tree() && (m.mtime(), m.mtime_nsec() as u32) != (e.mtime_secs, e.mtime_nanos)
            {
                return Err(format!(
                    "modified at {}.{:09}, the snapshot has {}.{:09}",
                    m.mtime(),
                    m.mtime_nsec(),
                    e.mtime_secs,
                    e.mtime_nanos
                ));
            }
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
                .map(Some)
                .map_err(|err| format!("cannot open it: {err}"))
        }
    }
}

/// Compares the bytes at `off` with the chunk `r`.
fn check_range(
    f: &File,
    off: u64,
    r: &ChunkRef,
    key: Option<&TenantKey>,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    buf.resize(r.len as usize, 0);
    f.read_exact_at(buf, off)
        .map_err(|e| format!("cannot read {} bytes at offset {off}: {e}", r.len))?;
    let ok = if r.is_hole() {
        buf.iter().all(|&b| b == 0)
    } else {
        refuge_core::crypto::chunk_id_with(key, buf) == r.id
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "content at offset {off} ({} bytes) differs from the snapshot's chunk {}",
            r.len,
            if r.is_hole() {
                "(a hole)".to_string()
            } else {
                r.id.to_string()
            }
        ))
    }
}

/// Which point of each source a drill restores.
#[derive(Debug, Clone)]
pub enum Point {
    /// The newest snapshot.
    Latest,
    /// The newest snapshot at or before this time (microseconds).
    At(i64),
    /// A snapshot chosen at random (seeded, so it can be repeated).
    Random(u64),
}

impl Point {
    /// `latest`, `at TIME` or `random (seed N)`.
    pub fn describe(&self) -> String {
        match self {
            Point::Latest => "latest".into(),
            Point::At(t) => format!("at {}", format_time_micros(*t)),
            Point::Random(seed) => format!("random (seed {seed})"),
        }
    }
}

/// A source that could not be drilled at the chosen point.
#[derive(Debug, Clone, Serialize)]
pub struct Unavailable {
    /// Tenant, host and source.
    pub tenant: String,
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// Why.
    pub reason: String,
}

/// The whole report of one drill run.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// Random id of this run (also in each node record).
    pub id: String,
    /// The node's address.
    pub node: String,
    /// The node's site (node.toml `site`): which copy of the data this
    /// drill proved, at a primary or at a replica.
    pub site: String,
    /// Who ran it (the certificate's role and name).
    pub run_by: String,
    /// `latest`, `at TIME` or `random (seed N)`.
    pub point: String,
    /// Start and end, RFC 3339.
    pub started: String,
    /// End.
    pub finished: String,
    /// Every source passed and none was unavailable.
    pub passed: bool,
    /// Per source.
    pub sources: Vec<SourceDrill>,
    /// Sources without a snapshot at the chosen point.
    pub unavailable: Vec<Unavailable>,
    /// Node sequence numbers of the recorded results (empty with
    /// `--no-record`).
    pub recorded: Vec<u64>,
    /// Results that could not be recorded on the node, and why.
    pub record_errors: Vec<String>,
    /// The check command given.
    pub check: Option<String>,
}

pub(crate) fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks the snapshot of one source's history (oldest first) to drill.
pub fn pick<'a>(
    snaps: &'a [SnapshotRecord],
    point: &Point,
    rng: &mut u64,
) -> Option<&'a SnapshotRecord> {
    match point {
        Point::Latest => snaps.last(),
        Point::At(t) => snaps.iter().rev().find(|s| s.time_micros <= *t),
        Point::Random(_) => {
            if snaps.is_empty() {
                None
            } else {
                snaps.get((splitmix(rng) % snaps.len() as u64) as usize)
            }
        }
    }
}

/// Seconds as `1.2s`, `10.0min`, `2.0h`, `3.0d`.
pub fn secs_text(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1}s")
    } else if s < 7200.0 {
        format!("{:.1}min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1}h", s / 3600.0)
    } else {
        format!("{:.1}d", s / 86400.0)
    }
}

/// Which tenants, hosts and sources a drill covers (empty: all in scope).
pub type DrillSelection = Selection;

/// Runs a whole drill (named `id`): for each matching tenant, host and
/// source, picks the snapshot of `point`, drills it and (with `record`)
/// records the result on the node. `announce` is told each snapshot before its drill
/// starts. Fails only when the node cannot be asked or nothing matches.
pub async fn run_drill(
    node: &Node,
    sel: &DrillSelection,
    point: &Point,
    opts: &DrillOptions,
    record: bool,
    id: &str,
    mut announce: impl FnMut(&SnapshotRecord),
) -> anyhow::Result<DrillReport> {
    let started = now_micros();
    let listed = node.list_snapshots(sel).await?;
    if listed.is_empty() {
        bail!("nothing to drill: no snapshots match (check the tenant, host and source)");
    }
    let mut groups: BTreeMap<(String, String, String), Vec<SnapshotRecord>> = BTreeMap::new();
    for s in listed {
        groups
            .entry((
                s.tenant.to_string(),
                s.host.to_string(),
                s.source.to_string(),
            ))
            .or_default()
            .push(s);
    }
    let mut rng = match point {
        Point::Random(seed) => *seed,
        _ => 0,
    };
    let mut report = DrillReport {
        id: id.to_string(),
        node: node.address.clone(),
        site: node.site.clone(),
        run_by: format!("{}:{}", node.role, node.name),
        point: point.describe(),
        started: format_time_micros(started),
        finished: String::new(),
        passed: false,
        sources: Vec::new(),
        unavailable: Vec::new(),
        recorded: Vec::new(),
        record_errors: Vec::new(),
        check: opts.check.clone(),
    };
    for ((tenant, host, source), mut snaps) in groups {
        snaps.sort_by_key(|s| (s.time_micros, s.seq));
        let newest = snaps.last().map(|s| s.time_micros).unwrap_or(0);
        let Some(snap) = pick(&snaps, point, &mut rng) else {
            report.unavailable.push(Unavailable {
                tenant,
                host,
                source,
                reason: format!(
                    "no snapshot at or before the drill's point ({})",
                    report.point
                ),
            });
            continue;
        };
        // Resolving it by id records the drill's restore in the audit log.
        node.resolve_snapshot(&SnapshotQuery {
            selector: snap.id.to_hex(),
            at_micros: 0,
            selection: Selection {
                tenant: tenant.clone(),
                host: host.clone(),
                source: source.clone(),
            },
            purpose: Purpose::Drill,
        })
        .await?;
        announce(snap);
        let d = drill_snapshot(node, snap, newest, opts).await;
        tracing::info!(
            target: "refuge::drill",
            tenant = %d.tenant, host = %d.host, source = %d.source,
            snapshot = %d.snapshot, passed = d.passed, rto_secs = d.rto_secs,
            rpo_age_secs = d.rpo_age_secs, files = d.files_checked, failures = d.failure_count,
            "drill finished"
        );
        if record {
            match node.record_drill(&d, id).await {
                Ok(seq) => report.recorded.push(seq),
                Err(e) => report
                    .record_errors
                    .push(format!("{tenant}/{host}/{source}: {e:#}")),
            }
        }
        report.sources.push(d);
    }
    report.finished = format_time_micros(now_micros());
    report.passed = report.unavailable.is_empty() && report.sources.iter().all(|s| s.passed);
    Ok(report)
}

/// The report as a Markdown page an assessor can read.
pub fn drill_markdown(r: &DrillReport) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Recovery drill {}\n", r.id);
    let _ = writeln!(
        m,
        "**Result: {}**\n",
        if r.passed { "PASSED" } else { "FAILED" }
    );
    let _ = writeln!(m, "| | |\n|---|---|");
    let _ = writeln!(m, "| Node | {} |", r.node);
    let _ = writeln!(m, "| Site | {} |", r.site);
    let _ = writeln!(m, "| Run by | {} |", r.run_by);
    let _ = writeln!(m, "| Point in time | {} |", r.point);
    let _ = writeln!(m, "| Started | {} |", r.started);
    let _ = writeln!(m, "| Finished | {} |", r.finished);
    let _ = writeln!(
        m,
        "| Check command | {} |",
        r.check
            .as_deref()
            .map(|c| format!("`{c}`"))
            .unwrap_or("none".into())
    );
    let _ = writeln!(
        m,
        "| Recorded on the node | {} |\n",
        if r.recorded.is_empty() {
            "no".to_string()
        } else {
            r.recorded
                .iter()
                .map(|s| format!("#{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        m,
        "| Tenant | Host | Source | Snapshot | Snapshot time | Size | Files checked | Bytes verified | Failures | RTO (restore) | RPO (age) | RPO (behind newest) | Check | Result |"
    );
    let _ = writeln!(
        m,
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for s in &r.sources {
        let _ = writeln!(
            m,
            "| {} | {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** |",
            s.tenant,
            s.host,
            s.source,
            &s.snapshot[..16],
            s.snapshot_time,
            crate::human_bytes(s.logical_bytes),
            s.files_checked,
            crate::human_bytes(s.bytes_verified),
            s.failure_count,
            secs_text(s.rto_secs),
            secs_text(s.rpo_age_secs),
            secs_text(s.rpo_behind_newest_secs),
            match (&s.check, &s.database) {
                (None, None) => "none".to_string(),
                (Some(c), _) if !c.passed => format!("failed (exit {})", c.exit_code),
                (_, Some(db)) if !db.passed => "database failed".to_string(),
                (_, Some(db)) => format!(
                    "database up in {}, first query {}",
                    secs_text(db.recovery_secs),
                    secs_text(db.first_query_secs)
                ),
                (Some(_), None) => "passed".to_string(),
            },
            if s.passed { "PASSED" } else { "FAILED" }
        );
    }
    for u in &r.unavailable {
        let _ = writeln!(
            m,
            "| {} | {} | {} | none | | | | | | | | | | **FAILED** |",
            u.tenant, u.host, u.source
        );
    }
    for s in &r.sources {
        let _ = writeln!(m, "\n## {}/{}/{}\n", s.tenant, s.host, s.source);
        let _ = writeln!(
            m,
            "- Snapshot: `{}` ({}, {})",
            s.snapshot, s.kind, s.snapshot_time
        );
        let _ = writeln!(m, "- Newest snapshot of this source: {}", s.newest_time);
        let _ = writeln!(m, "- Drill started: {}", s.started);
        let _ = writeln!(
            m,
            "- Restore (RTO): {:.2} s; verification: {:.2} s",
            s.rto_secs, s.verify_secs
        );
        let _ = writeln!(
            m,
            "- Restored to: `{}` ({})",
            s.restored_to,
            if s.kept {
                "kept"
            } else {
                "removed after the drill"
            }
        );
        if s.failures.is_empty() {
            let _ = writeln!(
                m,
                "- Every file, directory and symlink matched the manifest ({} entries, {}).",
                s.files_checked,
                crate::human_bytes(s.bytes_verified)
            );
        } else {
            let _ = writeln!(m, "- Failures ({}):", s.failure_count);
            for f in &s.failures {
                if f.path.is_empty() {
                    let _ = writeln!(m, "  - {}", f.reason);
                } else {
                    let _ = writeln!(m, "  - `{}`: {}", f.path, f.reason);
                }
            }
        }
        if let Some(c) = &s.check {
            let _ = writeln!(
                m,
                "- Check `{}`: {} (exit {}, {:.2} s)",
                c.command,
                if c.passed { "passed" } else { "FAILED" },
                c.exit_code,
                c.duration_secs
            );
            if !c.output.is_empty() {
                let _ = writeln!(
                    m,
                    "\n```text\n{}\n```",
                    c.output.trim_end().replace("```", "'''")
                );
            }
        }
        if let Some(db) = &s.database {
            database_markdown(&mut m, db);
        }
    }
    for u in &r.unavailable {
        let _ = writeln!(
            m,
            "\n## {}/{}/{}\n\n- {}",
            u.tenant, u.host, u.source, u.reason
        );
    }
    m
}

/// The database part of a source's section.
fn database_markdown(m: &mut String, db: &crate::drill_db::DatabaseCheck) {
    let _ = writeln!(
        m,
        "- Database ({} {}): {}",
        db.engine,
        db.version,
        if db.passed { "passed" } else { "FAILED" }
    );
    if db.recovery_secs > 0.0 {
        let _ = writeln!(
            m,
            "  - Started and recovered (first connection): {:.2} s; first query answered: {:.2} s; clean shutdown: {:.2} s",
            db.recovery_secs, db.first_query_secs, db.stop_secs
        );
    }
    for q in &db.queries {
        match &q.error {
            None => {
                let _ = writeln!(
                    m,
                    "  - Query `{}`: {} ({:.3} s)",
                    q.sql,
                    q.value.as_deref().unwrap_or("no value"),
                    q.secs
                );
            }
            Some(e) => {
                let _ = writeln!(m, "  - Query `{}`: FAILED: {e}", q.sql);
            }
        }
    }
    for t in &db.tables {
        match (&t.rows, &t.error) {
            (Some(n), _) => {
                let _ = writeln!(m, "  - Table `{}`: {n} rows", t.table);
            }
            (None, e) => {
                let _ = writeln!(
                    m,
                    "  - Table `{}`: FAILED: {}",
                    t.table,
                    e.as_deref().unwrap_or("")
                );
            }
        }
    }
    if let Some(a) = &db.amcheck {
        let _ = writeln!(
            m,
            "  - `pg_amcheck --all --heapallindexed`: {} (exit {}, {:.2} s)",
            if a.passed { "clean" } else { "FAILED" },
            a.exit_code,
            a.secs
        );
        if !a.passed && !a.output.is_empty() {
            let _ = writeln!(
                m,
                "\n```text\n{}\n```",
                a.output.trim_end().replace("```", "'''")
            );
        }
    }
    if let Some(e) = &db.error {
        let _ = writeln!(m, "  - {e}");
    }
    if !db.log.is_empty() {
        let _ = writeln!(
            m,
            "\nThe end of the server's log:\n\n```text\n{}\n```",
            db.log.trim_end().replace("```", "'''")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_errors_name_the_file() {
        let (p, r) = split_restore_error(
            "restoring docs/a.txt: chunk 12ab: the node's stored copy is corrupt (x)",
        );
        assert_eq!(p, "docs/a.txt");
        assert!(r.starts_with("chunk 12ab"));
        let (p, r) = split_restore_error("node unreachable");
        assert!(p.is_empty());
        assert_eq!(r, "node unreachable");
    }

    #[test]
    fn a_check_command_passes_fails_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("marker"), b"x").unwrap();
        let env = vec![("REFUGE_DRILL_DIR".to_string(), "d".to_string())];
        let ok = run_shell(
            "test -f marker && echo seen $REFUGE_DRILL_DIR",
            dir.path(),
            &env,
            Duration::from_secs(20),
        );
        assert!(ok.passed, "{ok:?}");
        assert_eq!(ok.exit_code, 0);
        assert!(ok.output.contains("seen d"), "{ok:?}");
        let bad = run_shell(
            "echo broken >&2; exit 3",
            dir.path(),
            &env,
            Duration::from_secs(20),
        );
        assert!(!bad.passed);
        assert_eq!(bad.exit_code, 3);
        assert!(bad.output.contains("broken"));
        let slow = run_shell("sleep 30", dir.path(), &env, Duration::from_millis(300));
        assert!(!slow.passed);
        assert_eq!(slow.exit_code, -1);
        assert!(slow.output.contains("killed after"), "{slow:?}");
        assert!(slow.duration_secs < 20.0);
    }

    #[test]
    fn a_range_that_differs_is_reported_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello world\0\0\0\0").unwrap();
        let f = File::open(&p).unwrap();
        let mut buf = Vec::new();
        let good = ChunkRef {
            id: refuge_core::ChunkId::of(b"hello world"),
            len: 11,
        };
        assert!(check_range(&f, 0, &good, None, &mut buf).is_ok());
        let hole = ChunkRef::hole(4);
        assert!(check_range(&f, 11, &hole, None, &mut buf).is_ok());
        let e = check_range(&f, 1, &good, None, &mut buf).unwrap_err();
        assert!(e.contains("offset 1"), "{e}");
        assert!(check_range(&f, 0, &hole, None, &mut buf).is_err());
    }

    #[test]
    fn random_points_are_repeatable_and_cover_the_history() {
        let snaps: Vec<SnapshotRecord> = Vec::new();
        let mut rng = 1;
        assert!(pick(&snaps, &Point::Random(1), &mut rng).is_none());
        assert!(pick(&snaps, &Point::Latest, &mut rng).is_none());
        let mut a = 42;
        let mut b = 42;
        let xs: Vec<u64> = (0..50).map(|_| splitmix(&mut a) % 5).collect();
        let ys: Vec<u64> = (0..50).map(|_| splitmix(&mut b) % 5).collect();
        assert_eq!(xs, ys);
        for k in 0..5 {
            assert!(xs.contains(&k), "{k} never picked in {xs:?}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(secs_text(1.25), "1.2s");
        assert_eq!(secs_text(600.0), "10.0min");
        assert_eq!(secs_text(7200.0), "2.0h");
        assert_eq!(secs_text(3.0 * 86400.0), "3.0d");
    }
}
