//! `refuge certs init`, `issue` and `show`: certificates for a deployment,
//! made with rcgen through `refuge-tls`. A client certificate carries a
//! role (agent, operator, admin, auditor, replica) and its tenants.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use refuge_core::{HostName, TenantId};
use refuge_tls::{CertAuthority, ClientIdentity, Role, TenantScope, Validity, identity_from_pem};

use crate::{Failure, Outcome};

pub(crate) fn write_new(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| {
            if path.exists() {
                format!(
                    "{} already exists; refusing to overwrite it",
                    path.display()
                )
            } else {
                format!("cannot create {}", path.display())
            }
        })?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Creates `dir/ca.pem`, `ca.key`, `node.pem`, `node.key`.
pub fn init(dir: &Path, node_names: &[String], days: i64) -> Outcome {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join("ca.pem").exists() {
        return Err(Failure::Failed(anyhow!(
            "{} already holds a CA (ca.pem); use another directory or `refuge certs issue`",
            dir.display()
        )));
    }
    let names: Vec<String> = if node_names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into()]
    } else {
        node_names.to_vec()
    };
    let ca = CertAuthority::generate("refuge CA", Validity::days(days * 3))
        .map_err(anyhow::Error::from)?;
    let node = ca
        .issue_node(&names, Validity::days(days))
        .map_err(anyhow::Error::from)?;
    write_new(&dir.join("ca.pem"), &ca.pair().cert_pem, false)?;
    write_new(&dir.join("ca.key"), &ca.pair().key_pem, true)?;
    write_new(&dir.join("node.pem"), &node.cert_pem, false)?;
    write_new(&dir.join("node.key"), &node.key_pem, true)?;
    println!(
        "created CA and node certificate in {} (node names: {})",
        dir.display(),
        names.join(", ")
    );
    println!("keep ca.key offline; issue client certificates with `refuge certs issue`");
    Ok(0)
}

/// What `refuge certs issue` was asked for.
#[derive(Debug, Clone)]
pub struct IssueArgs {
    /// Directory holding `ca.pem` and `ca.key`.
    pub dir: PathBuf,
    /// The role.
    pub role: Role,
    /// Tenants: one for an agent, one or more for an operator or replica.
    pub tenants: Vec<String>,
    /// Operator or replica for every tenant.
    pub all_tenants: bool,
    /// Host (agent) or name (other roles).
    pub name: String,
    /// Validity in days.
    pub days: i64,
    /// Output directory (default: `dir`).
    pub out: Option<PathBuf>,
}

/// Issues a client certificate with the CA in `dir`.
pub fn issue(a: &IssueArgs) -> Outcome {
    let usage = |m: String| Failure::Usage(anyhow!(m));
    let tenants = a
        .tenants
        .iter()
        .map(|t| TenantId::new(t.clone()).map_err(|e| Failure::Usage(e.into())))
        .collect::<Result<Vec<_>, _>>()?;
    let scope = match (a.role, a.all_tenants) {
        (r, true) if r.grants_tenants() && tenants.is_empty() => TenantScope::All,
        (_, true) => {
            return Err(usage(
                "--all-tenants is for operators and replicas, instead of --tenant".into(),
            ));
        }
        (_, false) => TenantScope::Only(tenants),
    };
    if a.role == Role::Agent {
        HostName::new(a.name.clone()).map_err(|e| Failure::Usage(e.into()))?;
    }
    let who = ClientIdentity {
        role: a.role,
        name: a.name.clone(),
        tenants: scope,
        serial: String::new(),
    };
    who.check().map_err(|e| usage(e.to_string()))?;
    let read = |name: &str| {
        let p = a.dir.join(name);
        fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (run `refuge certs init` first)",
                p.display()
            )
        })
    };
    let ca =
        CertAuthority::load(&read("ca.pem")?, &read("ca.key")?).map_err(anyhow::Error::from)?;
    let pair = ca
        .issue_client(&who, Validity::days(a.days))
        .map_err(anyhow::Error::from)?;
    let issued = identity_from_pem(&pair.cert_pem).map_err(anyhow::Error::from)?;
    let out: PathBuf = a.out.clone().unwrap_or_else(|| a.dir.clone());
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let base = match (&who.role, who.agent_of()) {
        (Role::Agent, Some((tenant, host))) => format!("{tenant}-{host}"),
        (role, _) => format!("{role}-{}", who.name),
    };
    let cert = out.join(format!("{base}.pem"));
    let key = out.join(format!("{base}.key"));
    write_new(&cert, &pair.cert_pem, false)?;
    write_new(&key, &pair.key_pem, true)?;
    println!("issued {} certificate for {}:", who.role, describe(&issued));
    println!("  cert = \"{}\"", cert.display());
    println!("  key  = \"{}\"", key.display());
    println!(
        "  serial {} (revoke it by adding this to revoked_serials in node.toml)",
        issued.serial
    );
    Ok(0)
}

fn tenants_text(t: &TenantScope) -> String {
    match t {
        TenantScope::All => "all tenants".into(),
        TenantScope::Only(v) if v.is_empty() => "no tenant (node-wide)".into(),
        TenantScope::Only(v) => {
            let names: Vec<_> = v.iter().map(|t| t.as_str()).collect();
            format!("tenant {}", names.join(", "))
        }
    }
}

/// `name`, role-specific: "host db1 of tenant finance", "ops1 for all tenants".
pub fn describe(who: &ClientIdentity) -> String {
    match who.agent_of() {
        Some((tenant, host)) => format!("host {host} of tenant {tenant}"),
        None => format!("{} ({})", who.name, tenants_text(&who.tenants)),
    }
}

/// JSON form of an identity (`certs show --json`, `whoami --json`).
pub fn identity_json(who: &ClientIdentity) -> serde_json::Value {
    let tenants: serde_json::Value = match &who.tenants {
        TenantScope::All => serde_json::json!(["*"]),
        TenantScope::Only(v) => v.iter().map(|t| t.to_string()).collect(),
    };
    serde_json::json!({
        "role": who.role.as_str(),
        "name": who.name,
        "tenants": tenants,
        "serial": who.serial,
    })
}

/// Prints what a certificate file says: role, name, tenants, serial,
/// expiry.
pub fn show(path: &Path, json: bool) -> Outcome {
    let pem =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let who = identity_from_pem(&pem)
        .with_context(|| format!("{} is not a refuge client certificate", path.display()))?;
    let expires = refuge_tls::not_after(&pem).map_err(anyhow::Error::from)?;
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| expires.to_string());
    if json {
        let mut v = identity_json(&who);
        v["not_after"] = serde_json::json!(expires);
        println!("{v:#}");
    } else {
        println!("role:      {}", who.role);
        println!("name:      {}", who.name);
        println!("tenants:   {}", tenants_text(&who.tenants));
        println!("serial:    {}", who.serial);
        println!("not after: {expires}");
    }
    Ok(0)
}
