//! Bad input gets a clear error and loses nothing: certificates from the
//! wrong CA or expired, a node that is down, unknown snapshots, chunks that
//! do not match their id, commits that reference chunks the node lacks,
//! chunks corrupted on the node's disk.

use std::fs;
use std::path::Path;

use refuge_client::{connect, load_config};
use refuge_core::{
    ChunkId, ChunkRef, Entry, EntryKind, ManifestWriter, SourceKind, compress_chunk,
};
use refuge_proto::pb;
use refuge_tests::{Cluster, noise, restore_temporaries, run};
use tonic::Code;

fn small_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("small.txt"), b"small file, stays readable").unwrap();
    fs::write(root.join("big.bin"), noise(6 << 20, 42)).unwrap();
}

#[test]
fn wrong_ca_expired_certificate_node_down_and_unknown_snapshot_are_clear_errors() {
    let mut c = Cluster::start();
    let src = c.path().join("src");
    small_tree(&src);
    let good = c.default_agent(&[("data", &src, "tree")]);
    let good = good.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", good, "backup"]).ok();

    // A client certificate from another CA.
    run("refuge", c.path(), &["certs", "init", "other"]).ok();
    run(
        "refuge",
        c.path(),
        &[
            "certs", "issue", "--dir", "other", "--tenant", "finance", "--host", "db1",
        ],
    )
    .ok();
    let foreign = c.agent_config(
        "foreign.toml",
        "other/finance-db1",
        "certs/ca.pem",
        &[("data", &src, "tree")],
    );
    run(
        "refuge-agent",
        c.path(),
        &["-c", foreign.to_str().unwrap(), "backup"],
    )
    .fails(1, "rejected this client's certificate");
    assert!(
        c.node_log().contains("auth_failed"),
        "refusal not audited:\n{}",
        c.node_log()
    );

    // The node's certificate checked against another CA.
    let wrong_ca = c.agent_config("wrongca.toml", "certs/finance-db1", "other/ca.pem", &[]);
    run(
        "refuge",
        c.path(),
        &["-c", wrong_ca.to_str().unwrap(), "snapshots"],
    )
    .fails(1, "not signed by the configured CA");

    // An expired client certificate.
    let ca = refuge_tls::CertAuthority::load(
        &fs::read_to_string(c.path().join("certs/ca.pem")).unwrap(),
        &fs::read_to_string(c.path().join("certs/ca.key")).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_client(
            &refuge_tls::ClientIdentity::agent(
                refuge_core::TenantId::new("finance").unwrap(),
                refuge_core::HostName::new("db1").unwrap(),
            ),
            refuge_tls::Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    fs::write(c.path().join("certs/expired.pem"), expired.cert_pem).unwrap();
    fs::write(c.path().join("certs/expired.key"), expired.key_pem).unwrap();
    let exp = c.agent_config("expired.toml", "certs/expired", "certs/ca.pem", &[]);
    let r = run(
        "refuge",
        c.path(),
        &["-c", exp.to_str().unwrap(), "snapshots"],
    )
    .fails(1, "certificate");
    assert!(r.stderr.contains("expired"), "{}", r.stderr);
    assert!(
        c.node_log().contains("certificate expired"),
        "{}",
        c.node_log()
    );

    // Unknown snapshot, ambiguous and malformed selectors.
    run(
        "refuge",
        c.path(),
        &["-c", good, "restore", "0123456789abcdef", "--target", "t"],
    )
    .fails(1, "no snapshot with id");
    run(
        "refuge",
        c.path(),
        &["-c", good, "restore", "not-an-id", "--target", "t"],
    )
    .fails(1, "is not a snapshot id");
    run(
        "refuge",
        c.path(),
        &["-c", good, "restore", "--target", "t"],
    )
    .fails(2, "give a SNAPSHOT");
    run(
        "refuge",
        c.path(),
        &["-c", good, "restore", "--at", "yesterday", "--target", "t"],
    )
    .fails(2, "RFC 3339");

    // Unreadable source path.
    let missing = c.agent_config(
        "missing.toml",
        "certs/finance-db1",
        "certs/ca.pem",
        &[("gone", &c.path().join("gone"), "tree")],
    );
    run(
        "refuge-agent",
        c.path(),
        &["-c", missing.to_str().unwrap(), "backup"],
    )
    .fails(1, "No such file or directory");

    // Node down: the CLI says so at once; the agent tries again
    // ([limits] retries, here 1) and then says so.
    c.stop_node();
    run("refuge", c.path(), &["-c", good, "snapshots"]).fails(1, "cannot reach the node");
    let once = c.path().join("retry-once.toml");
    fs::write(
        &once,
        fs::read_to_string(good)
            .unwrap()
            .replace("[chunking]", "[limits]\nretries = 1\n\n[chunking]"),
    )
    .unwrap();
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", once.to_str().unwrap(), "backup"],
    )
    .fails(1, "cannot reach the node");
    assert!(r.stderr.contains("giving up after 2 tries"), "{}", r.stderr);

    // None of that lost anything.
    c.start_node();
    let list = run("refuge", c.path(), &["-c", good, "snapshots", "--json"])
        .ok()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let out = c.path().join("out");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            good,
            "restore",
            "latest",
            "--target",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    refuge_tests::assert_same_tree(&src, &out);
}

/// Uploads `data` as a valid chunk and returns its id.
async fn put_ok(
    ingest: &mut refuge_proto::pb::ingest_client::IngestClient<refuge_client::NodeChannel>,
    data: &[u8],
) -> ChunkId {
    let id = ChunkId::of(data);
    let up = refuge_proto::upload_to(&id, compress_chunk(data, 3));
    ingest
        .put_chunks(futures::stream::iter(vec![up]))
        .await
        .unwrap();
    id
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn chunks_that_do_not_match_their_id_are_rejected_and_not_stored() {
    let c = Cluster::start();
    let cfg = load_config(&c.default_agent(&[])).unwrap();
    rt().block_on(async {
        let node = connect(&cfg.node).await.unwrap();
        let mut ingest = node.ingest.clone();
        let data = b"the real content".to_vec();
        let claimed = ChunkId::of(b"some other content");
        let up = refuge_proto::upload_to(&claimed, compress_chunk(&data, 3));
        let err = ingest
            .put_chunks(futures::stream::iter(vec![up]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(&claimed.to_hex()) && err.message().contains("hashes to"),
            "{}",
            err.message()
        );

        // A zstd frame that expands far beyond its declared size.
        let zeros = vec![0u8; 8 << 20];
        let mut bomb = compress_chunk(&zeros, 3);
        bomb.raw_len = 4096;
        let up = refuge_proto::upload_to(&ChunkId::of(&zeros), bomb);
        let err = ingest
            .put_chunks(futures::stream::iter(vec![up]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

        // Declared larger than any chunk may be.
        let mut huge = compress_chunk(b"x", 3);
        huge.raw_len = 64 << 20;
        let err = ingest
            .put_chunks(futures::stream::iter(vec![refuge_proto::upload_to(
                &ChunkId::of(b"x"),
                huge,
            )]))
            .await
            .unwrap_err();
        assert!(err.message().contains("maximum"), "{}", err.message());

        // An id of the wrong length.
        let err = ingest
            .find_missing(pb::FindMissingRequest {
                ids: vec![vec![1, 2, 3]],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // Nothing was stored under either id.
        let missing = ingest
            .find_missing(pb::FindMissingRequest {
                ids: vec![
                    claimed.0.to_vec(),
                    ChunkId::of(&data).0.to_vec(),
                    ChunkId::of(&zeros).0.to_vec(),
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .missing;
        assert_eq!(missing, vec![0, 1, 2]);

        // A good chunk after all that is accepted.
        let ok = refuge_proto::upload_to(&ChunkId::of(&data), compress_chunk(&data, 3));
        let r = ingest
            .put_chunks(futures::stream::iter(vec![ok]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.chunks_stored, 1);
    });
    assert!(
        c.node_log().contains("chunk_rejected"),
        "rejection not audited:\n{}",
        c.node_log()
    );
}

#[test]
fn a_commit_that_references_a_missing_chunk_is_refused() {
    let c = Cluster::start();
    let cfg = load_config(&c.default_agent(&[])).unwrap();
    rt().block_on(async {
        let node = connect(&cfg.node).await.unwrap();
        let mut ingest = node.ingest.clone();
        let absent = ChunkId::of(b"never uploaded");
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        let entry = Entry {
            path: b"file".to_vec(),
            kind: EntryKind::File,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_secs: 0,
            mtime_nanos: 0,
            ctime_secs: 0,
            ctime_nanos: 0,
            inode: 0,
            size: 14,
            target: vec![],
        };
        w.add_entry(&entry).unwrap();
        w.add_chunks(&[ChunkRef {
            id: absent,
            len: 14,
        }])
        .unwrap();
        let (manifest, _) = w.finish().unwrap();
        let mid = ChunkId::of(&manifest);
        let mref = pb::ChunkRef {
            id: mid.0.to_vec(),
            len: manifest.len() as u32,
        };
        let commit = pb::CommitSnapshotRequest {
            source: "data".into(),
            kind: refuge_proto::source_kind_to(SourceKind::Tree),
            manifest: vec![mref],
            bytes_uploaded: 0,
            warnings: 0,
            duration_micros: 0,
            commit_token: Vec::new(),
        };

        // A commit token is 16 bytes or absent.
        let mut odd = commit.clone();
        odd.commit_token = vec![7; 15];
        let err = ingest.commit_snapshot(odd).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("a commit token is 16 bytes, got 15"),
            "{err:?}"
        );

        // The manifest itself is not uploaded yet.
        let err = ingest.commit_snapshot(commit.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("manifest chunk"),
            "{}",
            err.message()
        );

        // Uploaded, but it references a chunk the node does not have.
        assert_eq!(put_ok(&mut ingest, &manifest).await, mid);
        let err = ingest.commit_snapshot(commit.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains(&absent.to_hex()) && err.message().contains("\"file\""),
            "{}",
            err.message()
        );

        // A stored chunk referenced with the wrong length.
        let short = b"abc".to_vec();
        let sid = put_ok(&mut ingest, &short).await;
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        w.add_entry(&Entry {
            size: 14,
            ..entry.clone()
        })
        .unwrap();
        w.add_chunks(&[ChunkRef { id: sid, len: 14 }]).unwrap();
        let (lying, _) = w.finish().unwrap();
        let lid = put_ok(&mut ingest, &lying).await;
        let mut bad = commit.clone();
        bad.manifest = vec![pb::ChunkRef {
            id: lid.0.to_vec(),
            len: lying.len() as u32,
        }];
        let err = ingest.commit_snapshot(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("stores it with length 3"),
            "{}",
            err.message()
        );

        // Manifests that are not manifests, and kinds that do not match.
        let junk = b"not a manifest at all".to_vec();
        let jid = put_ok(&mut ingest, &junk).await;
        let mut bad = commit.clone();
        bad.manifest = vec![pb::ChunkRef {
            id: jid.0.to_vec(),
            len: junk.len() as u32,
        }];
        let err = ingest.commit_snapshot(bad).await.unwrap_err();
        assert!(
            err.message().contains("invalid manifest"),
            "{}",
            err.message()
        );
        let mut bad = commit.clone();
        bad.source = "../etc".into();
        assert_eq!(
            ingest.commit_snapshot(bad).await.unwrap_err().code(),
            Code::InvalidArgument
        );

        let list = node
            .restore
            .clone()
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .unwrap();
        assert!(
            list.into_inner().snapshots.is_empty(),
            "a refused commit left a snapshot"
        );

        // With the missing chunk uploaded, the same commit succeeds.
        assert_eq!(put_ok(&mut ingest, b"never uploaded").await, absent);
        let snap = ingest
            .commit_snapshot(commit)
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!((snap.files, snap.logical_bytes), (1, 14));
        let list = node
            .restore
            .clone()
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .unwrap();
        assert_eq!(list.into_inner().snapshots.len(), 1);
    });
    assert!(c.node_log().contains("commit_rejected"));
}

/// Small files are created, written and renamed by the restore worker that
/// fetches them: a corrupt chunk of one fails the restore naming it, and
/// the worker removes what it created.
#[test]
fn a_corrupt_chunk_of_a_small_file_fails_the_restore_and_leaves_no_temporary_file() {
    let mut c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..3 {
        fs::write(src.join(format!("d/s{i}.bin")), noise(1 << 20, 50 + i)).unwrap();
    }
    let cfg = c.backed_up_agent(&[("data", &src, "tree")]);
    c.stop_node();
    c.flip_blob_bytes(64);
    c.start_node();
    let out = c.path().join("out");
    let r = c.restore_latest(&cfg, &out).fails(1, "corrupt");
    assert!(r.stderr.contains("d/s"), "{}", r.stderr);
    let left = restore_temporaries(&out.join("d"));
    assert!(left.is_empty(), "{left:?}");
    // A file that is there under its real name is whole.
    for i in 0..3 {
        if let Ok(b) = fs::read(out.join(format!("d/s{i}.bin"))) {
            assert_eq!(b, noise(1 << 20, 50 + i), "s{i}.bin");
        }
    }
}

#[test]
fn a_chunk_corrupted_on_the_node_disk_fails_the_restore_naming_file_and_chunk() {
    let mut c = Cluster::start();
    let src = c.path().join("src");
    small_tree(&src);
    let cfg = c.default_agent(&[("data", &src, "tree")]);
    let cfg = cfg.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", cfg, "backup"]).ok();
    c.stop_node();

    // Flip bytes in the middle of every blob file (chunk bodies live there).
    c.flip_blob_bytes(64);
    c.start_node();

    let out = c.path().join("out");
    let r = run(
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
    .fails(1, "corrupt");
    assert!(
        r.stderr.contains("big.bin") && r.stderr.contains("chunk "),
        "{}",
        r.stderr
    );
    // No wrong bytes under the real name, no temporary file left behind.
    assert!(!out.join("big.bin").exists());
    let leftovers = restore_temporaries(&out);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // What is intact still restores.
    let ok = c.path().join("ok");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            cfg,
            "restore",
            "latest",
            "--target",
            ok.to_str().unwrap(),
            "--include",
            "small.txt",
        ],
    )
    .ok();
    assert_eq!(
        fs::read(ok.join("small.txt")).unwrap(),
        fs::read(src.join("small.txt")).unwrap()
    );
}

#[test]
fn connections_beyond_the_limit_are_refused_and_slots_come_back() {
    let c = Cluster::start_with("[limits]\nmax_connections = 2\nhandshake_timeout_secs = 2\n");
    let cfg = c.default_agent(&[]);
    let cfg = cfg.to_str().unwrap();
    run("refuge", c.path(), &["-c", cfg, "whoami"]).ok();
    // Let the node see that connection close (under load it may take a
    // moment), so that the two below get both slots.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!c.node_log().contains("too many connections"));

    // Two connections that never start TLS take both slots.
    let addr = ("127.0.0.1", c.port());
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !c.node_log().contains("too many connections"),
        "an idle connection was refused: a slot was still taken\n{}",
        c.node_log()
    );
    let r = run("refuge", c.path(), &["-c", cfg, "whoami"]).fails(1, "");
    assert!(r.stderr.contains("connection limit"), "{}", r.stderr);
    assert!(
        c.node_log().contains("too many connections"),
        "{}",
        c.node_log()
    );

    // Closing them frees the slots.
    drop(idle);
    std::thread::sleep(std::time::Duration::from_millis(200));
    run("refuge", c.path(), &["-c", cfg, "whoami"]).ok();

    // So does the handshake timeout, for connections that stay open.
    let _stuck: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    run("refuge", c.path(), &["-c", cfg, "whoami"]).ok();
}

#[test]
fn a_metrics_address_in_use_stops_the_node_at_start_naming_the_setting() {
    let mut c = Cluster::start();
    c.stop_node();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let toml = c.path().join("node.toml");
    let text = fs::read_to_string(&toml).unwrap();
    fs::write(
        &toml,
        format!("{text}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    run("refuged", c.path(), &["--config", "node.toml"]).fails(1, "[metrics] listen");
}
