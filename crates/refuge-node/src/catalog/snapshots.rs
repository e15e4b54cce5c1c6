//! Snapshot queries: listing with filters, resolving what an operator
//! typed (`latest`, an id prefix, a time) to one snapshot, and what a
//! snapshot references.

use refuge_core::{ManifestReader, ManifestRecord, SnapshotRecord, TenantId};
use refuge_store::{RefCounts, Store};
use tonic::Status;

use crate::floor::store::{StoredStream, store_status};

/// Snapshots of `tenants` matching the optional filters (empty: any),
/// oldest first within each tenant.
pub(crate) fn filtered(
    store: &dyn Store,
    tenants: &[TenantId],
    host: &str,
    source: &str,
) -> Result<Vec<SnapshotRecord>, Status> {
    let mut out = Vec::new();
    for t in tenants {
        out.extend(
            store
                .list_snapshots(t)
                .map_err(store_status)?
                .into_iter()
                .filter(|s| host.is_empty() || s.host.as_str() == host)
                .filter(|s| source.is_empty() || s.source.as_str() == source),
        );
    }
    Ok(out)
}

/// Which snapshot a request means.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pick<'a> {
    /// `latest`, or a snapshot id or a prefix of one (hex).
    pub(crate) selector: &'a str,
    /// When not 0: the newest snapshot at or before this node time (µs);
    /// the selector is then ignored.
    pub(crate) at_micros: i64,
    /// The host filter the candidates were listed with (for messages).
    pub(crate) host: &'a str,
    /// The source filter the candidates were listed with (for messages).
    pub(crate) source: &'a str,
}

/// The one snapshot of `snaps` (in commit order) that `pick` means; an
/// ambiguous or unknown choice is an error that says what to add.
pub(crate) fn resolve(
    snaps: Vec<SnapshotRecord>,
    pick: &Pick<'_>,
) -> Result<SnapshotRecord, Status> {
    let one_source = |cands: &[SnapshotRecord], what: &str| -> Result<(), Status> {
        if let Some(first) = cands.first()
            && cands
                .iter()
                .any(|s| s.host != first.host || s.source != first.source)
        {
            return Err(Status::failed_precondition(format!(
                "{what} is ambiguous: snapshots of several hosts or sources match; pass --host and --source"
            )));
        }
        Ok(())
    };
    let filter = || {
        let mut f = String::new();
        if !pick.host.is_empty() {
            f.push_str(&format!(" for host {}", pick.host));
        }
        if !pick.source.is_empty() {
            f.push_str(&format!(" for source {}", pick.source));
        }
        f
    };
    if pick.at_micros != 0 {
        let cands: Vec<_> = snaps
            .into_iter()
            .filter(|s| s.time_micros <= pick.at_micros)
            .collect();
        one_source(&cands, "--at")?;
        return cands.into_iter().last().ok_or_else(|| {
            Status::not_found(format!(
                "no snapshot at or before {}{}",
                refuge_core::format_time_micros(pick.at_micros),
                filter()
            ))
        });
    }
    let sel = pick.selector.trim().to_ascii_lowercase();
    if sel == "latest" {
        one_source(&snaps, "latest")?;
        return snaps
            .into_iter()
            .last()
            .ok_or_else(|| Status::not_found(format!("no snapshots{}", filter())));
    }
    if sel.is_empty() || sel.len() > 64 || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a snapshot id, id prefix or \"latest\"",
            pick.selector
        )));
    }
    let mut matches: Vec<_> = snaps
        .into_iter()
        .filter(|s| s.id.to_hex().starts_with(&sel))
        .collect();
    match matches.len() {
        0 => Err(Status::not_found(format!(
            "no snapshot with id {sel}{}",
            filter()
        ))),
        1 => Ok(matches.remove(0)),
        n => Err(Status::failed_precondition(format!(
            "id prefix {sel} is ambiguous: it matches {n} snapshots; give more characters"
        ))),
    }
}

/// Every stored chunk `rec` references, as its commit counted them: its
/// manifest chunks and the data chunks its manifest names, holes
/// excepted. A manifest that cannot be read is DATA_LOSS, naming the
/// snapshot.
pub(crate) fn snapshot_refs(store: &dyn Store, rec: &SnapshotRecord) -> Result<RefCounts, Status> {
    let mut refs: RefCounts = rec.manifest.iter().map(|r| r.id).collect();
    let stream = StoredStream::new(store, &rec.tenant, &rec.manifest);
    let bad = |e: String| {
        Status::data_loss(format!(
            "snapshot {} cannot be removed: its manifest cannot be read ({e}); nothing was changed for it",
            rec.id.short()
        ))
    };
    let mut reader = ManifestReader::new(stream).map_err(|e| bad(e.to_string()))?;
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(ManifestRecord::Entry(_) | ManifestRecord::Sealed { .. })) => {}
            Ok(Some(ManifestRecord::Chunks(rs))) => {
                for r in rs.iter().filter(|r| !r.is_hole()) {
                    refs.add(r.id);
                }
            }
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_core::{HostName, SnapshotId, SourceKind, SourceName};
    use tonic::Code;

    fn snap(host: &str, source: &str, seq: u64, time: i64) -> SnapshotRecord {
        let mut r = SnapshotRecord {
            id: SnapshotId([0; 32]),
            tenant: TenantId::new("t").unwrap(),
            host: HostName::new(host).unwrap(),
            source: SourceName::new(source).unwrap(),
            kind: SourceKind::Tree,
            time_micros: time,
            seq,
            manifest: Vec::new(),
            files: 0,
            dirs: 0,
            logical_bytes: 0,
            chunk_refs: 0,
            bytes_uploaded: 0,
            warnings: 0,
            duration_micros: 0,
        };
        r.id = r.compute_id();
        r
    }

    fn pick(selector: &str) -> Pick<'_> {
        Pick {
            selector,
            ..Pick::default()
        }
    }

    #[test]
    fn latest_and_at_pick_the_newest_in_time_and_refuse_several_sources() {
        let one = vec![
            snap("h", "s", 1, 10),
            snap("h", "s", 2, 20),
            snap("h", "s", 3, 30),
        ];
        assert_eq!(resolve(one.clone(), &pick("LATEST")).unwrap().seq, 3);
        let at = Pick {
            at_micros: 25,
            ..pick("ignored")
        };
        assert_eq!(resolve(one.clone(), &at).unwrap().seq, 2);
        let before = Pick {
            at_micros: 5,
            host: "h",
            ..pick("")
        };
        let e = resolve(one, &before).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("for host h"), "{}", e.message());

        let two = vec![snap("h", "s", 1, 10), snap("h", "other", 2, 20)];
        let e = resolve(two, &pick("latest")).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("--host and --source"));
        assert_eq!(
            resolve(vec![], &pick("latest")).unwrap_err().code(),
            Code::NotFound
        );
    }

    #[test]
    fn id_prefixes_match_one_snapshot_or_say_what_is_wrong() {
        let snaps: Vec<_> = (1..=40).map(|i| snap("h", "s", i, i as i64)).collect();
        let want = &snaps[7];
        let full = want.id.to_hex();
        assert_eq!(resolve(snaps.clone(), &pick(&full)).unwrap().seq, want.seq);
        assert_eq!(
            resolve(snaps.clone(), &pick(&full[..12].to_uppercase()))
                .unwrap()
                .seq,
            want.seq
        );
        // One hex digit matches several of 40 ids.
        let first = &full[..1];
        let e = resolve(snaps.clone(), &pick(first)).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("ambiguous"));
        for bad in ["", "xyz", &"a".repeat(65)] {
            let e = resolve(snaps.clone(), &pick(bad)).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        }
        let absent = if full.starts_with('0') {
            "f".repeat(64)
        } else {
            "0".repeat(64)
        };
        assert_eq!(
            resolve(snaps, &pick(&absent)).unwrap_err().code(),
            Code::NotFound
        );
    }
}
