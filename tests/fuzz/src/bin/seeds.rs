//! Writes valid inputs for the fuzz targets into `corpus/` (run once, by
//! hand: `cargo run --manifest-path tests/fuzz/Cargo.toml --bin seeds`), so
//! the fuzzer starts past the magic numbers and headers.

use std::fs;
use std::path::Path;

use refuge_core::{
    ChunkId, ChunkRef, Entry, EntryKind, ManifestWriter, SourceKind, compress_chunk,
};

fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: if kind == EntryKind::Dir {
            0o40755
        } else {
            0o100644
        },
        uid: 1000,
        gid: 1000,
        mtime_secs: 1_700_000_000,
        mtime_nanos: 5,
        ctime_secs: 1_700_000_000,
        ctime_nanos: 6,
        inode: 42,
        size,
        target: if kind == EntryKind::Symlink {
            b"a/b".to_vec()
        } else {
            Vec::new()
        },
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, data: &[u8]| {
        let d = root.join(target);
        fs::create_dir_all(&d).expect("corpus dir");
        fs::write(d.join(name), data).expect("seed");
    };
    // A manifest: a directory, a file of two chunks and a hole, a symlink.
    let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).expect("writer");
    w.add_entry(&entry("etc", EntryKind::Dir, 0)).expect("dir");
    w.add_entry(&entry("etc/a.conf", EntryKind::File, 300))
        .expect("file");
    w.add_chunks(&[
        ChunkRef {
            id: ChunkId::of(b"one"),
            len: 100,
        },
        ChunkRef::hole(100),
        ChunkRef {
            id: ChunkId::of(b"two"),
            len: 100,
        },
    ])
    .expect("chunks");
    w.add_entry(&entry("etc/link", EntryKind::Symlink, 3))
        .expect("link");
    let (m, _) = w.finish().expect("finish");
    write("manifest", "seed-tree", &m);
    let mut w = ManifestWriter::new(Vec::new(), SourceKind::Image).expect("writer");
    w.add_entry(&entry("disk.img", EntryKind::File, 50))
        .expect("file");
    w.add_chunks(&[ChunkRef {
        id: ChunkId::of(b"img"),
        len: 50,
    }])
    .expect("chunks");
    let (m, _) = w.finish().expect("finish");
    write("manifest", "seed-image", &m);
    // Chunk records: compressed and stored.
    for (i, data) in [b"hello hello hello hello".to_vec(), vec![7u8; 5000]]
        .iter()
        .enumerate()
    {
        write(
            "chunk_record",
            &format!("seed-{i}"),
            &compress_chunk(data, 3).encode_record(),
        );
    }
    // Stored node records: a drill record (first byte even) and a
    // reported backup failure (odd).
    let drill = refuge_proto::pb::DrillRecord {
        seq: 3,
        recorded_by: "operator:ops1".into(),
        ..Default::default()
    };
    let mut d = vec![0u8];
    d.extend_from_slice(&refuge_proto::stored::encode_drill_record(&drill));
    write("stored", "seed-drill", &d);
    let mut f = vec![1u8];
    f.extend_from_slice(&refuge_proto::stored::encode_failure(
        1_700_000_000_000_000,
        "uploading chunks: node storage is nearly full",
    ));
    write("stored", "seed-failure", &f);
    eprintln!("seeds written under {}", root.display());
}
