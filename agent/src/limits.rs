//! CPU and IO priority of the agent and its allocator's arenas, so that it
//! never disturbs the host it protects. Applied once at start, before any
//! other thread exists: on Linux both priorities belong to threads and are
//! inherited by the threads created afterwards (the runtime, upload
//! workers), and glibc gives each new thread an arena within the limit.

use refuge_client::{IoPriority, LimitsConfig};

/// Applies `nice` and the IO priority; returns a warning if the kernel
/// refused (the backup still runs).
pub fn apply(limits: &LimitsConfig) -> Option<String> {
    let mut problems = Vec::new();
    if limits.nice > 0 && !set_nice(limits.nice) {
        problems.push(format!(
            "cannot set nice {}: {}",
            limits.nice,
            std::io::Error::last_os_error()
        ));
    }
    // ioprio: class << 13 | level; best-effort is class 2, idle class 3.
    let prio = match limits.io_priority {
        IoPriority::Normal => None,
        IoPriority::Low => Some((2 << 13) | 7),
        IoPriority::Idle => Some(3 << 13),
    };
    if let Some(p) = prio
        && !set_ioprio(p)
    {
        problems.push(format!(
            "cannot set IO priority: {}",
            std::io::Error::last_os_error()
        ));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Arenas glibc's malloc may create (its default: eight per CPU).
const MALLOC_ARENAS: i32 = 2;

/// Limits glibc's malloc to [`MALLOC_ARENAS`] arenas. The pipeline's
/// buffers (chunks of up to 4 MiB, batches of up to 6 MiB) are allocated
/// on one thread and freed on another; with an arena per thread the freed
/// space is held in many arenas and the peak RSS of the same backup
/// varied by 50 MiB (BENCHMARKS.md, issue 16: 106-126 MiB in eight 2 GiB
/// initial backups, 156 once, against 99-103 MiB with two arenas).
/// An arena limit set in the environment (`MALLOC_ARENA_MAX`, or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) is left as it is.
/// Returns whether the limit was set here.
pub fn limit_malloc_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        arenas_unset_by_environment(
            std::env::var_os("MALLOC_ARENA_MAX").as_deref(),
            std::env::var_os("GLIBC_TUNABLES").as_deref(),
        ) && set_arena_max(MALLOC_ARENAS)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether neither variable sets an arena limit.
fn arenas_unset_by_environment(
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

#[allow(unsafe_code)]
fn set_nice(nice: i32) -> bool {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}

#[allow(unsafe_code)]
fn set_ioprio(prio: i32) -> bool {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: ioprio_set takes plain integers and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            prio as libc::c_long,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn an_arena_limit_of_the_environment_is_kept() {
        assert!(arenas_unset_by_environment(None, None));
        assert!(arenas_unset_by_environment(
            None,
            Some(OsStr::new("glibc.malloc.trim_threshold=1"))
        ));
        assert!(!arenas_unset_by_environment(Some(OsStr::new("4")), None));
        assert!(!arenas_unset_by_environment(
            None,
            Some(OsStr::new(
                "glibc.malloc.mmap_threshold=1:glibc.malloc.arena_max=8"
            ))
        ));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_arena_limit() {
        assert!(set_arena_max(MALLOC_ARENAS));
    }
}
