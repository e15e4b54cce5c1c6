//! Per-tenant retention policies (setting `retention/TENANT`, the
//! versioned `Policy` encoding) and pins (settings `pin/TENANT/ID`,
//! empty). What to keep is decided in `work::maintenance`.

use std::collections::HashSet;

use refuge_core::retention::Policy;
use refuge_core::{SnapshotId, TenantId};
use refuge_store::Store;
use tonic::Status;

use crate::floor::store::store_status;

fn policy_key(t: &TenantId) -> String {
    format!("retention/{t}")
}

fn pin_prefix(t: &TenantId) -> String {
    format!("pin/{t}/")
}

/// The tenant's policy, and whether it is `default` (the tenant has none).
pub(crate) fn policy(
    store: &dyn Store,
    t: &TenantId,
    default: Policy,
) -> Result<(Policy, bool), Status> {
    match store.get_setting(&policy_key(t)).map_err(store_status)? {
        Some(b) => Policy::decode(&b)
            .map(|p| (p, false))
            .map_err(|e| Status::data_loss(format!("retention policy of {t}: {e}"))),
        None => Ok((default, true)),
    }
}

/// Sets the tenant's policy (`None`: back to the node's default).
pub(crate) fn set_policy(store: &dyn Store, t: &TenantId, p: Option<Policy>) -> Result<(), Status> {
    store
        .put_setting(&policy_key(t), p.map(|p| p.encode()).as_deref())
        .map_err(store_status)
}

/// The pinned snapshots of the tenant, as hex ids.
pub(crate) fn pins(store: &dyn Store, t: &TenantId) -> Result<HashSet<String>, Status> {
    let prefix = pin_prefix(t);
    Ok(store
        .list_settings(&prefix)
        .map_err(store_status)?
        .into_iter()
        .map(|(k, _)| k[prefix.len()..].to_string())
        .collect())
}

/// Pins or unpins a snapshot of the tenant.
pub(crate) fn set_pin(
    store: &dyn Store,
    t: &TenantId,
    id: &SnapshotId,
    pinned: bool,
) -> Result<(), Status> {
    let key = format!("{}{}", pin_prefix(t), id.to_hex());
    store
        .put_setting(&key, pinned.then_some(&[][..]))
        .map_err(store_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_store::MemStore;

    #[test]
    fn policies_and_pins_are_per_tenant_and_fall_back_to_the_default() {
        let store = MemStore::new();
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let default = Policy::default();
        assert_eq!(policy(&store, &a, default).unwrap(), (default, true));
        let mine = Policy {
            keep_last: 3,
            ..Policy::default()
        };
        set_policy(&store, &a, Some(mine)).unwrap();
        assert_eq!(policy(&store, &a, default).unwrap(), (mine, false));
        assert!(policy(&store, &b, default).unwrap().1);
        set_policy(&store, &a, None).unwrap();
        assert!(policy(&store, &a, default).unwrap().1);

        let id = SnapshotId([7; 32]);
        set_pin(&store, &a, &id, true).unwrap();
        assert_eq!(pins(&store, &a).unwrap(), HashSet::from([id.to_hex()]));
        assert!(pins(&store, &b).unwrap().is_empty());
        set_pin(&store, &a, &id, false).unwrap();
        assert!(pins(&store, &a).unwrap().is_empty());
    }
}
