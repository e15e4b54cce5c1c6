//! `refuge key create`, `show` and `rotate`: a tenant's encryption key
//! file (refuge_core::crypto; docs/security.md, "Client-side
//! encryption").

use std::fs;
use std::path::Path;

use anyhow::{Context, anyhow};
use refuge_core::TenantId;
use refuge_core::crypto::{Suite, TenantKey};

use crate::{Failure, Outcome};

fn suite_of(name: &str) -> Result<Suite, Failure> {
    Suite::parse(name).ok_or_else(|| Failure::Usage(anyhow!("--suite: unknown suite {name:?}")))
}

/// Creates a new random key of `suite` for `tenant` in `out` (never
/// overwriting).
pub fn create(tenant: &str, out: &Path, suite: &str) -> Outcome {
    let tenant = TenantId::new(tenant).map_err(|e| Failure::Usage(anyhow!("--tenant: {e}")))?;
    let suite = suite_of(suite)?;
    let key = TenantKey::generate_with(tenant, now()?, suite).map_err(anyhow::Error::from)?;
    crate::certs::write_new(out, &key.to_text(), true)?;
    println!(
        "created the key of tenant {} in {} (suite {}: {}; fingerprint {})",
        key.tenant(),
        out.display(),
        suite.as_str(),
        suite.describe(),
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
pub fn rotate(input: &Path, out: &Path, suite: Option<&str>) -> Outcome {
    let old = read_key(input)?;
    let suite = match suite {
        Some(s) => suite_of(s)?,
        None => old.suite(),
    };
    let new = old.rotate_to(now()?, suite).map_err(anyhow::Error::from)?;
    crate::certs::write_new(out, &new.to_text(), true)?;
    println!(
        "rotated the key of tenant {}: {} (new, suite {}) replaces {} (suite {}) in {}",
        new.tenant(),
        new.fingerprint(),
        new.suite().as_str(),
        old.fingerprint(),
        old.suite().as_str(),
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

/// Shows a key file's tenant, suite, creation time and fingerprint (never
/// the key).
pub fn show(path: &Path, json: bool) -> Outcome {
    let key = read_key(path)?;
    if json {
        println!(
            "{:#}",
            serde_json::json!({
                "tenant": key.tenant().as_str(),
                "suite": key.suite().as_str(),
                "algorithms": key.suite().describe(),
                "created": key.created(),
                "fingerprint": key.fingerprint(),
                "previous": key.previous_fingerprints(),
            })
        );
    } else {
        println!("tenant:      {}", key.tenant());
        println!(
            "suite:       {} ({})",
            key.suite().as_str(),
            key.suite().describe()
        );
        println!("created:     {}", key.created());
        println!("fingerprint: {}", key.fingerprint());
        for f in key.previous_fingerprints() {
            println!("replaces:    {f} (still reads what it sealed)");
        }
    }
    Ok(0)
}
