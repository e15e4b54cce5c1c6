//! The resident agent behind the `refuge-agent` binary: `check-config`,
//! one-off `backup` of the configured sources (with retries), the `run`
//! service (schedules, directory watching, systemd notify) with its
//! metrics, `wal-push` (PostgreSQL's archive_command), and the `[limits]`
//! niceness applied in `main`. The binary
//! only parses arguments and calls these; the backup itself and the
//! calls to the node are in `refuge-client`, and so are [`Failure`],
//! [`finish`] and the exit codes this binary shares with `refuge`
//! (`refuge_client::Failure`).

pub mod agent_metrics;
pub mod commands;
pub mod limits;
mod prepare;
mod retry;
pub mod service;
pub mod wal;

pub use refuge_client::{Failure, Outcome, finish, human_bytes, init_logging};
