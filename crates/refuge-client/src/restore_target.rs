//! The restore target on disk: directories checked once per restore,
//! files created under temporary names and finished through their
//! descriptor, symlinks, and the metadata a restored entry gets.
//!
//! Safety rules kept here (the pipeline in `restore.rs` relies on them):
//! * no write goes through a symlink: every directory on a restored path
//!   is checked with `symlink_metadata` the first time the restore uses it
//!   (and created when missing); files are opened with `O_NOFOLLOW`;
//! * a file gets its real name only by the final `rename`, after all its
//!   bytes and its metadata are in place.
//!
//! Each restored file costs as few system calls as it can: a file created
//! fresh gets its final mode at creation when the umask allows it, its
//! owner only when it differs from what the kernel gave it, its length
//! only when it ends in a hole.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use filetime::FileTime;
use refuge_core::Entry;

/// `S_ISGID` on a directory: files created in it take its group.
const SETGID: u32 = 0o2000;

/// Directories of one restore target that this restore has checked or
/// created, with whether new files in them inherit the directory's group.
pub(crate) struct Dirs {
    target: PathBuf,
    known: HashMap<Vec<u8>, bool>,
}

impl Dirs {
    /// The target directory must exist.
    pub(crate) fn new(target: &Path) -> anyhow::Result<Self> {
        let m = fs::metadata(target).with_context(|| format!("checking {}", target.display()))?;
        let mut known = HashMap::new();
        known.insert(Vec::new(), m.mode() & SETGID != 0);
        Ok(Dirs {
            target: target.to_path_buf(),
            known,
        })
    }

    /// Creates the directories of `rel` (all components) under the
    /// target, refusing to pass through a symlink or non-directory.
    /// Returns the path and whether it is set-group-ID.
    pub(crate) fn ensure(&mut self, rel: &[u8]) -> anyhow::Result<(PathBuf, bool)> {
        let rel = if rel == b"." { &b""[..] } else { rel };
        let mut cur = self.target.clone();
        if rel.is_empty() {
            return Ok((cur, self.known[&Vec::new()]));
        }
        if let Some(&setgid) = self.known.get(rel) {
            cur.push(OsStr::from_bytes(rel));
            return Ok((cur, setgid));
        }
        let mut setgid = self.known[&Vec::new()];
        let mut end = 0;
        for comp in rel.split(|&b| b == b'/') {
            end += comp.len();
            cur.push(OsStr::from_bytes(comp));
            let prefix = &rel[..end];
            end += 1;
            if let Some(&s) = self.known.get(prefix) {
                setgid = s;
                continue;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_dir() => setgid = m.mode() & SETGID != 0,
                Ok(m) if m.file_type().is_symlink() => {
                    bail!("refusing to restore through the symlink {}", cur.display())
                }
                Ok(_) => bail!("{} exists and is not a directory", cur.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A new directory inherits set-group-ID from its parent.
                    fs::create_dir(&cur).with_context(|| format!("creating {}", cur.display()))?
                }
                Err(e) => return Err(e).with_context(|| format!("checking {}", cur.display())),
            }
            self.known.insert(prefix.to_vec(), setgid);
        }
        Ok((cur, setgid))
    }

    /// Parent directory of `rel` (created), whether it is set-group-ID,
    /// and the final name.
    pub(crate) fn parent_and_name<'a>(
        &mut self,
        rel: &'a [u8],
    ) -> anyhow::Result<(PathBuf, bool, &'a [u8])> {
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let (dir, setgid) = self.ensure(parent)?;
        Ok((dir, setgid, name))
    }

    /// Whether `rel` is a directory this restore made or checked.
    pub(crate) fn is_known(&self, rel: &[u8]) -> bool {
        self.known.contains_key(rel)
    }
}

/// What a file created by this process gets without being told: its
/// owner and group, and the umask applied to the creation mode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Creator {
    uid: u32,
    gid: u32,
    /// `None` when it cannot be read (then the mode is always set).
    umask: Option<u32>,
}

impl Creator {
    pub(crate) fn current() -> Self {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let umask = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
        Creator { uid, gid, umask }
    }

    /// How a fresh file for `e` is created in a directory (set-group-ID
    /// or not) and what is left to set after its bytes are written.
    pub(crate) fn plan(&self, e: &Entry, setgid_dir: bool, tail_hole: bool) -> Plan {
        let want = e.mode & 0o7777;
        let create = e.mode & 0o777;
        let chmod = match self.umask {
            Some(u) => create & !u != want,
            None => true,
        };
        let chown = e.uid != self.uid || e.gid != self.gid || setgid_dir;
        Plan {
            create_mode: create,
            truncate: tail_hole,
            chown,
            chmod,
        }
    }
}

/// How a restored file is created and finished.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Mode given at creation.
    pub create_mode: u32,
    /// Set the length (the file ends in a hole, or is resumed over).
    pub truncate: bool,
    pub chown: bool,
    pub chmod: bool,
}

impl Plan {
    /// Everything set after the write: for files opened to resume or
    /// created private (`0600`) first.
    pub(crate) const FULL: Plan = Plan {
        create_mode: 0o600,
        truncate: true,
        chown: true,
        chmod: true,
    };
}

pub(crate) fn mtime(e: &Entry) -> FileTime {
    FileTime::from_unix_time(e.mtime_secs, e.mtime_nanos)
}

pub(crate) fn temp_name(dir: &Path, name: &[u8]) -> PathBuf {
    let mut n = b".refuge-restore-".to_vec();
    n.extend_from_slice(&name[..name.len().min(200)]);
    dir.join(OsStr::from_bytes(&n))
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

/// Creates the temporary file for `name` in `dir` with `mode` (a leftover
/// one from an earlier run is replaced), for writing only.
pub(crate) fn create_temp(dir: &Path, name: &[u8], mode: u32) -> anyhow::Result<(PathBuf, File)> {
    let tmp = temp_name(dir, name);
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW);
    let f = match opts.open(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            opts.open(&tmp)
        }
        r => r,
    }
    .with_context(|| format!("creating {}", tmp.display()))?;
    Ok((tmp, f))
}

/// Opens the working file for `dest` in `dir`: fresh (mode `0600`), or
/// (resume) the leftover temporary file or the existing file moved to the
/// temporary name. The flag says whether existing content may be reused.
pub(crate) fn open_work_file(
    dir: &Path,
    name: &[u8],
    dest: &Path,
    resume: bool,
) -> anyhow::Result<(PathBuf, File, bool)> {
    let tmp = temp_name(dir, name);
    let mut opts = OpenOptions::new();
    opts.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    if resume {
        if fs::symlink_metadata(&tmp)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            let f = opts
                .open(&tmp)
                .with_context(|| format!("opening {}", tmp.display()))?;
            return Ok((tmp, f, true));
        }
        if fs::symlink_metadata(dest)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            fs::rename(dest, &tmp)
                .with_context(|| format!("moving {} aside to resume", dest.display()))?;
            let f = opts
                .open(&tmp)
                .with_context(|| format!("opening {}", tmp.display()))?;
            return Ok((tmp, f, true));
        }
    }
    let _ = fs::remove_file(&tmp);
    let f = opts
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    Ok((tmp, f, false))
}

/// Gives a fully written file its length, owner, mode and times through
/// its descriptor (as `plan` says), then its real name.
pub(crate) fn finish_file(
    file: &File,
    e: &Entry,
    tmp: &Path,
    dest: &Path,
    plan: Plan,
) -> anyhow::Result<()> {
    if plan.truncate {
        // Sparse tail, or a longer file being resumed over: exactly `size`.
        file.set_len(e.size)?;
    }
    // The owner before the mode, because chown clears set-user-ID and
    // set-group-ID bits.
    if plan.chown
        && let Err(err) = std::os::unix::fs::fchown(file, Some(e.uid), Some(e.gid))
        && err.kind() != std::io::ErrorKind::PermissionDenied
    {
        tracing::debug!(path = %tmp.display(), error = %err, "cannot set owner");
    }
    if plan.chmod {
        file.set_permissions(fs::Permissions::from_mode(e.mode & 0o7777))?;
    }
    filetime::set_file_handle_times(file, Some(mtime(e)), Some(mtime(e)))?;
    // Renaming a file over a directory fails with EISDIR: no need to look
    // first.
    match fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EISDIR) => {
            bail!("{} exists and is a directory", dest.display())
        }
        Err(err) => Err(err).with_context(|| format!("renaming into {}", dest.display())),
    }
}

/// Restores a symlink (replacing a file or symlink in its place, never
/// following one).
pub(crate) fn restore_symlink(dirs: &mut Dirs, e: &Entry) -> anyhow::Result<()> {
    let (dir, _, name) = dirs.parent_and_name(&e.path)?;
    let dest = dir.join(OsStr::from_bytes(name));
    if dirs.is_known(&e.path) {
        bail!("{} exists and is a directory", dest.display());
    }
    if let Ok(m) = fs::symlink_metadata(&dest) {
        if m.is_dir() {
            bail!("{} exists and is a directory", dest.display());
        }
        fs::remove_file(&dest)?;
    }
    std::os::unix::fs::symlink(OsStr::from_bytes(&e.target), &dest)
        .with_context(|| format!("creating symlink {}", dest.display()))?;
    set_owner(&dest, e, true);
    filetime::set_symlink_file_times(&dest, mtime(e), mtime(e))?;
    Ok(())
}

/// A directory's owner, mode and times (applied after its children).
pub(crate) fn finish_dir(path: &Path, e: &Entry) -> anyhow::Result<()> {
    set_owner(path, e, false);
    fs::set_permissions(path, fs::Permissions::from_mode(e.mode & 0o7777))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    filetime::set_file_times(path, mtime(e), mtime(e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_core::EntryKind;

    fn entry(mode: u32, uid: u32, gid: u32) -> Entry {
        Entry {
            path: b"f".to_vec(),
            kind: EntryKind::File,
            mode,
            uid,
            gid,
            size: 1,
            mtime_secs: 0,
            mtime_nanos: 0,
            ctime_secs: 0,
            ctime_nanos: 0,
            inode: 0,
            target: Vec::new(),
        }
    }

    #[test]
    fn the_plan_sets_only_what_creation_did_not() {
        let c = Creator {
            uid: 1000,
            gid: 1000,
            umask: Some(0o022),
        };
        let p = c.plan(&entry(0o100644, 1000, 1000), false, false);
        assert_eq!(p.create_mode, 0o644);
        assert!(!p.chmod && !p.chown && !p.truncate);
        // The umask takes group write away: set it afterwards.
        assert!(c.plan(&entry(0o100664, 1000, 1000), false, false).chmod);
        // Set-user-ID is never given at creation.
        let p = c.plan(&entry(0o104755, 1000, 1000), false, false);
        assert_eq!(p.create_mode, 0o755);
        assert!(p.chmod);
        // Another owner, a set-group-ID directory, an unknown umask, a
        // file ending in a hole.
        assert!(c.plan(&entry(0o100644, 0, 1000), false, false).chown);
        assert!(c.plan(&entry(0o100644, 1000, 1000), true, false).chown);
        assert!(c.plan(&entry(0o100644, 1000, 1000), false, true).truncate);
        let unknown = Creator { umask: None, ..c };
        assert!(
            unknown
                .plan(&entry(0o100644, 1000, 1000), false, false)
                .chmod
        );
    }

    #[test]
    fn directories_are_checked_once_and_symlinks_refused() {
        let t = tempfile::tempdir().unwrap();
        let mut d = Dirs::new(t.path()).unwrap();
        let (p, _) = d.ensure(b"a/b/c").unwrap();
        assert!(p.is_dir() && p.ends_with("a/b/c"));
        assert!(d.is_known(b"a") && d.is_known(b"a/b") && d.is_known(b"a/b/c"));
        let (dir, _, name) = d.parent_and_name(b"a/b/file").unwrap();
        assert_eq!((dir.as_path(), name), (p.parent().unwrap(), &b"file"[..]));
        std::os::unix::fs::symlink(t.path(), t.path().join("link")).unwrap();
        let err = d.ensure(b"link/x").unwrap_err().to_string();
        assert!(
            err.contains("refusing to restore through the symlink"),
            "{err}"
        );
        fs::write(t.path().join("plain"), b"x").unwrap();
        let err = d.ensure(b"plain/x").unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
