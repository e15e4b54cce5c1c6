//! `refuge key create`, `show` and `rotate`: a tenant's encryption key
//! file (refuge_core::crypto; docs/security.md, "Client-side
//! encryption").

use std::fs;
use std::path::Path;

use anyhow::{Context, anyhow};
use refuge_core::TenantId;
use refuge_core::crypto::TenantKey;

use crate::{Failure, Outcome};

/// Creates a new random key for `tenant` in `out` (never overwriting).
pub fn create(tenant: &str, out: &Path) -> Outcome {
    let tenant = TenantId::new(tenant).map_err(|e| Failure::Usage(anyhow!("--tenant: {e}")))?;
    let key = TenantKey::generate(tenant, now()?).map_err(anyhow::Error::from)?;
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

fn now() -> anyhow::Result<String> {
    Ok(time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?)
}

fn read_key(path: &Path) -> Result<TenantKey, Failure> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    TenantKey::parse(&text).map_err(|e| Failure::Usage(anyhow!("{}: {e}", path.display())))
}

/// Writes a new key file `out` that replaces the key in `input`: new data
/// is sealed with the new key, the old ones stay in the file to read what
/// they sealed.
pub fn rotate(input: &Path, out: &Path) -> Outcome {
    let old = read_key(input)?;
    let new = old.rotate(now()?).map_err(anyhow::Error::from)?;
    crate::certs::write_new(out, &new.to_text(), true)?;
    println!(
        "rotated the key of tenant {}: {} (new) replaces {} in {}",
        new.tenant(),
        new.fingerprint(),
        old.fingerprint(),
        out.display()
    );
    println!(
        "install {} as [encryption] key_file on every agent and operator of the tenant; it still reads \
         everything the old key sealed. New and changed data is encrypted with the new key; files \
         that do not change keep their chunks under the old key until a backup with --rehash \
         re-encrypts everything (and uploads it all again). Keep an offline copy of the new file.",
        out.display()
    );
    Ok(0)
}

/// Shows a key file's tenant, creation time and fingerprint (never the key).
pub fn show(path: &Path, json: bool) -> Outcome {
    let key = read_key(path)?;
    if json {
        println!(
            "{:#}",
            serde_json::json!({
                "tenant": key.tenant().as_str(),
                "created": key.created(),
                "fingerprint": key.fingerprint(),
                "previous": key.previous_fingerprints(),
            })
        );
    } else {
        println!("tenant:      {}", key.tenant());
        println!("created:     {}", key.created());
        println!("fingerprint: {}", key.fingerprint());
        for f in key.previous_fingerprints() {
            println!("replaces:    {f} (still reads what it sealed)");
        }
    }
    Ok(0)
}
