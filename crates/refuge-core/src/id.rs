//! Chunk ids: the BLAKE3 hash of a chunk's uncompressed bytes.

use std::fmt;

/// A chunk's name: 32 bytes of BLAKE3 over its uncompressed content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

/// A byte string or hex text that is not a 32-byte id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a chunk id is 32 bytes, got {0} bytes")]
pub struct ParseIdError(pub usize);

impl ChunkId {
    /// Length of an id in bytes.
    pub const LEN: usize = 32;

    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// An id from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseIdError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| ParseIdError(bytes.len()))?;
        Ok(ChunkId(arr))
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_blake3_and_rejects_wrong_lengths() {
        let id = ChunkId::of(b"abc");
        assert_eq!(
            id.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(ChunkId::from_slice(&id.0).unwrap(), id);
        assert_eq!(ChunkId::from_slice(&[0u8; 31]), Err(ParseIdError(31)));
        assert_eq!(ChunkId::from_slice(&[0u8; 33]), Err(ParseIdError(33)));
        assert_eq!(id.short().len(), 12);
    }
}
