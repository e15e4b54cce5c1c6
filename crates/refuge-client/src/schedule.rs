//! When `refuge-agent run` backs a source up: an interval (`30s`, `15m`,
//! `6h`, `1d`) or a five-field cron expression in the host's local time
//! (`0 2 * * *`: every day at 02:00; croner's syntax, names allowed).

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every this long, counted from the start of the previous run.
    Every(Duration),
    /// At the times a cron expression names.
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// Parses `30s`, `15m`, `6h`, `1d` or a cron expression.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let t = text.trim();
        if t.is_empty() {
            bail!(
                "an empty schedule: give an interval (\"15m\", \"1h\") or a cron expression (\"0 2 * * *\")"
            );
        }
        if !t.contains(' ') {
            let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
            let n: u64 = num.parse().map_err(|_| {
                anyhow!("{text:?} is not an interval like \"30s\", \"15m\", \"6h\" or \"1d\"")
            })?;
            let secs = match unit {
                "s" => n,
                "m" => n.saturating_mul(60),
                "h" => n.saturating_mul(3600),
                "d" => n.saturating_mul(86_400),
                _ => bail!(
                    "{text:?}: the unit of an interval is s, m, h or d (\"30s\", \"15m\", \"6h\", \"1d\")"
                ),
            };
            if secs == 0 {
                bail!("{text:?}: an interval must be at least 1s");
            }
            return Ok(Schedule::Every(Duration::from_secs(secs)));
        }
        let c = croner::Cron::from_str(t)
            .map_err(|e| anyhow!("{text:?} is not a cron expression: {e}"))?;
        Ok(Schedule::Cron(Box::new(c)))
    }

    /// The first run time strictly after `after` (which, for an interval,
    /// is when the previous run started).
    pub fn next_after(&self, after: SystemTime) -> SystemTime {
        match self {
            Schedule::Every(d) => after + *d,
            Schedule::Cron(c) => {
                let t: chrono::DateTime<chrono::Local> = after.into();
                match c.find_next_occurrence(&t, false) {
                    Ok(n) => n.into(),
                    // An expression that never fires again (a date that
                    // does not exist): a year from now, so it is visible.
                    Err(_) => after + Duration::from_secs(365 * 86_400),
                }
            }
        }
    }

    /// Whether a source last backed up at `last` is due at `now`: its next
    /// run time after `last` has passed.
    pub fn due(&self, last: Option<SystemTime>, now: SystemTime) -> bool {
        match last {
            None => true,
            Some(l) => self.next_after(l) <= now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_cron_expressions_parse_and_bad_ones_are_named() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (text, secs) in [("30s", 30), ("15m", 900), ("6h", 21_600), ("1d", 86_400)] {
            let s = Schedule::parse(text).unwrap();
            assert_eq!(s.next_after(t0), t0 + Duration::from_secs(secs), "{text}");
        }
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let n = hourly.next_after(t0);
        assert!(n > t0 && n <= t0 + Duration::from_secs(3600));
        let secs = n.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        // Whole hours in every time zone with a whole-hour offset.
        assert_eq!(secs % 60, 0);
        for bad in ["", "10", "10x", "0s", "61 * * * *", "every day"] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_source_is_due_when_its_next_run_has_passed() {
        let s = Schedule::parse("1h").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(s.due(None, now));
        assert!(!s.due(Some(now - Duration::from_secs(600)), now));
        assert!(s.due(Some(now - Duration::from_secs(3600)), now));
    }
}
