//! Drills the node runs itself: on request (`StartDrill`) and, with
//! `[drill] window`, unannounced every day at a random time in the window.
//!
//! The node drills as a DR operator would: it connects to its own gRPC
//! port with `[drill] client_config` (an operator certificate) and runs
//! the same drill as `refuge drill` (`refuge_client::run_drill`): restore
//! into scratch space, verify every file against the manifest, measure,
//! record the result. So a node drill tests the real path a restore takes
//! after a disaster, TLS and all, and needs no key it should not have
//! (an encrypted tenant's key is in that client configuration, or its
//! drill fails saying so).
//!
//! Reports are kept as settings `drill_report/ID`: a version byte (1) and
//! JSON `{state, error, report_json, report_markdown}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use refuge_client::{DrillOptions, DrillSelection, Point, ProgressMode};
use refuge_proto::pb;
use refuge_store::Store;
use serde::{Deserialize, Serialize};
use tonic::Status;
use tracing::{info, warn};

use crate::audit::{AuditLog, Outcome};
use crate::config::DrillConfig;
use crate::service::store_status;

const REPORT_VERSION: u8 = 1;

fn report_key(id: &str) -> String {
    format!("drill_report/{id}")
}

/// What is kept of a node drill.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Kept {
    state: String,
    error: String,
    report_json: String,
    report_markdown: String,
}

/// The node's own drills.
pub(crate) struct NodeDrills {
    cfg: DrillConfig,
    store: Arc<dyn Store>,
    audit: AuditLog,
    /// One node drill at a time; others wait their turn.
    one: tokio::sync::Semaphore,
}

impl NodeDrills {
    pub(crate) fn new(cfg: DrillConfig, store: Arc<dyn Store>, audit: AuditLog) -> Arc<Self> {
        Arc::new(NodeDrills {
            cfg,
            store,
            audit,
            one: tokio::sync::Semaphore::new(1),
        })
    }

    fn keep(&self, id: &str, k: &Kept) -> Result<(), Status> {
        let mut v = vec![REPORT_VERSION];
        v.extend_from_slice(&serde_json::to_vec(k).map_err(|e| Status::internal(e.to_string()))?);
        self.store
            .put_setting(&report_key(id), Some(&v))
            .map_err(store_status)
    }

    /// Starts a drill in the background and returns its id.
    pub(crate) fn start(
        self: &Arc<Self>,
        sel: DrillSelection,
        point: Point,
        by: &str,
    ) -> Result<String, Status> {
        let Some(client) = self.cfg.client_config.clone() else {
            return Err(Status::failed_precondition(
                "this node runs no drills: [drill] client_config is not set in node.toml",
            ));
        };
        let id = format!("{:016x}", refuge_client::random_u64());
        self.keep(
            &id,
            &Kept {
                state: "running".into(),
                ..Default::default()
            },
        )?;
        self.audit.record(
            by,
            &sel.tenant,
            "drill_requested",
            Outcome::Ok,
            &format!(
                "node drill {id} of {}/{}/{} ({})",
                or_all(&sel.tenant),
                or_all(&sel.host),
                or_all(&sel.source),
                point.describe()
            ),
        );
        let me = self.clone();
        let run_id = id.clone();
        tokio::spawn(async move {
            let _turn = me.one.acquire().await;
            let kept = match me.run(client, &sel, &point, &run_id).await {
                Ok(r) => Kept {
                    state: if r.passed { "passed" } else { "failed" }.into(),
                    error: r.record_errors.join("; "),
                    report_json: serde_json::to_string_pretty(&r).unwrap_or_default(),
                    report_markdown: refuge_client::drill_markdown(&r),
                },
                Err(e) => Kept {
                    state: "error".into(),
                    error: format!("{e:#}"),
                    ..Default::default()
                },
            };
            info!(drill = %run_id, state = %kept.state, error = %kept.error, "node drill finished");
            if let Err(e) = me.keep(&run_id, &kept) {
                warn!(drill = %run_id, error = %e.message(), "cannot keep the node drill's report");
            }
        });
        Ok(id)
    }

    async fn run(
        &self,
        client: PathBuf,
        sel: &DrillSelection,
        point: &Point,
        id: &str,
    ) -> anyhow::Result<refuge_client::DrillReport> {
        let cfg = refuge_client::load_config(&client)?;
        let key = cfg.tenant_key()?;
        let node = refuge_client::connect(&cfg.node).await?;
        let opts = DrillOptions {
            scratch: self
                .cfg
                .scratch_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            check: None,
            checks: cfg.drill.checks.clone(),
            check_timeout: Duration::from_secs(cfg.drill.check_timeout_secs),
            keep: false,
            threads: cfg.limits.restore_threads(),
            key,
            progress: ProgressMode::Hidden,
        };
        refuge_client::run_drill(&node, sel, point, &opts, true, id, |_| {}).await
    }

    /// The state and report of drill `id`.
    pub(crate) fn report(&self, id: &str) -> Result<pb::GetDrillReportResponse, Status> {
        let v = self
            .store
            .get_setting(&report_key(id))
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no node drill with id {id:?}")))?;
        let k: Kept = match v.split_first() {
            Some((&REPORT_VERSION, rest)) => serde_json::from_slice(rest)
                .map_err(|e| Status::data_loss(format!("stored drill report {id}: {e}")))?,
            _ => {
                return Err(Status::data_loss(format!(
                    "stored drill report {id} has an unknown version"
                )));
            }
        };
        Ok(pb::GetDrillReportResponse {
            state: k.state,
            error: k.error,
            report_json: k.report_json,
            report_markdown: k.report_markdown,
        })
    }

    /// Every day, a drill of everything at a random time of the window.
    pub(crate) async fn scheduled(
        self: Arc<Self>,
        window: (u32, u32),
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut after = chrono::Local::now();
        loop {
            let (lo, hi) = next_window(after, window);
            let span = (hi - lo).num_seconds().max(1) as u64;
            let at = lo + chrono::Duration::seconds((refuge_client::random_u64() % span) as i64);
            let wait = (at - chrono::Local::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let point = if self.cfg.random_point {
                Point::Random(refuge_client::random_u64())
            } else {
                Point::Latest
            };
            if let Err(e) = self.start(DrillSelection::default(), point, "node (schedule)") {
                self.audit.record(
                    "node (schedule)",
                    "",
                    "drill_requested",
                    Outcome::Failed,
                    e.message(),
                );
            }
            // The next drill is in a later window.
            after = hi;
        }
    }
}

fn or_all(s: &str) -> &str {
    if s.is_empty() { "*" } else { s }
}

/// The first window `[start, end)` that ends after `after` and does not
/// start before the day of `after`, clipped to start no earlier than
/// `after`.
fn next_window(
    after: chrono::DateTime<chrono::Local>,
    (a, b): (u32, u32),
) -> (
    chrono::DateTime<chrono::Local>,
    chrono::DateTime<chrono::Local>,
) {
    use chrono::TimeZone;
    let day = after.date_naive();
    for offset in -1..=2i64 {
        let d = day + chrono::Days::new(0) + chrono::Duration::days(offset);
        let Some(midnight) = d
            .and_hms_opt(0, 0, 0)
            .and_then(|m| chrono::Local.from_local_datetime(&m).earliest())
        else {
            continue;
        };
        let start = midnight + chrono::Duration::seconds(i64::from(a));
        let mut end = midnight + chrono::Duration::seconds(i64::from(b));
        if b < a {
            end += chrono::Duration::days(1);
        }
        if end > after {
            return (start.max(after), end);
        }
    }
    // Unreachable for a valid window; a day from now keeps the loop sane.
    (
        after + chrono::Duration::days(1),
        after + chrono::Duration::days(1) + chrono::Duration::seconds(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> chrono::DateTime<chrono::Local> {
        chrono::Local
            .with_ymd_and_hms(2026, 6, 10, h, m, 0)
            .earliest()
            .unwrap()
    }

    #[test]
    fn windows_are_today_if_not_over_else_tomorrow_and_cross_midnight() {
        let w = (2 * 3600, 5 * 3600);
        let (s, e) = next_window(at(1, 0), w);
        assert_eq!((s, e), (at(2, 0), at(5, 0)));
        // Inside the window: from now to its end.
        let (s, e) = next_window(at(3, 0), w);
        assert_eq!((s, e), (at(3, 0), at(5, 0)));
        // After it: tomorrow's.
        let (s, _) = next_window(at(6, 0), w);
        assert_eq!(s, at(2, 0) + chrono::Duration::days(1));
        // 23:00-01:00 at 00:30 is yesterday's window, still open.
        let (s, e) = next_window(at(0, 30), (23 * 3600, 3600));
        assert_eq!((s, e), (at(0, 30), at(1, 0)));
    }
}
