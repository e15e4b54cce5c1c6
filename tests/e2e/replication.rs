//! Replication between real `refuged` processes, each with its own CA:
//! a city node pushes to a provincial node, which pushes to an off-site
//! centre (the chain: sealed all the way, ids and times kept, only new
//! chunks sent, deletions not travelling, lag in status and health,
//! audited on both sides); and the refusals: a peer certificate from the
//! wrong CA, a certificate that is not a replica's, a replica whose disk is
//! below its reserve (which stops replication, not the sender's ingest).
//! Deletions follow only a pulling node configured to follow them, never
//! a snapshot pinned there.
//! `faults`: cut and stalled links, and a primary killed mid-replication;
//! `dual`: an agent falling over between two active sites that converge;
//! `forged`: a peer that lies, refused at every step.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use refuge_tests::{Cluster, assert_same_tree, run};
use serde_json::Value;

mod dual;
mod faults;
mod forged;

/// Appends `text` to `c`'s node.toml.
pub(crate) fn append(c: &Cluster, text: &str) {
    let p = c.path().join("node.toml");
    let mut s = fs::read_to_string(&p).unwrap();
    s.push('\n');
    s.push_str(text);
    fs::write(p, s).unwrap();
}

/// Issues, with `to`'s CA, a replica certificate named `name` for every
/// tenant; returns its path without extension.
pub(crate) fn replica_cert(to: &Cluster, name: &str) -> String {
    run(
        "refuge",
        to.path(),
        &[
            "certs",
            "issue",
            "--dir",
            "certs",
            "--role",
            "replica",
            "--host",
            name,
            "--all-tenants",
        ],
    )
    .ok();
    format!("{}/certs/replica-{name}", to.path().display())
}

/// A `[[replication]]` entry pushing to `to` with the certificate `cert`
/// (path without extension), passes every second and after each change.
pub(crate) fn push_to(to: &Cluster, name: &str, cert: &str, ca_of: &Cluster) -> String {
    entry(
        name,
        "push",
        to.port(),
        cert,
        ca_of,
        "call_timeout_secs = 20\n",
    )
}

/// A `[[replication]]` entry named `name` for the peer at 127.0.0.1:`port`
/// whose node certificate `ca_of`'s CA signed, presenting `cert` (path
/// without extension); passes every second (and, pushing, after each
/// change); `extra` lines are appended.
fn entry(
    name: &str,
    direction: &str,
    port: u16,
    cert: &str,
    ca_of: &Cluster,
    extra: &str,
) -> String {
    format!(
        "[[replication]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\ndirection = \"{direction}\"\nca = \"{}/certs/ca.pem\"\ncert = \"{cert}.pem\"\nkey = \"{cert}.key\"\ninterval_secs = 1\ncontinuous = {}\n{extra}",
        ca_of.path().display(),
        direction == "push",
    )
}

/// Names `c`'s site (node.toml `site`, which precedes every table).
fn set_site(c: &Cluster, site: &str) {
    let p = c.path().join("node.toml");
    let s = fs::read_to_string(&p).unwrap();
    fs::write(p, format!("site = \"{site}\"\n{s}")).unwrap();
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(c: &Cluster, admin: &Path) -> Value {
    let r = c.refuge(admin, &["status", "--json"]);
    r.json()
}

/// The replication row of `peer` and `tenant` in `refuge status --json`.
fn row(st: &Value, peer: &str, tenant: &str) -> Option<Value> {
    st["replication"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["peer"] == peer && r["tenant"] == tenant)
        .cloned()
}

fn ids(snaps: &[Value]) -> Vec<(String, i64, u64)> {
    snaps
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["time_unix_micros"].as_i64().unwrap(),
                s["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_snapshot_made_in_the_city_reaches_the_offsite_centre_sealed_and_deletions_stay_local() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    let mut dr = Cluster::configured("");
    let to_prov = replica_cert(&prov, "city");
    append(&city, &push_to(&prov, "prov", &to_prov, &prov));
    let to_dr = replica_cert(&dr, "prov");
    append(&prov, &push_to(&dr, "dr", &to_dr, &dr));
    for (c, site) in [(&city, "city"), (&prov, "prov"), (&dr, "dr")] {
        set_site(c, site);
    }
    let metrics_port = refuge_tests::free_local_port();
    append(
        &prov,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    city.start_node();
    prov.start_node();
    dr.start_node();

    // An encrypted tenant: no hop ever holds its key.
    let src = city.path().join("src");
    fs::create_dir_all(src.join("ledger")).unwrap();
    let marker = b"REFUGE-MARKER-91be: the province's payroll ";
    let mut secret = marker.repeat(40);
    secret.extend(refuge_tests::noise(200 << 10, 3));
    fs::write(src.join("ledger/payroll.txt"), &secret).unwrap();
    fs::write(src.join("big.bin"), refuge_tests::noise(6 << 20, 4)).unwrap();
    let agent = city.sealed_agent(&[("data", &src, "tree")]);
    let key = city.path().join("certs/finance.key");
    let a = agent.to_str().unwrap();
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();

    let prov_ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    let dr_ops = dr.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    wait_until("the snapshot at the off-site centre", 60, || {
        dr.snapshots(&dr_ops).len() == 1
    });
    // Ids, node times and sequence numbers are the city's, everywhere.
    let at_city = ids(&city.snapshots(&agent));
    assert_eq!(ids(&prov.snapshots(&prov_ops)), at_city);
    assert_eq!(ids(&dr.snapshots(&dr_ops)), at_city);

    // Restored byte for byte at the third site, with the tenant's key.
    let dr_restore = dr.path().join("ops-sealed.toml");
    fs::write(
        &dr_restore,
        format!(
            "{}\n[encryption]\nkey_file = \"{}\"\n",
            fs::read_to_string(&dr_ops).unwrap(),
            key.display()
        ),
    )
    .unwrap();
    let target = dr.path().join("restored");
    dr.restore_latest(&dr_restore, &target).ok();
    assert_same_tree(&src, &target);
    // A drill at the off-site centre proves its copy, and says so.
    let reports = dr.path().join("reports");
    let r = dr
        .refuge(
            &dr_restore,
            &[
                "drill",
                "--json",
                "--report-dir",
                reports.to_str().unwrap(),
                "--scratch",
                dr.path().join("scratch").to_str().unwrap(),
            ],
        )
        .ok();
    let report = r.json();
    assert_eq!(report["site"], "dr", "{report}");
    assert_eq!(report["passed"], true, "{report}");
    let recorded = dr.refuge(&dr_ops, &["drills", "--json"]).ok().json();
    assert_eq!(recorded[0]["site"], "dr", "{recorded}");
    let md = fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .unwrap();
    assert!(fs::read_to_string(md).unwrap().contains("| Site | dr |"));
    // Without the key the off-site operator cannot read it.
    let r = dr.restore_latest(&dr_ops, &dr.path().join("nokey"));
    assert_ne!(r.code, 0, "{}", r.stdout);
    // No hop stored plaintext.
    for c in [&prov, &dr] {
        assert!(
            !refuge_tests::tree_contains(&c.path().join("store"), marker),
            "plaintext stored"
        );
    }

    // A 5% change: only its new chunks travel.
    let prov_admin = prov.client(&["--role", "admin", "--name", "root"]);
    let sent_before = row(&status(&prov, &prov_admin), "dr", "finance").unwrap()["bytes_sent"]
        .as_u64()
        .unwrap();
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big[1 << 20..(1 << 20) + (300 << 10)].copy_from_slice(&refuge_tests::noise(300 << 10, 5));
    fs::write(src.join("big.bin"), big).unwrap();
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    wait_until("the second snapshot at the off-site centre", 60, || {
        dr.snapshots(&dr_ops).len() == 2
    });
    let st = status(&prov, &prov_admin);
    assert_eq!(st["node"]["site"], "prov", "{st}");
    let r = row(&st, "dr", "finance").unwrap();
    let second = r["bytes_sent"].as_u64().unwrap() - sent_before;
    assert!(
        second < 2 << 20,
        "the second snapshot sent {second} bytes for a 300 KiB change"
    );
    assert_eq!(r["snapshots_sent"], 2, "{r}");
    assert_eq!(r["pending_snapshots"], 0, "{r}");
    assert_eq!(r["last_error"], "", "{r}");
    assert!(r["lag_secs"].as_f64().unwrap() < 120.0, "{r}");
    // The same figures for Prometheus.
    let m = refuge_tests::http_get(metrics_port, "/metrics");
    for line in [
        r#"refuge_replication_peer_lag_seconds{peer="dr",tenant="finance"}"#,
        r#"refuge_replication_pending_snapshots{peer="dr",tenant="finance"} 0"#,
        r#"refuge_replication_snapshots_total{peer="dr",tenant="finance"} 2"#,
        r#"refuge_replication_failing{peer="dr"} 0"#,
    ] {
        assert!(m.contains(line), "{line} missing in:\n{m}");
    }
    assert!(m.contains(r#"refuge_replication_bytes_total{peer="dr",tenant="finance"}"#));
    assert_eq!(
        m.matches("# TYPE refuge_replication_peer_lag_seconds")
            .count(),
        1
    );
    // Health: the replication service of the province is SERVING.
    let h = prov.refuge(
        &prov_admin,
        &["health", "--service", "refuge.v1.Replication"],
    );
    assert_eq!(h.code, 0, "{}{}", h.stdout, h.stderr);

    // A prune in the city does not delete at the other sites.
    let city_admin = city.client(&["--role", "admin", "--name", "root"]);
    city.keep_last(&city_admin, "finance", 1);
    city.refuge(&city_admin, &["admin", "prune"]).ok();
    assert_eq!(city.snapshots(&agent).len(), 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prov.snapshots(&prov_ops).len(), 2);
    assert_eq!(dr.snapshots(&dr_ops).len(), 2);
    // ... and a prune at the province is not undone by the city's copy.
    prov.keep_last(&prov_admin, "finance", 1);
    prov.refuge(&prov_admin, &["admin", "prune"]).ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prov.snapshots(&prov_ops).len(), 1);

    // Audited on both sides of each hop.
    let dr_auditor = dr.client(&["--role", "auditor", "--name", "aud"]);
    let events = dr.audit(&dr_auditor);
    assert!(
        events.iter().any(|e| e["event"] == "snapshot_imported"
            && e["subject"].as_str().unwrap().contains("replica:prov")),
        "{events:?}"
    );
    let city_auditor = city.client(&["--role", "auditor", "--name", "aud"]);
    let events = city.audit(&city_auditor);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "replication_pass" && e["subject"] == "replication:prov"),
        "{events:?}"
    );
    for c in [&mut city, &mut prov, &mut dr] {
        c.stop_node();
    }
}

#[test]
fn a_wrong_ca_a_non_replica_and_a_full_replica_are_refused_and_the_sender_keeps_ingesting() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    // Below its reserve from the start: it takes no replicated data.
    let mut full = Cluster::configured("[health]\nmin_free_mib = 100000000\n");
    // Signed by the city's own CA, which the province does not trust.
    let wrong_ca = replica_cert(&city, "city");
    append(&city, &push_to(&prov, "wrongca", &wrong_ca, &prov));
    // The province's CA, but an operator's certificate.
    run(
        "refuge",
        prov.path(),
        &[
            "certs", "issue", "--dir", "certs", "--role", "operator", "--host", "city", "--tenant",
            "finance",
        ],
    )
    .ok();
    let operator = format!("{}/certs/operator-city", prov.path().display());
    append(&city, &push_to(&prov, "notreplica", &operator, &prov));
    let to_full = replica_cert(&full, "city");
    append(&city, &push_to(&full, "full", &to_full, &full));
    // The peers first: the city's first pass then meets their refusals,
    // not a connection refused.
    prov.start_node();
    full.start_node();
    city.start_node();

    let src = city.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), refuge_tests::noise(1 << 20, 7)).unwrap();
    let agent = city.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    // The city's own ingest works whatever its peers do.
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    let admin = city.client(&["--role", "admin", "--name", "root"]);
    let error_of = |peer: &str| -> String {
        let st = status(&city, &admin);
        st["replication"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["peer"] == peer)
            .map(|r| r["last_error"].as_str().unwrap().to_string())
            .find(|e| !e.is_empty())
            .unwrap_or_default()
    };
    wait_until("three failing peers", 60, || {
        ["wrongca", "notreplica", "full"]
            .iter()
            .all(|p| !error_of(p).is_empty())
    });
    let e = error_of("wrongca");
    assert!(e.contains("CA") || e.contains("certificate"), "{e}");
    let e = error_of("notreplica");
    assert!(e.contains("role operator may not call"), "{e}");
    let e = error_of("full");
    assert!(e.contains("cannot store replicated data"), "{e}");
    // The failures show in status's exit code and in health.
    assert_eq!(city.refuge(&admin, &["status"]).code, 1);
    let h = city.refuge(&admin, &["health", "--service", "refuge.v1.Replication"]);
    assert_ne!(h.code, 0, "{}", h.stdout);
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    assert_eq!(city.snapshots(&agent).len(), 2);

    // Nothing reached either peer; the province audited both refusals.
    let prov_ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    assert!(prov.snapshots(&prov_ops).is_empty());
    let auditor = prov.client(&["--role", "auditor", "--name", "aud"]);
    let events = prov.audit(&auditor);
    assert!(
        events.iter().any(|e| e["event"] == "permission_denied"
            && e["subject"].as_str().unwrap().starts_with("operator:city")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "auth_failed"),
        "{events:?}"
    );
    let full_ops = full.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    assert!(full.snapshots(&full_ops).is_empty());
    // The city audited each failure once, not once per retry.
    let city_auditor = city.client(&["--role", "auditor", "--name", "aud"]);
    let failed: Vec<_> = city
        .audit(&city_auditor)
        .into_iter()
        .filter(|e| e["event"] == "replication_failed" && e["subject"] == "replication:full")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    for c in [&mut city, &mut prov, &mut full] {
        c.stop_node();
    }
}

#[test]
fn deletions_follow_only_a_pulling_node_that_asks_and_never_a_snapshot_pinned_there() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    let mut dr = Cluster::configured("");
    // Both pull from the city; only the province follows its deletions.
    let for_prov = replica_cert(&city, "prov");
    append(
        &prov,
        &entry(
            "city",
            "pull",
            city.port(),
            &for_prov,
            &city,
            "follow_deletions = true\n",
        ),
    );
    let for_dr = replica_cert(&city, "dr");
    append(&dr, &entry("city", "pull", city.port(), &for_dr, &city, ""));
    city.start_node();
    prov.start_node();
    dr.start_node();

    let src = city.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let agent = city.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    for g in 0..3 {
        fs::write(src.join("day.txt"), format!("generation {g}")).unwrap();
        run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    }
    let prov_ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    let dr_ops = dr.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    wait_until("three at both", 30, || {
        prov.snapshots(&prov_ops).len() == 3 && dr.snapshots(&dr_ops).len() == 3
    });
    let all = ids(&city.snapshots(&agent));
    // The province pins the oldest: pins are per site.
    let prov_admin = prov.client(&["--role", "admin", "--name", "root"]);
    prov.refuge(
        &prov_admin,
        &["admin", "pin", &all[0].0[..12], "--tenant", "finance"],
    )
    .ok();

    // The city prunes to its newest.
    let city_admin = city.client(&["--role", "admin", "--name", "root"]);
    city.keep_last(&city_admin, "finance", 1);
    city.refuge(&city_admin, &["admin", "prune"]).ok();
    assert_eq!(city.snapshots(&agent).len(), 1);
    // The province follows, except for its pinned one; the centre keeps all.
    wait_until("the province following", 30, || {
        prov.snapshots(&prov_ops).len() == 2
    });
    let kept: Vec<_> = ids(&prov.snapshots(&prov_ops))
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(kept, vec![all[0].0.clone(), all[2].0.clone()]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dr.snapshots(&dr_ops).len(), 3);
    assert_eq!(prov.snapshots(&prov_ops).len(), 2);
    let auditor = prov.client(&["--role", "auditor", "--name", "aud"]);
    let deleted: Vec<_> = prov
        .audit(&auditor)
        .into_iter()
        .filter(|e| e["event"] == "snapshot_deleted" && e["subject"] == "replication:city")
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(
        deleted[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&all[1].0[..8]),
        "{deleted:?}"
    );
    for c in [&mut city, &mut prov, &mut dr] {
        c.stop_node();
    }

    // A pushing node cannot be configured to delete at its peer.
    append(
        &city,
        &entry(
            "bad",
            "push",
            dr.port(),
            &for_dr,
            &dr,
            "follow_deletions = true\n",
        ),
    );
    run(
        "refuged",
        city.path(),
        &["--config", "node.toml", "--check-config"],
    )
    .fails(2, "follow_deletions needs direction = \"pull\"");
}

/// `site`'s audit log as `c`'s copy holds it (`refuge audit --site`),
/// read with the auditor config `auditor`.
fn audit_copy(c: &Cluster, auditor: &Path, site: &str) -> Vec<Value> {
    c.refuge(auditor, &["audit", "--site", site, "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// `copy` holds `own`'s records, each with the same number and hash, and
/// `c`'s check of the copy's chain passes.
fn assert_copy_of(c: &Cluster, auditor: &Path, site: &str, own: &[Value]) {
    let copy = audit_copy(c, auditor, site);
    assert!(
        copy.len() >= own.len(),
        "{} of {} records",
        copy.len(),
        own.len()
    );
    for (a, b) in own.iter().zip(&copy) {
        assert_eq!(a["seq"], b["seq"]);
        assert_eq!(a["hash"], b["hash"], "record {} differs", a["seq"]);
    }
    let v = c
        .refuge(auditor, &["audit", "verify", "--site", site, "--json"])
        .ok()
        .json();
    assert_eq!(v["intact"], true, "{v:#}");
}

#[test]
fn a_pushing_node_keeps_a_copy_of_its_audit_log_at_the_replica_with_the_chain_intact() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    let to_prov = replica_cert(&prov, "city");
    append(&city, &push_to(&prov, "prov", &to_prov, &prov));
    prov.start_node();
    city.start_node();
    let src = city.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"audited").unwrap();
    let agent = city.default_agent(&[("data", &src, "tree")]);
    run(
        "refuge-agent",
        city.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    let city_auditor = city.client(&["--role", "auditor", "--name", "aud"]);
    let prov_auditor = prov.client(&["--role", "auditor", "--name", "aud"]);
    let own = city.audit(&city_auditor);
    let want = own.len();
    // The copy catches up with what the city had logged by then.
    wait_until("the audit copy at the province", 30, || {
        audit_copy(&prov, &prov_auditor, "city").len() >= want
    });
    assert_copy_of(&prov, &prov_auditor, "city", &own);
    // The province's own log is another chain, and does not hold them.
    let prov_own = prov.audit(&prov_auditor);
    assert!(!prov_own.iter().any(|e| e["event"] == "snapshot_committed"));
    // The copy exports and verifies like any log.
    let f = prov.path().join("city-audit.jsonl");
    prov.refuge(
        &prov_auditor,
        &["audit", "--site", "city", "--export", f.to_str().unwrap()],
    )
    .ok();
    run(
        "refuge",
        prov.path(),
        &["audit", "verify", "--file", f.to_str().unwrap()],
    )
    .ok();
    // Losing the city loses none of its audit trail up to the last pass.
    city.stop_node();
    let after = audit_copy(&prov, &prov_auditor, "city");
    assert!(after.len() >= want);
    prov.stop_node();
}

#[test]
fn a_pulling_node_keeps_a_copy_of_its_sources_audit_log_with_the_chain_intact() {
    let mut city = Cluster::configured("");
    let mut dr = Cluster::configured("");
    // dr pulls from the city with a replica certificate of the city's CA.
    let from_city = replica_cert(&city, "dr");
    append(
        &dr,
        &entry(
            "city",
            "pull",
            city.port(),
            &from_city,
            &city,
            "call_timeout_secs = 20\n",
        ),
    );
    city.start_node();
    dr.start_node();
    let src = city.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"audited at the source").unwrap();
    let agent = city.default_agent(&[("data", &src, "tree")]);
    run(
        "refuge-agent",
        city.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    let city_auditor = city.client(&["--role", "auditor", "--name", "aud"]);
    let dr_auditor = dr.client(&["--role", "auditor", "--name", "aud"]);
    let own = city.audit(&city_auditor);
    let copy = || audit_copy(&dr, &dr_auditor, "city");
    wait_until("the pulled audit copy", 30, || copy().len() >= own.len());
    assert_copy_of(&dr, &dr_auditor, "city", &own);
    // It keeps up: later records of the city arrive too.
    let before = city.audit(&city_auditor).len();
    fs::write(src.join("b.txt"), b"more").unwrap();
    run(
        "refuge-agent",
        city.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    wait_until("later records pulled", 30, || copy().len() > before);
    // Reading it adds no record at the city per pass (no feedback loop).
    let settled = city.audit(&city_auditor).len();
    std::thread::sleep(Duration::from_secs(3));
    assert!(city.audit(&city_auditor).len() <= settled + 1);

    // Pulling with a certificate for some tenants: the source refuses its
    // log (audited), and the pass says why.
    run(
        "refuge",
        city.path(),
        &[
            "certs", "issue", "--dir", "certs", "--role", "replica", "--host", "dr-part",
            "--tenant", "finance",
        ],
    )
    .ok();
    let part = format!("{}/certs/replica-dr-part", city.path().display());
    dr.stop_node();
    append(
        &dr,
        &entry(
            "city-part",
            "pull",
            city.port(),
            &part,
            &city,
            "call_timeout_secs = 20\n",
        ),
    );
    dr.start_node();
    let dr_admin = dr.client(&["--role", "admin", "--name", "root"]);
    wait_until("the refusal in status", 30, || {
        row(&status(&dr, &dr_admin), "city-part", "").is_some_and(|r| {
            r["last_error"].as_str().unwrap().contains(
                "ReadAuditLog: copying the audit log needs a replica certificate for every tenant",
            )
        })
    });
    assert!(city.audit(&city_auditor).iter().any(|e| {
        e["event"] == "permission_denied"
            && e["detail"].as_str().unwrap().starts_with("ReadAuditLog:")
    }));
    assert!(audit_copy(&dr, &dr_auditor, "city-part").is_empty());
    for c in [&mut city, &mut dr] {
        c.stop_node();
    }
}

#[test]
fn a_replica_certificate_for_some_tenants_is_refused_the_audit_log_unless_copy_audit_is_off() {
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    run(
        "refuge",
        prov.path(),
        &[
            "certs", "issue", "--dir", "certs", "--role", "replica", "--host", "city", "--tenant",
            "finance",
        ],
    )
    .ok();
    let cert = format!("{}/certs/replica-city", prov.path().display());
    append(&city, &push_to(&prov, "prov", &cert, &prov));
    prov.start_node();
    city.start_node();
    let admin = city.client(&["--role", "admin", "--name", "root"]);
    wait_until("the refusal in status", 30, || {
        row(&status(&city, &admin), "prov", "").is_some_and(|r| {
            r["last_error"]
                .as_str()
                .unwrap()
                .contains("needs a replica certificate for every tenant")
        })
    });
    let prov_auditor = prov.client(&["--role", "auditor", "--name", "aud"]);
    let copy = prov
        .refuge(&prov_auditor, &["audit", "--site", "city", "--json"])
        .ok()
        .json();
    assert!(copy.as_array().unwrap().is_empty(), "{copy:#}");
    assert!(prov.audit(&prov_auditor).iter().any(|e| {
        e["event"] == "permission_denied"
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("copying the audit log needs a replica certificate for every tenant")
    }));
    // With copy_audit = false the peer's passes succeed: a backup of the
    // granted tenant reaches it and no error is left.
    city.stop_node();
    let p = city.path().join("node.toml");
    let text = fs::read_to_string(&p).unwrap();
    fs::write(&p, format!("{text}copy_audit = false\n")).unwrap();
    city.start_node();
    let src = city.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"granted").unwrap();
    let agent = city.default_agent(&[("data", &src, "tree")]);
    run(
        "refuge-agent",
        city.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    let ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    wait_until("the snapshot at the province", 30, || {
        prov.snapshots(&ops).len() == 1
    });
    wait_until("passes without an error", 30, || {
        let st = status(&city, &admin);
        row(&st, "prov", "finance").is_some()
            && st["replication"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["last_error"].as_str().unwrap().is_empty())
    });
    for c in [&mut city, &mut prov] {
        c.stop_node();
    }
}
