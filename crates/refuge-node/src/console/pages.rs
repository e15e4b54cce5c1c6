// axum's handlers answer `Result<Response, Response>`: the error is a
// whole page (why the caller may not see this one), not a small value.
#![allow(clippy::result_large_err)]

//! The console's handlers. Each one admits the caller from its
//! certificate (`Access::admit_cert`), decides the tenants in scope the
//! way the gRPC services do (auditors and admins: every tenant; operators:
//! their grant; a tenant outside it looks like one with no data), reads
//! the catalog on a blocking thread and renders a view.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use askama::Template;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use refuge_core::audit::{ChainBreak, verify_chain};
use refuge_core::{HostName, SnapshotRecord, SourceName, TenantId};
use refuge_proto::pb;
use refuge_store::Store;
use refuge_tls::{ClientIdentity, Role};
use serde::Deserialize;
use tonic::{Code, Status};

use super::chart::{Chart, Point};
use super::views::{
    AuditPage, AuditRow, DrillPage, DrillRow, Fleet, Message, Nav, NodeDrillPage, NodePage,
    SnapshotRow, SourcePage, SourceRow, TenantBlock, UsageRow, age, bytes, duration, markdown,
    short_id, time,
};
use super::{Console, Peer};
use crate::catalog::drills::{get_drill, list_drills, report};
use crate::catalog::slo::secs;
use crate::catalog::status::{sources_of, usage_of};
use crate::floor::clock::{now_micros, random_u64};
use crate::floor::store::{blocking, store_status};
use crate::policy::access::Access;
use crate::policy::audit::Outcome;
use crate::work::self_drill::Ask;

/// Who may sign in at all.
pub(super) const SIGN_IN: [Role; 3] = [Role::Operator, Role::Admin, Role::Auditor];
/// Who sees every tenant, and may start drills.
const NODE_WIDE: [Role; 2] = [Role::Admin, Role::Auditor];
/// Points drawn per chart, newest.
const CHART_POINTS: usize = 200;
/// Rows of a source's snapshot table.
const SNAPSHOT_ROWS: usize = 50;
/// Default and largest number of audit records shown.
const AUDIT_ROWS: usize = 200;
const MAX_AUDIT_ROWS: usize = 5000;
/// Audit records read (and their chain checked) per store call.
const AUDIT_BATCH: usize = 1024;

pub(super) async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../templates/console/console.css"),
    )
        .into_response()
}

/// A page, or the page that says why not.
type Page = Result<Response, Response>;

pub(super) fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be rendered: {e}"),
        )
            .into_response(),
    }
}

fn anonymous(c: &Console) -> Nav {
    Nav {
        who: "not signed in".into(),
        role: String::new(),
        site: c.node.facts.site.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        audit: false,
        here: "",
    }
}

pub(super) fn nav(c: &Console, who: &ClientIdentity, here: &'static str) -> Nav {
    Nav {
        who: who.name.clone(),
        role: who.role.to_string(),
        site: c.node.facts.site.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        audit: who.role == Role::Auditor,
        here,
    }
}

/// The page for an error of the catalog or the access checks.
fn refusal(c: &Console, nav: Option<Nav>, s: &Status) -> Response {
    let (code, title, text) = match s.code() {
        Code::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            "Sign in with a client certificate",
            format!(
                "This console needs a client certificate of the auditor, admin or operator role \
                 issued by this node's CA (refuge certs client), installed in your browser. {}.",
                s.message()
            ),
        ),
        Code::PermissionDenied => (
            StatusCode::FORBIDDEN,
            "Not allowed",
            format!("{}.", s.message()),
        ),
        Code::NotFound => (StatusCode::NOT_FOUND, "Not found", s.message().to_string()),
        Code::InvalidArgument => (
            StatusCode::BAD_REQUEST,
            "Bad request",
            s.message().to_string(),
        ),
        Code::FailedPrecondition => (
            StatusCode::CONFLICT,
            "Cannot do that here",
            s.message().to_string(),
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "The node could not answer",
            s.message().to_string(),
        ),
    };
    html(
        code,
        &Message {
            nav: nav.unwrap_or_else(|| anonymous(c)),
            title: title.into(),
            text,
        },
    )
}

/// The caller of `page`, if it may see it.
pub(super) fn admit(
    c: &Console,
    peer: &Peer,
    page: &str,
    roles: &[Role],
) -> Result<ClientIdentity, Response> {
    let leaf = peer.leaf.as_ref().map(|l| Some(l.as_slice()));
    c.node
        .access
        .admit_cert(
            &peer.addr.to_string(),
            leaf,
            &format!("console {page}"),
            roles,
        )
        .map_err(|s| refusal(c, None, &s))
}

/// Tenant `name` if the caller may see it; otherwise NOT_FOUND, exactly
/// as for a tenant with nothing stored.
fn scoped(c: &Console, who: &ClientIdentity, name: &str) -> Result<TenantId, Status> {
    let t = TenantId::new(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let seen = Access::listed_tenants_seen_by(&*c.node.store, who, t.as_str(), &NODE_WIDE)?;
    if seen.is_empty() {
        return Err(Status::not_found(format!("tenant {t} has nothing here")));
    }
    Ok(t)
}

/// Replication rows of `tenant` as one line per peer.
fn replication_lines(rows: &[pb::ReplicationStatus], tenant: Option<&str>) -> Vec<String> {
    rows.iter()
        .filter(|r| tenant.is_none_or(|t| r.tenant == t))
        .map(|r| {
            let what = if r.tenant.is_empty() {
                String::new()
            } else {
                format!(" {}", r.tenant)
            };
            let state = if r.last_error.is_empty() {
                format!(
                    "lag {}, {} pending",
                    secs(r.lag_secs.max(0.0) as u64),
                    r.pending_snapshots
                )
            } else {
                format!("failing: {}", r.last_error)
            };
            format!("{} ({}{what}): {state}", r.peer, r.direction)
        })
        .collect()
}

pub(super) async fn fleet(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Page {
    let who = admit(&c, &peer, "/", &SIGN_IN)?;
    let now = now_micros();
    let (store, slo, w) = (c.node.store.clone(), c.node.slo.clone(), who.clone());
    let read = blocking(move || {
        let tenants = Access::listed_tenants_seen_by(&*store, &w, "", &NODE_WIDE)?;
        let sources = sources_of(&*store, &tenants, &slo, now)?;
        let mut quarantined = Vec::new();
        for t in &tenants {
            quarantined.push(store.list_quarantine(t).map_err(store_status)?.len());
        }
        Ok((tenants, sources, quarantined))
    })
    .await;
    let nav = nav(&c, &who, "fleet");
    let (tenants, sources, quarantined) = match read {
        Ok(x) => x,
        Err(s) => return Err(refusal(&c, Some(nav), &s)),
    };
    let board = c.node.replication.rows();
    let mut blocks = Vec::new();
    for (t, q) in tenants.iter().zip(quarantined) {
        let rows: Vec<SourceRow> = sources
            .iter()
            .filter(|s| s.tenant == t.as_str())
            .map(SourceRow::of)
            .collect();
        let lines = replication_lines(&board, Some(t.as_str()));
        if rows.is_empty() && q == 0 && lines.is_empty() {
            continue;
        }
        blocks.push(TenantBlock {
            tenant: t.to_string(),
            breached: rows.iter().filter(|r| !r.breaches.is_empty()).count(),
            rows,
            quarantined: q,
            replication: lines,
        });
    }
    Ok(html(
        StatusCode::OK,
        &Fleet {
            nav,
            breached: sources.iter().filter(|s| !s.breaches.is_empty()).count(),
            sources: sources.len(),
            tenants: blocks,
            now: time(now),
        },
    ))
}

/// The form token of a certificate: a keyed hash of its serial, so that
/// another site cannot post a form in the signed-in browser's name.
pub(super) fn form_token(c: &Console, who: &ClientIdentity) -> String {
    let h = blake3::keyed_hash(&c.form_key, who.serial.as_bytes());
    hex::encode(&h.as_bytes()[..16])
}

fn chart_time(t: i64) -> String {
    time(t).chars().take(16).collect()
}

pub(super) async fn source(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((tenant, host, source)): Path<(String, String, String)>,
) -> Page {
    let who = admit(&c, &peer, "/source", &SIGN_IN)?;
    let now = now_micros();
    let nav = nav(&c, &who, "fleet");
    let (cc, w) = (c.clone(), who.clone());
    let read = blocking(move || {
        let t = scoped(&cc, &w, &tenant)?;
        let host = HostName::new(host).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let source =
            SourceName::new(source).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let status = sources_of(&*cc.node.store, std::slice::from_ref(&t), &cc.node.slo, now)?
            .into_iter()
            .find(|s| s.host == host.as_str() && s.source == source.as_str())
            .ok_or_else(|| Status::not_found(format!("{t} has no source {host}/{source}")))?;
        let snaps: Vec<SnapshotRecord> = cc
            .node
            .store
            .list_snapshots(&t)
            .map_err(store_status)?
            .into_iter()
            .filter(|s| s.host == host && s.source == source)
            .collect();
        let drills = list_drills(
            &*cc.node.store,
            std::slice::from_ref(&t),
            host.as_str(),
            source.as_str(),
            CHART_POINTS,
        )?;
        Ok((status, snaps, drills))
    })
    .await;
    let (status, snaps, drills) = match read {
        Ok(x) => x,
        Err(s) => return Err(refusal(&c, Some(nav), &s)),
    };
    let recent = &snaps[snaps.len().saturating_sub(CHART_POINTS + 1)..];
    let mut rpo: Vec<Point> = recent
        .windows(2)
        .map(|w| Point {
            t: w[1].time_micros,
            v: (w[1].time_micros - w[0].time_micros) as f64 / 1e6,
            failed: false,
        })
        .collect();
    if let Some(last) = recent.last() {
        rpo.push(Point {
            t: now,
            v: (now - last.time_micros) as f64 / 1e6,
            failed: false,
        });
    }
    let size = |f: fn(&SnapshotRecord) -> u64| -> Vec<Point> {
        recent
            .iter()
            .map(|s| Point {
                t: s.time_micros,
                v: f(s) as f64,
                failed: false,
            })
            .collect()
    };
    let rto: Vec<Point> = drills
        .iter()
        .rev()
        .filter_map(|d| {
            d.result.as_ref().map(|r| Point {
                t: d.recorded_unix_micros,
                v: r.restore_secs,
                failed: !r.passed,
            })
        })
        .collect();
    let rpo_chart = Chart {
        title: "Recovery point over time",
        series: vec![("a", rpo)],
        target: (status.rpo_target_secs > 0).then_some(status.rpo_target_secs as f64),
        unit: |v| secs(v as u64),
        time: chart_time,
    }
    .svg();
    let size_chart = Chart {
        title: "Backup size over time",
        series: vec![
            ("a", size(|s| s.logical_bytes)),
            ("b", size(|s| s.bytes_uploaded)),
        ],
        target: None,
        unit: bytes,
        time: chart_time,
    }
    .svg();
    let duration_chart = Chart {
        title: "Backup duration over time",
        series: vec![(
            "a",
            recent
                .iter()
                .filter(|s| s.duration_micros > 0)
                .map(|s| Point {
                    t: s.time_micros,
                    v: s.duration_micros as f64 / 1e6,
                    failed: false,
                })
                .collect(),
        )],
        target: None,
        unit: duration,
        time: chart_time,
    }
    .svg();
    let rto_chart = Chart {
        title: "Drill restore time over time",
        series: vec![("a", rto)],
        target: None,
        unit: duration,
        time: chart_time,
    }
    .svg();
    let snapshots = snaps
        .iter()
        .rev()
        .take(SNAPSHOT_ROWS)
        .map(|s| SnapshotRow {
            time: time(s.time_micros),
            id: short_id(&s.id.0),
            files: s.files,
            size: bytes(s.logical_bytes as f64),
            uploaded: bytes(s.bytes_uploaded as f64),
            duration: if s.duration_micros == 0 {
                "—".into()
            } else {
                duration(s.duration_micros as f64 / 1e6)
            },
        })
        .collect();
    let drill_token = NODE_WIDE.contains(&who.role).then(|| form_token(&c, &who));
    Ok(html(
        StatusCode::OK,
        &SourcePage {
            nav,
            row: SourceRow::of(&status),
            rpo_chart,
            size_chart,
            duration_chart,
            rto_chart,
            snapshots,
            snapshots_total: snaps.len(),
            drills: drills
                .iter()
                .take(SNAPSHOT_ROWS)
                .map(DrillRow::of)
                .collect(),
            drill_token,
        },
    ))
}

pub(super) async fn drill(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((tenant, seq)): Path<(String, String)>,
) -> Page {
    let who = admit(&c, &peer, "/drill", &SIGN_IN)?;
    let nav = nav(&c, &who, "fleet");
    let (cc, w) = (c.clone(), who.clone());
    let read = blocking(move || {
        let t = scoped(&cc, &w, &tenant)?;
        let n: u64 = seq
            .parse()
            .map_err(|_| Status::invalid_argument(format!("{seq:?} is not a drill number")))?;
        get_drill(&*cc.node.store, &t, n)?
            .ok_or_else(|| Status::not_found(format!("{t} has no drill {n}")))
    })
    .await;
    let d = match read {
        Ok(d) => d,
        Err(s) => return Err(refusal(&c, Some(nav), &s)),
    };
    let r = d.result.clone().unwrap_or_default();
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut facts = vec![
        ("tenant".into(), r.tenant.clone()),
        ("host".into(), r.host.clone()),
        ("source".into(), r.source.clone()),
        ("snapshot".into(), hex::encode(&r.snapshot_id)),
        ("snapshot time".into(), time(r.snapshot_time_unix_micros)),
        ("snapshot size".into(), bytes(r.logical_bytes as f64)),
        ("drill started".into(), time(r.started_unix_micros)),
        ("recorded".into(), time(d.recorded_unix_micros)),
        ("recorded by".into(), d.recorded_by.clone()),
        ("site".into(), d.site.clone()),
        ("restore time (RTO)".into(), duration(r.restore_secs)),
        ("verification time".into(), duration(r.verify_secs)),
        ("files checked".into(), r.files_checked.to_string()),
        ("bytes verified".into(), bytes(r.bytes_verified as f64)),
        ("failures".into(), r.failures.to_string()),
        ("snapshot age at the drill".into(), age(r.age_micros)),
        (
            "behind the newest snapshot".into(),
            age(r.behind_newest_micros),
        ),
    ];
    if r.check_ran {
        facts.push(("check".into(), r.check_command.clone()));
        facts.push(("check exit code".into(), r.check_exit_code.to_string()));
        facts.push(("check time".into(), duration(r.check_secs)));
    }
    if r.database_checked {
        facts.push(("database passed".into(), yes(r.database_passed)));
        facts.push((
            "database recovery".into(),
            duration(r.database_recovery_secs),
        ));
        facts.push((
            "database first query".into(),
            duration(r.database_first_query_secs),
        ));
    }
    if !r.drill_id.is_empty() {
        facts.push(("drill id".into(), r.drill_id.clone()));
    }
    Ok(html(
        StatusCode::OK,
        &DrillPage {
            nav,
            title: format!("Drill {} of {}/{}/{}", d.seq, r.tenant, r.host, r.source),
            passed: r.passed,
            source_href: format!("/source/{}/{}/{}", r.tenant, r.host, r.source),
            facts,
            failure: r.first_failure,
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct DrillForm {
    tenant: String,
    host: String,
    source: String,
    token: String,
    #[serde(default)]
    random_point: Option<String>,
}

pub(super) async fn start_drill(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(f): Form<DrillForm>,
) -> Page {
    let who = admit(&c, &peer, "StartDrill", &NODE_WIDE)?;
    let nav = nav(&c, &who, "fleet");
    if f.token != form_token(&c, &who) {
        return Err(refusal(
            &c,
            Some(nav),
            &Status::permission_denied(
                "the form's token does not belong to your certificate: reload the source's page and try again",
            ),
        ));
    }
    for (what, v) in [
        ("tenant", &f.tenant),
        ("host", &f.host),
        ("source", &f.source),
    ] {
        if v.is_empty() || v.len() > 64 || v.contains('/') {
            return Err(refusal(
                &c,
                Some(nav),
                &Status::invalid_argument(format!("{what} {v:?} is not a name")),
            ));
        }
    }
    let ask = Ask {
        tenant: f.tenant,
        host: f.host,
        source: f.source,
        random_seed: f.random_point.is_some().then(random_u64),
    };
    let (drills, by) = (c.node.drills.clone(), who.subject());
    match blocking(move || drills.start(ask, &by)).await {
        Ok(id) => Ok(Redirect::to(&format!("/drills/{id}")).into_response()),
        Err(s) => Err(refusal(&c, Some(nav), &s)),
    }
}

pub(super) async fn node_drill(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Page {
    let who = admit(&c, &peer, "GetDrillReport", &NODE_WIDE)?;
    let nav = nav(&c, &who, "fleet");
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refusal(
            &c,
            Some(nav),
            &Status::invalid_argument(format!("{id:?} is not a drill id")),
        ));
    }
    let (store, i) = (c.node.store.clone(), id.clone());
    let k = match blocking(move || report(&*store, &i)).await {
        Ok(k) => k,
        Err(s) => return Err(refusal(&c, Some(nav), &s)),
    };
    Ok(html(
        StatusCode::OK,
        &NodeDrillPage {
            nav,
            id,
            running: k.state == "running",
            state: k.state,
            error: k.error,
            report: markdown(&k.report_markdown),
        },
    ))
}

#[derive(Deserialize, Default)]
pub(super) struct AuditFilter {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// What one pass over the audit log found.
struct AuditScan {
    rows: VecDeque<AuditRow>,
    records: u64,
    matched: u64,
    chain: Result<(), ChainBreak>,
}

/// Reads the whole log in batches (memory: one batch and the rows kept),
/// checks its chain and keeps the newest `limit` records that match.
fn scan_audit(store: &dyn Store, f: &AuditFilter, limit: usize) -> Result<AuditScan, Status> {
    let mut scan = AuditScan {
        rows: VecDeque::new(),
        records: 0,
        matched: 0,
        chain: Ok(()),
    };
    let (mut next, mut prev) = (1u64, [0u8; 32]);
    let text = f.text.to_lowercase();
    loop {
        let recs = store.read_audit(next, AUDIT_BATCH).map_err(store_status)?;
        let Some(last) = recs.last() else { break };
        if scan.chain.is_ok() {
            scan.chain = verify_chain(&recs, next, prev);
        }
        (next, prev) = (last.seq + 1, last.hash);
        scan.records += recs.len() as u64;
        for r in &recs {
            let e = &r.event;
            let hit = (f.tenant.is_empty() || e.tenant.split(',').any(|t| t == f.tenant))
                && (f.event.is_empty() || e.event == f.event)
                && (f.outcome.is_empty() || e.outcome == f.outcome)
                && (text.is_empty()
                    || e.detail.to_lowercase().contains(&text)
                    || e.subject.to_lowercase().contains(&text));
            if !hit {
                continue;
            }
            scan.matched += 1;
            if scan.rows.len() == limit {
                scan.rows.pop_front();
            }
            scan.rows.push_back(AuditRow {
                seq: r.seq,
                time: time(e.time_micros),
                subject: e.subject.clone(),
                tenant: e.tenant.clone(),
                event: e.event.clone(),
                outcome: e.outcome.clone(),
                detail: e.detail.clone(),
            });
        }
        if recs.len() < AUDIT_BATCH {
            break;
        }
    }
    Ok(scan)
}

pub(super) async fn audit(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(f): Query<AuditFilter>,
) -> Page {
    let who = admit(&c, &peer, "ReadAudit", &[Role::Auditor])?;
    let nav = nav(&c, &who, "audit");
    let limit = f.limit.unwrap_or(AUDIT_ROWS).clamp(1, MAX_AUDIT_ROWS);
    c.node.access.audit.record(
        &who.subject(),
        "",
        "audit_read",
        Outcome::Ok,
        "console: the audit log page",
    );
    c.node.access.audit.flush().await;
    let store = c.node.store.clone();
    let (scan, f) = match blocking(move || scan_audit(&*store, &f, limit).map(|s| (s, f))).await {
        Ok(x) => x,
        Err(s) => return Err(refusal(&c, Some(nav), &s)),
    };
    let (chain_ok, chain) = match &scan.chain {
        Ok(()) => (
            true,
            format!(
                "Chain verified: records 1 to {} follow each other and match their hashes.",
                scan.records
            ),
        ),
        Err(b) => (
            false,
            format!("Chain BROKEN at record {}: {}", b.seq, b.reason),
        ),
    };
    Ok(html(
        StatusCode::OK,
        &AuditPage {
            nav,
            rows: scan.rows.into_iter().rev().collect(),
            records: scan.records,
            matched: scan.matched,
            chain_ok,
            chain,
            f_tenant: f.tenant,
            f_event: f.event,
            f_outcome: f.outcome,
            f_text: f.text,
            limit,
        },
    ))
}

pub(super) async fn node(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Page {
    let who = admit(&c, &peer, "/node", &SIGN_IN)?;
    let nav = nav(&c, &who, "node");
    let (store, w) = (c.node.store.clone(), who.clone());
    let read = blocking(move || {
        let tenants = Access::listed_tenants_seen_by(&*store, &w, "", &NODE_WIDE)?;
        let usage = usage_of(&*store, &tenants)?;
        let mut quarantined = Vec::new();
        for t in &tenants {
            quarantined.push(store.list_quarantine(t).map_err(store_status)?.len());
        }
        Ok((tenants, usage, quarantined, store.writes_stopped()))
    })
    .await;
    let (tenants, usage, quarantined, stopped) = match read {
        Ok(x) => x,
        Err(s) => return Err(refusal(&c, Some(nav), &s)),
    };
    let d = &c.node.disk;
    let now = now_micros();
    let month = 30 * 86_400 * 1_000_000i64;
    let expiry = |at: i64| {
        (
            if at == 0 { "unknown".into() } else { time(at) },
            at == 0 || at - now > month,
        )
    };
    let (node_cert, node_ok) = expiry(c.node.facts.node_cert_not_after);
    let (ca_cert, ca_ok) = expiry(c.node.facts.ca_cert_not_after);
    let auth = c.node.metrics.auth_failures_last_hour();
    let low = d.low.load(Relaxed);
    let health = vec![
        (
            "ingest".into(),
            if low {
                "refusing: free space below [health] min_free_mib".into()
            } else {
                "serving".into()
            },
            !low,
        ),
        (
            "store writes".into(),
            match &stopped {
                None => "ok".into(),
                Some(e) => format!("stopped: {e}"),
            },
            stopped.is_none(),
        ),
        (
            "disk free".into(),
            format!(
                "{} of {} (reserve {})",
                bytes(d.free.load(Relaxed) as f64),
                bytes(d.total.load(Relaxed) as f64),
                bytes(d.min_free.load(Relaxed) as f64)
            ),
            !low,
        ),
        (
            "store size".into(),
            bytes(d.store_bytes.load(Relaxed) as f64),
            true,
        ),
        ("node certificate expires".into(), node_cert, node_ok),
        ("CA certificate expires".into(), ca_cert, ca_ok),
        (
            "refused sign-ins and calls, last hour".into(),
            auth.to_string(),
            auth < 100,
        ),
        ("site".into(), c.node.facts.site.clone(), true),
    ];
    let usage = usage
        .into_iter()
        .zip(quarantined)
        .map(|(u, q)| UsageRow {
            tenant: u.tenant,
            snapshots: u.snapshots,
            logical: bytes(u.logical_bytes as f64),
            stored: bytes(u.stored_bytes as f64),
            dedup: if u.stored_bytes == 0 {
                "—".into()
            } else {
                format!("{:.2}x", u.dedup_ratio)
            },
            quarantined: q,
        })
        .collect();
    let node_wide = NODE_WIDE.contains(&who.role);
    let rows = c.node.replication.rows_seen(&tenants, node_wide);
    Ok(html(
        StatusCode::OK,
        &NodePage {
            nav,
            health,
            usage,
            replication: replication_lines(&rows, None),
        },
    ))
}

pub(super) async fn not_found(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Page {
    let who = admit(&c, &peer, "/", &SIGN_IN)?;
    Err(refusal(
        &c,
        Some(nav(&c, &who, "")),
        &Status::not_found("no such page"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_lines_name_the_peer_its_lag_or_its_error_per_tenant() {
        let row = |peer: &str, tenant: &str, error: &str| pb::ReplicationStatus {
            peer: peer.into(),
            direction: "push".into(),
            tenant: tenant.into(),
            lag_secs: 125.0,
            pending_snapshots: 3,
            last_error: error.into(),
            ..Default::default()
        };
        let rows = [
            row("dr", "finance", ""),
            row("dr", "health", ""),
            row("dr", "", "connection refused"),
        ];
        assert_eq!(
            replication_lines(&rows, Some("finance")),
            ["dr (push finance): lag 2m, 3 pending"]
        );
        assert_eq!(
            replication_lines(&rows, None)[2],
            "dr (push): failing: connection refused"
        );
    }
}
