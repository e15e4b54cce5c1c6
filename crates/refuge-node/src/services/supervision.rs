//! The `Supervision` service's handlers: drill records (`RecordDrill`,
//! `ListDrills`), the per-source `Status` the supervision platform reads,
//! and the node's own drills (`StartDrill`, `GetDrillReport`). The
//! records are `catalog::drills` and `catalog::status`; the node's drills
//! `work::drills`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use refuge_proto::pb::{self, supervision_server::Supervision};
use refuge_store::Store;
use refuge_tls::Role;
use tonic::{Request, Response, Status};

use crate::catalog::drills::{list_drills, record, report};
use crate::catalog::status::{sources_of, usage_of};
use crate::config::SloConfig;
use crate::floor::clock::{now_micros, random_u64};
use crate::floor::disk::Disk;
use crate::floor::metrics::Metrics;
use crate::floor::store::blocking;
use crate::policy::access::{Access, Scope};
use crate::policy::audit::Outcome;
use crate::work::drills::NodeDrills;
use crate::work::replicate::Board;
use crate::work::self_drill::Ask;

/// Default and largest number of records one `ListDrills` returns.
const DEFAULT_LIST: usize = 100;
const MAX_LIST: usize = 10_000;

/// What the node knows of itself, for `Status`.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// Expiry of the node's certificate (µs since the epoch).
    pub node_cert_not_after: i64,
    /// Expiry of the CA's certificate (µs since the epoch).
    pub ca_cert_not_after: i64,
    /// This node's site name (node.toml `site`).
    pub site: String,
}

/// What the node shows those who supervise it: this service and the web
/// console (`console`) read the same.
pub(crate) struct Supervised {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) access: Arc<Access>,
    pub(crate) disk: Arc<Disk>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) facts: NodeFacts,
    pub(crate) drills: Arc<NodeDrills>,
    pub(crate) replication: Board,
    pub(crate) slo: Arc<SloConfig>,
}

/// The supervision service.
pub struct SupervisionService {
    node: Arc<Supervised>,
    /// Serialises sequence numbers.
    seq: Arc<Mutex<()>>,
}

impl SupervisionService {
    pub(crate) fn new(node: Arc<Supervised>) -> Self {
        SupervisionService {
            node,
            seq: Arc::new(Mutex::new(())),
        }
    }
}

#[tonic::async_trait]
impl Supervision for SupervisionService {
    async fn record_drill(
        &self,
        req: Request<pb::RecordDrillRequest>,
    ) -> Result<Response<pb::DrillRecord>, Status> {
        let who = self
            .node
            .access
            .admit(&req, "RecordDrill", &[Role::Agent, Role::Operator])?;
        let result = req
            .into_inner()
            .result
            .ok_or_else(|| Status::invalid_argument("RecordDrill without a result"))?;
        // Out of scope looks exactly like a snapshot that does not exist.
        let tenant = match Access::one_tenant(&who, &result.tenant)? {
            Scope::One(t) => t,
            Scope::Nothing => {
                return Err(Status::not_found(format!(
                    "no snapshot with id {}",
                    hex::encode(&result.snapshot_id)
                )));
            }
        };
        let (store, lock, t, by, site) = (
            self.node.store.clone(),
            self.seq.clone(),
            tenant.clone(),
            who.subject(),
            self.node.facts.site.clone(),
        );
        let rec = blocking(move || record(&*store, &lock, &t, result, by, site)).await?;
        let r = rec.result.as_ref().expect("set above");
        self.node.access.audit.record(
            &who.subject(),
            tenant.as_str(),
            "drill_recorded",
            if r.passed {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            &format!(
                "drill of snapshot {} of {}/{}: {}; restore {:.1}s, {} files checked{}",
                hex::encode(&r.snapshot_id),
                r.host,
                r.source,
                if r.passed { "passed" } else { "FAILED" },
                r.restore_secs,
                r.files_checked,
                if r.first_failure.is_empty() {
                    String::new()
                } else {
                    format!("; {}", r.first_failure)
                }
            ),
        );
        Ok(Response::new(rec))
    }

    async fn list_drills(
        &self,
        req: Request<pb::ListDrillsRequest>,
    ) -> Result<Response<pb::ListDrillsResponse>, Status> {
        let all = [Role::Admin, Role::Auditor];
        let who = self.node.access.admit(
            &req,
            "ListDrills",
            &[Role::Agent, Role::Operator, Role::Admin, Role::Auditor],
        )?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        };
        let store = self.node.store.clone();
        let drills = blocking(move || {
            let tenants = Access::listed_tenants_seen_by(&*store, &who, &r.tenant, &all)?;
            list_drills(&*store, &tenants, &r.host, &r.source, limit)
        })
        .await?;
        Ok(Response::new(pb::ListDrillsResponse { drills }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let all = [Role::Admin, Role::Auditor];
        let who = self.node.access.admit(
            &req,
            "Status",
            &[Role::Operator, Role::Admin, Role::Auditor],
        )?;
        let r = req.into_inner();
        let (store, slo) = (self.node.store.clone(), self.node.slo.clone());
        let now = now_micros();
        let node_wide = all.contains(&who.role) && r.tenant.is_empty();
        let (sources, tenants, names) = blocking(move || {
            let tenants = Access::listed_tenants_seen_by(&*store, &who, &r.tenant, &all)?;
            Ok((
                sources_of(&*store, &tenants, &slo, now)?,
                usage_of(&*store, &tenants)?,
                tenants,
            ))
        })
        .await?;
        // Rows of tenants in scope; a peer's own failure (no tenant) only
        // for the node-wide roles.
        let replication = self.node.replication.rows_seen(&names, node_wide);
        Ok(Response::new(pb::StatusResponse {
            now_unix_micros: now,
            sources,
            tenants,
            disk_free_bytes: self.node.disk.free.load(Relaxed),
            disk_total_bytes: self.node.disk.total.load(Relaxed),
            store_bytes: self.node.disk.store_bytes.load(Relaxed),
            disk_reserve_bytes: self.node.disk.min_free.load(Relaxed),
            ingest_serving: !self.node.disk.low.load(Relaxed),
            node_cert_not_after_unix_micros: self.node.facts.node_cert_not_after,
            ca_cert_not_after_unix_micros: self.node.facts.ca_cert_not_after,
            auth_failures_last_hour: self.node.metrics.auth_failures_last_hour(),
            node_version: env!("CARGO_PKG_VERSION").to_string(),
            site: self.node.facts.site.clone(),
            replication,
        }))
    }

    async fn start_drill(
        &self,
        req: Request<pb::StartDrillRequest>,
    ) -> Result<Response<pb::StartDrillResponse>, Status> {
        let who = self
            .node
            .access
            .admit(&req, "StartDrill", &[Role::Admin, Role::Auditor])?;
        let r = req.into_inner();
        for (what, v) in [
            ("tenant", &r.tenant),
            ("host", &r.host),
            ("source", &r.source),
        ] {
            if v.len() > 64 || v.contains('/') {
                return Err(Status::invalid_argument(format!(
                    "{what} {v:?} is not a name"
                )));
            }
        }
        let ask = Ask {
            tenant: r.tenant,
            host: r.host,
            source: r.source,
            random_seed: r.random_point.then(random_u64),
        };
        let drills = self.node.drills.clone();
        let by = who.subject();
        let drill_id = blocking(move || drills.start(ask, &by)).await?;
        Ok(Response::new(pb::StartDrillResponse { drill_id }))
    }

    async fn get_drill_report(
        &self,
        req: Request<pb::GetDrillReportRequest>,
    ) -> Result<Response<pb::GetDrillReportResponse>, Status> {
        self.node
            .access
            .admit(&req, "GetDrillReport", &[Role::Admin, Role::Auditor])?;
        let id = req.into_inner().drill_id;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "{id:?} is not a drill id"
            )));
        }
        let store = self.node.store.clone();
        let k = blocking(move || report(&*store, &id)).await?;
        Ok(Response::new(pb::GetDrillReportResponse {
            state: k.state,
            error: k.error,
            report_json: k.report_json,
            report_markdown: k.report_markdown,
        }))
    }
}
