//! What the two client programs, `refuge-agent` (package `refuge-agent`)
//! and `refuge` (package `refuge-cli`), share as programs: how a command
//! fails, the exit code each failure maps to, the one line printed for
//! it, and logging. Kept here, in the library both already use, so that
//! neither program depends on the other and nothing is copied.
//!
//! Exit codes (both binaries):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed: a backup source reported as failed has no new snapshot; a failed restore leaves no file with wrong content under its real name (files completed before the failure stay) |
//! | 2 | bad arguments or configuration |
//! | 3 | backup committed, but some files could not be read (listed) |

use std::path::Path;
use std::process::ExitCode;

use crate::config::{AgentConfig, load_config};

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or configuration: exit 2.
    Usage(anyhow::Error),
    /// The operation failed: exit 1.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

/// Outcome of a command: its exit code, or its failure.
pub type Outcome = Result<u8, Failure>;

/// Prints a failure as one line on stderr and returns the exit code.
pub fn finish(prog: &str, r: Outcome) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(e)) => {
            eprintln!("{prog}: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("{prog}: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The configuration file of a command; one that cannot be read or is
/// wrong is a [`Failure::Usage`] (exit 2).
pub fn command_config(path: &Path) -> Result<AgentConfig, Failure> {
    load_config(path).map_err(Failure::Usage)
}

/// Logs to stderr (journald under systemd); `RUST_LOG` overrides
/// `default`; `REFUGE_LOG_FORMAT=json` writes one JSON object per line.
pub fn init_logging(default: &str) {
    let b = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var("REFUGE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        b.json().init();
    } else {
        b.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
