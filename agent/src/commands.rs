//! `refuge-agent check-config` and `refuge-agent backup`.

use std::path::Path;

use anyhow::anyhow;
use refuge_client::{ProgressMode, command_config as config};

use crate::retry::report_failure;
use crate::{Failure, Outcome, human_bytes};

/// `refuge-agent check-config`.
pub fn check_config(path: &Path) -> Outcome {
    let cfg = config(path)?;
    for (what, p) in [
        ("ca", &cfg.node.ca),
        ("cert", &cfg.node.cert),
        ("key", &cfg.node.key),
    ] {
        if !p.is_file() {
            return Err(Failure::Usage(anyhow!(
                "[node] {what} = {}: file not found",
                p.display()
            )));
        }
    }
    let key = cfg.tenant_key().map_err(Failure::Usage)?;
    for s in &cfg.sources {
        if let Err(e) = std::fs::metadata(&s.path) {
            eprintln!("warning: source {}: {}: {e}", s.name, s.path.display());
        }
        println!(
            "source {}: {} {}, schedule {}{}{}",
            s.name,
            s.kind.as_str(),
            s.path.display(),
            s.schedule,
            if s.on_change { ", and on change" } else { "" },
            match cfg.drill.checks.get(&s.name) {
                Some(_) => ", drill check configured",
                None => "",
            }
        );
    }
    for b in &cfg.sources {
        if let Some(w) = b.wal_source() {
            println!(
                "source {}: archived WAL goes to source {} with archive_command = '{} -c {} wal-push --source {} %p'",
                b.name,
                w.name,
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "refuge-agent".into()),
                path.display(),
                b.name
            );
        }
    }
    for name in cfg.drill.checks.keys() {
        if !cfg.sources.iter().any(|s| &s.name == name) {
            eprintln!(
                "note: [drill.checks] {name}: not a source of this host (used when drilling another host's source of that name)"
            );
        }
    }
    match &key {
        Some(k) => println!(
            "{}: ok ({} sources; encrypted with the key of tenant {}, suite {} ({}), fingerprint {})",
            path.display(),
            cfg.sources.len(),
            k.tenant(),
            k.suite().as_str(),
            k.suite().describe(),
            k.fingerprint()
        ),
        None => println!(
            "{}: ok ({} sources; NOT encrypted: no [encryption] key_file)",
            path.display(),
            cfg.sources.len()
        ),
    }
    Ok(0)
}

/// `refuge-agent backup`.
pub async fn backup(path: &Path, only: Option<&str>, json: bool, rehash: bool) -> Outcome {
    let cfg = config(path)?;
    let sources: Vec<_> = match only {
        Some(name) => vec![cfg.source(name).map_err(Failure::Usage)?.clone()],
        None => cfg.sources.clone(),
    };
    if sources.is_empty() {
        return Err(Failure::Usage(anyhow!(
            "no [[source]] in {}",
            path.display()
        )));
    }
    let key = cfg.tenant_key().map_err(Failure::Usage)?;
    // Connected on the first try of the first source (and again after a
    // transient failure), so that an unreachable node is retried too.
    let mut node = None;
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    let mut warned = false;
    for s in &sources {
        let opts = refuge_client::BackupOptions {
            progress: ProgressMode::for_command(json),
            rehash,
            threads: cfg.limits.threads(),
            max_upload_rate: cfg.limits.max_upload_rate,
            memory_budget: cfg.limits.memory_mib << 20,
            state_dir: Some(cfg.state_dir.clone()),
            key: key.clone(),
            commit_token: None,
            only: None,
        };
        match crate::prepare::backup_source_prepared(&cfg, &mut node, s, opts).await {
            Ok(r) => {
                warned |= r.warning_count > 0;
                if !json {
                    println!(
                        "snapshot {} of {} saved at {} on {}: {} files ({} unchanged), {} read ({} of it unchanged blocks), {} new chunks, {} sent, {:.1}s{}",
                        r.short_id,
                        r.source,
                        r.time,
                        r.node,
                        r.files,
                        r.files_unchanged,
                        human_bytes(r.bytes_read),
                        human_bytes(r.bytes_unchanged_blocks),
                        r.chunks_new,
                        human_bytes(r.bytes_sent),
                        r.duration_secs,
                        if r.warning_count > 0 {
                            format!(", {} files skipped (see warnings)", r.warning_count)
                        } else {
                            String::new()
                        }
                    );
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("refuge-agent: source {}: {e:#}", s.name);
                report_failure(node.as_ref(), &s.name, &format!("{e:#}")).await;
                failed.push(s.name.clone());
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(anyhow::Error::from)?
        );
    }
    if !failed.is_empty() {
        return Err(Failure::Failed(anyhow!(
            "backup of {} failed",
            failed.join(", ")
        )));
    }
    Ok(if warned { 3 } else { 0 })
}
