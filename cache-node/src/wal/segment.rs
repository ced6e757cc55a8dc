//! Reading one segment file record by record, validating as it goes.
//!
//! [`SegmentCursor`] is used by recovery (which reads and checks every record) and by
//! readers (which skip the records before their start LSN without reading payloads).

use super::error::{Damage, IoContext, WalError};
use super::format::{read_full, read_segment_header, record_crc, RecordHeader, SegmentHeader, RECORD_HEADER_BYTES};
use super::Lsn;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Read buffer of a cursor; large payloads bypass it.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// One step of a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A well-formed header of the expected LSN whose payload lies inside the file.
    /// Finish it with [`SegmentCursor::read_payload`] or [`SegmentCursor::skip_payload`].
    Record(RecordHeader),
    /// The file ends exactly at a record boundary.
    End,
    /// The record at [`SegmentCursor::offset`] is damaged; stop reading this file.
    Damaged(Damage),
}

/// A sequential reader over the records of one segment file.
pub(crate) struct SegmentCursor {
    reader: BufReader<File>,
    path: PathBuf,
    /// Start of the next unread record.
    offset: u64,
    file_len: u64,
    next_lsn: Lsn,
    header: SegmentHeader,
}

impl SegmentCursor {
    /// Opens a segment named by `first` and checks its header.
    pub fn open(path: &Path, first: Lsn) -> Result<SegmentCursor, WalError> {
        Self::open_at(path, None, first)
    }

    /// Opens a segment, checks its header, and positions at `offset` (default: the
    /// first record), where the record `lsn` must start (a position remembered from an
    /// earlier read).
    pub fn open_at(path: &Path, offset: Option<u64>, lsn: Lsn) -> Result<SegmentCursor, WalError> {
        let file = File::open(path).ctx("open segment", path)?;
        let file_len = file.metadata().ctx("stat segment", path)?.len();
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let header = read_segment_header(&mut reader, path)?;
        let offset = offset.unwrap_or(header.len);
        assert!(offset >= header.len, "record offset inside the header");
        if offset != header.len {
            reader.seek(SeekFrom::Start(offset)).ctx("seek segment", path)?;
        }
        Ok(SegmentCursor { reader, path: path.to_path_buf(), offset, file_len, next_lsn: lsn, header })
    }

    /// The segment's header.
    pub fn header(&self) -> SegmentHeader {
        self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start of the next unread record (or of the damaged one).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The LSN the next record must carry.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Reads and validates the next record header (lsn continuity, length in bounds).
    pub fn next_header(&mut self) -> Result<Step, WalError> {
        let bytes_left = self.file_len - self.offset;
        if bytes_left == 0 {
            return Ok(Step::End);
        }
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        let n = read_full(&mut self.reader, &mut bytes).ctx("read record header", &self.path)?;
        if n < RECORD_HEADER_BYTES {
            let bytes_left = n as u64;
            return Ok(Step::Damaged(Damage::TornHeader { bytes_left }));
        }
        let header = RecordHeader::decode(&bytes);
        if header.lsn != self.next_lsn {
            let (expected, found) = (self.next_lsn, header.lsn);
            return Ok(Step::Damaged(Damage::LsnMismatch { expected, found }));
        }
        let payload_left = bytes_left - RECORD_HEADER_BYTES as u64;
        if u64::from(header.len) > payload_left {
            let (len, bytes_left) = (u64::from(header.len), payload_left);
            return Ok(Step::Damaged(Damage::TornPayload { len, bytes_left }));
        }
        Ok(Step::Record(header))
    }

    /// Reads the payload of `header` into `buf` and checks its crc. `Some(damage)`
    /// leaves the cursor at the damaged record.
    pub fn read_payload(&mut self, header: &RecordHeader, buf: &mut Vec<u8>) -> Result<Option<Damage>, WalError> {
        let len = header.len as usize;
        buf.clear();
        buf.resize(len, 0);
        let n = read_full(&mut self.reader, buf).ctx("read record payload", &self.path)?;
        if n < len {
            let (len, bytes_left) = (len as u64, n as u64);
            return Ok(Some(Damage::TornPayload { len, bytes_left }));
        }
        let computed = record_crc(header.lsn, buf);
        if computed != header.crc {
            let stored = header.crc;
            return Ok(Some(Damage::ChecksumMismatch { stored, computed }));
        }
        self.advance(header);
        Ok(None)
    }

    /// Moves past the payload of `header` without reading or checking it.
    pub fn skip_payload(&mut self, header: &RecordHeader) -> Result<(), WalError> {
        self.reader.seek_relative(i64::from(header.len)).ctx("seek segment", &self.path)?;
        self.advance(header);
        Ok(())
    }

    fn advance(&mut self, header: &RecordHeader) {
        self.offset += header.record_bytes();
        self.next_lsn = header.lsn.next();
    }
}

/// What recovery learned from reading a whole segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanOutcome {
    /// Bytes of the segment up to the end of its last good record.
    pub valid_len: u64,
    pub file_len: u64,
    /// Good records.
    pub records: u64,
    /// The LSN after the last good record (the segment's first LSN if none).
    pub next_lsn: Lsn,
    /// The first damaged record, at `valid_len`.
    pub damage: Option<Damage>,
    pub header: SegmentHeader,
}

/// Reads the header of a segment file.
pub(crate) fn segment_header(path: &Path) -> Result<SegmentHeader, WalError> {
    let mut file = File::open(path).ctx("open segment", path)?;
    read_segment_header(&mut file, path)
}

/// Reads and checks every record of a segment.
pub(crate) fn scan_segment(path: &Path, first: Lsn) -> Result<ScanOutcome, WalError> {
    let mut cursor = SegmentCursor::open(path, first)?;
    let mut payload = Vec::new();
    let mut records = 0;
    let damage = loop {
        match cursor.next_header()? {
            Step::End => break None,
            Step::Damaged(damage) => break Some(damage),
            Step::Record(header) => {
                if let Some(damage) = cursor.read_payload(&header, &mut payload)? {
                    break Some(damage);
                }
                records += 1;
            }
        }
    };
    Ok(ScanOutcome {
        valid_len: cursor.offset(),
        file_len: cursor.file_len(),
        records,
        next_lsn: cursor.next_lsn(),
        damage,
        header: cursor.header(),
    })
}

/// Cuts a file to `len` bytes and makes the cut durable.
pub(crate) fn truncate_file(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new().write(true).open(path).ctx("open segment for truncation", path)?;
    file.set_len(len).ctx("truncate segment", path)?;
    file.sync_all().ctx("fsync truncated segment", path)
}
