//! `refuged` as a user meets it: help, configuration errors, exit codes.

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn refuged(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_refuged"))
        .args(args)
        .env_remove("REFUGED_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn help_describes_the_node_and_exit_codes() {
    let o = refuged(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("--config") && text.contains("Exit codes"),
        "{text}"
    );
}

#[test]
fn configuration_errors_exit_2_with_the_cause() {
    let o = refuged(&["--config", "/nonexistent/node.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read config file"));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("node.toml");
    std::fs::write(&p, "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nsurprise = true\n[tls]\nca=\"a\"\ncert=\"b\"\nkey=\"c\"\n").unwrap();
    let o = refuged(&["--config", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Valid syntax, missing certificate files: a runtime failure naming the file.
    std::fs::write(
        &p,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[tls]\nca=\"a.pem\"\ncert=\"b\"\nkey=\"c\"\n",
    )
    .unwrap();
    let o = refuged(&["--config", p.to_str().unwrap(), "--check-config"]);
    assert!(o.status.success());
    let o = refuged(&["--config", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("a.pem"));
}
