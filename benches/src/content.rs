//! Seeded content of known character: text, executable-like binary,
//! already-compressed (random) and sparse data, and mixes of them.
//!
//! zstd level 3 ratios on 1 MiB (see the unit test): text about 2.6x,
//! binary about 1.6x, sparse about 20x, random 1x, and the 25%-random
//! semi-compressible mix about 1.8x.

use crate::rng::Rng;

/// The character of a run of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Log lines, configuration, source code: words from a skewed
    /// vocabulary with numbers mixed in.
    Text,
    /// Executable-like: tables of small integers, strings, zero padding and
    /// noise (machine code compresses about 2x).
    Binary,
    /// Already compressed or encrypted data (media, archives).
    Random,
    /// Mostly zeros with small records (preallocated files, sparse tables).
    Sparse,
}

impl Class {
    /// Short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Class::Text => "text",
            Class::Binary => "binary",
            Class::Random => "random",
            Class::Sparse => "sparse",
        }
    }
}

/// A vocabulary of pseudo-words, derived from a seed.
#[derive(Debug, Clone)]
pub struct TextGen {
    words: Vec<Vec<u8>>,
    /// Line openings (log prefixes, boilerplate): a few words each.
    phrases: Vec<Vec<u8>>,
}

const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
const WORDS: usize = 4096;
const PHRASES: usize = 256;

impl TextGen {
    /// A vocabulary of 4096 words for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::derive(seed, 0x7E47);
        let mut words = Vec::with_capacity(WORDS);
        for i in 0..WORDS {
            // Frequent words are short.
            let len = 2 + rng.below(3 + (i as u64 * 10 / WORDS as u64)) as usize;
            let mut w = Vec::with_capacity(len);
            for _ in 0..len {
                // Skewed letter frequencies.
                let a = rng.below(LETTERS.len() as u64);
                let b = rng.below(LETTERS.len() as u64);
                w.push(LETTERS[a.min(b) as usize]);
            }
            words.push(w);
        }
        let mut phrases = Vec::with_capacity(PHRASES);
        for _ in 0..PHRASES {
            let n = rng.range(3, 9);
            let mut p = Vec::new();
            for _ in 0..n {
                let i = (rng.below(WORDS as u64) * rng.below(WORDS as u64)) as usize / WORDS;
                p.extend_from_slice(&words[i]);
                p.push(b' ');
            }
            phrases.push(p);
        }
        TextGen { words, phrases }
    }

    /// Fills `buf` with text lines.
    pub fn fill(&self, rng: &mut Rng, buf: &mut [u8]) {
        let mut pos = 0;
        let mut col = 0u32;
        while pos < buf.len() {
            let r = rng.next_u64();
            // Product of two uniforms: a skewed (Zipf-like) word choice.
            let a = r & 0xFFF;
            let b = (r >> 12) & 0xFFF;
            let idx = ((a * b) >> 12) as usize;
            let sel = (r >> 24) & 0xFF;
            let mut num = [0u8; 20];
            let word: &[u8] = if col == 0 && sel < 192 {
                let i = (((r >> 32) & 0xFF) * ((r >> 40) & 0xFF)) >> 8;
                &self.phrases[i as usize]
            } else if sel < 6 {
                // A number (timestamps, ids, counters): little redundancy.
                let mut v = (r >> 32) & 0xFF_FFFF;
                let mut n = 0;
                loop {
                    num[19 - n] = b'0' + (v % 10) as u8;
                    v /= 10;
                    n += 1;
                    if v == 0 {
                        break;
                    }
                }
                &num[20 - n..]
            } else {
                &self.words[idx]
            };
            let n = word.len().min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&word[..n]);
            pos += n;
            col += 1;
            if pos < buf.len() {
                let end_line = col >= 4 && ((r >> 48) & 0x7) == 0;
                buf[pos] = if end_line {
                    col = 0;
                    b'\n'
                } else if (r >> 52) & 0xF == 0 {
                    b','
                } else {
                    b' '
                };
                pos += 1;
            }
        }
    }

    /// Fills `buf` with data of `class`.
    pub fn fill_class(&self, class: Class, rng: &mut Rng, buf: &mut [u8]) {
        match class {
            Class::Text => self.fill(rng, buf),
            Class::Binary => self.fill_binary(rng, buf),
            Class::Random => rng.fill(buf),
            Class::Sparse => fill_sparse(rng, buf),
        }
    }

    /// Executable-like bytes: runs of noise, little-endian integer tables,
    /// strings and zero padding.
    pub fn fill_binary(&self, rng: &mut Rng, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            let len = (rng.range(16, 512) as usize).min(buf.len() - pos);
            let seg = &mut buf[pos..pos + len];
            match rng.below(8) {
                0 | 1 => rng.fill(seg),
                2..=4 => {
                    // A table of small integers (relocations, offsets).
                    let base = rng.next_u64() as u32 & 0x00FF_FFF0;
                    let mut v = base;
                    for c in seg.chunks_mut(4) {
                        v = v.wrapping_add(rng.below(64) as u32 * 4);
                        let b = v.to_le_bytes();
                        let n = c.len();
                        c.copy_from_slice(&b[..n]);
                    }
                }
                5 => self.fill(rng, seg),
                _ => seg.fill(0),
            }
            pos += len;
        }
    }

    /// A mix: segments of random bytes (fraction `random_fraction`) and of
    /// text.
    pub fn fill_mixed(&self, rng: &mut Rng, buf: &mut [u8], random_fraction: f64) {
        let mut pos = 0;
        while pos < buf.len() {
            let len = (rng.range(16, 256) as usize).min(buf.len() - pos);
            if rng.chance(random_fraction) {
                rng.fill(&mut buf[pos..pos + len]);
            } else {
                self.fill(rng, &mut buf[pos..pos + len]);
            }
            pos += len;
        }
    }
}

/// Mostly zeros, with a small record every 512 bytes or so.
pub fn fill_sparse(rng: &mut Rng, buf: &mut [u8]) {
    buf.fill(0);
    let mut pos = rng.below(512) as usize;
    while pos < buf.len() {
        let n = (rng.range(8, 48) as usize).min(buf.len() - pos);
        rng.fill(&mut buf[pos..pos + n]);
        pos += n + rng.range(256, 1024) as usize;
    }
}

/// Semi-compressible data: 25% random segments, 75% text (zstd-3 ratio
/// about 1.8). The input of the compression micro-benchmarks.
pub fn semi_compressible(seed: u64, len: usize) -> Vec<u8> {
    let text = TextGen::new(seed);
    let mut rng = Rng::derive(seed, 0x5E41);
    let mut buf = vec![0u8; len];
    text.fill_mixed(&mut rng, &mut buf, 0.25);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(buf: &[u8]) -> f64 {
        buf.len() as f64 / zstd_len(buf) as f64
    }

    fn zstd_len(buf: &[u8]) -> usize {
        refuge_core::compress_chunk(buf, 3).data.len()
    }

    #[test]
    fn classes_have_the_intended_compressibility() {
        let t = TextGen::new(1);
        let mut rng = Rng::new(2);
        let mut buf = vec![0u8; 1 << 20];
        let mut got = Vec::new();
        for class in [Class::Text, Class::Binary, Class::Random, Class::Sparse] {
            t.fill_class(class, &mut rng, &mut buf);
            got.push((class, ratio(&buf)));
        }
        let semi = ratio(&semi_compressible(1, 1 << 20));
        eprintln!("zstd-3 ratios: {got:?}, semi-compressible {semi:.2}");
        let r = |c: Class| got.iter().find(|g| g.0 == c).map(|g| g.1).unwrap_or(0.0);
        assert!(r(Class::Text) > 2.0, "{got:?}");
        assert!((1.3..3.0).contains(&r(Class::Binary)), "{got:?}");
        assert!(r(Class::Random) <= 1.0, "{got:?}");
        assert!(r(Class::Sparse) > 8.0, "{got:?}");
        assert!((1.4..3.0).contains(&semi), "semi-compressible ratio {semi}");
    }

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(semi_compressible(5, 10_000), semi_compressible(5, 10_000));
        assert_ne!(semi_compressible(5, 10_000), semi_compressible(6, 10_000));
    }
}
