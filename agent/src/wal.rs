//! `refuge-agent wal-push`: PostgreSQL's `archive_command`. Each WAL file
//! the server archives becomes one snapshot of the source's WAL source
//! (`NAME.wal`, kind `postgres-wal`, a tree holding that one file), and the
//! command exits 0 only once the node has committed it, so the server
//! recycles no segment that is not off-site. Restores replay these files
//! to a point in time (`refuge restore --at`).

use std::path::Path;

use anyhow::anyhow;
use refuge_client::{ProgressMode, command_config as config};

use crate::retry::{backup_with_retries, report_failure};
use crate::{Failure, Outcome};

/// Whether `name` is a file PostgreSQL archives: a segment
/// (`000000010000000000000003`), a partial segment (`.partial`), a
/// timeline history (`00000002.history`) or a backup history file
/// (`000000010000000000000003.00000028.backup`).
pub fn is_wal_file_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(name, 24) {
        return true;
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return hex(seg, 24);
    }
    if let Some(tli) = name.strip_suffix(".history") {
        return hex(tli, 8);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        return rest
            .split_once('.')
            .is_some_and(|(seg, off)| hex(seg, 24) && hex(off, 8));
    }
    false
}

/// `refuge-agent wal-push [--source NAME] FILE` (`%p`, relative to the data
/// directory, which is the command's working directory).
pub async fn wal_push(path: &Path, source: Option<&str>, file: &Path, json: bool) -> Outcome {
    let mut cfg = config(path)?;
    // One quick retry at most: the server keeps the file and calls again
    // (after a minute at the latest), and a failure it sees soon shows in
    // pg_stat_archiver.
    cfg.limits.retries = cfg.limits.retries.min(1);
    let base = match source {
        Some(name) => cfg.source(name).map_err(Failure::Usage)?.clone(),
        None => {
            let pg: Vec<_> = cfg
                .sources
                .iter()
                .filter(|s| s.wal_source().is_some())
                .collect();
            match pg.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(Failure::Usage(anyhow!(
                        "no kind = \"postgres\" source in {}",
                        path.display()
                    )));
                }
                _ => {
                    return Err(Failure::Usage(anyhow!(
                        "several postgres sources: name one with --source"
                    )));
                }
            }
        }
    };
    let Some(mut wal) = base.wal_source() else {
        return Err(Failure::Usage(anyhow!(
            "source {:?} is of kind {}, not postgres: only a postgres source's WAL is pushed",
            base.name,
            base.kind.as_str()
        )));
    };
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_wal_file_name(n))
        .ok_or_else(|| {
            Failure::Usage(anyhow!(
                "{} is not a WAL file name (a segment, .partial, .history or .backup file)",
                file.display()
            ))
        })?
        .to_string();
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = std::fs::canonicalize(dir.unwrap_or(Path::new(".")))
        .map_err(|e| Failure::Failed(anyhow!("{}: {e}", file.display())))?;
    let own = std::fs::canonicalize(&wal.path).map_err(|e| {
        Failure::Usage(anyhow!(
            "source {:?}: {}: {e}",
            base.name,
            wal.path.display()
        ))
    })?;
    if dir != own {
        return Err(Failure::Usage(anyhow!(
            "{} is not in source {:?}'s WAL directory {} (archive_command runs in the data directory: pass %p)",
            file.display(),
            base.name,
            own.display()
        )));
    }
    match std::fs::symlink_metadata(dir.join(&name)) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Failure::Failed(anyhow!(
                "{} is not a regular file",
                file.display()
            )));
        }
        Err(e) => return Err(Failure::Failed(anyhow!("{}: {e}", file.display()))),
    }
    wal.path = dir;
    let opts = refuge_client::BackupOptions {
        progress: ProgressMode::for_command(true),
        rehash: false,
        threads: cfg.limits.threads(),
        max_upload_rate: cfg.limits.max_upload_rate,
        memory_budget: cfg.limits.memory_mib << 20,
        // The server's user runs this: no state of the resident agent's.
        state_dir: None,
        key: cfg.tenant_key().map_err(Failure::Usage)?,
        commit_token: None,
        only: Some(name.clone().into_bytes()),
    };
    let mut node = None;
    match backup_with_retries(&cfg, &mut node, &wal, opts).await {
        Ok(r) if r.files == 1 => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(anyhow::Error::from)?
                );
            }
            Ok(0)
        }
        Ok(r) => Err(Failure::Failed(anyhow!(
            "{name} vanished while it was read (snapshot {} holds {} files)",
            r.short_id,
            r.files
        ))),
        Err(e) => {
            let why = format!("{name}: {e:#}");
            report_failure(node.as_ref(), &wal.name, &why).await;
            Err(Failure::Failed(anyhow!(
                "WAL file {name} of source {} was not archived: {e:#}",
                base.name
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_file_names_are_recognised() {
        for ok in [
            "000000010000000000000003",
            "0000000A00000001000000FF",
            "000000010000000000000003.partial",
            "00000002.history",
            "000000010000000000000003.00000028.backup",
        ] {
            assert!(is_wal_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            "00000001000000000000003",
            "000000010000000000000003x",
            "archive_status",
            "0000002.history",
            "000000010000000000000003.backup",
            "../000000010000000000000003",
            "00000001000000000000000G",
        ] {
            assert!(!is_wal_file_name(bad), "{bad}");
        }
    }
}
