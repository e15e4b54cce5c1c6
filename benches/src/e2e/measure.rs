//! Running a child process while measuring it, from `/proc` only (no
//! unsafe code): wall time, peak RSS (`VmHWM`, polled every 20 ms while
//! the child runs) and CPU time (the `cutime`/`cstime` of this process grow
//! by the child's user and system time when it is reaped).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Poll interval of the peak-RSS sampler.
pub const POLL: Duration = Duration::from_millis(20);

/// A finished, measured child.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Spawn to exit.
    pub wall: Duration,
    /// Largest `VmHWM` seen, KiB.
    pub peak_rss_kib: u64,
    /// User CPU seconds.
    pub cpu_user: f64,
    /// System CPU seconds.
    pub cpu_sys: f64,
    /// Standard output.
    pub stdout: String,
    /// Why the command failed (exit status and stderr tail), if it did.
    pub failure: Option<String>,
}

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 onward).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// User plus system CPU seconds of a live process.
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let f = stat_fields(&pid.to_string())?;
    // utime and stime are fields 14 and 15; index 0 here is field 4.
    Some((f.get(10)? + f.get(11)?) as f64 / clk_tck())
}

/// User and system CPU seconds of this process's reaped children.
fn children_cpu() -> (f64, f64) {
    stat_fields("self")
        .and_then(|f| {
            Some((
                *f.get(12)? as f64 / clk_tck(),
                *f.get(13)? as f64 / clk_tck(),
            ))
        })
        .unwrap_or((0.0, 0.0))
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Busy CPU seconds of the whole machine since boot (all CPUs; from the
/// `cpu` line of `/proc/stat`: everything but idle and iowait).
pub fn system_busy() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy as f64 / clk_tck()
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Peak resident set size of a live process, KiB.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Current resident set size of a live process, KiB.
pub fn vm_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Resets a process's `VmHWM` to its current RSS (`clear_refs` 5); false
/// if the kernel refused.
pub fn reset_hwm(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Runs `cmd` to completion (stdout and stderr to `log_dir/name.*`),
/// measuring it. A non-zero exit is reported in [`Measured::failure`].
pub fn run(mut cmd: Command, log_dir: &Path, name: &str) -> anyhow::Result<Measured> {
    let out_path = log_dir.join(format!("{name}.stdout"));
    let err_path = log_dir.join(format!("{name}.stderr"));
    cmd.stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&out_path)?)
        .stderr(fs::File::create(&err_path)?);
    let cpu0 = children_cpu();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(v) = vm_hwm(pid) {
            peak = peak.max(v);
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(POLL);
    };
    let wall = start.elapsed();
    let cpu1 = children_cpu();
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let failure = (!status.success()).then(|| {
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        format!(
            "{name} failed ({status}); stderr ({}):\n{}",
            err_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    Ok(Measured {
        wall,
        peak_rss_kib: peak,
        cpu_user: cpu1.0 - cpu0.0,
        cpu_sys: cpu1.1 - cpu0.1,
        stdout,
        failure,
    })
}

/// CPU seconds (user + system) of a live process's threads, summed by
/// thread name (`/proc/PID/task/TID/comm`, at most 15 characters: the
/// node's tokio worker and blocking threads share `tokio-rt-worker`,
/// RocksDB's are `rocksdb:low` and `rocksdb:high`). Threads that already
/// exited are not counted.
pub fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        let name = fs::read_to_string(t.path().join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        if let Some(f) = stat_fields(&format!("{pid}/task/{tid}"))
            && let (Some(u), Some(s)) = (f.get(10), f.get(11))
        {
            *out.entry(name).or_insert(0.0) += (u + s) as f64 / clk_tck();
        }
    }
    out
}
