//! `refuge`: the operator CLI — certificates, snapshots, restores.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use refuge_cli::commands::{Filter, RestoreArgs};

/// refuge operator CLI: make certificates, list restore points and restore
/// any point in time from a refuge node.
///
/// Exit codes: 0 success, 1 failure, 2 bad arguments or configuration.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Client configuration file; only its [node] section is used.
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
    /// Create and issue certificates.
    #[command(subcommand)]
    Certs(Certs),
    /// List restore points (snapshots) of your tenant.
    Snapshots {
        /// Only this tenant (yours; any other matches nothing).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot: by id, unique id prefix, `latest`, or `--at TIME`.
    Restore {
        /// Snapshot id, unique id prefix, or `latest`.
        snapshot: Option<String>,
        /// Restore the newest snapshot at or before this RFC 3339 time
        /// (for example 2026-11-22T10:00:00Z).
        #[arg(long)]
        at: Option<String>,
        /// Host of the snapshot (needed when several hosts match).
        #[arg(long)]
        host: Option<String>,
        /// Source of the snapshot (needed when several sources match).
        #[arg(long)]
        source: Option<String>,
        /// Directory to restore a tree into, or file/device path for an image.
        #[arg(long)]
        target: PathBuf,
        /// Restore only this path of the snapshot (a file or a subtree).
        #[arg(long)]
        include: Option<String>,
        /// Continue an interrupted restore: keep what is already written
        /// (each chunk re-hashed locally) and fetch only the rest.
        #[arg(long)]
        resume: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// Show the tenant and host the node reads from your certificate.
    Whoami,
}

#[derive(Subcommand)]
enum Certs {
    /// Create a CA and a node certificate in DIR.
    Init {
        /// Directory for ca.pem, ca.key, node.pem, node.key.
        dir: PathBuf,
        /// DNS names or IP addresses of the node (repeatable; default
        /// localhost and 127.0.0.1).
        #[arg(long = "node-name")]
        node_names: Vec<String>,
        /// Validity of the node certificate in days (the CA gets 3x).
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue a client certificate for a tenant (department) and host.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Tenant (department) name.
        #[arg(long)]
        tenant: String,
        /// Host name.
        #[arg(long)]
        host: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write TENANT-HOST.pem and .key (default: --dir).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    refuge_cli::init_logging("warn,refuge_client::progress=info");
    let cfg = args.config;
    let r = match args.command {
        Command::Certs(Certs::Init {
            dir,
            node_names,
            days,
        }) => refuge_cli::certs::init(&dir, &node_names, days),
        Command::Certs(Certs::Issue {
            dir,
            tenant,
            host,
            days,
            out_dir,
        }) => refuge_cli::certs::issue(&dir, &tenant, &host, days, out_dir.as_deref()),
        cmd => match tokio::runtime::Runtime::new() {
            Err(e) => Err(refuge_cli::Failure::Failed(e.into())),
            Ok(rt) => rt.block_on(async {
                match cmd {
                    Command::Snapshots {
                        tenant,
                        host,
                        source,
                        json,
                    } => {
                        refuge_cli::commands::snapshots(
                            &cfg,
                            Filter {
                                tenant,
                                host,
                                source,
                            },
                            json,
                        )
                        .await
                    }
                    Command::Restore {
                        snapshot,
                        at,
                        host,
                        source,
                        target,
                        include,
                        json,
                        resume,
                    } => {
                        let filter = Filter {
                            tenant: None,
                            host,
                            source,
                        };
                        refuge_cli::commands::restore(
                            &cfg,
                            RestoreArgs {
                                snapshot,
                                at,
                                filter,
                                target,
                                include,
                                json,
                                resume,
                            },
                        )
                        .await
                    }
                    Command::Whoami => refuge_cli::commands::whoami(&cfg).await,
                    Command::Certs(_) => unreachable!("handled above"),
                }
            }),
        },
    };
    refuge_cli::finish("refuge", r)
}
