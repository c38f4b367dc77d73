//! Versioned encoding of stored records.
//!
//! Every value written to a projection or a snapshot is one byte of format
//! version followed by a protobuf message.
//!
//! - **1**: the first format.
//! - **2**: the same encoding, for a record carrying a field whose absence
//!   would change its meaning (an API key's `roles_exact`: without it, an
//!   empty role list means "all of the user's roles"). A build that knows
//!   only format 1 refuses such a record instead of misreading it; this
//!   build reads both, and a format-1 record keeps its old meaning because
//!   the new fields decode as absent.

use prost::Message;

/// The format version written for most records.
pub const FORMAT_V1: u8 = 1;
/// The format of records an older build must not read (see the module doc).
pub const FORMAT_V2: u8 = 2;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("malformed record: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// Encodes `msg` behind format version 1.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    encode_as(FORMAT_V1, msg)
}

/// Encodes `msg` behind format `version` ([`FORMAT_V1`] or [`FORMAT_V2`]).
pub fn encode_as<M: Message>(version: u8, msg: &M) -> Vec<u8> {
    debug_assert!(version == FORMAT_V1 || version == FORMAT_V2);
    let mut buf = Vec::with_capacity(1 + msg.encoded_len());
    buf.push(version);
    msg.encode(&mut buf).expect("a Vec grows as needed");
    buf
}

/// Decodes a value written by [`encode`].
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&(FORMAT_V1 | FORMAT_V2), rest)) => Ok(M::decode(rest)?),
        Some((&v, _)) => Err(DecodeError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::state::ApiKeyRecord;

    #[test]
    fn round_trips_and_rejects_unknown_versions() {
        let rec = ApiKeyRecord { key_id: "abc".into(), ..Default::default() };
        let bytes = encode(&rec);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<ApiKeyRecord>(&bytes).unwrap(), rec);

        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(decode::<ApiKeyRecord>(&future), Err(DecodeError::UnknownVersion(9))));
        assert!(matches!(decode::<ApiKeyRecord>(&[]), Err(DecodeError::Empty)));
        assert!(matches!(decode::<ApiKeyRecord>(&[FORMAT_V1, 0xff, 0xff]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn format_two_reads_back_and_format_one_keeps_its_meaning() {
        let exact = ApiKeyRecord { key_id: "abc".into(), roles_exact: true, ..Default::default() };
        let bytes = encode_as(FORMAT_V2, &exact);
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(decode::<ApiKeyRecord>(&bytes).unwrap(), exact);
        // A record written before the flag existed reads as "not exact".
        let old = encode(&ApiKeyRecord { key_id: "abc".into(), ..Default::default() });
        assert!(!decode::<ApiKeyRecord>(&old).unwrap().roles_exact);
    }
}
