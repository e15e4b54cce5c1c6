//! On-disk records of the node's store: snapshot records, audit records
//! and retention policies. The first byte chooses which; decoding never
//! panics, and what decodes encodes back to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refuge_core::SnapshotRecord;
use refuge_core::audit::AuditRecord;
use refuge_core::retention::Policy;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(r) = SnapshotRecord::decode(body) {
                assert_eq!(SnapshotRecord::decode(&r.encode()).as_ref(), Ok(&r));
            }
        }
        1 => {
            let _ = AuditRecord::decode(body);
        }
        _ => {
            if let Ok(p) = Policy::decode(body) {
                assert_eq!(Policy::decode(&p.encode()).as_ref(), Ok(&p));
            }
        }
    }
});
