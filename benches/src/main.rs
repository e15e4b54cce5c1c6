//! `refuge-bench`: refuge's end-to-end benchmark (see BENCHMARKS.md).
//!
//! Without a subcommand it generates a seeded data set (disk image,
//! database directory, file tree), starts the real `refuged` with TLS on
//! 127.0.0.1 and measures an initial backup, an incremental backup after a
//! ~5% mutation, a third backup after another, and a verified restore of
//! every source, with the real `refuge-agent` and `refuge` binaries found
//! next to this executable; restic and Borg run on the same data in the
//! same run (`--no-peers` leaves them out).
//! `micro-report` turns the criterion results of `benches/micro.rs` into a
//! Markdown table. `contention` measures one tenant's backup while another
//! tenant's client holds every upload stream the node allows it.
//! `replication` measures a primary node's push of the data set to a
//! replica node (initial copy and a ~5% change) against what loopback TCP
//! carries. `scale` drives the node's catalog (RocksDB, no network) through
//! 1,000 agents' backups to millions of chunks (docs/scale.md).
//! `--backend s3` keeps the node's chunk bodies in a Ceph bucket on this
//! machine (scripts/ceph.sh).

mod e2e;
mod scale;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// refuge benchmarks: end-to-end backup, incremental backup and restore
/// throughput, memory and stored bytes, on a seeded data set.
///
/// Build the workspace binaries first: `cargo build --workspace --bins`.
#[derive(Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    e2e: E2eArgs,
}

#[derive(clap::Args)]
struct E2eArgs {
    /// Total size of the data set (binary units: 2GiB, 512MiB; decimal:
    /// 2GB). About 40% disk image, 30% database, 30% file tree.
    #[arg(long, default_value = "1GiB")]
    size: String,
    /// Seed of the data set and of its mutation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Markdown file to write the results into (a block of the section
    /// named by --label is added or replaced; other content is kept).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Section (level-2 heading) of --out.
    #[arg(long, default_value = "Latest run")]
    label: String,
    /// Directory in which to create the scratch directory (default: the
    /// system temporary directory). Needs about 2.7x --size free per run,
    /// 6.5x with the peers (their restores stay until the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the scratch directory (data, store, restores, logs).
    #[arg(long)]
    keep: bool,
    /// Complete runs, each with a fresh node and data set; the report
    /// shows medians (and ranges of wall time and MB/s).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Take `refuge`, `refuge-agent` and `refuged` from this directory
    /// (default: next to this executable), e.g. to measure another build.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// zstd level of the agent (default: the agent's default).
    #[arg(long)]
    zstd_level: Option<i32>,
    /// Average chunk size for one source, NAME=BYTES (image, db or tree);
    /// repeatable. Minimum and maximum follow at 1/4 and 4x. Default:
    /// db=64KiB, as agent.example.toml recommends for a database whose
    /// pages change in place (`--source-avg-size db=1MiB` for the
    /// agent's plain default).
    #[arg(long, value_parser = parse_source_avg)]
    source_avg_size: Vec<(String, u32)>,
    /// Encrypt on the agent (a fresh tenant key, `[encryption] key_file`).
    #[arg(long)]
    encrypt: bool,
    /// The encryption's suite: `standard` (keyed BLAKE3, XChaCha20-Poly1305)
    /// or `sm` (HMAC-SM3, SM4-GCM); `sm` implies --encrypt.
    #[arg(long, default_value = "standard", value_parser = ["standard", "sm"])]
    suite: String,
    /// Do not run restic and Borg on the same data (they run by default,
    /// installed with apt-get when missing, and the report gives the
    /// ratios).
    #[arg(long)]
    no_peers: bool,
    /// Where the node keeps chunk bodies: `rocksdb` (its default) or `s3`
    /// (packs in the bucket of a single-node Ceph on this machine, started
    /// with scripts/ceph.sh in --ceph-dir when it is not running).
    #[arg(long, default_value = "rocksdb", value_parser = ["rocksdb", "s3"])]
    backend: String,
    /// The Ceph cluster's directory for `--backend s3` (default:
    /// $CARGO_TARGET_DIR/ceph-bench, else the temporary directory). It
    /// needs a file system with O_DIRECT (not tmpfs).
    #[arg(long)]
    ceph_dir: Option<PathBuf>,
}

fn parse_source_avg(s: &str) -> Result<(String, u32), String> {
    let (name, bytes) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=BYTES, got {s:?}"))?;
    let bytes = refuge_bench::parse_size(bytes)?;
    let bytes = u32::try_from(bytes).map_err(|_| format!("{bytes} is too large"))?;
    Ok((name.to_string(), bytes))
}

#[derive(Subcommand)]
enum Cmd {
    /// Print (and optionally write) a Markdown table of the criterion
    /// results of `cargo bench -p refuge-bench --bench micro --profile dev`.
    MicroReport {
        /// criterion's output directory (default:
        /// $CARGO_TARGET_DIR/criterion).
        #[arg(long)]
        criterion_dir: Option<PathBuf>,
        /// Markdown file to write the table into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Section (level-2 heading) of --out.
        #[arg(long, default_value = "Latest run")]
        label: String,
    },
    /// A PostgreSQL cluster (Debian's server, pgbench data): `postgres`
    /// base backups beside pg_basebackup, pgbench's throughput with WAL
    /// archiving off, through `cp` and through `refuge-agent wal-push`
    /// (with each push's latency), and a restore of the latest point with
    /// the cluster's replay. Runs as root (the server runs as `postgres`).
    Postgres {
        /// pgbench scale (about 15 MB each).
        #[arg(long, default_value_t = 50)]
        scale: u32,
        /// Seconds of each pgbench load.
        #[arg(long, default_value_t = 30)]
        load_secs: u32,
        /// pgbench clients.
        #[arg(long, default_value_t = 4)]
        clients: u32,
        /// Markdown file to write the results into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Section (level-2 heading) of --out.
        #[arg(long, default_value = "Latest run")]
        label: String,
        /// Directory in which to create the scratch directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the scratch directory.
        #[arg(long)]
        keep: bool,
    },
    /// One tenant's backup throughput on a quiet node and while another
    /// tenant's client holds every upload stream the node allows it.
    Contention {
        /// Size of the backed-up tree (seeded random files, all new).
        #[arg(long, default_value = "512MiB")]
        size: String,
        /// Runs of each mode; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Markdown file to write the table into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Section (level-2 heading) of --out.
        #[arg(long, default_value = "Latest run")]
        label: String,
        /// Directory in which to create the scratch directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the scratch directory.
        #[arg(long)]
        keep: bool,
    },
    /// Replication from a primary node to a replica node, each with its
    /// own CA, on 127.0.0.1: the initial copy of the e2e data set and the
    /// copy of a ~5% change (MB/s, bytes sent, peak RSS and CPU of both
    /// nodes), beside a plain TCP copy on loopback; then a verified
    /// restore from the replica.
    Replication {
        /// Total size of the data set (as for the e2e benchmark).
        #[arg(long, default_value = "2GiB")]
        size: String,
        /// Seed of the data set and of its change.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Complete runs, each with fresh nodes and data; medians are
        /// reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Bytes of each loopback TCP copy.
        #[arg(long, default_value = "1GiB")]
        loopback: String,
        /// Markdown file to write the results into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Section (level-2 heading) of --out.
        #[arg(long, default_value = "Latest run")]
        label: String,
        /// Directory in which to create the scratch directory. Needs about
        /// 3.5x --size free per run.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the scratch directory.
        #[arg(long)]
        keep: bool,
        /// Take `refuge`, `refuge-agent` and `refuged` from this directory.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// The node's catalog (RocksDB) at millions of chunks, without a
    /// network: agents' backups (FindMissing, packs placed, commits) until
    /// --chunks distinct chunks, with size on disk, RSS, rates and commit
    /// latency every --every chunks; then retention, garbage collection,
    /// a listing of every chunk id and a reopen (docs/scale.md).
    Scale {
        /// Distinct chunks to reach (10M, 500k, 2000000).
        #[arg(long, default_value = "10M", value_parser = scale::parse_count)]
        chunks: u64,
        /// Agents (one host and source each).
        #[arg(long, default_value_t = 1000)]
        agents: u32,
        /// Tenants the agents are spread over (--agents must be a multiple).
        #[arg(long, default_value_t = 50)]
        tenants: u32,
        /// Target pack size, MiB.
        #[arg(long, default_value_t = 32)]
        pack_mib: u32,
        /// Nominal chunk size, KiB.
        #[arg(long, default_value_t = 64)]
        chunk_kib: u32,
        /// Share of a snapshot's chunks that are new in the next one, %.
        #[arg(long, default_value_t = 5.0)]
        new_pct: f64,
        /// Generations after the first over which --chunks is reached
        /// (sets the size of one snapshot).
        #[arg(long, default_value_t = 10)]
        generations: u32,
        /// Generations between garbage collections (0: only at the end).
        #[arg(long, default_value_t = 4)]
        gc_every: u32,
        /// Agents backed up at the same time.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The store's block cache, MiB (the node's default: 64).
        #[arg(long, default_value_t = 64)]
        block_cache_mib: usize,
        /// Flushes and compactions with O_DIRECT (the node's `[rocksdb]
        /// direct_io = true`; by default buffered, like the node's).
        #[arg(long)]
        direct_io: bool,
        /// `packs` (the s3 backend's catalog) or `inline` (the rocksdb
        /// backend, bodies of --body-bytes in RocksDB).
        #[arg(long, default_value = "packs", value_parser = ["packs", "inline"])]
        bodies: String,
        /// Body size of a chunk with --bodies inline.
        #[arg(long, default_value_t = 4096)]
        body_bytes: usize,
        /// Report every this many distinct chunks.
        #[arg(long, default_value = "1M", value_parser = scale::parse_count)]
        every: u64,
        /// Seed of the chunk ids.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory in which to create the scratch directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the store.
        #[arg(long)]
        keep: bool,
        /// Markdown file to write the results into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Section (level-2 heading) of --out.
        #[arg(
            long,
            default_value = "Scale: the catalog at 10 million chunks (issue 17)"
        )]
        label: String,
    },
}

/// The arguments of `refuge-bench replication`.
struct ReplicationArgs {
    size: String,
    seed: u64,
    runs: usize,
    loopback: String,
    out: Option<PathBuf>,
    label: String,
    dir: Option<PathBuf>,
    keep: bool,
    bin_dir: Option<PathBuf>,
}

fn replication(a: ReplicationArgs) -> anyhow::Result<()> {
    let size = refuge_bench::parse_size(&a.size).map_err(anyhow::Error::msg)?;
    let loopback_bytes = refuge_bench::parse_size(&a.loopback).map_err(anyhow::Error::msg)?;
    if size < 16 << 20 {
        anyhow::bail!("--size must be at least 16MiB");
    }
    if a.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    if loopback_bytes == 0 {
        anyhow::bail!("--loopback must be more than 0 bytes");
    }
    if let Some(d) = a.bin_dir {
        e2e::cluster::set_bin_dir(d);
    }
    let r = e2e::replication::run(&e2e::replication::Options {
        size,
        size_text: a.size.clone(),
        seed: a.seed,
        runs: a.runs,
        dir: a.dir,
        keep: a.keep,
        loopback_bytes,
    })?;
    println!("{}", r.markdown);
    if let Some(out) = a.out {
        let key = format!("replication {}", a.size);
        e2e::report::upsert_file(&out, &a.label, &key, &r.markdown)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "wrote the replication results into {} (section {:?})",
            out.display(),
            a.label
        );
    }
    if !r.verified {
        anyhow::bail!("a restore from the replica differs from its source (see the report)");
    }
    Ok(())
}

fn postgres(o: e2e::postgres::Options, out: Option<PathBuf>, label: &str) -> anyhow::Result<()> {
    let body = e2e::postgres::run(&o)?;
    println!("{body}");
    if let Some(out) = out {
        let key = format!("postgres scale {}", o.scale);
        e2e::report::upsert_file(&out, label, &key, &body)?;
        eprintln!("wrote the postgres tables into {}", out.display());
    }
    Ok(())
}

fn contention(
    size_text: String,
    runs: usize,
    out: Option<PathBuf>,
    label: &str,
    dir: Option<PathBuf>,
    keep: bool,
) -> anyhow::Result<()> {
    let size = refuge_bench::parse_size(&size_text).map_err(anyhow::Error::msg)?;
    if runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    let body = e2e::contention::run(&e2e::contention::Options {
        size,
        size_text: size_text.clone(),
        runs,
        dir,
        keep,
    })?;
    println!("{body}");
    if let Some(out) = out {
        let key = format!("contention {size_text}");
        e2e::report::upsert_file(&out, label, &key, &body)?;
        eprintln!("wrote the contention table into {}", out.display());
    }
    Ok(())
}

fn micro_report(dir: Option<PathBuf>, out: Option<PathBuf>, label: &str) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(e2e::report::default_criterion_dir);
    let table = e2e::report::micro_table(&dir)?;
    let m = e2e::machine::Machine::describe(&dir);
    let body = format!(
        "### Micro-benchmarks (criterion)\n\nCommit `{}`; {}. `cargo bench -p refuge-bench --bench micro --profile dev` on seeded data; sample size 10, 3 s measurement. Throughput is of uncompressed input bytes (MB = 10^6 bytes), with criterion's 95% confidence interval.\n\n{table}",
        m.commit,
        m.line()
    );
    println!("{body}");
    if let Some(out) = out {
        e2e::report::upsert_file(&out, label, "micro", &body)?;
        eprintln!("wrote the micro-benchmark table into {}", out.display());
    }
    Ok(())
}

fn end_to_end(a: E2eArgs) -> anyhow::Result<()> {
    let size = refuge_bench::parse_size(&a.size).map_err(anyhow::Error::msg)?;
    if let Some(d) = a.bin_dir {
        e2e::cluster::set_bin_dir(d);
    }
    if size < 16 << 20 {
        anyhow::bail!("--size must be at least 16MiB");
    }
    let o = e2e::Options {
        size,
        size_text: a.size.clone(),
        seed: a.seed,
        dir: a.dir,
        keep: a.keep,
        out: a.out.clone(),
        label: a.label.clone(),
        runs: a.runs.max(1),
        agent: e2e::cluster::AgentSettings {
            zstd_level: a.zstd_level,
            source_avg_size: if a.source_avg_size.is_empty() {
                vec![("db".to_string(), 64 << 10)]
            } else {
                a.source_avg_size
            },
            encrypt: a.encrypt || a.suite == "sm",
            sm: a.suite == "sm",
        },
        peers: !a.no_peers,
        bucket: if a.backend == "s3" {
            let dir = a.ceph_dir.unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir)
                    .join("ceph-bench")
            });
            Some(std::sync::Arc::new(e2e::bucket::Bucket::start(&dir)?))
        } else {
            None
        },
    };
    if o.peers {
        e2e::peers::ensure_installed()?;
    }
    let r = e2e::run(&o)?;
    println!("{}", r.markdown);
    if let Some(out) = &o.out {
        let key = match &o.bucket {
            Some(_) => format!("e2e {} s3", o.size_text),
            None => format!("e2e {}", o.size_text),
        };
        e2e::report::upsert_file(out, &o.label, &key, &r.markdown)?;
        eprintln!(
            "wrote the results into {} (section {:?})",
            out.display(),
            o.label
        );
    }
    if !r.verified {
        anyhow::bail!("a restore differs from its source (see the report)");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Some(Cmd::MicroReport {
            criterion_dir,
            out,
            label,
        }) => micro_report(criterion_dir, out, &label),
        Some(Cmd::Postgres {
            scale,
            load_secs,
            clients,
            out,
            label,
            dir,
            keep,
        }) => postgres(
            e2e::postgres::Options {
                scale,
                load_secs,
                clients,
                dir,
                keep,
            },
            out,
            &label,
        ),
        Some(Cmd::Contention {
            size,
            runs,
            out,
            label,
            dir,
            keep,
        }) => contention(size, runs, out, &label, dir, keep),
        Some(Cmd::Replication {
            size,
            seed,
            runs,
            loopback,
            out,
            label,
            dir,
            keep,
            bin_dir,
        }) => replication(ReplicationArgs {
            size,
            seed,
            runs,
            loopback,
            out,
            label,
            dir,
            keep,
            bin_dir,
        }),
        Some(Cmd::Scale {
            chunks,
            agents,
            tenants,
            pack_mib,
            chunk_kib,
            new_pct,
            generations,
            gc_every,
            threads,
            block_cache_mib,
            direct_io,
            bodies,
            body_bytes,
            every,
            seed,
            dir,
            keep,
            out,
            label,
        }) => scale::main(
            scale::Options {
                chunks,
                agents,
                tenants,
                pack_mib,
                chunk_kib,
                new_pct,
                generations,
                gc_every,
                threads,
                block_cache_mib,
                direct_io,
                inline: bodies == "inline",
                body_bytes,
                every,
                seed,
                dir,
                keep,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            },
            out,
            &label,
        ),
        None => end_to_end(cli.e2e),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refuge-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
