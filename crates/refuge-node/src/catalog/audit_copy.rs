//! The copies this node keeps of its peers' audit logs (issue 21): a node
//! that pushes to this one sends its audit records after each pass
//! (`work::replicate`), and they are kept here, record for record, so
//! that losing a site loses none of its audit trail.
//!
//! Settings `audit_copy/ORIGIN/SEQ` (20 decimal digits) hold each record
//! exactly as the origin encoded it; `audit_copy_head/ORIGIN` holds the
//! last one's seq (u64 LE) and hash (32 bytes), written after the
//! records. A batch is appended only if it continues the chain from the
//! head (numbered from the next seq, each record's `prev_hash` the hash
//! before it, each record's hash its content's): a copy can be extended,
//! never rewritten, and is checked like the origin's own log. ORIGIN is
//! the name in the pushing node's replica certificate, never a request
//! field.

use refuge_core::audit::{AuditRecord, verify_chain};
use refuge_store::Store;
use tonic::Status;

use crate::floor::store::store_status;

fn record_key(origin: &str, seq: u64) -> String {
    format!("audit_copy/{origin}/{seq:020}")
}

fn head_key(origin: &str) -> String {
    format!("audit_copy_head/{origin}")
}

/// The last record of `origin`'s copy: (seq, hash), `(0, zeros)` if none.
pub(crate) fn head(store: &dyn Store, origin: &str) -> Result<(u64, [u8; 32]), Status> {
    match store.get_setting(&head_key(origin)).map_err(store_status)? {
        None => Ok((0, [0; 32])),
        Some(v) if v.len() == 40 => {
            let seq = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
            Ok((seq, v[8..].try_into().expect("32 bytes")))
        }
        Some(_) => Err(Status::data_loss(format!(
            "the stored head of the audit copy of {origin} is damaged"
        ))),
    }
}

/// Appends `encoded` records to `origin`'s copy if they continue it;
/// returns the new head. The caller serialises appends.
pub(crate) fn append(
    store: &dyn Store,
    origin: &str,
    encoded: &[Vec<u8>],
) -> Result<(u64, [u8; 32]), Status> {
    let (seq, hash) = head(store, origin)?;
    let mut recs = Vec::with_capacity(encoded.len());
    for (i, b) in encoded.iter().enumerate() {
        recs.push(AuditRecord::decode(b).map_err(|e| {
            Status::invalid_argument(format!("audit record {} of the batch: {e}", i + 1))
        })?);
    }
    verify_chain(&recs, seq + 1, hash).map_err(|b| {
        Status::failed_precondition(format!(
            "audit records of {origin}: record {}: {} (the copy holds records 1 to {seq})",
            b.seq, b.reason
        ))
    })?;
    for (r, b) in recs.iter().zip(encoded) {
        store
            .put_setting(&record_key(origin, r.seq), Some(b))
            .map_err(store_status)?;
    }
    let Some(last) = recs.last() else {
        return Ok((seq, hash));
    };
    let mut v = last.seq.to_le_bytes().to_vec();
    v.extend_from_slice(&last.hash);
    store
        .put_setting(&head_key(origin), Some(&v))
        .map_err(store_status)?;
    Ok((last.seq, last.hash))
}

/// Up to `limit` encoded records of `origin`'s copy from `from` on.
pub(crate) fn read(
    store: &dyn Store,
    origin: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<Vec<u8>>, Status> {
    let mut out = Vec::new();
    let mut seq = from.max(1);
    while out.len() < limit {
        match store
            .get_setting(&record_key(origin, seq))
            .map_err(store_status)?
        {
            Some(v) => out.push(v),
            None => break,
        }
        seq += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_core::audit::AuditEvent;
    use refuge_store::MemStore;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let r = AuditRecord::chain(
                    seq,
                    AuditEvent {
                        time_micros: seq as i64,
                        subject: "node".into(),
                        tenant: String::new(),
                        event: "e".into(),
                        outcome: "ok".into(),
                        detail: format!("{seq}"),
                    },
                    prev,
                );
                prev = r.hash;
                r
            })
            .collect()
    }

    fn enc(r: &[AuditRecord]) -> Vec<Vec<u8>> {
        r.iter().map(|r| r.encode()).collect()
    }

    #[test]
    fn a_copy_only_grows_along_the_chain() {
        let s = MemStore::new();
        let all = chain(10);
        assert_eq!(head(&s, "city").unwrap().0, 0);
        assert_eq!(append(&s, "city", &enc(&all[..4])).unwrap().0, 4);
        // A gap, a repeat and a rewrite are refused; nothing changes.
        for bad in [enc(&all[5..7]), enc(&all[2..6]), {
            let mut other = chain(6);
            other[4].event.detail = "rewritten".into();
            enc(&other[4..6])
        }] {
            let e = append(&s, "city", &bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
            assert_eq!(head(&s, "city").unwrap().0, 4);
        }
        assert_eq!(append(&s, "city", &enc(&all[4..])).unwrap().0, 10);
        let back = read(&s, "city", 1, 100).unwrap();
        assert_eq!(back, enc(&all));
        assert_eq!(read(&s, "city", 9, 100).unwrap().len(), 2);
        // Another origin is another copy.
        assert!(read(&s, "prov", 1, 100).unwrap().is_empty());
        // Garbage is refused as such.
        let e = append(&s, "city", &[vec![1, 2, 3]]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
