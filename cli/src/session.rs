//! The connection every `refuge` command opens, with the second factor
//! when the node asks for one (`[second_factor]` on the node): a session
//! kept from an earlier command (`$REFUGE_SESSION_DIR`, else
//! `$XDG_RUNTIME_DIR/refuge`, else `~/.cache/refuge`; one file per node
//! address and certificate, mode 0600; `REFUGE_SESSION_DIR=off` keeps
//! none), or a sign-in with the code in `REFUGE_TOTP` or typed at the
//! terminal's prompt (only when standard input is a terminal: a script
//! never waits for one).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use refuge_client::{ConnectionConfig, Node, connect};

/// Where this node address and certificate's session is kept, if at all.
fn cache_path(cfg: &ConnectionConfig) -> Option<PathBuf> {
    let dir = match std::env::var_os("REFUGE_SESSION_DIR") {
        Some(d) if d == "off" => return None,
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) => PathBuf::from(d).join("refuge"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/refuge"),
        },
    };
    let cert = std::fs::canonicalize(&cfg.cert).unwrap_or_else(|_| cfg.cert.clone());
    let mut h = blake3::Hasher::new();
    h.update(cfg.address.as_bytes());
    h.update(b"\0");
    h.update(cert.as_os_str().as_encoded_bytes());
    Some(dir.join(format!("session-{}", &h.finalize().to_hex()[..16])))
}

fn save(path: &PathBuf, token: &str) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The code: `REFUGE_TOTP`, or asked at the terminal.
fn code(node: &Node) -> anyhow::Result<String> {
    if let Ok(c) = std::env::var("REFUGE_TOTP")
        && !c.trim().is_empty()
    {
        return Ok(c.trim().to_string());
    }
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        bail!(
            "the node requires a second factor for the {} role and this command has no terminal to ask for a code: give the current TOTP code in REFUGE_TOTP",
            node.role
        );
    }
    let prompt = format!(
        "TOTP code for {} ({}) at {}: ",
        node.name, node.role, node.address
    );
    match rpassword::prompt_password(prompt) {
        Ok(c) if !c.trim().is_empty() => Ok(c.trim().to_string()),
        Ok(_) => bail!(
            "no code given: the node requires a second factor for the {} role",
            node.role
        ),
        Err(e) => bail!(
            "the node requires a second factor for the {} role and the code could not be read ({e}): give it in REFUGE_TOTP",
            node.role
        ),
    }
}

/// Connects (as `refuge_client::connect`) and, if the node requires a
/// second factor of this certificate, signs in or reuses a live session.
pub async fn open(cfg: &ConnectionConfig) -> anyhow::Result<Node> {
    let node = connect(cfg).await?;
    // "enrol": the node's refusals say what to do (and the very first
    // admin may enrol without one).
    if node.second_factor != "sign_in" {
        return Ok(node);
    }
    let cache = cache_path(cfg);
    if let Some(p) = &cache
        && let Ok(token) = std::fs::read_to_string(p)
    {
        node.session.set(Some(token.trim()))?;
        if node.second_factor_state().await? == "signed_in" {
            return Ok(node);
        }
        node.session.set(None)?;
        let _ = std::fs::remove_file(p);
    }
    let code = code(&node)?;
    let s = node.sign_in(&code).await?;
    if let Some(p) = &cache {
        save(p, &s.token).with_context(|| format!("cannot keep the session in {}", p.display()))?;
    }
    Ok(node)
}
