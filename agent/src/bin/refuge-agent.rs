//! `refuge-agent`: backs up this host's configured sources to the node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// refuge agent: backs up this host's directories, files and disk images to
/// an off-site refuge node, sending only the chunks the node lacks.
///
/// Exit codes: 0 success, 1 failure, 2 bad arguments or configuration,
/// 3 snapshot committed but some files could not be read.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Configuration file (template: agent.example.toml).
    #[arg(
        short,
        long,
        global = true,
        env = "REFUGE_CONFIG",
        default_value = "/etc/refuge/agent.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back up the configured sources once and commit a snapshot of each.
    Backup {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Print a JSON summary (bytes read, new, sent, chunks, dedup ratio, duration).
        #[arg(long)]
        json: bool,
        /// Read every file, even those whose size, mtime, ctime and inode are
        /// unchanged since the previous snapshot.
        #[arg(long)]
        rehash: bool,
    },
    /// Run as a service: back up each source on its schedule and, with
    /// on_change, within seconds of a change; retry while the node is
    /// unreachable; stop on SIGTERM (a running backup resumes from its
    /// checkpoint at the next start). Speaks systemd's notify protocol.
    Run,
    /// Check the configuration file and exit.
    CheckConfig,
    /// Archive one WAL file of a postgres source: PostgreSQL's
    /// archive_command (`refuge-agent -c CONFIG wal-push --source NAME %p`).
    /// Exits 0 only once the node has committed it as a snapshot of the
    /// source's WAL source NAME.wal; the server retries on any other exit.
    WalPush {
        /// The postgres source (default: the only one in the config).
        #[arg(long)]
        source: Option<String>,
        /// Print the snapshot's JSON summary.
        #[arg(long)]
        json: bool,
        /// The WAL file (`%p`: relative to the data directory, the
        /// command's working directory).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before any thread exists: the memory budget assumes few arenas.
    refuge_malloc::limit_arenas();
    let args = Args::parse();
    // The service logs each backup (info); one-off commands only problems.
    refuge_agent::init_logging(if matches!(args.command, Command::Run) {
        "info"
    } else {
        "warn,refuge_client::progress=info"
    });
    if matches!(args.command, Command::Backup { .. } | Command::Run)
        && let Ok(cfg) = refuge_client::load_config(&args.config)
        && let Some(problem) = refuge_agent::limits::apply(&cfg.limits)
    {
        tracing::warn!("{problem}");
    }
    let r = match args.command {
        Command::CheckConfig => refuge_agent::commands::check_config(&args.config),
        Command::Run => match tokio::runtime::Runtime::new() {
            Ok(rt) => {
                let r = rt.block_on(refuge_agent::service::run(&args.config));
                // A backup abandoned at SIGTERM still holds a blocking
                // thread; do not wait for it (its checkpoint is on disk).
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                r
            }
            Err(e) => Err(refuge_agent::Failure::Failed(e.into())),
        },
        Command::WalPush { source, json, file } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(refuge_agent::wal::wal_push(
                &args.config,
                source.as_deref(),
                &file,
                json,
            )),
            Err(e) => Err(refuge_agent::Failure::Failed(e.into())),
        },
        Command::Backup {
            source,
            json,
            rehash,
        } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(refuge_agent::commands::backup(
                &args.config,
                source.as_deref(),
                json,
                rehash,
            )),
            Err(e) => Err(refuge_agent::Failure::Failed(e.into())),
        },
    };
    refuge_agent::finish("refuge-agent", r)
}
