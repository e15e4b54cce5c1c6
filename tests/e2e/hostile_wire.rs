//! Hostile commits over the wire (issue 6, item 5): a client with a valid
//! certificate commits manifests built byte by byte, with paths that
//! escape (`..`, absolute, NUL, over-long), lengths and counts that lie,
//! and one that names a single chunk tens of millions of times. Each bad
//! one is refused at commit with a clear reason and leaves nothing listed;
//! the amplifying one costs the node memory for one chunk, not for every
//! mention of it.

use refuge_client::{connect, load_config};
use refuge_core::format::{
    ENTRY_FILE, MANIFEST_TAG_CHUNKS, MANIFEST_TAG_END, MANIFEST_TAG_ENTRY, MAX_REFS_PER_RUN,
};
use refuge_core::{ChunkId, ManifestWriter, SourceKind, compress_chunk};
use refuge_proto::pb;
use refuge_tests::Cluster;
use tonic::Code;

/// A manifest written record by record, with no checks at all.
struct Raw(Vec<u8>);

impl Raw {
    fn tree() -> Self {
        // The header is whatever the real writer puts first.
        let (empty, _) = ManifestWriter::new(Vec::new(), SourceKind::Tree)
            .unwrap()
            .finish()
            .unwrap();
        Raw(empty[..9].to_vec())
    }

    fn record(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.record_claiming(tag, body.len() as u32, body)
    }

    fn record_claiming(&mut self, tag: u8, len: u32, body: &[u8]) -> &mut Self {
        self.0.push(tag);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(body);
        self
    }

    fn file(&mut self, path: &[u8], size: u64) -> &mut Self {
        self.record(MANIFEST_TAG_ENTRY, &file_entry(path, size))
    }

    fn trailer(&mut self, entries: u64, files: u64, bytes: u64, refs: u64) -> &mut Self {
        let mut b = Vec::new();
        for v in [entries, files, 0, bytes, refs] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.record(MANIFEST_TAG_END, &b)
    }
}

fn file_entry(path: &[u8], size: u64) -> Vec<u8> {
    let mut b = vec![ENTRY_FILE];
    for v in [0o100644u32, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1_700_000_000i64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0i64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&(path.len() as u16).to_le_bytes());
    b.extend_from_slice(path);
    b.extend_from_slice(&0u16.to_le_bytes());
    b
}

/// A chunk run record body: `n` references to `id`, each `len` bytes.
fn run_of(id: &ChunkId, len: u32, n: u32) -> Vec<u8> {
    let mut b = n.to_le_bytes().to_vec();
    for _ in 0..n {
        b.extend_from_slice(&id.0);
        b.extend_from_slice(&len.to_le_bytes());
    }
    b
}

fn upload(data: &[u8]) -> pb::ChunkUpload {
    refuge_proto::upload_to(&ChunkId::of(data), compress_chunk(data, 3))
}

fn manifest_ref(data: &[u8]) -> pb::ChunkRef {
    pb::ChunkRef {
        id: ChunkId::of(data).0.to_vec(),
        len: data.len() as u32,
    }
}

fn commit(manifest: Vec<pb::ChunkRef>) -> pb::CommitSnapshotRequest {
    pb::CommitSnapshotRequest {
        source: "data".into(),
        kind: refuge_proto::source_kind_to(SourceKind::Tree),
        manifest,
        ..Default::default()
    }
}

#[test]
fn manifests_with_escaping_paths_or_lying_lengths_are_refused_at_commit_naming_why() {
    let c = Cluster::start();
    let cfg_path = c.default_agent(&[]);
    let cfg = load_config(&cfg_path).unwrap();
    let content = b"content".to_vec();
    let cid = ChunkId::of(&content);
    let one_file = |path: &[u8]| {
        let mut m = Raw::tree();
        m.file(path, content.len() as u64)
            .record(MANIFEST_TAG_CHUNKS, &run_of(&cid, content.len() as u32, 1))
            .trailer(1, 1, content.len() as u64, 1);
        m.0
    };
    let long = vec![b'a'; 5000];
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dot-dot", one_file(b"../../etc/passwd"), "'..' component"),
        ("inner dot-dot", one_file(b"a/../../b"), "'..' component"),
        ("absolute", one_file(b"/etc/passwd"), "absolute"),
        ("NUL", one_file(b"a\0b"), "NUL"),
        ("empty component", one_file(b"a//b"), "empty component"),
        ("over-long path", one_file(&long), "longer than 4096"),
    ];
    // A record that claims 2 GiB.
    let mut m = Raw::tree();
    m.record_claiming(MANIFEST_TAG_ENTRY, 1 << 31, &file_entry(b"f", 0));
    cases.push(("2 GiB record", m.0, "exceeds the maximum"));
    // A chunk run that claims four billion references.
    let mut m = Raw::tree();
    let mut body = run_of(&cid, content.len() as u32, 1);
    body[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    m.file(b"f", content.len() as u64)
        .record(MANIFEST_TAG_CHUNKS, &body);
    cases.push(("4G-reference run", m.0, "chunk run of 4294967295"));
    // A run whose count says two, with one reference in it.
    let mut m = Raw::tree();
    let mut body = run_of(&cid, content.len() as u32, 1);
    body[..4].copy_from_slice(&2u32.to_le_bytes());
    m.file(b"f", content.len() as u64 * 2)
        .record(MANIFEST_TAG_CHUNKS, &body);
    cases.push(("count mismatch", m.0, "does not match its count"));
    // A trailer that claims 2^64-1 entries.
    let mut m = Raw::tree();
    m.file(b"f", content.len() as u64)
        .record(MANIFEST_TAG_CHUNKS, &run_of(&cid, content.len() as u32, 1))
        .trailer(u64::MAX, 1, content.len() as u64, 1);
    cases.push(("absurd entry count", m.0, "trailer totals do not match"));
    // A file that says it is 16 EiB, with 7 bytes of chunks.
    let mut m = Raw::tree();
    m.file(b"f", u64::MAX)
        .record(MANIFEST_TAG_CHUNKS, &run_of(&cid, content.len() as u32, 1))
        .trailer(1, 1, u64::MAX, 1);
    cases.push(("size larger than its chunks", m.0, "chunks"));
    // Chunks that cover more than the file's size.
    let mut m = Raw::tree();
    m.file(b"f", 1)
        .record(MANIFEST_TAG_CHUNKS, &run_of(&cid, content.len() as u32, 1));
    cases.push((
        "chunks beyond the size",
        m.0,
        "more bytes than the file's size",
    ));
    // No trailer: a cut-short manifest is never a short snapshot.
    let mut m = Raw::tree();
    m.file(b"f", content.len() as u64)
        .record(MANIFEST_TAG_CHUNKS, &run_of(&cid, content.len() as u32, 1));
    cases.push(("no trailer", m.0, "no trailer"));
    // A chunk run of the maximum size naming a chunk the node lacks.
    let absent = ChunkId::of(b"never uploaded");
    let mut m = Raw::tree();
    m.file(b"f", u64::from(MAX_REFS_PER_RUN))
        .record(MANIFEST_TAG_CHUNKS, &run_of(&absent, 1, MAX_REFS_PER_RUN))
        .trailer(
            1,
            1,
            u64::from(MAX_REFS_PER_RUN),
            u64::from(MAX_REFS_PER_RUN),
        );
    cases.push(("missing chunk", m.0, "that the node does not have"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = connect(&cfg.node).await.unwrap();
        let mut ingest = node.ingest.clone();
        ingest
            .put_chunks(futures::stream::iter(vec![upload(&content)]))
            .await
            .unwrap();
        for (what, manifest, reason) in &cases {
            ingest
                .put_chunks(futures::stream::iter(vec![upload(manifest)]))
                .await
                .unwrap();
            let err = ingest
                .commit_snapshot(commit(vec![manifest_ref(manifest)]))
                .await
                .expect_err(what);
            assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
            assert!(
                err.message().contains(reason),
                "{what}: want {reason:?} in {:?}",
                err.message()
            );
        }

        // Refused before anything is read: manifests of no chunks, of
        // more chunks than any manifest has, ids of the wrong length.
        for (what, refs, reason) in [
            ("no manifest chunks", vec![], "1 to 100000 chunks"),
            (
                "100001 manifest chunks",
                vec![manifest_ref(&content); 100_001],
                "1 to 100000 chunks",
            ),
            (
                "short id",
                vec![pb::ChunkRef {
                    id: vec![7; 31],
                    len: 7,
                }],
                "32 bytes",
            ),
        ] {
            let err = ingest.commit_snapshot(commit(refs)).await.expect_err(what);
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert!(
                err.message().contains(reason),
                "{what}: want {reason:?} in {:?}",
                err.message()
            );
        }
        let mut bad_token = commit(vec![manifest_ref(&content)]);
        bad_token.commit_token = vec![1; 17];
        let err = ingest.commit_snapshot(bad_token).await.unwrap_err();
        assert!(err.message().contains("16 bytes"), "{}", err.message());
    });

    // Nothing was listed, every refusal was audited, and the agent's
    // own backup right after is fine.
    assert!(c.snapshots(&cfg_path).is_empty());
    let rejected = c.node_log().matches("commit_rejected").count();
    assert!(
        rejected >= cases.len(),
        "{rejected} commit_rejected for {} refusals",
        cases.len()
    );
    let src = c.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"after the attack").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    refuge_tests::run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    assert_eq!(c.snapshots(&agent).len(), 1);
}

#[test]
fn a_manifest_naming_one_chunk_thirty_million_times_costs_the_node_memory_for_one() {
    let c = Cluster::start();
    let cfg_path = c.default_agent(&[]);
    let cfg = load_config(&cfg_path).unwrap();
    let x = b"x".to_vec();
    let xid = ChunkId::of(&x);
    // The middle chunk of the manifest: runs of 4096 references to the
    // one-byte chunk `x`, about 1 MiB. The manifest repeats it.
    let runs_per_chunk = 7u64;
    let repeats = refuge_tests::env_u64("REFUGE_AMPLIFY_REPEATS", 1000);
    let mut body = Raw(Vec::new());
    for _ in 0..runs_per_chunk {
        body.record(MANIFEST_TAG_CHUNKS, &run_of(&xid, 1, MAX_REFS_PER_RUN));
    }
    let body = body.0;
    let refs = runs_per_chunk * u64::from(MAX_REFS_PER_RUN) * repeats;
    let mut head = Raw::tree();
    head.file(b"many-x", refs);
    let head = head.0;
    let mut tail = Raw(Vec::new());
    tail.trailer(1, 1, refs, refs);
    let tail = tail.0;
    let mut manifest = vec![manifest_ref(&head)];
    manifest.extend(std::iter::repeat_n(manifest_ref(&body), repeats as usize));
    manifest.push(manifest_ref(&tail));

    let (_, before) = c.node_rss_mib();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let snap = rt.block_on(async {
        let node = connect(&cfg.node).await.unwrap();
        let mut ingest = node.ingest.clone();
        ingest
            .put_chunks(futures::stream::iter(vec![
                upload(&x),
                upload(&head),
                upload(&body),
                upload(&tail),
            ]))
            .await
            .unwrap();
        ingest
            .commit_snapshot(commit(manifest))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap()
    });
    let (_, peak) = c.node_rss_mib();
    // Counting every mention (32 bytes each) would take refs * 32 bytes,
    // twice over while sorting: about 1.8 GiB at the default 1000 repeats.
    let naive_mib = refs * 32 / (1 << 20);
    eprintln!(
        "{refs} references in {repeats} manifest chunks: node peak RSS {before} MiB before, {peak} MiB after (counting every mention: ~{naive_mib} MiB, twice that while sorting)"
    );
    assert_eq!(snap.chunk_refs, refs);
    assert!(
        peak < before + 200,
        "the node's peak RSS grew from {before} MiB to {peak} MiB for one chunk named {refs} times"
    );
    // It is an ordinary snapshot: listed, and pruned like any other
    // once a newer one of its source exists (the deletion counts its
    // references the same bounded way).
    let hostile = c.snapshots(&cfg_path);
    assert_eq!(hostile.len(), 1);
    let src = c.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"newer").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    refuge_tests::run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    c.keep_last(&admin, "finance", 1);
    let pruned = c.refuge(&admin, &["admin", "prune", "--json"]).ok().json();
    let listed = c.snapshots(&agent);
    assert_eq!(listed.len(), 1, "{pruned}");
    assert_ne!(listed[0]["id"], hostile[0]["id"], "{pruned}");
    let (_, after) = c.node_rss_mib();
    assert!(
        after < before + 200,
        "the node's peak RSS grew from {before} MiB to {after} MiB pruning it"
    );
}

#[test]
fn oversize_messages_and_requests_are_refused_before_they_are_read_and_the_node_keeps_serving() {
    let c = Cluster::start();
    let cfg_path = c.default_agent(&[]);
    let cfg = load_config(&cfg_path).unwrap();
    let (_, before) = c.node_rss_mib();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A client that sends what refuge's own clients never would: a
        // 40 MiB message, beyond the node's 16 MiB + 64 KiB limit.
        let channel = refuge_client::channel(&cfg.node).await.unwrap();
        let mut big = pb::ingest_client::IngestClient::new(channel.clone())
            .max_encoding_message_size(64 << 20);
        let data = vec![9u8; 40 << 20];
        let up = pb::ChunkUpload {
            id: ChunkId::of(&data).0.to_vec(),
            raw_len: data.len() as u32,
            data,
            ..Default::default()
        };
        let err = big
            .put_chunks(futures::stream::iter(vec![up]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::Internal
            ),
            "{err:?}"
        );
        assert!(err.message().contains("too large"), "{err:?}");

        let node = connect(&cfg.node).await.unwrap();
        let mut ingest = node.ingest.clone();
        // More ids than one FindMissing may ask about.
        let err = ingest
            .find_missing(pb::FindMissingRequest {
                ids: vec![vec![1; 32]; refuge_proto::MAX_FIND_IDS + 1],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("at most 8192"), "{err:?}");
        // More chunks than one GetChunks may fetch.
        let err = node
            .restore
            .clone()
            .get_chunks(pb::GetChunksRequest {
                ids: vec![vec![1; 32]; refuge_proto::MAX_GET_IDS + 1],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        // The node, and this connection, keep serving.
        ingest
            .put_chunks(futures::stream::iter(vec![upload(b"still fine")]))
            .await
            .unwrap();
    });
    let (_, peak) = c.node_rss_mib();
    assert!(
        peak < before + 100,
        "the node's peak RSS went from {before} to {peak} MiB for a refused 40 MiB message"
    );
}
