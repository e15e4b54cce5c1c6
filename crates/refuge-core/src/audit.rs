//! The node's audit log: an append-only sequence of records, each chained
//! to the one before by a BLAKE3 hash, so that an edited, inserted or
//! deleted record breaks the chain at a point [`verify_chain`] names.
//!
//! A record's hash is `BLAKE3(prev_hash || body)`, where `body` is its
//! encoding without the hash fields (docs/format.md, "Audit records"). The
//! first record's `prev_hash` is all zeros. The chain proves the order and
//! content of what it holds; a truncation of the newest records is only
//! visible against a head (sequence and hash) noted elsewhere, which
//! `refuge audit verify` prints and can be given back
//! (`--expect-head`).

use crate::codec::{Dec, Enc};
use crate::format::AUDIT_RECORD_VERSION;

/// Longest text field (subject, tenant, event, outcome) in bytes.
pub const MAX_AUDIT_FIELD: usize = 256;
/// Longest detail text in bytes.
pub const MAX_AUDIT_DETAIL: usize = 2048;

/// What happened, before the log assigns its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    /// Node time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// Who: the client's role, name and certificate serial, a peer address
    /// for refused connections, or `node` for the node's own jobs.
    pub subject: String,
    /// The tenant concerned, if any.
    pub tenant: String,
    /// The event, for example `snapshot_committed` or `permission_denied`.
    pub event: String,
    /// `ok`, `denied`, `refused` or `failed`.
    pub outcome: String,
    /// Free text: the RPC, a snapshot id, a reason.
    pub detail: String,
}

/// A record as stored: its event, place and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// What happened.
    pub event: AuditEvent,
    /// Hash of the previous record (zeros for the first).
    pub prev_hash: [u8; 32],
    /// `BLAKE3(prev_hash || body)`.
    pub hash: [u8; 32],
}

/// Why stored audit bytes could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// Bytes do not parse as a record.
    #[error("audit record is malformed: {0}")]
    Malformed(&'static str),
}

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl AuditEvent {
    /// The event with every field cut to its maximum length.
    pub fn clipped(mut self) -> Self {
        for f in [
            &mut self.subject,
            &mut self.tenant,
            &mut self.event,
            &mut self.outcome,
        ] {
            let c = clip(f, MAX_AUDIT_FIELD).to_string();
            *f = c;
        }
        self.detail = clip(&self.detail, MAX_AUDIT_DETAIL).to_string();
        self
    }
}

impl AuditRecord {
    /// The body that the hash covers: version, seq, then the event.
    fn body(seq: u64, e: &AuditEvent) -> Vec<u8> {
        let mut enc = Enc::default();
        enc.u8(AUDIT_RECORD_VERSION)
            .u64(seq)
            .i64(e.time_micros)
            .bytes16(clip(&e.subject, MAX_AUDIT_FIELD).as_bytes())
            .bytes16(clip(&e.tenant, MAX_AUDIT_FIELD).as_bytes())
            .bytes16(clip(&e.event, MAX_AUDIT_FIELD).as_bytes())
            .bytes16(clip(&e.outcome, MAX_AUDIT_FIELD).as_bytes())
            .bytes16(clip(&e.detail, MAX_AUDIT_DETAIL).as_bytes());
        enc.buf
    }

    fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(prev);
        h.update(body);
        *h.finalize().as_bytes()
    }

    /// The record that follows `prev_hash` at `seq`.
    pub fn chain(seq: u64, event: AuditEvent, prev_hash: [u8; 32]) -> Self {
        let event = event.clipped();
        let hash = Self::chain_hash(&prev_hash, &Self::body(seq, &event));
        AuditRecord {
            seq,
            event,
            prev_hash,
            hash,
        }
    }

    /// Whether `hash` matches the content and `prev_hash`.
    pub fn hash_ok(&self) -> bool {
        Self::chain_hash(&self.prev_hash, &Self::body(self.seq, &self.event)) == self.hash
    }

    /// Stored form: body, then prev_hash and hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Self::body(self.seq, &self.event);
        b.extend_from_slice(&self.prev_hash);
        b.extend_from_slice(&self.hash);
        b
    }

    /// Parses the stored form (hashes are not checked here; see
    /// [`verify_chain`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, AuditError> {
        let t = |_| AuditError::Malformed("truncated");
        let mut d = Dec::new(bytes);
        if d.u8().map_err(t)? != AUDIT_RECORD_VERSION {
            return Err(AuditError::Malformed("unknown version"));
        }
        let seq = d.u64().map_err(t)?;
        let time_micros = d.i64().map_err(t)?;
        let mut text = |max: usize| -> Result<String, AuditError> {
            let b = d.bytes16().map_err(t)?;
            if b.len() > max {
                return Err(AuditError::Malformed("field too long"));
            }
            String::from_utf8(b.to_vec()).map_err(|_| AuditError::Malformed("field not UTF-8"))
        };
        let event = AuditEvent {
            time_micros,
            subject: text(MAX_AUDIT_FIELD)?,
            tenant: text(MAX_AUDIT_FIELD)?,
            event: text(MAX_AUDIT_FIELD)?,
            outcome: text(MAX_AUDIT_FIELD)?,
            detail: text(MAX_AUDIT_DETAIL)?,
        };
        let hash = |d: &mut Dec<'_>| -> Result<[u8; 32], AuditError> {
            let s = d.take(32).map_err(t)?;
            let mut a = [0u8; 32];
            a.copy_from_slice(s);
            Ok(a)
        };
        let prev_hash = hash(&mut d)?;
        let h = hash(&mut d)?;
        if d.remaining() != 0 {
            return Err(AuditError::Malformed("trailing bytes"));
        }
        Ok(AuditRecord {
            seq,
            event,
            prev_hash,
            hash: h,
        })
    }
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// Sequence number of the first record that does not fit.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks records read in order, starting after a record with
/// `start_seq - 1` and hash `start_prev` (`1` and zeros for the whole log):
/// sequence numbers without gaps, each `prev_hash` equal to the previous
/// record's hash, each hash matching its content. Returns the first break.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    start_seq: u64,
    start_prev: [u8; 32],
) -> Result<(), ChainBreak> {
    let mut prev = start_prev;
    for (want_seq, r) in (start_seq..).zip(records) {
        let fail = |reason: String| Err(ChainBreak { seq: r.seq, reason });
        if r.seq != want_seq {
            return fail(format!(
                "expected record {want_seq} here: records are missing or out of order"
            ));
        }
        if r.prev_hash != prev {
            return fail("does not follow the previous record (prev_hash differs): a record before it was removed or replaced".into());
        }
        if !r.hash_ok() {
            return fail("content does not match its hash: the record was edited".into());
        }
        prev = r.hash;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u32) -> AuditEvent {
        AuditEvent {
            time_micros: 1_700_000_000_000_000 + i64::from(n),
            subject: format!("agent:db{n}"),
            tenant: "finance".into(),
            event: "snapshot_committed".into(),
            outcome: "ok".into(),
            detail: format!("snapshot {n}"),
        }
    }

    fn log(n: u32) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|i| {
                let r = AuditRecord::chain(u64::from(i), ev(i), prev);
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn a_chain_round_trips_and_verifies() {
        let l = log(5);
        let back: Vec<_> = l
            .iter()
            .map(|r| AuditRecord::decode(&r.encode()).unwrap())
            .collect();
        assert_eq!(back, l);
        verify_chain(&back, 1, [0; 32]).unwrap();
        // A suffix verifies from its predecessor's hash.
        verify_chain(&back[2..], 3, back[1].hash).unwrap();
    }

    #[test]
    fn edits_deletions_and_reorders_are_found() {
        let l = log(5);
        let mut edited = l.clone();
        edited[2].event.outcome = "denied".into();
        let b = verify_chain(&edited, 1, [0; 32]).unwrap_err();
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("edited"), "{b:?}");

        // Re-hashing the edited record does not help: the next one breaks.
        edited[2] = AuditRecord::chain(3, edited[2].event.clone(), l[1].hash);
        assert_eq!(verify_chain(&edited, 1, [0; 32]).unwrap_err().seq, 4);

        let mut deleted = l.clone();
        deleted.remove(1);
        assert_eq!(verify_chain(&deleted, 1, [0; 32]).unwrap_err().seq, 3);

        let mut swapped = l.clone();
        swapped.swap(0, 1);
        assert_eq!(verify_chain(&swapped, 1, [0; 32]).unwrap_err().seq, 2);
    }

    #[test]
    fn long_fields_are_clipped_and_malformed_bytes_refused() {
        let mut e = ev(1);
        e.detail = "é".repeat(MAX_AUDIT_DETAIL);
        let r = AuditRecord::chain(1, e, [0; 32]);
        assert!(r.event.detail.len() <= MAX_AUDIT_DETAIL);
        assert!(r.hash_ok());
        let bytes = r.encode();
        assert_eq!(AuditRecord::decode(&bytes).unwrap(), r);
        assert!(AuditRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut v = bytes.clone();
        v[0] = 99;
        assert_eq!(
            AuditRecord::decode(&v),
            Err(AuditError::Malformed("unknown version"))
        );
        let mut trailing = bytes;
        trailing.push(0);
        assert!(AuditRecord::decode(&trailing).is_err());
    }
}
