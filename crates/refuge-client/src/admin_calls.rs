//! The node's access-control RPCs as typed calls, beside `calls.rs`:
//! second-factor sign-in and enrolment (`[second_factor]` on the node)
//! and purges of a tenant or source.

use serde::Serialize;

use refuge_proto::pb;

use crate::calls::answer;
use crate::connect::Node;

/// A session a sign-in opened.
#[derive(Debug, Clone, Serialize)]
pub struct SignedIn {
    /// Send as `x-refuge-session`; [`Node::sign_in`] sets it already.
    #[serde(skip)]
    pub token: String,
    /// The session ends after this long without a call...
    pub idle_secs: u64,
    /// ...and at this time at the latest (µs since the epoch).
    pub expires_micros: i64,
}

/// One identity's second-factor enrolment.
#[derive(Debug, Clone, Serialize)]
pub struct SecondFactorEntry {
    /// `admin` or `operator`.
    pub role: String,
    /// The certificate's CN.
    pub name: String,
    /// When it was enrolled (µs since the epoch).
    pub enrolled_micros: i64,
    /// Who enrolled it.
    pub enrolled_by: String,
    /// Wrong codes since the last sign-in.
    pub failures: u32,
    /// Locked until then (µs; 0: not locked).
    pub locked_until_micros: i64,
    /// The last sign-in (µs; 0: never).
    pub last_sign_in_micros: i64,
}

/// What an enrolment gives out, once.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    /// The secret, base32 (what an authenticator app is given).
    pub secret_base32: String,
    /// The same as an otpauth:// URI.
    pub uri: String,
    /// The enrolment.
    pub entry: SecondFactorEntry,
}

/// The node's second-factor enrolments.
#[derive(Debug, Clone, Serialize)]
pub struct SecondFactors {
    /// Whether the node requires second factors.
    pub required: bool,
    /// Of which roles.
    pub roles: Vec<String>,
    /// Every enrolment.
    pub entries: Vec<SecondFactorEntry>,
}

/// A purge of a tenant or a source.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeInfo {
    /// Its id (hex).
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// Host and source (both empty: the whole tenant).
    pub host: String,
    /// See `host`.
    pub source: String,
    /// Why it was requested.
    pub reason: String,
    /// Who requested it.
    pub requested_by: String,
    /// When (µs since the epoch).
    pub requested_micros: i64,
    /// It may be confirmed from this time (µs).
    pub not_before_micros: i64,
    /// pending, done, cancelled or failed.
    pub state: String,
    /// Who confirmed (or cancelled) it.
    pub confirmed_by: String,
    /// When it ended (µs; 0: pending).
    pub done_micros: i64,
    /// Snapshots removed.
    pub snapshots_removed: u64,
    /// Chunks removed.
    pub chunks_removed: u64,
    /// Their stored bytes.
    pub bytes_removed: u64,
    /// Why it failed.
    pub error: String,
    /// Found of it after the purge (must be 0).
    pub snapshots_left: u64,
    /// Found of it after the purge (must be 0).
    pub chunks_left: u64,
}

fn entry(e: pb::SecondFactorEntry) -> SecondFactorEntry {
    SecondFactorEntry {
        role: e.role,
        name: e.name,
        enrolled_micros: e.enrolled_unix_micros,
        enrolled_by: e.enrolled_by,
        failures: e.failures,
        locked_until_micros: e.locked_until_unix_micros,
        last_sign_in_micros: e.last_sign_in_unix_micros,
    }
}

fn purge(p: pb::Purge) -> PurgeInfo {
    PurgeInfo {
        id: p.id,
        tenant: p.tenant,
        host: p.host,
        source: p.source,
        reason: p.reason,
        requested_by: p.requested_by,
        requested_micros: p.requested_unix_micros,
        not_before_micros: p.not_before_unix_micros,
        state: p.state,
        confirmed_by: p.confirmed_by,
        done_micros: p.done_unix_micros,
        snapshots_removed: p.snapshots_removed,
        chunks_removed: p.chunks_removed,
        bytes_removed: p.bytes_removed,
        error: p.error,
        snapshots_left: p.snapshots_left,
        chunks_left: p.chunks_left,
    }
}

fn who(role: &str, name: &str) -> pb::SecondFactorRequest {
    pb::SecondFactorRequest {
        role: role.into(),
        name: name.into(),
    }
}

impl Node {
    /// Signs in with a TOTP `code`; later calls carry the session.
    pub async fn sign_in(&self, code: &str) -> anyhow::Result<SignedIn> {
        let r = answer(
            "signing in with a second factor",
            self.restore
                .clone()
                .sign_in(pb::SignInRequest { code: code.into() }),
        )
        .await?;
        self.session.set(Some(&r.session))?;
        Ok(SignedIn {
            token: r.session,
            idle_secs: r.idle_secs,
            expires_micros: r.expires_unix_micros,
        })
    }

    /// What the node says of our second factor now, with the session we
    /// carry: "" (none needed), `enrol`, `sign_in` or `signed_in`.
    pub async fn second_factor_state(&self) -> anyhow::Result<String> {
        Ok(answer(
            "asking the node who this client is",
            self.restore.clone().who_am_i(pb::WhoAmIRequest {}),
        )
        .await?
        .second_factor)
    }

    /// Enrols `role`/`name` (admins).
    pub async fn enroll_second_factor(&self, role: &str, name: &str) -> anyhow::Result<Enrolled> {
        let r = answer(
            "enrolling a second factor",
            self.admin.clone().enroll_second_factor(who(role, name)),
        )
        .await?;
        Ok(Enrolled {
            secret_base32: r.secret_base32,
            uri: r.uri,
            entry: entry(r.entry.unwrap_or_default()),
        })
    }

    /// Removes `role`/`name`'s enrolment (admins).
    pub async fn remove_second_factor(
        &self,
        role: &str,
        name: &str,
    ) -> anyhow::Result<SecondFactorEntry> {
        let r = answer(
            "removing a second factor",
            self.admin.clone().remove_second_factor(who(role, name)),
        )
        .await?;
        Ok(entry(r))
    }

    /// Unlocks `role`/`name` (admins).
    pub async fn unlock_second_factor(
        &self,
        role: &str,
        name: &str,
    ) -> anyhow::Result<SecondFactorEntry> {
        let r = answer(
            "unlocking a second factor",
            self.admin.clone().unlock_second_factor(who(role, name)),
        )
        .await?;
        Ok(entry(r))
    }

    /// Every enrolment (admins).
    pub async fn list_second_factors(&self) -> anyhow::Result<SecondFactors> {
        let r = answer(
            "listing second factors",
            self.admin
                .clone()
                .list_second_factors(pb::ListSecondFactorsRequest {}),
        )
        .await?;
        Ok(SecondFactors {
            required: r.required,
            roles: r.roles,
            entries: r.entries.into_iter().map(entry).collect(),
        })
    }

    /// Requests the purge of `tenant` (or of one of its sources) (admins).
    pub async fn request_purge(
        &self,
        tenant: &str,
        host: &str,
        source: &str,
        reason: &str,
    ) -> anyhow::Result<PurgeInfo> {
        let req = pb::RequestPurgeRequest {
            tenant: tenant.into(),
            host: host.into(),
            source: source.into(),
            reason: reason.into(),
        };
        Ok(purge(
            answer("requesting a purge", self.admin.clone().request_purge(req)).await?,
        ))
    }

    /// Confirms purge `id`, which runs it (another admin than the
    /// requester, after the delay).
    pub async fn confirm_purge(&self, id: &str) -> anyhow::Result<PurgeInfo> {
        let req = pb::PurgeIdRequest { id: id.into() };
        Ok(purge(
            answer(
                "confirming the purge",
                self.admin.clone().confirm_purge(req),
            )
            .await?,
        ))
    }

    /// Cancels pending purge `id` (admins).
    pub async fn cancel_purge(&self, id: &str) -> anyhow::Result<PurgeInfo> {
        let req = pb::PurgeIdRequest { id: id.into() };
        Ok(purge(
            answer("cancelling the purge", self.admin.clone().cancel_purge(req)).await?,
        ))
    }

    /// Every purge, oldest first (admins).
    pub async fn list_purges(&self) -> anyhow::Result<Vec<PurgeInfo>> {
        let r = answer(
            "listing purges",
            self.admin.clone().list_purges(pb::ListPurgesRequest {}),
        )
        .await?;
        Ok(r.purges.into_iter().map(purge).collect())
    }
}
