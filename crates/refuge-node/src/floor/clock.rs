//! The node's clock and its random numbers. Snapshot times, audit times
//! and quota windows all read [`now_micros`]; nothing on the node takes a
//! time from a client.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, by the node's clock (0 if the clock
/// is before 1970).
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A random number from the operating system, for drill ids and drill
/// times (not for keys: nothing secret is made from it). Falls back to
/// the clock if the system has no randomness to give.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        return now_micros() as u64;
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_after_2026_and_randoms_differ() {
        // 2026-01-01T00:00:00Z.
        assert!(now_micros() > 1_767_225_600_000_000);
        assert_ne!(random_u64(), random_u64());
    }
}
