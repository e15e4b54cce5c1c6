//! Benchmarks for refuge (see BENCHMARKS.md).
//!
//! This library holds what the criterion micro-benchmarks
//! (`benches/micro.rs`) and the end-to-end `refuge-bench` command share:
//! a seeded random generator ([`rng`]), data of known compressibility
//! ([`content`]) and the seeded image / database / file-tree data set with its
//! ~5% mutation ([`dataset`]).

pub mod content;
pub mod dataset;
pub mod rng;

/// Parses a size such as `2GiB`, `512MiB`, `1.5G`, `100MB` or `4096`.
/// `K`/`M`/`G`/`T` and the `iB` forms are binary; `KB`/`MB`/`GB`/`TB`
/// are decimal.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number and a unit, like 2GiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0_f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    Ok((v * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("two").is_err());
        assert!(parse_size("3XB").is_err());
    }
}
