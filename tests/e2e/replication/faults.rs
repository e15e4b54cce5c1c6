//! Faults between nodes: a link cut twice mid-transfer and a link that
//! goes quiet both resume without sending again what already arrived; a
//! primary killed while a replica pulls from it leaves the replica with
//! only whole snapshots, each restoring byte for byte, and the pull
//! finishes once the primary is back; a chunk found corrupt at the sender
//! is quarantined, never sent, and the snapshot follows once a backup
//! heals it.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use refuge_tests::{Cluster, CutProxy, StallProxy, assert_same_tree, copy_tree, run};

use super::{entry, ids, replica_cert, row, status, wait_until};

/// Writes `n` files of `mib` MiB of incompressible bytes into `dir`,
/// seeded from `seed`.
fn fill(dir: &Path, n: u64, mib: usize, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(
            dir.join(format!("f{seed}-{i}.bin")),
            // (noise() ignores the lowest bit of its seed.)
            refuge_tests::noise(mib << 20, (seed * 100 + i) << 1),
        )
        .unwrap();
    }
}

#[test]
fn a_link_cut_twice_and_a_stalled_link_resume_without_sending_again_what_arrived() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    let mut dr = Cluster::configured("");
    prov.start_node();
    dr.start_node();
    // To the province through a link cut twice, each time after 10 MiB.
    let cut = CutProxy::start(prov.port(), 10 << 20, 2);
    let to_prov = replica_cert(&prov, "city");
    super::append(
        &city,
        &entry(
            "prov",
            "push",
            cut.port,
            &to_prov,
            &prov,
            "call_timeout_secs = 20\n",
        ),
    );
    // To the centre through a link that goes quiet for 60 s after 10 MiB:
    // the 3 s call timeout gives up on it and the next connection works.
    let stall = StallProxy::start(dr.port(), 10 << 20, Duration::from_secs(60), 1);
    let to_dr = replica_cert(&dr, "city");
    super::append(
        &city,
        &entry(
            "dr",
            "push",
            stall.port,
            &to_dr,
            &dr,
            "call_timeout_secs = 3\n",
        ),
    );
    city.start_node();

    // 24 MiB that does not compress.
    let src = city.path().join("src");
    fill(&src, 6, 4, 1);
    let agent = city.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    let started = Instant::now();
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();

    let prov_ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    let dr_ops = dr.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    wait_until("the snapshot through the cut link", 60, || {
        prov.snapshots(&prov_ops).len() == 1
    });
    wait_until("the snapshot through the stalled link", 40, || {
        dr.snapshots(&dr_ops).len() == 1
    });
    // The stalled link was given up on, not waited out.
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the stalled link was waited out: {:?}",
        started.elapsed()
    );
    assert_eq!(cut.cuts_made(), 2);
    assert_eq!(stall.stalls_made(), 1);
    // Resumed, not restarted: starting over after each cut would forward
    // 10 + 10 + 24 MiB; resuming forwards the 24 MiB, what each cut lost
    // in flight, and the calls around them.
    let forwarded = cut.forwarded();
    assert!(
        forwarded < 36 << 20,
        "{forwarded} bytes went through the cut link for 24 MiB"
    );
    let at_city = ids(&city.snapshots(&agent));
    assert_eq!(ids(&prov.snapshots(&prov_ops)), at_city);
    assert_eq!(ids(&dr.snapshots(&dr_ops)), at_city);
    for (c, ops) in [(&prov, &prov_ops), (&dr, &dr_ops)] {
        let target = c.path().join("restored");
        c.restore_latest(ops, &target).ok();
        assert_same_tree(&src, &target);
    }

    // The city's audit names each fault and the recovery; status is clean
    // again once the passes succeed.
    let admin = city.client(&["--role", "admin", "--name", "root"]);
    wait_until("clean rows", 20, || {
        let st = status(&city, &admin);
        st["replication"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["last_error"] == "")
    });
    let st = status(&city, &admin);
    assert_eq!(row(&st, "prov", "finance").unwrap()["snapshots_sent"], 1);
    assert_eq!(row(&st, "dr", "finance").unwrap()["snapshots_sent"], 1);
    let auditor = city.client(&["--role", "auditor", "--name", "aud"]);
    let events = city.audit(&auditor);
    let named = |event: &str, needle: &str| {
        events.iter().any(|e| {
            e["event"] == event && e["detail"].as_str().unwrap_or_default().contains(needle)
        })
    };
    assert!(named("replication_failed", "push prov"), "{events:?}");
    assert!(
        named("replication_failed", "call_timeout_secs"),
        "the stall is not named: {events:?}"
    );
    assert!(named("replication_resumed", "push prov"), "{events:?}");
    assert!(named("replication_resumed", "push dr"), "{events:?}");
    for c in [&mut city, &mut prov, &mut dr] {
        c.stop_node();
    }
}

#[test]
fn a_primary_killed_mid_pull_leaves_the_replica_with_whole_snapshots_that_all_restore() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    // The province pulls from the city, 4 MiB/s, with a certificate the
    // city's CA issued it.
    let from_city = replica_cert(&city, "prov");
    super::append(
        &prov,
        &entry(
            "city",
            "pull",
            city.port(),
            &from_city,
            &city,
            "call_timeout_secs = 10\nbandwidth_mib = 4\n",
        ),
    );
    city.start_node();

    // Four generations, each adding 6 MiB; a copy of each tree is kept.
    let src = city.path().join("src");
    let agent = city.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    let mut trees = Vec::new();
    for g in 0..4u64 {
        fill(&src, 3, 2, g + 1);
        run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
        let copy = city.path().join(format!("gen{g}"));
        copy_tree(&src, &copy);
        trees.push(copy);
    }
    let at_city = city.snapshots(&agent);
    assert_eq!(at_city.len(), 4);

    prov.start_node();
    let prov_ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    wait_until("a first snapshot pulled", 30, || {
        !prov.snapshots(&prov_ops).is_empty()
    });
    // The primary dies mid-pull (24 MiB at 4 MiB/s takes about 6 s).
    city.kill_node();
    let listed = prov.snapshots(&prov_ops);
    assert!(
        listed.len() < 4,
        "the pull finished before the kill: the test proves nothing"
    );
    // Every snapshot the replica lists restores byte for byte.
    for s in &listed {
        let id = s["id"].as_str().unwrap();
        let g = at_city.iter().position(|c| c["id"] == id).unwrap();
        let target = prov.path().join(format!("restored-{g}"));
        prov.refuge(
            &prov_ops,
            &["restore", id, "--target", target.to_str().unwrap()],
        )
        .ok();
        assert_same_tree(&trees[g], &target);
    }
    // The replica reports the dead primary, in status and in health.
    let admin = prov.client(&["--role", "admin", "--name", "root"]);
    wait_until("the failure reported", 30, || {
        let st = status(&prov, &admin);
        st["replication"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["peer"] == "city" && r["last_error"] != "")
    });
    let h = prov.refuge(&admin, &["health", "--service", "refuge.v1.Replication"]);
    assert_ne!(h.code, 0, "{}", h.stdout);

    // Back: the pull finishes, with the city's ids, once each.
    city.start_node();
    wait_until("all four pulled", 60, || {
        prov.snapshots(&prov_ops).len() == 4
    });
    assert_eq!(ids(&prov.snapshots(&prov_ops)), ids(&at_city));
    let target = prov.path().join("restored-last");
    prov.restore_latest(&prov_ops, &target).ok();
    assert_same_tree(&trees[3], &target);
    wait_until("health serving again", 30, || {
        prov.refuge(&admin, &["health", "--service", "refuge.v1.Replication"])
            .code
            == 0
    });
    let st = status(&prov, &admin);
    let r = row(&st, "city", "finance").unwrap();
    assert_eq!(r["direction"], "pull", "{r}");
    assert_eq!(r["snapshots_sent"], 4, "{r}");
    for c in [&mut city, &mut prov] {
        c.stop_node();
    }
}

#[test]
fn a_corrupt_chunk_at_the_sender_is_quarantined_not_sent_and_replication_goes_on_once_healed() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    let to_prov = replica_cert(&prov, "city");
    super::append(&city, &super::push_to(&prov, "prov", &to_prov, &prov));
    city.start_node();
    let src = city.path().join("src");
    fill(&src, 2, 3, 9);
    let agent = city.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    // Damage the city's chunk bodies on disk before the province exists.
    city.stop_node();
    city.flip_blob_bytes(64);
    prov.start_node();
    city.start_node();

    let admin = city.client(&["--role", "admin", "--name", "root"]);
    wait_until("the failure in status", 30, || {
        row(&status(&city, &admin), "prov", "finance").is_some_and(|r| {
            r["last_error"]
                .as_str()
                .unwrap()
                .contains("quarantined, not sent")
        })
    });
    let prov_ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    assert!(prov.snapshots(&prov_ops).is_empty());
    let auditor = city.client(&["--role", "auditor", "--name", "aud"]);
    assert!(
        city.audit(&auditor)
            .iter()
            .any(|e| e["event"] == "chunk_quarantined"
                && e["detail"].as_str().unwrap().contains("replication")),
        "the quarantine is not audited"
    );

    // The next backup re-uploads the damaged chunk; then the snapshots go.
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    wait_until("both snapshots at the province", 30, || {
        prov.snapshots(&prov_ops).len() == 2
    });
    let target = prov.path().join("restored");
    prov.restore_latest(&prov_ops, &target).ok();
    assert_same_tree(&src, &target);
    let prov_admin = prov.client(&["--role", "admin", "--name", "root"]);
    prov.assert_verify_clean(&prov_admin);
    for c in [&mut city, &mut prov] {
        c.stop_node();
    }
}
