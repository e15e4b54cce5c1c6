//! The metrics endpoint: `GET /metrics` on `[metrics] listen`. Each
//! scrape sets the per-source gauges from the catalog
//! (`catalog::status::sources_of`: snapshot, drill and failure records,
//! never chunks), the disk gauges and the replication gauges (the
//! replication board), then encodes the registry.

use std::net::SocketAddr;
use std::sync::Arc;

use refuge_store::Store;
use tracing::{info, warn};

use crate::catalog::status::sources_of;
use crate::config::SloConfig;
use crate::floor::clock::now_micros;
use crate::floor::disk::Disk;
use crate::floor::metrics::Metrics;
use crate::work::replicate::Board;

/// One scrape (blocking): the gauges refreshed, then the text.
fn scrape(
    metrics: &Metrics,
    store: &dyn Store,
    disk: &Disk,
    board: &Board,
    slo: &SloConfig,
) -> String {
    let sources = match store.list_tenants() {
        Ok(tenants) => match sources_of(store, &tenants, slo, now_micros()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e.message(), "metrics: cannot read the catalog");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "metrics: cannot list tenants");
            None
        }
    };
    metrics.set_gauges(disk, sources.as_deref());
    metrics.set_replication(&board.rows());
    metrics.text()
}

/// Serves `GET /metrics` on `listener` until `stop` changes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    disk: Arc<Disk>,
    board: Board,
    slo: Arc<SloConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (m, store, disk) = (metrics.clone(), store.clone(), disk.clone());
            let (board, slo) = (board.clone(), slo.clone());
            async move {
                let text =
                    tokio::task::spawn_blocking(move || scrape(&m, &*store, &disk, &board, &slo))
                        .await
                        .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
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
