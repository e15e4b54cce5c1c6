//! Backup failures that agents report (`ReportBackupFailure`): the last
//! one of each source, as the setting `backup_failure/TENANT/HOST/SOURCE`
//! (`refuge_proto::stored`: a version byte, the node time, the text).

use refuge_core::TenantId;
use refuge_proto::stored::{decode_failure, encode_failure};
use refuge_store::Store;
use tonic::Status;

use super::clip;
use crate::floor::store::store_status;

/// Setting holding the last reported failure of a source's backup.
fn failure_key(tenant: &TenantId, host: &str, source: &str) -> String {
    format!("{}{host}/{source}", failure_prefix(tenant))
}

/// Stores a backup failure an agent reported.
pub(crate) fn put_failure(
    store: &dyn Store,
    tenant: &TenantId,
    host: &str,
    source: &str,
    time_micros: i64,
    error: &str,
) -> Result<(), Status> {
    let v = encode_failure(time_micros, &clip(error.to_string()));
    store
        .put_setting(&failure_key(tenant, host, source), Some(&v))
        .map_err(store_status)
}

/// The last reported failure of a source's backup: time and error.
pub(crate) fn get_failure(
    store: &dyn Store,
    tenant: &TenantId,
    host: &str,
    source: &str,
) -> Result<Option<(i64, String)>, Status> {
    let Some(v) = store
        .get_setting(&failure_key(tenant, host, source))
        .map_err(store_status)?
    else {
        return Ok(None);
    };
    decode_failure(&v).map(Some).ok_or_else(|| {
        Status::data_loss(format!(
            "stored backup failure of {tenant}/{host}/{source} is malformed"
        ))
    })
}

/// The prefix under which the failures of a tenant's sources are kept
/// (for listing sources that only ever failed).
pub(crate) fn failure_prefix(tenant: &TenantId) -> String {
    format!("backup_failure/{tenant}/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_store::MemStore;

    #[test]
    fn the_last_failure_of_a_source_is_kept_clipped() {
        let store = MemStore::new();
        let t = TenantId::new("t").unwrap();
        assert_eq!(get_failure(&store, &t, "h", "s").unwrap(), None);
        put_failure(&store, &t, "h", "s", 5, "first").unwrap();
        put_failure(&store, &t, "h", "s", 9, &"x".repeat(10_000)).unwrap();
        let (at, text) = get_failure(&store, &t, "h", "s").unwrap().unwrap();
        assert_eq!(at, 9);
        assert!(text.len() <= super::super::MAX_TEXT + 3 && text.ends_with('…'));
        assert_eq!(get_failure(&store, &t, "h", "other").unwrap(), None);
        // Garbage in the setting is named, not misread.
        store
            .put_setting("backup_failure/t/h/bad", Some(b"\x09junk"))
            .unwrap();
        let e = get_failure(&store, &t, "h", "bad").unwrap_err();
        assert!(e.message().contains("malformed"), "{}", e.message());
    }
}
