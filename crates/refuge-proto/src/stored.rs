//! Records the node keeps in its store's settings, encoded here so that
//! the fuzz targets (`tests/fuzz`, which cannot link RocksDB) reach their
//! decoders: drill records (a version byte, then the protobuf message)
//! and reported backup failures (a version byte, the time, the text).

use prost::Message;

use crate::pb;

/// Version byte of a stored drill record.
pub const DRILL_RECORD_VERSION: u8 = 1;

/// Version byte of a stored backup failure (then the time, 8 bytes little
/// endian, µs, and the error text).
pub const FAILURE_VERSION: u8 = 1;

/// Encodes a drill record for the store.
pub fn encode_drill_record(r: &pb::DrillRecord) -> Vec<u8> {
    let mut out = vec![DRILL_RECORD_VERSION];
    out.extend_from_slice(&r.encode_to_vec());
    out
}

/// Decodes a stored drill record.
pub fn decode_drill_record(bytes: &[u8]) -> Result<pb::DrillRecord, String> {
    match bytes.split_first() {
        Some((&DRILL_RECORD_VERSION, rest)) => {
            pb::DrillRecord::decode(rest).map_err(|e| format!("malformed drill record: {e}"))
        }
        Some((v, _)) => Err(format!(
            "drill record version {v} is not supported (this node reads {DRILL_RECORD_VERSION})"
        )),
        None => Err("empty drill record".into()),
    }
}

/// Encodes a reported backup failure: its time (node µs) and error text.
pub fn encode_failure(time_micros: i64, error: &str) -> Vec<u8> {
    let mut v = vec![FAILURE_VERSION];
    v.extend_from_slice(&time_micros.to_le_bytes());
    v.extend_from_slice(error.as_bytes());
    v
}

/// Decodes a stored backup failure; `None` if it is malformed. Text that
/// is not UTF-8 is shown with replacement characters.
pub fn decode_failure(v: &[u8]) -> Option<(i64, String)> {
    if v.len() < 9 || v[0] != FAILURE_VERSION {
        return None;
    }
    let t = i64::from_le_bytes(v[1..9].try_into().ok()?);
    Some((t, String::from_utf8_lossy(&v[9..]).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_records_round_trip_and_other_versions_are_refused() {
        let r = pb::DrillRecord {
            seq: 7,
            recorded_by: "operator:ops1".into(),
            ..Default::default()
        };
        let b = encode_drill_record(&r);
        assert_eq!(b[0], 1);
        assert_eq!(decode_drill_record(&b).unwrap(), r);
        let mut other = b.clone();
        other[0] = 2;
        assert!(
            decode_drill_record(&other)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(decode_drill_record(&[]).is_err());
        assert!(decode_drill_record(&[1, 0xff, 0xff]).is_err());
    }

    #[test]
    fn failures_round_trip_and_short_or_other_versions_are_malformed() {
        let b = encode_failure(-5, "disk full");
        assert_eq!(decode_failure(&b), Some((-5, "disk full".into())));
        assert_eq!(decode_failure(&b[..8]), None);
        let mut other = b.clone();
        other[0] = 2;
        assert_eq!(decode_failure(&other), None);
        assert_eq!(
            decode_failure(&encode_failure(1, "")),
            Some((1, String::new()))
        );
    }
}
