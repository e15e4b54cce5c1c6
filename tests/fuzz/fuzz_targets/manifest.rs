//! Manifests, as the node reads them at commit and clients at restore:
//! the reader never panics, never allocates by a declared length, and ends
//! with an error or the end on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refuge_core::ManifestReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = ManifestReader::new(data) else {
        return;
    };
    // Each record consumes input, so this ends.
    while let Ok(Some(_)) = r.next_record() {}
});
