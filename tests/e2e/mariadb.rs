//! `mariadb` sources against a real MariaDB server (Debian's packages): a
//! backup taken with `mariadb-backup` while a writer commits rows restores
//! to a data directory that starts, passes `CHECK TABLE` and has every row
//! committed before the backup with no gap; a server that cannot be backed
//! up gets a clear error and no snapshot.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use refuge_tests::mariadb::{Mariadb, PASSWORD, mysql_dir};
use refuge_tests::{Cluster, run};

fn agent(c: &Cluster, m: &Mariadb, path: &Path, password: &str, extra: &str) -> std::path::PathBuf {
    let cfg = c.default_agent(&[]);
    let pass = c.path().join("maria.pass");
    fs::write(&pass, format!("{password}\n")).unwrap();
    let text = fs::read_to_string(&cfg).unwrap();
    let out = c.path().join(format!("maria-{}.toml", stamp()));
    fs::write(
        &out,
        format!(
            "{text}\n[[source]]\nname = \"db\"\npath = \"{}\"\nkind = \"mariadb\"\n{}{extra}",
            path.display(),
            m.source_table(&pass)
        ),
    )
    .unwrap();
    out
}

/// A fresh name for each config.
fn stamp() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

#[test]
fn a_mariadb_backup_under_writes_restores_to_a_server_that_starts_with_every_commit() {
    let c = Cluster::start();
    let dir = mysql_dir();
    let m = Mariadb::init(dir.path(), "main");
    m.sql(
        "CREATE DATABASE app; CREATE TABLE app.marks (id BIGINT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB; \
         CREATE TABLE app.old (id INT PRIMARY KEY) ENGINE=MyISAM; INSERT INTO app.old VALUES (1), (2), (3);",
    );
    let cfg = agent(&c, &m, &m.data, PASSWORD, "");

    // A writer commits numbered rows while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = {
        let (stop, acked, socket) = (stop.clone(), acked.clone(), m.socket.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let o = std::process::Command::new("mariadb")
                    .arg(format!("--socket={}", socket.display()))
                    .args(["-u", "root", "-e"])
                    .arg(format!(
                        "INSERT INTO app.marks VALUES ({i}, REPEAT('x', 200))"
                    ))
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    refuge_tests::wait_for(
        "the writer",
        || acked.load(Ordering::SeqCst) >= 20,
        || m.log(),
    );
    let before = acked.load(Ordering::SeqCst);
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup", "--json"],
    )
    .ok()
    .json();
    let after = acked.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    assert_eq!(r[0]["warning_count"], 0, "{r:#}");
    let staging = r[0]["read_from"].as_str().unwrap().to_string();
    assert!(
        !Path::new(&staging).exists(),
        "the staging copy stays: {staging}"
    );
    let snaps = c.snapshots(&cfg);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["kind"], "mariadb");

    // Restored (owned by mysql, as the server's files) and started.
    let target = dir.path().join("restored");
    c.restore_latest(&cfg, &target).ok();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(target.join("ibdata1")).unwrap().uid(),
        fs::metadata(&m.data).unwrap().uid()
    );
    let mut restored = Mariadb::adopt(target, dir.path(), "restored");
    restored.start();
    let got: Vec<u64> = restored
        .sql("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM app.marks")
        .split('\t')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(got[0], got[1], "a gap in marks: {got:?}");
    assert!(
        got[1] >= before && got[1] <= after,
        "marks up to {}, committed before the backup {before}, by its end {after}",
        got[1]
    );
    assert_eq!(restored.sql("SELECT COUNT(*) FROM app.old"), "3");
    let check = restored.sql("CHECK TABLE app.marks, app.old");
    assert!(
        check.lines().all(|l| l.ends_with("OK")),
        "CHECK TABLE: {check}"
    );
    restored.stop();

    // The next backup sends only what changed.
    m.sql("UPDATE app.marks SET pad = 'y' WHERE id = 1");
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup", "--json"],
    )
    .ok()
    .json();
    // The staging copy is new files each time: only the comparison with
    // the parent's blocks keeps them from being sent whole. Which of its
    // regions are zero runs (holes, not compared) varies with what the
    // server wrote, so the two are counted together.
    let unchanged = r[0]["bytes_unchanged_blocks"].as_u64().unwrap();
    let holes = r[0]["hole_bytes"].as_u64().unwrap();
    assert!(
        unchanged > 4 << 20 && unchanged + holes > 10 << 20,
        "the copy was not compared block by block: {r:#}"
    );
    assert!(r[0]["bytes_new"].as_u64().unwrap() < 8 << 20, "{r:#}");

    // A drill starts the restored server beside the running one and checks it.
    let scratch = dir.path().join("scratch");
    let drill = |table: &str| {
        let with = c.path().join(format!("drill-{}.toml", stamp()));
        fs::write(
            &with,
            format!(
                "{}\n[drill.mariadb.db]\n{table}",
                fs::read_to_string(&cfg).unwrap()
            ),
        )
        .unwrap();
        run(
            "refuge",
            c.path(),
            &[
                "-c",
                with.to_str().unwrap(),
                "drill",
                "--json",
                "--no-record",
                "--source",
                "db",
                "--report-dir",
                c.path().join("reports").to_str().unwrap(),
                "--scratch",
                scratch.to_str().unwrap(),
            ],
        )
    };
    let r = drill(
        "queries = [\"SELECT COUNT(*) FROM app.old\"]\ntables = [\"app.marks\", \"app.old\"]\n",
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let db = r.json()["sources"][0]["database"].clone();
    assert_eq!(db["engine"], "mariadb");
    assert_eq!(db["passed"], true, "{db:#}");
    assert!(
        db["version"].as_str().unwrap().contains("MariaDB"),
        "{db:#}"
    );
    assert!(db["recovery_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(db["queries"][0]["value"], "3");
    assert_eq!(db["tables"][1]["rows"], 3);
    assert!(
        db["tables"][0]["rows"].as_u64().unwrap() >= before,
        "{db:#}"
    );
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    assert_eq!(m.sql("SELECT COUNT(*) FROM app.old"), "3");
    // A missing table fails it; so does a server that cannot start.
    let r = drill("tables = [\"app.nope\"]\n");
    assert_eq!(r.code, 1, "{}", r.stdout);
    let db = r.json()["sources"][0]["database"].clone();
    assert!(
        db["tables"][0]["error"]
            .as_str()
            .unwrap()
            .contains("doesn't exist"),
        "{db:#}"
    );
    let r = drill("settings = { innodb_buffer_pool_size = \"lots\" }\n");
    assert_eq!(r.code, 1, "{}", r.stdout);
    let db = r.json()["sources"][0]["database"].clone();
    assert!(
        db["error"].as_str().unwrap().contains("did not start"),
        "{db:#}"
    );
}

#[test]
fn a_mariadb_source_that_cannot_be_backed_up_fails_clearly_and_commits_nothing() {
    let c = Cluster::start();
    let dir = mysql_dir();
    let mut m = Mariadb::init(dir.path(), "main");
    let fails = |cfg: &Path, needle: &str| {
        run(
            "refuge-agent",
            c.path(),
            &["-c", cfg.to_str().unwrap(), "backup"],
        )
        .fails(1, needle);
        assert!(c.snapshots(cfg).is_empty(), "a snapshot was committed");
    };
    fails(&agent(&c, &m, &m.data, "wrong", ""), "Access denied");
    fails(
        &agent(
            &c,
            &m,
            &m.data,
            PASSWORD,
            "mariadb_backup = \"/nonexistent/mariadb-backup\"\n",
        ),
        "is not installed (Debian: apt-get install mariadb-backup",
    );
    let cfg = agent(&c, &m, &m.data, PASSWORD, "");
    m.stop();
    fails(&cfg, "mariadb-backup of the server at");
    m.start();
    run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup"],
    )
    .ok();
    assert_eq!(c.snapshots(&cfg).len(), 1);
}
