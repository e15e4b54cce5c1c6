//! Property tests (issue 6, item 7): chunking, the encodings that cross
//! the wire or the disk, and retention decisions, over generated inputs.
//! Seeded by proptest (failures are saved as regressions next to this
//! file); `PROPTEST_CASES` runs more cases.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Read;

use proptest::prelude::*;
use refuge_core::retention::{Candidate, Policy, decide};
use refuge_core::{
    ChunkId, ChunkRef, Chunker, ChunkerParams, Entry, EntryKind, HostName, ManifestReader,
    ManifestRecord, ManifestWriter, SnapshotId, SnapshotRecord, SourceKind, SourceName, TenantId,
    compress_chunk, decode_chunk, walk_order,
};

fn small_params() -> ChunkerParams {
    ChunkerParams {
        min_size: 256,
        avg_size: 1024,
        max_size: 4096,
    }
}

/// A reader that hands out its bytes in the given slice sizes.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    i: usize,
}

impl Read for Trickle {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.i % self.sizes.len()].max(1);
        self.i += 1;
        let n = want.min(out.len()).min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn cuts(r: impl Read) -> Vec<(u64, Vec<u8>)> {
    Chunker::new(r, small_params())
        .map(|c| {
            let c = c.unwrap();
            (c.offset, c.data)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Chunks cover the input exactly, respect the size bounds, and do not
    /// depend on how the input is read.
    #[test]
    fn chunking_covers_the_input_and_ignores_read_sizes(
        data in proptest::collection::vec(any::<u8>(), 0..40_000),
        sizes in proptest::collection::vec(1usize..5000, 1..8),
    ) {
        let whole = cuts(&data[..]);
        let mut joined = Vec::new();
        let mut off = 0u64;
        for (i, (o, d)) in whole.iter().enumerate() {
            prop_assert_eq!(*o, off);
            prop_assert!(d.len() <= 4096);
            if i + 1 < whole.len() {
                prop_assert!(d.len() >= 256);
            }
            off += d.len() as u64;
            joined.extend_from_slice(d);
        }
        prop_assert_eq!(&joined, &data);
        let trickled = cuts(Trickle { data: data.clone(), pos: 0, sizes, i: 0 });
        prop_assert_eq!(trickled, whole);
    }

    /// A stored chunk decodes to exactly its content; a flipped byte in
    /// the stored body never decodes to other content under the same id.
    #[test]
    fn chunk_frames_round_trip_and_damage_is_caught(
        data in proptest::collection::vec(any::<u8>(), 1..20_000),
        level in 1i32..4,
        flip in any::<prop::sample::Index>(),
    ) {
        let id = ChunkId::of(&data);
        let stored = compress_chunk(&data, level);
        prop_assert_eq!(decode_chunk(&id, &stored, 1 << 24).unwrap(), data.clone());
        let mut bad = stored.clone();
        let i = flip.index(bad.data.len());
        bad.data[i] ^= 0x5a;
        if let Ok(out) = decode_chunk(&id, &bad, 1 << 24) {
            prop_assert_eq!(out, data);
        }
    }

    /// Decoding arbitrary bytes as a chunk never panics.
    #[test]
    fn arbitrary_chunk_bodies_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..4096),
        raw_len in 0u32..100_000,
    ) {
        let mut c = compress_chunk(b"x", 1);
        c.data = body;
        c.raw_len = raw_len;
        let _ = decode_chunk(&ChunkId::of(b"x"), &c, 1 << 20);
    }

    /// Snapshot records round trip and their id covers every field.
    #[test]
    fn snapshot_records_round_trip(
        time in any::<i64>(), seq in any::<u64>(),
        nums in proptest::array::uniform6(any::<u64>()),
        refs in proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 1..20),
        image in any::<bool>(),
    ) {
        let mut r = SnapshotRecord {
            id: SnapshotId([0; 32]),
            tenant: TenantId::new("finance").unwrap(),
            host: HostName::new("db1").unwrap(),
            source: SourceName::new("data").unwrap(),
            kind: if image { SourceKind::Image } else { SourceKind::Tree },
            time_micros: time,
            seq,
            manifest: refs.iter().map(|(id, len)| ChunkRef { id: ChunkId(*id), len: *len }).collect(),
            files: nums[0],
            dirs: nums[1],
            logical_bytes: nums[2],
            chunk_refs: nums[3],
            bytes_uploaded: nums[4],
            warnings: nums[5],
            duration_micros: 0,
        };
        r.id = r.compute_id();
        let back = SnapshotRecord::decode(&r.encode()).unwrap();
        prop_assert_eq!(&back, &r);
        let mut other = r.clone();
        other.seq = other.seq.wrapping_add(1);
        prop_assert!(SnapshotRecord::decode(&other.encode()).is_err() || other.compute_id() != r.id);
    }

    /// Manifests of generated trees read back entry for entry, and every
    /// truncation is an error, never a shorter tree.
    #[test]
    fn manifests_round_trip_and_truncations_fail(
        names in proptest::collection::btree_set("[a-z]{1,6}(/[a-z]{1,6}){0,2}", 1..20),
        sizes in proptest::collection::vec(0u32..5000, 20),
    ) {
        let mut paths: Vec<Vec<u8>> = names.into_iter().map(|n| n.into_bytes()).collect();
        // Every parent directory as its own entry, then walk order.
        let mut dirs = std::collections::BTreeSet::new();
        for p in &paths {
            let mut at = 0;
            while let Some(i) = p[at..].iter().position(|&b| b == b'/') {
                dirs.insert(p[..at + i].to_vec());
                at += i + 1;
            }
        }
        paths.retain(|p| !dirs.contains(p));
        let mut all: Vec<(Vec<u8>, bool)> = paths.into_iter().map(|p| (p, false))
            .chain(dirs.into_iter().map(|d| (d, true))).collect();
        all.sort_by(|a, b| walk_order(&a.0, &b.0));
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        let mut want = Vec::new();
        for (i, (p, dir)) in all.iter().enumerate() {
            let size = if *dir { 0 } else { u64::from(sizes[i % sizes.len()]) };
            let e = Entry {
                path: p.clone(),
                kind: if *dir { EntryKind::Dir } else { EntryKind::File },
                mode: if *dir { 0o40755 } else { 0o100644 },
                uid: 0, gid: 0, mtime_secs: 1, mtime_nanos: 0, ctime_secs: 1, ctime_nanos: 0,
                inode: i as u64, size, target: vec![],
            };
            w.add_entry(&e).unwrap();
            if !*dir && size > 0 {
                w.add_chunks(&[ChunkRef::hole(size as u32)]).unwrap();
            }
            want.push(e);
        }
        let (bytes, _) = w.finish().unwrap();
        let mut r = ManifestReader::new(&bytes[..]).unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            if let ManifestRecord::Entry(e) = rec {
                got.push(e);
            }
        }
        prop_assert_eq!(got, want);
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            let short = &bytes[..cut];
            let mut failed = false;
            match ManifestReader::new(short) {
                Err(_) => failed = true,
                Ok(mut r) => loop {
                    match r.next_record() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => { failed = true; break; }
                    }
                },
            }
            prop_assert!(failed, "a manifest cut at {} of {} read as complete", cut, bytes.len());
        }
    }

    /// Retention: the newest and pinned snapshots are always kept, at least
    /// keep_last of the newest are, and the decision does not depend on
    /// the order the snapshots come in.
    #[test]
    fn retention_keeps_newest_pinned_and_last_in_any_order(
        times in proptest::collection::vec(0i64..(400 * 86_400), 1..60),
        pins in proptest::collection::vec(any::<bool>(), 60),
        keep_last in 0u32..5, keep_daily in 0u32..10, keep_weekly in 0u32..5,
        keep_monthly in 0u32..3, within in 0u64..(30 * 86_400),
        shuffle in any::<u64>(),
    ) {
        let base = 1_750_000_000_000_000i64;
        let cands: Vec<Candidate> = times.iter().enumerate().map(|(i, t)| Candidate {
            seq: i as u64 + 1,
            time_micros: base + t * 1_000_000,
            pinned: pins[i] && i % 7 == 0,
        }).collect();
        let p = Policy { keep_last, keep_daily, keep_weekly, keep_monthly, keep_within_secs: within, ..Policy::default() };
        let now = base + 400 * 86_400 * 1_000_000;
        let d = decide(&p, &cands, now);
        prop_assert_eq!(d.len(), cands.len());
        let kept = |seq: u64| d.iter().find(|x| x.seq == seq).unwrap().keep;
        let mut by_age = cands.clone();
        by_age.sort_by(|a, b| b.time_micros.cmp(&a.time_micros).then(b.seq.cmp(&a.seq)));
        prop_assert!(kept(by_age[0].seq), "the newest was removed");
        for c in cands.iter().filter(|c| c.pinned) {
            prop_assert!(kept(c.seq), "pinned {} was removed", c.seq);
        }
        for c in by_age.iter().take(keep_last as usize) {
            prop_assert!(kept(c.seq), "one of the last {} was removed", keep_last);
        }
        // Another order of the same input decides the same.
        let mut shuffled = cands.clone();
        let mut x = shuffle | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut a: Vec<(u64, bool)> = d.iter().map(|x| (x.seq, x.keep)).collect();
        let mut b: Vec<(u64, bool)> = decide(&p, &shuffled, now).iter().map(|x| (x.seq, x.keep)).collect();
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);
    }
}
