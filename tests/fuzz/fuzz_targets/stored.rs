//! Records the node reads back from its store's settings: drill records
//! and reported backup failures (`refuge_proto::stored`). The first byte
//! chooses the decoder; nothing panics, and what decodes re-encodes and
//! decodes again to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refuge_proto::stored;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(r) = stored::decode_drill_record(body) {
            // Compared encoded: a record may hold NaN times, never equal
            // to themselves.
            let once = stored::encode_drill_record(&r);
            let again = stored::decode_drill_record(&once).expect("re-decodes");
            assert_eq!(stored::encode_drill_record(&again), once);
        }
    } else if let Some((t, text)) = stored::decode_failure(body) {
        assert_eq!(
            stored::decode_failure(&stored::encode_failure(t, &text)),
            Some((t, text))
        );
    }
});
