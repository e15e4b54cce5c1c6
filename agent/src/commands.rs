//! The commands that talk to the node.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use refuge_client::{AgentConfig, RestoreOptions, connect, explain_status, load_config};
use refuge_core::{SnapshotRecord, format_time_micros, parse_time_micros};
use refuge_proto::pb;
use serde::Serialize;

use crate::{Failure, Outcome, human_bytes};

pub(crate) fn config(path: &Path) -> Result<AgentConfig, Failure> {
    load_config(path).map_err(Failure::Usage)
}

pub(crate) fn show_progress(json: bool) -> refuge_client::ProgressMode {
    use refuge_client::ProgressMode;
    if json {
        ProgressMode::Hidden
    } else if std::io::stderr().is_terminal() {
        ProgressMode::Bar
    } else {
        ProgressMode::Log
    }
}

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
    for name in cfg.drill.checks.keys() {
        if !cfg.sources.iter().any(|s| &s.name == name) {
            eprintln!(
                "note: [drill.checks] {name}: not a source of this host (used when drilling another host's source of that name)"
            );
        }
    }
    match &key {
        Some(k) => println!(
            "{}: ok ({} sources; encrypted with the key of tenant {}, fingerprint {})",
            path.display(),
            cfg.sources.len(),
            k.tenant(),
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

/// Backs up one source, trying again (with a fresh connection and the
/// checkpoint of the failed try) after transient failures, up to
/// `[limits] retries` times with doubling waits. Every try commits with the
/// same token, so a commit made by a try whose answer was lost is not
/// made twice.
pub(crate) async fn backup_with_retries(
    cfg: &AgentConfig,
    node: &mut Option<refuge_client::Node>,
    source: &refuge_client::SourceConfig,
    mut opts: refuge_client::BackupOptions,
) -> anyhow::Result<refuge_client::BackupReport> {
    // One token for every try: a try that finds its commit already made
    // (an earlier try's answer was lost) gets that snapshot back.
    opts.commit_token
        .get_or_insert_with(refuge_client::new_commit_token);
    let tries = cfg.limits.retries + 1;
    let mut wait = std::time::Duration::from_secs(1);
    for attempt in 1..=tries {
        let result = match node.clone() {
            Some(n) => refuge_client::backup_source(&n, cfg, source, opts.clone()).await,
            None => match connect(&cfg.node).await {
                Ok(n) => {
                    *node = Some(n.clone());
                    refuge_client::backup_source(&n, cfg, source, opts.clone()).await
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(r) => return Ok(r),
            Err(e) if refuge_client::is_transient(&e) && attempt < tries => {
                tracing::warn!(
                    "source {}: {e:#}; retrying in {}s (try {} of {tries})",
                    source.name,
                    wait.as_secs(),
                    attempt + 1
                );
                *node = None;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
            Err(e) if refuge_client::is_transient(&e) && tries > 1 => {
                return Err(e.context(format!(
                    "giving up after {tries} tries ([limits] retries = {})",
                    cfg.limits.retries
                )));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last try returns")
}

/// Tells the node (if it can be reached) that a source's backup failed,
/// so that its status shows the failure; best effort.
pub(crate) async fn report_failure(node: Option<&refuge_client::Node>, source: &str, error: &str) {
    let Some(n) = node else { return };
    let mut ingest = n.ingest.clone();
    let call = ingest.report_backup_failure(pb::ReportBackupFailureRequest {
        source: source.to_string(),
        error: error.to_string(),
    });
    match tokio::time::timeout(std::time::Duration::from_secs(10), call).await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) => tracing::warn!(
            "cannot report the failure to the node: {}",
            explain_status(&s)
        ),
        Err(_) => tracing::warn!("cannot report the failure to the node: timed out"),
    }
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
            progress: show_progress(json),
            rehash,
            threads: cfg.limits.threads(),
            max_upload_rate: cfg.limits.max_upload_rate,
            memory_budget: cfg.limits.memory_mib << 20,
            state_dir: Some(cfg.state_dir.clone()),
            key: key.clone(),
            commit_token: None,
        };
        match backup_with_retries(&cfg, &mut node, s, opts).await {
            Ok(r) => {
                warned |= r.warning_count > 0;
                if !json {
                    println!(
                        "snapshot {} of {} saved at {}: {} files ({} unchanged), {} read, {} new chunks, {} sent, {:.1}s{}",
                        r.short_id,
                        r.source,
                        r.time,
                        r.files,
                        r.files_unchanged,
                        human_bytes(r.bytes_read),
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

/// One row of `refuge snapshots --json`.
#[derive(Serialize)]
struct SnapshotJson {
    id: String,
    short_id: String,
    time: String,
    time_unix_micros: i64,
    seq: u64,
    tenant: String,
    host: String,
    source: String,
    kind: &'static str,
    files: u64,
    dirs: u64,
    logical_bytes: u64,
    bytes_uploaded: u64,
    warnings: u64,
}

impl From<&SnapshotRecord> for SnapshotJson {
    fn from(s: &SnapshotRecord) -> Self {
        SnapshotJson {
            id: s.id.to_hex(),
            short_id: s.id.short(),
            time: format_time_micros(s.time_micros),
            time_unix_micros: s.time_micros,
            seq: s.seq,
            tenant: s.tenant.to_string(),
            host: s.host.to_string(),
            source: s.source.to_string(),
            kind: s.kind.as_str(),
            files: s.files,
            dirs: s.dirs,
            logical_bytes: s.logical_bytes,
            bytes_uploaded: s.bytes_uploaded,
            warnings: s.warnings,
        }
    }
}

/// Filters for listing and resolving.
#[derive(Default)]
pub struct Filter {
    /// Tenant (one the certificate acts for; any other matches nothing).
    pub tenant: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Source.
    pub source: Option<String>,
}

/// `refuge snapshots`.
pub async fn snapshots(path: &Path, f: Filter, json: bool) -> Outcome {
    let cfg = config(path)?;
    let node = connect(&cfg.node).await?;
    let resp = node
        .restore
        .clone()
        .list_snapshots(pb::ListSnapshotsRequest {
            tenant: f.tenant.unwrap_or_default(),
            host: f.host.unwrap_or_default(),
            source: f.source.unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    let snaps = resp
        .snapshots
        .into_iter()
        .map(refuge_proto::snapshot)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("node's answer: {e}"))?;
    if json {
        let rows: Vec<SnapshotJson> = snaps.iter().map(SnapshotJson::from).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?
        );
        return Ok(0);
    }
    if snaps.is_empty() {
        println!("no snapshots");
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header([
        "ID", "Time", "Host", "Source", "Kind", "Files", "Size", "New",
    ]);
    for s in &snaps {
        t.add_row([
            s.id.short(),
            format_time_micros(s.time_micros),
            s.host.to_string(),
            s.source.to_string(),
            s.kind.as_str().to_string(),
            s.files.to_string(),
            human_bytes(s.logical_bytes),
            human_bytes(s.bytes_uploaded),
        ]);
    }
    println!("{t}");
    println!("{} snapshots", snaps.len());
    Ok(0)
}

/// Arguments of `refuge restore`.
pub struct RestoreArgs {
    /// Id, unique prefix or `latest`.
    pub snapshot: Option<String>,
    /// RFC 3339 point in time.
    pub at: Option<String>,
    /// Narrowing.
    pub filter: Filter,
    /// Target path.
    pub target: PathBuf,
    /// Subtree or file.
    pub include: Option<String>,
    /// JSON summary.
    pub json: bool,
    /// Keep and verify what an interrupted restore already wrote.
    pub resume: bool,
}

/// `refuge restore`.
pub async fn restore(path: &Path, a: RestoreArgs) -> Outcome {
    let at = match (&a.snapshot, &a.at) {
        (Some(_), Some(_)) => {
            return Err(Failure::Usage(anyhow!(
                "give either SNAPSHOT or --at, not both"
            )));
        }
        (None, None) => {
            return Err(Failure::Usage(anyhow!(
                "give a SNAPSHOT (id, prefix or latest) or --at TIME"
            )));
        }
        (None, Some(t)) => parse_time_micros(t).map_err(|e| Failure::Usage(anyhow!(e)))?,
        (Some(_), None) => 0,
    };
    let cfg = config(path)?;
    let node = connect(&cfg.node).await?;
    let snap = node
        .restore
        .clone()
        .resolve_snapshot(pb::ResolveSnapshotRequest {
            selector: a.snapshot.clone().unwrap_or_default(),
            at_unix_micros: at,
            host: a.filter.host.unwrap_or_default(),
            source: a.filter.source.unwrap_or_default(),
            tenant: a.filter.tenant.unwrap_or_default(),
            purpose: "restore".into(),
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    let snap = refuge_proto::snapshot(snap).map_err(|e| anyhow!("node's answer: {e}"))?;
    let report = refuge_client::restore_snapshot(
        &node,
        &snap,
        RestoreOptions {
            target: a.target.clone(),
            include: a.include,
            progress: show_progress(a.json),
            resume: a.resume,
            threads: cfg.limits.restore_threads(),
            key: cfg.tenant_key().map_err(Failure::Usage)?,
        },
    )
    .await
    .map_err(|e| anyhow!("restore of snapshot {} failed: {e:#}", snap.id.short()))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
        );
    } else {
        println!(
            "restored snapshot {} ({} {} at {}) to {}: {} files, {} dirs, {} symlinks, {} ({} fetched, {} kept) in {:.1}s",
            snap.id.short(),
            snap.host,
            snap.source,
            format_time_micros(snap.time_micros),
            a.target.display(),
            report.files,
            report.dirs,
            report.symlinks,
            human_bytes(report.bytes),
            human_bytes(report.bytes_fetched),
            human_bytes(report.bytes_kept),
            report.duration_secs
        );
    }
    Ok(0)
}

#[derive(Serialize)]
struct WhoAmIJson<'a> {
    role: &'a str,
    name: &'a str,
    tenants: &'a [String],
    serial: &'a str,
    node: &'a str,
}

/// `refuge whoami`.
pub async fn whoami(path: &Path, json: bool) -> Outcome {
    let cfg = config(path)?;
    let node = connect(&cfg.node).await?;
    if json {
        let v = WhoAmIJson {
            role: &node.role,
            name: &node.name,
            tenants: &node.tenants,
            serial: &node.serial,
            node: &node.address,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
        );
    } else if node.role == "agent" {
        println!(
            "agent of tenant {} on host {} (serial {}) at node {}",
            node.tenant, node.host, node.serial, node.address
        );
    } else {
        let tenants = if node.tenants.is_empty() {
            "no tenant data".to_string()
        } else if node.tenants == ["*"] {
            "all tenants".to_string()
        } else {
            format!("tenants {}", node.tenants.join(", "))
        };
        println!(
            "{} {} for {tenants} (serial {}) at node {}",
            node.role, node.name, node.serial, node.address
        );
    }
    Ok(0)
}
