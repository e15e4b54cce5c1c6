//! The Markdown block of `refuge-bench replication`
//! ([`super::replication`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::cluster::AgentSettings;
use super::machine::Machine;
use super::median;
use super::replication::{LOOPBACK_TRIES, Options, POLL, RunData, Transfer};
use super::report::{mb, mb_per_s, mib_from_kib, secs};

/// The phases, in order.
const PHASES: [&str; 2] = ["initial", "5% change"];

/// Per run, the sum of each phase's transfers.
fn totals(r: &RunData) -> Vec<Transfer> {
    PHASES
        .iter()
        .map(|p| {
            let ts: Vec<&Transfer> = r.transfers.iter().filter(|t| t.phase == *p).collect();
            Transfer::total(p, &ts)
        })
        .collect()
}

/// `value (lo–hi)` over runs when there are several.
fn ranged(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let m = fmt(median(v.to_vec()));
    if v.len() < 2 {
        return m;
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{m} ({}–{})", fmt(lo), fmt(hi))
}

/// A fraction as a percentage: one decimal below 10%.
fn percent(f: f64) -> String {
    let p = 100.0 * f;
    if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// Thread names and CPU seconds, largest first.
fn threads(m: &BTreeMap<String, f64>) -> String {
    let mut v: Vec<(&String, &f64)> = m.iter().filter(|(_, s)| **s >= 0.05).collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|(k, s)| format!("`{k}` {s:.1} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report of all runs.
pub(super) fn markdown(o: &Options, m: &Machine, runs: &[RunData]) -> String {
    let mut s = String::new();
    let n = runs.len();
    let first = &runs[0];
    let med = |f: &dyn Fn(&RunData) -> f64| median(runs.iter().map(f).collect());
    let loopback_rates: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.loopback_secs.iter())
        .map(|x| o.loopback_bytes as f64 / 1e6 / x)
        .collect();
    let loopback = median(loopback_rates.clone());
    let _ = writeln!(
        s,
        "### Replication, {} data set (seed {})\n",
        o.size_text, o.seed
    );
    let _ = writeln!(
        s,
        "Commit `{}`; {}. `refuge-bench replication --size {} --seed {}{}`: {} (median {:.0} s per run, {:.0} s of it generating data). Two `refuged` on 127.0.0.1, each with its own CA and RocksDB store; the primary pushes to the replica over mutual TLS (`[[replication]]` with `continuous = true`, `interval_secs = 1`, no bandwidth limit, a replica certificate from the replica's CA). Each source of the e2e data set is backed up to the primary on its own (`refuge-agent backup --source S --json`; agent settings: {}); its replication time runs from the agent's exit (the commit acknowledged) to the replica listing the snapshot (polled every {} ms over one connection of this process), so it includes the node's 200 ms wait after a commit; nothing else of the benchmark runs meanwhile. Load average (1 min) before each run: {}.\n",
        m.commit,
        m.line(),
        o.size_text,
        o.seed,
        if n > 1 {
            format!(" --runs {n}")
        } else {
            String::new()
        },
        if n > 1 {
            format!(
                "{n} complete runs, each with fresh nodes and data; medians, and for replication time and MB/s the range"
            )
        } else {
            "one run".into()
        },
        med(&|r| r.total),
        med(&|r| r.gen_secs),
        AgentSettings::default().describe(),
        POLL.as_millis(),
        runs.iter()
            .map(|r| format!("{:.2}", r.load_before))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let all_totals: Vec<Vec<Transfer>> = runs.iter().map(totals).collect();
    s.push_str("| Phase | Snapshots | Source data | Changed data | Replication time | MB/s of source data | MB/s of changed data | Sent | Sent MB/s | Sent / loopback | Chunks sent | Commit → pass end (primary's audit) | Passes (primary's audit) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i, phase) in PHASES.iter().enumerate() {
        let per_run: Vec<&Transfer> = all_totals.iter().map(|t| &t[i]).collect();
        let t = Transfer::median(&per_run);
        let times: Vec<f64> = per_run.iter().map(|t| t.secs).collect();
        let rate = |bytes: u64| {
            let rates: Vec<f64> = times.iter().map(|x| bytes as f64 / 1e6 / x).collect();
            ranged(&rates, |r| format!("{r:.1}"))
        };
        let changed = *phase != "initial";
        let _ = writeln!(
            s,
            "| {phase} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} |",
            t.snapshots,
            mb(t.logical),
            if changed { mb(t.changed) } else { "-".into() },
            ranged(&times, secs),
            rate(t.logical),
            if changed { rate(t.changed) } else { "-".into() },
            mb(t.wire),
            mb_per_s(t.wire, t.secs),
            percent((t.wire as f64 / 1e6 / t.secs.max(1e-9)) / loopback.max(1e-9)),
            t.chunks,
            t.audited_secs.map(secs).unwrap_or_else(|| "-".into()),
            t.pass_secs.map(secs).unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(
        s,
        "\nLoopback: one plain TCP connection between two threads of `refuge-bench` on 127.0.0.1 (1 MiB writes, no TLS, nothing stored), {LOOPBACK_TRIES} copies of {} per run: **{loopback:.0} MB/s** (median; {}). Sent: growth of the primary's `bytes_sent` for the peer in `refuge status` (chunk bytes as stored, compressed; without gRPC/TLS framing); Sent / loopback compares Sent MB/s with that median. Commit → pass end: from the primary's `snapshot_committed` audit record to its `replication_pass` record (the node's clock, no polling). Passes: the pass durations in those records (0.1 s resolution), which leave out the wait after the commit.\n",
        mb(o.loopback_bytes),
        loopback_rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    s.push_str("| Phase | Primary RSS at start → peak | Replica RSS at start → peak | Primary CPU | Replica CPU | Both nodes' CPU / replication time | Other CPU |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (i, phase) in PHASES.iter().enumerate() {
        let per_run: Vec<&Transfer> = all_totals.iter().map(|t| &t[i]).collect();
        let t = Transfer::median(&per_run);
        // Peaks over the phase: the largest of its transfers.
        let _ = writeln!(
            s,
            "| {phase} | {} → **{}** | {} → **{}** | {:.1} s | {:.1} s | {:.2} | {:.1} s |",
            mib_from_kib(t.primary_start_kib),
            mib_from_kib(t.primary_peak_kib),
            mib_from_kib(t.replica_start_kib),
            mib_from_kib(t.replica_peak_kib),
            t.primary_cpu,
            t.replica_cpu,
            (t.primary_cpu + t.replica_cpu) / t.secs.max(1e-9),
            t.other_cpu,
        );
    }
    let _ = writeln!(
        s,
        "\nRSS: `VmHWM` of each `refuged`, reset through `/proc/PID/clear_refs` when the agent exits and read when the replica lists the snapshot; at start: the RSS then (the primary's includes what the backup just left), peak: the largest over the phase's snapshots. CPU: user + system time of each node over the replication time. Other CPU: the machine's busy CPU time then not spent by either node (this process's polling, other processes). Node RSS after start: primary {}, replica {}. Stores after SIGTERM (sum of file sizes): primary {}, replica {}.\n",
        mib_from_kib(med(&|r| r.primary_start_kib as f64) as u64),
        mib_from_kib(med(&|r| r.replica_start_kib as f64) as u64),
        mb(med(&|r| r.primary_store as f64) as u64),
        mb(med(&|r| r.replica_store as f64) as u64),
    );

    let _ = writeln!(
        s,
        "Per snapshot{}:\n",
        if n > 1 { " (medians)" } else { "" }
    );
    s.push_str("| Phase | Source | Source data | Changed data | Backup to the primary | Agent sent | Replication time | Commit → pass end | MB/s of source data | Sent | Sent MB/s | Chunks sent | Mean chunk sent | Chunks/s | Primary CPU | Replica CPU | Primary peak RSS | Replica peak RSS |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for i in 0..first.transfers.len() {
        let per_run: Vec<&Transfer> = runs.iter().map(|r| &r.transfers[i]).collect();
        let t = Transfer::median(&per_run);
        let changed = t.phase != "initial";
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {:.0} | {:.1} s | {:.1} s | {} | {} |",
            t.phase,
            t.source,
            mb(t.logical),
            if changed { mb(t.changed) } else { "-".into() },
            secs(t.backup_secs),
            mb(t.backup_sent),
            secs(t.secs),
            t.audited_secs.map(secs).unwrap_or_else(|| "-".into()),
            mb_per_s(t.logical, t.secs),
            mb(t.wire),
            mb_per_s(t.wire, t.secs),
            t.chunks,
            if t.chunks > 0 {
                format!("{:.0} KiB", t.wire as f64 / t.chunks as f64 / 1024.0)
            } else {
                "-".into()
            },
            t.chunks as f64 / t.secs.max(1e-9),
            t.primary_cpu,
            t.replica_cpu,
            mib_from_kib(t.primary_peak_kib),
            mib_from_kib(t.replica_peak_kib),
        );
    }
    let _ = writeln!(
        s,
        "\nBackup to the primary: wall time of `refuge-agent backup --source S` (the primary's peak RSS during the backups: {}).\n",
        mib_from_kib(
            first
                .transfers
                .iter()
                .map(|t| t.backup_primary_kib)
                .max()
                .unwrap_or(0)
        )
    );

    s.push_str(&format!(
        "Where the nodes' CPU went during the replication{} (CPU seconds by thread name; tokio's worker and blocking threads share one name):\n\n",
        if n > 1 { " (run 1)" } else { "" }
    ));
    for t in totals(first) {
        let _ = writeln!(
            s,
            "- {}: primary {}; replica {}",
            t.phase,
            threads(&t.primary_threads),
            threads(&t.replica_threads)
        );
    }
    s.push('\n');

    let failed: Vec<(usize, &super::replication::Restored)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.restores.iter().map(move |v| (i + 1, v)))
        .filter(|(_, v)| !v.problems.is_empty())
        .collect();
    let restore_line = first
        .restores
        .iter()
        .map(|r| {
            format!(
                "{} {} in {} ({} MB/s)",
                r.source,
                mb(r.bytes),
                secs(r.secs),
                mb_per_s(r.bytes, r.secs)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if failed.is_empty() {
        let _ = writeln!(
            s,
            "Verification: the latest snapshot of every source, restored from the replica with the replica's own client certificate (`refuge restore latest --source S`), is identical to its source (path, type, size and BLAKE3 of every file){}: {restore_line}.\n",
            if n > 1 { "; run 1" } else { "" }
        );
    } else {
        s.push_str("**Restore from the replica FAILED** (compared with the source: path, type, size and BLAKE3 of every file):\n\n");
        for (i, v) in failed {
            let _ = writeln!(
                s,
                "- {}{}: {}",
                v.source,
                if n > 1 {
                    format!(" (run {i})")
                } else {
                    String::new()
                },
                v.problems.join("; ")
            );
        }
        s.push('\n');
    }

    let errors: Vec<&String> = runs.iter().flat_map(|r| r.errors.iter()).collect();
    let logs: Vec<&String> = runs.iter().flat_map(|r| r.log_problems.iter()).collect();
    if errors.is_empty() {
        s.push_str("The primary's status showed no replication error (`last_error`, read every second while waiting). ");
    } else {
        s.push_str("Errors in the primary's status (`last_error`) while waiting:\n\n");
        for e in &errors {
            let _ = writeln!(s, "- {e}");
        }
        s.push('\n');
    }
    if logs.is_empty() {
        s.push_str("Neither node logged a warning or an error (apart from the TLS handshake EOFs of the benchmark's own readiness probe at start).\n\n");
    } else {
        let _ = writeln!(
            s,
            "The nodes logged {} warnings or errors (apart from the TLS handshake EOFs of the benchmark's own readiness probe at start), the first ones:\n",
            logs.len()
        );
        for l in logs.iter().take(5) {
            let _ = writeln!(s, "- `{}`", l.replace('`', "'"));
        }
        s.push('\n');
    }

    s.push_str("Data set (after the change):\n\n| Source | Files | Source data | Change |\n|---|---:|---:|---|\n");
    for (name, files, bytes, descr) in &first.sources {
        let _ = writeln!(s, "| {name} | {files} | {} | {descr} |", mb(*bytes));
    }
    s
}
