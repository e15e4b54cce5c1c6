//! `postgres` sources: a consistent copy of a running PostgreSQL cluster.
//!
//! The agent runs on the database host. It logs in ([`PostgresConfig`]),
//! reserves the WAL from now on with a temporary physical replication
//! slot, calls `pg_backup_start`, reads the data directory like a tree
//! (without what the server rebuilds or must not find: [`skip`]), calls
//! `pg_backup_stop`, and then adds what makes the copy consistent: the
//! `backup_label` the server returned and every WAL segment from the
//! backup's start to its end, read from `pg_wal` (the slot keeps them).
//! A cluster restored from the snapshot starts with `pg_ctl start` and
//! replays that WAL to the end of the backup.
//!
//! Everything the session does ends with it: if the agent dies or the
//! connection drops before `pg_backup_stop`, the server aborts the backup
//! and drops the slot, and no snapshot is committed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::runtime::Handle;
use tokio_postgres::error::SqlState;

use crate::config::PostgresConfig;

/// The oldest server this agent backs up (`pg_backup_start` and
/// `pg_backup_stop` are named so since PostgreSQL 15).
const MIN_SERVER_VERSION: i32 = 150000;

/// Directories whose contents the server rebuilds at start (PostgreSQL's
/// own base backup leaves them out too); they are kept, empty.
const EMPTY_DIRS: [&[u8]; 7] = [
    b"pg_dynshmem",
    b"pg_notify",
    b"pg_replslot",
    b"pg_serial",
    b"pg_snapshots",
    b"pg_stat_tmp",
    b"pg_subtrans",
];

/// Files of the data directory's top level that a copy must not carry.
const SKIPPED_TOP_FILES: [&[u8]; 7] = [
    b"postmaster.pid",
    b"postmaster.opts",
    b"backup_label",
    b"tablespace_map",
    b"backup_manifest",
    b"postgresql.auto.conf.tmp",
    b"current_logfiles.tmp",
];

/// Whether a path of the data directory (relative, bytes) stays out of
/// the copy: the contents of [`EMPTY_DIRS`], WAL (added from the backup's
/// range afterwards), [`SKIPPED_TOP_FILES`], relation cache files and
/// temporary files.
pub(crate) fn skip(rel: &[u8]) -> bool {
    let (parent, name) = match rel.iter().rposition(|&c| c == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    };
    if EMPTY_DIRS.contains(&parent) {
        return true;
    }
    if parent.is_empty() && SKIPPED_TOP_FILES.contains(&name) {
        return true;
    }
    // pg_wal keeps only its archive_status directory, empty.
    if parent == b"pg_wal" {
        return name != b"archive_status";
    }
    if parent == b"pg_wal/archive_status" {
        return true;
    }
    name.starts_with(b"pg_internal.init") || name.starts_with(b"pgsql_tmp")
}

/// A position in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Lsn(pub(crate) u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Lsn {
    /// From the server's text form, `16/B374D848`.
    pub(crate) fn parse(s: &str) -> anyhow::Result<Self> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| anyhow!("not a WAL position: {s:?}"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| anyhow!("not a WAL position: {s:?}"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| anyhow!("not a WAL position: {s:?}"))?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            bail!("not a WAL position: {s:?}");
        }
        Ok(Lsn(hi << 32 | lo))
    }
}

/// The name of the WAL segment file holding `lsn` on `timeline`, for
/// segments of `seg_size` bytes (`000000010000000000000003`).
pub(crate) fn segment_name(timeline: u32, lsn: Lsn, seg_size: u64) -> String {
    let per_id = 0x1_0000_0000 / seg_size;
    let segno = lsn.0 / seg_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The WAL segment names from the one holding `start` to the one holding
/// `stop`, inclusive.
pub(crate) fn segment_range(timeline: u32, start: Lsn, stop: Lsn, seg_size: u64) -> Vec<String> {
    (start.0 / seg_size..=stop.0 / seg_size)
        .map(|segno| segment_name(timeline, Lsn(segno * seg_size), seg_size))
        .collect()
}

/// A field of a `backup_label` (`START TIMELINE: 1` → `"1"`).
fn label_field<'a>(label: &'a str, field: &str) -> Option<&'a str> {
    label.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// What `pg_backup_stop` returned, and what the copy must add.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// The `backup_label` file's contents.
    pub(crate) label: String,
    /// The `tablespace_map` file's contents (empty: none).
    pub(crate) tablespace_map: String,
    /// Where the backup started and ended in the WAL.
    pub(crate) start: Lsn,
    pub(crate) stop: Lsn,
    /// WAL files to add under `pg_wal/`: the backup's segments and the
    /// timeline history files present.
    pub(crate) wal: Vec<String>,
}

/// A backup in progress on the server: the session that started it
/// (closing it aborts the backup and drops the slot).
pub(crate) struct Session {
    rt: Handle,
    client: tokio_postgres::Client,
    what: String,
    seg_size: u64,
    data_dir: PathBuf,
    pub(crate) start: Lsn,
}

/// Runs `fut` on `rt` within `secs`.
fn within<T>(
    rt: &Handle,
    secs: u64,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> anyhow::Result<T> {
    match rt.block_on(tokio::time::timeout(Duration::from_secs(secs), fut)) {
        Ok(r) => r.map_err(|e| anyhow!("{what}: {}", explain(&e))),
        Err(_) => bail!("{what}: no answer within {secs} s"),
    }
}

/// A server error in its own words, with what to do for the common ones.
pub(crate) fn explain(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // Connection-level: refused, reset, TLS, timeout.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        return s;
    };
    let hint = match *db.code() {
        SqlState::INVALID_PASSWORD => " (check [source.postgres] user and password_file)",
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            " (pg_hba.conf has no entry for this role and address)"
        }
        SqlState::INSUFFICIENT_PRIVILEGE => {
            " (the role needs REPLICATION, pg_read_all_settings and EXECUTE on pg_backup_start and pg_backup_stop: docs/databases.md)"
        }
        _ => "",
    };
    format!("{} ({}){hint}", db.message(), db.code().code())
}

impl Session {
    /// Logs in to the server of a source whose data directory is
    /// `data_dir`, checks that it can be backed up from here, reserves
    /// the WAL and starts the backup.
    pub(crate) fn start(
        rt: &Handle,
        cfg: &PostgresConfig,
        data_dir: &Path,
        label: &str,
    ) -> anyhow::Result<Session> {
        let what = format!("PostgreSQL at {}:{}", cfg.host, cfg.port);
        let mut pc = tokio_postgres::Config::new();
        pc.host(&cfg.host)
            .port(cfg.port)
            .user(&cfg.user)
            .dbname(&cfg.dbname)
            .application_name("refuge-agent")
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs));
        if let Some(f) = &cfg.password_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("[source.postgres] password_file {}", f.display()))?;
            pc.password(text.lines().next().unwrap_or("").as_bytes());
        }
        let (client, conn) = within(
            rt,
            cfg.connect_timeout_secs + 1,
            &format!("cannot log in to {what} as {}", cfg.user),
            pc.connect(tokio_postgres::NoTls),
        )?;
        rt.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        let mut s = Session {
            rt: rt.clone(),
            client,
            what,
            seg_size: 0,
            data_dir: data_dir.to_path_buf(),
            start: Lsn(0),
        };
        s.check(data_dir)?;
        // The slot keeps every WAL segment from here until the session
        // ends, so the backup's range is still in pg_wal at its stop.
        let slot = format!("refuge_{:016x}", crate::clock::random_u64());
        s.query_one(
            "reserving the WAL (a temporary replication slot)",
            "SELECT pg_create_physical_replication_slot($1, true, true)::text",
            &[&slot],
        )?;
        let row = s.query_one(
            "starting the backup (pg_backup_start)",
            "SELECT pg_backup_start($1, true)::text",
            &[&label],
        )?;
        s.start = Lsn::parse(row.get::<_, &str>(0))?;
        Ok(s)
    }

    fn query_one(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> anyhow::Result<tokio_postgres::Row> {
        within(
            &self.rt,
            600,
            &format!("{} {what}", self.what),
            self.client.query_one(sql, params),
        )
    }

    /// Refuses a server this agent cannot make a consistent copy of.
    fn check(&mut self, data_dir: &Path) -> anyhow::Result<()> {
        let row = self.query_one(
            "reading its settings",
            "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(), \
             current_setting('data_directory'), current_setting('wal_level'), \
             (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
             (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))",
            &[],
        )?;
        let version: i32 = row.get(0);
        let standby: bool = row.get(1);
        let server_dir: &str = row.get(2);
        let wal_level: &str = row.get(3);
        let seg_size: i64 = row.get(4);
        let tablespaces: i64 = row.get(5);
        if version < MIN_SERVER_VERSION {
            bail!(
                "{} runs version {}.{}; refuge backs up PostgreSQL 15 and later",
                self.what,
                version / 10000,
                version % 10000
            );
        }
        if standby {
            bail!(
                "{} is a standby (in recovery); back up the primary: point [source.postgres] at it",
                self.what
            );
        }
        if wal_level == "minimal" {
            bail!(
                "{} has wal_level = minimal, which allows no online backup; set wal_level = replica and restart it",
                self.what
            );
        }
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if !same(Path::new(server_dir), data_dir) {
            bail!(
                "{}'s data directory is {server_dir}, but the source's path is {}: run the agent on the database host with path = the data directory",
                self.what,
                data_dir.display()
            );
        }
        if tablespaces > 0 {
            bail!(
                "{} has {tablespaces} tablespace(s) outside its data directory, which this agent does not back up yet",
                self.what
            );
        }
        if seg_size <= 0 || (0x1_0000_0000 % seg_size) != 0 {
            bail!("{} reports a WAL segment size of {seg_size}", self.what);
        }
        self.seg_size = seg_size as u64;
        Ok(())
    }

    /// Ends the backup (`pg_backup_stop`, which also switches to a new WAL
    /// segment, so the last one the backup needs is complete) and lists
    /// the WAL the copy needs.
    pub(crate) fn stop(self) -> anyhow::Result<Stopped> {
        let row = self.query_one(
            "ending the backup (pg_backup_stop)",
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
            &[],
        )?;
        let stop = Lsn::parse(row.get::<_, &str>(0))?;
        let label: String = row.get(1);
        let tablespace_map: Option<String> = row.get(2);
        let timeline: u32 = label_field(&label, "START TIMELINE")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow!("the server's backup_label has no START TIMELINE"))?;
        let mut wal = segment_range(timeline, self.start, stop, self.seg_size);
        let first = &wal[0];
        if !label.contains(first.as_str()) {
            bail!(
                "the server's backup_label does not name the WAL segment {first} the backup started in"
            );
        }
        let pg_wal = self.data_dir.join("pg_wal");
        for seg in &wal {
            let p = pg_wal.join(seg);
            let len = std::fs::metadata(&p)
                .with_context(|| format!("WAL segment {} of the backup", p.display()))?
                .len();
            if len != self.seg_size {
                bail!(
                    "WAL segment {} is {len} bytes, not {}",
                    p.display(),
                    self.seg_size
                );
            }
        }
        for ent in std::fs::read_dir(&pg_wal).with_context(|| format!("{}", pg_wal.display()))? {
            let name = ent?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".history") {
                wal.push(name);
            }
        }
        wal.sort();
        Ok(Stopped {
            label,
            tablespace_map: tablespace_map.unwrap_or_default(),
            start: self.start,
            stop,
            wal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_leaves_out_what_the_server_rebuilds_and_keeps_the_rest() {
        for p in [
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "pg_wal/000000010000000000000001",
            "pg_wal/00000002.history",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_stat_tmp/global.stat",
            "pg_replslot/refuge_1",
            "pg_subtrans/0000",
            "global/pg_internal.init",
            "base/1/pg_internal.init.1234",
            "base/pgsql_tmp/pgsql_tmp1.0",
        ] {
            assert!(skip(p.as_bytes()), "{p} should be skipped");
        }
        for p in [
            "PG_VERSION",
            "base/1/1259",
            "global/pg_control",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_xact/0000",
            "postgresql.auto.conf",
            "log/postgresql.log",
            "base/1/backup_label",
        ] {
            assert!(!skip(p.as_bytes()), "{p} should be kept");
        }
    }

    #[test]
    fn lsns_and_segment_names_follow_the_server() {
        assert_eq!(Lsn::parse("0/2000028").unwrap(), Lsn(0x2000028));
        assert_eq!(Lsn::parse("16/B374D848").unwrap(), Lsn(0x16_B374_D848));
        for bad in ["", "12", "x/1", "1/100000000"] {
            assert!(Lsn::parse(bad).is_err(), "{bad}");
        }
        let mib16 = 16 << 20;
        assert_eq!(
            segment_name(1, Lsn(0x2000028), mib16),
            "000000010000000000000002"
        );
        // pg_walfile_name('16/B374D848') on 16 MiB segments.
        assert_eq!(
            segment_name(1, Lsn(0x16_B374_D848), mib16),
            "0000000100000016000000B3"
        );
        assert_eq!(
            segment_range(2, Lsn(0xFF00_0000), Lsn(0x1_0100_0000), mib16),
            [
                "0000000200000000000000FF",
                "000000020000000100000000",
                "000000020000000100000001"
            ]
        );
        // 1 GiB segments: four per 4 GiB.
        assert_eq!(
            segment_name(1, Lsn(0x1_C000_0000), 1 << 30),
            "000000010000000100000003"
        );
    }

    #[test]
    fn label_fields_are_read() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n";
        assert_eq!(label_field(label, "START TIMELINE"), Some("1"));
        assert_eq!(label_field(label, "LABEL"), None);
    }
}
