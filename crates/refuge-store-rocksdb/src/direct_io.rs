//! Whether the store's directory takes `O_DIRECT` (for `[rocksdb]
//! direct_io = true`, off by default).
//!
//! With direct I/O, RocksDB writes flushed and compacted files (blob files
//! with the chunk bodies, table files) and reads compactions' inputs
//! without the page cache. A node writes far more than it reads back:
//! passing every stored byte through the page cache costs a copy and a
//! fresh cache page for it, and pushes the catalog's blocks out of the
//! cache. Lookups and restores still read through the page cache, which
//! keeps a large catalog's index and data blocks beyond the block cache;
//! the write-ahead log stays buffered (RocksDB syncs it). It is off by
//! default: a restore right after a backup then reads the bodies from the
//! disk instead of the cache, and a large catalog's compactions are slower
//! (BENCHMARKS.md, "Issue 16: fresh page-cache pages, and flushes and
//! compactions with direct I/O").
//!
//! Some file systems refuse `O_DIRECT` (`EINVAL`); RocksDB would then
//! refuse to open, or fail its first flush. The store asks first and opens
//! with buffered I/O there.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The probe file a writable open creates and removes again.
const PROBE: &str = "direct-io-probe";

/// Whether files in `dir` can be opened with `O_DIRECT`. A writable open
/// creates `dir` when missing (as RocksDB would: a new store is asked
/// about the file system it will be on) and a probe file, removed again;
/// a read-only one opens the store's `CURRENT` for reading. Any error
/// other than "not supported" answers yes: RocksDB's own open then
/// reports it.
pub(crate) fn supported(dir: &Path, read_only: bool) -> bool {
    let r = if read_only {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("CURRENT"))
            .map(drop)
    } else {
        let _ = std::fs::create_dir_all(dir);
        let probe = dir.join(PROBE);
        let r = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .map(drop);
        let _ = std::fs::remove_file(&probe);
        r
    };
    match r {
        Ok(()) => true,
        Err(e) => !refused(&e),
    }
}

/// `O_DIRECT` refused by the file system.
fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL) || e.kind() == ErrorKind::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_file_system_takes_direct_io_and_the_probe_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        assert!(supported(t.path(), false));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_new_store_directory_is_created_and_probed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("not/yet");
        assert!(supported(&dir, false));
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_read_only_open_probes_current_and_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("CURRENT"), b"MANIFEST-000001\n").unwrap();
        assert!(supported(t.path(), true));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_einval_counts_as_refused() {
        assert!(refused(&std::io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(!refused(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!refused(&std::io::Error::from_raw_os_error(libc::EACCES)));
    }
}
