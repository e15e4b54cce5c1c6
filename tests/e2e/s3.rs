//! The S3 backend against a real Ceph RADOS Gateway (issue 17): chunk
//! bodies in pack objects in the bucket, the catalog in RocksDB. The
//! cluster is shared by these tests (`refuge_tests::ceph`), each under a
//! prefix of its own.

use std::fs;
use std::path::Path;

use refuge_tests::ceph::Ceph;
use refuge_tests::{Cluster, assert_same_tree, copy_tree, noise, run};

fn make_tree(root: &Path, seed: u64) {
    fs::create_dir_all(root.join("docs/deep")).unwrap();
    fs::write(root.join("big.bin"), noise(24 << 20, seed)).unwrap();
    fs::write(root.join("docs/readme.txt"), b"hello ceph\n").unwrap();
    fs::write(root.join("docs/deep/notes.md"), noise(300_000, seed + 1)).unwrap();
    for i in 0..40 {
        fs::write(
            root.join(format!("docs/small-{i}")),
            noise(3_000 + i, seed + 10 + i as u64),
        )
        .unwrap();
    }
    fs::write(root.join("empty"), b"").unwrap();
}

fn packs(ceph: &Ceph, prefix: &str) -> Vec<String> {
    ceph.list(&format!("{prefix}/packs/"))
}

#[test]
fn a_tree_goes_to_ceph_in_packs_restores_byte_for_byte_and_an_incremental_sends_only_changes() {
    let ceph = Ceph::shared();
    let (c, prefix) = Cluster::on_ceph(&ceph, 8, "");
    let src = c.path().join("src");
    make_tree(&src, 1);
    let first = c.path().join("first");
    copy_tree(&src, &first);
    let agent = c.backed_up_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();

    // The bodies are in the bucket, in packs of about 8 MiB, not in
    // RocksDB: the node's directory holds far less than the data.
    let after_first = packs(&ceph, &prefix);
    assert!(
        (3..=8).contains(&after_first.len()),
        "{} packs for ~25 MB: {after_first:?}",
        after_first.len()
    );
    assert!(
        after_first
            .iter()
            .all(|k| k.starts_with(&format!("{prefix}/packs/finance/")))
    );
    let local: u64 = walk_bytes(&c.path().join("store"));
    assert!(local < 8 << 20, "the node's RocksDB holds {local} bytes");

    // An incremental: one small file changed, one added.
    fs::write(src.join("docs/readme.txt"), b"hello ceph, edited\n").unwrap();
    fs::write(src.join("docs/added.bin"), noise(100_000, 99)).unwrap();
    let r = run("refuge-agent", c.path(), &["-c", a, "backup", "--json"]).ok();
    let sent = r.json()[0]["bytes_sent"].as_u64().unwrap();
    assert!(sent < 1 << 20, "the incremental uploaded {sent} bytes");
    assert_eq!(packs(&ceph, &prefix).len(), after_first.len() + 1);

    // Both points in time restore byte for byte, read back from the bucket.
    restores_both(&c, &agent, &first, &src);
}

/// `agent`'s two snapshots restore byte for byte as `first` and `src`.
fn restores_both(c: &Cluster, agent: &Path, first: &Path, src: &Path) {
    let ids: Vec<String> = c
        .snapshots(agent)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    for (id, want) in [(&ids[0], first), (&ids[1], src)] {
        let out = c.path().join(format!("restored-{}", &id[..8]));
        c.refuge(agent, &["restore", id, "--target", out.to_str().unwrap()])
            .ok();
        assert_same_tree(want, &out);
    }
}

fn walk_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            walk_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
fn garbage_collection_deletes_and_rewrites_packs_and_verification_reads_the_bucket() {
    let ceph = Ceph::shared();
    // Packs of 8 MiB: each backup below fills less than one, so each
    // commit seals one pack of its own.
    let (c, prefix) = Cluster::on_ceph(&ceph, 8, "[gc]\ngrace_secs = 1\n");
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("kept.bin"), noise(2 << 20, 5)).unwrap();
    fs::write(src.join("dropped.bin"), noise(4 << 20, 6)).unwrap();
    let agent = c.backed_up_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    fs::remove_file(src.join("dropped.bin")).unwrap();
    fs::write(src.join("gone-too.bin"), noise(3 << 20, 7)).unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    fs::remove_file(src.join("gone-too.bin")).unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let before = packs(&ceph, &prefix);
    assert_eq!(before.len(), 3, "{before:?}");

    // Keep only the newest snapshot: the first pack (kept.bin, dropped.bin)
    // is two thirds unused and is rewritten; the second (gone-too.bin and
    // the second snapshot's manifest) is unused and is deleted.
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let ad = admin.to_str().unwrap();
    c.keep_last(&admin, "finance", 1);
    run("refuge", c.path(), &["-c", ad, "admin", "prune"]).ok();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let g = run("refuge", c.path(), &["-c", ad, "admin", "gc", "--json"])
        .ok()
        .json();
    assert!(g["deleted"].as_u64().unwrap() >= 10, "{g:#}");
    assert_eq!(g["packs_deleted"], 1, "{g:#}");
    assert_eq!(g["packs_rewritten"], 1, "{g:#}");
    let after = packs(&ceph, &prefix);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(!after.contains(&before[0]) && !after.contains(&before[1]));
    let bytes: usize = after.iter().map(|k| ceph.get(k).len()).sum();
    assert!(bytes < 3 << 20, "{bytes} bytes of packs left for 2 MiB");
    let out = c.path().join("restored");
    c.restore_latest(&agent, &out).ok();
    assert_same_tree(&src, &out);

    // Verification reads every chunk back from the bucket: clean, then a
    // damaged pack is found, its chunks quarantined, and the next backup
    // heals them.
    c.assert_verify_clean(&admin);
    for key in &after {
        let mut body = ceph.get(key);
        let mid = body.len() / 3;
        for b in &mut body[mid..mid + 64] {
            *b ^= 0x5a;
        }
        ceph.put(key, &body);
    }
    let r = run("refuge", c.path(), &["-c", ad, "admin", "verify", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        !r.json()["corrupt"].as_array().unwrap().is_empty(),
        "{}",
        r.stdout
    );
    run("refuge-agent", c.path(), &["-c", a, "backup", "--rehash"]).ok();
    c.assert_verify_clean(&admin);
    let healed = c.path().join("healed");
    c.restore_latest(&agent, &healed).ok();
    assert_same_tree(&src, &healed);
}

#[test]
fn a_node_killed_mid_backup_loses_nothing_acknowledged_and_leaves_no_stray_pack() {
    let ceph = Ceph::shared();
    let (mut c, prefix) = Cluster::on_ceph(&ceph, 2, "");
    let src = c.path().join("src");
    make_tree(&src, 7);
    let first = c.path().join("first");
    copy_tree(&src, &first);
    let agent = c.backed_up_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();

    // A second backup, slowed down, with the node killed under it once
    // some of its packs (not all) are in the bucket.
    let base = packs(&ceph, &prefix).len();
    let child = slow_backup(&c, &agent, &src, 70);
    wait_for_packs(&ceph, &prefix, base, 2);
    c.kill_node();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the backup cannot have finished");
    c.start_node();

    // The acknowledged snapshot restores; the next backup completes.
    assert_eq!(c.snapshots(&agent).len(), 1);
    let r1 = c.path().join("r1");
    c.restore_latest(&agent, &r1).ok();
    assert_same_tree(&first, &r1);
    fast_again(&agent);
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let r2 = c.path().join("r2");
    c.restore_latest(&agent, &r2).ok();
    assert_same_tree(&src, &r2);
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    c.assert_verify_clean(&admin);

    // Every object in the bucket is a pack the catalog records, and every
    // recorded pack is in the bucket: an upload the kill cut was removed.
    c.stop_node();
    c.assert_bucket_matches_catalog(&ceph, &prefix);
}

/// Starts a second backup of `agent`, slowed to 8 MB/s and without
/// retries, after changing `src`'s big file.
fn slow_backup(c: &Cluster, agent: &Path, src: &Path, seed: u64) -> std::process::Child {
    fs::write(src.join("big.bin"), noise(24 << 20, seed)).unwrap();
    let text = fs::read_to_string(agent).unwrap().replace(
        "[chunking]",
        "[limits]\nretries = 0\nmax_upload_rate = 8000000\n\n[chunking]",
    );
    fs::write(agent, text).unwrap();
    std::process::Command::new(refuge_tests::bin("refuge-agent"))
        .args(["-c", agent.to_str().unwrap(), "backup"])
        .current_dir(c.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `n` more packs than `base` are under `prefix`.
fn wait_for_packs(ceph: &Ceph, prefix: &str, base: usize, n: usize) {
    refuge_tests::wait_for(
        "packs of the second backup in the bucket",
        || packs(ceph, prefix).len() >= base + n,
        || format!("{:?}", packs(ceph, prefix)),
    );
}

/// Takes the slowing of [`slow_backup`] out of `agent` again.
fn fast_again(agent: &Path) {
    let fast = fs::read_to_string(agent)
        .unwrap()
        .replace("max_upload_rate = 8000000\n", "");
    fs::write(agent, fast).unwrap();
}

#[test]
fn the_gateway_stopped_mid_backup_stops_ingest_with_a_clear_error_and_both_recover() {
    let ceph = Ceph::shared();
    let (mine, gw) = ceph.own_gateway();
    let (c, prefix) = Cluster::on_ceph(&mine, 2, "[health]\ncheck_interval_secs = 1\n");
    let src = c.path().join("src");
    make_tree(&src, 11);
    let first = c.path().join("first");
    copy_tree(&src, &first);
    let agent = c.backed_up_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    let probe = c.client(&["--role", "auditor", "--name", "probe"]);
    assert_eq!(c.health(&probe, "refuge.v1.Ingest"), "SERVING");

    // The gateway goes while a backup is uploading.
    let base = packs(&ceph, &prefix).len();
    let child = slow_backup(&c, &agent, &src, 110);
    wait_for_packs(&ceph, &prefix, base, 2);
    gw.stop();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the backup cannot have finished");
    assert!(
        stderr.contains("node storage") && stderr.contains(&format!("s3://{}/", ceph.bucket)),
        "{stderr}"
    );

    // Ingest goes NOT_SERVING, says why, and refuses the next backup at
    // once naming the bucket; the snapshot before stays listed.
    refuge_tests::wait_for(
        "ingest NOT_SERVING",
        || c.health(&probe, "refuge.v1.Ingest") == "NOT_SERVING",
        || c.node_log(),
    );
    assert!(
        c.node_log().contains("store_writes_stopped"),
        "{}",
        c.node_log()
    );
    let r = run("refuge-agent", c.path(), &["-c", a, "backup"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("node storage cannot be written") && r.stderr.contains(&mine.endpoint),
        "{}",
        r.stderr
    );
    assert_eq!(c.snapshots(&agent).len(), 1);

    // The gateway is back: ingest serves again by itself, the backup
    // completes, and both points restore byte for byte.
    gw.start();
    refuge_tests::wait_for(
        "ingest SERVING",
        || c.health(&probe, "refuge.v1.Ingest") == "SERVING",
        || c.node_log(),
    );
    assert!(
        c.node_log().contains("store_writes_resumed"),
        "{}",
        c.node_log()
    );
    fast_again(&agent);
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    restores_both(&c, &agent, &first, &src);
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    c.assert_verify_clean(&admin);
    let mut c = c;
    c.stop_node();
    c.assert_bucket_matches_catalog(&ceph, &prefix);
}

#[test]
fn a_full_bucket_stops_ingest_with_a_clear_error_and_ingest_resumes_once_it_has_room() {
    let ceph = Ceph::shared().own_bucket("full");
    let (c, _prefix) = Cluster::on_ceph(&ceph, 2, "[health]\ncheck_interval_secs = 1\n");
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), noise(6 << 20, 21)).unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    let probe = c.client(&["--role", "auditor", "--name", "probe"]);

    // 1 MiB of quota: the first pack of 2 MiB does not fit.
    ceph.set_quota(Some(1 << 20));
    let r = run("refuge-agent", c.path(), &["-c", a, "backup"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("node storage is full") && r.stderr.contains("QuotaExceeded"),
        "{}",
        r.stderr
    );
    refuge_tests::wait_for(
        "ingest NOT_SERVING",
        || c.health(&probe, "refuge.v1.Ingest") == "NOT_SERVING",
        || c.node_log(),
    );
    // A probe of a few bytes would fit; the node's probe writes as much
    // as the pack that failed, so ingest stays stopped.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(c.health(&probe, "refuge.v1.Ingest"), "NOT_SERVING");
    let audit = c.audit(&probe);
    assert!(
        audit.iter().any(|e| e["event"] == "store_writes_stopped"
            && e["detail"].as_str().unwrap_or("").contains("QuotaExceeded")),
        "{audit:?}"
    );
    // The next backup is refused at once, saying why.
    let r = run("refuge-agent", c.path(), &["-c", a, "backup"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("node storage is full"), "{}", r.stderr);
    assert!(c.snapshots(&agent).is_empty());

    // Room again: ingest resumes by itself and the backup goes through.
    ceph.set_quota(None);
    refuge_tests::wait_for(
        "ingest SERVING",
        || c.health(&probe, "refuge.v1.Ingest") == "SERVING",
        || c.node_log(),
    );
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let out = c.path().join("restored");
    c.restore_latest(&agent, &out).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn wrong_credentials_keep_ingest_not_serving_and_name_the_gateways_refusal() {
    let right = Ceph::shared();
    let ceph = right.with_secret_key("not-the-secret-key-of-this-user-00000000");
    let (c, prefix) = Cluster::on_ceph(&ceph, 2, "[health]\ncheck_interval_secs = 1\n");
    let probe = c.client(&["--role", "auditor", "--name", "probe"]);
    // The node's first probe of the bucket is refused: ingest does not
    // serve, and says why.
    refuge_tests::wait_for(
        "ingest NOT_SERVING",
        || c.health(&probe, "refuge.v1.Ingest") == "NOT_SERVING",
        || c.node_log(),
    );
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), noise(1 << 20, 31)).unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let text = fs::read_to_string(&agent)
        .unwrap()
        .replace("[chunking]", "[limits]\nretries = 0\n\n[chunking]");
    fs::write(&agent, text).unwrap();
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("node storage cannot be written")
            && r.stderr.contains("SignatureDoesNotMatch")
            && r.stderr.contains(&format!("s3://{}/{prefix}", ceph.bucket)),
        "{}",
        r.stderr
    );
    assert!(c.snapshots(&agent).is_empty());
    // Nothing reached the bucket.
    assert!(packs(&right, &prefix).is_empty());
}

/// A purge on the S3 backend (issue 21): the purged tenant's packs are
/// deleted from the bucket, and the packs that held a purged source's
/// chunks are deleted or rewritten without them, so that no object holds
/// a byte of what was purged; the other source restores.
#[test]
fn a_purge_leaves_no_byte_of_the_tenant_or_source_in_the_bucket() {
    let ceph = Ceph::shared();
    let (c, prefix) = Cluster::on_ceph(&ceph, 8, "[purge]\ndelay_secs = 1\n");
    let (fin, rec, scans) = (
        c.path().join("fin"),
        c.path().join("rec"),
        c.path().join("scans"),
    );
    let (f, r, s) = (noise(1 << 20, 41), noise(1 << 20, 43), noise(1 << 20, 45));
    for (d, n, b) in [
        (&fin, "f.bin", &f),
        (&rec, "r.bin", &r),
        (&scans, "s.bin", &s),
    ] {
        fs::create_dir_all(d).unwrap();
        fs::write(d.join(n), b).unwrap();
    }
    c.backed_up_agent(&[("ledger", &fin, "tree")]);
    c.client(&["--tenant", "health", "--host", "h1"]);
    let health = c.agent_config(
        "health.toml",
        "certs/health-h1",
        "certs/ca.pem",
        &[("records", &rec, "tree"), ("scans", &scans, "tree")],
    );
    run(
        "refuge-agent",
        c.path(),
        &["-c", health.to_str().unwrap(), "backup"],
    )
    .ok();
    let in_bucket = |data: &[u8]| {
        let needle = &data[data.len() / 2..data.len() / 2 + 64];
        packs(&ceph, &prefix)
            .iter()
            .any(|k| ceph.get(k).windows(64).any(|w| w == needle))
    };
    for d in [&f, &r, &s] {
        assert!(in_bucket(d), "a marker is not in the bucket");
    }
    let root1 = c.client(&["--role", "admin", "--name", "root1"]);
    let root2 = c.client(&["--role", "admin", "--name", "root2"]);
    let purge = |args: &[&str]| {
        let mut all = vec!["admin", "purge", "request"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--reason", "test", "--json"]);
        let id = c.refuge(&root1, &all).ok().json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let done = c
            .refuge(&root2, &["admin", "purge", "confirm", &id, "--json"])
            .ok()
            .json();
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(
            (
                done["snapshots_left"].as_u64(),
                done["chunks_left"].as_u64()
            ),
            (Some(0), Some(0))
        );
    };
    purge(&["--tenant", "finance"]);
    assert!(
        packs(&ceph, &prefix)
            .iter()
            .all(|k| !k.contains("/packs/finance/"))
    );
    assert!(!in_bucket(&f), "finance's bytes are still in the bucket");
    purge(&["--tenant", "health", "--host", "h1", "--source", "scans"]);
    assert!(!in_bucket(&s), "the source's bytes are still in the bucket");
    assert!(in_bucket(&r));
    let out = c.path().join("restored");
    c.restore_source(&health, "records", &out).ok();
    assert_same_tree(&rec, &out);
    c.assert_verify_clean(&root1);
}
