//! Where the logs of `refuged`, `refuge-agent` and `refuge` go.
//!
//! - Under systemd with its output going to the journal (`JOURNAL_STREAM`
//!   names the stderr we have, which is how systemd says so), events go to
//!   journald through its native protocol (`tracing-journald`), with a
//!   priority per level (error 3, warning 4, info 5 "notice", debug 6,
//!   trace 7), `SYSLOG_IDENTIFIER` set to the binary's name, `TARGET`, and
//!   each event's fields as journal fields prefixed `F_` (`F_EVENT`,
//!   `F_TENANT`, `F_OUTCOME` … for audit records, target `audit`).
//!   `journalctl -p warning -u refuged` then shows refusals and failures
//!   only, `journalctl -u refuged F_EVENT=auth_failed` the refused
//!   sign-ins.
//! - Otherwise one line per event on stderr (colours on a terminal), or
//!   one JSON object per line.
//!
//! `REFUGE_LOG_FORMAT` overrides the choice: `journald`, `json` or
//! `text`. If journald cannot be reached, the events go to stderr as text
//! and the first line says why. `RUST_LOG` overrides the default filter.
//!
//! Absent: anything that knows what the binaries log.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where the events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// journald's native protocol.
    Journald,
    /// One JSON object per line on stderr.
    Json,
    /// One line per event on stderr.
    Text,
}

/// The sink `REFUGE_LOG_FORMAT` and `JOURNAL_STREAM` (as systemd sets it:
/// `DEVICE:INODE` of the stream it connected to our stderr) ask for.
pub fn choose(
    format: Option<&str>,
    journal_stream: Option<&str>,
    stderr: Option<(u64, u64)>,
) -> Sink {
    match format {
        Some("journald") => return Sink::Journald,
        Some("json") => return Sink::Json,
        Some("text") => return Sink::Text,
        _ => {}
    }
    let ours = journal_stream
        .and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)));
    match (ours, stderr) {
        (Some(j), Some(s)) if j == s => Sink::Journald,
        _ => Sink::Text,
    }
}

/// Device and inode of our stderr.
fn stderr_id() -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(std::io::stderr()).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Sets up logging for `binary` (its journal identifier). `default` is the
/// filter without `RUST_LOG`; `targets` shows each event's target in text.
pub fn init(binary: &str, default: &str, targets: bool) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let format = std::env::var("REFUGE_LOG_FORMAT").ok();
    let stream = std::env::var("JOURNAL_STREAM").ok();
    let mut fallback = None;
    match choose(format.as_deref(), stream.as_deref(), stderr_id()) {
        Sink::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer.with_syslog_identifier(binary.to_string()))
                    .init();
                return;
            }
            Err(e) => fallback = Some(e),
        },
        Sink::Json => {
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_target(targets)
                .json()
                .init();
            return;
        }
        Sink::Text => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(targets)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(e) = fallback {
        tracing::warn!("journald cannot be reached ({e}): logging to stderr instead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_only_when_systemd_connected_our_stderr_or_asked() {
        let me = Some((64769, 1234));
        assert_eq!(choose(None, Some("64769:1234"), me), Sink::Journald);
        // Inherited from a parent whose stderr went to the journal, but
        // ours is redirected elsewhere.
        assert_eq!(choose(None, Some("64769:99"), me), Sink::Text);
        assert_eq!(choose(None, Some("garbage"), me), Sink::Text);
        assert_eq!(choose(None, None, me), Sink::Text);
        assert_eq!(choose(Some("json"), Some("64769:1234"), me), Sink::Json);
        assert_eq!(choose(Some("text"), Some("64769:1234"), me), Sink::Text);
        assert_eq!(choose(Some("journald"), None, None), Sink::Journald);
        assert_eq!(choose(Some("other"), None, me), Sink::Text);
    }
}
