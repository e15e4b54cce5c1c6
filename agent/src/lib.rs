//! The commands behind the `refuge-agent` and `refuge` binaries. The
//! binaries only parse arguments and call these; the work itself is in
//! `refuge-client`.
//!
//! Exit codes (both binaries):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed: a backup source reported as failed has no new snapshot; a failed restore leaves no file with wrong content under its real name (files completed before the failure stay) |
//! | 2 | bad arguments or configuration |
//! | 3 | backup committed, but some files could not be read (listed) |

pub mod admin;
pub mod agent_metrics;
pub mod audit;
pub mod certs;
pub mod commands;
pub mod drill;
pub mod health;
pub mod keys;
pub mod limits;
pub mod service;
pub mod status;

use std::process::ExitCode;

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

/// Outcome of a command.
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

pub use refuge_client::human_bytes;

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(50 << 20), "50.0 MiB");
    }
}
