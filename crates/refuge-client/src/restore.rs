//! Restore of one snapshot: stream the manifest, fetch chunks in batches,
//! verify every chunk (bounded decompression, recomputed BLAKE3) and write.
//!
//! Safety rules, kept here and nowhere else:
//! * Every file is written under a temporary name in its final directory
//!   and renamed only after all its chunks were verified and written, so a
//!   failed restore never leaves wrong bytes under a real name.
//! * Manifest paths are validated by the reader (relative, no `..`), and no
//!   write goes through a symlink: each parent directory is checked with
//!   `symlink_metadata` before use.
//! * A missing or corrupt chunk stops the restore with the file and chunk
//!   named.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use filetime::FileTime;
use indicatif::{ProgressBar, ProgressStyle};
use refuge_core::{Entry, EntryKind, ManifestReader, ManifestRecord, SnapshotRecord, SourceKind};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::connect::Node;
use crate::remote::{Fetcher, Piece, RemoteStream};

/// Where and what to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Directory for a tree; file or device path for an image.
    pub target: PathBuf,
    /// Restore only this path (file or subtree) of a tree snapshot.
    pub include: Option<String>,
    /// Show a progress bar.
    pub progress: bool,
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
    /// File bytes written (verified).
    pub bytes: u64,
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

/// Creates the directories of `rel` (all components) under `target`,
/// refusing to pass through a symlink or non-directory.
fn ensure_dirs(target: &Path, rel: &[u8]) -> anyhow::Result<PathBuf> {
    let mut cur = target.to_path_buf();
    if rel == b"." || rel.is_empty() {
        return Ok(cur);
    }
    for comp in rel.split(|&b| b == b'/') {
        cur.push(std::ffi::OsStr::from_bytes(comp));
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                bail!("refusing to restore through the symlink {}", cur.display())
            }
            Ok(_) => bail!("{} exists and is not a directory", cur.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&cur).with_context(|| format!("creating {}", cur.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("checking {}", cur.display())),
        }
    }
    Ok(cur)
}

/// Parent directory of `rel` under `target` (created), and the final name.
fn parent_and_name<'a>(target: &Path, rel: &'a [u8]) -> anyhow::Result<(PathBuf, &'a [u8])> {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => Ok((ensure_dirs(target, &rel[..i])?, &rel[i + 1..])),
        None => Ok((ensure_dirs(target, b".")?, rel)),
    }
}

fn set_owner(path: &Path, e: &Entry, symlink: bool) {
    // Only root may give files away; as another user the restored files
    // belong to that user, like tar and restic do.
    let r = if symlink {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
    } else {
        std::os::unix::fs::chown(path, Some(e.uid), Some(e.gid))
    };
    if let Err(err) = r
        && err.kind() != std::io::ErrorKind::PermissionDenied
    {
        tracing::debug!(path = %path.display(), error = %err, "cannot set owner");
    }
}

fn mtime(e: &Entry) -> FileTime {
    FileTime::from_unix_time(e.mtime_secs, e.mtime_nanos)
}

struct OpenFile {
    entry: Entry,
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    written: u64,
}

impl OpenFile {
    fn finish(mut self) -> anyhow::Result<()> {
        if self.written != self.entry.size {
            bail!(
                "wrote {} bytes of {} for {}",
                self.written,
                self.entry.size,
                lossy(&self.entry.path)
            );
        }
        self.file.flush()?;
        fs::set_permissions(
            &self.tmp,
            fs::Permissions::from_mode(self.entry.mode & 0o7777),
        )?;
        set_owner(&self.tmp, &self.entry, false);
        filetime::set_file_times(&self.tmp, mtime(&self.entry), mtime(&self.entry))?;
        if let Ok(m) = fs::symlink_metadata(&self.dest)
            && m.is_dir()
        {
            bail!("{} exists and is a directory", self.dest.display());
        }
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming into {}", self.dest.display()))?;
        Ok(())
    }
}

/// Writes one piece at the current position: data is written, a hole is
/// skipped with a seek (left sparse) — except on devices, where old
/// content must be overwritten with zeros. Returns the bytes covered.
fn write_piece(f: &mut File, piece: Piece<'_>, device: bool) -> anyhow::Result<u64> {
    use std::io::{Seek, SeekFrom};
    match piece {
        Piece::Data(d) => {
            f.write_all(d)?;
            Ok(d.len() as u64)
        }
        Piece::Hole(n) if device => {
            f.write_all(&vec![0u8; n as usize])?;
            Ok(u64::from(n))
        }
        Piece::Hole(n) => {
            f.seek(SeekFrom::Current(i64::from(n)))?;
            Ok(u64::from(n))
        }
    }
}

fn temp_name(dir: &Path, name: &[u8]) -> PathBuf {
    let mut n = b".refuge-restore-".to_vec();
    n.extend_from_slice(&name[..name.len().min(100)]);
    n.extend_from_slice(format!(".{}", std::process::id()).as_bytes());
    dir.join(std::ffi::OsStr::from_bytes(&n))
}

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
    let bar = if opts.progress {
        let b = ProgressBar::new(snap.logical_bytes);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut data_fetcher = Fetcher::new(rt.clone(), node.clone());
    let stream = RemoteStream::new(Fetcher::new(rt, node), snap.manifest.clone());
    let mut reader = ManifestReader::new(stream).context("reading the snapshot's manifest")?;
    let result = match snap.kind {
        SourceKind::Tree => restore_tree(&mut reader, &mut data_fetcher, &opts, &mut rep, &bar),
        SourceKind::Image => {
            if opts.include.is_some() {
                bail!("--include applies to tree snapshots; this one is an image");
            }
            restore_image(&mut reader, &mut data_fetcher, &opts.target, &mut rep, &bar)
        }
    };
    bar.finish_and_clear();
    result?;
    rep.duration_secs = started.elapsed().as_secs_f64();
    Ok(rep)
}

fn restore_tree<R: Read>(
    reader: &mut ManifestReader<R>,
    fetcher: &mut Fetcher,
    opts: &RestoreOptions,
    rep: &mut RestoreReport,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let include = opts.include.as_ref().map(|s| {
        let t = s.trim_start_matches("./").trim_end_matches('/');
        if t.is_empty() {
            ".".as_bytes().to_vec()
        } else {
            t.as_bytes().to_vec()
        }
    });
    let include = include.as_deref().filter(|i| *i != b".");
    fs::create_dir_all(&opts.target)
        .with_context(|| format!("creating target {}", opts.target.display()))?;
    let target = opts.target.as_path();
    let mut open: Option<OpenFile> = None;
    let mut skipping = false;
    let mut matched = false;
    // Directory metadata is applied last: writing children changes mtimes.
    let mut dirs: Vec<(PathBuf, Entry)> = Vec::new();
    let fail = |open: &mut Option<OpenFile>, e: anyhow::Error| -> anyhow::Error {
        if let Some(f) = open.take() {
            let _ = fs::remove_file(&f.tmp);
            return e.context(format!("restoring {}", lossy(&f.entry.path)));
        }
        e
    };
    loop {
        let rec = match reader.next_record() {
            Ok(r) => r,
            Err(e) => {
                return Err(fail(
                    &mut open,
                    anyhow!("reading the snapshot's manifest: {e}"),
                ));
            }
        };
        let Some(rec) = rec else { break };
        match rec {
            ManifestRecord::Entry(e) => {
                if let Some(f) = open.take() {
                    let tmp = f.tmp.clone();
                    let path = lossy(&f.entry.path);
                    if let Err(err) = f.finish() {
                        let _ = fs::remove_file(&tmp);
                        return Err(err.context(format!("restoring {path}")));
                    }
                }
                skipping = !included(&e.path, include);
                if skipping {
                    continue;
                }
                matched = true;
                let step = (|| -> anyhow::Result<Option<OpenFile>> {
                    match e.kind {
                        EntryKind::Dir => {
                            let d = ensure_dirs(target, &e.path)?;
                            rep.dirs += 1;
                            dirs.push((d, e));
                            Ok(None)
                        }
                        EntryKind::File => {
                            let (dir, name) = parent_and_name(target, &e.path)?;
                            let tmp = temp_name(&dir, name);
                            let _ = fs::remove_file(&tmp);
                            let file = OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .mode(0o600)
                                .custom_flags(libc::O_NOFOLLOW)
                                .open(&tmp)
                                .with_context(|| format!("creating {}", tmp.display()))?;
                            let dest = dir.join(std::ffi::OsStr::from_bytes(name));
                            rep.files += 1;
                            Ok(Some(OpenFile {
                                entry: e,
                                tmp,
                                dest,
                                file,
                                written: 0,
                            }))
                        }
                        EntryKind::Symlink => {
                            let (dir, name) = parent_and_name(target, &e.path)?;
                            let dest = dir.join(std::ffi::OsStr::from_bytes(name));
                            if let Ok(m) = fs::symlink_metadata(&dest) {
                                if m.is_dir() {
                                    bail!("{} exists and is a directory", dest.display());
                                }
                                fs::remove_file(&dest)?;
                            }
                            std::os::unix::fs::symlink(
                                std::ffi::OsStr::from_bytes(&e.target),
                                &dest,
                            )
                            .with_context(|| format!("creating symlink {}", dest.display()))?;
                            set_owner(&dest, &e, true);
                            filetime::set_symlink_file_times(&dest, mtime(&e), mtime(&e))?;
                            rep.symlinks += 1;
                            Ok(None)
                        }
                    }
                })();
                match step {
                    Ok(f) => open = f,
                    Err(err) => return Err(err),
                }
            }
            ManifestRecord::Chunks(refs) => {
                if skipping {
                    continue;
                }
                let Some(f) = open.as_mut() else {
                    return Err(anyhow!("manifest has chunks outside a file"));
                };
                let r = fetcher.fetch(&refs, |piece| {
                    let n = write_piece(&mut f.file, piece, false)?;
                    f.written += n;
                    bar.inc(n);
                    Ok(())
                });
                rep.chunks += refs.len() as u64;
                if let Err(e) = r {
                    return Err(fail(&mut open, e));
                }
            }
        }
    }
    if let Some(f) = open.take() {
        let tmp = f.tmp.clone();
        let path = lossy(&f.entry.path);
        if let Err(err) = f.finish() {
            let _ = fs::remove_file(&tmp);
            return Err(err.context(format!("restoring {path}")));
        }
    }
    if let Some(inc) = include
        && !matched
    {
        bail!("no path {:?} in this snapshot", lossy(inc));
    }
    for (path, e) in dirs.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(e.mode & 0o7777))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
        set_owner(path, e, false);
        filetime::set_file_times(path, mtime(e), mtime(e))?;
    }
    rep.bytes = bar.position();
    Ok(())
}

fn restore_image<R: Read>(
    reader: &mut ManifestReader<R>,
    fetcher: &mut Fetcher,
    target: &Path,
    rep: &mut RestoreReport,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let device = fs::metadata(target)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let mut entry: Option<Entry> = None;
    let mut out: Option<(File, PathBuf)> = None;
    let mut written = 0u64;
    let result = (|| -> anyhow::Result<()> {
        while let Some(rec) = reader
            .next_record()
            .context("reading the snapshot's manifest")?
        {
            match rec {
                ManifestRecord::Entry(e) => {
                    if entry.is_some() {
                        bail!("image manifest has more than one entry");
                    }
                    let (file, path) = if device {
                        (
                            OpenOptions::new().write(true).open(target)?,
                            target.to_path_buf(),
                        )
                    } else {
                        let dir = match target.parent() {
                            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                            _ => PathBuf::from("."),
                        };
                        fs::create_dir_all(&dir)?;
                        let name = target.file_name().ok_or_else(|| {
                            anyhow!("target {} has no file name", target.display())
                        })?;
                        let tmp = temp_name(&dir, name.as_bytes());
                        let _ = fs::remove_file(&tmp);
                        let f = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&tmp)
                            .with_context(|| format!("creating {}", tmp.display()))?;
                        (f, tmp)
                    };
                    out = Some((file, path));
                    entry = Some(e);
                }
                ManifestRecord::Chunks(refs) => {
                    let (f, _) = out
                        .as_mut()
                        .ok_or_else(|| anyhow!("manifest has chunks before the image entry"))?;
                    fetcher.fetch(&refs, |piece| {
                        let n = write_piece(f, piece, device)?;
                        written += n;
                        bar.inc(n);
                        Ok(())
                    })?;
                    rep.chunks += refs.len() as u64;
                }
            }
        }
        Ok(())
    })();
    let (mut f, path) = match (result, out) {
        (Ok(()), Some(o)) => o,
        (Ok(()), None) => bail!("image snapshot has no entry"),
        (Err(e), Some((_, path))) => {
            if !device {
                let _ = fs::remove_file(&path);
            }
            return Err(e.context(format!("restoring the image to {}", target.display())));
        }
        (Err(e), None) => return Err(e),
    };
    if !device {
        f.set_len(written)?;
    }
    f.flush()?;
    f.sync_all()?;
    if !device {
        let e = entry
            .as_ref()
            .ok_or_else(|| anyhow!("image snapshot has no entry"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(e.mode & 0o7777))?;
        filetime::set_file_times(&path, mtime(e), mtime(e))?;
        fs::rename(&path, target).with_context(|| format!("renaming into {}", target.display()))?;
    }
    rep.files = 1;
    rep.bytes = written;
    Ok(())
}
