//! Purge of a tenant or a source (issue 21, item 3, residual
//! information): an admin requests it, another admin confirms it after
//! `[purge] delay_secs`; it removes every snapshot and chunk of it and
//! reclaims the space, so that none of its bytes stay anywhere in the
//! node's data directory, while other tenants and sources are untouched.
//! Every step is audited; the requester cannot confirm, nor anyone early;
//! a cancelled purge cannot be confirmed; only admins purge.

use std::fs;
use std::path::Path;

use refuge_tests::{Cluster, assert_same_tree, noise, run, tree_contains};

fn backup(c: &Cluster, cfg: &Path) {
    run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup"],
    )
    .ok();
}

/// 64 bytes from the middle of `data`: incompressible noise is stored as
/// it is (zstd keeps raw blocks), so these bytes are on disk while any
/// chunk of the file is.
fn needle(data: &[u8]) -> Vec<u8> {
    data[data.len() / 2..data.len() / 2 + 64].to_vec()
}

// `noise` seeds differ only when they differ above bit 0.

#[test]
fn a_confirmed_purge_leaves_nothing_of_a_tenant_or_source_on_disk() {
    let c = Cluster::start_with("[purge]\ndelay_secs = 3\n");
    let store = c.path().join("store");
    // finance: one source; health: two sources on one host.
    let fin = c.path().join("fin");
    let rec = c.path().join("records");
    let scans = c.path().join("scans");
    for d in [&fin, &rec, &scans] {
        fs::create_dir_all(d).unwrap();
    }
    let (f, r, s) = (
        noise(300 << 10, 21),
        noise(300 << 10, 23),
        noise(300 << 10, 25),
    );
    fs::write(fin.join("ledger.bin"), &f).unwrap();
    fs::write(rec.join("records.bin"), &r).unwrap();
    fs::write(scans.join("scans.bin"), &s).unwrap();
    let finance = c.default_agent(&[("ledger", &fin, "tree")]);
    c.client(&["--tenant", "health", "--host", "h1"]);
    let health = c.agent_config(
        "health.toml",
        "certs/health-h1",
        "certs/ca.pem",
        &[("records", &rec, "tree"), ("scans", &scans, "tree")],
    );
    for i in 0..2 {
        fs::write(fin.join("n.txt"), format!("{i}")).unwrap();
        backup(&c, &finance);
        backup(&c, &health);
    }
    let root1 = c.client(&["--role", "admin", "--name", "root1"]);
    let root2 = c.client(&["--role", "admin", "--name", "root2"]);
    let ops = c.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    let auditor = c.client(&["--role", "auditor", "--name", "assessor"]);
    for n in [&f, &r, &s] {
        assert!(tree_contains(&store, &needle(n)), "marker not stored");
    }

    // Only admins, with a reason.
    c.refuge(
        &ops,
        &[
            "admin", "purge", "request", "--tenant", "finance", "--reason", "x",
        ],
    )
    .fails(1, "role operator may not call RequestPurge");
    c.refuge(
        &root1,
        &[
            "admin", "purge", "request", "--tenant", "finance", "--reason", " ",
        ],
    )
    .fails(1, "give a reason");

    // A cancelled purge cannot be confirmed.
    let p = c
        .refuge(
            &root1,
            &[
                "admin", "purge", "request", "--tenant", "finance", "--reason", "test", "--json",
            ],
        )
        .ok()
        .json();
    let id = p["id"].as_str().unwrap().to_string();
    c.refuge(&root2, &["admin", "purge", "cancel", &id]).ok();
    std::thread::sleep(std::time::Duration::from_secs(4));
    c.refuge(&root2, &["admin", "purge", "confirm", &id])
        .fails(1, "is cancelled, not pending");

    // The tenant: the requester may not confirm, nor anyone before the delay.
    let p = c
        .refuge(
            &root1,
            &[
                "admin",
                "purge",
                "request",
                "--tenant",
                "finance",
                "--reason",
                "department closed",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(p["state"], "pending");
    let id = p["id"].as_str().unwrap().to_string();
    c.refuge(&root2, &["admin", "purge", "confirm", &id])
        .fails(1, "may be confirmed from");
    std::thread::sleep(std::time::Duration::from_secs(4));
    c.refuge(&root1, &["admin", "purge", "confirm", &id])
        .fails(1, "another admin must confirm it");
    let done = c
        .refuge(&root2, &["admin", "purge", "confirm", &id, "--json"])
        .ok()
        .json();
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["snapshots_removed"], 2, "{done}");
    assert!(done["chunks_removed"].as_u64().unwrap() > 0, "{done}");
    assert_eq!(done["snapshots_left"], 0);
    assert_eq!(done["chunks_left"], 0);
    // Nothing of it in the catalog, in a verification pass, or on disk.
    let listed = c
        .refuge(&root1, &["snapshots", "--tenant", "finance", "--json"])
        .ok()
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed}");
    let v = c
        .refuge(
            &root1,
            &["admin", "verify", "--tenant", "finance", "--json"],
        )
        .ok()
        .json();
    assert_eq!(v["checked"], 0, "{v}");
    assert!(
        !tree_contains(&store, &needle(&f)),
        "finance's bytes are still on disk"
    );
    assert!(tree_contains(&store, &needle(&r)));

    // One source of health: the other one stays whole.
    let p = c
        .refuge(
            &root2,
            &[
                "admin",
                "purge",
                "request",
                "--tenant",
                "health",
                "--host",
                "h1",
                "--source",
                "scans",
                "--reason",
                "collected by mistake",
                "--json",
            ],
        )
        .ok()
        .json();
    let id = p["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let done = c
        .refuge(&root1, &["admin", "purge", "confirm", &id, "--json"])
        .ok()
        .json();
    assert_eq!(done["snapshots_removed"], 2, "{done}");
    assert_eq!(done["chunks_left"], 0, "{done}");
    assert!(
        !tree_contains(&store, &needle(&s)),
        "the source's bytes are still on disk"
    );
    let left: Vec<String> = c
        .snapshots(&health)
        .iter()
        .map(|s| s["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["records", "records"]);
    let target = c.path().join("restored");
    c.restore_source(&health, "records", &target).ok();
    assert_same_tree(&rec, &target);
    c.assert_verify_clean(&root1);

    // Every step is on the record.
    let log = c.audit(&auditor);
    let events: Vec<&str> = log.iter().map(|r| r["event"].as_str().unwrap()).collect();
    for e in [
        "purge_requested",
        "purge_cancelled",
        "purge_refused",
        "purge_confirmed",
        "purge_done",
    ] {
        assert!(events.contains(&e), "{e} not in {events:?}");
    }
    let list = c
        .refuge(&root1, &["admin", "purge", "list", "--json"])
        .ok()
        .json();
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["cancelled", "done", "done"]);
    // The finance agent may back up again: a purge is not a ban.
    backup(&c, &finance);
}
