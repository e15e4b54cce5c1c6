//! The node's side of the audit log: handlers record events without
//! waiting for the disk; one writer task appends them to the store's
//! hash-chained log in batches, synced.
//!
//! The queue is bounded: when a flood of events (say, a scan of failing
//! handshakes) outruns the disk, the excess is counted and the count is
//! written as an `audit_events_dropped` record, so a gap is itself on the
//! record. Every event is also a tracing line with target `audit`, for
//! journald.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use refuge_core::audit::AuditEvent;
use refuge_store::Store;
use refuge_tls::{ClientIdentity, TenantScope};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::floor::clock::now_micros;
use crate::floor::metrics::Metrics;

/// Events waiting for the writer.
const QUEUE: usize = 4096;
/// Most events appended in one synced batch.
const BATCH: usize = 512;

enum Msg {
    Event(AuditEvent),
    Flush(oneshot::Sender<()>),
}

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Denied,
    Refused,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// A handle on the audit log; cheap to clone.
#[derive(Clone)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(store, rx, dropped.clone()));
        AuditLog {
            tx,
            dropped,
            metrics,
        }
    }

    /// The node's metrics (fed by every service through this handle).
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records an event (node time now) and logs it.
    pub(crate) fn record(
        &self,
        subject: &str,
        tenant: &str,
        event: &str,
        outcome: Outcome,
        detail: &str,
    ) {
        self.metrics.event(event, outcome.as_str(), tenant);
        if outcome == Outcome::Ok {
            info!(target: "audit", event, subject, tenant, outcome = outcome.as_str(), "{detail}");
        } else {
            warn!(target: "audit", event, subject, tenant, outcome = outcome.as_str(), "{detail}");
        }
        let ev = AuditEvent {
            time_micros: now_micros(),
            subject: subject.into(),
            tenant: tenant.into(),
            event: event.into(),
            outcome: outcome.as_str().into(),
            detail: detail.into(),
        }
        .clipped();
        if self.tx.try_send(Msg::Event(ev)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every event recorded before this call is durable (or
    /// failed to be written, which the node's log says).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let mut msgs = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut msgs, BATCH).await > 0 {
        let mut events = Vec::with_capacity(msgs.len() + 1);
        let mut waiters = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e) => events.push(e),
                Msg::Flush(w) => waiters.push(w),
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            warn!(target: "audit", lost, "audit queue was full; events were dropped");
            events.push(AuditEvent {
                time_micros: now_micros(),
                subject: "node".into(),
                event: "audit_events_dropped".into(),
                outcome: Outcome::Failed.as_str().into(),
                detail: format!("{lost} events were dropped because the audit queue was full"),
                ..AuditEvent::default()
            });
        }
        if !events.is_empty() {
            let n = events.len() as u64;
            let s = store.clone();
            let written = tokio::task::spawn_blocking(move || s.append_audit(events)).await;
            match written {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "cannot write {n} audit records; they are lost");
                    dropped.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => error!(error = %e, "audit writer failed"),
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// The tenants of an identity as the audit log names them.
pub(crate) fn tenant_text(who: &ClientIdentity) -> String {
    match &who.tenants {
        TenantScope::All => "*".into(),
        TenantScope::Only(t) => t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
    }
}
