//! The audit log kept for assessors (issue 21, item 2, in part): `refuge
//! audit --export` writes the whole log with its chain verified, `refuge
//! audit verify --file` checks the file with no node and no certificate,
//! and finds an edited, removed or reordered line and a cut end; only
//! auditors export; prune and garbage collection never shorten the log.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use refuge_tests::{Cluster, noise, run};

#[test]
fn an_export_verifies_anywhere_and_any_change_to_it_is_found() {
    let c = Cluster::start_with("[gc]\ngrace_secs = 0\n");
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), noise(300 << 10, 1)).unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    for i in 0..3 {
        fs::write(src.join("n.txt"), format!("{i}")).unwrap();
        run(
            "refuge-agent",
            c.path(),
            &["-c", agent.to_str().unwrap(), "backup"],
        )
        .ok();
    }
    let auditor = c.client(&["--role", "auditor", "--name", "assessor"]);
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let before = c.audit(&auditor).len();

    // Prune and collect: the audit log only grows.
    c.keep_last(&admin, "finance", 1);
    c.refuge(&admin, &["admin", "prune"]).ok();
    c.refuge(&admin, &["admin", "gc"]).ok();
    let log = c.audit(&auditor);
    assert!(log.len() > before, "{} then {}", before, log.len());
    assert_eq!(log[0]["seq"], 1);

    // Only auditors export.
    let f = c.path().join("audit-export.jsonl");
    for who in [&agent, &admin] {
        let r = c.refuge(who, &["audit", "--export", f.to_str().unwrap()]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("may not call ReadAudit"), "{}", r.stderr);
        assert!(!f.exists());
    }
    let r = c
        .refuge(&auditor, &["audit", "--export", f.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains("chain verified on export"),
        "{}",
        r.stdout
    );
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never overwritten.
    let again = c.refuge(&auditor, &["audit", "--export", f.to_str().unwrap()]);
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains("refusing to overwrite"),
        "{}",
        again.stderr
    );

    // Checked with no node and no certificate: stop the node.
    let mut c = c;
    c.stop_node();
    let check = |file: &std::path::Path| {
        run(
            "refuge",
            c.path(),
            &[
                "audit",
                "verify",
                "--file",
                file.to_str().unwrap(),
                "--json",
            ],
        )
    };
    let v = check(&f).ok().json();
    assert_eq!(v["intact"], true, "{v:#}");
    let n = v["records"].as_u64().unwrap();
    assert!(n as usize >= log.len(), "{v:#}");
    let text = fs::read_to_string(&f).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, n + 1);
    let header: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["chain_intact"], true);

    let tampered = |name: &str, lines: Vec<String>, needle: &str| {
        let p = c.path().join(name);
        fs::write(&p, lines.join("\n") + "\n").unwrap();
        let r = check(&p);
        assert_eq!(r.code, 1, "{name}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(needle), "{name}: {}", r.stderr);
    };
    let owned = || lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    // A word edited: the bytes say otherwise.
    let mut edited = owned();
    let mut rec: serde_json::Value = serde_json::from_str(&edited[2]).unwrap();
    rec["detail"] = "nothing happened here".into();
    edited[2] = rec.to_string();
    tampered("edited.jsonl", edited, "differ from the record's bytes");
    // The bytes edited too, consistently: the hash does not match.
    let mut rewritten = owned();
    let mut rec: serde_json::Value = serde_json::from_str(&rewritten[3]).unwrap();
    let mut bytes = hex::decode(rec["record"].as_str().unwrap()).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 1;
    rec["record"] = hex::encode(&bytes).into();
    rewritten[3] = rec.to_string();
    tampered("rewritten.jsonl", rewritten, "record");
    // A record removed from the middle, two swapped, the end cut.
    let mut removed = owned();
    removed.remove(4);
    tampered("removed.jsonl", removed, "missing or out of order");
    let mut swapped = owned();
    swapped.swap(2, 3);
    tampered("swapped.jsonl", swapped, "missing or out of order");
    let mut cut = owned();
    cut.pop();
    tampered("cut.jsonl", cut, "removed from its end");
    c.start_node();
}
