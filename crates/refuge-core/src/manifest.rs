//! The manifest stream: a snapshot's entries (metadata) and the chunk
//! lists of its files, as a sequence of length-prefixed records.
//!
//! A manifest is written and read as a stream, so neither side ever holds
//! a whole manifest in memory: a file's chunk list is split into runs of at
//! most [`MAX_REFS_PER_RUN`] references. The stream itself is then cut into
//! chunks and stored like file data (see `docs/format.md`).
//!
//! The reader treats its input as hostile: every length is bounded before
//! allocation, every path is checked to stay inside the restore target, and
//! a stream that ends without its trailer is an error, never a short
//! manifest.

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::crypto::TenantKey;

use crate::codec::{Dec, Enc};
use crate::format::{
    HASH_BLAKE3, HASH_BLAKE3_KEYED, HASH_SM3_KEYED, MANIFEST_MAGIC,
    MANIFEST_TAG_SEALED_ENTRY as TAG_SEALED, MANIFEST_VERSION, MAX_CHUNK_LEN, MAX_MANIFEST_RECORD,
    MAX_PATH_LEN, MAX_REFS_PER_RUN,
};
use crate::id::ChunkId;
use crate::source::SourceKind;

use crate::format::{
    ENTRY_DIR, ENTRY_FILE, ENTRY_SYMLINK, MANIFEST_TAG_CHUNKS as TAG_CHUNKS,
    MANIFEST_TAG_END as TAG_END, MANIFEST_TAG_ENTRY as TAG_ENTRY,
};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (or, in an image source, the image).
    File,
    /// A directory.
    Dir,
    /// A symbolic link; its target is in [`Entry::target`].
    Symlink,
}

impl EntryKind {
    fn id(self) -> u8 {
        match self {
            EntryKind::File => ENTRY_FILE,
            EntryKind::Dir => ENTRY_DIR,
            EntryKind::Symlink => ENTRY_SYMLINK,
        }
    }
    fn from_id(id: u8) -> Option<Self> {
        match id {
            ENTRY_FILE => Some(EntryKind::File),
            ENTRY_DIR => Some(EntryKind::Dir),
            ENTRY_SYMLINK => Some(EntryKind::Symlink),
            _ => None,
        }
    }
}

/// One entry of a snapshot: a path relative to the source root and its
/// metadata. A file's chunks follow it as [`ManifestRecord::Chunks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path bytes, `/`-separated; `.` is the source root.
    pub path: Vec<u8>,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Unix permission bits (and type bits, ignored on restore).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds part.
    pub mtime_nanos: u32,
    /// Status change time, seconds (used only to detect unchanged files).
    pub ctime_secs: i64,
    /// Status change time, nanoseconds part.
    pub ctime_nanos: u32,
    /// Inode number at backup time (used only to detect unchanged files).
    pub inode: u64,
    /// File size in bytes (0 for directories, target length for symlinks).
    pub size: u64,
    /// Symlink target bytes (empty otherwise).
    pub target: Vec<u8>,
}

/// A reference to a chunk of file content, in file order.
///
/// The all-zero id is reserved for a *hole*: `len` bytes of zeros that are
/// not stored at all and restored as a sparse region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// The chunk's id, or [`ChunkRef::HOLE`].
    pub id: ChunkId,
    /// Its uncompressed length.
    pub len: u32,
}

impl ChunkRef {
    /// The reserved id of a hole (no BLAKE3 output is all zeros in practice).
    pub const HOLE: ChunkId = ChunkId([0; 32]);

    /// A hole of `len` zero bytes.
    pub fn hole(len: u32) -> Self {
        ChunkRef {
            id: Self::HOLE,
            len,
        }
    }

    /// Whether this reference is a hole rather than a stored chunk.
    pub fn is_hole(&self) -> bool {
        self.id == Self::HOLE
    }
}

/// One record read from a manifest stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRecord {
    /// An entry.
    Entry(Entry),
    /// The next run of chunks of the most recent file entry.
    Chunks(Vec<ChunkRef>),
    /// A sealed entry read without the tenant key (what the node sees):
    /// its kind and size only.
    Sealed {
        /// File, directory or symlink.
        kind: EntryKind,
        /// Its size (files).
        size: u64,
    },
}

/// Totals of a manifest, written in its trailer and checked by readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ManifestSummary {
    /// Entries of any kind.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Chunk references (a chunk used twice counts twice).
    pub chunk_refs: u64,
}

/// A manifest that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The underlying reader or writer failed.
    #[error("manifest I/O: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid manifest.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// An entry path would escape the restore target or is not canonical.
    #[error("unsafe path {path:?} in manifest: {why}")]
    UnsafePath {
        /// The path, lossily decoded.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn malformed(msg: impl Into<String>) -> ManifestError {
    ManifestError::Malformed(msg.into())
}

/// Checks that a manifest path is relative, canonical and safe to join to a
/// restore target: `.` alone, or `/`-separated components that are not
/// empty, `.` or `..`, without NUL bytes, at most 4096 bytes in all.
pub fn validate_entry_path(path: &[u8]) -> Result<(), ManifestError> {
    let bad = |why| ManifestError::UnsafePath {
        path: String::from_utf8_lossy(path).into_owned(),
        why,
    };
    if path == b"." {
        return Ok(());
    }
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad("longer than 4096 bytes"));
    }
    if path.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    if path[0] == b'/' {
        return Err(bad("absolute"));
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return Err(bad("empty component")),
            b"." => return Err(bad("'.' component")),
            b".." => return Err(bad("'..' component")),
            _ => {}
        }
    }
    Ok(())
}

/// Orders manifest paths the way a depth-first walk with sorted siblings
/// visits them: component by component, bytewise. `.` (the root) comes
/// first. Backups use it to merge a walk with the parent snapshot's
/// manifest.
pub fn walk_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    fn comps(p: &[u8]) -> impl Iterator<Item = &[u8]> {
        let p = if p == b"." { &b""[..] } else { p };
        p.split(|&c| c == b'/').filter(|c| !c.is_empty())
    }
    comps(a).cmp(comps(b))
}

/// Tracks the structural rules shared by writer and reader.
#[derive(Default)]
struct Rules {
    summary: ManifestSummary,
    /// Remaining bytes the current file's chunk runs must cover.
    open_file: Option<(Vec<u8>, u64)>,
}

impl Rules {
    fn close_file(&mut self) -> Result<(), ManifestError> {
        if let Some((path, left)) = self.open_file.take()
            && left != 0
        {
            return Err(malformed(format!(
                "chunks of {:?} cover {left} bytes less than its size",
                String::from_utf8_lossy(&path)
            )));
        }
        Ok(())
    }

    fn entry(&mut self, e: &Entry) -> Result<(), ManifestError> {
        self.close_file()?;
        validate_entry_path(&e.path)?;
        if e.target.len() > MAX_PATH_LEN {
            return Err(malformed("symlink target longer than 4096 bytes"));
        }
        if e.kind != EntryKind::Symlink && !e.target.is_empty() {
            return Err(malformed("only symlinks have a target"));
        }
        self.summary.entries += 1;
        match e.kind {
            EntryKind::File => {
                self.summary.files += 1;
                self.summary.logical_bytes = self
                    .summary
                    .logical_bytes
                    .checked_add(e.size)
                    .ok_or_else(|| malformed("total size overflows"))?;
                self.open_file = Some((e.path.clone(), e.size));
            }
            EntryKind::Dir => self.summary.dirs += 1,
            EntryKind::Symlink => {}
        }
        Ok(())
    }

    /// A sealed entry seen without the key: its path and metadata cannot
    /// be checked, its kind and size can.
    fn sealed_entry(&mut self, kind: EntryKind, size: u64) -> Result<(), ManifestError> {
        self.close_file()?;
        self.summary.entries += 1;
        match kind {
            EntryKind::File => {
                self.summary.files += 1;
                self.summary.logical_bytes = self
                    .summary
                    .logical_bytes
                    .checked_add(size)
                    .ok_or_else(|| malformed("total size overflows"))?;
                self.open_file = Some((b"(encrypted entry)".to_vec(), size));
            }
            EntryKind::Dir => self.summary.dirs += 1,
            EntryKind::Symlink => {}
        }
        Ok(())
    }

    fn chunks(&mut self, refs: &[ChunkRef]) -> Result<(), ManifestError> {
        let Some((_, left)) = self.open_file.as_mut() else {
            return Err(malformed("chunk run without a file entry before it"));
        };
        for r in refs {
            if r.len == 0 || r.len > MAX_CHUNK_LEN {
                return Err(malformed(format!("chunk length {} out of range", r.len)));
            }
            *left = left
                .checked_sub(u64::from(r.len))
                .ok_or_else(|| malformed("chunks cover more bytes than the file's size"))?;
        }
        self.summary.chunk_refs += refs.len() as u64;
        Ok(())
    }
}

/// Writes a manifest stream.
pub struct ManifestWriter<W: Write> {
    out: W,
    rules: Rules,
    rec: Enc,
    /// Seals entries when set.
    key: Option<Arc<TenantKey>>,
}

impl<W: Write> ManifestWriter<W> {
    /// Starts a manifest for a source of `kind`, writing the header.
    pub fn new(out: W, kind: SourceKind) -> io::Result<Self> {
        Self::start(out, kind, None)
    }

    /// Starts an encrypted manifest: entries are sealed with `key` (their
    /// kind and size stay readable), chunk runs stay in clear (their ids
    /// are keyed), so the node can check and count references without
    /// the key.
    pub fn new_sealed(out: W, kind: SourceKind, key: Arc<TenantKey>) -> io::Result<Self> {
        Self::start(out, kind, Some(key))
    }

    fn start(mut out: W, kind: SourceKind, key: Option<Arc<TenantKey>>) -> io::Result<Self> {
        let mut h = Enc::default();
        h.raw(MANIFEST_MAGIC)
            .u8(MANIFEST_VERSION)
            .u8(match &key {
                Some(k) => k.suite().hash_id(),
                None => HASH_BLAKE3,
            })
            .u8(kind.id());
        out.write_all(&h.buf)?;
        Ok(ManifestWriter {
            out,
            rules: Rules::default(),
            rec: Enc::default(),
            key,
        })
    }

    fn emit(&mut self, tag: u8) -> io::Result<()> {
        let body = std::mem::take(&mut self.rec.buf);
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&(body.len() as u32).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(&body)?;
        self.rec.buf = body;
        self.rec.buf.clear();
        Ok(())
    }

    /// Adds an entry. A file's chunks must follow with [`Self::add_chunks`]
    /// and cover exactly its size.
    pub fn add_entry(&mut self, e: &Entry) -> Result<(), ManifestError> {
        self.rules.entry(e)?;
        self.rec
            .u8(e.kind.id())
            .u32(e.mode)
            .u32(e.uid)
            .u32(e.gid)
            .i64(e.mtime_secs)
            .u32(e.mtime_nanos)
            .i64(e.ctime_secs)
            .u32(e.ctime_nanos)
            .u64(e.inode)
            .u64(e.size)
            .bytes16(&e.path)
            .bytes16(&e.target);
        match &self.key {
            None => self.emit(TAG_ENTRY)?,
            Some(key) => {
                let plain = std::mem::take(&mut self.rec.buf);
                let mut clear = Enc::default();
                clear.u8(e.kind.id()).u64(e.size);
                let sealed = key.seal_entry(&clear.buf, &plain);
                self.rec.buf = clear.buf;
                self.rec.raw(&sealed);
                self.emit(TAG_SEALED)?;
            }
        }
        Ok(())
    }

    /// Adds chunks of the current file, in order.
    pub fn add_chunks(&mut self, refs: &[ChunkRef]) -> Result<(), ManifestError> {
        self.rules.chunks(refs)?;
        for run in refs.chunks(MAX_REFS_PER_RUN as usize) {
            self.rec.u32(run.len() as u32);
            for r in run {
                self.rec.raw(&r.id.0).u32(r.len);
            }
            self.emit(TAG_CHUNKS)?;
        }
        Ok(())
    }

    /// The underlying writer (for example to flush a checkpoint).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes the trailer and returns the writer and the totals.
    pub fn finish(mut self) -> Result<(W, ManifestSummary), ManifestError> {
        self.rules.close_file()?;
        let s = self.rules.summary;
        self.rec
            .u64(s.entries)
            .u64(s.files)
            .u64(s.dirs)
            .u64(s.logical_bytes)
            .u64(s.chunk_refs);
        self.emit(TAG_END)?;
        self.out.flush()?;
        Ok((self.out, s))
    }
}

/// Reads and validates a manifest stream.
pub struct ManifestReader<R: Read> {
    input: R,
    kind: SourceKind,
    rules: Rules,
    done: bool,
    buf: Vec<u8>,
    /// The header says entries are sealed.
    sealed: bool,
    /// Opens sealed entries when set.
    key: Option<Arc<TenantKey>>,
}

impl<R: Read> ManifestReader<R> {
    /// Reads the header. Sealed entries of an encrypted manifest come out
    /// as [`ManifestRecord::Sealed`].
    pub fn new(input: R) -> Result<Self, ManifestError> {
        Self::open(input, None)
    }

    /// Reads the header; sealed entries are opened with `key` (an error if
    /// they do not open). A plain manifest reads as with [`Self::new`].
    pub fn with_key(input: R, key: Arc<TenantKey>) -> Result<Self, ManifestError> {
        Self::open(input, Some(key))
    }

    fn open(mut input: R, key: Option<Arc<TenantKey>>) -> Result<Self, ManifestError> {
        let mut h = [0u8; 9];
        read_exact_or(&mut input, &mut h, "header")?;
        if &h[..6] != MANIFEST_MAGIC {
            return Err(malformed("not a refuge manifest (bad magic)"));
        }
        if h[6] != MANIFEST_VERSION {
            return Err(malformed(format!("unsupported manifest version {}", h[6])));
        }
        if ![HASH_BLAKE3, HASH_BLAKE3_KEYED, HASH_SM3_KEYED].contains(&h[7]) {
            return Err(malformed(format!("unknown hash algorithm id {}", h[7])));
        }
        let kind = SourceKind::from_id(h[8])
            .ok_or_else(|| malformed(format!("unknown source kind {}", h[8])))?;
        Ok(ManifestReader {
            input,
            kind,
            rules: Rules::default(),
            done: false,
            buf: Vec::new(),
            sealed: h[7] != HASH_BLAKE3,
            key,
        })
    }

    /// Whether entries are sealed (an encrypted tenant's manifest).
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// The source kind from the header.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// Totals so far (complete once [`Self::next_record`] returned `None`).
    pub fn summary(&self) -> ManifestSummary {
        self.rules.summary
    }

    /// The next record, or `None` after a valid trailer.
    pub fn next_record(&mut self) -> Result<Option<ManifestRecord>, ManifestError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        read_exact_or(&mut self.input, &mut head, "record header (no trailer)")?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_MANIFEST_RECORD {
            return Err(malformed(format!(
                "record of {len} bytes exceeds the maximum"
            )));
        }
        self.buf.resize(len as usize, 0);
        read_exact_or(&mut self.input, &mut self.buf, "record body")?;
        let mut d = Dec::new(&self.buf);
        let t = |_| malformed("record shorter than its fields");
        match head[0] {
            TAG_ENTRY if !self.sealed => {
                let e = decode_entry(&self.buf)?;
                self.rules.entry(&e)?;
                Ok(Some(ManifestRecord::Entry(e)))
            }
            TAG_SEALED if self.sealed => {
                let kind_id = d.u8().map_err(t)?;
                let kind = EntryKind::from_id(kind_id)
                    .ok_or_else(|| malformed(format!("unknown entry kind {kind_id}")))?;
                let size = d.u64().map_err(t)?;
                let Some(key) = &self.key else {
                    self.rules.sealed_entry(kind, size)?;
                    return Ok(Some(ManifestRecord::Sealed { kind, size }));
                };
                let plain = key.open_entry(&self.buf[..9], &self.buf[9..]).ok_or_else(|| {
                    malformed("an encrypted entry cannot be opened: the wrong tenant key, or the manifest was altered")
                })?;
                let e = decode_entry(&plain)?;
                if e.kind != kind || e.size != size {
                    return Err(malformed(
                        "an encrypted entry's kind or size differs from its clear copy",
                    ));
                }
                self.rules.entry(&e)?;
                Ok(Some(ManifestRecord::Entry(e)))
            }
            TAG_ENTRY | TAG_SEALED => Err(malformed(if self.sealed {
                "a plain entry in an encrypted manifest"
            } else {
                "an encrypted entry in a plain manifest"
            })),
            TAG_CHUNKS => {
                let n = d.u32().map_err(t)?;
                if n == 0 || n > MAX_REFS_PER_RUN {
                    return Err(malformed(format!("chunk run of {n} references")));
                }
                if d.remaining() != n as usize * 36 {
                    return Err(malformed("chunk run length does not match its count"));
                }
                let mut refs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    refs.push(ChunkRef {
                        id: d.id().map_err(t)?,
                        len: d.u32().map_err(t)?,
                    });
                }
                self.rules.chunks(&refs)?;
                Ok(Some(ManifestRecord::Chunks(refs)))
            }
            TAG_END => {
                self.rules.close_file()?;
                let want = ManifestSummary {
                    entries: d.u64().map_err(t)?,
                    files: d.u64().map_err(t)?,
                    dirs: d.u64().map_err(t)?,
                    logical_bytes: d.u64().map_err(t)?,
                    chunk_refs: d.u64().map_err(t)?,
                };
                if d.remaining() != 0 {
                    return Err(malformed("trailing bytes in the trailer record"));
                }
                if want != self.rules.summary {
                    return Err(malformed("trailer totals do not match the records"));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra)? != 0 {
                    return Err(malformed("bytes after the trailer"));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(malformed(format!("unknown record tag {other}"))),
        }
    }
}

/// Decodes an entry record's body.
fn decode_entry(body: &[u8]) -> Result<Entry, ManifestError> {
    let mut d = Dec::new(body);
    let t = |_| malformed("record shorter than its fields");
    let kind_id = d.u8().map_err(t)?;
    let kind = EntryKind::from_id(kind_id)
        .ok_or_else(|| malformed(format!("unknown entry kind {kind_id}")))?;
    let e = Entry {
        kind,
        mode: d.u32().map_err(t)?,
        uid: d.u32().map_err(t)?,
        gid: d.u32().map_err(t)?,
        mtime_secs: d.i64().map_err(t)?,
        mtime_nanos: d.u32().map_err(t)?,
        ctime_secs: d.i64().map_err(t)?,
        ctime_nanos: d.u32().map_err(t)?,
        inode: d.u64().map_err(t)?,
        size: d.u64().map_err(t)?,
        path: d.bytes16().map_err(t)?.to_vec(),
        target: d.bytes16().map_err(t)?.to_vec(),
    };
    if d.remaining() != 0 {
        return Err(malformed("trailing bytes in entry record"));
    }
    if e.mtime_nanos >= 1_000_000_000 || e.ctime_nanos >= 1_000_000_000 {
        return Err(malformed("mtime nanoseconds out of range"));
    }
    Ok(e)
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), ManifestError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            malformed(format!("stream ends inside the {what}"))
        } else {
            ManifestError::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_key() -> Arc<TenantKey> {
        Arc::new(TenantKey::generate(crate::TenantId::new("finance").unwrap(), "t".into()).unwrap())
    }

    fn sealed_sample(key: &Arc<TenantKey>) -> Vec<u8> {
        let mut w = ManifestWriter::new_sealed(Vec::new(), SourceKind::Tree, key.clone()).unwrap();
        w.add_entry(&Entry {
            kind: EntryKind::Dir,
            size: 0,
            ..file(".", 0)
        })
        .unwrap();
        w.add_entry(&file("payroll-secret.xlsx", 10)).unwrap();
        w.add_chunks(&[ChunkRef {
            id: key.chunk_id(b"x"),
            len: 10,
        }])
        .unwrap();
        w.finish().unwrap().0
    }

    fn all(mut r: ManifestReader<&[u8]>) -> Result<Vec<ManifestRecord>, ManifestError> {
        let mut v = Vec::new();
        while let Some(rec) = r.next_record()? {
            v.push(rec);
        }
        Ok(v)
    }

    #[test]
    fn an_sm_sealed_manifest_names_its_suite_and_reads_back_only_with_its_key() {
        let key = Arc::new(
            TenantKey::generate_with(
                crate::TenantId::new("finance").unwrap(),
                "t".into(),
                crate::crypto::Suite::Sm,
            )
            .unwrap(),
        );
        let buf = sealed_sample(&key);
        assert_eq!(buf[7], crate::format::HASH_SM3_KEYED);
        assert!(!buf.windows(7).any(|w| w == b"payroll"));
        // The node sees it as sealed (an encryption policy accepts it) and
        // counts it without the key.
        let mut r = ManifestReader::new(&buf[..]).unwrap();
        assert!(r.is_sealed());
        while r.next_record().unwrap().is_some() {}
        assert_eq!(r.summary().files, 1);
        let recs = all(ManifestReader::with_key(&buf[..], key.clone()).unwrap()).unwrap();
        assert!(matches!(&recs[1], ManifestRecord::Entry(e) if e.path == b"payroll-secret.xlsx"));
        // A standard key of the same tenant does not open it.
        assert!(all(ManifestReader::with_key(&buf[..], tenant_key()).unwrap()).is_err());
    }

    #[test]
    fn sealed_entries_hide_paths_keep_refs_readable_and_need_the_key() {
        let key = tenant_key();
        let buf = sealed_sample(&key);
        assert!(!buf.windows(7).any(|w| w == b"payroll"));
        // Deterministic: an unchanged manifest seals to the same bytes.
        assert_eq!(sealed_sample(&key), buf);
        // With the key: the entries as written.
        let r = ManifestReader::with_key(&buf[..], key.clone()).unwrap();
        assert!(r.is_sealed());
        let recs = all(r).unwrap();
        assert!(matches!(&recs[1], ManifestRecord::Entry(e) if e.path == b"payroll-secret.xlsx"));
        // Without it (the node): kinds, sizes and refs, and the same totals.
        let mut r = ManifestReader::new(&buf[..]).unwrap();
        let mut recs = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            recs.push(rec);
        }
        assert_eq!(
            recs[1],
            ManifestRecord::Sealed {
                kind: EntryKind::File,
                size: 10
            }
        );
        assert!(matches!(&recs[2], ManifestRecord::Chunks(c) if c.len() == 1));
        assert_eq!(r.summary().files, 1);
        assert_eq!(r.summary().logical_bytes, 10);
        // Another key cannot open it.
        let e = all(ManifestReader::with_key(&buf[..], tenant_key()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("wrong tenant key"), "{e}");
        // The clear size is bound to the sealed entry.
        let mut bad = buf.clone();
        let at = bad
            .windows(1)
            .position(|w| w[0] == crate::format::MANIFEST_TAG_SEALED_ENTRY)
            .unwrap();
        // Second sealed record: the file; its clear size starts 6 bytes in.
        let at2 = at + 5 + u32::from_le_bytes(bad[at + 1..at + 5].try_into().unwrap()) as usize;
        bad[at2 + 6] ^= 1;
        assert!(all(ManifestReader::with_key(&bad[..], key.clone()).unwrap()).is_err());
        // A plain manifest reads the same with or without a key.
        let plain = sample();
        assert_eq!(
            all(ManifestReader::with_key(&plain[..], key).unwrap()).unwrap(),
            all(ManifestReader::new(&plain[..]).unwrap()).unwrap()
        );
    }

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o100644,
            uid: 1000,
            gid: 1000,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
            ctime_secs: 1_700_000_001,
            ctime_nanos: 6,
            inode: 42,
            size,
            target: vec![],
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        w.add_entry(&Entry {
            kind: EntryKind::Dir,
            size: 0,
            ..file(".", 0)
        })
        .unwrap();
        w.add_entry(&file("a", 10)).unwrap();
        w.add_chunks(&[
            ChunkRef {
                id: ChunkId::of(b"1"),
                len: 4,
            },
            ChunkRef {
                id: ChunkId::of(b"2"),
                len: 6,
            },
        ])
        .unwrap();
        w.add_entry(&file("empty", 0)).unwrap();
        w.add_entry(&Entry {
            kind: EntryKind::Symlink,
            target: b"a".to_vec(),
            size: 1,
            ..file("link", 0)
        })
        .unwrap();
        let (buf, s) = w.finish().unwrap();
        assert_eq!(
            s,
            ManifestSummary {
                entries: 4,
                files: 2,
                dirs: 1,
                logical_bytes: 10,
                chunk_refs: 2
            }
        );
        buf
    }

    fn read_all(buf: &[u8]) -> Result<Vec<ManifestRecord>, ManifestError> {
        let mut r = ManifestReader::new(buf)?;
        let mut out = vec![];
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn walk_order_is_depth_first_with_sorted_siblings() {
        use std::cmp::Ordering::*;
        let mut paths: Vec<&[u8]> = vec![b"a.txt", b"a/b", b".", b"a", b"a/b/c", b"b", b"a/a"];
        paths.sort_by(|x, y| walk_order(x, y));
        let want: Vec<&[u8]> = vec![b".", b"a", b"a/a", b"a/b", b"a/b/c", b"a.txt", b"b"];
        assert_eq!(paths, want);
        assert_eq!(walk_order(b"a/b", b"a/b"), Equal);
        assert_eq!(walk_order(b"a", b"a/b"), Less);
        assert_eq!(walk_order(b"a.txt", b"a/zzz"), Greater);
    }

    #[test]
    fn holes_are_references_with_the_reserved_id() {
        let h = ChunkRef::hole(4096);
        assert!(h.is_hole());
        assert!(
            !ChunkRef {
                id: ChunkId::of(b""),
                len: 0
            }
            .is_hole()
        );
    }

    #[test]
    fn round_trip() {
        let recs = read_all(&sample()).unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[1], ManifestRecord::Entry(file("a", 10)));
    }

    #[test]
    fn large_chunk_lists_are_split_into_bounded_runs() {
        let n = MAX_REFS_PER_RUN as usize * 2 + 3;
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Image).unwrap();
        w.add_entry(&file("disk.img", n as u64)).unwrap();
        let refs: Vec<_> = (0..n)
            .map(|i| ChunkRef {
                id: ChunkId::of(&i.to_le_bytes()),
                len: 1,
            })
            .collect();
        w.add_chunks(&refs).unwrap();
        let (buf, _) = w.finish().unwrap();
        let recs = read_all(&buf).unwrap();
        assert_eq!(recs.len(), 4);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let buf = sample();
        for cut in 0..buf.len() {
            assert!(
                read_all(&buf[..cut]).is_err(),
                "truncated at {cut} was accepted"
            );
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert!(read_all(&extra).is_err());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            "a\0b",
        ] {
            assert!(validate_entry_path(bad.as_bytes()).is_err(), "{bad:?}");
        }
        for ok in [".", "a", "a/b", "odd name\n", "..a", "a..", ".hidden"] {
            validate_entry_path(ok.as_bytes()).unwrap();
        }
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        assert!(w.add_entry(&file("../escape", 0)).is_err());
    }

    #[test]
    fn chunk_lists_must_cover_the_file_exactly() {
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        w.add_entry(&file("a", 10)).unwrap();
        w.add_chunks(&[ChunkRef {
            id: ChunkId::of(b"1"),
            len: 4,
        }])
        .unwrap();
        assert!(w.add_entry(&file("b", 0)).is_err());

        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        w.add_entry(&file("a", 3)).unwrap();
        assert!(
            w.add_chunks(&[ChunkRef {
                id: ChunkId::of(b"1"),
                len: 4
            }])
            .is_err()
        );

        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Tree).unwrap();
        assert!(
            w.add_chunks(&[ChunkRef {
                id: ChunkId::of(b"1"),
                len: 4
            }])
            .is_err()
        );
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        let mut buf = sample()[..9].to_vec();
        buf.push(TAG_ENTRY);
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_all(&buf).unwrap_err();
        assert!(err.to_string().contains("exceeds the maximum"), "{err}");
        assert!(read_all(b"NOTMANIFEST").is_err());
    }
}
