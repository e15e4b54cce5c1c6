//! Crash consistency of the node (issue 6, item 1): backups of two sources,
//! and a prune, a garbage collection and a verification, run while the
//! node is SIGKILLed at a seeded random moment, round after round. After
//! every restart, every acknowledged snapshot that retention (keep the
//! last 3 per source) has not removed is listed and restores byte for
//! byte; every listed snapshot (an acknowledgement lost with the kill
//! included) restores; verification stays clean.
//!
//! `REFUGE_CRASH_ROUNDS` (default 50) and `REFUGE_CRASH_SEED` (default 1)
//! run it longer or differently: `REFUGE_CRASH_ROUNDS=500 cargo nextest run
//! -E 'test(crash::)'`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use refuge_tests::ceph::Ceph;
use refuge_tests::{Cluster, Rng, assert_same_tree, bin, copy_tree, env_u64, noise, run};

/// Changes a few files of `dir` (edits, additions, a removal).
fn mutate(dir: &Path, rng: &mut Rng, round: u64) {
    let n = 1 + rng.below(3);
    for _ in 0..n {
        let f = dir.join(format!("f{}.bin", rng.below(8)));
        let len = 1 + rng.below(4 << 20) as usize;
        fs::write(&f, noise(len, rng.next_u64())).unwrap();
    }
    fs::write(dir.join("round.txt"), format!("round {round}\n")).unwrap();
    if rng.below(4) == 0 {
        let _ = fs::remove_file(dir.join(format!("f{}.bin", rng.below(8))));
    }
}

/// Chunks freed by a prune are collected a second later.
const GRACE: &str = "[gc]\ngrace_secs = 1\n";

#[test]
fn acknowledged_snapshots_survive_a_node_killed_at_random_points() {
    let rounds = env_u64("REFUGE_CRASH_ROUNDS", 50);
    crash_rounds(&mut Cluster::start_with(GRACE), rounds);
}

/// The same with chunk bodies in packs in the Ceph bucket (issue 17):
/// fewer rounds by default (`REFUGE_CRASH_ROUNDS_S3`). Then, after one
/// garbage collection that runs to its end (a kill between deleting a
/// dead pack and dropping its record leaves the record to the next one),
/// the bucket holds exactly the packs the catalog records.
#[test]
fn acknowledged_snapshots_survive_a_node_on_ceph_killed_at_random_points() {
    let rounds = env_u64("REFUGE_CRASH_ROUNDS_S3", 20);
    let ceph = Ceph::shared();
    // Packs of 1 MiB: kills land in the middle of pack uploads too.
    let (mut c, prefix) = Cluster::on_ceph(&ceph, 1, GRACE);
    crash_rounds(&mut c, rounds);
    let admin = c.client(&["--role", "admin", "--name", "final-gc"]);
    c.refuge(&admin, &["admin", "gc"]).ok();
    c.stop_node();
    c.assert_bucket_matches_catalog(&ceph, &prefix);
}

/// `rounds` rounds of backups, prune, GC and verify with the node killed
/// under them, on the started node `c`.
fn crash_rounds(c: &mut Cluster, rounds: u64) {
    let mut rng = Rng(env_u64("REFUGE_CRASH_SEED", 1) | 1);
    let srcs: Vec<PathBuf> = ["a", "b"].iter().map(|s| c.path().join(s)).collect();
    for s in &srcs {
        fs::create_dir_all(s).unwrap();
    }
    let agent = c.default_agent(&[("a", &srcs[0], "tree"), ("b", &srcs[1], "tree")]);
    // One try per backup (a killed node fails it at once), uploads slowed
    // to 8 MB/s so that kills land before, during and after commits.
    let text = fs::read_to_string(&agent).unwrap().replace(
        "[chunking]",
        "[limits]\nretries = 0\nmax_upload_rate = 8000000\n\n[chunking]",
    );
    fs::write(&agent, text).unwrap();
    let a = agent.to_str().unwrap();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let ad = admin.to_str().unwrap();
    c.keep_last(&admin, "finance", 3);
    // Acknowledged snapshot id -> the tree it must restore to, and its
    // source and round.
    let mut acked: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut acked_at: BTreeMap<String, (String, u64)> = BTreeMap::new();
    // Every snapshot ever listed -> its source and the round it was first
    // seen in.
    let mut seen: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let copies = c.path().join("expected");
    fs::create_dir_all(&copies).unwrap();
    for round in 0..rounds {
        let mut expected = Vec::new();
        for (i, s) in srcs.iter().enumerate() {
            mutate(s, &mut rng, round);
            let copy = copies.join(format!("{round}-{i}"));
            copy_tree(s, &copy);
            expected.push(copy);
        }
        let children: Vec<_> = ["a", "b"]
            .iter()
            .map(|src| {
                Command::new(bin("refuge-agent"))
                    .args(["-c", a, "backup", "--json", "--source", src])
                    .current_dir(c.path())
                    .env("RUST_LOG", "off")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Prune, collect and verify, one after the other, meanwhile.
        let maintenance = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for w in prune gc verify; do {r} -c {ad} admin $w || echo $w >> interrupted.txt; done",
                r = bin("refuge").display()
            ))
            .current_dir(c.path())
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        c.kill_node();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            if out.status.code() == Some(0) {
                let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let id = rep[0]["snapshot"].as_str().unwrap().to_string();
                acked.insert(id.clone(), expected[i].clone());
                acked_at.insert(id, (["a", "b"][i].to_string(), round));
            }
        }
        maintenance.wait_with_output().unwrap();
        c.start_node();
        let listed_json = c.snapshots(&agent);
        let listed: Vec<String> = listed_json
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for s in &listed_json {
            seen.entry(s["id"].as_str().unwrap().to_string())
                .or_insert_with(|| (s["source"].as_str().unwrap().to_string(), round));
        }
        // Every acknowledged snapshot is listed, unless retention removed
        // it: then three newer ones of its source have been listed.
        acked.retain(|id, _| {
            if listed.contains(id) {
                return true;
            }
            let (src, r) = &acked_at[id];
            let newer = seen
                .values()
                .filter(|(s, first)| s == src && first > r)
                .count();
            assert!(
                newer >= 3,
                "round {round}: acknowledged snapshot {id} (source {src}, round {r}) is gone with only {newer} newer snapshots of its source"
            );
            false
        });
        // This round's acknowledged snapshots (and any listed one this
        // round made without an acknowledgement) restore byte for byte.
        for id in listed.iter().rev().take(2) {
            let out = c.path().join(format!("restore-{round}-{}", &id[..8]));
            run(
                "refuge",
                c.path(),
                &["-c", a, "restore", id, "--target", out.to_str().unwrap()],
            )
            .ok();
            if let Some(want) = acked.get(id) {
                assert_same_tree(want, &out);
            }
            fs::remove_dir_all(&out).unwrap();
        }
        if round % 10 == 9 {
            let v = run("refuge", c.path(), &["-c", ad, "admin", "verify"]).ok();
            assert!(
                v.stdout.contains("no damage found"),
                "round {round}: {}",
                v.stdout
            );
        }
    }
    // At the end, every acknowledged snapshot retention kept restores
    // byte for byte.
    assert!(!acked_at.is_empty(), "no backup was ever acknowledged");
    for (id, want) in &acked {
        let out = c.path().join(format!("final-{}", &id[..8]));
        run(
            "refuge",
            c.path(),
            &["-c", a, "restore", id, "--target", out.to_str().unwrap()],
        )
        .ok();
        assert_same_tree(want, &out);
        fs::remove_dir_all(&out).unwrap();
    }
    // How often the kill landed in each maintenance step (or it failed).
    let cut = fs::read_to_string(c.path().join("interrupted.txt")).unwrap_or_default();
    let count = |w: &str| cut.lines().filter(|l| *l == w).count();
    eprintln!(
        "crash: {rounds} rounds, {} of {} backups acknowledged, the {} retention kept all restored; prune interrupted {} times, gc {}, verify {}",
        acked_at.len(),
        2 * rounds,
        acked.len(),
        count("prune"),
        count("gc"),
        count("verify")
    );
}
