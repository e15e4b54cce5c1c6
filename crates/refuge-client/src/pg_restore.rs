//! What a restore of a `postgres` base adds for a point in time: the WAL
//! files archived through `refuge-agent wal-push` since the base started
//! (snapshots of `NAME.wal`), put in `refuge_wal/` of the restored data
//! directory, and the recovery settings that replay them when the cluster
//! starts: `recovery.signal`, and in `postgresql.auto.conf` a
//! `restore_command` reading `refuge_wal/` (relative: the server runs it
//! in its data directory), the target time (or the end of the archive)
//! and `recovery_target_action = 'promote'`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, bail};
use refuge_core::{SnapshotRecord, SourceKind, format_time_micros, wal_source_of};
use serde::Serialize;

use crate::calls::{Purpose, Selection, SnapshotQuery};
use crate::connect::Node;
use crate::progress::ProgressMode;
use crate::restore::{RestoreOptions, restore_snapshot};

/// The directory of the restored data directory the WAL files go into.
pub const WAL_DIR: &str = "refuge_wal";

/// The WAL a restore of a `postgres` base set up for replay.
#[derive(Debug, Clone, Serialize)]
pub struct WalReplay {
    /// The WAL source the files came from.
    pub source: String,
    /// WAL files put in `refuge_wal/`.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The newest archived file's snapshot time (RFC 3339): the latest
    /// point the archive reaches.
    pub archive_end: String,
    /// The recovery target (RFC 3339), or none: replay to the end of the
    /// archive.
    pub target_time: Option<String>,
    /// Seconds fetching them took.
    pub duration_secs: f64,
    /// A segment missing from the archive after the base's start while
    /// later ones are there (archiving was off or failed for a while):
    /// recovery stops before it. Names the last segment it reaches and
    /// the next one archived.
    pub gap: Option<String>,
}

/// The archived WAL a restore of a base will add.
#[derive(Debug, Clone)]
pub struct WalPlan {
    wal_name: String,
    snapshots: Vec<SnapshotRecord>,
    newest: i64,
    at_micros: Option<i64>,
    selection: Selection,
}

impl WalPlan {
    /// WAL snapshots it will fetch.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }
    /// Whether it fetches none (never: a plan has at least one).
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }
}

/// Which archived WAL `base` needs to reach `at_micros` (`None`: the end of
/// the archive), checked before anything is written: a point after the
/// archive's end fails. `Ok(None)` when the source has no WAL archived
/// since the base started.
pub async fn plan_wal(
    node: &Node,
    base: &SnapshotRecord,
    at_micros: Option<i64>,
) -> anyhow::Result<Option<WalPlan>> {
    let wal_name = wal_source_of(base.source.as_str());
    let sel = |source: String| Selection {
        tenant: base.tenant.to_string(),
        host: base.host.to_string(),
        source,
    };
    // The WAL a base needs was archived after it started, so after the
    // base before it was committed (one backup of a source runs at a time).
    let bases = node.list_snapshots(&sel(base.source.to_string())).await?;
    let floor = bases
        .iter()
        .filter(|s| s.kind == SourceKind::Postgres && s.seq < base.seq)
        .map(|s| s.seq)
        .max()
        .unwrap_or(0);
    let mut wal: Vec<SnapshotRecord> = node
        .list_snapshots(&sel(wal_name.clone()))
        .await?
        .into_iter()
        .filter(|s| s.kind == SourceKind::PostgresWal && s.seq > floor)
        .collect();
    wal.sort_by_key(|s| s.seq);
    // No WAL shipping for this source (or none since this base): the
    // base alone, consistent as of its end, like any source's snapshot at
    // or before the time.
    let Some(newest) = wal.iter().map(|s| s.time_micros).max() else {
        return Ok(None);
    };
    if let Some(at) = at_micros
        && at > newest
    {
        bail!(
            "the archived WAL of {} reaches {}; {} is after it, and recovery would stop short of it: choose an earlier time, or restore latest to replay everything archived",
            base.source,
            format_time_micros(newest),
            format_time_micros(at)
        );
    }
    Ok(Some(WalPlan {
        wal_name: wal_name.clone(),
        snapshots: wal,
        newest,
        at_micros,
        selection: sel(wal_name),
    }))
}

/// Puts the WAL of `plan` into `target/refuge_wal` (the base is restored
/// at `target`) and writes the recovery settings.
pub async fn add_wal(
    node: &Node,
    plan: WalPlan,
    target: &Path,
    opts: &RestoreOptions,
) -> anyhow::Result<WalReplay> {
    let started = std::time::Instant::now();
    let WalPlan {
        wal_name,
        snapshots: wal,
        newest,
        at_micros,
        selection,
    } = plan;
    let owner = fs::metadata(target).with_context(|| format!("{}", target.display()))?;
    let dir = target.join(WAL_DIR);
    let part = target.join(format!("{WAL_DIR}.part"));
    fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let _ = fs::remove_dir_all(&part);
    let (mut files, mut bytes) = (0u64, 0u64);
    for s in &wal {
        // Resolved one by one: each read of a WAL file is audited like the
        // base's.
        let snap = node
            .resolve_snapshot(&SnapshotQuery {
                selector: s.id.to_hex(),
                at_micros: 0,
                selection: selection.clone(),
                purpose: Purpose::Restore,
            })
            .await?;
        let into = part.join(snap.seq.to_string());
        let r = restore_snapshot(
            node,
            &snap,
            RestoreOptions {
                target: into.clone(),
                include: None,
                progress: ProgressMode::Hidden,
                resume: false,
                threads: opts.threads,
                key: opts.key.clone(),
            },
        )
        .await
        .with_context(|| format!("restoring WAL snapshot {}", snap.id.short()))?;
        // One file each; a later copy of a name replaces an earlier one.
        for e in fs::read_dir(&into).with_context(|| format!("{}", into.display()))? {
            let e = e?;
            fs::rename(e.path(), dir.join(e.file_name()))
                .with_context(|| format!("moving {} into {}", e.path().display(), dir.display()))?;
            files += 1;
        }
        bytes += r.bytes;
        fs::remove_dir_all(&into).with_context(|| format!("{}", into.display()))?;
    }
    let _ = fs::remove_dir(&part);
    let target_time = at_micros.map(format_time_micros);
    write_recovery(target, target_time.as_deref(), owner.uid(), owner.gid())?;
    std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid()))
        .with_context(|| format!("{}", dir.display()))?;
    let gap = find_gap(target).map(|(last, next)| {
        format!(
            "the archive has no WAL after {last} up to {next}: recovery stops at the end of {last}"
        )
    });
    Ok(WalReplay {
        source: wal_name,
        files,
        bytes,
        archive_end: format_time_micros(newest),
        target_time,
        duration_secs: started.elapsed().as_secs_f64(),
        gap,
    })
}

/// A segment name's timeline and number, for `per_id` segments per log id.
fn segment(name: &str, per_id: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((tli, log * per_id + seg))
}

/// The last segment recovery reaches from the base's start (its own
/// `pg_wal` and `refuge_wal/` together) and the next one present after a
/// missing one, on the base's timeline; `None` when there is no gap.
fn find_gap(target: &Path) -> Option<(String, String)> {
    let label = fs::read_to_string(target.join("backup_label")).ok()?;
    let start = label.lines().find_map(|l| {
        let l = l.strip_prefix("START WAL LOCATION:")?;
        let i = l.find("(file ")? + "(file ".len();
        l.get(i..i + 24).map(str::to_string)
    })?;
    let seg_size = fs::metadata(target.join("pg_wal").join(&start)).ok()?.len();
    if seg_size == 0 || !seg_size.is_power_of_two() {
        return None;
    }
    let per_id = 0x1_0000_0000 / seg_size;
    let (tli, first) = segment(&start, per_id)?;
    let mut have = std::collections::BTreeSet::new();
    for dir in ["pg_wal", WAL_DIR] {
        for e in fs::read_dir(target.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some((t, n)) = e.file_name().to_str().and_then(|n| segment(n, per_id))
                && t == tli
                && n >= first
            {
                have.insert(n);
            }
        }
    }
    let mut last = first;
    while have.contains(&(last + 1)) {
        last += 1;
    }
    let next = have.range(last + 1..).next()?;
    let name = |n: u64| format!("{tli:08X}{:08X}{:08X}", n / per_id, n % per_id);
    Some((name(last), name(*next)))
}

/// An RFC 3339 time in UTC as the server's settings take it
/// (`2026-12-07 10:00:00.5+00`: it refuses `T` and `Z` there).
fn server_time(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z') {
        Some(t) => format!("{}+00", t.replacen('T', " ", 1)),
        None => rfc3339.replacen('T', " ", 1),
    }
}

/// `recovery.signal` and the recovery settings at the end of
/// `postgresql.auto.conf` (later lines win), owned like the data
/// directory.
fn write_recovery(target: &Path, at: Option<&str>, uid: u32, gid: u32) -> anyhow::Result<()> {
    let signal = target.join("recovery.signal");
    fs::write(&signal, b"").with_context(|| format!("{}", signal.display()))?;
    let auto = target.join("postgresql.auto.conf");
    let mut text = String::from(
        "\n# Added by refuge restore: replay the archived WAL in refuge_wal/, then promote.\n\
         # Remove these lines and refuge_wal/ once the cluster runs.\n\
         restore_command = '[ -f refuge_wal/%f ] && cp refuge_wal/%f \"%p\"'\n\
         recovery_target_action = 'promote'\n\
         recovery_target_timeline = 'latest'\n",
    );
    if let Some(t) = at {
        text.push_str(&format!("recovery_target_time = '{}'\n", server_time(t)));
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .with_context(|| format!("{}", auto.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}", auto.display()))?;
    for p in [&signal, &auto] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .with_context(|| format!("{}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_in_the_archive_is_found() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        fs::create_dir_all(t.join("pg_wal")).unwrap();
        fs::create_dir_all(t.join(WAL_DIR)).unwrap();
        fs::write(
            t.join("backup_label"),
            "START WAL LOCATION: 0/FE000028 (file 0000000100000000000000FE)\nCHECKPOINT LOCATION: 0/FE000060\n",
        )
        .unwrap();
        let seg = |dir: &str, name: &str| {
            let f = fs::File::create(t.join(dir).join(name)).unwrap();
            f.set_len(16 << 20).unwrap();
        };
        seg("pg_wal", "0000000100000000000000FE");
        seg(WAL_DIR, "0000000100000000000000FF");
        // Across the log id: FF is followed by 1/00.
        seg(WAL_DIR, "000000010000000100000000");
        assert_eq!(find_gap(t), None);
        seg(WAL_DIR, "000000010000000100000002");
        assert_eq!(
            find_gap(t),
            Some((
                "000000010000000100000000".to_string(),
                "000000010000000100000002".to_string()
            ))
        );
        // Other timelines and older segments do not count.
        fs::remove_file(t.join(WAL_DIR).join("000000010000000100000002")).unwrap();
        seg(WAL_DIR, "000000020000000100000005");
        seg(WAL_DIR, "000000010000000000000010");
        assert_eq!(find_gap(t), None);
    }

    #[test]
    fn times_are_written_as_the_server_reads_them() {
        assert_eq!(
            server_time("2026-12-07T12:48:39.067554Z"),
            "2026-12-07 12:48:39.067554+00"
        );
        assert_eq!(
            server_time("2026-12-07T12:48:39Z"),
            "2026-12-07 12:48:39+00"
        );
    }
}
