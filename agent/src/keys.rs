//! `refuge key create` and `refuge key show`: a tenant's encryption key
//! file (refuge_core::crypto). Backups do not use the key yet; see
//! docs/security.md, "Client-side encryption".

use std::fs;
use std::path::Path;

use anyhow::{Context, anyhow};
use refuge_core::TenantId;
use refuge_core::crypto::TenantKey;

use crate::{Failure, Outcome};

/// Creates a new random key for `tenant` in `out` (never overwriting).
pub fn create(tenant: &str, out: &Path) -> Outcome {
    let tenant = TenantId::new(tenant).map_err(|e| Failure::Usage(anyhow!("--tenant: {e}")))?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(anyhow::Error::from)?;
    let key = TenantKey::generate(tenant, now).map_err(anyhow::Error::from)?;
    crate::certs::write_new(out, &key.to_text(), true)?;
    println!(
        "created the key of tenant {} in {} (fingerprint {})",
        key.tenant(),
        out.display(),
        key.fingerprint()
    );
    println!(
        "copy it now to somewhere safe and offline: if every copy is lost, the tenant's encrypted backups cannot be read by anyone"
    );
    Ok(0)
}

/// Shows a key file's tenant, creation time and fingerprint (never the key).
pub fn show(path: &Path, json: bool) -> Outcome {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key =
        TenantKey::parse(&text).map_err(|e| Failure::Usage(anyhow!("{}: {e}", path.display())))?;
    if json {
        println!(
            "{:#}",
            serde_json::json!({
                "tenant": key.tenant().as_str(),
                "created": key.created(),
                "fingerprint": key.fingerprint(),
            })
        );
    } else {
        println!("tenant:      {}", key.tenant());
        println!("created:     {}", key.created());
        println!("fingerprint: {}", key.fingerprint());
    }
    Ok(0)
}
