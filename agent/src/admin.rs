//! `refuge admin`: retention policies, pruning, pins and garbage
//! collection (admin certificates only). The node does the work; these
//! commands ask for it and print what it decided.

use std::path::Path;

use anyhow::anyhow;
use refuge_client::{Node, connect, explain_status, load_config};
use refuge_core::format_time_micros;
use refuge_proto::pb;
use serde::Serialize;

use crate::{Failure, Outcome, human_bytes};

async fn node(cfg: &Path) -> Result<Node, Failure> {
    let cfg = load_config(cfg).map_err(Failure::Usage)?;
    Ok(connect(&cfg.node).await?)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn print_json(v: &impl Serialize) -> Outcome {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?
    );
    Ok(0)
}

#[derive(Serialize)]
struct PolicyJson<'a> {
    tenant: &'a str,
    is_default: bool,
    #[serde(flatten)]
    policy: refuge_core::retention::Policy,
    description: String,
}

fn show_policy(p: &pb::RetentionPolicy, json: bool) -> Outcome {
    let core = refuge_proto::policy(p);
    if json {
        return print_json(&PolicyJson {
            tenant: &p.tenant,
            is_default: p.is_default,
            policy: core,
            description: core.describe(),
        });
    }
    println!(
        "retention of tenant {}: {}{}",
        p.tenant,
        core.describe(),
        if p.is_default {
            " (the node's default)"
        } else {
            ""
        }
    );
    Ok(0)
}

/// `refuge admin retention show`.
pub async fn retention_show(cfg: &Path, tenant: &str, json: bool) -> Outcome {
    let n = node(cfg).await?;
    let p = n
        .admin
        .clone()
        .get_retention(pb::GetRetentionRequest {
            tenant: tenant.into(),
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    show_policy(&p, json)
}

/// `refuge admin retention set` (or `--reset`).
pub async fn retention_set(
    cfg: &Path,
    tenant: &str,
    p: Option<refuge_core::retention::Policy>,
    json: bool,
) -> Outcome {
    let n = node(cfg).await?;
    let req = pb::SetRetentionRequest {
        tenant: tenant.into(),
        reset: p.is_none(),
        policy: p.as_ref().map(refuge_proto::policy_to),
    };
    let p = n
        .admin
        .clone()
        .set_retention(req)
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    show_policy(&p, json)
}

#[derive(Serialize)]
struct DecisionJson {
    snapshot: String,
    short_id: String,
    tenant: String,
    host: String,
    source: String,
    time: String,
    seq: u64,
    keep: bool,
    pinned: bool,
    reasons: Vec<String>,
}

impl From<&pb::PruneDecision> for DecisionJson {
    fn from(d: &pb::PruneDecision) -> Self {
        let id = hex(&d.snapshot_id);
        DecisionJson {
            short_id: id.chars().take(8).collect(),
            snapshot: id,
            tenant: d.tenant.clone(),
            host: d.host.clone(),
            source: d.source.clone(),
            time: format_time_micros(d.time_unix_micros),
            seq: d.seq,
            keep: d.keep,
            pinned: d.pinned,
            reasons: d.reasons.clone(),
        }
    }
}

#[derive(Serialize)]
struct PruneJson {
    dry_run: bool,
    removed: u64,
    would_remove: u64,
    kept: u64,
    decisions: Vec<DecisionJson>,
}

/// `refuge admin prune [--tenant T] [--dry-run]`.
pub async fn prune(cfg: &Path, tenant: Option<&str>, dry_run: bool, json: bool) -> Outcome {
    let n = node(cfg).await?;
    let r = n
        .admin
        .clone()
        .prune(pb::PruneRequest {
            tenant: tenant.unwrap_or_default().into(),
            dry_run,
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    let going = r.decisions.iter().filter(|d| !d.keep).count() as u64;
    let kept = r.decisions.len() as u64 - going;
    if json {
        return print_json(&PruneJson {
            dry_run,
            removed: r.removed,
            would_remove: if dry_run { going } else { 0 },
            kept,
            decisions: r.decisions.iter().map(DecisionJson::from).collect(),
        });
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["", "ID", "Time", "Tenant", "Host", "Source", "Why kept"]);
    for d in &r.decisions {
        let j = DecisionJson::from(d);
        t.add_row([
            if d.keep {
                "keep"
            } else if dry_run {
                "would remove"
            } else {
                "removed"
            }
            .to_string(),
            j.short_id,
            j.time,
            j.tenant,
            j.host,
            j.source,
            j.reasons.join(", "),
        ]);
    }
    if !r.decisions.is_empty() {
        println!("{t}");
    }
    if dry_run {
        println!("dry run: {going} snapshots would be removed, {kept} kept; nothing was changed");
    } else {
        println!(
            "{} snapshots removed, {kept} kept; run `refuge admin gc` (or wait for the schedule) to free their chunks",
            r.removed
        );
    }
    Ok(0)
}

/// `refuge admin pin SNAPSHOT --tenant T [--unpin]`.
pub async fn pin(cfg: &Path, tenant: &str, snapshot: &str, pinned: bool) -> Outcome {
    let n = node(cfg).await?;
    let d = n
        .admin
        .clone()
        .set_pinned(pb::SetPinnedRequest {
            tenant: tenant.into(),
            snapshot: snapshot.into(),
            pinned,
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    let j = DecisionJson::from(&d);
    println!(
        "snapshot {} ({} {} at {}) {}",
        j.short_id,
        j.host,
        j.source,
        j.time,
        if pinned {
            "pinned: retention will never remove it"
        } else {
            "unpinned"
        }
    );
    Ok(0)
}

#[derive(Serialize)]
struct GcJson {
    deleted: u64,
    bytes: u64,
    examined: u64,
    referenced_again: u64,
    kept_recent: u64,
    grace_secs: u64,
}

/// `refuge admin gc`.
pub async fn gc(cfg: &Path, json: bool) -> Outcome {
    let n = node(cfg).await?;
    let o = n
        .admin
        .clone()
        .collect_garbage(pb::CollectGarbageRequest {})
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    if json {
        return print_json(&GcJson {
            deleted: o.deleted,
            bytes: o.bytes,
            examined: o.examined,
            referenced_again: o.referenced_again,
            kept_recent: o.kept_recent,
            grace_secs: o.grace_secs,
        });
    }
    println!(
        "deleted {} unreferenced chunks ({}); {} examined, {} kept for the {}s grace period",
        o.deleted,
        human_bytes(o.bytes),
        o.examined,
        o.kept_recent,
        o.grace_secs
    );
    Ok(0)
}

#[derive(Serialize)]
struct CorruptJson {
    tenant: String,
    chunk: String,
    reason: String,
    snapshots: Vec<String>,
}

#[derive(Serialize)]
struct VerifyJson {
    checked: u64,
    bytes: u64,
    corrupt: Vec<CorruptJson>,
    still_quarantined: u64,
}

/// `refuge admin verify [--tenant T] [--sample PERCENT]`: exit 0 when every
/// checked chunk is intact and nothing is quarantined, 1 otherwise.
pub async fn verify(cfg: &Path, tenant: Option<&str>, sample: u32, json: bool) -> Outcome {
    if !(1..=100).contains(&sample) {
        return Err(Failure::Usage(anyhow!(
            "--sample is a percentage from 1 to 100"
        )));
    }
    let n = node(cfg).await?;
    let r = n
        .admin
        .clone()
        .verify(pb::VerifyRequest {
            tenant: tenant.unwrap_or_default().into(),
            sample_percent: sample,
        })
        .await
        .map_err(|s| anyhow!("{}", explain_status(&s)))?
        .into_inner();
    let corrupt: Vec<CorruptJson> = r
        .corrupt
        .iter()
        .map(|c| CorruptJson {
            tenant: c.tenant.clone(),
            chunk: hex(&c.chunk_id),
            reason: c.reason.clone(),
            snapshots: c.snapshots.iter().map(|s| hex(s)).collect(),
        })
        .collect();
    let clean = corrupt.is_empty() && r.still_quarantined == 0;
    if json {
        print_json(&VerifyJson {
            checked: r.checked,
            bytes: r.bytes,
            corrupt,
            still_quarantined: r.still_quarantined,
        })?;
    } else {
        println!(
            "checked {} chunks ({}){}",
            r.checked,
            human_bytes(r.bytes),
            if sample < 100 {
                format!(", a {sample}% sample")
            } else {
                String::new()
            }
        );
        for c in &corrupt {
            let snaps: Vec<String> = c.snapshots.iter().map(|s| s[..8].to_string()).collect();
            println!(
                "CORRUPT chunk {} of tenant {}: {}; quarantined; used by snapshots: {}",
                c.chunk,
                c.tenant,
                c.reason,
                if snaps.is_empty() {
                    "none".to_string()
                } else {
                    snaps.join(" ")
                }
            );
        }
        if r.still_quarantined > 0 {
            println!(
                "{} chunks quarantined by earlier runs are still waiting for a backup to heal them",
                r.still_quarantined
            );
        }
    }
    if clean {
        if !json {
            println!("no damage found");
        }
        Ok(0)
    } else {
        Err(Failure::Failed(anyhow!(
            "verification found {} corrupt chunks ({} more still quarantined); restores of the snapshots named fail until a backup uploads the chunks again",
            r.corrupt.len(),
            r.still_quarantined
        )))
    }
}
