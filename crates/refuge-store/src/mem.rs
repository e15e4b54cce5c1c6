//! An in-memory [`Store`] for unit tests. Not durable, not bounded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use refuge_core::audit::{AuditEvent, AuditRecord};
use refuge_core::{ChunkId, SnapshotId, SnapshotRecord, StoredChunk, TenantId};

use crate::{NewSnapshot, PutOutcome, Result, Store, build_record, chain_audit};

/// In-memory store; every method takes one mutex.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    chunks: HashMap<(TenantId, ChunkId), StoredChunk>,
    snapshots: BTreeMap<(TenantId, u64), SnapshotRecord>,
    seq: u64,
    last_time: i64,
    audit: Vec<AuditRecord>,
    audit_head: (u64, [u8; 32]),
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
    ) -> Result<PutOutcome> {
        let mut g = self.lock();
        let mut out = PutOutcome::default();
        for (id, c) in chunks {
            if let std::collections::hash_map::Entry::Vacant(v) =
                g.chunks.entry((tenant.clone(), *id))
            {
                out.stored += 1;
                out.bytes += c.data.len() as u64;
                v.insert(c.clone());
            }
        }
        Ok(out)
    }

    fn get_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<Option<StoredChunk>> {
        Ok(self.lock().chunks.get(&(tenant.clone(), *id)).cloned())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn commit_snapshot(&self, new: NewSnapshot, now_micros: i64) -> Result<SnapshotRecord> {
        let mut g = self.lock();
        let seq = g.seq + 1;
        let time = now_micros.max(g.last_time.saturating_add(1));
        let rec = build_record(new, seq, time);
        g.seq = seq;
        g.last_time = time;
        g.snapshots.insert((rec.tenant.clone(), seq), rec.clone());
        Ok(rec)
    }

    fn list_snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>> {
        let g = self.lock();
        Ok(g.snapshots
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, r)| r.clone())
            .collect())
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
        let mut t: Vec<TenantId> = g.snapshots.keys().map(|(t, _)| t.clone()).collect();
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
