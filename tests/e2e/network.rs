//! Network faults between agent and node beyond a single cut (issue 6,
//! item 3): a commit whose answer is lost, commits sent again and again, a
//! link that stalls for longer than the timeouts, and a link that flaps.
//! The backup finishes once the link is back, or fails clearly after its
//! retries; no snapshot is doubled or half made.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use refuge_tests::{Cluster, CutProxy, StallProxy, assert_same_tree, bin, noise, run};

/// A node, a source of `mib` MiB, and the default agent's config.
fn setup(mib: usize) -> (Cluster, PathBuf, PathBuf) {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), noise(mib << 20, 77)).unwrap();
    fs::write(src.join("small.txt"), b"small").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    (c, src, agent)
}

/// A copy of `cfg` that reaches the node through `port`, with `retries`
/// and pings every second, a ping unanswered for 2 s ending the link.
fn through(c: &Cluster, cfg: &Path, name: &str, port: u16, retries: u32) -> PathBuf {
    let text = fs::read_to_string(cfg)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", c.port()),
            &format!("127.0.0.1:{port}"),
        )
        .replace(
            "connect_timeout_secs = 5\n",
            "connect_timeout_secs = 3\nkeepalive_secs = 1\nkeepalive_timeout_secs = 2\n",
        )
        .replace(
            "[chunking]",
            &format!("[limits]\nretries = {retries}\n\n[chunking]"),
        );
    let p = c.path().join(name);
    fs::write(&p, text).unwrap();
    p
}

fn check_restores(c: &Cluster, agent: &Path, src: &Path, name: &str) {
    let out = c.path().join(name);
    c.restore_latest(agent, &out).ok();
    assert_same_tree(src, &out);
}

#[test]
fn a_commit_resent_with_its_token_is_answered_with_the_snapshot_it_made() {
    let (c, _src, agent) = setup(2);
    run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    let token = [42u8; 16];
    let answers = refuge_tests::commit_latest_again(&agent, 5, Some(token));
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert!(!answers[0].replayed, "a new token makes a snapshot");
    let first = answers[0].snapshot.clone().unwrap();
    for a in &answers[1..] {
        assert!(a.replayed);
        assert_eq!(a.snapshot.as_ref().unwrap(), &first);
    }
    // The agent's backup and the first resend: two snapshots, not six.
    assert_eq!(c.snapshots(&agent).len(), 2);
    // Without a token every commit makes a snapshot (a new point in time).
    for r in refuge_tests::commit_latest_again(&agent, 2, None) {
        assert!(!r.unwrap().replayed);
    }
    assert_eq!(c.snapshots(&agent).len(), 4);
    // The resends are in the audit log.
    let auditor = c.client(&["--role", "auditor", "--name", "aud1"]);
    let replayed = c
        .audit(&auditor)
        .iter()
        .filter(|e| e["event"] == "snapshot_commit_replayed")
        .count();
    assert_eq!(replayed, 4);
}

#[test]
fn a_commit_whose_answer_is_lost_is_not_doubled_by_the_retry() {
    let (mut c, src, agent) = setup(2);
    // The node crashes right after the commit is durable, before it can
    // answer; it is back a moment later, while the agent waits to retry.
    c.stop_node();
    c.start_node_env(&[(
        "REFUGE_FAILPOINTS",
        "store.commit.after_record=return(crash)",
    )]);
    let cfg = through(&c, &agent, "retrying.toml", c.port(), 3);
    let child = Command::new(bin("refuge-agent"))
        .args(["-c", cfg.to_str().unwrap(), "backup", "--json"])
        .current_dir(c.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = c.wait_node_exit();
    assert!(!st.success());
    assert!(
        c.node_log()
            .contains("fail point store.commit.after_record: crashing")
    );
    c.start_node();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert!(
        stderr.contains("had this backup's commit already"),
        "{stderr}"
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep[0]["replayed"], true, "{rep:#}");
    let listed = c.snapshots(&agent);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], rep[0]["snapshot"]);
    check_restores(&c, &agent, &src, "restored");
}

#[test]
fn a_stalled_link_is_dropped_by_keepalive_and_the_backup_finishes_when_it_returns() {
    let (c, src, agent) = setup(16);
    // The first connection goes quiet for 30 s after 4 MiB (far beyond the
    // 1 + 2 s keepalive); the agent drops it, reconnects and finishes.
    let proxy = StallProxy::start(c.port(), 4 << 20, Duration::from_secs(30), 1);
    let cfg = through(&c, &agent, "stall-once.toml", proxy.port, 3);
    let started = std::time::Instant::now();
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup"],
    )
    .ok();
    assert_eq!(proxy.stalls_made(), 1);
    assert!(r.stderr.contains("retrying in"), "{}", r.stderr);
    // It did not wait for the stall to end.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the agent waited out the stall"
    );
    check_restores(&c, &agent, &src, "restored");
    assert_eq!(c.snapshots(&agent).len(), 1);

    // A link that always stalls: the agent gives up after its retries,
    // saying why, and no snapshot appears.
    fs::write(src.join("big.bin"), noise(16 << 20, 78)).unwrap();
    let proxy = StallProxy::start(c.port(), 1 << 20, Duration::from_secs(3600), u32::MAX);
    let cfg = through(&c, &agent, "stall-always.toml", proxy.port, 1);
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup"],
    )
    .fails(1, "giving up after 2 tries");
    assert!(proxy.stalls_made() >= 2, "{}", r.stderr);
    assert_eq!(c.snapshots(&agent).len(), 1);
}

#[test]
fn a_flapping_link_still_gets_the_backup_through_exactly_once() {
    let (c, src, agent) = setup(24);
    // Three connections in a row die after 3 MiB each: every try resumes
    // from the last one's checkpoint.
    let proxy = CutProxy::start(c.port(), 3 << 20, 3);
    let cfg = through(&c, &agent, "flap.toml", proxy.port, 4);
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup", "--json"],
    )
    .ok();
    assert_eq!(proxy.cuts_made(), 3, "{}", r.stderr);
    // Resumed tries do not upload everything again: less than twice the
    // source went through the proxy.
    assert!(
        proxy.forwarded() < 2 * (24 << 20),
        "{} bytes forwarded",
        proxy.forwarded()
    );
    let listed = c.snapshots(&agent);
    assert_eq!(listed.len(), 1, "{listed:?}");
    check_restores(&c, &agent, &src, "restored");
}

#[test]
fn a_node_that_keeps_the_link_alive_but_does_not_answer_is_timed_out_and_the_backup_retried() {
    let (mut c, src, agent) = setup(4);
    // The node's first upload batch hangs for 20 s after it is written,
    // while the node keeps answering HTTP/2 pings: keepalive cannot see
    // it, only the call's deadline can.
    c.stop_node();
    c.start_node_env(&[("REFUGE_FAILPOINTS", "store.put.after_write=1*sleep(20000)")]);
    let cfg = through(&c, &agent, "deadline.toml", c.port(), 3);
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "keepalive_secs = 1\n",
        "keepalive_secs = 1\ncall_timeout_secs = 2\n",
    );
    fs::write(&cfg, text).unwrap();
    let t = std::time::Instant::now();
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "backup"],
    )
    .ok();
    let took = t.elapsed();
    assert!(
        r.stderr.contains("did not answer within 2 s") && r.stderr.contains("call_timeout_secs"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("retrying in"), "{}", r.stderr);
    eprintln!("backup with one hung call: {took:?}");
    let listed = c.snapshots(&agent);
    assert_eq!(listed.len(), 1, "{listed:?}");
    check_restores(&c, &agent, &src, "restored");
}

#[test]
fn a_restore_from_a_node_that_stops_sending_fails_naming_the_deadline_and_the_next_one_works() {
    let (mut c, src, agent) = setup(2);
    run(
        "refuge-agent",
        c.path(),
        &["-c", agent.to_str().unwrap(), "backup"],
    )
    .ok();
    // The node's first chunk read hangs for 20 s; the link stays alive.
    c.stop_node();
    c.start_node_env(&[("REFUGE_FAILPOINTS", "store.get_chunk=1*sleep(20000)")]);
    let cfg = through(&c, &agent, "deadline.toml", c.port(), 0);
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "keepalive_secs = 1\n",
        "keepalive_secs = 1\ncall_timeout_secs = 2\n",
    );
    fs::write(&cfg, text).unwrap();
    let out = c.path().join("stalled-restore");
    let r = c
        .restore_latest(&cfg, &out)
        .fails(1, "did not answer within 2 s");
    assert!(r.stderr.contains("call_timeout_secs"), "{}", r.stderr);
    check_restores(&c, &cfg, &src, "restored");
}
