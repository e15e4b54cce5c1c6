//! Restore's writes of large files past the page cache.
//!
//! A restore of gigabytes into fresh page-cache pages spends more system
//! time on the pages than on anything else where each fresh page costs a
//! fault (on this project's test machines, a VM whose balloon reports free
//! pages to the host: BENCHMARKS.md, issue 16), and it evicts the restore
//! host's working set on any machine. So a large file's chunk runs are
//! written with `O_DIRECT`:
//!
//! * a worker collects a run of consecutive chunks of one file in an
//!   aligned buffer ([`Runs`]) and writes its whole blocks through a
//!   second descriptor opened with `O_DIRECT` ([`Out`]);
//! * the partial block at each end of a run is shared with the
//!   neighbouring runs, which other workers write, so it goes through the
//!   ordinary descriptor and the page cache (the runs never overlap, so no
//!   block is written both ways);
//! * a hole ends a run and is never written: the file stays sparse.
//!
//! A file system that refuses `O_DIRECT` at open, or with `EINVAL` at a
//! write, gets buffered writes, as every small file does.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of offsets, lengths and memory of the direct writes: a page,
/// which covers every logical block size of the file systems in use.
pub(crate) const ALIGN: usize = 4096;

/// Bytes a worker collects before it writes: large enough for the disk's
/// full speed per write, small enough per worker.
pub(crate) const RUN_BYTES: usize = 1 << 20;

/// A file being restored: its ordinary descriptor and, where the file
/// system takes it, a second one with `O_DIRECT`.
pub(crate) struct Out {
    /// Read and write, through the page cache.
    pub(crate) file: File,
    direct: Option<File>,
    /// Set when a direct write was refused: the rest goes buffered.
    refused: AtomicBool,
}

impl Out {
    /// Buffered writes only (a device, a resumed file, a small file).
    pub(crate) fn buffered(file: File) -> Self {
        Out {
            file,
            direct: None,
            refused: AtomicBool::new(false),
        }
    }

    /// Opens `path`, which `file` is open on, a second time with
    /// `O_DIRECT`; buffered only when the file system refuses, or when the
    /// path no longer names the same file.
    pub(crate) fn with_direct(file: File, path: &Path) -> Self {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
            .open(path)
            .ok()
            .filter(|d| same_file(d, &file));
        Out {
            file,
            direct,
            refused: AtomicBool::new(false),
        }
    }

    /// Whether whole blocks go past the page cache.
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some() && !self.refused.load(Ordering::Relaxed)
    }

    /// Writes whole blocks at an aligned offset: directly when it can,
    /// else (and for good once the file system refused) buffered.
    fn write_blocks(&self, data: &[u8], off: u64) -> io::Result<()> {
        if let Some(d) = &self.direct
            && !self.refused.load(Ordering::Relaxed)
        {
            match d.write_all_at(data, off) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(error = %e, "direct write refused; writing through the page cache");
                    self.refused.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, off)
    }
}

fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// One worker's run of consecutive bytes of one file, collected in an
/// aligned buffer. The caller flushes it before it starts another file
/// or a range that does not follow on ([`Runs::follows`]).
pub(crate) struct Runs {
    /// `cap + ALIGN` bytes, never reallocated; the run starts at `base`.
    mem: Vec<u8>,
    base: usize,
    cap: usize,
    /// File offset of `mem[base]`, aligned.
    start: u64,
    /// Bytes before the run's first byte in its first block.
    head: usize,
    /// Bytes of the buffer in use, `head` included.
    len: usize,
}

impl Runs {
    /// `cap` is rounded up to whole blocks, at least two.
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.next_multiple_of(ALIGN).max(2 * ALIGN);
        Runs {
            mem: Vec::new(),
            base: 0,
            cap,
            start: 0,
            head: 0,
            len: 0,
        }
    }

    fn buf(&mut self) -> &mut [u8] {
        if self.mem.is_empty() {
            // Allocated at first use: a worker that only restores small
            // files never needs it.
            self.mem = vec![0; self.cap + ALIGN];
            self.base = self.mem.as_ptr().align_offset(ALIGN);
        }
        &mut self.mem[self.base..self.base + self.cap]
    }

    /// Whether a range starting at `off` continues the run (or the run
    /// is empty).
    pub(crate) fn follows(&self, off: u64) -> bool {
        self.len == 0 || self.start + self.len as u64 == off
    }

    /// Adds `data`, the file's bytes at `off`, which must follow the run;
    /// whole blocks are written when the buffer is full.
    pub(crate) fn push(&mut self, out: &Out, off: u64, mut data: &[u8]) -> io::Result<()> {
        if !self.follows(off) {
            return Err(io::Error::other("restore run out of order"));
        }
        if self.len == 0 {
            self.start = off - off % ALIGN as u64;
            self.head = (off - self.start) as usize;
            self.len = self.head;
        }
        while !data.is_empty() {
            if self.len == self.cap {
                self.write_full(out)?;
            }
            let n = (self.cap - self.len).min(data.len());
            let at = self.len;
            self.buf()[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes the whole blocks of a full buffer and keeps its partial
    /// last block (there is none: `cap` is whole blocks) for the rest.
    fn write_full(&mut self, out: &Out) -> io::Result<()> {
        let end = self.len - self.len % ALIGN;
        self.write_range(out, end)?;
        let rest = self.len - end;
        self.buf().copy_within(end..end + rest, 0);
        self.start += end as u64;
        self.head = 0;
        self.len = rest;
        Ok(())
    }

    /// Writes `[head, upto)` of the buffer: a partial first block through
    /// the page cache, whole blocks past it, a partial last block through
    /// the page cache.
    fn write_range(&mut self, out: &Out, upto: usize) -> io::Result<()> {
        let (start, head) = (self.start, self.head);
        let whole_from = if head > 0 { ALIGN.min(upto) } else { 0 };
        let whole_to = (upto - upto % ALIGN).max(whole_from);
        let buf = self.buf();
        if head > 0 && whole_from > head {
            out.file
                .write_all_at(&buf[head..whole_from], start + head as u64)?;
        }
        if whole_to > whole_from {
            out.write_blocks(&buf[whole_from..whole_to], start + whole_from as u64)?;
        }
        if upto > whole_to {
            out.file
                .write_all_at(&buf[whole_to..upto], start + whole_to as u64)?;
        }
        Ok(())
    }

    /// Writes the run and empties it.
    pub(crate) fn flush(&mut self, out: &Out) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let len = self.len;
        // Empty first, so that a failed write leaves no run behind.
        self.len = 0;
        self.write_range(out, len)
    }

    /// Forgets the run without writing it (after a failure).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    fn open(path: &Path) -> Out {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        Out::with_direct(f, path)
    }

    fn read(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn runs_at_any_offset_and_length_land_exactly_with_holes_left_sparse() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        let out = open(&path);
        // tmpfs and ext4 on Linux take O_DIRECT; the test must use it.
        assert!(
            out.is_direct(),
            "the temp dir's file system refused O_DIRECT"
        );
        let size = 3 * RUN_BYTES + 12_345;
        let want = pattern(size, 7);
        // Runs in an order that is not the file's, of odd sizes, pushed
        // in odd pieces, by two buffers, with a hole in the middle (its
        // bytes must stay zero: they are never written).
        let cuts = [
            0,
            5,
            4096,
            70_001,
            RUN_BYTES + 1,
            2 * RUN_BYTES + 4095,
            3 * RUN_BYTES,
            size,
        ];
        let hole = 3; // the run [70_001, RUN_BYTES + 1)
        let mut a = Runs::new(RUN_BYTES);
        let mut b = Runs::new(64 << 10);
        for (k, i) in [6usize, 0, 4, 2, 5, 1].into_iter().enumerate() {
            let r = if k % 2 == 0 { &mut a } else { &mut b };
            let (lo, hi) = (cuts[i], cuts[i + 1]);
            let mut off = lo;
            for piece in want[lo..hi].chunks(9_999) {
                r.push(&out, off as u64, piece).unwrap();
                off += piece.len();
            }
            r.flush(&out).unwrap();
        }
        out.file.set_len(size as u64).unwrap();
        let got = read(&path);
        assert_eq!(got.len(), size);
        let (hl, hh) = (cuts[hole], cuts[hole + 1]);
        assert!(got[hl..hh].iter().all(|&b| b == 0), "the hole was written");
        assert_eq!(&got[..hl], &want[..hl]);
        assert_eq!(&got[hh..], &want[hh..]);
        // The hole's whole blocks stay unallocated.
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            blocks < (size - (hh - hl) + 4 * ALIGN) as u64,
            "{blocks} bytes allocated"
        );
    }

    #[test]
    fn a_run_must_follow_on_and_an_empty_flush_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        let out = open(&path);
        let mut r = Runs::new(0);
        r.flush(&out).unwrap();
        r.push(&out, 10, b"abc").unwrap();
        assert!(r.follows(13) && !r.follows(14));
        let err = r.push(&out, 20, b"x").unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        r.clear();
        assert!(r.follows(99));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_refused_direct_write_is_done_buffered_and_the_rest_follows_buffered() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        let out = open(&path);
        assert!(out.is_direct());
        // ext4 (the test machines' temp dir) refuses a direct write from
        // unaligned memory with EINVAL, as a file system without O_DIRECT
        // support would refuse any.
        let want = pattern(2 * ALIGN + 1, 3);
        out.write_blocks(&want[1..], 0).unwrap();
        assert!(!out.is_direct(), "EINVAL expected for unaligned memory");
        let mut r = Runs::new(2 * ALIGN);
        r.push(&out, 2 * ALIGN as u64, &want).unwrap();
        r.flush(&out).unwrap();
        let got = read(&path);
        assert_eq!(&got[..2 * ALIGN], &want[1..]);
        assert_eq!(&got[2 * ALIGN..], &want[..]);
        // A path that names another file by now: no direct descriptor.
        let other = t.path().join("g");
        std::fs::write(&other, b"").unwrap();
        let out = Out::with_direct(File::open(&path).unwrap(), &other);
        assert!(!out.is_direct());
    }
}
