//! The conformance suite: behaviour every [`Store`] implementation must
//! show. Run it with [`conformance_tests!`](crate::conformance_tests) in the
//! implementation's tests:
//!
//! ```ignore
//! refuge_store::conformance_tests!(Box::new(MyStore::new_for_tests()));
//! ```

#![allow(clippy::unwrap_used)] // test support: a failed call is a failed test

use refuge_core::{
    ChunkId, ChunkRef, HostName, ManifestSummary, SnapshotId, SourceKind, SourceName, StoredChunk,
    TenantId, compress_chunk,
};

use crate::{GcOutcome, Imported, NewSnapshot, RefCounts, Store, StoreError};

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).expect("valid tenant")
}

fn chunk(content: &[u8]) -> (ChunkId, StoredChunk) {
    (ChunkId::of(content), compress_chunk(content, 3))
}

fn new_snapshot(t: &str, source: &str, manifest: ChunkId) -> NewSnapshot {
    NewSnapshot {
        tenant: tenant(t),
        host: HostName::new("host1").expect("valid host"),
        source: SourceName::new(source).expect("valid source"),
        kind: SourceKind::Tree,
        manifest: vec![ChunkRef {
            id: manifest,
            len: 10,
        }],
        summary: ManifestSummary {
            entries: 2,
            files: 1,
            dirs: 1,
            logical_bytes: 10,
            chunk_refs: 1,
        },
        bytes_uploaded: 5,
        warnings: 0,
        duration_micros: 0,
        refs: RefCounts::new(),
        token: None,
    }
}

/// Missing, then put, then present; scoped to the tenant that put it.
pub fn chunks_are_found_only_by_their_tenant(s: &dyn Store) {
    let a = tenant("alpha");
    let b = tenant("beta");
    let (id1, c1) = chunk(b"first chunk");
    let (id2, c2) = chunk(b"second chunk");
    assert_eq!(s.missing_chunks(&a, &[id1, id2]).unwrap(), vec![0, 1]);
    let out = s.put_chunks(&a, &[(id1, c1.clone())], 1).unwrap();
    assert_eq!(out.stored, 1);
    assert_eq!(out.bytes, c1.data.len() as u64);
    assert_eq!(s.missing_chunks(&a, &[id1, id2]).unwrap(), vec![1]);
    assert_eq!(s.missing_chunks(&b, &[id1, id2]).unwrap(), vec![0, 1]);
    assert_eq!(s.get_chunk(&a, &id1).unwrap(), Some(c1));
    assert_eq!(s.get_chunk(&b, &id1).unwrap(), None);
    assert_eq!(s.get_chunk(&a, &id2).unwrap(), None);
    s.put_chunks(&b, &[(id2, c2)], 1).unwrap();
    assert_eq!(s.missing_chunks(&a, &[id2]).unwrap(), vec![0]);
    assert_eq!(s.missing_chunks(&a, &[]).unwrap(), Vec::<usize>::new());
    assert_eq!(
        s.chunk_lengths(&a, &[id1, id2]).unwrap(),
        vec![Some(b"first chunk".len() as u32), None]
    );
    assert_eq!(s.chunk_lengths(&b, &[id1]).unwrap(), vec![None]);
    // Usage counts each tenant's own chunks only.
    let ua = s.chunk_usage(&a).unwrap();
    assert_eq!(ua.chunks, 1);
    assert_eq!(ua.raw_bytes, b"first chunk".len() as u64);
    assert_eq!(ua.stored_bytes, out.bytes);
    assert_eq!(s.chunk_usage(&b).unwrap().chunks, 1);
    assert_eq!(
        s.chunk_usage(&tenant("gamma")).unwrap(),
        crate::ChunkUsage::default()
    );
}

/// Putting an existing id again stores nothing and never overwrites.
pub fn puts_are_idempotent_and_never_overwrite(s: &dyn Store) {
    let a = tenant("alpha");
    let (id, c) = chunk(b"content");
    assert_eq!(
        s.put_chunks(&a, &[(id, c.clone()), (id, c.clone())], 1)
            .unwrap()
            .stored,
        1
    );
    let other = StoredChunk {
        data: b"different".to_vec(),
        ..c.clone()
    };
    assert_eq!(s.put_chunks(&a, &[(id, other)], 1).unwrap().stored, 0);
    assert_eq!(s.get_chunk(&a, &id).unwrap(), Some(c));
    s.sync().unwrap();
}

/// Commits get increasing sequence numbers and times, even when the clock
/// goes backwards, and are listed and found only by their tenant.
pub fn commits_are_ordered_and_tenant_scoped(s: &dyn Store) {
    let a = tenant("alpha");
    let b = tenant("beta");
    assert!(s.list_snapshots(&a).unwrap().is_empty());
    let m = ChunkId::of(b"manifest");
    let r1 = s
        .commit_snapshot(new_snapshot("alpha", "etc", m), 2_000_000)
        .unwrap();
    // The clock jumps back: the time still increases.
    let r2 = s
        .commit_snapshot(new_snapshot("alpha", "etc", m), 1_000_000)
        .unwrap();
    let r3 = s
        .commit_snapshot(new_snapshot("beta", "etc", m), 3_000_000)
        .unwrap();
    assert!(r2.seq > r1.seq && r3.seq > r2.seq);
    assert!(r2.time_micros > r1.time_micros);
    assert_eq!(r1.time_micros, 2_000_000);
    assert_ne!(r1.id, r2.id);
    assert_eq!(r1.id, r1.compute_id());
    assert_eq!(r1.files, 1);
    assert_eq!(r1.bytes_uploaded, 5);
    let listed = s.list_snapshots(&a).unwrap();
    assert_eq!(listed, vec![r1.clone(), r2.clone()]);
    assert_eq!(s.list_snapshots(&b).unwrap(), vec![r3.clone()]);
    assert_eq!(s.get_snapshot(&a, &r1.id).unwrap(), Some(r1.clone()));
    assert_eq!(s.get_snapshot(&b, &r1.id).unwrap(), None);
    assert_eq!(s.get_snapshot(&a, &r3.id).unwrap(), None);
    assert_eq!(s.get_snapshot(&a, &SnapshotId([9; 32])).unwrap(), None);
}

/// Tenants with snapshots or chunks are listed once each, including names
/// that are prefixes of one another.
pub fn tenants_are_listed_once(s: &dyn Store) {
    assert!(s.list_tenants().unwrap().is_empty());
    let m = ChunkId::of(b"manifest");
    for (t, n) in [("beta", 3), ("alpha", 2), ("alphabet", 1), ("a", 1)] {
        for i in 0..n {
            s.commit_snapshot(new_snapshot(t, "etc", m), 1_000 + i)
                .unwrap();
        }
    }
    let names: Vec<String> = s
        .list_tenants()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    // A tenant with chunks but no snapshot yet is listed too (its chunks
    // are verified), including one whose chunk id is all 0xff bytes.
    s.put_chunks(&tenant("gamma"), &[chunk(b"only a chunk")], 1)
        .unwrap();
    let (_, c) = chunk(b"x");
    s.put_chunks(&tenant("alpha"), &[(ChunkId([0xff; 32]), c)], 1)
        .unwrap();
    let names: Vec<String> = s
        .list_tenants()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let mut want = vec!["a", "alpha", "alphabet", "beta", "gamma"];
    // Implementations may order by key bytes (length-prefixed) or by
    // name; both list each tenant once.
    let mut got = names.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{names:?}");
}

/// The audit log chains, reads back from any point and verifies.
pub fn audit_records_chain_and_read_back(s: &dyn Store) {
    use refuge_core::audit::{AuditEvent, verify_chain};
    assert!(s.read_audit(1, 10).unwrap().is_empty());
    let ev = |n: i64| AuditEvent {
        time_micros: n,
        subject: "agent:db1".into(),
        tenant: "finance".into(),
        event: "snapshot_committed".into(),
        outcome: "ok".into(),
        detail: format!("n={n}"),
    };
    let first = s.append_audit(vec![ev(1), ev(2)]).unwrap();
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    let more = s.append_audit(vec![ev(3)]).unwrap();
    assert_eq!(more[0].seq, 3);
    assert_eq!(more[0].prev_hash, first[1].hash);
    let all = s.read_audit(0, 100).unwrap();
    assert_eq!(all.len(), 3);
    verify_chain(&all, 1, [0; 32]).unwrap();
    let tail = s.read_audit(2, 1).unwrap();
    assert_eq!(tail, vec![all[1].clone()]);
}

/// A commit adds a reference per entry of `refs`, a deletion removes them;
/// a commit naming a chunk the store lacks changes nothing.
pub fn refcounts_follow_commits_and_deletions(s: &dyn Store) {
    let a = tenant("alpha");
    let (ida, ca) = chunk(b"chunk a");
    let (idb, cb) = chunk(b"chunk b");
    let (idc, cc) = chunk(b"chunk c");
    s.put_chunks(&a, &[(ida, ca), (idb, cb), (idc, cc)], 100)
        .unwrap();
    let count = |id: &ChunkId| s.chunk_refcount(&a, id).unwrap();
    let mut n1 = new_snapshot("alpha", "etc", ida);
    n1.refs = [ida, idb, idb].into();
    let s1 = s.commit_snapshot(n1, 1_000).unwrap();
    let mut n2 = new_snapshot("alpha", "etc", idc);
    n2.refs = [idb, idc].into();
    let s2 = s.commit_snapshot(n2, 2_000).unwrap();
    assert_eq!((count(&ida), count(&idb), count(&idc)), (1, 3, 1));

    // A reference to an absent chunk (or another tenant's) is refused.
    let mut bad = new_snapshot("alpha", "etc", idc);
    bad.refs = [idc, ChunkId::of(b"never stored")].into();
    let e = s.commit_snapshot(bad, 3_000).unwrap_err();
    assert!(matches!(e, StoreError::MissingChunk(_)), "{e}");
    let mut other = new_snapshot("beta", "etc", idc);
    other.refs = [idc].into();
    assert!(s.commit_snapshot(other, 3_000).is_err());
    assert_eq!(s.list_snapshots(&a).unwrap().len(), 2);
    assert_eq!(count(&idc), 1);

    assert!(
        s.delete_snapshot(&a, &s1.id, &[ida, idb, idb].into(), 200)
            .unwrap()
    );
    assert_eq!((count(&ida), count(&idb), count(&idc)), (0, 1, 1));
    assert_eq!(s.list_snapshots(&a).unwrap(), vec![s2.clone()]);
    // A second deletion (or another tenant's) finds nothing and subtracts
    // nothing.
    assert!(
        !s.delete_snapshot(&a, &s1.id, &[ida, idb, idb].into(), 200)
            .unwrap()
    );
    assert!(
        !s.delete_snapshot(&tenant("beta"), &s2.id, &[idb].into(), 200)
            .unwrap()
    );
    assert_eq!((count(&idb), count(&idc)), (1, 1));
    assert!(
        s.delete_snapshot(&a, &s2.id, &[idb, idc].into(), 300)
            .unwrap()
    );
    assert_eq!((count(&idb), count(&idc)), (0, 0));
    assert!(s.list_snapshots(&a).unwrap().is_empty());
}

/// Garbage collection deletes exactly the chunks that are unreferenced
/// and untouched since before the cutoff, whatever the order of events.
pub fn gc_deletes_only_old_unreferenced_chunks(s: &dyn Store) {
    let a = tenant("alpha");
    let b = tenant("beta");
    let (kept, ck) = chunk(b"referenced");
    let (freed, cf) = chunk(b"freed by a deletion");
    let (orphan, co) = chunk(b"uploaded, never committed");
    let (touched, ct) = chunk(b"uploaded, then reported present");
    s.put_chunks(
        &a,
        &[(kept, ck.clone()), (freed, cf), (orphan, co.clone())],
        100,
    )
    .unwrap();
    s.put_chunks(&a, &[(touched, ct)], 100).unwrap();
    // The same bytes in another tenant are another chunk.
    s.put_chunks(&b, &[(orphan, co)], 5_000).unwrap();
    let mut n = new_snapshot("alpha", "etc", kept);
    n.refs = [kept, freed].into();
    let snap = s.commit_snapshot(n, 1_000).unwrap();
    let mut n = new_snapshot("alpha", "var", kept);
    n.refs = [kept].into();
    s.commit_snapshot(n, 1_100).unwrap();
    assert!(
        s.delete_snapshot(&a, &snap.id, &[kept, freed].into(), 2_000)
            .unwrap()
    );
    s.touch_chunks(&a, &[touched, kept], 3_000).unwrap();
    let present = |t: &TenantId, id: &ChunkId| s.get_chunk(t, id).unwrap().is_some();

    // Cutoff 1500: only the orphan (unreferenced since 100) goes.
    let mut batches = 0;
    let o = s.collect_garbage(1_500, &mut |_| batches += 1).unwrap();
    assert!(batches >= 1);
    assert_eq!(o.deleted, 1, "{o:?}");
    assert!(o.bytes > 0);
    assert!(!present(&a, &orphan));
    assert!(present(&b, &orphan), "another tenant's copy is untouched");
    assert!(present(&a, &freed) && present(&a, &touched) && present(&a, &kept));
    assert_eq!(s.missing_chunks(&a, &[orphan, kept]).unwrap(), vec![0]);

    // Cutoff 2500: the chunk freed at 2000 goes; the touched one stays.
    let o = s.collect_garbage(2_500, &mut |_| {}).unwrap();
    assert_eq!(o.deleted, 1, "{o:?}");
    assert!(!present(&a, &freed) && present(&a, &touched) && present(&a, &kept));

    // Cutoff far ahead: the touched one and the other tenant's orphan go;
    // the referenced one never.
    let o = s.collect_garbage(1_000_000, &mut |_| {}).unwrap();
    assert_eq!(o.deleted, 2, "{o:?}");
    assert!(!present(&a, &touched) && !present(&b, &orphan) && present(&a, &kept));
    assert_eq!(s.chunk_refcount(&a, &kept).unwrap(), 1);
    // Nothing is left to look at: the work is over the change only.
    let o = s.collect_garbage(1_000_000, &mut |_| {}).unwrap();
    assert_eq!(o, GcOutcome::default());
    // A deleted chunk can be uploaded again.
    let (id, c) = chunk(b"freed by a deletion");
    assert_eq!(s.put_chunks(&a, &[(id, c)], 9_000).unwrap().stored, 1);
}

/// A tenant's collection (a purge's) deletes that tenant's unreferenced
/// chunks only, and never a referenced one; reclaiming space afterwards
/// keeps every live chunk readable.
pub fn tenant_gc_touches_only_its_tenant(s: &dyn Store) {
    let (a, a2, b) = (tenant("alpha"), tenant("alpha2"), tenant("beta"));
    let (kept, ck) = chunk(b"referenced by alpha");
    let (orphan, co) = chunk(b"unreferenced everywhere");
    for t in [&a, &a2, &b] {
        s.put_chunks(t, &[(orphan, co.clone())], 100).unwrap();
    }
    s.put_chunks(&a, &[(kept, ck)], 100).unwrap();
    let mut n = new_snapshot("alpha", "etc", kept);
    n.refs = [kept].into();
    s.commit_snapshot(n, 200).unwrap();
    let o = s
        .collect_tenant_garbage(&a, 1_000_000, &mut |_| {})
        .unwrap();
    assert_eq!(o.deleted, 1, "{o:?}");
    s.reclaim_space().unwrap();
    assert!(s.get_chunk(&a, &orphan).unwrap().is_none());
    assert!(s.get_chunk(&a, &kept).unwrap().is_some());
    for t in [&a2, &b] {
        assert!(
            s.get_chunk(t, &orphan).unwrap().is_some(),
            "{t}'s chunk went"
        );
    }
    // The node-wide collection still finds the others.
    assert_eq!(
        s.collect_garbage(1_000_000, &mut |_| {}).unwrap().deleted,
        2
    );
}

/// A commit or an import takes the chunks it references out of the
/// unreferenced set, and a deletion that frees one puts it back: garbage
/// collection looks only at chunks nothing references.
pub fn references_leave_the_unreferenced_set(s: &dyn Store) {
    let a = tenant("alpha");
    let chunks: Vec<_> = (0..4u8).map(|i| chunk(&[i; 64])).collect();
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    s.put_chunks(&a, &chunks, 100).unwrap();
    let mut n = new_snapshot("alpha", "etc", ids[0]);
    n.refs = [ids[0], ids[1]].into();
    let local = s.commit_snapshot(n, 200).unwrap();
    let mut far = crate::build_record(new_snapshot("alpha", "var", ids[2]), 1, 150);
    far.host = HostName::new("host2").unwrap();
    far.id = far.compute_id();
    assert_eq!(
        s.import_snapshot(&far, &[ids[2]].into()).unwrap(),
        Imported::New
    );
    // A cutoff before every event: nothing goes, and only the chunk no
    // snapshot references is looked at.
    let o = s.collect_garbage(50, &mut |_| {}).unwrap();
    let only_orphan = GcOutcome {
        examined: 1,
        kept_recent: 1,
        ..GcOutcome::default()
    };
    assert_eq!(o, only_orphan);
    // The deletion frees ids[1] (ids[0] too: the manifest is referenced
    // only by the refs the caller passes).
    assert!(
        s.delete_snapshot(&a, &local.id, &[ids[0], ids[1]].into(), 300)
            .unwrap()
    );
    let o = s.collect_garbage(250, &mut |_| {}).unwrap();
    assert_eq!((o.examined, o.deleted, o.kept_recent), (3, 1, 2), "{o:?}");
    let o = s.collect_garbage(1_000, &mut |_| {}).unwrap();
    assert_eq!((o.examined, o.deleted), (2, 2), "{o:?}");
    assert_eq!(s.missing_chunks(&a, &ids).unwrap(), vec![0, 1, 3]);
}

/// A quarantined chunk is no longer found, is listed with its reason,
/// and the next upload of the same id heals it; ids are listed in order.
pub fn quarantine_hides_and_an_upload_heals(s: &dyn Store) {
    let a = tenant("alpha");
    let chunks: Vec<_> = (0..5u8).map(|i| chunk(&[i; 100])).collect();
    s.put_chunks(&a, &chunks, 1).unwrap();
    s.put_chunks(&tenant("beta"), &chunks[..1], 1).unwrap();
    let mut want: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    want.sort_unstable();
    assert_eq!(s.list_chunk_ids(&a, None, 100).unwrap(), want);
    assert_eq!(s.list_chunk_ids(&a, None, 2).unwrap(), want[..2]);
    assert_eq!(
        s.list_chunk_ids(&a, Some(&want[1]), 100).unwrap(),
        want[2..]
    );
    let (bad, c) = chunks[0].clone();
    assert!(s.quarantine_chunk(&a, &bad, "hash mismatch", 7).unwrap());
    assert!(
        !s.quarantine_chunk(&a, &ChunkId::of(b"absent"), "x", 7)
            .unwrap()
    );
    assert_eq!(s.get_chunk(&a, &bad).unwrap(), None);
    assert_eq!(s.missing_chunks(&a, &[bad]).unwrap(), vec![0]);
    assert!(s.is_quarantined(&a, &bad).unwrap());
    assert!(!s.is_quarantined(&tenant("beta"), &bad).unwrap());
    assert!(s.get_chunk(&tenant("beta"), &bad).unwrap().is_some());
    let q = s.list_quarantine(&a).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].id, q[0].time_micros, q[0].reason.as_str()),
        (bad, 7, "hash mismatch")
    );
    let out = s.put_chunks(&a, &[(bad, c)], 9).unwrap();
    assert_eq!((out.stored, out.healed), (1, 1));
    assert!(s.list_quarantine(&a).unwrap().is_empty());
    assert!(s.get_chunk(&a, &bad).unwrap().is_some());
}

/// The checksum of stored bytes is kept; a sealed chunk's id re-uploaded
/// with other bytes is a conflict and changes nothing; plain chunks never
/// conflict (their content was verified, only the compression differs).
pub fn sealed_chunks_keep_their_first_bytes(s: &dyn Store) {
    let a = tenant("alpha");
    let id = ChunkId([7; 32]);
    let sealed = |body: &[u8]| StoredChunk {
        compression: refuge_core::Compression::Zstd,
        cipher: refuge_core::Cipher::XChaCha20Poly1305,
        raw_len: 100,
        data: body.to_vec(),
    };
    let first = sealed(b"first sealed bytes");
    let out = s.put_chunks(&a, &[(id, first.clone())], 1).unwrap();
    assert_eq!((out.stored, out.conflict), (1, None));
    assert_eq!(
        s.chunk_checksum(&a, &id).unwrap(),
        Some(*blake3::hash(&first.data).as_bytes())
    );
    let out = s
        .put_chunks(&a, &[(id, sealed(b"other bytes"))], 2)
        .unwrap();
    assert_eq!((out.stored, out.conflict), (0, Some(id)));
    assert_eq!(s.get_chunk(&a, &id).unwrap(), Some(first.clone()));
    let out = s.put_chunks(&a, &[(id, first)], 3).unwrap();
    assert_eq!(out.conflict, None);
    // Plain: the same content compressed differently is no conflict.
    let (pid, pc) = chunk(b"plain content plain content plain content");
    s.put_chunks(&a, &[(pid, pc.clone())], 1).unwrap();
    let raw = StoredChunk {
        compression: refuge_core::Compression::None,
        cipher: refuge_core::Cipher::None,
        raw_len: pc.raw_len,
        data: b"plain content plain content plain content".to_vec(),
    };
    assert_eq!(s.put_chunks(&a, &[(pid, raw)], 2).unwrap().conflict, None);
    assert_eq!(s.chunk_checksum(&tenant("beta"), &id).unwrap(), None);
}

/// Settings are stored, listed by prefix and removed.
pub fn settings_round_trip(s: &dyn Store) {
    assert_eq!(s.get_setting("retention/alpha").unwrap(), None);
    s.put_setting("retention/alpha", Some(b"one")).unwrap();
    s.put_setting("retention/beta", Some(b"two")).unwrap();
    s.put_setting("pin/alpha/00ff", Some(b"")).unwrap();
    assert_eq!(
        s.get_setting("retention/alpha").unwrap().as_deref(),
        Some(&b"one"[..])
    );
    let names: Vec<String> = s
        .list_settings("retention/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(names, ["retention/alpha", "retention/beta"]);
    s.put_setting("retention/alpha", None).unwrap();
    assert_eq!(s.get_setting("retention/alpha").unwrap(), None);
    assert_eq!(s.list_settings("pin/").unwrap().len(), 1);
}

/// A commit resent with its token is answered with the first snapshot and
/// adds nothing; tokens are per tenant; a token whose snapshot is gone is
/// used again; garbage collection forgets old tokens.
pub fn commit_tokens_make_a_resent_commit_idempotent(s: &dyn Store) {
    let a = tenant("alpha");
    let (id, c) = chunk(b"manifest");
    s.put_chunks(&a, &[(id, c.clone())], 100).unwrap();
    s.put_chunks(&tenant("beta"), &[(id, c)], 100).unwrap();
    let with = |t: &str, token: [u8; 16]| {
        let mut n = new_snapshot(t, "etc", id);
        n.refs = [id].into();
        n.token = Some(token);
        n
    };
    let first = s.commit(with("alpha", [1; 16]), 1_000).unwrap();
    assert!(!first.replayed);
    let again = s.commit(with("alpha", [1; 16]), 2_000).unwrap();
    assert!(again.replayed);
    assert_eq!(again.record, first.record);
    assert_eq!(s.list_snapshots(&a).unwrap().len(), 1);
    assert_eq!(
        s.chunk_refcount(&a, &id).unwrap(),
        1,
        "a replay adds no reference"
    );
    // Another token, or another tenant with the same token, commits.
    assert!(!s.commit(with("alpha", [2; 16]), 3_000).unwrap().replayed);
    let b = s.commit(with("beta", [1; 16]), 3_000).unwrap();
    assert!(!b.replayed);
    assert_eq!(b.record.tenant, tenant("beta"));
    // No token: every commit makes a snapshot.
    let mut plain = new_snapshot("alpha", "etc", id);
    plain.refs = [id].into();
    assert!(!s.commit(plain.clone(), 4_000).unwrap().replayed);
    assert!(!s.commit(plain, 5_000).unwrap().replayed);
    assert_eq!(s.list_snapshots(&a).unwrap().len(), 4);
    // The snapshot of a token removed: the token commits anew.
    assert!(
        s.delete_snapshot(&a, &first.record.id, &[id].into(), 6_000)
            .unwrap()
    );
    let renewed = s.commit(with("alpha", [1; 16]), 7_000).unwrap();
    assert!(!renewed.replayed);
    assert_ne!(renewed.record.seq, first.record.seq);
    assert!(s.commit(with("alpha", [1; 16]), 8_000).unwrap().replayed);
    // Garbage collection a day after forgets the tokens.
    s.collect_garbage(8_000 + crate::COMMIT_TOKEN_KEEP_MICROS + 1, &mut |_| {})
        .unwrap();
    assert!(!s.commit(with("alpha", [1; 16]), 9_000).unwrap().replayed);
}

/// A snapshot another node committed is stored as it is (id, time and
/// sequence number kept), once; it is listed by its time among local
/// ones; it needs its chunks and a matching id; a deleted one never comes
/// back.
pub fn imports_keep_the_record_and_deletions_stay(s: &dyn Store) {
    let a = tenant("alpha");
    let (m, cm) = chunk(b"manifest");
    let (d, cd) = chunk(b"data");
    s.put_chunks(&a, &[(m, cm), (d, cd)], 1).unwrap();
    let mut local = new_snapshot("alpha", "etc", m);
    local.refs = [m, d].into();
    let l1 = s.commit_snapshot(local.clone(), 5_000).unwrap();
    // Made elsewhere: another node's sequence number (colliding with
    // ours) and an older time.
    let mut far = crate::build_record(new_snapshot("alpha", "etc", m), l1.seq, 2_000);
    far.host = HostName::new("host2").unwrap();
    far.id = far.compute_id();
    let refs: RefCounts = [m, d, d].into();
    assert_eq!(s.import_snapshot(&far, &refs).unwrap(), Imported::New);
    assert_eq!(s.import_snapshot(&far, &refs).unwrap(), Imported::Present);
    assert_eq!(s.chunk_refcount(&a, &d).unwrap(), 3);
    assert_eq!(s.get_snapshot(&a, &far.id).unwrap(), Some(far.clone()));
    // Listed by time, not by arrival; the next commit still goes after.
    let l2 = s.commit_snapshot(local, 1_000).unwrap();
    assert!(l2.seq > l1.seq && l2.time_micros > l1.time_micros);
    let ids: Vec<_> = s.list_snapshots(&a).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![far.id, l1.id, l2.id]);

    // Refused: a forged id, a missing chunk (nothing changes either way).
    let mut forged = far.clone();
    forged.time_micros += 1;
    assert!(matches!(
        s.import_snapshot(&forged, &refs).unwrap_err(),
        StoreError::Corrupt(_)
    ));
    let mut lacking = far.clone();
    lacking.time_micros = 3_000;
    lacking.id = lacking.compute_id();
    let e = s
        .import_snapshot(&lacking, &[m, ChunkId::of(b"absent")].into())
        .unwrap_err();
    assert!(matches!(e, StoreError::MissingChunk(_)), "{e}");
    assert_eq!(s.list_snapshots(&a).unwrap().len(), 3);
    assert_eq!(s.get_snapshot(&a, &lacking.id).unwrap(), None);

    // Deleted here: marked, and a peer's copy is not imported again.
    assert_eq!(s.deleted_at(&a, &far.id).unwrap(), None);
    assert!(s.delete_snapshot(&a, &far.id, &refs, 7_000).unwrap());
    assert_eq!(s.deleted_at(&a, &far.id).unwrap(), Some(7_000));
    assert_eq!(s.deleted_at(&tenant("beta"), &far.id).unwrap(), None);
    assert_eq!(s.import_snapshot(&far, &refs).unwrap(), Imported::Deleted);
    assert_eq!(s.get_snapshot(&a, &far.id).unwrap(), None);
    assert_eq!(s.chunk_refcount(&a, &d).unwrap(), 2);
}

/// Generates one `#[test]` per conformance check; `$make` is an expression
/// that creates a fresh, empty store behind a pointer (`Box`, or a guard
/// that derefs to the store and owns its temporary directory). It is
/// evaluated once per test.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        #[test]
        fn conformance_chunks_are_found_only_by_their_tenant() {
            let s = $make;
            $crate::conformance::chunks_are_found_only_by_their_tenant(&*s);
        }
        #[test]
        fn conformance_puts_are_idempotent_and_never_overwrite() {
            let s = $make;
            $crate::conformance::puts_are_idempotent_and_never_overwrite(&*s);
        }
        #[test]
        fn conformance_commits_are_ordered_and_tenant_scoped() {
            let s = $make;
            $crate::conformance::commits_are_ordered_and_tenant_scoped(&*s);
        }
        #[test]
        fn conformance_tenants_are_listed_once() {
            let s = $make;
            $crate::conformance::tenants_are_listed_once(&*s);
        }
        #[test]
        fn conformance_audit_records_chain_and_read_back() {
            let s = $make;
            $crate::conformance::audit_records_chain_and_read_back(&*s);
        }
        #[test]
        fn conformance_refcounts_follow_commits_and_deletions() {
            let s = $make;
            $crate::conformance::refcounts_follow_commits_and_deletions(&*s);
        }
        #[test]
        fn conformance_gc_deletes_only_old_unreferenced_chunks() {
            let s = $make;
            $crate::conformance::gc_deletes_only_old_unreferenced_chunks(&*s);
        }
        #[test]
        fn conformance_tenant_gc_touches_only_its_tenant() {
            let s = $make;
            $crate::conformance::tenant_gc_touches_only_its_tenant(&*s);
        }
        #[test]
        fn conformance_references_leave_the_unreferenced_set() {
            let s = $make;
            $crate::conformance::references_leave_the_unreferenced_set(&*s);
        }
        #[test]
        fn conformance_quarantine_hides_and_an_upload_heals() {
            let s = $make;
            $crate::conformance::quarantine_hides_and_an_upload_heals(&*s);
        }
        #[test]
        fn conformance_sealed_chunks_keep_their_first_bytes() {
            let s = $make;
            $crate::conformance::sealed_chunks_keep_their_first_bytes(&*s);
        }
        #[test]
        fn conformance_commit_tokens_make_a_resent_commit_idempotent() {
            let s = $make;
            $crate::conformance::commit_tokens_make_a_resent_commit_idempotent(&*s);
        }
        #[test]
        fn conformance_imports_keep_the_record_and_deletions_stay() {
            let s = $make;
            $crate::conformance::imports_keep_the_record_and_deletions_stay(&*s);
        }
        #[test]
        fn conformance_settings_round_trip() {
            let s = $make;
            $crate::conformance::settings_round_trip(&*s);
        }
    };
}
