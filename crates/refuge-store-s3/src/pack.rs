//! The pack object: chunk records one after another, then a trailer that
//! names them (byte layout in `docs/format.md`).
//!
//! ```text
//! record 0 | record 1 | ... | entries | count (u32) | BLAKE3 of entries | "RFGPACK1"
//! entry: chunk id (32) | offset (u64) | length (u32)        (44 bytes)
//! ```
//!
//! The node finds a chunk through the catalog's location, never through
//! the trailer; the trailer lets garbage collection see which records a
//! pack holds when it rewrites it, and lets an operator rebuild an index
//! from the bucket alone.

use refuge_core::ChunkId;

/// The last 8 bytes of every pack.
pub const MAGIC: &[u8; 8] = b"RFGPACK1";
const ENTRY_LEN: usize = 44;
const FOOTER_LEN: usize = 4 + 32 + 8;

/// One record of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The chunk.
    pub id: ChunkId,
    /// Where its record starts.
    pub offset: u64,
    /// The record's length.
    pub len: u32,
}

/// A pack being filled: records appended, the trailer written by
/// [`Builder::finish`].
#[derive(Debug, Default)]
pub struct Builder {
    body: Vec<u8>,
    entries: Vec<Entry>,
}

impl Builder {
    /// Appends `record` (a chunk record) for `id`, and says where it went.
    pub fn push(&mut self, id: ChunkId, record: &[u8]) -> Entry {
        let e = Entry {
            id,
            offset: self.body.len() as u64,
            len: record.len() as u32,
        };
        self.body.extend_from_slice(record);
        self.entries.push(e);
        e
    }

    /// Bytes of records so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records pushed, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The whole object: records, then the trailer.
    pub fn finish(mut self) -> (Vec<u8>, Vec<Entry>) {
        let start = self.body.len();
        for e in &self.entries {
            self.body.extend_from_slice(&e.id.0);
            self.body.extend_from_slice(&e.offset.to_le_bytes());
            self.body.extend_from_slice(&e.len.to_le_bytes());
        }
        let sum = blake3::hash(&self.body[start..]);
        self.body
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.body.extend_from_slice(sum.as_bytes());
        self.body.extend_from_slice(MAGIC);
        (self.body, self.entries)
    }
}

/// Reads the trailer of a whole pack object: its records, checked to lie
/// inside the records area.
pub fn entries(pack: &[u8]) -> Result<Vec<Entry>, String> {
    if pack.len() < FOOTER_LEN || &pack[pack.len() - 8..] != MAGIC {
        return Err("not a refuge pack (no trailer)".into());
    }
    let foot = &pack[pack.len() - FOOTER_LEN..];
    let count = u32::from_le_bytes([foot[0], foot[1], foot[2], foot[3]]) as usize;
    let table_len = count
        .checked_mul(ENTRY_LEN)
        .filter(|n| n + FOOTER_LEN <= pack.len())
        .ok_or("the trailer names more records than the pack can hold")?;
    let records_end = pack.len() - FOOTER_LEN - table_len;
    let table = &pack[records_end..records_end + table_len];
    if blake3::hash(table).as_bytes() != &foot[4..36] {
        return Err("the trailer's checksum does not match".into());
    }
    table
        .chunks_exact(ENTRY_LEN)
        .map(|b| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&b[..32]);
            let mut off = [0u8; 8];
            off.copy_from_slice(&b[32..40]);
            let e = Entry {
                id: ChunkId(id),
                offset: u64::from_le_bytes(off),
                len: u32::from_le_bytes([b[40], b[41], b[42], b[43]]),
            };
            match e.offset.checked_add(u64::from(e.len)) {
                Some(end) if end <= records_end as u64 => Ok(e),
                _ => Err(format!("record of chunk {} lies outside the pack", e.id)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_names_its_records_and_a_damaged_trailer_is_refused() {
        let mut b = Builder::default();
        let a = b.push(ChunkId::of(b"a"), b"record-a");
        let c = b.push(ChunkId::of(b"c"), b"record-c-longer");
        assert_eq!(b.len(), 23);
        let (bytes, list) = b.finish();
        assert_eq!(list, vec![a, c]);
        assert_eq!(entries(&bytes).unwrap(), vec![a, c]);
        let at = c.offset as usize;
        assert_eq!(&bytes[at..at + c.len as usize], b"record-c-longer");

        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - FOOTER_LEN - 1] ^= 1;
        assert!(entries(&bad).unwrap_err().contains("checksum"));
        assert!(entries(&bytes[..n - 1]).is_err());
        assert!(entries(b"short").is_err());
        // A count larger than the object.
        let mut big = bytes.clone();
        big[n - FOOTER_LEN..n - FOOTER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(entries(&big).unwrap_err().contains("more records"));
    }

    #[test]
    fn an_empty_pack_has_no_records() {
        let (bytes, list) = Builder::default().finish();
        assert!(list.is_empty());
        assert!(entries(&bytes).unwrap().is_empty());
    }
}
