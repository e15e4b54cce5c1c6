//! An `LD_PRELOAD` library for the power-loss test (`tests/e2e/power_loss.rs`).
//!
//! It wraps `fsync`, `fdatasync`, `rename` and `unlink`, and appends to the
//! file named by `REFUGE_SYNC_LOG` one line per successful call:
//!
//! * `S <size> <path>`: the file's first `size` bytes are durable;
//! * `R <from> <to>`: a rename;
//! * `U <path>`: an unlink.
//!
//! After the process is killed, the test keeps of each file only what a
//! sync made durable, and removes files no sync ever covered: what a power
//! loss leaves of data that was only in the page cache. (It treats renames
//! and file creation as durable once the file's data is synced; RocksDB
//! syncs the directory after them anyway.)
//!
//! Paths are absolute (`/proc/self/fd` for syncs, the working directory
//! joined for renames and unlinks). Without `REFUGE_SYNC_LOG` the calls
//! only pass through.
//!
//! For the full-disk test (`tests/e2e/full_disk.rs`) it also wraps
//! `write` and `pwrite`/`pwrite64` (the positioned writes of RocksDB's
//! direct I/O): while the file named by `REFUGE_ENOSPC_FLAG` exists, a write
//! to a RocksDB table or blob file (`.sst`, `.blob`) fails with `ENOSPC`,
//! as on a disk that filled: memtable flushes fail exactly, whatever the
//! timing, where a real full disk would make them fail only sometimes.

// An LD_PRELOAD shim is foreign functions by nature; this crate is a test
// tool and never linked into refuge.
#![allow(unsafe_code)]

use std::ffi::{CStr, OsStr};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libc::{c_char, c_int};

fn log(line: &[u8]) {
    let Some(path) = std::env::var_os("REFUGE_SYNC_LOG") else {
        return;
    };
    // One write(2) per line on an O_APPEND file: lines from threads do not
    // interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line);
    }
}

fn absolute(p: *const c_char) -> Option<PathBuf> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller passed a NUL-terminated path, as rename(2) and
    // unlink(2) require.
    let p = OsStr::from_bytes(unsafe { CStr::from_ptr(p) }.to_bytes());
    let p = PathBuf::from(p);
    if p.is_absolute() {
        Some(p)
    } else {
        std::env::current_dir().ok().map(|d| d.join(p))
    }
}

fn record_sync(fd: c_int) {
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
        return;
    };
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
        return;
    }
    let mut line = format!("S {} ", st.st_size).into_bytes();
    line.extend_from_slice(path.as_os_str().as_bytes());
    line.push(b'\n');
    log(&line);
}

/// `fsync(2)`, recorded.
#[unsafe(no_mangle)]
pub extern "C" fn fsync(fd: c_int) -> c_int {
    // SAFETY: the raw system call, with the caller's descriptor.
    let r = unsafe { libc::syscall(libc::SYS_fsync, fd) } as c_int;
    if r == 0 {
        record_sync(fd);
    }
    r
}

/// `fdatasync(2)`, recorded.
#[unsafe(no_mangle)]
pub extern "C" fn fdatasync(fd: c_int) -> c_int {
    // SAFETY: the raw system call, with the caller's descriptor.
    let r = unsafe { libc::syscall(libc::SYS_fdatasync, fd) } as c_int;
    if r == 0 {
        record_sync(fd);
    }
    r
}

/// `rename(2)`, recorded.
///
/// # Safety
///
/// As for rename(2): both paths are NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(from: *const c_char, to: *const c_char) -> c_int {
    let (a, b) = (absolute(from), absolute(to));
    // SAFETY: renameat with the caller's paths is rename(2).
    let r = unsafe { libc::renameat(libc::AT_FDCWD, from, libc::AT_FDCWD, to) };
    if r == 0
        && let (Some(a), Some(b)) = (a, b)
    {
        let mut line = b"R ".to_vec();
        line.extend_from_slice(a.as_os_str().as_bytes());
        line.push(b' ');
        line.extend_from_slice(b.as_os_str().as_bytes());
        line.push(b'\n');
        log(&line);
    }
    r
}

/// `unlink(2)`, recorded.
///
/// # Safety
///
/// As for unlink(2): the path is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    let a = absolute(path);
    // SAFETY: unlinkat with the caller's path is unlink(2).
    let r = unsafe { libc::unlinkat(libc::AT_FDCWD, path, 0) };
    if r == 0
        && let Some(a) = a
    {
        let mut line = b"U ".to_vec();
        line.extend_from_slice(a.as_os_str().as_bytes());
        line.push(b'\n');
        log(&line);
    }
    r
}

/// The flag file of `REFUGE_ENOSPC_FLAG`, read once.
fn enospc_flag() -> Option<&'static PathBuf> {
    static FLAG: OnceLock<Option<PathBuf>> = OnceLock::new();
    FLAG.get_or_init(|| std::env::var_os("REFUGE_ENOSPC_FLAG").map(PathBuf::from))
        .as_ref()
}

fn refuse_for_space(fd: c_int) -> bool {
    let Some(flag) = enospc_flag() else {
        return false;
    };
    if fd <= 2 || !flag.exists() {
        return false;
    }
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
        return false;
    };
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("sst" | "blob")
    )
}

/// Whether a write to `fd` fails for space: then errno is `ENOSPC`.
fn fail_for_space(fd: c_int) -> bool {
    let refuse = refuse_for_space(fd);
    if refuse {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = libc::ENOSPC };
    }
    refuse
}

/// `write(2)`; `ENOSPC` for table and blob files while the flag exists.
///
/// # Safety
///
/// As for write(2): `buf` holds `count` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(
    fd: c_int,
    buf: *const libc::c_void,
    count: libc::size_t,
) -> libc::ssize_t {
    if fail_for_space(fd) {
        return -1;
    }
    // SAFETY: the raw system call, with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_write, fd, buf, count) as libc::ssize_t }
}

/// `pwrite(2)` (`pwrite64` is the same call on 64-bit Linux); `ENOSPC`
/// for table and blob files while the flag exists.
///
/// # Safety
///
/// As for pwrite(2): `buf` holds `count` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buf: *const libc::c_void,
    count: libc::size_t,
    offset: libc::off_t,
) -> libc::ssize_t {
    if fail_for_space(fd) {
        return -1;
    }
    // SAFETY: the raw system call, with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_pwrite64, fd, buf, count, offset) as libc::ssize_t }
}

/// `pwrite64(2)`: [`pwrite`].
///
/// # Safety
///
/// As for pwrite(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const libc::c_void,
    count: libc::size_t,
    offset: libc::off_t,
) -> libc::ssize_t {
    // SAFETY: the caller's contract is pwrite's.
    unsafe { pwrite(fd, buf, count, offset) }
}
