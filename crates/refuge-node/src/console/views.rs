//! What the console's templates (`templates/console/*.html`, askama)
//! show, already formatted: pages hold strings and flags, not protobuf
//! messages, so that the templates stay free of logic. Also the
//! formatting of times, sizes and durations the pages share.

use askama::Template;
use refuge_core::format_time_micros;
use refuge_proto::pb;

use crate::catalog::slo::secs;

/// The header of every page: who is signed in, on which node.
pub(crate) struct Nav {
    pub(crate) who: String,
    pub(crate) role: String,
    pub(crate) site: String,
    pub(crate) version: String,
    /// The audit log is in the menu (auditors only).
    pub(crate) audit: bool,
    /// Which menu entry is this page.
    pub(crate) here: &'static str,
}

/// One source in the fleet view or at the top of its page.
pub(crate) struct SourceRow {
    pub(crate) tenant: String,
    pub(crate) host: String,
    pub(crate) source: String,
    pub(crate) href: String,
    pub(crate) snapshots: u64,
    pub(crate) newest: String,
    pub(crate) rpo: String,
    pub(crate) rpo_target: String,
    pub(crate) backup_ok: bool,
    pub(crate) backup_error: String,
    pub(crate) drill: String,
    pub(crate) drill_class: &'static str,
    pub(crate) rto: String,
    pub(crate) breaches: Vec<Breach>,
}

/// One breached target.
pub(crate) struct Breach {
    pub(crate) kind: String,
    pub(crate) detail: String,
}

impl SourceRow {
    pub(crate) fn of(s: &pb::SourceStatus) -> Self {
        let drill_class = match (s.drilled, s.last_drill_passed) {
            (false, _) => "none",
            (true, true) => "ok",
            (true, false) => "bad",
        };
        SourceRow {
            tenant: s.tenant.clone(),
            host: s.host.clone(),
            source: s.source.clone(),
            href: format!("/source/{}/{}/{}", s.tenant, s.host, s.source),
            snapshots: s.snapshots,
            newest: if s.snapshots == 0 {
                "none".into()
            } else {
                time(s.newest_snapshot_unix_micros)
            },
            rpo: if s.snapshots == 0 {
                "—".into()
            } else {
                age(s.rpo_micros)
            },
            rpo_target: target(s.rpo_target_secs),
            backup_ok: s.last_backup_ok,
            backup_error: s.last_backup_error.clone(),
            drill: match (s.drilled, s.last_drill_passed) {
                (false, _) => "never".into(),
                (true, p) => format!(
                    "{} {}",
                    if p { "passed" } else { "FAILED" },
                    time(s.last_drill_unix_micros)
                ),
            },
            drill_class,
            rto: if s.drilled {
                duration(s.last_drill_rto_secs)
            } else {
                "—".into()
            },
            breaches: s
                .breaches
                .iter()
                .map(|b| Breach {
                    kind: b.kind.clone(),
                    detail: b.detail.clone(),
                })
                .collect(),
        }
    }

    /// The row's colour: breached or within every target.
    pub(crate) fn class(&self) -> &'static str {
        if self.breaches.is_empty() {
            "ok"
        } else {
            "breach"
        }
    }

    /// The breach kinds, for the fleet table.
    pub(crate) fn kinds(&self) -> String {
        let k: Vec<&str> = self.breaches.iter().map(|b| b.kind.as_str()).collect();
        k.join(", ")
    }
}

/// One tenant in the fleet view.
pub(crate) struct TenantBlock {
    pub(crate) tenant: String,
    pub(crate) rows: Vec<SourceRow>,
    pub(crate) breached: usize,
    pub(crate) quarantined: usize,
    /// Per peer: "peer (push): lag 5s, 0 pending" or the error.
    pub(crate) replication: Vec<String>,
}

/// `/`: every tenant, host and source in the caller's scope.
/// The second factor's sign-in page.
#[derive(Template)]
#[template(path = "console/login.html")]
pub(crate) struct LoginPage {
    pub(crate) nav: Nav,
    /// Why the last attempt (or the session) failed.
    pub(crate) error: String,
    pub(crate) token: String,
    /// Where to go once signed in.
    pub(crate) next: String,
    pub(crate) idle: String,
    /// A TOTP code is asked for (admins, operators); else a button.
    pub(crate) code: bool,
}

#[derive(Template)]
#[template(path = "console/fleet.html")]
pub(crate) struct Fleet {
    pub(crate) nav: Nav,
    pub(crate) tenants: Vec<TenantBlock>,
    pub(crate) sources: usize,
    pub(crate) breached: usize,
    pub(crate) now: String,
}

/// One snapshot in a source's history.
pub(crate) struct SnapshotRow {
    pub(crate) time: String,
    pub(crate) id: String,
    pub(crate) files: u64,
    pub(crate) size: String,
    pub(crate) uploaded: String,
    pub(crate) duration: String,
}

/// One drill in a source's history or the node's drill list.
pub(crate) struct DrillRow {
    pub(crate) href: String,
    pub(crate) time: String,
    pub(crate) passed: bool,
    pub(crate) rto: String,
    pub(crate) snapshot: String,
    pub(crate) by: String,
    pub(crate) failure: String,
}

impl DrillRow {
    pub(crate) fn of(d: &pb::DrillRecord) -> Self {
        let r = d.result.clone().unwrap_or_default();
        DrillRow {
            href: format!("/drill/{}/{}", r.tenant, d.seq),
            time: time(d.recorded_unix_micros),
            passed: r.passed,
            rto: duration(r.restore_secs),
            snapshot: short_id(&r.snapshot_id),
            by: d.recorded_by.clone(),
            failure: r.first_failure,
        }
    }
}

/// `/source/TENANT/HOST/SOURCE`: one source's history.
#[derive(Template)]
#[template(path = "console/source.html")]
pub(crate) struct SourcePage {
    pub(crate) nav: Nav,
    pub(crate) row: SourceRow,
    pub(crate) rpo_chart: String,
    pub(crate) size_chart: String,
    pub(crate) duration_chart: String,
    pub(crate) rto_chart: String,
    pub(crate) snapshots: Vec<SnapshotRow>,
    pub(crate) snapshots_total: usize,
    pub(crate) drills: Vec<DrillRow>,
    /// The form's token, when the caller may start a drill.
    pub(crate) drill_token: Option<String>,
}

/// `/drill/TENANT/SEQ`: a recorded drill, rendered from its record.
#[derive(Template)]
#[template(path = "console/drill.html")]
pub(crate) struct DrillPage {
    pub(crate) nav: Nav,
    pub(crate) title: String,
    pub(crate) passed: bool,
    pub(crate) source_href: String,
    /// (what, value) in report order.
    pub(crate) facts: Vec<(String, String)>,
    pub(crate) failure: String,
}

/// Markdown (a node drill's report) as HTML. Raw HTML in it (a file name,
/// a check's output) is shown as text, never interpreted.
pub(crate) fn markdown(md: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, html};
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        e => e,
    });
    let mut out = String::new();
    html::push_html(&mut out, events);
    out
}

/// `/drills/ID`: a node drill started from the console (or `StartDrill`).
#[derive(Template)]
#[template(path = "console/node_drill.html")]
pub(crate) struct NodeDrillPage {
    pub(crate) nav: Nav,
    pub(crate) id: String,
    pub(crate) state: String,
    pub(crate) error: String,
    /// The report as HTML ([`markdown`]).
    pub(crate) report: String,
    pub(crate) running: bool,
}

/// One audit record.
pub(crate) struct AuditRow {
    pub(crate) seq: u64,
    pub(crate) time: String,
    pub(crate) subject: String,
    pub(crate) tenant: String,
    pub(crate) event: String,
    pub(crate) outcome: String,
    pub(crate) detail: String,
}

/// `/audit`: the audit log, filtered, newest first, and its chain.
#[derive(Template)]
#[template(path = "console/audit.html")]
pub(crate) struct AuditPage {
    pub(crate) nav: Nav,
    pub(crate) rows: Vec<AuditRow>,
    pub(crate) records: u64,
    pub(crate) matched: u64,
    pub(crate) chain_ok: bool,
    pub(crate) chain: String,
    pub(crate) f_tenant: String,
    pub(crate) f_event: String,
    pub(crate) f_outcome: String,
    pub(crate) f_text: String,
    pub(crate) limit: usize,
}

/// One tenant's storage on the node page.
pub(crate) struct UsageRow {
    pub(crate) tenant: String,
    pub(crate) snapshots: u64,
    pub(crate) logical: String,
    pub(crate) stored: String,
    pub(crate) dedup: String,
    pub(crate) quarantined: usize,
}

/// `/node`: storage, dedup and health.
#[derive(Template)]
#[template(path = "console/node.html")]
pub(crate) struct NodePage {
    pub(crate) nav: Nav,
    /// (what, value, ok).
    pub(crate) health: Vec<(String, String, bool)>,
    pub(crate) usage: Vec<UsageRow>,
    pub(crate) replication: Vec<String>,
}

/// A refusal or an error, with what to do about it.
#[derive(Template)]
#[template(path = "console/message.html")]
pub(crate) struct Message {
    pub(crate) nav: Nav,
    pub(crate) title: String,
    pub(crate) text: String,
}

/// A time as the console shows it: RFC 3339, to the second.
pub(crate) fn time(micros: i64) -> String {
    let t = format_time_micros(micros - micros.rem_euclid(1_000_000));
    t.replace('T', " ")
}

/// How long ago, from an age in µs.
pub(crate) fn age(micros: i64) -> String {
    secs(u64::try_from(micros.max(0) / 1_000_000).unwrap_or(0))
}

/// A target in seconds, or "none".
pub(crate) fn target(s: u64) -> String {
    if s == 0 { "none".into() } else { secs(s) }
}

/// Seconds with one decimal below a minute.
pub(crate) fn duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        secs(s as u64)
    }
}

/// Bytes in binary units.
pub(crate) fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The first 12 hex digits of an id.
pub(crate) fn short_id(id: &[u8]) -> String {
    let mut h = hex::encode(id);
    h.truncate(12);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.5 * 1024.0 * 1024.0), "3.5 MiB");
        assert_eq!(duration(2.25), "2.2s");
        assert_eq!(duration(600.0), "10m");
        assert_eq!(time(1_700_000_000_123_456), "2023-11-14 22:13:20Z");
        assert_eq!(target(0), "none");
        assert_eq!(short_id(&[0xab; 32]), "abababababab");
    }

    #[test]
    fn markdown_reports_render_and_html_in_them_stays_text() {
        let h = markdown(
            "**Result: PASSED**\n\n| a | b |\n|---|---|\n| 1 | <img src=x> |\n\n<script>x</script>\n",
        );
        assert!(h.contains("<strong>Result: PASSED</strong>"), "{h}");
        assert!(h.contains("<table>"), "{h}");
        assert!(!h.contains("<img") && !h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
    }

    #[test]
    fn a_breached_source_renders_as_breached_and_text_is_escaped() {
        let s = pb::SourceStatus {
            tenant: "t".into(),
            host: "h".into(),
            source: "s".into(),
            last_backup_error: "<script>x</script>".into(),
            breaches: vec![pb::SloBreach {
                kind: "rpo".into(),
                detail: "no snapshot".into(),
            }],
            ..Default::default()
        };
        let row = SourceRow::of(&s);
        assert_eq!(row.class(), "breach");
        let page = Fleet {
            nav: Nav {
                who: "auditor:a".into(),
                role: "auditor".into(),
                site: "prov".into(),
                version: "0".into(),
                audit: true,
                here: "fleet",
            },
            tenants: vec![TenantBlock {
                tenant: "t".into(),
                rows: vec![row],
                breached: 1,
                quarantined: 0,
                replication: vec![],
            }],
            sources: 1,
            breached: 1,
            now: "now".into(),
        }
        .render()
        .unwrap();
        assert!(page.contains("class=\"breach\""), "{page}");
        assert!(page.contains("&#60;script&#62;"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
    }
}
