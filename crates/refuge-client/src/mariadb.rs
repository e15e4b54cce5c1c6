//! A `mariadb` source's copy: `mariadb-backup --backup` of the running
//! server into a staging directory (InnoDB pages copied while the server
//! runs, the redo log followed, the other engines' files under a brief
//! backup lock), `--prepare` (the redo applied: a data directory that
//! starts as it was at the backup's end), owned like the server's data
//! directory, walked like a tree and removed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow, bail};

use crate::config::{MariadbConfig, SourceConfig};

/// A prepared copy, removed at drop.
pub(crate) struct Staged {
    pub(crate) dir: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(
                "cannot remove the staging directory {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// The end of a tool's output: its error lines if it printed any, else
/// its last lines.
fn tail(text: &str) -> String {
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("denied") || l.contains("failed")
        })
        .collect();
    let lines: Vec<&str> = if errors.is_empty() {
        text.lines().collect()
    } else {
        errors
    };
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

fn run(cfg: &MariadbConfig, args: &[String], what: &str) -> anyhow::Result<()> {
    let o = Command::new(&cfg.mariadb_backup)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!(
                "{what}: {} is not installed (Debian: apt-get install mariadb-backup, or set [source.mariadb] mariadb_backup)",
                cfg.mariadb_backup.display()
            ),
            _ => anyhow!("{what}: cannot run {}: {e}", cfg.mariadb_backup.display()),
        })?;
    if !o.status.success() {
        let mut text = String::from_utf8_lossy(&o.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&o.stdout));
        bail!("{what} failed ({}): {}", o.status, tail(&text));
    }
    Ok(())
}

/// Copies and prepares the server's data for `source` (whose `path` is the
/// server's data directory) in the staging directory.
pub(crate) fn stage(
    cfg: &MariadbConfig,
    source: &SourceConfig,
    state_dir: Option<&Path>,
) -> anyhow::Result<Staged> {
    let datadir = fs::canonicalize(&source.path)
        .with_context(|| format!("source path {}", source.path.display()))?;
    let owner = fs::metadata(&datadir)?;
    let dir = match (&cfg.staging_dir, state_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(s)) => s.join(format!("mariadb-{}", source.name)),
        (None, None) => std::env::temp_dir().join(format!("refuge-mariadb-{}", source.name)),
    };
    if dir.exists() {
        // A copy a killed backup left behind.
        fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
    let staged = Staged { dir: dir.clone() };
    // The password goes in an option file only its owner reads, not on a
    // command line others can see.
    let mut opts = tempfile::Builder::new()
        .prefix(".refuge-mariadb-")
        .suffix(".cnf")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(parent)?;
    let password = match &cfg.password_file {
        Some(f) => fs::read_to_string(f)
            .with_context(|| format!("[source.mariadb] password_file {}", f.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    };
    let mut text = String::new();
    for group in ["client", "mariadb-backup"] {
        text.push_str(&format!(
            "[{group}]\nuser={}\nsocket={}\n",
            cfg.user,
            cfg.socket.display()
        ));
        if !password.is_empty() {
            text.push_str(&format!("password={}\n", password.replace('\n', "")));
        }
    }
    opts.write_all(text.as_bytes())?;
    opts.flush()?;
    let extra = format!("--defaults-extra-file={}", opts.path().display());
    run(
        cfg,
        &[
            extra.clone(),
            "--backup".into(),
            format!("--target-dir={}", dir.display()),
            format!("--datadir={}", datadir.display()),
        ],
        &format!(
            "mariadb-backup of the server at {} as {}",
            cfg.socket.display(),
            cfg.user
        ),
    )?;
    run(
        cfg,
        &[
            extra,
            "--prepare".into(),
            format!("--target-dir={}", dir.display()),
        ],
        "preparing the copy (mariadb-backup --prepare)",
    )?;
    // Owned like the server's data directory, so that a restore as root
    // gives the server its files back.
    if rustix::process::geteuid().is_root() {
        for e in walkdir::WalkDir::new(&dir) {
            let e = e?;
            std::os::unix::fs::lchown(e.path(), Some(owner.uid()), Some(owner.gid()))
                .with_context(|| format!("{}", e.path().display()))?;
        }
    }
    // Let a restored directory keep the server's mode.
    fs::set_permissions(&dir, fs::metadata(&datadir)?.permissions())?;
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tool_s_errors_are_picked_out() {
        let out = "[00] 2026-12-07 Connecting to server host: localhost\n\
                   [00] Failed to connect to MariaDB server: Access denied for user 'refuge'@'localhost' (using password: YES).\n\
                   [00] done\n";
        assert!(tail(out).contains("Access denied"));
        assert_eq!(tail("a\nb\nc\nd\ne\n"), "b | c | d | e");
    }
}
