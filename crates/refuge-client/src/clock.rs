//! The client's clock and its random numbers (not for keys: drill ids,
//! random drill points, replication slot names). A module of its own so
//! that the drills and the sources that use them import it, not each
//! other.

/// The client's clock, microseconds since the epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A random number (for drill ids, random points and slot names).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // Not security-relevant: only which snapshot is tested, or a name.
        return now_micros() as u64;
    }
    u64::from_le_bytes(b)
}
