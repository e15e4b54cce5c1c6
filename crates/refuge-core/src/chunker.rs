//! Content-defined chunking (FastCDC 2020) over any byte stream.
//!
//! The chunker reads from a [`std::io::Read`] and yields chunks whose cut
//! points depend only on the content, never on how the reader splits its
//! reads: an insert in the middle of a file changes only the chunks around
//! it. It knows nothing about files, hashing or the network.

use std::io::Read;

use fastcdc::v2020::{MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN, StreamCDC};

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

/// Iterator of chunks over a reader. Errors are the reader's I/O errors.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader`. Panics only if `params` fail
    /// [`ChunkerParams::validate`]; configuration loading validates first.
    pub fn new(reader: R, params: ChunkerParams) -> Self {
        Chunker {
            inner: StreamCDC::new(
                reader,
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(c) => Some(Ok(Chunk {
                offset: c.offset,
                data: c.data,
            })),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
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
