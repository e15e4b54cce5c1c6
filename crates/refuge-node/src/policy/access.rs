//! Who may call what: every handler starts with [`Access::admit`], which
//! reads the caller's identity from its verified certificate, refuses a
//! revoked serial (UNAUTHENTICATED) and a role the RPC does not allow
//! (PERMISSION_DENIED), and audits both. docs/security.md has the table of
//! roles and RPCs.
//!
//! [`Agent`] admits the ingest RPCs' callers: agents only, with the
//! tenant and host of their certificate.
//!
//! Tenant scope is decided here too: a tenant outside the caller's scope is
//! treated exactly like a tenant with no data, never as a denial, so that
//! probing reveals nothing.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use refuge_core::TenantId;
use refuge_store::Store;
use refuge_tls::{ClientIdentity, Role, TenantScope, identity_from_cert};
use tonic::{Request, Status};

use super::audit::{AuditLog, Outcome, tenant_text};
use super::second_factor::{SESSION_HEADER, SecondFactor};
use crate::floor::store::store_status;

/// Identity checks and the audit log, shared by every service.
pub(crate) struct Access {
    revoked: RwLock<Arc<HashSet<String>>>,
    pub(crate) audit: AuditLog,
    /// `[second_factor]`, when enabled.
    pub(crate) second: Option<Arc<SecondFactor>>,
    /// Tenants being purged: their agents are refused (UNAVAILABLE, so
    /// they retry later) until the purge ends.
    purging: std::sync::Mutex<HashSet<TenantId>>,
    /// How many purges run: every agent call reads it, and takes the
    /// lock above only while one does.
    purges: std::sync::atomic::AtomicUsize,
}

/// Refuses `tenant`'s agents while it lives (see [`Access::purging`]).
pub(crate) struct Purging<'a> {
    access: &'a Access,
    tenant: TenantId,
}

impl Drop for Purging<'_> {
    fn drop(&mut self) {
        self.access
            .purging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.tenant);
        self.access
            .purges
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a caller may see of tenants.
pub(crate) enum Scope {
    /// Exactly this tenant.
    One(TenantId),
    /// A tenant outside the caller's scope: behaves as one with no data.
    Nothing,
}

impl Access {
    pub(crate) fn new(
        audit: AuditLog,
        revoked: HashSet<String>,
        second: Option<Arc<SecondFactor>>,
    ) -> Self {
        Access {
            revoked: RwLock::new(Arc::new(revoked)),
            audit,
            second,
            purging: Default::default(),
            purges: Default::default(),
        }
    }

    /// Refuses `tenant`'s agents until the guard is dropped (a purge).
    pub(crate) fn purging(&self, tenant: &TenantId) -> Purging<'_> {
        self.purging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone());
        self.purges
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Purging {
            access: self,
            tenant: tenant.clone(),
        }
    }

    fn is_purging(&self, tenant: &TenantId) -> bool {
        self.purges.load(std::sync::atomic::Ordering::SeqCst) > 0
            && self
                .purging
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(tenant)
    }

    /// The session token a call carries, if any.
    pub(crate) fn session_of<T>(req: &Request<T>) -> Option<&str> {
        req.metadata()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    }

    /// Replaces the revoked serials (normalised hex).
    pub(crate) fn set_revoked(&self, revoked: HashSet<String>) {
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(revoked);
    }

    /// How many serials are revoked.
    pub(crate) fn revoked_count(&self) -> usize {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn is_revoked(&self, serial: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }

    /// The caller of `rpc`, if its certificate names a refuge identity, is
    /// not revoked, has one of `roles`, and (with `[second_factor]`) a
    /// live session if its role needs one.
    pub(crate) fn admit<T>(
        &self,
        req: &Request<T>,
        rpc: &str,
        roles: &[Role],
    ) -> Result<ClientIdentity, Status> {
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown peer".into());
        let leaf = req.peer_certs();
        let leaf = leaf.as_ref().map(|c| c.first().map(|c| c.as_ref()));
        let who = self.admit_cert(&peer, leaf, rpc, roles)?;
        if let Some(sf) = &self.second {
            sf.check(&who, Self::session_of(req), rpc)?;
        }
        Ok(who)
    }

    /// Like [`Access::admit`] without the second factor (the console
    /// checks its own sessions), for the certificate chain's leaf of a
    /// connection from `peer` that is not a gRPC call (the console):
    /// `None` when the connection has no certificates, `Some(None)` for an
    /// empty chain. UNAUTHENTICATED and PERMISSION_DENIED as there.
    pub(crate) fn admit_cert(
        &self,
        peer: &str,
        leaf: Option<Option<&[u8]>>,
        rpc: &str,
        roles: &[Role],
    ) -> Result<ClientIdentity, Status> {
        let refuse = |why: String| {
            self.audit.record(
                peer,
                "",
                "auth_failed",
                Outcome::Refused,
                &format!("{rpc}: {why}"),
            );
            Status::unauthenticated(why)
        };
        let leaf = leaf
            .ok_or_else(|| refuse("no client certificate on this connection".into()))?
            .ok_or_else(|| refuse("empty client certificate chain".into()))?;
        let who = identity_from_cert(leaf).map_err(|e| refuse(e.to_string()))?;
        if self.is_revoked(&who.serial) {
            let why = format!("certificate serial {} has been revoked", who.serial);
            self.audit.record(
                &who.subject(),
                &tenant_text(&who),
                "auth_failed",
                Outcome::Refused,
                &format!("{rpc}: {why}"),
            );
            return Err(Status::unauthenticated(format!(
                "this client's {why} (tls.revoked_serials on the node)"
            )));
        }
        if !roles.contains(&who.role) {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            let why = format!(
                "role {} may not call {rpc} (allowed: {})",
                who.role,
                allowed.join(", ")
            );
            self.audit.record(
                &who.subject(),
                &tenant_text(&who),
                "permission_denied",
                Outcome::Denied,
                &why,
            );
            return Err(Status::permission_denied(why));
        }
        Ok(who)
    }

    /// The one tenant a read names: `requested`, or the caller's only
    /// tenant when it names none.
    pub(crate) fn one_tenant(who: &ClientIdentity, requested: &str) -> Result<Scope, Status> {
        if requested.is_empty() {
            return match &who.tenants {
                TenantScope::Only(t) if t.len() == 1 => Ok(Scope::One(t[0].clone())),
                _ => Err(Status::invalid_argument(
                    "this certificate acts for several tenants: name one (--tenant)",
                )),
            };
        }
        let t = TenantId::new(requested).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(if who.tenants.contains(&t) {
            Scope::One(t)
        } else {
            Scope::Nothing
        })
    }

    /// The tenants a listing covers: `requested` if in scope (none if
    /// not), else every tenant in scope. Admins see every tenant's
    /// snapshot metadata.
    pub(crate) fn listed_tenants(
        store: &dyn Store,
        who: &ClientIdentity,
        requested: &str,
    ) -> Result<Vec<TenantId>, Status> {
        Self::listed_tenants_seen_by(store, who, requested, &[Role::Admin])
    }

    /// Like [`Access::listed_tenants`], where the roles in `see_all` see
    /// every tenant (metadata such as drill records and status).
    pub(crate) fn listed_tenants_seen_by(
        store: &dyn Store,
        who: &ClientIdentity,
        requested: &str,
        see_all: &[Role],
    ) -> Result<Vec<TenantId>, Status> {
        let scope = if see_all.contains(&who.role) {
            &TenantScope::All
        } else {
            &who.tenants
        };
        if !requested.is_empty() {
            let t =
                TenantId::new(requested).map_err(|e| Status::invalid_argument(e.to_string()))?;
            return Ok(if scope.contains(&t) { vec![t] } else { vec![] });
        }
        match scope {
            TenantScope::Only(ts) => Ok(ts.clone()),
            TenantScope::All => store.list_tenants().map_err(store_status),
        }
    }
}

/// An agent, admitted to an ingest RPC: the tenant and host its
/// certificate names, which are the only ones it may write.
#[derive(Clone)]
pub(crate) struct Agent {
    pub(crate) tenant: TenantId,
    pub(crate) host: refuge_core::HostName,
    pub(crate) subject: String,
    pub(crate) audit: AuditLog,
    /// The node requires this tenant's snapshots to be encrypted.
    pub(crate) must_encrypt: bool,
}

impl Agent {
    /// Admits the caller of `rpc` if it is an agent (agents only).
    pub(crate) fn admit<T>(access: &Access, req: &Request<T>, rpc: &str) -> Result<Self, Status> {
        let who = access.admit(req, rpc, &[Role::Agent])?;
        let (tenant, host) = who
            .agent_of()
            .ok_or_else(|| Status::internal("agent identity without a tenant and host"))?;
        if access.is_purging(&tenant) {
            return Err(Status::unavailable(format!(
                "{rpc}: tenant {tenant} is being purged; try again when the purge has ended"
            )));
        }
        Ok(Agent {
            tenant,
            host,
            subject: who.subject(),
            audit: access.audit.clone(),
            must_encrypt: false,
        })
    }

    /// Audits an event of this agent's tenant.
    pub(crate) fn record(&self, event: &str, outcome: Outcome, detail: &str) {
        self.audit
            .record(&self.subject, self.tenant.as_str(), event, outcome, detail);
    }
}

/// A peer node, admitted to a replication RPC: it acts for the tenants
/// its (replica) certificate grants, and only through those RPCs.
#[derive(Clone)]
pub(crate) struct Replica {
    pub(crate) subject: String,
    /// The peer node's name (the certificate's CN).
    pub(crate) name: String,
    pub(crate) grant: TenantScope,
    pub(crate) audit: AuditLog,
}

impl Replica {
    /// Admits the caller of `rpc` if it is a replica (replicas only).
    pub(crate) fn admit<T>(access: &Access, req: &Request<T>, rpc: &str) -> Result<Self, Status> {
        let who = access.admit(req, rpc, &[Role::Replica])?;
        Ok(Replica {
            subject: who.subject(),
            name: who.name.clone(),
            grant: who.tenants,
            audit: access.audit.clone(),
        })
    }

    /// The tenant `name` if the certificate grants it; a tenant outside
    /// the grant is PERMISSION_DENIED (and audited): a replica that copies
    /// nothing because of a missing grant must hear why.
    pub(crate) fn tenant(&self, name: &str, rpc: &str) -> Result<TenantId, Status> {
        let t = TenantId::new(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.grant.contains(&t) {
            return Ok(t);
        }
        let why = format!("{rpc}: this replica certificate does not grant tenant {t}");
        self.record(t.as_str(), "permission_denied", Outcome::Denied, &why);
        Err(Status::permission_denied(why))
    }

    /// Audits an event of `tenant` caused by this replica.
    pub(crate) fn record(&self, tenant: &str, event: &str, outcome: Outcome, detail: &str) {
        self.audit
            .record(&self.subject, tenant, event, outcome, detail);
    }
}
