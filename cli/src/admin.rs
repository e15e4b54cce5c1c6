//! `refuge admin`: retention policies, pruning, pins and garbage
//! collection (admin certificates only). The node does the work; these
//! commands ask for it and print what it decided.

use std::path::Path;

use anyhow::anyhow;
use refuge_client::{Node, PruneDecision, Retention, command_config};
use refuge_core::format_time_micros;
use serde::Serialize;

use crate::{Failure, Outcome, human_bytes, print_json, table};

async fn node(cfg: &Path) -> Result<Node, Failure> {
    Ok(crate::session::open(&command_config(cfg)?.node).await?)
}

#[derive(Serialize)]
struct PolicyJson<'a> {
    tenant: &'a str,
    is_default: bool,
    #[serde(flatten)]
    policy: refuge_core::retention::Policy,
    description: String,
}

fn show_policy(p: &Retention, json: bool) -> Outcome {
    if json {
        print_json(&PolicyJson {
            tenant: &p.tenant,
            is_default: p.is_default,
            policy: p.policy,
            description: p.policy.describe(),
        })?;
        return Ok(0);
    }
    println!(
        "retention of tenant {}: {}{}",
        p.tenant,
        p.policy.describe(),
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
    let p = node(cfg).await?.retention(tenant).await?;
    show_policy(&p, json)
}

/// `refuge admin retention set` (or `--reset`).
pub async fn retention_set(
    cfg: &Path,
    tenant: &str,
    p: Option<refuge_core::retention::Policy>,
    json: bool,
) -> Outcome {
    let p = node(cfg).await?.set_retention(tenant, p).await?;
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

impl From<&PruneDecision> for DecisionJson {
    fn from(d: &PruneDecision) -> Self {
        DecisionJson {
            short_id: d.snapshot.short(),
            snapshot: d.snapshot.to_hex(),
            tenant: d.tenant.clone(),
            host: d.host.clone(),
            source: d.source.clone(),
            time: format_time_micros(d.time_micros),
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
    let r = node(cfg).await?.prune(tenant, dry_run).await?;
    let going = r.decisions.iter().filter(|d| !d.keep).count() as u64;
    let kept = r.decisions.len() as u64 - going;
    if json {
        print_json(&PruneJson {
            dry_run,
            removed: r.removed,
            would_remove: if dry_run { going } else { 0 },
            kept,
            decisions: r.decisions.iter().map(DecisionJson::from).collect(),
        })?;
        return Ok(0);
    }
    let mut t = table(["", "ID", "Time", "Tenant", "Host", "Source", "Why kept"]);
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
    let d = node(cfg)
        .await?
        .set_pinned(tenant, snapshot, pinned)
        .await?;
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

/// `refuge admin gc`.
pub async fn gc(cfg: &Path, json: bool) -> Outcome {
    let o = node(cfg).await?.collect_garbage().await?;
    if json {
        print_json(&o)?;
        return Ok(0);
    }
    println!(
        "deleted {} unreferenced chunks ({}); {} examined, {} kept for the {}s grace period",
        o.deleted,
        human_bytes(o.bytes),
        o.examined,
        o.kept_recent,
        o.grace_secs
    );
    if o.packs_deleted + o.packs_rewritten > 0 {
        println!(
            "{} pack objects deleted, {} rewritten without their unused chunks",
            o.packs_deleted, o.packs_rewritten
        );
    }
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
    let r = node(cfg).await?.verify(tenant, sample).await?;
    let corrupt: Vec<CorruptJson> = r
        .corrupt
        .iter()
        .map(|c| CorruptJson {
            tenant: c.tenant.clone(),
            chunk: c.chunk.to_hex(),
            reason: c.reason.clone(),
            snapshots: c.snapshots.iter().map(|s| s.to_hex()).collect(),
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
