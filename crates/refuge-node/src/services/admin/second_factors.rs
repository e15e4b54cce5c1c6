//! The `Admin` service's second-factor handlers (admins only; the trait
//! impl in `mod.rs` calls these): enrol, remove, unlock and list the
//! TOTP enrolments of `policy::second_factor`. Each change is audited.

use std::sync::Arc;

use refuge_proto::pb;
use refuge_tls::Role;
use tonic::{Request, Response, Status};

use crate::floor::store::blocking;
use crate::policy::access::Access;
use crate::policy::audit::Outcome;
use crate::policy::second_factor::{EntryView, SecondFactor};

fn enabled(access: &Access) -> Result<Arc<SecondFactor>, Status> {
    access.second.clone().ok_or_else(|| {
        Status::failed_precondition(
            "this node requires no second factor: set [second_factor] enabled = true (and key_file) in node.toml",
        )
    })
}

fn entry(e: EntryView) -> pb::SecondFactorEntry {
    pb::SecondFactorEntry {
        role: e.role,
        name: e.name,
        enrolled_unix_micros: e.enrolled_micros,
        enrolled_by: e.enrolled_by,
        failures: e.failures,
        locked_until_unix_micros: e.locked_until_micros,
        last_sign_in_unix_micros: e.last_sign_in_micros,
    }
}

fn role(text: &str) -> Result<Role, Status> {
    text.parse::<Role>()
        .map_err(|e| Status::invalid_argument(format!("role: {e}")))
}

pub(crate) async fn enroll(
    access: &Access,
    req: Request<pb::SecondFactorRequest>,
) -> Result<Response<pb::EnrollSecondFactorResponse>, Status> {
    let who = access.admit(&req, "EnrollSecondFactor", &[Role::Admin])?;
    let sf = enabled(access)?;
    let r = req.into_inner();
    let target = role(&r.role)?;
    let first = sf.state_of(&who, None) == "enrol";
    let (by, name) = (who.subject(), r.name.clone());
    let (secret, uri, e) = blocking(move || sf.enroll(target, &name, &by)).await?;
    access.audit.record(
        &who.subject(),
        "",
        "second_factor_enrolled",
        Outcome::Ok,
        &format!(
            "{target}/{}{}",
            r.name,
            if first {
                " (by an admin without a second factor: no admin was enrolled yet)"
            } else {
                ""
            }
        ),
    );
    Ok(Response::new(pb::EnrollSecondFactorResponse {
        secret_base32: secret,
        uri,
        entry: Some(entry(e)),
    }))
}

pub(crate) async fn remove(
    access: &Access,
    req: Request<pb::SecondFactorRequest>,
) -> Result<Response<pb::SecondFactorEntry>, Status> {
    change(access, req, "RemoveSecondFactor", "second_factor_removed").await
}

pub(crate) async fn unlock(
    access: &Access,
    req: Request<pb::SecondFactorRequest>,
) -> Result<Response<pb::SecondFactorEntry>, Status> {
    change(access, req, "UnlockSecondFactor", "second_factor_unlocked").await
}

async fn change(
    access: &Access,
    req: Request<pb::SecondFactorRequest>,
    rpc: &str,
    event: &str,
) -> Result<Response<pb::SecondFactorEntry>, Status> {
    let who = access.admit(&req, rpc, &[Role::Admin])?;
    let sf = enabled(access)?;
    let r = req.into_inner();
    let target = role(&r.role)?;
    let name = r.name.clone();
    let remove = rpc == "RemoveSecondFactor";
    let e = blocking(move || {
        if remove {
            sf.remove(target, &name)
        } else {
            sf.unlock(target, &name)
        }
    })
    .await?;
    access.audit.record(
        &who.subject(),
        "",
        event,
        Outcome::Ok,
        &format!("{target}/{}", r.name),
    );
    Ok(Response::new(entry(e)))
}

pub(crate) async fn list(
    access: &Access,
    req: Request<pb::ListSecondFactorsRequest>,
) -> Result<Response<pb::ListSecondFactorsResponse>, Status> {
    access.admit(&req, "ListSecondFactors", &[Role::Admin])?;
    let Some(sf) = access.second.clone() else {
        return Ok(Response::new(pb::ListSecondFactorsResponse::default()));
    };
    let (entries, roles) = sf.list();
    Ok(Response::new(pb::ListSecondFactorsResponse {
        entries: entries.into_iter().map(entry).collect(),
        required: true,
        roles,
    }))
}
