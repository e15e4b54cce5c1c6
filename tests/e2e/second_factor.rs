//! Second factors for administrators and operators (issue 21, item 1):
//! with `[second_factor]`, an admin's or operator's calls need a session
//! opened by a TOTP code (RFC 6238); the node's first enrolment is an
//! admin's own, later ones need an enrolled admin; a code is accepted
//! once; wrong codes back off and lock the identity (audited) until it is
//! unlocked; idle sessions end; a session is bound to its certificate;
//! agents, auditors and exempt service identities keep certificate-only
//! access; a node whose sealing key does not open its enrolments does not
//! start.

use std::fs;
use std::path::Path;
use std::time::Duration;

use refuge_tests::{Cluster, Run, early_in_totp_step, noise, run, run_env, totp_code};

const NODE: &str = "[second_factor]\nenabled = true\nkey_file = \"sf.key\"\nmax_failures = 3\nlockout_secs = 600\nbackoff_secs = 1\nidle_secs = 4\nexempt = [\"timer\"]\n";

fn code(secret: &str, steps: i64) -> String {
    totp_code(secret, steps)
}

fn early_in_step() {
    early_in_totp_step()
}

/// `refuge -c CFG ARGS` with `REFUGE_SESSION_DIR` = `sessions` (or
/// `off`) and the code `totp` in `REFUGE_TOTP`.
fn as_(c: &Cluster, cfg: &Path, sessions: &str, totp: Option<&str>, args: &[&str]) -> Run {
    let mut all = vec!["-c", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut env = vec![("REFUGE_SESSION_DIR", sessions)];
    if let Some(t) = totp {
        env.push(("REFUGE_TOTP", t));
    }
    run_env("refuge", c.path(), &all, &env)
}

/// `refuge admin second-factor VERB --role ROLE --name NAME --json` as
/// `cfg`, with its kept session in `sessions` (no code given).
fn factor(c: &Cluster, cfg: &Path, sessions: &str, verb: &str, role: &str, name: &str) -> Run {
    as_(
        c,
        cfg,
        sessions,
        None,
        &[
            "admin",
            "second-factor",
            verb,
            "--role",
            role,
            "--name",
            name,
            "--json",
        ],
    )
}

fn secret_of(r: &Run) -> String {
    r.json()["secret_base32"].as_str().unwrap().to_string()
}

#[test]
fn admins_and_operators_need_a_code_that_backs_off_locks_and_times_out() {
    let mut c = Cluster::start_with(NODE);
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), noise(200 << 10, 3)).unwrap();
    // Agents keep certificate-only access.
    c.backed_up_agent(&[("data", &src, "tree")]);
    let key = c.path().join("sf.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let root1 = c.client(&["--role", "admin", "--name", "root1"]);
    let root2 = c.client(&["--role", "admin", "--name", "root2"]);
    let ops = c.client(&[
        "--role", "operator", "--name", "ops1", "--tenant", "finance",
    ]);
    let timer = c.client(&["--role", "admin", "--name", "timer"]);
    let auditor = c.client(&["--role", "auditor", "--name", "assessor"]);
    let d1 = c.path().join("sessions-root1");
    let d1 = d1.to_str().unwrap();
    let dops = c.path().join("sessions-ops1");
    let dops = dops.to_str().unwrap();

    // Not enrolled: refused, saying what to do.
    as_(&c, &root1, "off", None, &["admin", "prune", "--dry-run"])
        .fails(1, "has none enrolled: an enrolled admin runs `refuge admin second-factor enroll --role admin --name root1`");
    // The node's first enrolment: an admin enrols itself; then the door shuts.
    let e1 = factor(&c, &root1, "off", "enroll", "admin", "root1").ok();
    let s1 = secret_of(&e1);
    assert!(
        e1.json()["uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    factor(&c, &root2, "off", "enroll", "admin", "root2").fails(1, "root2 has none enrolled");

    // No code and no terminal: a clear error, not a wait.
    as_(&c, &root1, d1, None, &["admin", "prune", "--dry-run"])
        .fails(1, "give the current TOTP code in REFUGE_TOTP");
    early_in_step();
    let c1 = code(&s1, -1);
    let listed = as_(
        &c,
        &root1,
        d1,
        Some(&c1),
        &["admin", "second-factor", "list", "--json"],
    )
    .ok()
    .json();
    assert_eq!(listed["required"], true);
    assert_eq!(listed["entries"][0]["name"], "root1");
    // The session is kept: the next command needs no code.
    as_(&c, &root1, d1, None, &["admin", "prune", "--dry-run"]).ok();
    // A code is accepted once.
    as_(
        &c,
        &root1,
        "off",
        Some(&c1),
        &["admin", "prune", "--dry-run"],
    )
    .fails(1, "this code was already used");

    // An enrolled admin enrols the others.
    let sops = secret_of(&factor(&c, &root1, d1, "enroll", "operator", "ops1").ok());
    factor(&c, &root1, d1, "enroll", "admin", "root2").ok();
    // Agents and auditors are not enrolled.
    factor(&c, &root1, d1, "enroll", "auditor", "assessor")
        .fails(1, "the auditor role needs no second factor");

    // Wrong codes back off, then lock the identity.
    let wrong = if code(&sops, 0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    as_(&c, &ops, "off", Some(wrong), &["snapshots"]).fails(1, "wrong code (1 in a row)");
    as_(&c, &ops, "off", Some(wrong), &["snapshots"]).fails(1, "too soon after a wrong code");
    std::thread::sleep(Duration::from_millis(1100));
    as_(&c, &ops, "off", Some(wrong), &["snapshots"]).fails(1, "wrong code (2 in a row)");
    std::thread::sleep(Duration::from_millis(2100));
    as_(&c, &ops, "off", Some(wrong), &["snapshots"])
        .fails(1, "locked for 600 s after 3 wrong codes");
    early_in_step();
    as_(&c, &ops, "off", Some(&code(&sops, 0)), &["snapshots"])
        .fails(1, "is locked after 3 failed codes");
    let events: Vec<String> = c
        .audit(&auditor)
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    for e in [
        "second_factor_enrolled",
        "second_factor_ok",
        "second_factor_failed",
        "second_factor_locked",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} not in {events:?}");
    }
    // An admin unlocks it; the operator reads its tenant again. (With a
    // code: root1's kept session has been idle for longer than the
    // node's 4 s since the enrolments above, at least on a busy machine.)
    early_in_step();
    as_(
        &c,
        &root1,
        d1,
        Some(&code(&s1, 0)),
        &[
            "admin",
            "second-factor",
            "unlock",
            "--role",
            "operator",
            "--name",
            "ops1",
            "--json",
        ],
    )
    .ok();
    early_in_step();
    let snaps = as_(
        &c,
        &ops,
        dops,
        Some(&code(&sops, 0)),
        &["snapshots", "--json"],
    )
    .ok()
    .json();
    assert_eq!(snaps.as_array().unwrap().len(), 1);

    // An idle session ends (idle_secs = 4).
    std::thread::sleep(Duration::from_secs(5));
    as_(&c, &ops, dops, None, &["snapshots"]).fails(1, "give the current TOTP code in REFUGE_TOTP");

    // A session belongs to its certificate: root1's token is refused to
    // root2's certificate.
    let token = fs::read_dir(d1)
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .next()
        .unwrap();
    let root2_cfg = refuge_client::command_config(&root2).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async {
        let node = refuge_client::connect(&root2_cfg.node).await.unwrap();
        assert_eq!(node.second_factor, "sign_in");
        node.session.set(Some(token.trim())).unwrap();
        node.list_second_factors().await.unwrap_err().to_string()
    });
    assert!(
        err.contains("this session belongs to another certificate"),
        "{err}"
    );

    // Exempt service identities and auditors need no code.
    as_(&c, &timer, "off", None, &["admin", "prune", "--dry-run"]).ok();
    as_(&c, &auditor, "off", None, &["audit", "--json"]).ok();

    // A sealing key that does not open the enrolments: the node refuses
    // to start, naming the file; with the key back it starts.
    c.stop_node();
    let kept = fs::read(&key).unwrap();
    fs::write(&key, "11".repeat(32)).unwrap();
    let r = run("refuged", c.path(), &["-c", "node.toml"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("does not open the enrolment of admin/root1"),
        "{}",
        r.stderr
    );
    fs::write(&key, kept).unwrap();
    c.start_node();
    early_in_step();
    as_(
        &c,
        &root1,
        "off",
        Some(&code(&s1, 1)),
        &["admin", "prune", "--dry-run"],
    )
    .ok();
}

use std::os::unix::fs::PermissionsExt as _;
