//! The side-by-side table of an end-to-end run with the peers: refuge,
//! restic and Borg per phase, medians over the runs, and the ratios the
//! targets are stated in. The peers are run by [`super::peers`].

use super::peers::{PeerData, PeerPhase, Tool};

/// The side-by-side table: refuge and each peer, medians over the runs,
/// with the ratios the targets are stated in.
pub(super) fn side_by_side(s: &mut String, runs: &[super::RunData]) {
    use super::report::{mb, mb_per_s, mib_from_kib};
    use super::{Row, median};
    use std::fmt::Write as _;
    let first = &runs[0];
    let tools: Vec<Tool> = first.peers.iter().map(|p| p.tool).collect();
    let med = |f: &dyn Fn(&super::RunData) -> f64| median(runs.iter().map(f).collect());
    let peer = |r: &super::RunData, t: Tool| -> Option<PeerData> {
        r.peers.iter().find(|p| p.tool == t).cloned()
    };
    let _ = writeln!(
        s,
        "\nSide by side, in the same run{} on the same data: {}. refuge's figures include mTLS over loopback and the node's own CPU on the same cores; the peers write to a local repository. CPU: user + system seconds of every process involved (for refuge the agent or CLI and the node). Ratios: the peer's wall time over refuge's (above 1: refuge is faster), and refuge's stored bytes over the peer's.\n",
        if runs.len() > 1 {
            format!(" (medians of {})", runs.len())
        } else {
            String::new()
        },
        tools
            .iter()
            .map(|t| format!(
                "{} {} ({})",
                t.name(),
                t.version().unwrap_or_else(|_| "?".into()),
                t.settings()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut head = "| Phase | Source data | refuge |".to_string();
    let mut rule = "|---|---:|---:|".to_string();
    for t in &tools {
        head.push_str(&format!(" {} |", t.name()));
        rule.push_str("---:|");
    }
    for t in &tools {
        head.push_str(&format!(" refuge vs {} |", t.name()));
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    let last = first.rows.len() - 1;
    // (label, refuge row, peer phase)
    type PeerPick = fn(&PeerData) -> Option<&PeerPhase>;
    let phases: [(&str, usize, PeerPick); 4] = [
        ("initial backup", 0, |p| p.backups.first()),
        ("incremental backup (5%)", 1, |p| p.backups.get(1)),
        ("third backup (5%)", 2, |p| p.backups.get(2)),
        ("restore of all sources", last, |p| Some(&p.restore)),
    ];
    for (label, i, pick) in phases {
        let logical = first.rows[i].logical;
        let ours = med(&|r| r.rows[i].wall);
        let cpu = med(&|r| {
            let x = &r.rows[i];
            x.client_user + x.client_sys + x.node_cpu
        });
        let mut line = format!(
            "| {label} | {} | **{}** MB/s ({ours:.2} s, CPU {cpu:.1} s) |",
            mb(logical),
            mb_per_s(logical, ours)
        );
        let mut ratios = String::new();
        for t in &tools {
            let done: Vec<PeerPhase> = runs
                .iter()
                .filter_map(|r| peer(r, *t))
                .filter_map(|p| pick(&p).filter(|x| x.failure.is_none()).cloned())
                .collect();
            if done.is_empty() {
                line.push_str(" failed |");
                ratios.push_str(" - |");
                continue;
            }
            let w = median(done.iter().map(|x| x.wall).collect());
            let c = median(done.iter().map(|x| x.cpu).collect());
            line.push_str(&format!(
                " {} MB/s ({w:.2} s, CPU {c:.1} s) |",
                mb_per_s(logical, w)
            ));
            ratios.push_str(&format!(" **{:.2}x** |", w / ours.max(1e-9)));
        }
        let _ = writeln!(s, "{line}{ratios}");
    }
    let rss = |label: &str, rows: &dyn Fn(&super::RunData) -> Vec<Row>, pick: PeerPick| {
        let client = med(&|r| rows(r).iter().map(|x| x.client_kib).max().unwrap_or(0) as f64);
        let node = med(&|r| rows(r).iter().map(|x| x.node_kib).max().unwrap_or(0) as f64);
        let mut line = format!(
            "| {label} | | {} + node {} |",
            mib_from_kib(client as u64),
            mib_from_kib(node as u64)
        );
        for t in &tools {
            let kib = med(&|r| {
                peer(r, *t)
                    .and_then(|p| pick(&p).map(|x| x.kib))
                    .unwrap_or(0) as f64
            });
            line.push_str(&format!(" {} |", mib_from_kib(kib as u64)));
        }
        for _ in &tools {
            line.push_str(" |");
        }
        line
    };
    let _ = writeln!(
        s,
        "{}",
        rss("peak RSS, backups", &|r| r.rows[..3].to_vec(), |p| p
            .backups
            .iter()
            .max_by_key(|b| b.kib))
    );
    let _ = writeln!(
        s,
        "{}",
        rss(
            "peak RSS, restore",
            &|r| vec![r.rows[r.rows.len() - 1].clone()],
            |p| Some(&p.restore)
        )
    );
    let ours = med(&|r| r.store_bytes as f64);
    let mut line = format!(
        "| stored after three generations | | **{}** |",
        mb(ours as u64)
    );
    let mut ratios = String::new();
    for t in &tools {
        let b = med(&|r| peer(r, *t).map_or(0, |p| p.repo_bytes) as f64);
        line.push_str(&format!(" {} |", mb(b as u64)));
        ratios.push_str(&format!(" **{:.2}x** |", ours / b.max(1.0)));
    }
    let _ = writeln!(s, "{line}{ratios}");
    let bad: Vec<String> = runs
        .iter()
        .flat_map(|r| r.peers.iter())
        .filter(|p| !p.problems.is_empty())
        .map(|p| format!("{}: {}", p.tool.name(), p.problems.join("; ")))
        .collect();
    if bad.is_empty() {
        s.push_str("\nThe peers' restores are identical to the source too.\n");
    } else {
        let _ = writeln!(s, "\n**A peer's restore differs**: {}\n", bad.join(" / "));
    }
}
