//! Recovery drills: `refuge drill` restores into scratch space, checks
//! every file against the manifest, runs a check command, measures RTO and
//! RPO, records the result on the node and writes a report; `refuge
//! drills` lists the history.

use std::fs;
use std::time::Instant;

use refuge_tests::{Cluster, noise, run};
use serde_json::Value;

fn tree(c: &Cluster) -> std::path::PathBuf {
    let src = c.path().join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("big.bin"), noise(5 << 20, 11)).unwrap();
    fs::write(src.join("small.txt"), b"first").unwrap();
    fs::write(src.join("sub/a.txt"), b"alpha").unwrap();
    fs::write(src.join("sub/deeper/empty"), b"").unwrap();
    std::os::unix::fs::symlink("sub/a.txt", src.join("link")).unwrap();
    src
}

fn drill(c: &Cluster, cfg: &str, extra: &[&str]) -> (refuge_tests::Run, f64) {
    let reports = c.path().join("reports");
    let scratch = c.path().join("scratch");
    let mut args = vec![
        "-c",
        cfg,
        "drill",
        "--json",
        "--report-dir",
        reports.to_str().unwrap(),
        "--scratch",
        scratch.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let r = run("refuge", c.path(), &args);
    (r, t.elapsed().as_secs_f64())
}

fn snapshot_times(c: &Cluster, cfg: &str) -> Vec<(String, i64, String)> {
    c.snapshots(std::path::Path::new(cfg))
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["time_unix_micros"].as_i64().unwrap(),
                s["time"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_drill_passes_on_a_healthy_snapshot_with_consistent_rto_and_rpo_and_is_recorded() {
    let c = Cluster::start();
    let src = tree(&c);
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    fs::write(src.join("small.txt"), b"second").unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let snaps = snapshot_times(&c, a);
    assert_eq!(snaps.len(), 2);
    let (old, new) = (&snaps[0], &snaps[1]);
    assert!(old.1 < new.1);

    let ops = c.client(&[
        "--role", "operator", "--tenant", "finance", "--name", "ops1",
    ]);
    let o = ops.to_str().unwrap();

    // The newest point: nothing newer, so it is 0 s behind the newest.
    let before = refuge_client::now_micros();
    let (r, wall) = drill(&c, o, &[]);
    let after = refuge_client::now_micros();
    let r = r.ok();
    let rep = r.json();
    assert_eq!(rep["passed"], true, "{rep:#}");
    assert_eq!(rep["point"], "latest");
    let s = &rep["sources"][0];
    assert_eq!(s["snapshot"], new.0.as_str());
    assert_eq!(s["snapshot_time"], new.2.as_str());
    // ., big.bin, link, small.txt, sub, sub/a.txt, sub/deeper, sub/deeper/empty
    assert_eq!(s["files_checked"], 8, "{s:#}");
    assert_eq!(s["bytes_verified"], (5 << 20) + 6 + 5);
    assert_eq!(s["failure_count"], 0);
    assert_eq!(s["rpo_behind_newest_secs"].as_f64().unwrap(), 0.0);
    let rto = s["rto_secs"].as_f64().unwrap();
    assert!(rto > 0.0 && rto <= wall, "rto {rto} vs wall {wall}");
    let age = s["rpo_age_secs"].as_f64().unwrap();
    let lo = (before - new.1) as f64 / 1e6;
    let hi = (after - new.1) as f64 / 1e6;
    assert!(
        age >= lo - 0.001 && age <= hi + 0.001,
        "age {age} not in [{lo}, {hi}]"
    );
    // The scratch space is gone.
    let left: Vec<_> = fs::read_dir(c.path().join("scratch")).unwrap().collect();
    assert!(left.is_empty(), "scratch space left behind: {left:?}");
    // Both reports were written, the Markdown one readable.
    let mut files: Vec<String> = fs::read_dir(c.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with(".json") && files[1].ends_with(".md"));
    let md = fs::read_to_string(c.path().join("reports").join(&files[1])).unwrap();
    assert!(md.contains("**Result: PASSED**"), "{md}");
    assert!(md.contains("| finance | db1 | data |"), "{md}");
    let from_file: Value =
        serde_json::from_slice(&fs::read(c.path().join("reports").join(&files[0])).unwrap())
            .unwrap();
    assert_eq!(from_file, rep);

    // An older point: behind the newest by exactly the snapshots' gap.
    let (r, _) = drill(&c, o, &["--at", &old.2]);
    let rep = r.ok().json();
    let s = &rep["sources"][0];
    assert_eq!(s["snapshot"], old.0.as_str());
    let behind = s["rpo_behind_newest_secs"].as_f64().unwrap();
    assert!(
        (behind - (new.1 - old.1) as f64 / 1e6).abs() < 1e-6,
        "{behind}"
    );
    // A point before the first snapshot has nothing to restore: a failure.
    let (r, _) = drill(&c, o, &["--at", "2001-01-01T00:00:00Z"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let rep = r.json();
    assert_eq!(rep["passed"], false);
    assert!(
        rep["unavailable"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no snapshot at or before"),
        "{rep:#}"
    );
    // A random point is one of the two and repeats with its seed.
    let (r1, _) = drill(&c, o, &["--random-point", "--seed", "5", "--no-record"]);
    let (r2, _) = drill(&c, o, &["--random-point", "--seed", "5", "--no-record"]);
    let (p1, p2) = (r1.ok().json(), r2.ok().json());
    assert_eq!(p1["sources"][0]["snapshot"], p2["sources"][0]["snapshot"]);
    assert!(
        [&old.0, &new.0].contains(&&p1["sources"][0]["snapshot"].as_str().unwrap().to_string())
    );

    // The node recorded the two recorded drills, newest first, with its
    // own view of the recovery point; an auditor sees them too.
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let hist = run(
        "refuge",
        c.path(),
        &["-c", auditor.to_str().unwrap(), "drills", "--json"],
    )
    .ok()
    .json();
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 2, "{hist:#?}");
    assert_eq!(hist[0]["snapshot"], old.0.as_str());
    assert_eq!(hist[1]["snapshot"], new.0.as_str());
    assert!(hist.iter().all(|d| d["passed"] == true));
    assert_eq!(hist[1]["rpo_behind_newest_secs"].as_f64().unwrap(), 0.0);
    assert!(
        hist[0]["recorded_by"]
            .as_str()
            .unwrap()
            .starts_with("operator:ops1")
    );
    // Another tenant's operator sees no drills of finance.
    let hr_ops = c.client(&["--role", "operator", "--tenant", "hr", "--name", "ops-hr"]);
    let none = run(
        "refuge",
        c.path(),
        &["-c", hr_ops.to_str().unwrap(), "drills", "--json"],
    )
    .ok()
    .json();
    assert_eq!(none.as_array().unwrap().len(), 0);
    // The audit log has the drills' restores and records.
    let log = c.audit(&auditor);
    assert!(log.iter().any(|e| e["event"] == "drill_started"));
    assert_eq!(
        log.iter()
            .filter(|e| e["event"] == "drill_recorded")
            .count(),
        2
    );
    // The table form.
    let t = run("refuge", c.path(), &["-c", o, "drills"]).ok();
    assert!(t.stdout.contains("2 drills"), "{}", t.stdout);
}

#[test]
fn a_check_command_decides_and_a_corrupt_chunk_fails_the_drill_naming_the_file() {
    let mut c = Cluster::start();
    let src = tree(&c);
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();

    // A check that looks at the restored data passes...
    let (r, _) = drill(
        &c,
        a,
        &[
            "--check",
            "test \"$(cat sub/a.txt)\" = alpha && test \"$REFUGE_DRILL_SOURCE\" = data",
        ],
    );
    let rep = r.ok().json();
    let chk = &rep["sources"][0]["check"];
    assert_eq!(chk["passed"], true, "{rep:#}");
    assert_eq!(chk["exit_code"], 0);
    // ...and one that fails fails the drill, with its output in the report.
    let (r, _) = drill(
        &c,
        a,
        &["--check", "echo database did not start >&2; exit 7"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let rep = r.json();
    let s = &rep["sources"][0];
    assert_eq!(s["passed"], false);
    assert_eq!(s["failure_count"], 0, "the data itself was fine: {s:#}");
    assert_eq!(s["check"]["exit_code"], 7);
    assert!(
        s["check"]["output"]
            .as_str()
            .unwrap()
            .contains("database did not start")
    );
    // A check per source in the config wins over --check.
    let mut text = fs::read_to_string(&agent).unwrap();
    text.push_str("\n[drill.checks]\ndata = \"test -L link && exit 5\"\n");
    let with_checks = c.path().join("with-checks.toml");
    fs::write(&with_checks, text).unwrap();
    let (r, _) = drill(
        &c,
        with_checks.to_str().unwrap(),
        &["--check", "true", "--no-record"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let rep = r.json();
    assert_eq!(rep["sources"][0]["check"]["exit_code"], 5, "{rep:#}");
    assert_eq!(
        rep["sources"][0]["check"]["command"],
        "test -L link && exit 5"
    );
    // A check that hangs is killed after its timeout.
    let (r, _) = drill(
        &c,
        a,
        &["--check", "sleep 60", "--check-timeout", "1", "--no-record"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.json()["sources"][0]["check"]["output"]
            .as_str()
            .unwrap()
            .contains("killed after its timeout of 1 s")
    );

    // Damage the stored chunks: the drill fails and names the file.
    c.stop_node();
    c.flip_blob_bytes(64);
    c.start_node();
    let (r, _) = drill(&c, a, &[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let rep = r.json();
    let s = &rep["sources"][0];
    assert_eq!(s["passed"], false);
    assert_eq!(s["failures"][0]["path"], "big.bin", "{s:#}");
    assert!(
        s["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("corrupt"),
        "{s:#}"
    );
    // Nothing was left in the scratch space, and the node has it on record.
    let left: Vec<_> = fs::read_dir(c.path().join("scratch")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let hist = run("refuge", c.path(), &["-c", a, "drills", "--json"])
        .ok()
        .json();
    let last = &hist[0];
    assert_eq!(last["passed"], false);
    assert!(
        last["first_failure"]
            .as_str()
            .unwrap()
            .starts_with("big.bin: "),
        "{last:#}"
    );
    assert_eq!(hist[1]["check_exit_code"], 7);
    let t = run("refuge", c.path(), &["-c", a, "drills"]).ok();
    assert!(t.stdout.contains("FAILED: big.bin"), "{}", t.stdout);
}

#[test]
fn a_drill_with_nothing_to_restore_or_bad_arguments_says_so() {
    let c = Cluster::start();
    let agent = c.default_agent(&[]);
    let a = agent.to_str().unwrap();
    run("refuge", c.path(), &["-c", a, "drill"]).fails(1, "nothing to drill");
    run("refuge", c.path(), &["-c", a, "drill", "--at", "yesterday"]).fails(2, "RFC 3339");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            a,
            "drill",
            "--at",
            "2026-01-01T00:00:00Z",
            "--random-point",
        ],
    )
    .fails(2, "cannot be used with");
    let r = run("refuge", c.path(), &["-c", a, "drills"]).ok();
    assert!(r.stdout.contains("no drills recorded"));
}

#[test]
fn the_node_runs_drills_on_request_and_unannounced_in_its_daily_window() {
    let mut c = Cluster::configured("");
    let ops = c.client(&[
        "--role",
        "operator",
        "--all-tenants",
        "--name",
        "node-drill",
    ]);
    // The node's drills run the per-source check of its client config.
    let mut text = fs::read_to_string(&ops).unwrap();
    text.push_str("\n[drill.checks]\ndata = 'test \"$(cat small.txt)\" = first'\n");
    fs::write(&ops, text).unwrap();
    // Something to drill, backed up before the node gets its window.
    c.start_node();
    let src = tree(&c);
    let agent = c.default_agent(&[("data", &src, "tree")]);
    run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    c.stop_node();
    // A window that opens in a few seconds (the node runs on UTC here).
    let hms =
        |t: time::OffsetDateTime| format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    let now = time::OffsetDateTime::now_utc();
    let window = format!(
        "{}-{}",
        hms(now + time::Duration::seconds(4)),
        hms(now + time::Duration::seconds(8))
    );
    let mut toml = fs::read_to_string(c.path().join("node.toml")).unwrap();
    toml.push_str(&format!(
        "[drill]\nclient_config = \"{}\"\nscratch_dir = \"node-scratch\"\nwindow = \"{window}\"\n",
        ops.file_name().unwrap().to_string_lossy()
    ));
    fs::write(c.path().join("node.toml"), toml).unwrap();
    c.start_node_env(&[("TZ", "UTC")]);

    let auditor = c.client(&["--role", "auditor", "--name", "supervision"]);
    let au = auditor.to_str().unwrap();
    let r = run(
        "refuge",
        c.path(),
        &["-c", au, "node-drill", "start", "--wait", "--json"],
    )
    .ok()
    .json();
    assert_eq!(r["state"], "passed", "{r:#}");
    assert_eq!(r["report"]["sources"][0]["files_checked"], 8, "{r:#}");
    assert_eq!(r["report"]["run_by"], "operator:node-drill");
    assert_eq!(r["report"]["sources"][0]["check"]["passed"], true, "{r:#}");
    let id = r["drill_id"].as_str().unwrap();
    let md = run(
        "refuge",
        c.path(),
        &["-c", au, "node-drill", "report", id, "--markdown"],
    )
    .ok();
    assert!(md.stdout.contains("**Result: PASSED**"), "{}", md.stdout);
    // The scratch space is the configured one, and it is empty again.
    let left: Vec<_> = fs::read_dir(c.path().join("node-scratch"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The unannounced one comes by itself inside the window.
    let t = Instant::now();
    loop {
        let hist = run("refuge", c.path(), &["-c", au, "drills", "--json"])
            .ok()
            .json();
        if hist.as_array().unwrap().len() >= 2 {
            assert!(
                hist.as_array().unwrap().iter().all(|d| d["passed"] == true),
                "{hist:#}"
            );
            break;
        }
        assert!(
            t.elapsed().as_secs() < 40,
            "no scheduled drill:\n{}",
            c.node_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let log = c.audit(&auditor);
    assert!(log.iter().any(|e| {
        e["event"] == "drill_requested"
            && e["subject"]
                .as_str()
                .unwrap()
                .starts_with("node (schedule)")
    }));
    assert!(log.iter().any(|e| {
        e["event"] == "drill_requested"
            && e["subject"]
                .as_str()
                .unwrap()
                .starts_with("auditor:supervision")
    }));
    // An unknown id, and a caller that may not start drills.
    run(
        "refuge",
        c.path(),
        &["-c", au, "node-drill", "report", "00ff"],
    )
    .fails(1, "no node drill");
    run(
        "refuge",
        c.path(),
        &["-c", agent.to_str().unwrap(), "node-drill", "start"],
    )
    .fails(1, "permission denied");
}

#[test]
fn a_node_without_a_drill_identity_refuses_to_drill_and_says_why() {
    let c = Cluster::start();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    run(
        "refuge",
        c.path(),
        &["-c", admin.to_str().unwrap(), "node-drill", "start"],
    )
    .fails(1, "[drill] client_config");
}

#[test]
fn an_image_drill_checks_every_byte_and_its_holes() {
    let c = Cluster::start();
    let img = c.path().join("disk.img");
    let mut data = noise(3 << 20, 21);
    data.extend(vec![0u8; 2 << 20]);
    data.extend(noise(1 << 20, 22));
    fs::write(&img, &data).unwrap();
    let agent = c.default_agent(&[("disk", &img, "image")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let (r, _) = drill(
        &c,
        a,
        &[
            "--check",
            "test \"$(stat -c %s \"$REFUGE_DRILL_IMAGE\")\" = 6291456",
        ],
    );
    let rep = r.ok().json();
    let s = &rep["sources"][0];
    assert_eq!(s["kind"], "image");
    assert_eq!(s["files_checked"], 1);
    assert_eq!(s["bytes_verified"], data.len() as u64);
    assert_eq!(s["check"]["passed"], true, "{s:#}");
}
