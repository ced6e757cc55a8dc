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
//! what is durable.

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
        while let Some(&(w, b)) = pending.front() {
            if b > covered {
                break;
            }
            mark.confirm(w);
            pending.pop_front();
        }
    }
}
