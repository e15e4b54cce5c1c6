//! Prometheus metrics of `refuge-agent run` on `[service] metrics_listen`
//! (`GET /metrics`): backups per source and outcome, bytes read and sent,
//! chunks new and deduplicated, durations, the last success and the
//! replication lag (seconds since it, computed at each scrape).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn source(name: &str) -> Labels {
    vec![("source".to_string(), name.to_string())]
}

/// The agent's metrics.
pub struct AgentMetrics {
    registry: Registry,
    backups: Family<Labels, Counter>,
    bytes_read: Family<Labels, Counter>,
    bytes_sent: Family<Labels, Counter>,
    chunks: Family<Labels, Counter>,
    duration: Family<Labels, FGauge>,
    last_success: Family<Labels, FGauge>,
    lag: Family<Labels, FGauge>,
    /// Last success per source (seconds since the epoch), for the lag.
    last: Mutex<BTreeMap<String, f64>>,
}

impl AgentMetrics {
    /// An empty registry with every family.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::default();
        let m = AgentMetrics {
            registry: Registry::default(),
            backups: Family::default(),
            bytes_read: Family::default(),
            bytes_sent: Family::default(),
            chunks: Family::default(),
            duration: Family::default(),
            last_success: Family::default(),
            lag: Family::default(),
            last: Mutex::new(BTreeMap::new()),
        };
        r.register(
            "refuge_agent_backups",
            "Backups run, by source and outcome (ok, failed)",
            m.backups.clone(),
        );
        r.register(
            "refuge_agent_backup_read_bytes",
            "Bytes of source data read",
            m.bytes_read.clone(),
        );
        r.register(
            "refuge_agent_backup_sent_bytes",
            "Bytes sent to the node (compressed chunks)",
            m.bytes_sent.clone(),
        );
        r.register(
            "refuge_agent_backup_chunks",
            "Chunks of backed-up data, by outcome: new (sent) or deduplicated (already on the node)",
            m.chunks.clone(),
        );
        r.register(
            "refuge_agent_backup_duration_seconds",
            "Duration of the last backup of each source",
            m.duration.clone(),
        );
        r.register(
            "refuge_agent_last_success_timestamp_seconds",
            "When each source's last backup committed",
            m.last_success.clone(),
        );
        r.register(
            "refuge_agent_replication_lag_seconds",
            "Seconds since each source's last committed backup",
            m.lag.clone(),
        );
        Arc::new(AgentMetrics { registry: r, ..m })
    }

    fn set_success(&self, name: &str, t: SystemTime) {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_success.get_or_create(&source(name)).set(secs);
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), secs);
    }

    /// A success recorded before this run (the state directory).
    pub fn restored_last_success(&self, name: &str, t: SystemTime) {
        self.set_success(name, t);
    }

    /// A committed backup.
    pub fn backed_up(&self, name: &str, r: &refuge_client::BackupReport, took: Duration) {
        let mut l = source(name);
        self.bytes_read.get_or_create(&l).inc_by(r.bytes_read);
        self.bytes_sent.get_or_create(&l).inc_by(r.bytes_sent);
        self.duration.get_or_create(&l).set(took.as_secs_f64());
        self.set_success(name, SystemTime::now());
        let mut new = l.clone();
        new.push(("outcome".into(), "new".into()));
        self.chunks.get_or_create(&new).inc_by(r.chunks_new);
        let mut dedup = l.clone();
        dedup.push(("outcome".into(), "deduplicated".into()));
        self.chunks
            .get_or_create(&dedup)
            .inc_by(r.chunks.saturating_sub(r.chunks_new));
        l.push(("outcome".into(), "ok".into()));
        self.backups.get_or_create(&l).inc();
    }

    /// A backup that failed after its retries.
    pub fn failed(&self, name: &str, took: Duration) {
        let mut l = source(name);
        self.duration.get_or_create(&l).set(took.as_secs_f64());
        l.push(("outcome".into(), "failed".into()));
        self.backups.get_or_create(&l).inc();
    }

    /// The text exposition; the lag is computed now.
    pub fn text(&self) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for (name, t) in last.iter() {
            self.lag
                .get_or_create(&source(name))
                .set((now - t).max(0.0));
        }
        drop(last);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, m: Arc<AgentMetrics>) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = m.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.text(),
                )
            }
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}
