//! `refuge` and `refuge-agent` as a user meets them: help, configuration
//! errors, certificates, exit codes.

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

const AGENT: &str = env!("CARGO_BIN_EXE_refuge-agent");
const CLI: &str = env!("CARGO_BIN_EXE_refuge");

#[test]
fn help_lists_commands_and_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let o = cmd(CLI, &["--help"], d.path());
    let t = String::from_utf8_lossy(&o.stdout);
    for w in ["certs", "snapshots", "restore", "Exit codes"] {
        assert!(t.contains(w), "{w} missing from:\n{t}");
    }
    let o = cmd(AGENT, &["--help"], d.path());
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("backup") && t.contains("check-config"), "{t}");
    let o = cmd(CLI, &["restore", "--help"], d.path());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--at"));
}

#[test]
fn bad_configuration_is_exit_2_with_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let o = cmd(AGENT, &["-c", "missing.toml", "backup"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read config file"));
    std::fs::write(
        d.path().join("a.toml"),
        "[node]\naddress = \"x:1\"\nca = \"ca.pem\"\ncert = \"c\"\nkey = \"k\"\n",
    )
    .unwrap();
    let o = cmd(AGENT, &["-c", "a.toml", "check-config"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ca.pem"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cmd(
        AGENT,
        &["-c", "a.toml", "backup", "--source", "nope"],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no source named"));

    // A key file that is missing or damaged is named by check-config.
    for f in ["ca.pem", "c", "k"] {
        std::fs::write(d.path().join(f), "x").unwrap();
    }
    std::fs::write(
        d.path().join("e.toml"),
        "[node]\naddress = \"x:1\"\nca = \"ca.pem\"\ncert = \"c\"\nkey = \"k\"\n\
         [encryption]\nkey_file = \"t.key\"\n",
    )
    .unwrap();
    let o = cmd(AGENT, &["-c", "e.toml", "check-config"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("t.key"));
    std::fs::write(d.path().join("t.key"), "not a key").unwrap();
    let o = cmd(AGENT, &["-c", "e.toml", "check-config"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a refuge tenant key"));
    let o = cmd(
        CLI,
        &["key", "create", "--tenant", "finance", "--out", "t2.key"],
        d.path(),
    );
    assert!(o.status.success());
    std::fs::rename(d.path().join("t2.key"), d.path().join("t.key")).unwrap();
    let o = cmd(AGENT, &["-c", "e.toml", "check-config"], d.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("encrypted with the key of tenant finance")
    );
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

#[test]
fn schedules_and_the_service_are_checked_with_clear_messages() {
    let d = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "c", "k"] {
        std::fs::write(d.path().join(f), "x").unwrap();
    }
    std::fs::create_dir(d.path().join("src")).unwrap();
    let base = "[node]\naddress = \"x:1\"\nca = \"ca.pem\"\ncert = \"c\"\nkey = \"k\"\n";
    let write = |name: &str, extra: &str| {
        std::fs::write(d.path().join(name), format!("{base}{extra}")).unwrap();
    };
    for (extra, needle) in [
        (
            "[[source]]\nname = \"s\"\npath = \"src\"\nschedule = \"every day\"\n",
            "not a cron expression",
        ),
        (
            "[[source]]\nname = \"s\"\npath = \"src\"\nschedule = \"10x\"\n",
            "unit of an interval",
        ),
        (
            "[[source]]\nname = \"s\"\npath = \"src\"\nkind = \"image\"\non_change = true\n",
            "on_change watches directories",
        ),
        ("[drill]\ncheck_timeout_secs = 0\n", "check_timeout_secs"),
    ] {
        write("bad.toml", extra);
        let o = cmd(AGENT, &["-c", "bad.toml", "check-config"], d.path());
        assert_eq!(o.status.code(), Some(2), "{extra}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{extra}: {err}");
    }
    // `run` without sources has nothing to do.
    write("empty.toml", "");
    let o = cmd(AGENT, &["-c", "empty.toml", "run"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to run"));
    // check-config shows each source's schedule.
    write(
        "ok.toml",
        "[[source]]\nname = \"s\"\npath = \"src\"\nschedule = \"0 2 * * *\"\non_change = true\n",
    );
    let o = cmd(AGENT, &["-c", "ok.toml", "check-config"], d.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("schedule 0 2 * * *, and on change"), "{out}");
}
