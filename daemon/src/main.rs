//! `refuged`: the off-site backup node. Parses arguments, sets up logging
//! and calls [`refuge_node::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// refuge backup node: receives verified, deduplicated chunks from agents
/// over gRPC with mutual TLS 1.3 and keeps them in a RocksDB store with a
/// snapshot catalog.
///
/// Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad arguments or
/// configuration.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Configuration file (template: node.example.toml).
    #[arg(
        short,
        long,
        env = "REFUGED_CONFIG",
        default_value = "/etc/refuge/node.toml"
    )]
    config: PathBuf,
    /// Check the configuration file and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    // Before any thread exists: the memory the configuration sums up
    // assumes few arenas (refuge-malloc).
    refuge_malloc::limit_arenas();
    let args = Args::parse();
    // journald with priorities under systemd, else stderr (refuge-log).
    refuge_log::init("refuged", "info", true);
    let cfg = match refuge_node::NodeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("refuged: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Fault tests only: a build without the `failpoints` feature refuses
    // to start with REFUGE_FAILPOINTS set rather than ignore it.
    match refuge_node::failpoints::configure_from_env() {
        Ok(set) if !set.is_empty() => {
            tracing::warn!("fail points configured (a test build): {}", set.join("; "));
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("refuged: {e}");
            return ExitCode::from(2);
        }
    }
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("refuged: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refuged: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: refuge_node::NodeConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    refuge_node::run(cfg, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}
