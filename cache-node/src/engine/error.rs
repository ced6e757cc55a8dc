//! What can go wrong in the engine, with the file, position or cache it concerns.
//! The command layer turns these into Redis replies; the consumer tells a rejected
//! entry from a transient failure with [`EngineError::is_rejection`].

use crate::wal::{Health, Lsn, WalError};
use std::path::PathBuf;
use xsite_schemas::{CacheName, DecodeError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("wal record at lsn {lsn} is not a log entry: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error("snapshot {}: {message}", path.display())]
    Snapshot { path: PathBuf, message: String },
    #[error("no cache named '{0}' on this node")]
    UnknownCache(CacheName),
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
    /// The WAL cannot write (a full disk, a failed fsync): nothing is applied until
    /// it can.
    #[error("{}", unwritable(.0))]
    WalUnwritable(Health),
    /// Applying a remote entry would grow the store past its memory limit: it waits
    /// (the consumer retries without moving its offset) until memory is freed.
    #[error("applying would grow the store by {growth_bytes} bytes past its memory limit ({used_bytes} of {limit_bytes} bytes used); consuming waits until memory is freed")]
    OverMemory { growth_bytes: i64, used_bytes: u64, limit_bytes: u64 },
}

impl EngineError {
    /// The entry itself is wrong (retrying cannot help): the consumer dead-letters it.
    pub fn is_rejection(&self) -> bool {
        matches!(self, EngineError::UnknownCache(_))
    }
}

fn unwritable(health: &Health) -> String {
    match health {
        Health::Ok => "the wal can write".to_string(),
        Health::Stalled { error } => format!("the wal cannot write ({error}); nothing is applied until it can"),
        Health::Failed { error } => {
            format!("the wal failed ({error}); nothing is applied until the node is restarted")
        }
    }
}
