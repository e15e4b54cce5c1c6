//! `refuge-agent run`: the resident agent (the systemd service).
//!
//! Each source is backed up on its schedule (an interval or a cron
//! expression) and, with `on_change = true`, within seconds of a change
//! (inotify, debounced). Backups run one at a time. A backup that fails
//! after its retries (the node unreachable, say) is tried again with
//! growing waits (30 s up to 15 min) until it works: the agent catches up
//! when the node returns. Each committed backup is one log line with its
//! figures.
//!
//! systemd: `READY=1` once the configuration, key and state directory are
//! checked; `WATCHDOG=1` from this loop (also while a backup runs);
//! `STATUS=` says what it is doing. SIGTERM stops it: a running backup is
//! abandoned at once and resumes from its checkpoint at the next start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use notify::Watcher as _;
use refuge_client::{AgentConfig, Schedule, SourceConfig, command_config as config};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::agent_metrics::AgentMetrics;
use crate::retry::report_failure;
use crate::{Failure, Outcome};

/// Waits after a source's failed backup (once its own retries are spent).
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// What systemd is told.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

fn status(text: &str) {
    notify(&[sd_notify::NotifyState::Status(text)]);
}

/// When each source last committed a backup: `STATE_DIR/SOURCE.last`, so
/// that a restart does not wait a whole interval (nor repeat a fresh one).
fn last_path(state: &Path, source: &str) -> PathBuf {
    state.join(format!("{source}.last"))
}

fn read_last(state: &Path, source: &str) -> Option<SystemTime> {
    let t = std::fs::read_to_string(last_path(state, source)).ok()?;
    let secs: u64 = t.trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn write_last(state: &Path, source: &str, t: SystemTime) {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Err(e) = std::fs::write(last_path(state, source), format!("{secs}\n")) {
        warn!("cannot record the time of {source}'s backup in the state directory: {e}");
    }
}

/// The state of one source in the loop.
struct Slot {
    source: SourceConfig,
    schedule: Schedule,
    /// The next scheduled run.
    next: Instant,
    /// A change was seen: run once quiet until this instant...
    quiet_until: Option<Instant>,
    /// ...but no later than this (constant change).
    change_deadline: Option<Instant>,
    /// Wait after the last failure.
    backoff: Duration,
}

impl Slot {
    fn due_at(&self) -> Instant {
        match (self.quiet_until, self.change_deadline) {
            (Some(q), Some(d)) => self.next.min(q.min(d)),
            _ => self.next,
        }
    }
}

/// Instant at which a `SystemTime` arrives (now if it has passed).
fn instant_of(t: SystemTime) -> Instant {
    let now = SystemTime::now();
    Instant::now() + t.duration_since(now).unwrap_or(Duration::ZERO)
}

/// Which sources changed since the loop last looked: one flag per source
/// and a wake-up, so that a flood of file events costs no memory while a
/// backup runs.
struct Changes {
    dirty: Vec<AtomicBool>,
    wake: Notify,
}

impl Changes {
    /// The sources that changed, clearing their flags.
    fn take(&self) -> Vec<usize> {
        (0..self.dirty.len())
            .filter(|&i| self.dirty[i].swap(false, Ordering::SeqCst))
            .collect()
    }
}

/// Watches the `on_change` sources and flags the one that changed. Events
/// under the agent's own state directory and mere reads are ignored.
fn watch(
    cfg: &AgentConfig,
    changes: &Arc<Changes>,
) -> anyhow::Result<Vec<notify::RecommendedWatcher>> {
    let mut out = Vec::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        if !s.on_change {
            continue;
        }
        let changes = changes.clone();
        let state = cfg.state_dir.clone();
        let mut w = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
            let Ok(ev) = r else { return };
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            if !ev.paths.is_empty() && ev.paths.iter().all(|p| p.starts_with(&state)) {
                return;
            }
            changes.dirty[i].store(true, Ordering::SeqCst);
            changes.wake.notify_one();
        })
        .with_context(|| format!("source {}: cannot watch for changes", s.name))?;
        w.watch(&s.path, notify::RecursiveMode::Recursive)
            .with_context(|| {
                format!(
                    "source {}: cannot watch {} for changes (on_change; is fs.inotify.max_user_watches large enough?)",
                    s.name,
                    s.path.display()
                )
            })?;
        out.push(w);
    }
    Ok(out)
}

async fn sigterm() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            tokio::select! {
                _ = s.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `refuge-agent run`.
pub async fn run(path: &Path) -> Outcome {
    let cfg = config(path)?;
    if cfg.sources.is_empty() {
        return Err(Failure::Usage(anyhow!(
            "no [[source]] in {}: nothing to run",
            path.display()
        )));
    }
    let key = cfg.tenant_key().map_err(Failure::Usage)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state_dir {}", cfg.state_dir.display()))
        .map_err(Failure::Usage)?;
    let metrics = AgentMetrics::new();
    if let Some(at) = cfg.service.metrics_listen {
        let l = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| {
                format!("cannot listen for metrics on {at} ([service] metrics_listen)")
            })
            .map_err(Failure::Usage)?;
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::agent_metrics::serve(l, m).await {
                tracing::error!("metrics endpoint failed: {e:#}");
            }
        });
    }
    let changes = Arc::new(Changes {
        dirty: cfg.sources.iter().map(|_| AtomicBool::new(false)).collect(),
        wake: Notify::new(),
    });
    let _watchers = watch(&cfg, &changes).map_err(Failure::Usage)?;
    let now = SystemTime::now();
    let mut slots: Vec<Slot> = Vec::new();
    for s in &cfg.sources {
        let schedule = Schedule::parse(&s.schedule).map_err(Failure::Usage)?;
        let last = read_last(&cfg.state_dir, &s.name);
        if let Some(l) = last {
            metrics.restored_last_success(&s.name, l);
        }
        // Missed runs (the agent or the host was down) are caught up now.
        let next = if schedule.due(last, now) {
            Instant::now()
        } else {
            instant_of(schedule.next_after(last.unwrap_or(now)))
        };
        slots.push(Slot {
            source: s.clone(),
            schedule,
            next,
            quiet_until: None,
            change_deadline: None,
            backoff: FIRST_BACKOFF,
        });
    }
    let debounce = Duration::from_secs(cfg.service.debounce_secs);
    let watchdog = sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval(watchdog);
    let stop = sigterm();
    tokio::pin!(stop);
    info!(
        sources = slots.len(),
        "refuge-agent running ({} watched for changes)",
        slots.iter().filter(|s| s.source.on_change).count()
    );
    notify(&[sd_notify::NotifyState::Ready]);
    let mut node: Option<refuge_client::Node> = None;
    let idle = |slots: &[Slot]| {
        let (i, at) = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.due_at()))
            .min_by_key(|(_, t)| *t)
            .expect("at least one source");
        let secs = at.saturating_duration_since(Instant::now()).as_secs();
        status(&format!("idle; next: {} in {secs}s", slots[i].source.name));
    };
    idle(&slots);
    loop {
        let (i, at) = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.due_at()))
            .min_by_key(|(_, t)| *t)
            .expect("at least one source");
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
                continue;
            }
            _ = changes.wake.notified() => {
                let now = Instant::now();
                for j in changes.take() {
                    let s = &mut slots[j];
                    s.quiet_until = Some(now + debounce);
                    s.change_deadline.get_or_insert(now + debounce * 10);
                }
                continue;
            }
            _ = tokio::time::sleep_until(at.into()) => {}
        }
        let slot = &mut slots[i];
        let started_at = SystemTime::now();
        let started = Instant::now();
        // Changes from here on are part of the next backup, not this one.
        slot.quiet_until = None;
        slot.change_deadline = None;
        let name = slot.source.name.clone();
        status(&format!("backing up {name}"));
        let opts = refuge_client::BackupOptions {
            progress: refuge_client::ProgressMode::Log,
            rehash: false,
            threads: cfg.limits.threads(),
            max_upload_rate: cfg.limits.max_upload_rate,
            memory_budget: cfg.limits.memory_mib << 20,
            state_dir: Some(cfg.state_dir.clone()),
            key: key.clone(),
            commit_token: None,
            only: None,
        };
        let source = slot.source.clone();
        let result = {
            let work = crate::prepare::backup_source_prepared(&cfg, &mut node, &source, opts);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    r = &mut work => break Some(r),
                    _ = tick.tick() => notify(&[sd_notify::NotifyState::Watchdog]),
                    _ = &mut stop => break None,
                }
            }
        };
        let slot = &mut slots[i];
        let Some(result) = result else {
            info!(
                source = %name,
                "stopping during a backup: it resumes from its checkpoint at the next start"
            );
            status(&format!(
                "stopping; the backup of {name} resumes at the next start"
            ));
            notify(&[sd_notify::NotifyState::Stopping]);
            return Ok(0);
        };
        match result {
            Ok(r) => {
                info!(
                    target: "refuge::backup",
                    source = %name, snapshot = %r.short_id, files = r.files,
                    files_unchanged = r.files_unchanged, bytes_read = r.bytes_read,
                    bytes_sent = r.bytes_sent, chunks_new = r.chunks_new,
                    duration_secs = r.duration_secs, warnings = r.warning_count,
                    "backup committed"
                );
                metrics.backed_up(&name, &r, started.elapsed());
                write_last(&cfg.state_dir, &name, SystemTime::now());
                slot.backoff = FIRST_BACKOFF;
                slot.next = instant_of(slot.schedule.next_after(started_at));
            }
            Err(e) => {
                let wait = slot.backoff;
                warn!(
                    target: "refuge::backup",
                    source = %name, error = %format!("{e:#}"), retry_in_secs = wait.as_secs(),
                    "backup failed"
                );
                metrics.failed(&name, started.elapsed());
                report_failure(node.as_ref(), &name, &format!("{e:#}")).await;
                let scheduled = instant_of(slot.schedule.next_after(started_at));
                slot.next = scheduled.min(Instant::now() + wait);
                slot.backoff = (wait * 2).min(MAX_BACKOFF);
            }
        }
        idle(&slots);
    }
    info!("refuge-agent stopped");
    notify(&[sd_notify::NotifyState::Stopping]);
    Ok(0)
}
