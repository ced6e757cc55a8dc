//! Wiring of the log shipper and the consumers to the engine; the health checks of
//! every remote site ([`health`]) and the replication lag ([`lag`]).

pub mod failover;
pub mod health;
pub mod lag;

use crate::config::{Config, KafkaConfig, HEARTBEAT_INTERVAL_MS};
use crate::engine::watermark::LocalWatermark;
use crate::engine::Engine;
use crate::topology::Roles;
use crate::wal::{Durability, Lsn, Wal};
use futures::future::BoxFuture;
use health::{Action, Check, HealthSettings, OfflineCause, SiteHealth};
use lag::{LagBook, LagHistogram, Probe};
use rdkafka::config::ClientConfig;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xsite_consumer::{Applied, Applier, ApplyError, ConsumerConfig, ConsumerStats, OffsetStore};
use xsite_log_shipper::{EntrySource, ShipCheckpoint, ShipperConfig, ShipperStats, SourceError, SourceRecord};
use xsite_schemas::kafka::{self, ProducerSettings, TopicSpec};
use xsite_schemas::{CacheName, Hlc, LogEntry, SiteId};

/// Payload bytes read from the WAL in one batch at most.
const SHIP_READ_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The WAL as the shipper's source.
///
/// Only what is durable is shipped, in every durability mode: another site must
/// never hold a write this site could lose in a crash (its LSN and timestamp would
/// be issued again, and this site would lack a write the others have). With
/// durability `no`, where nothing else fsyncs, the source fsyncs the WAL itself
/// before it ships records that are written but not yet durable (off the reply
/// path: replies never wait for it).
pub struct WalSource(pub Wal);

impl WalSource {
    fn shippable(&self) -> Lsn {
        self.0.durable_lsn()
    }
}

impl EntrySource for WalSource {
    fn read(
        &self,
        from: u64,
        records_max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<SourceRecord>, SourceError>> {
        Box::pin(async move {
            let no_sync = self.0.config().durability == Durability::No;
            if self.shippable().0 < from && no_sync {
                if !wait.is_zero() && self.0.last_lsn().0 < from {
                    let mut written = self.0.subscribe();
                    let _ = tokio::time::timeout(wait, written.wait_for(|l| l.0 >= from)).await;
                }
                if self.0.last_lsn().0 >= from {
                    self.0.sync().await.map_err(|e| SourceError { lsn: from, message: e.to_string() })?;
                }
            } else if self.shippable().0 < from && !wait.is_zero() {
                let mut durable = self.0.subscribe_durable();
                let _ = tokio::time::timeout(wait, durable.wait_for(|l| l.0 >= from)).await;
            }
            let available = (self.shippable().0 + 1).saturating_sub(from) as usize;
            if available == 0 {
                return Ok(Vec::new());
            }
            let records = self
                .0
                .read_from(Lsn(from), records_max.min(available), SHIP_READ_BYTES_MAX)
                .await
                .map_err(|e| SourceError { lsn: from, message: e.to_string() })?;
            Ok(records.into_iter().map(|(lsn, payload)| SourceRecord { lsn: lsn.0, payload }).collect())
        })
    }

    fn last_lsn(&self) -> u64 {
        self.shippable().0
    }
}

/// The engine as the consumers' destination, behind the epoch fence.
pub struct NodeApplier {
    pub engine: Arc<Engine>,
    pub roles: Arc<Roles>,
    /// Remote sites silent longer than `offline_max_ms`, with the collection floor
    /// when they were left behind: their entries below it are dropped.
    pub left_behind: Mutex<BTreeMap<SiteId, Hlc>>,
    /// Entries dropped that way.
    pub stale_dropped: std::sync::atomic::AtomicU64,
    /// Per cache, remote entries that changed the store and that did not.
    pub conflicts: BTreeMap<CacheName, ConflictCounts>,
}

/// Remote entries of one cache resolved by its merge policy: `won` changed the
/// store, `lost` changed nothing (what this site holds outranks them, or they were
/// delivered again: at-least-once).
#[derive(Debug, Default)]
pub struct ConflictCounts {
    pub policy: String,
    pub won: AtomicU64,
    pub lost: AtomicU64,
}

impl NodeApplier {
    fn count(&self, cache: &CacheName, won: bool) {
        if let Some(c) = self.conflicts.get(cache) {
            let n = if won { &c.won } else { &c.lost };
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `entry` is older than the floor its site was left behind at (and is
    /// dropped, counted).
    fn left_behind_drops(&self, entry: &LogEntry) -> bool {
        let floor = self.left_behind.lock().expect("left-behind lock").get(&entry.origin).copied();
        if floor.is_none_or(|f| entry.hlc >= f) {
            return false;
        }
        let n = self.stale_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(1_000) {
            tracing::warn!(origin = %entry.origin, hlc = %entry.hlc, dropped = n + 1, "dropping an entry older than the collection floor from a site that was silent longer than offline_max_ms");
        }
        true
    }

    /// A transaction unit: each member through the epoch fence (an unknown cache
    /// refuses the whole unit: dead-lettered) and the left-behind floor, then the
    /// rest applied as one.
    async fn apply_unit(&self, unit: LogEntry) -> Result<Applied, ApplyError> {
        let members = unit.members();
        for m in &members {
            self.roles.admit(m).map_err(|f| ApplyError::Rejected(format!("transaction unit: {}", f.0)))?;
        }
        let kept: Vec<xsite_schemas::Member> = match &unit.op {
            xsite_schemas::Op::Multi { entries } => entries
                .iter()
                .zip(&members)
                .filter(|(_, m)| !self.left_behind_drops(m))
                .map(|(member, _)| member.clone())
                .collect(),
            _ => unreachable!("a unit"),
        };
        let applied = match kept.len() {
            0 => return Ok(Applied::Unchanged),
            n if n == members.len() => self.engine.apply_remote_unit(unit).await,
            _ => {
                self.engine.apply_remote_unit(LogEntry { op: xsite_schemas::Op::Multi { entries: kept }, ..unit }).await
            }
        };
        match applied {
            Ok(applied) => {
                for (cache, won) in &applied.members {
                    self.count(cache, *won);
                }
                Ok(if applied.changed() > 0 { Applied::Changed } else { Applied::Unchanged })
            }
            Err(e) if e.is_rejection() => Err(ApplyError::Rejected(e.to_string())),
            Err(e) => Err(ApplyError::Transient(e.to_string())),
        }
    }
}

impl Applier for NodeApplier {
    fn apply(&self, entry: LogEntry) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            if matches!(entry.op, xsite_schemas::Op::Multi { .. }) {
                return self.apply_unit(entry).await;
            }
            self.roles.admit(&entry).map_err(|f| ApplyError::Rejected(f.0))?;
            if entry.op.key().is_none() {
                return Ok(Applied::Unchanged); // heartbeat: its epoch is all it carries today
            }
            if self.left_behind_drops(&entry) {
                return Ok(Applied::Unchanged);
            }
            let cache = entry.cache.clone();
            match self.engine.apply_remote(entry).await {
                Ok(true) => {
                    self.count(&cache, true);
                    Ok(Applied::Changed)
                }
                Ok(false) => {
                    self.count(&cache, false);
                    Ok(Applied::Unchanged)
                }
                Err(e) if e.is_rejection() => Err(ApplyError::Rejected(e.to_string())),
                Err(e) => Err(ApplyError::Transient(e.to_string())),
            }
        })
    }

    fn barrier(&self) -> BoxFuture<'_, Result<u64, ApplyError>> {
        Box::pin(
            async move { self.engine.barrier().await.map(|l| l.0).map_err(|e| ApplyError::Transient(e.to_string())) },
        )
    }

    fn durable_position(&self) -> u64 {
        self.engine.wal().durable_lsn().0
    }

    fn durable_reaches(&self, position: u64) -> BoxFuture<'_, ()> {
        let mut durable = self.engine.wal().subscribe_durable();
        Box::pin(async move {
            // `wait_for` looks at the value first, then waits for changes: nothing
            // missed, and no wake-up for a move that stays below `position`.
            let _ = tokio::time::timeout(DURABLE_WAIT_MAX, durable.wait_for(|lsn| lsn.0 >= position)).await;
        })
    }

    fn sync(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.engine.wal().config().durability == Durability::No {
                if let Err(err) = self.engine.wal().sync().await {
                    tracing::debug!(error = %err, "wal sync for consumer checkpoints failed");
                }
            }
        })
    }
}

/// Bound on each push-state request of a state transfer.
const STATE_TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest a consumer waits for news of the WAL's durable position before it looks
/// again anyway.
const DURABLE_WAIT_MAX: Duration = Duration::from_secs(1);

/// librdkafka properties common to every client of a cluster
/// ([`xsite_schemas::kafka`] sets every client up).
pub fn client_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    kafka::client_config(bootstrap, &kafka.properties)
}

/// The properties of every producer this node runs, on the local cluster: the
/// shipper's, push-state's and the dead-letter producer of each consumer.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let settings = ProducerSettings {
        linger_ms: kafka.linger_ms,
        compression: kafka.compression.clone(),
        message_timeout_ms: kafka.message_timeout_ms,
        message_bytes_max: kafka.producer_message_bytes_max(),
    };
    kafka::producer_config(client_config(kafka, &kafka.bootstrap_servers), &settings)
}

/// The dead-letter topic of a site.
pub fn dlq_topic(kafka: &KafkaConfig, site: &SiteId) -> String {
    format!("{}dlq.{}", kafka.topic_prefix, site)
}

/// Create the site's topic and dead-letter topic if they do not exist.
pub async fn create_topics(config: &Config) -> anyhow::Result<()> {
    let Some(kafka) = &config.kafka else { return Ok(()) };
    if !kafka.create_topics {
        return Ok(());
    }
    let replication = kafka.replication_factor;
    let topics = [
        TopicSpec {
            name: config.topic_for(&config.site).expect("kafka configured"),
            partitions: kafka.partitions,
            replication,
        },
        TopicSpec { name: dlq_topic(kafka, &config.site), partitions: 1, replication },
    ];
    kafka::create_topics(&client_config(kafka, &kafka.bootstrap_servers), &topics).await?;
    Ok(())
}

pub fn shipper_config(config: &Config, kafka: &KafkaConfig) -> ShipperConfig {
    ShipperConfig {
        site: config.site.clone(),
        topic: config.topic_for(&config.site).expect("kafka configured"),
        producer: producer_config(kafka),
        in_flight_bytes_max: kafka.in_flight_bytes_max,
        batch_records_max: 1024,
        checkpoint_flush_interval_ms: 200,
        retry_backoff_ms: 500,
        backlog_records_alarm: kafka.backlog_records_alarm,
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
        partitions: kafka.partitions,
        beat_extras: Default::default(),
    }
}

/// This site's watermarks: per origin, a timestamp up to which it has applied every
/// entry of that origin (itself included, see [`crate::engine::watermark`]). An origin with
/// no watermark yet is left out, which holds tombstone collection back.
pub fn watermarks(
    engine: &Engine,
    local: &LocalWatermark,
    consumers: &BTreeMap<SiteId, Arc<ConsumerStats>>,
) -> BTreeMap<SiteId, Hlc> {
    let mut marks: BTreeMap<SiteId, Hlc> =
        consumers.iter().filter_map(|(site, s)| s.origin_watermark().map(|h| (site.clone(), h))).collect();
    if let Some(own) = local.get() {
        marks.insert(engine.site().clone(), own);
    }
    marks
}

/// The remote sites whose latest heartbeat does not say they read log format
/// `version`, or that have not sent one yet: while there is any, a transaction is
/// written entry by entry (version 3, see `crate::engine`'s `unit.rs`), and hashes
/// are not written (version 4).
pub fn sites_not_reading(consumers: &BTreeMap<SiteId, Arc<ConsumerStats>>, version: u32) -> Vec<(SiteId, Option<u32>)> {
    consumers
        .iter()
        .map(|(site, s)| (site.clone(), s.reads_version()))
        .filter(|(_, reads)| reads.is_none_or(|v| v < version))
        .collect()
}

/// The heartbeat a caught-up shipper sends: this site's watermarks.
fn heartbeat_builder(
    config: &Config,
    engine: Arc<Engine>,
    local: Arc<LocalWatermark>,
    consumers: BTreeMap<SiteId, Arc<ConsumerStats>>,
    lease_book: Arc<failover::LeaseBook>,
) -> xsite_log_shipper::HeartbeatBuilder {
    let cache = config.caches[0].name.clone();
    Box::new(move |beat| {
        let applied = match beat {
            xsite_log_shipper::Beat::Watermarks => watermarks(&engine, &local, &consumers),
            xsite_log_shipper::Beat::Marker => BTreeMap::new(),
        };
        // Sent now, or later: the lease counts from before it left (see `failover`).
        if let Some(own) = applied.get(engine.site()) {
            lease_book.sent(*own, std::time::Instant::now());
        }
        let op = xsite_schemas::Op::Heartbeat { applied };
        let entry = LogEntry {
            seq: engine.wal().last_lsn().0,
            ..LogEntry::new(engine.site().clone(), engine.clock().now(), engine.epoch(&cache), cache.clone(), op)
        };
        Some(xsite_schemas::encode(&entry))
    })
}

pub fn consumer_config(config: &Config, kafka: &KafkaConfig, remote: &SiteId) -> ConsumerConfig {
    let r = config.remotes.iter().find(|r| &r.site == remote);
    let bootstrap = r.and_then(|r| r.bootstrap_servers.clone()).unwrap_or_else(|| kafka.bootstrap_servers.clone());
    let mut client = client_config(kafka, &bootstrap);
    client
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string())
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string());
    ConsumerConfig {
        local_site: config.site.clone(),
        remote_site: remote.clone(),
        topic: config.topic_for(remote).expect("kafka configured"),
        client,
        dlq_topic: dlq_topic(kafka, &config.site),
        dlq_client: producer_config(kafka),
        batch_records_max: 512,
        retry_backoff_ms: 200,
        checkpoint_flush_interval_ms: 200,
        request_timeout_ms: 10_000,
    }
}

struct RemoteHandle {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Longest wait for a consumer to stop when its site is taken offline.
const CONSUMER_STOP_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for the shipper, and each consumer, to stop when the node stops.
const ROLE_STOP_WAIT: Duration = Duration::from_secs(15);
/// How often [`Replication::wait_applied_by`] looks at the remote site's heartbeats.
const APPLIED_POLL: Duration = Duration::from_millis(20);

/// The running shipper and consumers of a node.
/// Whether an operator took this site offline at this node, kept in sled so that a
/// restart does not bring it back by itself; its heartbeats say so
/// ([`xsite_schemas::KAFKA_HEADER_OFFLINE`]).
struct OwnSite {
    tree: sled::Tree,
    flag: AtomicBool,
    beat_extras: Arc<kafka::BeatHeaders>,
}

impl OwnSite {
    const KEY: &'static str = "own_site_offline";

    fn open(db: &sled::Db, beat_extras: Arc<kafka::BeatHeaders>) -> anyhow::Result<OwnSite> {
        let tree = db.open_tree("site_state")?;
        let offline = tree.get(Self::KEY)?.is_some_and(|v| v.as_ref() == [1]);
        let own = OwnSite { tree, flag: AtomicBool::new(offline), beat_extras };
        own.advertise(offline);
        Ok(own)
    }

    fn advertise(&self, offline: bool) {
        self.beat_extras.set(xsite_schemas::KAFKA_HEADER_OFFLINE, offline.then(|| "1".to_string()));
    }

    fn is_offline(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets the state, durably first; whether it changed.
    fn set(&self, offline: bool, site: &SiteId) -> anyhow::Result<bool> {
        if self.is_offline() == offline {
            return Ok(false);
        }
        self.tree.insert(Self::KEY, &[u8::from(offline)])?;
        self.tree.flush()?;
        self.flag.store(offline, std::sync::atomic::Ordering::Release);
        self.advertise(offline);
        match offline {
            true => {
                tracing::warn!(site = %site, reason = "taken offline by an operator", "this site is offline: no sentinel names it, its clients are sent elsewhere")
            }
            false => {
                tracing::info!(site = %site, reason = "brought online by an operator", "this site is online: named to clients again once caught up")
            }
        }
        Ok(true)
    }
}

pub struct Replication {
    config: Config,
    /// This site's own watermark: below it every local write is in Kafka.
    local: Arc<LocalWatermark>,
    applier: Arc<NodeApplier>,
    offsets: OffsetStore,
    parent: CancellationToken,
    pub shipper_stats: Arc<ShipperStats>,
    pub consumer_stats: BTreeMap<SiteId, Arc<ConsumerStats>>,
    /// Per remote site: its health checks ([`health`]) and its lag ([`lag`]).
    pub health: BTreeMap<SiteId, Arc<SiteHealth>>,
    pub lag: BTreeMap<SiteId, Arc<LagBook>>,
    /// `xsite_replication_lag_seconds`, every remote's partitions.
    pub lag_histogram: LagHistogram,
    /// When this node sent its recent heartbeats (the lease, [`failover`]).
    pub lease_book: Arc<failover::LeaseBook>,
    /// This site taken offline by an operator at this node (a drain, [`OwnSite`]).
    own: OwnSite,
    /// Headers this node's heartbeats carry now (offline, failover claims).
    pub beat_extras: Arc<kafka::BeatHeaders>,
    remotes: Mutex<BTreeMap<SiteId, RemoteHandle>>,
    shipper: Mutex<Option<JoinHandle<()>>>,
    watchers: Mutex<Vec<JoinHandle<()>>>,
}

impl Replication {
    /// Start the shipper, one consumer per remote site, and the health checks of
    /// every remote site.
    pub fn start(
        config: &Config,
        engine: Arc<Engine>,
        roles: Arc<Roles>,
        db: &sled::Db,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<Replication>> {
        let kafka = config.kafka.as_ref().expect("replication needs [kafka]");
        let checkpoint = Arc::new(ShipCheckpoint::open(db)?);
        let shipper_stats = Arc::new(ShipperStats::default());
        let source: Arc<dyn EntrySource> = Arc::new(WalSource(engine.wal().clone()));
        let floor_engine = engine.clone();
        let on_acked = Box::new(move |lsn: u64| floor_engine.set_ship_floor(Lsn(lsn + 1)));
        let consumer_stats: BTreeMap<SiteId, Arc<ConsumerStats>> =
            config.remotes.iter().map(|r| (r.site.clone(), Arc::new(ConsumerStats::new(r.site.clone())))).collect();
        for stats in consumer_stats.values() {
            stats.heard(); // the wait for a first heartbeat starts now
        }
        let readers = consumer_stats.clone();
        engine.set_unit_readers(Box::new(move |version| sites_not_reading(&readers, version)));
        let local = Arc::new(LocalWatermark::default());
        let lease_book = Arc::new(failover::LeaseBook::default());
        let heartbeat =
            heartbeat_builder(config, engine.clone(), local.clone(), consumer_stats.clone(), lease_book.clone());
        let beat_extras = Arc::new(kafka::BeatHeaders::default());
        let own = OwnSite::open(db, beat_extras.clone())?;
        if own.is_offline() {
            tracing::warn!(site = %config.site, "this site stays offline, as an operator left it (POST /sites/{}/offline): bring it online to be named to clients again", config.site);
        }
        let shipper = tokio::spawn({
            let mut cfg = shipper_config(config, kafka);
            cfg.beat_extras = beat_extras.clone();
            let (stats, cancel) = (shipper_stats.clone(), cancel.clone());
            async move {
                let parts = xsite_log_shipper::ShipperParts {
                    config: cfg,
                    source,
                    checkpoint,
                    stats,
                    on_acked,
                    heartbeat: Some(heartbeat),
                };
                let result = xsite_log_shipper::run(parts, cancel);
                if let Err(err) = result.await {
                    tracing::error!(error = %err, "log shipper stopped with an error");
                }
            }
        });
        let acked = shipper_stats.clone();
        let covered = Box::new(move || Lsn(acked.acked_lsn.load(std::sync::atomic::Ordering::Acquire)));
        tokio::spawn(crate::engine::watermark::track(engine.clone(), covered, local.clone(), cancel.clone()));
        let settings = HealthSettings::from(&config.sites);
        let lag_histogram = lag::lag_histogram();
        let conflicts = config
            .caches
            .iter()
            .map(|c| (c.name.clone(), ConflictCounts { policy: c.policy.clone(), ..ConflictCounts::default() }))
            .collect();
        let repl = Arc::new(Replication {
            config: config.clone(),
            local,
            applier: Arc::new(NodeApplier {
                engine,
                roles,
                left_behind: Mutex::new(BTreeMap::new()),
                stale_dropped: Default::default(),
                conflicts,
            }),
            offsets: OffsetStore::open(db)?,
            parent: cancel.clone(),
            shipper_stats,
            health: config
                .remotes
                .iter()
                .map(|r| (r.site.clone(), Arc::new(SiteHealth::new(settings.clone()))))
                .collect(),
            lag: config
                .remotes
                .iter()
                .map(|r| (r.site.clone(), Arc::new(LagBook::new(r.site.clone(), lag_histogram.clone()))))
                .collect(),
            lag_histogram,
            lease_book,
            consumer_stats,
            own,
            beat_extras,
            remotes: Mutex::new(BTreeMap::new()),
            shipper: Mutex::new(Some(shipper)),
            watchers: Mutex::new(Vec::new()),
        });
        for r in &config.remotes {
            repl.start_consumer(&r.site, "node started")?;
            let watcher = tokio::spawn(repl.clone().watch(r.site.clone(), cancel.clone()));
            repl.watchers.lock().expect("watchers lock").push(watcher);
        }
        Ok(repl)
    }

    fn configured(&self, site: &SiteId) -> anyhow::Result<&Arc<ConsumerStats>> {
        self.consumer_stats.get(site).ok_or_else(|| anyhow::anyhow!("site '{site}' is not a configured remote"))
    }

    /// An operator brings a remote site online: consume it again, from where it
    /// stopped; or this site, taken offline here: it is named to clients again once
    /// caught up. Errors if the site is not configured.
    pub fn bring_online(&self, site: &SiteId) -> anyhow::Result<bool> {
        if site == &self.config.site {
            return self.own.set(false, site);
        }
        self.configured(site)?;
        self.health[site].lock().brought_online(Instant::now());
        self.start_consumer(site, "brought online by an operator")
    }

    /// An operator takes a remote site offline: stop consuming it; its entries wait
    /// in Kafka until an operator brings it back (the health checks do not).
    ///
    /// This site itself, taken offline at its own node, is *drained*: it keeps
    /// replicating both ways and serving the clients that connect to it, but no
    /// sentinel of any site names it, its REST availability check fails, and its
    /// clients' connections are closed once so that their pools look again. Refused
    /// while this node is the primary of an active-passive cache: switch it over
    /// first.
    pub async fn take_offline(&self, site: &SiteId) -> anyhow::Result<bool> {
        if site == &self.config.site {
            return self.take_own_site_offline();
        }
        self.configured(site)?;
        self.health[site].lock().operator_offline();
        self.stop_consumer(
            site,
            OfflineCause::Operator,
            &format!("taken offline by an operator (POST /sites/{site}/offline)"),
        )
        .await
    }

    fn take_own_site_offline(&self) -> anyhow::Result<bool> {
        let site = &self.config.site;
        let engine = &self.applier.engine;
        let primary_of =
            engine.caches().iter().find(|c| c.topology == crate::config::Topology::ActivePassive && !c.is_read_only());
        if let Some(cache) = primary_of {
            anyhow::bail!(
                "site '{site}' is the primary of the active-passive cache '{}': switch it over first (xsite site switchover {})",
                cache.name,
                cache.name
            );
        }
        let changed = self.own.set(true, site)?;
        if changed {
            engine.close_all_clients("this site was taken offline by an operator");
        }
        Ok(changed)
    }

    /// Whether an operator has taken this site offline at this node.
    pub fn own_site_offline(&self) -> bool {
        self.own.is_offline()
    }

    /// Start consuming a remote site (again), for `reason`.
    fn start_consumer(&self, site: &SiteId, reason: &str) -> anyhow::Result<bool> {
        let kafka = self.config.kafka.as_ref().expect("replication needs [kafka]");
        let stats = self.configured(site)?;
        let mut remotes = self.remotes.lock().expect("remotes lock");
        if remotes.contains_key(site) {
            return Ok(false);
        }
        stats.remote.resuming(reason);
        let cancel = self.parent.child_token();
        let cfg = consumer_config(&self.config, kafka, site);
        let (applier, offsets, stats, c) = (self.applier.clone(), self.offsets.clone(), stats.clone(), cancel.clone());
        let site_name = site.clone();
        let task = tokio::spawn(async move {
            let parts = xsite_consumer::ConsumerParts { config: cfg, applier, offsets, stats };
            if let Err(err) = xsite_consumer::run(parts, c).await {
                tracing::error!(remote = %site_name, error = %err, "consumer stopped with an error");
            }
        });
        remotes.insert(site.clone(), RemoteHandle { cancel, task });
        Ok(true)
    }

    /// Stop consuming a remote site, for `reason`; its entries wait in Kafka.
    async fn stop_consumer(&self, site: &SiteId, cause: OfflineCause, reason: &str) -> anyhow::Result<bool> {
        let stats = self.configured(site)?.clone();
        let handle = self.remotes.lock().expect("remotes lock").remove(site);
        if let Some(handle) = &handle {
            handle.cancel.cancel();
        }
        if let Some(handle) = handle {
            if tokio::time::timeout(CONSUMER_STOP_WAIT, handle.task).await.is_err() {
                tracing::warn!(remote = %site, wait_ms = CONSUMER_STOP_WAIT.as_millis() as u64, "consumer did not stop in time");
            }
            self.health[site].count_taken_offline(cause);
            stats.remote.stopped(reason);
            return Ok(true);
        }
        stats.remote.stopped(reason);
        Ok(false)
    }

    /// Checks a remote site every `sites.health_check_interval_ms` (with backoff
    /// while it is offline because of its checks), refreshes its lag, and takes it
    /// offline or brings it back as [`health`] decides. Until `cancel`.
    async fn watch(self: Arc<Self>, site: SiteId, cancel: CancellationToken) {
        let kafka = self.config.kafka.as_ref().expect("replication needs [kafka]");
        let cfg = consumer_config(&self.config, kafka, &site);
        let timeout = Duration::from_millis(self.config.sites.health_check_timeout_ms);
        let (health, lag, stats) = (&self.health[&site], &self.lag[&site], &self.consumer_stats[&site]);
        let mut probe: Option<Probe> = None;
        loop {
            let pause = health.lock().next_check_after();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if probe.is_none() {
                probe = Probe::new(&cfg.client, cfg.topic.clone(), timeout)
                    .inspect_err(|e| tracing::warn!(remote = %site, error = %e, "no health probe"))
                    .ok();
            }
            let offsets = match &probe {
                Some(p) => p.offsets().await,
                None => Err("no kafka client for the health checks".to_string()),
            };
            let partitions = offsets.as_ref().map_or_else(|_| lag.partitions().len(), Vec::len);
            let applied = (0..partitions as i32)
                .filter_map(|p| self.offsets.get(&cfg.topic, p).ok().flatten().map(|o| (p, o)))
                .collect();
            lag.record(Instant::now(), offsets.as_deref().ok(), &applied);
            let check = Check {
                probe: offsets.map(|o| o.iter().map(|x| x.high).sum()),
                heartbeats: stats.heartbeats.load(Ordering::Relaxed),
                consumer_errors: stats.errors.load(Ordering::Relaxed),
                consumer_error: stats.last_error().map(|e| e.message),
                received: stats.received.load(Ordering::Relaxed),
            };
            match health.observe(check) {
                None => {}
                Some(Action::TakeOffline { cause, reason }) => {
                    let _ = self.stop_consumer(&site, cause, &reason).await;
                }
                // An operator may have taken it offline meanwhile.
                Some(Action::BringOnline { reason }) if health.status().offline_cause.is_none() => {
                    let _ = self.start_consumer(&site, &reason);
                }
                Some(Action::BringOnline { .. }) => {}
                Some(Action::WaitForOperator) => stats.remote.offline_because(&format!(
                    "reachable and progressing again; waiting for POST /sites/{site}/online (sites.auto_bring_online is false)"
                )),
            }
        }
    }

    /// A timestamp below which every site has applied every site's entries: the
    /// lowest of this site's watermarks and of what each remote site last reported.
    /// `None` until every site has reported on every origin. Tombstones below it
    /// can be forgotten: no entry older than it can still arrive anywhere.
    pub fn gc_floor(&self) -> Option<Hlc> {
        let behind = self.leave_behind_silent_sites();
        self.floor_without(&behind)
    }

    /// The remote sites left out of the collection floor: silent longer than
    /// `kafka.offline_max_ms`, until a state transfer brings them back online. A site
    /// left behind is marked `needs-state-transfer`, and its entries older than the
    /// floor of that moment are dropped from then on (see [`NodeApplier`]).
    fn leave_behind_silent_sites(&self) -> Vec<SiteId> {
        let max = self.config.kafka.as_ref().map_or(0, |k| k.offline_max_ms);
        let now = xsite_schemas::hlc::wall_clock_ms();
        let mut left = self.applier.left_behind.lock().expect("left-behind lock");
        left.retain(|site, _| {
            let back = self.consumer_stats[site].remote.state() == xsite_consumer::RemoteState::Online;
            if back {
                tracing::info!(remote = %site, "remote site rejoined after a state transfer; it holds back collection again");
            }
            !back
        });
        let silent: Vec<SiteId> = self
            .consumer_stats
            .iter()
            .filter(|(site, s)| {
                max > 0
                    && !left.contains_key(*site)
                    && now.saturating_sub(s.last_heard_ms.load(std::sync::atomic::Ordering::Relaxed)) > max
            })
            .map(|(site, _)| site.clone())
            .collect();
        drop(left);
        for site in silent {
            let others: Vec<SiteId> = self
                .applier
                .left_behind
                .lock()
                .expect("left-behind lock")
                .keys()
                .cloned()
                .chain([site.clone()])
                .collect();
            let floor = self.floor_without(&others).unwrap_or(Hlc::ZERO);
            self.consumer_stats[&site].remote.gap(format!(
                "silent for more than offline_max_ms ({max} ms): it no longer holds back tombstone collection here, its entries older than {floor} are dropped, and it must rejoin by a state transfer"
            ));
            tracing::error!(remote = %site, offline_max_ms = max, floor = %floor, "remote site left behind: collection no longer waits for it");
            self.applier.left_behind.lock().expect("left-behind lock").insert(site, floor);
        }
        self.applier.left_behind.lock().expect("left-behind lock").keys().cloned().collect()
    }

    /// The lowest watermark over every site's view of every origin, leaving out the
    /// sites `behind` (as viewers and as origins).
    fn floor_without(&self, behind: &[SiteId]) -> Option<Hlc> {
        let sites: Vec<&SiteId> = std::iter::once(&self.config.site)
            .chain(self.config.remotes.iter().map(|r| &r.site))
            .filter(|s| !behind.contains(s))
            .collect();
        let mut views = vec![watermarks(&self.applier.engine, &self.local, &self.consumer_stats)];
        views.extend(
            self.consumer_stats.iter().filter(|(s, _)| !behind.contains(s)).map(|(_, s)| s.reported_watermarks()),
        );
        let mut floor: Option<Hlc> = None;
        for view in &views {
            for site in &sites {
                let h = *view.get(*site)?;
                floor = Some(floor.map_or(h, |f| f.min(h)));
            }
        }
        floor
    }

    /// Per cache, the remote entries its merge policy resolved.
    pub fn applier_conflicts(&self) -> &BTreeMap<CacheName, ConflictCounts> {
        &self.applier.conflicts
    }

    /// Entries dropped because their site was left behind (`offline_max_ms`) and they
    /// are older than the collection floor.
    pub fn stale_dropped(&self) -> u64 {
        self.applier.stale_dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This site's watermarks of every origin, itself included (what its
    /// heartbeats report; see [`watermarks`]).
    pub fn watermark_view(&self) -> BTreeMap<SiteId, Hlc> {
        watermarks(&self.applier.engine, &self.local, &self.consumer_stats)
    }

    /// Waits until `site` reports (in its heartbeats) that it has applied every entry
    /// of this site below `t`; returns how long that took, or an error after `timeout`.
    pub async fn wait_applied_by(&self, site: &SiteId, t: Hlc, timeout: Duration) -> anyhow::Result<Duration> {
        let stats = self.configured(site)?;
        let started = Instant::now();
        loop {
            let theirs = stats.reported_watermarks().get(&self.config.site).copied();
            if theirs.is_some_and(|h| h >= t) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                anyhow::bail!(
                    "{site} had not applied this site's entries after {} ms (it reports {}; this site's own watermark is {})",
                    timeout.as_millis(),
                    theirs.map_or_else(|| "nothing".to_string(), |h| h.to_string()),
                    self.local.get().map_or_else(|| "none yet".to_string(), |h| h.to_string()),
                );
            }
            tokio::time::sleep(APPLIED_POLL).await;
        }
    }

    /// This site's own watermark (see [`crate::engine::watermark`]).
    pub fn local_watermark(&self) -> Option<Hlc> {
        self.local.get()
    }

    /// Closes a gap in what this site has of `site` (see `xsite_consumer::remote`):
    /// asks the remote node to push its state (every cache, through its admin API,
    /// `[[remote]] admin_url`), or — with `pushed` — takes the operator's word that
    /// it did; then the gap closes once this site has consumed the remote topic up
    /// to where it ends now. Returns the number of entries pushed (0 with `pushed`).
    pub async fn state_transfer(&self, site: &SiteId, pushed: bool) -> anyhow::Result<u64> {
        let stats =
            self.consumer_stats.get(site).ok_or_else(|| anyhow::anyhow!("site '{site}' is not a configured remote"))?;
        let remote = self.config.remotes.iter().find(|r| &r.site == site).expect("configured remote");
        let mut count = 0;
        if !pushed {
            let Some(url) = &remote.admin_url else {
                anyhow::bail!(
                    "no admin_url for remote '{site}': run POST <its admin>/caches/<cache>/push-state at {site} for every cache, then POST /sites/{site}/state-transfer?pushed=true here"
                );
            };
            let http = reqwest::Client::builder().timeout(STATE_TRANSFER_TIMEOUT).build()?;
            for cache in &self.config.caches {
                let target = format!("{}/caches/{}/push-state", url.trim_end_matches('/'), cache.name);
                let mut request = http.post(&target);
                if let Some(token) = &remote.admin_token {
                    request = request.bearer_auth(token);
                }
                let resp = request.send().await.map_err(|e| anyhow::anyhow!("POST {target}: {e}"))?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                anyhow::ensure!(status.is_success(), "POST {target}: {status} {body}");
                count += body["pushed"].as_u64().unwrap_or(0);
            }
        }
        let kafka = self.config.kafka.as_ref().expect("replication needs [kafka]");
        let cfg = consumer_config(&self.config, kafka, site);
        let marks = xsite_consumer::fetch_marks(&cfg.client, &cfg).await.map_err(|e| anyhow::anyhow!(e))?;
        stats.remote.transferring(xsite_consumer::ends_of(&marks));
        tracing::warn!(remote = %site, pushed = count, "state transfer under way; the gap closes once the pushed entries are applied");
        Ok(count)
    }

    pub fn online_sites(&self) -> Vec<SiteId> {
        self.remotes.lock().expect("remotes lock").keys().cloned().collect()
    }

    /// Every saved offset with the one on disk: `(topic, partition, saved, flushed)`.
    pub fn offsets(&self) -> Vec<(String, i32, i64, Option<i64>)> {
        self.offsets
            .all()
            .into_iter()
            .map(|(t, p, o)| {
                let flushed = self.offsets.flushed(&t, p);
                (t, p, o, flushed)
            })
            .collect()
    }

    /// Wait for the health checks, the consumers and the shipper to stop (after the
    /// parent token is cancelled).
    pub async fn join(&self) {
        let watchers: Vec<_> = std::mem::take(&mut *self.watchers.lock().expect("watchers lock"));
        for w in watchers {
            let _ = tokio::time::timeout(CONSUMER_STOP_WAIT, w).await;
        }
        let handles: Vec<_> = std::mem::take(&mut *self.remotes.lock().expect("remotes lock")).into_values().collect();
        for h in handles {
            h.cancel.cancel();
            let _ = tokio::time::timeout(ROLE_STOP_WAIT, h.task).await;
        }
        let shipper = self.shipper.lock().expect("shipper lock").take();
        if let Some(s) = shipper {
            let _ = tokio::time::timeout(ROLE_STOP_WAIT, s).await;
        }
    }
}

/// Entries that recreate a record exactly, each with its original version.
pub fn record_entries(
    cache: &xsite_schemas::CacheName,
    key: &[u8],
    rec: &xsite_consumer::merge::Record,
) -> Vec<LogEntry> {
    use xsite_consumer::merge::Value;
    use xsite_schemas::{CounterBase, Op, Version};
    let entry = |v: &Version, op: Op| LogEntry::new(v.site.clone(), v.hlc, v.epoch, cache.clone(), op);
    let key = key.to_vec();
    let mut out = Vec::new();
    // A counter started on a never-written key has the zero version as its base (so
    // first increments at two sites add up): it has a value all the same.
    if rec.version != Version::zero() || matches!(rec.value, Value::Counter(_)) {
        match &rec.value {
            Value::Bytes(b) => out.push(entry(
                &rec.version,
                Op::Put { key: key.clone(), value: b.clone(), expire_at_ms: None, keep_ttl: true },
            )),
            Value::Tombstone => out.push(entry(&rec.version, Op::Delete { key: key.clone() })),
            Value::Counter(c) => {
                // A counter from nothing after a floor is pushed as such: the receiver
                // then takes what it holds below the floor as the same nothing.
                let base = if c.floor > Hlc::ZERO {
                    CounterBase::after_floor(c.floor)
                } else {
                    CounterBase { dead: c.base_dead, ..CounterBase::on(&rec.version, c.base) }
                };
                for (site, t) in &c.totals {
                    let v = Version::with_epoch(rec.version.epoch, t.hlc, site.clone());
                    out.push(entry(&v, Op::Incr { key: key.clone(), delta: 0, total: t.total, base: base.clone() }));
                }
            }
        }
    }
    if let Some(h) = rec.hash() {
        use xsite_consumer::hash::FieldState;
        use xsite_schemas::{FieldBase, FieldValue};
        // What every delete of the whole hash saw, at the highest version of the
        // hash part (an HCLEAR leaves the expiry alone).
        out.push(entry(&h.top, Op::HClear { key: key.clone(), seen: h.cleared.clone() }));
        for (name, f) in &h.fields {
            let field = name.to_vec();
            match &f.state {
                FieldState::Bytes(b) => out.push(entry(
                    &f.version,
                    Op::HSet { key: key.clone(), fields: vec![FieldValue { field, value: b.to_vec() }], seen: None },
                )),
                FieldState::Removed => out.push(entry(&f.version, Op::HDel { key: key.clone(), fields: vec![field] })),
                FieldState::Float(c) => {
                    let base =
                        xsite_schemas::FloatBase { value: c.base, ..xsite_schemas::FloatBase::on(&f.version, 0.0) };
                    for (site, t) in &c.totals {
                        let v = Version::with_epoch(t.epoch, t.hlc, site.clone());
                        let op = Op::HIncrFloat {
                            key: key.clone(),
                            field: field.clone(),
                            delta: xsite_schemas::Float(0.0),
                            total: t.total,
                            base: base.clone(),
                            seen: None,
                        };
                        out.push(entry(&v, op));
                    }
                }
                FieldState::Counter(c) => {
                    let base = FieldBase { reset: c.reset, ..FieldBase::on(&f.version, c.base) };
                    for (site, t) in &c.totals {
                        let v = Version::with_epoch(t.epoch, t.hlc, site.clone());
                        let op = Op::HIncr {
                            key: key.clone(),
                            field: field.clone(),
                            delta: 0,
                            total: t.total,
                            base: base.clone(),
                            seen: None,
                        };
                        out.push(entry(&v, op));
                    }
                }
            }
        }
    }
    if let Some(set) = rec.set() {
        // What every delete of the whole set saw, then each member's removes (at the
        // set part's top: a remove's own version only raises it) and live adds.
        out.push(entry(&set.top, Op::SClear { key: key.clone(), seen: set.cleared.clone() }));
        for (name, e) in &set.members {
            if !e.removed().is_empty() {
                let seen = e.removed().iter().cloned().collect();
                let members = vec![xsite_schemas::MemberSeen { member: name.to_vec(), seen }];
                out.push(entry(&set.top, Op::SRem { key: key.clone(), members }));
            }
            for v in e.adds() {
                out.push(entry(v, Op::SAdd { key: key.clone(), members: vec![name.to_vec()], seen: None }));
            }
        }
    }
    if let Some(l) = rec.list() {
        // What every delete of the whole list saw and the removed places (at the
        // list part's top: a remove's own version only raises it), then each
        // element at the version of its value: its own put's, or its last LSET's.
        out.push(entry(&l.top, Op::LClear { key: key.clone(), seen: l.cleared.clone() }));
        let removed: Vec<xsite_schemas::Place> = l.removed.iter().cloned().collect();
        for places in removed.chunks(PUSHED_LIST_PLACES_MAX) {
            out.push(entry(&l.top, Op::LRem { key: key.clone(), places: places.to_vec() }));
        }
        for (place, item) in &l.items {
            let version = item.set.clone().unwrap_or_else(|| place.id().version());
            let items = vec![xsite_schemas::ListItem { place: place.clone(), value: item.value.clone() }];
            out.push(entry(&version, Op::LPut { key: key.clone(), items, seen: None }));
        }
    }
    if let Some(z) = rec.zset() {
        use xsite_consumer::hash::FieldState;
        use xsite_schemas::{Score, ScoredMember};
        let set = &z.members;
        // As for a set: what deletes saw, then each member's removes, at the top.
        out.push(entry(&set.top, Op::ZClear { key: key.clone(), seen: set.cleared.clone() }));
        for (name, e) in &set.members {
            if !e.removed().is_empty() {
                let seen = e.removed().iter().cloned().collect();
                let members = vec![xsite_schemas::MemberSeen { member: name.to_vec(), seen }];
                out.push(entry(&set.top, Op::ZRem { key: key.clone(), members }));
            }
        }
        // Each score: a register as the add that wrote it, a counter as its totals
        // (each an add too). Every other live add goes, after the score, as an
        // increment on the zero version, which adds the member and leaves a score
        // above the zero version as it is: a score on the zero version (counting from
        // nothing) has every live add among its totals.
        for (name, f) in &z.scores.fields {
            let zadd = |score: f64| Op::ZAdd {
                key: key.clone(),
                members: vec![ScoredMember { member: name.to_vec(), score: Score(score) }],
                seen: None,
            };
            let score = xsite_consumer::zset::score_of(f).unwrap_or(0.0);
            let mut written: Vec<Version> = vec![f.version.clone()];
            match &f.state {
                FieldState::Float(c) => {
                    let base = xsite_schemas::FloatBase {
                        value: c.base,
                        reset: c.reset,
                        ..xsite_schemas::FloatBase::on(&f.version, 0.0)
                    };
                    for (site, t) in &c.totals {
                        let v = Version::with_epoch(t.epoch, t.hlc, site.clone());
                        written.push(v.clone());
                        let op = Op::ZIncr {
                            key: key.clone(),
                            member: name.to_vec(),
                            delta: xsite_schemas::Float(0.0),
                            total: t.total,
                            base: base.clone(),
                            seen: None,
                        };
                        out.push(entry(&v, op));
                    }
                }
                _ => out.push(entry(&f.version, zadd(score))),
            }
            for v in set.members.get(&**name).map(|e| e.adds()).unwrap_or_default() {
                if written.contains(v) {
                    continue;
                }
                let below = Version::zero();
                let op = Op::ZIncr {
                    key: key.clone(),
                    member: name.to_vec(),
                    delta: xsite_schemas::Float(0.0),
                    total: xsite_schemas::Float(0.0),
                    base: xsite_schemas::FloatBase::on(&below, 0.0),
                    seen: None,
                };
                out.push(entry(v, op));
            }
        }
    }
    if rec.ttl_version != Version::zero() {
        out.push(entry(&rec.ttl_version, Op::Expire { key, expire_at_ms: rec.expire_at_ms() }));
    }
    out
}

/// Deliveries awaited together at most while pushing state.
const PUSH_IN_FLIGHT_MAX: usize = 10_000;
/// Removed list places per pushed `lrem` entry.
const PUSHED_LIST_PLACES_MAX: usize = 64;

/// Publish every record of `cache` (tombstones included) to this site's topic with
/// its original versions, so a site that missed changes (e.g. beyond Kafka's
/// retention) catches up. Applying them is a join: whatever a site already has wins
/// or ties. The messages carry the headers the shipper's do (`xsite-origin` names
/// each entry's origin). Returns the number of entries published.
pub async fn push_state(config: &Config, engine: &Engine, cache: &xsite_schemas::CacheName) -> anyhow::Result<u64> {
    use rdkafka::producer::FutureRecord;
    let kafka = config.kafka.as_ref().ok_or_else(|| anyhow::anyhow!("replication is not configured"))?;
    let topic = config.topic_for(&config.site).expect("kafka configured");
    let producer = kafka::producer(&producer_config(kafka))?;
    let records = engine.export(cache);
    let mut pushed = 0u64;
    let mut pending = Vec::new();
    for (key, rec) in &records {
        for e in record_entries(cache, key, rec) {
            let payload = xsite_schemas::encode(&e);
            let record = FutureRecord::to(&topic)
                .key(key.as_slice())
                .payload(&payload)
                .headers(kafka::headers(&e.origin, xsite_schemas::format_version_of(&e)));
            let delivery = producer
                .send_result(record)
                .map_err(|(err, _)| anyhow::anyhow!("queueing an entry for {topic}: {err}"))?;
            pending.push(delivery);
            if pending.len() >= PUSH_IN_FLIGHT_MAX {
                pushed += await_all(std::mem::take(&mut pending)).await?;
            }
        }
    }
    pushed += await_all(pending).await?;
    tracing::info!(cache = %cache, pushed, topic = %topic, "pushed state");
    Ok(pushed)
}

async fn await_all(pending: Vec<rdkafka::producer::DeliveryFuture>) -> anyhow::Result<u64> {
    let n = pending.len() as u64;
    for r in futures::future::join_all(pending).await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => anyhow::bail!("delivering pushed state: {err}"),
            Err(_) => anyhow::bail!("delivering pushed state: producer dropped"),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::record_entries;
    use std::collections::BTreeMap;
    use xsite_consumer::merge::{apply, LastWriteWins, Record};
    use xsite_schemas::{
        CacheName, Float, FloatBase, Hlc, Ident, ListItem, MemberSeen, Op, Place, Score, ScoredMember, SiteId, Version,
    };

    /// What push-state sends for a record rebuilds that record exactly at a site
    /// that holds nothing of the key: random set, sorted set, list and string
    /// writes at three sites.
    #[test]
    fn the_entries_of_a_set_record_rebuild_it_exactly() {
        let sites: Vec<SiteId> = ["a", "b", "c"].iter().map(|s| SiteId::new(*s).unwrap()).collect();
        let cache = CacheName::new("default").unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for case in 0..200 {
            let mut rec: Option<Record> = None;
            let mut places: Vec<Place> = Vec::new();
            for i in 0..8 {
                let v = Version::new(Hlc::new(10 + i * 2, 0), sites[next(3) as usize].clone());
                let m = format!("m{}", next(3)).into_bytes();
                let seen: BTreeMap<SiteId, Hlc> =
                    (0..next(3)).map(|_| (sites[next(3) as usize].clone(), Hlc::new(10 + next(16), 0))).collect();
                let key = b"k".to_vec();
                let score = Score(next(5) as f64 - 1.5);
                let op = match next(15) {
                    11 | 12 => {
                        let id = Ident { d: 0, epoch: 0, hlc: v.hlc, site: v.site.clone(), n: 0 };
                        let place = Place::between(places.last(), None, &id);
                        places.push(place.clone());
                        let items = vec![ListItem { place, value: m }];
                        Op::LPut { key, items, seen: (next(3) == 0).then(|| seen.clone()) }
                    }
                    13 if !places.is_empty() => {
                        let place = places[next(places.len() as u64) as usize].clone();
                        match next(2) {
                            0 => Op::LPut { key, items: vec![ListItem { place, value: b"set".to_vec() }], seen: None },
                            _ => Op::LRem { key, places: vec![place] },
                        }
                    }
                    13 | 14 => Op::LClear { key, seen },
                    6 | 7 => Op::ZAdd {
                        key,
                        members: vec![ScoredMember { member: m, score }],
                        seen: (next(3) == 0).then(|| seen.clone()),
                    },
                    8 => Op::ZIncr {
                        key,
                        member: m,
                        delta: Float(0.5),
                        total: Float(next(4) as f64 * 0.5),
                        base: match next(4) {
                            0 => FloatBase::on(&Version::zero(), 0.0),
                            1 => FloatBase {
                                reset: true,
                                ..FloatBase::on(
                                    &Version::new(Hlc::new(10 + next(16), 0), sites[next(3) as usize].clone()),
                                    0.0,
                                )
                            },
                            _ => FloatBase::on(
                                &Version::new(Hlc::new(10 + next(16), 0), sites[next(3) as usize].clone()),
                                1.0,
                            ),
                        },
                        seen: (next(4) == 0).then(|| seen.clone()),
                    },
                    9 => Op::ZRem { key, members: vec![MemberSeen { member: m, seen }] },
                    10 => Op::ZClear { key, seen },
                    0 | 1 => Op::SAdd { key, members: vec![m], seen: (next(3) == 0).then(|| seen.clone()) },
                    2 => Op::SRem { key, members: vec![MemberSeen { member: m, seen }] },
                    3 => Op::SClear { key, seen },
                    4 => Op::Put { key, value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false },
                    _ => Op::Expire { key, expire_at_ms: Some(1_000 + next(100)) },
                };
                apply(&LastWriteWins, &mut rec, &v, &op);
            }
            let rec = rec.expect("written");
            let mut rebuilt = None;
            for e in record_entries(&cache, b"k", &rec) {
                apply(&LastWriteWins, &mut rebuilt, &e.version(), &e.op);
            }
            assert_eq!(rebuilt.as_ref(), Some(&rec), "case {case}");
        }
    }
}
