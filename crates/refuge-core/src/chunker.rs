//! Content-defined chunking (FastCDC 2020) over any byte stream.
//!
//! The chunker reads from a [`std::io::Read`] and yields chunks whose cut
//! points depend only on the content, never on how the reader splits its
//! reads: an insert in the middle of a file changes only the chunks around
//! it. It knows nothing about files, hashing or the network.

use std::io::Read;

use fastcdc::v2020::{
    MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN, Normalization, cut, select_masks,
};

/// FastCDC size parameters, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No cut before this many bytes (except at end of input).
    pub min_size: u32,
    /// Target average chunk size.
    pub avg_size: u32,
    /// Always cut at this many bytes.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: restic-like average, a smaller minimum so
    /// that scattered small page updates in databases cost less.
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 * 1024,
            avg_size: 1024 * 1024,
            max_size: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// 64 KiB / 256 KiB / 1 MiB: the default for image sources, whose
    /// blocks change in place (a scattered rewrite re-sends the chunks
    /// around it, so smaller chunks re-send less; measured in
    /// BENCHMARKS.md, issue 16).
    pub fn image() -> Self {
        ChunkerParams {
            min_size: 64 * 1024,
            avg_size: 256 * 1024,
            max_size: 1024 * 1024,
        }
    }

    /// Parameters for manifest streams: smaller chunks, so that an
    /// unchanged part of a manifest dedups between snapshots.
    pub fn manifest() -> Self {
        ChunkerParams {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }

    /// Checks the sizes against FastCDC's limits and each other.
    pub fn validate(&self) -> Result<(), String> {
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min) {
            return Err(format!(
                "min_size {min} is outside {MINIMUM_MIN}..={MINIMUM_MAX}"
            ));
        }
        if !(fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX).contains(&avg) {
            return Err(format!(
                "avg_size {avg} is outside {}..={}",
                fastcdc::v2020::AVERAGE_MIN,
                fastcdc::v2020::AVERAGE_MAX
            ));
        }
        if !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max) {
            return Err(format!(
                "max_size {max} is outside {MAXIMUM_MIN}..={MAXIMUM_MAX}"
            ));
        }
        if !(min <= avg && avg <= max) {
            return Err(format!(
                "chunk sizes must satisfy min_size <= avg_size <= max_size, got {min} / {avg} / {max}"
            ));
        }
        Ok(())
    }
}

/// One chunk of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first byte in the input.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

/// Finds FastCDC cut points in a byte slice: the same cut points as
/// `fastcdc::v2020::StreamCDC` with normalization level 1 and the default
/// gear table (what every stored snapshot was cut with), without a reader.
/// The block-delta path uses it to cut from any chunk boundary of a file.
#[derive(Debug, Clone, Copy)]
pub struct Cutter {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    /// A cutter for `params` (validated by [`ChunkerParams::validate`]).
    pub fn new(params: ChunkerParams) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        Cutter {
            params,
            mask_s,
            mask_l,
        }
    }

    /// The largest chunk this cutter makes.
    pub fn max_size(&self) -> usize {
        self.params.max_size as usize
    }

    /// The length of the chunk that starts at `data[0]`. `data` must hold
    /// at least [`Cutter::max_size`] bytes unless it is the rest of the
    /// input; the answer is then the same as when cutting the whole input.
    /// Zero only for empty `data`.
    pub fn first(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let (_, n) = cut(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n
    }
}

/// Bytes read ahead: several maximal chunks, so that moving the unread
/// tail to the front of the buffer (once per buffer, not once per chunk)
/// costs little.
const CHUNKER_BUFFER: usize = 8 << 20;

/// Iterator of chunks over a reader. Errors are the reader's I/O errors.
pub struct Chunker<R: Read> {
    reader: R,
    cutter: Cutter,
    /// Unread bytes are `buf[head..]`. Never zero-filled: reads go into
    /// its spare capacity (a buffer per file must not cost a memset).
    buf: Vec<u8>,
    head: usize,
    /// Input offset of `buf[head]`.
    offset: u64,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader`. Panics only if `params` fail
    /// [`ChunkerParams::validate`]; configuration loading validates first.
    pub fn new(reader: R, params: ChunkerParams) -> Self {
        Self::for_size(reader, params, u64::MAX)
    }

    /// A chunker over `reader`, which holds about `len` bytes: its buffer
    /// starts no larger than that (a small file costs a small buffer) and
    /// grows if the input turns out longer.
    pub fn for_size(reader: R, params: ChunkerParams, len: u64) -> Self {
        assert!(params.validate().is_ok(), "invalid chunker parameters");
        let cutter = Cutter::new(params);
        let cap = usize::try_from(len.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(CHUNKER_BUFFER.max(2 * cutter.max_size()));
        Chunker {
            reader,
            buf: Vec::with_capacity(cap),
            cutter,
            head: 0,
            offset: 0,
            eof: false,
        }
    }

    /// Makes at least one maximal chunk of bytes available, or all that
    /// is left of the input.
    fn fill(&mut self) -> std::io::Result<()> {
        let want = self.cutter.max_size();
        while !self.eof && self.buf.len() - self.head < want {
            if self.head > 0 && self.buf.capacity() - self.buf.len() < want {
                // Move the unread tail to the front: once per buffer.
                self.buf.drain(..self.head);
                self.head = 0;
            }
            let need = want - (self.buf.len() - self.head);
            let room = self.buf.capacity() - self.buf.len();
            let limit = need.max(room).min(CHUNKER_BUFFER) as u64;
            let got = match Read::by_ref(&mut self.reader)
                .take(limit)
                .read_to_end(&mut self.buf)
            {
                Ok(n) => n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // `read_to_end` stops short of the limit only at the end.
            self.eof = got < limit;
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            return Some(Err(e));
        }
        let n = self.cutter.first(&self.buf[self.head..]);
        if n == 0 {
            return None;
        }
        let data = self.buf[self.head..self.head + n].to_vec();
        let offset = self.offset;
        self.head += n;
        self.offset += n as u64;
        Some(Ok(Chunk { offset, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), no dependency.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A reader that returns at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 2048,
            avg_size: 8192,
            max_size: 32768,
        }
    }

    fn cuts(reader: impl Read, params: ChunkerParams) -> Vec<(u64, usize)> {
        Chunker::new(reader, params)
            .map(|c| {
                let c = c.unwrap();
                (c.offset, c.data.len())
            })
            .collect()
    }

    #[test]
    fn same_cut_points_whatever_the_read_sizes() {
        let data = noise(600_000, 7);
        let whole = cuts(&data[..], small());
        assert!(
            whole.len() > 20,
            "expected many chunks, got {}",
            whole.len()
        );
        for step in [1usize, 7, 4096, 65_537] {
            let piecewise = cuts(Trickle { data: &data, step }, small());
            assert_eq!(whole, piecewise, "read size {step} changed the cut points");
        }
        // The chunks tile the input exactly.
        let total: usize = whole.iter().map(|c| c.1).sum();
        assert_eq!(total, data.len());
    }

    #[test]
    fn the_same_cut_points_as_fastcdc_stream_cdc() {
        // Snapshots made before this chunker were cut by StreamCDC: a
        // different cut would cost every user their deduplication.
        let mut data = noise(3_000_000, 5);
        data.extend(std::iter::repeat_n(0u8, 200_000));
        data.extend(noise(500_001, 9));
        for params in [small(), ChunkerParams::default(), ChunkerParams::manifest()] {
            let theirs: Vec<(u64, usize)> = fastcdc::v2020::StreamCDC::new(
                &data[..],
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
            )
            .map(|c| {
                let c = c.unwrap();
                (c.offset, c.length)
            })
            .collect();
            assert_eq!(cuts(&data[..], params), theirs, "{params:?}");
        }
    }

    #[test]
    fn a_cutter_from_any_boundary_continues_the_same_chunks() {
        let data = noise(400_000, 3);
        let whole = cuts(&data[..], small());
        let cutter = Cutter::new(small());
        for &(offset, len) in &whole {
            let rest = &data[offset as usize..];
            let window = &rest[..rest.len().min(cutter.max_size())];
            assert_eq!(cutter.first(window), len, "chunk at {offset}");
        }
        assert_eq!(cutter.first(&[]), 0);
    }

    #[test]
    fn an_insert_changes_only_nearby_chunks() {
        let data = noise(1_000_000, 11);
        let mut edited = data[..500_000].to_vec();
        edited.extend_from_slice(b"inserted bytes in the middle");
        edited.extend_from_slice(&data[500_000..]);
        let ids = |d: &[u8]| -> Vec<crate::ChunkId> {
            Chunker::new(d, small())
                .map(|c| crate::ChunkId::of(&c.unwrap().data))
                .collect()
        };
        let a = ids(&data);
        let b: std::collections::HashSet<_> = ids(&edited).into_iter().collect();
        let changed = a.iter().filter(|id| !b.contains(id)).count();
        assert!(changed <= 3, "{changed} of {} chunks changed", a.len());
    }

    #[test]
    fn empty_input_has_no_chunks_and_params_are_checked() {
        assert!(cuts(&[][..], small()).is_empty());
        assert!(ChunkerParams::default().validate().is_ok());
        assert!(ChunkerParams::manifest().validate().is_ok());
        assert!(ChunkerParams::image().validate().is_ok());
        let bad = ChunkerParams {
            min_size: 10,
            ..small()
        };
        assert!(bad.validate().unwrap_err().contains("min_size"));
        let inverted = ChunkerParams {
            min_size: 9000,
            avg_size: 8192,
            max_size: 32768,
        };
        assert!(
            inverted
                .validate()
                .unwrap_err()
                .contains("min_size <= avg_size")
        );
    }
}
