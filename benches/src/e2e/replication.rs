//! `refuge-bench replication`: two real `refuged` on 127.0.0.1, each with
//! its own CA; the first ("primary") pushes to the second ("replica")
//! continuously (a pass ~200 ms after each commit). On the e2e benchmark's
//! seeded data set, each source is backed up to the primary on its own and
//! the time from its acknowledged commit to the replica listing the
//! snapshot is measured: first the initial copy, then after the seeded ~5%
//! change. Beside it: what one plain TCP connection on 127.0.0.1 carries
//! on this machine. At the end every source is restored from the replica
//! and compared with its source. The report is built in
//! [`super::replication_report`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use refuge_bench::dataset::{self, Source};

use super::cluster::{self, Node};
use super::machine::Machine;
use super::report::{mb, mb_per_s, mib_from_kib, secs};
use super::{Scratch, log, loopback, measure, median, replication_report, sync, u};

/// What `refuge-bench replication` measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Data set size in bytes.
    pub size: u64,
    /// `--size` as given.
    pub size_text: String,
    /// Seed of the data set and of its change.
    pub seed: u64,
    /// Complete runs (fresh nodes and data each); medians are reported.
    pub runs: usize,
    /// Scratch directory parent.
    pub dir: Option<PathBuf>,
    /// Keep the scratch directory.
    pub keep: bool,
    /// Bytes of each loopback TCP copy.
    pub loopback_bytes: u64,
}

/// The replica's name in the primary's `[[replication]]`.
pub(super) const PEER: &str = "replica";
/// How often the replica's snapshot list is polled.
pub(super) const POLL: Duration = Duration::from_millis(50);
/// How often the primary's status is read for errors while waiting.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for one snapshot to reach the replica.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Loopback copies per run (the median is reported).
pub(super) const LOOPBACK_TRIES: usize = 3;

/// One snapshot's way from the primary to the replica (or the sum of a
/// phase's).
#[derive(Debug, Clone, Default)]
pub(super) struct Transfer {
    /// `initial` or `5% change`.
    pub phase: &'static str,
    /// The source, or `all three` for a phase's sum.
    pub source: String,
    /// Snapshots copied.
    pub snapshots: u64,
    /// Logical bytes of the snapshot(s).
    pub logical: u64,
    /// Bytes the change wrote (0 for the initial copy).
    pub changed: u64,
    /// Wall time of `refuge-agent backup --source S` to the primary.
    pub backup_secs: f64,
    /// Compressed bytes the agent sent.
    pub backup_sent: u64,
    /// Primary's peak RSS during that backup, KiB.
    pub backup_primary_kib: u64,
    /// Agent exit (its commit acknowledged) to the replica listing the
    /// snapshot, seconds.
    pub secs: f64,
    /// The pass durations the primary wrote in its audit log
    /// (`replication_pass`), if found.
    pub pass_secs: Option<f64>,
    /// The commit's audit record to the end of the pass's, by the
    /// primary's clock, if both were found.
    pub audited_secs: Option<f64>,
    /// Growth of the primary's `bytes_sent` for the peer (chunk bytes as
    /// stored, compressed; no gRPC/TLS framing).
    pub wire: u64,
    /// Growth of `chunks_sent`.
    pub chunks: u64,
    /// RSS when the replication started, KiB.
    pub primary_start_kib: u64,
    /// Peak RSS until the snapshot was listed, KiB.
    pub primary_peak_kib: u64,
    /// RSS when the replication started, KiB.
    pub replica_start_kib: u64,
    /// Peak RSS until the snapshot was listed, KiB.
    pub replica_peak_kib: u64,
    /// CPU seconds of the primary during the replication.
    pub primary_cpu: f64,
    /// CPU seconds of the replica during the replication.
    pub replica_cpu: f64,
    /// Machine busy CPU seconds not spent by either node (this poller,
    /// other processes).
    pub other_cpu: f64,
    /// The primary's CPU seconds by thread name.
    pub primary_threads: BTreeMap<String, f64>,
    /// The replica's CPU seconds by thread name.
    pub replica_threads: BTreeMap<String, f64>,
}

impl Transfer {
    /// The sum of a phase's transfers.
    pub fn total(phase: &'static str, ts: &[&Transfer]) -> Transfer {
        let sum_f = |f: fn(&Transfer) -> f64| ts.iter().map(|t| f(t)).sum::<f64>();
        let sum_u = |f: fn(&Transfer) -> u64| ts.iter().map(|t| f(t)).sum::<u64>();
        let max_u = |f: fn(&Transfer) -> u64| ts.iter().map(|t| f(t)).max().unwrap_or(0);
        let merge = |f: fn(&Transfer) -> &BTreeMap<String, f64>| {
            let mut m = BTreeMap::new();
            for t in ts {
                for (k, v) in f(t) {
                    *m.entry(k.clone()).or_insert(0.0) += v;
                }
            }
            m
        };
        Transfer {
            phase,
            source: "all three".into(),
            snapshots: sum_u(|t| t.snapshots),
            logical: sum_u(|t| t.logical),
            changed: sum_u(|t| t.changed),
            backup_secs: sum_f(|t| t.backup_secs),
            backup_sent: sum_u(|t| t.backup_sent),
            backup_primary_kib: max_u(|t| t.backup_primary_kib),
            secs: sum_f(|t| t.secs),
            pass_secs: ts.iter().map(|t| t.pass_secs).sum::<Option<f64>>(),
            audited_secs: ts.iter().map(|t| t.audited_secs).sum::<Option<f64>>(),
            wire: sum_u(|t| t.wire),
            chunks: sum_u(|t| t.chunks),
            primary_start_kib: ts.first().map(|t| t.primary_start_kib).unwrap_or(0),
            primary_peak_kib: max_u(|t| t.primary_peak_kib),
            replica_start_kib: ts.first().map(|t| t.replica_start_kib).unwrap_or(0),
            replica_peak_kib: max_u(|t| t.replica_peak_kib),
            primary_cpu: sum_f(|t| t.primary_cpu),
            replica_cpu: sum_f(|t| t.replica_cpu),
            other_cpu: sum_f(|t| t.other_cpu),
            primary_threads: merge(|t| &t.primary_threads),
            replica_threads: merge(|t| &t.replica_threads),
        }
    }

    /// Field by field, the median of the same transfer over several runs
    /// (thread breakdowns: the first run's).
    pub fn median(ts: &[&Transfer]) -> Transfer {
        let mf = |f: fn(&Transfer) -> f64| median(ts.iter().map(|t| f(t)).collect());
        let mu = |f: fn(&Transfer) -> u64| median_u64(ts, f);
        let first = ts[0];
        Transfer {
            phase: first.phase,
            source: first.source.clone(),
            snapshots: first.snapshots,
            logical: mu(|t| t.logical),
            changed: mu(|t| t.changed),
            backup_secs: mf(|t| t.backup_secs),
            backup_sent: mu(|t| t.backup_sent),
            backup_primary_kib: mu(|t| t.backup_primary_kib),
            secs: mf(|t| t.secs),
            pass_secs: ts
                .iter()
                .map(|t| t.pass_secs)
                .collect::<Option<Vec<f64>>>()
                .map(median),
            audited_secs: ts
                .iter()
                .map(|t| t.audited_secs)
                .collect::<Option<Vec<f64>>>()
                .map(median),
            wire: mu(|t| t.wire),
            chunks: mu(|t| t.chunks),
            primary_start_kib: mu(|t| t.primary_start_kib),
            primary_peak_kib: mu(|t| t.primary_peak_kib),
            replica_start_kib: mu(|t| t.replica_start_kib),
            replica_peak_kib: mu(|t| t.replica_peak_kib),
            primary_cpu: mf(|t| t.primary_cpu),
            replica_cpu: mf(|t| t.replica_cpu),
            other_cpu: mf(|t| t.other_cpu),
            primary_threads: first.primary_threads.clone(),
            replica_threads: first.replica_threads.clone(),
        }
    }

    /// One line of progress for the log.
    fn line(&self) -> String {
        format!(
            "{} {}: {} replicated in {} = {} MB/s (wire {} = {} MB/s, {} chunks); primary RSS {} → {}, replica {} → {}; CPU primary {:.1} s, replica {:.1} s",
            self.phase,
            self.source,
            mb(self.logical),
            secs(self.secs),
            mb_per_s(self.logical, self.secs),
            mb(self.wire),
            mb_per_s(self.wire, self.secs),
            self.chunks,
            mib_from_kib(self.primary_start_kib),
            mib_from_kib(self.primary_peak_kib),
            mib_from_kib(self.replica_start_kib),
            mib_from_kib(self.replica_peak_kib),
            self.primary_cpu,
            self.replica_cpu
        )
    }
}

/// The median of a `u64` field (rounded).
fn median_u64(ts: &[&Transfer], f: fn(&Transfer) -> u64) -> u64 {
    median(ts.iter().map(|t| f(t) as f64).collect()).round() as u64
}

/// A restore from the replica, compared with its source.
#[derive(Debug, Clone)]
pub(super) struct Restored {
    pub source: &'static str,
    pub bytes: u64,
    pub secs: f64,
    /// Differences (empty: identical).
    pub problems: Vec<String>,
}

/// Everything one run measured.
pub(super) struct RunData {
    /// Per source, the initial copies then the copies of the change.
    pub transfers: Vec<Transfer>,
    /// Seconds of each loopback copy.
    pub loopback_secs: Vec<f64>,
    pub restores: Vec<Restored>,
    /// Distinct errors the primary's status showed for the peer.
    pub errors: Vec<String>,
    /// Warnings and errors in the two nodes' logs (`node: line`).
    pub log_problems: Vec<String>,
    /// Per source: name, files, bytes (generation 2), what changed.
    pub sources: Vec<(String, u64, u64, String)>,
    pub primary_store: u64,
    pub replica_store: u64,
    pub primary_start_kib: u64,
    pub replica_start_kib: u64,
    pub load_before: f64,
    pub gen_secs: f64,
    pub total: f64,
}

/// The outcome of `refuge-bench replication`.
pub struct Outcome {
    /// Markdown.
    pub markdown: String,
    /// Every restore from the replica was identical to its source.
    pub verified: bool,
}

/// Runs the benchmark `o.runs` times; returns the Markdown report.
pub fn run(o: &Options) -> anyhow::Result<Outcome> {
    let t0 = Instant::now();
    let scratch = Scratch::prepare(o.dir.as_deref(), "refuge-replication.", o.keep, t0)?;
    let top = scratch.top.clone();
    let machine = Machine::describe(&top);
    let mut runs = Vec::new();
    for i in 1..=o.runs.max(1) {
        let dir = top.join(format!("run{i}"));
        fs::create_dir_all(&dir)?;
        if o.runs > 1 {
            log(t0, format!("run {i} of {}", o.runs));
        }
        runs.push(run_once(o, &dir, t0).with_context(|| format!("run {i}"))?);
    }
    let verified = runs
        .iter()
        .all(|r| r.restores.iter().all(|v| v.problems.is_empty()));
    Ok(Outcome {
        markdown: replication_report::markdown(o, &machine, &runs),
        verified,
    })
}

fn run_once(o: &Options, dir: &Path, t0: Instant) -> anyhow::Result<RunData> {
    let r0 = Instant::now();
    let load_before = measure::loadavg();
    let super::Generated {
        mut data,
        sources,
        gen1,
        secs: gen_secs,
    } = super::generate(dir, o.size, &o.size_text, o.seed, t0)?;

    log(
        t0,
        format!(
            "loopback: {LOOPBACK_TRIES} TCP copies of {} on 127.0.0.1",
            mb(o.loopback_bytes)
        ),
    );
    let loopback_secs = loopback::measure(o.loopback_bytes, LOOPBACK_TRIES)?;
    log(
        t0,
        format!(
            "loopback: {} MB/s (median)",
            mb_per_s(o.loopback_bytes, median(loopback_secs.clone()))
        ),
    );

    let mut pair = Pair::start(dir, &sources)?;
    log(
        t0,
        format!(
            "primary on 127.0.0.1:{} (pid {}), replica on 127.0.0.1:{} (pid {})",
            pair.primary_port, pair.primary.pid, pair.replica_port, pair.replica.pid
        ),
    );
    let primary_start_kib = measure::vm_rss(pair.primary.pid).unwrap_or(0);
    let replica_start_kib = measure::vm_rss(pair.replica.pid).unwrap_or(0);

    let mut transfers = Vec::new();
    for (s, d) in sources.iter().zip(&gen1) {
        log(t0, format!("initial: backup of {} to the primary", s.name));
        let t = pair.transfer("initial", s, d.bytes, 0)?;
        log(t0, t.line());
        transfers.push(t);
    }

    log(t0, "changing about 5% of the data");
    let mutation = data.mutate()?;
    sync();
    let gen2: Vec<dataset::Digest> = sources
        .iter()
        .map(|s| dataset::digest(&s.path))
        .collect::<Result<_, _>>()?;
    let changed = [mutation.image_bytes, mutation.db_bytes, mutation.tree_bytes];
    for ((s, d), c) in sources.iter().zip(&gen2).zip(changed) {
        log(
            t0,
            format!("5% change: backup of {} to the primary", s.name),
        );
        let t = pair.transfer("5% change", s, d.bytes, c)?;
        log(t0, t.line());
        transfers.push(t);
    }

    let restores = pair.verify(&sources, &gen2, t0)?;
    let errors = pair.errors.iter().cloned().collect();
    pair.primary.stop().context("stopping the primary")?;
    pair.replica.stop().context("stopping the replica")?;
    let primary_store = cluster::dir_size(&pair.primary_dir.join("store"))?.0;
    let replica_store = cluster::dir_size(&pair.replica_dir.join("store"))?.0;
    let mut logged = log_problems("primary", &pair.primary_dir.join("node.log"));
    logged.extend(log_problems("replica", &pair.replica_dir.join("node.log")));
    log(
        t0,
        format!(
            "nodes stopped; stores: primary {}, replica {}",
            mb(primary_store),
            mb(replica_store)
        ),
    );

    let mu = &mutation;
    let descr = [
        format!(
            "rewrote {} scattered block ranges ({}) and their inodes",
            mu.image_rewrites,
            mb(mu.image_bytes)
        ),
        format!(
            "rewrote {} scattered pages and a quarter of the WAL ({})",
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
    Ok(RunData {
        transfers,
        loopback_secs,
        restores,
        errors,
        log_problems: logged,
        sources: sources
            .iter()
            .zip(&gen2)
            .zip(descr)
            .map(|((s, d), descr)| (s.name.to_string(), d.files, d.bytes, descr))
            .collect(),
        primary_store,
        replica_store,
        primary_start_kib,
        replica_start_kib,
        load_before,
        gen_secs,
        total: r0.elapsed().as_secs_f64(),
    })
}

/// Warning and error lines of a node's log, prefixed with `node`; not the
/// handshakes that [`Node::start`]'s readiness probe (a TCP connect, then
/// close) leaves.
fn log_problems(node: &str, path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("tls handshake eof"))
        .map(|l| format!("{node}: {}", l.trim()))
        .collect()
}

/// The two nodes, their directories and the in-process watcher.
struct Pair {
    primary: Node,
    replica: Node,
    primary_dir: PathBuf,
    replica_dir: PathBuf,
    primary_port: u16,
    replica_port: u16,
    watch: Watch,
    /// Distinct errors seen in the primary's status.
    errors: BTreeSet<String>,
    /// The primary's audit log has been read up to here.
    audit_seq: u64,
}

/// Issues a certificate with `refuge certs issue --dir certs ARGS` in
/// `dir`; returns the certificate's path as the command prints it
/// (relative to `dir`).
fn issue(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut c = cluster::command("refuge", dir)?;
    c.args(["certs", "issue", "--dir", "certs"]).args(args);
    let what = format!("refuge certs issue {}", args.join(" "));
    let o = cluster::run_output(c, &what)?;
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| l.trim().strip_prefix("cert = "))
        .map(|c| c.trim_matches('"').to_string())
        .with_context(|| format!("{what} named no certificate:\n{out}"))
}

/// Prepends `site = NAME` (top-level keys come before any table) and
/// appends `tail` to `dir/node.toml`.
fn edit_node_toml(dir: &Path, site: &str, tail: &str) -> anyhow::Result<()> {
    let p = dir.join("node.toml");
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    fs::write(&p, format!("site = \"{site}\"\n{text}\n{tail}"))
        .with_context(|| format!("writing {}", p.display()))
}

impl Pair {
    /// Certificates (each node its own CA; the replica's CA issues the
    /// primary's replica certificate), configurations, both nodes
    /// started and the watcher connected.
    fn start(dir: &Path, sources: &[Source]) -> anyhow::Result<Pair> {
        let primary_dir = dir.join("primary");
        let replica_dir = dir.join("replica");
        for d in [&primary_dir, &replica_dir] {
            fs::create_dir_all(d)?;
            cluster::make_certs(d)?;
        }
        let abs = |d: &Path| fs::canonicalize(d).with_context(|| format!("{}", d.display()));
        let (primary_dir, replica_dir) = (abs(&primary_dir)?, abs(&replica_dir)?);
        issue(
            &replica_dir,
            &["--role", "replica", "--host", "primary", "--all-tenants"],
        )?;
        let auditor = issue(&primary_dir, &["--role", "auditor", "--name", "bench-aud"])?;
        let primary_port = cluster::free_port()?;
        let replica_port = loop {
            let p = cluster::free_port()?;
            if p != primary_port {
                break p;
            }
        };
        let settings = cluster::AgentSettings::default();
        cluster::write_configs(&primary_dir, primary_port, sources, &settings)?;
        // The replica's agent.toml (its own CA's client certificate for
        // the same tenant and host) lists and restores there.
        cluster::write_configs(&replica_dir, replica_port, sources, &settings)?;
        let r = replica_dir.display();
        edit_node_toml(
            &primary_dir,
            "primary",
            &format!(
                "[[replication]]\nname = \"{PEER}\"\naddress = \"127.0.0.1:{replica_port}\"\ndirection = \"push\"\nca = \"{r}/certs/ca.pem\"\ncert = \"{r}/certs/replica-primary.pem\"\nkey = \"{r}/certs/replica-primary.key\"\ninterval_secs = 1\ncontinuous = true\ncall_timeout_secs = 120\n"
            ),
        )?;
        edit_node_toml(&replica_dir, "replica", "")?;
        let key = auditor.replace(".pem", ".key");
        let auditor_cfg = primary_dir.join("auditor.toml");
        fs::write(
            &auditor_cfg,
            format!(
                "[node]\naddress = \"127.0.0.1:{primary_port}\"\nca = \"certs/ca.pem\"\ncert = \"{auditor}\"\nkey = \"{key}\"\n"
            ),
        )?;
        // The replica first, so that the primary's first pass finds it.
        let replica = Node::start(&replica_dir, replica_port).context("starting the replica")?;
        let primary = Node::start(&primary_dir, primary_port).context("starting the primary")?;
        let watch = Watch::connect(&replica_dir.join("agent.toml"), &auditor_cfg)?;
        let audit_seq = watch.audit_head()?;
        Ok(Pair {
            primary,
            replica,
            primary_dir,
            replica_dir,
            primary_port,
            replica_port,
            watch,
            errors: BTreeSet::new(),
            audit_seq,
        })
    }

    /// The primary's row for the peer and the bench tenant, with any
    /// peer or tenant error noted.
    fn row(&mut self) -> anyhow::Result<Option<refuge_client::ReplicationRow>> {
        let rows = self.watch.rows()?;
        for r in &rows {
            if !r.last_error.is_empty() {
                let who = if r.tenant.is_empty() {
                    "peer".to_string()
                } else {
                    format!("tenant {}", r.tenant)
                };
                self.errors.insert(format!("{who}: {}", r.last_error));
            }
        }
        Ok(rows
            .into_iter()
            .find(|r| r.peer == PEER && r.tenant == cluster::TENANT))
    }

    /// Backs up `s` to the primary and measures the copy of its snapshot
    /// to the replica.
    fn transfer(
        &mut self,
        phase: &'static str,
        s: &Source,
        logical: u64,
        changed: u64,
    ) -> anyhow::Result<Transfer> {
        let before = self.row()?;
        let (sent0, chunks0, snaps0) = before
            .as_ref()
            .map(|r| (r.bytes_sent, r.chunks_sent, r.snapshots_sent))
            .unwrap_or((0, 0, 0));
        let (p, r) = (self.primary.pid, self.replica.pid);
        measure::reset_hwm(p);
        let mut c = cluster::command("refuge-agent", &self.primary_dir)?;
        c.args([
            "--config",
            "agent.toml",
            "backup",
            "--json",
            "--source",
            s.name,
        ]);
        let name = format!("backup-{}-{}", phase.replace(['%', ' '], ""), s.name);
        let m = measure::run(c, &self.primary_dir, &name)?;
        let acked = Instant::now();
        // The replication starts ~200 ms after the commit: the backup's
        // peak is read and both peaks are reset before it does.
        let backup_primary_kib = measure::vm_hwm(p).unwrap_or(0);
        measure::reset_hwm(p);
        measure::reset_hwm(r);
        let cpu0 = (
            measure::proc_cpu(p).unwrap_or(0.0),
            measure::proc_cpu(r).unwrap_or(0.0),
        );
        let busy0 = measure::system_busy();
        let threads0 = (measure::thread_cpu(p), measure::thread_cpu(r));
        let primary_start_kib = measure::vm_rss(p).unwrap_or(0);
        let replica_start_kib = measure::vm_rss(r).unwrap_or(0);
        if let Some(f) = &m.failure {
            bail!("{f}");
        }
        let reports: serde_json::Value = serde_json::from_str(&m.stdout)
            .with_context(|| format!("{name}: the agent's JSON report"))?;
        let rep = reports
            .as_array()
            .and_then(|a| a.first())
            .with_context(|| format!("{name}: the agent reported no snapshot"))?;
        let id = rep
            .get("snapshot")
            .and_then(|v| v.as_str())
            .with_context(|| format!("{name}: no snapshot id in the agent's report"))?
            .to_string();

        let mut last_status = Instant::now();
        loop {
            if self.watch.listed(&id)? {
                break;
            }
            if last_status.elapsed() >= STATUS_EVERY {
                self.row()?;
                last_status = Instant::now();
            }
            if acked.elapsed() > TIMEOUT {
                bail!(
                    "snapshot {id} of {} did not reach the replica within {} s; errors in the primary's status: {:?}",
                    s.name,
                    TIMEOUT.as_secs(),
                    self.errors
                );
            }
            std::thread::sleep(POLL);
        }
        let secs = acked.elapsed().as_secs_f64();
        let cpu1 = (
            measure::proc_cpu(p).unwrap_or(0.0),
            measure::proc_cpu(r).unwrap_or(0.0),
        );
        let busy = measure::system_busy() - busy0;
        let threads1 = (measure::thread_cpu(p), measure::thread_cpu(r));
        // The kernel updates the mark lazily: never below the RSS read
        // at the start.
        let primary_peak_kib = measure::vm_hwm(p).unwrap_or(0).max(primary_start_kib);
        let replica_peak_kib = measure::vm_hwm(r).unwrap_or(0).max(replica_start_kib);

        // The primary's board follows the import by moments.
        let deadline = Instant::now() + Duration::from_secs(30);
        let row = loop {
            let row = self.row()?;
            if let Some(row) = &row
                && row.snapshots_sent > snaps0
                && row.pending_snapshots == 0
            {
                break row.clone();
            }
            if Instant::now() > deadline {
                bail!(
                    "the replica lists snapshot {id}, but the primary's status does not show it sent: {row:?}"
                );
            }
            std::thread::sleep(POLL);
        };
        let (pass_secs, audited_secs) = self.audited(&id)?;
        let primary_cpu = cpu1.0 - cpu0.0;
        let replica_cpu = cpu1.1 - cpu0.1;
        Ok(Transfer {
            phase,
            source: s.name.into(),
            snapshots: 1,
            logical,
            changed,
            backup_secs: m.wall.as_secs_f64(),
            backup_sent: u(rep, "bytes_sent"),
            backup_primary_kib,
            secs,
            pass_secs,
            audited_secs,
            wire: row.bytes_sent - sent0,
            chunks: row.chunks_sent - chunks0,
            primary_start_kib,
            primary_peak_kib,
            replica_start_kib,
            replica_peak_kib,
            primary_cpu,
            replica_cpu,
            other_cpu: (busy - primary_cpu - replica_cpu).max(0.0),
            primary_threads: delta(&threads0.0, &threads1.0),
            replica_threads: delta(&threads0.1, &threads1.1),
        })
    }

    /// From the primary's audit records since the last call: the
    /// durations of its passes (`replication_pass`: "... N snapshots
    /// copied in X s", summed) and the time from the commit of snapshot
    /// `id` (`snapshot_committed`) to the end of the last pass, by the
    /// node's clock. Waits a little for the pass record, which follows the
    /// import.
    fn audited(&mut self, id: &str) -> anyhow::Result<(Option<f64>, Option<f64>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut passes, mut committed, mut pass_end) = (None, None, None);
        loop {
            for rec in self.watch.audit_since(self.audit_seq + 1)? {
                self.audit_seq = self.audit_seq.max(rec.seq);
                let e = &rec.event;
                if e.event == "snapshot_committed" && e.detail.contains(id) {
                    committed = Some(e.time_micros);
                }
                if e.event != "replication_pass" {
                    continue;
                }
                let secs = e
                    .detail
                    .rsplit_once("copied in ")
                    .and_then(|(_, t)| t.trim_end_matches(" s").trim().parse::<f64>().ok());
                if let Some(x) = secs {
                    *passes.get_or_insert(0.0) += x;
                    pass_end = Some(e.time_micros);
                }
            }
            if passes.is_some() || Instant::now() > deadline {
                let span = match (committed, pass_end) {
                    (Some(c), Some(p)) if p >= c => Some((p - c) as f64 / 1e6),
                    _ => None,
                };
                return Ok((passes, span));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Restores the latest snapshot of every source from the replica
    /// (with the replica's own client certificate) and compares it with
    /// the source.
    fn verify(
        &self,
        sources: &[Source],
        want: &[dataset::Digest],
        t0: Instant,
    ) -> anyhow::Result<Vec<Restored>> {
        let dir = &self.replica_dir;
        let restore_dir = dir.join("restore");
        fs::create_dir_all(&restore_dir)?;
        let mut out = Vec::new();
        for (s, want) in sources.iter().zip(want) {
            let target = if s.kind == "image" {
                restore_dir.join(format!("{}.img", s.name))
            } else {
                restore_dir.join(s.name)
            };
            log(t0, format!("restore of {} from the replica", s.name));
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
            let m = measure::run(c, dir, &format!("restore-{}", s.name))?;
            let problems = if let Some(f) = &m.failure {
                vec![format!("`refuge restore` failed: {}", super::last_line(f))]
            } else {
                let got = dataset::digest(&target)
                    .with_context(|| format!("reading the restore {}", target.display()))?;
                let (mut problems, count) = want.differences(&got, 5);
                if count > 0 {
                    problems.insert(0, format!("{count} entries differ"));
                } else if got.hash != want.hash {
                    problems.push("digests differ".into());
                }
                problems
            };
            let secs = m.wall.as_secs_f64();
            if problems.is_empty() {
                log(
                    t0,
                    format!(
                        "{}: {} restored in {} = {} MB/s, identical to the source",
                        s.name,
                        mb(want.bytes),
                        super::report::secs(secs),
                        mb_per_s(want.bytes, secs)
                    ),
                );
            } else {
                log(
                    t0,
                    format!(
                        "VERIFICATION FAILED for {}: {}",
                        s.name,
                        problems.join("; ")
                    ),
                );
            }
            out.push(Restored {
                source: s.name,
                bytes: want.bytes,
                secs,
                problems,
            });
            sync();
        }
        Ok(out)
    }
}

/// `after - before`, per thread name (names only in `after` count from 0).
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Connects to a node, retrying for up to a minute: a node listens
/// before its store is open and refuses calls until then.
async fn connect_when_open(
    cfg: &refuge_client::ConnectionConfig,
) -> anyhow::Result<refuge_client::Node> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match refuge_client::connect(cfg).await {
            Ok(n) => return Ok(n),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Client connections of this process: the replica's agent certificate
/// (lists the snapshots there) and an auditor of the primary (status and
/// audit log), on a runtime of their own.
struct Watch {
    rt: tokio::runtime::Runtime,
    replica: refuge_client::Node,
    primary: refuge_client::Node,
}

impl Watch {
    fn connect(replica_cfg: &Path, primary_cfg: &Path) -> anyhow::Result<Watch> {
        let rc = refuge_client::load_config(replica_cfg)
            .with_context(|| format!("{}", replica_cfg.display()))?;
        let pc = refuge_client::load_config(primary_cfg)
            .with_context(|| format!("{}", primary_cfg.display()))?;
        // A worker of its own keeps the connections alive between polls.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (replica, primary) = rt.block_on(async {
            let replica = connect_when_open(&rc.node)
                .await
                .context("connecting to the replica")?;
            let primary = connect_when_open(&pc.node)
                .await
                .context("connecting to the primary (auditor)")?;
            anyhow::Ok((replica, primary))
        })?;
        Ok(Watch {
            rt,
            replica,
            primary,
        })
    }

    /// Whether the replica lists the snapshot `id` (hex).
    fn listed(&self, id: &str) -> anyhow::Result<bool> {
        let sel = refuge_client::Selection {
            tenant: cluster::TENANT.into(),
            ..Default::default()
        };
        let snaps = self
            .rt
            .block_on(self.replica.list_snapshots(&sel))
            .context("listing the replica's snapshots")?;
        Ok(snaps.iter().any(|s| s.id.to_hex() == id))
    }

    /// The primary's replication rows.
    fn rows(&self) -> anyhow::Result<Vec<refuge_client::ReplicationRow>> {
        Ok(self
            .rt
            .block_on(self.primary.status(None))
            .context("reading the primary's status")?
            .replication)
    }

    /// The primary's audit records from `seq` on.
    fn audit_since(&self, seq: u64) -> anyhow::Result<Vec<refuge_core::audit::AuditRecord>> {
        self.rt
            .block_on(self.primary.read_audit(seq))
            .context("reading the primary's audit log")
    }

    /// The primary's last audit sequence number.
    fn audit_head(&self) -> anyhow::Result<u64> {
        Ok(self.audit_since(1)?.last().map(|r| r.seq).unwrap_or(0))
    }
}
