//! `refuge-bench scale`: the node's catalog (RocksDB) at millions of
//! chunks, without a network or a bucket.
//!
//! It opens a [`RocksStore`] directly, with chunk bodies in packs (the
//! catalog of the `s3` backend: index entries, locations, reference
//! counts, pack records, snapshots) or inline with small bodies (the
//! `rocksdb` backend), and plays agents doing backups through the calls
//! the node makes for one: FindMissing (`missing_chunks`, then
//! `touch_chunks` for the present ones), the new chunks in packs of
//! `pack_mib` worth of chunks (`begin_pack`, `place_chunks`, as
//! `refuge-store-s3`'s `store_pack` does once a pack is in the bucket) or
//! `put_chunks`, and `commit` with the snapshot's reference counts.
//!
//! Agent `a`'s snapshot of generation `g` holds the chunks numbered
//! `g*d .. g*d+k` of that agent (ids: BLAKE3 of seed, agent and number)
//! and one manifest chunk: each generation drops the `d` oldest chunks and
//! adds `d` new ones (`d` = `--new-pct` of `k`), so a snapshot's
//! references can be recomputed for its deletion without keeping them.
//! Garbage collection runs every `--gc-every` generations, as a node's
//! periodic collection would. At the end: the snapshots of the older half
//! of the generations are deleted (retention), a collection removes what
//! they alone held, every tenant's chunk ids are listed (the walk of
//! verification), and the store is closed and reopened.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use refuge_core::{
    ChunkId, ChunkRef, Cipher, Compression, HostName, ManifestSummary, SnapshotId, SourceKind,
    SourceName, StoredChunk, TenantId,
};
use refuge_store::{GC_BATCH, NewSnapshot, RefCounts, Store};
use refuge_store_rocksdb::{Bodies, Location, Placed, RocksOptions, RocksStore};

use crate::e2e::machine::Machine;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct chunks to reach.
    pub chunks: u64,
    /// Agents (one host with one source each).
    pub agents: u32,
    /// Tenants the agents are spread over.
    pub tenants: u32,
    /// Target pack size (packs backend).
    pub pack_mib: u32,
    /// Nominal chunk size (what a pack holds, and the lengths recorded).
    pub chunk_kib: u32,
    /// Share of a snapshot's chunks that are new in the next generation.
    pub new_pct: f64,
    /// Generations after the first over which `chunks` is reached: sets
    /// the size of one agent's snapshot.
    pub generations: u32,
    /// Generations between garbage collections (0: only at the end).
    pub gc_every: u32,
    /// Agents backed up at the same time.
    pub threads: usize,
    /// Block cache of the store (the node's `[rocksdb] block_cache_mib`).
    pub block_cache_mib: usize,
    /// O_DIRECT for the store's files (the node's `[rocksdb] direct_io`).
    pub direct_io: bool,
    /// `packs` (the s3 backend's catalog) or `inline` (the rocksdb
    /// backend, with bodies of `body_bytes`).
    pub inline: bool,
    /// Body size of each chunk in the inline backend.
    pub body_bytes: usize,
    /// Report every this many distinct chunks.
    pub every: u64,
    /// Seed of the chunk ids.
    pub seed: u64,
    /// Where to create the scratch directory.
    pub dir: Option<PathBuf>,
    /// Keep the store.
    pub keep: bool,
    /// The command line, for the report.
    pub command: String,
}

/// One report row.
#[derive(Debug, Clone)]
struct Checkpoint {
    chunks: u64,
    snapshots: u64,
    secs: f64,
    rate: f64,
    commit_ms: (f64, f64),
    find_ms: (f64, f64),
    disk: u64,
    wal: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

/// A finished operation of the end phase.
struct Op {
    what: String,
    items: String,
    secs: f64,
    note: String,
}

/// Latencies of the interval since the last checkpoint, and all of them.
#[derive(Default)]
struct Lat {
    commit: Vec<f64>,
    find: Vec<f64>,
    all_commit: Vec<f64>,
    all_find: Vec<f64>,
    all_place: Vec<f64>,
}

struct Sim<'a> {
    o: &'a Options,
    store: &'a RocksStore,
    dir: &'a Path,
    k: u64,
    d: u64,
    per_tenant: u32,
    distinct: AtomicU64,
    snapshots: AtomicU64,
    stop: AtomicBool,
    next_mark: AtomicU64,
    start: Instant,
    lat: Mutex<Lat>,
    rows: Mutex<Vec<Checkpoint>>,
    /// Per agent: the snapshot ids of each generation.
    ids: Vec<Mutex<Vec<SnapshotId>>>,
}

/// Simulated node time of generation `g` (hourly backups).
fn gen_time(g: u32, agent: u32) -> i64 {
    1_800_000_000_000_000 + i64::from(g) * 3_600_000_000 + i64::from(agent) * 1_000
}

fn chunk_id(seed: u64, agent: u32, n: u64) -> ChunkId {
    let mut h = blake3::Hasher::new();
    h.update(b"refuge-bench scale chunk");
    h.update(&seed.to_le_bytes());
    h.update(&agent.to_le_bytes());
    h.update(&n.to_le_bytes());
    ChunkId(*h.finalize().as_bytes())
}

fn manifest_id(seed: u64, agent: u32, g: u32) -> ChunkId {
    let mut h = blake3::Hasher::new();
    h.update(b"refuge-bench scale manifest");
    h.update(&seed.to_le_bytes());
    h.update(&agent.to_le_bytes());
    h.update(&g.to_le_bytes());
    ChunkId(*h.finalize().as_bytes())
}

/// `/proc/self/status` field in KiB.
fn status_kib(key: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sum of the sizes of the files under `dir`, and of those that are
/// write-ahead logs (`*.log`); files that vanish while it walks are
/// skipped.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    let Ok(rd) = fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut total = (0, 0);
    for e in rd.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => {
                let (a, w) = dir_bytes(&e.path());
                total.0 += a;
                total.1 += w;
            }
            Ok(m) => {
                total.0 += m.len();
                if e.file_name().to_string_lossy().ends_with(".log") {
                    total.1 += m.len();
                }
            }
            Err(_) => {}
        }
    }
    total
}

/// Median and 99th percentile, ms.
fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(s: Instant) -> f64 {
    s.elapsed().as_secs_f64() * 1e3
}

impl Sim<'_> {
    fn tenant(&self, agent: u32) -> TenantId {
        TenantId::new(format!("tenant-{:03}", agent / self.per_tenant)).expect("tenant name")
    }

    /// The references of agent `a`'s snapshot of generation `g`.
    fn refs(&self, a: u32, g: u32) -> (Vec<ChunkId>, ChunkId) {
        let from = u64::from(g) * self.d;
        let ids = (from..from + self.k)
            .map(|n| chunk_id(self.o.seed, a, n))
            .collect();
        (ids, manifest_id(self.o.seed, a, g))
    }

    /// One agent's backup of generation `g`.
    fn backup(&self, a: u32, g: u32) -> anyhow::Result<()> {
        let tenant = self.tenant(a);
        let now = gen_time(g, a);
        let (ids, manifest) = self.refs(a, g);
        // FindMissing, in the agent's batches.
        let t = Instant::now();
        let mut missing = Vec::new();
        for part in ids.chunks(GC_BATCH) {
            let m = self.store.missing_chunks(&tenant, part)?;
            let m: std::collections::HashSet<usize> = m.into_iter().collect();
            let mut present = Vec::with_capacity(part.len());
            for (i, id) in part.iter().enumerate() {
                if m.contains(&i) {
                    missing.push(*id);
                } else {
                    present.push(*id);
                }
            }
            self.store.touch_chunks(&tenant, &present, now)?;
        }
        missing.push(manifest);
        let find = ms(t);
        // The new chunks, in packs.
        let t = Instant::now();
        let chunk_bytes = u64::from(self.o.chunk_kib) << 10;
        let per_pack = ((u64::from(self.o.pack_mib) << 20) / chunk_bytes).max(1) as usize;
        for part in missing.chunks(per_pack) {
            if self.o.inline {
                let chunks: Vec<(ChunkId, StoredChunk)> = part
                    .iter()
                    .map(|id| {
                        let mut data = vec![0x5a; self.o.body_bytes];
                        let n = data.len().min(32);
                        data[..n].copy_from_slice(&id.0[..n]);
                        let c = StoredChunk {
                            compression: Compression::None,
                            cipher: Cipher::None,
                            raw_len: self.o.body_bytes as u32,
                            data,
                        };
                        (*id, c)
                    })
                    .collect();
                self.store.put_chunks(&tenant, &chunks, now)?;
            } else {
                let pack = self.store.begin_pack(&tenant)?;
                let rec_len = chunk_bytes as u32 + 8;
                let placed: Vec<Placed> = part
                    .iter()
                    .enumerate()
                    .map(|(i, id)| Placed {
                        id: *id,
                        raw_len: chunk_bytes as u32,
                        stored_len: chunk_bytes as u32,
                        checksum: id.0,
                        at: Location {
                            pack,
                            offset: i as u64 * u64::from(rec_len),
                            len: rec_len,
                        },
                    })
                    .collect();
                let bytes = part.len() as u64 * u64::from(rec_len);
                self.store
                    .place_chunks(&tenant, pack, &placed, bytes, now)?;
            }
        }
        let place = ms(t);
        // The commit.
        let mut refs: RefCounts = ids.iter().copied().collect();
        refs.add(manifest);
        let new = NewSnapshot {
            tenant,
            host: HostName::new(format!("host-{:02}", a % self.per_tenant)).expect("host"),
            source: SourceName::new("data").expect("source"),
            kind: SourceKind::Tree,
            manifest: vec![ChunkRef {
                id: manifest,
                len: 1 << 16,
            }],
            summary: ManifestSummary {
                entries: self.k,
                files: self.k,
                dirs: 1,
                logical_bytes: self.k * chunk_bytes,
                chunk_refs: self.k,
            },
            bytes_uploaded: missing.len() as u64 * chunk_bytes,
            warnings: 0,
            duration_micros: 0,
            refs,
            token: Some(blake3::hash(&now.to_le_bytes()).as_bytes()[..16].try_into()?),
        };
        let t = Instant::now();
        let c = self.store.commit(new, now)?;
        let commit = ms(t);
        self.ids[a as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c.record.id);
        {
            let mut l = self.lat.lock().unwrap_or_else(|p| p.into_inner());
            l.commit.push(commit);
            l.find.push(find);
            l.all_commit.push(commit);
            l.all_find.push(find);
            l.all_place.push(place);
        }
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        let total = self
            .distinct
            .fetch_add(missing.len() as u64, Ordering::SeqCst)
            + missing.len() as u64;
        if total >= self.o.chunks {
            self.stop.store(true, Ordering::SeqCst);
        }
        let mark = self.next_mark.load(Ordering::SeqCst);
        if total >= mark
            && self
                .next_mark
                .compare_exchange(
                    mark,
                    (total / self.o.every + 1) * self.o.every,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
        {
            self.checkpoint(total);
        }
        Ok(())
    }

    fn checkpoint(&self, chunks: u64) {
        let secs = self.start.elapsed().as_secs_f64();
        let (commit_ms, find_ms) = {
            let mut l = self.lat.lock().unwrap_or_else(|p| p.into_inner());
            let c = p50_p99(&mut l.commit);
            let f = p50_p99(&mut l.find);
            l.commit.clear();
            l.find.clear();
            (c, f)
        };
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let (c0, s0) = rows.last().map_or((0, 0.0), |r| (r.chunks, r.secs));
        let (disk, wal) = dir_bytes(self.dir);
        let row = Checkpoint {
            chunks,
            snapshots: self.snapshots.load(Ordering::Relaxed),
            secs,
            rate: (chunks - c0) as f64 / (secs - s0).max(1e-9),
            commit_ms,
            find_ms,
            disk,
            wal,
            rss_kib: status_kib("VmRSS:"),
            hwm_kib: status_kib("VmHWM:"),
        };
        eprintln!(
            "scale: {} chunks, {} snapshots, {:.0} s, {:.0} chunks/s, commit p50 {:.1} ms p99 {:.1} ms, catalog {:.1} MB ({:.0} B/chunk; WAL {:.0} MB), RSS {} MiB (peak {} MiB)",
            row.chunks,
            row.snapshots,
            row.secs,
            row.rate,
            row.commit_ms.0,
            row.commit_ms.1,
            row.disk as f64 / 1e6,
            row.disk as f64 / row.chunks as f64,
            row.wal as f64 / 1e6,
            row.rss_kib / 1024,
            row.hwm_kib / 1024
        );
        rows.push(row);
    }

    /// Every agent's backup of generation `g`, `threads` at a time.
    fn generation(&self, g: u32) -> anyhow::Result<()> {
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.o.threads.max(1) {
                s.spawn(|| {
                    loop {
                        if self.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let a = next.fetch_add(1, Ordering::SeqCst);
                        if a >= self.o.agents as usize {
                            break;
                        }
                        if let Err(e) = self.backup(a as u32, g) {
                            self.stop.store(true, Ordering::SeqCst);
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                });
            }
        });
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e.context(format!("generation {g}"))),
            None => Ok(()),
        }
    }
}

/// Runs the simulation; returns the Markdown report.
pub fn run(o: &Options) -> anyhow::Result<String> {
    if o.agents == 0 || o.tenants == 0 || !o.agents.is_multiple_of(o.tenants) {
        anyhow::bail!("--agents must be a positive multiple of --tenants");
    }
    if o.chunks < u64::from(o.agents) {
        anyhow::bail!("--chunks must be at least --agents");
    }
    let parent = o.dir.clone().unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("refuge-scale-")
        .tempdir_in(&parent)
        .context("creating the scratch directory")?;
    let dir = scratch.path().join("store");
    let machine = Machine::describe(scratch.path());
    let opts = RocksOptions {
        bodies: if o.inline {
            Bodies::Inline
        } else {
            Bodies::Packs
        },
        block_cache_bytes: o.block_cache_mib << 20,
        direct_io: o.direct_io,
        ..RocksOptions::default()
    };
    let base_rss = status_kib("VmRSS:");
    let store = RocksStore::open(&dir, &opts).context("opening the store")?;
    let direct_io = store.uses_direct_io();
    let frac = o.new_pct / 100.0;
    let k = ((o.chunks as f64 / f64::from(o.agents)) / (1.0 + frac * f64::from(o.generations)))
        .ceil()
        .max(1.0) as u64;
    let d = ((k as f64 * frac).round() as u64).max(1);
    eprintln!(
        "scale: {} agents over {} tenants, {k} chunks per snapshot, {d} new per generation, target {} chunks, in {}",
        o.agents,
        o.tenants,
        o.chunks,
        dir.display()
    );
    let sim = Sim {
        o,
        store: &store,
        dir: &dir,
        k,
        d,
        per_tenant: o.agents / o.tenants,
        distinct: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        next_mark: AtomicU64::new(o.every),
        start: Instant::now(),
        lat: Mutex::default(),
        rows: Mutex::default(),
        ids: (0..o.agents).map(|_| Mutex::default()).collect(),
    };
    let mut ops: Vec<Op> = Vec::new();
    let mut gc_periodic = (0u32, 0.0f64, 0u64);
    let mut g = 0u32;
    while !sim.stop.load(Ordering::SeqCst) {
        sim.generation(g)?;
        if o.gc_every > 0 && (g + 1).is_multiple_of(o.gc_every) && !sim.stop.load(Ordering::SeqCst)
        {
            let t = Instant::now();
            let out = store.collect_garbage(gen_time(g, 0) - 86_400_000_000, &mut |_| {})?;
            gc_periodic.0 += 1;
            gc_periodic.1 += t.elapsed().as_secs_f64();
            gc_periodic.2 += out.examined;
            eprintln!(
                "scale: collection after generation {g}: {} examined in {:.1} s",
                out.examined,
                t.elapsed().as_secs_f64()
            );
        }
        g += 1;
    }
    let ingest_secs = sim.start.elapsed().as_secs_f64();
    let total = sim.distinct.load(Ordering::SeqCst);
    {
        let last = sim
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .map(|r| r.chunks);
        if last.is_none_or(|l| total - l >= o.every / 20) {
            sim.checkpoint(total);
        }
    }
    let last_gen = g - 1;
    let (all_commit, all_find, all_place) = {
        let mut l = sim.lat.lock().unwrap_or_else(|p| p.into_inner());
        let c = p50_p99(&mut l.all_commit);
        let f = p50_p99(&mut l.all_find);
        let p = p50_p99(&mut l.all_place);
        (c, f, p)
    };
    let snapshots = sim.snapshots.load(Ordering::Relaxed);
    if gc_periodic.0 > 0 {
        ops.push(Op {
            what: format!(
                "periodic garbage collection (every {} generations, {} runs)",
                o.gc_every, gc_periodic.0
            ),
            items: format!("{} entries examined", gc_periodic.2),
            secs: gc_periodic.1,
            note: format!(
                "{:.0} entries/s; chunks placed and not referenced since the last run",
                gc_periodic.2 as f64 / gc_periodic.1.max(1e-9)
            ),
        });
    }

    // Collection after ingest: what the last generations placed.
    let end_time = gen_time(last_gen + 1, 0);
    let t = Instant::now();
    let out = store.collect_garbage(end_time, &mut |_| {})?;
    ops.push(Op {
        what: "garbage collection after the last generation".into(),
        items: format!("{} entries examined, {} deleted", out.examined, out.deleted),
        secs: t.elapsed().as_secs_f64(),
        note: "what no commit referenced: committed chunks leave `unreferenced` at their commit"
            .into(),
    });

    // Retention: the older half of the generations goes.
    let keep_from = last_gen.div_ceil(2);
    let t = Instant::now();
    let mut deleted = 0u64;
    for a in 0..o.agents {
        let tenant = sim.tenant(a);
        let ids = sim.ids[a as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (gi, id) in ids.iter().enumerate() {
            let gi = gi as u32;
            if gi >= keep_from {
                break;
            }
            let (chunks, manifest) = sim.refs(a, gi);
            let mut refs: RefCounts = chunks.into_iter().collect();
            refs.add(manifest);
            if store.delete_snapshot(&tenant, id, &refs, end_time + 1)? {
                deleted += 1;
            }
        }
    }
    let del_secs = t.elapsed().as_secs_f64();
    ops.push(Op {
        what: format!(
            "delete the snapshots of generations 0-{}",
            keep_from.saturating_sub(1)
        ),
        items: format!("{deleted} snapshots of {k} references"),
        secs: del_secs,
        note: format!(
            "{:.1} ms per deletion",
            del_secs * 1e3 / (deleted.max(1) as f64)
        ),
    });
    let t = Instant::now();
    let out = store.collect_garbage(end_time + 2, &mut |_| {})?;
    let gc_secs = t.elapsed().as_secs_f64();
    ops.push(Op {
        what: "garbage collection after the deletions".into(),
        items: format!("{} examined, {} deleted", out.examined, out.deleted),
        secs: gc_secs,
        note: format!(
            "{:.0} chunks deleted/s",
            out.deleted as f64 / gc_secs.max(1e-9)
        ),
    });
    let left = total - out.deleted;
    if !o.inline {
        let t = Instant::now();
        let garbage = store.pack_garbage()?;
        let dead = garbage.iter().filter(|p| p.all_dead()).count();
        let half = garbage
            .iter()
            .filter(|p| !p.all_dead() && p.dead_bytes * 2 >= p.info.bytes)
            .count();
        ops.push(Op {
            what: "list packs with dead chunks (`pack_garbage`)".into(),
            items: format!(
                "{} packs: {dead} all dead, {half} at least half dead",
                garbage.len()
            ),
            secs: t.elapsed().as_secs_f64(),
            note: "what the bucket side of a collection reads".into(),
        });
    }

    // The walk of verification.
    let t = Instant::now();
    let mut listed = 0u64;
    for tenant in store.list_tenants()? {
        let mut after: Option<ChunkId> = None;
        loop {
            let page = store.list_chunk_ids(&tenant, after.as_ref(), GC_BATCH)?;
            listed += page.len() as u64;
            match page.last() {
                Some(l) if page.len() == GC_BATCH => after = Some(*l),
                _ => break,
            }
        }
    }
    let scan = t.elapsed().as_secs_f64();
    ops.push(Op {
        what: "list every chunk id (`list_chunk_ids`, pages of 1024)".into(),
        items: format!("{listed} ids"),
        secs: scan,
        note: format!("{:.0} ids/s", listed as f64 / scan.max(1e-9)),
    });
    if listed != left {
        anyhow::bail!("listed {listed} chunk ids, expected {left}");
    }

    // Lookups of present chunks in a store this size (FindMissing without
    // the touch), against the random order of ids.
    let t = Instant::now();
    let mut looked = 0u64;
    for a in (0..o.agents).step_by((o.agents as usize / 50).max(1)) {
        let done = sim.ids[a as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u32;
        let (ids, _) = sim.refs(a, done.saturating_sub(1));
        for part in ids.chunks(GC_BATCH) {
            let m = store.missing_chunks(&sim.tenant(a), part)?;
            anyhow::ensure!(m.is_empty(), "agent {a}: {} chunks missing", m.len());
            looked += part.len() as u64;
        }
    }
    let look = t.elapsed().as_secs_f64();
    ops.push(Op {
        what: "look up present chunks (`missing_chunks`, batches of 1024)".into(),
        items: format!("{looked} ids"),
        secs: look,
        note: format!("{:.0} ids/s", looked as f64 / look.max(1e-9)),
    });

    let rss_before = status_kib("VmRSS:");
    let hwm = status_kib("VmHWM:");
    let rows = std::mem::take(&mut *sim.rows.lock().unwrap_or_else(|p| p.into_inner()));
    let (disk_open, wal_open) = dir_bytes(&dir);
    drop(sim);
    drop(store);
    let rss_closed = status_kib("VmRSS:");
    // A close without a flush leaves the memtables in the WAL: the open
    // replays it (as after a crash).
    let t = Instant::now();
    let store = RocksStore::open(&dir, &opts).context("reopening the store")?;
    let replay = t.elapsed().as_secs_f64();
    let rss_replayed = status_kib("VmRSS:");
    ops.push(Op {
        what: "close, reopen replaying the WAL".into(),
        items: format!(
            "{:.1} MB on disk, WAL {:.1} MB",
            disk_open as f64 / 1e6,
            wal_open as f64 / 1e6
        ),
        secs: replay,
        note: format!(
            "RSS {} MiB before close, {} MiB closed, {} MiB reopened",
            rss_before / 1024,
            rss_closed / 1024,
            rss_replayed / 1024
        ),
    });
    let t = Instant::now();
    store.flush()?;
    let flush = t.elapsed().as_secs_f64();
    let (disk_flushed, wal_flushed) = dir_bytes(&dir);
    ops.push(Op {
        what: "flush the memtables".into(),
        items: "-".into(),
        secs: flush,
        note: format!(
            "catalog then {:.1} MB, of which WAL {:.1} MB",
            disk_flushed as f64 / 1e6,
            wal_flushed as f64 / 1e6
        ),
    });
    drop(store);
    let t = Instant::now();
    let store = RocksStore::open(&dir, &opts).context("reopening the store")?;
    let reopen = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tenants = store.list_tenants()?.len();
    let first = t.elapsed().as_secs_f64();
    ops.push(Op {
        what: "close and reopen after the flush".into(),
        items: format!("{tenants} tenants listed after it in {:.0} ms", first * 1e3),
        secs: reopen,
        note: format!("RSS {} MiB reopened", status_kib("VmRSS:") / 1024),
    });
    drop(store);
    if o.keep {
        let kept = scratch.keep();
        eprintln!("scale: kept {}", kept.display());
    }

    Ok(report(
        o,
        &machine,
        Report {
            k,
            d,
            generations: last_gen + 1,
            snapshots,
            ingest_secs,
            total,
            live: left,
            base_rss,
            hwm,
            disk_flushed,
            wal_flushed,
            all_commit,
            all_find,
            all_place,
            ops,
            direct_io,
        },
        &rows,
    ))
}

/// The figures of a run beyond the checkpoints.
struct Report {
    k: u64,
    d: u64,
    generations: u32,
    snapshots: u64,
    ingest_secs: f64,
    total: u64,
    live: u64,
    base_rss: u64,
    hwm: u64,
    disk_flushed: u64,
    wal_flushed: u64,
    all_commit: (f64, f64),
    all_find: (f64, f64),
    all_place: (f64, f64),
    ops: Vec<Op>,
    /// The store used O_DIRECT.
    direct_io: bool,
}

fn report(o: &Options, m: &Machine, r: Report, rows: &[Checkpoint]) -> String {
    let backend = if o.inline {
        format!(
            "`rocksdb` backend (`Bodies::Inline`), bodies of {} bytes",
            o.body_bytes
        )
    } else {
        format!(
            "`s3` backend's catalog (`Bodies::Packs`), packs of {} MiB",
            o.pack_mib
        )
    };
    let mut s = format!(
        "### Catalog, {backend}: {} agents, {} chunks\n\n`{}`; commit `{}`; {}. Block cache {} MiB, {} I/O. {} agents ({} tenants x {} hosts, one source each), {} chunks of {} KiB per snapshot, {} ({}%) new per generation; {} generations, {} snapshots, {} threads backing up agents at once. No network and no bucket: the calls the node makes for a backup (FindMissing: `missing_chunks` + `touch_chunks`; {}; `commit`). The machine was shared with other work: rates are lower bounds.\n\n",
        o.agents,
        r.total,
        o.command,
        m.commit,
        m.line(),
        o.block_cache_mib,
        if r.direct_io { "direct" } else { "buffered" },
        o.agents,
        o.tenants,
        o.agents / o.tenants,
        r.k,
        o.chunk_kib,
        r.d,
        o.new_pct,
        r.generations,
        r.snapshots,
        o.threads,
        if o.inline {
            "`put_chunks`"
        } else {
            "`begin_pack` + `place_chunks` per pack"
        },
    );
    s.push_str("| chunks | snapshots | elapsed | chunks/s | commit p50 / p99 | FindMissing p50 / p99 | on disk | of it WAL | bytes/chunk | RSS | peak RSS |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} s | {:.0} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} MB | {:.1} MB | {:.0} | {} MiB | {} MiB |\n",
            c.chunks,
            c.snapshots,
            c.secs,
            c.rate,
            c.commit_ms.0,
            c.commit_ms.1,
            c.find_ms.0,
            c.find_ms.1,
            c.disk as f64 / 1e6,
            c.wal as f64 / 1e6,
            c.disk as f64 / c.chunks as f64,
            c.rss_kib / 1024,
            c.hwm_kib / 1024,
        ));
    }
    s.push_str(&format!(
        "\nWhole ingest: {:.0} s, {:.0} chunks/s, {:.1} snapshots/s; per backup, FindMissing p50 {:.1} ms (p99 {:.1}), placing the new chunks p50 {:.1} ms (p99 {:.1}), commit p50 {:.1} ms (p99 {:.1}). On disk after the final flush: {:.1} MB ({:.0} bytes per live chunk without the WAL of {:.1} MB). RSS before the store opened: {} MiB; peak: {} MiB.\n\n",
        r.ingest_secs,
        r.total as f64 / r.ingest_secs,
        r.snapshots as f64 / r.ingest_secs,
        r.all_find.0,
        r.all_find.1,
        r.all_place.0,
        r.all_place.1,
        r.all_commit.0,
        r.all_commit.1,
        r.disk_flushed as f64 / 1e6,
        (r.disk_flushed - r.wal_flushed) as f64 / r.live as f64,
        r.wal_flushed as f64 / 1e6,
        r.base_rss / 1024,
        r.hwm / 1024,
    ));
    s.push_str("| operation | items | time | |\n|---|---|---:|---|\n");
    for op in &r.ops {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            op.what,
            op.items,
            crate::e2e::report::secs(op.secs),
            op.note
        ));
    }
    s.push_str(
        "\nChunks/s: distinct chunks added per second of the interval since the previous row. Commit: `Store::commit` alone (existence check of every reference, WAL sync, record and reference-count merges); with a bucket the node also waits for the tenant's open pack to upload. On disk: every file of the RocksDB directory (SSTs, WAL, manifest); of it WAL: the write-ahead logs (`*.log`), which hold what the memtables hold and which RocksDB caps at 256 MiB (`max_total_wal_size`); bytes/chunk counts them. RSS: `VmRSS` and `VmHWM` of this process, which holds RocksDB and the simulation's small state.\n",
    );
    s
}

/// Parses a count such as `10M`, `500k` or `2000000` (decimal units).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid count {s:?}: expected a number like 10M or 500k"))?;
    if v <= 0.0 {
        return Err(format!("invalid count {s:?}: must be positive"));
    }
    Ok((v * mult).round() as u64)
}

/// `refuge-bench scale`: runs, prints and optionally writes the report.
pub fn main(o: Options, out: Option<PathBuf>, label: &str) -> anyhow::Result<()> {
    if o.every == 0 {
        anyhow::bail!("--every must be at least 1");
    }
    let body = run(&o)?;
    println!("{body}");
    if let Some(out) = out {
        let key = format!(
            "scale {} {} {}",
            if o.inline { "inline" } else { "packs" },
            o.chunks,
            o.agents
        );
        crate::e2e::report::upsert_file(&out, label, &key, &body)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "wrote the scale results into {} (section {label:?})",
            out.display()
        );
    }
    Ok(())
}
