//! The `Admin` service's handlers (admins only): retention policies,
//! pins, prune, verify and garbage collection; second factors and purges
//! are handled in the submodules `second_factors` and `purges`, which
//! the trait impl here calls. The work is
//! `work::maintenance`; one maintenance job runs at a time, whether
//! asked for here or scheduled.

mod purges;
mod second_factors;

use std::sync::Arc;

use refuge_core::TenantId;
use refuge_core::retention::{Decision, Policy};
use refuge_proto::pb::{self, admin_server::Admin};
use refuge_tls::Role;
use tonic::{Request, Response, Status};

use crate::catalog::retention::{set_pin, set_policy};
use crate::catalog::snapshots::{Pick, resolve};
use crate::floor::store::{blocking, store_status};
use crate::policy::audit::Outcome;
use crate::work::maintenance::{Maintenance, Planned};

fn policy_to(p: &Policy, tenant: &TenantId, is_default: bool) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        tenant: tenant.to_string(),
        is_default,
        ..refuge_proto::policy_to(p)
    }
}

fn decision_to(p: &Planned) -> pb::PruneDecision {
    pb::PruneDecision {
        snapshot_id: p.rec.id.0.to_vec(),
        tenant: p.rec.tenant.to_string(),
        host: p.rec.host.to_string(),
        source: p.rec.source.to_string(),
        time_unix_micros: p.rec.time_micros,
        seq: p.rec.seq,
        keep: p.decision.keep,
        reasons: p.decision.reasons.iter().map(|r| r.to_string()).collect(),
        pinned: p.pinned,
    }
}

fn tenant(s: &str) -> Result<TenantId, Status> {
    TenantId::new(s).map_err(|e| Status::invalid_argument(format!("tenant: {e}")))
}

/// The admin service.
pub struct AdminService {
    m: Arc<Maintenance>,
    /// `[purge] delay_secs`.
    purge_delay_secs: u64,
}

impl AdminService {
    pub(crate) fn new(m: Arc<Maintenance>, purge_delay_secs: u64) -> Self {
        AdminService {
            m,
            purge_delay_secs,
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_retention(
        &self,
        req: Request<pb::GetRetentionRequest>,
    ) -> Result<Response<pb::RetentionPolicy>, Status> {
        self.m.access.admit(&req, "GetRetention", &[Role::Admin])?;
        let t = tenant(&req.into_inner().tenant)?;
        let m = self.m.clone();
        let p = blocking(move || m.policy(&t).map(|(p, d)| policy_to(&p, &t, d))).await?;
        Ok(Response::new(p))
    }

    async fn set_retention(
        &self,
        req: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::RetentionPolicy>, Status> {
        let who = self.m.access.admit(&req, "SetRetention", &[Role::Admin])?;
        let r = req.into_inner();
        let t = tenant(&r.tenant)?;
        let new = if r.reset {
            None
        } else {
            let p = r.policy.ok_or_else(|| {
                Status::invalid_argument("give a policy, or reset to the node's default")
            })?;
            Some(refuge_proto::policy(&p))
        };
        let m = self.m.clone();
        let t2 = t.clone();
        let (old, (now, is_default)) = blocking(move || {
            let old = m.policy(&t2)?.0;
            set_policy(&*m.store, &t2, new)?;
            Ok((old, m.policy(&t2)?))
        })
        .await?;
        self.m.access.audit.record(
            &who.subject(),
            t.as_str(),
            "retention_changed",
            Outcome::Ok,
            &format!(
                "{} -> {}{}",
                old.describe(),
                now.describe(),
                if is_default { " (node default)" } else { "" }
            ),
        );
        Ok(Response::new(policy_to(&now, &t, is_default)))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let who = self.m.access.admit(&req, "Prune", &[Role::Admin])?;
        let r = req.into_inner();
        let dry_run = r.dry_run;
        let _one = self.m.running.lock().await;
        let m = self.m.clone();
        let subject = who.subject();
        let (plan, removed) = blocking(move || {
            let tenants = if r.tenant.is_empty() {
                m.store.list_tenants().map_err(store_status)?
            } else {
                vec![tenant(&r.tenant)?]
            };
            m.prune(&tenants, r.dry_run, &subject)
        })
        .await?;
        Ok(Response::new(pb::PruneResponse {
            decisions: plan.iter().map(decision_to).collect(),
            removed,
            dry_run,
        }))
    }

    async fn set_pinned(
        &self,
        req: Request<pb::SetPinnedRequest>,
    ) -> Result<Response<pb::PruneDecision>, Status> {
        let who = self.m.access.admit(&req, "SetPinned", &[Role::Admin])?;
        let r = req.into_inner();
        let t = tenant(&r.tenant)?;
        let m = self.m.clone();
        let t2 = t.clone();
        let selector = r.snapshot.clone();
        let rec = blocking(move || {
            let snaps = m.store.list_snapshots(&t2).map_err(store_status)?;
            let rec = resolve(
                snaps,
                &Pick {
                    selector: &selector,
                    ..Pick::default()
                },
            )?;
            set_pin(&*m.store, &t2, &rec.id, r.pinned)?;
            Ok(rec)
        })
        .await?;
        self.m.access.audit.record(
            &who.subject(),
            t.as_str(),
            if r.pinned {
                "snapshot_pinned"
            } else {
                "snapshot_unpinned"
            },
            Outcome::Ok,
            &format!("snapshot {} of {}/{}", rec.id, rec.host, rec.source),
        );
        Ok(Response::new(decision_to(&Planned {
            decision: Decision {
                seq: rec.seq,
                keep: true,
                reasons: Vec::new(),
            },
            rec,
            pinned: r.pinned,
        })))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let who = self.m.access.admit(&req, "Verify", &[Role::Admin])?;
        let r = req.into_inner();
        if r.sample_percent > 100 {
            return Err(Status::invalid_argument(
                "sample_percent is 1 to 100 (0 means 100)",
            ));
        }
        let _one = self.m.running.lock().await;
        let m = self.m.clone();
        let subject = who.subject();
        let resp = blocking(move || {
            let tenants = if r.tenant.is_empty() {
                m.store.list_tenants().map_err(store_status)?
            } else {
                vec![tenant(&r.tenant)?]
            };
            let pct = if r.sample_percent == 0 {
                100
            } else {
                r.sample_percent
            };
            m.verify(&tenants, pct, &subject)
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn collect_garbage(
        &self,
        req: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        let who = self
            .m
            .access
            .admit(&req, "CollectGarbage", &[Role::Admin])?;
        let _one = self.m.running.lock().await;
        let m = self.m.clone();
        let subject = who.subject();
        let o = blocking(move || m.collect(&subject)).await?;
        Ok(Response::new(pb::CollectGarbageResponse {
            examined: o.examined,
            deleted: o.deleted,
            bytes: o.bytes,
            referenced_again: o.referenced_again,
            kept_recent: o.kept_recent,
            grace_secs: self.m.grace.as_secs(),
            packs_deleted: o.packs_deleted,
            packs_rewritten: o.packs_rewritten,
        }))
    }

    async fn enroll_second_factor(
        &self,
        req: Request<pb::SecondFactorRequest>,
    ) -> Result<Response<pb::EnrollSecondFactorResponse>, Status> {
        second_factors::enroll(&self.m.access, req).await
    }

    async fn remove_second_factor(
        &self,
        req: Request<pb::SecondFactorRequest>,
    ) -> Result<Response<pb::SecondFactorEntry>, Status> {
        second_factors::remove(&self.m.access, req).await
    }

    async fn unlock_second_factor(
        &self,
        req: Request<pb::SecondFactorRequest>,
    ) -> Result<Response<pb::SecondFactorEntry>, Status> {
        second_factors::unlock(&self.m.access, req).await
    }

    async fn list_second_factors(
        &self,
        req: Request<pb::ListSecondFactorsRequest>,
    ) -> Result<Response<pb::ListSecondFactorsResponse>, Status> {
        second_factors::list(&self.m.access, req).await
    }

    async fn request_purge(
        &self,
        req: Request<pb::RequestPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        purges::request(&self.m, self.purge_delay_secs, req).await
    }

    async fn confirm_purge(
        &self,
        req: Request<pb::PurgeIdRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        purges::confirm(&self.m, req).await
    }

    async fn cancel_purge(
        &self,
        req: Request<pb::PurgeIdRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        purges::cancel(&self.m, req).await
    }

    async fn list_purges(
        &self,
        req: Request<pb::ListPurgesRequest>,
    ) -> Result<Response<pb::ListPurgesResponse>, Status> {
        purges::list(&self.m, req).await
    }
}
