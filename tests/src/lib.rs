//! Helpers for refuge's end-to-end tests: a scratch directory with fresh
//! certificates, a real `refuged` process on 127.0.0.1, and runners for the
//! real `refuge` and `refuge-agent` binaries.
//!
//! The binaries are found next to the test executable (`target/<profile>/`).
//! `cargo test --workspace` and `cargo nextest run --workspace` build them,
//! because the `daemon` and `agent` packages have integration tests.

#![allow(clippy::unwrap_used, missing_docs)]

pub mod browser;
pub mod ceph;
pub mod mariadb;
pub mod postgres;

use std::fs;
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built alongside this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found; build the workspace binaries first (`cargo build --workspace --bins`)",
        p.display()
    );
    p
}

/// Output of a finished command, with helpers.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn fails(self, code: i32, needle: &str) -> Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr does not mention {needle:?}:\n{}",
            self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

/// How long one command of a test may run before it is killed and the
/// test fails naming it (a hang must not hide behind the suite timeout).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a binary with arguments in `cwd`; panics, naming the command and
/// showing what it printed, if it runs longer than two minutes.
pub fn run(name: &str, cwd: &Path, args: &[&str]) -> Run {
    run_env(name, cwd, args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_env(name: &str, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = Command::new(bin(name))
        .args(args)
        .current_dir(cwd)
        .env_remove("REFUGE_CONFIG")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(o) => Run::from(o.unwrap()),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let o = rx.recv().unwrap().unwrap();
            panic!(
                "`{name} {}` did not finish within {}s and was killed\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                COMMAND_TIMEOUT.as_secs(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch deployment: certificates, a node config, a running node.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    node: Option<Child>,
}

impl Cluster {
    /// Fresh certificates (CA, node, client finance/db1) and a started node.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`Cluster::start`], with `extra` appended to `node.toml`.
    pub fn start_with(extra: &str) -> Self {
        let mut c = Self::configured(extra);
        c.start_node();
        c
    }

    /// A started node whose chunk bodies go to a fresh prefix of the
    /// shared Ceph bucket (through `ceph`'s gateway), in packs of
    /// `pack_mib`, with `extra` in `node.toml`; and that prefix.
    pub fn on_ceph(ceph: &ceph::Ceph, pack_mib: usize, extra: &str) -> (Cluster, String) {
        let prefix = ceph.fresh_prefix("node");
        let mut c = Self::configured("");
        let toml = ceph.node_toml(c.path(), &prefix, pack_mib);
        let path = c.path().join("node.toml");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{text}{extra}{toml}")).unwrap();
        c.start_node();
        (c, prefix)
    }

    /// With the node stopped, on a node made by [`Cluster::on_ceph`]: the
    /// packs under `prefix` are exactly those its catalog records, and no
    /// upload is unfinished.
    pub fn assert_bucket_matches_catalog(&self, ceph: &ceph::Ceph, prefix: &str) {
        let opts = refuge_store_rocksdb::RocksOptions {
            bodies: refuge_store_rocksdb::Bodies::Packs,
            ..Default::default()
        };
        let db =
            refuge_store_rocksdb::RocksStore::open_read_only(&self.path().join("store"), &opts)
                .unwrap();
        assert!(db.unfinished_packs().unwrap().is_empty());
        let mut recorded: Vec<String> = db
            .stored_packs()
            .unwrap()
            .iter()
            .map(|p| format!("{prefix}/packs/finance/{:016x}", p.pack))
            .collect();
        recorded.sort();
        let mut stored = ceph.list(&format!("{prefix}/packs/"));
        stored.sort();
        assert_eq!(recorded, stored);
    }

    /// Certificates and `node.toml` (with `extra`), the node not started.
    pub fn configured(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        run("refuge", dir.path(), &["certs", "init", "certs"]).ok();
        run(
            "refuge",
            dir.path(),
            &[
                "certs", "issue", "--dir", "certs", "--tenant", "finance", "--host", "db1",
            ],
        )
        .ok();
        let port = free_port();
        fs::write(
            dir.path().join("node.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"store\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node.pem\"\nkey = \"certs/node.key\"\n{extra}"
            ),
        )
        .unwrap();
        Cluster {
            dir,
            port,
            node: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The node's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts `refuged` and waits until it accepts connections.
    pub fn start_node(&mut self) {
        self.start_node_env(&[]);
    }

    /// Starts `refuged` with its clock moved by `offset` (libfaketime
    /// syntax: `+3d`, `-2h`); monotonic time is left alone, so timers
    /// work. libfaketime is installed by `scripts/setup.sh`.
    pub fn start_node_at(&mut self, offset: &str) {
        self.start_node_env(&faketime(offset));
    }

    /// Starts `refuged` with these environment variables and waits until
    /// it serves (its store is open: the listener accepts connections
    /// before that, and refuge RPCs answer UNAVAILABLE until then).
    pub fn start_node_env(&mut self, env: &[(&str, &str)]) {
        self.spawn_node(env, true);
    }

    /// Starts `refuged` and returns as soon as it accepts connections,
    /// possibly before its store is open (for tests of that phase).
    pub fn start_node_listening(&mut self, env: &[(&str, &str)]) {
        self.spawn_node(env, false);
    }

    fn spawn_node(&mut self, env: &[(&str, &str)], until_serving: bool) {
        assert!(self.node.is_none());
        // node.log is appended to across restarts: count the lines of
        // earlier starts.
        const SERVING: &str = "store open: serving";
        let served_before = self.node_log().matches(SERVING).count();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("node.log"))
            .unwrap();
        let mut child = Command::new(bin("refuged"))
            .args(["--config", "node.toml"])
            .current_dir(self.path())
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("refuged exited early ({status}):\n{}", self.node_log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && (!until_serving || self.node_log().matches(SERVING).count() > served_before)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "refuged did not start:\n{}",
                self.node_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.node = Some(child);
    }

    /// Stops the node with SIGTERM (it flushes its store) and waits.
    pub fn stop_node(&mut self) {
        if let Some(mut child) = self.node.take() {
            let pid = child.id() as i32;
            // SAFETY-free: kill(1) through the shell keeps this crate safe.
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("refuged did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the node with SIGKILL (no flush, no shutdown) and reaps it.
    pub fn kill_node(&mut self) {
        if let Some(mut child) = self.node.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most 60 s) for the node to exit by itself, for example at
    /// a fail point configured to crash, and returns how it ended.
    pub fn wait_node_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.node.take().expect("node running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("refuged did not exit:\n{}", self.node_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the running node.
    pub fn signal_node(&self, sig: &str) {
        let pid = self.node.as_ref().expect("node running").id();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The running node's resident memory now and at its peak, in MiB
    /// (`VmRSS`, `VmHWM` of /proc).
    pub fn node_rss_mib(&self) -> (u64, u64) {
        let pid = self.node.as_ref().expect("node running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib / 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Issues a client certificate with `refuge certs issue --dir certs
    /// ARGS` and returns a client config using it (no sources), named
    /// after the certificate.
    pub fn client(&self, args: &[&str]) -> PathBuf {
        let mut all = vec!["certs", "issue", "--dir", "certs"];
        all.extend_from_slice(args);
        let r = run("refuge", self.path(), &all).ok();
        let file = r
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("cert = "))
            .unwrap_or_else(|| panic!("no certificate named in {:?}", r.stdout))
            .trim_matches('"')
            .to_string();
        let base = Path::new(&file)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        self.agent_config(
            &format!("{base}.toml"),
            &format!("certs/{base}"),
            "certs/ca.pem",
            &[],
        )
    }

    /// The audit log as `refuge audit --json` prints it, read with the
    /// auditor config `auditor`.
    pub fn audit(&self, auditor: &Path) -> Vec<serde_json::Value> {
        let r = run(
            "refuge",
            self.path(),
            &["-c", auditor.to_str().unwrap(), "audit", "--json"],
        )
        .ok();
        r.json().as_array().unwrap().clone()
    }

    pub fn node_log(&self) -> String {
        fs::read_to_string(self.path().join("node.log")).unwrap_or_default()
    }

    /// Writes an agent config with the given cert basename and sources
    /// (`name`, `path`, `kind`).
    pub fn agent_config(
        &self,
        file: &str,
        cert: &str,
        ca: &str,
        sources: &[(&str, &Path, &str)],
    ) -> PathBuf {
        let mut text = format!(
            "state_dir = \"state\"\n[node]\naddress = \"127.0.0.1:{}\"\nca = \"{ca}\"\ncert = \"{cert}.pem\"\nkey = \"{cert}.key\"\nconnect_timeout_secs = 5\n\n[chunking]\nmin_size = 65536\navg_size = 262144\nmax_size = 1048576\n",
            self.port
        );
        for (name, path, kind) in sources {
            text.push_str(&format!(
                "\n[[source]]\nname = \"{name}\"\npath = \"{}\"\nkind = \"{kind}\"\n",
                path.display()
            ));
        }
        let p = self.path().join(file);
        fs::write(&p, text).unwrap();
        p
    }

    /// Backs up the tree `src` as source `data` with the default client,
    /// restores `latest` into a fresh directory and checks it matches.
    pub fn round_trip(&self, src: &Path) {
        let cfg = self.default_agent(&[("data", src, "tree")]);
        let cfg = cfg.to_str().unwrap();
        run("refuge-agent", self.path(), &["-c", cfg, "backup"]).ok();
        let out = tempfile::tempdir_in(self.path()).unwrap();
        let target = out.path().join("restored");
        run(
            "refuge",
            self.path(),
            &[
                "-c",
                cfg,
                "restore",
                "latest",
                "--target",
                target.to_str().unwrap(),
            ],
        )
        .ok();
        assert_same_tree(src, &target);
    }

    /// `refuge -c CFG snapshots --json`: the snapshots CFG's identity sees,
    /// oldest first.
    pub fn snapshots(&self, cfg: &Path) -> Vec<serde_json::Value> {
        run(
            "refuge",
            self.path(),
            &["-c", cfg.to_str().unwrap(), "snapshots", "--json"],
        )
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
    }

    /// `refuge -c CFG ARGS...`, as a [`Run`] (the caller checks it).
    pub fn refuge(&self, cfg: &Path, args: &[&str]) -> Run {
        let mut all = vec!["-c", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        run("refuge", self.path(), &all)
    }

    /// What `refuge health --service SERVICE` as client `cfg` says of
    /// `service` (`SERVING`, `NOT_SERVING`, ...).
    pub fn health(&self, cfg: &Path, service: &str) -> String {
        let r = self.refuge(cfg, &["health", "--json", "--service", service]);
        r.json()[0]["status"].as_str().unwrap().to_string()
    }

    /// `refuge admin verify` as the admin client `admin` finds no damage.
    pub fn assert_verify_clean(&self, admin: &Path) {
        let v = self.refuge(admin, &["admin", "verify"]).ok();
        assert!(v.stdout.contains("no damage found"), "{}", v.stdout);
    }

    /// Sets `tenant`'s retention to keep the last `n` snapshots of each
    /// source, as the admin client `admin`.
    pub fn keep_last(&self, admin: &Path, tenant: &str, n: u32) {
        let n = n.to_string();
        self.refuge(
            admin,
            &[
                "admin",
                "retention",
                "set",
                "--tenant",
                tenant,
                "--keep-last",
                &n,
            ],
        )
        .ok();
    }

    /// `refuge -c CFG restore latest --target TARGET`, as a [`Run`] (the
    /// caller checks the outcome).
    pub fn restore_latest(&self, cfg: &Path, target: &Path) -> Run {
        run(
            "refuge",
            self.path(),
            &[
                "-c",
                cfg.to_str().unwrap(),
                "restore",
                "latest",
                "--target",
                target.to_str().unwrap(),
            ],
        )
    }

    /// `refuge -c CFG restore latest --source SOURCE --target TARGET`: the
    /// latest snapshot of one of the client's sources, as a [`Run`].
    pub fn restore_source(&self, cfg: &Path, source: &str, target: &Path) -> Run {
        self.refuge(
            cfg,
            &[
                "restore",
                "latest",
                "--source",
                source,
                "--target",
                target.to_str().unwrap(),
            ],
        )
    }

    /// Creates tenant finance's key at `certs/finance.key` (`refuge key
    /// create`) and writes `sealed.toml`: the default client with these
    /// sources and `[encryption] key_file` set to it.
    pub fn sealed_agent(&self, sources: &[(&str, &Path, &str)]) -> PathBuf {
        let key = "certs/finance.key";
        run(
            "refuge",
            self.path(),
            &["key", "create", "--tenant", "finance", "--out", key],
        )
        .ok();
        let plain = self.default_agent(sources);
        self.with_key(&plain, key, "sealed.toml")
    }

    /// Writes `name`: the client config `base` with `[encryption] key_file
    /// = key` added.
    pub fn with_key(&self, base: &Path, key: &str, name: &str) -> PathBuf {
        let cfg = self.path().join(name);
        fs::write(
            &cfg,
            format!(
                "{}\n[encryption]\nkey_file = \"{key}\"\n",
                fs::read_to_string(base).unwrap()
            ),
        )
        .unwrap();
        cfg
    }

    /// The default client (finance/db1) config with these sources.
    pub fn default_agent(&self, sources: &[(&str, &Path, &str)]) -> PathBuf {
        self.agent_config("agent.toml", "certs/finance-db1", "certs/ca.pem", sources)
    }

    /// [`Cluster::default_agent`] after one successful backup of its sources.
    pub fn backed_up_agent(&self, sources: &[(&str, &Path, &str)]) -> PathBuf {
        let cfg = self.default_agent(sources);
        run(
            "refuge-agent",
            self.path(),
            &["-c", cfg.to_str().unwrap(), "backup"],
        )
        .ok();
        cfg
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.node.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts that two trees have the same entries, types, contents, modes,
/// mtimes (files and symlinks; directories too) and symlink targets.
#[track_caller]
/// Names in `dir` that are restore temporary files (`.refuge-restore-*`):
/// a failed restore leaves none.
pub fn restore_temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".refuge-restore"))
        .collect()
}

pub fn assert_same_tree(want: &Path, got: &Path) {
    let list = |root: &Path| -> Vec<PathBuf> {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                v.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
        v.sort();
        v
    };
    let a = list(want);
    let b = list(got);
    assert_eq!(a, b, "restored tree has different entries");
    for rel in std::iter::once(PathBuf::new()).chain(a) {
        let (pa, pb) = (want.join(&rel), got.join(&rel));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        let what = String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned();
        assert_eq!(ma.file_type(), mb.file_type(), "type of {what:?}");
        assert_eq!(ma.mode(), mb.mode(), "mode of {what:?}");
        assert_eq!(
            (ma.uid(), ma.gid()),
            (mb.uid(), mb.gid()),
            "owner of {what:?}"
        );
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&pa).unwrap(),
                fs::read_link(&pb).unwrap(),
                "target of {what:?}"
            );
        } else {
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "mtime of {what:?}"
            );
        }
        if ma.is_file() {
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "contents of {what:?} differ"
            );
        }
    }
}

/// Whether any file under `dir` contains `needle` (a plaintext marker
/// looked for in a node's store).
pub fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            tree_contains(&p, needle)
        } else {
            fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

/// Copies a tree with metadata (`cp -a`).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A TCP proxy on 127.0.0.1 in front of the node that stalls links: each
/// of the first `stalls` connections forwards nothing, in either
/// direction, for `stall` once `after` bytes have gone from the client to
/// the node (the sockets stay open, as on a link that went quiet); later
/// connections pass untouched.
pub struct StallProxy {
    pub port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl StallProxy {
    pub fn start(target: u16, after: u64, stall: Duration, stalls: u32) -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpStream};
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicU32::new(0));
        let count = stalled.clone();
        std::thread::spawn(move || {
            let mut conns = 0u32;
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let faulty = conns < stalls;
                conns += 1;
                // Until when this connection is stalled, once it is.
                let until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
                let pump = |mut from: TcpStream, mut to: TcpStream, counted: bool| {
                    let until = until.clone();
                    let count = count.clone();
                    move || {
                        let mut sent = 0u64;
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if counted && faulty && sent + n as u64 >= after {
                                let mut u = until.lock().unwrap();
                                if u.is_none() {
                                    *u = Some(Instant::now() + stall);
                                    count.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            loop {
                                let wait = until.lock().unwrap().map(|t| t > Instant::now());
                                if wait != Some(true) {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            sent += n as u64;
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    }
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(pump(client, server, true));
                std::thread::spawn(pump(s2, c2, false));
            }
        });
        StallProxy { port, stalled }
    }

    /// How many connections have stalled so far.
    pub fn stalls_made(&self) -> u32 {
        self.stalled.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Commits the manifest of the latest snapshot of `agent_cfg`'s identity
/// again, `n` times one after the other, with commit token `token`
/// (`None`: without one). The answer to each.
pub fn commit_latest_again(
    agent_cfg: &Path,
    n: usize,
    token: Option<[u8; 16]>,
) -> Vec<Result<refuge_proto::pb::CommitSnapshotResponse, tonic::Status>> {
    use refuge_proto::pb;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let cfg = refuge_client::load_config(agent_cfg).unwrap();
        let node = refuge_client::connect(&cfg.node).await.unwrap();
        let snap = node
            .restore
            .clone()
            .resolve_snapshot(pb::ResolveSnapshotRequest {
                selector: "latest".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let r = node
                .ingest
                .clone()
                .commit_snapshot(pb::CommitSnapshotRequest {
                    source: snap.source.clone(),
                    kind: snap.kind,
                    manifest: snap.manifest.clone(),
                    commit_token: token.map(|t| t.to_vec()).unwrap_or_default(),
                    ..Default::default()
                })
                .await;
            out.push(r.map(|r| r.into_inner()));
        }
        out
    })
}

/// Waits up to 30 s for `ok`, failing with `what` and `context()`.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool, context: impl Fn() -> String) {
    let t = std::time::Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{what}: not after 30 s\n{}",
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A TCP proxy on 127.0.0.1 in front of the node that cuts connections:
/// a connection is cut (both directions shut down) once `cut_after` bytes
/// have gone through it from the client to the node, until `cuts`
/// connections have been cut; after that everything passes untouched. It counts the bytes it forwards
/// from clients to the node.
pub struct CutProxy {
    pub port: u16,
    made: std::sync::Arc<std::sync::atomic::AtomicU32>,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CutProxy {
    pub fn start(target: u16, cut_after: u64, cuts: u32) -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let made = Arc::new(AtomicU32::new(0));
        let cut_count = made.clone();
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fwd = forwarded.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                // Without this, Nagle's algorithm and delayed ACKs add
                // 40 ms to every small request through the proxy.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let made = cut_count.clone();
                let fwd = fwd.clone();
                // Client to node, counted.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, server);
                    let mut sent = 0u64;
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        fwd.fetch_add(n as u64, Ordering::SeqCst);
                        // The first `cuts` connections to carry `cut_after`
                        // bytes are cut; a short connection (one that the
                        // agent drops itself, say after a slow handshake)
                        // does not use up a cut.
                        if sent >= cut_after
                            && made
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                                    (m < cuts).then_some(m + 1)
                                })
                                .is_ok()
                        {
                            break;
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
                // Node to client.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        CutProxy {
            port,
            made,
            forwarded,
        }
    }

    /// Bytes forwarded from clients to the node so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections were cut so far.
    pub fn cuts_made(&self) -> u32 {
        self.made.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The environment that runs a program with its clock moved by `offset`
/// (libfaketime syntax: `+3d`, `-2h`; monotonic time untouched).
/// libfaketime is installed by `scripts/setup.sh`.
pub fn faketime(offset: &str) -> [(&'static str, &str); 3] {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "{lib} is missing: install libfaketime (scripts/setup.sh does)"
    );
    [
        ("LD_PRELOAD", lib),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
}

/// A free TCP port on 127.0.0.1 (for a node's metrics endpoint).
pub fn free_local_port() -> u16 {
    free_port()
}

/// `GET path` over plain HTTP/1.1 on 127.0.0.1:`port`: the body.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

impl Cluster {
    /// Damages every RocksDB blob file of the stopped node (where chunk
    /// bodies live): `len` bytes in the middle of each are inverted.
    /// Returns how many files were damaged (at least one, or it panics).
    pub fn flip_blob_bytes(&self, len: usize) -> usize {
        assert!(self.node.is_none(), "stop the node first");
        let mut flipped = 0;
        for e in fs::read_dir(self.path().join("store")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "blob") {
                let mut b = fs::read(&p).unwrap();
                let mid = b.len() / 2;
                for x in &mut b[mid..mid + len] {
                    *x ^= 0xff;
                }
                fs::write(&p, b).unwrap();
                flipped += 1;
            }
        }
        assert!(flipped > 0, "no blob files found in the store");
        flipped
    }
}

/// What a compromised agent can do with its own certificate: commit its
/// latest snapshot's manifest again, `n` times, as fast as it can. The
/// outcome of each commit.
pub fn replay_latest(agent_cfg: &Path, n: usize) -> Vec<Result<(), tonic::Status>> {
    commit_latest_again(agent_cfg, n, None)
        .into_iter()
        .map(|r| r.map(|_| ()))
        .collect()
}

/// A seeded xorshift generator for the fault harnesses (repeatable runs).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// An environment variable as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The TOTP code (RFC 6238: SHA-1, 6 digits, 30 s) of the base32
/// `secret` `steps` steps from now, as an authenticator app shows it.
pub fn totp_code(secret: &str, steps: i64) -> String {
    use totp_rs::{Algorithm, Builder, Secret};
    let t = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    t.generate((now + steps * 30) as u64).to_string()
}

/// Waits, if needed, until at least 8 s remain in the current TOTP step,
/// so that codes computed now are still in the node's window when checked.
pub fn early_in_totp_step() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now % 30 > 22 {
        std::thread::sleep(Duration::from_secs(31 - now % 30));
    }
}
