//! This site's own watermark: a timestamp below which every local write is durable
//! here and, with replication, acknowledged by Kafka — derived from what actually
//! is, never from a fixed margin after the clock.
//!
//! Every [`WATERMARK_INTERVAL_MS`] the tracker takes a candidate `W = clock.now()`
//! and then a barrier `B` ([`Engine::barrier`]): every write with a timestamp below
//! `W` had already changed the store, so its record has an LSN at or below `B`. Once
//! the covered position (the WAL's durable LSN, or what Kafka acknowledged) reaches
//! `B`, `W` holds. A stalled fsync, a full WAL queue or an unreachable Kafka simply
//! keep the watermark where it is: tombstone collection waits, it never outruns
//! what is durable. A confirmed watermark is kept in sled ([`Promises`]) before it
//! is promised, and a restarted clock starts above it.

use super::Engine;
use crate::wal::Lsn;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use xsite_schemas::Hlc;

/// How often a watermark candidate is taken.
pub const WATERMARK_INTERVAL_MS: u64 = 200;
/// Candidates waiting for their barrier to be covered, at most (older ones are
/// confirmed first; while the queue is full no new candidate is taken).
pub const WATERMARK_CANDIDATES_MAX: usize = 64;

/// The latest confirmed watermark (none until the first candidate holds).
#[derive(Debug, Default)]
pub struct LocalWatermark {
    raw: AtomicU64,
}

impl LocalWatermark {
    /// `None` until a first candidate is confirmed.
    pub fn get(&self) -> Option<Hlc> {
        match self.raw.load(Ordering::Acquire) {
            0 => None,
            raw => Some(Hlc::from_u64(raw)),
        }
    }

    fn confirm(&self, w: Hlc) {
        self.raw.fetch_max(w.as_u64(), Ordering::AcqRel);
    }
}

/// What the node promised other sites, kept in sled so a restart keeps the promise:
/// its own watermark (the clock never issues a timestamp at or below it again) and
/// the collection floor (an INCR after a restart still counts from nothing after
/// it, as it did before — see `commands::counters`).
#[derive(Debug, Clone)]
pub struct Promises {
    tree: sled::Tree,
}

const PROMISES_TREE: &str = "promises";
const KEY_WATERMARK: &[u8] = b"local_watermark";
const KEY_FLOOR: &[u8] = b"collection_floor";

impl Promises {
    pub fn open(db: &sled::Db) -> Result<Promises, sled::Error> {
        Ok(Promises { tree: db.open_tree(PROMISES_TREE)? })
    }

    fn get(&self, key: &[u8]) -> Hlc {
        let raw = self.tree.get(key).ok().flatten().and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok());
        raw.map_or(Hlc::ZERO, |b| Hlc::from_u64(u64::from_be_bytes(b)))
    }

    /// Raises `key` to `h` (never lowers it) and makes it durable.
    async fn raise(&self, key: &[u8], h: Hlc) -> Result<(), sled::Error> {
        if self.get(key) >= h {
            return Ok(());
        }
        self.tree.insert(key, &h.as_u64().to_be_bytes())?;
        self.tree.flush_async().await?;
        Ok(())
    }

    pub fn watermark(&self) -> Hlc {
        self.get(KEY_WATERMARK)
    }

    pub fn collection_floor(&self) -> Hlc {
        self.get(KEY_FLOOR)
    }

    /// Makes `floor` durable before anything is collected below it.
    pub async fn raise_collection_floor(&self, floor: Hlc) -> Result<(), sled::Error> {
        self.raise(KEY_FLOOR, floor).await
    }
}

/// Tracks the watermark until `cancel`. `covered()` is the position up to which
/// local records are safe: the WAL's durable LSN, or the shipper's acknowledged one.
pub async fn track(
    engine: Arc<Engine>,
    covered: Box<dyn Fn() -> Lsn + Send + Sync>,
    mark: Arc<LocalWatermark>,
    cancel: CancellationToken,
) {
    let mut pending: VecDeque<(Hlc, Lsn)> = VecDeque::with_capacity(WATERMARK_CANDIDATES_MAX);
    let mut tick = tokio::time::interval(Duration::from_millis(WATERMARK_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if pending.len() < WATERMARK_CANDIDATES_MAX {
            let w = engine.clock().now();
            match engine.barrier().await {
                Ok(b) => pending.push_back((w, b)),
                Err(err) => tracing::debug!(error = %err, "no barrier for a watermark candidate"),
            }
        }
        let covered = covered();
        let mut confirmed = None;
        while let Some(&(w, b)) = pending.front() {
            if b > covered {
                break;
            }
            confirmed = Some(w);
            pending.pop_front();
        }
        // Kept on disk before it is promised: a restart never issues timestamps
        // below a watermark other sites were told.
        if let Some(w) = confirmed {
            let kept = match engine.promises() {
                Some(promises) => promises.raise(KEY_WATERMARK, w).await,
                None => Ok(()),
            };
            match kept {
                Ok(()) => mark.confirm(w),
                Err(err) => tracing::warn!(error = %err, "cannot keep the watermark on disk; not promising it"),
            }
        }
    }
}
