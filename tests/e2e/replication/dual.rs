//! A dual-active centre: two sites under one CA that push to each other,
//! and an agent naming both (`[node] address` and `fallback`). It backs up
//! to the first site whose ingest serves, falls over when that one is down
//! or NOT_SERVING without uploading everything again, and the two sites
//! converge on the same snapshots, each once.

use std::fs;
use std::path::Path;

use refuge_tests::{Cluster, assert_same_tree, run};
use serde_json::Value;

use super::{entry, ids, replica_cert, wait_until};

/// Rewrites `c`'s node.toml: `base`, the replication entry `peer`, and a
/// free-space reserve of `reserve_mib` checked every second.
fn configure(c: &Cluster, base: &str, peer: &str, reserve_mib: u64) {
    fs::write(
        c.path().join("node.toml"),
        format!(
            "{base}\n{peer}\n[health]\nmin_free_mib = {reserve_mib}\ncheck_interval_secs = 1\n"
        ),
    )
    .unwrap();
}

/// One backup with `agent` (run in `c`'s directory); its JSON report.
fn backup(c: &Cluster, agent: &Path) -> Value {
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup", "--json"],
    )
    .ok();
    let v = r.json();
    v.as_array().map(|a| a[0].clone()).unwrap_or(v)
}

fn change(src: &Path, seed: u64) {
    let p = src.join("big.bin");
    let mut big = fs::read(&p).unwrap();
    let at = (seed as usize % 16) << 18;
    big[at..at + (300 << 10)].copy_from_slice(&refuge_tests::noise(300 << 10, seed << 1));
    fs::write(p, big).unwrap();
}

#[test]
fn an_agent_falls_over_between_two_active_sites_that_converge_without_duplicates() {
    let mut a = Cluster::configured("");
    let mut b = Cluster::configured("");
    // One CA for both sites: b takes a's certificates.
    for e in fs::read_dir(a.path().join("certs")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), b.path().join("certs").join(e.file_name())).unwrap();
    }
    let base_a = fs::read_to_string(a.path().join("node.toml")).unwrap();
    let base_b = fs::read_to_string(b.path().join("node.toml")).unwrap();
    let cert_ab = replica_cert(&a, "site-a");
    let cert_ba = replica_cert(&a, "site-b");
    let a_to_b = entry(
        "b",
        "push",
        b.port(),
        &cert_ab,
        &a,
        "call_timeout_secs = 10\n",
    );
    let b_to_a = entry(
        "a",
        "push",
        a.port(),
        &cert_ba,
        &a,
        "call_timeout_secs = 10\n",
    );
    configure(&a, &base_a, &a_to_b, 1);
    configure(&b, &base_b, &b_to_a, 1);
    a.start_node();
    b.start_node();
    let (at_a, at_b) = (
        format!("127.0.0.1:{}", a.port()),
        format!("127.0.0.1:{}", b.port()),
    );

    let src = a.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), refuge_tests::noise(6 << 20, 11)).unwrap();
    fs::write(src.join("small.txt"), b"a register of legal entities").unwrap();
    // Each site on its own, for checking what it holds.
    let only_a = a.agent_config("only-a.toml", "certs/finance-db1", "certs/ca.pem", &[]);
    let only_b = b.agent_config("only-b.toml", "certs/finance-db1", "certs/ca.pem", &[]);
    // The agent names both sites.
    let agent = a.default_agent(&[("data", &src, "tree")]);
    let text = fs::read_to_string(&agent).unwrap().replace(
        &format!("address = \"{at_a}\"\n"),
        &format!("address = \"{at_a}\"\nfallback = [\"{at_b}\"]\n"),
    );
    fs::write(&agent, text).unwrap();

    // Both up: the first site takes the backup and pushes it to the other.
    let first = backup(&a, &agent);
    assert_eq!(first["node"], at_a.as_str(), "{first}");
    wait_until("the first snapshot at b", 30, || {
        b.snapshots(&only_b).len() == 1
    });

    // The first site down: the agent falls over, and sends only the change.
    a.kill_node();
    change(&src, 1);
    let second = backup(&a, &agent);
    assert_eq!(second["node"], at_b.as_str(), "{second}");
    assert_eq!(second["parent"], first["snapshot"], "{second}");
    let sent = second["bytes_sent"].as_u64().unwrap();
    assert!(sent < 2 << 20, "{sent} bytes sent for a 300 KiB change");
    // Listing works against whichever site serves.
    let r = run(
        "refuge",
        a.path(),
        &["-c", agent.to_str().unwrap(), "snapshots", "--json"],
    )
    .ok();
    assert_eq!(r.json().as_array().unwrap().len(), 2);

    // Back: the snapshot made at b while a was down reaches a.
    a.start_node();
    wait_until("the second snapshot at a", 30, || {
        a.snapshots(&only_a).len() == 2
    });

    // a's ingest NOT_SERVING (its disk below the reserve): the agent falls
    // over again, though a answers.
    configure(&a, &base_a, &a_to_b, 1 << 40);
    let admin_a = a.client(&["--role", "admin", "--name", "root"]);
    wait_until("a's ingest NOT_SERVING", 30, || {
        a.refuge(&admin_a, &["health", "--service", "refuge.v1.Ingest"])
            .code
            != 0
    });
    change(&src, 2);
    let third = backup(&a, &agent);
    assert_eq!(third["node"], at_b.as_str(), "{third}");
    assert!(third["bytes_sent"].as_u64().unwrap() < 2 << 20, "{third}");

    // b down too: no site serves ingest, and the user reads a's own reason
    // (not a generic "no node"); nothing is committed anywhere.
    b.stop_node();
    fs::write(src.join("small.txt"), b"made while no site could take it").unwrap();
    let r = run(
        "refuge-agent",
        a.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("nearly full"), "{}", r.stderr);
    configure(&a, &base_a, &a_to_b, 1);

    // b still down: back to a; b catches up when it returns.
    wait_until("a's ingest serving", 30, || {
        a.refuge(&admin_a, &["health", "--service", "refuge.v1.Ingest"])
            .code
            == 0
    });
    change(&src, 3);
    let fourth = backup(&a, &agent);
    assert_eq!(fourth["node"], at_a.as_str(), "{fourth}");
    assert!(fourth["bytes_sent"].as_u64().unwrap() < 2 << 20, "{fourth}");
    b.start_node();
    wait_until("both sites with all four", 30, || {
        a.snapshots(&only_a).len() == 4 && b.snapshots(&only_b).len() == 4
    });
    // The same snapshots, each once, in the same order, at both sites.
    let (sa, sb) = (ids(&a.snapshots(&only_a)), ids(&b.snapshots(&only_b)));
    assert_eq!(sa, sb);
    let unique: std::collections::BTreeSet<_> = sa.iter().map(|s| s.0.clone()).collect();
    assert_eq!(unique.len(), 4);
    for r in [&first, &second, &third, &fourth] {
        assert!(unique.contains(r["snapshot"].as_str().unwrap()));
    }
    // Either site restores the newest, byte for byte.
    for (c, cfg) in [(&a, &only_a), (&b, &only_b)] {
        let target = c.path().join("restored");
        c.restore_latest(cfg, &target).ok();
        assert_same_tree(&src, &target);
    }
    for c in [&mut a, &mut b] {
        c.stop_node();
    }
}
