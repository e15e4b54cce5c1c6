//! `refuge status`: what the supervision platform needs to know, per
//! tenant and source (newest snapshot, recovery point now, last backup,
//! last drill), per tenant (stored bytes, dedup) and of the node
//! (disk, store size, certificate expiry, failed authentications,
//! replication to and from its peers), and the recovery targets
//! (`[slo]`) each source breaches.

use std::path::Path;

use refuge_client::{ReplicationRow, SloBreach, TenantStatus, command_config as config};
use refuge_core::format_time_micros;
use serde::Serialize;

use crate::{Outcome, human_bytes, print_json, table};

#[derive(Serialize)]
struct SourceJson {
    tenant: String,
    host: String,
    source: String,
    snapshots: u64,
    newest_snapshot: String,
    newest_snapshot_time: String,
    rpo_secs: f64,
    newest_logical_bytes: u64,
    last_backup_ok: bool,
    last_backup_time: String,
    last_backup_error: String,
    last_drill: Option<DrillJson>,
    rpo_target_secs: u64,
    drill_age_target_secs: u64,
    breaches: Vec<SloBreach>,
}

#[derive(Serialize)]
struct DrillJson {
    passed: bool,
    time: String,
    rto_secs: f64,
    failure: String,
}

#[derive(Serialize)]
struct NodeJson {
    site: String,
    version: String,
    time: String,
    disk_free_bytes: u64,
    disk_total_bytes: u64,
    disk_reserve_bytes: u64,
    store_bytes: u64,
    ingest_serving: bool,
    node_cert_expires: String,
    ca_cert_expires: String,
    auth_failures_last_hour: u64,
}

#[derive(Serialize)]
struct StatusJson {
    node: NodeJson,
    tenants: Vec<TenantStatus>,
    sources: Vec<SourceJson>,
    replication: Vec<ReplicationRow>,
}

fn age(micros: i64) -> String {
    let s = micros.max(0) / 1_000_000;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}min", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `refuge status`: exit 0, or 1 when a source's last backup or drill
/// failed, ingest is refusing or a replication pass failed (so a check can
/// alert on it).
pub async fn status(path: &Path, tenant: Option<String>, json: bool) -> Outcome {
    let cfg = config(path)?;
    let node = crate::session::open(&cfg.node).await?;
    let r = node.status(tenant.as_deref()).await?;
    let out = StatusJson {
        node: NodeJson {
            site: r.site.clone(),
            version: r.version.clone(),
            time: format_time_micros(r.now_micros),
            disk_free_bytes: r.disk_free_bytes,
            disk_total_bytes: r.disk_total_bytes,
            disk_reserve_bytes: r.disk_reserve_bytes,
            store_bytes: r.store_bytes,
            ingest_serving: r.ingest_serving,
            node_cert_expires: format_time_micros(r.node_cert_not_after_micros),
            ca_cert_expires: format_time_micros(r.ca_cert_not_after_micros),
            auth_failures_last_hour: r.auth_failures_last_hour,
        },
        tenants: r.tenants.clone(),
        sources: r
            .sources
            .iter()
            .map(|s| SourceJson {
                tenant: s.tenant.clone(),
                host: s.host.clone(),
                source: s.source.clone(),
                snapshots: s.snapshots,
                newest_snapshot: s.newest_snapshot.map(|id| id.to_hex()).unwrap_or_default(),
                newest_snapshot_time: format_time_micros(s.newest_snapshot_micros),
                rpo_secs: s.rpo_micros as f64 / 1e6,
                newest_logical_bytes: s.newest_logical_bytes,
                last_backup_ok: s.last_backup_ok,
                last_backup_time: format_time_micros(s.last_backup_micros),
                last_backup_error: s.last_backup_error.clone(),
                last_drill: s.last_drill.as_ref().map(|d| DrillJson {
                    passed: d.passed,
                    time: format_time_micros(d.time_micros),
                    rto_secs: d.rto_secs,
                    failure: d.failure.clone(),
                }),
                rpo_target_secs: s.rpo_target_secs,
                drill_age_target_secs: s.drill_age_target_secs,
                breaches: s.breaches.clone(),
            })
            .collect(),
        replication: r.replication.clone(),
    };
    let healthy = out.node.ingest_serving
        && out.replication.iter().all(|x| x.last_error.is_empty())
        && out
            .sources
            .iter()
            .all(|s| s.last_backup_ok && s.last_drill.as_ref().is_none_or(|d| d.passed));
    if json {
        print_json(&out)?;
        return Ok(if healthy { 0 } else { 1 });
    }
    let n = &out.node;
    println!(
        "node {} (site {}) at {}: disk {} free of {} (reserve {}), store {}, ingest {}",
        n.version,
        n.site,
        n.time,
        human_bytes(n.disk_free_bytes),
        human_bytes(n.disk_total_bytes),
        human_bytes(n.disk_reserve_bytes),
        human_bytes(n.store_bytes),
        if n.ingest_serving {
            "serving"
        } else {
            "REFUSING (disk below its reserve)"
        }
    );
    println!(
        "certificates: node until {}, CA until {}; {} failed authentications in the last hour",
        n.node_cert_expires, n.ca_cert_expires, n.auth_failures_last_hour
    );
    if !out.tenants.is_empty() {
        let mut t = table(["Tenant", "Snapshots", "Logical", "Stored", "Dedup"]);
        for x in &out.tenants {
            t.add_row([
                x.tenant.clone(),
                x.snapshots.to_string(),
                human_bytes(x.logical_bytes),
                human_bytes(x.stored_bytes),
                format!("{:.1}x", x.dedup_ratio),
            ]);
        }
        println!("\n{t}");
    }
    if out.sources.is_empty() {
        println!("\nno snapshots yet");
    } else {
        let mut t = table([
            "Tenant",
            "Host",
            "Source",
            "Newest",
            "RPO",
            "Last backup",
            "Last drill",
            "Breach",
        ]);
        for (s, raw) in out.sources.iter().zip(&r.sources) {
            t.add_row([
                s.tenant.clone(),
                s.host.clone(),
                s.source.clone(),
                if s.snapshots == 0 {
                    "never".to_string()
                } else {
                    s.newest_snapshot_time.clone()
                },
                if s.snapshots == 0 {
                    "-".to_string()
                } else {
                    age(raw.rpo_micros)
                },
                if s.last_backup_ok {
                    "ok".to_string()
                } else {
                    format!("FAILED {}: {}", s.last_backup_time, s.last_backup_error)
                },
                match &s.last_drill {
                    None => "never".to_string(),
                    Some(d) if d.passed => format!("passed {} (RTO {:.1}s)", d.time, d.rto_secs),
                    Some(d) => format!("FAILED {}: {}", d.time, d.failure),
                },
                if s.breaches.is_empty() {
                    "-".to_string()
                } else {
                    let b: Vec<String> = s
                        .breaches
                        .iter()
                        .map(|b| format!("{}: {}", b.kind, b.detail))
                        .collect();
                    b.join("; ")
                },
            ]);
        }
        println!("\n{t}");
    }
    if !out.replication.is_empty() {
        let mut t = table([
            "Peer",
            "Direction",
            "Tenant",
            "Lag",
            "Pending",
            "Sent",
            "Last error",
        ]);
        for x in &out.replication {
            t.add_row([
                format!("{} ({})", x.peer, x.address),
                x.direction.clone(),
                if x.tenant.is_empty() {
                    "-".to_string()
                } else {
                    x.tenant.clone()
                },
                age((x.lag_secs * 1e6) as i64),
                x.pending_snapshots.to_string(),
                format!(
                    "{} snapshots, {} chunks, {}",
                    x.snapshots_sent,
                    x.chunks_sent,
                    human_bytes(x.bytes_sent)
                ),
                if x.last_error.is_empty() {
                    "-".to_string()
                } else {
                    x.last_error.clone()
                },
            ]);
        }
        println!("\nreplication:\n{t}");
    }
    Ok(if healthy { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_well() {
        assert_eq!(super::age(5_000_000), "5s");
        assert_eq!(super::age(600_000_000), "10min");
        assert_eq!(super::age(3 * 3600 * 1_000_000), "3h");
        assert_eq!(super::age(3 * 86400 * 1_000_000), "3d");
        assert_eq!(super::age(-5), "0s");
    }
}
