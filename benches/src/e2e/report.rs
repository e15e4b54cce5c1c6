//! Markdown output: number formatting, the BENCHMARKS.md section writer,
//! and the table of criterion results.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Decimal megabytes (10^6 bytes), one decimal.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Binary mebibytes from KiB, no decimals.
pub fn mib_from_kib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// MB/s (10^6 bytes per second), one decimal.
pub fn mb_per_s(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{:.1}", bytes as f64 / 1e6 / secs)
}

/// Seconds, with precision that suits the magnitude.
pub fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// Header of a new BENCHMARKS.md (kept when the file exists).
pub const HEADER: &str = "# Benchmarks

Reproduce with `scripts/bench.sh` (see the top of that script). Units: 1 MB =
10^6 bytes and MB/s = 10^6 bytes per second of *source* (logical) data;
memory in MiB (2^20 bytes). Builds use the workspace `dev` profile: every
dependency (RocksDB, zstd, BLAKE3, ring, tonic) at opt-level 3, workspace
crates at opt-level 1 (see the root `Cargo.toml`).
";

fn markers(label: &str, key: &str) -> (String, String) {
    (
        format!("<!-- refuge-bench begin: {label} / {key} -->"),
        format!("<!-- refuge-bench end: {label} / {key} -->"),
    )
}

/// Puts `body` into `doc` under the heading `## {label}`, as the block
/// `key`: replaces the block if it exists, otherwise appends it to the end
/// of the section (creating the section at the end of the document).
pub fn upsert_block(doc: &str, label: &str, key: &str, body: &str) -> String {
    let (begin, end) = markers(label, key);
    let block = format!("{begin}\n{}\n{end}\n", body.trim_end());
    if let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end))
        && b < e
    {
        let after = e + end.len();
        let after = if doc[after..].starts_with('\n') {
            after + 1
        } else {
            after
        };
        return format!("{}{block}{}", &doc[..b], &doc[after..]);
    }
    let heading = format!("## {label}");
    let mut out = doc.trim_end().to_string();
    let start = doc
        .lines()
        .scan(0usize, |pos, l| {
            let at = *pos;
            *pos += l.len() + 1;
            Some((at, l))
        })
        .find(|(_, l)| l.trim_end() == heading)
        .map(|(at, _)| at);
    match start {
        None => {
            out.push_str(&format!("\n\n{heading}\n\n{block}"));
            out
        }
        Some(s) => {
            // End of the section: the next level-2 heading, or the end.
            let body_start = s + heading.len();
            let next = doc[body_start..]
                .find("\n## ")
                .map(|i| body_start + i + 1)
                .unwrap_or(doc.len());
            let head = doc[..next].trim_end();
            let tail = &doc[next..];
            if tail.is_empty() {
                format!("{head}\n\n{block}")
            } else {
                format!("{head}\n\n{block}\n{tail}")
            }
        }
    }
}

/// [`upsert_block`] on a file, creating it with [`HEADER`].
pub fn upsert_file(path: &Path, label: &str, key: &str, body: &str) -> io::Result<()> {
    let doc = match fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => HEADER.to_string(),
        Err(e) => return Err(e),
    };
    fs::write(path, upsert_block(&doc, label, key, body))
}

// ---------------------------------------------------------------- criterion

/// One criterion result.
struct Bench {
    id: String,
    ns: f64,
    lo_ns: f64,
    hi_ns: f64,
    bytes: Option<u64>,
    elements: Option<u64>,
}

fn num(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn read_bench(dir: &Path) -> anyhow::Result<Option<Bench>> {
    let meta = dir.join("new").join("benchmark.json");
    let est = dir.join("new").join("estimates.json");
    if !meta.is_file() || !est.is_file() {
        return Ok(None);
    }
    let meta: serde_json::Value = serde_json::from_str(&fs::read_to_string(&meta)?)
        .with_context(|| format!("parsing {}", meta.display()))?;
    let est: serde_json::Value = serde_json::from_str(&fs::read_to_string(&est)?)
        .with_context(|| format!("parsing {}", est.display()))?;
    // The slope (linear regression over the sample) when criterion has
    // one, as its own report does; the mean otherwise.
    let key = if est.get("slope").is_some_and(|s| !s.is_null()) {
        "slope"
    } else {
        "mean"
    };
    let id = meta
        .get("full_id")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_string();
    let tp = meta.get("throughput");
    Ok(Some(Bench {
        id,
        ns: num(&est, &[key, "point_estimate"]).unwrap_or(f64::NAN),
        lo_ns: num(&est, &[key, "confidence_interval", "lower_bound"]).unwrap_or(f64::NAN),
        hi_ns: num(&est, &[key, "confidence_interval", "upper_bound"]).unwrap_or(f64::NAN),
        bytes: tp.and_then(|t| t.get("Bytes")).and_then(|b| b.as_u64()),
        elements: tp.and_then(|t| t.get("Elements")).and_then(|b| b.as_u64()),
    }))
}

fn human_time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn human_size(b: u64) -> String {
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// The default criterion output directory: `$CARGO_TARGET_DIR/criterion`
/// (from this executable's `target/debug/`).
pub fn default_criterion_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// A Markdown table of every criterion result under `dir`.
pub fn micro_table(dir: &Path) -> anyhow::Result<String> {
    let mut benches = Vec::new();
    let mut groups: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {} (run the micro benchmarks first)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "report"))
        .collect();
    groups.sort();
    for g in groups {
        let mut ids: Vec<_> = fs::read_dir(&g)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        ids.sort();
        for d in ids {
            if let Some(b) = read_bench(&d)? {
                benches.push(b);
            }
        }
    }
    if benches.is_empty() {
        anyhow::bail!("no criterion results under {}", dir.display());
    }
    // The data path's order; unknown ids last, by name.
    let order = [
        "chunking/fastcdc_default_64MiB",
        "hashing/blake3_chunk_id_1MiB",
        "compression/zstd_level_1_1MiB",
        "compression/zstd_level_1_reused_context_1MiB",
        "compression/zstd_level_3_1MiB",
        "compression/zstd_level_3_reused_context_1MiB",
        "compression/zstd_level_9_1MiB",
        "compression/zstd_level_3_16KiB",
        "compression/zstd_level_3_reused_context_16KiB",
        "compression/decode_chunk_level_3_1MiB",
        "store/rocksdb_put_64x256KiB",
        "store/rocksdb_get_64x256KiB",
        "store/rocksdb_missing_chunks_4096_ids",
    ];
    benches.sort_by_key(|b| {
        (
            order.iter().position(|o| *o == b.id).unwrap_or(order.len()),
            b.id.clone(),
        )
    });
    let mut t = String::from(
        "| Benchmark | Input per iteration | Time per iteration | Throughput (95% CI) |\n|---|---:|---:|---|\n",
    );
    for b in &benches {
        let (input, thr) = match (b.bytes, b.elements) {
            (Some(n), _) => {
                let r = |ns: f64| n as f64 / 1e6 / (ns / 1e9);
                (
                    human_size(n),
                    format!(
                        "**{:.0} MB/s** ({:.0}–{:.0})",
                        r(b.ns),
                        r(b.hi_ns),
                        r(b.lo_ns)
                    ),
                )
            }
            (None, Some(n)) => {
                let r = |ns: f64| n as f64 / 1e6 / (ns / 1e9);
                (
                    format!("{n} ids"),
                    format!(
                        "**{:.2} M ids/s** ({:.2}–{:.2})",
                        r(b.ns),
                        r(b.hi_ns),
                        r(b.lo_ns)
                    ),
                )
            }
            _ => ("-".into(), "-".into()),
        };
        t.push_str(&format!(
            "| `{}` | {input} | {} | {thr} |\n",
            b.id,
            human_time(b.ns)
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::upsert_block;

    #[test]
    fn blocks_are_added_then_replaced_in_their_section() {
        let doc = "# Benchmarks\n\nintro\n";
        let d1 = upsert_block(doc, "Baseline", "e2e", "one");
        assert!(d1.starts_with("# Benchmarks\n\nintro\n\n## Baseline\n\n"));
        assert!(d1.contains("one"));
        let d2 = upsert_block(&d1, "Baseline", "micro", "two");
        assert!(d2.find("one") < d2.find("two"));
        let d3 = upsert_block(&d2, "Later", "e2e", "three");
        let d4 = upsert_block(&d3, "Baseline", "e2e", "ONE");
        assert!(!d4.contains("one") && d4.contains("ONE"));
        assert!(d4.find("ONE") < d4.find("two") && d4.find("two") < d4.find("## Later"));
        // A new block of an earlier section goes before the next section.
        let d5 = upsert_block(&d4, "Baseline", "e2e-2", "four");
        assert!(d5.find("four") < d5.find("## Later"));
        assert!(d5.find("two") < d5.find("four"));
        assert_eq!(d5.matches("## Baseline").count(), 1);
        // Idempotent.
        assert_eq!(upsert_block(&d5, "Baseline", "e2e-2", "four"), d5);
    }
}
