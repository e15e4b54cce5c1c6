//! Retention, pins, pruning and garbage collection against a real node:
//! dry runs change nothing, pins are kept, and prune and garbage collection
//! running beside two backups and a restore lose nothing.

use std::fs;
use std::time::Duration;

use refuge_tests::{Cluster, assert_same_tree, copy_tree, noise, run};

#[test]
fn prune_keeps_pins_and_with_gc_beside_backups_and_a_restore_loses_nothing() {
    let c = Cluster::start_with("[gc]\ngrace_secs = 4\n");
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let old = c.path().join("old");
    let (a, b) = (c.path().join("a"), c.path().join("b"));
    fs::create_dir_all(&old).unwrap();
    for (dir, seed) in [(&a, 100), (&b, 200)] {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("big.bin"), noise(12 << 20, seed)).unwrap();
        fs::write(dir.join("small.txt"), format!("source {seed}")).unwrap();
    }
    let agent = c.default_agent(&[("old", &old, "tree"), ("a", &a, "tree"), ("b", &b, "tree")]);
    let cfg = agent.to_str().unwrap();
    // Four generations of "old", each with 2 MiB that no other has.
    let mut generations = Vec::new();
    for g in 0..4u64 {
        fs::write(old.join("gen.bin"), noise(2 << 20, 1000 + g)).unwrap();
        run(
            "refuge-agent",
            c.path(),
            &["-c", cfg, "backup", "--source", "old"],
        )
        .ok();
        let copy = c.path().join(format!("old-gen{g}"));
        copy_tree(&old, &copy);
        generations.push(copy);
    }
    let snaps = c
        .refuge(&agent, &["snapshots", "--source", "old", "--json"])
        .ok()
        .json();
    let ids: Vec<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4);

    // Keep the newest only, but pin the first.
    c.refuge(
        &admin,
        &["admin", "pin", &ids[0][..10], "--tenant", "finance"],
    )
    .ok();
    let p = c
        .refuge(
            &admin,
            &[
                "admin",
                "retention",
                "set",
                "--tenant",
                "finance",
                "--keep-last",
                "1",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(p["keep_last"], 1);
    assert_eq!(p["is_default"], false);

    // A dry run names what would go and changes nothing.
    let dry = c
        .refuge(
            &admin,
            &[
                "admin",
                "prune",
                "--tenant",
                "finance",
                "--dry-run",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(dry["would_remove"], 2, "{dry:#}");
    assert_eq!(dry["removed"], 0);
    let going: Vec<&str> = dry["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(going, [ids[2].as_str(), ids[1].as_str()]);
    let first = dry["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["snapshot"] == ids[0].as_str())
        .unwrap();
    assert_eq!(first["reasons"], serde_json::json!(["pinned"]));
    assert_eq!(
        c.refuge(&agent, &["snapshots", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    c.refuge(&admin, &["admin", "prune", "--tenant", "finance"])
        .ok();
    let left = c
        .refuge(&agent, &["snapshots", "--source", "old", "--json"])
        .ok()
        .json();
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [ids[0].as_str(), ids[3].as_str()]);

    // Let the pruned chunks age past the grace period, then run prune and
    // garbage collection again and again while two backups and a restore
    // run.
    std::thread::sleep(Duration::from_secs(5));
    let restore_target = c.path().join("restored-old");
    let (c, agent, admin) = (&c, &agent, &admin);
    let gc_deleted = std::thread::scope(|s| {
        let backups: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|src| {
                s.spawn(move || {
                    run(
                        "refuge-agent",
                        c.path(),
                        &["-c", cfg, "backup", "--source", src],
                    )
                })
            })
            .collect();
        let restore = s.spawn(|| {
            c.refuge(
                agent,
                &[
                    "restore",
                    &ids[3],
                    "--target",
                    restore_target.to_str().unwrap(),
                ],
            )
        });
        let mut deleted = 0u64;
        for _ in 0..4 {
            c.refuge(admin, &["admin", "prune"]).ok();
            let g = c.refuge(admin, &["admin", "gc", "--json"]).ok().json();
            deleted += g["deleted"].as_u64().unwrap();
        }
        for b in backups {
            b.join().unwrap().ok();
        }
        restore.join().unwrap().ok();
        deleted
    });
    // The two pruned generations' unique chunks (2 MiB each) are gone.
    assert!(
        gc_deleted >= 2,
        "garbage collection deleted {gc_deleted} chunks"
    );
    assert_same_tree(&generations[3], &restore_target);

    // Every snapshot still listed restores byte for byte, the pinned one
    // included.
    c.refuge(admin, &["admin", "gc"]).ok();
    for (id, want) in [(&ids[0], &generations[0]), (&ids[3], &generations[3])] {
        let out = c.path().join(format!("check-{}", &id[..8]));
        c.refuge(agent, &["restore", id, "--target", out.to_str().unwrap()])
            .ok();
        assert_same_tree(want, &out);
    }
    for (src, want) in [("a", &a), ("b", &b)] {
        let out = c.path().join(format!("check-{src}"));
        c.restore_source(agent, src, &out).ok();
        assert_same_tree(want, &out);
    }
    // A pruned snapshot is gone for good.
    c.refuge(
        agent,
        &[
            "restore",
            &ids[1],
            "--target",
            c.path().join("gone").to_str().unwrap(),
        ],
    )
    .fails(1, "no snapshot with id");

    let log = c.audit(&auditor);
    for event in [
        "snapshot_pinned",
        "retention_changed",
        "snapshots_pruned",
        "garbage_collected",
    ] {
        assert!(
            log.iter()
                .any(|r| r["event"] == event && r["outcome"] == "ok"),
            "no {event} in the audit log"
        );
    }
    let pruned = log
        .iter()
        .find(|r| r["event"] == "snapshots_pruned")
        .unwrap();
    assert!(pruned["detail"].as_str().unwrap().contains(&ids[1][..8]));
}

#[test]
fn a_flood_of_forged_snapshots_hits_the_quota_and_harms_nothing_else() {
    let metrics_port = refuge_tests::free_local_port();
    let c = Cluster::start_with(&format!(
        "[quota]\nmax_snapshots_per_day = 20\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    ));
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f.bin"), noise(1 << 20, 5)).unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    let first = c.refuge(&agent, &["snapshots", "--json"]).ok().json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The compromised agent replays its manifest as fast as it can.
    let results = refuge_tests::replay_latest(&agent, 1000);
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let mut refused = 0;
    for s in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("max_snapshots_per_day = 20"), "{s:?}");
        refused += 1;
    }
    assert_eq!((ok, refused), (19, 981));
    let listed = c.refuge(&agent, &["snapshots", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 20);
    // The first snapshot still restores; another tenant still backs up.
    let out = c.path().join("out");
    c.refuge(
        &agent,
        &["restore", &first, "--target", out.to_str().unwrap()],
    )
    .ok();
    assert_same_tree(&src, &out);
    c.client(&["--tenant", "hr", "--host", "web1"]);
    let hr = c.agent_config(
        "hr-src.toml",
        "certs/hr-web1",
        "certs/ca.pem",
        &[("data", &src, "tree")],
    );
    run(
        "refuge-agent",
        c.path(),
        &["-c", hr.to_str().unwrap(), "backup"],
    )
    .ok();
    // And the agent's own next real backup gets the same clear refusal.
    run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .fails(1, "quota");
    let log = c.audit(&auditor);
    let n = log
        .iter()
        .filter(|r| r["event"] == "quota_exceeded" && r["tenant"] == "finance")
        .count();
    assert_eq!(n, 981 + 1);
    // The alert metric.
    let text = refuge_tests::http_get(metrics_port, "/metrics");
    assert!(
        text.contains("refuge_quota_exceeded_total{tenant=\"finance\"} 982"),
        "{text}"
    );
    assert!(
        text.contains("refuge_audit_events_total{event=\"snapshot_committed\",outcome=\"ok\"} 21"),
        "{text}"
    );
}

#[test]
fn the_node_prunes_collects_and_verifies_on_its_schedule() {
    let c = Cluster::start_with(
        "[retention]\ninterval_secs = 1\n[retention.default]\nkeep_last = 1\n[gc]\ngrace_secs = 2\n[verify]\ninterval_secs = 1\nsample_percent = 50\n",
    );
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    for g in 0..3u64 {
        fs::write(src.join("f.bin"), noise(1 << 20, 50 + 2 * g)).unwrap();
        run(
            "refuge-agent",
            c.path(),
            &["-c", agent.to_str().unwrap(), "backup"],
        )
        .ok();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = c.audit(&auditor);
        let by_schedule = |event: &str| {
            log.iter()
                .any(|r| r["event"] == event && r["subject"] == "node (schedule)")
        };
        let listed = c.refuge(&agent, &["snapshots", "--json"]).ok().json();
        if listed.as_array().unwrap().len() == 1
            && by_schedule("snapshots_pruned")
            && by_schedule("garbage_collected")
            && by_schedule("verification")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the schedule did not prune, collect and verify: {listed:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = c.path().join("out");
    c.refuge(
        &agent,
        &["restore", "latest", "--target", out.to_str().unwrap()],
    )
    .ok();
    assert_same_tree(&src, &out);
}

#[test]
fn a_flood_on_one_day_cannot_push_out_the_snapshots_of_earlier_days() {
    let mut c = Cluster::start_with("[quota]\nmax_snapshots_per_day = 40\n");
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let cfg = agent.to_str().unwrap();
    // Three days of ordinary backups: the node's clock moves a day ahead
    // between them (it assigns every snapshot's time).
    let mut daily = Vec::new();
    for day in 0..3u64 {
        if day > 0 {
            c.stop_node();
            c.start_node_at(&format!("+{day}d"));
        }
        fs::write(src.join("f.txt"), format!("day {day}")).unwrap();
        let r = run("refuge-agent", c.path(), &["-c", cfg, "backup", "--json"])
            .ok()
            .json();
        daily.push(r[0]["snapshot"].as_str().unwrap().to_string());
    }
    // Day 10: the host is compromised and floods its source.
    c.stop_node();
    c.start_node_at("+10d");
    let accepted = refuge_tests::replay_latest(&agent, 200)
        .iter()
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(accepted, 40, "the quota stops the flood");
    // The tenant's policy keeps 3 snapshots and one a day for a week.
    c.refuge(
        &admin,
        &[
            "admin",
            "retention",
            "set",
            "--tenant",
            "finance",
            "--keep-last",
            "3",
            "--keep-daily",
            "7",
        ],
    )
    .ok();
    let pruned = c.refuge(&admin, &["admin", "prune", "--json"]).ok().json();
    assert_eq!(pruned["removed"], 40 - 3, "{pruned:#}");
    let left: Vec<String> = c
        .refuge(&agent, &["snapshots", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 3 + 3, "{left:?}");
    for id in &daily {
        assert!(
            left.contains(id),
            "the day's snapshot {id} was pushed out: {left:?}"
        );
    }
    // And they restore.
    let out = c.path().join("day0");
    c.refuge(
        &agent,
        &["restore", &daily[0], "--target", out.to_str().unwrap()],
    )
    .ok();
    assert_eq!(fs::read(out.join("f.txt")).unwrap(), b"day 0");
}
