//! `refuge drill` and `refuge drills`: recovery drills and their history.
//!
//! A drill picks, per tenant, host and source, the snapshot to test (the
//! newest, the newest at or before `--at`, or a random one), restores it
//! into scratch space, re-reads every file against the manifest, runs the
//! `--check` command, records the outcome on the node and writes a report
//! as JSON and Markdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use refuge_client::{
    DrillOptions, DrillReport, NodeDrillReport, Point, ProgressMode, Selection,
    command_config as config, random_u64, run_drill, secs_text,
};
use refuge_core::{format_time_micros, parse_time_micros};
use serde::Serialize;

use crate::{Failure, Outcome, human_bytes, print_json, table};

/// Arguments of `refuge drill`.
pub struct DrillArgs {
    /// Which tenants, hosts and sources.
    pub selection: Selection,
    /// `--at` (RFC 3339).
    pub at: Option<String>,
    /// `--random-point`.
    pub random_point: bool,
    /// `--seed` for `--random-point`.
    pub seed: Option<u64>,
    /// `--check CMD`.
    pub check: Option<String>,
    /// `--check-timeout` seconds (default: `[drill] check_timeout_secs`).
    pub check_timeout_secs: Option<u64>,
    /// `--scratch DIR`.
    pub scratch: Option<PathBuf>,
    /// `--keep`.
    pub keep: bool,
    /// `--report-dir DIR`.
    pub report_dir: PathBuf,
    /// `--no-record`: do not record the result on the node.
    pub no_record: bool,
    /// `--json`: print the report as JSON.
    pub json: bool,
}

/// `refuge drill`.
pub async fn drill(path: &Path, a: DrillArgs) -> Outcome {
    let point = match (&a.at, a.random_point) {
        (Some(_), true) => {
            return Err(Failure::Usage(anyhow!(
                "give either --at or --random-point, not both"
            )));
        }
        (Some(t), false) => {
            Point::At(parse_time_micros(t).map_err(|e| Failure::Usage(anyhow!(e)))?)
        }
        (None, true) => Point::Random(a.seed.unwrap_or_else(random_u64)),
        (None, false) => Point::Latest,
    };
    if a.check_timeout_secs == Some(0) {
        return Err(Failure::Usage(anyhow!(
            "--check-timeout must be at least 1 second"
        )));
    }
    let cfg = config(path)?;
    let key = cfg.tenant_key().map_err(Failure::Usage)?;
    let node = crate::session::open(&cfg.node).await?;
    let opts = DrillOptions {
        scratch: a.scratch.clone().unwrap_or_else(std::env::temp_dir),
        check: a.check.clone(),
        checks: cfg.drill.checks.clone(),
        postgres: cfg.drill.postgres.clone(),
        mariadb: cfg.drill.mariadb.clone(),
        check_timeout: Duration::from_secs(
            a.check_timeout_secs.unwrap_or(cfg.drill.check_timeout_secs),
        ),
        keep: a.keep,
        threads: cfg.limits.restore_threads(),
        key,
        progress: ProgressMode::for_command(a.json),
    };
    let quiet = a.json;
    let id = format!("{:016x}", random_u64());
    let report = run_drill(
        &node,
        &a.selection,
        &point,
        &opts,
        !a.no_record,
        &id,
        |snap| {
            if !quiet {
                eprintln!(
                    "drill: {}/{}/{}: snapshot {} of {} ({})",
                    snap.tenant,
                    snap.host,
                    snap.source,
                    snap.id.short(),
                    format_time_micros(snap.time_micros),
                    human_bytes(snap.logical_bytes)
                );
            }
        },
    )
    .await?;
    let written = write_report(&report, &a.report_dir)
        .with_context(|| format!("writing the report into {}", a.report_dir.display()))?;
    if a.json {
        print_json(&report)?;
    } else {
        print_summary(&report);
        println!(
            "report: {} and {}",
            written.0.display(),
            written.1.display()
        );
    }
    if !report.record_errors.is_empty() {
        return Err(Failure::Failed(anyhow!(
            "the drill's results could not be recorded on the node: {}",
            report.record_errors.join("; ")
        )));
    }
    Ok(if report.passed { 0 } else { 1 })
}

fn print_summary(r: &DrillReport) {
    let mut t = table([
        "Tenant",
        "Host",
        "Source",
        "Snapshot",
        "Time",
        "Files",
        "Failures",
        "RTO",
        "RPO age",
        "Behind newest",
        "Check",
        "Database",
        "Result",
    ]);
    for s in &r.sources {
        t.add_row([
            s.tenant.clone(),
            s.host.clone(),
            s.source.clone(),
            s.snapshot[..8].to_string(),
            s.snapshot_time.clone(),
            s.files_checked.to_string(),
            s.failure_count.to_string(),
            secs_text(s.rto_secs),
            secs_text(s.rpo_age_secs),
            secs_text(s.rpo_behind_newest_secs),
            match &s.check {
                None => "-".into(),
                Some(c) if c.passed => "ok".into(),
                Some(c) => format!("exit {}", c.exit_code),
            },
            match &s.database {
                None => "-".into(),
                Some(db) if db.passed => format!(
                    "up {}, query {}",
                    secs_text(db.recovery_secs),
                    secs_text(db.first_query_secs)
                ),
                Some(_) => "FAILED".into(),
            },
            if s.passed { "PASSED" } else { "FAILED" }.into(),
        ]);
    }
    println!("{t}");
    for s in &r.sources {
        if !s.passed {
            println!(
                "FAILED {}/{}/{}: {}",
                s.tenant,
                s.host,
                s.source,
                s.first_failure()
            );
        }
    }
    for u in &r.unavailable {
        println!("FAILED {}/{}/{}: {}", u.tenant, u.host, u.source, u.reason);
    }
    let failed = r.sources.iter().filter(|s| !s.passed).count() + r.unavailable.len();
    println!(
        "drill {}: {} ({} of {} sources passed)",
        r.id,
        if r.passed { "PASSED" } else { "FAILED" },
        r.sources.len() + r.unavailable.len() - failed,
        r.sources.len() + r.unavailable.len()
    );
}

/// Writes `refuge-drill-TIME-ID.json` and `.md` into `dir`.
fn write_report(r: &DrillReport, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let stamp: String = r
        .started
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(15)
        .collect();
    let base = format!("refuge-drill-{stamp}-{}", r.id);
    let json = dir.join(format!("{base}.json"));
    let md = dir.join(format!("{base}.md"));
    std::fs::write(&json, serde_json::to_vec_pretty(r)?)?;
    std::fs::write(&md, refuge_client::drill_markdown(r))?;
    Ok((json, md))
}

/// One row of `refuge drills --json`.
#[derive(Serialize)]
struct DrillRow {
    seq: u64,
    recorded: String,
    recorded_by: String,
    site: String,
    drill_id: String,
    tenant: String,
    host: String,
    source: String,
    snapshot: String,
    snapshot_time: String,
    passed: bool,
    rto_secs: f64,
    verify_secs: f64,
    rpo_age_secs: f64,
    rpo_behind_newest_secs: f64,
    files_checked: u64,
    bytes_verified: u64,
    failures: u64,
    first_failure: String,
    check_command: String,
    check_exit_code: Option<i32>,
    /// A database source: its restored server started and checked.
    database: Option<refuge_client::RecordedDatabase>,
}

/// `refuge drills`: the node's drill history.
pub async fn drills(path: &Path, sel: Selection, limit: u32, json: bool) -> Outcome {
    let cfg = config(path)?;
    let node = crate::session::open(&cfg.node).await?;
    let rows: Vec<DrillRow> = node
        .list_drills(&sel, limit)
        .await?
        .into_iter()
        .map(|d| DrillRow {
            seq: d.seq,
            recorded: format_time_micros(d.recorded_micros),
            recorded_by: d.recorded_by,
            site: d.site,
            drill_id: d.drill_id,
            tenant: d.tenant,
            host: d.host,
            source: d.source,
            snapshot: d.snapshot.to_hex(),
            snapshot_time: format_time_micros(d.snapshot_time_micros),
            passed: d.passed,
            rto_secs: d.rto_secs,
            verify_secs: d.verify_secs,
            rpo_age_secs: d.age_micros as f64 / 1e6,
            rpo_behind_newest_secs: d.behind_newest_micros as f64 / 1e6,
            files_checked: d.files_checked,
            bytes_verified: d.bytes_verified,
            failures: d.failures,
            first_failure: d.first_failure,
            check_command: d.check_command,
            check_exit_code: d.check_exit_code,
            database: d.database,
        })
        .collect();
    if json {
        print_json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no drills recorded");
        return Ok(0);
    }
    let mut t = table([
        "#", "Recorded", "Site", "Tenant", "Host", "Source", "Snapshot", "Result", "RTO",
        "RPO age", "Files", "By",
    ]);
    for r in &rows {
        t.add_row([
            r.seq.to_string(),
            r.recorded.clone(),
            r.site.clone(),
            r.tenant.clone(),
            r.host.clone(),
            r.source.clone(),
            r.snapshot.chars().take(8).collect(),
            if r.passed {
                "passed".to_string()
            } else {
                format!("FAILED: {}", r.first_failure)
            },
            secs_text(r.rto_secs),
            secs_text(r.rpo_age_secs),
            r.files_checked.to_string(),
            r.recorded_by.clone(),
        ]);
    }
    println!("{t}");
    println!("{} drills", rows.len());
    Ok(0)
}

/// `refuge node-drill start`: asks the node to run a drill itself; with
/// `wait`, follows it to the end and prints its report (exit 1 unless it
/// passed).
pub async fn node_drill_start(
    path: &Path,
    sel: Selection,
    random_point: bool,
    wait: bool,
    json: bool,
) -> Outcome {
    let cfg = config(path)?;
    let node = crate::session::open(&cfg.node).await?;
    let id = node.start_node_drill(&sel, random_point).await?;
    if !wait {
        if json {
            println!("{}", serde_json::json!({ "drill_id": id }));
        } else {
            println!("node drill {id} started; `refuge node-drill report {id}` shows it");
        }
        return Ok(0);
    }
    loop {
        let r = node.node_drill_report(&id).await?;
        if r.state != "running" {
            return show_node_report(&id, r, json, false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `refuge node-drill report ID`.
pub async fn node_drill_report(path: &Path, id: &str, json: bool, markdown: bool) -> Outcome {
    let cfg = config(path)?;
    let node = crate::session::open(&cfg.node).await?;
    let r = node.node_drill_report(id).await?;
    show_node_report(id, r, json, markdown)
}

fn show_node_report(id: &str, r: NodeDrillReport, json: bool, markdown: bool) -> Outcome {
    if json {
        let report: serde_json::Value = if r.report_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&r.report_json).map_err(anyhow::Error::from)?
        };
        let v = serde_json::json!({
            "drill_id": id,
            "state": r.state,
            "error": r.error,
            "report": report,
        });
        print_json(&v)?;
    } else if markdown && !r.report_markdown.is_empty() {
        print!("{}", r.report_markdown);
    } else {
        println!("node drill {id}: {}", r.state);
        if !r.error.is_empty() {
            println!("{}", r.error);
        }
    }
    match r.state.as_str() {
        "passed" | "running" => Ok(0),
        "error" => Err(Failure::Failed(anyhow!(
            "node drill {id} could not run: {}",
            r.error
        ))),
        _ => Ok(1),
    }
}
