//! Client-side encryption: sealed chunks at the node (stored without any
//! key, no plaintext on disk, other bytes under an existing id refused,
//! damage found by checksum), an encrypted tenant end to end (backup,
//! incremental, restore, rotation, no marker content or file name in the
//! store), and a node that requires encryption.

use std::fs;

use refuge_client::{connect, load_config};
use refuge_core::crypto::TenantKey;
use refuge_core::{ChunkCompressor, ChunkId, TenantId};
use refuge_proto::pb;
use refuge_tests::{Cluster, run};
use tonic::Code;

#[test]
fn sealed_chunks_leave_no_plaintext_on_the_node_and_are_checked_by_checksum() {
    let mut c = Cluster::start();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let agent = c.default_agent(&[]);
    let key = TenantKey::generate(TenantId::new("finance").unwrap(), "now".into()).unwrap();
    let marker = b"REFUGE-MARKER-7f3a: salaries of the finance department ";
    // The marker, then incompressible bytes (so that chunks go to RocksDB's
    // blob files, where the damage below is made).
    let plain: Vec<Vec<u8>> = (0..4u64)
        .map(|i| {
            let mut v = marker.repeat(4);
            v.extend(refuge_tests::noise(64 << 10, 2 * i + 1));
            v
        })
        .collect();
    let mut comp = ChunkCompressor::new(1);
    let chunks: Vec<(ChunkId, refuge_core::StoredChunk)> = plain
        .iter()
        .map(|p| key.encode_chunk(&mut comp, p))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = connect(&load_config(&agent).unwrap().node).await.unwrap();
        let ups: Vec<_> = chunks
            .iter()
            .map(|(id, c)| refuge_proto::upload_to(id, c.clone()))
            .collect();
        let r = n
            .ingest
            .clone()
            .put_chunks(futures::stream::iter(ups))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.chunks_stored, 4);
        // Other bytes under an existing sealed id: refused.
        let (id, mut forged) = chunks[0].clone();
        forged.data[5] ^= 0xff;
        let e = n
            .ingest
            .clone()
            .put_chunks(futures::stream::iter(vec![refuge_proto::upload_to(
                &id, forged,
            )]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("already stored with other bytes"),
            "{}",
            e.message()
        );
        // Handed back exactly as stored; only the key opens them.
        let mut s = n
            .restore
            .clone()
            .get_chunks(pb::GetChunksRequest {
                ids: chunks.iter().map(|(id, _)| id.0.to_vec()).collect(),
                tenant: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let other = TenantKey::generate(TenantId::new("finance").unwrap(), "now".into()).unwrap();
        for ((id, _), want) in chunks.iter().zip(&plain) {
            let (got_id, stored) =
                refuge_proto::chunk_data(s.message().await.unwrap().unwrap()).unwrap();
            assert_eq!(&got_id, id);
            assert_eq!(&key.decode_chunk(id, &stored, 1 << 24).unwrap(), want);
            assert!(other.decode_chunk(id, &stored, 1 << 24).is_err());
        }
    });
    // Nothing of the plaintext reaches the node's disk.
    c.stop_node();
    assert!(!refuge_tests::tree_contains(
        &c.path().join("store"),
        &marker[..24]
    ));
    // Damage on disk is found by checksum, without the key.
    c.flip_blob_bytes(1);
    c.start_node();
    let r = run(
        "refuge",
        c.path(),
        &["-c", admin.to_str().unwrap(), "admin", "verify", "--json"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert!(!v["corrupt"].as_array().unwrap().is_empty(), "{v:#}");
}

#[test]
fn an_encrypted_tenant_backs_up_and_restores_and_the_node_never_sees_its_plaintext() {
    let mut c = Cluster::start();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    run(
        "refuge",
        c.path(),
        &[
            "key",
            "create",
            "--tenant",
            "finance",
            "--out",
            "certs/finance.key",
        ],
    )
    .ok();
    let src = c.path().join("src");
    fs::create_dir_all(src.join("hr")).unwrap();
    let marker = b"REFUGE-MARKER-c41d: the board's merger plan ";
    let mut secret = marker.repeat(50);
    secret.extend(refuge_tests::noise(300 << 10, 9));
    fs::write(src.join("hr/merger-plan-REFUGENAME.txt"), &secret).unwrap();
    fs::write(src.join("big.bin"), refuge_tests::noise(3 << 20, 11)).unwrap();
    fs::write(src.join("note.txt"), marker).unwrap();
    let plain_cfg = c.default_agent(&[("data", &src, "tree")]);
    let cfg = c.path().join("encrypted.toml");
    fs::write(
        &cfg,
        format!(
            "{}\n[encryption]\nkey_file = \"certs/finance.key\"\n",
            fs::read_to_string(&plain_cfg).unwrap()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    // Another tenant's key is refused before anything is sent.
    run(
        "refuge",
        c.path(),
        &["key", "create", "--tenant", "hr", "--out", "certs/hr.key"],
    )
    .ok();
    let wrong = c.path().join("wrong-key.toml");
    fs::write(
        &wrong,
        fs::read_to_string(cfg)
            .unwrap()
            .replace("certs/finance.key", "certs/hr.key"),
    )
    .unwrap();
    run(
        "refuge-agent",
        c.path(),
        &["-c", wrong.to_str().unwrap(), "backup"],
    )
    .fails(1, "is for tenant hr");
    run("refuge-agent", c.path(), &["-c", cfg, "backup"]).ok();
    // An incremental backup opens the previous (encrypted) manifest and
    // reuses unchanged files.
    fs::write(src.join("note.txt"), b"changed").unwrap();
    let r = run("refuge-agent", c.path(), &["-c", cfg, "backup", "--json"])
        .ok()
        .json();
    assert!(r[0]["files_unchanged"].as_u64().unwrap() >= 2, "{r}");

    let out = c.path().join("out");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            cfg,
            "restore",
            "latest",
            "--target",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    refuge_tests::assert_same_tree(&src, &out);
    // Without the key: a clear refusal, nothing written.
    let r = run(
        "refuge",
        c.path(),
        &[
            "-c",
            plain_cfg.to_str().unwrap(),
            "restore",
            "latest",
            "--target",
            c.path().join("nokey").to_str().unwrap(),
        ],
    )
    .fails(1, "encrypted");
    assert!(r.stderr.contains("key"), "{}", r.stderr);
    // Rotation: a new key file that still reads the old snapshots.
    let first_id = run("refuge", c.path(), &["-c", cfg, "snapshots", "--json"])
        .ok()
        .json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = run(
        "refuge",
        c.path(),
        &[
            "key",
            "rotate",
            "--in",
            "certs/finance.key",
            "--out",
            "certs/finance-2.key",
        ],
    )
    .ok();
    assert!(r.stdout.contains("--rehash"), "{}", r.stdout);
    let rotated = c.path().join("rotated.toml");
    fs::write(
        &rotated,
        fs::read_to_string(cfg)
            .unwrap()
            .replace("certs/finance.key", "certs/finance-2.key"),
    )
    .unwrap();
    let rotated = rotated.to_str().unwrap();
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", rotated, "backup", "--json"],
    )
    .ok()
    .json();
    // Unchanged files keep their chunks (under the old key); --rehash
    // re-encrypts everything under the new one.
    assert_eq!(r[0]["files_unchanged"], 3, "{r}");
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", rotated, "backup", "--rehash", "--json"],
    )
    .ok()
    .json();
    assert!(r[0]["chunks_new"].as_u64().unwrap() >= 3, "{r}");
    for (sel, dir) in [(first_id.as_str(), "rot-old"), ("latest", "rot-new")] {
        let out = c.path().join(dir);
        run(
            "refuge",
            c.path(),
            &[
                "-c",
                rotated,
                "restore",
                sel,
                "--target",
                out.to_str().unwrap(),
            ],
        )
        .ok();
        if sel == "latest" {
            refuge_tests::assert_same_tree(&src, &out);
        } else {
            assert_eq!(fs::read(out.join("note.txt")).unwrap(), marker);
        }
    }
    // The old key file cannot read what the new key wrote.
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            cfg,
            "restore",
            "latest",
            "--target",
            c.path().join("old-key").to_str().unwrap(),
        ],
    )
    .fails(1, "wrong tenant key");

    // The node verifies what it stores without the key.
    let v = run(
        "refuge",
        c.path(),
        &["-c", admin.to_str().unwrap(), "admin", "verify", "--json"],
    )
    .ok()
    .json();
    assert!(v["checked"].as_u64().unwrap() > 0, "{v:#}");

    // Neither the marker's content nor the file name reaches the node.
    c.stop_node();
    let store = c.path().join("store");
    assert!(
        !refuge_tests::tree_contains(&store, &marker[..24]),
        "plaintext found in the store"
    );
    assert!(
        !refuge_tests::tree_contains(&store, b"REFUGENAME"),
        "a file name found in the store"
    );
    c.start_node();
}

#[test]
fn a_tenant_that_must_encrypt_cannot_commit_a_plain_backup() {
    let c = Cluster::start_with("[encryption]\ntenants = [\"finance\"]\n");
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f.txt"), b"data").unwrap();
    let plain = c.default_agent(&[("data", &src, "tree")]);
    run(
        "refuge-agent",
        c.path(),
        &["-c", plain.to_str().unwrap(), "backup"],
    )
    .fails(1, "must back up encrypted");
    let none = run(
        "refuge",
        c.path(),
        &["-c", plain.to_str().unwrap(), "snapshots", "--json"],
    )
    .ok()
    .json();
    assert!(none.as_array().unwrap().is_empty());
    // With the key it commits; another tenant is not bound by the rule.
    run(
        "refuge",
        c.path(),
        &[
            "key",
            "create",
            "--tenant",
            "finance",
            "--out",
            "certs/finance.key",
        ],
    )
    .ok();
    let enc = c.path().join("enc.toml");
    fs::write(
        &enc,
        format!(
            "{}\n[encryption]\nkey_file = \"certs/finance.key\"\n",
            fs::read_to_string(&plain).unwrap()
        ),
    )
    .unwrap();
    run(
        "refuge-agent",
        c.path(),
        &["-c", enc.to_str().unwrap(), "backup"],
    )
    .ok();
    c.client(&["--tenant", "hr", "--host", "web1"]);
    let hr = c.agent_config(
        "hr-plain.toml",
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
}
