//! Transaction units: the entries of one `EXEC` as one WAL record, one Kafka
//! message, and one apply at every other site (log entry format 3, op `multi`).
//!
//! - **Written** ([`Engine::submit_transaction`]): an `EXEC` that made two entries
//!   or more appends them as one WAL record holding a unit — so a torn WAL tail
//!   drops all of them or none — when every remote site's latest heartbeat says it
//!   reads format 3 ([`Engine::set_unit_readers`]) and the unit fits in
//!   `kafka.max_entry_bytes` (the encoded unit and its message key, measured with
//!   the longest `seq`). Otherwise its entries are appended one by one, as before
//!   units existed, counted in `xsite_transactions_split_unreadable_total` or
//!   `xsite_transactions_split_too_large_total`; the first is logged once each time
//!   it starts or stops applying, the second at its first occurrence and then
//!   every 1,000th.
//! - **Applied** ([`Engine::apply_remote_unit`]): with the write gate shared and the
//!   gate of every store the unit touches held exclusively (ascending `db`, as a
//!   local `EXEC` does), the whole unit is admitted against the memory limit, then
//!   each member is joined into its own key's record through the one join of every
//!   replicated entry ([`Engine::join_locked`], where keyspace notifications fire).
//!   No reader or local command runs in between. The members that changed
//!   something are appended to the local WAL as one record (a unit again, or the
//!   single member), origin untouched, so a restart here also restores all or none.

use super::{CacheState, Durable, Engine, EngineError};
use std::sync::atomic::{AtomicU8, Ordering};
use xsite_schemas::{encode, CacheName, LogEntry, Observed, Op, SiteId};

/// Tells which remote sites do not read transaction units (yet): those whose latest
/// heartbeat does not advertise format 3, or that have not been heard from.
pub type UnitReaders = Box<dyn Fn(u32) -> Vec<(SiteId, Option<u32>)> + Send + Sync>;

/// What the engine keeps for units.
#[derive(Default)]
pub(super) struct Units {
    readers: std::sync::OnceLock<UnitReaders>,
    /// How the last transaction was written: 0 not yet, 1 as a unit (or could have
    /// been), 2 entry by entry because a remote site does not read units.
    last: AtomicU8,
}

impl std::fmt::Debug for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Units").field("last", &self.last).finish_non_exhaustive()
    }
}

/// What applying a unit did: per member, in order, its cache and whether it
/// changed its key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitApplied {
    pub members: Vec<(CacheName, bool)>,
}

impl UnitApplied {
    /// Members that changed their key's record.
    pub fn changed(&self) -> usize {
        self.members.iter().filter(|(_, c)| *c).count()
    }
}

impl Engine {
    /// Where the engine learns which remote sites do not read units (set once, by
    /// replication; without it — no remote site — every transaction is a unit).
    pub fn set_unit_readers(&self, readers: UnitReaders) {
        let _ = self.units.readers.set(readers);
    }

    /// The remote sites that keep this node from writing transaction units now.
    pub fn sites_without_units(&self) -> Vec<SiteId> {
        self.sites_not_reading(xsite_schemas::FORMAT_VERSION_UNITS).into_iter().map(|(site, _)| site).collect()
    }

    /// The remote sites that have not advertised that they read log format
    /// `version`, each with the newest one it advertised (`None`: not heard from
    /// since this node started); none without replication.
    pub fn sites_not_reading(&self, version: u32) -> Vec<(SiteId, Option<u32>)> {
        self.units.readers.get().map_or_else(Vec::new, |f| f(version))
    }

    /// Queues the entries of one transaction in the WAL: as one unit where it can
    /// (see the module docs), else one by one ([`Engine::submit`]).
    pub async fn submit_transaction(&self, entries: Vec<LogEntry>) -> Result<Durable, EngineError> {
        if entries.len() < 2 {
            return self.submit(entries).await;
        }
        let without = self.sites_without_units();
        self.note_unit_readers(&without);
        if !without.is_empty() {
            self.counters.transactions_split_unreadable.fetch_add(1, Ordering::Relaxed);
            return self.submit(entries).await;
        }
        let members = entries.len();
        let mut unit = LogEntry::unit(entries);
        unit.seq = u64::MAX; // the longest seq: the size measured is the most it can take
        let bytes = encode(&unit).len() + unit.message_key().map_or(0, <[u8]>::len);
        let limit = self.config.max_entry_bytes();
        if bytes > limit {
            let n = self.counters.transactions_split_too_large.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1_000) {
                tracing::warn!(entries = members, bytes, max_entry_bytes = limit, split = n + 1, "a transaction is written entry by entry: as one unit it would pass kafka.max_entry_bytes, so other sites may briefly show part of it");
            }
            return self.submit(unit.members()).await;
        }
        self.counters.local_entries.fetch_add(members as u64, Ordering::Relaxed);
        self.counters.transaction_units.fetch_add(1, Ordering::Relaxed);
        Ok(Durable::one(self.wal.submit_into(self.entry_builder(unit)).await?))
    }

    /// Logs when transactions start or stop being written entry by entry because of
    /// the remote sites (once per change).
    fn note_unit_readers(&self, without: &[SiteId]) {
        let now = if without.is_empty() { 1 } else { 2 };
        if self.units.last.swap(now, Ordering::Relaxed) == now {
            return;
        }
        if without.is_empty() {
            tracing::info!("transactions replicate as one unit: every remote site reads transaction units");
        } else {
            let sites: Vec<&str> = without.iter().map(SiteId::as_str).collect();
            tracing::warn!(sites = ?sites, "transactions replicate entry by entry: these remote sites have not advertised in their heartbeats that they read transaction units (format version 3); other sites may briefly show part of a transaction");
        }
    }

    /// Applies a remote transaction unit as one (see the module docs). A member of
    /// a cache this node does not have refuses the whole unit
    /// ([`EngineError::UnknownCache`]: dead-lettered); while the WAL cannot write, or
    /// while the unit would pass the memory limit, nothing of it is applied (the
    /// consumer retries it).
    pub async fn apply_remote_unit(&self, unit: LogEntry) -> Result<UnitApplied, EngineError> {
        let members = unit.members();
        let mut caches: Vec<&CacheState> = Vec::new();
        for m in &members {
            let cache = self.cache(&m.cache).ok_or_else(|| EngineError::UnknownCache(m.cache.clone()))?;
            if !caches.iter().any(|c| c.db == cache.db) {
                caches.push(cache);
            }
        }
        caches.sort_by_key(|c| c.db);
        self.writable().map_err(EngineError::WalUnwritable)?;
        if let Observed::SkewExceeded { ahead_ms } = self.clock.observe(unit.hlc) {
            self.counters.skew_exceeded.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(origin = %unit.origin, hlc = %unit.hlc, ahead_ms, max_skew_ms = self.clock.max_skew_ms(), "remote timestamp beyond the skew bound");
        }
        let (ticket, applied) = {
            let _writing = self.begin_write().await;
            let joined = self.join_unit(&caches, members)?;
            let applied = UnitApplied { members: joined.iter().map(|(m, c)| (m.cache.clone(), *c)).collect() };
            let changed: Vec<LogEntry> = joined.into_iter().filter_map(|(m, c)| c.then_some(m)).collect();
            let unchanged = applied.members.len() - changed.len();
            self.counters.remote_unchanged.fetch_add(unchanged as u64, Ordering::Relaxed);
            if changed.is_empty() {
                return Ok(applied);
            }
            self.counters.remote_applied.fetch_add(changed.len() as u64, Ordering::Relaxed);
            self.counters.remote_units.fetch_add(1, Ordering::Relaxed);
            let record = match changed.len() {
                1 => changed.into_iter().next().expect("one member"),
                _ => LogEntry { op: Op::Multi { entries: unit_members(&unit, &changed) }, ..unit.clone() },
            };
            let payload = encode(&record);
            self.counters.wal_bytes_since_snapshot.fetch_add(payload.len() as u64, Ordering::Relaxed);
            (self.wal.submit(move |_lsn| payload).await?, applied)
        };
        ticket.wait().await?;
        Ok(applied)
    }

    /// Joins every member with the gates of `caches` held exclusively, once the
    /// whole unit is within the memory limit. Returns each member and whether it
    /// changed its record.
    fn join_unit(&self, caches: &[&CacheState], members: Vec<LogEntry>) -> Result<Vec<(LogEntry, bool)>, EngineError> {
        let cache_of = |m: &LogEntry| *caches.iter().find(|c| c.name == m.cache).expect("every member's cache");
        let _excluded: Vec<_> = caches.iter().map(|c| c.store.exclude()).collect();
        let key = |m: &LogEntry| m.op.key().expect("members have keys").to_vec();
        let growth: i64 = members.iter().map(|m| cache_of(m).store.lock(&[key(m)]).growth(&m.op)).sum();
        self.admit_remote(growth)?;
        Ok(members
            .into_iter()
            .map(|m| {
                let cache = cache_of(&m);
                let mut locked = cache.store.lock(&[key(&m)]);
                let changed = self.join_locked(cache, &mut locked, &m);
                drop(locked);
                (m, changed)
            })
            .collect())
    }
}

/// The members of `unit` that are in `changed` (by id), in the unit's order.
fn unit_members(unit: &LogEntry, changed: &[LogEntry]) -> Vec<xsite_schemas::Member> {
    let Op::Multi { entries } = &unit.op else { unreachable!("a unit") };
    entries.iter().filter(|m| changed.iter().any(|c| c.id == m.id)).cloned().collect()
}
