//! Chunk frames: compression on the way in, bounded and verified decoding
//! on the way out, and the node's stored chunk record.
//!
//! [`decode_chunk`] is the one function that turns untrusted bytes back into
//! chunk content. It checks declared sizes before allocating, decompresses
//! under a cap, and recomputes the BLAKE3 id, so nobody downstream ever sees
//! bytes that do not match their id.

use crate::format::{
    CHUNK_RECORD_VERSION, CIPHER_NONE, CIPHER_SM4_GCM, CIPHER_XCHACHA20_POLY1305, COMPRESSION_NONE,
    COMPRESSION_ZSTD, HASH_BLAKE3, HASH_BLAKE3_KEYED, HASH_SM3_KEYED, MAX_CHUNK_LEN,
};
use crate::id::ChunkId;

/// Whether a chunk body is sealed (client-side encrypted), and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cipher {
    /// Plain (compressed) bytes; the id is the unkeyed BLAKE3 of the
    /// content and anyone can verify it.
    #[default]
    None,
    /// XChaCha20-Poly1305 over the compressed bytes (sealed by the crypto module); the
    /// id is a keyed BLAKE3 that only the tenant's key holders can check.
    XChaCha20Poly1305,
    /// SM4-GCM over the compressed bytes (the national-standard suite);
    /// the id is an HMAC-SM3 that only the tenant's key holders can check.
    Sm4Gcm,
}

impl Cipher {
    /// The format id (chunk record byte 3, wire field `cipher`).
    pub fn id(self) -> u8 {
        match self {
            Cipher::None => CIPHER_NONE,
            Cipher::XChaCha20Poly1305 => CIPHER_XCHACHA20_POLY1305,
            Cipher::Sm4Gcm => CIPHER_SM4_GCM,
        }
    }

    /// From a format id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            CIPHER_NONE => Some(Cipher::None),
            CIPHER_XCHACHA20_POLY1305 => Some(Cipher::XChaCha20Poly1305),
            CIPHER_SM4_GCM => Some(Cipher::Sm4Gcm),
            _ => None,
        }
    }

    /// The hash id of chunk ids under this cipher.
    fn hash_id(self) -> u8 {
        match self {
            Cipher::None => HASH_BLAKE3,
            Cipher::XChaCha20Poly1305 => HASH_BLAKE3_KEYED,
            Cipher::Sm4Gcm => HASH_SM3_KEYED,
        }
    }
}

/// How a chunk body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is (incompressible data).
    None,
    /// One zstd frame.
    Zstd,
}

impl Compression {
    /// The format id (docs/format.md).
    pub fn id(self) -> u8 {
        match self {
            Compression::None => COMPRESSION_NONE,
            Compression::Zstd => COMPRESSION_ZSTD,
        }
    }

    /// From a format id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            COMPRESSION_NONE => Some(Compression::None),
            COMPRESSION_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A chunk body as it travels and as the node stores it: compressed (and
/// possibly sealed) bytes plus the uncompressed length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Compression of `data` (before sealing).
    pub compression: Compression,
    /// Whether `data` is sealed.
    pub cipher: Cipher,
    /// Length of the chunk before compression.
    pub raw_len: u32,
    /// The (possibly compressed) body.
    pub data: Vec<u8>,
}

/// Why a chunk body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Declared length above the protocol maximum.
    #[error("declared chunk length {0} exceeds the maximum of {max}", max = MAX_CHUNK_LEN)]
    TooLarge(u32),
    /// Body larger than the declared length allows.
    #[error("body of {body} bytes is larger than its declared length {declared}")]
    BodyTooLarge {
        /// Bytes received.
        body: usize,
        /// Declared uncompressed length.
        declared: u32,
    },
    /// Decompressed size differs from the declared one (or exceeds it).
    #[error("decompressed to a different size than the declared {declared} bytes")]
    LengthMismatch {
        /// Declared uncompressed length.
        declared: u32,
    },
    /// The zstd frame is not valid.
    #[error("invalid zstd frame: {0}")]
    Zstd(String),
    /// BLAKE3 of the content is not the id it was sent or stored under.
    #[error("content hashes to {actual}, not to its id")]
    HashMismatch {
        /// What the content actually hashes to.
        actual: ChunkId,
    },
    /// A stored record could not be parsed.
    #[error("stored chunk record is malformed: {0}")]
    BadRecord(&'static str),
    /// A sealed chunk failed authentication: the wrong tenant key, or its
    /// bytes, id or length were altered.
    #[error(
        "the chunk cannot be decrypted: the wrong tenant key, or the stored bytes were altered"
    )]
    Unopenable,
    /// The chunk is sealed: only its tenant's key can open and check it.
    #[error("the chunk is encrypted (sealed); only its tenant's key can read it")]
    Sealed,
}

/// Compresses a chunk with zstd at `level`, keeping it uncompressed when
/// that does not save space. For many chunks, [`ChunkCompressor`] reuses
/// its zstd context.
pub fn compress_chunk(data: &[u8], level: i32) -> StoredChunk {
    ChunkCompressor::new(level).compress(data)
}

/// A zstd compression context kept across chunks (one per thread), so that
/// each chunk does not pay for allocating and initialising its tables.
pub struct ChunkCompressor {
    level: i32,
    ctx: Option<zstd::bulk::Compressor<'static>>,
}

impl ChunkCompressor {
    /// A compressor at `level` (1 fast to 19 small).
    pub fn new(level: i32) -> Self {
        ChunkCompressor {
            level,
            ctx: zstd::bulk::Compressor::new(level).ok(),
        }
    }

    /// Compresses one chunk, keeping it uncompressed when that does not
    /// save space (or when zstd fails, which it does not for valid levels).
    pub fn compress(&mut self, data: &[u8]) -> StoredChunk {
        let raw_len = data.len() as u32;
        let compressed = match &mut self.ctx {
            Some(ctx) => ctx.compress(data).ok(),
            None => zstd::bulk::compress(data, self.level).ok(),
        };
        match compressed {
            Some(c) if c.len() < data.len() => StoredChunk {
                compression: Compression::Zstd,
                cipher: Cipher::None,
                raw_len,
                data: c,
            },
            _ => StoredChunk {
                compression: Compression::None,
                cipher: Cipher::None,
                raw_len,
                data: data.to_vec(),
            },
        }
    }
}

thread_local! {
    /// One zstd decompression context per thread, reused: creating one per
    /// chunk was 1.8% of all CPU in an initial backup (the node decodes
    /// every chunk it receives).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Checks sizes, then decompresses a plain (not sealed) body under a cap
/// of its declared length. Shared by [`decode_chunk`] and the opening of
/// sealed chunks (after decryption).
pub(crate) fn decompress(chunk: &StoredChunk, max_len: u32) -> Result<Vec<u8>, FrameError> {
    let declared = chunk.raw_len;
    if declared > MAX_CHUNK_LEN || declared > max_len {
        return Err(FrameError::TooLarge(declared));
    }
    if chunk.data.len() > declared as usize {
        return Err(FrameError::BodyTooLarge {
            body: chunk.data.len(),
            declared,
        });
    }
    match chunk.compression {
        Compression::None => {
            if chunk.data.len() != declared as usize {
                return Err(FrameError::LengthMismatch { declared });
            }
            Ok(chunk.data.clone())
        }
        Compression::Zstd => {
            let mut out = Vec::with_capacity(declared as usize);
            DECOMPRESSOR.with(|slot| -> Result<(), FrameError> {
                let mut slot = slot.borrow_mut();
                let d = match slot.as_mut() {
                    Some(d) => d,
                    None => slot.insert(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| FrameError::Zstd(e.to_string()))?,
                    ),
                };
                // Decompressing into a buffer of the declared capacity
                // fails if the frame expands beyond it.
                d.decompress_to_buffer(&chunk.data, &mut out)
                    .map(|_| ())
                    .map_err(|e| {
                        if e.to_string().contains("Destination buffer is too small") {
                            FrameError::LengthMismatch { declared }
                        } else {
                            FrameError::Zstd(e.to_string())
                        }
                    })
            })?;
            if out.len() != declared as usize {
                return Err(FrameError::LengthMismatch { declared });
            }
            Ok(out)
        }
    }
}

/// Turns untrusted plain chunk bytes into content: sizes first, bounded
/// decompression, then the BLAKE3 of the content must equal `id`. A sealed
/// chunk is refused: only its tenant's key can open it
/// (`crypto::TenantKey::decode_chunk`).
pub fn decode_chunk(
    id: &ChunkId,
    chunk: &StoredChunk,
    max_len: u32,
) -> Result<Vec<u8>, FrameError> {
    if chunk.cipher != Cipher::None {
        return Err(FrameError::Sealed);
    }
    let content = decompress(chunk, max_len)?;
    let actual = ChunkId::of(&content);
    if &actual != id {
        return Err(FrameError::HashMismatch { actual });
    }
    Ok(content)
}

/// What the node can check of a chunk it is given, without any key: a
/// plain chunk completely ([`decode_chunk`]); a sealed one by its sizes
/// (declared length within the limit, body no longer than the declared
/// length plus the seal's tag, and at least the tag).
pub fn verify_stored(id: &ChunkId, chunk: &StoredChunk, max_len: u32) -> Result<(), FrameError> {
    match chunk.cipher {
        Cipher::None => decode_chunk(id, chunk, max_len).map(|_| ()),
        Cipher::XChaCha20Poly1305 | Cipher::Sm4Gcm => {
            let declared = chunk.raw_len;
            if declared > MAX_CHUNK_LEN || declared > max_len {
                return Err(FrameError::TooLarge(declared));
            }
            let tag = crate::format::SEAL_OVERHEAD;
            if chunk.data.len() < tag || chunk.data.len() - tag > declared as usize {
                return Err(FrameError::BodyTooLarge {
                    body: chunk.data.len(),
                    declared,
                });
            }
            Ok(())
        }
    }
}

impl StoredChunk {
    /// Size of the stored record header.
    pub const HEADER_LEN: usize = 8;

    /// The node's stored record: version, compression id, hash id, a
    /// reserved byte, the uncompressed length, then the body.
    pub fn encode_record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + self.data.len());
        out.push(CHUNK_RECORD_VERSION);
        out.push(self.compression.id());
        out.push(self.cipher.hash_id());
        out.push(self.cipher.id());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses a stored record (header checks only; content is verified by
    /// [`decode_chunk`]).
    pub fn decode_record(rec: &[u8]) -> Result<Self, FrameError> {
        if rec.len() < Self::HEADER_LEN {
            return Err(FrameError::BadRecord("shorter than its header"));
        }
        if rec[0] != CHUNK_RECORD_VERSION {
            return Err(FrameError::BadRecord("unknown record version"));
        }
        let compression =
            Compression::from_id(rec[1]).ok_or(FrameError::BadRecord("unknown compression id"))?;
        let cipher = Cipher::from_id(rec[3]).ok_or(FrameError::BadRecord("unknown cipher id"))?;
        if rec[2] != cipher.hash_id() {
            return Err(FrameError::BadRecord("unknown hash algorithm id"));
        }
        let raw_len = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        Ok(StoredChunk {
            compression,
            cipher,
            raw_len,
            data: rec[Self::HEADER_LEN..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_incompressible() {
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let c = compress_chunk(&text, 3);
        assert_eq!(c.compression, Compression::Zstd);
        assert!(c.data.len() < text.len());
        assert_eq!(
            decode_chunk(&ChunkId::of(&text), &c, MAX_CHUNK_LEN).unwrap(),
            text
        );

        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let c = compress_chunk(&noise, 3);
        assert_eq!(
            decode_chunk(&ChunkId::of(&noise), &c, MAX_CHUNK_LEN).unwrap(),
            noise
        );

        let rec = c.encode_record();
        assert_eq!(StoredChunk::decode_record(&rec).unwrap(), c);
    }

    #[test]
    fn wrong_id_is_a_hash_mismatch() {
        let data = b"some bytes".to_vec();
        let c = compress_chunk(&data, 3);
        let err = decode_chunk(&ChunkId::of(b"other"), &c, MAX_CHUNK_LEN).unwrap_err();
        assert_eq!(
            err,
            FrameError::HashMismatch {
                actual: ChunkId::of(&data)
            }
        );
    }

    #[test]
    fn a_zstd_bomb_is_refused_without_expanding() {
        // 8 MiB of zeros compresses to a few hundred bytes; declare 1 KiB.
        let zeros = vec![0u8; 8 << 20];
        let mut c = compress_chunk(&zeros, 3);
        c.raw_len = 1024;
        let err = decode_chunk(&ChunkId::of(&zeros), &c, MAX_CHUNK_LEN).unwrap_err();
        assert!(
            matches!(err, FrameError::LengthMismatch { .. } | FrameError::Zstd(_)),
            "{err:?}"
        );
    }

    #[test]
    fn declared_sizes_are_checked_before_anything_else() {
        let c = StoredChunk {
            compression: Compression::Zstd,
            cipher: Cipher::None,
            raw_len: MAX_CHUNK_LEN + 1,
            data: vec![],
        };
        assert_eq!(
            decode_chunk(&ChunkId([0; 32]), &c, u32::MAX),
            Err(FrameError::TooLarge(MAX_CHUNK_LEN + 1))
        );
        let c = StoredChunk {
            compression: Compression::None,
            cipher: Cipher::None,
            raw_len: 4,
            data: vec![0; 5],
        };
        assert!(matches!(
            decode_chunk(&ChunkId([0; 32]), &c, 100),
            Err(FrameError::BodyTooLarge { .. })
        ));
        let c = StoredChunk {
            compression: Compression::None,
            cipher: Cipher::None,
            raw_len: 6,
            data: vec![0; 5],
        };
        assert!(matches!(
            decode_chunk(&ChunkId([0; 32]), &c, 100),
            Err(FrameError::LengthMismatch { .. })
        ));
        let c = StoredChunk {
            compression: Compression::Zstd,
            cipher: Cipher::None,
            raw_len: 10,
            data: b"not zstd".to_vec(),
        };
        assert!(matches!(
            decode_chunk(&ChunkId([0; 32]), &c, 100),
            Err(FrameError::Zstd(_))
        ));
    }

    #[test]
    fn malformed_records_are_refused() {
        assert!(StoredChunk::decode_record(&[1, 0, 1]).is_err());
        assert!(StoredChunk::decode_record(&[9, 0, 1, 0, 0, 0, 0, 0]).is_err());
        assert!(StoredChunk::decode_record(&[1, 7, 1, 0, 0, 0, 0, 0]).is_err());
        assert!(StoredChunk::decode_record(&[1, 0, 2, 0, 0, 0, 0, 0]).is_err());
    }
}
