//! The database half of a drill of a `mariadb` source: start the restored
//! data directory with `mariadbd --no-defaults` as its owner, on a Unix
//! socket in the scratch space with no network and no grant tables (only
//! the drill can reach it, as any user), see it answer, run the configured
//! queries, row counts and `CHECK TABLE`s with the `mariadb` client, and
//! stop it (SIGTERM: a clean shutdown).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::MariadbDrillConfig;
use crate::drill_db::{
    DatabaseCheck, QueryOutcome, Server, TableRows, did_not_start, open_to_owner, owner,
    stop_checked,
};

/// `db.table` as quoted identifiers, as written.
fn table_ident(t: &str) -> Result<String, String> {
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err("not a table name (`database.table`)".into());
    }
    Ok(parts
        .iter()
        .map(|p| format!("`{}`", p.replace('`', "``")))
        .collect::<Vec<_>>()
        .join("."))
}

/// One statement through the client: the first column of its first row,
/// or its error.
fn client(cfg: &MariadbDrillConfig, socket: &Path, sql: &str) -> Result<Option<String>, String> {
    // --no-defaults must come first.
    let o = Command::new(&cfg.client)
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args(["-N", "-B", "-e", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cfg.client.display()))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .map(|l| l.split('\t').next().unwrap_or("").to_string()))
}

/// Starts the data directory restored at `data` (inside the drill's
/// `scratch`), checks it as `cfg` says within `timeout`, and stops it.
pub(crate) fn check(
    data: &Path,
    scratch: &Path,
    cfg: &MariadbDrillConfig,
    timeout: Duration,
) -> DatabaseCheck {
    let mut out = DatabaseCheck {
        engine: "mariadb",
        ..Default::default()
    };
    let log = scratch.join("run").join("mariadbd.err");
    if let Err(e) = run(data, scratch, cfg, timeout, &mut out) {
        out.error = Some(e);
    }
    out.finish(&log)
}

fn run(
    data: &Path,
    scratch: &Path,
    cfg: &MariadbDrillConfig,
    timeout: Duration,
    out: &mut DatabaseCheck,
) -> Result<(), String> {
    let data = &std::path::absolute(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let scratch =
        &std::path::absolute(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    if !data.join("mysql").is_dir() {
        return Err(
            "the restored data has no mysql system database: not a MariaDB data directory".into(),
        );
    }
    let (uid, gid) = owner(data)?;
    let run_dir = scratch.join("run");
    fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let log_path = run_dir.join("mariadbd.err");
    fs::write(&log_path, "").map_err(|e| format!("{}: {e}", log_path.display()))?;
    open_to_owner(scratch, &[run_dir.as_path(), &log_path], uid, gid)?;
    let socket = run_dir.join("mysqld.sock");
    let mut cmd = Command::new(&cfg.mariadbd);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!(
            "--pid-file={}",
            run_dir.join("mysqld.pid").display()
        ))
        .arg(format!("--log-error={}", log_path.display()))
        .args(["--skip-networking", "--skip-grant-tables", "--skip-log-bin"]);
    for (k, v) in &cfg.settings {
        cmd.arg(format!("--{}={v}", k.replace('_', "-")));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if rustix::process::geteuid().is_root() {
        cmd.uid(uid).gid(gid);
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no MariaDB server at {} (install mariadb-server on the drill host, or set mariadbd in [drill.mariadb.SOURCE])",
            cfg.mariadbd.display()
        ),
        _ => format!("cannot start {}: {e}", cfg.mariadbd.display()),
    })?;
    let mut server = Server {
        child: Some(child),
        stop_secs: 0.0,
        signal: rustix::process::Signal::TERM,
    };
    // InnoDB's crash recovery runs before the socket accepts.
    loop {
        if let Some(status) = server
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            return Err(did_not_start(status, &log_path, uid, "server"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the restored server did not accept connections within {} s (the check timeout)",
                timeout.as_secs()
            ));
        }
        if socket.exists() {
            match client(cfg, &socket, "SELECT 1") {
                Ok(_) => break,
                // Not listening yet (ERROR 2002) or going away (2013).
                Err(e) if e.contains("ERROR 2002") || e.contains("ERROR 2013") => {}
                Err(e) => return Err(format!("the restored server refused the drill: {e}")),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out.recovery_secs = started.elapsed().as_secs_f64();
    out.version = client(cfg, &socket, "SELECT VERSION()")
        .map_err(|e| format!("first query: {e}"))?
        .unwrap_or_default();
    out.first_query_secs = started.elapsed().as_secs_f64();
    let queries = if cfg.queries.is_empty() {
        vec!["SELECT 1".to_string()]
    } else {
        cfg.queries.clone()
    };
    for sql in queries {
        let t = Instant::now();
        let (value, error) = match client(cfg, &socket, &sql) {
            Ok(v) => (v, None),
            Err(e) => (None, Some(e)),
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
            Ok(ident) => match client(cfg, &socket, &format!("SELECT COUNT(*) FROM {ident}")) {
                Err(e) => (None, Some(e)),
                Ok(n) => {
                    let rows = n.and_then(|n| n.parse::<i64>().ok());
                    // The last column of CHECK TABLE's last row: OK, or
                    // what is wrong.
                    let checked = Command::new(&cfg.client)
                        .arg("--no-defaults")
                        .arg(format!("--socket={}", socket.display()))
                        .args(["-N", "-B", "-e"])
                        .arg(format!("CHECK TABLE {ident}"))
                        .stdin(Stdio::null())
                        .output();
                    let verdict = match checked {
                        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .last()
                            .and_then(|l| l.rsplit('\t').next())
                            .unwrap_or("")
                            .to_string(),
                        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        Err(e) => e.to_string(),
                    };
                    match verdict.as_str() {
                        "OK" => (rows, None),
                        v => (rows, Some(format!("CHECK TABLE: {v}"))),
                    }
                }
            },
        };
        out.tables.push(TableRows {
            table: table.clone(),
            rows,
            error,
        });
    }
    stop_checked(&mut server, out, started, timeout, "server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_quoted_as_written_and_nonsense_is_refused() {
        assert_eq!(table_ident("app.marks").unwrap(), "`app`.`marks`");
        assert_eq!(table_ident("a`b.c").unwrap(), "`a``b`.`c`");
        for bad in ["", "marks", "a..b", "a.b.c", ".a", "a."] {
            assert!(table_ident(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_that_is_not_a_data_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = check(
            d.path(),
            d.path(),
            &MariadbDrillConfig::default(),
            Duration::from_secs(5),
        );
        assert!(!c.passed);
        assert!(c.error.unwrap().contains("not a MariaDB data directory"));
    }
}
