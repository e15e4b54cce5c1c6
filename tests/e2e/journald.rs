//! Logs for journald (issue 21, item 5): `refuged` started the way
//! systemd starts it with `StandardError=journal` (`JOURNAL_STREAM` names
//! its stderr) writes its events to journald's native socket, each with a
//! priority for its level and its fields (the audit records' `F_EVENT`,
//! `F_OUTCOME`, `F_TENANT`: tracing-journald prefixes event fields with
//! `F_`), under the identifier `refuged`, and nothing to stderr. Without
//! a journald it says so and logs to stderr.
//!
//! The node runs in a mount namespace of its own (`unshare`, as root)
//! whose `/run/systemd` is a fresh tmpfs: first with no journald there,
//! then with the test's own socket bind-mounted as
//! `/run/systemd/journal/socket`, whose datagrams the test parses (the
//! native protocol). Nothing outside the namespace sees either, so other
//! tests and a real journald are left alone.

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

/// A journald of the test's own: a datagram socket in a temporary
/// directory, and what it received. The node sees it at the journald path
/// through a bind mount in a mount namespace of its own (`unshare`), so
/// nothing else on the machine sees it.
struct Journal {
    dir: tempfile::TempDir,
    got: Arc<Mutex<Vec<Entry>>>,
}

impl Journal {
    fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = UnixDatagram::bind(dir.path().join("socket")).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = sock.recv(&mut buf) {
                g.lock().unwrap().push(parse(&buf[..n]));
            }
        });
        Journal { dir, got }
    }

    fn entries(&self) -> Vec<Entry> {
        self.got.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&Entry) -> bool) -> Entry {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.entries().into_iter().find(&ok) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no journal entry {what}: {:#?}",
                self.entries()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A node process, killed when dropped (a failed assertion must not
/// leave it running).
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `refuged` as systemd does with `StandardError=journal`
/// (`JOURNAL_STREAM` names its stderr), in a mount namespace whose
/// `/run/systemd` is empty, with `journal` (if given) bind-mounted at
/// `/run/systemd/journal`.
fn start(c: &Cluster, journal: Option<&Path>, env: &[(&str, &str)]) -> Node {
    let log = fs::File::create(c.path().join("stderr.log")).unwrap();
    let m = log.metadata().unwrap();
    let script = "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && \
                  if [ -n \"$1\" ]; then mount --bind \"$1\" /run/systemd/journal; fi && \
                  exec \"$2\" --config node.toml";
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(journal.map(|p| p.as_os_str()).unwrap_or_default())
    .arg(bin("refuged"))
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
    // No journald: the node logs to stderr and says why.
    let node = start(&c, None, &[]);
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

    // With one: everything goes there, nothing to stderr.
    let journal = Journal::open();
    let node = start(&c, Some(journal.dir.path()), &[]);
    let up = journal.wait_for("saying the store is open", |e| {
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
    let refused = journal.wait_for("for the refused connection", |e| {
        e.get("F_EVENT").is_some_and(|v| v == "auth_failed")
    });
    assert_eq!(refused["PRIORITY"], "4", "{refused:#?}");
    assert_eq!(refused["F_OUTCOME"], "refused", "{refused:#?}");
    assert_eq!(refused["TARGET"], "audit", "{refused:#?}");
    assert!(
        refused["MESSAGE"].contains("connection refused"),
        "{refused:#?}"
    );
    drop(node);
    let stderr = fs::read_to_string(c.path().join("stderr.log")).unwrap();
    assert!(!stderr.contains("store open"), "{stderr}");
}
