//! An in-memory [`Store`] for unit tests. Not durable, not bounded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use refuge_core::audit::{AuditEvent, AuditRecord};
use refuge_core::{ChunkId, SnapshotId, SnapshotRecord, StoredChunk, TenantId};

use crate::{
    COMMIT_TOKEN_KEEP_MICROS, CommitToken, Committed, GcOutcome, Imported, NewSnapshot, PutOutcome,
    Quarantined, RefCounts, Result, Store, StoreError, build_record, chain_audit, sort_snapshots,
};

/// In-memory store; every method takes one mutex.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    chunks: HashMap<(TenantId, ChunkId), StoredChunk>,
    /// By catalog position (a commit's sequence number, or the position
    /// an import took).
    snapshots: BTreeMap<(TenantId, u64), SnapshotRecord>,
    seq: u64,
    deleted: HashMap<(TenantId, SnapshotId), i64>,
    last_time: i64,
    audit: Vec<AuditRecord>,
    audit_head: (u64, [u8; 32]),
    refs: HashMap<(TenantId, ChunkId), u64>,
    /// Unreferenced chunks and since when.
    unref: BTreeMap<(TenantId, ChunkId), i64>,
    settings: BTreeMap<String, Vec<u8>>,
    quarantine: BTreeMap<(TenantId, ChunkId), (i64, String)>,
    checksums: HashMap<(TenantId, ChunkId), [u8; 32]>,
    /// Commit tokens: the snapshot's seq and the commit's time.
    tokens: HashMap<(TenantId, CommitToken), (u64, i64)>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // (every update is a single insert), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemStore {
    fn collect(
        &self,
        tenant: Option<&TenantId>,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        let mut g = self.lock();
        let mut out = GcOutcome::default();
        let entries: Vec<_> = g
            .unref
            .iter()
            .filter(|((t, _), _)| tenant.is_none_or(|w| w == t))
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        for (k, since) in entries {
            out.examined += 1;
            if g.refs.get(&k).copied().unwrap_or(0) > 0 {
                g.unref.remove(&k);
                out.referenced_again += 1;
            } else if since < cutoff_micros {
                g.unref.remove(&k);
                if let Some(c) = g.chunks.remove(&k) {
                    out.deleted += 1;
                    out.bytes += c.data.len() as u64;
                }
            } else {
                out.kept_recent += 1;
            }
        }
        if tenant.is_none() {
            g.tokens
                .retain(|_, (_, t)| *t >= cutoff_micros.saturating_sub(COMMIT_TOKEN_KEEP_MICROS));
        }
        progress(&out);
        Ok(out)
    }
}

impl Store for MemStore {
    fn chunk_lengths(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<u32>>> {
        let g = self.lock();
        Ok(ids
            .iter()
            .map(|id| g.chunks.get(&(tenant.clone(), *id)).map(|c| c.raw_len))
            .collect())
    }

    fn put_chunks(
        &self,
        tenant: &TenantId,
        chunks: &[(ChunkId, StoredChunk)],
        now_micros: i64,
    ) -> Result<PutOutcome> {
        let mut g = self.lock();
        let mut out = PutOutcome::default();
        for (id, c) in chunks {
            let k = (tenant.clone(), *id);
            let sum = *blake3::hash(&c.data).as_bytes();
            if let std::collections::hash_map::Entry::Vacant(v) = g.chunks.entry(k.clone()) {
                out.stored += 1;
                out.bytes += c.data.len() as u64;
                v.insert(c.clone());
                g.checksums.insert(k.clone(), sum);
                if g.quarantine.remove(&k).is_some() {
                    out.healed += 1;
                }
                g.unref.insert(k, now_micros);
            } else {
                if c.cipher != refuge_core::Cipher::None
                    && g.checksums.get(&k).is_some_and(|s| *s != sum)
                {
                    out.conflict.get_or_insert(*id);
                }
                if let Some(t) = g.unref.get_mut(&k) {
                    *t = now_micros;
                }
            }
        }
        Ok(out)
    }

    fn touch_chunks(&self, tenant: &TenantId, ids: &[ChunkId], now_micros: i64) -> Result<()> {
        let mut g = self.lock();
        for id in ids {
            if let Some(t) = g.unref.get_mut(&(tenant.clone(), *id)) {
                *t = now_micros;
            }
        }
        Ok(())
    }

    fn chunk_checksum(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<[u8; 32]>> {
        Ok(self.lock().checksums.get(&(tenant.clone(), *id)).copied())
    }

    fn chunk_refcount(&self, tenant: &TenantId, id: &ChunkId) -> Result<u64> {
        Ok(self
            .lock()
            .refs
            .get(&(tenant.clone(), *id))
            .copied()
            .unwrap_or(0))
    }

    fn get_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<StoredChunk>> {
        Ok(self.lock().chunks.get(&(tenant.clone(), *id)).cloned())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn commit(&self, new: NewSnapshot, now_micros: i64) -> Result<Committed> {
        let mut g = self.lock();
        if let Some(t) = new.token {
            let earlier = g
                .tokens
                .get(&(new.tenant.clone(), t))
                .and_then(|(seq, _)| g.snapshots.get(&(new.tenant.clone(), *seq)));
            if let Some(rec) = earlier {
                return Ok(Committed {
                    record: rec.clone(),
                    replayed: true,
                });
            }
        }
        let counts = new.refs.sorted();
        if let Some((id, _)) = counts
            .iter()
            .find(|(id, _)| !g.chunks.contains_key(&(new.tenant.clone(), *id)))
        {
            return Err(StoreError::missing_chunk(id));
        }
        for (id, n) in counts {
            let k = (new.tenant.clone(), id);
            g.unref.remove(&k);
            *g.refs.entry(k).or_insert(0) += n;
        }
        let seq = g.seq + 1;
        let time = now_micros.max(g.last_time.saturating_add(1));
        let token = new.token;
        let rec = build_record(new, seq, time);
        g.seq = seq;
        g.last_time = time;
        g.snapshots.insert((rec.tenant.clone(), seq), rec.clone());
        if let Some(t) = token {
            g.tokens.insert((rec.tenant.clone(), t), (seq, time));
        }
        Ok(Committed {
            record: rec,
            replayed: false,
        })
    }

    fn import_snapshot(&self, rec: &SnapshotRecord, refs: &RefCounts) -> Result<Imported> {
        if rec.id != rec.compute_id() {
            return Err(StoreError::Corrupt(format!(
                "snapshot record {} does not match its id",
                rec.id.short()
            )));
        }
        let mut g = self.lock();
        let t = rec.tenant.clone();
        if g.deleted.contains_key(&(t.clone(), rec.id)) {
            return Ok(Imported::Deleted);
        }
        if g.snapshots
            .iter()
            .any(|((k, _), r)| *k == t && r.id == rec.id)
        {
            return Ok(Imported::Present);
        }
        let counts = refs.sorted();
        if let Some((id, _)) = counts
            .iter()
            .find(|(id, _)| !g.chunks.contains_key(&(t.clone(), *id)))
        {
            return Err(StoreError::missing_chunk(id));
        }
        for (id, n) in counts {
            g.unref.remove(&(t.clone(), id));
            *g.refs.entry((t.clone(), id)).or_insert(0) += n;
        }
        g.seq += 1;
        let pos = g.seq;
        g.snapshots.insert((t, pos), rec.clone());
        Ok(Imported::New)
    }

    fn deleted_at(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<i64>> {
        Ok(self.lock().deleted.get(&(tenant.clone(), *id)).copied())
    }

    fn delete_snapshot(
        &self,
        tenant: &TenantId,
        id: &SnapshotId,
        refs: &RefCounts,
        now_micros: i64,
    ) -> Result<bool> {
        let mut g = self.lock();
        let Some(key) = g
            .snapshots
            .iter()
            .find(|((t, _), r)| t == tenant && &r.id == id)
            .map(|(k, _)| k.clone())
        else {
            return Ok(false);
        };
        g.snapshots.remove(&key);
        g.deleted.insert((tenant.clone(), *id), now_micros);
        for (cid, n) in refs.sorted() {
            let k = (tenant.clone(), cid);
            let left = g.refs.get(&k).copied().unwrap_or(0).saturating_sub(n);
            if left == 0 {
                g.refs.remove(&k);
                g.unref.insert(k, now_micros);
            } else {
                g.refs.insert(k, left);
            }
        }
        Ok(true)
    }

    fn collect_garbage(
        &self,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        self.collect(None, cutoff_micros, progress)
    }

    fn collect_tenant_garbage(
        &self,
        tenant: &TenantId,
        cutoff_micros: i64,
        progress: &mut dyn FnMut(&GcOutcome),
    ) -> Result<GcOutcome> {
        self.collect(Some(tenant), cutoff_micros, progress)
    }

    fn chunk_usage(&self, tenant: &TenantId) -> Result<crate::ChunkUsage> {
        let g = self.lock();
        let mut u = crate::ChunkUsage::default();
        for ((t, _), c) in &g.chunks {
            if t == tenant {
                u.chunks += 1;
                u.raw_bytes += u64::from(c.raw_len);
                u.stored_bytes += c.data.len() as u64;
            }
        }
        Ok(u)
    }

    fn list_chunk_ids(
        &self,
        tenant: &TenantId,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>> {
        let g = self.lock();
        let mut ids: Vec<ChunkId> = g
            .chunks
            .keys()
            .filter(|(t, id)| t == tenant && after.is_none_or(|a| id > a))
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        Ok(ids)
    }

    fn quarantine_chunk(
        &self,
        tenant: &TenantId,
        id: &ChunkId,
        reason: &str,
        now_micros: i64,
    ) -> Result<bool> {
        let mut g = self.lock();
        let k = (tenant.clone(), *id);
        if g.chunks.remove(&k).is_none() {
            return Ok(false);
        }
        g.quarantine.insert(k, (now_micros, reason.to_string()));
        Ok(true)
    }

    fn list_quarantine(&self, tenant: &TenantId) -> Result<Vec<Quarantined>> {
        Ok(self
            .lock()
            .quarantine
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), (time, reason))| Quarantined {
                id: *id,
                time_micros: *time,
                reason: reason.clone(),
            })
            .collect())
    }

    fn is_quarantined(&self, tenant: &TenantId, id: &ChunkId) -> Result<bool> {
        Ok(self.lock().quarantine.contains_key(&(tenant.clone(), *id)))
    }

    fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().settings.get(key).cloned())
    }

    fn put_setting(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let mut g = self.lock();
        match value {
            Some(v) => g.settings.insert(key.to_string(), v.to_vec()),
            None => g.settings.remove(key),
        };
        Ok(())
    }

    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .lock()
            .settings
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn list_snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>> {
        let g = self.lock();
        let mut out: Vec<SnapshotRecord> = g
            .snapshots
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, r)| r.clone())
            .collect();
        sort_snapshots(&mut out);
        Ok(out)
    }

    fn get_snapshot(&self, tenant: &TenantId, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        let g = self.lock();
        Ok(g.snapshots
            .iter()
            .find(|((t, _), r)| t == tenant && &r.id == id)
            .map(|(_, r)| r.clone()))
    }

    fn list_tenants(&self) -> Result<Vec<TenantId>> {
        let g = self.lock();
        let mut t: Vec<TenantId> = g
            .snapshots
            .keys()
            .map(|(t, _)| t.clone())
            .chain(g.chunks.keys().map(|(t, _)| t.clone()))
            .collect();
        t.sort();
        t.dedup();
        Ok(t)
    }

    fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditRecord>> {
        let mut g = self.lock();
        let mut head = g.audit_head;
        let recs = chain_audit(&mut head, events);
        g.audit.extend(recs.iter().cloned());
        g.audit_head = head;
        Ok(recs)
    }

    fn read_audit(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let g = self.lock();
        Ok(g.audit
            .iter()
            .filter(|r| r.seq >= from_seq)
            .take(limit)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    crate::conformance_tests!(Box::new(crate::MemStore::new()));
}
