//! A signal that the catalog changed (a snapshot committed or imported):
//! continuous replication starts a pass on it instead of waiting for its
//! interval.

use std::sync::Arc;

use tokio::sync::watch;

/// Bumped on every commit and import; replication watches it.
#[derive(Clone)]
pub(crate) struct Changes(Arc<watch::Sender<u64>>);

impl Changes {
    /// A signal nobody has bumped.
    pub(crate) fn new() -> Self {
        Changes(Arc::new(watch::channel(0).0))
    }

    /// Says that the catalog changed.
    pub(crate) fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later bump.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
