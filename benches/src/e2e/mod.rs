//! The end-to-end benchmark: a real node, the real agent and CLI, a seeded
//! data set; initial backup, ~5% mutation, incremental backup, verified
//! restore of every source.

pub mod bucket;
pub mod cluster;
pub mod contention;
pub mod loopback;
pub mod machine;
pub mod measure;
pub mod peers;
mod peers_report;
pub mod postgres;
pub mod replication;
mod replication_report;
pub mod report;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use refuge_bench::dataset::{self, Dataset};

use cluster::Node;
use machine::Machine;
use measure::Measured;
use report::{mb, mb_per_s, mib_from_kib, secs};

/// Options of an end-to-end run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Data set size in bytes.
    pub size: u64,
    /// The size as the user wrote it (for headings).
    pub size_text: String,
    /// Data seed.
    pub seed: u64,
    /// Where to put the scratch directory.
    pub dir: Option<PathBuf>,
    /// Keep the scratch directory.
    pub keep: bool,
    /// BENCHMARKS.md to update.
    pub out: Option<PathBuf>,
    /// Section label in `out`.
    pub label: String,
    /// Complete runs (fresh scratch directory and node each); the report
    /// shows medians.
    pub runs: usize,
    /// Agent settings that differ from its defaults.
    pub agent: cluster::AgentSettings,
    /// Run restic and Borg on the same data in the same run.
    pub peers: bool,
    /// Chunk bodies in this S3 bucket (`[store] backend = "s3"`) instead
    /// of RocksDB.
    pub bucket: Option<std::sync::Arc<bucket::Bucket>>,
}

/// What the node did during a phase.
#[derive(Debug, Clone, Copy, Default)]
struct NodeStats {
    /// Peak RSS during the phase (since start if resetting failed), KiB.
    peak_kib: u64,
    /// CPU seconds during the phase.
    cpu: f64,
    /// Busy CPU seconds of the machine during the phase.
    busy: f64,
}

/// One measured phase.
struct Phase {
    name: String,
    logical: u64,
    client: Measured,
    sent: Option<u64>,
    node: NodeStats,
}

/// A phase reduced to numbers (also for the sum of the restores).
#[derive(Debug, Clone)]
struct Row {
    name: String,
    logical: u64,
    wall: f64,
    sent: Option<u64>,
    client_kib: u64,
    client_user: f64,
    client_sys: f64,
    node_kib: u64,
    node_cpu: f64,
    /// Machine busy time not spent by the client or the node.
    other: f64,
    /// The command failed (its numbers are left out of the medians).
    failed: bool,
}

impl Row {
    fn of(p: &Phase) -> Row {
        Row {
            name: p.name.clone(),
            logical: p.logical,
            wall: p.client.wall.as_secs_f64(),
            sent: p.sent,
            client_kib: p.client.peak_rss_kib,
            client_user: p.client.cpu_user,
            client_sys: p.client.cpu_sys,
            node_kib: p.node.peak_kib,
            node_cpu: p.node.cpu,
            other: (p.node.busy - p.client.cpu_user - p.client.cpu_sys - p.node.cpu).max(0.0),
            failed: p.client.failure.is_some(),
        }
    }

    fn sum(name: &str, rows: &[Row]) -> Row {
        Row {
            name: name.into(),
            logical: rows.iter().map(|r| r.logical).sum(),
            wall: rows.iter().map(|r| r.wall).sum(),
            sent: None,
            client_kib: rows.iter().map(|r| r.client_kib).max().unwrap_or(0),
            client_user: rows.iter().map(|r| r.client_user).sum(),
            client_sys: rows.iter().map(|r| r.client_sys).sum(),
            node_kib: rows.iter().map(|r| r.node_kib).max().unwrap_or(0),
            node_cpu: rows.iter().map(|r| r.node_cpu).sum(),
            other: rows.iter().map(|r| r.other).sum(),
            failed: rows.iter().any(|r| r.failed),
        }
    }
}

/// How a restore compared with its source.
struct Verification {
    source: &'static str,
    /// Entries that differ.
    count: usize,
    /// The first differences, readable.
    problems: Vec<String>,
}

/// One source's line of a backup's JSON report.
struct SourceBackup {
    phase: &'static str,
    source: String,
    bytes_read: u64,
    /// Bytes of files the agent found unchanged and did not read.
    bytes_reused: u64,
    files_unchanged: u64,
    /// Bytes of changed files and images found unchanged block by block.
    bytes_unchanged_blocks: u64,
    hole_bytes: u64,
    /// Holes of the parent still holes in the file: not read.
    hole_bytes_unread: u64,
    chunks: u64,
    chunks_new: u64,
    bytes_sent: u64,
    secs: f64,
}

/// A benchmark's scratch directory with the binaries installed in it;
/// removed when dropped unless kept (`--keep`, which also keeps it when
/// the benchmark fails).
pub(crate) struct Scratch {
    /// The directory.
    pub(crate) top: std::path::PathBuf,
    _guard: Option<tempfile::TempDir>,
}

impl Scratch {
    /// Checks that every binary exists, creates the directory (named
    /// `prefix`… in `dir` or the system's temporary directory), logs it
    /// and installs the binaries.
    pub(crate) fn prepare(
        dir: Option<&std::path::Path>,
        prefix: &str,
        keep: bool,
        t0: Instant,
    ) -> anyhow::Result<Scratch> {
        for b in cluster::BINARIES {
            cluster::bin(b)?;
        }
        let parent = dir
            .map(|d| d.to_path_buf())
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&parent)?;
        let scratch = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&parent)
            .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
        let top = scratch.path().to_path_buf();
        let _guard = if keep {
            let _ = scratch.keep();
            None
        } else {
            Some(scratch)
        };
        log(
            t0,
            format!(
                "scratch directory {}{}",
                top.display(),
                if keep { " (kept)" } else { "" }
            ),
        );
        cluster::install(&top)?;
        Ok(Scratch { top, _guard })
    }
}

fn log(start: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:>7.1}s] {}", start.elapsed().as_secs_f64(), msg.as_ref());
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// Runs `f` as a phase of the node: resets its peak RSS first (when the
/// kernel allows) and reads peak RSS and CPU time after.
fn with_node<T>(
    node: &Node,
    resettable: bool,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, NodeStats)> {
    if resettable {
        measure::reset_hwm(node.pid);
    }
    let cpu0 = measure::proc_cpu(node.pid).unwrap_or(0.0);
    let busy0 = measure::system_busy();
    let out = f()?;
    let stats = NodeStats {
        peak_kib: measure::vm_hwm(node.pid).unwrap_or(0),
        cpu: measure::proc_cpu(node.pid).unwrap_or(0.0) - cpu0,
        busy: measure::system_busy() - busy0,
    };
    Ok((out, stats))
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(|x| x.as_u64()).unwrap_or(0)
}

fn backup(
    dir: &Path,
    node: &Node,
    resettable: bool,
    phase: &'static str,
    logical: u64,
    details: &mut Vec<SourceBackup>,
) -> anyhow::Result<Phase> {
    let mut c = cluster::command("refuge-agent", dir)?;
    c.args(["--config", "agent.toml", "backup", "--json"]);
    let name = phase.replace(' ', "-");
    let (m, node_stats) = with_node(node, resettable, || measure::run(c, dir, &name))?;
    if let Some(f) = &m.failure {
        bail!("{f}");
    }
    let reports: serde_json::Value = serde_json::from_str(&m.stdout)
        .with_context(|| format!("{phase}: the agent's JSON report"))?;
    let reports = reports.as_array().context("backup report is not a list")?;
    let mut sent = 0;
    for r in reports {
        sent += u(r, "bytes_sent");
        details.push(SourceBackup {
            phase,
            source: r
                .get("source")
                .and_then(|s| s.as_str())
                .unwrap_or("?")
                .into(),
            bytes_read: u(r, "bytes_read"),
            bytes_reused: u(r, "bytes_reused"),
            files_unchanged: u(r, "files_unchanged"),
            bytes_unchanged_blocks: u(r, "bytes_unchanged_blocks"),
            hole_bytes: u(r, "hole_bytes"),
            hole_bytes_unread: u(r, "hole_bytes_unread"),
            chunks: u(r, "chunks"),
            chunks_new: u(r, "chunks_new"),
            bytes_sent: u(r, "bytes_sent"),
            secs: r
                .get("duration_secs")
                .and_then(|x| x.as_f64())
                .unwrap_or(0.0),
        });
    }
    // Every source byte is read, reused from the parent snapshot with
    // its file, or a hole the parent had too.
    let covered: u64 = details
        .iter()
        .filter(|d| d.phase == phase)
        .map(|d| d.bytes_read + d.bytes_reused + d.hole_bytes_unread)
        .sum();
    if covered != logical {
        bail!("{phase}: the agent read or reused {covered} bytes, the data set has {logical}");
    }
    Ok(Phase {
        name: phase.into(),
        logical,
        client: m,
        sent: Some(sent),
        node: node_stats,
    })
}

/// The report of a run.
pub struct Outcome {
    /// Markdown.
    pub markdown: String,
    /// Every restore was byte-identical to its source.
    pub verified: bool,
}

/// Everything one run measured.
struct RunData {
    rows: Vec<Row>,
    verify: Vec<Verification>,
    details: Vec<SourceBackup>,
    /// Per source: name, kind, files (generation 2), bytes of generation 1
    /// and 2, what the mutation did.
    sources: Vec<(String, String, u64, u64, u64, String)>,
    store_bytes: u64,
    store_files: u64,
    /// Of those, in the bucket (bytes, objects) with `--backend s3`.
    bucket: Option<(u64, u64)>,
    node_start_kib: u64,
    node_peak_kib: u64,
    node_cpu_total: f64,
    load_before: f64,
    stop: f64,
    gen_secs: f64,
    total: f64,
    /// restic and Borg on the same data, when run.
    peers: Vec<peers::PeerData>,
}

/// Runs the benchmark `o.runs` times; returns the Markdown report.
pub fn run(o: &Options) -> anyhow::Result<Outcome> {
    let t0 = Instant::now();
    let scratch = Scratch::prepare(o.dir.as_deref(), "refuge-bench.", o.keep, t0)?;
    let top = scratch.top.clone();
    let machine = Machine::describe(&top);
    let mut runs = Vec::new();
    for i in 1..=o.runs.max(1) {
        let dir = top.join(format!("run{i}"));
        fs::create_dir_all(&dir)?;
        if o.runs > 1 {
            log(t0, format!("run {i} of {}", o.runs));
        }
        // Earlier runs' files stay until the end: on ext4, creating files
        // right after many were deleted is much slower (the allocator
        // skips recently deleted inodes), which would slow later runs'
        // restores.
        runs.push(run_once(o, &dir, t0)?);
    }
    let verified = runs
        .iter()
        .all(|r| r.verify.iter().all(|v| v.problems.is_empty()));
    Ok(Outcome {
        markdown: markdown(o, &machine, &runs),
        verified,
    })
}

/// A run's first generation of the seeded data set.
struct Generated {
    data: Dataset,
    sources: Vec<dataset::Source>,
    /// Digest of each source, in the order of `sources`.
    gen1: Vec<dataset::Digest>,
    secs: f64,
}

/// Generates the data set of `size` (`size_text` for the log) and `seed`
/// in `dir/data`, syncs it and digests each source, logging both steps.
fn generate(
    dir: &Path,
    size: u64,
    size_text: &str,
    seed: u64,
    t0: Instant,
) -> anyhow::Result<Generated> {
    log(
        t0,
        format!("generating {size_text} of seeded data (seed {seed})"),
    );
    let start = Instant::now();
    let data = Dataset::generate(&dir.join("data"), size, seed)?;
    sync();
    let secs = start.elapsed().as_secs_f64();
    let sources = data.sources();
    let gen1: Vec<dataset::Digest> = sources
        .iter()
        .map(|s| dataset::digest(&s.path))
        .collect::<Result<_, _>>()?;
    let bytes: u64 = gen1.iter().map(|d| d.bytes).sum();
    log(t0, format!("generated {} in {secs:.1} s", mb(bytes)));
    Ok(Generated {
        data,
        sources,
        gen1,
        secs,
    })
}

fn run_once(o: &Options, dir: &Path, t0: Instant) -> anyhow::Result<RunData> {
    let r0 = Instant::now();
    let load_before = measure::loadavg();
    let Generated {
        mut data,
        sources,
        gen1,
        secs: gen_secs,
    } = generate(dir, o.size, &o.size_text, o.seed, t0)?;
    let logical1: u64 = gen1.iter().map(|d| d.bytes).sum();

    cluster::make_certs(dir)?;
    let port = cluster::free_port()?;
    cluster::write_configs(dir, port, &sources, &o.agent)?;
    // A prefix of this run's own: objects of earlier runs are not counted.
    let prefix = format!(
        "bench-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    if let Some(b) = &o.bucket {
        let extra = b.node_toml(dir, &prefix)?;
        let mut toml = fs::read_to_string(dir.join("node.toml"))?;
        toml.push_str(&extra);
        fs::write(dir.join("node.toml"), toml)?;
    }
    let mut node = Node::start(dir, port)?;
    let resettable = measure::reset_hwm(node.pid);
    let node_start_kib = measure::vm_rss(node.pid).unwrap_or(0);
    log(
        t0,
        format!("refuged running on 127.0.0.1:{port} (pid {})", node.pid),
    );

    let mut peers = if o.peers {
        Some(peers::Peers::init(dir)?)
    } else {
        None
    };
    let paths: Vec<PathBuf> = sources
        .iter()
        .map(|s| fs::canonicalize(&s.path))
        .collect::<Result<_, _>>()?;
    let say = |m: String| log(t0, m);
    let mut phases = Vec::new();
    let mut details = Vec::new();
    log(t0, "initial backup");
    phases.push(backup(
        dir,
        &node,
        resettable,
        "initial backup",
        logical1,
        &mut details,
    )?);
    log(t0, phase_line(phases.last()));
    if let Some(p) = &mut peers {
        p.backup(1, &paths, &say)?;
    }

    log(t0, "mutating about 5% of the data");
    let mutation = data.mutate()?;
    sync();
    let gen2: Vec<dataset::Digest> = sources
        .iter()
        .map(|s| dataset::digest(&s.path))
        .collect::<Result<_, _>>()?;
    let logical2: u64 = gen2.iter().map(|d| d.bytes).sum();

    log(t0, "incremental backup");
    phases.push(backup(
        dir,
        &node,
        resettable,
        "incremental backup",
        logical2,
        &mut details,
    )?);
    log(t0, phase_line(phases.last()));
    if let Some(p) = &mut peers {
        p.backup(2, &paths, &say)?;
    }

    log(t0, "mutating about 5% of the data again");
    data.mutate()?;
    sync();
    let gen3: Vec<dataset::Digest> = sources
        .iter()
        .map(|s| dataset::digest(&s.path))
        .collect::<Result<_, _>>()?;
    let logical3: u64 = gen3.iter().map(|d| d.bytes).sum();
    log(t0, "third backup");
    phases.push(backup(
        dir,
        &node,
        resettable,
        "third backup",
        logical3,
        &mut details,
    )?);
    log(t0, phase_line(phases.last()));
    if let Some(p) = &mut peers {
        p.backup(3, &paths, &say)?;
    }

    let restore_dir = dir.join("restore");
    fs::create_dir_all(&restore_dir)?;
    let mut verify = Vec::new();
    for (s, want) in sources.iter().zip(&gen3) {
        let target = if s.kind == "image" {
            restore_dir.join(format!("{}.img", s.name))
        } else {
            restore_dir.join(s.name)
        };
        log(t0, format!("restore {}", s.name));
        let mut c = cluster::command("refuge", dir)?;
        c.args([
            "--config",
            "agent.toml",
            "restore",
            "latest",
            "--source",
            s.name,
        ])
        .arg("--target")
        .arg(&target)
        .arg("--json");
        let name = format!("restore-{}", s.name);
        let (m, node_stats) = with_node(&node, resettable, || measure::run(c, dir, &name))?;
        let (count, problems) = if let Some(f) = &m.failure {
            (
                0,
                vec![format!("`refuge restore` failed: {}", last_line(f))],
            )
        } else {
            let rep: serde_json::Value =
                serde_json::from_str(&m.stdout).context("the restore's JSON report")?;
            let got = dataset::digest(&target)?;
            let (mut problems, count) = want.differences(&got, 5);
            if u(&rep, "bytes") != want.bytes {
                problems.push(format!(
                    "the restore reports {} bytes, the source has {}",
                    u(&rep, "bytes"),
                    want.bytes
                ));
            }
            if got.hash != want.hash && count == 0 {
                problems.push("digests differ".into());
            }
            (count, problems)
        };
        if !problems.is_empty() {
            log(
                t0,
                format!(
                    "VERIFICATION FAILED for {}: {}",
                    s.name,
                    problems.join("; ")
                ),
            );
        }
        verify.push(Verification {
            source: s.name,
            count,
            problems,
        });
        let p = Phase {
            name: format!("restore {}", s.name),
            logical: want.bytes,
            client: m,
            sent: None,
            node: node_stats,
        };
        log(t0, phase_line(Some(&p)));
        phases.push(p);
        sync();
    }

    if let Some(p) = &mut peers {
        let want: Vec<(PathBuf, &dataset::Digest)> =
            paths.iter().cloned().zip(gen3.iter()).collect();
        p.restore(3, dir, &want, &say)?;
    }

    let node_cpu_total = measure::proc_cpu(node.pid).unwrap_or(0.0);
    let stop = node.stop()?;
    let (mut store_bytes, mut store_files) = cluster::dir_size(&dir.join("store"))?;
    let bucket = match &o.bucket {
        Some(b) => {
            let used = b.usage(&prefix)?;
            if !o.keep {
                b.remove(&prefix)?;
            }
            Some(used)
        }
        None => None,
    };
    if let Some((bytes, objects)) = bucket {
        store_bytes += bytes;
        store_files += objects;
    }
    log(
        t0,
        format!(
            "refuged stopped in {:.1} s; store {} in {store_files} files{}",
            stop.as_secs_f64(),
            mb(store_bytes),
            bucket
                .map(|(b, n)| format!(" (bucket: {} in {n} objects)", mb(b)))
                .unwrap_or_default()
        ),
    );

    let mu = &mutation;
    let descr = [
        format!(
            "ext4-like image, {} extents; rewrote {} scattered block ranges ({}) and their inodes",
            data.image.extents.len(),
            mu.image_rewrites,
            mb(mu.image_bytes)
        ),
        format!(
            "8 KiB pages, {} rows; rewrote {} scattered pages and a quarter of the WAL ({} in all)",
            data.db.rows,
            mu.db_pages,
            mb(mu.db_bytes)
        ),
        format!(
            "{} edited, {} added, {} deleted small files, log +1% ({} written)",
            mu.tree_edited,
            mu.tree_added,
            mu.tree_deleted,
            mb(mu.tree_bytes)
        ),
    ];
    let mut rows: Vec<Row> = phases.iter().map(Row::of).collect();
    let restores: Vec<Row> = rows[3..].to_vec();
    rows.push(Row::sum("restore (all three)", &restores));
    Ok(RunData {
        node_peak_kib: rows.iter().map(|r| r.node_kib).max().unwrap_or(0),
        rows,
        verify,
        details,
        sources: sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.name.to_string(),
                    s.kind.to_string(),
                    gen3[i].files,
                    gen1[i].bytes,
                    gen3[i].bytes,
                    descr[i].clone(),
                )
            })
            .collect(),
        store_bytes,
        store_files,
        bucket,
        node_start_kib,
        node_cpu_total,
        load_before,
        stop: stop.as_secs_f64(),
        gen_secs,
        total: r0.elapsed().as_secs_f64(),
        peers: peers.map(|p| p.data).unwrap_or_default(),
    })
}

fn phase_line(p: Option<&Phase>) -> String {
    let Some(p) = p else {
        return String::new();
    };
    format!(
        "{}: {} in {} = {} MB/s, sent {}, client peak {}, node peak {}",
        p.name,
        mb(p.logical),
        secs(p.client.wall.as_secs_f64()),
        mb_per_s(p.logical, p.client.wall.as_secs_f64()),
        p.sent.map(mb).unwrap_or_else(|| "-".into()),
        mib_from_kib(p.client.peak_rss_kib),
        mib_from_kib(p.node.peak_kib)
    )
}

/// The last non-empty line of a message.
fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(s)
}

/// Median (mean of the two middle values for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn markdown(o: &Options, m: &Machine, runs: &[RunData]) -> String {
    let mut s = String::new();
    let first = &runs[0];
    let n = runs.len();
    let med = |f: &dyn Fn(&RunData) -> f64| median(runs.iter().map(f).collect());
    let _ = writeln!(
        s,
        "### End-to-end, {} data set (seed {}){}\n",
        o.size_text,
        o.seed,
        if o.bucket.is_some() {
            ", S3 backend (Ceph)"
        } else {
            ""
        }
    );
    let flags = format!(
        "{}{}",
        o.agent.flags(),
        if o.bucket.is_some() {
            " --backend s3"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "Commit `{}`; {}. `refuge-bench --size {} --seed {}{}{}`: {} (median {:.0} s per run, {:.0} s of it generating data). Agent settings: {}; default node settings{}; node, agent and CLI on this one machine over 127.0.0.1 with mTLS; the source data is in the page cache. Load average (1 min) before each run: {}.\n",
        m.commit,
        m.line(),
        o.size_text,
        o.seed,
        if n > 1 {
            format!(" --runs {n}")
        } else {
            String::new()
        },
        flags,
        if n > 1 {
            format!(
                "{n} complete runs, each with a fresh node and data set; the table shows medians, and for wall time and MB/s the range"
            )
        } else {
            "one run".to_string()
        },
        med(&|r| r.total),
        med(&|r| r.gen_secs),
        o.agent.describe(),
        o.bucket
            .as_ref()
            .map(|b| format!(", {}", b.describe()))
            .unwrap_or_default(),
        runs.iter()
            .map(|r| format!("{:.2}", r.load_before))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s.push_str(
        "| Phase | Source data | Wall time | MB/s | Sent | Agent/CLI peak RSS | Node peak RSS | Agent/CLI CPU (user + sys) | Node CPU | Other CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, r0) in first.rows.iter().enumerate() {
        let rows: Vec<&Row> = runs
            .iter()
            .map(|r| &r.rows[i])
            .filter(|r| !r.failed)
            .collect();
        if rows.is_empty() {
            let _ = writeln!(
                s,
                "| {} | {} | failed | - | - | - | - | - | - | - |",
                r0.name,
                mb(r0.logical)
            );
            continue;
        }
        // Failed runs of this phase are left out; say so.
        let partial = if rows.len() < n {
            format!(" ({} of {n} runs succeeded)", rows.len())
        } else {
            String::new()
        };
        let n = rows.len();
        let mf = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
        let wall = mf(&|r| r.wall);
        let lo = rows.iter().map(|r| r.wall).fold(f64::INFINITY, f64::min);
        let hi = rows.iter().map(|r| r.wall).fold(0.0, f64::max);
        let (wall_s, rate_s) = if n > 1 {
            (
                {
                    let d = if hi < 10.0 { 2 } else { 1 };
                    format!("{} ({lo:.d$}–{hi:.d$})", secs(wall))
                },
                format!(
                    "**{}** ({}–{})",
                    mb_per_s(r0.logical, wall),
                    mb_per_s(r0.logical, hi),
                    mb_per_s(r0.logical, lo)
                ),
            )
        } else {
            (secs(wall), format!("**{}**", mb_per_s(r0.logical, wall)))
        };
        let user = mf(&|r| r.client_user);
        let sys = mf(&|r| r.client_sys);
        let _ = writeln!(
            s,
            "| {}{partial} | {} | {wall_s} | {rate_s} | {} | {} | {} | {:.1} s ({user:.1} + {sys:.1}) | {:.1} s | {:.1} s |",
            r0.name,
            mb(r0.logical),
            r0.sent.map(mb).unwrap_or_else(|| "-".into()),
            mib_from_kib(mf(&|r| r.client_kib as f64) as u64),
            mib_from_kib(mf(&|r| r.node_kib as f64) as u64),
            user + sys,
            mf(&|r| r.node_cpu),
            mf(&|r| r.other),
        );
    }
    if !first.peers.is_empty() {
        peers_report::side_by_side(&mut s, runs);
    }
    let _ = writeln!(
        s,
        "\nMB/s: source (logical) bytes per second of wall time of the whole `refuge-agent backup` or `refuge restore` process. Sent: compressed chunk bytes as the agent reports them (`bytes_sent`), without gRPC/TLS framing. Peak RSS: `VmHWM`, sampled every 20 ms for the agent/CLI; for the node, the peak within the phase (reset through `/proc/PID/clear_refs` before each phase). CPU: user + system time. Other CPU: the machine's busy CPU time during the phase not spent by the agent/CLI or the node (other processes, this sampler, page-cache writeback); large values mean the numbers are disturbed. Node RSS after start: {}; node peak over a run: {}; node CPU over a run: {:.1} s.\n",
        mib_from_kib(med(&|r| r.node_start_kib as f64) as u64),
        mib_from_kib(med(&|r| r.node_peak_kib as f64) as u64),
        med(&|r| r.node_cpu_total),
    );

    let failed: Vec<(usize, &Verification)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.verify.iter().map(move |v| (i + 1, v)))
        .filter(|(_, v)| !v.problems.is_empty())
        .collect();
    if failed.is_empty() {
        s.push_str("Verification: every restore is identical to its source (path, type, size and BLAKE3 of every file).\n\n");
    } else {
        s.push_str("**Restore FAILED** (each restore is compared with its source: path, type, size and BLAKE3 of every file):\n\n");
        for (i, v) in failed {
            let _ = writeln!(
                s,
                "- {}{}: {}",
                v.source,
                if n > 1 {
                    format!(" (run {i})")
                } else {
                    String::new()
                },
                if v.count > 0 {
                    format!("{} entries differ, e.g. {}", v.count, v.problems.join("; "))
                } else {
                    v.problems.join("; ")
                }
            );
        }
        s.push('\n');
    }

    let _ = writeln!(
        s,
        "Per source, from `refuge-agent backup --json`{} (agent-side time, which excludes process start and connection):\n",
        if n > 1 { " of run 1" } else { "" }
    );
    s.push_str("| Backup | Source | Source data | Read | Reused (unchanged files) | Unchanged blocks (read, not sent) | Zero runs (holes; unread) | Chunks | New chunks | Sent | Sent / source | Time | MB/s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for d in &first.details {
        let logical = d.bytes_read + d.bytes_reused + d.hole_bytes_unread;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} ({} files) | {} | {} ({}) | {} | {} | {} | {:.1}% | {} | {} |",
            d.phase,
            d.source,
            mb(logical),
            mb(d.bytes_read),
            mb(d.bytes_reused),
            d.files_unchanged,
            mb(d.bytes_unchanged_blocks),
            mb(d.hole_bytes),
            mb(d.hole_bytes_unread),
            d.chunks,
            d.chunks_new,
            mb(d.bytes_sent),
            100.0 * d.bytes_sent as f64 / logical.max(1) as f64,
            secs(d.secs),
            mb_per_s(logical, d.secs)
        );
    }

    let sent_total: u64 = first.details.iter().map(|d| d.bytes_sent).sum();
    let current: u64 = first.sources.iter().map(|x| x.4).sum();
    let both: u64 = first.rows[..3].iter().map(|r| r.logical).sum();
    let _ = writeln!(
        s,
        "\nStorage: after SIGTERM (the stop took {:.1} s) the store directory{} holds **{}** in {} files (sum of file sizes) for the three generations: {:.1}% of the current source data ({}), {:.1}% of the {} backed up over the three generations. The agent sent {} in all.\n",
        first.stop,
        first
            .bucket
            .map(|(b, n)| format!(
                " and the bucket ({} in {n} objects; the RocksDB catalog {})",
                mb(b),
                mb(first.store_bytes - b)
            ))
            .unwrap_or_default(),
        mb(first.store_bytes),
        first.store_files,
        100.0 * first.store_bytes as f64 / current.max(1) as f64,
        mb(current),
        100.0 * first.store_bytes as f64 / both.max(1) as f64,
        mb(both),
        mb(sent_total)
    );

    s.push_str("Data set (generation 1 → 3; generation 2 and 3 are each one seeded mutation like this, the first one is described):\n\n| Source | Kind | Files | Generation 1 | Generation 3 | Mutation |\n|---|---|---:|---:|---:|---|\n");
    for (name, kind, files, g1, g2, descr) in &first.sources {
        let _ = writeln!(
            s,
            "| {name} | {kind} | {files} | {} | {} | {descr} |",
            mb(*g1),
            mb(*g2)
        );
    }
    s
}
