//! The shipper's position in sled: the highest WAL position acknowledged by Kafka.

use std::sync::atomic::{AtomicU64, Ordering};

const TREE: &str = "shipper";
const KEY_ACKED: &[u8] = b"acked_lsn";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("shipper checkpoint in sled is corrupt: {len} bytes where 8 were expected")]
    Corrupt { len: usize },
}

/// Moves only forward: a save below the current position is refused (and logged).
#[derive(Debug)]
pub struct ShipCheckpoint {
    tree: sled::Tree,
    acked: AtomicU64,
}

impl ShipCheckpoint {
    pub fn open(db: &sled::Db) -> Result<Self, CheckpointError> {
        let tree = db.open_tree(TREE)?;
        let acked = match tree.get(KEY_ACKED)? {
            None => 0,
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| CheckpointError::Corrupt { len: v.len() })?)
            }
        };
        Ok(ShipCheckpoint { tree, acked: AtomicU64::new(acked) })
    }

    /// The highest WAL position acknowledged by Kafka (0: none yet).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Record `lsn` as acknowledged. Returns false (and changes nothing) if it would
    /// move the checkpoint back.
    pub fn advance(&self, lsn: u64) -> Result<bool, CheckpointError> {
        let current = self.acked();
        if lsn < current {
            tracing::warn!(lsn, current, "refused to move shipper checkpoint back");
            return Ok(false);
        }
        if lsn == current {
            return Ok(true);
        }
        self.tree.insert(KEY_ACKED, &lsn.to_be_bytes())?;
        self.acked.store(lsn, Ordering::Release);
        Ok(true)
    }

    pub async fn flush(&self) -> Result<(), CheckpointError> {
        self.tree.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_forward_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("xsite-ship-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let db = sled::open(&dir).unwrap();
            let c = ShipCheckpoint::open(&db).unwrap();
            assert_eq!(c.acked(), 0);
            assert!(c.advance(10).unwrap());
            assert!(!c.advance(5).unwrap());
            assert_eq!(c.acked(), 10);
            db.flush().unwrap();
        }
        let db = sled::open(&dir).unwrap();
        assert_eq!(ShipCheckpoint::open(&db).unwrap().acked(), 10);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
