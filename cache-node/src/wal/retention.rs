//! Deleting old segments once their records are in a snapshot and shipped.

use super::error::{IoContext, WalError};
use super::format::fsync_dir;
use super::{Lsn, SegmentMeta, Shared};
use std::fs;

/// Deletes, oldest first, the segments all of whose records are < `lsn`: those
/// followed by a segment that starts at or before `lsn`. The last segment (the
/// writer's) is never removed. The caller serializes calls.
pub(crate) fn remove_segments_before(shared: &Shared, lsn: Lsn) -> Result<u64, WalError> {
    let doomed = take_removable(shared, lsn);
    if doomed.is_empty() {
        return Ok(0);
    }
    let dir = &shared.config.dir;
    for (i, seg) in doomed.iter().enumerate() {
        if let Err(e) = fs::remove_file(&seg.path).ctx("remove segment", &seg.path) {
            give_back(shared, &doomed[i..]);
            fsync_dir(dir)?;
            return Err(e);
        }
    }
    fsync_dir(dir)?;
    tracing::info!(
        segments_removed = doomed.len(),
        before_lsn = lsn.0,
        oldest_lsn = shared.oldest_lsn().0,
        "wal segments removed"
    );
    Ok(doomed.len() as u64)
}

/// Takes the removable prefix out of the segment list, so that readers stop
/// choosing those segments before the files go.
fn take_removable(shared: &Shared, lsn: Lsn) -> Vec<SegmentMeta> {
    let mut segments = shared.segments();
    let removable = segments.windows(2).take_while(|pair| pair[1].first <= lsn).count();
    segments.drain(..removable).collect()
}

/// Puts back the segments whose files could not be removed (they are older than any
/// segment still listed).
fn give_back(shared: &Shared, kept: &[SegmentMeta]) {
    let mut segments = shared.segments();
    let rest = std::mem::take(&mut *segments);
    segments.extend(kept.iter().cloned());
    segments.extend(rest);
}
