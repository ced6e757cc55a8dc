//! Reading records back: [`read_from`] for batches (the log shipper) and [`replay`]
//! for start-up. Both stop at the watermark, so they never see a half-written record.

use super::error::{Damage, WalError};
use super::format::RecordHeader;
use super::segment::{SegmentCursor, Step};
use super::{Lsn, SegmentMeta, Shared};
use std::io;

/// Read positions remembered per WAL (one per recent reader is enough).
pub(crate) const READ_HINTS_MAX: usize = 16;

/// Where a read stopped: the record `lsn` starts at `offset` in segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadHint {
    lsn: Lsn,
    segment: Lsn,
    offset: u64,
}

/// Limits of one [`read_from`] call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

pub(crate) fn read_from(
    shared: &Shared,
    from: Lsn,
    until: Lsn,
    limits: ReadLimits,
) -> Result<Vec<(Lsn, Vec<u8>)>, WalError> {
    let Some(mut stream) = RecordStream::open(shared, from, until)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < limits.max_records {
        let Some(header) = stream.next_header()? else {
            break;
        };
        let len = header.len as usize;
        if !out.is_empty() && bytes.saturating_add(len) > limits.max_bytes {
            break;
        }
        let mut payload = Vec::new();
        stream.read_payload(&header, &mut payload)?;
        bytes += len;
        out.push((header.lsn, payload));
    }
    stream.remember_position();
    Ok(out)
}

pub(crate) fn replay<E, F>(shared: &Shared, from: Lsn, until: Lsn, mut f: F) -> Result<u64, E>
where
    E: From<WalError>,
    F: FnMut(Lsn, &[u8]) -> Result<(), E>,
{
    let Some(mut stream) = RecordStream::open(shared, from, until)? else {
        return Ok(0);
    };
    let mut payload = Vec::new();
    let mut records = 0;
    while let Some(header) = stream.next_header()? {
        stream.read_payload(&header, &mut payload)?;
        f(header.lsn, &payload)?;
        records += 1;
    }
    Ok(records)
}

/// Records from `from` up to `until` across segments.
struct RecordStream<'a> {
    shared: &'a Shared,
    requested: Lsn,
    until: Lsn,
    /// The segments from the one holding `requested` on.
    segments: Vec<SegmentMeta>,
    index: usize,
    cursor: SegmentCursor,
}

impl<'a> RecordStream<'a> {
    /// Positioned at `from`; `None` when there is nothing to read yet.
    fn open(shared: &'a Shared, from: Lsn, until: Lsn) -> Result<Option<Self>, WalError> {
        let from = from.max(Lsn::FIRST);
        let segments = segments_from(shared, from)?;
        if from > until {
            return Ok(None);
        }
        let hint = find_hint(shared, from, segments[0].first);
        let cursor = open_cursor(shared, from, &segments[0], hint)?;
        let mut stream = RecordStream { shared, requested: from, until, segments, index: 0, cursor };
        stream.skip_to(from)?;
        Ok(Some(stream))
    }

    /// Skips the records before `from`. A segment after a declared skip may start
    /// past `from`: then the stream stands at its first record.
    fn skip_to(&mut self, from: Lsn) -> Result<(), WalError> {
        while self.cursor.next_lsn() < from && self.cursor.next_lsn() <= self.until {
            match self.cursor.next_header()? {
                Step::Record(header) => self.cursor.skip_payload(&header)?,
                Step::Damaged(damage) => return Err(self.corrupt(damage)),
                Step::End => self.next_segment()?,
            }
        }
        Ok(())
    }

    /// The next record's header, or `None` past the watermark.
    fn next_header(&mut self) -> Result<Option<RecordHeader>, WalError> {
        loop {
            if self.cursor.next_lsn() > self.until {
                return Ok(None);
            }
            match self.cursor.next_header()? {
                Step::Record(header) => return Ok(Some(header)),
                Step::Damaged(damage) => return Err(self.corrupt(damage)),
                Step::End => self.next_segment()?,
            }
        }
    }

    fn read_payload(&mut self, header: &RecordHeader, buf: &mut Vec<u8>) -> Result<(), WalError> {
        match self.cursor.read_payload(header, buf)? {
            None => Ok(()),
            Some(damage) => Err(self.corrupt(damage)),
        }
    }

    /// Moves to the following segment, which must start where this one ended or
    /// declare in its header that it follows this one's last record (a skip).
    fn next_segment(&mut self) -> Result<(), WalError> {
        let expected = self.cursor.next_lsn();
        let Some(next) = self.segments.get(self.index + 1) else {
            // The watermark says a record exists that no retained file holds.
            return Err(self.corrupt(Damage::TornHeader { bytes_left: 0 }));
        };
        let cursor = open_cursor(self.shared, self.requested, next, None)?;
        let declared_skip = next.first > expected && cursor.header().prev_lsn == Some(expected.prev());
        if next.first != expected && !declared_skip {
            let found = next.first;
            return Err(self.corrupt(Damage::SegmentGap { expected, found }));
        }
        self.cursor = cursor;
        self.index += 1;
        Ok(())
    }

    fn corrupt(&self, damage: Damage) -> WalError {
        WalError::Corrupt {
            path: self.cursor.path().to_path_buf(),
            offset: self.cursor.offset(),
            lsn: self.cursor.next_lsn(),
            damage,
        }
    }

    /// Lets the next read that starts where this one stopped seek straight there.
    fn remember_position(&self) {
        let hint = ReadHint {
            lsn: self.cursor.next_lsn(),
            segment: self.segments[self.index].first,
            offset: self.cursor.offset(),
        };
        let mut hints = self.shared.hints();
        hints.retain(|h| h.lsn != hint.lsn);
        if hints.len() >= READ_HINTS_MAX {
            hints.remove(0);
        }
        hints.push(hint);
    }
}

/// The retained segments from the one that holds `from`, or `Truncated`.
fn segments_from(shared: &Shared, from: Lsn) -> Result<Vec<SegmentMeta>, WalError> {
    let segments = shared.segments();
    let oldest = segments.first().expect("the last segment is never removed").first;
    if from < oldest {
        return Err(WalError::Truncated { requested: from, oldest });
    }
    let index = segments.partition_point(|s| s.first <= from) - 1;
    Ok(segments[index..].to_vec())
}

fn find_hint(shared: &Shared, lsn: Lsn, segment: Lsn) -> Option<u64> {
    let hints = shared.hints();
    let hint = hints.iter().find(|h| h.lsn == lsn && h.segment == segment)?;
    Some(hint.offset)
}

/// Opens a segment at a remembered offset or at its start. A segment deleted since
/// the list was taken means the caller asked for removed records: `Truncated`.
fn open_cursor(
    shared: &Shared,
    requested: Lsn,
    segment: &SegmentMeta,
    hint_offset: Option<u64>,
) -> Result<SegmentCursor, WalError> {
    let opened = match hint_offset {
        Some(offset) => SegmentCursor::open_at(&segment.path, Some(offset), requested),
        None => SegmentCursor::open(&segment.path, segment.first),
    };
    match opened {
        Err(WalError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Err(WalError::Truncated { requested, oldest: shared.oldest_lsn() })
        }
        other => other,
    }
}
