//! grpc.health.v1 as the supervision platform sees it, through a client
//! refuge did not write (Python's grpcio-health-checking, installed by
//! scripts/setup.sh) and through `refuge health`: NOT_SERVING while the
//! store opens, SERVING, ingest NOT_SERVING (and refusing) while the disk
//! is below its reserve with restores going on, back when space returns,
//! NOT_SERVING while the node stops.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use refuge_tests::{Cluster, free_local_port, run};
use serde_json::Value;

const SERVICES: [&str; 7] = [
    "",
    "refuge.v1.Ingest",
    "refuge.v1.Restore",
    "refuge.v1.Audit",
    "refuge.v1.Admin",
    "refuge.v1.Supervision",
    "refuge.v1.Replication",
];

fn probe_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("health/probe.py")
}

fn python_has_grpc_health() {
    let ok = Command::new("python3")
        .args(["-c", "import grpc_health.v1"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 cannot import grpc_health: run scripts/setup.sh (it installs grpcio-health-checking)"
    );
}

/// The Python watcher: its JSON lines, collected as they arrive.
struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Watcher {
    fn start(c: &Cluster, cert: &str) -> Self {
        let mut args = vec![
            probe_script().display().to_string(),
            "watch".into(),
            format!("127.0.0.1:{}", c.port()),
            c.path().join("certs/ca.pem").display().to_string(),
            c.path()
                .join(format!("certs/{cert}.pem"))
                .display()
                .to_string(),
            c.path()
                .join(format!("certs/{cert}.key"))
                .display()
                .to_string(),
        ];
        args.extend(SERVICES.iter().map(|s| s.to_string()));
        let mut child = Command::new("python3")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().unwrap().push(v);
                }
            }
        });
        Watcher { child, lines }
    }

    /// Statuses seen for `service`, consecutive repeats folded, and "END"
    /// when its stream ended.
    fn seen(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for l in self.lines.lock().unwrap().iter() {
            if l["service"] != service {
                continue;
            }
            let s = match (&l["status"], &l["end"]) {
                (Value::String(s), _) => s.clone(),
                (_, Value::String(_)) => "END".to_string(),
                _ => continue,
            };
            if v.last() != Some(&s) {
                v.push(s);
            }
        }
        v
    }

    #[track_caller]
    fn wait_for(&self, service: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.seen(service).last().map(String::as_str) != Some(status) {
            assert!(
                Instant::now() < deadline,
                "{service:?} never became {status}: {:?}\nall: {:#?}",
                self.seen(service),
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_reserve(c: &Cluster, base: &str, mib: u64) {
    // The node re-reads the file when its size or mtime changes.
    fs::write(
        c.path().join("node.toml"),
        format!("{base}\n[health]\nmin_free_mib = {mib}\ncheck_interval_secs = 1\nplaintext_listen = \"127.0.0.1:{}\"\n", plain_port(c)),
    )
    .unwrap();
}

fn plain_port(c: &Cluster) -> u16 {
    fs::read_to_string(c.path().join("plain.port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn health_json(c: &Cluster, cfg: &str, extra: &[&str]) -> (i32, BTreeMap<String, String>) {
    let mut args = vec!["-c", cfg, "health", "--json"];
    args.extend_from_slice(extra);
    let r = run("refuge", c.path(), &args);
    let m = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["service"].as_str().unwrap().to_string(),
                x["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (r.code, m)
}

#[test]
fn health_goes_from_starting_to_serving_to_disk_low_and_back_to_stopping_as_a_third_party_client_sees_it()
 {
    python_has_grpc_health();
    let mut c = Cluster::configured("");
    let base = fs::read_to_string(c.path().join("node.toml")).unwrap();
    fs::write(c.path().join("plain.port"), free_local_port().to_string()).unwrap();
    set_reserve(&c, &base, 1);
    let probe = c.client(&["--role", "auditor", "--name", "supervision"]);
    let p = probe.to_str().unwrap();

    // The watcher is connected before the store opens (the node waits
    // 3 s before opening it).
    let w = Watcher::start(&c, "auditor-supervision");
    c.start_node_env(&[("REFUGED_TEST_OPEN_DELAY_MS", "3000")]);
    for s in SERVICES {
        w.wait_for(s, "SERVING");
        assert_eq!(w.seen(s)[0], "NOT_SERVING", "{s:?} before the store opened");
    }
    let (code, m) = health_json(&c, p, &[]);
    assert_eq!(code, 0, "{m:?}");
    assert!(m.values().all(|s| s == "SERVING"), "{m:?}");
    // The plaintext loopback port answers the same, without a certificate.
    let plain = format!("127.0.0.1:{}", plain_port(&c));
    let (code, m) = health_json(&c, p, &["--plaintext", &plain]);
    assert_eq!(code, 0, "{m:?}");
    assert_eq!(m.len(), SERVICES.len());

    // A backup to restore from later.
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"kept through a full disk").unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let a = agent.to_str().unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();

    // The disk is "nearly full": a reserve larger than any disk.
    set_reserve(&c, &base, 1 << 40);
    w.wait_for("refuge.v1.Ingest", "NOT_SERVING");
    let (code, m) = health_json(&c, p, &[]);
    assert_eq!(code, 1);
    assert_eq!(m["refuge.v1.Ingest"], "NOT_SERVING");
    assert_eq!(m["refuge.v1.Restore"], "SERVING");
    assert_eq!(m[""], "SERVING");
    // Python's own one-shot Check on the plaintext port agrees.
    let out = Command::new("python3")
        .args([
            probe_script().to_str().unwrap(),
            "check",
            &plain,
            "refuge.v1.Ingest",
            "refuge.v1.Restore",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#""service": "refuge.v1.Ingest", "status": "NOT_SERVING""#)
            && text.contains(r#""service": "refuge.v1.Restore", "status": "SERVING""#),
        "{text}"
    );
    // Ingest refuses, clearly; restores go on.
    fs::write(src.join("b.txt"), b"new data").unwrap();
    run("refuge-agent", c.path(), &["-c", a, "backup"]).fails(1, "nearly full");
    let out = c.path().join("out");
    c.restore_latest(&agent, &out).ok();
    assert_eq!(
        fs::read(out.join("a.txt")).unwrap(),
        b"kept through a full disk"
    );
    let snaps = run("refuge", c.path(), &["-c", a, "snapshots", "--json"])
        .ok()
        .json();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "no half snapshot");

    // Space is back: ingest serves again by itself, and the backup works.
    set_reserve(&c, &base, 1);
    w.wait_for("refuge.v1.Ingest", "SERVING");
    run("refuge-agent", c.path(), &["-c", a, "backup"]).ok();

    // Stopping: NOT_SERVING for everything, then the streams end.
    c.stop_node();
    for s in SERVICES {
        w.wait_for(s, "END");
    }
    assert_eq!(
        w.seen("refuge.v1.Ingest"),
        [
            "NOT_SERVING",
            "SERVING",
            "NOT_SERVING",
            "SERVING",
            "NOT_SERVING",
            "END"
        ]
    );
    for s in ["", "refuge.v1.Restore", "refuge.v1.Supervision"] {
        assert_eq!(
            w.seen(s),
            ["NOT_SERVING", "SERVING", "NOT_SERVING", "END"],
            "{s:?}"
        );
    }
    // The audit log has both disk events.
    c.start_node();
    let log = c.audit(&probe);
    assert!(
        log.iter()
            .any(|e| e["event"] == "disk_low" && e["outcome"] == "failed")
    );
    assert!(log.iter().any(|e| e["event"] == "disk_ok"));
}

#[test]
fn probes_during_startup_get_not_serving_and_refuge_services_answer_unavailable() {
    let mut c = Cluster::configured("");
    let probe = c.client(&["--role", "auditor", "--name", "supervision"]);
    let p = probe.to_str().unwrap();
    c.start_node_listening(&[("REFUGED_TEST_OPEN_DELAY_MS", "4000")]);
    let (code, m) = health_json(&c, p, &[]);
    assert_eq!(code, 1);
    assert!(m.values().all(|s| s == "NOT_SERVING"), "{m:?}");
    // A refuge RPC meanwhile: UNAVAILABLE, named as the node starting.
    let r = run("refuge", c.path(), &["-c", p, "whoami"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("starting"), "{}", r.stderr);
    // An unknown service is reported as such.
    std::thread::sleep(Duration::from_secs(5));
    let (code, m) = health_json(&c, p, &["--service", "refuge.v1.Nope"]);
    assert_eq!(code, 1);
    assert_eq!(m["refuge.v1.Nope"], "SERVICE_UNKNOWN");
    let (code, _) = health_json(&c, p, &[]);
    assert_eq!(code, 0);
}
