//! `refuge drill` and `refuge drills`: recovery drills and their history.
//!
//! A drill picks, per tenant, host and source, the snapshot to test (the
//! newest, the newest at or before `--at`, or a random one), restores it
//! into scratch space, re-reads every file against the manifest, runs the
//! `--check` command, records the outcome on the node and writes a report
//! as JSON and Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use refuge_client::{DrillOptions, SourceDrill, connect, drill_snapshot, explain_status};
use refuge_core::{SnapshotRecord, format_time_micros, parse_time_micros};
use refuge_proto::pb;
use serde::Serialize;

use crate::commands::{Filter, config, show_progress};
use crate::{Failure, Outcome, human_bytes};

/// Which point of each source a drill restores.
#[derive(Debug, Clone)]
pub enum Point {
    /// The newest snapshot.
    Latest,
    /// The newest snapshot at or before this time (microseconds).
    At(i64),
    /// A snapshot chosen at random (seeded, so it can be repeated).
    Random(u64),
}

/// Arguments of `refuge drill`.
pub struct DrillArgs {
    /// Which tenants, hosts and sources.
    pub filter: Filter,
    /// `--at` (RFC 3339).
    pub at: Option<String>,
    /// `--random-point`.
    pub random_point: bool,
    /// `--seed` for `--random-point`.
    pub seed: Option<u64>,
    /// `--check CMD`.
    pub check: Option<String>,
    /// `--check-timeout` seconds.
    pub check_timeout_secs: u64,
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

/// A source that could not be drilled at the chosen point.
#[derive(Debug, Clone, Serialize)]
pub struct Unavailable {
    tenant: String,
    host: String,
    source: String,
    reason: String,
}

/// The whole report of one drill run.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// Random id of this run (also in each node record).
    pub id: String,
    /// The node's address.
    pub node: String,
    /// Who ran it (the certificate's role and name).
    pub run_by: String,
    /// `latest`, `at TIME` or `random (seed N)`.
    pub point: String,
    /// Start and end, RFC 3339.
    pub started: String,
    /// End.
    pub finished: String,
    /// Every source passed and none was unavailable.
    pub passed: bool,
    /// Per source.
    pub sources: Vec<SourceDrill>,
    /// Sources without a snapshot at the chosen point.
    pub unavailable: Vec<Unavailable>,
    /// Node sequence numbers of the recorded results (empty with
    /// `--no-record`).
    pub recorded: Vec<u64>,
    /// The check command given.
    pub check: Option<String>,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // Not security-relevant: only which snapshot is tested.
        return refuge_client::now_micros() as u64;
    }
    u64::from_le_bytes(b)
}

/// Picks the snapshot of one source's history (oldest first) to drill.
pub fn pick<'a>(
    snaps: &'a [SnapshotRecord],
    point: &Point,
    rng: &mut u64,
) -> Option<&'a SnapshotRecord> {
    match point {
        Point::Latest => snaps.last(),
        Point::At(t) => snaps.iter().rev().find(|s| s.time_micros <= *t),
        Point::Random(_) => {
            if snaps.is_empty() {
                None
            } else {
                snaps.get((splitmix(rng) % snaps.len() as u64) as usize)
            }
        }
    }
}

fn secs_text(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1}s")
    } else if s < 7200.0 {
        format!("{:.1}min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1}h", s / 3600.0)
    } else {
        format!("{:.1}d", s / 86400.0)
    }
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
    if a.check_timeout_secs == 0 {
        return Err(Failure::Usage(anyhow!(
            "--check-timeout must be at least 1 second"
        )));
    }
    let cfg = config(path)?;
    let key = cfg.tenant_key().map_err(Failure::Usage)?;
    let node = connect(&cfg.node).await?;
    let started = refuge_client::now_micros();
    let listed = node
        .restore
        .clone()
        .list_snapshots(pb::ListSnapshotsRequest {
            tenant: a.filter.tenant.clone().unwrap_or_default(),
            host: a.filter.host.clone().unwrap_or_default(),
            source: a.filter.source.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner()
        .snapshots
        .into_iter()
        .map(refuge_proto::snapshot)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("node's answer: {e}"))?;
    if listed.is_empty() {
        return Err(Failure::Failed(anyhow!(
            "nothing to drill: no snapshots match (check --tenant, --host and --source)"
        )));
    }
    let mut groups: BTreeMap<(String, String, String), Vec<SnapshotRecord>> = BTreeMap::new();
    for s in listed {
        groups
            .entry((
                s.tenant.to_string(),
                s.host.to_string(),
                s.source.to_string(),
            ))
            .or_default()
            .push(s);
    }
    let mut rng = match point {
        Point::Random(seed) => seed,
        _ => 0,
    };
    let opts = DrillOptions {
        scratch: a.scratch.clone().unwrap_or_else(std::env::temp_dir),
        check: a.check.clone(),
        check_timeout: Duration::from_secs(a.check_timeout_secs),
        keep: a.keep,
        threads: cfg.limits.restore_threads(),
        key,
        progress: show_progress(a.json),
    };
    let id = format!("{:016x}", random_u64());
    let mut report = DrillReport {
        id: id.clone(),
        node: node.address.clone(),
        run_by: format!("{}:{}", node.role, node.name),
        point: match &point {
            Point::Latest => "latest".into(),
            Point::At(t) => format!("at {}", format_time_micros(*t)),
            Point::Random(seed) => format!("random (seed {seed})"),
        },
        started: format_time_micros(started),
        finished: String::new(),
        passed: false,
        sources: Vec::new(),
        unavailable: Vec::new(),
        recorded: Vec::new(),
        check: a.check.clone(),
    };
    let mut record_errors = Vec::new();
    for ((tenant, host, source), mut snaps) in groups {
        snaps.sort_by_key(|s| (s.time_micros, s.seq));
        let newest = snaps.last().map(|s| s.time_micros).unwrap_or(0);
        let Some(snap) = pick(&snaps, &point, &mut rng) else {
            report.unavailable.push(Unavailable {
                tenant,
                host,
                source,
                reason: format!(
                    "no snapshot at or before the drill's point ({})",
                    report.point
                ),
            });
            continue;
        };
        // Resolving it by id records the drill's restore in the audit log.
        node.restore
            .clone()
            .resolve_snapshot(pb::ResolveSnapshotRequest {
                selector: snap.id.to_hex(),
                host: host.clone(),
                source: source.clone(),
                tenant: tenant.clone(),
                purpose: "drill".into(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("{}", explain_status(&s)))?;
        if !a.json {
            eprintln!(
                "drill: {tenant}/{host}/{source}: snapshot {} of {} ({})",
                snap.id.short(),
                format_time_micros(snap.time_micros),
                human_bytes(snap.logical_bytes)
            );
        }
        let d = drill_snapshot(&node, snap, newest, &opts).await;
        tracing::info!(
            target: "refuge::drill",
            tenant = %d.tenant, host = %d.host, source = %d.source,
            snapshot = %d.snapshot, passed = d.passed, rto_secs = d.rto_secs,
            rpo_age_secs = d.rpo_age_secs, files = d.files_checked, failures = d.failure_count,
            "drill finished"
        );
        if !a.no_record {
            match record(&node, &d, &id).await {
                Ok(seq) => report.recorded.push(seq),
                Err(e) => record_errors.push(format!("{tenant}/{host}/{source}: {e:#}")),
            }
        }
        report.sources.push(d);
    }
    report.finished = format_time_micros(refuge_client::now_micros());
    report.passed = report.unavailable.is_empty() && report.sources.iter().all(|s| s.passed);
    let written = write_report(&report, &a.report_dir)
        .with_context(|| format!("writing the report into {}", a.report_dir.display()))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
        );
    } else {
        print_summary(&report);
        println!(
            "report: {} and {}",
            written.0.display(),
            written.1.display()
        );
    }
    if !record_errors.is_empty() {
        return Err(Failure::Failed(anyhow!(
            "the drill's results could not be recorded on the node: {}",
            record_errors.join("; ")
        )));
    }
    Ok(if report.passed { 0 } else { 1 })
}

async fn record(
    node: &refuge_client::Node,
    d: &SourceDrill,
    drill_id: &str,
) -> anyhow::Result<u64> {
    let snapshot_id = hex::decode(&d.snapshot).context("snapshot id")?;
    let check = d.check.as_ref();
    let rec = node
        .supervision
        .clone()
        .record_drill(pb::RecordDrillRequest {
            result: Some(pb::DrillResult {
                tenant: d.tenant.clone(),
                snapshot_id,
                started_unix_micros: d.started_unix_micros,
                passed: d.passed,
                restore_secs: d.rto_secs,
                verify_secs: d.verify_secs,
                check_secs: check.map(|c| c.duration_secs).unwrap_or(0.0),
                age_micros: d.started_unix_micros - d.snapshot_time_unix_micros,
                files_checked: d.files_checked,
                bytes_verified: d.bytes_verified,
                failures: d.failure_count,
                first_failure: d.first_failure(),
                check_command: check.map(|c| c.command.clone()).unwrap_or_default(),
                check_exit_code: check.map(|c| c.exit_code).unwrap_or(0),
                check_ran: check.is_some(),
                drill_id: drill_id.to_string(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    Ok(rec.seq)
}

fn print_summary(r: &DrillReport) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header([
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
    std::fs::write(&md, markdown(r))?;
    Ok((json, md))
}

/// The report as a Markdown page an assessor can read.
pub fn markdown(r: &DrillReport) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Recovery drill {}\n", r.id);
    let _ = writeln!(
        m,
        "**Result: {}**\n",
        if r.passed { "PASSED" } else { "FAILED" }
    );
    let _ = writeln!(m, "| | |\n|---|---|");
    let _ = writeln!(m, "| Node | {} |", r.node);
    let _ = writeln!(m, "| Run by | {} |", r.run_by);
    let _ = writeln!(m, "| Point in time | {} |", r.point);
    let _ = writeln!(m, "| Started | {} |", r.started);
    let _ = writeln!(m, "| Finished | {} |", r.finished);
    let _ = writeln!(
        m,
        "| Check command | {} |",
        r.check
            .as_deref()
            .map(|c| format!("`{c}`"))
            .unwrap_or("none".into())
    );
    let _ = writeln!(
        m,
        "| Recorded on the node | {} |\n",
        if r.recorded.is_empty() {
            "no".to_string()
        } else {
            r.recorded
                .iter()
                .map(|s| format!("#{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        m,
        "| Tenant | Host | Source | Snapshot | Snapshot time | Size | Files checked | Bytes verified | Failures | RTO (restore) | RPO (age) | RPO (behind newest) | Check | Result |"
    );
    let _ = writeln!(
        m,
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for s in &r.sources {
        let _ = writeln!(
            m,
            "| {} | {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** |",
            s.tenant,
            s.host,
            s.source,
            &s.snapshot[..16],
            s.snapshot_time,
            human_bytes(s.logical_bytes),
            s.files_checked,
            human_bytes(s.bytes_verified),
            s.failure_count,
            secs_text(s.rto_secs),
            secs_text(s.rpo_age_secs),
            secs_text(s.rpo_behind_newest_secs),
            match &s.check {
                None => "none".to_string(),
                Some(c) if c.passed => "passed".to_string(),
                Some(c) => format!("failed (exit {})", c.exit_code),
            },
            if s.passed { "PASSED" } else { "FAILED" }
        );
    }
    for u in &r.unavailable {
        let _ = writeln!(
            m,
            "| {} | {} | {} | none | | | | | | | | | | **FAILED** |",
            u.tenant, u.host, u.source
        );
    }
    for s in &r.sources {
        let _ = writeln!(m, "\n## {}/{}/{}\n", s.tenant, s.host, s.source);
        let _ = writeln!(
            m,
            "- Snapshot: `{}` ({}, {})",
            s.snapshot, s.kind, s.snapshot_time
        );
        let _ = writeln!(m, "- Newest snapshot of this source: {}", s.newest_time);
        let _ = writeln!(m, "- Drill started: {}", s.started);
        let _ = writeln!(
            m,
            "- Restore (RTO): {:.2} s; verification: {:.2} s",
            s.rto_secs, s.verify_secs
        );
        let _ = writeln!(
            m,
            "- Restored to: `{}` ({})",
            s.restored_to,
            if s.kept {
                "kept"
            } else {
                "removed after the drill"
            }
        );
        if s.failures.is_empty() {
            let _ = writeln!(
                m,
                "- Every file, directory and symlink matched the manifest ({} entries, {}).",
                s.files_checked,
                human_bytes(s.bytes_verified)
            );
        } else {
            let _ = writeln!(m, "- Failures ({}):", s.failure_count);
            for f in &s.failures {
                if f.path.is_empty() {
                    let _ = writeln!(m, "  - {}", f.reason);
                } else {
                    let _ = writeln!(m, "  - `{}`: {}", f.path, f.reason);
                }
            }
        }
        if let Some(c) = &s.check {
            let _ = writeln!(
                m,
                "- Check `{}`: {} (exit {}, {:.2} s)",
                c.command,
                if c.passed { "passed" } else { "FAILED" },
                c.exit_code,
                c.duration_secs
            );
            if !c.output.is_empty() {
                let _ = writeln!(
                    m,
                    "\n```text\n{}\n```",
                    c.output.trim_end().replace("```", "'''")
                );
            }
        }
    }
    for u in &r.unavailable {
        let _ = writeln!(
            m,
            "\n## {}/{}/{}\n\n- {}",
            u.tenant, u.host, u.source, u.reason
        );
    }
    m
}

/// One row of `refuge drills --json`.
#[derive(Serialize)]
struct DrillRow {
    seq: u64,
    recorded: String,
    recorded_by: String,
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
}

/// `refuge drills`: the node's drill history.
pub async fn drills(path: &Path, f: Filter, limit: u32, json: bool) -> Outcome {
    let cfg = config(path)?;
    let node = connect(&cfg.node).await?;
    let list = node
        .supervision
        .clone()
        .list_drills(pb::ListDrillsRequest {
            tenant: f.tenant.unwrap_or_default(),
            host: f.host.unwrap_or_default(),
            source: f.source.unwrap_or_default(),
            limit,
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner()
        .drills;
    let rows: Vec<DrillRow> = list
        .into_iter()
        .map(|d| {
            let r = d.result.unwrap_or_default();
            DrillRow {
                seq: d.seq,
                recorded: format_time_micros(d.recorded_unix_micros),
                recorded_by: d.recorded_by,
                drill_id: r.drill_id,
                tenant: r.tenant,
                host: r.host,
                source: r.source,
                snapshot: hex::encode(&r.snapshot_id),
                snapshot_time: format_time_micros(r.snapshot_time_unix_micros),
                passed: r.passed,
                rto_secs: r.restore_secs,
                verify_secs: r.verify_secs,
                rpo_age_secs: r.age_micros as f64 / 1e6,
                rpo_behind_newest_secs: r.behind_newest_micros as f64 / 1e6,
                files_checked: r.files_checked,
                bytes_verified: r.bytes_verified,
                failures: r.failures,
                first_failure: r.first_failure,
                check_command: r.check_command,
                check_exit_code: r.check_ran.then_some(r.check_exit_code),
            }
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?
        );
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no drills recorded");
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header([
        "#", "Recorded", "Tenant", "Host", "Source", "Snapshot", "Result", "RTO", "RPO age",
        "Files", "By",
    ]);
    for r in &rows {
        t.add_row([
            r.seq.to_string(),
            r.recorded.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_points_are_repeatable_and_cover_the_history() {
        let snaps: Vec<SnapshotRecord> = Vec::new();
        let mut rng = 1;
        assert!(pick(&snaps, &Point::Random(1), &mut rng).is_none());
        assert!(pick(&snaps, &Point::Latest, &mut rng).is_none());
        let mut a = 42;
        let mut b = 42;
        let xs: Vec<u64> = (0..50).map(|_| splitmix(&mut a) % 5).collect();
        let ys: Vec<u64> = (0..50).map(|_| splitmix(&mut b) % 5).collect();
        assert_eq!(xs, ys);
        for k in 0..5 {
            assert!(xs.contains(&k), "{k} never picked in {xs:?}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(secs_text(1.25), "1.2s");
        assert_eq!(secs_text(600.0), "10.0min");
        assert_eq!(secs_text(7200.0), "2.0h");
        assert_eq!(secs_text(3.0 * 86400.0), "3.0d");
    }
}
