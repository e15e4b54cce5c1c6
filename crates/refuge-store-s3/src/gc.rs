//! Garbage collection of packs: after RocksDB's collection has removed the
//! unreferenced chunks and marked them dead in their packs, a pack with
//! nothing alive is deleted and one at least half dead (by bytes) is
//! rewritten with its live chunks only. Only packs with dead chunks are
//! looked at.

use refuge_store::{GcOutcome, Result, StoreError};
use refuge_store_rocksdb::{Location, PackGarbage};
use tracing::info;

use crate::{PackStore, bucket_error, pack, pack_name, records_len};

impl PackStore {
    /// Deletes or rewrites the packs garbage left (see the module docs).
    pub(crate) fn collect_packs(&self, out: &mut GcOutcome) -> Result<()> {
        self.collect_packs_of(None, out)
    }

    /// Like [`Self::collect_packs`]; with `purged`, that tenant's packs
    /// are rewritten when anything in them is dead, so that no deleted
    /// chunk's bytes stay in the bucket.
    pub(crate) fn collect_packs_of(
        &self,
        purged: Option<&refuge_core::TenantId>,
        out: &mut GcOutcome,
    ) -> Result<()> {
        for g in self.catalog.with_store(|s| s.pack_garbage())? {
            let strict = purged.is_some_and(|t| *t == g.info.tenant) && g.dead_bytes > 0;
            if g.all_dead() {
                self.delete_pack(&g)?;
                out.packs_deleted += 1;
            } else if strict || g.dead_bytes.saturating_mul(2) >= g.info.bytes {
                self.rewrite_pack(&g)?;
                out.packs_rewritten += 1;
            }
        }
        Ok(())
    }

    fn delete_pack(&self, g: &PackGarbage) -> Result<()> {
        self.bucket
            .delete(&pack_name(&g.info.tenant, g.info.pack))
            .map_err(bucket_error)?;
        self.catalog.with_store(|s| s.drop_pack(g.info.pack))
    }

    /// Copies the live records of `g`'s pack into a new pack, points the
    /// catalog at it, then deletes the old one.
    fn rewrite_pack(&self, g: &PackGarbage) -> Result<()> {
        let (tenant, from) = (&g.info.tenant, g.info.pack);
        let data = self
            .bucket
            .get(&pack_name(tenant, from))
            .map_err(bucket_error)?;
        let entries = pack::entries(&data)
            .map_err(|e| StoreError::Corrupt(format!("pack {from:016x}: {e}")))?;
        let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
        let now = self
            .catalog
            .with_store(|s| s.chunk_locations(tenant, &ids))?;
        let mut b = pack::Builder::default();
        let mut was = Vec::new();
        for (e, at) in entries.iter().zip(now) {
            let here = Location {
                pack: from,
                offset: e.offset,
                len: e.len,
            };
            if at == Some(here) {
                let start = e.offset as usize;
                b.push(e.id, &data[start..start + e.len as usize]);
                was.push(here);
            }
        }
        if b.is_empty() {
            return self.delete_pack(g);
        }
        let to = self.catalog.with_store(|s| s.begin_pack(tenant))?;
        let (bytes, placed) = b.finish();
        let total = records_len(&placed);
        if let Err(e) = self.bucket.put(&pack_name(tenant, to), bytes) {
            self.orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((tenant.clone(), to));
            return Err(bucket_error(e));
        }
        let moved: Vec<_> = placed
            .iter()
            .zip(was)
            .map(|(e, was)| {
                let at = Location {
                    pack: to,
                    offset: e.offset,
                    len: e.len,
                };
                (e.id, at, was)
            })
            .collect();
        let n = self
            .catalog
            .with_store(|s| s.relocate(tenant, from, to, &moved, total))?;
        info!(
            tenant = %tenant.as_str(),
            from = format!("{from:016x}"),
            to = format!("{to:016x}"),
            moved = n,
            dead = g.dead_chunks,
            "pack rewritten without its unused chunks"
        );
        self.bucket
            .delete(&pack_name(tenant, from))
            .map_err(bucket_error)?;
        self.catalog.with_store(|s| s.drop_pack(from))
    }
}
