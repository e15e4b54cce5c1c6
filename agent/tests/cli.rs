//! `refuge-agent` as a user meets it: help, configuration errors, exit
//! codes. (`refuge`'s are in the refuge-cli package.)

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

#[test]
fn help_lists_commands_and_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let o = cmd(AGENT, &["--help"], d.path());
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("backup") && t.contains("check-config"), "{t}");
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
    // A key as `refuge key create` writes it (that binary is in the
    // refuge-cli package now, so it is made here with the same call).
    let key = refuge_core::crypto::TenantKey::generate(
        refuge_core::TenantId::new("finance").unwrap(),
        "2026-01-01T00:00:00Z".into(),
    )
    .unwrap();
    std::fs::write(d.path().join("t.key"), key.to_text()).unwrap();
    let o = cmd(AGENT, &["-c", "e.toml", "check-config"], d.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("encrypted with the key of tenant finance")
    );
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
