//! Criterion micro-benchmarks of refuge's data path, on seeded data:
//! FastCDC chunking, BLAKE3 chunk ids, zstd compression and verified
//! decoding, and RocksDB store batches through the `Store` trait.
//!
//! Run with the workspace `dev` profile (the `bench` profile would rebuild
//! RocksDB with release settings):
//!
//! ```sh
//! cargo bench -p refuge-bench --bench micro --profile dev
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use refuge_bench::content::semi_compressible;
use refuge_core::{
    ChunkCompressor, ChunkId, Chunker, ChunkerParams, StoredChunk, TenantId, compress_chunk,
    decode_chunk,
};
use refuge_store::Store;
use refuge_store_rocksdb::{RocksOptions, RocksStore};

const SEED: u64 = 20_260_101;
const MIB: usize = 1 << 20;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
}

fn chunking(c: &mut Criterion) {
    let data = semi_compressible(SEED, 64 * MIB);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("fastcdc_default_64MiB", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for chunk in Chunker::new(black_box(&data[..]), ChunkerParams::default()) {
                n += chunk.expect("in-memory read").data.len();
            }
            assert_eq!(n, data.len());
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = semi_compressible(SEED + 1, MIB);
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("blake3_chunk_id_1MiB", |b| {
        b.iter(|| ChunkId::of(black_box(&data)))
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let data = semi_compressible(SEED + 2, MIB);
    let id = ChunkId::of(&data);
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for level in [1, 3, 9] {
        g.bench_function(format!("zstd_level_{level}_1MiB"), |b| {
            b.iter(|| compress_chunk(black_box(&data), level))
        });
    }
    for level in [1, 3] {
        let mut ctx = ChunkCompressor::new(level);
        g.bench_function(format!("zstd_level_{level}_reused_context_1MiB"), |b| {
            b.iter(|| ctx.compress(black_box(&data)))
        });
    }
    let small = &data[..16 * 1024];
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("zstd_level_3_16KiB", |b| {
        b.iter(|| compress_chunk(black_box(small), 3))
    });
    let mut ctx = ChunkCompressor::new(3);
    g.bench_function("zstd_level_3_reused_context_16KiB", |b| {
        b.iter(|| ctx.compress(black_box(small)))
    });
    g.throughput(Throughput::Bytes(data.len() as u64));
    let framed = compress_chunk(&data, 3);
    g.bench_function("decode_chunk_level_3_1MiB", |b| {
        b.iter(|| decode_chunk(&id, black_box(&framed), u32::MAX).expect("valid chunk"))
    });
    g.finish();
    for level in [1, 3, 9] {
        let out = compress_chunk(&data, level).data.len();
        eprintln!(
            "compression: zstd level {level} ratio {:.2} on the semi-compressible 1 MiB",
            data.len() as f64 / out as f64
        );
    }
}

/// 64 distinct compressed chunks of 256 KiB.
fn chunk_batch(seed: u64) -> (Vec<(ChunkId, StoredChunk)>, u64) {
    let mut raw = 0;
    let chunks = (0..64u64)
        .map(|i| {
            let d = semi_compressible(seed + i, 256 * 1024);
            raw += d.len() as u64;
            (ChunkId::of(&d), compress_chunk(&d, 3))
        })
        .collect();
    (chunks, raw)
}

fn open_store(dir: &std::path::Path) -> RocksStore {
    RocksStore::open(dir, &RocksOptions::default()).expect("open RocksDB store")
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (batch, raw) = chunk_batch(SEED + 100);
    let stored: u64 = batch.iter().map(|(_, c)| c.data.len() as u64).sum();
    let mut g = c.benchmark_group("store");

    // Puts: a fresh tenant per iteration, so every put writes (ids that
    // exist are skipped by contract).
    let puts = open_store(&dir.path().join("put"));
    let mut n = 0u64;
    g.throughput(Throughput::Bytes(raw));
    g.bench_function("rocksdb_put_64x256KiB", |b| {
        b.iter_batched(
            || {
                n += 1;
                TenantId::new(format!("put{n}")).expect("valid tenant")
            },
            |tenant| {
                let out = puts.put_chunks(&tenant, &batch, 1).expect("put");
                assert_eq!(out.stored, 64);
            },
            BatchSize::SmallInput,
        )
    });
    drop(puts);

    // Gets: the batch stored once and flushed into blob files.
    let gets = open_store(&dir.path().join("get"));
    let tenant = TenantId::new("bench").expect("valid tenant");
    gets.put_chunks(&tenant, &batch, 1).expect("put");
    gets.flush().expect("flush");
    g.throughput(Throughput::Bytes(raw));
    g.bench_function("rocksdb_get_64x256KiB", |b| {
        b.iter(|| {
            for (id, _) in &batch {
                black_box(gets.get_chunk(&tenant, id).expect("get").expect("present"));
            }
        })
    });

    // missing_chunks on 4096 ids, half of them present.
    let present: Vec<(ChunkId, StoredChunk)> = (0..2048u32)
        .map(|i| {
            let d = i.to_le_bytes().repeat(256);
            (ChunkId::of(&d), compress_chunk(&d, 1))
        })
        .collect();
    gets.put_chunks(&tenant, &present, 1).expect("put");
    gets.flush().expect("flush");
    let ids: Vec<ChunkId> = present
        .iter()
        .flat_map(|(id, _)| {
            let mut absent = id.0;
            absent[0] ^= 0xFF;
            [*id, ChunkId(absent)]
        })
        .collect();
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("rocksdb_missing_chunks_4096_ids", |b| {
        b.iter(|| {
            let missing = gets
                .missing_chunks(&tenant, black_box(&ids))
                .expect("query");
            assert_eq!(missing.len(), 2048);
        })
    });
    g.finish();
    eprintln!(
        "store: the put/get batch is {raw} bytes raw, {stored} bytes compressed (throughput counts raw bytes)"
    );
}

criterion_group! {
    name = micro;
    config = config();
    targets = chunking, hashing, compression, store
}
criterion_main!(micro);
