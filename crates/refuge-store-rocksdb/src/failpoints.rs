//! Named fail points for the fault tests (`docs/reliability.md`).
//!
//! They sit at the steps of commits, deletions and garbage collection where
//! a crash or an I/O error is most dangerous. They are compiled in only
//! with the `failpoints` cargo feature (the test build; never a release)
//! and configured at start-up from `REFUGE_FAILPOINTS`, a `;`-separated
//! list of `name=actions` in the syntax of the `fail` crate. Two actions
//! matter here: `return(crash)` aborts the process on the spot (no
//! destructor runs, nothing is flushed: what a SIGKILL leaves) and
//! `return(error)` makes the step fail with an I/O error. For example
//! `REFUGE_FAILPOINTS='store.commit.after_wal_sync=return(crash)'` or
//! `'store.gc.before_batch=1*off->return(error)'` (the second batch fails).

use refuge_store::StoreError;

/// Every fail point, in the order the code reaches them.
pub const NAMES: &[&str] = &[
    // put_chunks: the batch is in the WAL, not yet synced.
    "store.put.after_write",
    // commit_snapshot: the chunks are checked, nothing is synced yet.
    "store.commit.before_wal_sync",
    // commit_snapshot: every chunk is durable, the record is not written.
    "store.commit.after_wal_sync",
    // commit_snapshot: the record is durable, the caller has no answer.
    "store.commit.after_record",
    // import_snapshot: the imported record is durable, the caller (a
    // replication receiver) has no answer.
    "store.import.after_record",
    // delete_snapshot: the record is gone, its references subtracted and
    // the chunks left without any marked; the caller has no answer.
    "store.delete.after_write",
    // collect_garbage: a batch is decided (under the lock), not written.
    "store.gc.before_batch",
    // collect_garbage: a batch is written, the next not yet read.
    "store.gc.after_batch",
    // get_chunk: before the read (for a node that stalls mid-restore).
    "store.get_chunk",
    // Every write, when set (any action but `off`): nothing is synced, as
    // a store that acknowledged unsynced writes would; the power-loss
    // test's control, which must then lose acknowledged data.
    "store.unsynced",
];

/// The environment variable that configures fail points.
pub const ENV: &str = "REFUGE_FAILPOINTS";

/// Whether this build has fail points.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Configures the fail points named in `REFUGE_FAILPOINTS`; returns what
/// was configured. An unknown name, bad actions, or the variable set in a
/// build without fail points are errors: a fault test must never pass
/// because its fault was silently not injected.
pub fn configure_from_env() -> Result<Vec<String>, String> {
    match std::env::var(ENV) {
        Ok(spec) => configure(&spec),
        Err(_) => Ok(Vec::new()),
    }
}

/// Configures the fail points of `spec` (the syntax of `REFUGE_FAILPOINTS`).
pub fn configure(spec: &str) -> Result<Vec<String>, String> {
    if spec.trim().is_empty() {
        return Ok(Vec::new());
    }
    if !ENABLED {
        return Err(format!(
            "{ENV} is set, but this refuged was built without fail points (build with `--features refuged/failpoints`)"
        ));
    }
    let mut done = Vec::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, actions)) = part.split_once('=') else {
            return Err(format!("{ENV}: {part:?} is not name=actions"));
        };
        let name = name.trim();
        if !NAMES.contains(&name) {
            return Err(format!(
                "{ENV}: no fail point {name:?} (there are: {})",
                NAMES.join(", ")
            ));
        }
        fail::cfg(name, actions.trim()).map_err(|e| format!("{ENV}: {name}: {e}"))?;
        done.push(format!("{name}={}", actions.trim()));
    }
    Ok(done)
}

/// What a fail point configured with `return(ARG)` does: `crash` aborts
/// the process at once, anything else is an injected I/O error.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn injected(name: &str, arg: Option<String>) -> StoreError {
    if arg.as_deref() == Some("crash") {
        eprintln!("refuged: fail point {name}: crashing");
        // A crash, not a core dump of the whole store cache.
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        );
        std::process::abort();
    }
    StoreError::Backend(format!("fail point {name}: injected I/O error"))
}

/// Whether fail point `name` is set (to anything but `off`): for fail
/// points that change what a step does rather than stop it.
pub(crate) fn is_set(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Evaluates fail point `$name` in a function returning this crate's
/// `Result`: nothing without the `failpoints` feature.
macro_rules! fail_point {
    ($name:literal) => {
        fail::fail_point!($name, |arg| Err($crate::failpoints::injected($name, arg)))
    };
}
pub(crate) use fail_point;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_before_anything_is_injected() {
        assert_eq!(configure("  "), Ok(vec![]));
        if !ENABLED {
            let e = configure("store.gc.after_batch=return(crash)").unwrap_err();
            assert!(e.contains("built without fail points"), "{e}");
            return;
        }
        let e = configure("store.nothing=return(crash)").unwrap_err();
        assert!(e.contains("no fail point \"store.nothing\""), "{e}");
        let e = configure("store.gc.after_batch").unwrap_err();
        assert!(e.contains("not name=actions"), "{e}");
        let e = configure("store.gc.after_batch=explode(3)").unwrap_err();
        assert!(e.contains("store.gc.after_batch"), "{e}");
        assert_eq!(
            configure("store.gc.after_batch=off; store.put.after_write=off"),
            Ok(vec![
                "store.gc.after_batch=off".to_string(),
                "store.put.after_write=off".to_string()
            ])
        );
    }
}
