//! Chunk bodies kept outside RocksDB, in pack objects: the catalog side of
//! the object-store backend (`refuge-store-s3` holds the objects).
//!
//! A store opened with [`Bodies::Packs`] keeps, in the `chunks` column
//! family, a 20-byte [`Location`] per chunk (pack number, offset, length of
//! its record in the pack) instead of the record itself; everything else
//! (index, reference counts, unreferenced times, quarantine, snapshots,
//! audit) is as in an inline store. Two more column families:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `packs` | `U`, pack number (big-endian) | tenant key: an upload in progress |
//! | `packs` | `P`, pack number (big-endian) | tenant key, chunks (u32), bytes (u64): a stored pack |
//! | `pack_dead` | pack number (big-endian), chunk id | record length (u32): a chunk of the pack no longer used |
//!
//! # Crash safety
//!
//! [`RocksStore::begin_pack`] records the upload (`U`) with a synced write
//! before any byte goes to the bucket. [`RocksStore::place_chunks`], called
//! once the pack is durable in the bucket, replaces `U` by `P` and writes
//! the chunks' locations and index entries in one batch (made durable by
//! the next commit's WAL sync, like any put). A crash before that batch is
//! durable leaves `U`: at the next open [`RocksStore::unfinished_packs`]
//! lists it and the backend deletes the object, so an index entry never
//! points into a pack the bucket may not have, and the bucket keeps no
//! object nothing knows.
//!
//! Garbage collection and quarantine, which remove chunks, write a
//! `pack_dead` entry in the same batch as the removal. A pack whose chunks
//! are all dead is deleted from the bucket, then its records
//! ([`RocksStore::drop_pack`]); a crash between leaves records that the
//! next collection finds again (deleting an absent object succeeds). A
//! pack mostly dead is rewritten: its live chunks go to a new pack
//! ([`RocksStore::relocate`]), after which the old one is all dead.

use std::collections::HashSet;

use refuge_core::{ChunkId, TenantId};
use refuge_store::{PutOutcome, Result, StoreError};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::{
    CF_CHUNK_INDEX, CF_CHUNKS, CF_META, CF_PACK_DEAD, CF_PACKS, CF_QUARANTINE, CF_UNREF,
    RocksStore, err, key, synced, tenant_key,
};

/// Where a store keeps chunk bodies; fixed when the store is created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Bodies {
    /// In RocksDB (its blob files): the `rocksdb` backend.
    #[default]
    Inline,
    /// In pack objects elsewhere; RocksDB keeps their [`Location`]s.
    Packs,
}

impl Bodies {
    /// The `meta` value that records it.
    pub(crate) fn tag(self) -> &'static [u8] {
        match self {
            Bodies::Inline => b"inline",
            Bodies::Packs => b"packs",
        }
    }

    /// How an operator names it (the `[store] backend` it belongs to).
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Bodies::Inline => "chunk bodies inside RocksDB (backend \"rocksdb\")",
            Bodies::Packs => "chunk bodies in pack objects (an object-store backend)",
        }
    }
}

/// Where a chunk's record lies in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// The pack's number (its object name derives from it).
    pub pack: u64,
    /// Offset of the record in the pack object.
    pub offset: u64,
    /// Length of the record (header and body).
    pub len: u32,
}

impl Location {
    /// Encoded length in the `chunks` column family.
    pub const LEN: usize = 20;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&self.pack.to_be_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(v: &[u8]) -> Result<Self> {
        let b: &[u8; Self::LEN] = v.try_into().map_err(|_| {
            StoreError::Corrupt(format!(
                "chunk location is {} bytes, not {}",
                v.len(),
                Self::LEN
            ))
        })?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            a
        };
        Ok(Location {
            pack: u64::from_be_bytes(u64_at(0)),
            offset: u64::from_le_bytes(u64_at(8)),
            len: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
        })
    }
}

/// A chunk's uncompressed length and the checksum of its stored body.
pub type ChunkSum = (u32, Option<[u8; 32]>);

/// A chunk written into a pack, as the catalog records it.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The chunk.
    pub id: ChunkId,
    /// Its uncompressed length.
    pub raw_len: u32,
    /// Length of its stored body (compressed, sealed; without the header).
    pub stored_len: u32,
    /// BLAKE3 of the stored body.
    pub checksum: [u8; 32],
    /// Where its record is.
    pub at: Location,
}

/// A stored pack, or one whose upload began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackInfo {
    /// Its number.
    pub pack: u64,
    /// Whose chunks it holds.
    pub tenant: TenantId,
    /// Records in it (0 for an upload in progress).
    pub chunks: u32,
    /// The bytes of its records, without the trailer (0 for an upload in
    /// progress).
    pub bytes: u64,
}

/// A pack with dead chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackGarbage {
    /// The pack.
    pub info: PackInfo,
    /// How many of its records are dead.
    pub dead_chunks: u32,
    /// Their bytes.
    pub dead_bytes: u64,
}

impl PackGarbage {
    /// Whether nothing in the pack is used any more.
    pub fn all_dead(&self) -> bool {
        self.dead_chunks >= self.info.chunks
    }
}

const UPLOADING: u8 = b'U';
const STORED: u8 = b'P';
const META_PACK_SEQ: &[u8] = b"last_pack";

fn pack_key(kind: u8, pack: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind;
    k[1..].copy_from_slice(&pack.to_be_bytes());
    k
}

fn dead_key(pack: u64, id: &ChunkId) -> Vec<u8> {
    let mut k = pack.to_be_bytes().to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// The tenant named by a tenant key at the start of `v`, and the rest.
fn tenant_of(v: &[u8]) -> Result<(TenantId, &[u8])> {
    let bad = || StoreError::Corrupt("pack record: bad tenant key".into());
    let n = *v.first().ok_or_else(bad)? as usize;
    let name = v.get(1..1 + n).ok_or_else(bad)?;
    let name = std::str::from_utf8(name).map_err(|_| bad())?;
    let t = TenantId::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((t, &v[1 + n..]))
}

/// The pack number in a key of `packs` (after its kind byte, `at` 1) or
/// `pack_dead` (first, `at` 0).
fn pack_number(k: &[u8], at: usize) -> Result<u64> {
    k.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("pack key is short".into()))
}

impl RocksStore {
    fn require_packs(&self) -> Result<()> {
        match self.bodies {
            Bodies::Packs => Ok(()),
            Bodies::Inline => Err(StoreError::Backend(
                "this store keeps chunk bodies inside RocksDB; it has no packs".into(),
            )),
        }
    }

    /// Records that `tenant`'s pack with a new number is about to be
    /// uploaded (synced), and returns the number.
    pub fn begin_pack(&self, tenant: &TenantId) -> Result<u64> {
        self.require_packs()?;
        let mut last = self.packs.lock().unwrap_or_else(|p| p.into_inner());
        let n = *last + 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_PACKS),
            pack_key(UPLOADING, n),
            tenant_key(tenant),
        );
        batch.put_cf(self.cf(CF_META), META_PACK_SEQ, n.to_be_bytes());
        self.db.write_opt(batch, &synced()).map_err(err)?;
        *last = n;
        Ok(n)
    }

    /// The pack number last handed out (at open: from `meta`).
    pub(crate) fn read_last_pack(&self) -> Result<u64> {
        match self
            .db
            .get_cf(self.cf(CF_META), META_PACK_SEQ)
            .map_err(err)?
        {
            Some(v) => crate::u64_of(&v),
            None => Ok(0),
        }
    }

    /// Records `tenant`'s pack `pack`, now durable in the bucket, holding
    /// `chunks` (every record in it) in `bytes` bytes: each chunk not yet
    /// stored gets its location and index entry and is unreferenced as of
    /// `now_micros`; one stored meanwhile (by another pack) is dead here.
    /// Not synced: the next commit makes it durable.
    pub fn place_chunks(
        &self,
        tenant: &TenantId,
        pack: u64,
        chunks: &[Placed],
        bytes: u64,
        now_micros: i64,
    ) -> Result<PutOutcome> {
        self.require_packs()?;
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        let have = self.index_entries(tenant, &ids)?;
        let mut batch = WriteBatch::default();
        let mut out = PutOutcome::default();
        let mut seen = HashSet::new();
        for (c, had) in chunks.iter().zip(have) {
            if had.is_some() || !seen.insert(c.id) {
                batch.put_cf(
                    self.cf(CF_PACK_DEAD),
                    dead_key(pack, &c.id),
                    c.at.len.to_le_bytes(),
                );
                continue;
            }
            let k = key(tenant, &c.id.0);
            if self
                .db
                .get_cf(self.cf(CF_QUARANTINE), &k)
                .map_err(err)?
                .is_some()
            {
                batch.delete_cf(self.cf(CF_QUARANTINE), &k);
                out.healed += 1;
            }
            let mut idx = [0u8; 40];
            idx[..4].copy_from_slice(&c.raw_len.to_le_bytes());
            idx[4..8].copy_from_slice(&c.stored_len.to_le_bytes());
            idx[8..].copy_from_slice(&c.checksum);
            batch.put_cf(self.cf(CF_CHUNKS), &k, c.at.encode());
            batch.put_cf(self.cf(CF_CHUNK_INDEX), &k, idx);
            batch.put_cf(self.cf(CF_UNREF), &k, now_micros.to_le_bytes());
            out.stored += 1;
            out.bytes += u64::from(c.stored_len);
        }
        self.record_stored(&mut batch, tenant, pack, chunks.len() as u32, bytes);
        self.db.write(batch).map_err(err)?;
        Ok(out)
    }

    fn record_stored(
        &self,
        batch: &mut WriteBatch,
        tenant: &TenantId,
        pack: u64,
        chunks: u32,
        bytes: u64,
    ) {
        let mut v = tenant_key(tenant);
        v.extend_from_slice(&chunks.to_le_bytes());
        v.extend_from_slice(&bytes.to_le_bytes());
        batch.delete_cf(self.cf(CF_PACKS), pack_key(UPLOADING, pack));
        batch.put_cf(self.cf(CF_PACKS), pack_key(STORED, pack), v);
    }

    /// Where `tenant`'s chunks `ids` are (`None`: not stored).
    pub fn chunk_locations(
        &self,
        tenant: &TenantId,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<Location>>> {
        self.require_packs()?;
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| key(tenant, &id.0)).collect();
        self.db
            .batched_multi_get_cf(self.cf(CF_CHUNKS), keys.iter(), false)
            .into_iter()
            .map(|v| v.map_err(err)?.map(|v| Location::decode(&v)).transpose())
            .collect()
    }

    /// Packs whose upload began and was never recorded as stored (the
    /// node stopped or the upload failed): their objects may exist and
    /// nothing points into them.
    pub fn unfinished_packs(&self) -> Result<Vec<PackInfo>> {
        self.require_packs()?;
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_PACKS),
            IteratorMode::From(&[UPLOADING], Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(err)?;
            if k.first() != Some(&UPLOADING) {
                break;
            }
            let (tenant, _) = tenant_of(&v)?;
            out.push(PackInfo {
                pack: pack_number(&k, 1)?,
                tenant,
                chunks: 0,
                bytes: 0,
            });
        }
        Ok(out)
    }

    /// Every stored pack (reads all pack records: for checks and tests,
    /// not for a hot path).
    pub fn stored_packs(&self) -> Result<Vec<PackInfo>> {
        self.require_packs()?;
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_PACKS),
            IteratorMode::From(&[STORED], Direction::Forward),
        );
        for item in it {
            let (k, _) = item.map_err(err)?;
            if k.first() != Some(&STORED) {
                break;
            }
            if let Some(p) = self.pack_info(pack_number(&k, 1)?)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Forgets an upload that never completed, once its object is gone.
    pub fn forget_upload(&self, pack: u64) -> Result<()> {
        self.require_packs()?;
        self.db
            .delete_cf_opt(self.cf(CF_PACKS), pack_key(UPLOADING, pack), &synced())
            .map_err(err)
    }

    /// A stored pack's record.
    pub fn pack_info(&self, pack: u64) -> Result<Option<PackInfo>> {
        self.require_packs()?;
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_PACKS), pack_key(STORED, pack))
            .map_err(err)?
        else {
            return Ok(None);
        };
        let (tenant, rest) = tenant_of(&v)?;
        let short = || StoreError::Corrupt(format!("pack {pack}: record is short"));
        let chunks = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(short)?;
        let bytes = rest
            .get(4..12)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(short)?;
        Ok(Some(PackInfo {
            pack,
            tenant,
            chunks,
            bytes,
        }))
    }

    /// Every pack with dead chunks, and how much of it is dead. Reads only
    /// the dead entries: the cost follows what garbage collection and
    /// quarantine removed, not the size of the store.
    pub fn pack_garbage(&self) -> Result<Vec<PackGarbage>> {
        self.require_packs()?;
        let mut out: Vec<PackGarbage> = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut it = self.db.iterator_cf(
                self.cf(CF_PACK_DEAD),
                IteratorMode::From(&from, Direction::Forward),
            );
            let Some(first) = it.next() else { break };
            let (k, _) = first.map_err(err)?;
            let pack = pack_number(&k, 0)?;
            let (mut dead_chunks, mut dead_bytes) = (0u32, 0u64);
            let prefix = pack.to_be_bytes();
            let it = self.db.iterator_cf(
                self.cf(CF_PACK_DEAD),
                IteratorMode::From(&prefix, Direction::Forward),
            );
            for item in it {
                let (k, v) = item.map_err(err)?;
                if !k.starts_with(&prefix) {
                    break;
                }
                dead_chunks += 1;
                dead_bytes += v
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, |b| u64::from(u32::from_le_bytes(b)));
            }
            if let Some(info) = self.pack_info(pack)? {
                out.push(PackGarbage {
                    info,
                    dead_chunks,
                    dead_bytes,
                });
            }
            from = (pack + 1).to_be_bytes().to_vec();
            if pack == u64::MAX {
                break;
            }
        }
        Ok(out)
    }

    /// Removes the records of pack `pack` (every chunk in it dead), once
    /// its object is deleted from the bucket.
    pub fn drop_pack(&self, pack: u64) -> Result<()> {
        self.require_packs()?;
        let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_PACKS), pack_key(STORED, pack));
        let prefix = pack.to_be_bytes();
        let it = self.db.iterator_cf(
            self.cf(CF_PACK_DEAD),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in it {
            let (k, _) = item.map_err(err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            batch.delete_cf(self.cf(CF_PACK_DEAD), k);
        }
        self.db.write_opt(batch, &synced()).map_err(err)
    }

    /// Moves `tenant`'s chunks from pack `from` into pack `to`, durable in
    /// the bucket and holding exactly `moved` in `bytes` bytes (each chunk
    /// with its location in `to`, and where it was in `from`): a chunk
    /// still where it was now points into `to` and is dead in `from`; one
    /// removed or moved meanwhile is dead in `to`. Synced: `from` is
    /// deleted next. Returns how many moved.
    pub fn relocate(
        &self,
        tenant: &TenantId,
        from: u64,
        to: u64,
        moved: &[(ChunkId, Location, Location)],
        bytes: u64,
    ) -> Result<u64> {
        self.require_packs()?;
        let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<ChunkId> = moved.iter().map(|(id, _, _)| *id).collect();
        let now = self.chunk_locations(tenant, &ids)?;
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for ((id, at, was), current) in moved.iter().zip(now) {
            if current.as_ref() == Some(was) && was.pack == from {
                batch.put_cf(self.cf(CF_CHUNKS), key(tenant, &id.0), at.encode());
                batch.put_cf(
                    self.cf(CF_PACK_DEAD),
                    dead_key(from, id),
                    was.len.to_le_bytes(),
                );
                n += 1;
            } else {
                batch.put_cf(
                    self.cf(CF_PACK_DEAD),
                    dead_key(to, id),
                    at.len.to_le_bytes(),
                );
            }
        }
        self.record_stored(&mut batch, tenant, to, moved.len() as u32, bytes);
        self.db.write_opt(batch, &synced()).map_err(err)?;
        Ok(n)
    }

    /// For each of `ids`: `tenant`'s chunk's uncompressed length and the
    /// checksum of its stored body, if it is stored.
    pub fn chunk_sums(&self, tenant: &TenantId, ids: &[ChunkId]) -> Result<Vec<Option<ChunkSum>>> {
        Ok(self
            .index_entries(tenant, ids)?
            .into_iter()
            .map(|e| e.map(|e| (e.raw_len, e.checksum)))
            .collect())
    }

    /// In a packs store: records the chunk at `chunk_key` (about to be
    /// removed in `batch`) as dead in its pack.
    pub(crate) fn mark_dead(&self, batch: &mut WriteBatch, chunk_key: &[u8]) -> Result<()> {
        if self.bodies != Bodies::Packs {
            return Ok(());
        }
        let v = self.db.get_cf(self.cf(CF_CHUNKS), chunk_key).map_err(err)?;
        self.record_dead(batch, chunk_key, v.as_deref())
    }

    /// The `chunks` entries of `keys` when they are pack locations (a
    /// packs store), read in one batch for [`Self::record_dead`]; `None`
    /// for each in an inline store, whose entries are the bodies.
    pub(crate) fn dead_locations(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if self.bodies != Bodies::Packs {
            return Ok(vec![None; keys.len()]);
        }
        self.db
            .batched_multi_get_cf(self.cf(CF_CHUNKS), keys.iter(), false)
            .into_iter()
            .map(|r| Ok(r.map_err(err)?.map(|v| v.to_vec())))
            .collect()
    }

    /// Records the chunk at `chunk_key`, whose `chunks` entry is the pack
    /// location `loc` (none in an inline store), as dead in its pack.
    pub(crate) fn record_dead(
        &self,
        batch: &mut WriteBatch,
        chunk_key: &[u8],
        loc: Option<&[u8]>,
    ) -> Result<()> {
        let Some(v) = loc else {
            return Ok(());
        };
        let at = Location::decode(v)?;
        let id: [u8; 32] = chunk_key
            .get(chunk_key.len().saturating_sub(32)..)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt("chunk key is short".into()))?;
        batch.put_cf(
            self.cf(CF_PACK_DEAD),
            dead_key(at.pack, &ChunkId(id)),
            at.len.to_le_bytes(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RocksOptions;
    use refuge_store::Store;

    fn packs_store() -> (RocksStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let o = RocksOptions {
            bodies: Bodies::Packs,
            ..RocksOptions::default()
        };
        (RocksStore::open(dir.path(), &o).unwrap(), dir)
    }

    fn placed(content: &[u8], pack: u64, offset: u64) -> Placed {
        Placed {
            id: ChunkId::of(content),
            raw_len: content.len() as u32,
            stored_len: content.len() as u32,
            checksum: *blake3::hash(content).as_bytes(),
            at: Location {
                pack,
                offset,
                len: content.len() as u32 + 8,
            },
        }
    }

    #[test]
    fn an_upload_never_recorded_is_listed_until_forgotten() {
        let (s, _d) = packs_store();
        let t = TenantId::new("t").unwrap();
        let a = s.begin_pack(&t).unwrap();
        let b = s.begin_pack(&t).unwrap();
        assert_eq!(b, a + 1);
        let c = placed(b"one", b, 0);
        s.place_chunks(&t, b, std::slice::from_ref(&c), 11, 5)
            .unwrap();
        let open: Vec<u64> = s
            .unfinished_packs()
            .unwrap()
            .iter()
            .map(|p| p.pack)
            .collect();
        assert_eq!(open, vec![a]);
        s.forget_upload(a).unwrap();
        assert!(s.unfinished_packs().unwrap().is_empty());
        assert_eq!(s.chunk_locations(&t, &[c.id]).unwrap(), vec![Some(c.at)]);
        assert_eq!(s.chunk_lengths(&t, &[c.id]).unwrap(), vec![Some(3)]);
    }

    #[test]
    fn a_chunk_stored_twice_is_dead_in_the_second_pack_and_gc_marks_the_first() {
        let (s, _d) = packs_store();
        let t = TenantId::new("t").unwrap();
        let p1 = s.begin_pack(&t).unwrap();
        let c1 = placed(b"same", p1, 0);
        s.place_chunks(&t, p1, std::slice::from_ref(&c1), 12, 5)
            .unwrap();
        let p2 = s.begin_pack(&t).unwrap();
        let c2 = placed(b"same", p2, 0);
        let out = s
            .place_chunks(&t, p2, std::slice::from_ref(&c2), 12, 5)
            .unwrap();
        assert_eq!(out.stored, 0);
        let g = s.pack_garbage().unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].info.pack, p2);
        assert!(g[0].all_dead());
        // Unreferenced since 5: a collection with a later cutoff removes
        // the chunk and marks it dead in its pack.
        s.collect_garbage(10, &mut |_| {}).unwrap();
        let g = s.pack_garbage().unwrap();
        assert_eq!(g.len(), 2);
        assert!(g.iter().all(|g| g.all_dead()));
        s.drop_pack(p1).unwrap();
        s.drop_pack(p2).unwrap();
        assert!(s.pack_garbage().unwrap().is_empty());
        assert_eq!(s.pack_info(p1).unwrap(), None);
    }

    #[test]
    fn relocation_moves_only_chunks_still_where_they_were() {
        let (s, _d) = packs_store();
        let t = TenantId::new("t").unwrap();
        let p1 = s.begin_pack(&t).unwrap();
        let a = placed(b"a-chunk", p1, 0);
        let b = placed(b"b-chunk", p1, 15);
        s.place_chunks(&t, p1, &[a.clone(), b.clone()], 30, 5)
            .unwrap();
        s.quarantine_chunk(&t, &b.id, "test", 6).unwrap();
        let p2 = s.begin_pack(&t).unwrap();
        let a2 = placed(b"a-chunk", p2, 0);
        let b2 = placed(b"b-chunk", p2, 15);
        let n = s
            .relocate(&t, p1, p2, &[(a.id, a2.at, a.at), (b.id, b2.at, b.at)], 30)
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(s.chunk_locations(&t, &[a.id]).unwrap(), vec![Some(a2.at)]);
        let g = s.pack_garbage().unwrap();
        let first = g.iter().find(|g| g.info.pack == p1).unwrap();
        assert!(first.all_dead(), "{first:?}");
        let second = g.iter().find(|g| g.info.pack == p2).unwrap();
        assert_eq!((second.dead_chunks, second.info.chunks), (1, 2));
    }

    #[test]
    fn a_store_keeps_the_bodies_it_was_made_with() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksStore::open(dir.path(), &RocksOptions::default()).unwrap());
        let o = RocksOptions {
            bodies: Bodies::Packs,
            ..RocksOptions::default()
        };
        let e = RocksStore::open(dir.path(), &o).err().unwrap();
        assert!(e.to_string().contains("inside RocksDB"), "{e}");
        let (s, _d) = packs_store();
        let t = TenantId::new("t").unwrap();
        let (id, c) = (ChunkId::of(b"x"), refuge_core::compress_chunk(b"x", 1));
        let e = s.put_chunks(&t, &[(id, c)], 1).unwrap_err();
        assert!(e.to_string().contains("pack"), "{e}");
    }
}
