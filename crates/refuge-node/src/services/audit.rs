//! The `Audit` service's handler (auditors only): `ReadAudit` streams
//! the hash-chained log, 1024 encoded records per message, after every
//! event recorded before the call is durable.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use refuge_proto::pb::{self, audit_server::Audit};
use refuge_store::Store;
use refuge_tls::Role;
use tonic::{Request, Response, Status};

use crate::catalog::audit_copy;
use crate::floor::store::store_status;
use crate::policy::access::Access;
use crate::policy::audit::Outcome;

/// Records per `AuditBatch` message.
const AUDIT_BATCH: usize = 1024;

/// The audit service (auditors only).
pub struct AuditService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
}

impl AuditService {
    pub(crate) fn new(store: Arc<dyn Store>, access: Arc<Access>) -> Self {
        AuditService { store, access }
    }
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    type ReadAuditStream = AuditStream;

    async fn read_audit(
        &self,
        req: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<Self::ReadAuditStream>, Status> {
        let who = self.access.admit(&req, "ReadAudit", &[Role::Auditor])?;
        let r = req.into_inner();
        self.access.audit.record(
            &who.subject(),
            "",
            "audit_read",
            Outcome::Ok,
            &match r.origin.as_str() {
                "" => format!("from record {}", r.from_seq.max(1)),
                o => format!("the copy of {o}'s log, from record {}", r.from_seq.max(1)),
            },
        );
        // What was recorded before this read (its own record included) is
        // in the store before reading starts.
        self.access.audit.flush().await;
        let mut next = r.from_seq.max(1);
        let mut left = if r.limit == 0 { u64::MAX } else { r.limit };
        let origin = if r.origin.is_empty() {
            None
        } else {
            Some(
                refuge_core::HostName::new(r.origin.clone())
                    .map_err(|e| Status::invalid_argument(format!("origin: {e}")))?
                    .to_string(),
            )
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            while left > 0 {
                let want = (AUDIT_BATCH as u64).min(left) as usize;
                // This node's own log, or the copy of a peer's.
                let read = match &origin {
                    None => store
                        .read_audit(next, want)
                        .map(|recs| recs.iter().map(|r| r.encode()).collect::<Vec<_>>())
                        .map_err(store_status),
                    Some(o) => audit_copy::read(&*store, o, next, want),
                };
                let item = match read {
                    Ok(recs) if recs.is_empty() => break,
                    Ok(recs) => {
                        next += recs.len() as u64;
                        left -= recs.len() as u64;
                        let short = recs.len() < want;
                        let batch = pb::AuditBatch { records: recs };
                        if tx.blocking_send(Ok(batch)).is_err() || short {
                            break;
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                };
                let _ = tx.blocking_send(item);
                break;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
