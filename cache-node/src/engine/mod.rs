//! The engine: the store of every cache, the HLC clock, the WAL, and the paths a
//! change takes through them. It knows nothing of RESP: the command layer
//! ([`crate::commands`]) runs commands against it and turns its typed answers
//! ([`EngineError`], [`crate::wal::Health`]) into Redis replies.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Engine`] and [`CacheState`]: the caches, clock and WAL, opening, accessors |
//! | `unit.rs` | transaction units: an `EXEC`'s entries written as one WAL record, a remote unit applied as one |
//! | `write.rs` | the write path: the write gate and the barrier, local entries queued in the WAL ([`Durable`]), remote entries applied, epoch announcements |
//! | `recovery.rs` | start-up: the WAL checked against the snapshots and the shipper's checkpoint, the newest snapshot loaded, the WAL replayed, the clock's floor |
//! | `maintenance.rs` | snapshots, active expiry, tombstone collection, and the loop that runs them |
//! | `watermark.rs` | this site's own watermark: below it every local write is durable (and shipped) |
//! | `stats.rs` | the engine's counters, [`EngineStats`] and its [`Metric`]s |
//! | `contents.rs` | a cache read whole: every record (push-state), the live contents and their digest |
//! | `error.rs` | [`EngineError`] |
//!
//! The paths:
//!
//! - **Local write** (a command of [`crate::commands`]): the command locks its keys'
//!   shards, computes the new value, takes `hlc = clock.now()` under the lock, joins
//!   the op into the store with the cache's merge policy, unlocks; then
//!   [`Engine::submit`] appends one [`LogEntry`](xsite_schemas::LogEntry) per key to
//!   the WAL (its `seq` is the LSN the WAL assigns) and the reply waits until the WAL
//!   acknowledged them ([`Durable::wait`], per the durability mode). Reads never
//!   touch the WAL. While the WAL cannot write ([`Engine::writable`]), writes are
//!   refused before they change anything; a write caught by the failure itself
//!   (already joined) is refused too and its record waits in the WAL writer, written
//!   first once the disk takes it, so the store never keeps a change the WAL does
//!   not get.
//! - **Remote apply** ([`Engine::apply_remote`]): observe the entry's timestamp on
//!   the clock, join it into the store; if it changed anything, append it as is
//!   (origin and seq untouched) to the local WAL and wait for it. Refused while the
//!   WAL cannot write.
//! - **Barrier** ([`Engine::barrier`]): every write holds the write gate (shared,
//!   [`Engine::begin_write`]) from the moment it changes the store until its records
//!   are queued in the WAL; a barrier takes the gate exclusively for an instant and
//!   then asks the WAL for the last LSN it assigned, so every change visible in the
//!   store has a record at or below it. Consumers save offsets, and snapshots take
//!   effect, only once the WAL is durable up to a barrier taken after the changes
//!   they cover.
//! - **Recovery** ([`Engine::open`], [`Engine::open_after`]): check the WAL against
//!   the newest snapshot and the shipper's checkpoint (no LSN either names is issued
//!   again, and the log says what was found and done), load the newest valid
//!   snapshot, replay the WAL records after it through the same join
//!   (order-independent), start the clock above every timestamp seen.
//! - **Snapshots** ([`Engine::snapshot`]): the snapshot covers `L = wal.last_lsn()`
//!   read before iterating the store — safe because every entry is applied to the
//!   store before it is appended. It may hold later changes too, so it is renamed
//!   into place only after a barrier and an fsync. Two snapshots are kept (a damaged
//!   newest one falls back to the older), so WAL segments are removed only before the
//!   older one, and never past what the log shipper still needs
//!   ([`Engine::set_ship_floor`]).
//! - **Maintenance** ([`Engine::run_maintenance`]): active expiry, and a snapshot
//!   when enough WAL was written or enough time passed.
//! - **Keyspace notifications** ([`Engine::notifier`]): a local write's command, a
//!   remote entry that changed a key and the expiry cycle all call the one hook,
//!   [`crate::notify::Notifier::notify`].

mod contents;
mod error;
mod maintenance;
mod recovery;
mod stats;
mod unit;
pub mod watermark;
mod write;

pub use error::EngineError;
pub use stats::{CacheStats, EngineCounters, EngineStats, Metric};
pub use unit::{UnitApplied, UnitReaders};
pub use write::{Durable, Writing, WAL_BATCH_ENTRIES_MAX};

use crate::config::{CacheConfig, Config, StoreConfig, Topology};
use crate::store::{CacheStore, MemoryGauge};
use crate::wal::{Lsn, Wal};
use maintenance::SnapshotMark;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{CacheName, Hlc, HlcClock, SiteId};

/// One named cache: its store, epoch and read-only flag.
#[derive(Debug)]
pub struct CacheState {
    pub name: CacheName,
    pub db: usize,
    pub topology: Topology,
    pub store: CacheStore,
    read_only: AtomicBool,
    epoch: AtomicU64,
    /// The primary site, as [`crate::topology::Roles`] knows it (active-passive;
    /// `None`: none known, or active-active).
    primary: Mutex<Option<SiteId>>,
    /// Writes are acknowledged only before this instant, in µs since the engine
    /// started ([`Engine::set_lease`]): `u64::MAX` (no lease needed) unless the
    /// failover mode is `lease`; 0: fenced.
    lease_until_us: AtomicU64,
}

impl CacheState {
    /// An empty cache as configured: read-only when it is active-passive and this
    /// site is not its primary.
    fn new(c: &CacheConfig, config: &Config, gauge: &Arc<MemoryGauge>) -> CacheState {
        CacheState {
            name: c.name.clone(),
            db: c.db,
            topology: c.topology,
            store: CacheStore::new(c.name.clone(), c.merge_policy(), gauge.clone())
                .with_entry_bytes_max(config.max_entry_bytes())
                .with_sites(
                    std::iter::once(config.site.clone()).chain(config.remotes.iter().map(|r| r.site.clone())).collect(),
                ),
            read_only: AtomicBool::new(
                c.topology == Topology::ActivePassive && c.primary.as_ref() != Some(&config.site),
            ),
            epoch: AtomicU64::new(0),
            primary: Mutex::new(c.primary.clone()),
            lease_until_us: AtomicU64::new(
                if config.failover.mode == crate::config::FailoverMode::Lease && c.topology == Topology::ActivePassive {
                    0
                } else {
                    u64::MAX
                },
            ),
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    /// Whether this cache's writes wait on a lease (failover mode `lease`).
    pub fn is_leased(&self) -> bool {
        self.lease_until_us.load(Ordering::Acquire) != u64::MAX
    }
    pub fn primary(&self) -> Option<SiteId> {
        self.primary.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

pub struct Engine {
    /// This engine, for work handed to other tasks (snapshots).
    me: Weak<Engine>,
    site: SiteId,
    clock: HlcClock,
    wal: Wal,
    caches: Vec<CacheState>,
    /// Index into `caches` by db number (a lookup on every command: no hashing).
    by_db: Vec<Option<usize>>,
    by_name: HashMap<CacheName, usize>,
    gauge: Arc<MemoryGauge>,
    /// The oldest LSN the log shipper still needs (u64::MAX without replication).
    ship_floor: AtomicU64,
    snapshot_dir: PathBuf,
    store_config: StoreConfig,
    config: Config,
    counters: EngineCounters,
    last_snapshot: Mutex<SnapshotMark>,
    snapshot_lock: tokio::sync::Mutex<()>,
    /// Held (shared) by every write from the moment it changes the store until its
    /// WAL records are queued; [`Engine::barrier`] takes it exclusively for an
    /// instant, so every change already visible in the store has an LSN at or below
    /// the barrier's.
    write_gate: tokio::sync::RwLock<()>,
    /// The highest collection floor used so far (see [`Engine::gc_tombstones`]).
    collection_floor: AtomicU64,
    /// Where the node keeps what it promised other sites (set once, by the node).
    promises: std::sync::OnceLock<watermark::Promises>,
    /// The host and port clients reach the RESP port at (set once, by the node, when
    /// the port is bound): what `ROLE` and `INFO replication` name.
    announce: std::sync::OnceLock<(String, u16)>,
    /// The RESP server's connections (set once, by the node).
    clients: std::sync::OnceLock<crate::clients::Clients>,
    /// What each remote site's heartbeats report (set once, by the node, with
    /// replication): how far each has applied this site's entries, for `WAIT`.
    remotes: std::sync::OnceLock<std::collections::BTreeMap<SiteId, Arc<xsite_consumer::ConsumerStats>>>,
    /// Transaction units: who reads them, how the last one was written.
    units: unit::Units,
    /// Keyspace notifications, and the data port's pub/sub hub they go to.
    notifier: crate::notify::Notifier,
    /// The Lua scripts `SCRIPT LOAD` and `EVAL` cached, by SHA1.
    scripts: crate::commands::script::Scripts,
    started: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("site", &self.site).field("caches", &self.caches).finish_non_exhaustive()
    }
}

fn create_dir(path: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(path).map_err(|source| EngineError::CreateDir { path: path.to_path_buf(), source })
}

fn unix_secs() -> u64 {
    wall_clock_ms() / 1000
}

impl Engine {
    /// Opens the WAL in `config.wal_dir()`, loads the newest valid snapshot from
    /// `config.snapshot_dir()`, replays the WAL after it, and starts the clock above
    /// every timestamp found.
    pub async fn open(config: &Config) -> Result<Arc<Engine>, EngineError> {
        Engine::open_after(config, Lsn::ZERO).await
    }

    /// [`Engine::open`] where LSNs up to `named_elsewhere` are already in use outside
    /// this node's files (the log shipper's checkpoint). Recovery checks the WAL
    /// against it and against the snapshots: if the WAL ends before either (it lost
    /// records that were durable, or was restored from an older copy), new records
    /// continue after them instead of reusing their LSNs, and the log says so.
    pub async fn open_after(config: &Config, named_elsewhere: Lsn) -> Result<Arc<Engine>, EngineError> {
        let started = Instant::now();
        let snapshot_dir = config.snapshot_dir();
        let wal = recovery::open_wal(config, &snapshot_dir, named_elsewhere).await?;
        let gauge = Arc::new(MemoryGauge::new(config.store.memory_bytes_max));
        let caches = config.caches.iter().map(|c| CacheState::new(c, config, &gauge)).collect();
        let (caches, recovered) = recovery::recover(&wal, &snapshot_dir, &config.site, caches).await?;
        for c in &caches {
            if let Some(e) = recovered.epochs.get(&c.name) {
                c.epoch.store(*e, Ordering::Release);
            }
        }
        let hlc_floor = recovered.clock_floor(config.hlc.max_skew_ms);
        let engine = Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            site: config.site.clone(),
            clock: HlcClock::new(hlc_floor, config.hlc.max_skew_ms),
            wal,
            by_db: {
                let mut by_db = vec![None; caches.iter().map(|c| c.db + 1).max().unwrap_or(0)];
                for (i, c) in caches.iter().enumerate() {
                    by_db[c.db] = Some(i);
                }
                by_db
            },
            by_name: caches.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect(),
            caches,
            gauge,
            ship_floor: AtomicU64::new(if config.kafka.is_some() { 0 } else { u64::MAX }),
            snapshot_dir,
            store_config: config.store.clone(),
            config: config.clone(),
            counters: EngineCounters::default(),
            last_snapshot: Mutex::new(SnapshotMark { lsn: recovered.snapshot_lsn, unix_secs: unix_secs() }),
            snapshot_lock: tokio::sync::Mutex::new(()),
            write_gate: tokio::sync::RwLock::new(()),
            collection_floor: AtomicU64::new(0),
            promises: std::sync::OnceLock::new(),
            announce: std::sync::OnceLock::new(),
            clients: std::sync::OnceLock::new(),
            remotes: std::sync::OnceLock::new(),
            units: unit::Units::default(),
            notifier: crate::notify::Notifier::new(
                crate::pubsub::Hub::new(config.pubsub.limits()),
                config.pubsub.notify_flags(),
            ),
            scripts: Default::default(),
            started,
        });
        recovered.report(&engine, hlc_floor, started);
        Ok(engine)
    }

    /// Keeps this engine's promises in `promises` from now on, and takes back what
    /// it promised before a restart: the clock starts above its last watermark, the
    /// collection floor where it was.
    pub fn keep_promises(&self, promises: watermark::Promises) {
        self.clock.raise_to(promises.watermark());
        self.collection_floor.fetch_max(promises.collection_floor().as_u64(), Ordering::AcqRel);
        let _ = self.promises.set(promises);
    }

    /// Where the node keeps its promises (none in tests that run an engine alone).
    pub fn promises(&self) -> Option<&watermark::Promises> {
        self.promises.get()
    }

    /// A counted handle to this engine (`None` only while it is being dropped).
    pub fn handle(&self) -> Option<Arc<Engine>> {
        self.me.upgrade()
    }

    pub fn site(&self) -> &SiteId {
        &self.site
    }

    pub fn clock(&self) -> &HlcClock {
        &self.clock
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Keyspace notifications (`notify-keyspace-events`): the one hook every change
    /// of a key calls, local or applied from another site.
    pub fn notifier(&self) -> &crate::notify::Notifier {
        &self.notifier
    }

    /// The script cache (`SCRIPT LOAD`, `EVAL`, `EVALSHA`).
    pub fn scripts(&self) -> &crate::commands::script::Scripts {
        &self.scripts
    }

    /// The data port's pub/sub hub (`PUBLISH`, `SUBSCRIBE`, the notifications).
    pub fn hub(&self) -> &crate::pubsub::Hub {
        self.notifier.hub()
    }

    pub fn memory(&self) -> &MemoryGauge {
        &self.gauge
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn caches(&self) -> &[CacheState] {
        &self.caches
    }

    pub fn cache_for_db(&self, db: usize) -> Option<&CacheName> {
        self.cache_by_db(db).map(|c| &c.name)
    }

    pub fn cache(&self, name: &CacheName) -> Option<&CacheState> {
        self.by_name.get(name).map(|&i| &self.caches[i])
    }

    pub fn cache_by_db(&self, db: usize) -> Option<&CacheState> {
        self.by_db.get(db).copied().flatten().map(|i| &self.caches[i])
    }

    /// Whether `SELECT db` names a cache.
    pub fn db_exists(&self, db: usize) -> bool {
        self.cache_by_db(db).is_some()
    }

    /// Turn a cache read-only (writes are refused) or writable again.
    pub fn set_read_only(&self, cache: &CacheName, read_only: bool) {
        if let Some(c) = self.cache(cache) {
            c.read_only.store(read_only, Ordering::Release);
        }
    }

    pub fn is_read_only(&self, cache: &CacheName) -> bool {
        self.cache(cache).is_some_and(|c| c.is_read_only())
    }

    /// Until when this node may acknowledge writes to `cache` (`None`: no lease
    /// needed; an instant in the past: fenced). See `replication::failover`.
    pub fn set_lease(&self, cache: &CacheName, until: Option<Instant>) {
        let Some(c) = self.cache(cache) else { return };
        let us = match until {
            None => u64::MAX,
            Some(t) => t.saturating_duration_since(self.started).as_micros().min(u128::from(u64::MAX - 1)) as u64,
        };
        c.lease_until_us.store(us, Ordering::Release);
    }

    /// Refuses every write to `cache` from now on, until [`Engine::set_lease`].
    pub fn fence(&self, cache: &CacheName) {
        if let Some(c) = self.cache(cache) {
            c.lease_until_us.store(0, Ordering::Release);
        }
    }

    /// Whether a write to `cache` may be acknowledged now: no lease is needed, or
    /// the lease holds (checked when a write starts and again before its reply).
    pub fn lease_holds(&self, cache: &CacheState) -> bool {
        let until = cache.lease_until_us.load(Ordering::Acquire);
        until == u64::MAX || (self.started.elapsed().as_micros() as u64) < until
    }

    /// Records the primary site of `cache` (active-passive; `None`: none known).
    pub fn set_primary(&self, cache: &CacheName, primary: Option<SiteId>) {
        if let Some(c) = self.cache(cache) {
            *c.primary.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = primary;
        }
    }

    /// The remote sites' consumer statistics (once; later calls are ignored).
    pub fn set_remotes(&self, remotes: std::collections::BTreeMap<SiteId, Arc<xsite_consumer::ConsumerStats>>) {
        let _ = self.remotes.set(remotes);
    }

    /// How many remote sites report, in their heartbeats, that they have applied
    /// every entry of this site up to and including timestamp `t` (0 without
    /// replication).
    pub fn remotes_applied(&self, t: Hlc) -> usize {
        self.remotes.get().map_or(0, |remotes| {
            remotes.values().filter(|s| s.reported_watermarks().get(&self.site).is_some_and(|h| *h > t)).count()
        })
    }

    /// The RESP server's connections (once; later calls are ignored).
    pub fn set_clients(&self, clients: crate::clients::Clients) {
        let _ = self.clients.set(clients);
    }

    /// Closes the connections of the clients using `cache` here — it stopped taking
    /// writes (a demotion, a self-fence) — so that their pools ask Sentinel again,
    /// as Sentinel's `CLIENT KILL TYPE normal` makes them do. Never otherwise.
    pub fn close_clients(&self, cache: &CacheName, why: &str) {
        let (Some(clients), Some(c)) = (self.clients.get(), self.cache(cache)) else { return };
        let closed = clients.close_db(c.db);
        if closed > 0 {
            tracing::warn!(cache = %cache, db = c.db, closed, reason = why, "closed the connections of this cache's clients so that they look for its new primary");
        }
    }

    /// Closes every client connection, whatever its database (this site was taken
    /// offline: pools look for another site).
    pub fn close_all_clients(&self, why: &str) {
        let Some(clients) = self.clients.get() else { return };
        let closed = clients.close_all();
        tracing::warn!(
            closed,
            reason = why,
            "closed the connections of every client so that they look for another site"
        );
    }

    /// Sets where clients reach this node's RESP port (once; later calls are ignored).
    pub fn set_announce(&self, host: String, port: u16) {
        let _ = self.announce.set((host, port));
    }

    /// Where clients reach `site`'s node: this node's announced address, or a
    /// remote's `[[remote]] announce`. `None` when not known.
    pub fn address_of(&self, site: &SiteId) -> Option<(String, u16)> {
        if site == &self.site {
            return self.announce.get().cloned();
        }
        let remote = self.config.remotes.iter().find(|r| &r.site == site)?;
        crate::config::parse_host_port(remote.announce.as_deref()?).ok()
    }

    /// The cache's active-passive epoch (0 for an unknown cache).
    pub fn epoch(&self, cache: &CacheName) -> u64 {
        self.cache(cache).map_or(0, |c| c.epoch())
    }

    pub fn set_epoch(&self, cache: &CacheName, epoch: u64) {
        if let Some(c) = self.cache(cache) {
            c.epoch.store(epoch, Ordering::Release);
        }
    }

    /// The log shipper's acknowledged position: `lsn` is the oldest record it still
    /// needs. Only moves forward.
    pub fn set_ship_floor(&self, lsn: Lsn) {
        self.ship_floor.fetch_max(lsn.0, Ordering::AcqRel);
    }

    pub fn ship_floor(&self) -> Lsn {
        Lsn(self.ship_floor.load(Ordering::Acquire))
    }
}
