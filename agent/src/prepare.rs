//! What runs around one source's backup: its `pre` and `post` hooks
//! (`sh -c`, with a timeout) and the filesystem snapshot it is read from
//! (`snapshot = "btrfs"` or `"lvm"`), made before the backup and removed
//! after it whatever happened. The backup itself, with its retries, runs
//! on the snapshot's path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use refuge_client::{AgentConfig, BackupOptions, BackupReport, Node, SnapshotMethod, SourceConfig};

use crate::retry::backup_with_retries;

/// Backs up `source`: `pre`, the snapshot, the backup with its retries on
/// it, the snapshot removed, `post` (also after a failure). A failed
/// `post` after a committed snapshot is a warning of the report.
pub(crate) async fn backup_source_prepared(
    cfg: &AgentConfig,
    node: &mut Option<Node>,
    source: &SourceConfig,
    opts: BackupOptions,
) -> anyhow::Result<BackupReport> {
    let timeout = Duration::from_secs(source.hook_timeout_secs);
    let mut env = vec![
        ("REFUGE_SOURCE".to_string(), source.name.clone()),
        (
            "REFUGE_SOURCE_PATH".to_string(),
            source.path.display().to_string(),
        ),
    ];
    let result = match &source.pre {
        Some(pre) => hook("pre", pre, source, &env, timeout).await,
        None => Ok(()),
    };
    let result = match result {
        Ok(()) => snapshot_and_backup(cfg, node, source, opts).await,
        Err(e) => Err(e),
    };
    let Some(post) = &source.post else {
        return result;
    };
    env.push((
        "REFUGE_BACKUP_RESULT".into(),
        if result.is_ok() { "ok" } else { "failed" }.into(),
    ));
    let after = hook("post", post, source, &env, timeout).await;
    match (result, after) {
        (Ok(mut r), Err(e)) => {
            r.warn(format!("{e:#}"));
            Ok(r)
        }
        (Err(e), Err(p)) => Err(anyhow!("{e:#}; and then {p:#}")),
        (r, Ok(())) => r,
    }
}

/// Runs one hook in the source's directory (or `/` when that is not a
/// directory).
async fn hook(
    which: &str,
    cmd: &str,
    source: &SourceConfig,
    env: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let dir = match source.path.is_dir() {
        true => source.path.clone(),
        false => PathBuf::from("/"),
    };
    let (cmd2, env2) = (cmd.to_string(), env.to_vec());
    let out =
        tokio::task::spawn_blocking(move || refuge_client::run_shell(&cmd2, &dir, &env2, timeout))
            .await
            .map_err(|e| anyhow!("the {which} hook's worker failed: {e}"))?;
    if out.passed {
        return Ok(());
    }
    let tail: Vec<&str> = out.output.trim_end().lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "source {}: {which} hook `{cmd}` {} ({:.1} s){}{}",
        source.name,
        match out.exit_code {
            -1 => "was killed or did not start".to_string(),
            c => format!("exited {c}"),
        },
        out.duration_secs,
        if tail.is_empty() { "" } else { ": " },
        tail.join(" | ")
    )
}

/// The snapshot (if the source wants one), the backup on it, and the
/// snapshot removed.
async fn snapshot_and_backup(
    cfg: &AgentConfig,
    node: &mut Option<Node>,
    source: &SourceConfig,
    opts: BackupOptions,
) -> anyhow::Result<BackupReport> {
    let Some(method) = source.snapshot else {
        return backup_with_retries(cfg, node, source, opts).await;
    };
    let s = source.clone();
    let state = cfg.state_dir.clone();
    let taken = tokio::task::spawn_blocking(move || Taken::make(method, &s, &state))
        .await
        .map_err(|e| anyhow!("the snapshot worker failed: {e}"))?
        .with_context(|| format!("source {}: no backup made", source.name))?;
    let mut on = source.clone();
    on.path = taken.read_from.clone();
    let result = backup_with_retries(cfg, node, &on, opts)
        .await
        .map(|mut r| {
            r.read_from = Some(on.path.display().to_string());
            r
        });
    let removed = tokio::task::spawn_blocking(move || taken.remove())
        .await
        .map_err(|e| anyhow!("the snapshot worker failed: {e}"))
        .and_then(|r| r);
    match (result, removed) {
        (Ok(mut r), Err(e)) => {
            r.warn(format!("the snapshot was not removed: {e:#}"));
            Ok(r)
        }
        (Err(e), Err(p)) => Err(anyhow!("{e:#}; and the snapshot was not removed: {p:#}")),
        (r, Ok(())) => r,
    }
}

/// A snapshot made for one backup.
struct Taken {
    method: SnapshotMethod,
    /// What the backup reads: the snapshot's subvolume, mount point or
    /// device.
    read_from: PathBuf,
    /// LVM: `VG/LV` of the snapshot, and where it is mounted (trees).
    lv: Option<String>,
    mount: Option<PathBuf>,
}

/// Runs a tool; its trimmed standard output, or an error with its
/// standard error. A tool that is not installed says so.
fn tool(program: &str, args: &[&str], what: &str) -> anyhow::Result<String> {
    let o = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!(
                "{what} needs `{program}`, which is not installed ({})",
                match program {
                    "btrfs" => "Debian: apt-get install btrfs-progs",
                    "lvcreate" | "lvs" | "lvremove" => "Debian: apt-get install lvm2",
                    _ => "install it",
                }
            ),
            _ => anyhow!("{what}: cannot run {program}: {e}"),
        })?;
    if !o.status.success() {
        bail!(
            "{what}: `{program} {}` failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The device mounted at `dir` (`/proc/self/mountinfo`) and its
/// filesystem type.
fn mounted_device(dir: &Path) -> anyhow::Result<(String, String)> {
    let want = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: id parent major:minor root mountpoint opts ... - fstype source superopts
    let found = info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mp = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let (fstype, source) = (r.next()?, r.next()?);
        (Path::new(&mp.replace("\\040", " ")) == want)
            .then(|| (source.to_string(), fstype.to_string()))
    });
    found.ok_or_else(|| {
        anyhow!(
            "snapshot = \"lvm\": {} is not a mount point (give the mount point of the logical volume)",
            want.display()
        )
    })
}

impl Taken {
    fn make(method: SnapshotMethod, source: &SourceConfig, state: &Path) -> anyhow::Result<Taken> {
        let name = format!(".refuge-snapshot-{}", source.name);
        match method {
            SnapshotMethod::Btrfs => {
                let path = std::fs::canonicalize(&source.path)
                    .with_context(|| format!("source path {}", source.path.display()))?;
                let parent = path.parent().ok_or_else(|| {
                    anyhow!("snapshot = \"btrfs\": {} has no parent", path.display())
                })?;
                let snap = parent.join(&name);
                let what = "snapshot = \"btrfs\"";
                if snap.exists() {
                    // Left by a backup that was killed: it is ours.
                    tool(
                        "btrfs",
                        &["subvolume", "delete", &snap.to_string_lossy()],
                        what,
                    )?;
                }
                tool(
                    "btrfs",
                    &[
                        "subvolume",
                        "snapshot",
                        "-r",
                        &path.to_string_lossy(),
                        &snap.to_string_lossy(),
                    ],
                    what,
                )?;
                Ok(Taken {
                    method,
                    read_from: snap,
                    lv: None,
                    mount: None,
                })
            }
            SnapshotMethod::Lvm => {
                let what = "snapshot = \"lvm\"";
                let (device, fstype) = match source.kind.is_tree() {
                    true => {
                        let (d, t) = mounted_device(&source.path)?;
                        (d, Some(t))
                    }
                    false => (source.path.display().to_string(), None),
                };
                let vg_lv = tool(
                    "lvs",
                    &["--noheadings", "-o", "vg_name,lv_name", &device],
                    what,
                )
                .with_context(|| format!("{device} is not an LVM logical volume"))?;
                let mut parts = vg_lv.split_whitespace();
                let (Some(vg), Some(lv)) = (parts.next(), parts.next()) else {
                    bail!("{what}: {device} is not an LVM logical volume (lvs: {vg_lv:?})");
                };
                let snap_lv = format!("refuge-snap-{}", source.name.replace('.', "_"));
                let size = source.snapshot_size.as_deref().unwrap_or("1G");
                let origin = format!("{vg}/{lv}");
                tool(
                    "lvcreate",
                    &["--snapshot", "-n", &snap_lv, "-L", size, &origin],
                    what,
                )?;
                let snap_dev = format!("/dev/{vg}/{snap_lv}");
                let full = format!("{vg}/{snap_lv}");
                let Some(fstype) = fstype else {
                    return Ok(Taken {
                        method,
                        read_from: PathBuf::from(snap_dev),
                        lv: Some(full),
                        mount: None,
                    });
                };
                let mnt = state.join(&name);
                let mounted = std::fs::create_dir_all(&mnt)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        let opts = match fstype.as_str() {
                            "xfs" => "ro,nouuid",
                            _ => "ro",
                        };
                        tool(
                            "mount",
                            &["-o", opts, &snap_dev, &mnt.to_string_lossy()],
                            what,
                        )
                    });
                if let Err(e) = mounted {
                    let _ = tool("lvremove", &["-f", &full], what);
                    return Err(e);
                }
                Ok(Taken {
                    method,
                    read_from: mnt.clone(),
                    lv: Some(full),
                    mount: Some(mnt),
                })
            }
        }
    }

    fn remove(self) -> anyhow::Result<()> {
        match self.method {
            SnapshotMethod::Btrfs => tool(
                "btrfs",
                &["subvolume", "delete", &self.read_from.to_string_lossy()],
                "removing the btrfs snapshot",
            )
            .map(|_| ()),
            SnapshotMethod::Lvm => {
                if let Some(m) = &self.mount {
                    tool(
                        "umount",
                        &[&m.to_string_lossy()],
                        "removing the LVM snapshot",
                    )?;
                    let _ = std::fs::remove_dir(m);
                }
                match &self.lv {
                    Some(lv) => {
                        tool("lvremove", &["-f", lv], "removing the LVM snapshot").map(|_| ())
                    }
                    None => Ok(()),
                }
            }
        }
    }
}
