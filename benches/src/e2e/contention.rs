//! `refuge-bench contention`: one tenant's backup throughput while another
//! tenant's client holds every upload stream the node lets it have
//! (`limits.max_connections_per_client` connections of
//! `limits.max_concurrent_streams` streams, each sent one chunk and never
//! finished) and keeps trying to open more. The same backup is measured on
//! a quiet node and on the loaded one, each with a fresh store.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use refuge_bench::dataset::Source;
use refuge_bench::rng::Rng;
use refuge_core::{ChunkId, compress_chunk};
use refuge_proto::pb;

use super::cluster::{self, Node};
use super::machine::Machine;
use super::measure;
use super::report::{mb, mb_per_s, mib_from_kib, secs};

/// What `refuge-bench contention` measures.
pub struct Options {
    /// Bytes of the backed-up tree.
    pub size: u64,
    /// `--size` as given.
    pub size_text: String,
    /// Runs of each mode (medians are reported).
    pub runs: usize,
    /// Scratch directory parent.
    pub dir: Option<PathBuf>,
    /// Keep the scratch directory.
    pub keep: bool,
}

/// The node's defaults that bound one client.
const CONNECTIONS: usize = 16;
const STREAMS: usize = 64;
/// Connections the noisy client tries beyond its limit, every round.
const EXTRA_TRIES: usize = 16;

/// One measured backup.
struct Sample {
    wall: Duration,
    /// Node RSS (KiB) just before the backup: with the noisy client's
    /// streams open, what they cost.
    node_before_kib: u64,
    node_peak_kib: u64,
    streams_open: usize,
    refused: usize,
}

/// Runs the benchmark and returns its Markdown block.
pub fn run(o: &Options) -> anyhow::Result<String> {
    let scratch = match &o.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("refuge-contention-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("refuge-contention-")
            .tempdir()?,
    };
    let root = scratch.path().to_path_buf();
    cluster::install(&root)?;
    let data = root.join("data");
    let bytes = write_tree(&data, o.size)?;
    eprintln!(
        "[contention] {} of seeded files in {}",
        mb(bytes),
        data.display()
    );
    let mut quiet = Vec::new();
    let mut loaded = Vec::new();
    for run in 0..o.runs {
        for noisy in [false, true] {
            let dir = root.join(format!(
                "run{run}-{}",
                if noisy { "loaded" } else { "quiet" }
            ));
            fs::create_dir_all(&dir)?;
            let s = one(&dir, &data, noisy)?;
            eprintln!(
                "[contention] run {} {}: {} in {} = {} MB/s; node RSS before {}, peak {}; noisy streams open {}, connections refused {}",
                run + 1,
                if noisy { "loaded" } else { "quiet" },
                mb(bytes),
                secs(s.wall.as_secs_f64()),
                mb_per_s(bytes, s.wall.as_secs_f64()),
                mib_from_kib(s.node_before_kib),
                mib_from_kib(s.node_peak_kib),
                s.streams_open,
                s.refused
            );
            if noisy { &mut loaded } else { &mut quiet }.push(s);
            let _ = fs::remove_dir_all(dir.join("store"));
        }
    }
    let m = Machine::describe(&root);
    let mut out = String::new();
    writeln!(
        out,
        "### Contention, {} tree\n\nCommit `{}`; {}. `refuge-bench contention --size {} --runs {}`: the `bench` tenant backs up a tree of {} (8 MiB files of seeded random bytes, so every chunk is new) to a fresh node, once on a quiet node and once while a client of another tenant holds {CONNECTIONS} connections x {STREAMS} `PutChunks` streams (each sent one 64 KiB chunk, never finished) and tries {EXTRA_TRIES} more connections every 100 ms; default node settings. Medians of {} runs (range).\n",
        o.size_text,
        m.commit,
        m.line(),
        o.size_text,
        o.runs,
        mb(bytes),
        o.runs
    )?;
    writeln!(
        out,
        "| node | backup wall time | MB/s | node RSS before the backup | node peak RSS during it | noisy streams open | noisy connections refused |\n|---|---:|---:|---:|---:|---:|---:|"
    )?;
    for (name, v) in [("quiet", &quiet), ("loaded", &loaded)] {
        let mut w: Vec<f64> = v.iter().map(|s| s.wall.as_secs_f64()).collect();
        w.sort_by(f64::total_cmp);
        let med = w[w.len() / 2];
        let mut peaks: Vec<u64> = v.iter().map(|s| s.node_peak_kib).collect();
        peaks.sort_unstable();
        let mut befores: Vec<u64> = v.iter().map(|s| s.node_before_kib).collect();
        befores.sort_unstable();
        writeln!(
            out,
            "| {name} | {} ({}–{}) | **{}** ({}–{}) | {} | {} | {} | {} |",
            secs(med),
            secs(w[0]),
            secs(w[w.len() - 1]),
            mb_per_s(bytes, med),
            mb_per_s(bytes, w[w.len() - 1]),
            mb_per_s(bytes, w[0]),
            mib_from_kib(befores[befores.len() / 2]),
            mib_from_kib(peaks[peaks.len() / 2]),
            v.iter().map(|s| s.streams_open).max().unwrap_or(0),
            v.iter().map(|s| s.refused).max().unwrap_or(0),
        )?;
    }
    if o.keep {
        let kept = scratch.keep();
        eprintln!("[contention] kept {}", kept.display());
    }
    Ok(out)
}

/// Seeded random files of 8 MiB (the last one shorter) under `dir`.
fn write_tree(dir: &Path, size: u64) -> anyhow::Result<u64> {
    fs::create_dir_all(dir)?;
    let mut rng = Rng::new(0xC0_7E57);
    let mut left = size;
    let mut i = 0;
    while left > 0 {
        let n = left.min(8 << 20);
        let mut buf = vec![0u8; n as usize];
        rng.fill(&mut buf);
        fs::write(dir.join(format!("f{i:04}.bin")), &buf)?;
        left -= n;
        i += 1;
    }
    Ok(size)
}

/// One backup of `data` by the `bench` tenant to a fresh node in `dir`,
/// with the noisy client running if `noisy`.
fn one(dir: &Path, data: &Path, noisy: bool) -> anyhow::Result<Sample> {
    cluster::make_certs(dir)?;
    let mut issue = cluster::command("refuge", dir)?;
    issue.args([
        "certs",
        "issue",
        "--dir",
        "certs",
        "--tenant",
        "noisy",
        "--host",
        "noisy-host",
    ]);
    cluster::run_ok(issue, "refuge certs issue (noisy)")?;
    let port = cluster::free_port()?;
    let agent = cluster::write_configs(
        dir,
        port,
        &[Source {
            name: "data",
            path: data.to_path_buf(),
            kind: "tree",
        }],
        &cluster::AgentSettings::default(),
    )?;
    let noisy_cfg = dir.join("noisy.toml");
    fs::write(
        &noisy_cfg,
        fs::read_to_string(&agent)?
            .replace(
                &format!("{}-{}", cluster::TENANT, cluster::HOST),
                "noisy-noisy-host",
            )
            .split("\n[[source]]")
            .next()
            .unwrap_or_default(),
    )?;
    let mut node = Node::start(dir, port)?;
    let load = if noisy {
        Some(Noisy::start(&noisy_cfg)?)
    } else {
        None
    };
    // Let the stalled streams' idle flush happen before looking.
    std::thread::sleep(Duration::from_secs(2));
    let node_before_kib = measure::vm_rss(node.pid).unwrap_or(0);
    measure::reset_hwm(node.pid);
    let mut cmd = cluster::command("refuge-agent", dir)?;
    cmd.args(["-c", "agent.toml", "backup"]);
    let m = measure::run(cmd, dir, "backup")?;
    let node_peak_kib = measure::vm_hwm(node.pid).unwrap_or(0);
    let (streams_open, refused) = load.map(Noisy::stop).unwrap_or((0, 0));
    node.stop()?;
    if let Some(f) = m.failure {
        bail!("{f}");
    }
    Ok(Sample {
        wall: m.wall,
        node_before_kib,
        node_peak_kib,
        streams_open,
        refused,
    })
}

/// The other tenant's client: its streams, on a runtime of its own.
struct Noisy {
    rt: tokio::runtime::Runtime,
    held: Vec<tokio::sync::mpsc::Sender<pb::ChunkUpload>>,
    stop: tokio::sync::watch::Sender<bool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Noisy {
    fn start(cfg: &Path) -> anyhow::Result<Noisy> {
        let cfg = refuge_client::load_config(cfg).context("noisy.toml")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut rng = Rng::new(7);
        let held = rt.block_on(async {
            let mut held = Vec::new();
            for _ in 0..CONNECTIONS {
                let node = refuge_client::connect(&cfg.node).await?;
                for _ in 0..STREAMS {
                    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
                    let mut ingest = node.ingest.clone();
                    tokio::spawn(async move {
                        let s = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
                        let _ = ingest.put_chunks(s).await;
                    });
                    let mut data = vec![0u8; 64 << 10];
                    rng.fill(&mut data);
                    let up = refuge_proto::upload_to(&ChunkId::of(&data), compress_chunk(&data, 1));
                    tx.send(up).await.context("noisy stream")?;
                    held.push(tx);
                }
            }
            anyhow::Ok(held)
        })?;
        // Keeps knocking: more connections, which the node refuses.
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = refused.clone();
        let node_cfg = cfg.node.clone();
        rt.spawn(async move {
            loop {
                for _ in 0..EXTRA_TRIES {
                    let ok = match refuge_client::connect(&node_cfg).await {
                        Ok(n) => n
                            .ingest
                            .clone()
                            .find_missing(pb::FindMissingRequest { ids: vec![] })
                            .await
                            .is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Ok(Noisy {
            rt,
            held,
            stop,
            refused,
        })
    }

    /// Ends the load; returns the streams it held and the connections
    /// refused.
    fn stop(self) -> (usize, usize) {
        let _ = self.stop.send(true);
        let n = self.held.len();
        drop(self.held);
        self.rt.shutdown_timeout(Duration::from_secs(2));
        (n, self.refused.load(std::sync::atomic::Ordering::Relaxed))
    }
}
