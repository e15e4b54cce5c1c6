//! `refuge audit --export FILE` and `refuge audit verify --file FILE`: the
//! audit log as a file an assessor can keep and check without the node.
//!
//! The file is JSON Lines. The first line describes the export:
//! `{"refuge_audit_export": 1, "node", "exported_at", "records", "head",
//! "chain_intact", "broken_at", "reason"}`. Each further line is one
//! record: its fields in words (`seq`, `time`, `subject`, `tenant`,
//! `event`, `outcome`, `detail`, `prev_hash`, `hash`) and `record`, the
//! record's bytes as the node stores them, in hex (docs/format.md, "Audit
//! record"). Checking the file decodes every `record`, checks that the
//! words say what the bytes say, and checks the hash chain from record 1:
//! an edited line, a removed, inserted or reordered one, and a header
//! that claims another head are all found.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use refuge_core::audit::{AuditRecord, verify_chain};
use refuge_core::format_time_micros;
use serde::{Deserialize, Serialize};

/// The version of the export file.
const EXPORT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    refuge_audit_export: u32,
    node: String,
    exported_at: String,
    records: u64,
    head: Option<String>,
    chain_intact: bool,
    broken_at: Option<u64>,
    reason: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    time: String,
    subject: String,
    tenant: String,
    event: String,
    outcome: String,
    detail: String,
    prev_hash: String,
    hash: String,
    record: String,
}

fn hex32(h: &[u8; 32]) -> String {
    hex::encode(h)
}

fn line_of(r: &AuditRecord) -> Line {
    let e = &r.event;
    Line {
        seq: r.seq,
        time: format_time_micros(e.time_micros),
        subject: e.subject.clone(),
        tenant: e.tenant.clone(),
        event: e.event.clone(),
        outcome: e.outcome.clone(),
        detail: e.detail.clone(),
        prev_hash: hex32(&r.prev_hash),
        hash: hex32(&r.hash),
        record: hex::encode(r.encode()),
    }
}

/// What writing or checking an export found.
pub struct Checked {
    /// Records in the file.
    pub records: u64,
    /// `SEQ:HASH` of the last one.
    pub head: Option<String>,
    /// Where and why the chain breaks, if it does.
    pub broken: Option<(u64, String)>,
}

/// Writes `recs` (the whole log, from record 1) to `path` (mode 0600,
/// never overwriting), with the result of checking their chain.
pub fn write(path: &Path, node: &str, recs: &[AuditRecord]) -> anyhow::Result<Checked> {
    let broken = verify_chain(recs, 1, [0; 32])
        .err()
        .map(|b| (b.seq, b.reason));
    let head = recs.last().map(|r| format!("{}:{}", r.seq, hex32(&r.hash)));
    let header = Header {
        refuge_audit_export: EXPORT_VERSION,
        node: node.to_string(),
        exported_at: format_time_micros(
            (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64,
        ),
        records: recs.len() as u64,
        head: head.clone(),
        chain_intact: broken.is_none(),
        broken_at: broken.as_ref().map(|b| b.0),
        reason: broken.as_ref().map(|b| b.1.clone()),
    };
    let mut text = serde_json::to_string(&header)?;
    text.push('\n');
    for r in recs {
        text.push_str(&serde_json::to_string(&line_of(r))?);
        text.push('\n');
    }
    crate::certs::write_new(path, &text, true)?;
    Ok(Checked {
        records: recs.len() as u64,
        head,
        broken,
    })
}

/// Checks an export file: every record decodes and matches its words, the
/// chain holds from record 1, and the header's count and head are the
/// file's. An error is a file that cannot be read at all; a broken chain
/// or a mismatch is `broken`.
pub fn check(path: &Path) -> anyhow::Result<Checked> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let first = lines
        .next()
        .ok_or_else(|| anyhow!("{} is empty", path.display()))??;
    let header: Header = serde_json::from_str(&first)
        .with_context(|| format!("{}: the first line is not an export header", path.display()))?;
    if header.refuge_audit_export != EXPORT_VERSION {
        bail!(
            "{}: export version {} (this build reads {EXPORT_VERSION})",
            path.display(),
            header.refuge_audit_export
        );
    }
    let mut recs = Vec::new();
    let mut broken = None;
    for (i, l) in lines.enumerate() {
        let l = l?;
        let n = i + 2;
        let line: Line = match serde_json::from_str(&l) {
            Ok(x) => x,
            Err(e) => {
                broken.get_or_insert((0, format!("line {n} is not a record: {e}")));
                continue;
            }
        };
        let decoded = hex::decode(&line.record)
            .map_err(|e| e.to_string())
            .and_then(|b| AuditRecord::decode(&b).map_err(|e| e.to_string()));
        match decoded {
            Ok(r) => {
                let words = line_of(&r);
                let same = words.seq == line.seq
                    && words.time == line.time
                    && words.subject == line.subject
                    && words.tenant == line.tenant
                    && words.event == line.event
                    && words.outcome == line.outcome
                    && words.detail == line.detail
                    && words.prev_hash == line.prev_hash
                    && words.hash == line.hash;
                if !same {
                    broken.get_or_insert((
                        line.seq,
                        format!("line {n}: the fields in words differ from the record's bytes"),
                    ));
                }
                recs.push(r);
            }
            Err(e) => {
                broken.get_or_insert((
                    line.seq,
                    format!("line {n}: the record does not decode: {e}"),
                ));
            }
        }
    }
    if let Err(b) = verify_chain(&recs, 1, [0; 32]) {
        broken.get_or_insert((b.seq, b.reason));
    }
    let head = recs.last().map(|r| format!("{}:{}", r.seq, hex32(&r.hash)));
    if broken.is_none() && (header.records != recs.len() as u64 || header.head != head) {
        broken = Some((
            recs.last().map_or(0, |r| r.seq),
            format!(
                "the header says {} records up to {}, the file holds {} up to {}: records were removed from its end",
                header.records,
                header.head.as_deref().unwrap_or("nothing"),
                recs.len(),
                head.as_deref().unwrap_or("nothing")
            ),
        ));
    }
    let _ = std::io::stdout().flush();
    Ok(Checked {
        records: recs.len() as u64,
        head,
        broken,
    })
}
