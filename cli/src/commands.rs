//! `refuge snapshots`, `refuge restore` and `refuge whoami`.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use refuge_client::{
    ProgressMode, Purpose, RestoreOptions, Selection, SnapshotQuery, command_config as config,
};
use refuge_core::{SnapshotRecord, SourceKind, format_time_micros, parse_time_micros};
use serde::Serialize;

use crate::{Failure, Outcome, human_bytes, print_json, table};

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
    /// How long the backup took as its agent reported it (0: not known).
    duration_secs: f64,
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
            duration_secs: s.duration_micros as f64 / 1e6,
        }
    }
}

/// `refuge snapshots`.
pub async fn snapshots(path: &Path, sel: Selection, json: bool) -> Outcome {
    let cfg = config(path)?;
    let node = crate::session::open(&cfg.node).await?;
    let snaps = node.list_snapshots(&sel).await?;
    if json {
        let rows: Vec<SnapshotJson> = snaps.iter().map(SnapshotJson::from).collect();
        print_json(&rows)?;
        return Ok(0);
    }
    if snaps.is_empty() {
        println!("no snapshots");
        return Ok(0);
    }
    let mut t = table([
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
    pub selection: Selection,
    /// Target path.
    pub target: PathBuf,
    /// Subtree or file.
    pub include: Option<String>,
    /// JSON summary.
    pub json: bool,
    /// Keep and verify what an interrupted restore already wrote.
    pub resume: bool,
    /// A postgres base without its archived WAL.
    pub no_wal: bool,
}

/// `refuge restore --json`: the restore's report, and for a `postgres`
/// base the archived WAL set up for replay.
#[derive(Serialize)]
struct RestoreJson<'a> {
    #[serde(flatten)]
    report: &'a refuge_client::RestoreReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres_wal: Option<&'a refuge_client::WalReplay>,
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
    let node = crate::session::open(&cfg.node).await?;
    let snap = node
        .resolve_snapshot(&SnapshotQuery {
            selector: a.snapshot.clone().unwrap_or_default(),
            at_micros: at,
            selection: a.selection,
            purpose: Purpose::Restore,
        })
        .await?;
    // A postgres base at a point in time, or the latest with everything
    // archived since: its WAL comes too, replayed when the cluster starts.
    let with_wal = snap.kind == SourceKind::Postgres
        && !a.no_wal
        && a.include.is_none()
        && (a.at.is_some() || a.snapshot.as_deref() == Some("latest"));
    let opts = RestoreOptions {
        target: a.target.clone(),
        include: a.include,
        progress: ProgressMode::for_command(a.json),
        resume: a.resume,
        threads: cfg.limits.restore_threads(),
        key: cfg.tenant_key().map_err(Failure::Usage)?,
    };
    // Checked before a byte is written: a point the archive cannot reach
    // fails here.
    let wal = match with_wal {
        true => refuge_client::plan_wal(&node, &snap, a.at.is_some().then_some(at)).await?,
        false => None,
    };
    let report = refuge_client::restore_snapshot(&node, &snap, opts.clone())
        .await
        .map_err(|e| anyhow!("restore of snapshot {} failed: {e:#}", snap.id.short()))?;
    let mut postgres_wal = None;
    if let Some(plan) = wal {
        let w = refuge_client::add_wal(&node, plan, &a.target, &opts)
            .await
            .map_err(|e| {
                anyhow!(
                    "the base {} is restored to {}, but its WAL is not: {e:#}",
                    snap.id.short(),
                    a.target.display()
                )
            })?;
        postgres_wal = Some(w);
    }
    if let Some(g) = postgres_wal.as_ref().and_then(|w| w.gap.as_ref()) {
        eprintln!("warning: {g}");
    }
    if a.json {
        print_json(&RestoreJson {
            report: &report,
            postgres_wal: postgres_wal.as_ref(),
        })?;
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
        if let Some(w) = &postgres_wal {
            println!(
                "added {} archived WAL files ({}, archive up to {}) in {}/{}: the cluster replays them {} when it starts, then promotes",
                w.files,
                human_bytes(w.bytes),
                w.archive_end,
                a.target.display(),
                refuge_client::WAL_DIR,
                match &w.target_time {
                    Some(t) => format!("up to {t}"),
                    None => "to the end of the archive".to_string(),
                }
            );
        } else if snap.kind == SourceKind::Postgres {
            println!(
                "the cluster starts consistent as of the end of this base backup (no archived WAL added)"
            );
        }
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
    let node = crate::session::open(&cfg.node).await?;
    if json {
        let v = WhoAmIJson {
            role: &node.role,
            name: &node.name,
            tenants: &node.tenants,
            serial: &node.serial,
            node: &node.address,
        };
        print_json(&v)?;
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
