//! The upload side of the backup pipeline.
//!
//! The walking thread chunks and hashes, and hands batches of chunks to a
//! bounded channel. `threads` upload workers each take a batch, ask the node
//! which chunks it lacks, compress those (zstd) and upload them, so
//! compression runs on all cores while reading and the network overlap.
//!
//! Memory is bounded by the agent's budget: at most `threads` batches wait
//! in the channel, each worker holds one batch and its compressed copy, and
//! the walker fills one more — `(2 × threads + 1) × 2 × batch` in all, with
//! the batch size (and if need be the worker count) chosen by
//! [`plan`] so that this stays within half the configured budget (the rest
//! is for the chunker buffer, one file's chunk list, gRPC and the runtime).

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use refuge_core::crypto::TenantKey;
use refuge_core::{ChunkCompressor, ChunkId};
use tokio::runtime::Handle;

use crate::connect::Node;

/// Largest batch of chunk data handed to a worker.
const MAX_BATCH_BYTES: usize = 6 << 20;
const BATCH_CHUNKS: usize = 256;

/// Worker count and batch size for a memory budget: the pipeline gets half
/// the budget; batches shrink from 6 MiB down to the largest chunk, then
/// workers are dropped (never below one). With an upload limit
/// (`rate`, bytes per second; 0 for none) a batch holds at most about a
/// second of it (but at least one maximal chunk): the limiter charges a
/// batch before it is sent, so on a slow link a large batch would wait
/// many seconds and then arrive all at once, and a run stopped meanwhile
/// would leave nothing stored to resume from.
pub(crate) fn plan(
    budget_bytes: u64,
    threads: usize,
    max_chunk: usize,
    rate: u64,
) -> (usize, usize) {
    let share = (budget_bytes / 2) as usize;
    let mut threads = threads.max(1);
    let cap = match usize::try_from(rate) {
        Ok(r) if r > 0 => r.clamp(max_chunk, MAX_BATCH_BYTES),
        _ => MAX_BATCH_BYTES,
    };
    loop {
        // Batches alive at once: the one being filled, the channel's, and
        // per worker one being compressed and one in flight; each counted
        // twice (raw and compressed or encoded copies).
        let slots = 2 * (1 + channel_slots(threads) + 2 * threads);
        let batch = (share / slots).min(cap);
        if batch >= max_chunk || threads == 1 {
            return (threads, batch.max(max_chunk));
        }
        threads -= 1;
    }
}

/// Batches waiting between the walker and the workers: each worker
/// already holds two (one compressed and in flight, the next being
/// compressed), so a short queue keeps them busy.
fn channel_slots(threads: usize) -> usize {
    threads.div_ceil(2)
}

/// Chunks with their ids and whether to seal them (data chunks of an
/// encrypted tenant; manifest chunks stay plain for the node to read).
type Batch = Vec<(ChunkId, Vec<u8>, bool)>;

/// What the workers did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UploadStats {
    /// Chunks uploaded (the node lacked them).
    pub chunks_new: u64,
    /// Compressed bytes sent.
    pub bytes_sent: u64,
    /// Uncompressed bytes of the chunks sent.
    pub bytes_new: u64,
}

/// A token bucket shared by the workers: `rate` bytes per second, bursts of
/// one second.
pub(crate) struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub(crate) fn new(bytes_per_sec: u64) -> Option<Arc<Self>> {
        (bytes_per_sec > 0).then(|| {
            Arc::new(RateLimiter {
                rate: bytes_per_sec as f64,
                state: Mutex::new((bytes_per_sec as f64, Instant::now())),
            })
        })
    }

    /// Blocks until `n` bytes may be sent.
    pub(crate) fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.rate);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 { -s.0 / self.rate } else { 0.0 }
        };
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

/// The pipeline: feed it chunks with [`Uploader::add`], then
/// [`Uploader::finish`] waits until every chunk is on the node.
pub(crate) struct Uploader {
    tx: Option<SyncSender<Batch>>,
    workers: Vec<JoinHandle<anyhow::Result<UploadStats>>>,
    /// The first worker failure, and whether it is transient.
    failed: Arc<Mutex<Option<(String, bool)>>>,
    pending: Batch,
    pending_bytes: usize,
    batch_bytes: usize,
    /// The tenant key: data chunks get keyed ids and are sealed.
    key: Option<Arc<TenantKey>>,
    /// The walker had to wait for a worker since [`Uploader::take_waited`]
    /// was last asked.
    waited: bool,
}

impl Uploader {
    pub(crate) fn new(
        rt: Handle,
        node: Node,
        level: i32,
        threads: usize,
        batch_bytes: usize,
        limiter: Option<Arc<RateLimiter>>,
        key: Option<Arc<TenantKey>>,
    ) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = sync_channel::<Batch>(channel_slots(threads));
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(Mutex::new(None));
        let workers = (0..threads)
            .map(|_| {
                let (rt, node, rx, failed, limiter, key) = (
                    rt.clone(),
                    node.clone(),
                    rx.clone(),
                    failed.clone(),
                    limiter.clone(),
                    key.clone(),
                );
                std::thread::spawn(move || {
                    let r = worker(&rt, node, level, &rx, limiter.as_deref(), key.as_deref());
                    if let Err(e) = &r {
                        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                        f.get_or_insert_with(|| (format!("{e:#}"), crate::is_transient(e)));
                    }
                    r
                })
            })
            .collect();
        Uploader {
            tx: Some(tx),
            workers,
            failed,
            pending: Vec::new(),
            pending_bytes: 0,
            batch_bytes,
            key,
            waited: false,
        }
    }

    /// Whether handing over a batch had to wait for a worker since the
    /// last call: a batch may have been stored meanwhile, so the
    /// checkpoint is worth flushing even if a second has not passed
    /// while the walker was moving.
    pub(crate) fn take_waited(&mut self) -> bool {
        std::mem::take(&mut self.waited)
    }

    /// The id of a data chunk: keyed BLAKE3 for an encrypted tenant,
    /// BLAKE3 otherwise; a large chunk is hashed on every core (the
    /// walker's hashing is otherwise one core's work while the workers
    /// compress).
    pub(crate) fn id_of(&self, data: &[u8]) -> ChunkId {
        refuge_core::crypto::chunk_id_parallel(self.key.as_deref(), data)
    }

    /// The ids of several chunks (as [`Uploader::id_of`] gives each),
    /// hashed on every core.
    pub(crate) fn ids_of(&self, chunks: &[&[u8]]) -> Vec<ChunkId> {
        refuge_core::crypto::chunk_ids_parallel(self.key.as_deref(), chunks)
    }

    fn failure(&self) -> Option<anyhow::Error> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(m, transient)| {
                if *transient {
                    anyhow::Error::new(crate::Transient(m.clone()))
                } else {
                    anyhow!("{m}")
                }
            })
    }

    /// Adds a chunk; hands a full batch to the workers (blocking while they
    /// are all busy and the channel is full).
    pub(crate) fn add(&mut self, id: ChunkId, data: Vec<u8>) -> anyhow::Result<()> {
        self.push(id, data, true)
    }

    /// Adds a chunk that is never sealed (a manifest chunk: the node reads
    /// manifests).
    pub(crate) fn add_plain(&mut self, id: ChunkId, data: Vec<u8>) -> anyhow::Result<()> {
        self.push(id, data, false)
    }

    fn push(&mut self, id: ChunkId, data: Vec<u8>, seal: bool) -> anyhow::Result<()> {
        self.pending_bytes += data.len();
        self.pending.push((id, data, seal));
        if self.pending_bytes >= self.batch_bytes || self.pending.len() >= BATCH_CHUNKS {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> anyhow::Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let mut seen = HashSet::new();
        let batch: Batch = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|(id, _, _)| seen.insert(*id))
            .collect();
        self.pending_bytes = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| anyhow!("uploader already finished"))?;
        let sent = match tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(batch)) => {
                // Every worker is busy: the walker waits here.
                self.waited = true;
                tx.send(batch).map_err(|_| ())
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            return Err(self
                .failure()
                .unwrap_or_else(|| anyhow!("upload workers stopped")));
        }
        Ok(())
    }

    /// Sends what is left and waits for every worker.
    pub(crate) fn finish(mut self) -> anyhow::Result<UploadStats> {
        let sent = self.send();
        self.tx = None;
        let mut stats = UploadStats::default();
        let mut first_err = sent.err();
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Ok(s)) => {
                    stats.chunks_new += s.chunks_new;
                    stats.bytes_sent += s.bytes_sent;
                    stats.bytes_new += s.bytes_new;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("an upload worker panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        // On an early error the walker drops us: close the channel so that
        // workers finish; they are not joined (the process is failing).
        self.tx = None;
    }
}

/// An upload sent and not yet answered, and what it adds to the stats.
type InFlight = (tokio::task::JoinHandle<anyhow::Result<()>>, UploadStats);

/// Waits for the upload in flight (if any) and counts it.
fn land(
    rt: &Handle,
    in_flight: &mut Option<InFlight>,
    stats: &mut UploadStats,
) -> anyhow::Result<()> {
    if let Some((h, s)) = in_flight.take() {
        rt.block_on(h)
            .map_err(|e| anyhow!("an upload task failed: {e}"))??;
        stats.chunks_new += s.chunks_new;
        stats.bytes_sent += s.bytes_sent;
        stats.bytes_new += s.bytes_new;
    }
    Ok(())
}

/// One upload worker: asks the node which chunks of a batch it lacks,
/// compresses (and seals) those, and sends them. One upload is in flight
/// while the next batch is asked about and compressed, so that the worker
/// does not sit idle while the node verifies and stores.
fn worker(
    rt: &Handle,
    node: Node,
    level: i32,
    rx: &Mutex<Receiver<Batch>>,
    limiter: Option<&RateLimiter>,
    key: Option<&TenantKey>,
) -> anyhow::Result<UploadStats> {
    let mut stats = UploadStats::default();
    let mut zstd = ChunkCompressor::new(level);
    // The upload in flight and what it adds to the stats once stored.
    let mut in_flight: Option<InFlight> = None;
    loop {
        let batch = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(b) => b,
                Err(_) => break,
            }
        };
        let ids: Vec<ChunkId> = batch.iter().map(|(id, _, _)| *id).collect();
        let missing = rt.block_on(node.find_missing(&ids))?;
        if missing.is_empty() {
            continue;
        }
        let mut uploads = Vec::with_capacity(missing.len());
        let mut sent = UploadStats::default();
        for i in missing {
            let (id, data, seal) = &batch[i];
            sent.bytes_new += data.len() as u64;
            let mut c = zstd.compress(data);
            if let (true, Some(k)) = (seal, key) {
                c.data = k.seal(id, c.raw_len, &c.data);
                c.cipher = k.cipher();
            }
            sent.bytes_sent += c.data.len() as u64;
            uploads.push(refuge_proto::upload_to(id, c));
        }
        drop(batch);
        sent.chunks_new = uploads.len() as u64;
        // The previous upload lands before this one starts: one in flight.
        land(rt, &mut in_flight, &mut stats)?;
        if let Some(l) = limiter {
            l.take(sent.bytes_sent);
        }
        let node = node.clone();
        let task = rt.spawn(async move {
            let mut ingest = node.ingest.clone();
            node.within("uploading chunks", |r| {
                ingest.put_chunks(r.map(|()| futures::stream::iter(uploads)))
            })
            .await
            .map(|_| ())
        });
        in_flight = Some((task, sent));
    }
    land(rt, &mut in_flight, &mut stats)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_fits_the_budget() {
        let mib = 1u64 << 20;
        // Plenty: full 6 MiB batches, all workers.
        assert_eq!(plan(256 * mib, 2, 4 << 20, 0), (2, 6 << 20));
        // A slow link: batches of about a second of it, at least one chunk.
        assert_eq!(plan(256 * mib, 2, 1 << 20, 2_000_000), (2, 2_000_000));
        assert_eq!(plan(256 * mib, 2, 4 << 20, 1_000_000), (2, 4 << 20));
        assert_eq!(plan(256 * mib, 2, 4 << 20, 1 << 40), (2, 6 << 20));
        // Many cores: batches shrink so that memory does not follow the CPU count.
        let (t, b) = plan(256 * mib, 16, 4 << 20, 0);
        assert!(
            (2 * (1 + channel_slots(t) + 2 * t) * b) as u64 <= 128 * mib,
            "{t} workers of {b}"
        );
        assert!(b >= 4 << 20);
        // Tiny budget: one worker, batches of one maximal chunk.
        assert_eq!(plan(8 * mib, 8, 4 << 20, 0), (1, 4 << 20));
    }

    #[test]
    fn the_rate_limiter_paces_to_its_rate() {
        let l = RateLimiter::new(1_000_000).unwrap();
        let t = Instant::now();
        // The first second is a burst; the next 500 KB must wait ~0.5 s.
        l.take(1_000_000);
        l.take(500_000);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "waited only {waited:?}"
        );
        assert!(RateLimiter::new(0).is_none());
    }
}
