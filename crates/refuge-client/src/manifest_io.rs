//! What the backups of every kind share to write and read manifests: an
//! entry from a file's metadata, and a manifest writer or reader that
//! seals or opens entries when there is a tenant key.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use refuge_core::crypto::TenantKey;
use refuge_core::{Entry, EntryKind, ManifestError, ManifestReader, ManifestWriter, SourceKind};

/// The entry for a file system object at `path` (size and symlink target
/// left for the caller) with `md`'s mode, owner, times and inode.
pub(crate) fn base_entry(path: Vec<u8>, kind: EntryKind, md: &std::fs::Metadata) -> Entry {
    Entry {
        path,
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime_secs: md.mtime(),
        mtime_nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        ctime_secs: md.ctime(),
        ctime_nanos: md.ctime_nsec().clamp(0, 999_999_999) as u32,
        inode: md.ino(),
        size: 0,
        target: Vec::new(),
    }
}

/// A manifest writer that seals entries when there is a key.
pub(crate) fn manifest_writer<W: Write>(
    out: W,
    kind: SourceKind,
    key: &Option<Arc<TenantKey>>,
) -> Result<ManifestWriter<W>, std::io::Error> {
    match key {
        Some(k) => ManifestWriter::new_sealed(out, kind, k.clone()),
        None => ManifestWriter::new(out, kind),
    }
}

/// A manifest reader that opens sealed entries when there is a key.
pub(crate) fn manifest_reader<R: Read>(
    input: R,
    key: &Option<Arc<TenantKey>>,
) -> Result<ManifestReader<R>, ManifestError> {
    match key {
        Some(k) => ManifestReader::with_key(input, k.clone()),
        None => ManifestReader::new(input),
    }
}
