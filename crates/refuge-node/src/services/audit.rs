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
            &format!("from record {}", r.from_seq.max(1)),
        );
        // What was recorded before this read (its own record included) is
        // in the store before reading starts.
        self.access.audit.flush().await;
        let mut next = r.from_seq.max(1);
        let mut left = if r.limit == 0 { u64::MAX } else { r.limit };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            while left > 0 {
                let want = (AUDIT_BATCH as u64).min(left) as usize;
                let item = match store.read_audit(next, want) {
                    Ok(recs) if recs.is_empty() => break,
                    Ok(recs) => {
                        next = recs.last().map_or(next, |r| r.seq + 1);
                        left -= recs.len() as u64;
                        let short = recs.len() < want;
                        let batch = pb::AuditBatch {
                            records: recs.iter().map(|r| r.encode()).collect(),
                        };
                        if tx.blocking_send(Ok(batch)).is_err() || short {
                            break;
                        }
                        continue;
                    }
                    Err(e) => Err(store_status(e)),
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
