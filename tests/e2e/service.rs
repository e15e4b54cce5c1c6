//! `refuge-agent run`, the resident agent: a change in an `on_change`
//! source is backed up within seconds; a restart does not repeat a fresh
//! backup; an unreachable node is caught up with; SIGTERM in the middle of
//! a backup stops at once and leaves a checkpoint the next run resumes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use refuge_tests::{Cluster, bin, free_local_port, http_get, noise, run};

/// A running `refuge-agent run`, its stderr in a file.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(c: &Cluster, cfg: &Path, name: &str) -> Self {
        Self::start_env(c, cfg, name, &[])
    }

    fn start_env(c: &Cluster, cfg: &Path, name: &str, env: &[(&str, &str)]) -> Self {
        let log = c.path().join(format!("{name}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = Command::new(bin("refuge-agent"))
            .args(["-c", cfg.to_str().unwrap(), "run"])
            .current_dir(c.path())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (within `limit`).
    fn stop(&mut self, limit: Duration) -> i32 {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("refuge-agent run did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn snapshots(c: &Cluster, cfg: &Path) -> usize {
    c.snapshots(cfg).len()
}

#[track_caller]
fn wait_for_snapshots(c: &Cluster, cfg: &Path, n: usize, limit: Duration, a: &Agent) -> Duration {
    let t = Instant::now();
    while snapshots(c, cfg) < n {
        assert!(
            t.elapsed() < limit,
            "no snapshot {n} after {limit:?}; agent log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

/// The default agent config for `src`, with `extra` settings for the
/// source and sections after it.
fn config(c: &Cluster, src: &Path, source_extra: &str, after: &str) -> PathBuf {
    let cfg = c.default_agent(&[("data", src, "tree")]);
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str(source_extra);
    text.push('\n');
    text.push_str(after);
    fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn a_change_is_backed_up_within_seconds_and_a_restart_does_not_repeat_a_fresh_backup() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/report.txt"), b"version 1").unwrap();
    let mport = free_local_port();
    // Scheduled once a day: only the change can cause the second snapshot.
    let cfg = config(
        &c,
        &src,
        "schedule = \"1d\"\non_change = true\n",
        &format!("[service]\ndebounce_secs = 1\nmetrics_listen = \"127.0.0.1:{mport}\"\n"),
    );
    run(
        "refuge-agent",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "check-config"],
    )
    .ok();
    let mut a = Agent::start_env(&c, &cfg, "agent", &[("REFUGE_LOG_FORMAT", "json")]);
    // The first run catches up at once (no backup yet).
    wait_for_snapshots(&c, &cfg, 1, Duration::from_secs(60), &a);
    std::thread::sleep(Duration::from_millis(500));
    fs::write(src.join("docs/report.txt"), b"version 2").unwrap();
    fs::write(src.join("docs/new.txt"), b"added").unwrap();
    let took = wait_for_snapshots(&c, &cfg, 2, Duration::from_secs(30), &a);
    assert!(took < Duration::from_secs(30));
    let out = c.path().join("out");
    c.restore_latest(&cfg, &out).ok();
    assert_eq!(fs::read(out.join("docs/report.txt")).unwrap(), b"version 2");
    assert_eq!(fs::read(out.join("docs/new.txt")).unwrap(), b"added");
    // One log line per backup, with its figures, as JSON.
    let log = a.log();
    let committed: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| v["fields"]["message"] == "backup committed")
        .collect();
    assert_eq!(committed.len(), 2, "{log}");
    assert_eq!(committed[1]["fields"]["source"], "data");
    assert!(
        committed[1]["fields"]["bytes_sent"].as_u64().unwrap() > 0,
        "{log}"
    );
    assert!(committed[1]["fields"]["snapshot"].is_string(), "{log}");
    // The agent's metrics.
    let m = http_get(mport, "/metrics");
    assert!(
        m.contains(r#"refuge_agent_backups_total{source="data",outcome="ok"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"refuge_agent_replication_lag_seconds{source="data"}"#),
        "{m}"
    );
    assert!(
        m.contains("refuge_agent_last_success_timestamp_seconds"),
        "{m}"
    );
    assert_eq!(a.stop(Duration::from_secs(10)), 0, "{}", a.log());

    // A restart within the day does not back up again at once.
    let b = Agent::start(&c, &cfg, "agent2");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(snapshots(&c, &cfg), 2, "{}", b.log());
    drop(b);
}

#[test]
fn an_unreachable_node_is_caught_up_with_when_it_returns() {
    let mut c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"made while the node was down").unwrap();
    let cfg = config(&c, &src, "schedule = \"1d\"\n", "");
    c.stop_node();
    let a = Agent::start(&c, &cfg, "agent");
    std::thread::sleep(Duration::from_secs(3));
    c.start_node();
    // The agent's retries (1 s, 2 s, 4 s, ... apart) reach it.
    wait_for_snapshots(&c, &cfg, 1, Duration::from_secs(60), &a);
    let log = a.log();
    assert!(log.contains("retrying"), "{log}");
}

#[test]
fn sigterm_during_a_backup_stops_at_once_and_the_next_run_resumes() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Eight different files (noise ignores the seed's lowest bit): 32 MiB
    // of incompressible data, sent at 1 MB/s: about 32 s.
    for i in 0..8 {
        fs::write(src.join(format!("f{i}.bin")), noise(4 << 20, 100 + 2 * i)).unwrap();
    }
    let fast = config(&c, &src, "schedule = \"1d\"\n", "");
    let plain = fs::read_to_string(&fast).unwrap();
    let cfg = c.path().join("slow.toml");
    fs::write(
        &cfg,
        plain.replace(
            "[chunking]",
            "[limits]\nmax_upload_rate = 1000000\n\n[chunking]",
        ),
    )
    .unwrap();
    let mut a = Agent::start(&c, &cfg, "agent");
    let checkpoint = c.path().join("state/data.checkpoint");
    let t = Instant::now();
    while !checkpoint.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no checkpoint:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(5));
    let stopped = Instant::now();
    assert_eq!(a.stop(Duration::from_secs(10)), 0, "{}", a.log());
    assert!(stopped.elapsed() < Duration::from_secs(10));
    assert!(
        a.log().contains("resumes from its checkpoint"),
        "{}",
        a.log()
    );
    assert_eq!(snapshots(&c, &cfg), 0, "nothing half-committed");
    assert!(
        checkpoint.exists(),
        "the checkpoint is kept for the next run"
    );
    // The next run (at full speed) resumes: files finished before the
    // stop are not read or sent again.
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", fast.to_str().unwrap(), "backup", "--json"],
    )
    .ok()
    .json();
    let rep = &r[0];
    let resumed = rep["files_resumed"].as_u64().unwrap();
    assert!(resumed >= 1, "{rep:#}");
    assert!(
        rep["bytes_sent"].as_u64().unwrap() <= (32 << 20) - resumed * (4 << 20),
        "{rep:#}"
    );
    let out = c.path().join("out");
    c.restore_latest(&cfg, &out).ok();
    refuge_tests::assert_same_tree(&src, &out);
}
