//! The database half of a drill of a `postgres` source: start the
//! restored cluster in the drill's scratch space, see it finish recovery
//! and answer, run the configured checks, and stop it.
//!
//! The server is the `postgres` binary of the cluster's own `PG_VERSION`,
//! run as the data directory's owner (the restore keeps owners when it
//! runs as root), listening on nothing but a Unix socket in the scratch
//! space, with a trust `hba_file` of its own, archiving off and no
//! external PID file, so a drill can neither reach the network, nor ship
//! WAL to the production archive, nor clash with a server on the same
//! host. Debian keeps `postgresql.conf` outside the data directory; such a
//! cluster starts with an empty one plus the drill's `settings`.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_postgres::error::SqlState;

use crate::config::PostgresDrillConfig;
use crate::drill_db::{
    AmcheckOutcome, DatabaseCheck, MAX_LOG, QueryOutcome, Server, TableRows, did_not_start,
    open_to_owner, owner, stop_checked, tail,
};

/// The socket's number (its file name); nothing listens on TCP.
const PORT: u16 = 5432;

/// The server binaries for a data directory: `bin_dir`, or Debian's
/// `/usr/lib/postgresql/MAJOR/bin` for its `PG_VERSION`.
fn binaries(data: &Path, cfg: &PostgresDrillConfig) -> Result<(String, PathBuf), String> {
    let version = fs::read_to_string(data.join("PG_VERSION"))
        .map_err(|e| format!("the restored data has no readable PG_VERSION: {e}"))?
        .trim()
        .to_string();
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "the restored PG_VERSION is not a version: {version:?}"
        ));
    }
    let bin = cfg
        .bin_dir
        .clone()
        .unwrap_or_else(|| Path::new("/usr/lib/postgresql").join(&version).join("bin"));
    if !bin.join("postgres").is_file() {
        return Err(format!(
            "no PostgreSQL {version} server at {} (install the postgresql-{version} package \
             on the drill host, or set bin_dir in [drill.postgres.SOURCE])",
            bin.join("postgres").display()
        ));
    }
    Ok((version, bin))
}

/// `schema.table` with each part quoted as an identifier, as written.
fn table_ident(t: &str) -> Result<String, String> {
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err("not a table name (`table` or `schema.table`)".into());
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join("."))
}

/// Starts the cluster restored at `data` (inside the drill's `scratch`),
/// checks it as `cfg` says within `timeout`, and stops it.
pub(crate) fn check(
    rt: &Handle,
    data: &Path,
    scratch: &Path,
    cfg: &PostgresDrillConfig,
    timeout: Duration,
) -> DatabaseCheck {
    let mut out = DatabaseCheck {
        engine: "postgres",
        ..Default::default()
    };
    let log = scratch.join("run").join("postgres.log");
    if let Err(e) = run(rt, data, scratch, cfg, timeout, &mut out) {
        out.error = Some(e);
    }
    out.finish(&log)
}

fn run(
    rt: &Handle,
    data: &Path,
    scratch: &Path,
    cfg: &PostgresDrillConfig,
    timeout: Duration,
    out: &mut DatabaseCheck,
) -> Result<(), String> {
    let data = &std::path::absolute(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let scratch =
        &std::path::absolute(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let (version, bin) = binaries(data, cfg)?;
    out.version = version;
    let (uid, gid) = owner(data)?;
    // The server's own directory: socket, lock file, hba, log.
    let run_dir = scratch.join("run");
    fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let hba = run_dir.join("pg_hba.conf");
    let ident = run_dir.join("pg_ident.conf");
    fs::write(&hba, "local all all trust\n")
        .and_then(|()| fs::write(&ident, ""))
        .map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let mut conf_file = None;
    if !data.join("postgresql.conf").exists() {
        let c = run_dir.join("postgresql.conf");
        fs::write(&c, "").map_err(|e| format!("{}: {e}", c.display()))?;
        conf_file = Some(c);
    }
    let owned: Vec<&Path> = [run_dir.as_path(), &hba, &ident]
        .into_iter()
        .chain(conf_file.as_deref())
        .collect();
    open_to_owner(scratch, &owned, uid, gid)?;
    let log = fs::File::create(run_dir.join("postgres.log"))
        .map_err(|e| format!("cannot make the server's log: {e}"))?;
    if rustix::process::geteuid().is_root() {
        let _ = std::os::unix::fs::fchown(&log, Some(uid), Some(gid));
    }
    let mut settings: Vec<(String, String)> = vec![
        ("listen_addresses".into(), String::new()),
        ("port".into(), PORT.to_string()),
        (
            "unix_socket_directories".into(),
            run_dir.display().to_string(),
        ),
        ("hba_file".into(), hba.display().to_string()),
        ("ident_file".into(), ident.display().to_string()),
        ("external_pid_file".into(), String::new()),
        ("archive_mode".into(), "off".into()),
        ("logging_collector".into(), "off".into()),
        ("ssl".into(), "off".into()),
    ];
    if let Some(c) = &conf_file {
        settings.push(("config_file".into(), c.display().to_string()));
    }
    for (k, v) in &cfg.settings {
        settings.retain(|(n, _)| n != k);
        settings.push((k.clone(), v.clone()));
    }
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D").arg(data);
    for (k, v) in &settings {
        cmd.arg("-c").arg(format!("{k}={v}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0);
    if rustix::process::geteuid().is_root() {
        cmd.uid(uid).gid(gid);
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.join("postgres").display()))?;
    let mut server = Server {
        child: Some(child),
        stop_secs: 0.0,
        signal: rustix::process::Signal::INT,
    };

    // Connect as soon as it accepts: 57P03 while it recovers, no socket
    // before it listens.
    let mut pc = tokio_postgres::Config::new();
    pc.host_path(&run_dir)
        .port(PORT)
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .application_name("refuge-drill")
        .connect_timeout(Duration::from_secs(5));
    let client = loop {
        if let Some(status) = server
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            return Err(did_not_start(
                status,
                &run_dir.join("postgres.log"),
                uid,
                "cluster",
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the restored cluster did not accept connections within {} s (the check timeout)",
                timeout.as_secs()
            ));
        }
        let attempt = rt.block_on(tokio::time::timeout(
            left,
            pc.connect(tokio_postgres::NoTls),
        ));
        match attempt {
            Ok(Ok((client, conn))) => {
                rt.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("drill: PostgreSQL connection ended: {e}");
                    }
                });
                break client;
            }
            Ok(Err(e)) if still_starting(&e) => std::thread::sleep(Duration::from_millis(50)),
            Ok(Err(e)) => {
                return Err(format!(
                    "the restored cluster refused the drill as {} in {}: {}",
                    cfg.user,
                    cfg.dbname,
                    crate::postgres::explain(&e)
                ));
            }
            Err(_) => continue,
        }
    };
    let connected = started.elapsed().as_secs_f64();
    let left = || deadline.saturating_duration_since(Instant::now());
    let first = rt.block_on(tokio::time::timeout(
        left(),
        client.query_one("SELECT current_setting('server_version')", &[]),
    ));
    match first {
        Ok(Ok(row)) => out.version = row.get(0),
        Ok(Err(e)) => return Err(format!("first query: {}", crate::postgres::explain(&e))),
        Err(_) => return Err("first query: no answer within the check timeout".into()),
    }
    out.first_query_secs = started.elapsed().as_secs_f64();
    // Archive recovery (a restore with WAL to replay) answers read-only
    // queries before it ends: recovery is over once the server says so.
    let mut polls = 0;
    loop {
        let r = rt.block_on(tokio::time::timeout(
            left(),
            client.query_one("SELECT pg_is_in_recovery()", &[]),
        ));
        match r {
            Ok(Ok(row)) if !row.get::<_, bool>(0) => break,
            Ok(Ok(_)) => std::thread::sleep(Duration::from_millis(20)),
            Ok(Err(e)) => return Err(format!("recovery: {}", crate::postgres::explain(&e))),
            Err(_) => {
                return Err(format!(
                    "the restored cluster was still recovering at the check timeout ({} s)",
                    timeout.as_secs()
                ));
            }
        }
        polls += 1;
    }
    out.recovery_secs = match polls {
        0 => connected,
        _ => started.elapsed().as_secs_f64(),
    };

    let queries = if cfg.queries.is_empty() {
        vec!["SELECT 1".to_string()]
    } else {
        cfg.queries.clone()
    };
    for sql in queries {
        let t = Instant::now();
        let r = rt.block_on(tokio::time::timeout(left(), client.simple_query(&sql)));
        let (value, error) = match r {
            Ok(Ok(msgs)) => (
                msgs.iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).map(str::to_string))
                        }
                        _ => None,
                    })
                    .flatten(),
                None,
            ),
            Ok(Err(e)) => (None, Some(crate::postgres::explain(&e))),
            Err(_) => (None, Some("no answer within the check timeout".to_string())),
        };
        out.queries.push(QueryOutcome {
            sql,
            value,
            error,
            secs: t.elapsed().as_secs_f64(),
        });
    }
    for table in &cfg.tables {
        let (rows, error) = match table_ident(table) {
            Err(e) => (None, Some(e)),
            Ok(ident) => {
                let sql = format!("SELECT count(*) FROM {ident}");
                match rt.block_on(tokio::time::timeout(left(), client.query_one(&sql, &[]))) {
                    Ok(Ok(row)) => (Some(row.get::<_, i64>(0)), None),
                    Ok(Err(e)) => (None, Some(crate::postgres::explain(&e))),
                    Err(_) => (None, Some("no answer within the check timeout".to_string())),
                }
            }
        };
        out.tables.push(TableRows {
            table: table.clone(),
            rows,
            error,
        });
    }
    drop(client);
    if cfg.amcheck {
        out.amcheck = Some(amcheck(&bin, &run_dir, cfg, left()));
    }
    stop_checked(&mut server, out, started, timeout, "cluster")
}

/// The server is up but still recovering, or not listening yet.
fn still_starting(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => *db.code() == SqlState::CANNOT_CONNECT_NOW,
        None => {
            // No socket file yet, or nobody accepting on it.
            let text = format!("{e:?}");
            text.contains("NotFound") || text.contains("ConnectionRefused")
        }
    }
}

/// `pg_amcheck --all --heapallindexed` through the drill's socket
/// (installing the amcheck extension in the scratch cluster).
fn amcheck(
    bin: &Path,
    run_dir: &Path,
    cfg: &PostgresDrillConfig,
    left: Duration,
) -> AmcheckOutcome {
    let started = Instant::now();
    let mut o = AmcheckOutcome {
        passed: false,
        exit_code: -1,
        secs: 0.0,
        output: String::new(),
    };
    let out_path = run_dir.join("pg_amcheck.out");
    let spawned = fs::File::create(&out_path).and_then(|f| {
        Command::new(bin.join("pg_amcheck"))
            .args([
                "--all",
                "--heapallindexed",
                "--install-missing",
                "--no-password",
            ])
            .arg("-h")
            .arg(run_dir)
            .args(["-p", &PORT.to_string(), "-U", &cfg.user, "-d", &cfg.dbname])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0)
            .spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            o.output = format!("cannot start {}: {e}", bin.join("pg_amcheck").display());
            return o;
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() < left => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    o.secs = started.elapsed().as_secs_f64();
    o.output = tail(&out_path, MAX_LOG);
    match status {
        Some(s) => {
            o.exit_code = s.code().unwrap_or(-1);
            o.passed = s.success();
        }
        None => o
            .output
            .push_str("\n[refuge: pg_amcheck killed at the check timeout]"),
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_quoted_as_written_and_nonsense_is_refused() {
        assert_eq!(
            table_ident("public.pgbench_accounts").unwrap(),
            "\"public\".\"pgbench_accounts\""
        );
        assert_eq!(table_ident("marks").unwrap(), "\"marks\"");
        assert_eq!(table_ident("a\"b").unwrap(), "\"a\"\"b\"");
        for bad in ["", "a..b", "a.b.c", ".a", "a."] {
            assert!(table_ident(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_data_directory_without_a_version_or_server_is_refused_clearly() {
        let d = tempfile::tempdir().unwrap();
        let cfg = PostgresDrillConfig::default();
        assert!(binaries(d.path(), &cfg).unwrap_err().contains("PG_VERSION"));
        fs::write(d.path().join("PG_VERSION"), "15; rm -rf /\n").unwrap();
        assert!(
            binaries(d.path(), &cfg)
                .unwrap_err()
                .contains("not a version")
        );
        fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        let cfg = PostgresDrillConfig {
            bin_dir: Some(d.path().join("nowhere")),
            ..Default::default()
        };
        let e = binaries(d.path(), &cfg).unwrap_err();
        assert!(
            e.contains("no PostgreSQL 15 server") && e.contains("bin_dir"),
            "{e}"
        );
    }

    #[test]
    fn problems_are_named_in_order() {
        let mut c = DatabaseCheck::failed("postgres", "did not start".into());
        assert_eq!(c.first_problem(), "did not start");
        c.error = None;
        c.tables.push(TableRows {
            table: "t".into(),
            rows: None,
            error: Some("relation \"t\" does not exist".into()),
        });
        assert!(c.first_problem().starts_with("table t: relation"));
    }
}
