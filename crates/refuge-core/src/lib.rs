//! refuge's core types and formats, free of I/O frameworks.
//!
//! This crate knows nothing about tokio, gRPC or RocksDB. It defines:
//! chunk ids ([`ChunkId`]), the content-defined [`Chunker`], the chunk frame
//! (compression plus bounded, verified decoding), the manifest stream codec
//! ([`ManifestWriter`], [`ManifestReader`]), identities ([`TenantId`],
//! [`HostName`], [`SourceName`]) and snapshot records. Every byte layout here
//! is described in `docs/format.md`; the version numbers and algorithm ids
//! live in [`format`].

pub mod audit;
mod chunker;
mod codec;
pub mod crypto;
pub mod format;
mod frame;
mod id;
mod manifest;
mod names;
pub mod retention;
mod sm;
mod snapshot;
mod source;

pub use chunker::{Chunk, Chunker, ChunkerParams, Cutter};
pub use frame::{
    ChunkCompressor, Cipher, Compression, FrameError, StoredChunk, compress_chunk, decode_chunk,
    verify_stored,
};
pub use id::{ChunkId, ParseIdError};
pub use manifest::{
    ChunkRef, Entry, EntryKind, ManifestError, ManifestReader, ManifestRecord, ManifestSummary,
    ManifestWriter, validate_entry_path, walk_order,
};
pub use names::{HostName, NameError, SourceName, TenantId};
pub use snapshot::{SnapshotId, SnapshotRecord, format_time_micros, parse_time_micros};
pub use source::{SourceKind, WAL_SOURCE_SUFFIX, base_of_wal, wal_source_of};
