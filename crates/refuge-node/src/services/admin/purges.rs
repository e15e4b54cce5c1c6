//! The `Admin` service's purge handlers (admins only; the trait impl in
//! `mod.rs` calls these): request, confirm, cancel and list purges of
//! `work::purge`.

use std::sync::Arc;

use refuge_proto::pb;
use refuge_tls::Role;
use tonic::{Request, Response, Status};

use crate::catalog::purges;
use crate::floor::store::blocking;
use crate::work::maintenance::Maintenance;

pub(crate) async fn request(
    m: &Arc<Maintenance>,
    delay_secs: u64,
    req: Request<pb::RequestPurgeRequest>,
) -> Result<Response<pb::Purge>, Status> {
    let who = m.access.admit(&req, "RequestPurge", &[Role::Admin])?;
    let r = req.into_inner();
    let m = m.clone();
    let rec = blocking(move || {
        m.request_purge(&who, &r.tenant, &r.host, &r.source, &r.reason, delay_secs)
    })
    .await?;
    Ok(Response::new(rec.to_pb()))
}

pub(crate) async fn confirm(
    m: &Arc<Maintenance>,
    req: Request<pb::PurgeIdRequest>,
) -> Result<Response<pb::Purge>, Status> {
    let who = m.access.admit(&req, "ConfirmPurge", &[Role::Admin])?;
    let id = req.into_inner().id;
    let _one = m.running.lock().await;
    let (m2, w) = (m.clone(), who.clone());
    let rec = blocking(move || m2.may_confirm(&w, &id)).await?;
    let tenant = refuge_core::TenantId::new(&rec.tenant)
        .map_err(|e| Status::internal(format!("purge record: {e}")))?;
    let _refused = m.access.purging(&tenant);
    let m2 = m.clone();
    let rec = blocking(move || m2.purge(&who, rec)).await?;
    Ok(Response::new(rec.to_pb()))
}

pub(crate) async fn cancel(
    m: &Arc<Maintenance>,
    req: Request<pb::PurgeIdRequest>,
) -> Result<Response<pb::Purge>, Status> {
    let who = m.access.admit(&req, "CancelPurge", &[Role::Admin])?;
    let id = req.into_inner().id;
    let m = m.clone();
    let rec = blocking(move || m.cancel_purge(&who, &id)).await?;
    Ok(Response::new(rec.to_pb()))
}

pub(crate) async fn list(
    m: &Arc<Maintenance>,
    req: Request<pb::ListPurgesRequest>,
) -> Result<Response<pb::ListPurgesResponse>, Status> {
    m.access.admit(&req, "ListPurges", &[Role::Admin])?;
    let m = m.clone();
    let all = blocking(move || purges::list(&*m.store)).await?;
    Ok(Response::new(pb::ListPurgesResponse {
        purges: all.iter().map(|r| r.to_pb()).collect(),
    }))
}
