//! Clock trouble (issue 6, item 8): an agent whose clock is a day off, a
//! node whose clock goes backwards, and certificates that are expired as
//! one side's clock sees them. Snapshot times and order are the node's
//! (raised past the last one when its clock goes back), point-in-time
//! restore follows them, and certificate time errors say what is wrong.

use std::fs;

use refuge_tests::{Cluster, faketime, run, run_env};

/// (id, time µs, seq, time text) of each snapshot, oldest first.
fn snaps(c: &Cluster, cfg: &str) -> Vec<(String, i64, u64, String)> {
    c.snapshots(std::path::Path::new(cfg))
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["time_unix_micros"].as_i64().unwrap(),
                s["seq"].as_u64().unwrap(),
                s["time"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_agent_a_day_ahead_gets_node_times_and_a_node_clock_going_back_keeps_order() {
    let mut c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"one").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    // The agent's clock is a day ahead: the snapshot gets the node's time.
    let before = refuge_client::now_micros();
    run_env(
        "refuge-agent",
        c.path(),
        &["-c", a, "backup"],
        &faketime("+1d"),
    )
    .ok();
    let after = refuge_client::now_micros();
    let s = snaps(&c, a);
    assert_eq!(s.len(), 1);
    assert!(s[0].1 >= before && s[0].1 <= after, "{s:?}");

    // The node's clock goes back 40 s (within the certificates' one
    // minute of slack): the next snapshot is still later, by node order.
    c.stop_node();
    c.start_node_at("-40s");
    fs::write(src.join("a.txt"), b"two").unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();
    let s = snaps(&c, a);
    assert_eq!(s.len(), 2);
    assert!(s[1].2 > s[0].2, "seq: {s:?}");
    // Its clock says 40 s earlier than the first snapshot: the time is
    // raised to just past the last one.
    assert_eq!(s[1].1, s[0].1 + 1, "time: {s:?}");
    // Point in time follows the node's order: at the first snapshot's time,
    // the first; latest, the second.
    let out = c.path().join("at");
    run(
        "refuge",
        c.path(),
        &[
            "-c",
            a,
            "restore",
            "--at",
            &s[0].3,
            "--target",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"one");
    let out = c.path().join("latest");
    c.restore_latest(&agent, &out).ok();
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"two");
}

#[test]
fn certificate_time_errors_name_the_clock() {
    let mut c = Cluster::start();
    let agent = c.default_agent(&[]);
    let a = agent.to_str().unwrap();
    // The client's clock is past the node certificate's year.
    let r = run_env("refuge", c.path(), &["-c", a, "whoami"], &faketime("+400d"));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("expired or is not yet valid") && r.stderr.contains("clocks"),
        "{}",
        r.stderr
    );
    // The node's clock is past the client certificate's year.
    c.stop_node();
    c.start_node_at("+400d");
    let r = run("refuge", c.path(), &["-c", a, "whoami"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("expired"), "{}", r.stderr);
}
