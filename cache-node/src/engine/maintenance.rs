//! Work the engine does in the background: snapshots (and the WAL segments they let
//! go), active expiry, tombstone collection, and [`Engine::run_maintenance`], the
//! loop that expires keys and takes snapshots when they are due.

use super::{create_dir, unix_secs, Engine, EngineError};
use crate::store::codec::{self, CacheHeader, Header};
use crate::store::SHARDS;
use crate::wal::snapshot::{list_snapshots, prepare_snapshot, remove_snapshots_before, PendingSnapshot};
use crate::wal::Lsn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{CacheName, Hlc};

/// The LSN the last snapshot covers, and when it was taken or loaded.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SnapshotMark {
    pub(super) lsn: Lsn,
    pub(super) unix_secs: u64,
}

impl Engine {
    /// The highest collection floor used so far ([`Hlc::ZERO`]: none yet): an INCR
    /// on a record collectable below it counts from nothing after it, whether or not
    /// the record was dropped yet.
    pub fn collection_floor(&self) -> Hlc {
        Hlc::from_u64(self.collection_floor.load(Ordering::Acquire))
    }

    /// The skew allowance of collection: without remote sites no entry from a
    /// skewed clock can come.
    pub fn collect_skew_ms(&self) -> u64 {
        if self.config.remotes.is_empty() {
            0
        } else {
            self.clock.max_skew_ms()
        }
    }

    /// Forgets tombstones and expired records of `cache` no entry can order around
    /// any more (see `CacheStore::collectable`), `below` being a timestamp every
    /// site has applied everything under.
    pub fn gc_tombstones(&self, cache: &CacheName, below: Hlc) -> usize {
        let Some(c) = self.cache(cache) else {
            return 0;
        };
        self.collection_floor.fetch_max(below.as_u64(), Ordering::AcqRel);
        let n = c.store.gc_tombstones(below, self.collect_skew_ms());
        self.counters.tombstones_collected.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// One active expiry cycle over every cache. Returns the keys expired.
    pub fn expire_cycle(&self) -> usize {
        let now = wall_clock_ms();
        let per_shard = self.store_config.expiry_keys_per_cycle_max;
        let reclaim = self.config.remotes.is_empty();
        let n: usize = self
            .caches
            .iter()
            .map(|c| {
                let mut expired = |key: &[u8]| self.notifier.notify(c.db, key, crate::notify::Event::Expired);
                c.store.expire_cycle_with(now, per_shard, reclaim, &mut expired)
            })
            .sum();
        self.counters.expired_keys.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Writes a snapshot of every cache as of `L = wal.last_lsn()`, keeps it and the
    /// one before, and removes WAL segments nobody needs any more. Returns `L`.
    pub async fn snapshot(&self) -> Result<Lsn, EngineError> {
        let engine = self.handle().ok_or_else(|| EngineError::Task("the engine is being dropped".into()))?;
        let _one_at_a_time = self.snapshot_lock.lock().await;
        // At or above every timestamp issued or observed so far; later ones are in
        // records after `lsn`, which replay sees.
        let hlc_high = self.clock.last();
        let lsn = self.wal.last_lsn();
        let bytes_before = self.counters.wal_bytes_since_snapshot.load(Ordering::Relaxed);
        let started = Instant::now();
        let pending = tokio::task::spawn_blocking(move || engine.prepare_snapshot_file(lsn, hlc_high))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        // The file may hold changes of records after `lsn` (written while it was
        // being made): they must be durable in the WAL before the snapshot can stand
        // in for it, or a power cut would keep them here and nowhere else.
        let covered = self.barrier().await?;
        self.wal.sync().await?;
        if self.wal.durable_lsn() < covered {
            return Err(EngineError::Task(format!(
                "snapshot at lsn {lsn}: the wal is durable only up to {} but the snapshot may hold changes up to {covered}",
                self.wal.durable_lsn()
            )));
        }
        let dir = self.snapshot_dir.clone();
        let older = tokio::task::spawn_blocking(move || {
            pending.commit()?;
            let older = list_snapshots(&dir)?.get(1).map(|(l, _)| *l);
            if let Some(older) = older {
                remove_snapshots_before(&dir, older)?;
            }
            Ok::<_, EngineError>(older)
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))??;
        self.counters.wal_bytes_since_snapshot.fetch_sub(bytes_before, Ordering::Relaxed);
        self.counters.snapshots.fetch_add(1, Ordering::Relaxed);
        *self.last_snapshot.lock().unwrap_or_else(PoisonError::into_inner) =
            SnapshotMark { lsn, unix_secs: unix_secs() };
        // Keep the WAL after the older snapshot kept, and what the shipper needs.
        if let Some(older) = older {
            let floor = older.next().min(self.ship_floor());
            let removed = self.wal.remove_segments_before(floor).await?;
            tracing::info!(
                lsn = lsn.0,
                wal_floor = floor.0,
                segments_removed = removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot done"
            );
        }
        Ok(lsn)
    }

    /// Blocking part of [`Engine::snapshot`]: writes every record of every cache
    /// into a snapshot file under its temporary name.
    fn prepare_snapshot_file(&self, lsn: Lsn, hlc_high: Hlc) -> Result<PendingSnapshot, EngineError> {
        create_dir(&self.snapshot_dir)?;
        let header = Header::new(
            self.site.clone(),
            self.caches.iter().map(|c| CacheHeader { name: c.name.clone(), epoch: c.epoch() }).collect(),
            hlc_high,
        );
        let records = self.caches.iter().enumerate().flat_map(|(ci, c)| {
            (0..SHARDS).flat_map(move |si| {
                let locked = c.store.lock_shard(si);
                locked.records().map(|(k, r)| codec::encode_record(ci as u16, k, r)).collect::<Vec<_>>()
            })
        });
        let payloads = std::iter::once(codec::encode_header(&header)).chain(records);
        Ok(prepare_snapshot(&self.snapshot_dir, lsn, payloads)?)
    }

    /// The LSN and time (Unix seconds) of the last snapshot taken or loaded.
    pub fn last_snapshot(&self) -> (Lsn, u64) {
        let m = *self.last_snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        (m.lsn, m.unix_secs)
    }

    /// Active expiry every `store.expiry_interval_ms`; a snapshot when
    /// `store.snapshot_wal_bytes` of WAL were written since the last one, or when
    /// `store.snapshot_interval_secs` passed and anything was written. Stops on
    /// `cancel`.
    pub async fn run_maintenance(self: Arc<Self>, cancel: CancellationToken) {
        let tick = Duration::from_millis(self.store_config.expiry_interval_ms.max(1));
        let snapshot_every = Duration::from_secs(self.store_config.snapshot_interval_secs.max(1));
        let mut last_attempt = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            self.expire_cycle();
            let written = self.counters.wal_bytes_since_snapshot.load(Ordering::Relaxed);
            let changed = self.wal.last_lsn() > self.last_snapshot().0;
            let due = written >= self.store_config.snapshot_wal_bytes.max(1)
                || (changed && last_attempt.elapsed() >= snapshot_every);
            if due {
                last_attempt = Instant::now();
                if let Err(e) = self.snapshot().await {
                    tracing::warn!(error = %e, "snapshot failed; retrying at the next interval");
                }
            }
        }
        tracing::debug!("maintenance stopped");
    }
}
