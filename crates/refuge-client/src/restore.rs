//! Restore of one snapshot: stream the manifest, fetch chunks in parallel
//! with read-ahead in restore order, verify every chunk (bounded
//! decompression, recomputed BLAKE3) and write it with a positioned write.
//!
//! Safety rules (the filesystem side lives in `restore_target.rs`):
//! * Every file is written under a temporary name in its final directory
//!   (`.refuge-restore-NAME`) and renamed only after all its chunks were
//!   verified and written, so a failed restore never leaves wrong bytes
//!   under a real name. (A block device target is written in place.)
//! * Manifest paths are validated by the reader (relative, no `..`), and no
//!   write goes through a symlink: each directory is checked with
//!   `symlink_metadata` the first time the restore uses it, and files are
//!   opened with `O_NOFOLLOW`.
//! * A missing or corrupt chunk stops the restore with the file and chunk
//!   named.
//!
//! Parallelism: the main thread reads the manifest, creates directories
//! and symlinks, and cuts the chunk lists into groups of one or more
//! files; `threads` workers fetch groups concurrently (read-ahead bounded
//! by a channel of `threads` groups). A small file (up to 4 MiB and 16
//! chunks) travels whole in a group: the worker that fetches it creates,
//! writes, finishes and renames it, so file creation and metadata run on
//! every worker. A larger file is created by the main thread and its chunk
//! runs may be written by several workers at their offsets; it is
//! finished (size, mode, owner, mtime, rename) once all its groups are
//! written, and its whole blocks are written past the page cache
//! (`restore_direct.rs`). Directories get their metadata last.
//!
//! Resume (`--resume`): a file's temporary file from an interrupted run, or
//! an existing file at its real name, is kept and each chunk range in it is
//! re-hashed locally; only ranges that do not match are fetched. Holes are
//! checked to be zero.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use refuge_core::{
    ChunkRef, Entry, EntryKind, ManifestReader, ManifestRecord, SnapshotRecord, SourceKind,
};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::connect::Node;
use crate::progress::{Progress, ProgressMode};
use crate::remote::{Fetcher, Piece, RemoteStream};
use crate::restore_direct::{Out, RUN_BYTES, Runs};
use crate::restore_target::{
    Creator, Dirs, Plan, create_temp, finish_dir, finish_file, open_work_file, restore_symlink,
};

/// Chunks (and bytes) per group handed to a worker. A group may span many
/// small files, so that a tree of small files costs one request per group
/// rather than one per file, and a database's 16 KiB chunks come in
/// groups of 8 MiB.
const GROUP_CHUNKS: usize = 512;
const GROUP_BYTES: u64 = 16 << 20;
/// Files written but not yet finished (each holds an open descriptor).
const MAX_OPEN_FILES: usize = 256;

/// Where and what to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Directory for a tree; file or device path for an image.
    pub target: PathBuf,
    /// Restore only this path (file or subtree) of a tree snapshot.
    pub include: Option<String>,
    /// How to show progress.
    pub progress: ProgressMode,
    /// Keep what an interrupted restore already wrote (verified locally).
    pub resume: bool,
    /// Fetch workers; at least 1.
    pub threads: usize,
    /// The tenant key, for encrypted snapshots.
    pub key: Option<std::sync::Arc<refuge_core::crypto::TenantKey>>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Full snapshot id.
    pub snapshot: String,
    /// Where it went.
    pub target: String,
    /// Files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// File bytes restored (fetched, verified locally on resume, or holes).
    pub bytes: u64,
    /// Bytes fetched from the node and verified.
    pub bytes_fetched: u64,
    /// Bytes already on disk that matched (with `--resume`).
    pub bytes_kept: u64,
    /// Chunks fetched and verified.
    pub chunks: u64,
    /// Seconds.
    pub duration_secs: f64,
}

/// Restores `snap` as `opts` say.
pub async fn restore_snapshot(
    node: &Node,
    snap: &SnapshotRecord,
    opts: RestoreOptions,
) -> anyhow::Result<RestoreReport> {
    let node = node.clone();
    let snap = snap.clone();
    let rt = Handle::current();
    tokio::task::spawn_blocking(move || restore_blocking(rt, node, snap, opts))
        .await
        .map_err(|e| anyhow!("restore worker failed: {e}"))?
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn included(path: &[u8], include: Option<&[u8]>) -> bool {
    match include {
        None => true,
        Some(inc) => path == inc || (path.starts_with(inc) && path.get(inc.len()) == Some(&b'/')),
    }
}

/// One file being written by the workers.
struct FileJob {
    entry: Entry,
    /// Temporary path (or the device itself).
    tmp: PathBuf,
    dest: PathBuf,
    /// Large files not being resumed also get a direct descriptor.
    out: Out,
    device: bool,
    /// Existing content may be reused (resume) and holes must be checked.
    verify_local: bool,
    /// Groups dispatched and not yet written.
    pending: AtomicUsize,
    /// All of the file's groups have been dispatched.
    sealed: AtomicBool,
    covered: AtomicU64,
}

/// One chunk of a file at its offset.
struct Item {
    job: Arc<FileJob>,
    r: ChunkRef,
    off: u64,
}

/// A small file restored whole by the worker that gets its group:
/// created there, written, finished and renamed into place, so that file
/// creation and metadata run on every worker, not on the thread reading
/// the manifest.
struct Whole {
    entry: Entry,
    /// Its directory (checked) and final path.
    dir: PathBuf,
    dest: PathBuf,
    refs: Vec<ChunkRef>,
    plan: Plan,
}

impl Whole {
    fn name(&self) -> &[u8] {
        self.dest.file_name().map(|n| n.as_bytes()).unwrap_or(b"")
    }
}

/// A group of chunks, in restore order, of one or more consecutive files:
/// runs of files written by several workers (`items`; each such file
/// counts the group once in its `pending`, its items are contiguous) and
/// small files restored whole (`wholes`).
#[derive(Default)]
struct Group {
    items: Vec<Item>,
    wholes: Vec<Whole>,
    /// Chunks in `items` and `wholes`.
    chunks: usize,
    bytes: u64,
}

impl Group {
    /// Each distinct file of the group, once.
    fn jobs(&self) -> impl Iterator<Item = &Arc<FileJob>> {
        let mut last: Option<&Arc<FileJob>> = None;
        self.items.iter().filter_map(move |it| {
            if last.is_some_and(|l| Arc::ptr_eq(l, &it.job)) {
                return None;
            }
            last = Some(&it.job);
            Some(&it.job)
        })
    }
}

/// State shared by the main thread and the workers.
struct Shared {
    failed: Mutex<Option<anyhow::Error>>,
    stop: AtomicBool,
    done: (Mutex<()>, Condvar),
    fetched: AtomicU64,
    kept: AtomicU64,
    chunks: AtomicU64,
    /// Groups dispatched and not yet done.
    inflight: AtomicUsize,
}

impl Shared {
    fn fail(&self, e: anyhow::Error) {
        self.stop.store(true, Ordering::SeqCst);
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
        self.done.1.notify_all();
    }
    fn take_failure(&self) -> Option<anyhow::Error> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Does the file already hold exactly this chunk at `off`?
fn local_matches(f: &File, off: u64, r: &ChunkRef, buf: &mut Vec<u8>, fetcher: &Fetcher) -> bool {
    buf.resize(r.len as usize, 0);
    f.read_exact_at(buf, off).is_ok() && fetcher.id_of(buf) == r.id
}

/// Makes `len` bytes at `off` zero (checking first when content may exist).
fn ensure_zero(f: &File, off: u64, len: u32, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    buf.resize(len as usize, 0);
    let already = f.read_exact_at(buf, off).is_ok() && buf.iter().all(|&b| b == 0);
    if !already {
        buf.iter_mut().for_each(|b| *b = 0);
        f.write_all_at(buf, off)?;
    }
    Ok(already)
}

/// Where a fetched chunk goes: a chunk of a shared file, or a small file
/// of the group (index) at an offset, and whether it is that file's first
/// and last chunk with data.
enum To<'a> {
    Item(&'a Item),
    Whole {
        i: usize,
        off: u64,
        first: bool,
        last: bool,
    },
}

/// Checks what is already in place (holes, and on resume matching local
/// content), and fetches the rest of the group in one go. A small file is
/// created at its first chunk and finished at its last, so a worker holds
/// one of them open at a time. An error names the file it happened in; a
/// small file not yet renamed is removed.
fn run_group(
    g: &Group,
    fetcher: &mut Fetcher,
    sh: &Shared,
    bar: &Progress,
    buf: &mut Vec<u8>,
    runs: &mut Runs,
) -> anyhow::Result<()> {
    let mut made: Vec<Option<(PathBuf, File)>> = Vec::new();
    let r = fill_group(g, fetcher, sh, bar, buf, runs, &mut made);
    runs.clear();
    for (tmp, _) in made.into_iter().flatten() {
        let _ = fs::remove_file(tmp);
    }
    r
}

fn fill_group(
    g: &Group,
    fetcher: &mut Fetcher,
    sh: &Shared,
    bar: &Progress,
    buf: &mut Vec<u8>,
    runs: &mut Runs,
    made: &mut Vec<Option<(PathBuf, File)>>,
) -> anyhow::Result<()> {
    let entry_context = |e: &Entry| format!("restoring {}", lossy(&e.path));
    let context = |it: &Item| entry_context(&it.job.entry);
    let whole_context = |w: &Whole| entry_context(&w.entry);
    let mut refs: Vec<ChunkRef> = Vec::with_capacity(g.chunks);
    let mut to: Vec<To<'_>> = Vec::with_capacity(g.chunks);
    for it in &g.items {
        let (job, r) = (&it.job, &it.r);
        if r.is_hole() {
            if job.verify_local || job.device {
                ensure_zero(&job.out.file, it.off, r.len, buf).with_context(|| context(it))?;
            }
            job.covered.fetch_add(u64::from(r.len), Ordering::Relaxed);
            bar.inc(u64::from(r.len));
        } else if job.verify_local && local_matches(&job.out.file, it.off, r, buf, fetcher) {
            job.covered.fetch_add(u64::from(r.len), Ordering::Relaxed);
            sh.kept.fetch_add(u64::from(r.len), Ordering::Relaxed);
            bar.inc(u64::from(r.len));
        } else {
            refs.push(*r);
            to.push(To::Item(it));
        }
    }
    made.resize_with(g.wholes.len(), || None);
    for (i, w) in g.wholes.iter().enumerate() {
        let data = w.refs.iter().filter(|r| !r.is_hole()).count();
        if data == 0 {
            // Empty or all holes: nothing to fetch.
            made[i] = Some(
                create_temp(&w.dir, w.name(), w.plan.create_mode)
                    .with_context(|| whole_context(w))?,
            );
            let (tmp, f) = made[i].as_ref().ok_or_else(|| anyhow!("file closed"))?;
            finish_file(f, &w.entry, tmp, &w.dest, w.plan).with_context(|| whole_context(w))?;
            made[i] = None;
        }
        let (mut off, mut n) = (0u64, 0);
        for r in &w.refs {
            if r.is_hole() {
                bar.inc(u64::from(r.len));
            } else {
                n += 1;
                refs.push(*r);
                to.push(To::Whole {
                    i,
                    off,
                    first: n == 1,
                    last: n == data,
                });
            }
            off += u64::from(r.len);
        }
    }
    if !refs.is_empty() {
        // Items delivered so far: on an error, `to[done]` is the one it is
        // about, unless writing the run of an earlier file failed.
        let mut done = 0;
        // The file whose chunks `runs` holds (a direct one).
        let mut run_of: Option<&Arc<FileJob>> = None;
        let mut run_failed: Option<&Arc<FileJob>> = None;
        let r = fetcher.fetch(&refs, |piece| {
            let d = match piece {
                Piece::Data(d) => d,
                Piece::Hole(_) => bail!("unexpected hole for chunk {}", refs[done].id),
            };
            match to[done] {
                To::Item(it) if it.job.out.is_direct() => {
                    if let Some(j) = run_of
                        && (!Arc::ptr_eq(j, &it.job) || !runs.follows(it.off))
                    {
                        run_of = None;
                        if let Err(e) = runs.flush(&j.out) {
                            run_failed = Some(j);
                            return Err(e.into());
                        }
                    }
                    runs.push(&it.job.out, it.off, d)?;
                    run_of = Some(&it.job);
                    it.job.covered.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                To::Item(it) => {
                    it.job.out.file.write_all_at(d, it.off)?;
                    it.job.covered.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                To::Whole {
                    i,
                    off,
                    first,
                    last,
                } => {
                    let w = &g.wholes[i];
                    if first {
                        made[i] = Some(create_temp(&w.dir, w.name(), w.plan.create_mode)?);
                    }
                    let (tmp, f) = made[i].as_ref().ok_or_else(|| anyhow!("file closed"))?;
                    f.write_all_at(d, off)?;
                    if last {
                        finish_file(f, &w.entry, tmp, &w.dest, w.plan)?;
                        // Renamed: no longer ours to remove.
                        made[i] = None;
                    }
                }
            }
            sh.fetched.fetch_add(d.len() as u64, Ordering::Relaxed);
            sh.chunks.fetch_add(1, Ordering::Relaxed);
            bar.inc(d.len() as u64);
            done += 1;
            Ok(())
        });
        let r = r.and_then(|()| match run_of {
            Some(j) => runs.flush(&j.out).map_err(|e| {
                run_failed = Some(j);
                e.into()
            }),
            None => Ok(()),
        });
        if let Err(e) = r {
            let what = match (run_failed, &to[done.min(to.len() - 1)]) {
                (Some(j), _) => entry_context(&j.entry),
                (None, To::Item(it)) => context(it),
                (None, To::Whole { i, .. }) => whole_context(&g.wholes[*i]),
            };
            return Err(e.context(what));
        }
    }
    Ok(())
}

fn worker(rx: &Mutex<Receiver<Group>>, mut fetcher: Fetcher, sh: &Shared, bar: &Progress) {
    let mut buf = Vec::new();
    let mut runs = Runs::new(RUN_BYTES);
    loop {
        let g = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(g) => g,
            Err(_) => return,
        };
        if !sh.stop.load(Ordering::SeqCst) {
            // A panic fails the restore (and is counted off below) rather
            // than leaving its files pending forever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_group(&g, &mut fetcher, sh, bar, &mut buf, &mut runs)
            }));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => sh.fail(e),
                Err(p) => sh.fail(anyhow!(
                    "a restore worker failed unexpectedly ({}); this is a bug, please report it",
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into())
                )),
            }
        }
        for job in g.jobs() {
            job.pending.fetch_sub(1, Ordering::SeqCst);
        }
        let _guard = sh.done.0.lock().unwrap_or_else(|p| p.into_inner());
        sh.inflight.fetch_sub(1, Ordering::SeqCst);
        sh.done.1.notify_all();
    }
}

/// The worker pool plus the queue of files waiting to be finished.
struct Writer {
    tx: Option<SyncSender<Group>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    open: VecDeque<Arc<FileJob>>,
    /// The group being filled; its files already count it in `pending`.
    group: Group,
}

impl Writer {
    fn new(
        rt: &Handle,
        node: &Node,
        tenant: &str,
        key: &Option<std::sync::Arc<refuge_core::crypto::TenantKey>>,
        threads: usize,
        bar: &Progress,
    ) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = sync_channel::<Group>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            failed: Mutex::new(None),
            stop: AtomicBool::new(false),
            done: (Mutex::new(()), Condvar::new()),
            fetched: AtomicU64::new(0),
            kept: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
        });
        let workers = (0..threads)
            .map(|_| {
                let (rx, sh, bar) = (rx.clone(), shared.clone(), bar.clone());
                let fetcher =
                    Fetcher::new(rt.clone(), node.clone(), tenant.to_string(), key.clone());
                std::thread::spawn(move || worker(&rx, fetcher, &sh, &bar))
            })
            .collect();
        Writer {
            tx: Some(tx),
            workers,
            shared,
            open: VecDeque::new(),
            group: Group::default(),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(self
                .shared
                .take_failure()
                .unwrap_or_else(|| anyhow!("restore stopped")));
        }
        Ok(())
    }

    /// Starts a file written to `tmp` (renamed to `dest` when complete):
    /// its chunk runs follow with [`Writer::chunks`]; the previous file is
    /// sealed (all its groups are dispatched).
    fn begin(
        &mut self,
        entry: Entry,
        tmp: PathBuf,
        dest: PathBuf,
        file: File,
        device: bool,
        verify_local: bool,
    ) -> anyhow::Result<Arc<FileJob>> {
        let out = if device || verify_local {
            Out::buffered(file)
        } else {
            Out::with_direct(file, &tmp)
        };
        let job = FileJob {
            entry,
            tmp,
            dest,
            out,
            device,
            verify_local,
            pending: AtomicUsize::new(0),
            sealed: AtomicBool::new(false),
            covered: AtomicU64::new(0),
        };
        self.seal();
        self.finish_ready(MAX_OPEN_FILES - 1)?;
        let job = Arc::new(job);
        self.open.push_back(job.clone());
        Ok(job)
    }

    /// Adds a run of chunks of `job` starting at `offset` to the group
    /// being filled (dispatching full groups); returns the offset after them.
    fn chunks(
        &mut self,
        job: &Arc<FileJob>,
        refs: &[ChunkRef],
        mut offset: u64,
    ) -> anyhow::Result<u64> {
        for r in refs {
            let last = self.group.items.last();
            if !last.is_some_and(|it| Arc::ptr_eq(&it.job, job)) {
                job.pending.fetch_add(1, Ordering::SeqCst);
            }
            self.group.items.push(Item {
                job: job.clone(),
                r: *r,
                off: offset,
            });
            offset += u64::from(r.len);
            self.group.chunks += 1;
            if !r.is_hole() {
                self.group.bytes += u64::from(r.len);
            }
            if self.group.chunks >= GROUP_CHUNKS || self.group.bytes >= GROUP_BYTES {
                self.flush()?;
            }
        }
        Ok(offset)
    }

    /// Adds a small file restored whole by a worker to the group being
    /// filled (dispatching the group first if the file does not fit).
    fn whole(&mut self, w: Whole) -> anyhow::Result<()> {
        let bytes: u64 = w
            .refs
            .iter()
            .filter(|r| !r.is_hole())
            .map(|r| u64::from(r.len))
            .sum();
        if self.group.chunks + w.refs.len() > GROUP_CHUNKS || self.group.bytes + bytes > GROUP_BYTES
        {
            self.flush()?;
        }
        self.group.chunks += w.refs.len();
        self.group.bytes += bytes;
        self.group.wholes.push(w);
        if self.group.chunks >= GROUP_CHUNKS || self.group.bytes >= GROUP_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Dispatches the group being filled.
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.group.items.is_empty() && self.group.wholes.is_empty() {
            return Ok(());
        }
        let group = std::mem::take(&mut self.group);
        let unclaim = |g: &Group| {
            for job in g.jobs() {
                job.pending.fetch_sub(1, Ordering::SeqCst);
            }
        };
        if let Err(e) = self.check() {
            unclaim(&group);
            return Err(e);
        }
        let Some(tx) = self.tx.as_ref() else {
            unclaim(&group);
            bail!("restore writer closed");
        };
        self.shared.inflight.fetch_add(1, Ordering::SeqCst);
        if let Err(std::sync::mpsc::SendError(group)) = tx.send(group) {
            self.shared.inflight.fetch_sub(1, Ordering::SeqCst);
            unclaim(&group);
            self.check()?;
            bail!("restore workers stopped");
        }
        Ok(())
    }

    /// Finishes files at the front of the queue whose writes are complete,
    /// waiting until at most `keep` files remain open.
    fn finish_ready(&mut self, keep: usize) -> anyhow::Result<()> {
        while let Some(front) = self.open.front() {
            if front.sealed.load(Ordering::SeqCst) && front.pending.load(Ordering::SeqCst) == 0 {
                // A worker records its failure before it releases the group:
                // report the cause, not the shortfall it left.
                self.check()?;
                let job = self
                    .open
                    .pop_front()
                    .ok_or_else(|| anyhow!("queue empty"))?;
                finish_job(&job)
                    .with_context(|| format!("restoring {}", lossy(&job.entry.path)))?;
                continue;
            }
            if self.open.len() <= keep {
                break;
            }
            // About to wait for the front file: its last chunks may still
            // be in the group being filled.
            self.flush()?;
            self.check()?;
            let g = self.shared.done.0.lock().unwrap_or_else(|p| p.into_inner());
            let _ = self
                .shared
                .done
                .1
                .wait_timeout(g, Duration::from_millis(50));
        }
        self.check()
    }

    /// Finishes every file and waits until no group is outstanding (the
    /// small files restored whole are then in place too).
    fn drain(&mut self) -> anyhow::Result<()> {
        self.seal();
        self.finish_ready(0)?;
        self.flush()?;
        loop {
            self.check()?;
            let g = self.shared.done.0.lock().unwrap_or_else(|p| p.into_inner());
            if self.shared.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            let _ = self
                .shared
                .done
                .1
                .wait_timeout(g, Duration::from_millis(50));
        }
        self.check()
    }

    /// Marks the most recent file as complete: no more groups will come.
    fn seal(&self) {
        if let Some(last) = self.open.back() {
            last.sealed.store(true, Ordering::SeqCst);
        }
    }

    /// Waits for every file and stops the workers.
    fn close(mut self) -> anyhow::Result<(u64, u64, u64)> {
        let r = self.drain();
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let sh = &self.shared;
        let totals = (
            sh.fetched.load(Ordering::Relaxed),
            sh.kept.load(Ordering::Relaxed),
            sh.chunks.load(Ordering::Relaxed),
        );
        r.map(|_| totals)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Failure path: stop the workers and remove unfinished temp files.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        for job in self.open.drain(..) {
            if !job.device && !job.verify_local {
                let _ = fs::remove_file(&job.tmp);
            }
        }
    }
}

fn finish_job(job: &FileJob) -> anyhow::Result<()> {
    let covered = job.covered.load(Ordering::SeqCst);
    if covered != job.entry.size {
        bail!("restored {covered} bytes of {}", job.entry.size);
    }
    if job.device {
        job.out.file.sync_all()?;
        return Ok(());
    }
    finish_file(&job.out.file, &job.entry, &job.tmp, &job.dest, Plan::FULL)
}

/// Why a restore of an encrypted snapshot without its key stops.
const ENCRYPTED: &str =
    "the snapshot is encrypted: restoring it needs its tenant's key (this client has none)";

fn restore_blocking(
    rt: Handle,
    node: Node,
    snap: SnapshotRecord,
    opts: RestoreOptions,
) -> anyhow::Result<RestoreReport> {
    let started = Instant::now();
    let mut rep = RestoreReport {
        snapshot: snap.id.to_hex(),
        target: opts.target.display().to_string(),
        ..Default::default()
    };
    let bar = Progress::new(opts.progress, "restore", Some(snap.logical_bytes));
    let tenant = snap.tenant.to_string();
    let stream = RemoteStream::new(
        Fetcher::new(rt.clone(), node.clone(), tenant.clone(), opts.key.clone()),
        snap.manifest.clone(),
    );
    let mut reader = match &opts.key {
        Some(k) => ManifestReader::with_key(stream, k.clone()),
        None => ManifestReader::new(stream),
    }
    .context("reading the snapshot's manifest")?;
    let mut writer = Writer::new(&rt, &node, &tenant, &opts.key, opts.threads, &bar);
    let result = match snap.kind {
        SourceKind::Tree | SourceKind::Postgres | SourceKind::PostgresWal | SourceKind::Mariadb => {
            restore_tree(&mut reader, &mut writer, &opts, &mut rep)
        }
        SourceKind::Image => {
            if opts.include.is_some() {
                Err(anyhow!(
                    "--include applies to tree snapshots; this one is an image"
                ))
            } else {
                restore_image(&mut reader, &mut writer, &opts, &mut rep)
            }
        }
    };
    let result = result.and_then(|()| {
        let (fetched, kept, chunks) = writer.close()?;
        rep.bytes_fetched = fetched;
        rep.bytes_kept = kept;
        rep.chunks = chunks;
        Ok(())
    });
    bar.finish();
    result?;
    rep.bytes = bar.position();
    rep.duration_secs = started.elapsed().as_secs_f64();
    Ok(rep)
}

/// A file of a tree whose chunk runs are being read from the manifest.
enum Current {
    None,
    /// Created on this thread; its chunks go to the workers in runs.
    Shared(Arc<FileJob>, u64),
    /// Small so far: collected, then handed to one worker whole.
    Small(Small),
}

struct Small {
    entry: Entry,
    dir: PathBuf,
    dest: PathBuf,
    setgid: bool,
    refs: Vec<ChunkRef>,
}

impl Small {
    fn into_whole(self, creator: &Creator) -> anyhow::Result<Whole> {
        let covered: u64 = self.refs.iter().map(|r| u64::from(r.len)).sum();
        if covered != self.entry.size {
            bail!(
                "restoring {}: restored {covered} bytes of {}",
                lossy(&self.entry.path),
                self.entry.size
            );
        }
        let tail_hole = self.refs.last().is_some_and(|r| r.is_hole());
        let plan = creator.plan(&self.entry, self.setgid, tail_hole);
        Ok(Whole {
            entry: self.entry,
            dir: self.dir,
            dest: self.dest,
            refs: self.refs,
            plan,
        })
    }
}

impl Current {
    /// The file is complete: a small one goes to the workers.
    fn end(&mut self, w: &mut Writer, creator: &Creator) -> anyhow::Result<()> {
        w.seal();
        if let Current::Small(s) = std::mem::replace(self, Current::None) {
            w.whole(s.into_whole(creator)?)?;
        }
        Ok(())
    }
}

/// Files up to this size and chunk count are restored whole by one worker.
const SMALL_BYTES: u64 = 4 << 20;
const SMALL_CHUNKS: usize = 16;

fn restore_tree<R: Read>(
    reader: &mut ManifestReader<R>,
    w: &mut Writer,
    opts: &RestoreOptions,
    rep: &mut RestoreReport,
) -> anyhow::Result<()> {
    let include = opts.include.as_ref().map(|s| {
        let t = s.trim_start_matches("./").trim_end_matches('/');
        if t.is_empty() {
            b".".to_vec()
        } else {
            t.as_bytes().to_vec()
        }
    });
    let include = include.as_deref().filter(|i| *i != b".");
    fs::create_dir_all(&opts.target)
        .with_context(|| format!("creating target {}", opts.target.display()))?;
    let mut tree = Dirs::new(&opts.target)?;
    let creator = Creator::current();
    let mut current = Current::None;
    let mut skipping = false;
    let mut matched = false;
    // Directory metadata is applied last: writing children changes mtimes.
    let mut dirs: Vec<(PathBuf, Entry)> = Vec::new();
    while let Some(rec) = reader
        .next_record()
        .context("reading the snapshot's manifest")?
    {
        match rec {
            ManifestRecord::Sealed { .. } => bail!(ENCRYPTED),
            ManifestRecord::Entry(e) => {
                // The previous file has all its chunk runs.
                current.end(w, &creator)?;
                skipping = !included(&e.path, include);
                if skipping {
                    continue;
                }
                matched = true;
                let path = lossy(&e.path);
                match e.kind {
                    EntryKind::Dir => {
                        let (d, _) = tree
                            .ensure(&e.path)
                            .with_context(|| format!("restoring {path}"))?;
                        rep.dirs += 1;
                        dirs.push((d, e));
                    }
                    EntryKind::File => {
                        let (dir, setgid, name) = tree
                            .parent_and_name(&e.path)
                            .with_context(|| format!("restoring {path}"))?;
                        let dest = dir.join(std::ffi::OsStr::from_bytes(name));
                        rep.files += 1;
                        current = if !opts.resume && e.size <= SMALL_BYTES {
                            Current::Small(Small {
                                entry: e,
                                dir,
                                dest,
                                setgid,
                                refs: Vec::new(),
                            })
                        } else {
                            let (tmp, file, verify_local) =
                                open_work_file(&dir, name, &dest, opts.resume)
                                    .with_context(|| format!("restoring {path}"))?;
                            let job = w.begin(e, tmp, dest, file, false, verify_local)?;
                            Current::Shared(job, 0)
                        };
                    }
                    EntryKind::Symlink => {
                        restore_symlink(&mut tree, &e)
                            .with_context(|| format!("restoring {path}"))?;
                        rep.symlinks += 1;
                    }
                }
            }
            ManifestRecord::Chunks(refs) => {
                if skipping {
                    continue;
                }
                match &mut current {
                    Current::None => bail!("manifest has chunks outside a file"),
                    Current::Shared(job, off) => *off = w.chunks(job, &refs, *off)?,
                    Current::Small(s) => {
                        s.refs.extend_from_slice(&refs);
                        if s.refs.len() > SMALL_CHUNKS {
                            // More chunks than a small file: written by
                            // several workers after all.
                            let Current::Small(s) = std::mem::replace(&mut current, Current::None)
                            else {
                                unreachable!()
                            };
                            let name = s.dest.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
                            let (tmp, file, _) = open_work_file(&s.dir, name, &s.dest, false)
                                .with_context(|| format!("restoring {}", lossy(&s.entry.path)))?;
                            let job = w.begin(s.entry, tmp, s.dest, file, false, false)?;
                            let off = w.chunks(&job, &s.refs, 0)?;
                            current = Current::Shared(job, off);
                        }
                    }
                }
            }
        }
        w.finish_ready(MAX_OPEN_FILES)?;
    }
    current.end(w, &creator)?;
    w.drain()?;
    if let Some(inc) = include
        && !matched
    {
        bail!("no path {:?} in this snapshot", lossy(inc));
    }
    for (path, e) in dirs.iter().rev() {
        finish_dir(path, e)?;
    }
    Ok(())
}

fn restore_image<R: Read>(
    reader: &mut ManifestReader<R>,
    w: &mut Writer,
    opts: &RestoreOptions,
    rep: &mut RestoreReport,
) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let target = opts.target.as_path();
    let device = fs::metadata(target)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let mut current: Option<(Arc<FileJob>, u64)> = None;
    while let Some(rec) = reader
        .next_record()
        .context("reading the snapshot's manifest")?
    {
        match rec {
            ManifestRecord::Sealed { .. } => bail!(ENCRYPTED),
            ManifestRecord::Entry(e) => {
                if current.is_some() {
                    bail!("image manifest has more than one entry");
                }
                let (tmp, file, verify_local) = if device {
                    let f = OpenOptions::new().read(true).write(true).open(target)?;
                    (target.to_path_buf(), f, opts.resume)
                } else {
                    let dir = match target.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                        _ => PathBuf::from("."),
                    };
                    fs::create_dir_all(&dir)?;
                    let name = target
                        .file_name()
                        .ok_or_else(|| anyhow!("target {} has no file name", target.display()))?;
                    open_work_file(&dir, name.as_bytes(), target, opts.resume)?
                };
                let job = w.begin(e, tmp, target.to_path_buf(), file, device, verify_local)?;
                current = Some((job, 0));
            }
            ManifestRecord::Chunks(refs) => {
                let (job, off) = current
                    .as_mut()
                    .ok_or_else(|| anyhow!("manifest has chunks before the image entry"))?;
                *off = w.chunks(job, &refs, *off)?;
            }
        }
    }
    if current.is_none() {
        bail!("image snapshot has no entry");
    }
    w.seal();
    w.finish_ready(0)
        .with_context(|| format!("restoring the image to {}", target.display()))?;
    rep.files = 1;
    Ok(())
}
