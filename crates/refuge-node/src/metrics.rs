//! Prometheus metrics of the node, served as text on `[metrics] listen`
//! (`GET /metrics`). Counters follow Prometheus naming (`_total`).
//!
//! What exists: a counter per audit event and outcome (so every
//! authentication failure, denial, rejected chunk, commit, prune, garbage
//! collection, verification and quarantine is counted), and the alert
//! counter for quotas per tenant. The full set (bytes, durations, lag,
//! drills) belongs to issue 5.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

type Labels = Vec<(String, String)>;

/// The node's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    events: Family<Labels, Counter>,
    quota: Family<Labels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let events = Family::<Labels, Counter>::default();
        let quota = Family::<Labels, Counter>::default();
        registry.register(
            "refuge_audit_events",
            "Audit events recorded, by event and outcome",
            events.clone(),
        );
        registry.register(
            "refuge_quota_exceeded",
            "Commits and uploads refused by a tenant's quota (alert on any increase)",
            quota.clone(),
        );
        Arc::new(Metrics {
            registry,
            events,
            quota,
        })
    }

    /// Counts an audit event.
    pub(crate) fn event(&self, event: &str, outcome: &str, tenant: &str) {
        self.events
            .get_or_create(&vec![
                ("event".to_string(), event.to_string()),
                ("outcome".to_string(), outcome.to_string()),
            ])
            .inc();
        if event == "quota_exceeded" {
            self.quota
                .get_or_create(&vec![("tenant".to_string(), tenant.to_string())])
                .inc();
        }
    }

    /// The text exposition.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `stop` changes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
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
    info!(%addr, "metrics on http://{addr}/metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await?;
    Ok(())
}
