//! Errors of the WAL and of snapshot files.

use super::Lsn;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What is wrong with a record found in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The file ends inside a record header (`bytes_left` < 16).
    TornHeader { bytes_left: u64 },
    /// The header announces `len` payload bytes but only `bytes_left` follow.
    TornPayload { len: u64, bytes_left: u64 },
    /// The header carries another LSN than the one that must come next.
    LsnMismatch { expected: Lsn, found: Lsn },
    /// crc32c(lsn ++ payload) differs from the stored checksum.
    ChecksumMismatch { stored: u32, computed: u32 },
    /// A segment does not start at the LSN that follows the previous segment (and
    /// its header declares no skip from there).
    SegmentGap { expected: Lsn, found: Lsn },
    /// A version-2 segment header whose checksum does not match.
    BadSegmentHeader,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Damage::TornHeader { bytes_left } => {
                write!(f, "torn record header ({bytes_left} of 16 bytes)")
            }
            Damage::TornPayload { len, bytes_left } => {
                write!(f, "torn payload ({bytes_left} of {len} bytes)")
            }
            Damage::LsnMismatch { expected, found } => {
                write!(f, "lsn mismatch (expected {expected}, found {found})")
            }
            Damage::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            Damage::SegmentGap { expected, found } => {
                write!(f, "segment gap (expected first lsn {expected}, file starts at {found})")
            }
            Damage::BadSegmentHeader => f.write_str("segment header checksum mismatch"),
        }
    }
}

/// Every error of the WAL and snapshot files. `Clone` so that one failed group commit
/// can answer every caller in the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("wal i/o error: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("{}: not a {kind} file (magic {found:02x?})", path.display())]
    BadMagic { kind: &'static str, path: PathBuf, found: Vec<u8> },
    #[error(
        "{}: unsupported {kind} format version {found} (this build reads versions up to {supported})",
        path.display()
    )]
    UnsupportedVersion { kind: &'static str, path: PathBuf, found: u8, supported: u8 },
    #[error("{}: corrupt wal record at offset {offset} (expected lsn {lsn}): {damage}", path.display())]
    Corrupt { path: PathBuf, offset: u64, lsn: Lsn, damage: Damage },
    #[error("{}: corrupt snapshot at offset {offset}: {reason}", path.display())]
    SnapshotCorrupt { path: PathBuf, offset: u64, reason: String },
    #[error("lsn {requested} is no longer in the wal (oldest retained lsn is {oldest})")]
    Truncated { requested: Lsn, oldest: Lsn },
    #[error("payload of {bytes} bytes exceeds record_bytes_max ({record_bytes_max} bytes)")]
    RecordTooLarge { bytes: usize, record_bytes_max: usize },
    #[error("payload builder panicked while building lsn {lsn}")]
    BuildPanicked { lsn: Lsn },
    #[error("invalid wal config: {0}")]
    Config(String),
    #[error("invalid durability {0:?}: expected always, everysec or no")]
    ParseDurability(String),
    #[error("wal is closed")]
    Closed,
    #[error("wal writer stopped after a failure it cannot retry (restart the node): {0}")]
    WriterFailed(Box<WalError>),
    #[error("wal cannot write ({0}); appends are refused until it can")]
    Stalled(Box<WalError>),
    #[error("wal background task failed: {0}")]
    Task(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> WalError {
        WalError::Io { op, path: path.to_path_buf(), source: Arc::new(source) }
    }

    /// True when the error says a file's bytes are bad (as opposed to an i/o failure).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            WalError::BadMagic { .. }
                | WalError::UnsupportedVersion { .. }
                | WalError::Corrupt { .. }
                | WalError::SnapshotCorrupt { .. }
        )
    }
}

/// Shorthand to attach an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, WalError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, WalError> {
        self.map_err(|e| WalError::io(op, path, e))
    }
}
