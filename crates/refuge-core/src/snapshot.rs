//! Snapshot catalog records and the node-assigned time.

use std::fmt;

use crate::codec::{Dec, Enc};
use crate::format::{
    HASH_BLAKE3, SNAPSHOT_ID_DOMAIN, SNAPSHOT_RECORD_VERSION, SNAPSHOT_RECORD_VERSION_2,
};
use crate::manifest::ChunkRef;
use crate::names::{HostName, SourceName, TenantId};
use crate::source::SourceKind;

/// A snapshot's id: BLAKE3 over its identifying fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub [u8; 32]);

impl SnapshotId {
    /// 64 hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The first 8 hex characters, as shown in tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.short())
    }
}

/// A committed snapshot, as kept in the node's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Derived from the other identifying fields.
    pub id: SnapshotId,
    /// Owner, from the committing client's certificate.
    pub tenant: TenantId,
    /// Source host, from the committing client's certificate.
    pub host: HostName,
    /// Source name from the agent's configuration.
    pub source: SourceName,
    /// Tree or image.
    pub kind: SourceKind,
    /// Node-assigned commit time, microseconds since the Unix epoch;
    /// strictly increasing in commit order.
    pub time_micros: i64,
    /// Node-assigned commit sequence number, strictly increasing.
    pub seq: u64,
    /// The manifest stream's chunks, in order.
    pub manifest: Vec<ChunkRef>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Chunk references in the manifest.
    pub chunk_refs: u64,
    /// Compressed bytes the agent uploaded for this snapshot (reported).
    pub bytes_uploaded: u64,
    /// Warnings during the walk (unreadable or vanished files; reported).
    pub warnings: u64,
    /// How long the backup took, µs, as its agent measured it (reported;
    /// 0 when not known, as in records of version 1).
    pub duration_micros: u64,
}

impl SnapshotRecord {
    /// The id a record with these fields has.
    pub fn compute_id(&self) -> SnapshotId {
        let mut h = blake3::Hasher::new();
        h.update(SNAPSHOT_ID_DOMAIN);
        for s in [
            self.tenant.as_str(),
            self.host.as_str(),
            self.source.as_str(),
        ] {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(&self.seq.to_le_bytes());
        h.update(&self.time_micros.to_le_bytes());
        for r in &self.manifest {
            h.update(&r.id.0);
            h.update(&r.len.to_le_bytes());
        }
        SnapshotId(*h.finalize().as_bytes())
    }

    /// The catalog record bytes (docs/format.md, "Snapshot record").
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u8(SNAPSHOT_RECORD_VERSION_2)
            .u8(HASH_BLAKE3)
            .raw(&self.id.0)
            .bytes16(self.tenant.as_str().as_bytes())
            .bytes16(self.host.as_str().as_bytes())
            .bytes16(self.source.as_str().as_bytes())
            .u8(self.kind.id())
            .i64(self.time_micros)
            .u64(self.seq)
            .u64(self.files)
            .u64(self.dirs)
            .u64(self.logical_bytes)
            .u64(self.chunk_refs)
            .u64(self.bytes_uploaded)
            .u64(self.warnings)
            .u64(self.duration_micros)
            .u32(self.manifest.len() as u32);
        for r in &self.manifest {
            e.raw(&r.id.0).u32(r.len);
        }
        e.buf
    }

    /// Parses a catalog record.
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        let mut d = Dec::new(buf);
        let t = |_| "snapshot record is truncated".to_string();
        let v = d.u8().map_err(t)?;
        if v != SNAPSHOT_RECORD_VERSION && v != SNAPSHOT_RECORD_VERSION_2 {
            return Err(format!("unsupported snapshot record version {v}"));
        }
        let alg = d.u8().map_err(t)?;
        if alg != HASH_BLAKE3 {
            return Err(format!("unknown snapshot id hash algorithm {alg}"));
        }
        let id = SnapshotId(d.id().map_err(t)?.0);
        let name = |d: &mut Dec<'_>| -> Result<String, String> {
            String::from_utf8(d.bytes16().map_err(t)?.to_vec())
                .map_err(|_| "name is not UTF-8".to_string())
        };
        let tenant = TenantId::new(name(&mut d)?).map_err(|e| e.to_string())?;
        let host = HostName::new(name(&mut d)?).map_err(|e| e.to_string())?;
        let source = SourceName::new(name(&mut d)?).map_err(|e| e.to_string())?;
        let kind_id = d.u8().map_err(t)?;
        let kind = SourceKind::from_id(kind_id).ok_or(format!("unknown source kind {kind_id}"))?;
        let time_micros = d.i64().map_err(t)?;
        let seq = d.u64().map_err(t)?;
        let files = d.u64().map_err(t)?;
        let dirs = d.u64().map_err(t)?;
        let logical_bytes = d.u64().map_err(t)?;
        let chunk_refs = d.u64().map_err(t)?;
        let bytes_uploaded = d.u64().map_err(t)?;
        let warnings = d.u64().map_err(t)?;
        let duration_micros = if v == SNAPSHOT_RECORD_VERSION_2 {
            d.u64().map_err(t)?
        } else {
            0
        };
        let n = d.u32().map_err(t)? as usize;
        if d.remaining() != n * 36 {
            return Err("snapshot record manifest list does not match its count".into());
        }
        let mut manifest = Vec::with_capacity(n);
        for _ in 0..n {
            manifest.push(ChunkRef {
                id: d.id().map_err(t)?,
                len: d.u32().map_err(t)?,
            });
        }
        let rec = SnapshotRecord {
            id,
            tenant,
            host,
            source,
            kind,
            time_micros,
            seq,
            manifest,
            files,
            dirs,
            logical_bytes,
            chunk_refs,
            bytes_uploaded,
            warnings,
            duration_micros,
        };
        if rec.compute_id() != rec.id {
            return Err(format!(
                "snapshot record {} does not match its id (corrupt)",
                rec.id.short()
            ));
        }
        Ok(rec)
    }
}

/// RFC 3339 text (UTC, microseconds) for a time in microseconds.
pub fn format_time_micros(micros: i64) -> String {
    let nanos = i128::from(micros) * 1000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| micros.to_string()),
        Err(_) => micros.to_string(),
    }
}

/// Parses RFC 3339 text into microseconds since the Unix epoch.
pub fn parse_time_micros(text: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time (like 2026-11-22T10:00:00Z): {e}")
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;

    #[test]
    fn record_round_trip_and_id() {
        let mut r = SnapshotRecord {
            id: SnapshotId([0; 32]),
            tenant: TenantId::new("finance").unwrap(),
            host: HostName::new("db1").unwrap(),
            source: SourceName::new("pg").unwrap(),
            kind: SourceKind::Tree,
            time_micros: 1_700_000_000_000_000,
            seq: 7,
            manifest: vec![ChunkRef {
                id: ChunkId::of(b"m"),
                len: 100,
            }],
            files: 3,
            dirs: 1,
            logical_bytes: 99,
            chunk_refs: 4,
            bytes_uploaded: 50,
            warnings: 0,
            duration_micros: 1_500_000,
        };
        r.id = r.compute_id();
        let buf = r.encode();
        assert_eq!(buf[0], SNAPSHOT_RECORD_VERSION_2);
        assert_eq!(SnapshotRecord::decode(&buf).unwrap(), r);
        // A version 1 record (no duration) still reads, with duration 0.
        let mut v1 = buf.clone();
        v1[0] = SNAPSHOT_RECORD_VERSION;
        let at = v1.len() - 4 - 36 * r.manifest.len() - 8;
        v1.drain(at..at + 8);
        let old = SnapshotRecord::decode(&v1).unwrap();
        assert_eq!(old.duration_micros, 0);
        assert_eq!(old.warnings, r.warnings);
        assert_eq!(old.id, r.id);
        // A changed field no longer matches the id.
        let mut tampered = r.clone();
        tampered.time_micros += 1;
        let e = SnapshotRecord::decode(&tampered.encode()).unwrap_err();
        assert!(e.contains("does not match its id"), "{e}");
        for cut in 0..buf.len() {
            assert!(SnapshotRecord::decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn times_parse_and_format() {
        let t = parse_time_micros("2026-11-22T10:00:00.5Z").unwrap();
        assert_eq!(format_time_micros(t), "2026-11-22T10:00:00.5Z");
        assert!(
            parse_time_micros("yesterday")
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
