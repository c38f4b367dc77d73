//! Versioned encoding of stored records.
//!
//! Every value written to a projection or a snapshot is one byte of format
//! version followed by a protobuf message. Version 1 is the only one so far;
//! a later format adds a `v2` branch here and a migration of `v1` values.

use prost::Message;

/// The format version written by this build.
pub const FORMAT_V1: u8 = 1;

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

/// Encodes `msg` behind the current format version.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + msg.encoded_len());
    buf.push(FORMAT_V1);
    msg.encode(&mut buf).expect("a Vec grows as needed");
    buf
}

/// Decodes a value written by [`encode`].
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(M::decode(rest)?),
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
}
