//! Logs for journald (issue 21, item 5): `refuged` started the way
//! systemd starts it with `StandardError=journal` (`JOURNAL_STREAM` names
//! its stderr) writes its events to journald's native socket, each with a
//! priority for its level and its fields (the audit records' `F_EVENT`,
//! `F_OUTCOME`, `F_TENANT`: tracing-journald prefixes event fields with
//! `F_`), under the identifier `refuged`, and nothing to stderr. Without
//! a journald it says so and logs to stderr. One test, so that nothing
//! else binds the socket meanwhile.
//!
//! On a machine without journald (this sandbox) the test binds the
//! socket itself at `/run/systemd/journal/socket` and parses the native
//! protocol; on one with journald it reads the journal with `journalctl
//! _PID=… -o json`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use refuge_tests::{Cluster, bin};

const SOCKET: &str = "/run/systemd/journal/socket";

type Entry = HashMap<String, String>;

/// Fields of one native-protocol datagram: `KEY=value` lines, or `KEY`,
/// a u64 LE length, the bytes and a newline for values with newlines.
fn parse(mut d: &[u8]) -> Entry {
    let mut e = Entry::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').unwrap_or(d.len());
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            e.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            d = &d[(nl + 1).min(d.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            e.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            d = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    e
}

/// Where the node's journal entries are read from.
enum Journal {
    /// Our own socket at the journald path, and what it received.
    Fake(Arc<Mutex<Vec<Entry>>>, bool),
    /// The machine's journald.
    Real,
}

impl Journal {
    fn open() -> Self {
        if Path::new(SOCKET).exists() {
            return Journal::Real;
        }
        let dir = Path::new(SOCKET).parent().unwrap();
        let made = !dir.exists();
        fs::create_dir_all(dir).unwrap();
        let sock = UnixDatagram::bind(SOCKET).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = sock.recv(&mut buf) {
                g.lock().unwrap().push(parse(&buf[..n]));
            }
        });
        Journal::Fake(got, made)
    }

    fn entries(&self, pid: u32) -> Vec<Entry> {
        match self {
            Journal::Fake(got, _) => got.lock().unwrap().clone(),
            Journal::Real => {
                let o = Command::new("journalctl")
                    .args([&format!("_PID={pid}"), "-o", "json", "--no-pager"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .map(|v| {
                        v.as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .collect()
            }
        }
    }

    fn wait_for(&self, pid: u32, what: &str, ok: impl Fn(&Entry) -> bool) -> Entry {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.entries(pid).into_iter().find(&ok) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no journal entry {what}: {:#?}",
                self.entries(pid)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Journal::Fake(_, made) = self {
            let _ = fs::remove_file(SOCKET);
            if *made {
                let _ = fs::remove_dir(Path::new(SOCKET).parent().unwrap());
            }
        }
    }
}

/// A node process, killed when dropped (a failed assertion must not
/// leave it writing to the next run's socket).
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(c: &Cluster, env: &[(&str, String)]) -> Node {
    let log = fs::File::create(c.path().join("stderr.log")).unwrap();
    let m = log.metadata().unwrap();
    let mut cmd = Command::new(bin("refuged"));
    cmd.args(["--config", "node.toml"])
        .current_dir(c.path())
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Node(cmd.spawn().unwrap())
}

#[test]
fn under_systemd_the_node_logs_to_journald_with_priorities_and_fields() {
    let c = Cluster::configured("");
    if !Path::new(SOCKET).exists() {
        // No journald here: asked for it, the node logs to stderr and says
        // why.
        let node = start(&c, &[("REFUGE_LOG_FORMAT", "journald".into())]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = c.path().join("stderr.log");
        while !fs::read_to_string(&log)
            .unwrap()
            .contains("store open: serving")
        {
            assert!(
                Instant::now() < deadline,
                "{}",
                fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains("journald cannot be reached"), "{text}");
        drop(node);
    }
    let journal = Journal::open();
    let node = start(&c, &[]);
    let pid = node.0.id();
    let up = journal.wait_for(pid, "saying the store is open", |e| {
        e.get("MESSAGE")
            .is_some_and(|m| m.contains("store open: serving"))
    });
    assert_eq!(up["PRIORITY"], "5", "info is notice: {up:#?}");
    assert_eq!(up["SYSLOG_IDENTIFIER"], "refuged", "{up:#?}");
    // A refused connection: an audit record at warning priority, with the
    // record's fields.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port())).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    drop(s);
    let refused = journal.wait_for(pid, "for the refused connection", |e| {
        e.get("F_EVENT").is_some_and(|v| v == "auth_failed")
    });
    assert_eq!(refused["PRIORITY"], "4", "{refused:#?}");
    assert_eq!(refused["F_OUTCOME"], "refused", "{refused:#?}");
    assert_eq!(refused["TARGET"], "audit", "{refused:#?}");
    assert!(
        refused["MESSAGE"].contains("connection refused"),
        "{refused:#?}"
    );
    // Nothing went to stderr: it all went to the journal.
    drop(node);
    let stderr = fs::read_to_string(c.path().join("stderr.log")).unwrap();
    assert!(!stderr.contains("store open"), "{stderr}");
}
