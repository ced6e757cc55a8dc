//! The engine: the store of every cache, the HLC clock, the WAL, and the paths a
//! write takes through them.
//!
//! - **Local write** ([`Engine::execute`]): the command locks its keys' shards,
//!   computes the new value, takes `hlc = clock.now()` under the lock, joins the op
//!   into the store with the cache's merge policy, unlocks; then the engine appends
//!   one [`LogEntry`] per key to the WAL (its `seq` is the LSN the WAL assigns) and
//!   replies once the WAL acknowledged them (per the durability mode). Reads never
//!   touch the WAL. While the WAL cannot write ([`Health`]), writes are refused with
//!   `-MISCONF` before they change anything; a write caught by the failure itself
//!   (already joined) gets `-MISCONF` too and its record waits in the WAL writer,
//!   written first once the disk takes it, so the store never keeps a change the
//!   WAL does not get.
//! - **Remote apply** ([`Engine::apply_remote`]): observe the entry's timestamp on
//!   the clock, join it into the store; if it changed anything, append it as is
//!   (origin and seq untouched) to the local WAL and wait for it. Refused while the
//!   WAL cannot write.
//! - **Barrier** ([`Engine::barrier`]): every write holds the write gate (shared)
//!   from the moment it changes the store until its records are queued in the WAL; a
//!   barrier takes the gate exclusively for an instant and then asks the WAL for the
//!   last LSN it assigned, so every change visible in the store has a record at or
//!   below it. Consumers save offsets, and snapshots take effect, only once the WAL
//!   is durable up to a barrier taken after the changes they cover.
//! - **Recovery** ([`Engine::open`], [`Engine::open_after`]): check the WAL against
//!   the newest snapshot and the shipper's checkpoint (no LSN either names is issued
//!   again, and the log says what was found and done), load the newest valid
//!   snapshot, replay the WAL records after it through the same join
//!   (order-independent), start the clock above every timestamp seen.
//! - **Snapshots** ([`Engine::snapshot`]): the snapshot covers `L = wal.last_lsn()`
//!   read before iterating the store — safe because every entry is applied to the
//!   store before it is appended. It may hold later changes too, so it is renamed
//!   into place only after a barrier and an fsync. Two snapshots are kept (a damaged newest one falls
//!   back to the older), so WAL segments are removed only before the older one, and
//!   never past what the log shipper still needs ([`Engine::set_ship_floor`]).
//! - **Maintenance** ([`Engine::run_maintenance`]): active expiry, and a snapshot
//!   when enough WAL was written or enough time passed.

use crate::commands::{self, server, Ctx, Handler, ERR_DB_RANGE, ERR_READONLY};
use crate::config::{Config, StoreConfig, Topology};
use crate::resp::Frame;
use crate::store::codec::{self, CacheHeader, Header, RecordDecoder};
use crate::store::{CacheStore, MemoryGauge, SHARDS};
use crate::wal::snapshot::{latest_snapshot, list_snapshots, prepare_snapshot, read_snapshot, remove_snapshots_before};
use crate::wal::{Health, Lsn, PayloadBuilder, Wal, WalConfig, WalError};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_consumer::merge::Record;
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{decode, encode, CacheName, DecodeError, Hlc, HlcClock, LogEntry, Observed, Op, SiteId, Version};

/// Entries appended to the WAL in one batch at most (a FLUSHDB of many keys is
/// split into batches appended concurrently).
pub const WAL_BATCH_ENTRIES_MAX: usize = 1024;

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
    /// The WAL cannot write (a full disk): nothing is applied until it can.
    #[error("the wal cannot write: {0}")]
    WalUnwritable(String),
}

impl EngineError {
    /// The entry itself is wrong (retrying cannot help): the consumer dead-letters it.
    pub fn is_rejection(&self) -> bool {
        matches!(self, EngineError::UnknownCache(_))
    }
}

/// One named cache: its store, epoch and read-only flag.
#[derive(Debug)]
pub struct CacheState {
    pub name: CacheName,
    pub db: usize,
    pub topology: Topology,
    pub store: CacheStore,
    read_only: AtomicBool,
    epoch: AtomicU64,
}

impl CacheState {
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// Counters the engine keeps (exported by [`Engine::metrics`]).
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub commands: AtomicU64,
    pub local_entries: AtomicU64,
    pub remote_applied: AtomicU64,
    pub remote_unchanged: AtomicU64,
    /// Remote entries applied although the store was over its memory limit.
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

/// What recovery found.
#[derive(Debug, Default)]
struct Recovered {
    snapshot_lsn: Lsn,
    snapshot_records: u64,
    wal_records: u64,
    unknown_cache_entries: u64,
    /// Highest timestamp of a version this site wrote.
    max_local_hlc: Hlc,
    /// Highest timestamp of a version another site wrote.
    max_remote_hlc: Hlc,
    /// Highest epoch seen per cache.
    epochs: HashMap<CacheName, u64>,
    /// The clock's high-water mark stored in the snapshot.
    hlc_high: Hlc,
}

impl Recovered {
    fn see(&mut self, site: &SiteId, version: &Version) {
        self.see_hlc(version.site == *site, version.hlc);
    }

    fn see_hlc(&mut self, local: bool, hlc: Hlc) {
        let max = if local { &mut self.max_local_hlc } else { &mut self.max_remote_hlc };
        *max = (*max).max(hlc);
    }

    /// Every timestamp a record holds: both registers' and each counter total's.
    fn see_record(&mut self, site: &SiteId, rec: &Record) {
        self.see(site, &rec.version);
        self.see(site, &rec.ttl_version);
        if let xsite_consumer::merge::Value::Counter(c) = &rec.value {
            for (s, t) in &c.totals {
                self.see_hlc(s == site, t.hlc);
            }
        }
    }

    /// The clock's floor: above every timestamp this site issued, above every
    /// remote one up to the skew bound (as observing them live would have done), and
    /// above the high-water mark the snapshot kept (timestamps of records gone since).
    fn clock_floor(&self, max_skew_ms: u64) -> Hlc {
        let bound = Hlc::new(wall_clock_ms().saturating_add(max_skew_ms), u16::MAX);
        if self.max_remote_hlc > bound {
            tracing::warn!(remote_hlc = %self.max_remote_hlc, bound = %bound, "stored remote timestamps are beyond the skew bound; the clock starts at the bound");
        }
        self.max_local_hlc.max(self.max_remote_hlc.min(bound)).max(self.hlc_high)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct SnapshotMark {
    lsn: Lsn,
    unix_secs: u64,
}

pub struct Engine {
    /// This engine, for work handed to other tasks (snapshots).
    me: Weak<Engine>,
    site: SiteId,
    clock: HlcClock,
    wal: Wal,
    caches: Vec<CacheState>,
    by_db: HashMap<usize, usize>,
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
        create_dir(&snapshot_dir)?;
        crate::wal::snapshot::remove_temp_files(&snapshot_dir)?;
        let newest_snapshot = list_snapshots(&snapshot_dir)?.first().map_or(Lsn::ZERO, |(l, _)| *l);
        let mut wal_config = WalConfig::new(config.wal_dir(), config.durability);
        wal_config.segment_bytes_max = config.wal.segment_bytes_max;
        wal_config.queue_len_max = config.wal.queue_len_max;
        wal_config.group_bytes_max = config.wal.group_bytes_max;
        wal_config.lsn_floor = newest_snapshot.max(named_elsewhere);
        let (wal, wal_recovery) = Wal::open(wal_config).await?;
        if let Some(t) = &wal_recovery.truncated {
            tracing::warn!(path = %t.path.display(), offset = t.offset, lsn = t.lsn.0, bytes = t.bytes_dropped, "wal tail was cut at open");
        }
        report_positions(&wal_recovery, newest_snapshot, named_elsewhere);
        let gauge = Arc::new(MemoryGauge::new(config.store.memory_bytes_max));
        let caches: Vec<CacheState> = config
            .caches
            .iter()
            .map(|c| CacheState {
                name: c.name.clone(),
                db: c.db,
                topology: c.topology,
                store: CacheStore::new(c.name.clone(), c.merge_policy(), gauge.clone())
                    .with_entry_bytes_max(config.max_entry_bytes()),
                read_only: AtomicBool::new(
                    c.topology == Topology::ActivePassive && c.primary.as_ref() != Some(&config.site),
                ),
                epoch: AtomicU64::new(0),
            })
            .collect();
        let (caches, recovered) = {
            let (wal, dir, site) = (wal.clone(), snapshot_dir.clone(), config.site.clone());
            tokio::task::spawn_blocking(move || {
                let r = recover(&wal, &dir, &site, &caches);
                r.map(|r| (caches, r))
            })
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??
        };
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
            by_db: caches.iter().enumerate().map(|(i, c)| (c.db, i)).collect(),
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
            started,
        });
        let keys: u64 = engine.caches.iter().map(|c| c.store.dbsize()).sum();
        tracing::info!(
            site = %engine.site,
            snapshot_lsn = recovered.snapshot_lsn.0,
            snapshot_records = recovered.snapshot_records,
            wal_records = recovered.wal_records,
            unknown_cache_entries = recovered.unknown_cache_entries,
            keys,
            memory_bytes = engine.gauge.used_bytes(),
            hlc_floor = %hlc_floor,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store recovered"
        );
        Ok(engine)
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
        self.by_db.get(&db).map(|&i| &self.caches[i].name)
    }

    pub fn cache(&self, name: &CacheName) -> Option<&CacheState> {
        self.by_name.get(name).map(|&i| &self.caches[i])
    }

    pub fn cache_by_db(&self, db: usize) -> Option<&CacheState> {
        self.by_db.get(&db).map(|&i| &self.caches[i])
    }

    /// Whether `SELECT db` names a cache.
    pub fn db_exists(&self, db: usize) -> bool {
        self.by_db.contains_key(&db)
    }

    /// Turn a cache read-only (writes get `-READONLY`) or writable again.
    pub fn set_read_only(&self, cache: &CacheName, read_only: bool) {
        if let Some(c) = self.cache(cache) {
            c.read_only.store(read_only, Ordering::Release);
        }
    }

    pub fn is_read_only(&self, cache: &CacheName) -> bool {
        self.cache(cache).is_some_and(|c| c.is_read_only())
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

    /// Runs a data command for a connection that SELECTed `db` and waits until its
    /// writes are durable. `None`: unknown command.
    pub async fn execute(&self, db: usize, args: &[Bytes]) -> Option<Frame> {
        let (reply, durable) = self.execute_deferred(db, args).await?;
        Some(match durable.wait().await {
            Ok(()) => reply,
            Err(e) => write_error_reply(&e),
        })
    }

    /// Runs a data command: applies it to the store and queues its WAL records, but
    /// does not wait for them to be acknowledged. The reply must not be sent before
    /// [`Durable::wait`] succeeds; a connection runs a whole pipeline this way and
    /// then waits once, so the pipeline shares one group commit (as Redis does with
    /// `appendfsync always`).
    ///
    /// While the WAL cannot write, writes are refused with `-MISCONF` before they
    /// change anything; reads go on.
    pub async fn execute_deferred(&self, db: usize, args: &[Bytes]) -> Option<(Frame, Durable)> {
        let spec = commands::lookup(args.first()?)?;
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        if !spec.arity_ok(args.len()) {
            return Some((commands::wrong_arity(spec.name), Durable::default()));
        }
        if spec.write {
            if let Some(reply) = self.refuse_while_unwritable() {
                return Some((reply, Durable::default()));
            }
        }
        let _writing = if spec.write { Some(self.write_gate.read().await) } else { None };
        let f = match spec.handler {
            Handler::Node(cmd) => return Some((server::run(self, db, cmd, args).await, Durable::default())),
            Handler::Cache(f) => f,
        };
        let Some(cache) = self.cache_by_db(db) else {
            return Some((commands::err(ERR_DB_RANGE), Durable::default()));
        };
        if spec.write && cache.is_read_only() {
            return Some((commands::err(ERR_READONLY), Durable::default()));
        }
        let (reply, pending, refused) = {
            let mut ctx = self.ctx(cache);
            let reply = f(&mut ctx, args);
            (reply, ctx.pending, ctx.refused)
        };
        let reply = refused.map_or(reply, commands::refused);
        Some(match self.submit(pending).await {
            Ok(durable) => (reply, durable),
            Err(e) => (write_error_reply(&e), Durable::default()),
        })
    }

    /// `-MISCONF` while the WAL cannot write (see [`Health`]), `None` when it can.
    fn refuse_while_unwritable(&self) -> Option<Frame> {
        match self.wal.health() {
            Health::Ok => None,
            Health::Stalled { error } => Some(Frame::Error(format!(
                "MISCONF xsite cannot write its WAL ({error}); writes are refused until it can, reads go on"
            ))),
            Health::Failed { error } => Some(Frame::Error(format!(
                "MISCONF xsite's WAL failed ({error}); writes are refused until the node is restarted, reads go on"
            ))),
        }
    }

    /// The position every change visible in the store so far is covered by: the
    /// records of writes that already changed the store are queued with LSNs at or
    /// below it. Once [`Wal::durable_lsn`] reaches it, all of that survives a crash.
    pub async fn barrier(&self) -> Result<Lsn, EngineError> {
        drop(self.write_gate.write().await);
        Ok(self.wal.barrier().await?)
    }

    /// A command context for `cache` at the current wall-clock time.
    pub fn ctx<'a>(&'a self, cache: &'a CacheState) -> Ctx<'a> {
        Ctx::new(&self.site, &self.clock, &cache.store, cache.epoch(), wall_clock_ms())
    }

    /// Appends local entries to the WAL (setting each `seq` to its LSN) and waits
    /// until the WAL acknowledged all of them.
    pub async fn commit(&self, entries: Vec<LogEntry>) -> Result<(), EngineError> {
        self.submit(entries).await?.wait().await
    }

    /// Queues local entries in the WAL (setting each `seq` to its LSN), in order;
    /// the returned [`Durable`] waits for them.
    pub async fn submit(&self, entries: Vec<LogEntry>) -> Result<Durable, EngineError> {
        if entries.is_empty() {
            return Ok(Durable::default());
        }
        self.counters.local_entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let bytes = &self.counters.wal_bytes_since_snapshot;
        let build = |mut entry: LogEntry| -> PayloadBuilder {
            let bytes = bytes.clone();
            Box::new(move |lsn: Lsn| {
                entry.seq = lsn.0;
                let payload = encode(&entry);
                bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                payload
            })
        };
        let mut durable = Durable::default();
        if entries.len() == 1 {
            let entry = entries.into_iter().next().expect("one entry");
            durable.single.push(self.wal.submit(build(entry)).await?);
            return Ok(durable);
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
    /// nothing here. While the WAL cannot write nothing is applied
    /// ([`EngineError::WalUnwritable`]): the consumer retries without moving its
    /// offset.
    pub async fn apply_remote(&self, entry: LogEntry) -> Result<bool, EngineError> {
        let cache = self.cache(&entry.cache).ok_or_else(|| EngineError::UnknownCache(entry.cache.clone()))?;
        if entry.op.key().is_none() {
            return Ok(false);
        }
        if let Some(Frame::Error(reason)) = self.refuse_while_unwritable() {
            return Err(EngineError::WalUnwritable(reason));
        }
        if let Observed::SkewExceeded { ahead_ms } = self.clock.observe(entry.hlc) {
            self.counters.skew_exceeded.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(origin = %entry.origin, hlc = %entry.hlc, ahead_ms, max_skew_ms = self.clock.max_skew_ms(), "remote timestamp beyond the skew bound");
        }
        let over_memory = !self.gauge.admits(1);
        let ticket = {
            let _writing = self.write_gate.read().await;
            if !cache.store.apply(&entry.version(), &entry.op) {
                self.counters.remote_unchanged.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            let payload = encode(&entry);
            self.counters.wal_bytes_since_snapshot.fetch_add(payload.len() as u64, Ordering::Relaxed);
            self.wal.submit(move |_lsn| payload).await?
        };
        self.counters.remote_applied.fetch_add(1, Ordering::Relaxed);
        if over_memory {
            let n = self.counters.remote_over_memory.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(10_000) {
                tracing::warn!(
                    used_bytes = self.gauge.used_bytes(),
                    limit_bytes = self.gauge.limit_bytes(),
                    applied_over_limit = n + 1,
                    "remote entries applied over the memory limit"
                );
            }
        }
        ticket.wait().await?;
        Ok(true)
    }

    /// Appends a heartbeat carrying the cache's current epoch (after a promotion), so
    /// other sites learn it even if no write follows.
    pub async fn announce_epoch(&self, cache: &CacheName) -> Result<Lsn, EngineError> {
        let c = self.cache(cache).ok_or_else(|| EngineError::UnknownCache(cache.clone()))?;
        let mut entry = LogEntry {
            id: LogEntry::new_id(),
            origin: self.site.clone(),
            seq: 0,
            hlc: self.clock.now(),
            epoch: c.epoch(),
            cache: cache.clone(),
            op: Op::Heartbeat { applied: BTreeMap::new() },
        };
        let lsn = self
            .wal
            .append(move |lsn: Lsn| {
                entry.seq = lsn.0;
                encode(&entry)
            })
            .await?;
        Ok(lsn)
    }

    /// Forgets tombstones (and expired records) of `cache` whose versions are all
    /// below `below`, a timestamp every site has applied everything under.
    pub fn gc_tombstones(&self, cache: &CacheName, below: Hlc) -> usize {
        let Some(c) = self.cache(cache) else {
            return 0;
        };
        // Without remote sites no entry from a skewed clock can come.
        let skew_ms = if self.config.remotes.is_empty() { 0 } else { self.clock.max_skew_ms() };
        let n = c.store.gc_tombstones(below, skew_ms);
        self.counters.tombstones_collected.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// One active expiry cycle over every cache. Returns the keys expired.
    pub fn expire_cycle(&self) -> usize {
        let now = wall_clock_ms();
        let per_shard = self.store_config.expiry_keys_per_cycle_max;
        let reclaim = self.config.remotes.is_empty();
        let n: usize = self.caches.iter().map(|c| c.store.expire_cycle(now, per_shard, reclaim)).sum();
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
    fn prepare_snapshot_file(
        &self,
        lsn: Lsn,
        hlc_high: Hlc,
    ) -> Result<crate::wal::snapshot::PendingSnapshot, EngineError> {
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
                "xsite_remote_over_memory",
                "Remote entries applied while over the memory limit",
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

    /// Every record of a cache, tombstones included (for pushing state to a site).
    pub fn export(&self, cache: &CacheName) -> Vec<(Vec<u8>, Record)> {
        let Some(c) = self.cache(cache) else {
            return Vec::new();
        };
        (0..SHARDS)
            .flat_map(|si| {
                let locked = c.store.lock_shard(si);
                locked.records().map(|(k, r)| (k.to_vec(), r.clone())).collect::<Vec<_>>()
            })
            .collect()
    }

    /// The live keys of a cache and the bytes a reader sees (empty for an unknown cache).
    pub fn live_contents(&self, cache: &CacheName) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.cache(cache).map(|c| c.store.live_contents(wall_clock_ms())).unwrap_or_default()
    }

    /// An order-independent hash of the live keys and values of a cache.
    pub fn digest(&self, cache: &CacheName) -> u64 {
        self.cache(cache).map_or(0, |c| c.store.digest(wall_clock_ms()))
    }
}

/// WAL records a command queued; [`Durable::wait`] resolves once the WAL has
/// acknowledged them all (per the durability mode).
#[derive(Debug, Default)]
pub struct Durable {
    single: Vec<crate::wal::AppendTicket>,
    batches: Vec<crate::wal::BatchTicket>,
}

impl Durable {
    pub fn is_empty(&self) -> bool {
        self.single.is_empty() && self.batches.is_empty()
    }

    pub async fn wait(self) -> Result<(), EngineError> {
        for t in self.single {
            t.wait().await?;
        }
        for b in self.batches {
            b.wait().await?;
        }
        Ok(())
    }
}

impl crate::connection::CommandHandler for Engine {
    fn execute<'a>(
        &'a self,
        db: usize,
        args: &'a [Bytes],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<crate::connection::Executed>> + Send + 'a>> {
        Box::pin(async move {
            let (frame, durable) = self.execute_deferred(db, args).await?;
            if durable.is_empty() {
                return Some(frame.into());
            }
            let wait = Box::pin(async move {
                durable.wait().await.map_err(|e| match write_error_reply(&e) {
                    Frame::Error(text) => text,
                    _ => format!("ERR {e}"),
                })
            });
            Some(crate::connection::Executed { frame, durable: Some(wait) })
        })
    }

    fn db_exists(&self, db: usize) -> bool {
        Engine::db_exists(self, db)
    }
}

/// The reply to a write whose WAL records were not acknowledged: `-MISCONF` when
/// the WAL cannot write (the write is not durable, and is kept to be written once
/// the disk takes it), `-ERR` otherwise.
fn write_error_reply(e: &EngineError) -> Frame {
    match e {
        EngineError::Wal(WalError::Stalled(cause)) => Frame::Error(format!(
            "MISCONF xsite cannot write its WAL ({cause}); writes are refused until it can, reads go on"
        )),
        EngineError::Wal(WalError::WriterFailed(cause)) => Frame::Error(format!(
            "MISCONF xsite's WAL failed ({cause}); writes are refused until the node is restarted, reads go on"
        )),
        other => Frame::Error(format!("ERR {other}")),
    }
}

/// Says how the WAL, the newest snapshot and the shipper's checkpoint relate after
/// recovery, and what was done when they disagreed.
fn report_positions(wal: &crate::wal::Recovery, snapshot: Lsn, checkpoint: Lsn) {
    match wal.skipped {
        None => tracing::info!(
            wal_oldest_lsn = wal.oldest_lsn.0,
            wal_last_lsn = wal.last_lsn.0,
            snapshot_lsn = snapshot.0,
            shipped_lsn = checkpoint.0,
            "recovery: wal, snapshot and shipper checkpoint agree"
        ),
        Some((from, to)) => {
            tracing::error!(
                wal_ended_at = from.prev().0,
                snapshot_lsn = snapshot.0,
                shipped_lsn = checkpoint.0,
                skipped_from = from.0,
                skipped_to = to.0,
                "recovery: the wal ends before lsns the snapshot or the shipper checkpoint name; new records continue after them so no lsn is reused"
            );
            if checkpoint >= from {
                tracing::error!(
                    lost_from = from.0,
                    lost_to = checkpoint.0,
                    "recovery: this site lost records of its own that it had already shipped; other sites have them. Rebuild this site from its topic (xsite replay) to get them back"
                );
            }
        }
    }
}

/// Loads the newest valid snapshot into the stores, then replays the WAL after it.
fn recover(wal: &Wal, snapshot_dir: &Path, site: &SiteId, caches: &[CacheState]) -> Result<Recovered, EngineError> {
    let by_name: HashMap<&CacheName, &CacheState> = caches.iter().map(|c| (&c.name, c)).collect();
    let mut r = Recovered::default();
    if let Some((lsn, path)) = latest_snapshot(snapshot_dir)? {
        load_snapshot(&path, site, &by_name, &mut r)?;
        r.snapshot_lsn = lsn;
    }
    r.wal_records = wal.replay(r.snapshot_lsn.next(), |lsn, payload| {
        let entry = decode(payload).map_err(|source| EngineError::Decode { lsn, source })?;
        r.see(site, &entry.version());
        if let Op::Incr { base, .. } = &entry.op {
            r.see(site, &base.version());
        }
        let Some(cache) = by_name.get(&entry.cache) else {
            r.unknown_cache_entries += 1;
            return Ok(());
        };
        let epoch = r.epochs.entry(entry.cache.clone()).or_default();
        *epoch = (*epoch).max(entry.epoch);
        cache.store.apply(&entry.version(), &entry.op);
        Ok::<(), EngineError>(())
    })?;
    if r.unknown_cache_entries > 0 {
        tracing::warn!(
            entries = r.unknown_cache_entries,
            "wal holds entries of caches this node no longer has; skipped"
        );
    }
    Ok(r)
}

fn load_snapshot(
    path: &Path,
    site: &SiteId,
    by_name: &HashMap<&CacheName, &CacheState>,
    r: &mut Recovered,
) -> Result<(), EngineError> {
    let bad = |message: String| EngineError::Snapshot { path: path.to_path_buf(), message };
    let mut header: Option<Vec<Option<&CacheState>>> = None;
    let mut decoder = RecordDecoder::default();
    let mut skipped = 0u64;
    read_snapshot(path, |payload| {
        let Some(caches) = &header else {
            let h = codec::decode_header(payload).map_err(|e| bad(e.to_string()))?;
            r.hlc_high = r.hlc_high.max(h.hlc_high.unwrap_or(Hlc::ZERO));
            let mut slots = Vec::new();
            for c in &h.caches {
                let epoch = r.epochs.entry(c.name.clone()).or_default();
                *epoch = (*epoch).max(c.epoch);
                slots.push(by_name.get(&c.name).copied());
            }
            header = Some(slots);
            return Ok(());
        };
        let (ci, key, rec) = decoder.decode(payload).map_err(|e| bad(e.to_string()))?;
        let slot =
            caches.get(usize::from(ci)).ok_or_else(|| bad(codec::CodecError::UnknownCacheIndex(ci).to_string()))?;
        r.see_record(site, &rec);
        r.snapshot_records += 1;
        match slot {
            Some(cache) => cache.store.load(&key, rec),
            None => skipped += 1,
        }
        Ok::<(), EngineError>(())
    })?;
    if skipped > 0 {
        tracing::warn!(path = %path.display(), records = skipped, "snapshot holds records of caches this node no longer has; skipped");
    }
    Ok(())
}
