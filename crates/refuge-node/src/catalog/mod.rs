//! The catalog: what the node knows about snapshots besides their chunks,
//! read and written as store records and settings. Queries only: no
//! access checks (the caller has already decided which tenants it may
//! touch), no audit, no gRPC services.
//!
//! - `snapshots`: listing with filters, resolving a selector (`latest`,
//!   an id prefix, a time) and what a snapshot references.
//! - `retention`: per-tenant retention policies and pins (settings).
//! - `drills`: drill records (`drill/TENANT/SEQ`, `drill_last/...`) and
//!   the reports of the node's own drills (`drill_report/ID`).
//! - `failures`: backup failures agents reported (`backup_failure/...`).
//! - `status`: per-source and per-tenant status, for `Status`, the
//!   metrics scrape and the console.
//! - `slo`: which sources breach their recovery targets (`[slo]`).
//! - `audit_copy`: the copies of peers' audit logs (`audit_copy/...`).
//! - `purges`: purge requests and what they removed (`purge/ID`).
//!
//! Imports from the rest of the crate: `config` and `floor` only.

pub(crate) mod audit_copy;
pub(crate) mod drills;
pub(crate) mod failures;
pub(crate) mod purges;
pub(crate) mod retention;
pub(crate) mod slo;
pub(crate) mod snapshots;
pub(crate) mod status;

/// Longest text (first failure, check command, drill id, backup error)
/// kept in a record, in bytes.
pub(crate) const MAX_TEXT: usize = 4096;

/// `s` cut to [`MAX_TEXT`] bytes on a character boundary, with `…` when cut.
pub(crate) fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_clipped_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let c = clip(s);
        assert!(c.len() <= MAX_TEXT + '…'.len_utf8());
        assert!(c.ends_with('…'));
        assert_eq!(clip("short".into()), "short");
    }
}
