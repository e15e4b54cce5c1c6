//! The allocator settings `refuge-agent` and `refuged` apply at start,
//! before any thread exists: glibc's malloc limited to [`ARENAS`] arenas.
//!
//! Both programs allocate buffers on one thread and free them on another
//! (the agent's chunk and batch buffers between the walker and the upload
//! workers; the node's uploaded chunks between tonic's tasks, the ingest
//! buffer and RocksDB's threads). glibc creates up to eight arenas per
//! CPU, one for each thread as it first allocates; a freed buffer goes
//! back to the arena it came from, where only the threads bound to that
//! arena can reuse it, so what a process holds beyond its live buffers
//! grows with its threads and depends on which thread happened to
//! allocate what. Measured
//! (BENCHMARKS.md, issue 16): the agent's peak RSS in eight 2 GiB initial
//! backups 106-126 MiB (156 once) by default, 94-103 MiB with two arenas;
//! the node's peak in a 20 GiB run 453-626 MiB by default, 334-413 MiB
//! with two arenas; no slower either way.
//!
//! A limit set in the environment (`MALLOC_ARENA_MAX`, or
//! `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) is left as it is.

/// Arenas glibc's malloc may create (its default: eight per CPU).
pub const ARENAS: i32 = 2;

/// Limits glibc's malloc to [`ARENAS`] arenas unless the environment sets
/// a limit. Call it first in `main`. Returns whether the limit was set
/// here (false with a limit from the environment, or without glibc).
pub fn limit_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unset_by_environment(
            std::env::var_os("MALLOC_ARENA_MAX").as_deref(),
            std::env::var_os("GLIBC_TUNABLES").as_deref(),
        ) && set_arena_max(ARENAS)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether neither variable sets an arena limit.
fn unset_by_environment(
    arena_max: Option<&std::ffi::OsStr>,
    tunables: Option<&std::ffi::OsStr>,
) -> bool {
    arena_max.is_none()
        && !tunables.is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.arena_max"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(n: i32) -> bool {
    // SAFETY: mallopt takes two integers; M_ARENA_MAX only caps the arenas
    // created from now on.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn an_arena_limit_of_the_environment_is_kept() {
        assert!(unset_by_environment(None, None));
        assert!(unset_by_environment(
            None,
            Some(OsStr::new("glibc.malloc.trim_threshold=1"))
        ));
        assert!(!unset_by_environment(Some(OsStr::new("4")), None));
        assert!(!unset_by_environment(
            None,
            Some(OsStr::new(
                "glibc.malloc.mmap_threshold=1:glibc.malloc.arena_max=8"
            ))
        ));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_arena_limit() {
        assert!(set_arena_max(ARENAS));
    }
}
