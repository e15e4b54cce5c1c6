//! `postgres` sources against a real PostgreSQL server (Debian's
//! packages): a backup taken under a pgbench load restores to a cluster
//! that starts, passes `pg_amcheck`, keeps pgbench's balances in step and
//! has every transaction committed before the backup; the next backup
//! sends only what changed; servers that cannot be backed up get a clear
//! error and no snapshot.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use refuge_tests::postgres::{PASSWORD, Postgres, postgres_dir};
use refuge_tests::{Cluster, run};

/// An agent config with one `postgres` source `pg` for `pg`'s data
/// directory (or `path`), logging in with `password`.
fn agent(c: &Cluster, pg: &Postgres, path: Option<&Path>, password: &str) -> std::path::PathBuf {
    let cfg = c.default_agent(&[]);
    let pass = c.path().join("pg.pass");
    fs::write(&pass, format!("{password}\n")).unwrap();
    let text = fs::read_to_string(&cfg).unwrap();
    let src = format!(
        "\n[[source]]\nname = \"pg\"\npath = \"{}\"\nkind = \"postgres\"\n{}",
        path.unwrap_or(&pg.data).display(),
        pg.source_table(&pass)
    );
    fs::write(&cfg, format!("{text}{src}")).unwrap();
    cfg
}

fn backup_json(c: &Cluster, cfg: &Path) -> serde_json::Value {
    let v = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup", "--json"],
    )
    .ok()
    .json();
    v.as_array().unwrap()[0].clone()
}

/// Sums pgbench's TPC-B-like transactions keep equal: every one adds the
/// same delta to an account, a teller, a branch and the history.
fn balances(pg: &Postgres) -> Vec<String> {
    pg.sql(
        "postgres",
        "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), \
         (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), \
         (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), \
         (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    )
    .split('|')
    .map(str::to_string)
    .collect()
}

/// Inserts 1, 2, 3, ... into `marks`, one transaction each, until told to
/// stop; `acked` is the last id whose commit the server acknowledged.
fn writer(
    pg: &Postgres,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let psql = refuge_tests::postgres::bin_dir().join("psql");
    let conn = pg.conn_args();
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let o = std::process::Command::new(&psql)
                .args(&conn)
                .args(["-d", "postgres", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(format!("INSERT INTO marks VALUES ({i})"))
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            acked.store(i, Ordering::SeqCst);
        }
    })
}

#[test]
fn a_postgres_backup_under_load_restores_to_a_cluster_that_starts_checks_clean_and_has_every_commit()
 {
    let c = Cluster::start();
    let dir = postgres_dir();
    let pg = Postgres::init(dir.path(), "main");
    pg.run_tool("pgbench", &["-i", "-q", "-s", "4", "postgres"]);
    pg.sql(
        "postgres",
        "CREATE TABLE marks (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    );
    let cfg = agent(&c, &pg, None, PASSWORD);

    // The backup runs while pgbench and the writer commit transactions.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut load = pg.pgbench_load(2, 120);
    let w = writer(&pg, stop.clone(), acked.clone());
    refuge_tests::wait_for(
        "the writer to commit",
        || acked.load(Ordering::SeqCst) >= 20,
        || pg.log(),
    );
    let before = acked.load(Ordering::SeqCst);
    let first = backup_json(&c, &cfg);
    let after = acked.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let _ = load.kill();
    let _ = load.wait();
    let report = &first["postgres"];
    assert!(report["wal_files"].as_u64().unwrap() >= 1, "{first:#}");
    assert!(
        report["start_lsn"].as_str().unwrap().contains('/'),
        "{first:#}"
    );
    assert_eq!(first["warning_count"], 0, "{first:#}");
    let snaps = c.snapshots(&cfg);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["kind"], "postgres", "{:#}", snaps[0]);

    // Restored and started: recovery replays the WAL the snapshot carries.
    let target = dir.path().join("restored");
    c.restore_latest(&cfg, &target).ok();
    assert!(target.join("backup_label").exists());
    assert!(!target.join("postmaster.pid").exists());
    let mut restored = Postgres::adopt(target.clone(), dir.path());
    restored.start();
    assert!(
        restored.log().contains("consistent recovery state reached")
            || restored.log().contains("redo done"),
        "{}",
        restored.log()
    );
    // Every commit acknowledged before the backup started is there, none
    // acknowledged after it ended, and no gap.
    let got: Vec<u64> = restored
        .sql(
            "postgres",
            "SELECT count(*), coalesce(max(id), 0) FROM marks",
        )
        .split('|')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(got[0], got[1], "a gap in marks: {got:?}");
    assert!(
        got[1] >= before && got[1] <= after,
        "marks up to {}, committed before the backup {before}, by its end {after}",
        got[1]
    );
    let b = balances(&restored);
    assert!(
        b.iter().all(|v| *v == b[0]),
        "pgbench balances differ: {b:?}"
    );
    assert_ne!(
        restored.sql("postgres", "SELECT count(*) FROM pgbench_history"),
        "0"
    );
    // Heap and every B-tree index, in every database.
    restored.run_tool(
        "pg_amcheck",
        &[
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--no-dependent-toast",
        ],
    );
    restored.stop();

    // Unchanged relation files are not read again, and of a file with a
    // few changed pages only the chunks holding them are sent. The base:
    // a backup after VACUUM FREEZE, so the load's hint bits and
    // visibility changes are in it, not in the delta measured.
    pg.sql("postgres", "VACUUM (FREEZE)");
    pg.sql("postgres", "CHECKPOINT");
    backup_json(&c, &cfg);
    pg.sql(
        "postgres",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 50",
    );
    let third = backup_json(&c, &cfg);
    let num = |k: &str| third[k].as_u64().unwrap();
    let wal = third["postgres"]["wal_files"].as_u64().unwrap() * (16 << 20);
    assert!(num("files_unchanged") > 100, "{third:#}");
    assert!(
        num("bytes_unchanged_blocks") > 40 << 20,
        "the accounts heap was not compared block by block: {third:#}"
    );
    assert!(
        num("bytes_new") <= wal + (4 << 20),
        "new bytes beyond the WAL ({wal}): {third:#}"
    );
    assert_eq!(c.snapshots(&cfg).len(), 3);
}

#[test]
fn a_postgres_source_that_cannot_be_backed_up_fails_clearly_and_commits_nothing() {
    let c = Cluster::start();
    let dir = postgres_dir();
    let mut pg = Postgres::init(dir.path(), "main");
    let fails = |cfg: &Path, needle: &str| {
        run(
            "refuge-agent",
            c.path(),
            &["-c", cfg.to_str().unwrap(), "backup"],
        )
        .fails(1, needle);
        assert!(c.snapshots(cfg).is_empty(), "a snapshot was committed");
    };

    // Wrong password.
    fails(
        &agent(&c, &pg, None, "not-the-password"),
        "password authentication failed",
    );
    // A path that is not the server's data directory.
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fails(
        &agent(&c, &pg, Some(&elsewhere), PASSWORD),
        "data directory is",
    );
    // A role without the rights: no REPLICATION.
    pg.sql("postgres", "ALTER ROLE refuge NOREPLICATION");
    fails(&agent(&c, &pg, None, PASSWORD), "REPLICATION");
    pg.sql("postgres", "ALTER ROLE refuge REPLICATION");
    // A standby.
    let standby = pg.standby(dir.path(), "standby");
    fails(&agent(&c, &standby, None, PASSWORD), "is a standby");
    drop(standby);
    // Nothing was left behind on the server: no backup running, no slot.
    assert_eq!(
        pg.sql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    // The server down.
    let cfg = agent(&c, &pg, None, PASSWORD);
    pg.stop();
    fails(&cfg, "cannot log in to PostgreSQL at 127.0.0.1");
    // Up again, the same config backs up.
    pg.start();
    run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup"],
    )
    .ok();
    assert_eq!(c.snapshots(&cfg).len(), 1);
}
