//! What the supervision platform reads: `refuge status` (the Status RPC)
//! and the node's Prometheus metrics, parsed by the Prometheus project's
//! own parser (Python prometheus-client, installed by scripts/setup.sh).

use std::fs;
use std::process::{Command, Stdio};

use refuge_tests::{Cluster, free_local_port, http_get, run};
use serde_json::Value;

/// Every sample of an OpenMetrics text, as the reference parser reads it
/// (a text it cannot parse fails the test).
fn parse_metrics(text: &str) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("health/parse_metrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (run scripts/setup.sh if prometheus_client is missing): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn sample<'a>(all: &'a [Value], name: &str, want: &[(&str, &str)]) -> Option<&'a Value> {
    all.iter()
        .find(|s| s["name"] == name && want.iter().all(|(k, v)| s["labels"][*k] == *v))
}

#[test]
fn status_and_metrics_show_recovery_points_failures_drills_and_node_resources() {
    let mport = free_local_port();
    let c = Cluster::start_with(&format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"));
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), refuge_tests::noise(3 << 20, 9)).unwrap();
    let gone = c.path().join("no-such-dir");
    let agent = c.default_agent(&[("data", &src, "tree"), ("logs", &gone, "tree")]);
    let a = agent.to_str().unwrap();
    // One source commits, the other fails (its path is missing).
    run("refuge-agent", c.path(), &["-c", a, "backup"]).fails(1, "logs");
    // A second backup that reads everything again (--rehash) finds every
    // chunk already stored: all deduplicated.
    run(
        "refuge-agent",
        c.path(),
        &["-c", a, "backup", "--source", "data", "--rehash"],
    )
    .ok();
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            a,
            "drill",
            "--source",
            "data",
            "--report-dir",
            "reports",
        ],
    )
    .ok();
    // A client of another CA is refused: an authentication failure.
    run("refuge", c.path(), &["certs", "init", "other"]).ok();
    run(
        "refuge",
        c.path(),
        &[
            "certs", "issue", "--dir", "other", "--tenant", "finance", "--host", "db1",
        ],
    )
    .ok();
    let intruder = c.agent_config("intruder.toml", "other/finance-db1", "certs/ca.pem", &[]);
    let r = run(
        "refuge",
        c.path(),
        &["-c", intruder.to_str().unwrap(), "whoami"],
    );
    assert_eq!(r.code, 1);

    let auditor = c.client(&["--role", "auditor", "--name", "supervision"]);
    let r = run(
        "refuge",
        c.path(),
        &["-c", auditor.to_str().unwrap(), "status", "--json"],
    );
    assert_eq!(
        r.code, 1,
        "a failed last backup makes status exit 1: {}",
        r.stderr
    );
    let st = r.json();
    let sources = st["sources"].as_array().unwrap();
    let data = sources.iter().find(|s| s["source"] == "data").unwrap();
    let logs = sources.iter().find(|s| s["source"] == "logs").unwrap();
    assert_eq!(data["snapshots"], 2);
    assert_eq!(data["last_backup_ok"], true);
    let rpo = data["rpo_secs"].as_f64().unwrap();
    assert!((0.0..120.0).contains(&rpo), "{rpo}");
    assert_eq!(data["last_drill"]["passed"], true, "{data:#}");
    assert!(data["last_drill"]["rto_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(logs["snapshots"], 0);
    assert_eq!(logs["last_backup_ok"], false);
    assert!(
        logs["last_backup_error"]
            .as_str()
            .unwrap()
            .contains("no-such-dir"),
        "{logs:#}"
    );
    let t = &st["tenants"][0];
    assert_eq!(t["tenant"], "finance");
    assert!(t["stored_bytes"].as_u64().unwrap() > 0);
    // Two generations of the same (incompressible) data: about 2x.
    let ratio = t["dedup_ratio"].as_f64().unwrap();
    assert!(ratio > 1.8 && ratio < 2.2, "{ratio}");
    let n = &st["node"];
    assert!(n["disk_free_bytes"].as_u64().unwrap() > 0);
    assert!(n["store_bytes"].as_u64().unwrap() > 0);
    assert_eq!(n["ingest_serving"], true);
    assert!(n["auth_failures_last_hour"].as_u64().unwrap() >= 1, "{n:#}");
    // `refuge certs init` gives the node a year.
    let year = &n["node_cert_expires"].as_str().unwrap()[..4];
    let this_year: i32 = time::OffsetDateTime::now_utc().year();
    assert_eq!(year.parse::<i32>().unwrap(), this_year + 1, "{n:#}");
    // The table form names the failure.
    let t = run(
        "refuge",
        c.path(),
        &["-c", auditor.to_str().unwrap(), "status"],
    );
    assert!(t.stdout.contains("FAILED"), "{}", t.stdout);
    assert!(t.stdout.contains("passed"), "{}", t.stdout);
    // Another tenant's operator sees nothing of finance.
    let hr = c.client(&["--role", "operator", "--tenant", "hr", "--name", "ops-hr"]);
    let none = run(
        "refuge",
        c.path(),
        &["-c", hr.to_str().unwrap(), "status", "--json"],
    )
    .ok()
    .json();
    assert_eq!(none["sources"].as_array().unwrap().len(), 0);

    // The metrics, read by the reference parser.
    let text = http_get(mport, "/metrics");
    let m = parse_metrics(&text);
    let src = [("tenant", "finance"), ("host", "db1"), ("source", "data")];
    let lag = sample(&m, "refuge_replication_lag_seconds", &src).expect("lag");
    assert!(lag["value"].as_f64().unwrap() >= 0.0);
    let last = sample(&m, "refuge_last_backup_timestamp_seconds", &src).expect("last backup");
    let want = data["newest_snapshot_time"].as_str().unwrap();
    let want = refuge_core::parse_time_micros(want).unwrap() as f64 / 1e6;
    assert!((last["value"].as_f64().unwrap() - want).abs() < 0.001);
    assert_eq!(
        sample(&m, "refuge_drill_last_success", &src).expect("drill")["value"],
        1.0
    );
    assert!(sample(&m, "refuge_drill_last_duration_seconds", &src).is_some());
    let new = sample(
        &m,
        "refuge_ingest_chunks_total",
        &[("tenant", "finance"), ("outcome", "new")],
    )
    .expect("new chunks")["value"]
        .as_f64()
        .unwrap();
    let dedup = sample(
        &m,
        "refuge_ingest_chunks_total",
        &[("tenant", "finance"), ("outcome", "deduplicated")],
    )
    .expect("deduplicated chunks")["value"]
        .as_f64()
        .unwrap();
    assert!(new > 0.0 && dedup >= new, "new {new} dedup {dedup}");
    assert!(
        sample(&m, "refuge_ingest_bytes_total", &[("tenant", "finance")]).unwrap()["value"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        sample(&m, "refuge_restore_bytes_total", &[("tenant", "finance")]).unwrap()["value"]
            .as_f64()
            .unwrap()
            >= (3 << 20) as f64 * 0.9
    );
    assert_eq!(
        sample(
            &m,
            "refuge_snapshots_committed_total",
            &[("tenant", "finance")]
        )
        .unwrap()["value"],
        2.0
    );
    assert!(sample(&m, "refuge_commit_duration_seconds_count", &[]).is_some());
    assert!(
        sample(&m, "refuge_auth_failures_total", &[]).unwrap()["value"]
            .as_f64()
            .unwrap()
            >= 1.0
    );
    assert!(sample(&m, "refuge_verify_corrupt_chunks_total", &[]).is_some());
    for g in [
        "refuge_disk_free_bytes",
        "refuge_disk_size_bytes",
        "refuge_disk_reserve_bytes",
        "refuge_store_size_bytes",
    ] {
        assert!(sample(&m, g, &[]).is_some(), "{g} missing");
    }
    // A source without a snapshot has no lag series (not a fake 0).
    assert!(sample(&m, "refuge_replication_lag_seconds", &[("source", "logs")]).is_none());
}
