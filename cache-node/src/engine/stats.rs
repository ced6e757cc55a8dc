//! What the engine counts: its counters, [`EngineStats`] (`xsite status`, INFO)
//! and the [`Metric`]s it exports.

use super::Engine;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{CacheName, SiteId};

/// Counters the engine keeps (exported by [`Engine::metrics`]).
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub commands: AtomicU64,
    pub local_entries: AtomicU64,
    pub remote_applied: AtomicU64,
    pub remote_unchanged: AtomicU64,
    /// Remote transaction units that changed the store (applied all together).
    pub remote_units: AtomicU64,
    /// Transactions written to the WAL as one unit.
    pub transaction_units: AtomicU64,
    /// Transactions written entry by entry because a remote site does not read units.
    pub transactions_split_unreadable: AtomicU64,
    /// Transactions written entry by entry because their unit would pass
    /// `kafka.max_entry_bytes`.
    pub transactions_split_too_large: AtomicU64,
    /// Remote entries refused (for now: retried) because they would grow the store
    /// past its memory limit.
    pub remote_over_memory: AtomicU64,
    pub skew_exceeded: AtomicU64,
    pub expired_keys: AtomicU64,
    pub tombstones_collected: AtomicU64,
    pub snapshots: AtomicU64,
    /// Payload bytes appended to the WAL since the last snapshot.
    pub wal_bytes_since_snapshot: Arc<AtomicU64>,
}

/// Counts of one cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub name: CacheName,
    pub db: usize,
    pub keys: u64,
    pub tombstones: u64,
    pub expires: u64,
    pub memory_bytes: u64,
    pub read_only: bool,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub site: SiteId,
    pub caches: Vec<CacheStats>,
    pub memory_bytes: u64,
    pub memory_bytes_max: u64,
    pub expired_keys_total: u64,
    pub skew_exceeded_total: u64,
    pub remote_over_memory_total: u64,
    pub tombstones_collected_total: u64,
    pub last_snapshot_lsn: u64,
}

/// One metric value. Counter names leave out `_total`: the Prometheus encoder adds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    /// Set for per-cache metrics (the `cache` label).
    pub cache: Option<CacheName>,
    pub counter: bool,
    pub value: i64,
}

impl Engine {
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            site: self.site.clone(),
            caches: self
                .caches
                .iter()
                .map(|c| {
                    let s = c.store.stats();
                    CacheStats {
                        name: c.name.clone(),
                        db: c.db,
                        keys: s.keys,
                        tombstones: s.tombstones,
                        expires: s.expires,
                        memory_bytes: s.memory_bytes,
                        read_only: c.is_read_only(),
                        epoch: c.epoch(),
                    }
                })
                .collect(),
            memory_bytes: self.gauge.used_bytes(),
            memory_bytes_max: self.gauge.limit_bytes(),
            expired_keys_total: self.counters.expired_keys.load(Ordering::Relaxed),
            skew_exceeded_total: self.counters.skew_exceeded.load(Ordering::Relaxed),
            remote_over_memory_total: self.counters.remote_over_memory.load(Ordering::Relaxed),
            tombstones_collected_total: self.counters.tombstones_collected.load(Ordering::Relaxed),
            last_snapshot_lsn: self.last_snapshot().0 .0,
        }
    }

    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::to_value(self.stats()).expect("stats serialize")
    }

    /// Every metric the engine exports.
    pub fn metrics(&self) -> Vec<Metric> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let c = &self.counters;
        let node = |name, help, counter, value| Metric { name, help, cache: None, counter, value };
        let mut out = vec![
            node("xsite_commands", "Data commands executed", true, load(&c.commands)),
            node("xsite_local_entries", "Local writes appended to the WAL", true, load(&c.local_entries)),
            node("xsite_remote_applied", "Remote entries that changed the store", true, load(&c.remote_applied)),
            node(
                "xsite_remote_unchanged",
                "Remote entries that changed nothing (older or duplicate)",
                true,
                load(&c.remote_unchanged),
            ),
            node(
                "xsite_remote_units",
                "Remote transaction units that changed the store, each applied as one",
                true,
                load(&c.remote_units),
            ),
            node(
                "xsite_transaction_units",
                "Transactions, scripts and commands of several entries written to the WAL and shipped as one unit",
                true,
                load(&c.transaction_units),
            ),
            node(
                "xsite_transactions_split_unreadable",
                "Transactions written entry by entry because a remote site does not advertise that it reads units",
                true,
                load(&c.transactions_split_unreadable),
            ),
            node(
                "xsite_transactions_split_too_large",
                "Transactions written entry by entry because their unit would pass kafka.max_entry_bytes",
                true,
                load(&c.transactions_split_too_large),
            ),
            node(
                "xsite_transaction_units_writable",
                "1 when every remote site advertises that it reads transaction units",
                false,
                i64::from(self.sites_without_units().is_empty()),
            ),
            node(
                "xsite_remote_over_memory",
                "Remote entries that waited (retried, offset held) because applying them would pass the memory limit",
                true,
                load(&c.remote_over_memory),
            ),
            node(
                "xsite_hlc_skew_exceeded",
                "Remote timestamps beyond the maximum clock skew",
                true,
                load(&c.skew_exceeded),
            ),
            node(
                "xsite_expired_keys",
                "Keys whose expiry time passed (seen by the expiry cycle)",
                true,
                load(&c.expired_keys),
            ),
            node(
                "xsite_tombstones_collected",
                "Tombstones forgotten below the watermark",
                true,
                load(&c.tombstones_collected),
            ),
            node("xsite_snapshots", "Snapshots written", true, load(&c.snapshots)),
            node(
                "xsite_memory_bytes",
                "Approximate bytes of keys, values and records",
                false,
                self.gauge.used_bytes() as i64,
            ),
            node("xsite_memory_max_bytes", "Memory limit (0: none)", false, self.gauge.limit_bytes() as i64),
            node("xsite_snapshot_lsn", "LSN covered by the last snapshot", false, self.last_snapshot().0 .0 as i64),
        ];
        for cache in &self.caches {
            let s = cache.store.stats();
            let per = |name, help, value| Metric { name, help, cache: Some(cache.name.clone()), counter: false, value };
            out.push(per("xsite_cache_keys", "Keys (not tombstones) in the cache", s.keys as i64));
            out.push(per("xsite_cache_tombstones", "Tombstones kept in the cache", s.tombstones as i64));
            out.push(per("xsite_cache_expires", "Keys with an expiry time", s.expires as i64));
            let (retained, retained_bytes) = cache.store.expired_retained(wall_clock_ms());
            out.push(per(
                "xsite_cache_expired_retained_keys",
                "Expired keys kept until every site is past them (an entry on its way may still order around them)",
                retained as i64,
            ));
            out.push(per(
                "xsite_cache_expired_retained_bytes",
                "Bytes of the expired keys kept",
                retained_bytes as i64,
            ));
            out.push(per("xsite_cache_memory_bytes", "Approximate bytes of the cache", s.memory_bytes as i64));
            out.push(per("xsite_cache_read_only", "1 when the cache refuses writes", i64::from(cache.is_read_only())));
            out.push(per("xsite_cache_epoch", "Active-passive epoch of the cache", cache.epoch() as i64));
        }
        out
    }
}
