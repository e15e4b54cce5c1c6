//! Opening the configured store backend (`[store]`), and flushing it at
//! shutdown: RocksDB alone, or RocksDB for the catalog with chunk bodies in
//! an S3 bucket.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use refuge_store::Store;
use refuge_store_rocksdb::{ReopeningStore, RocksOptions};
use refuge_store_s3::{Bucket, PackStore};

use crate::config::{Backend, StoreConfig};

/// An open store, as the server holds it.
pub(crate) enum Opened {
    /// `backend = "rocksdb"`.
    Rocks(Arc<ReopeningStore>),
    /// `backend = "s3"`.
    Packs(Arc<PackStore>),
}

impl Opened {
    /// Opens the store in `dir` (blocking).
    pub(crate) fn open(dir: &Path, cfg: &StoreConfig, opts: &RocksOptions) -> anyhow::Result<Self> {
        let cannot = || format!("cannot open the store in {}", dir.display());
        match (cfg.backend, &cfg.s3) {
            (Backend::S3, Some(s3)) => {
                let bucket = Bucket::s3(s3).map_err(anyhow::Error::msg)?;
                let store = PackStore::open(dir, opts, Arc::new(bucket), s3.pack_mib << 20)
                    .with_context(cannot)?;
                Ok(Opened::Packs(Arc::new(store)))
            }
            (Backend::S3, None) => anyhow::bail!("store.backend = \"s3\" needs [store.s3]"),
            (Backend::Rocksdb, _) => Ok(Opened::Rocks(Arc::new(
                ReopeningStore::open(dir, opts).with_context(cannot)?,
            ))),
        }
    }

    /// The store.
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        match self {
            Opened::Rocks(s) => s.clone(),
            Opened::Packs(s) => s.clone(),
        }
    }

    /// Where chunk bodies are, for the log.
    pub(crate) fn describe(&self) -> String {
        match self {
            Opened::Rocks(s) if s.uses_direct_io() => "rocksdb, direct I/O".into(),
            Opened::Rocks(_) => "rocksdb, buffered I/O".into(),
            Opened::Packs(s) => format!("packs in {}", s.describe()),
        }
    }

    /// Uploads what waits and flushes RocksDB (blocking; at shutdown).
    pub(crate) fn flush(&self) -> refuge_store::Result<()> {
        match self {
            Opened::Rocks(s) => s.flush(),
            Opened::Packs(s) => s.flush(),
        }
    }
}
