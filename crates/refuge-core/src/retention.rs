//! Retention: which snapshots of one host and source a policy keeps.
//!
//! The rules are restic's and Borg's, applied on the node's clock to
//! node-assigned times: keep the newest `keep_last`; keep the newest
//! snapshot of each of the newest `keep_hourly` hours (days, ISO weeks,
//! months, years) that have one; keep everything younger than
//! `keep_within_secs`; keep pinned snapshots; always keep the newest.
//!
//! Because the bucket rules count time buckets, not snapshots, a flood of
//! snapshots fills one hour (and one day) and cannot push older buckets
//! out: a compromised agent that commits a thousand snapshots in an hour
//! leaves every daily, weekly and monthly snapshot from before in place.
//! `keep_last` is the one rule a flood can exhaust, which is why it is
//! never the only rule in the defaults.
//!
//! A policy with no rule keeps everything: pruning never removes data
//! because nobody configured it.
//!
//! The WAL of a `postgres` source (`NAME.wal`) follows its base backups,
//! not the policy ([`decide_wal`]): a point-in-time restore from the
//! oldest kept base needs every WAL file archived since that base
//! started, so WAL snapshots committed after the base before it stay.

use time::OffsetDateTime;

use crate::codec::{Dec, Enc};
use crate::format::RETENTION_POLICY_VERSION;

/// A retention policy (all zeros: keep everything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The newest N snapshots.
    pub keep_last: u32,
    /// The newest snapshot of each of the newest N hours.
    pub keep_hourly: u32,
    /// ... days (UTC).
    pub keep_daily: u32,
    /// ... ISO weeks.
    pub keep_weekly: u32,
    /// ... months.
    pub keep_monthly: u32,
    /// ... years.
    pub keep_yearly: u32,
    /// Everything younger than this many seconds.
    pub keep_within_secs: u64,
}

/// One snapshot as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Node sequence number (identifies it in the result).
    pub seq: u64,
    /// Node time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// Pinned by an admin: always kept.
    pub pinned: bool,
}

/// What the policy decided for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The candidate's sequence number.
    pub seq: u64,
    /// Kept or removed.
    pub keep: bool,
    /// Why it is kept (`last`, `hourly`, ..., `within`, `pinned`,
    /// `newest`, `no policy`); empty when removed.
    pub reasons: Vec<&'static str>,
}

impl Policy {
    /// Whether no rule is set (the policy keeps everything).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// `keep-daily 7, keep-weekly 4` and so on, or `keep everything`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, n) in [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ] {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        if self.keep_within_secs > 0 {
            parts.push(format!("keep-within {}s", self.keep_within_secs));
        }
        if parts.is_empty() {
            "keep everything".into()
        } else {
            parts.join(", ")
        }
    }

    /// Stored form (docs/format.md, "Retention policy").
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u8(RETENTION_POLICY_VERSION)
            .u32(self.keep_last)
            .u32(self.keep_hourly)
            .u32(self.keep_daily)
            .u32(self.keep_weekly)
            .u32(self.keep_monthly)
            .u32(self.keep_yearly)
            .u64(self.keep_within_secs);
        e.buf
    }

    /// Parses the stored form.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let t = |_| "retention policy is truncated".to_string();
        let mut d = Dec::new(b);
        let v = d.u8().map_err(t)?;
        if v != RETENTION_POLICY_VERSION {
            return Err(format!("retention policy version {v} is not supported"));
        }
        let p = Policy {
            keep_last: d.u32().map_err(t)?,
            keep_hourly: d.u32().map_err(t)?,
            keep_daily: d.u32().map_err(t)?,
            keep_weekly: d.u32().map_err(t)?,
            keep_monthly: d.u32().map_err(t)?,
            keep_yearly: d.u32().map_err(t)?,
            keep_within_secs: d.u64().map_err(t)?,
        };
        if d.remaining() != 0 {
            return Err("retention policy has trailing bytes".into());
        }
        Ok(p)
    }
}

fn datetime(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The bucket of a time for each bucket rule, in rule order (hourly,
/// daily, weekly, monthly, yearly).
fn buckets(micros: i64) -> [i64; 5] {
    let t = datetime(micros);
    let (iso_year, iso_week, _) = t.to_iso_week_date();
    [
        micros.div_euclid(3_600_000_000),
        i64::from(t.to_julian_day()),
        i64::from(iso_year) * 100 + i64::from(iso_week),
        i64::from(t.year()) * 100 + i64::from(u8::from(t.month())),
        i64::from(t.year()),
    ]
}

/// Decides for one group (one host and source) of snapshots, given in any
/// order; returns the decisions newest first.
pub fn decide(policy: &Policy, snaps: &[Candidate], now_micros: i64) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = snaps.iter().collect();
    order.sort_by(|a, b| b.time_micros.cmp(&a.time_micros).then(b.seq.cmp(&a.seq)));
    let rules = [
        ("hourly", policy.keep_hourly),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
        ("yearly", policy.keep_yearly),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: [Option<i64>; 5] = [None; 5];
    let within = policy.keep_within_secs.min(i64::MAX as u64 / 1_000_000) as i64 * 1_000_000;
    let within_from = now_micros.saturating_sub(within);
    let mut out = Vec::with_capacity(order.len());
    for (i, c) in order.iter().enumerate() {
        let mut reasons = Vec::new();
        if policy.is_empty() {
            reasons.push("no policy");
        }
        if i == 0 {
            reasons.push("newest");
        }
        if c.pinned {
            reasons.push("pinned");
        }
        if (i as u64) < u64::from(policy.keep_last) {
            reasons.push("last");
        }
        if policy.keep_within_secs > 0 && c.time_micros >= within_from {
            reasons.push("within");
        }
        let b = buckets(c.time_micros);
        for (r, (name, _)) in rules.iter().enumerate() {
            if left[r] > 0 && last_bucket[r] != Some(b[r]) {
                last_bucket[r] = Some(b[r]);
                left[r] -= 1;
                reasons.push(name);
            }
        }
        out.push(Decision {
            seq: c.seq,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// Decides for the WAL snapshots of a `postgres` source, given what was
/// decided for its base snapshots (`bases`: sequence number and kept).
/// Kept: every WAL snapshot committed after the newest removed base that
/// is older than the oldest kept base (the WAL archived while that kept
/// base ran is among them), pinned ones, and the newest; all of them while
/// the source has no base. Newest first.
pub fn decide_wal(snaps: &[Candidate], bases: &[(u64, bool)]) -> Vec<Decision> {
    let oldest_kept = bases.iter().filter(|b| b.1).map(|b| b.0).min();
    let floor = oldest_kept.map(|k| {
        bases
            .iter()
            .filter(|b| b.0 < k)
            .map(|b| b.0)
            .max()
            .unwrap_or(0)
    });
    let mut order: Vec<&Candidate> = snaps.iter().collect();
    order.sort_by(|a, b| b.time_micros.cmp(&a.time_micros).then(b.seq.cmp(&a.seq)));
    order
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut reasons = Vec::new();
            match floor {
                None => reasons.push("no base"),
                Some(f) if c.seq > f => reasons.push("wal of a kept base"),
                Some(_) => {}
            }
            if i == 0 {
                reasons.push("newest");
            }
            if c.pinned {
                reasons.push("pinned");
            }
            Decision {
                seq: c.seq,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_follows_the_oldest_kept_base() {
        // Bases at seq 10, 20, 30; WAL at every other seq.
        let wal: Vec<Candidate> = [5, 12, 15, 22, 25, 32]
            .iter()
            .map(|&s| Candidate {
                seq: s,
                time_micros: s as i64,
                pinned: s == 5,
            })
            .collect();
        let kept = |d: &[Decision]| -> Vec<u64> {
            let mut k: Vec<u64> = d.iter().filter(|d| d.keep).map(|d| d.seq).collect();
            k.sort_unstable();
            k
        };
        // 20 and 30 kept, 10 removed: WAL after 10 stays (20 may have
        // started before 15 was archived), 5 only because it is pinned.
        let d = decide_wal(&wal, &[(10, false), (20, true), (30, true)]);
        assert_eq!(kept(&d), [5, 12, 15, 22, 25, 32]);
        let d = decide_wal(&wal, &[(10, false), (20, false), (30, true)]);
        assert_eq!(kept(&d), [5, 22, 25, 32]);
        assert!(
            d.iter()
                .any(|d| d.seq == 12 && !d.keep && d.reasons.is_empty())
        );
        // Every base kept: all WAL since the first base's start, which is
        // after nothing: everything stays.
        let d = decide_wal(&wal, &[(10, true), (20, true), (30, true)]);
        assert_eq!(kept(&d), [5, 12, 15, 22, 25, 32]);
        // No base at all: nothing is judged, everything stays.
        assert_eq!(kept(&decide_wal(&wal, &[])), [5, 12, 15, 22, 25, 32]);
        // The newest WAL stays whatever happens.
        let d = decide_wal(&wal[..1], &[(10, false), (40, true)]);
        assert_eq!(d[0].reasons, ["newest", "pinned"]);
    }

    const HOUR: i64 = 3_600_000_000;
    const DAY: i64 = 24 * HOUR;
    /// 2026-01-01T12:00:00Z (a Thursday).
    const T0: i64 = 1_767_268_800_000_000;

    fn cands(times: &[i64]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| Candidate {
                seq: i as u64 + 1,
                time_micros: t,
                pinned: false,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<u64> {
        let mut k: Vec<u64> = d.iter().filter(|d| d.keep).map(|d| d.seq).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        let c = cands(&[T0, T0 + HOUR, T0 + 2 * HOUR]);
        let d = decide(&Policy::default(), &c, T0 + 3 * HOUR);
        assert_eq!(kept(&d), [1, 2, 3]);
        assert!(d.iter().all(|d| d.reasons.contains(&"no policy")));
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_and_newest_is_always_kept() {
        // Three snapshots a day for five days.
        let times: Vec<i64> = (0..5)
            .flat_map(|day| (0..3).map(move |h| T0 + day * DAY + h * HOUR))
            .collect();
        let c = cands(&times);
        let p = Policy {
            keep_daily: 3,
            ..Policy::default()
        };
        let d = decide(&p, &c, T0 + 10 * DAY);
        // Days 4, 3, 2: their last snapshots are seq 15, 12, 9.
        assert_eq!(kept(&d), [9, 12, 15]);
        let p = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        assert_eq!(kept(&decide(&p, &c, T0 + 10 * DAY)), [15]);
    }

    #[test]
    fn a_flood_cannot_push_older_buckets_out() {
        // A daily snapshot for 30 days, then 1000 snapshots in one hour.
        let mut times: Vec<i64> = (0..30).map(|d| T0 + d * DAY).collect();
        let flood_start = T0 + 30 * DAY;
        times.extend((0..1000).map(|i| flood_start + i * 3_000_000));
        let c = cands(&times);
        let p = Policy {
            keep_last: 10,
            keep_daily: 14,
            keep_weekly: 8,
            keep_monthly: 12,
            ..Policy::default()
        };
        let d = decide(&p, &c, flood_start + HOUR);
        let k = kept(&d);
        // The flood's day takes one daily bucket; the 13 days before it
        // are kept (seq 18..=30), and weekly and monthly reach further.
        for seq in 18..=30 {
            assert!(k.contains(&seq), "day snapshot {seq} was dropped: {k:?}");
        }
        let flood_kept = k.iter().filter(|&&s| s > 30).count();
        assert!(flood_kept <= 10 + 1, "{flood_kept}");
        // Without the bucket rules, keep-last alone would lose them all.
        let only_last = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        assert!(
            kept(&decide(&only_last, &c, flood_start + HOUR))
                .iter()
                .all(|&s| s > 30)
        );
    }

    #[test]
    fn within_and_pins_keep_and_reasons_are_named() {
        let mut c = cands(&[T0, T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY]);
        c[0].pinned = true;
        let p = Policy {
            keep_within_secs: 36 * 3600,
            ..Policy::default()
        };
        let d = decide(&p, &c, T0 + 3 * DAY + HOUR);
        assert_eq!(kept(&d), [1, 3, 4]);
        let first = d.iter().find(|d| d.seq == 1).unwrap();
        assert_eq!(first.reasons, ["pinned"]);
        let newest = d.iter().find(|d| d.seq == 4).unwrap();
        assert_eq!(newest.reasons, ["newest", "within"]);
        assert!(d.iter().find(|d| d.seq == 2).unwrap().reasons.is_empty());
    }

    #[test]
    fn policies_round_trip_and_bad_bytes_are_refused() {
        let p = Policy {
            keep_last: 1,
            keep_hourly: 2,
            keep_daily: 3,
            keep_weekly: 4,
            keep_monthly: 5,
            keep_yearly: 6,
            keep_within_secs: 7,
        };
        assert_eq!(Policy::decode(&p.encode()).unwrap(), p);
        assert!(Policy::decode(&p.encode()[..10]).is_err());
        let mut v = p.encode();
        v[0] = 9;
        assert!(Policy::decode(&v).unwrap_err().contains("version"));
        v = p.encode();
        v.push(0);
        assert!(Policy::decode(&v).is_err());
        assert_eq!(
            p.describe(),
            "keep-last 1, keep-hourly 2, keep-daily 3, keep-weekly 4, keep-monthly 5, keep-yearly 6, keep-within 7s"
        );
        assert_eq!(Policy::default().describe(), "keep everything");
    }
}
