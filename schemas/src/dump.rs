//! DUMP payloads: the bytes `DUMP` replies and `RESTORE` reads, xsite's own format
//! (not Redis's RDB), versioned and checksummed.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "XSDU"
//! 4       1     format version (1)
//! 5       1     type byte: 0x00 string, 0x01 hash, 0x02 set, 0x03 sorted set,
//!               0x04 list (further types take the next numbers)
//! 6       4     body length n, u32 little-endian
//! 10      n     body: for a string, the value's bytes; for a hash, its fields in
//!               name order, each name length u32 | name | value length u32 | value;
//!               for a set, its members in byte order, each length u32 | member;
//!               for a sorted set, its members by score then member, each
//!               length u32 | member | score (f64 bits, u64 little-endian);
//!               for a list, its values in order, each length u32 | value
//! 10+n    4     CRC32C (Castagnoli) of bytes 0..10+n, u32 little-endian
//! ```
//!
//! A reader refuses, without guessing: another magic (a real Redis DUMP payload, for
//! one), a version it does not know, a length that does not match the payload, a
//! wrong checksum ([`DumpError::Unreadable`]: Redis's "version or checksum" case);
//! and a type byte it does not know, checksum good ([`DumpError::UnknownType`]: a
//! payload of a newer build, Redis's "bad data format" case). A new type of value
//! (hashes) is a new type byte with its own body; a change to an existing body is a
//! new format version. `golden` tests pin the bytes.

use thiserror::Error;

/// The first bytes of every payload.
pub const DUMP_MAGIC: &[u8; 4] = b"XSDU";
/// The format version this build writes and reads.
pub const DUMP_FORMAT_VERSION: u8 = 1;
/// Magic, version, type byte and body length.
const HEADER_BYTES: usize = 10;
const CRC_BYTES: usize = 4;

/// What a payload holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpValue {
    /// Type byte 0x00: a string, its bytes.
    String(Vec<u8>),
    /// Type byte 0x01: a hash, its fields and values.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// Type byte 0x02: a set, its members.
    Set(Vec<Vec<u8>>),
    /// Type byte 0x03: a sorted set, its members and scores.
    ZSet(Vec<(Vec<u8>, crate::Score)>),
    /// Type byte 0x04: a list, its values in order.
    List(Vec<Vec<u8>>),
}

impl DumpValue {
    fn type_byte(&self) -> u8 {
        match self {
            DumpValue::String(_) => TYPE_STRING,
            DumpValue::Hash(_) => TYPE_HASH,
            DumpValue::Set(_) => TYPE_SET,
            DumpValue::ZSet(_) => TYPE_ZSET,
            DumpValue::List(_) => TYPE_LIST,
        }
    }
}

const TYPE_STRING: u8 = 0x00;
const TYPE_HASH: u8 = 0x01;
const TYPE_SET: u8 = 0x02;
const TYPE_ZSET: u8 = 0x03;
const TYPE_LIST: u8 = 0x04;

fn put_u32_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).expect("fields are at most 512 MiB").to_le_bytes());
    out.extend_from_slice(b);
}

/// The next length-prefixed bytes of a body.
fn take(body: &mut &[u8]) -> Option<Vec<u8>> {
    let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let bytes = body.get(4..4usize.checked_add(len)?)?.to_vec();
    *body = &body[4 + len..];
    Some(bytes)
}

/// A hash body's fields, or `None` if it is not one.
fn hash_body(mut body: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !body.is_empty() {
        let name = take(&mut body)?;
        fields.push((name, take(&mut body)?));
    }
    Some(fields)
}

/// A sorted set body's members and scores, or `None` if it is not one.
fn zset_body(mut body: &[u8]) -> Option<Vec<(Vec<u8>, crate::Score)>> {
    let mut members = Vec::new();
    while !body.is_empty() {
        let member = take(&mut body)?;
        let bits = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
        body = &body[8..];
        let score = f64::from_bits(bits);
        if score.is_nan() {
            return None;
        }
        members.push((member, crate::Score(score)));
    }
    Some(members)
}

/// A set body's members (a list body's values), or `None` if it is not one.
fn set_body(mut body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut members = Vec::new();
    while !body.is_empty() {
        members.push(take(&mut body)?);
    }
    Some(members)
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DumpError {
    /// Not a payload of this format and version, or damaged.
    #[error("dump payload unreadable: {0}")]
    Unreadable(&'static str),
    /// A well-formed payload of a type this build does not know.
    #[error("dump payload of unknown type 0x{0:02x}")]
    UnknownType(u8),
}

/// The payload of `value`.
pub fn encode_dump(value: &DumpValue) -> Vec<u8> {
    let hash;
    let body = match value {
        DumpValue::String(body) => body,
        DumpValue::Hash(fields) => {
            let mut out = Vec::new();
            for (name, v) in fields {
                put_u32_bytes(&mut out, name);
                put_u32_bytes(&mut out, v);
            }
            hash = out;
            &hash
        }
        DumpValue::Set(members) | DumpValue::List(members) => {
            let mut out = Vec::new();
            for m in members {
                put_u32_bytes(&mut out, m);
            }
            hash = out;
            &hash
        }
        DumpValue::ZSet(members) => {
            let mut out = Vec::new();
            for (m, score) in members {
                put_u32_bytes(&mut out, m);
                out.extend_from_slice(&score.0.to_bits().to_le_bytes());
            }
            hash = out;
            &hash
        }
    };
    let len = u32::try_from(body.len()).expect("a dumped value fits in 4 GiB (values are at most 512 MiB)");
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len() + CRC_BYTES);
    out.extend_from_slice(DUMP_MAGIC);
    out.push(DUMP_FORMAT_VERSION);
    out.push(value.type_byte());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The value of a payload (see the module docs for what is refused).
pub fn decode_dump(payload: &[u8]) -> Result<DumpValue, DumpError> {
    if payload.len() < HEADER_BYTES + CRC_BYTES || &payload[..4] != DUMP_MAGIC {
        return Err(DumpError::Unreadable("not an xsite dump payload"));
    }
    if payload[4] != DUMP_FORMAT_VERSION {
        return Err(DumpError::Unreadable("unknown format version"));
    }
    let len = u32::from_le_bytes(payload[6..10].try_into().expect("4 bytes")) as usize;
    if payload.len() != HEADER_BYTES + len + CRC_BYTES {
        return Err(DumpError::Unreadable("length does not match the payload"));
    }
    let (covered, crc) = payload.split_at(HEADER_BYTES + len);
    if crc32c::crc32c(covered) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(DumpError::Unreadable("checksum mismatch"));
    }
    match payload[5] {
        TYPE_STRING => Ok(DumpValue::String(covered[HEADER_BYTES..].to_vec())),
        TYPE_HASH => hash_body(&covered[HEADER_BYTES..])
            .map(DumpValue::Hash)
            .ok_or(DumpError::Unreadable("a hash body that does not parse")),
        TYPE_SET => set_body(&covered[HEADER_BYTES..])
            .map(DumpValue::Set)
            .ok_or(DumpError::Unreadable("a set body that does not parse")),
        TYPE_LIST => set_body(&covered[HEADER_BYTES..])
            .map(DumpValue::List)
            .ok_or(DumpError::Unreadable("a list body that does not parse")),
        TYPE_ZSET => zset_body(&covered[HEADER_BYTES..])
            .map(DumpValue::ZSet)
            .ok_or(DumpError::Unreadable("a sorted set body that does not parse")),
        other => Err(DumpError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of `DUMP` of the string "hi", forever (format version 1).
    const GOLDEN_HI: &[u8] = b"XSDU\x01\x00\x02\x00\x00\x00hi";

    #[test]
    fn golden_bytes_of_format_1_still_decode() {
        let payload = encode_dump(&DumpValue::String(b"hi".to_vec()));
        assert_eq!(&payload[..GOLDEN_HI.len()], GOLDEN_HI);
        assert_eq!(payload[GOLDEN_HI.len()..], crc32c::crc32c(GOLDEN_HI).to_le_bytes());
        assert_eq!(
            payload,
            [GOLDEN_HI, &[0x35, 0x87, 0xda, 0x4c][..]].concat(),
            "the checksum is pinned too (checked with an independent CRC32C)"
        );
        assert_eq!(decode_dump(&payload), Ok(DumpValue::String(b"hi".to_vec())));
    }

    /// The bytes of `DUMP` of the hash {a: "1"}, forever (format version 1).
    const GOLDEN_HASH: &[u8] = b"XSDU\x01\x01\x0a\x00\x00\x00\x01\x00\x00\x00a\x01\x00\x00\x001";

    #[test]
    fn golden_bytes_of_a_hash_still_decode() {
        let value = DumpValue::Hash(vec![(b"a".to_vec(), b"1".to_vec())]);
        let payload = encode_dump(&value);
        assert_eq!(&payload[..GOLDEN_HASH.len()], GOLDEN_HASH);
        assert_eq!(decode_dump(&payload), Ok(value));
        let empty = DumpValue::Hash(vec![(vec![], vec![0, 255])]);
        assert_eq!(decode_dump(&encode_dump(&empty)), Ok(empty));
    }

    /// The bytes of `DUMP` of the set {"a", "bc"}, forever (format version 1).
    const GOLDEN_SET: &[u8] = b"XSDU\x01\x02\x0b\x00\x00\x00\x01\x00\x00\x00a\x02\x00\x00\x00bc";

    #[test]
    fn golden_bytes_of_a_set_still_decode() {
        let value = DumpValue::Set(vec![b"a".to_vec(), b"bc".to_vec()]);
        let payload = encode_dump(&value);
        assert_eq!(&payload[..GOLDEN_SET.len()], GOLDEN_SET);
        assert_eq!(payload.len(), GOLDEN_SET.len() + 4);
        assert_eq!(decode_dump(&payload), Ok(value));
        let mut cut = GOLDEN_SET[..GOLDEN_SET.len() - 1].to_vec();
        cut[6] -= 1;
        let crc = crc32c::crc32c(&cut);
        cut.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_dump(&cut), Err(DumpError::Unreadable("a set body that does not parse")));
    }

    /// The bytes of `DUMP` of the list ["b", "a", "b"], forever (format version 1).
    const GOLDEN_LIST: &[u8] = b"XSDU\x01\x04\x0f\x00\x00\x00\x01\x00\x00\x00b\x01\x00\x00\x00a\x01\x00\x00\x00b";

    #[test]
    fn golden_bytes_of_a_list_still_decode() {
        let value = DumpValue::List(vec![b"b".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        let payload = encode_dump(&value);
        assert_eq!(&payload[..GOLDEN_LIST.len()], GOLDEN_LIST);
        assert_eq!(payload.len(), GOLDEN_LIST.len() + 4);
        assert_eq!(decode_dump(&payload), Ok(value));
    }

    /// The bytes of `DUMP` of the sorted set {"a": 1.5}, forever (format version 1).
    const GOLDEN_ZSET: &[u8] = b"XSDU\x01\x03\x0d\x00\x00\x00\x01\x00\x00\x00a\x00\x00\x00\x00\x00\x00\xf8\x3f";

    #[test]
    fn golden_bytes_of_a_sorted_set_still_decode() {
        let value = DumpValue::ZSet(vec![(b"a".to_vec(), crate::Score(1.5))]);
        let payload = encode_dump(&value);
        assert_eq!(&payload[..GOLDEN_ZSET.len()], GOLDEN_ZSET);
        assert_eq!(decode_dump(&payload), Ok(value));
        let inf = DumpValue::ZSet(vec![(vec![], crate::Score(f64::NEG_INFINITY))]);
        assert_eq!(decode_dump(&encode_dump(&inf)), Ok(inf));
    }

    #[test]
    fn damaged_or_foreign_payloads_are_refused() {
        let good = encode_dump(&DumpValue::String(b"value".to_vec()));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(decode_dump(&bad).is_err(), "a flipped bit at byte {i} is noticed");
        }
        assert!(decode_dump(&good[..good.len() - 1]).is_err());
        // A real Redis 7.0 DUMP of "hi": RDB string, RDB version 10, CRC64.
        let redis = b"\x00\x02hi\n\x00\xafk\x9f\xe8\x8e1\x1b\x14";
        assert_eq!(decode_dump(redis), Err(DumpError::Unreadable("not an xsite dump payload")));
        let mut newer = good.clone();
        newer[5] = 0x05;
        let crc = crc32c::crc32c(&newer[..newer.len() - 4]);
        let at = newer.len() - 4;
        newer[at..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_dump(&newer), Err(DumpError::UnknownType(0x05)));
    }
}
