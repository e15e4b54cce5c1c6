//! The web console (issue 19) in a real headless Chromium: a real node
//! with data from real backups and drills, `[console] listen` over HTTPS
//! with the node's certificate, browsers signed in with client
//! certificates made by `refuge certs` (the harness puts them into each
//! browser's NSS database). Screenshots go to
//! `TARGET/debug/test-output/console/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use refuge_tests::browser::Browser;
use refuge_tests::{Cluster, free_local_port, http_get, noise, run};

/// Where the screenshots go: beside the binaries, so CI keeps them with
/// the build.
fn shots() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("test-output/console")
}

/// The base path (`certs/NAME`) of a client config's certificate.
fn identity(c: &Cluster, cfg: &Path) -> PathBuf {
    c.path()
        .join("certs")
        .join(cfg.file_stem().unwrap().to_string_lossy().as_ref())
}

fn class_of(b: &Browser, selector: &str) -> String {
    b.eval(&format!(
        "(e => e ? e.className : 'missing')(document.querySelector({}))",
        serde_json::to_string(selector).unwrap()
    ))
}

struct Fleet {
    c: Cluster,
    url: String,
    metrics: u16,
    auditor: PathBuf,
    operator: PathBuf,
    admin: PathBuf,
}

/// A node with a console, two tenants backed up, finance drilled and
/// within its targets, health with an RPO target of one second (so it is
/// in breach when the pages are read) and never drilled.
fn fleet() -> Fleet {
    let mut c = Cluster::configured("");
    let node_ops = c.client(&[
        "--role",
        "operator",
        "--all-tenants",
        "--name",
        "node-drill",
    ]);
    let auditor = c.client(&["--role", "auditor", "--name", "supervision"]);
    let operator = c.client(&[
        "--role", "operator", "--tenant", "finance", "--name", "fin-ops",
    ]);
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    run(
        "refuge",
        c.path(),
        &[
            "certs", "issue", "--dir", "certs", "--tenant", "health", "--host", "web1",
        ],
    )
    .ok();
    let (port, metrics) = (free_local_port(), free_local_port());
    let mut toml = fs::read_to_string(c.path().join("node.toml")).unwrap();
    toml.push_str(&format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [drill]\nclient_config = \"{}\"\nscratch_dir = \"node-scratch\"\n\
         [slo]\nrpo_secs = 3600\ndrill_age_secs = 86400\n\
         [slo.tenants.health]\nrpo_secs = 1\n",
        node_ops.file_name().unwrap().to_string_lossy()
    ));
    fs::write(c.path().join("node.toml"), toml).unwrap();
    c.start_node();

    let data = c.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("big.bin"), noise(3 << 20, 5)).unwrap();
    fs::write(data.join("sub/a.txt"), b"alpha").unwrap();
    let agent = c.default_agent(&[("data", &data, "tree")]);
    let site = c.path().join("site");
    fs::create_dir_all(&site).unwrap();
    fs::write(site.join("index.html"), b"<h1>health</h1>").unwrap();
    let health = c.agent_config(
        "health.toml",
        "certs/health-web1",
        "certs/ca.pem",
        &[("site", &site, "tree")],
    );
    for (cfg, changes) in [(&agent, 2), (&health, 1)] {
        for i in 0..changes {
            fs::write(data.join("sub/counter"), format!("{i}")).unwrap();
            run(
                "refuge-agent",
                c.path(),
                &["-c", cfg.to_str().unwrap(), "backup"],
            )
            .ok();
        }
    }
    // finance is drilled (and passes) by its operator.
    let scratch = c.path().join("scratch");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            operator.to_str().unwrap(),
            "drill",
            "--scratch",
            scratch.to_str().unwrap(),
        ],
    )
    .ok();
    // health's one-second RPO target is breached from here on.
    std::thread::sleep(Duration::from_millis(1500));
    Fleet {
        c,
        url: format!("https://127.0.0.1:{port}"),
        metrics,
        auditor,
        operator,
        admin,
    }
}

#[test]
fn the_console_shows_the_fleet_and_breaches_and_starts_a_drill_for_a_signed_in_auditor() {
    let f = fleet();
    let ca = f.c.path().join("certs/ca.pem");
    let out = shots();
    let b = Browser::new(&ca, Some(&identity(&f.c, &f.auditor)));

    // The fleet: both tenants, health in breach, finance within its targets.
    b.open(&format!("{}/", f.url));
    let text = b.text();
    assert!(text.contains("supervision (auditor)"), "{text}");
    assert!(
        text.contains("2 sources, 1 in breach of a recovery target"),
        "{text}"
    );
    assert_eq!(
        class_of(&b, "tr[data-source=\"health/web1/site\"]"),
        "breach"
    );
    assert_eq!(class_of(&b, "tr[data-source=\"finance/db1/data\"]"), "ok");
    let health = b.text_of("tr[data-source=\"health/web1/site\"] td.kinds");
    assert_eq!(health, "rpo, drill_age", "{text}");
    assert!(
        b.text_of("tr[data-source=\"finance/db1/data\"]")
            .contains("passed"),
        "{text}"
    );
    b.screenshot(&out.join("fleet.png"));

    // The breach is a metric and a line of `refuge status` too.
    let m = http_get(f.metrics, "/metrics");
    assert!(
        m.contains(
            r#"refuge_slo_breached{tenant="health",host="web1",source="site",kind="rpo"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"refuge_slo_breached{tenant="finance",host="db1",source="data",kind="rpo"} 0"#
        ),
        "{m}"
    );
    let st = run(
        "refuge",
        f.c.path(),
        &["-c", f.auditor.to_str().unwrap(), "status", "--json"],
    )
    .json();
    let src = st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tenant"] == "health")
        .unwrap()
        .clone();
    let kinds: Vec<&str> = src["breaches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["rpo", "drill_age"], "{st:#}");
    assert_eq!(src["rpo_target_secs"], 1);

    // A source's page: its charts, drills and snapshots.
    b.click("a[href=\"/source/finance/db1/data\"]");
    let text = b.text();
    assert!(text.contains("Within every recovery target"), "{text}");
    assert_eq!(b.eval("document.querySelectorAll('svg.chart').length"), "4");
    // Each backup's duration, as its agent reported it, is in the table.
    assert_eq!(
        b.eval("Array.from(document.querySelectorAll('#snapshots tbody td:nth-child(6)')).filter(e => e.innerText.endsWith('s')).length"),
        "2"
    );
    // No page runs a script: they work with JavaScript off.
    assert_eq!(b.eval("document.scripts.length"), "0");
    assert_eq!(
        b.eval("document.querySelectorAll('#snapshots tbody tr').length"),
        "2"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#drills tbody tr').length"),
        "1"
    );
    b.screenshot(&out.join("source.png"));

    // The recorded drill, rendered from its record.
    b.click("#drills tbody tr a");
    let text = b.text();
    assert!(text.contains("Drill 1 of finance/db1/data"), "{text}");
    assert!(b.text_of("#verdict").starts_with("Passed"), "{text}");
    assert!(text.contains("operator:fin-ops"), "{text}");
    b.screenshot(&out.join("drill-record.png"));

    // A drill started from the page runs on the node and completes.
    b.open(&format!("{}/source/finance/db1/data", f.url));
    b.click("#start-drill");
    assert!(b.eval("location.pathname").starts_with("/drills/"));
    let text = b.wait_for_text("passed", Duration::from_secs(120));
    assert!(text.contains("Result: PASSED"), "{text}");
    b.screenshot(&out.join("node-drill.png"));
    let drills = run(
        "refuge",
        f.c.path(),
        &["-c", f.auditor.to_str().unwrap(), "drills", "--json"],
    )
    .ok()
    .json();
    assert_eq!(drills.as_array().unwrap().len(), 2, "{drills:#}");

    // The audit log: the chain checked, the console's drill on record,
    // filters.
    b.open(&format!("{}/audit", f.url));
    let text = b.text();
    assert!(text.contains("Chain verified"), "{text}");
    assert_eq!(b.eval("document.scripts.length"), "0");
    b.open(&format!("{}/audit?event=drill_requested", f.url));
    let events = b.eval(
        "Array.from(document.querySelectorAll('#audit tbody tr td:nth-child(5)')).map(e => e.innerText).join(',')",
    );
    assert_eq!(events, "drill_requested", "{}", b.text());
    assert!(
        b.text_of("#audit tbody").contains("auditor:supervision"),
        "{}",
        b.text()
    );
    b.screenshot(&out.join("audit.png"));

    // The node: storage, dedup and health.
    b.open(&format!("{}/node", f.url));
    let text = b.text();
    assert!(text.contains("ingest\tserving"), "{text}");
    assert!(b.text_of("#usage").contains("finance"), "{text}");
    b.screenshot(&out.join("node.png"));
}

#[test]
fn the_console_refuses_without_a_certificate_and_scopes_operators_to_their_tenants() {
    let f = fleet();
    let ca = f.c.path().join("certs/ca.pem");
    let out = shots();

    // No certificate: a page that says what is needed, and an audit record.
    let anon = Browser::new(&ca, None);
    anon.open(&format!("{}/", f.url));
    let text = anon.text();
    assert!(text.contains("Sign in with a client certificate"), "{text}");
    assert!(!text.contains("finance"), "{text}");
    anon.screenshot(&out.join("refused.png"));
    drop(anon);

    // An operator of finance sees finance only; health looks like nothing.
    let ops = Browser::new(&ca, Some(&identity(&f.c, &f.operator)));
    ops.open(&format!("{}/", f.url));
    let text = ops.text();
    assert!(text.contains("fin-ops (operator)"), "{text}");
    assert!(text.contains("1 source, 0 in breach"), "{text}");
    assert_eq!(class_of(&ops, "#tenant-health"), "missing");
    assert_eq!(class_of(&ops, "tr[data-source=\"finance/db1/data\"]"), "ok");
    ops.screenshot(&out.join("operator.png"));
    ops.open(&format!("{}/source/health/web1/site", f.url));
    assert_eq!(ops.text_of("#message-title"), "Not found");
    // Operators neither start drills nor read the audit log.
    ops.open(&format!("{}/source/finance/db1/data", f.url));
    assert_eq!(class_of(&ops, "#start-drill"), "missing");
    ops.open(&format!("{}/audit", f.url));
    assert_eq!(ops.text_of("#message-title"), "Not allowed");
    assert!(ops.text().contains("role operator may not call"));
    drop(ops);

    // An admin starts drills but does not read the audit log; an agent's
    // certificate does not sign in.
    let admin = Browser::new(&ca, Some(&identity(&f.c, &f.admin)));
    admin.open(&format!("{}/source/health/web1/site", f.url));
    assert_eq!(class_of(&admin, "#start-drill"), "");
    // A form whose token is not the certificate's (a post from another
    // site) starts nothing.
    admin.eval("document.querySelector('input[name=token]').value = '00ff'");
    admin.click("#start-drill");
    assert_eq!(admin.text_of("#message-title"), "Not allowed");
    assert!(
        admin.text_of("#message").contains("token"),
        "{}",
        admin.text()
    );
    admin.open(&format!("{}/audit", f.url));
    assert_eq!(admin.text_of("#message-title"), "Not allowed");
    drop(admin);
    let agent = Browser::new(&ca, Some(&f.c.path().join("certs/finance-db1")));
    agent.open(&format!("{}/", f.url));
    assert_eq!(agent.text_of("#message-title"), "Not allowed");
    drop(agent);

    // A certificate of another CA fails the TLS handshake: no page.
    let other = tempfile::tempdir().unwrap();
    run("refuge", other.path(), &["certs", "init", "certs"]).ok();
    run(
        "refuge",
        other.path(),
        &[
            "certs", "issue", "--dir", "certs", "--role", "auditor", "--name", "mallory",
        ],
    )
    .ok();
    let stranger = Browser::new(&ca, Some(&other.path().join("certs/auditor-mallory")));
    let e = stranger.open_fails(&format!("{}/", f.url));
    assert!(e.contains("net::ERR_"), "{e}");
    drop(stranger);

    // A revoked certificate is signed out at its next request.
    let serial = run(
        "refuge",
        f.c.path(),
        &[
            "certs",
            "show",
            &format!("{}.pem", identity(&f.c, &f.operator).display()),
            "--json",
        ],
    )
    .ok()
    .json()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let toml = f.c.path().join("node.toml");
    let text = fs::read_to_string(&toml).unwrap();
    fs::write(
        &toml,
        text.replace(
            "[tls]\n",
            &format!("[tls]\nrevoked_serials = [\"{serial}\"]\n"),
        ),
    )
    .unwrap();
    let ops = Browser::new(&ca, Some(&identity(&f.c, &f.operator)));
    refuge_tests::wait_for(
        "the revocation to reach the console",
        || {
            ops.open(&format!("{}/", f.url));
            ops.text_of("#message-title") == "Sign in with a client certificate"
        },
        || ops.text(),
    );
    assert!(
        ops.text_of("#message").contains("has been revoked"),
        "{}",
        ops.text()
    );
    drop(ops);

    // Every refusal is on the record.
    let log = f.c.audit(&f.auditor);
    let refused = |needle: &str| {
        log.iter()
            .any(|e| e["event"] == "auth_failed" && e["detail"].as_str().unwrap().contains(needle))
    };
    assert!(refused("console /: no client certificate"), "{log:#?}");
    // The form with a foreign token started no drill.
    assert!(
        !log.iter().any(|e| e["event"] == "drill_requested"),
        "{log:#?}"
    );
    assert!(refused("console connection refused"), "{log:#?}");
    assert!(log.iter().any(|e| {
        e["event"] == "permission_denied"
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("role operator may not call console ReadAudit")
    }));
}

#[test]
fn the_fleet_shows_quarantined_chunks_and_replication_to_the_other_site() {
    use crate::replication::{append, push_to, replica_cert};
    let mut city = Cluster::configured("");
    let mut prov = Cluster::configured("");
    let to_prov = replica_cert(&prov, "city");
    let port = free_local_port();
    append(
        &city,
        &format!(
            "{}[console]\nlisten = \"127.0.0.1:{port}\"\n",
            push_to(&prov, "prov", &to_prov, &prov)
        ),
    );
    city.start_node();
    let src = city.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), noise(2 << 20, 21)).unwrap();
    let agent = city.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    // Chunk bodies damaged on disk before the province exists: replication
    // finds them, quarantines them and sends nothing.
    city.stop_node();
    city.flip_blob_bytes(64);
    prov.start_node();
    city.start_node();
    let auditor = city.client(&["--role", "auditor", "--name", "supervision"]);
    let b = Browser::new(
        &city.path().join("certs/ca.pem"),
        Some(&identity(&city, &auditor)),
    );
    let url = format!("https://127.0.0.1:{port}/");
    refuge_tests::wait_for(
        "the quarantine in the fleet view",
        || {
            b.open(&url);
            b.text_of("#tenant-finance h2")
                .contains("quarantined chunks")
        },
        || b.text(),
    );
    let line = b.text_of("#tenant-finance .replication");
    assert!(line.contains("prov (push finance): failing:"), "{line}");
    assert!(line.contains("quarantined"), "{line}");
    b.screenshot(&shots().join("quarantine.png"));
    b.open(&format!("https://127.0.0.1:{port}/node"));
    let usage = b.text_of("#usage");
    assert!(usage.contains("finance"), "{usage}");
    // The tenant's row is red: it has quarantined chunks.
    assert_eq!(class_of(&b, "#usage tbody tr"), "breach", "{usage}");

    // The next backup heals the chunks; the snapshots reach the province
    // and the fleet shows the lag instead of the failure.
    run("refuge-agent", city.path(), &["-c", a, "backup"]).ok();
    refuge_tests::wait_for(
        "replication to catch up in the fleet view",
        || {
            b.open(&url);
            b.text_of("#tenant-finance .replication")
                .contains("0 pending")
        },
        || b.text(),
    );
    let text = b.text_of("#tenant-finance");
    assert!(!text.contains("quarantined chunks"), "{text}");
    assert!(text.contains("prov (push finance): lag"), "{text}");
    b.screenshot(&shots().join("replication.png"));
    drop(b);
    for c in [&mut city, &mut prov] {
        c.stop_node();
    }
}

/// With `[second_factor]`, an operator's browser sees the sign-in page
/// until it posts a valid code (a wrong one is refused and counted), then
/// the fleet; after `idle_secs` without a request the session has ended
/// and the sign-in page says so. An auditor (no second factor) opens its
/// session with the certificate alone, and it ends when idle too.
#[test]
fn a_second_factor_guards_the_console_and_idle_sessions_end() {
    use refuge_tests::{early_in_totp_step, run_env, totp_code};
    let mut c = Cluster::configured("");
    let admin = c.client(&["--role", "admin", "--name", "root1"]);
    let operator = c.client(&[
        "--role", "operator", "--tenant", "finance", "--name", "fin-ops",
    ]);
    let auditor = c.client(&["--role", "auditor", "--name", "supervision"]);
    let port = free_local_port();
    let mut toml = fs::read_to_string(c.path().join("node.toml")).unwrap();
    toml.push_str(&format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\n\
         [second_factor]\nenabled = true\nkey_file = \"sf.key\"\nidle_secs = 3\n"
    ));
    fs::write(c.path().join("node.toml"), toml).unwrap();
    c.start_node();
    let data = c.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a.bin"), noise(100 << 10, 7)).unwrap();
    c.backed_up_agent(&[("data", &data, "tree")]);
    let refuge = |cfg: &Path, code: Option<&str>, args: &[&str]| {
        let mut all = vec!["-c", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut env = vec![("REFUGE_SESSION_DIR", "off")];
        if let Some(code) = code {
            env.push(("REFUGE_TOTP", code));
        }
        run_env("refuge", c.path(), &all, &env).ok()
    };
    let enroll = |code: Option<&str>, role: &str, name: &str| {
        refuge(
            &admin,
            code,
            &[
                "admin",
                "second-factor",
                "enroll",
                "--role",
                role,
                "--name",
                name,
                "--json",
            ],
        )
        .json()["secret_base32"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let root = enroll(None, "admin", "root1");
    early_in_totp_step();
    let ops = enroll(Some(&totp_code(&root, 0)), "operator", "fin-ops");

    let ca = c.path().join("certs/ca.pem");
    let url = format!("https://127.0.0.1:{port}/");
    let b = Browser::new(&ca, Some(&identity(&c, &operator)));
    b.open(&url);
    assert_eq!(
        b.text_of("#login-title"),
        "Sign in with your second factor",
        "{}",
        b.text()
    );
    assert!(!b.text().contains("finance"), "{}", b.text());
    b.screenshot(&shots().join("sign-in.png"));
    let wrong = if totp_code(&ops, 0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    b.fill("#code", wrong);
    b.click("#sign-in");
    // (A posted form's page may still be loading when the click returns.)
    b.wait_for_text("wrong code (1 in a row)", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1100));
    early_in_totp_step();
    b.fill("#code", &totp_code(&ops, 0));
    b.click("#sign-in");
    let fleet = b.wait_for_text("finance", Duration::from_secs(10));
    assert!(b.text_of("#who").contains("fin-ops"), "{fleet}");
    // Requests keep the session alive...
    std::thread::sleep(Duration::from_secs(2));
    b.open(&url);
    assert!(b.text().contains("finance"), "{}", b.text());
    // ...and it ends after 3 s without one.
    std::thread::sleep(Duration::from_secs(4));
    b.open(&format!("{url}node"));
    b.wait_for_text("without a call", Duration::from_secs(10));
    assert_eq!(
        b.eval("document.querySelector('input[name=next]').value"),
        "/node"
    );
    drop(b);

    // An auditor has no second factor: its session opens with a click,
    // and ends when idle too.
    let a = Browser::new(&ca, Some(&identity(&c, &auditor)));
    a.open(&url);
    assert_eq!(a.text_of("#login-title"), "Sign in", "{}", a.text());
    assert_eq!(a.eval("String(document.querySelector('#code'))"), "null");
    a.click("#sign-in");
    a.wait_for_text("finance", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    a.open(&url);
    a.wait_for_text("without a call", Duration::from_secs(10));
    drop(a);
    let log = c.audit(&auditor);
    assert!(
        log.iter().any(|r| r["event"] == "second_factor_ok"
            && r["subject"].as_str().unwrap_or("").contains("fin-ops")),
        "no sign-in of fin-ops in the audit log"
    );
    assert!(
        log.iter().any(|r| r["event"] == "session_opened"
            && r["subject"].as_str().unwrap_or("").contains("supervision")),
        "no console session of the auditor in the audit log"
    );
    c.stop_node();
}
