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

/// Logs as `refuge_log` decides (journald with priorities under systemd,
/// else stderr); `RUST_LOG` overrides `default`. The journal identifier
/// is the program's name.
pub fn init_logging(default: &str) {
    let name = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "refuge".into());
    refuge_log::init(&name, default, false);
}
