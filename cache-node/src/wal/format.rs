//! Bytes on disk: segment header, record framing, segment names, and the few
//! file-system helpers every WAL file operation needs (see the module docs of
//! [`crate::wal`] for the format).

use super::error::{Damage, IoContext, WalError};
use super::Lsn;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The first 7 bytes of every segment header; the 8th is the format version.
pub const SEGMENT_MAGIC_PREFIX: [u8; 7] = *b"XSWAL\0\0";
/// The segment format version this build writes. It reads versions 1 and 2.
pub const SEGMENT_FORMAT_VERSION: u8 = 2;
/// The version-1 header (magic and version only), still read.
pub const SEGMENT_MAGIC_V1: [u8; 8] = *b"XSWAL\0\0\x01";
/// The current segment magic: `b"XSWAL\0\0"` then the format version byte.
pub const SEGMENT_MAGIC: [u8; 8] = *b"XSWAL\0\0\x02";
/// Bytes of a version-1 segment header.
pub const SEGMENT_HEADER_BYTES_V1: u64 = 8;
/// Bytes of a version-2 segment header: magic, `prev_lsn` u64 LE, crc32c u32 LE of
/// the 16 bytes before it.
pub const SEGMENT_HEADER_BYTES: u64 = 20;
/// Bytes of a record header: payload length, crc32c, lsn.
pub const RECORD_HEADER_BYTES: usize = 16;

const SEGMENT_SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".tmp";

/// `{lsn:016x}.wal`.
pub fn segment_file_name(first: Lsn) -> String {
    format!("{:016x}{SEGMENT_SUFFIX}", first.0)
}

/// The first LSN of a segment from its file name; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    let is_lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if hex.len() != 16 || !hex.chars().all(is_lower_hex) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

/// The temporary name a segment is created under before its durable rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// crc32c(lsn as u64 LE ++ payload).
pub fn record_crc(lsn: Lsn, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.0.to_le_bytes()), payload)
}

/// Appends one framed record to `buf`. The caller checked `payload.len() <= u32::MAX`.
#[cfg(test)]
pub fn encode_record(buf: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked against u32");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&record_crc(lsn, payload).to_le_bytes());
    buf.extend_from_slice(&lsn.0.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Frames a record in place: `record` is a header's room followed by the payload,
/// and the header is written there ([`encode_record`]'s bytes). The caller checked
/// the payload's length against `u32::MAX`.
pub fn frame_record(record: &mut [u8], lsn: Lsn) {
    let (header, payload) = record.split_at_mut(RECORD_HEADER_BYTES);
    let len = u32::try_from(payload.len()).expect("payload length checked against u32");
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&record_crc(lsn, payload).to_le_bytes());
    header[8..].copy_from_slice(&lsn.0.to_le_bytes());
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub lsn: Lsn,
}

impl RecordHeader {
    pub fn decode(bytes: &[u8; RECORD_HEADER_BYTES]) -> RecordHeader {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let lsn = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        RecordHeader { len: u32_at(0), crc: u32_at(4), lsn: Lsn(lsn) }
    }

    /// Bytes of the whole record on disk.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.len)
    }
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u8,
    /// Bytes of the header: records start here.
    pub len: u64,
    /// The last LSN of the segment before this one when this one was created
    /// (version 2; `None` for version 1). Equal to `first - 1` except after a declared
    /// skip of LSNs (see the module docs).
    pub prev_lsn: Option<Lsn>,
}

/// The version-2 header of a segment that follows `prev_lsn`.
pub fn encode_segment_header(prev_lsn: Lsn) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&prev_lsn.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads and checks a segment header: version 1 or 2, anything else refused with
/// an error naming the file.
pub fn read_segment_header(reader: &mut impl Read, path: &Path) -> Result<SegmentHeader, WalError> {
    let mut head = [0u8; SEGMENT_HEADER_BYTES as usize];
    let n = read_full(reader, &mut head[..8]).ctx("read segment header", path)?;
    let version = check_segment_header(path, &head[..n])?;
    if version == 1 {
        return Ok(SegmentHeader { version, len: SEGMENT_HEADER_BYTES_V1, prev_lsn: None });
    }
    let n = read_full(reader, &mut head[8..]).ctx("read segment header", path)?;
    let stored = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    if n < 12 || crc32c::crc32c(&head[..16]) != stored {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            lsn: Lsn::ZERO,
            damage: Damage::BadSegmentHeader,
        });
    }
    let prev = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    Ok(SegmentHeader { version, len: SEGMENT_HEADER_BYTES, prev_lsn: Some(Lsn(prev)) })
}

/// Checks the magic and version byte (the first 8 bytes of a header); returns the
/// version. Refuses any version but 1 and 2, naming the file.
pub fn check_segment_header(path: &Path, header: &[u8]) -> Result<u8, WalError> {
    let magic_len = SEGMENT_MAGIC_PREFIX.len();
    if header.len() < SEGMENT_MAGIC.len() || header[..magic_len] != SEGMENT_MAGIC_PREFIX {
        return Err(WalError::BadMagic { kind: "wal segment", path: path.to_path_buf(), found: header.to_vec() });
    }
    let version = header[magic_len];
    if version != 1 && version != SEGMENT_FORMAT_VERSION {
        return Err(WalError::UnsupportedVersion {
            kind: "wal segment",
            path: path.to_path_buf(),
            found: version,
            supported: SEGMENT_FORMAT_VERSION,
        });
    }
    Ok(version)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// fsync a directory so that creations, renames and removals in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).ctx("fsync directory", dir)
}

/// Creates `dir` (and parents) if missing, durably.
pub fn create_dir_durable(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).ctx("create directory", dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => Ok(()),
    }
}

/// Names of the entries of `dir` (non-UTF-8 names are skipped: we never write them).
pub fn list_dir(dir: &Path) -> Result<Vec<String>, WalError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).ctx("list directory", dir)? {
        let entry = entry.ctx("list directory", dir)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(Lsn(1)), "0000000000000001.wal");
        assert_eq!(segment_file_name(Lsn(0xabc)), "0000000000000abc.wal");
        assert_eq!(parse_segment_file_name("0000000000000abc.wal"), Some(Lsn(0xabc)));
        assert_eq!(parse_segment_file_name("0000000000000ABC.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000abc.wal.tmp"), None);
        assert_eq!(parse_segment_file_name("abc.wal"), None);
        assert_eq!(parse_segment_file_name("snapshot-0000000000000001.snap"), None);
    }

    #[test]
    fn record_encoding_matches_the_documented_layout() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Lsn(7), b"hi");
        assert_eq!(buf.len(), RECORD_HEADER_BYTES + 2);
        assert_eq!(&buf[0..4], &2u32.to_le_bytes());
        let mut crc_input = 7u64.to_le_bytes().to_vec();
        crc_input.extend_from_slice(b"hi");
        assert_eq!(&buf[4..8], &crc32c::crc32c(&crc_input).to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        assert_eq!(&buf[16..], b"hi");
        let header = RecordHeader::decode(buf[..16].try_into().unwrap());
        assert_eq!(header.lsn, Lsn(7));
        assert_eq!(header.record_bytes(), 18);
    }

    #[test]
    fn header_check_names_the_file() {
        let path = Path::new("/x/0000000000000001.wal");
        assert_eq!(check_segment_header(path, &SEGMENT_MAGIC).unwrap(), 2);
        assert_eq!(check_segment_header(path, &SEGMENT_MAGIC_V1).unwrap(), 1);
        let err = check_segment_header(path, b"XSWAL\0\0\x03").unwrap_err();
        assert!(matches!(err, WalError::UnsupportedVersion { found: 3, .. }));
        let err = check_segment_header(path, b"NOTAWAL!").unwrap_err();
        assert!(err.to_string().contains("0000000000000001.wal"), "{err}");
        assert!(check_segment_header(path, b"XSW").is_err());
    }

    #[test]
    fn v2_header_carries_the_previous_lsn_under_a_checksum() {
        let path = Path::new("/x/0000000000000010.wal");
        let h = encode_segment_header(Lsn(9));
        let read = read_segment_header(&mut &h[..], path).unwrap();
        assert_eq!(read, SegmentHeader { version: 2, len: SEGMENT_HEADER_BYTES, prev_lsn: Some(Lsn(9)) });
        let v1 = read_segment_header(&mut &SEGMENT_MAGIC_V1[..], path).unwrap();
        assert_eq!(v1, SegmentHeader { version: 1, len: SEGMENT_HEADER_BYTES_V1, prev_lsn: None });
        let mut bad = h;
        bad[9] ^= 1;
        let err = read_segment_header(&mut &bad[..], path).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { damage: Damage::BadSegmentHeader, .. }), "{err}");
    }

    #[test]
    fn a_record_framed_in_place_is_the_encoded_record() {
        let mut encoded = Vec::new();
        encode_record(&mut encoded, Lsn(9), b"payload");
        let mut framed = vec![0; RECORD_HEADER_BYTES];
        framed.extend_from_slice(b"payload");
        frame_record(&mut framed, Lsn(9));
        assert_eq!(framed, encoded);
    }
}
