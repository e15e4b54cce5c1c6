//! One file's bytes into its chunk list: read in full and cut with
//! FastCDC ([`chunk_file`]), or compared with the parent snapshot's chunk
//! list for the same file and cut only where it changed
//! ([`chunk_against_parent`], the block delta).
//!
//! The block delta walks the file and the parent's list together. While
//! the file's position is one of the parent's cut points, the parent's
//! next chunk is checked in place: its bytes are read and hashed (with
//! the parent chunks after it, up to 64 or 4 MiB at a time, on every
//! core; a hole is checked with `SEEK_DATA` and not read at all), and if
//! the id is the same the parent's ref is reused: nothing is cut,
//! compressed, asked about or sent. At the first chunk that differs, FastCDC cuts from that
//! boundary on, exactly as a full read would, until one of its cuts lands
//! on a parent cut point again; from there the parent's chunks are
//! checked once more. So a disk image or a database file with pages
//! changed in place costs a read and a hash of the unchanged part, and
//! the chunk list is the one a full read would make (same parameters).
//! Every reused ref is the id of the bytes just read: no timestamp,
//! fingerprint cache or agent state is trusted.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::anyhow;
use refuge_core::{ChunkId, ChunkRef, Chunker, ChunkerParams, Cutter, ManifestWriter};

use crate::backup_report::BackupReport;
use crate::progress::Progress;
use crate::upload::Uploader;

/// Chunk refs kept in memory per file before the list spills to a
/// temporary file (36 bytes each: 2.25 MiB; a 1 MiB-average file of
/// 64 GiB).
pub(crate) const REFS_IN_MEMORY: usize = 1 << 16;

/// A file's chunk list while it is read. The manifest entry (which carries
/// the size) precedes the refs, and the size is known only at the end of
/// the file, so the refs wait here: in memory up to `limit`, beyond it in
/// an unnamed temporary file, so that memory does not grow with the size
/// of a file or image.
pub(crate) struct RefList {
    mem: Vec<ChunkRef>,
    spill: Option<BufWriter<File>>,
    pub(crate) spilled: u64,
    limit: usize,
}

impl RefList {
    pub(crate) fn new(limit: usize) -> Self {
        RefList {
            mem: Vec::new(),
            spill: None,
            spilled: 0,
            limit: limit.max(1),
        }
    }

    pub(crate) fn push(&mut self, r: ChunkRef) -> std::io::Result<()> {
        self.mem.push(r);
        if self.mem.len() >= self.limit {
            let w = match &mut self.spill {
                Some(w) => w,
                None => self
                    .spill
                    .insert(BufWriter::with_capacity(1 << 16, tempfile::tempfile()?)),
            };
            for r in self.mem.drain(..) {
                w.write_all(&r.id.0)?;
                w.write_all(&r.len.to_le_bytes())?;
                self.spilled += 1;
            }
        }
        Ok(())
    }

    /// Writes every ref, in order, to the manifest (in runs of at most
    /// `limit`).
    pub(crate) fn write_to<W: Write>(self, w: &mut ManifestWriter<W>) -> anyhow::Result<()> {
        if let Some(spill) = self.spill {
            let mut f = spill
                .into_inner()
                .map_err(|e| anyhow!("spilling chunk refs: {}", e.error()))?;
            f.seek(SeekFrom::Start(0))?;
            let mut r = BufReader::with_capacity(1 << 16, f);
            let mut run = Vec::with_capacity(self.limit.min(1 << 16));
            let mut rec = [0u8; 36];
            for _ in 0..self.spilled {
                r.read_exact(&mut rec)?;
                let mut id = [0u8; 32];
                id.copy_from_slice(&rec[..32]);
                let len = u32::from_le_bytes([rec[32], rec[33], rec[34], rec[35]]);
                run.push(ChunkRef {
                    id: ChunkId(id),
                    len,
                });
                if run.len() >= self.limit {
                    w.add_chunks(&run)?;
                    run.clear();
                }
            }
            w.add_chunks(&run)?;
        }
        w.add_chunks(&self.mem)?;
        Ok(())
    }
}

/// Where a file's chunks go: the upload pipeline, the report and the
/// progress bar.
pub(crate) struct Sink<'a> {
    pub(crate) up: &'a mut Uploader,
    pub(crate) rep: &'a mut BackupReport,
    pub(crate) bar: &'a Progress,
}

impl Sink<'_> {
    /// A chunk that was cut (not reused): a hole if it is all zeros,
    /// otherwise hashed (unless `id` is known already) and handed to the
    /// uploader, which asks the node whether it has it.
    fn cut(
        &mut self,
        refs: &mut RefList,
        data: Vec<u8>,
        id: Option<ChunkId>,
    ) -> anyhow::Result<()> {
        let len = data.len() as u32;
        self.bar.inc(u64::from(len));
        if is_zero(&data) {
            // All-zero runs (unused image blocks, sparse regions) are holes:
            // nothing stored, nothing sent, restored sparse.
            refs.push(ChunkRef::hole(len))?;
            self.rep.hole_bytes += u64::from(len);
            return Ok(());
        }
        let id = id.unwrap_or_else(|| self.up.id_of(&data));
        refs.push(ChunkRef { id, len })?;
        self.rep.chunks += 1;
        self.up.add(id, data)
    }

    /// A parent chunk found unchanged: its ref is reused as it is.
    fn reuse(&mut self, refs: &mut RefList, r: ChunkRef) -> anyhow::Result<()> {
        refs.push(r)?;
        self.bar.inc(u64::from(r.len));
        self.rep.bytes_unchanged_blocks += u64::from(r.len);
        if r.is_hole() {
            self.rep.hole_bytes += u64::from(r.len);
        } else {
            self.rep.chunks += 1;
        }
        Ok(())
    }
}

/// Reads and chunks one file in full; returns its chunk list and size.
pub(crate) fn chunk_file(
    path: &Path,
    params: ChunkerParams,
    sink: &mut Sink<'_>,
) -> anyhow::Result<(RefList, u64)> {
    let f = File::open(path)?;
    let len = f.metadata().map_or(u64::MAX, |m| m.len());
    let mut refs = RefList::new(REFS_IN_MEMORY);
    let mut size = 0u64;
    for chunk in Chunker::for_size(f, params, len) {
        let chunk = chunk?;
        size += chunk.data.len() as u64;
        sink.rep.bytes_read += chunk.data.len() as u64;
        sink.cut(&mut refs, chunk.data, None)?;
    }
    Ok((refs, size))
}

/// The parent snapshot's chunk list for one file, in order.
pub(crate) trait ParentRefs {
    /// The next ref; `None` at the end of the list. An error ends the
    /// comparison (the rest of the file is cut in full), never the backup.
    fn next_ref(&mut self) -> anyhow::Result<Option<ChunkRef>>;
}

impl ParentRefs for std::vec::IntoIter<ChunkRef> {
    fn next_ref(&mut self) -> anyhow::Result<Option<ChunkRef>> {
        Ok(self.next())
    }
}

/// Bytes read ahead from the file: enough for several maximal chunks.
const WINDOW: usize = 8 << 20;

/// A read-ahead window over a file, so that going back to a parent cut
/// point costs no second read. Never zero-filled: reads go into the
/// buffer's spare capacity (a changed small file must not cost a 8 MiB
/// memset).
struct Window<'f> {
    file: &'f File,
    /// `buf` holds the file's bytes from `start` on.
    buf: Vec<u8>,
    start: u64,
    /// The file ends at `start + buf.len()`.
    eof: bool,
    max: usize,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, max_chunk: usize, len: u64) -> Self {
        let max = WINDOW.max(2 * max_chunk);
        let cap = usize::try_from(len.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(max);
        Window {
            file,
            buf: Vec::with_capacity(cap),
            start: 0,
            eof: false,
            max,
        }
    }

    /// Up to `n` bytes at `pos` (fewer only at the end of the file).
    fn at(&mut self, pos: u64, n: usize) -> std::io::Result<&[u8]> {
        let end = self.start + self.buf.len() as u64;
        if pos < self.start || pos > end {
            // Out of the window (after a skipped hole): start afresh.
            self.buf.clear();
            self.start = pos;
            self.eof = false;
        } else if pos + n as u64 > end && !self.eof {
            // Keep what is still ahead, read the rest.
            self.buf.drain(..(pos - self.start) as usize);
            self.start = pos;
        }
        while !self.eof && self.start + (self.buf.len() as u64) < pos + n as u64 {
            let off = self.start + self.buf.len() as u64;
            // SEEK_DATA moves the file offset: always seek first.
            let mut f = self.file;
            f.seek(SeekFrom::Start(off))?;
            let room = self.buf.capacity() - self.buf.len();
            let need = (pos + n as u64 - off) as usize;
            let limit = need.max(room).min(self.max) as u64;
            match f.take(limit).read_to_end(&mut self.buf) {
                Ok(got) => self.eof = (got as u64) < limit,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let from = (pos - self.start) as usize;
        let to = (from + n).min(self.buf.len());
        Ok(&self.buf[from.min(to)..to])
    }
}

/// Whether `[pos, pos + len)` of `file` is entirely a hole (no data
/// extent), found with `SEEK_DATA`; false where the filesystem cannot say.
fn sparse(file: &File, pos: u64, len: u64) -> bool {
    // Only the file offset moves; the window seeks before every read.
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
        Ok(next) => next >= pos + len,
        // ENXIO: no data at or after pos (the rest of the file is a hole).
        Err(e) => e == rustix::io::Errno::NXIO,
    }
}

/// Reads one file against the parent's chunk list for it (see the module
/// documentation): unchanged chunks are reused, changed ones cut again
/// from the parent's cut point before them. `skip` holds ids that must
/// not be reused (quarantined on the node). Returns the chunk list and
/// the size read.
pub(crate) fn chunk_against_parent(
    path: &Path,
    params: ChunkerParams,
    parent: &mut dyn ParentRefs,
    skip: &std::collections::HashSet<ChunkId>,
    sink: &mut Sink<'_>,
) -> anyhow::Result<(RefList, u64)> {
    let f = File::open(path)?;
    let cutter = Cutter::new(params);
    let max = cutter.max_size();
    let len = f.metadata().map_or(u64::MAX, |m| m.len());
    let mut win = Window::new(&f, max, len);
    let mut refs = RefList::new(REFS_IN_MEMORY);
    // `pos`: how far the file is chunked; `parent.end`: the end of the
    // parent refs taken so far (`None` once the list has ended).
    let mut pos = 0u64;
    let mut unread = 0u64;
    let mut parent = Cursor {
        refs: parent,
        ahead: VecDeque::new(),
        end: Some(0),
        exhausted: false,
        path,
    };
    let mut checked = Checked::default();
    loop {
        // In step with the parent: `pos` is one of its cut points.
        let mut known = None;
        if parent.end == Some(pos) {
            let Some(r) = parent.take() else {
                continue;
            };
            let n = r.len as usize;
            // The parent's last chunk was cut by the end of the file, not
            // by its content: if the file goes on, it is cut again (as a
            // full read would), or a growing file would keep a short
            // chunk at every old end.
            let goes_on = parent.ended() && win.at(pos, n + 1)?.len() > n;
            if goes_on {
                // Cut below.
            } else if r.is_hole() {
                if sparse(&f, pos, u64::from(r.len)) {
                    unread += u64::from(r.len);
                    sink.rep.hole_bytes_unread += u64::from(r.len);
                    sink.reuse(&mut refs, r)?;
                    pos += u64::from(r.len);
                    continue;
                }
                let d = win.at(pos, n)?;
                if d.len() == n && is_zero(d) {
                    sink.reuse(&mut refs, r)?;
                    pos += u64::from(r.len);
                    continue;
                }
            } else if !skip.contains(&r.id) {
                let id = match checked.get(pos, r.len) {
                    Some(id) => Some(id),
                    None => checked.hash_ahead(&mut win, &mut parent, pos, r, skip, sink)?,
                };
                if let Some(id) = id {
                    if id == r.id {
                        sink.reuse(&mut refs, r)?;
                        pos += u64::from(r.len);
                        continue;
                    }
                    // Changed: if the cut below ends where this chunk
                    // ended, its id is this one.
                    known = Some((id, n));
                }
            }
        }
        // Out of step: cut one chunk from `pos`, as a full read would.
        let d = win.at(pos, max)?;
        let n = cutter.first(d);
        if n == 0 {
            break;
        }
        let data = d[..n].to_vec();
        let id = known.and_then(|(id, len)| (len == n).then_some(id));
        sink.cut(&mut refs, data, id)?;
        pos += n as u64;
        // Catch the parent up: back in step if one of its cuts is here.
        while parent.end.is_some_and(|p| p < pos) {
            parent.take();
        }
    }
    // Bytes that were read, not the window's read-ahead (which may have
    // run into holes that were then skipped).
    sink.rep.bytes_read += pos - unread;
    Ok((refs, pos))
}

/// Parent chunks checked at a time: the file's bytes under the parent's
/// next refs are hashed together, on every core.
const AHEAD_REFS: usize = 64;
const AHEAD_BYTES: usize = 4 << 20;

/// Ids of the file's bytes under the parent's next chunks, hashed ahead
/// many at a time: (start, length, id) in file order. An entry is the id
/// of the bytes at that place, whatever happens in between, so it stays
/// good until the walk passes it.
#[derive(Default)]
struct Checked(VecDeque<(u64, u32, ChunkId)>);

impl Checked {
    /// The id of the bytes `[pos, pos + len)` if it was hashed ahead.
    fn get(&mut self, pos: u64, len: u32) -> Option<ChunkId> {
        while let Some(&(start, l, id)) = self.0.front() {
            if start < pos {
                self.0.pop_front();
                continue;
            }
            if start == pos && l == len {
                self.0.pop_front();
                return Some(id);
            }
            return None;
        }
        None
    }

    /// Hashes the file's bytes under `r` (the parent ref at `pos`) and
    /// under the refs after it (up to [`AHEAD_REFS`] and [`AHEAD_BYTES`]),
    /// all at once; keeps the others' ids and returns `r`'s, or `None` if
    /// the file ends inside it.
    fn hash_ahead(
        &mut self,
        win: &mut Window<'_>,
        parent: &mut Cursor<'_, '_>,
        pos: u64,
        r: ChunkRef,
        skip: &std::collections::HashSet<ChunkId>,
        sink: &Sink<'_>,
    ) -> std::io::Result<Option<ChunkId>> {
        // (offset from `pos`, length) of each data chunk to hash.
        let mut spans = vec![(0usize, r.len as usize)];
        let mut total = r.len as usize;
        for next in parent.ahead(AHEAD_REFS) {
            let n = next.len as usize;
            if total + n > AHEAD_BYTES {
                break;
            }
            if !next.is_hole() && !skip.contains(&next.id) {
                spans.push((total, n));
            }
            total += n;
        }
        let d = win.at(pos, total)?;
        // The file may end early: only whole chunks are hashed.
        spans.retain(|&(o, n)| o + n <= d.len());
        let slices: Vec<&[u8]> = spans.iter().map(|&(o, n)| &d[o..o + n]).collect();
        let ids = sink.up.ids_of(&slices);
        let mut first = None;
        for (&(o, n), id) in spans.iter().zip(ids) {
            if o == 0 {
                first = Some(id);
            } else {
                self.0.push_back((pos + o as u64, n as u32, id));
            }
        }
        Ok(first)
    }
}

/// The parent's chunk list with lookahead.
struct Cursor<'p, 'a> {
    refs: &'p mut dyn ParentRefs,
    /// Refs pulled from the list and not taken yet.
    ahead: VecDeque<ChunkRef>,
    /// The end of the refs taken so far; `None` once the list has ended
    /// (or could not be read further) and the last ref was taken.
    end: Option<u64>,
    /// The list returned its end (or an error): it is not asked again.
    exhausted: bool,
    path: &'a Path,
}

impl Cursor<'_, '_> {
    fn pull(&mut self) -> Option<ChunkRef> {
        if self.exhausted {
            return None;
        }
        let r = match self.refs.next_ref() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "{}: the parent snapshot's chunk list cannot be read ({e:#}); reading the rest in full",
                    self.path.display()
                );
                None
            }
        };
        self.exhausted = r.is_none();
        r
    }

    /// The next ref (its end becomes `end`), or `None` at the end.
    fn take(&mut self) -> Option<ChunkRef> {
        let at = self.end?;
        let r = self.ahead.pop_front().or_else(|| self.pull());
        self.end = r.map(|r| at + u64::from(r.len));
        r
    }

    /// Whether the ref taken last was the list's last.
    fn ended(&mut self) -> bool {
        self.ahead(1).next().is_none()
    }

    /// The refs after the one taken last, up to `n` of them.
    fn ahead(&mut self, n: usize) -> impl Iterator<Item = &ChunkRef> {
        while self.ahead.len() < n {
            match self.pull() {
                Some(r) => self.ahead.push_back(r),
                None => break,
            }
        }
        self.ahead.iter().take(n)
    }
}

pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    words.all(|w| w.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use refuge_core::Entry;
    use refuge_core::{EntryKind, ManifestReader, ManifestRecord, SourceKind};

    #[test]
    fn a_long_ref_list_spills_and_replays_in_order() {
        let refs: Vec<ChunkRef> = (0..10u32)
            .map(|i| {
                if i == 4 {
                    ChunkRef::hole(100)
                } else {
                    ChunkRef {
                        id: ChunkId::of(&i.to_le_bytes()),
                        len: 10 + i,
                    }
                }
            })
            .collect();
        let size: u64 = refs.iter().map(|r| u64::from(r.len)).sum();
        // Limit 3: nine refs go through the temporary file, one stays.
        let mut list = RefList::new(3);
        for r in &refs {
            list.push(*r).unwrap();
        }
        assert_eq!(list.spilled, 9);
        let mut w = ManifestWriter::new(Vec::new(), SourceKind::Image).unwrap();
        let mut e = Entry {
            path: b"disk.img".to_vec(),
            kind: EntryKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime_secs: 0,
            mtime_nanos: 0,
            ctime_secs: 0,
            ctime_nanos: 0,
            inode: 1,
            size: 0,
            target: Vec::new(),
        };
        e.size = size;
        w.add_entry(&e).unwrap();
        list.write_to(&mut w).unwrap();
        let (bytes, summary) = w.finish().unwrap();
        assert_eq!(summary.chunk_refs, 10);
        let mut r = ManifestReader::new(&bytes[..]).unwrap();
        let mut back = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            if let ManifestRecord::Chunks(c) = rec {
                back.extend(c);
            }
        }
        assert_eq!(back, refs);
    }
}
