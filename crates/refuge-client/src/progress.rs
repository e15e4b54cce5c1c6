//! Progress of long work: a bar with bytes, rate and ETA on a terminal, and
//! a one-line summary in the log every 10 seconds when not on a terminal
//! (for services and CI logs), or nothing (for `--json`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(10);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on stderr.
    Bar,
    /// Periodic log lines.
    Log,
    /// Nothing (for `--json`).
    Hidden,
}

impl ProgressMode {
    /// What a command shows: nothing when it prints `--json` on stdout,
    /// a bar when stderr is a terminal, log lines otherwise.
    pub fn for_command(json: bool) -> Self {
        if json {
            ProgressMode::Hidden
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressMode::Bar
        } else {
            ProgressMode::Log
        }
    }
}

/// A progress reporter; cheap to clone and share between threads.
#[derive(Clone)]
pub(crate) struct Progress {
    bar: ProgressBar,
    log: Option<Arc<Mutex<LogState>>>,
    what: &'static str,
}

struct LogState {
    started: Instant,
    last: Instant,
    files: u64,
}

impl Progress {
    /// `what` names the work ("backup of etc"); `total` is known for
    /// restores and images.
    pub(crate) fn new(mode: ProgressMode, what: &'static str, total: Option<u64>) -> Self {
        let bar = match mode {
            ProgressMode::Bar => {
                let (b, tpl) = match total {
                    Some(t) => (
                        ProgressBar::new(t),
                        "{bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
                    ),
                    None => (
                        ProgressBar::new_spinner(),
                        "{spinner} [{elapsed_precise}] {bytes} ({bytes_per_sec}) {msg}",
                    ),
                };
                b.set_style(
                    ProgressStyle::with_template(tpl)
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.enable_steady_tick(Duration::from_millis(200));
                b
            }
            _ => {
                let b = ProgressBar::hidden();
                if let Some(t) = total {
                    b.set_length(t);
                }
                b
            }
        };
        let log = (mode == ProgressMode::Log).then(|| {
            let now = Instant::now();
            Arc::new(Mutex::new(LogState {
                started: now,
                last: now,
                files: 0,
            }))
        });
        Progress { bar, log, what }
    }

    /// `n` more bytes done.
    pub(crate) fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(log) = &self.log {
            let mut s = log.lock().unwrap_or_else(|p| p.into_inner());
            if s.last.elapsed() >= LOG_EVERY {
                s.last = Instant::now();
                let done = self.bar.position();
                let secs = s.started.elapsed().as_secs_f64().max(0.001);
                let rate = done as f64 / secs / 1e6;
                let of = match self.bar.length() {
                    Some(t) if t > 0 => format!(
                        " of {:.1} MB ({:.0}%)",
                        t as f64 / 1e6,
                        done as f64 * 100.0 / t as f64
                    ),
                    _ => String::new(),
                };
                tracing::info!(
                    "{}: {:.1} MB{of}, {} files, {rate:.1} MB/s, {secs:.0} s",
                    self.what,
                    done as f64 / 1e6,
                    s.files
                );
            }
        }
    }

    /// Files done so far.
    pub(crate) fn set_files(&self, files: u64) {
        self.bar.set_message(format!("{files} files"));
        if let Some(log) = &self.log {
            log.lock().unwrap_or_else(|p| p.into_inner()).files = files;
        }
    }

    /// Bytes done so far.
    pub(crate) fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
