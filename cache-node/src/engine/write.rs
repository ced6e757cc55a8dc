//! The write path: the write gate and the barrier, local entries queued in the WAL,
//! remote entries joined into the store, and epoch announcements.

use super::{CacheState, Engine, EngineError};
use crate::store::Locked;
use crate::wal::{AppendTicket, BatchTicket, Health, Lsn, PayloadBuilder};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{encode, encode_into, CacheName, LogEntry, Observed, Op};

/// Entries appended to the WAL in one batch at most (a FLUSHDB of many keys is
/// split into batches appended concurrently).
pub const WAL_BATCH_ENTRIES_MAX: usize = 1024;

/// WAL records a command queued; [`Durable::wait`] resolves once the WAL has
/// acknowledged them all (per the durability mode).
#[derive(Debug, Default)]
pub struct Durable {
    /// The record of a write of one entry (most writes): no vector to allocate.
    single: Option<AppendTicket>,
    batches: Vec<BatchTicket>,
}

impl Durable {
    /// Waits for one record.
    pub(super) fn one(ticket: AppendTicket) -> Durable {
        Durable { single: Some(ticket), batches: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.single.is_none() && self.batches.is_empty()
    }

    pub async fn wait(self) -> Result<(), EngineError> {
        if let Some(t) = self.single {
            t.wait().await?;
        }
        for b in self.batches {
            b.wait().await?;
        }
        Ok(())
    }
}

/// A share of the write gate: held by a write from the moment it changes the store
/// until its records are queued in the WAL (see [`Engine::barrier`]).
#[derive(Debug)]
pub struct Writing<'a> {
    _gate: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl Engine {
    /// `Ok` while the WAL can write; its [`Health`] while it cannot (stalled on a
    /// full disk and retrying, or failed until a restart). Writes are refused before
    /// they change anything meanwhile; reads go on.
    pub fn writable(&self) -> Result<(), Health> {
        match self.wal.health() {
            Health::Ok => Ok(()),
            unwritable => Err(unwritable),
        }
    }

    /// Takes a share of the write gate, for a write about to change the store.
    pub async fn begin_write(&self) -> Writing<'_> {
        Writing { _gate: self.write_gate.read().await }
    }

    /// The position every change visible in the store so far is covered by: the
    /// records of writes that already changed the store are queued with LSNs at or
    /// below it. Once [`crate::wal::Wal::durable_lsn`] reaches it, all of that
    /// survives a crash.
    pub async fn barrier(&self) -> Result<Lsn, EngineError> {
        drop(self.write_gate.write().await);
        Ok(self.wal.barrier().await?)
    }

    /// Appends local entries to the WAL (setting each `seq` to its LSN) and waits
    /// until the WAL acknowledged all of them.
    pub async fn commit(&self, entries: Vec<LogEntry>) -> Result<(), EngineError> {
        self.submit(entries).await?.wait().await
    }

    /// The WAL record of a local entry (a transaction unit too): its `seq` set to the
    /// record's LSN, encoded into the writer's buffer, its bytes counted towards the
    /// next snapshot.
    pub(super) fn entry_builder(&self, mut entry: LogEntry) -> PayloadBuilder {
        let written = self.counters.wal_bytes_since_snapshot.clone();
        Box::new(move |lsn: Lsn, buf: &mut Vec<u8>| {
            entry.seq = lsn.0;
            let start = buf.len();
            encode_into(&entry, buf);
            written.fetch_add((buf.len() - start) as u64, Ordering::Relaxed);
        })
    }

    /// Queues local entries in the WAL (setting each `seq` to its LSN), in order;
    /// the returned [`Durable`] waits for them.
    pub async fn submit(&self, entries: Vec<LogEntry>) -> Result<Durable, EngineError> {
        if entries.is_empty() {
            return Ok(Durable::default());
        }
        self.counters.local_entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let build = |entry: LogEntry| self.entry_builder(entry);
        let mut durable = Durable::default();
        if entries.len() == 1 {
            let entry = entries.into_iter().next().expect("one entry");
            return Ok(Durable::one(self.wal.submit_into(build(entry)).await?));
        }
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let builds: Vec<PayloadBuilder> = entries.by_ref().take(WAL_BATCH_ENTRIES_MAX).map(build).collect();
            durable.batches.push(self.wal.submit_batch(builds).await?);
        }
        Ok(durable)
    }

    /// Joins a remote entry into the store; if it changed anything, appends it as is
    /// to the local WAL and waits for it (per the durability mode). Heartbeats change
    /// nothing here; a transaction unit is applied whole ([`Engine::apply_remote_unit`]). While the WAL cannot write nothing is applied
    /// ([`EngineError::WalUnwritable`]): the consumer retries without moving its
    /// offset.
    pub async fn apply_remote(&self, entry: LogEntry) -> Result<bool, EngineError> {
        if matches!(entry.op, Op::Multi { .. }) {
            return Ok(self.apply_remote_unit(entry).await?.changed() > 0);
        }
        let cache = self.cache(&entry.cache).ok_or_else(|| EngineError::UnknownCache(entry.cache.clone()))?;
        if entry.op.key().is_none() {
            return Ok(false);
        }
        self.writable().map_err(EngineError::WalUnwritable)?;
        if let Observed::SkewExceeded { ahead_ms } = self.clock.observe(entry.hlc) {
            self.counters.skew_exceeded.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(origin = %entry.origin, hlc = %entry.hlc, ahead_ms, max_skew_ms = self.clock.max_skew_ms(), "remote timestamp beyond the skew bound");
        }
        let ticket = {
            let _writing = self.begin_write().await;
            if !self.join_within_memory(cache, &entry)? {
                self.counters.remote_unchanged.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            let payload = encode(&entry);
            self.counters.wal_bytes_since_snapshot.fetch_add(payload.len() as u64, Ordering::Relaxed);
            self.wal.submit(move |_lsn| payload).await?
        };
        self.counters.remote_applied.fetch_add(1, Ordering::Relaxed);
        ticket.wait().await?;
        Ok(true)
    }

    /// Joins a remote entry into its key's record unless that would grow the store
    /// past its memory limit: backpressure, not loss — the entry waits (the consumer
    /// retries it without moving its offset) until memory is freed. Returns whether
    /// the record changed.
    fn join_within_memory(&self, cache: &CacheState, entry: &LogEntry) -> Result<bool, EngineError> {
        let key = entry.op.key().expect("remote entries with a key only");
        // Not in the middle of a transaction (see `CacheStore::share`).
        let _shared = cache.store.share();
        let mut locked = cache.store.lock(&[key]);
        self.admit_remote(locked.growth(&entry.op))?;
        Ok(self.join_locked(cache, &mut locked, entry))
    }

    /// Refuses, for now, remote entries that would grow the store by `growth` bytes
    /// past its memory limit (see [`Engine::join_within_memory`]).
    pub(super) fn admit_remote(&self, growth: i64) -> Result<(), EngineError> {
        if growth > 0 && !self.gauge.admits(growth) {
            let n = self.counters.remote_over_memory.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1_000) {
                tracing::warn!(
                    used_bytes = self.gauge.used_bytes(),
                    limit_bytes = self.gauge.limit_bytes(),
                    growth_bytes = growth,
                    refused = n + 1,
                    "remote entries wait: applying them would pass the memory limit"
                );
            }
            return Err(EngineError::OverMemory {
                growth_bytes: growth,
                used_bytes: self.gauge.used_bytes(),
                limit_bytes: self.gauge.limit_bytes(),
            });
        }
        Ok(())
    }

    /// Joins a remote entry (one with a key) into its record, its shard locked in
    /// `locked`, and notifies the change: the one place every replicated entry is
    /// joined, alone or as a member of a transaction unit. Returns whether the
    /// record changed.
    pub(super) fn join_locked(&self, cache: &CacheState, locked: &mut Locked<'_>, entry: &LogEntry) -> bool {
        let key = entry.op.key().expect("remote entries with a key only");
        // Keyspace notifications (`crate::notify`): looked up only when wanted.
        let notify = self.notifier.wants(u32::MAX);
        let now_ms = wall_clock_ms().max(self.clock.last().wall_ms());
        let live_before = notify && locked.live(key, now_ms).is_some();
        let changed = locked.apply(&entry.version(), &entry.op);
        if changed && notify {
            let live_after = locked.live(key, now_ms).is_some();
            self.notifier.applied(cache.db, &entry.op, live_before, live_after);
        }
        changed
    }

    /// Appends a heartbeat carrying the cache's current epoch (after a promotion), so
    /// other sites learn it even if no write follows.
    pub async fn announce_epoch(&self, cache: &CacheName) -> Result<Lsn, EngineError> {
        let c = self.cache(cache).ok_or_else(|| EngineError::UnknownCache(cache.clone()))?;
        let op = Op::Heartbeat { applied: BTreeMap::new() };
        let mut entry = LogEntry::new(self.site.clone(), self.clock.now(), c.epoch(), cache.clone(), op);
        let lsn = self
            .wal
            .append(move |lsn: Lsn| {
                entry.seq = lsn.0;
                encode(&entry)
            })
            .await?;
        Ok(lsn)
    }
}
