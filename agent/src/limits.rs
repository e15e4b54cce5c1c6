//! CPU and IO priority of the agent, so that it never disturbs the host it
//! protects. Applied once at start, before any other thread exists: on
//! Linux both priorities belong to threads and are inherited by the threads
//! created afterwards (the runtime, upload workers).

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
