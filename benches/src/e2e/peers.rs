//! The peers, measured in the same run as refuge on the same seeded data:
//! restic and Borg from Debian's packages (installed with apt-get when
//! missing), each writing to a local repository in the run's directory.
//!
//! restic encrypts (AES-256 + Poly1305) and compresses (zstd, `auto`);
//! Borg runs with `repokey-blake2` encryption and its default lz4. Both
//! back up the three sources in one command, as `refuge-agent backup`
//! does, and restore the latest snapshot of all of them in one command.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::measure::{self, Measured};

/// A peer tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// restic (Debian package `restic`).
    Restic,
    /// Borg (Debian package `borgbackup`).
    Borg,
}

/// Both peers, in the order they are run and reported.
pub const TOOLS: [Tool; 2] = [Tool::Restic, Tool::Borg];

impl Tool {
    /// The name shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Restic => "restic",
            Tool::Borg => "Borg",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Tool::Restic => "restic",
            Tool::Borg => "borg",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Tool::Restic => "restic",
            Tool::Borg => "borgbackup",
        }
    }

    /// How it is run, for the report.
    pub fn settings(self) -> &'static str {
        match self {
            Tool::Restic => "repository format 2, AES-256 + Poly1305, zstd `auto`",
            Tool::Borg => "`repokey-blake2`, lz4 (its default)",
        }
    }

    /// The installed version (`restic version`, `borg --version`).
    pub fn version(self) -> anyhow::Result<String> {
        let arg = match self {
            Tool::Restic => "version",
            Tool::Borg => "--version",
        };
        let out = Command::new(self.program())
            .arg(arg)
            .output()
            .with_context(|| format!("running {} {arg}", self.program()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split_whitespace()
            .nth(1)
            .unwrap_or("unknown")
            .to_string())
    }
}

/// Installs restic and Borg with apt-get when they are missing.
pub fn ensure_installed() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|t| {
            Command::new(t.program())
                .arg("--help")
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .map(|t| t.package())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "refuge-bench: installing {} with apt-get",
        missing.join(" ")
    );
    let sudo = !is_root();
    let mut c = if sudo {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    } else {
        Command::new("apt-get")
    };
    c.args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let st = c.status().context("running apt-get")?;
    if !st.success() {
        bail!(
            "apt-get install {} failed ({st}); install them, or run with --no-peers",
            missing.join(" ")
        );
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// One peer's repository in a run directory.
pub struct Repo {
    /// The tool.
    pub tool: Tool,
    /// The repository directory.
    pub path: PathBuf,
    dir: PathBuf,
}

impl Repo {
    fn command(&self) -> Command {
        let mut c = Command::new(self.tool.program());
        c.current_dir(&self.dir)
            .env("RESTIC_PASSWORD", "refuge-bench")
            .env("RESTIC_REPOSITORY", &self.path)
            .env("RESTIC_CACHE_DIR", self.dir.join("restic-cache"))
            .env("BORG_PASSPHRASE", "refuge-bench")
            .env("BORG_REPO", &self.path)
            .env("BORG_BASE_DIR", self.dir.join("borg-base"))
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
        c
    }

    /// Creates the repository `TOOL-repo` in `dir`.
    pub fn init(tool: Tool, dir: &Path) -> anyhow::Result<Repo> {
        let repo = Repo {
            tool,
            path: dir.join(format!("{}-repo", tool.program())),
            dir: dir.to_path_buf(),
        };
        let mut c = repo.command();
        match tool {
            Tool::Restic => c.args(["init", "-q"]),
            Tool::Borg => c.args(["init", "-e", "repokey-blake2"]),
        };
        let out = c
            .output()
            .with_context(|| format!("running {} init", tool.program()))?;
        if !out.status.success() {
            bail!(
                "{} init failed: {}",
                tool.program(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(repo)
    }

    /// Backs up `paths` (absolute) as generation `generation`.
    pub fn backup(&self, generation: usize, paths: &[PathBuf]) -> anyhow::Result<Measured> {
        let mut c = self.command();
        match self.tool {
            Tool::Restic => c.args(["backup", "-q"]),
            Tool::Borg => c.args(["create", &format!("::gen{generation}")]),
        };
        c.args(paths);
        let name = format!("{}-backup-{generation}", self.tool.program());
        measure::run(c, &self.dir, &name)
    }

    /// Restores the latest generation (`generation`) into `target`.
    pub fn restore(&self, generation: usize, target: &Path) -> anyhow::Result<Measured> {
        std::fs::create_dir_all(target)?;
        let mut c = self.command();
        match self.tool {
            Tool::Restic => {
                c.args(["restore", "-q", "latest", "--target"]).arg(target);
            }
            Tool::Borg => {
                c.current_dir(target)
                    .args(["extract", "--sparse", &format!("::gen{generation}")]);
            }
        }
        let name = format!("{}-restore-{generation}", self.tool.program());
        measure::run(c, &self.dir, &name)
    }

    /// Where `source` (an absolute path that was backed up) lands under
    /// a restore `target`: restic keeps the absolute path, Borg drops the
    /// leading `/`; both then sit below the target.
    pub fn restored(&self, target: &Path, source: &Path) -> PathBuf {
        target.join(source.strip_prefix("/").unwrap_or(source))
    }
}

/// One peer phase reduced to numbers.
#[derive(Debug, Clone, Default)]
pub struct PeerPhase {
    /// Wall time in seconds.
    pub wall: f64,
    /// Peak RSS, KiB.
    pub kib: u64,
    /// CPU seconds (user + system).
    pub cpu: f64,
    /// Why it failed.
    pub failure: Option<String>,
}

impl PeerPhase {
    fn of(m: &Measured) -> PeerPhase {
        PeerPhase {
            wall: m.wall.as_secs_f64(),
            kib: m.peak_rss_kib,
            cpu: m.cpu_user + m.cpu_sys,
            failure: m.failure.clone(),
        }
    }
}

/// What one peer did in a run.
#[derive(Debug, Clone)]
pub struct PeerData {
    /// The tool.
    pub tool: Tool,
    /// One backup per generation.
    pub backups: Vec<PeerPhase>,
    /// The restore of the last generation.
    pub restore: PeerPhase,
    /// Bytes in the repository after the last backup.
    pub repo_bytes: u64,
    /// How the restore differed from the source (empty: identical).
    pub problems: Vec<String>,
}

/// The peers of one run.
pub struct Peers {
    repos: Vec<Repo>,
    /// Their results so far.
    pub data: Vec<PeerData>,
}

impl Peers {
    /// Fresh repositories for every peer in `dir`.
    pub fn init(dir: &Path) -> anyhow::Result<Peers> {
        let repos = TOOLS
            .iter()
            .map(|t| Repo::init(*t, dir))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data = repos
            .iter()
            .map(|r| PeerData {
                tool: r.tool,
                backups: Vec::new(),
                restore: PeerPhase::default(),
                repo_bytes: 0,
                problems: Vec::new(),
            })
            .collect();
        Ok(Peers { repos, data })
    }

    /// Every peer backs up `paths` as generation `generation`.
    pub fn backup(
        &mut self,
        generation: usize,
        paths: &[PathBuf],
        log: &dyn Fn(String),
    ) -> anyhow::Result<()> {
        for (repo, d) in self.repos.iter().zip(&mut self.data) {
            let m = repo.backup(generation, paths)?;
            let p = PeerPhase::of(&m);
            log(format!(
                "{} backup {generation}: {:.2} s, peak {} KiB{}",
                repo.tool.name(),
                p.wall,
                p.kib,
                p.failure
                    .as_deref()
                    .map(|f| format!(", FAILED: {f}"))
                    .unwrap_or_default()
            ));
            d.backups.push(p);
            d.repo_bytes = super::cluster::dir_size(&repo.path)?.0;
        }
        Ok(())
    }

    /// Every peer restores generation `generation` into `DIR/TOOL-restore`;
    /// each source is compared with its digest. The restore stays until
    /// the scratch directory goes: on ext4 without a journal, files created
    /// within minutes of many deletions are slow to create (the inode
    /// allocator skips recently deleted inodes), which would slow the next
    /// peer's restore and the next run's.
    pub fn restore(
        &mut self,
        generation: usize,
        dir: &Path,
        sources: &[(PathBuf, &refuge_bench::dataset::Digest)],
        log: &dyn Fn(String),
    ) -> anyhow::Result<()> {
        for (repo, d) in self.repos.iter().zip(&mut self.data) {
            let target = dir.join(format!("{}-restore", repo.tool.program()));
            let m = repo.restore(generation, &target)?;
            d.restore = PeerPhase::of(&m);
            if let Some(f) = &m.failure {
                d.problems.push(format!("restore failed: {f}"));
            } else {
                for (path, want) in sources {
                    let got = refuge_bench::dataset::digest(&repo.restored(&target, path))?;
                    let (problems, _) = want.differences(&got, 3);
                    d.problems.extend(
                        problems
                            .into_iter()
                            .map(|p| format!("{}: {p}", path.display())),
                    );
                }
            }
            log(format!(
                "{} restore: {:.2} s, peak {} KiB, {}",
                repo.tool.name(),
                d.restore.wall,
                d.restore.kib,
                if d.problems.is_empty() {
                    "identical to the source".to_string()
                } else {
                    format!("DIFFERS: {}", d.problems.join("; "))
                }
            ));
            super::sync();
        }
        Ok(())
    }
}
