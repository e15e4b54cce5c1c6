//! Where a benchmark ran: CPU, cores, memory, kernel, the filesystem of
//! the scratch directory, and the git commit of the workspace.

use std::fs;
use std::path::Path;
use std::process::Command;

/// A description of the machine and the code.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `/proc/cpuinfo` model name.
    pub cpu: String,
    /// CPUs available to this process.
    pub cpus: usize,
    /// `MemTotal`, KiB.
    pub mem_kib: u64,
    /// `uname -r`.
    pub kernel: String,
    /// Filesystem type of the scratch directory.
    pub fs: String,
    /// `git rev-parse --short HEAD`, and the top-level paths of tracked
    /// files that differ from it (formatted for Markdown code spans).
    pub commit: String,
}

impl Machine {
    /// Reads the description; `scratch` is the benchmark's data directory.
    pub fn describe(scratch: &Path) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            mem_kib,
            kernel,
            fs: fs_type(scratch),
            commit: git_commit(),
        }
    }

    /// One line of Markdown.
    pub fn line(&self) -> String {
        format!(
            "{}, {} CPUs, {:.1} GiB RAM, Linux {}, scratch directory on {}",
            self.cpu,
            self.cpus,
            self.mem_kib as f64 / (1024.0 * 1024.0),
            self.kernel,
            self.fs
        )
    }
}

/// Filesystem type of the mount that holds `path` (longest mount point
/// prefix in `/proc/self/mounts`).
fn fs_type(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let mut it = l.split_whitespace();
        let (Some(_dev), Some(mnt), Some(ty)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|b| mnt.len() >= b.0) {
            best = Some((mnt.len(), ty.to_string()));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| "unknown".into())
}

/// The workspace root (this package's parent directory).
pub fn workspace_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest)
}

/// The code's version: `$REFUGE_BENCH_COMMIT` when set (for a build from
/// an exported tree), else from git.
fn git_commit() -> String {
    if let Ok(c) = std::env::var("REFUGE_BENCH_COMMIT")
        && !c.trim().is_empty()
    {
        return c.trim().to_string();
    }
    let root = workspace_root();
    let head = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(head) = head else {
        return "unknown".into();
    };
    // Uncommitted changes to tracked files, by top-level path.
    let dirty: Vec<String> = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| {
            let mut tops: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.get(3..))
                .map(|p| p.split('/').next().unwrap_or(p).to_string())
                .collect();
            tops.sort();
            tops.dedup();
            tops
        })
        .unwrap_or_default();
    if dirty.is_empty() {
        head
    } else {
        format!("{head}` + uncommitted changes in `{}", dirty.join("`, `"))
    }
}
