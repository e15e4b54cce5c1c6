//! `refuge` as a user meets it: help, certificates, tenant keys, exit
//! codes. (`refuge-agent`'s are in the refuge-agent package.)

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

fn cmd(bin: &str, args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env_remove("REFUGE_CONFIG")
        .output()
        .unwrap()
}

const CLI: &str = env!("CARGO_BIN_EXE_refuge");

#[test]
fn help_lists_commands_and_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let o = cmd(CLI, &["--help"], d.path());
    let t = String::from_utf8_lossy(&o.stdout);
    for w in ["certs", "snapshots", "restore", "Exit codes"] {
        assert!(t.contains(w), "{w} missing from:\n{t}");
    }
    let o = cmd(CLI, &["restore", "--help"], d.path());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--at"));
}

#[test]
fn certificates_are_made_and_never_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let o = cmd(CLI, &["certs", "init", "pki"], d.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["ca.pem", "ca.key", "node.pem", "node.key"] {
        assert!(d.path().join("pki").join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("pki/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let o = cmd(CLI, &["certs", "init", "pki"], d.path());
    assert_eq!(o.status.code(), Some(1));
    let o = cmd(
        CLI,
        &[
            "certs", "issue", "--dir", "pki", "--tenant", "finance", "--host", "db1",
        ],
        d.path(),
    );
    assert!(o.status.success());
    let pem = std::fs::read_to_string(d.path().join("pki/finance-db1.pem")).unwrap();
    let der = refuge_tls::parse_certs("c", &pem).unwrap().remove(0);
    let id = refuge_tls::identity_from_cert(&der).unwrap();
    let (tenant, host) = id.agent_of().unwrap();
    assert_eq!((tenant.as_str(), host.as_str()), ("finance", "db1"));
    let o = cmd(
        CLI,
        &[
            "certs", "issue", "--dir", "pki", "--tenant", "finance", "--host", "db1",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let o = cmd(
        CLI,
        &[
            "certs", "issue", "--dir", "pki", "--tenant", "bad/name", "--host", "db1",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    let o = cmd(
        CLI,
        &[
            "certs", "issue", "--dir", "nope", "--tenant", "t", "--host", "h",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refuge certs init"));
}

#[test]
fn tenant_keys_are_created_private_never_overwritten_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let o = cmd(
        CLI,
        &[
            "key",
            "create",
            "--tenant",
            "finance",
            "--out",
            "finance.key",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(said.contains("offline"), "{said}");
    let path = d.path().join("finance.key");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let o = cmd(CLI, &["key", "show", "finance.key", "--json"], d.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tenant"], "finance");
    let fp = v["fingerprint"].as_str().unwrap();
    assert!(said.contains(fp), "{said}");
    // The key itself is never printed.
    let text = std::fs::read_to_string(&path).unwrap();
    let key = text.lines().find(|l| l.starts_with("key ")).unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&key[4..]));

    let o = cmd(
        CLI,
        &[
            "key",
            "create",
            "--tenant",
            "finance",
            "--out",
            "finance.key",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    std::fs::write(
        d.path().join("bad.key"),
        text.replace("tenant finance", "tenant hr"),
    )
    .unwrap();
    let o = cmd(CLI, &["key", "show", "bad.key"], d.path());
    // A renamed tenant keeps the key and fingerprint valid; a damaged key
    // line does not.
    assert!(o.status.success());
    let mut chars: Vec<char> = key.chars().collect();
    chars[4] = if chars[4] == '0' { '1' } else { '0' };
    let damaged: String = chars.into_iter().collect();
    std::fs::write(d.path().join("bad.key"), text.replace(key, &damaged)).unwrap();
    let o = cmd(CLI, &["key", "show", "bad.key"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("fingerprint"));
}
