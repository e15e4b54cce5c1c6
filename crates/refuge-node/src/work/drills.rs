//! Drills the node runs itself: on request (`StartDrill`) and, with
//! `[drill] window`, unannounced every day at a random time in the window.
//!
//! The node drills as a DR operator would, through its own port
//! (`self_drill`, which says why). One node drill runs at a time; its
//! state and report are kept in the catalog (`catalog::drills::Kept`)
//! from the moment it is asked for.

use std::sync::Arc;
use std::time::Duration;

use refuge_store::Store;
use tonic::Status;
use tracing::{info, warn};

use super::self_drill::{self, Ask};
use crate::catalog::drills::{Kept, keep_report};
use crate::config::DrillConfig;
use crate::floor::clock::random_u64;
use crate::policy::audit::{AuditLog, Outcome};

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
        keep_report(&*self.store, id, k)
    }

    /// Starts a drill in the background and returns its id.
    pub(crate) fn start(self: &Arc<Self>, ask: Ask, by: &str) -> Result<String, Status> {
        let Some(client) = self.cfg.client_config.clone() else {
            return Err(Status::failed_precondition(
                "this node runs no drills: [drill] client_config is not set in node.toml",
            ));
        };
        let id = format!("{:016x}", random_u64());
        self.keep(
            &id,
            &Kept {
                state: "running".into(),
                ..Default::default()
            },
        )?;
        self.audit.record(
            by,
            &ask.tenant,
            "drill_requested",
            Outcome::Ok,
            &format!(
                "node drill {id} of {}/{}/{} ({})",
                or_all(&ask.tenant),
                or_all(&ask.host),
                or_all(&ask.source),
                ask.point()
            ),
        );
        let me = self.clone();
        let run_id = id.clone();
        tokio::spawn(async move {
            let _turn = me.one.acquire().await;
            let scratch = me
                .cfg
                .scratch_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            let kept = match self_drill::run(&client, scratch, &ask, &run_id).await {
                Ok(r) => Kept {
                    state: if r.passed { "passed" } else { "failed" }.into(),
                    error: r.record_errors.join("; "),
                    report_json: r.json,
                    report_markdown: r.markdown,
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
            let at = lo + chrono::Duration::seconds((random_u64() % span) as i64);
            let wait = (at - chrono::Local::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let ask = Ask {
                random_seed: self.cfg.random_point.then(random_u64),
                ..Ask::default()
            };
            if let Err(e) = self.start(ask, "node (schedule)") {
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
