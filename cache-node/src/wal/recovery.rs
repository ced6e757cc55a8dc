//! Opening a WAL directory: find the segments, check every record, cut a torn tail.
//! The rule is in the module docs of [`crate::wal`].

use super::error::{Damage, IoContext, WalError};
use super::format::{create_dir_durable, fsync_dir, list_dir, parse_segment_file_name};
use super::segment::{scan_segment, segment_header, truncate_file, ScanOutcome};
use super::writer::ActiveSegment;
use super::{Lsn, SegmentMeta, WalConfig};
use std::fs;
use std::path::{Path, PathBuf};

/// What [`crate::wal::Wal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The last good record (`Lsn::ZERO` if none was ever written); the next append
    /// gets `last_lsn + 1`.
    pub last_lsn: Lsn,
    /// First LSN of the oldest retained segment.
    pub oldest_lsn: Lsn,
    /// Segments retained.
    pub segments: usize,
    /// Good records found in them.
    pub records: u64,
    /// What was dropped, if anything.
    pub truncated: Option<Truncation>,
    /// LSNs skipped at this open because `lsn_floor` was above the last record: the
    /// first and last LSN that will never be used (see [`WalConfig::lsn_floor`]).
    pub skipped: Option<(Lsn, Lsn)>,
}

/// Bytes dropped at open: a torn tail of the last segment, or (with
/// `truncate_corrupt_middle`) everything from a damaged segment on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The file where the damage is.
    pub path: PathBuf,
    /// Where the first damaged record starts; the file now ends here.
    pub offset: u64,
    /// The LSN the first damaged record should have carried.
    pub lsn: Lsn,
    pub damage: Damage,
    /// Bytes dropped, counting whole removed segments.
    pub bytes_dropped: u64,
    /// Later segments deleted (only with `truncate_corrupt_middle`).
    pub segments_removed: Vec<PathBuf>,
}

/// The result of recovery: the segment list and the open writer segment.
pub(crate) struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub active: ActiveSegment,
    pub report: Recovery,
}

/// The checked prefix of the segment chain.
struct Chain {
    kept: Vec<SegmentMeta>,
    /// Scan of the last kept segment.
    last: ScanOutcome,
    records: u64,
    truncated: Option<Truncation>,
}

pub(crate) fn recover(config: &WalConfig) -> Result<Recovered, WalError> {
    let dir = &config.dir;
    create_dir_durable(dir)?;
    remove_stale_tmp(dir)?;
    let found = list_segments(dir)?;
    if found.is_empty() {
        return fresh(config);
    }
    let mut chain = check_chain(config, &found)?;
    let last = chain.kept.last().expect("at least one segment kept");
    let mut active = ActiveSegment::open_existing(last, chain.last.valid_len, chain.last.records)?;
    let mut last_lsn = chain.last.next_lsn.prev();
    let mut skipped = None;
    if config.lsn_floor > last_lsn {
        // Never issue an LSN again that something outside the WAL (a snapshot, the
        // shipper's checkpoint) may already name: continue after the floor, in a new
        // segment whose header declares the skip.
        let next = ActiveSegment::create(dir, config.lsn_floor.next(), last_lsn)?;
        tracing::warn!(
            dir = %dir.display(),
            last_lsn = last_lsn.0,
            lsn_floor = config.lsn_floor.0,
            "wal ends before lsns already in use elsewhere; continuing after them"
        );
        skipped = Some((last_lsn.next(), config.lsn_floor));
        chain.kept.push(next.meta());
        active = next;
        last_lsn = config.lsn_floor;
    }
    let report = Recovery {
        last_lsn,
        oldest_lsn: chain.kept[0].first,
        segments: chain.kept.len(),
        records: chain.records,
        truncated: chain.truncated,
        skipped,
    };
    tracing::info!(
        dir = %dir.display(),
        segments = report.segments,
        records = report.records,
        oldest_lsn = report.oldest_lsn.0,
        last_lsn = report.last_lsn.0,
        truncated = report.truncated.is_some(),
        "wal recovered"
    );
    Ok(Recovered { segments: chain.kept, active, report })
}

/// An empty directory: the first segment starts at LSN 1, or after `lsn_floor`.
fn fresh(config: &WalConfig) -> Result<Recovered, WalError> {
    let dir = &config.dir;
    let first = config.lsn_floor.next();
    let active = ActiveSegment::create(dir, first, config.lsn_floor)?;
    let meta = active.meta();
    tracing::info!(dir = %dir.display(), first_lsn = first.0, "wal created");
    let skipped = (config.lsn_floor > Lsn::ZERO).then_some((Lsn::FIRST, config.lsn_floor));
    if skipped.is_some() {
        tracing::warn!(dir = %dir.display(), lsn_floor = config.lsn_floor.0, "wal directory is empty but lsns up to the floor are in use elsewhere; starting after them");
    }
    let report =
        Recovery { last_lsn: config.lsn_floor, oldest_lsn: first, segments: 1, records: 0, truncated: None, skipped };
    Ok(Recovered { segments: vec![meta], active, report })
}

/// Segment files of `dir` in LSN order.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentMeta>, WalError> {
    let mut found: Vec<SegmentMeta> = list_dir(dir)?
        .into_iter()
        .filter_map(|name| {
            let first = parse_segment_file_name(&name)?;
            Some(SegmentMeta { first, path: dir.join(name) })
        })
        .collect();
    found.sort_by_key(|s| s.first);
    Ok(found)
}

/// Deletes segments a crash left half-created (`*.wal.tmp`).
fn remove_stale_tmp(dir: &Path) -> Result<(), WalError> {
    for name in list_dir(dir)? {
        let is_tmp = name.strip_suffix(".tmp").is_some_and(|n| parse_segment_file_name(n).is_some());
        if is_tmp {
            let path = dir.join(&name);
            fs::remove_file(&path).ctx("remove stale segment", &path)?;
            tracing::warn!(path = %path.display(), "removed half-created wal segment");
        }
    }
    Ok(())
}

/// Checks the segments in order; stops at the first damage, cutting it (last segment
/// or `truncate_corrupt_middle`) or refusing to start.
fn check_chain(config: &WalConfig, found: &[SegmentMeta]) -> Result<Chain, WalError> {
    let mut kept: Vec<SegmentMeta> = Vec::with_capacity(found.len());
    let mut last: Option<ScanOutcome> = None;
    let mut records = 0;
    for (i, seg) in found.iter().enumerate() {
        let is_last = i + 1 == found.len();
        let expected = last.as_ref().map_or(seg.first, |l| l.next_lsn);
        if seg.first > expected && declares_skip_from(seg, expected)? {
            tracing::info!(path = %seg.path.display(), from = expected.0, to = seg.first.prev().0, "wal segment follows a declared skip of lsns");
        } else if seg.first != expected {
            let damage = Damage::SegmentGap { expected, found: seg.first };
            refuse_unless_allowed(config, seg, 0, expected, damage)?;
            let truncated = drop_gap(config, seg, expected, damage, &found[i..])?;
            let last = last.expect("a gap follows a kept segment");
            return Ok(chain(kept, last, records, Some(truncated)));
        }
        let scan = scan_segment(&seg.path, seg.first)?;
        records += scan.records;
        kept.push(seg.clone());
        if let Some(damage) = scan.damage {
            if !is_last {
                refuse_unless_allowed(config, seg, scan.valid_len, scan.next_lsn, damage)?;
            }
            let truncated = cut_tail(config, seg, &scan, damage, &found[i + 1..])?;
            return Ok(chain(kept, scan, records, Some(truncated)));
        }
        last = Some(scan);
    }
    let last = last.expect("found is not empty");
    Ok(chain(kept, last, records, None))
}

/// Whether the segment's header says it follows the record before `expected` (the
/// writer skipped LSNs on purpose, see [`WalConfig::lsn_floor`]).
fn declares_skip_from(seg: &SegmentMeta, expected: Lsn) -> Result<bool, WalError> {
    Ok(segment_header(&seg.path)?.prev_lsn == Some(expected.prev()))
}

fn chain(kept: Vec<SegmentMeta>, last: ScanOutcome, records: u64, truncated: Option<Truncation>) -> Chain {
    Chain { kept, last, records, truncated }
}

/// Damage outside the last segment: an error naming the file, unless the operator
/// allowed dropping it.
fn refuse_unless_allowed(
    config: &WalConfig,
    seg: &SegmentMeta,
    offset: u64,
    lsn: Lsn,
    damage: Damage,
) -> Result<(), WalError> {
    if config.truncate_corrupt_middle {
        return Ok(());
    }
    tracing::error!(
        path = %seg.path.display(), offset, lsn = lsn.0, %damage,
        "corrupt wal segment before the last one; refusing to start"
    );
    Err(WalError::Corrupt { path: seg.path.clone(), offset, lsn, damage })
}

/// Cuts `seg` after its last good record and deletes every later segment.
fn cut_tail(
    config: &WalConfig,
    seg: &SegmentMeta,
    scan: &ScanOutcome,
    damage: Damage,
    later: &[SegmentMeta],
) -> Result<Truncation, WalError> {
    let (removed, removed_bytes) = remove_newest_first(&config.dir, later)?;
    truncate_file(&seg.path, scan.valid_len)?;
    let truncation = Truncation {
        path: seg.path.clone(),
        offset: scan.valid_len,
        lsn: scan.next_lsn,
        damage,
        bytes_dropped: scan.file_len - scan.valid_len + removed_bytes,
        segments_removed: removed,
    };
    log_truncation(&truncation);
    Ok(truncation)
}

/// Deletes the segments from a gap on (`truncate_corrupt_middle` only).
fn drop_gap(
    config: &WalConfig,
    seg: &SegmentMeta,
    expected: Lsn,
    damage: Damage,
    from_gap: &[SegmentMeta],
) -> Result<Truncation, WalError> {
    let (removed, bytes_dropped) = remove_newest_first(&config.dir, from_gap)?;
    let truncation = Truncation {
        path: seg.path.clone(),
        offset: 0,
        lsn: expected,
        damage,
        bytes_dropped,
        segments_removed: removed,
    };
    log_truncation(&truncation);
    Ok(truncation)
}

fn log_truncation(t: &Truncation) {
    tracing::warn!(
        path = %t.path.display(),
        offset = t.offset,
        lsn = t.lsn.0,
        damage = %t.damage,
        bytes_dropped = t.bytes_dropped,
        segments_removed = t.segments_removed.len(),
        "truncated wal at damaged record"
    );
}

/// Deletes `segments` newest first (a crash midway leaves a contiguous chain) and
/// fsyncs the directory. Returns the paths and their total size.
fn remove_newest_first(dir: &Path, segments: &[SegmentMeta]) -> Result<(Vec<PathBuf>, u64), WalError> {
    let mut bytes = 0;
    for seg in segments.iter().rev() {
        bytes += fs::metadata(&seg.path).ctx("stat segment", &seg.path)?.len();
        fs::remove_file(&seg.path).ctx("remove segment", &seg.path)?;
    }
    if !segments.is_empty() {
        fsync_dir(dir)?;
    }
    let paths = segments.iter().map(|s| s.path.clone()).collect();
    Ok((paths, bytes))
}
