//! Recovery targets (`[slo]`): which sources breach them now. A source
//! breaches `rpo` when its newest snapshot is older than the tenant's RPO
//! target (or it has none), `drill_age` when its last drill is older than
//! the drill-age target (or it was never drilled), and `drill_failed`
//! when its last drill failed. Judged from the source's status alone, so
//! the console, `Status` and each metrics scrape agree.

use refuge_proto::pb;

use crate::config::SloConfig;

/// The breach kinds, as the metric's `kind` label names them.
const RPO: &str = "rpo";
const DRILL_AGE: &str = "drill_age";
const DRILL_FAILED: &str = "drill_failed";

/// Sets `s`'s targets and the breaches at `now` (µs since the epoch).
pub(crate) fn judge(s: &mut pb::SourceStatus, slo: &SloConfig, now: i64) {
    let (rpo, drill_age) = slo.targets(&s.tenant);
    s.rpo_target_secs = rpo;
    s.drill_age_target_secs = drill_age;
    s.breaches.clear();
    let mut breach = |kind: &str, detail: String| {
        s.breaches.push(pb::SloBreach {
            kind: kind.into(),
            detail,
        })
    };
    if rpo > 0 {
        if s.snapshots == 0 {
            breach(RPO, format!("no snapshot (target {})", secs(rpo)));
        } else if s.rpo_micros > micros(rpo) {
            breach(
                RPO,
                format!(
                    "newest snapshot is {} old (target {})",
                    secs(age_secs(s.rpo_micros)),
                    secs(rpo)
                ),
            );
        }
    }
    if drill_age > 0 {
        if !s.drilled {
            breach(
                DRILL_AGE,
                format!("never drilled (target {})", secs(drill_age)),
            );
        } else if now - s.last_drill_unix_micros > micros(drill_age) {
            breach(
                DRILL_AGE,
                format!(
                    "last drill is {} old (target {})",
                    secs(age_secs(now - s.last_drill_unix_micros)),
                    secs(drill_age)
                ),
            );
        }
    }
    if s.drilled && !s.last_drill_passed {
        let why = if s.last_drill_failure.is_empty() {
            "the last drill failed".to_string()
        } else {
            format!("the last drill failed: {}", s.last_drill_failure)
        };
        breach(DRILL_FAILED, why);
    }
}

fn micros(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000)
}

fn age_secs(micros: i64) -> u64 {
    u64::try_from(micros.max(0) / 1_000_000).unwrap_or(0)
}

/// A duration as people read it: `90s`, `25m`, `3h 5m`, `2d 4h`.
pub(crate) fn secs(s: u64) -> String {
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SloTarget;

    const NOW: i64 = 1_000_000 * 1_000_000;

    fn source(tenant: &str) -> pb::SourceStatus {
        pb::SourceStatus {
            tenant: tenant.into(),
            snapshots: 1,
            rpo_micros: 10 * 60 * 1_000_000,
            drilled: true,
            last_drill_passed: true,
            last_drill_unix_micros: NOW - 3_600 * 1_000_000,
            ..Default::default()
        }
    }

    fn kinds(s: &pb::SourceStatus) -> Vec<&str> {
        s.breaches.iter().map(|b| b.kind.as_str()).collect()
    }

    #[test]
    fn each_target_breaches_on_its_own_and_per_tenant_overrides_win() {
        let mut slo = SloConfig::default();
        let mut s = source("a");
        judge(&mut s, &slo, NOW);
        assert!(s.breaches.is_empty(), "{:?}", s.breaches);
        assert_eq!(
            (s.rpo_target_secs, s.drill_age_target_secs),
            (86_400, 2_592_000)
        );

        slo.tenants.insert(
            "a".into(),
            SloTarget {
                rpo_secs: Some(300),
                drill_age_secs: Some(600),
            },
        );
        judge(&mut s, &slo, NOW);
        assert_eq!(kinds(&s), ["rpo", "drill_age"]);
        assert!(
            s.breaches[0].detail.contains("10m old (target 5m)"),
            "{:?}",
            s.breaches
        );
        // Another tenant keeps the defaults.
        let mut b = source("b");
        judge(&mut b, &slo, NOW);
        assert!(b.breaches.is_empty());

        // No snapshot, never drilled, a failed drill.
        let mut none = pb::SourceStatus {
            tenant: "b".into(),
            ..Default::default()
        };
        judge(&mut none, &slo, NOW);
        assert_eq!(kinds(&none), ["rpo", "drill_age"]);
        let mut failed = source("b");
        failed.last_drill_passed = false;
        failed.last_drill_failure = "file x differs".into();
        judge(&mut failed, &slo, NOW);
        assert_eq!(kinds(&failed), ["drill_failed"]);
        assert!(failed.breaches[0].detail.contains("file x differs"));

        // Targets switched off.
        slo.rpo_secs = 0;
        slo.drill_age_secs = 0;
        judge(&mut none, &slo, NOW);
        assert!(none.breaches.is_empty());
        assert_eq!(none.rpo_target_secs, 0);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(secs(59), "59s");
        assert_eq!(secs(600), "10m");
        assert_eq!(secs(3 * 3_600 + 300), "3h 5m");
        assert_eq!(secs(2 * 86_400 + 4 * 3_600), "2d 4h");
    }
}
