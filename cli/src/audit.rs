//! `refuge audit` and `refuge audit verify`: read the node's audit log
//! (auditor certificates only) and check its hash chain here, on the
//! client, over exactly the bytes the node stores; `--export` writes it
//! to a file for assessors and `verify --file` checks such a file
//! (`audit_export`).

use std::path::Path;

use anyhow::{anyhow, bail};
use refuge_client::command_config;
use refuge_core::audit::{AuditRecord, verify_chain};
use refuge_core::{format_time_micros, parse_time_micros};
use serde::Serialize;

use crate::{Failure, Outcome, print_json};

/// One record as `--json` prints it.
#[derive(Serialize)]
struct RecordJson<'a> {
    seq: u64,
    time: String,
    time_unix_micros: i64,
    subject: &'a str,
    tenant: &'a str,
    event: &'a str,
    outcome: &'a str,
    detail: &'a str,
    hash: String,
}

fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every record of the node's log, or of its copy of peer `site`'s,
/// decoded.
async fn read_all(cfg_path: &Path, site: Option<&str>) -> Result<Vec<AuditRecord>, Failure> {
    let node = crate::session::open(&command_config(cfg_path)?.node).await?;
    Ok(node.read_audit_of(1, site).await?)
}

/// `refuge audit --export FILE`: the whole log to a file an assessor can
/// check without the node (`audit_export`); exit 1 if its chain is
/// broken (the file is written all the same, and says so).
pub async fn export(cfg_path: &Path, site: Option<&str>, file: &Path) -> Outcome {
    let cfg = command_config(cfg_path)?;
    let node = crate::session::open(&cfg.node).await?;
    let recs = node.read_audit_of(1, site).await?;
    let from = match site {
        Some(s) => format!("{} (its copy of {s}'s log)", cfg.node.address),
        None => cfg.node.address.clone(),
    };
    let c = crate::audit_export::write(file, &from, &recs)?;
    println!(
        "exported {} audit records to {}; head {}",
        c.records,
        file.display(),
        c.head.as_deref().unwrap_or("(empty)")
    );
    match c.broken {
        None => {
            println!(
                "chain verified on export; check the file anywhere with `refuge audit verify --file {}`",
                file.display()
            );
            Ok(0)
        }
        Some((seq, reason)) => Err(Failure::Failed(anyhow!(
            "exported, but the audit log's chain is broken at record {seq}: {reason}"
        ))),
    }
}

/// `refuge audit verify --file FILE`: checks an export without the node.
pub fn verify_file(file: &Path, json: bool) -> Outcome {
    let c = crate::audit_export::check(file).map_err(Failure::Usage)?;
    if json {
        print_json(&VerifyJson {
            intact: c.broken.is_none(),
            records: c.records,
            head: c.head.clone(),
            broken_at: c.broken.as_ref().map(|b| b.0),
            reason: c.broken.as_ref().map(|b| b.1.clone()),
        })?;
    }
    match c.broken {
        None => {
            if !json {
                println!(
                    "export intact: {} records; head {}",
                    c.records,
                    c.head.as_deref().unwrap_or("(empty)")
                );
            }
            Ok(0)
        }
        Some((seq, reason)) => Err(Failure::Failed(anyhow!(
            "the export's chain is broken at record {seq}: {reason}"
        ))),
    }
}

/// `refuge audit [--since TIME] [--json]`.
pub async fn list(cfg_path: &Path, site: Option<&str>, since: Option<&str>, json: bool) -> Outcome {
    let since = since
        .map(parse_time_micros)
        .transpose()
        .map_err(|e| Failure::Usage(anyhow!(e)))?;
    let recs = read_all(cfg_path, site).await?;
    let intact = verify_chain(&recs, 1, [0; 32]);
    let shown: Vec<&AuditRecord> = recs
        .iter()
        .filter(|r| since.is_none_or(|t| r.event.time_micros >= t))
        .collect();
    if json {
        let rows: Vec<RecordJson<'_>> = shown
            .iter()
            .map(|r| RecordJson {
                seq: r.seq,
                time: format_time_micros(r.event.time_micros),
                time_unix_micros: r.event.time_micros,
                subject: &r.event.subject,
                tenant: &r.event.tenant,
                event: &r.event.event,
                outcome: &r.event.outcome,
                detail: &r.event.detail,
                hash: hex(&r.hash),
            })
            .collect();
        print_json(&rows)?;
    } else {
        for r in &shown {
            let e = &r.event;
            println!(
                "{:>6} {} {:<20} {:<8} {} [{}] {}",
                r.seq,
                format_time_micros(e.time_micros),
                e.event,
                e.outcome,
                e.subject,
                if e.tenant.is_empty() { "-" } else { &e.tenant },
                e.detail
            );
        }
        if shown.is_empty() {
            println!("no audit records");
        }
    }
    if let Err(b) = intact {
        eprintln!(
            "refuge: warning: the audit log's chain is broken at record {}: {} (run `refuge audit verify`)",
            b.seq, b.reason
        );
    }
    Ok(0)
}

/// Parses `SEQ:HASH`.
fn parse_head(s: &str) -> anyhow::Result<(u64, String)> {
    let (seq, hash) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("--expect-head takes SEQ:HASH as printed by a previous verify"))?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| anyhow!("--expect-head: {seq:?} is not a record number"))?;
    let hash = hash.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--expect-head: the hash is 64 hex digits");
    }
    Ok((seq, hash))
}

#[derive(Serialize)]
struct VerifyJson {
    intact: bool,
    records: u64,
    head: Option<String>,
    broken_at: Option<u64>,
    reason: Option<String>,
}

/// `refuge audit verify [--expect-head SEQ:HASH] [--json]`: exit 0 when
/// the chain holds (and contains the expected head), 1 when it does not.
pub async fn verify(
    cfg_path: &Path,
    site: Option<&str>,
    expect_head: Option<&str>,
    json: bool,
) -> Outcome {
    let expect = expect_head
        .map(parse_head)
        .transpose()
        .map_err(Failure::Usage)?;
    let recs = read_all(cfg_path, site).await?;
    let mut result = verify_chain(&recs, 1, [0; 32]).map_err(|b| (b.seq, b.reason));
    if result.is_ok()
        && let Some((seq, hash)) = &expect
    {
        match recs.iter().find(|r| r.seq == *seq) {
            None => {
                result = Err((
                    *seq,
                    format!(
                        "the log ends at record {} but record {seq} was seen before: records were removed from its end",
                        recs.last().map_or(0, |r| r.seq)
                    ),
                ))
            }
            Some(r) if hex(&r.hash) != *hash => {
                result = Err((
                    *seq,
                    "differs from the head seen before: the log was rewritten".into(),
                ))
            }
            Some(_) => {}
        }
    }
    let head = recs.last().map(|r| format!("{}:{}", r.seq, hex(&r.hash)));
    if json {
        let v = VerifyJson {
            intact: result.is_ok(),
            records: recs.len() as u64,
            head: head.clone(),
            broken_at: result.as_ref().err().map(|e| e.0),
            reason: result.as_ref().err().map(|e| e.1.clone()),
        };
        print_json(&v)?;
    }
    match result {
        Ok(()) => {
            if !json {
                println!(
                    "audit log intact: {} records; head {}",
                    recs.len(),
                    head.as_deref().unwrap_or("(empty)")
                );
                println!(
                    "keep the head elsewhere and pass it back with --expect-head to detect removal of the newest records"
                );
            }
            Ok(0)
        }
        Err((seq, reason)) => Err(Failure::Failed(anyhow!(
            "the audit log's chain is broken at record {seq}: {reason}"
        ))),
    }
}
