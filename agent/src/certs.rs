//! `refuge certs init` and `refuge certs issue`: certificates for a first
//! deployment, made with rcgen through `refuge-tls`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use refuge_core::{HostName, TenantId};
use refuge_tls::{CertAuthority, Validity};

use crate::{Failure, Outcome};

fn write_new(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
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

/// Issues a client certificate for `tenant`/`host` with the CA in `dir`.
pub fn issue(dir: &Path, tenant: &str, host: &str, days: i64, out: Option<&Path>) -> Outcome {
    let tenant = TenantId::new(tenant).map_err(|e| Failure::Usage(e.into()))?;
    let host = HostName::new(host).map_err(|e| Failure::Usage(e.into()))?;
    let read = |name: &str| {
        let p = dir.join(name);
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
        .issue_client(&tenant, &host, Validity::days(days))
        .map_err(anyhow::Error::from)?;
    let out: PathBuf = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.to_path_buf());
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let base = format!("{tenant}-{host}");
    let cert = out.join(format!("{base}.pem"));
    let key = out.join(format!("{base}.key"));
    write_new(&cert, &pair.cert_pem, false)?;
    write_new(&key, &pair.key_pem, true)?;
    println!("issued client certificate for tenant {tenant}, host {host}:");
    println!("  cert = \"{}\"", cert.display());
    println!("  key  = \"{}\"", key.display());
    Ok(0)
}
