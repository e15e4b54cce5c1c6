//! systemd: the unit files pass `systemd-analyze verify` and name commands
//! that exist, with the promised hardening; `refuged` and `refuge-agent
//! run` speak the notify protocol (READY only once the store is open or
//! the configuration is checked, WATCHDOG from the work loop, STATUS,
//! STOPPING), observed on a notify socket made by the test.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use refuge_tests::{Cluster, bin, run};

fn units() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut v = Vec::new();
    for dir in ["daemon/systemd", "agent/systemd"] {
        for e in fs::read_dir(root.join(dir)).unwrap() {
            v.push(e.unwrap().path());
        }
    }
    v.sort();
    v
}

/// `[Service]` keys of a unit (repeated keys joined by a space).
fn service_keys(p: &Path) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut section = String::new();
    for line in fs::read_to_string(p).unwrap().lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if l.starts_with('[') {
            section = l.to_string();
            continue;
        }
        if section == "[Service]"
            && let Some((k, v)) = l.split_once('=')
        {
            let e = out.entry(k.to_string()).or_default();
            if !e.is_empty() {
                e.push(' ');
            }
            e.push_str(v);
        }
    }
    out
}

#[test]
fn unit_files_verify_name_real_commands_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = bin("refuged").parent().unwrap().to_path_buf();
    let mut copies = Vec::new();
    for u in units() {
        let text = fs::read_to_string(&u)
            .unwrap()
            .replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        let to = dir.path().join(u.file_name().unwrap());
        fs::write(&to, text).unwrap();
        copies.push(to);
    }
    let names: Vec<String> = copies
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "refuged.service",
        "refuge-agent.service",
        "refuge-verify.service",
        "refuge-verify.timer",
        "refuge-drill.service",
        "refuge-drill.timer",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // systemd's own checker, failing on any complaint.
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&copies)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed for this test");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every ExecStart is a command line our binaries accept.
    for p in &copies {
        let keys = service_keys(p);
        let Some(exec) = keys.get("ExecStart") else {
            continue;
        };
        let mut args: Vec<&str> = exec.split_whitespace().collect();
        let prog = args.remove(0);
        args.push("--help");
        let st = Command::new(prog)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}: `{exec}` is not accepted: {}",
            p.display(),
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let node = service_keys(&dir.path().join("refuged.service"));
    let agent = service_keys(&dir.path().join("refuge-agent.service"));
    for k in [&node, &agent] {
        assert_eq!(k["Type"], "notify");
        assert!(k.contains_key("WatchdogSec"));
        assert_eq!(k["NoNewPrivileges"], "yes");
        assert_eq!(k["ProtectSystem"], "strict");
        assert_eq!(k["PrivateTmp"], "yes");
        assert!(k.contains_key("StateDirectory"));
    }
    // The agent reads everything and writes only its state directory,
    // which is its default state_dir.
    assert_eq!(agent["AmbientCapabilities"], "CAP_DAC_READ_SEARCH");
    assert_eq!(agent["CapabilityBoundingSet"], "CAP_DAC_READ_SEARCH");
    assert_eq!(agent["StateDirectory"], "refuge-agent");
    let template =
        refuge_client::AgentConfig::parse(include_str!("../../agent/agent.example.toml")).unwrap();
    assert_eq!(template.state_dir, Path::new("/var/lib/refuge-agent"));
    assert_eq!(node["CapabilityBoundingSet"], "");
}

/// Collects notify datagrams (with the time each arrived).
struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                g.lock().unwrap().push((Instant::now(), text));
            }
        });
        NotifySocket { path, got }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        let mut v = Vec::new();
        for (t, msg) in self.got.lock().unwrap().iter() {
            for l in msg.lines() {
                v.push((*t, l.to_string()));
            }
        }
        v
    }

    fn first(&self, line: &str) -> Option<Instant> {
        self.lines()
            .iter()
            .find(|(_, l)| l == line)
            .map(|(t, _)| *t)
    }

    #[track_caller]
    fn wait_for(&self, line: &str, limit: Duration) -> Instant {
        let start = Instant::now();
        loop {
            if let Some(t) = self.first(line) {
                return t;
            }
            assert!(
                start.elapsed() < limit,
                "no {line:?} within {limit:?}: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|(_, l)| l == line).count()
    }
}

#[test]
fn refuged_is_ready_only_once_its_store_is_open_and_pings_its_watchdog() {
    let mut c = Cluster::configured("");
    let n = NotifySocket::new(c.path());
    let started = Instant::now();
    c.start_node_env(&[
        ("NOTIFY_SOCKET", n.path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
        ("REFUGED_TEST_OPEN_DELAY_MS", "1500"),
    ]);
    let ready = n.wait_for("READY=1", Duration::from_secs(30));
    assert!(
        ready.duration_since(started) >= Duration::from_millis(1400),
        "READY before the store opened: {:?}",
        n.lines()
    );
    let opening = n.first("STATUS=opening the store").expect("opening status");
    assert!(opening < ready);
    assert!(n.first("STATUS=serving").is_some(), "{:?}", n.lines());
    // Pings every half second, from a loop that reads the store.
    std::thread::sleep(Duration::from_millis(1800));
    assert!(n.count("WATCHDOG=1") >= 2, "{:?}", n.lines());
    c.stop_node();
    n.wait_for("STOPPING=1", Duration::from_secs(5));
}

#[test]
fn the_agent_service_is_ready_reports_its_work_and_stops_cleanly() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"hello").unwrap();
    let cfg = c.default_agent(&[("data", &src, "tree")]);
    let n = NotifySocket::new(c.path());
    let mut child = Command::new(bin("refuge-agent"))
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .current_dir(c.path())
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    n.wait_for("READY=1", Duration::from_secs(30));
    n.wait_for("STATUS=backing up data", Duration::from_secs(30));
    let t = Instant::now();
    while !n
        .lines()
        .iter()
        .any(|(_, l)| l.starts_with("STATUS=idle; next: data in "))
    {
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", n.lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert!(n.count("WATCHDOG=1") >= 2, "{:?}", n.lines());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    assert!(n.first("STOPPING=1").is_some(), "{:?}", n.lines());
    // The backup it made is there.
    let snaps = run(
        "refuge",
        c.path(),
        &["-c", cfg.to_str().unwrap(), "snapshots", "--json"],
    )
    .ok()
    .json();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
}
