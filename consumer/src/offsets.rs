//! Consumed offsets in sled, per (topic, partition): the last offset applied.
//!
//! An offset is saved only after the entries up to it are applied and appended to
//! the local WAL, so a crash re-applies (harmless: apply is idempotent) and never
//! skips. A save that would move an offset back is refused and logged.

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("offset of {key} in sled is corrupt ({len} bytes)")]
    Corrupt { key: String, len: usize },
}

#[derive(Debug, Clone)]
pub struct OffsetStore {
    tree: sled::Tree,
    markers: sled::Tree,
    /// Per (topic, partition), the offset the last successful flush put on disk:
    /// what a crash now would resume from.
    flushed: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(String, i32), i64>>>,
}

const TREE: &str = "consumer_offsets";
/// Per partition, the id of the head marker seen there (the topic's incarnation).
const MARKERS_TREE: &str = "partition_markers";

fn key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl OffsetStore {
    pub fn open(db: &sled::Db) -> Result<Self, OffsetError> {
        let store = OffsetStore {
            tree: db.open_tree(TREE)?,
            markers: db.open_tree(MARKERS_TREE)?,
            flushed: Default::default(),
        };
        // What is read back at open is on disk.
        *store.flushed.lock().expect("flushed offsets lock") =
            store.all().into_iter().map(|(t, p, o)| ((t, p), o)).collect();
        Ok(store)
    }

    /// The last offset applied from this partition, if any.
    pub fn get(&self, topic: &str, partition: i32) -> Result<Option<i64>, OffsetError> {
        let k = key(topic, partition);
        match self.tree.get(k.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                let raw: [u8; 8] = v.as_ref().try_into().map_err(|_| OffsetError::Corrupt { key: k, len: v.len() })?;
                Ok(Some(i64::from_be_bytes(raw)))
            }
        }
    }

    /// Record `offset` as applied. Returns false if it would move back (nothing saved).
    pub fn advance(&self, topic: &str, partition: i32, offset: i64) -> Result<bool, OffsetError> {
        let k = key(topic, partition);
        let mut refused = None;
        self.tree.fetch_and_update(k.as_bytes(), |old| {
            let current = old.and_then(|v| <[u8; 8]>::try_from(v).ok()).map(i64::from_be_bytes);
            match current {
                Some(c) if c > offset => {
                    refused = Some(c);
                    old.map(|v| v.to_vec())
                }
                _ => Some(offset.to_be_bytes().to_vec()),
            }
        })?;
        if let Some(current) = refused {
            tracing::warn!(topic, partition, offset, current, "refused to move consumer offset back");
            return Ok(false);
        }
        Ok(true)
    }

    /// Forget the partition's offset: the only way back, for a topic that was
    /// re-created (its offsets start again at 0).
    pub fn reset(&self, topic: &str, partition: i32) -> Result<(), OffsetError> {
        self.tree.remove(key(topic, partition).as_bytes())?;
        self.flushed.lock().expect("flushed offsets lock").remove(&(topic.to_string(), partition));
        Ok(())
    }

    /// The head marker seen in the partition before, if any.
    pub fn marker(&self, topic: &str, partition: i32) -> Result<Option<uuid::Uuid>, OffsetError> {
        let k = key(topic, partition);
        match self.markers.get(k.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                let raw: [u8; 16] = v.as_ref().try_into().map_err(|_| OffsetError::Corrupt { key: k, len: v.len() })?;
                Ok(Some(uuid::Uuid::from_bytes(raw)))
            }
        }
    }

    /// Remember the partition's head marker.
    pub fn set_marker(&self, topic: &str, partition: i32, marker: uuid::Uuid) -> Result<(), OffsetError> {
        self.markers.insert(key(topic, partition).as_bytes(), marker.as_bytes())?;
        Ok(())
    }

    /// Every saved offset, for status reports: `(topic, partition, offset)`.
    pub fn all(&self) -> Vec<(String, i32, i64)> {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let k = String::from_utf8(k.to_vec()).ok()?;
                let (topic, p) = k.rsplit_once('/')?;
                let off = i64::from_be_bytes(v.as_ref().try_into().ok()?);
                Some((topic.to_string(), p.parse().ok()?, off))
            })
            .collect()
    }

    /// Puts every saved offset on disk.
    pub async fn flush(&self) -> Result<(), OffsetError> {
        // Read before the flush: a save made while it runs may miss this flush.
        let covered = self.all();
        self.tree.flush_async().await?;
        self.markers.flush_async().await?;
        let mut flushed = self.flushed.lock().expect("flushed offsets lock");
        for (topic, partition, offset) in covered {
            let slot = flushed.entry((topic, partition)).or_insert(offset);
            *slot = (*slot).max(offset);
        }
        Ok(())
    }

    /// The offset on disk of (topic, partition), as of the last successful flush.
    pub fn flushed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.flushed.lock().expect("flushed offsets lock").get(&(topic.to_string(), partition)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_move_forward_only() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let s = OffsetStore::open(&db).unwrap();
        assert_eq!(s.get("t", 0).unwrap(), None);
        assert!(s.advance("t", 0, 5).unwrap());
        assert!(!s.advance("t", 0, 3).unwrap());
        assert!(s.advance("t", 1, 0).unwrap());
        assert_eq!(s.get("t", 0).unwrap(), Some(5));
        assert_eq!(s.all(), vec![("t".into(), 0, 5), ("t".into(), 1, 0)]);
    }

    #[tokio::test]
    async fn flushed_offsets_are_those_the_last_flush_covered() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = OffsetStore::open(&db).unwrap();
        s.advance("t", 0, 5).unwrap();
        assert_eq!(s.flushed("t", 0), None, "saved, not yet flushed");
        s.flush().await.unwrap();
        s.advance("t", 0, 9).unwrap();
        assert_eq!(s.flushed("t", 0), Some(5));
        s.flush().await.unwrap();
        assert_eq!(s.flushed("t", 0), Some(9));
        drop(s);
        drop(db);
        let db = sled::open(dir.path()).unwrap();
        let s = OffsetStore::open(&db).unwrap();
        assert_eq!(s.flushed("t", 0), Some(9), "read back from disk at open");
        s.reset("t", 0).unwrap();
        s.advance("t", 0, 2).unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.flushed("t", 0), Some(2), "a reset partition starts again");
    }
}
