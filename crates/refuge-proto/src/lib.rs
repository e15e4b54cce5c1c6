//! The wire: code generated from `proto/refuge/v1/refuge.proto`, and the
//! only conversions between its messages and refuge's own types.
//!
//! Nothing outside this crate (and the thin service layers in the node and
//! client that call it) touches generated types; the chunker, store and
//! restore logic work on `refuge_core` types only. Every conversion from
//! the wire validates: ids must be 32 bytes, enums known, names valid.

#![allow(missing_docs)]

pub mod stored;

/// Generated messages, clients and servers.
pub mod pb {
    #![allow(clippy::all, clippy::unwrap_used)]
    tonic::include_proto!("refuge.v1");
}

use refuge_core::{
    ChunkId, ChunkRef, Compression, HostName, SnapshotId, SnapshotRecord, SourceKind, SourceName,
    StoredChunk, TenantId,
};

/// Most ids in one `FindMissing` request.
pub const MAX_FIND_IDS: usize = 8192;
/// Most ids in one `GetChunks` request.
pub const MAX_GET_IDS: usize = 1024;
/// Largest message either side accepts: the largest chunk plus framing.
pub const MAX_MESSAGE_BYTES: usize = refuge_core::format::MAX_CHUNK_LEN as usize + 64 * 1024;
/// Most manifest chunks one snapshot may have.
pub const MAX_MANIFEST_CHUNKS: usize = 100_000;

/// A wire message that does not convert to a valid refuge value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed message: {0}")]
pub struct WireError(pub String);

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(e.0)
    }
}

/// A chunk id from wire bytes.
pub fn chunk_id(bytes: &[u8]) -> Result<ChunkId, WireError> {
    ChunkId::from_slice(bytes).map_err(|e| WireError(e.to_string()))
}

/// Compression from its wire enum value.
pub fn compression(v: i32) -> Result<Compression, WireError> {
    match pb::Compression::try_from(v) {
        Ok(pb::Compression::None) => Ok(Compression::None),
        Ok(pb::Compression::Zstd) => Ok(Compression::Zstd),
        Err(_) => Err(WireError(format!("unknown compression id {v}"))),
    }
}

/// A cipher from its wire value.
pub fn cipher(v: u32) -> Result<refuge_core::Cipher, WireError> {
    u8::try_from(v)
        .ok()
        .and_then(refuge_core::Cipher::from_id)
        .ok_or_else(|| WireError(format!("unknown cipher id {v}")))
}

/// Compression to its wire enum value.
pub fn compression_to(c: Compression) -> i32 {
    match c {
        Compression::None => pb::Compression::None as i32,
        Compression::Zstd => pb::Compression::Zstd as i32,
    }
}

/// Source kind from its wire enum value.
pub fn source_kind(v: i32) -> Result<SourceKind, WireError> {
    match pb::SourceKind::try_from(v) {
        Ok(pb::SourceKind::Tree) => Ok(SourceKind::Tree),
        Ok(pb::SourceKind::Image) => Ok(SourceKind::Image),
        Ok(pb::SourceKind::Postgres) => Ok(SourceKind::Postgres),
        Ok(pb::SourceKind::PostgresWal) => Ok(SourceKind::PostgresWal),
        Ok(pb::SourceKind::Mariadb) => Ok(SourceKind::Mariadb),
        _ => Err(WireError(format!("unknown source kind {v}"))),
    }
}

/// Source kind to its wire enum value.
pub fn source_kind_to(k: SourceKind) -> i32 {
    match k {
        SourceKind::Tree => pb::SourceKind::Tree as i32,
        SourceKind::Image => pb::SourceKind::Image as i32,
        SourceKind::Postgres => pb::SourceKind::Postgres as i32,
        SourceKind::PostgresWal => pb::SourceKind::PostgresWal as i32,
        SourceKind::Mariadb => pb::SourceKind::Mariadb as i32,
    }
}

/// A chunk reference from the wire.
pub fn chunk_ref(r: &pb::ChunkRef) -> Result<ChunkRef, WireError> {
    Ok(ChunkRef {
        id: chunk_id(&r.id)?,
        len: r.len,
    })
}

/// A chunk reference to the wire.
pub fn chunk_ref_to(r: &ChunkRef) -> pb::ChunkRef {
    pb::ChunkRef {
        id: r.id.0.to_vec(),
        len: r.len,
    }
}

/// An uploaded chunk from the wire (content not yet verified).
pub fn upload(u: pb::ChunkUpload) -> Result<(ChunkId, StoredChunk), WireError> {
    Ok((
        chunk_id(&u.id)?,
        StoredChunk {
            compression: compression(u.compression)?,
            cipher: cipher(u.cipher)?,
            raw_len: u.raw_len,
            data: u.data,
        },
    ))
}

/// A chunk to upload.
pub fn upload_to(id: &ChunkId, c: StoredChunk) -> pb::ChunkUpload {
    pb::ChunkUpload {
        id: id.0.to_vec(),
        raw_len: c.raw_len,
        compression: compression_to(c.compression),
        data: c.data,
        cipher: u32::from(c.cipher.id()),
    }
}

/// A downloaded chunk from the wire (content not yet verified).
pub fn chunk_data(d: pb::ChunkData) -> Result<(ChunkId, StoredChunk), WireError> {
    Ok((
        chunk_id(&d.id)?,
        StoredChunk {
            compression: compression(d.compression)?,
            cipher: cipher(d.cipher)?,
            raw_len: d.raw_len,
            data: d.data,
        },
    ))
}

/// A stored chunk to send to a client.
pub fn chunk_data_to(id: &ChunkId, c: StoredChunk) -> pb::ChunkData {
    pb::ChunkData {
        id: id.0.to_vec(),
        raw_len: c.raw_len,
        compression: compression_to(c.compression),
        data: c.data,
        cipher: u32::from(c.cipher.id()),
    }
}

/// A snapshot record to the wire.
pub fn snapshot_to(r: &SnapshotRecord) -> pb::Snapshot {
    pb::Snapshot {
        id: r.id.0.to_vec(),
        tenant: r.tenant.to_string(),
        host: r.host.to_string(),
        source: r.source.to_string(),
        kind: source_kind_to(r.kind),
        time_unix_micros: r.time_micros,
        seq: r.seq,
        manifest: r.manifest.iter().map(chunk_ref_to).collect(),
        files: r.files,
        dirs: r.dirs,
        logical_bytes: r.logical_bytes,
        chunk_refs: r.chunk_refs,
        bytes_uploaded: r.bytes_uploaded,
        warnings: r.warnings,
        duration_micros: r.duration_micros,
    }
}

/// A snapshot record from the wire.
pub fn snapshot(s: pb::Snapshot) -> Result<SnapshotRecord, WireError> {
    let bad = |e: refuge_core::NameError| WireError(e.to_string());
    let id: [u8; 32] =
        s.id.as_slice()
            .try_into()
            .map_err(|_| WireError(format!("snapshot id of {} bytes", s.id.len())))?;
    if s.manifest.len() > MAX_MANIFEST_CHUNKS {
        return Err(WireError("snapshot manifest has too many chunks".into()));
    }
    Ok(SnapshotRecord {
        id: SnapshotId(id),
        tenant: TenantId::new(s.tenant).map_err(bad)?,
        host: HostName::new(s.host).map_err(bad)?,
        source: SourceName::new(s.source).map_err(bad)?,
        kind: source_kind(s.kind)?,
        time_micros: s.time_unix_micros,
        seq: s.seq,
        manifest: s.manifest.iter().map(chunk_ref).collect::<Result<_, _>>()?,
        files: s.files,
        dirs: s.dirs,
        logical_bytes: s.logical_bytes,
        chunk_refs: s.chunk_refs,
        bytes_uploaded: s.bytes_uploaded,
        warnings: s.warnings,
        duration_micros: s.duration_micros,
    })
}

/// A retention policy on the wire (`tenant` and `is_default` are left for
/// the caller).
pub fn policy_to(p: &refuge_core::retention::Policy) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        keep_last: p.keep_last,
        keep_hourly: p.keep_hourly,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_monthly: p.keep_monthly,
        keep_yearly: p.keep_yearly,
        keep_within_secs: p.keep_within_secs,
        ..Default::default()
    }
}

/// The rules of a wire retention policy.
pub fn policy(p: &pb::RetentionPolicy) -> refuge_core::retention::Policy {
    refuge_core::retention::Policy {
        keep_last: p.keep_last,
        keep_hourly: p.keep_hourly,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_monthly: p.keep_monthly,
        keep_yearly: p.keep_yearly,
        keep_within_secs: p.keep_within_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_validate() {
        let data = b"hello".to_vec();
        let id = ChunkId::of(&data);
        let c = refuge_core::compress_chunk(&data, 3);
        let (id2, c2) = upload(upload_to(&id, c.clone())).unwrap();
        assert_eq!((id2, c2), (id, c.clone()));
        let mut bad = upload_to(&id, c);
        bad.id.pop();
        assert!(upload(bad.clone()).unwrap_err().0.contains("32 bytes"));
        bad.id.push(0);
        bad.compression = 42;
        assert!(upload(bad).unwrap_err().0.contains("compression"));
        assert!(source_kind(0).is_err());
        assert_eq!(
            source_kind(source_kind_to(SourceKind::Image)).unwrap(),
            SourceKind::Image
        );
    }
}
