//! Stored chunk records and chunk frames, as read from disk and from the
//! wire: decoding never panics, decompression stays under its cap, and
//! whatever decodes is the content its id names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refuge_core::{ChunkId, StoredChunk, decode_chunk};

fuzz_target!(|data: &[u8]| {
    let Ok(chunk) = StoredChunk::decode_record(data) else {
        return;
    };
    // The record says what it is; re-encoding gives a record that decodes
    // to the same chunk.
    let again = StoredChunk::decode_record(&chunk.encode_record()).expect("re-encoded record");
    assert_eq!(again.data, chunk.data);
    assert_eq!(again.raw_len, chunk.raw_len);
    // Any id: content that decodes must hash to it.
    let id = ChunkId::of(&chunk.data);
    if let Ok(content) = decode_chunk(&id, &chunk, 1 << 20) {
        assert!(content.len() <= 1 << 20);
        assert_eq!(ChunkId::of(&content), id);
    }
});
