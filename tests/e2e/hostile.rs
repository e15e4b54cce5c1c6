//! Restore safety against a hostile manifest (issue 6, item 6): a snapshot
//! committed by a compromised agent that puts a symlink in the tree and
//! then a file "under" it, and a target that already holds symlinks where
//! restored files go. Restores never write outside their target.

use std::fs;
use std::path::Path;

use refuge_client::{connect, load_config};
use refuge_core::{
    ChunkId, ChunkRef, Entry, EntryKind, ManifestWriter, SourceKind, compress_chunk,
};
use refuge_proto::pb;
use refuge_tests::{Cluster, restore_temporaries, run};

fn entry(path: &str, kind: EntryKind, size: u64, target: &[u8]) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: match kind {
            EntryKind::Dir => 0o40755,
            EntryKind::File => 0o100644,
            EntryKind::Symlink => 0o120777,
        },
        uid: 0,
        gid: 0,
        mtime_secs: 1_700_000_000,
        mtime_nanos: 0,
        ctime_secs: 0,
        ctime_nanos: 0,
        inode: 0,
        size,
        target: target.to_vec(),
    }
}

/// Commits, as the agent of `cfg`, a tree snapshot of `entries` (each
/// file's content given), uploading every chunk first.
fn commit_forged(cfg: &Path, entries: &[(Entry, Option<&[u8]>)]) {
    let cfg = load_config(cfg).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let node = connect(&cfg.node).await.unwrap();
        let mut ingest = node.ingest.clone();
        let put = |data: Vec<u8>| {
            let id = ChunkId::of(&data);
            refuge_proto::upload_to(&id, compress_chunk(&data, 3))
        };
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        let mut uploads = Vec::new();
        for (e, content) in entries {
            w.add_entry(e).unwrap();
            if let Some(c) = content {
                w.add_chunks(&[ChunkRef {
                    id: ChunkId::of(c),
                    len: c.len() as u32,
                }])
                .unwrap();
                uploads.push(put(c.to_vec()));
            }
        }
        let (manifest, _) = w.finish().unwrap();
        let mid = ChunkId::of(&manifest);
        uploads.push(put(manifest.clone()));
        ingest
            .put_chunks(futures::stream::iter(uploads))
            .await
            .unwrap();
        ingest
            .commit_snapshot(pb::CommitSnapshotRequest {
                source: "data".into(),
                kind: refuge_proto::source_kind_to(SourceKind::Tree),
                manifest: vec![pb::ChunkRef {
                    id: mid.0.to_vec(),
                    len: manifest.len() as u32,
                }],
                bytes_uploaded: 0,
                warnings: 0,
                duration_micros: 0,
                commit_token: Vec::new(),
            })
            .await
            .unwrap();
    });
}

#[test]
fn a_file_under_a_symlink_of_the_snapshot_is_refused_and_nothing_is_written_outside() {
    let c = Cluster::start();
    let agent = c.default_agent(&[]);
    let outside = c.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let abs = outside.to_str().unwrap().as_bytes().to_vec();
    for (link, target) in [("abs", abs.as_slice()), ("up", b"../..".as_slice())] {
        let evil = format!("{link}/evil");
        commit_forged(
            &agent,
            &[
                (entry(".", EntryKind::Dir, 0, b""), None),
                (
                    entry(link, EntryKind::Symlink, target.len() as u64, target),
                    None,
                ),
                (
                    entry(&evil, EntryKind::File, 5, b""),
                    Some(b"pwned".as_slice()),
                ),
            ],
        );
        let out = c.path().join(format!("restore-{link}"));
        let r = c
            .restore_latest(&agent, &out)
            .fails(1, "refusing to restore through the symlink");
        assert!(r.stderr.contains(&evil), "{}", r.stderr);
        assert!(!outside.join("evil").exists(), "wrote through {link}");
        assert!(!c.path().join("evil").exists(), "wrote through {link}");
        // A drill of it fails the same way, naming the file.
        let d = run(
            "refuge",
            c.path(),
            &[
                "-c",
                agent.to_str().unwrap(),
                "drill",
                "--json",
                "--no-record",
                "--report-dir",
                c.path().join("reports").to_str().unwrap(),
            ],
        );
        assert_eq!(d.code, 1, "{}", d.stderr);
        let rep = d.json();
        assert_eq!(
            rep["sources"][0]["failures"][0]["path"],
            evil.as_str(),
            "{rep:#}"
        );
        assert!(!outside.join("evil").exists());
    }
}

#[test]
fn symlinks_already_in_the_target_are_replaced_never_followed() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("small.txt"), b"restored content").unwrap();
    fs::write(src.join("sub/a.txt"), b"alpha").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let outside = c.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"must stay").unwrap();
    let out = c.path().join("out");
    fs::create_dir_all(&out).unwrap();
    // Where a file will be restored, a symlink to a file outside.
    std::os::unix::fs::symlink(outside.join("victim"), out.join("small.txt")).unwrap();
    c.restore_latest(&agent, &out).ok();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"must stay");
    let m = fs::symlink_metadata(out.join("small.txt")).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(
        fs::read(out.join("small.txt")).unwrap(),
        b"restored content"
    );
    // Where a directory will be restored, a symlink to a directory
    // outside: refused, nothing written through it.
    let out2 = c.path().join("out2");
    fs::create_dir_all(&out2).unwrap();
    std::os::unix::fs::symlink(&outside, out2.join("sub")).unwrap();
    c.restore_latest(&agent, &out2).fails(1, "symlink");
    assert!(!outside.join("a.txt").exists());
}

#[test]
fn a_directory_where_a_file_is_restored_is_refused_kept_and_nothing_is_left_behind() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"alpha").unwrap();
    fs::write(src.join("b.txt"), b"beta").unwrap();
    let agent = c.backed_up_agent(&[("data", &src, "tree")]);
    let out = c.path().join("out");
    fs::create_dir_all(out.join("b.txt")).unwrap();
    fs::write(out.join("b.txt/keep"), b"mine").unwrap();
    let r = c
        .restore_latest(&agent, &out)
        .fails(1, "exists and is a directory");
    assert!(r.stderr.contains("b.txt"), "{}", r.stderr);
    assert_eq!(fs::read(out.join("b.txt/keep")).unwrap(), b"mine");
    let left = restore_temporaries(&out);
    assert!(left.is_empty(), "{left:?}");
}

/// Another tenant's agent (`hr/db2`) backing up `hr-src`: four files of
/// 8 MiB of noise from `seed`. Returns the source and the config.
fn other_tenant(c: &Cluster, seed: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    run(
        "refuge",
        c.path(),
        &[
            "certs", "issue", "--dir", "certs", "--tenant", "hr", "--host", "db2",
        ],
    )
    .ok();
    let src = c.path().join("hr-src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        fs::write(
            src.join(format!("f{i}.bin")),
            refuge_tests::noise(8 << 20, seed + i),
        )
        .unwrap();
    }
    let hr = c.agent_config(
        "hr.toml",
        "certs/hr-db2",
        "certs/ca.pem",
        &[("data", &src, "tree")],
    );
    (src, hr)
}

/// Opens `n` `PutChunks` streams as the agent of `cfg`, sends `per_stream`
/// bytes of new chunks on each, and keeps them open without finishing
/// until the returned senders are dropped.
fn stalled_streams(
    rt: &tokio::runtime::Runtime,
    cfg: &Path,
    n: usize,
    per_stream: usize,
) -> Vec<tokio::sync::mpsc::Sender<pb::ChunkUpload>> {
    let cfg = load_config(cfg).unwrap();
    rt.block_on(async {
        let node = connect(&cfg.node).await.unwrap();
        let mut senders = Vec::new();
        for s in 0..n {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let mut ingest = node.ingest.clone();
            tokio::spawn(async move {
                let _ = ingest.put_chunks(tokio_stream_of(rx)).await;
            });
            let mut sent = 0;
            let mut i = 0u64;
            while sent < per_stream {
                let data = refuge_tests::noise(128 << 10, 9000 + s as u64 * 1000 + i);
                let id = ChunkId::of(&data);
                // Stored as given (level 1 of noise barely shrinks it).
                let up = refuge_proto::upload_to(&id, compress_chunk(&data, 1));
                sent += up.data.len();
                tx.send(up).await.unwrap();
                i += 1;
            }
            senders.push(tx);
        }
        senders
    })
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<pb::ChunkUpload>,
) -> impl futures::Stream<Item = pb::ChunkUpload> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn upload_streams_that_stall_while_holding_the_ingest_buffer_do_not_starve_other_tenants() {
    // An 8 MiB ingest buffer: each stream may hold up to a quarter of it
    // (2 MiB) before it must store.
    let c = Cluster::start_with("[limits]\ningest_buffer_mib = 8\n");
    let hostile = c.default_agent(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Sixteen streams of finance each send just under 2 MiB and never
    // finish: together far more than the whole buffer.
    let _held = stalled_streams(&rt, &hostile, 16, 1900 << 10);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Another tenant's backup still goes through.
    let (src, hr) = other_tenant(&c, 70);
    let t = std::time::Instant::now();
    run(
        "refuge-agent",
        c.path(),
        &["-c", hr.to_str().unwrap(), "backup"],
    )
    .ok();
    let took = t.elapsed();
    let out = c.path().join("hr-out");
    c.restore_latest(&hr, &out).ok();
    refuge_tests::assert_same_tree(&src, &out);
    // Bounded by the idle flush (1 s per stalled stream at most), not by
    // the stalled clients; generous for a loaded machine.
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
}

#[test]
fn a_client_opening_thousands_of_streams_is_capped_and_another_tenant_backs_up() {
    let c = Cluster::start_with("[limits]\nmax_connections_per_client = 8\n");
    let hostile = load_config(&c.default_agent(&[])).unwrap();
    let (_, before) = c.node_rss_mib();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Forty connections of 64 upload streams each (2560 streams), every
    // stream sending one chunk and never finishing.
    let (held, refused) = rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = 0;
        for conn in 0..40u64 {
            let node = match connect(&hostile.node).await {
                Ok(n) => n,
                Err(_) => {
                    refused += 1;
                    continue;
                }
            };
            // The node closes a connection beyond the limit right after
            // the handshake: the first call says so.
            let probe = node
                .ingest
                .clone()
                .find_missing(pb::FindMissingRequest { ids: vec![] })
                .await;
            if probe.is_err() {
                refused += 1;
                continue;
            }
            for s in 0..64u64 {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let mut ingest = node.ingest.clone();
                tokio::spawn(async move {
                    let _ = ingest.put_chunks(tokio_stream_of(rx)).await;
                });
                let data = refuge_tests::noise(4096, 50_000 + conn * 100 + s);
                let up = refuge_proto::upload_to(&ChunkId::of(&data), compress_chunk(&data, 1));
                tx.send(up).await.unwrap();
                held.push(tx);
            }
        }
        (held, refused)
    });
    assert_eq!(refused, 32, "8 connections admitted of 40");
    assert_eq!(held.len(), 8 * 64);
    assert!(
        c.node_log().contains("limits.max_connections_per_client"),
        "{}",
        c.node_log()
    );
    // Another tenant connects and backs up meanwhile.
    let (src, hr) = other_tenant(&c, 170);
    let t = std::time::Instant::now();
    run(
        "refuge-agent",
        c.path(),
        &["-c", hr.to_str().unwrap(), "backup"],
    )
    .ok();
    let took = t.elapsed();
    let out = c.path().join("hr-out");
    c.restore_latest(&hr, &out).ok();
    refuge_tests::assert_same_tree(&src, &out);
    let (_, peak) = c.node_rss_mib();
    eprintln!(
        "512 open streams of one client (2048 more refused with their connections): the other tenant's 32 MiB backup took {took:?}; node peak RSS {before} -> {peak} MiB"
    );
    assert!(
        peak < before + 300,
        "node peak RSS {before} -> {peak} MiB with 512 stalled streams"
    );
    // The client's slots come back when it closes its connections.
    drop(held);
    drop(rt);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let a = c.default_agent(&[]);
    run("refuge", c.path(), &["-c", a.to_str().unwrap(), "whoami"]).ok();
}
