//! Verification (scrub): a chunk damaged on the node's disk is found,
//! named with the snapshots that use it and quarantined; restores fail
//! loudly instead of returning bad bytes; the next backup heals it.

use std::fs;

use refuge_tests::{Cluster, assert_same_tree, noise, run};

#[test]
fn a_damaged_chunk_is_named_with_its_snapshots_fails_restores_and_is_healed_by_the_next_backup() {
    let mut c = Cluster::start();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), noise(6 << 20, 77)).unwrap();
    fs::write(src.join("small.txt"), b"first").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let (a, adm) = (agent.to_str().unwrap(), admin.to_str().unwrap());
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    fs::write(src.join("small.txt"), b"second").unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let ids: Vec<String> = run("refuge", c.path(), &["-c", a, "snapshots", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let clean = run("refuge", c.path(), &["-c", adm, "admin", "verify"]).ok();
    assert!(clean.stdout.contains("no damage found"), "{}", clean.stdout);

    // Flip bytes in the middle of every blob file, with the node stopped.
    c.stop_node();
    c.flip_blob_bytes(64);
    c.start_node();

    let r = run(
        "refuge",
        c.path(),
        &["-c", adm, "admin", "verify", "--json"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("corrupt chunks"), "{}", r.stderr);
    let v = r.json();
    let corrupt = v["corrupt"].as_array().unwrap();
    assert!(!corrupt.is_empty(), "{v:#}");
    // big.bin is in both snapshots: its damaged chunk names both.
    let mut named: Vec<String> = corrupt
        .iter()
        .flat_map(|c| c["snapshots"].as_array().unwrap().clone())
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    named.sort();
    named.dedup();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(named, want);
    let bad_chunk = corrupt[0]["chunk"].as_str().unwrap().to_string();

    // A restore fails loudly, naming the chunk; nothing wrong is written.
    let out = c.path().join("out");
    let r = run(
        "refuge",
        c.path(),
        &[
            "-c",
            a,
            "restore",
            "latest",
            "--target",
            out.to_str().unwrap(),
        ],
    )
    .fails(1, "quarantined");
    assert!(r.stderr.contains("big.bin"), "{}", r.stderr);
    assert!(!out.join("big.bin").exists());
    // Running verify again reports the chunks as still quarantined.
    let again = run(
        "refuge",
        c.path(),
        &["-c", adm, "admin", "verify", "--json"],
    );
    assert_eq!(again.code, 1);
    assert_eq!(
        again.json()["still_quarantined"].as_u64().unwrap(),
        corrupt.len() as u64
    );

    // The next ordinary backup re-reads the files that used them, which
    // heals the store.
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let healed = run("refuge", c.path(), &["-c", adm, "admin", "verify"]).ok();
    assert!(
        healed.stdout.contains("no damage found"),
        "{}",
        healed.stdout
    );
    for id in &ids {
        let out = c.path().join(format!("out-{}", &id[..8]));
        run(
            "refuge",
            c.path(),
            &[
                "-c",
                a,
                "restore",
                id,
                "--target",
                out.to_str().unwrap(),
                "--include",
                "big.bin",
            ],
        )
        .ok();
        assert_eq!(
            fs::read(out.join("big.bin")).unwrap(),
            fs::read(src.join("big.bin")).unwrap()
        );
    }
    let out = c.path().join("out-latest");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            a,
            "restore",
            "latest",
            "--target",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    assert_same_tree(&src, &out);

    let log = c.audit(&auditor);
    assert!(
        log.iter().any(|r| r["event"] == "chunk_quarantined"
            && r["detail"].as_str().unwrap().contains(&bad_chunk))
    );
    assert!(log.iter().any(|r| r["event"] == "chunk_healed"));
    assert!(
        log.iter()
            .any(|r| r["event"] == "verification" && r["outcome"] == "failed")
    );
}
