//! `refuge admin second-factor` and `refuge admin purge` (admin
//! certificates only): enrolments of second factors (TOTP) and the
//! two-step purge of a tenant or source. The node does the work.

use std::path::Path;

use refuge_client::{PurgeInfo, SecondFactorEntry, command_config};
use refuge_core::format_time_micros;

use crate::{Failure, Outcome, human_bytes, print_json, table};

async fn node(cfg: &Path) -> Result<refuge_client::Node, Failure> {
    Ok(crate::session::open(&command_config(cfg)?.node).await?)
}

fn when(micros: i64) -> String {
    if micros == 0 {
        "-".into()
    } else {
        format_time_micros(micros - micros.rem_euclid(1_000_000))
    }
}

fn show_entry(e: &SecondFactorEntry, json: bool) -> Outcome {
    if json {
        print_json(e)?;
    } else {
        println!(
            "{}/{}: enrolled {} by {}; {} failed codes{}",
            e.role,
            e.name,
            when(e.enrolled_micros),
            e.enrolled_by,
            e.failures,
            if e.locked_until_micros > 0 {
                format!(", locked until {}", when(e.locked_until_micros))
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

/// `refuge admin second-factor enroll --role R --name N`.
pub async fn enroll(cfg: &Path, role: &str, name: &str, json: bool) -> Outcome {
    let e = node(cfg).await?.enroll_second_factor(role, name).await?;
    if json {
        print_json(&e)?;
        return Ok(0);
    }
    println!("enrolled {}/{}", e.entry.role, e.entry.name);
    println!("secret:  {}", e.secret_base32);
    println!("otpauth: {}", e.uri);
    println!(
        "Give the secret to its holder only, for an authenticator app (TOTP, SHA-1, 6 digits, 30 s): the node keeps it sealed and never shows it again."
    );
    Ok(0)
}

/// `refuge admin second-factor remove|unlock --role R --name N`.
pub async fn change(cfg: &Path, role: &str, name: &str, remove: bool, json: bool) -> Outcome {
    let n = node(cfg).await?;
    let e = if remove {
        n.remove_second_factor(role, name).await?
    } else {
        n.unlock_second_factor(role, name).await?
    };
    if !json {
        print!("{} ", if remove { "removed" } else { "unlocked" });
    }
    show_entry(&e, json)
}

/// `refuge admin second-factor list`.
pub async fn list(cfg: &Path, json: bool) -> Outcome {
    let l = node(cfg).await?.list_second_factors().await?;
    if json {
        print_json(&l)?;
        return Ok(0);
    }
    if !l.required {
        println!("this node requires no second factor ([second_factor] enabled = false)");
        return Ok(0);
    }
    println!("second factors required for: {}", l.roles.join(", "));
    let mut t = table([
        "Role",
        "Name",
        "Enrolled",
        "By",
        "Failures",
        "Locked until",
        "Last sign-in",
    ]);
    for e in &l.entries {
        t.add_row([
            e.role.clone(),
            e.name.clone(),
            when(e.enrolled_micros),
            e.enrolled_by.clone(),
            e.failures.to_string(),
            when(e.locked_until_micros),
            when(e.last_sign_in_micros),
        ]);
    }
    println!("{t}");
    Ok(0)
}

fn show_purge(p: &PurgeInfo, json: bool) -> Outcome {
    if json {
        print_json(p)?;
    } else {
        let what = if p.host.is_empty() {
            format!("tenant {}", p.tenant)
        } else {
            format!(
                "source {} of host {} (tenant {})",
                p.source, p.host, p.tenant
            )
        };
        println!("purge {} of {what}: {}", p.id, p.state);
        println!(
            "  requested by {} at {}: {}",
            p.requested_by,
            when(p.requested_micros),
            p.reason
        );
        match p.state.as_str() {
            "pending" => println!(
                "  another admin may confirm it from {} (refuge admin purge confirm {})",
                when(p.not_before_micros),
                p.id
            ),
            "done" | "failed" => {
                println!(
                    "  confirmed by {}; removed {} snapshots, {} chunks ({}); left: {} snapshots, {} chunks",
                    p.confirmed_by,
                    p.snapshots_removed,
                    p.chunks_removed,
                    human_bytes(p.bytes_removed),
                    p.snapshots_left,
                    p.chunks_left
                );
                if !p.error.is_empty() {
                    println!("  error: {}", p.error);
                }
            }
            _ => println!("  cancelled by {}", p.confirmed_by),
        }
    }
    // A purge that failed or left something behind is not done.
    Ok(
        if p.state == "failed" || p.snapshots_left + p.chunks_left > 0 {
            1
        } else {
            0
        },
    )
}

/// `refuge admin purge request`.
pub async fn purge_request(
    cfg: &Path,
    tenant: &str,
    host: &str,
    source: &str,
    reason: &str,
    json: bool,
) -> Outcome {
    let p = node(cfg)
        .await?
        .request_purge(tenant, host, source, reason)
        .await?;
    show_purge(&p, json)
}

/// `refuge admin purge confirm|cancel ID`.
pub async fn purge_decide(cfg: &Path, id: &str, confirm: bool, json: bool) -> Outcome {
    let n = node(cfg).await?;
    let p = if confirm {
        n.confirm_purge(id).await?
    } else {
        n.cancel_purge(id).await?
    };
    show_purge(&p, json)
}

/// `refuge admin purge list`.
pub async fn purge_list(cfg: &Path, json: bool) -> Outcome {
    let all = node(cfg).await?.list_purges().await?;
    if json {
        print_json(&all)?;
        return Ok(0);
    }
    let mut t = table([
        "ID",
        "State",
        "Tenant",
        "Host",
        "Source",
        "Requested",
        "By",
        "Confirmable from",
    ]);
    for p in &all {
        t.add_row([
            p.id.clone(),
            p.state.clone(),
            p.tenant.clone(),
            p.host.clone(),
            p.source.clone(),
            when(p.requested_micros),
            p.requested_by.clone(),
            when(p.not_before_micros),
        ]);
    }
    println!("{t}");
    Ok(0)
}
