//! Wire messages from clients (and, for clients, from the node): protobuf
//! decoding and refuge's checks of what decoded. The first byte chooses
//! the message; nothing panics, and checked values convert back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use refuge_proto::pb;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(u) = pb::ChunkUpload::decode(body) {
                let _ = refuge_proto::upload(u);
            }
        }
        1 => {
            if let Ok(c) = pb::CommitSnapshotRequest::decode(body) {
                for r in &c.manifest {
                    if let Ok(r) = refuge_proto::chunk_ref(r) {
                        assert_eq!(
                            refuge_proto::chunk_ref(&refuge_proto::chunk_ref_to(&r)),
                            Ok(r)
                        );
                    }
                }
                let _ = refuge_proto::source_kind(c.kind);
            }
        }
        2 => {
            if let Ok(s) = pb::Snapshot::decode(body) {
                let _ = refuge_proto::snapshot(s);
            }
        }
        3 => {
            if let Ok(d) = pb::ChunkData::decode(body) {
                let _ = refuge_proto::chunk_data(d);
            }
        }
        _ => {
            if let Ok(m) = pb::FindMissingRequest::decode(body) {
                for id in &m.ids {
                    let _ = refuge_proto::chunk_id(id);
                }
            }
        }
    }
});
