//! A scratch deployment on 127.0.0.1: certificates made by the real
//! `refuge certs` commands, node and agent configuration files, and the
//! real `refuged` process.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use refuge_bench::dataset::Source;

/// Tenant and host of the benchmark's client certificate.
pub const TENANT: &str = "bench";
/// Host of the benchmark's client certificate.
pub const HOST: &str = "bench-host";

/// Directory given with `--bin-dir`, if any.
static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Takes the binaries from `dir` instead of from next to this executable
/// (to compare two builds with one `refuge-bench`).
pub fn set_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// Path of a workspace binary: in `--bin-dir` if given, else next to this
/// executable (`target/debug/`), or one level up when run from
/// `target/debug/deps/`.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(d) = BIN_DIR.get() {
        let p = d.join(name);
        if !p.is_file() {
            bail!("{} not found (--bin-dir)", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found next to {}; build the workspace binaries first (`cargo build --workspace --bins`)",
        exe.display()
    )
}

/// Where [`install`] copied the binaries.
static INSTALLED: OnceLock<PathBuf> = OnceLock::new();

/// The binaries a run uses.
pub const BINARIES: [&str; 3] = ["refuge", "refuge-agent", "refuged"];

/// Copies `refuge`, `refuge-agent` and `refuged` into `dir/bin` and runs
/// those copies from now on, so that a rebuild of the workspace during a
/// run cannot mix two versions.
pub fn install(dir: &Path) -> anyhow::Result<()> {
    let to = dir.join("bin");
    fs::create_dir_all(&to)?;
    for name in BINARIES {
        let from = bin(name)?;
        fs::copy(&from, to.join(name)).with_context(|| format!("copying {}", from.display()))?;
    }
    let _ = INSTALLED.set(to);
    Ok(())
}

/// A command for a workspace binary, run in `cwd`, quiet logging.
pub fn command(name: &str, cwd: &Path) -> anyhow::Result<Command> {
    let path = match INSTALLED.get() {
        Some(d) => d.join(name),
        None => bin(name)?,
    };
    let mut c = Command::new(path);
    c.current_dir(cwd)
        .env_remove("REFUGE_CONFIG")
        .env_remove("REFUGED_CONFIG")
        .env("RUST_LOG", "warn");
    Ok(c)
}

pub fn run_ok(c: Command, what: &str) -> anyhow::Result<()> {
    run_output(c, what).map(|_| ())
}

/// Runs `c` (`what`, for errors) to the end, without input; its output
/// when it exits 0, else an error with its standard error.
pub fn run_output(mut c: Command, what: &str) -> anyhow::Result<std::process::Output> {
    let o = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(o)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Creates `dir/certs` (CA, node, client `bench/bench-host`) with the
/// real `refuge certs init` and `refuge certs issue`.
pub fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let mut init = command("refuge", dir)?;
    init.args(["certs", "init", "certs"]);
    run_ok(init, "refuge certs init")?;
    let mut issue = command("refuge", dir)?;
    issue.args([
        "certs", "issue", "--dir", "certs", "--tenant", TENANT, "--host", HOST,
    ]);
    run_ok(issue, "refuge certs issue")
}

/// Agent settings a benchmark run changes from the agent's defaults.
#[derive(Debug, Clone, Default)]
pub struct AgentSettings {
    /// `[chunking] zstd_level`.
    pub zstd_level: Option<i32>,
    /// Per-source `[source.chunking] avg_size`, by source name.
    pub source_avg_size: Vec<(String, u32)>,
    /// Client-side encryption with a fresh tenant key.
    pub encrypt: bool,
    /// With `encrypt`: the key's suite is the national-standard one
    /// (HMAC-SM3 ids, SM4-GCM), not BLAKE3 and XChaCha20-Poly1305.
    pub sm: bool,
}

impl AgentSettings {
    /// The command-line flags that give these settings.
    pub fn flags(&self) -> String {
        let mut f = String::new();
        if let Some(l) = self.zstd_level {
            f.push_str(&format!(" --zstd-level {l}"));
        }
        for (name, avg) in &self.source_avg_size {
            f.push_str(&format!(" --source-avg-size {name}={avg}"));
        }
        if self.encrypt {
            f.push_str(" --encrypt");
        }
        if self.sm {
            f.push_str(" --suite sm");
        }
        f
    }

    /// In words, for the report.
    pub fn describe(&self) -> String {
        let d = refuge_client::ChunkingConfig::default();
        let kib = |b: u32| b / 1024;
        let mut s = format!(
            "FastCDC {} KiB / {} KiB / {} KiB, zstd level {}",
            kib(d.min_size),
            kib(d.avg_size),
            kib(d.max_size),
            self.zstd_level.unwrap_or(d.zstd_level)
        );
        if !self.source_avg_size.iter().any(|(n, _)| n == "image") {
            let i = refuge_core::ChunkerParams::image();
            s.push_str(&format!(
                "; source `image`: {} KiB / {} KiB / {} KiB (the agent's default for images)",
                kib(i.min_size),
                kib(i.avg_size),
                kib(i.max_size)
            ));
        }
        for (name, avg) in &self.source_avg_size {
            s.push_str(&format!(
                "; source `{name}`: {} KiB / {} KiB / {} KiB",
                kib(avg / 4),
                kib(*avg),
                kib(avg * 4)
            ));
        }
        if self.encrypt && self.sm {
            s.push_str("; encrypted with the national-standard suite (HMAC-SM3 ids, SM4-GCM)");
        } else if self.encrypt {
            s.push_str("; encrypted (keyed BLAKE3 ids, XChaCha20-Poly1305)");
        }
        s
    }
}

/// Writes `dir/node.toml` (store in `dir/store`) and `dir/agent.toml`
/// (the given sources and settings) and checks the agent configuration
/// with the client's own loader.
pub fn write_configs(
    dir: &Path,
    port: u16,
    sources: &[Source],
    settings: &AgentSettings,
) -> anyhow::Result<PathBuf> {
    fs::write(
        dir.join("node.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"store\"\n\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node.pem\"\nkey = \"certs/node.key\"\n"
        ),
    )?;
    let mut agent = format!(
        "[node]\naddress = \"127.0.0.1:{port}\"\nca = \"certs/ca.pem\"\ncert = \"certs/{TENANT}-{HOST}.pem\"\nkey = \"certs/{TENANT}-{HOST}.key\"\n"
    );
    if let Some(l) = settings.zstd_level {
        agent.push_str(&format!("\n[chunking]\nzstd_level = {l}\n"));
    }
    if settings.encrypt {
        if !dir.join("certs/tenant.key").exists() {
            let mut key = command("refuge", dir)?;
            key.args([
                "key",
                "create",
                "--tenant",
                TENANT,
                "--out",
                "certs/tenant.key",
                "--suite",
                if settings.sm { "sm" } else { "standard" },
            ]);
            run_ok(key, "refuge key create")?;
        }
        agent.push_str("\n[encryption]\nkey_file = \"certs/tenant.key\"\n");
    }
    for s in sources {
        agent.push_str(&format!(
            "\n[[source]]\nname = \"{}\"\npath = \"{}\"\nkind = \"{}\"\n",
            s.name,
            s.path.display(),
            s.kind
        ));
        if let Some((_, avg)) = settings.source_avg_size.iter().find(|(n, _)| n == s.name) {
            agent.push_str(&format!("[source.chunking]\navg_size = {avg}\n"));
        }
    }
    let path = dir.join("agent.toml");
    fs::write(&path, agent)?;
    refuge_client::load_config(&path).context("the generated agent.toml")?;
    Ok(path)
}

/// The running node.
pub struct Node {
    child: Option<Child>,
    /// Its process id.
    pub pid: u32,
    log: PathBuf,
}

impl Node {
    /// Starts `refuged --config node.toml` in `dir` and waits until it
    /// accepts connections on `port`.
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<Node> {
        let log_path = dir.join("node.log");
        let log = fs::File::create(&log_path)?;
        let mut c = command("refuged", dir)?;
        c.args(["--config", "node.toml"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = c.spawn().context("starting refuged")?;
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "refuged exited early ({st}):\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("refuged did not listen on 127.0.0.1:{port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Node {
            child: Some(child),
            pid,
            log: log_path,
        })
    }

    /// Stops the node with SIGTERM (it flushes its store) and waits;
    /// returns how long the stop took.
    pub fn stop(&mut self) -> anyhow::Result<Duration> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let start = Instant::now();
        let st = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.pid)])
            .status()?;
        if !st.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let deadline = start + Duration::from_secs(120);
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("refuged did not stop within 120 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("refuged stopped with {status}; log {}", self.log.display());
        }
        Ok(start.elapsed())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of the sizes of the regular files under `dir`, and their count.
pub fn dir_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut total = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let md = e.metadata()?;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total.0 += md.len();
                total.1 += 1;
            }
        }
    }
    Ok(total)
}
