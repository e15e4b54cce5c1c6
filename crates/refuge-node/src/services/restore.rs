//! The `Restore` service's handlers: agents read their own tenant,
//! operators the tenants they are granted; admins list snapshot
//! metadata. Another tenant's snapshots and chunks are answered exactly
//! like absent ones (`Access::one_tenant`).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use refuge_core::TenantId;
use refuge_proto::MAX_GET_IDS;
use refuge_proto::pb::{self, restore_server::Restore};
use refuge_store::Store;
use refuge_tls::Role;
use tonic::{Request, Response, Status};

use crate::catalog::snapshots::{Pick, filtered, resolve};
use crate::floor::store::{blocking, store_status};
use crate::policy::access::{Access, Scope};
use crate::policy::audit::Outcome;

/// The restore service: agents read their own tenant, operators the
/// tenants they are granted; admins list snapshot metadata.
pub struct RestoreService {
    store: Arc<dyn Store>,
    access: Arc<Access>,
    /// node.toml `site`, told to every client in WhoAmI.
    site: String,
}

impl RestoreService {
    pub(crate) fn new(store: Arc<dyn Store>, access: Arc<Access>, site: String) -> Self {
        RestoreService {
            store,
            access,
            site,
        }
    }
}

/// Chunks (and bytes) handed from the reading thread to the response
/// stream at a time.
const HANDOFF_CHUNKS: usize = 32;
const HANDOFF_BYTES: usize = 1 << 20;
/// Chunk ids read from the store together.
const FETCH_WINDOW: usize = 64;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;

#[tonic::async_trait]
impl Restore for RestoreService {
    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let who = self.access.admit(
            &req,
            "ListSnapshots",
            &[Role::Agent, Role::Operator, Role::Admin],
        )?;
        let r = req.into_inner();
        let store = self.store.clone();
        let snaps = blocking(move || {
            let tenants = Access::listed_tenants(&*store, &who, &r.tenant)?;
            filtered(&*store, &tenants, &r.host, &r.source)
        })
        .await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: snaps.iter().map(refuge_proto::snapshot_to).collect(),
        }))
    }

    async fn resolve_snapshot(
        &self,
        req: Request<pb::ResolveSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let who = self
            .access
            .admit(&req, "ResolveSnapshot", &[Role::Agent, Role::Operator])?;
        let r = req.into_inner();
        let purpose = r.purpose.clone();
        let tenants = match Access::one_tenant(&who, &r.tenant)? {
            Scope::One(t) => vec![t],
            Scope::Nothing => vec![],
        };
        let store = self.store.clone();
        let rec = blocking(move || {
            let snaps = filtered(&*store, &tenants, &r.host, &r.source)?;
            resolve(
                snaps,
                &Pick {
                    selector: &r.selector,
                    at_micros: r.at_unix_micros,
                    host: &r.host,
                    source: &r.source,
                },
            )
        })
        .await?;
        let event = match purpose.as_str() {
            "restore" => "snapshot_restore_started",
            "parent" => "snapshot_parent_read",
            "drill" => "drill_started",
            _ => "snapshot_opened",
        };
        self.access.audit.record(
            &who.subject(),
            rec.tenant.as_str(),
            event,
            Outcome::Ok,
            &format!(
                "snapshot {} of {}/{} at {}",
                rec.id,
                rec.host,
                rec.source,
                refuge_core::format_time_micros(rec.time_micros)
            ),
        );
        Ok(Response::new(refuge_proto::snapshot_to(&rec)))
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let who = self
            .access
            .admit(&req, "GetChunks", &[Role::Agent, Role::Operator])?;
        let r = req.into_inner();
        if r.ids.len() > MAX_GET_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_GET_IDS} ids per GetChunks, got {}",
                r.ids.len()
            )));
        }
        let ids = r
            .ids
            .iter()
            .map(|b| refuge_proto::chunk_id(b))
            .collect::<Result<Vec<_>, _>>()?;
        // Another tenant's chunks are answered exactly like absent ones.
        let tenant = match Access::one_tenant(&who, &r.tenant)? {
            Scope::One(t) => Some(t),
            Scope::Nothing => None,
        };
        // Chunks travel to the response stream in batches (up to
        // `HANDOFF_CHUNKS` or `HANDOFF_BYTES`): one hand-off per chunk cost
        // a task switch each, a fifth of the node's time serving 16 KiB
        // chunks.
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Result<pb::ChunkData, Status>>>(4);
        let store = self.store.clone();
        let audit = self.access.audit.clone();
        tokio::task::spawn_blocking(move || {
            // Counted once per request, not per chunk.
            let mut sent = 0u64;
            let mut batch = Vec::new();
            let mut batch_bytes = 0usize;
            // Read `FETCH_WINDOW` ids at a time: a backend with latency
            // (packs in a bucket) fetches them together.
            'window: for window in ids.chunks(FETCH_WINDOW) {
                let found = match &tenant {
                    Some(t) => store.get_chunks(t, window),
                    None => window.iter().map(|_| Ok(None)).collect(),
                };
                for (&id, found) in window.iter().zip(found) {
                    let quarantined = |t: &TenantId| store.is_quarantined(t, &id).unwrap_or(false);
                    let item = match found {
                        Ok(Some(c)) => {
                            sent += c.data.len() as u64;
                            batch_bytes += c.data.len();
                            Ok(refuge_proto::chunk_data_to(&id, c))
                        }
                        Ok(None) if tenant.as_ref().is_some_and(quarantined) => {
                            Err(Status::data_loss(format!(
                                "chunk {id} was found corrupt by verification and is quarantined; \
                                 the next backup that contains it heals it"
                            )))
                        }
                        Ok(None) => Err(Status::not_found(format!(
                            "chunk {id} not found on the node"
                        ))),
                        Err(e) => {
                            audit.record(
                                &who.subject(),
                                tenant.as_ref().map_or("", |t| t.as_str()),
                                "chunk_read_failed",
                                Outcome::Failed,
                                &format!("chunk {id}: {e}"),
                            );
                            Err(store_status(e))
                        }
                    };
                    let stop = item.is_err();
                    batch.push(item);
                    if stop || batch.len() >= HANDOFF_CHUNKS || batch_bytes >= HANDOFF_BYTES {
                        if tx.blocking_send(std::mem::take(&mut batch)).is_err() || stop {
                            break 'window;
                        }
                        batch_bytes = 0;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            if let Some(t) = &tenant
                && sent > 0
            {
                audit.metrics().restored(t.as_str(), sent);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(futures::stream::iter),
        )))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = self.access.admit(&req, "WhoAmI", &Role::ALL)?;
        let (tenant, host) = who
            .agent_of()
            .map(|(t, h)| (t.to_string(), h.to_string()))
            .unwrap_or_default();
        let tenants = match &who.tenants {
            refuge_tls::TenantScope::All => vec!["*".to_string()],
            refuge_tls::TenantScope::Only(t) => t.iter().map(|t| t.to_string()).collect(),
        };
        let second_factor = self
            .access
            .second
            .as_ref()
            .map_or("", |sf| sf.state_of(&who, Access::session_of(&req)))
            .to_string();
        Ok(Response::new(pb::WhoAmIResponse {
            second_factor,
            tenant,
            host,
            node_version: env!("CARGO_PKG_VERSION").to_string(),
            role: who.role.to_string(),
            name: who.name.clone(),
            tenants,
            serial: who.serial.clone(),
            site: self.site.clone(),
        }))
    }

    async fn sign_in(
        &self,
        req: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let who = self.access.admit(&req, "SignIn", &Role::ALL)?;
        let Some(sf) = self.access.second.clone() else {
            return Err(Status::failed_precondition(
                "this node requires no second factor ([second_factor] enabled = false)",
            ));
        };
        let code = req.into_inner().code;
        let opened = blocking(move || sf.sign_in(&who, &code)).await?;
        Ok(Response::new(pb::SignInResponse {
            session: opened.token,
            idle_secs: opened.idle_secs,
            expires_unix_micros: opened.expires_micros,
        }))
    }
}
