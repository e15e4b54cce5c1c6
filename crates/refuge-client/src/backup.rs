//! Backup of one source: walk (or read the image), chunk, hash, ask the
//! node which chunks it lacks, compress and upload only those, write the
//! manifest, upload it as chunks, and commit.
//!
//! The walk and chunking run on a blocking thread; calls to the node are
//! made from it through the runtime handle. Memory is bounded by the upload
//! batch (32 MiB of chunk data), one file's chunk list, and the manifest,
//! which is spooled to a temporary file rather than held in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use std::cmp::Ordering;

use refuge_core::crypto::TenantKey;
use refuge_core::{
    ChunkId, ChunkRef, Chunker, ChunkerParams, Entry, EntryKind, ManifestReader, ManifestRecord,
    ManifestWriter, SourceKind, walk_order,
};
use refuge_proto::pb;
use tokio::runtime::Handle;
use tracing::warn;

use crate::backup_report::BackupReport;
use crate::config::{AgentConfig, SourceConfig};
use crate::connect::{Node, rpc_error};
use crate::file_chunks::{ParentRefs, Sink, chunk_against_parent, chunk_file};
use crate::manifest_io::{base_entry, manifest_reader, manifest_writer};
use crate::progress::{Progress, ProgressMode};
use crate::remote::{Fetcher, RemoteStream};
use crate::upload::{RateLimiter, Uploader};

type Manifest = ManifestWriter<BufWriter<File>>;

/// Flushes the manifest spool about once a second, and after the walker
/// waited for the upload workers (on a slow link it may wait for longer
/// than a run lives), so that a run killed mid-way leaves a usable
/// checkpoint.
fn checkpoint(w: &mut Manifest, last: &mut Instant, up: &mut Uploader) {
    if up.take_waited() || last.elapsed() >= std::time::Duration::from_secs(1) {
        let _ = w.get_mut().flush();
        *last = Instant::now();
    }
}

/// The parent snapshot's manifest, read in step with the walk: both are in
/// [`walk_order`], so finding a path's previous entry is a merge, not a
/// lookup table (memory does not grow with the number of files).
struct Parent {
    reader: ManifestReader<Box<dyn Read + Send>>,
    peeked: Option<Entry>,
    broken: bool,
    /// An interrupted run's checkpoint, not a committed snapshot: it is
    /// cut short by nature, so where it ends is just the end of the hints.
    checkpoint: bool,
}

impl Parent {
    fn next_entry(&mut self) -> anyhow::Result<Option<Entry>> {
        loop {
            match self.reader.next_record()? {
                Some(ManifestRecord::Entry(e)) => return Ok(Some(e)),
                Some(ManifestRecord::Chunks(_)) => continue,
                Some(ManifestRecord::Sealed { .. }) => {
                    bail!("the previous snapshot is encrypted and this agent has no tenant key")
                }
                None => return Ok(None),
            }
        }
    }

    /// The parent's entry at `cur`'s path, if it was a file: its chunk
    /// list, and whether it is unchanged (same size, times and inode).
    fn find(&mut self, cur: &Entry) -> anyhow::Result<Option<(Vec<ChunkRef>, bool)>> {
        loop {
            let p = match self.peeked.take() {
                Some(p) => p,
                None => match self.next_entry()? {
                    Some(p) => p,
                    None => return Ok(None),
                },
            };
            match walk_order(&p.path, &cur.path) {
                Ordering::Less => continue,
                Ordering::Greater => {
                    self.peeked = Some(p);
                    return Ok(None);
                }
                Ordering::Equal => {
                    let mut refs = Vec::new();
                    loop {
                        match self.reader.next_record()? {
                            Some(ManifestRecord::Chunks(r)) => refs.extend(r),
                            Some(ManifestRecord::Entry(e)) => {
                                self.peeked = Some(e);
                                break;
                            }
                            Some(ManifestRecord::Sealed { .. }) => {
                                bail!(
                                    "the previous snapshot is encrypted and this agent has no tenant key"
                                )
                            }
                            None => break,
                        }
                    }
                    if p.kind != EntryKind::File || cur.kind != EntryKind::File {
                        return Ok(None);
                    }
                    let same = p.size == cur.size
                        && (p.mtime_secs, p.mtime_nanos) == (cur.mtime_secs, cur.mtime_nanos)
                        && (p.ctime_secs, p.ctime_nanos) == (cur.ctime_secs, cur.ctime_nanos)
                        && p.inode == cur.inode;
                    return Ok(Some((refs, same)));
                }
            }
        }
    }

    /// The parent's chunk list for `cur` and whether the file is
    /// unchanged since.
    fn lookup(&mut self, cur: &Entry) -> Option<(Vec<ChunkRef>, bool)> {
        if self.broken {
            return None;
        }
        match self.find(cur) {
            Ok(r) => r,
            Err(e) if self.checkpoint => {
                tracing::debug!("the checkpoint ends here ({e:#}); later files are read");
                self.broken = true;
                None
            }
            Err(e) => {
                warn!(
                    "cannot read the parent snapshot's manifest ({e:#}); reading every remaining file"
                );
                self.broken = true;
                None
            }
        }
    }
}

/// Where an unchanged file's chunk list can come from: the previous
/// snapshot (committed, so its chunks are on the node) and the checkpoint
/// of an interrupted run (a hint: all its chunks are confirmed with the
/// node up front, in large batches, and a file whose list uses one the
/// node lacks is read again).
struct Parents {
    snapshot: Option<Parent>,
    checkpoint: Option<Parent>,
    /// Chunks of the checkpoint the node does not have.
    checkpoint_missing: std::collections::HashSet<ChunkId>,
    /// Chunks the node quarantined: a file whose chunk list uses one is
    /// read again, and its upload heals the chunk.
    quarantined: std::collections::HashSet<ChunkId>,
}

/// What the parents say about one file.
enum Prior {
    /// Unchanged since the parent snapshot (`false`) or uploaded by an
    /// interrupted run (`true`): its chunk list is reused as it is.
    Reuse(Vec<ChunkRef>, bool),
    /// Changed since the parent snapshot, which has this chunk list for
    /// it: read against it (the block delta).
    Delta(Vec<ChunkRef>),
    /// New: read in full.
    New,
}

impl Parents {
    /// What to do with `e`.
    fn prior(&mut self, e: &Entry) -> Prior {
        let from_snapshot = self.snapshot.as_mut().and_then(|p| p.lookup(e));
        let from_checkpoint = self.checkpoint.as_mut().and_then(|p| p.lookup(e));
        let damaged = |refs: &Vec<ChunkRef>| refs.iter().any(|r| self.quarantined.contains(&r.id));
        let mut delta = None;
        match from_snapshot {
            Some((refs, true)) if !damaged(&refs) => return Prior::Reuse(refs, false),
            Some((refs, _)) => delta = Some(refs),
            None => {}
        }
        if let Some((refs, true)) = from_checkpoint
            && !damaged(&refs)
            && !refs.iter().any(|r| self.checkpoint_missing.contains(&r.id))
        {
            return Prior::Reuse(refs, true);
        }
        delta.map_or(Prior::New, Prior::Delta)
    }
}

/// The chunks of the checkpoint at `path` that the node lacks, asked in
/// batches of `MAX_FIND_IDS` (one round trip per 8192 chunks, not one per
/// file: resuming over a slow link stays fast). A checkpoint cut short is
/// read up to where it ends.
fn checkpoint_missing(
    rt: &Handle,
    node: &Node,
    path: &Path,
) -> anyhow::Result<std::collections::HashSet<ChunkId>> {
    let mut missing = std::collections::HashSet::new();
    let Ok(f) = File::open(path) else {
        return Ok(missing);
    };
    let Ok(mut reader) = ManifestReader::new(BufReader::new(f)) else {
        return Ok(missing);
    };
    let mut batch: Vec<ChunkId> = Vec::new();
    let mut ask = |batch: &mut Vec<ChunkId>| -> anyhow::Result<()> {
        for i in rt.block_on(node.find_missing(batch))? {
            missing.insert(batch[i]);
        }
        batch.clear();
        Ok(())
    };
    while let Ok(Some(rec)) = reader.next_record() {
        if let ManifestRecord::Chunks(refs) = rec {
            batch.extend(refs.iter().filter(|r| !r.is_hole()).map(|r| r.id));
            if batch.len() >= refuge_proto::MAX_FIND_IDS {
                ask(&mut batch)?;
            }
        }
    }
    if !batch.is_empty() {
        ask(&mut batch)?;
    }
    Ok(missing)
}

/// What a tree walk leaves out.
#[derive(Clone, Default)]
pub(crate) struct TreeRules {
    /// Paths (relative, bytes) left out, with everything under them.
    pub(crate) skip: Option<fn(&[u8]) -> bool>,
    /// Only this entry of the root (a file name) is taken: a WAL file
    /// pushed from `pg_wal`.
    pub(crate) only: Option<Vec<u8>>,
    /// Files that vanish while the walk runs are expected (a database
    /// drops and creates relation files): left out without a warning.
    pub(crate) quiet_vanished: bool,
}

fn vanished(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

#[allow(clippy::too_many_arguments)]
fn walk_tree(
    root: &Path,
    rules: TreeRules,
    params: ChunkerParams,
    parents: &mut Parents,
    w: &mut Manifest,
    up: &mut Uploader,
    rep: &mut BackupReport,
    bar: &Progress,
) -> anyhow::Result<()> {
    let last_flush = &mut Instant::now();
    let md = std::fs::metadata(root).with_context(|| format!("source path {}", root.display()))?;
    if !md.is_dir() {
        bail!(
            "source path {} is not a directory (use kind = \"image\" for a file or device)",
            root.display()
        );
    }
    let skipped = |e: &walkdir::DirEntry| match e.path().strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => {
            let rel = rel.as_os_str().as_bytes();
            rules
                .only
                .as_ref()
                .is_some_and(|only| rel != only.as_slice())
                || rules.skip.is_some_and(|skip| skip(rel))
        }
        _ => false,
    };
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !skipped(e))
    {
        let ent = match item {
            Ok(e) => e,
            Err(e) if rules.quiet_vanished && e.io_error().is_some_and(vanished) => continue,
            Err(e) => {
                let p = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                rep.warn(format!(
                    "cannot read {p}: {}; skipped",
                    e.io_error().map(|e| e.to_string()).unwrap_or(e.to_string())
                ));
                continue;
            }
        };
        let rel = ent.path().strip_prefix(root).unwrap_or(ent.path());
        let rel = if rel.as_os_str().is_empty() {
            b".".to_vec()
        } else {
            rel.as_os_str().as_bytes().to_vec()
        };
        let md = match ent.metadata() {
            Ok(m) => m,
            Err(e) if rules.quiet_vanished && e.io_error().is_some_and(vanished) => continue,
            Err(e) => {
                rep.warn(format!(
                    "cannot stat {}: {e}; skipped",
                    ent.path().display()
                ));
                continue;
            }
        };
        let ft = md.file_type();
        if ft.is_dir() {
            w.add_entry(&base_entry(rel, EntryKind::Dir, &md))?;
            rep.dirs += 1;
        } else if ft.is_symlink() {
            match std::fs::read_link(ent.path()) {
                Ok(t) => {
                    let mut e = base_entry(rel, EntryKind::Symlink, &md);
                    e.target = t.as_os_str().as_bytes().to_vec();
                    e.size = e.target.len() as u64;
                    w.add_entry(&e)?;
                }
                Err(e) => rep.warn(format!(
                    "cannot read symlink {}: {e}; skipped",
                    ent.path().display()
                )),
            }
        } else if ft.is_file() {
            let mut e = base_entry(rel, EntryKind::File, &md);
            e.size = md.len();
            let prior = parents.prior(&e);
            if let Prior::Reuse(refs, resumed) = prior {
                // Unchanged since the parent snapshot, or already uploaded
                // by an interrupted run: reuse its chunk list.
                w.add_entry(&e)?;
                w.add_chunks(&refs)?;
                rep.files += 1;
                if resumed {
                    rep.files_resumed += 1;
                } else {
                    rep.files_unchanged += 1;
                }
                rep.bytes_reused += e.size;
                bar.inc(e.size);
                checkpoint(w, last_flush, up);
                continue;
            }
            let mut sink = Sink {
                up: &mut *up,
                rep: &mut *rep,
                bar,
            };
            let read = match prior {
                Prior::Delta(old) => chunk_against_parent(
                    ent.path(),
                    params,
                    &mut old.into_iter(),
                    &parents.quarantined,
                    &mut sink,
                ),
                _ => chunk_file(ent.path(), params, &mut sink),
            };
            match read {
                Ok((refs, size)) => {
                    e.size = size;
                    w.add_entry(&e)?;
                    refs.write_to(w)?;
                    checkpoint(w, last_flush, up);
                    rep.files += 1;
                    bar.set_files(rep.files);
                }
                Err(e)
                    if rules.quiet_vanished
                        && e.downcast_ref::<std::io::Error>().is_some_and(vanished) => {}
                Err(e) if e.downcast_ref::<std::io::Error>().is_some() => rep.warn(format!(
                    "cannot read {}: {e}; skipped",
                    ent.path().display()
                )),
                Err(e) => return Err(e),
            }
        } else {
            rep.warn(format!(
                "{} is a special file (socket, fifo or device node); skipped",
                ent.path().display()
            ));
        }
    }
    Ok(())
}

fn read_image(
    path: &Path,
    params: ChunkerParams,
    parent: Option<(&mut ImageParent, &std::collections::HashSet<ChunkId>)>,
    w: &mut Manifest,
    sink: &mut Sink<'_>,
) -> anyhow::Result<()> {
    let md = std::fs::metadata(path).with_context(|| format!("source path {}", path.display()))?;
    if md.is_dir() {
        bail!(
            "source path {} is a directory (use kind = \"tree\")",
            path.display()
        );
    }
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .filter(|n| refuge_core::validate_entry_path(n).is_ok())
        .unwrap_or_else(|| b"image".to_vec());
    let (refs, size) = match parent {
        Some((old, skip)) => chunk_against_parent(path, params, old, skip, sink),
        None => chunk_file(path, params, sink),
    }
    .with_context(|| format!("reading image {}", path.display()))?;
    let mut e = base_entry(name, EntryKind::File, &md);
    e.size = size;
    w.add_entry(&e)?;
    refs.write_to(w)?;
    sink.rep.files = 1;
    Ok(())
}

/// The parent snapshot of an image source: its one file's chunk list,
/// read from the manifest as the image is compared (not held in memory:
/// a large image has a long list).
struct ImageParent {
    reader: ParentReader,
    pending: std::vec::IntoIter<ChunkRef>,
}

impl ImageParent {
    /// Positions `reader` after the image's entry; `None` if the manifest
    /// does not start with a file.
    fn new(mut reader: ParentReader) -> anyhow::Result<Option<Self>> {
        match reader.next_record()? {
            Some(ManifestRecord::Entry(e)) if e.kind == EntryKind::File => Ok(Some(ImageParent {
                reader,
                pending: Vec::new().into_iter(),
            })),
            Some(ManifestRecord::Sealed { .. }) => {
                bail!("the previous snapshot is encrypted and this agent has no tenant key")
            }
            _ => Ok(None),
        }
    }
}

impl ParentRefs for ImageParent {
    fn next_ref(&mut self) -> anyhow::Result<Option<ChunkRef>> {
        loop {
            if let Some(r) = self.pending.next() {
                return Ok(Some(r));
            }
            match self.reader.next_record()? {
                Some(ManifestRecord::Chunks(refs)) => self.pending = refs.into_iter(),
                Some(ManifestRecord::Sealed { .. }) => {
                    bail!("the previous snapshot is encrypted and this agent has no tenant key")
                }
                Some(ManifestRecord::Entry(_)) | None => return Ok(None),
            }
        }
    }
}

/// How to run a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// How to show progress.
    pub progress: ProgressMode,
    /// Read every file, even those unchanged since the parent snapshot.
    pub rehash: bool,
    /// Upload workers (compression and network); at least 1.
    pub threads: usize,
    /// Upload limit in bytes per second; 0 for none.
    pub max_upload_rate: u64,
    /// Memory budget of the agent in bytes; the upload pipeline gets half.
    pub memory_budget: u64,
    /// Where the checkpoint of a running backup is kept (`None`: no
    /// checkpoint, an interrupted backup starts over).
    pub state_dir: Option<std::path::PathBuf>,
    /// The tenant key: chunks and manifest entries are sealed, ids keyed.
    pub key: Option<Arc<TenantKey>>,
    /// The commit's token ([`new_commit_token`]): one per backup run, the
    /// same for each of its tries, so that a commit resent after a lost
    /// answer is answered with the snapshot it made (`None`: a fresh one).
    pub commit_token: Option<[u8; 16]>,
    /// Take only this entry (a file name) of the source's directory: a WAL
    /// file pushed from `pg_wal` (`None`: the whole tree).
    pub only: Option<Vec<u8>>,
}

/// A fresh random commit token.
pub fn new_commit_token() -> [u8; 16] {
    let mut t = [0u8; 16];
    // getrandom fails only without any entropy source; a token of the
    // clock then still differs between runs.
    if getrandom::getrandom(&mut t).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        t = now.to_le_bytes();
    }
    t
}

/// The chunks of this tenant that the node quarantined, or `None` if
/// there are too many to list.
fn quarantined_chunks(
    rt: &Handle,
    node: &Node,
) -> anyhow::Result<Option<std::collections::HashSet<ChunkId>>> {
    let r = rt
        .block_on(
            node.ingest
                .clone()
                .list_quarantined(pb::ListQuarantinedRequest {}),
        )
        .map_err(|s| rpc_error("asking for quarantined chunks", &s))?
        .into_inner();
    if r.truncated {
        tracing::warn!("the node has quarantined many chunks of this tenant: reading every file");
        return Ok(None);
    }
    if !r.ids.is_empty() {
        tracing::warn!(
            chunks = r.ids.len(),
            "the node quarantined corrupt chunks; files that use them are read and uploaded again"
        );
    }
    r.ids
        .iter()
        .map(|b| refuge_proto::chunk_id(b).map_err(|e| anyhow!("node's answer: {e}")))
        .collect::<anyhow::Result<_>>()
        .map(Some)
}

/// A parent snapshot's manifest, fetched chunk by chunk from the node.
type ParentReader = ManifestReader<Box<dyn Read + Send>>;

/// The newest snapshot of this host and source if it is of `kind`, with
/// a reader of its manifest; `None` for a first backup.
fn open_parent(
    rt: &Handle,
    node: &Node,
    source: &str,
    kind: SourceKind,
    key: &Option<Arc<TenantKey>>,
) -> anyhow::Result<Option<(String, ParentReader)>> {
    let req = pb::ResolveSnapshotRequest {
        selector: "latest".into(),
        at_unix_micros: 0,
        host: node.host.clone(),
        source: source.into(),
        tenant: node.tenant.clone(),
        purpose: "parent".into(),
    };
    let snap = match rt.block_on(node.restore.clone().resolve_snapshot(req)) {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(rpc_error("looking up the parent snapshot", &s)),
    };
    let snap = refuge_proto::snapshot(snap).map_err(|e| anyhow!("parent snapshot: {e}"))?;
    if snap.kind != kind {
        return Ok(None);
    }
    let stream = RemoteStream::new(
        Fetcher::new(rt.clone(), node.clone(), node.tenant.clone(), key.clone()),
        snap.manifest.clone(),
    );
    match manifest_reader(Box::new(stream) as Box<dyn Read + Send>, key) {
        Ok(r) => Ok(Some((snap.id.to_hex(), r))),
        Err(e) => {
            // A damaged parent costs a full read, never the backup.
            tracing::warn!(
                "the parent snapshot {}'s manifest cannot be read ({e}); reading every file",
                snap.id.short()
            );
            Ok(None)
        }
    }
}

/// The manifest spool: `STATE_DIR/SOURCE.checkpoint` when the state
/// directory is usable (an earlier run's checkpoint is moved to
/// `.checkpoint.prev` first), else an anonymous temporary file.
fn open_spool(
    state_dir: Option<&Path>,
    source: &str,
) -> anyhow::Result<(File, Option<(PathBuf, PathBuf)>)> {
    if let Some(dir) = state_dir {
        match std::fs::create_dir_all(dir) {
            Ok(()) => {
                let cur = dir.join(format!("{source}.checkpoint"));
                let prev = dir.join(format!("{source}.checkpoint.prev"));
                if cur.exists() {
                    std::fs::rename(&cur, &prev)
                        .with_context(|| format!("moving aside {}", cur.display()))?;
                }
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&cur)
                    .with_context(|| format!("creating the checkpoint {}", cur.display()))?;
                return Ok((f, Some((cur, prev))));
            }
            Err(e) => warn!(
                "state_dir {}: {e}; an interrupted backup will start over",
                dir.display()
            ),
        }
    }
    Ok((
        tempfile::tempfile().context("creating a temporary file for the manifest")?,
        None,
    ))
}

/// The checkpoint an interrupted run left, if it is readable.
fn open_checkpoint(path: &Path, key: &Option<Arc<TenantKey>>) -> Option<Parent> {
    let f = File::open(path).ok()?;
    match manifest_reader(Box::new(BufReader::new(f)) as Box<dyn Read + Send>, key) {
        Ok(reader) => {
            tracing::info!(
                "resuming from the checkpoint of an interrupted backup ({})",
                path.display()
            );
            Some(Parent {
                reader,
                peeked: None,
                broken: false,
                checkpoint: true,
            })
        }
        Err(e) => {
            warn!("ignoring the checkpoint {}: {e}", path.display());
            None
        }
    }
}

/// Backs up one source and commits a snapshot.
pub async fn backup_source(
    node: &Node,
    cfg: &AgentConfig,
    source: &SourceConfig,
    opts: BackupOptions,
) -> anyhow::Result<BackupReport> {
    let node = node.clone();
    let chunking = source.chunking(&cfg.chunking);
    let params = chunking.params();
    let level = chunking.zstd_level;
    let source = source.clone();
    let rt = Handle::current();
    tokio::task::spawn_blocking(move || backup_blocking(rt, node, params, level, source, opts))
        .await
        .map_err(|e| anyhow!("backup worker failed: {e}"))?
}

fn backup_blocking(
    rt: Handle,
    node: Node,
    params: ChunkerParams,
    level: i32,
    source: SourceConfig,
    opts: BackupOptions,
) -> anyhow::Result<BackupReport> {
    let started = Instant::now();
    let commit_token = opts.commit_token.unwrap_or_else(new_commit_token);
    let mut rep = BackupReport {
        source: source.name.clone(),
        node: node.address.clone(),
        ..Default::default()
    };
    if let Some(k) = &opts.key
        && k.tenant().as_str() != node.tenant
    {
        bail!(
            "the tenant key ([encryption] key_file) is for tenant {}, but this agent's certificate is for tenant {}",
            k.tenant(),
            node.tenant
        );
    }
    let quarantined = match opts.rehash {
        false => quarantined_chunks(&rt, &node)?,
        true => Some(Default::default()),
    };
    // Too many quarantined chunks to list: read every file.
    let rehash = opts.rehash || quarantined.is_none();
    let parent = match rehash {
        false => open_parent(&rt, &node, &source.name, source.kind, &opts.key)?,
        true => None,
    };
    rep.parent = parent.as_ref().map(|(id, _)| id.clone());
    let (tree_parent, mut image_parent) = match (source.kind, parent) {
        (k, Some((_, reader))) if k.is_tree() => (
            Some(Parent {
                reader,
                peeked: None,
                broken: false,
                checkpoint: false,
            }),
            None,
        ),
        (_, Some((id, reader))) => match ImageParent::new(reader) {
            Ok(p) => (None, p),
            Err(e) => {
                warn!(
                    "the parent snapshot {id}'s manifest cannot be read ({e:#}); reading the whole image"
                );
                (None, None)
            }
        },
        (_, None) => (None, None),
    };
    if source.kind == SourceKind::Image && image_parent.is_none() {
        rep.parent = None;
    }
    let bar = Progress::new(opts.progress, "backup", None);
    let (spool, paths) = open_spool(opts.state_dir.as_deref(), &source.name)?;
    let checkpoint = match (&paths, source.kind, rehash) {
        (Some((_, prev)), k, false) if k.is_tree() => open_checkpoint(prev, &opts.key),
        _ => None,
    };
    let checkpoint_missing = match (&checkpoint, &paths) {
        (Some(_), Some((_, prev))) => checkpoint_missing(&rt, &node, prev)?,
        _ => Default::default(),
    };
    let mut parents = Parents {
        snapshot: tree_parent,
        checkpoint,
        checkpoint_missing,
        quarantined: quarantined.unwrap_or_default(),
    };
    let out = BufWriter::with_capacity(64 << 10, spool);
    let mut w = manifest_writer(out, source.kind, &opts.key)?;
    let limiter = RateLimiter::new(opts.max_upload_rate);
    let (threads, batch) = crate::upload::plan(
        opts.memory_budget,
        opts.threads,
        params.max_size as usize,
        opts.max_upload_rate,
    );
    let mut up = Uploader::new(
        rt.clone(),
        node.clone(),
        level,
        threads,
        batch,
        limiter,
        opts.key.clone(),
    );
    let mut pg = None;
    match source.kind {
        SourceKind::Tree | SourceKind::Postgres | SourceKind::PostgresWal | SourceKind::Mariadb => {
            // A postgres source: the walk runs between the server's backup
            // start and stop, without what the server rebuilds.
            let session = match (source.kind, &source.postgres) {
                (SourceKind::Postgres, Some(cfg)) => {
                    let label = format!("refuge {}/{}", node.host, source.name);
                    Some(crate::postgres::Session::start(
                        &rt,
                        cfg,
                        &source.path,
                        &label,
                    )?)
                }
                (SourceKind::Postgres, None) => bail!(
                    "source {:?} is of kind postgres but has no [source.postgres]",
                    source.name
                ),
                _ => None,
            };
            // A mariadb source: the walk reads mariadb-backup's prepared
            // copy (removed when it is dropped).
            let staged = match (source.kind, &source.mariadb) {
                (SourceKind::Mariadb, Some(cfg)) => Some(crate::mariadb::stage(
                    cfg,
                    &source,
                    opts.state_dir.as_deref(),
                )?),
                (SourceKind::Mariadb, None) => bail!(
                    "source {:?} is of kind mariadb but has no [source.mariadb]",
                    source.name
                ),
                _ => None,
            };
            let rules = TreeRules {
                skip: session
                    .as_ref()
                    .map(|_| crate::postgres::skip as fn(&[u8]) -> bool),
                only: opts.only.clone(),
                quiet_vanished: session.is_some(),
            };
            let root = staged
                .as_ref()
                .map_or(source.path.as_path(), |s| s.dir.as_path());
            walk_tree(
                root,
                rules,
                params,
                &mut parents,
                &mut w,
                &mut up,
                &mut rep,
                &bar,
            )?;
            if let Some(s) = &staged {
                rep.read_from = Some(s.dir.display().to_string());
            }
            pg = session.map(crate::postgres::Session::stop).transpose()?;
        }
        SourceKind::Image => read_image(
            &source.path,
            params,
            image_parent.as_mut().map(|p| (p, &parents.quarantined)),
            &mut w,
            &mut Sink {
                up: &mut up,
                rep: &mut rep,
                bar: &bar,
            },
        )?,
    }
    let (buf, _summary) = w.finish()?;
    let mut spool = buf
        .into_inner()
        .map_err(|e| anyhow!("writing the manifest: {}", e.error()))?;
    spool.seek(SeekFrom::Start(0))?;
    if let Some(stopped) = &pg {
        let mut sink = Sink {
            up: &mut up,
            rep: &mut rep,
            bar: &bar,
        };
        spool =
            crate::pg_copy::complete(spool, &source.path, stopped, params, &opts.key, &mut sink)?;
        rep.postgres = Some(crate::backup_report::PostgresReport {
            start_lsn: stopped.start.to_string(),
            stop_lsn: stopped.stop.to_string(),
            wal_files: stopped.wal.len() as u64,
        });
    }
    let mut manifest = Vec::new();
    for chunk in Chunker::new(BufReader::new(spool), ChunkerParams::manifest()) {
        let chunk = chunk.context("reading back the manifest")?;
        // Manifest chunks stay plain (the node reads manifests; an
        // encrypted manifest seals its entries itself).
        let id = ChunkId::of(&chunk.data);
        manifest.push(ChunkRef {
            id,
            len: chunk.data.len() as u32,
        });
        up.add_plain(id, chunk.data)?;
    }
    // Every chunk is on the node before the commit is sent.
    let stats = up.finish()?;
    rep.chunks_new = stats.chunks_new;
    rep.bytes_sent = stats.bytes_sent;
    rep.bytes_new = stats.bytes_new;
    bar.finish();
    let req = pb::CommitSnapshotRequest {
        source: source.name.clone(),
        kind: refuge_proto::source_kind_to(source.kind),
        manifest: manifest.iter().map(refuge_proto::chunk_ref_to).collect(),
        bytes_uploaded: rep.bytes_sent,
        warnings: rep.warning_count,
        duration_micros: started.elapsed().as_micros() as u64,
        commit_token: commit_token.to_vec(),
    };
    let mut ingest = node.ingest.clone();
    let answer = rt.block_on(node.within("committing the snapshot", |r| {
        ingest.commit_snapshot(r.map(|()| req))
    }))?;
    rep.replayed = answer.replayed;
    if answer.replayed {
        warn!(
            "the node had this backup's commit already (an earlier try's answer was lost): reporting the snapshot it made then"
        );
    }
    let snap = answer
        .snapshot
        .ok_or_else(|| anyhow!("node acknowledged the commit without a snapshot"))?;
    let snap = refuge_proto::snapshot(snap).map_err(|e| anyhow!("node's commit answer: {e}"))?;
    // Committed: the checkpoint has served its purpose.
    if let Some((cur, prev)) = &paths {
        let _ = std::fs::remove_file(cur);
        let _ = std::fs::remove_file(prev);
    }
    rep.snapshot = snap.id.to_hex();
    rep.short_id = snap.id.short();
    rep.time = refuge_core::format_time_micros(snap.time_micros);
    rep.duration_secs = started.elapsed().as_secs_f64();
    rep.dedup_ratio = (rep.bytes_sent > 0).then(|| rep.bytes_read as f64 / rep.bytes_sent as f64);
    Ok(rep)
}
