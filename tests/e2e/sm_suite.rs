//! The national-standard suite (issue 20): a tenant whose key is of the
//! `sm` suite (HMAC-SM3 chunk ids, SM4-GCM sealed chunks and manifest
//! entries) beside a tenant of the standard suite on one node. Backups,
//! incrementals and restores; the wrong key and a missing key refused; the
//! node verifying, collecting garbage and replicating the SM tenant without
//! its key; no plaintext in either store; damaged bytes found by the
//! node's scrub and refused by the restore.

use std::fs;
use std::path::Path;
use std::time::Duration;

use refuge_core::{Cipher, TenantId};
use refuge_store::Store;
use refuge_store_rocksdb::{RocksOptions, RocksStore};
use refuge_tests::{Cluster, assert_same_tree, noise, run, tree_contains};

const MARKER: &[u8] = b"SM-MARKER-7f3a: provincial budget 2027 ";

/// `refuge key create --tenant TENANT --suite SUITE --out OUT` in `c`.
fn key_create(c: &Cluster, tenant: &str, suite: &str, out: &str) -> refuge_tests::Run {
    run(
        "refuge",
        c.path(),
        &[
            "key", "create", "--tenant", tenant, "--suite", suite, "--out", out,
        ],
    )
}

fn tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("docs")).unwrap();
    let mut secret = MARKER.repeat(40);
    secret.extend(noise(200 << 10, seed));
    fs::write(dir.join("docs/budget-SMNAME.txt"), &secret).unwrap();
    fs::write(dir.join("big.bin"), noise(3 << 20, seed + 1)).unwrap();
}

#[test]
fn an_sm_tenant_beside_a_standard_one_backs_up_restores_and_is_kept_without_its_key() {
    let mut prov = Cluster::configured("");
    let to_prov = crate::replication::replica_cert(&prov, "city");
    let mut c = Cluster::configured("[gc]\ngrace_secs = 0\n");
    crate::replication::append(
        &c,
        &crate::replication::push_to(&prov, "prov", &to_prov, &prov),
    );
    prov.start_node();
    c.start_node();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);

    // The keys: finance on the SM suite, hr on the standard one.
    let r = key_create(&c, "finance", "sm", "certs/finance.key").ok();
    assert!(
        r.stdout.contains("suite sm") && r.stdout.contains("SM4-GCM"),
        "{}",
        r.stdout
    );
    let shown = run(
        "refuge",
        c.path(),
        &["key", "show", "certs/finance.key", "--json"],
    )
    .ok()
    .json();
    assert_eq!(shown["suite"], "sm", "{shown:#}");
    key_create(&c, "hr", "standard", "certs/hr.key").ok();
    key_create(&c, "finance", "sm", "certs/wrong.key").ok();
    key_create(&c, "finance", "nope", "certs/x.key").fails(2, "invalid value");

    let src = c.path().join("fin");
    tree(&src, 3);
    let plain = c.default_agent(&[("data", &src, "tree")]);
    let fin = c.with_key(&plain, "certs/finance.key", "fin-sm.toml");
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", fin.to_str().unwrap(), "check-config"],
    )
    .ok();
    assert!(r.stdout.contains("suite sm"), "{}", r.stdout);
    run(
        "refuge-agent",
        c.path(),
        &["-c", fin.to_str().unwrap(), "backup"],
    )
    .ok();
    // An incremental: the SM-sealed manifest is opened as the parent.
    fs::write(src.join("new.txt"), b"added").unwrap();
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", fin.to_str().unwrap(), "backup", "--json"],
    )
    .ok()
    .json();
    assert!(r[0]["files_unchanged"].as_u64().unwrap() >= 2, "{r}");

    // hr, standard suite, on the same node.
    let hr_src = c.path().join("hr");
    tree(&hr_src, 30);
    run(
        "refuge",
        c.path(),
        &[
            "certs", "issue", "--dir", "certs", "--tenant", "hr", "--host", "web1",
        ],
    )
    .ok();
    let hr_plain = c.agent_config(
        "hr.toml",
        "certs/hr-web1",
        "certs/ca.pem",
        &[("files", &hr_src, "tree")],
    );
    let hr = c.with_key(&hr_plain, "certs/hr.key", "hr-std.toml");
    run(
        "refuge-agent",
        c.path(),
        &["-c", hr.to_str().unwrap(), "backup"],
    )
    .ok();

    // Both restore; the SM tenant's without its key or with another
    // SM key is refused.
    for (cfg, from, dir) in [(&fin, &src, "out-fin"), (&hr, &hr_src, "out-hr")] {
        let out = c.path().join(dir);
        c.restore_latest(cfg, &out).ok();
        assert_same_tree(from, &out);
    }
    c.restore_latest(&plain, &c.path().join("nokey"))
        .fails(1, "encrypted");
    let wrong = c.with_key(&plain, "certs/wrong.key", "fin-wrong.toml");
    c.restore_latest(&wrong, &c.path().join("wrongkey"))
        .fails(1, "wrong tenant key");

    // The node verifies and collects garbage without the key.
    c.assert_verify_clean(&admin);
    c.keep_last(&admin, "finance", 1);
    c.refuge(&admin, &["admin", "prune"]).ok();
    c.refuge(&admin, &["admin", "gc"]).ok();
    let out = c.path().join("out-after-gc");
    c.restore_latest(&fin, &out).ok();
    assert_same_tree(&src, &out);
    c.assert_verify_clean(&admin);

    // Replicated without the key; the copy restores with it.
    fs::copy(
        c.path().join("certs/finance.key"),
        prov.path().join("finance.key"),
    )
    .unwrap();
    let ops = prov.client(&["--role", "operator", "--name", "ops", "--tenant", "finance"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while prov.snapshots(&ops).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing replicated:\n{}",
            c.node_log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let copy = prov.path().join("copy");
    let ops_key = prov.with_key(&ops, "finance.key", "ops-sm.toml");
    prov.restore_latest(&ops_key, &copy).ok();
    assert_same_tree(&src, &copy);

    // No plaintext (content or file name) in either store.
    c.stop_node();
    prov.stop_node();
    // Every data chunk of finance is sealed with SM4-GCM, every one of hr
    // with XChaCha20-Poly1305, on both nodes for finance; the manifest
    // stream's chunks stay plain (their entries are sealed inside, so the
    // node can count references without the key).
    for (dir, tenant, cipher) in [
        (c.path(), "finance", Cipher::Sm4Gcm),
        (c.path(), "hr", Cipher::XChaCha20Poly1305),
        (prov.path(), "finance", Cipher::Sm4Gcm),
    ] {
        let db = RocksStore::open_read_only(&dir.join("store"), &RocksOptions::default()).unwrap();
        let t = TenantId::new(tenant).unwrap();
        let ids = db.list_chunk_ids(&t, None, 100_000).unwrap();
        let mut sealed = 0;
        for id in &ids {
            let ch = db.get_chunk(&t, id).unwrap().unwrap();
            match ch.cipher {
                Cipher::None => {}
                x => {
                    assert_eq!(x, cipher, "{tenant} chunk {id}");
                    sealed += 1;
                }
            }
        }
        assert!(
            sealed >= 3 && sealed < ids.len(),
            "{tenant}: {sealed} of {}",
            ids.len()
        );
    }
    for store in [c.path().join("store"), prov.path().join("store")] {
        assert!(
            !tree_contains(&store, &MARKER[..20]),
            "plaintext in {}",
            store.display()
        );
        assert!(
            !tree_contains(&store, b"SMNAME"),
            "a file name in {}",
            store.display()
        );
    }

    // Damaged stored bytes: the scrub finds them by checksum, without the
    // key, and the restore fails naming a chunk.
    c.flip_blob_bytes(64);
    c.start_node();
    let v = c.refuge(&admin, &["admin", "verify", "--json"]);
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    assert!(!v.json()["corrupt"].as_array().unwrap().is_empty());
    let r = c.restore_latest(&fin, &c.path().join("damaged"));
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("chunk"), "{}", r.stderr);
}
