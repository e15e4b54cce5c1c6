//! `postgres` sources against a real PostgreSQL server (Debian's
//! packages): a backup taken under a pgbench load restores to a cluster
//! that starts, passes `pg_amcheck`, keeps pgbench's balances in step and
//! has every transaction committed before the backup; the next backup
//! sends only what changed; servers that cannot be backed up get a clear
//! error and no snapshot; a drill starts the restored cluster, checks it
//! and reports its timings.

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

/// `refuge drill --json` of the `pg` source with scratch space in `dir`
/// and `extra` arguments.
fn drill(c: &Cluster, cfg: &Path, scratch: &Path, extra: &[&str]) -> refuge_tests::Run {
    let reports = c.path().join("reports");
    let mut args = vec![
        "-c",
        cfg.to_str().unwrap(),
        "drill",
        "--json",
        "--source",
        "pg",
        "--report-dir",
        reports.to_str().unwrap(),
        "--scratch",
        scratch.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run("refuge", c.path(), &args)
}

/// The node's newest drill record.
fn newest_drill(c: &Cluster, cfg: &Path) -> serde_json::Value {
    let hist = run(
        "refuge",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "drills", "--json"],
    )
    .ok()
    .json();
    hist.as_array()
        .unwrap()
        .iter()
        .max_by_key(|d| d["seq"].as_u64())
        .unwrap()
        .clone()
}

/// `cfg` with `[drill.postgres.pg]` set to `table`.
fn with_drill(c: &Cluster, cfg: &Path, name: &str, table: &str) -> std::path::PathBuf {
    let text = fs::read_to_string(cfg).unwrap();
    let out = c.path().join(name);
    fs::write(&out, format!("{text}\n[drill.postgres.pg]\n{table}")).unwrap();
    out
}

#[test]
fn a_drill_of_a_postgres_source_starts_the_restored_cluster_checks_it_and_reports_its_timings() {
    let c = Cluster::start();
    let dir = postgres_dir();
    let pg = Postgres::init(dir.path(), "main");
    pg.run_tool("pgbench", &["-i", "-q", "-s", "2", "postgres"]);
    pg.sql(
        "postgres",
        "CREATE TABLE marks (id bigint PRIMARY KEY); \
         INSERT INTO marks SELECT generate_series(1, 123)",
    );
    let base = agent(&c, &pg, None, PASSWORD);
    backup_json(&c, &base);
    let scratch = dir.path().join("scratch");

    // Queries, row counts and amcheck in the started copy; the source
    // server keeps running beside it on its own socket.
    let cfg = with_drill(
        &c,
        &base,
        "checks.toml",
        "queries = [\"SELECT max(id) FROM marks\", \"SELECT count(*) FROM pgbench_branches\"]\n\
         tables = [\"public.pgbench_accounts\", \"marks\"]\namcheck = true\n",
    );
    let r = drill(&c, &cfg, &scratch, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let rep = r.json();
    let s = &rep["sources"][0];
    assert_eq!(s["kind"], "postgres");
    let db = &s["database"];
    assert_eq!(db["passed"], true, "{db:#}");
    assert!(db["version"].as_str().unwrap().starts_with("15"), "{db:#}");
    let rec = db["recovery_secs"].as_f64().unwrap();
    let first = db["first_query_secs"].as_f64().unwrap();
    assert!(rec > 0.0 && first > 0.0, "{db:#}");
    assert_eq!(db["queries"][0]["value"], "123");
    assert_eq!(db["queries"][1]["value"], "2");
    assert_eq!(db["tables"][0]["rows"], 200000);
    assert_eq!(db["tables"][1]["rows"], 123);
    assert_eq!(db["amcheck"]["passed"], true, "{db:#}");
    assert_eq!(db["log"], "", "the log is kept only for failures");
    // The scratch space is gone, and the source server still answers.
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    assert_eq!(pg.sql("postgres", "SELECT count(*) FROM marks"), "123");
    // The report and the node's history carry the timings.
    let md = fs::read_dir(c.path().join("reports"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "md"))
        .unwrap();
    let md = fs::read_to_string(md.path()).unwrap();
    assert!(md.contains("Database (postgres 15"), "{md}");
    assert!(md.contains("Table `marks`: 123 rows"), "{md}");
    let h = newest_drill(&c, &cfg);
    assert_eq!(h["database"]["passed"], true, "{h:#}");
    assert_eq!(h["database"]["recovery_secs"].as_f64().unwrap(), rec);

    // Without a [drill.postgres.pg] table: SELECT 1 as the default user.
    let r = drill(&c, &base, &scratch, &["--no-record"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(
        r.json()["sources"][0]["database"]["queries"][0]["value"],
        "1"
    );

    // A table that is not there and a query that fails: the drill fails,
    // naming them, after every other check ran.
    let cfg = with_drill(
        &c,
        &base,
        "missing.toml",
        "queries = [\"SELECT 1/0\"]\ntables = [\"public.no_such_table\", \"marks\"]\n",
    );
    let r = drill(&c, &cfg, &scratch, &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let s = &r.json()["sources"][0];
    assert_eq!(s["passed"], false);
    assert_eq!(s["failure_count"], 0, "the files were fine: {s:#}");
    let db = &s["database"];
    assert!(
        db["queries"][0]["error"]
            .as_str()
            .unwrap()
            .contains("division by zero"),
        "{db:#}"
    );
    assert!(
        db["tables"][0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{db:#}"
    );
    assert_eq!(db["tables"][1]["rows"], 123);
    assert!(
        db["log"].as_str().unwrap().contains("division by zero"),
        "{db:#}"
    );
    let h = newest_drill(&c, &cfg);
    assert_eq!(h["passed"], false, "{h:#}");
    assert_eq!(h["database"]["passed"], false);
    assert!(
        h["first_failure"]
            .as_str()
            .unwrap()
            .contains("division by zero"),
        "{h:#}"
    );

    // A server that cannot start: its own words, from its log.
    let cfg = with_drill(
        &c,
        &base,
        "bad-setting.toml",
        "settings = { shared_buffers = \"lots\" }\n",
    );
    let r = drill(&c, &cfg, &scratch, &["--no-record"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let db = &r.json()["sources"][0]["database"];
    assert!(
        db["error"].as_str().unwrap().contains("did not start"),
        "{db:#}"
    );
    assert!(
        db["log"].as_str().unwrap().contains("shared_buffers"),
        "{db:#}"
    );

    // Scratch space the data's owner cannot reach (inside a directory
    // that is root's, 0700): the server says so and the drill fails.
    let private = c.path().join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let r = drill(&c, &base, &private.join("scratch"), &["--no-record"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let db = &r.json()["sources"][0]["database"];
    assert!(
        db["log"].as_str().unwrap().contains("Permission denied"),
        "{db:#}"
    );
    assert!(
        db["error"]
            .as_str()
            .unwrap()
            .contains("reachable by the data directory's owner"),
        "{db:#}"
    );

    // A check that hangs is cut at the check timeout and the server is
    // still stopped.
    let cfg = with_drill(
        &c,
        &base,
        "slow.toml",
        "queries = [\"SELECT pg_sleep(60)\"]\n",
    );
    let r = drill(&c, &cfg, &scratch, &["--no-record", "--check-timeout", "8"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let db = &r.json()["sources"][0]["database"];
    assert!(
        db["queries"][0]["error"]
            .as_str()
            .unwrap()
            .contains("check timeout"),
        "{db:#}"
    );
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);

    // The node keeps the database's word: a record saying passed with a
    // failed database, or database figures without a database, is
    // refused.
    let hexed = rep["sources"][0]["snapshot"].as_str().unwrap();
    let snapshot: Vec<u8> = (0..hexed.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hexed[i..i + 2], 16).unwrap())
        .collect();
    let forged = |db: (bool, bool, f64)| {
        use refuge_proto::pb;
        let base = base.clone();
        let snapshot = snapshot.clone();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let cfg = refuge_client::load_config(&base).unwrap();
                let node = refuge_client::connect(&cfg.node).await.unwrap();
                node.supervision
                    .clone()
                    .record_drill(pb::RecordDrillRequest {
                        result: Some(pb::DrillResult {
                            tenant: "finance".into(),
                            snapshot_id: snapshot,
                            passed: true,
                            database_checked: db.0,
                            database_passed: db.1,
                            database_recovery_secs: db.2,
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(|_| ())
            })
    };
    let e = forged((true, false, 1.0)).unwrap_err();
    assert!(e.message().contains("failed database"), "{e:?}");
    let e = forged((false, false, 1.0)).unwrap_err();
    assert!(e.message().contains("without database_checked"), "{e:?}");
    let e = forged((true, true, f64::NAN)).unwrap_err();
    assert!(e.message().contains("database_recovery_secs"), "{e:?}");
    forged((true, true, 1.0)).unwrap();
}

/// The server's clock now, RFC 3339 in UTC with microseconds.
fn server_now(pg: &Postgres) -> String {
    pg.sql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

/// Switches to a new WAL segment and waits until the server has archived
/// the one it closed.
fn archive_now(pg: &Postgres) {
    let seg = pg.sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    refuge_tests::wait_for(
        &format!("the server to archive {seg}"),
        || {
            pg.sql(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            )
            .as_str()
                >= seg.as_str()
        },
        || {
            format!(
                "{}\n{}",
                pg.sql("postgres", "SELECT * FROM pg_stat_archiver"),
                pg.log()
            )
        },
    );
}

/// The ids in `t` of a cluster restored at `target`, started without
/// archiving (it must not push its new timeline into the source's WAL).
fn restored_ids(dir: &Path, target: &Path) -> (String, String) {
    let mut r = Postgres::adopt(target.to_path_buf(), dir);
    r.start_with("-c archive_mode=off");
    // Archive recovery takes read-only connections before it ends.
    refuge_tests::wait_for(
        "the end of recovery",
        || r.sql("postgres", "SELECT pg_is_in_recovery()") == "f",
        || r.log(),
    );
    let ids = r.sql(
        "postgres",
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t",
    );
    let log = r.log();
    r.stop();
    (ids, log)
}

fn wal_snapshots(c: &Cluster, cfg: &Path) -> Vec<serde_json::Value> {
    c.snapshots(cfg)
        .into_iter()
        .filter(|s| s["source"] == "pg.wal")
        .collect()
}

#[test]
fn archived_wal_restores_to_a_point_in_time_between_two_transactions() {
    let mut c = Cluster::start();
    let dir = postgres_dir();
    let mut pg = Postgres::init(dir.path(), "main");
    let cfg = agent(&c, &pg, None, PASSWORD);
    let check = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "check-config"],
    )
    .ok();
    assert!(
        check.stdout.contains("archived WAL goes to source pg.wal")
            && check.stdout.contains("wal-push --source pg %p"),
        "{}",
        check.stdout
    );
    let command = refuge_tests::postgres::wal_push_command(dir.path(), &cfg, "pg");
    pg.sql("postgres", "ALTER SYSTEM SET archive_mode = on");
    pg.sql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_command = '{command}'"),
    );
    pg.stop();
    pg.start();
    pg.sql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    );
    archive_now(&pg);
    let before_base = wal_snapshots(&c, &cfg).len();
    assert!(before_base >= 1, "nothing archived before the base");
    for s in wal_snapshots(&c, &cfg) {
        assert_eq!(s["kind"], "postgres-wal", "{s:#}");
        assert_eq!(s["files"], 1, "{s:#}");
    }

    // The base, then two transactions with a point between them, and the
    // segment holding them archived.
    backup_json(&c, &cfg);
    let t0 = server_now(&pg);
    pg.sql("postgres", "INSERT INTO t (id) VALUES (1)");
    let t1 = server_now(&pg);
    std::thread::sleep(std::time::Duration::from_millis(20));
    pg.sql("postgres", "INSERT INTO t (id) VALUES (2)");
    archive_now(&pg);

    // Between the two: the first only.
    let cwd = c.path().to_path_buf();
    let restore = |name: &str, args: &[&str]| {
        let target = dir.path().join(name);
        let mut a = vec![
            "-c",
            cfg.to_str().unwrap(),
            "restore",
            "--source",
            "pg",
            "--json",
            "--target",
            target.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        let r = run("refuge", &cwd, &a);
        (target, r)
    };
    let (target, r) = restore("at-t1", &["--at", &t1]);
    let rep = r.ok().json();
    let w = &rep["postgres_wal"];
    assert!(w["files"].as_u64().unwrap() >= 1, "{rep:#}");
    assert_eq!(w["source"], "pg.wal");
    assert!(w["target_time"].as_str().is_some(), "{rep:#}");
    assert!(target.join("recovery.signal").exists());
    let (ids, log) = restored_ids(dir.path(), &target);
    assert_eq!(ids, "1", "{log}");
    assert!(log.contains("recovery stopping before commit"), "{log}");
    // Before the first: neither.
    let (target, r) = restore("at-t0", &["--at", &t0]);
    r.ok();
    assert_eq!(restored_ids(dir.path(), &target).0, "");
    // latest: everything archived.
    let (target, r) = restore("latest", &["latest"]);
    let rep = r.ok().json();
    assert!(rep["postgres_wal"]["target_time"].is_null(), "{rep:#}");
    assert_eq!(restored_ids(dir.path(), &target).0, "1,2");
    // --no-wal: the base alone, as of its end.
    let (target, r) = restore("base-only", &["latest", "--no-wal"]);
    let rep = r.ok().json();
    assert!(rep.get("postgres_wal").is_none(), "{rep:#}");
    assert!(!target.join("recovery.signal").exists());
    assert_eq!(restored_ids(dir.path(), &target).0, "");

    // A point after the archive's end is refused before anything is
    // written.
    let (target, r) = restore("future", &["--at", "2999-01-01T00:00:00Z"]);
    r.fails(1, "is after it");
    assert!(!target.exists());

    // The node down: the archiver's pushes fail (exit 1) and the server
    // keeps the segment and retries; the node back, it is archived.
    c.stop_node();
    pg.sql("postgres", "INSERT INTO t (id) VALUES (3)");
    let seg = pg.sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    refuge_tests::wait_for(
        "a failed archive attempt",
        || pg.sql("postgres", "SELECT failed_count FROM pg_stat_archiver") != "0",
        || pg.log(),
    );
    assert!(pg.log().contains("was not archived"), "{}", pg.log());
    assert!(pg.data.join("pg_wal").join(&seg).exists());
    c.start_node();
    refuge_tests::wait_for(
        "the segment archived once the node is back",
        || {
            pg.sql(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            ) >= seg
        },
        || pg.log(),
    );

    // Bad calls are refused with a reason.
    let push = |source: &str, file: &str| {
        run(
            "refuge-agent",
            &pg.data,
            &[
                "-c",
                cfg.to_str().unwrap(),
                "wal-push",
                "--source",
                source,
                file,
            ],
        )
    };
    push("pg", "pg_wal/not-a-segment").fails(2, "is not a WAL file name");
    push("pg", "000000010000000000000001").fails(2, "is not in source \"pg\"'s WAL directory");
    push("pg", "pg_wal/0000000100000000000000FF").fails(1, "No such file");
    push("nope", "pg_wal/x").fails(2, "no source named");

    // Retention: with the next base and one base kept, the WAL archived
    // before the first base goes, the WAL since it stays (the kept base
    // may have started before some of it was archived), and latest still
    // restores with every row.
    backup_json(&c, &cfg);
    pg.sql("postgres", "INSERT INTO t (id) VALUES (4)");
    archive_now(&pg);
    let time = |s: &serde_json::Value| s["time_unix_micros"].as_i64().unwrap();
    let first_base = c
        .snapshots(&cfg)
        .iter()
        .filter(|s| s["source"] == "pg")
        .map(time)
        .min()
        .unwrap();
    let ids = |v: Vec<serde_json::Value>| -> Vec<String> {
        v.iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = wal_snapshots(&c, &cfg);
    let (since, before): (Vec<_>, Vec<_>) = all.into_iter().partition(|s| time(s) > first_base);
    assert!(before.len() >= before_base && !since.is_empty());
    let admin = c.client(&["--role", "admin", "--name", "ops"]);
    c.keep_last(&admin, "finance", 1);
    c.refuge(&admin, &["admin", "prune"]).ok();
    assert_eq!(
        ids(wal_snapshots(&c, &cfg)),
        ids(since),
        "the WAL committed before the first base is gone, the rest stays"
    );
    let bases: Vec<_> = c
        .snapshots(&cfg)
        .into_iter()
        .filter(|s| s["source"] == "pg")
        .collect();
    assert_eq!(bases.len(), 1);
    let (target, r) = restore("after-prune", &["latest"]);
    r.ok();
    assert_eq!(restored_ids(dir.path(), &target).0, "1,2,3,4");

    // A hole in the archive (a segment "archived" by something else): the
    // restore says where recovery will stop, and it stops there.
    pg.sql("postgres", "ALTER SYSTEM SET archive_command = '/bin/true'");
    pg.sql("postgres", "SELECT pg_reload_conf()");
    pg.sql("postgres", "INSERT INTO t (id) VALUES (5)");
    archive_now(&pg);
    pg.sql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_command = '{command}'"),
    );
    pg.sql("postgres", "SELECT pg_reload_conf()");
    pg.sql("postgres", "INSERT INTO t (id) VALUES (6)");
    archive_now(&pg);
    let (target, r) = restore("with-a-hole", &["latest"]);
    assert!(
        r.stderr.contains("warning: the archive has no WAL after"),
        "{}",
        r.stderr
    );
    let rep = r.ok().json();
    assert!(
        rep["postgres_wal"]["gap"]
            .as_str()
            .unwrap()
            .contains("recovery stops"),
        "{rep:#}"
    );
    assert_eq!(restored_ids(dir.path(), &target).0, "1,2,3,4");
}
