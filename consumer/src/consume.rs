//! The consuming loop for one remote site's topic.
//!
//! # When an offset is saved
//!
//! A saved offset promises that every entry up to it survives a crash of this site,
//! so it is saved only once the entries are durable here. After a batch is applied
//! the consumer asks the [`Applier`] for a *barrier*: a position of the local WAL
//! that covers everything the batch changed and everything that made an entry of it
//! "unchanged" (a newer local write not yet on disk, say). The batch's offsets wait
//! in a bounded queue ([`CHECKPOINTS_PENDING_MAX`]) until the WAL is durable up to
//! that position, then go to sled, together with the heartbeats of the batch (a
//! heartbeat says "everything before me was applied": it counts only when that is
//! durable, and its offset flushed to sled: a crash must not make this site read the
//! entries before it again once it reported them applied). Consuming goes on
//! meanwhile; when the queue is full a batch is merged into the newest waiting one.

use crate::offsets::{OffsetError, OffsetStore};
use crate::remote::RemoteTracker;
use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use xsite_schemas::claims::{decode_claims, Claims};
use xsite_schemas::{decode, CacheName, Hlc, LogEntry, Op, SiteId};

/// What applying an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The entry can never be applied (unknown cache, stale epoch…): dead-lettered.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Applying failed for now (e.g. the WAL cannot write): retried, offset held.
    #[error("transient: {0}")]
    Transient(String),
}

/// Where consumed entries go: the node's store and WAL.
pub trait Applier: Send + Sync + 'static {
    /// Join the entry into the store and append what it changed to the local WAL.
    fn apply(&self, entry: LogEntry) -> BoxFuture<'_, Result<Applied, ApplyError>>;
    /// A position covering every change visible in the store now: once
    /// [`Applier::durable_position`] reaches it, everything applied so far (and every
    /// local write an "unchanged" entry lost to) survives a crash.
    fn barrier(&self) -> BoxFuture<'_, Result<u64, ApplyError>>;
    /// Up to where the local WAL is durable.
    fn durable_position(&self) -> u64;
    /// Resolves once [`Applier::durable_position`] is at or past `position`, or
    /// after a bounded wait (the caller looks again either way). At once if it is
    /// already there: a consumer whose oldest checkpoint waits must not be woken
    /// again and again by moves that do not reach it, or it spins and never reads on.
    fn durable_reaches(&self, position: u64) -> BoxFuture<'_, ()>;
    /// Makes what is written durable if nothing else will soon (durability `no`);
    /// called while checkpoints wait.
    fn sync(&self) -> BoxFuture<'_, ()>;
}

/// Batches whose offsets wait for the local WAL to be durable, at most; beyond it a
/// batch is merged into the newest waiting one (which then waits for the later
/// position), so consuming never stops for it.
pub const CHECKPOINTS_PENDING_MAX: usize = 256;
/// Attempts to write one dead letter before the consumer gives up and stops (so an
/// entry is never dropped silently).
pub const DEAD_LETTER_ATTEMPTS_MAX: u32 = 50;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub local_site: SiteId,
    pub remote_site: SiteId,
    pub topic: String,
    /// librdkafka properties of the cluster holding the topic.
    pub client: ClientConfig,
    /// Dead-letter topic, on the local cluster.
    pub dlq_topic: String,
    /// The dead-letter producer's properties (made by
    /// `xsite_schemas::kafka::producer_config`; idempotent with `acks=all`
    /// whatever they say).
    pub dlq_client: ClientConfig,
    pub batch_records_max: usize,
    pub retry_backoff_ms: u64,
    pub checkpoint_flush_interval_ms: u64,
    /// Timeout of metadata requests and of each dead-letter delivery.
    pub request_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka client for topic {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error("consumer offsets: {0}")]
    Offsets(#[from] OffsetError),
    #[error("writing to the dead-letter topic {dlq} failed {attempts} times (last: {error}); stopped rather than drop the entry at offset {offset} of partition {partition}")]
    DeadLetter { dlq: String, partition: i32, offset: i64, attempts: u32, error: String },
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub received: AtomicU64,
    pub applied_changed: AtomicU64,
    pub applied_unchanged: AtomicU64,
    pub skipped_own: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dead_letter_failures: AtomicU64,
    /// Batches applied whose offsets wait for the local WAL to be durable.
    pub checkpoints_pending: AtomicU64,
    pub transient_errors: AtomicU64,
    /// Wall-clock ms of the newest applied entry's HLC (replication lag = now - this).
    pub last_applied_wall_ms: AtomicU64,
    /// Write at the origin → applied here.
    pub lag: crate::lag::LagHistogram,
    pub heartbeats: AtomicU64,
    /// Where this remote stands: online, catching up, offline, or needing a state
    /// transfer (see [`crate::remote`]).
    pub remote: RemoteTracker,
    /// Gaps found: entries of the remote this site can no longer get from Kafka.
    pub gaps: AtomicU64,
    /// Unix ms of the last heartbeat received from the remote (or of when this site
    /// started waiting for one).
    pub last_heard_ms: AtomicU64,
    /// Kafka errors the consumer met (the topic's metadata unavailable, a broker
    /// unreachable while consuming): the node's health checks of the remote count
    /// them, see [`ConsumerStats::last_error`].
    pub errors: AtomicU64,
    last_error: std::sync::Mutex<Option<NotedError>>,
    partitions: AtomicU64,
    marks: std::sync::Mutex<HeartbeatMarks>,
    /// The newest log entry format version the remote reads, as its latest heartbeat
    /// said ([`xsite_schemas::KAFKA_HEADER_READS`]); 0 until a heartbeat came.
    reads_version: std::sync::atomic::AtomicU32,
    /// Whether the remote's latest heartbeat said an operator took it offline at its
    /// own node ([`xsite_schemas::KAFKA_HEADER_OFFLINE`]).
    offline_at_its_site: std::sync::atomic::AtomicBool,
    /// What the remote's heartbeats say of the active-passive caches
    /// ([`xsite_schemas::claims`]).
    failover: std::sync::Mutex<FailoverView>,
}

/// What a remote's heartbeats say of the active-passive caches: the claims of the
/// newest heartbeat (by timestamp, whatever partition it came from), and per cache
/// the highest watermark of this site that a heartbeat acknowledged while naming
/// this site primary at an epoch (see [`Claim::acknowledges`]).
#[derive(Debug, Default)]
struct FailoverView {
    hlc: Hlc,
    /// `None`: its newest heartbeat had no claims header (a build before the witness).
    claims: Option<Claims>,
    /// Per cache: (epoch, the highest watermark of this site acknowledged at it).
    acks: BTreeMap<CacheName, (u64, Hlc)>,
}

/// An error the consumer met, and when (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotedError {
    pub at_ms: u64,
    pub message: String,
}

impl ConsumerStats {
    /// The counters of the consumer of `remote` (its state offline until consuming
    /// starts).
    pub fn new(remote: SiteId) -> ConsumerStats {
        ConsumerStats { remote: RemoteTracker::new(remote), ..ConsumerStats::default() }
    }

    /// Notes a Kafka error (counted, the latest kept for status and health checks).
    pub fn note_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let noted = NotedError { at_ms: xsite_schemas::hlc::wall_clock_ms(), message };
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(noted);
    }

    /// The latest Kafka error the consumer met.
    pub fn last_error(&self) -> Option<NotedError> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A timestamp up to which every entry of the remote site has been applied here:
    /// the lowest heartbeat over all partitions (`None` until every partition had one).
    pub fn origin_watermark(&self) -> Option<Hlc> {
        let marks = self.marks.lock().expect("marks lock");
        let partitions = self.partitions.load(Ordering::Relaxed) as usize;
        if partitions == 0 || marks.by_partition.len() < partitions {
            return None;
        }
        marks.by_partition.values().min().copied()
    }

    /// The newest log entry format version the remote site reads, as its latest
    /// heartbeat said (`None` before any heartbeat came from it).
    pub fn reads_version(&self) -> Option<u32> {
        Some(self.reads_version.load(Ordering::Acquire)).filter(|v| *v > 0)
    }

    /// Notes what the remote's latest heartbeat says it reads.
    pub fn note_reads_version(&self, version: u32) {
        self.reads_version.store(version.max(1), Ordering::Release);
    }

    /// Whether the remote's latest heartbeat said it was taken offline at its own
    /// node (a drain: other sites stop naming it to clients).
    pub fn offline_at_its_site(&self) -> bool {
        self.offline_at_its_site.load(Ordering::Acquire)
    }

    /// Notes what the remote's latest heartbeat says of its own state.
    pub fn note_offline_at_its_site(&self, offline: bool) {
        let was = self.offline_at_its_site.swap(offline, Ordering::AcqRel);
        if was != offline {
            let remote = self.remote.site().map_or("-", SiteId::as_str);
            match offline {
                true => tracing::warn!(remote, "remote site says it was taken offline at its own node"),
                false => tracing::info!(remote, "remote site says it is online again at its own node"),
            }
        }
    }

    /// Notes the claims of a heartbeat stamped `hlc` (`header`: its
    /// [`xsite_schemas::claims::KAFKA_HEADER_FAILOVER`]), which reports `ack` as the
    /// remote's watermark of `local`.
    pub fn note_claims(&self, hlc: Hlc, header: Option<&[u8]>, ack: Option<Hlc>, local: &SiteId) {
        let claims = header.map(|h| {
            decode_claims(h).unwrap_or_else(|err| {
                tracing::debug!(error = %err, "unreadable failover claims: no acknowledgement counted");
                Claims::new()
            })
        });
        let mut view = self.failover.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(claims), Some(ack)) = (&claims, ack) {
            for (cache, claim) in claims.iter().filter(|(_, c)| c.acknowledges(local, c.epoch)) {
                let slot = view.acks.entry(cache.clone()).or_insert((claim.epoch, Hlc::ZERO));
                if claim.epoch > slot.0 {
                    *slot = (claim.epoch, ack);
                } else if claim.epoch == slot.0 {
                    slot.1 = slot.1.max(ack);
                }
            }
        }
        if hlc >= view.hlc {
            view.hlc = hlc;
            view.claims = claims;
        }
    }

    /// What the remote's newest heartbeat says of the active-passive caches
    /// (`None`: it sends no claims, a build before the witness).
    pub fn claims(&self) -> Option<Claims> {
        self.failover.lock().unwrap_or_else(std::sync::PoisonError::into_inner).claims.clone()
    }

    /// The highest watermark of this site the remote acknowledged while naming this
    /// site the primary of `cache` at `epoch`, without running for primary or voting.
    pub fn acknowledged(&self, cache: &CacheName, epoch: u64) -> Option<Hlc> {
        let view = self.failover.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        view.acks.get(cache).filter(|(e, _)| *e == epoch).map(|(_, ack)| *ack)
    }

    /// Notes that the remote was heard from now.
    pub fn heard(&self) {
        self.last_heard_ms.fetch_max(xsite_schemas::hlc::wall_clock_ms(), Ordering::Relaxed);
    }

    /// Whether the topic's partitions have been found and assigned (consuming).
    pub fn is_assigned(&self) -> bool {
        self.partitions.load(Ordering::Relaxed) > 0
    }

    /// The remote site's own view: per origin, up to which timestamp it applied all,
    /// as of heartbeats this site has applied in *every* partition (the lowest over
    /// partitions): a heartbeat read in one partition says nothing of the entries
    /// still unread in another, which may predate what it reports.
    pub fn reported_watermarks(&self) -> BTreeMap<SiteId, Hlc> {
        let marks = self.marks.lock().expect("marks lock");
        let partitions = self.partitions.load(Ordering::Relaxed) as usize;
        if partitions == 0 || marks.reported.len() < partitions {
            return BTreeMap::new();
        }
        let mut views = marks.reported.values();
        let mut lowest = views.next().cloned().unwrap_or_default();
        for view in views {
            lowest.retain(|site, h| match view.get(site) {
                Some(other) => {
                    *h = (*h).min(*other);
                    true
                }
                None => false,
            });
        }
        lowest
    }

    /// Counts a heartbeat — except while a gap is open: then this site's watermarks
    /// of the remote stand still, so that no site collects a tombstone on the
    /// strength of entries this one missed. An empty heartbeat is a partition's head
    /// marker and says nothing.
    fn record_heartbeat(&self, partition: i32, origin: &SiteId, applied: BTreeMap<SiteId, Hlc>) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.heard();
        if applied.is_empty() || self.remote.gap_open() {
            return;
        }
        let mut marks = self.marks.lock().expect("marks lock");
        if let Some(h) = applied.get(origin) {
            let slot = marks.by_partition.entry(partition).or_insert(*h);
            *slot = (*slot).max(*h);
        }
        marks.reported.insert(partition, applied);
    }
}

/// One consumed message, copied out of librdkafka's buffer.
struct Consumed {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// The [`xsite_schemas::KAFKA_HEADER_READS`] header's value (heartbeats carry it).
    reads: Option<Vec<u8>>,
    /// Whether the [`xsite_schemas::KAFKA_HEADER_OFFLINE`] header says the sender is
    /// offline at its own node.
    offline: bool,
    /// The [`xsite_schemas::claims::KAFKA_HEADER_FAILOVER`] header's value.
    claims: Option<Vec<u8>>,
}

impl Consumed {
    fn from_message(m: &BorrowedMessage<'_>) -> Consumed {
        let header = |key: &str| {
            m.headers().and_then(|h| h.iter().find(|h| h.key == key).and_then(|h| h.value.map(<[u8]>::to_vec)))
        };
        let reads = header(xsite_schemas::KAFKA_HEADER_READS);
        let offline = xsite_schemas::says_offline(header(xsite_schemas::KAFKA_HEADER_OFFLINE).as_deref());
        let claims = header(xsite_schemas::claims::KAFKA_HEADER_FAILOVER);
        Consumed {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            reads,
            offline,
            claims,
        }
    }
}

enum Outcome {
    Done,
    /// Shutdown came while the entry was still being retried: not applied.
    Interrupted,
    DeadLetter(String),
    /// A heartbeat: recorded once the whole batch before it is applied.
    Heartbeat {
        origin: SiteId,
        applied: BTreeMap<SiteId, Hlc>,
    },
}

/// What the heartbeats of a remote site say.
#[derive(Debug, Default)]
struct HeartbeatMarks {
    /// Per partition: every entry of the remote site with a timestamp up to this
    /// has been applied here.
    by_partition: BTreeMap<i32, Hlc>,
    /// Per partition, the remote site's own watermarks (per origin) in the latest
    /// heartbeat applied from that partition.
    reported: BTreeMap<i32, BTreeMap<SiteId, Hlc>>,
}

struct Consumer1 {
    config: ConsumerConfig,
    applier: Arc<dyn Applier>,
    offsets: OffsetStore,
    stats: Arc<ConsumerStats>,
    dlq: FutureProducer,
    /// Applied batches waiting for the local WAL to be durable, oldest first.
    pending: std::sync::Mutex<std::collections::VecDeque<Checkpoint>>,
    /// Heartbeats of batches whose offsets are saved but not yet flushed to disk: a
    /// heartbeat counts (for tombstone collection, here and at every other site) only
    /// once a crash can no longer make this site read the entries before it again.
    unflushed_heartbeats: std::sync::Mutex<Vec<Heartbeat>>,
    /// Per partition, the offset the next message must have: a message beyond it
    /// means entries were removed before this site read them (a gap).
    expected: std::sync::Mutex<BTreeMap<i32, i64>>,
    /// Per partition, the last offset saved (applied and durable).
    saved: std::sync::Mutex<BTreeMap<i32, i64>>,
}

/// The offsets and heartbeats of an applied batch, and the WAL position that must
/// be durable before they count.
struct Checkpoint {
    position: u64,
    offsets: BTreeMap<i32, i64>,
    heartbeats: Vec<Heartbeat>,
}

/// A heartbeat applied from a partition: `(partition, its origin, what it reports)`.
type Heartbeat = (i32, SiteId, BTreeMap<SiteId, Hlc>);

impl Checkpoint {
    /// Takes a later batch in: both then wait for the later position.
    fn absorb(&mut self, later: Checkpoint) {
        self.position = self.position.max(later.position);
        for (p, o) in later.offsets {
            let slot = self.offsets.entry(p).or_insert(o);
            *slot = (*slot).max(o);
        }
        self.heartbeats.extend(later.heartbeats);
    }
}

fn kafka_err(topic: &str) -> impl Fn(KafkaError) -> ConsumerError + '_ {
    move |source| ConsumerError::Kafka { topic: topic.to_string(), source }
}

/// What a consumer is made of: its configuration, where it applies entries, where
/// it keeps its offsets, and what it reports to.
pub struct ConsumerParts {
    pub config: ConsumerConfig,
    /// Applies each entry (the node's engine).
    pub applier: Arc<dyn Applier>,
    /// The consumed offsets, kept in sled and moved only past what is applied.
    pub offsets: OffsetStore,
    pub stats: Arc<ConsumerStats>,
}

/// Consume `config.topic` until cancelled.
pub async fn run(parts: ConsumerParts, cancel: CancellationToken) -> Result<(), ConsumerError> {
    let ConsumerParts { config, applier, offsets, stats } = parts;
    let topic = config.topic.clone();
    let dlq = xsite_schemas::kafka::producer(&config.dlq_client).map_err(kafka_err(&config.dlq_topic))?;
    let mut client = config.client.clone();
    client
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    if client.get("group.id").is_none() {
        client.set("group.id", format!("xsite-{}-from-{}", config.local_site, config.remote_site));
    }
    let Some(marks) = discover_partitions(&client, &config, &stats, &cancel).await else {
        return Ok(());
    };
    let partitions = marks.len();
    let consumer: StreamConsumer = client.create().map_err(kafka_err(&topic))?;
    let heads = read_heads(&client, &config, &marks).await;
    let starts = assign(&consumer, &config, &marks, &heads, &offsets, &stats)?;
    stats.partitions.store(partitions as u64, Ordering::Relaxed);
    stats.remote.started(ends_of(&marks));
    tracing::info!(remote = %config.remote_site, topic = %topic, partitions, "consumer started");
    let saved = (0..partitions as i32).filter_map(|p| offsets.get(&topic, p).ok().flatten().map(|o| (p, o))).collect();
    let c = Consumer1 {
        config,
        applier,
        offsets,
        stats,
        dlq,
        pending: Default::default(),
        unflushed_heartbeats: Default::default(),
        expected: std::sync::Mutex::new(starts),
        saved: std::sync::Mutex::new(saved),
    };
    c.stats.remote.progress(&c.saved.lock().expect("saved lock"));
    let result = c.run_loop(&consumer, &cancel).await;
    c.finish_checkpoints().await;
    c.flush_offsets().await;
    tracing::info!(topic = %topic, "consumer stopped");
    result
}

/// One partition's offsets: the first one still held and the next one to be
/// written (`None` when the broker did not say).
pub type Marks = Option<(i64, i64)>;

/// The last offset of each partition now (`-1`: empty or unknown).
pub fn ends_of(marks: &[Marks]) -> BTreeMap<i32, i64> {
    marks.iter().enumerate().map(|(p, m)| (p as i32, m.map_or(-1, |(_, high)| high - 1))).collect()
}

/// The topic's partitions and each one's low and high offsets, asked with a
/// short-lived client on a blocking thread (librdkafka's metadata calls block).
fn topic_marks(client: ClientConfig, topic: String, timeout: Duration) -> Result<Vec<Marks>, String> {
    let probe: BaseConsumer = client.create().map_err(|e| e.to_string())?;
    let md = probe.fetch_metadata(Some(&topic), timeout).map_err(|e| e.to_string())?;
    let t = md.topics().first().ok_or("no metadata for the topic")?;
    if let Some(err) = t.error() {
        return Err(format!("{err:?}"));
    }
    if t.partitions().is_empty() {
        return Err("the topic has no partitions".into());
    }
    let marks = (0..t.partitions().len() as i32).map(|p| probe.fetch_watermarks(&topic, p, timeout).ok()).collect();
    Ok(marks)
}

/// The topic's partitions now, or an error (asked on a blocking thread).
pub async fn fetch_marks(client: &ClientConfig, config: &ConsumerConfig) -> Result<Vec<Marks>, String> {
    let (c, t) = (client.clone(), config.topic.clone());
    let timeout = Duration::from_millis(config.request_timeout_ms);
    tokio::task::spawn_blocking(move || topic_marks(c, t, timeout)).await.map_err(|e| e.to_string())?
}

/// Longest pause between two attempts to find the remote topic: the pause starts at
/// `retry_backoff_ms` (at least 500 ms) and doubles up to this.
pub const DISCOVER_BACKOFF_MAX_MS: u64 = 10_000;

/// Wait for the topic (it may not exist yet, its cluster may be unreachable), with
/// exponential backoff; its partitions' offsets, or None when cancelled.
async fn discover_partitions(
    client: &ClientConfig,
    config: &ConsumerConfig,
    stats: &ConsumerStats,
    cancel: &CancellationToken,
) -> Option<Vec<Marks>> {
    let mut attempt: u64 = 0;
    let mut backoff_ms = config.retry_backoff_ms.clamp(500, DISCOVER_BACKOFF_MAX_MS);
    loop {
        match fetch_marks(client, config).await {
            Ok(marks) => return Some(marks),
            Err(err) => {
                if attempt.is_multiple_of(10) {
                    tracing::warn!(topic = %config.topic, error = %err, "remote topic not available yet");
                }
                stats.note_error(format!("remote topic {} not available: {err}", config.topic));
            }
        }
        attempt += 1;
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(DISCOVER_BACKOFF_MAX_MS);
    }
}

/// The head of each partition that still starts at offset 0: the id of its first
/// entry — normally the head marker the remote's shipper writes into every empty
/// partition (`xsite_log_shipper::Beat::Marker`) — which names the topic's
/// incarnation: entry ids are unique, so another id there means another topic.
async fn read_heads(client: &ClientConfig, config: &ConsumerConfig, marks: &[Marks]) -> BTreeMap<i32, uuid::Uuid> {
    let wanted: Vec<i32> = marks
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, Some((0, high)) if *high > 0))
        .map(|(p, _)| p as i32)
        .collect();
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let (c, topic, remote) = (client.clone(), config.topic.clone(), config.remote_site.clone());
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let read = move || -> BTreeMap<i32, uuid::Uuid> {
        let mut heads = BTreeMap::new();
        let Ok(probe) = c.create::<BaseConsumer>() else { return heads };
        let mut tpl = TopicPartitionList::new();
        for p in &wanted {
            let _ = tpl.add_partition_offset(&topic, *p, Offset::Offset(0));
        }
        if probe.assign(&tpl).is_err() {
            return heads;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < wanted.len() && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = probe.poll(Duration::from_millis(100)) else { continue };
            if m.offset() != 0 || !seen.insert(m.partition()) {
                continue;
            }
            if let Ok(e) = decode(m.payload().unwrap_or_default()) {
                if e.origin == remote {
                    heads.insert(m.partition(), e.id);
                }
            }
        }
        heads
    };
    tokio::task::spawn_blocking(read).await.unwrap_or_default()
}

/// Assign every partition at the offset after the last one applied, and say where
/// the next message of each must start. A partition whose entries this site can no
/// longer all get opens a gap (a state transfer is needed):
/// - the saved offset is below the partition's first held offset (retention removed
///   entries before they were applied), or there is no saved offset and the
///   partition no longer starts at 0 (this site joined after retention);
/// - the saved offset is past the partition's end, or its head marker is not the one
///   seen before: the topic was re-created (its partition is read from the start).
fn assign(
    consumer: &StreamConsumer,
    config: &ConsumerConfig,
    marks: &[Marks],
    heads: &BTreeMap<i32, uuid::Uuid>,
    offsets: &OffsetStore,
    stats: &ConsumerStats,
) -> Result<BTreeMap<i32, i64>, ConsumerError> {
    let topic = config.topic.as_str();
    let mut tpl = TopicPartitionList::new();
    let mut starts = BTreeMap::new();
    for (p, m) in marks.iter().enumerate() {
        let p = p as i32;
        let mut saved = offsets.get(topic, p)?;
        if let Some(head) = heads.get(&p) {
            match offsets.marker(topic, p)? {
                Some(seen) if seen != *head => {
                    gap(stats, format!("partition {p} of {topic} was re-created (its head marker changed)"));
                    offsets.reset(topic, p)?;
                    saved = None;
                }
                _ => {}
            }
            offsets.set_marker(topic, p, *head)?;
        }
        let start = match (saved, m) {
            (Some(last), Some((_, high))) if last + 1 > *high => {
                gap(stats, format!("partition {p} of {topic} ends at {high}, before the saved offset {last}: the topic was re-created"));
                offsets.reset(topic, p)?;
                0
            }
            (Some(last), Some((low, _))) if last + 1 < *low => {
                gap(
                    stats,
                    format!(
                        "partition {p} of {topic}: offsets {} to {} were removed before this site applied them",
                        last + 1,
                        low - 1
                    ),
                );
                *low
            }
            (Some(last), _) => last + 1,
            (None, Some((low, _))) if *low > 0 => {
                gap(stats, format!("partition {p} of {topic} starts at {low}: its first entries were removed before this site read them"));
                *low
            }
            (None, _) => 0,
        };
        tracing::debug!(topic, partition = p, start, "assigning partition");
        tpl.add_partition_offset(topic, p, Offset::Offset(start)).map_err(kafka_err(topic))?;
        starts.insert(p, start);
    }
    consumer.assign(&tpl).map_err(kafka_err(topic))?;
    Ok(starts)
}

fn gap(stats: &ConsumerStats, reason: String) {
    stats.gaps.fetch_add(1, Ordering::Relaxed);
    stats.remote.gap(reason);
}

/// How often the topic's partitions are counted again (a topic can gain partitions).
const PARTITION_CHECK_INTERVAL_MS: u64 = 10_000;

impl Consumer1 {
    async fn run_loop(&self, consumer: &StreamConsumer, cancel: &CancellationToken) -> Result<(), ConsumerError> {
        let mut flush_tick =
            tokio::time::interval(Duration::from_millis(self.config.checkpoint_flush_interval_ms.max(1)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut partition_tick = tokio::time::interval(Duration::from_millis(PARTITION_CHECK_INTERVAL_MS));
        partition_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        partition_tick.tick().await;
        loop {
            let waiting_for = self.oldest_pending_position();
            let waiting = waiting_for.is_some();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = partition_tick.tick() => self.check_partitions(consumer).await,
                _ = self.applier.durable_reaches(waiting_for.unwrap_or(0)), if waiting => self.release_durable(),
                _ = flush_tick.tick() => {
                    if waiting {
                        self.applier.sync().await;
                    }
                    self.release_durable();
                    self.flush_offsets().await;
                }
                first = consumer.recv() => {
                    let batch = self.collect_batch(consumer, first);
                    if !batch.is_empty() {
                        self.process(batch, cancel).await?;
                    }
                }
            }
        }
    }

    /// Starts consuming partitions the topic gained since it was assigned (from
    /// their beginning: nothing of them was read yet).
    async fn check_partitions(&self, consumer: &StreamConsumer) {
        let known = self.stats.partitions.load(Ordering::Relaxed) as usize;
        let marks = match fetch_marks(&self.config.client, &self.config).await {
            Ok(marks) if marks.len() > known => marks,
            Ok(_) => return,
            Err(err) => {
                tracing::debug!(topic = %self.config.topic, error = %err, "counting partitions failed");
                self.stats.note_error(format!("metadata of {}: {err}", self.config.topic));
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for p in known..marks.len() {
            let start = self.offsets.get(&self.config.topic, p as i32).ok().flatten().map_or(0, |o| o + 1);
            let _ = tpl.add_partition_offset(&self.config.topic, p as i32, Offset::Offset(start));
            self.expected.lock().expect("expected lock").insert(p as i32, start);
        }
        match consumer.incremental_assign(&tpl) {
            Ok(()) => {
                self.stats.partitions.store(marks.len() as u64, Ordering::Relaxed);
                tracing::warn!(topic = %self.config.topic, from = known, to = marks.len(), "the remote topic gained partitions; consuming them too");
            }
            Err(err) => tracing::error!(topic = %self.config.topic, error = %err, "assigning new partitions failed"),
        }
    }

    /// Checks that every message follows the one before in its partition: a jump
    /// means entries were removed (retention) before this site read them.
    fn check_continuity(&self, batch: &[Consumed]) {
        let mut expected = self.expected.lock().expect("expected lock");
        for m in batch {
            let next = expected.entry(m.partition).or_insert(m.offset);
            if m.offset > *next {
                gap(
                    &self.stats,
                    format!(
                        "partition {} of {}: offsets {} to {} were removed before this site read them",
                        m.partition,
                        self.config.topic,
                        *next,
                        m.offset - 1
                    ),
                );
            }
            *next = (*next).max(m.offset + 1);
        }
    }

    /// The position the oldest waiting checkpoint needs the WAL to be durable at.
    fn oldest_pending_position(&self) -> Option<u64> {
        self.pending.lock().expect("checkpoints lock").front().map(|c| c.position)
    }

    fn pending_len(&self) -> usize {
        self.pending.lock().expect("checkpoints lock").len()
    }

    /// Saves the offsets (and records the heartbeats) of every waiting batch the
    /// local WAL now covers, oldest first.
    fn release_durable(&self) {
        let durable = self.applier.durable_position();
        let mut released = Vec::new();
        {
            let mut pending = self.pending.lock().expect("checkpoints lock");
            while pending.front().is_some_and(|c| c.position <= durable) {
                released.extend(pending.pop_front());
            }
            self.stats.checkpoints_pending.store(pending.len() as u64, Ordering::Relaxed);
        }
        if released.is_empty() {
            return;
        }
        let mut saved = self.saved.lock().expect("saved lock");
        for c in released {
            for (partition, offset) in c.offsets {
                match self.offsets.advance(&self.config.topic, partition, offset) {
                    Ok(_) => {
                        let slot = saved.entry(partition).or_insert(offset);
                        *slot = (*slot).max(offset);
                    }
                    Err(err) => tracing::error!(partition, offset, error = %err, "saving consumer offset failed"),
                }
            }
            self.unflushed_heartbeats.lock().expect("heartbeats lock").extend(c.heartbeats);
        }
        self.stats.remote.progress(&saved);
    }

    /// Flushes the saved offsets to disk, then counts the heartbeats they cover.
    async fn flush_offsets(&self) {
        let flushed: Vec<_> = std::mem::take(&mut *self.unflushed_heartbeats.lock().expect("heartbeats lock"));
        match self.offsets.flush().await {
            Ok(()) => {
                for (partition, origin, applied) in flushed {
                    self.stats.record_heartbeat(partition, &origin, applied);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "flushing consumer offsets failed");
                let mut unflushed = self.unflushed_heartbeats.lock().expect("heartbeats lock");
                let newer = std::mem::take(&mut *unflushed);
                *unflushed = flushed;
                unflushed.extend(newer);
            }
        }
    }

    /// On shutdown: give the waiting batches a last chance to become durable.
    async fn finish_checkpoints(&self) {
        if self.pending_len() == 0 {
            return;
        }
        self.applier.sync().await;
        self.release_durable();
        let left = self.pending_len();
        if left > 0 {
            tracing::info!(
                batches = left,
                "offsets of batches not yet durable are not saved; they are applied again on restart"
            );
        }
    }

    /// The first message plus whatever else is ready, up to the batch limit.
    fn collect_batch(
        &self,
        consumer: &StreamConsumer,
        first: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Vec<Consumed> {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(m) => batch.push(Consumed::from_message(&m)),
                // Broker unreachable and the like: librdkafka retries and logs it already.
                Err(err) => {
                    tracing::debug!(topic = %self.config.topic, error = %err, "consume error");
                    self.stats.note_error(format!("consuming {}: {err}", self.config.topic));
                }
            }
            if batch.len() >= self.config.batch_records_max {
                break;
            }
            next = consumer.recv().now_or_never();
        }
        batch
    }

    /// Apply a batch (concurrently: apply is a join, order does not matter), dead-letter
    /// what cannot be applied, then queue its offsets until they are durable.
    async fn process(&self, batch: Vec<Consumed>, cancel: &CancellationToken) -> Result<(), ConsumerError> {
        self.stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.check_continuity(&batch);
        let outcomes = futures::future::join_all(batch.iter().map(|m| self.handle(m, cancel))).await;
        if outcomes.iter().any(|o| matches!(o, Outcome::Interrupted)) {
            return Ok(()); // offsets of an interrupted batch are not saved; it is re-applied
        }
        let mut checkpoint = Checkpoint { position: 0, offsets: BTreeMap::new(), heartbeats: Vec::new() };
        for (m, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::DeadLetter(reason) => {
                    if !self.dead_letter(m, &reason, cancel).await? {
                        return Ok(()); // shutdown while the dead letter was retried
                    }
                }
                Outcome::Heartbeat { origin, applied } => checkpoint.heartbeats.push((m.partition, origin, applied)),
                Outcome::Done | Outcome::Interrupted => {}
            }
            let slot = checkpoint.offsets.entry(m.partition).or_insert(m.offset);
            *slot = (*slot).max(m.offset);
        }
        checkpoint.position = match self.applier.barrier().await {
            Ok(position) => position,
            Err(err) => {
                tracing::warn!(error = %err, "no wal barrier after a batch; its offsets are not saved (it is applied again on restart)");
                return Ok(());
            }
        };
        let mut pending = self.pending.lock().expect("checkpoints lock");
        let full = pending.len() >= CHECKPOINTS_PENDING_MAX;
        match pending.back_mut() {
            Some(newest) if full => newest.absorb(checkpoint),
            _ => pending.push_back(checkpoint),
        }
        self.stats.checkpoints_pending.store(pending.len() as u64, Ordering::Relaxed);
        drop(pending);
        self.release_durable();
        Ok(())
    }

    async fn handle(&self, m: &Consumed, cancel: &CancellationToken) -> Outcome {
        let entry = match decode(&m.payload) {
            Ok(e) => e,
            Err(err) => return Outcome::DeadLetter(format!("undecodable entry: {err}")),
        };
        if entry.origin == self.config.local_site {
            self.stats.skipped_own.fetch_add(1, Ordering::Relaxed);
            return Outcome::Done;
        }
        if let Op::Heartbeat { applied } = &entry.op {
            // What the remote reads (whether this site may send it transaction units)
            // is as its latest heartbeat says, from whichever partition.
            self.stats.note_reads_version(xsite_schemas::reads_version(m.reads.as_deref()));
            if !applied.is_empty() {
                // A head marker (no watermarks) may be older than the site's state.
                self.stats.note_offline_at_its_site(m.offline);
                let local = &self.config.local_site;
                self.stats.note_claims(entry.hlc, m.claims.as_deref(), applied.get(local).copied(), local);
            }
            // The applier learns the epoch from it; a heartbeat is never dead-lettered.
            if let Err(err) = self.applier.apply(entry.clone()).await {
                tracing::debug!(origin = %entry.origin, error = %err, "heartbeat not applied");
            }
            return Outcome::Heartbeat { origin: entry.origin.clone(), applied: applied.clone() };
        }
        let wall = entry.hlc.wall_ms();
        let mut attempt: u64 = 0;
        loop {
            match self.applier.apply(entry.clone()).await {
                Ok(applied) => {
                    let counter = match applied {
                        Applied::Changed => &self.stats.applied_changed,
                        Applied::Unchanged => &self.stats.applied_unchanged,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    // An entry is news from its origin as much as a heartbeat is: the
                    // successor of an active-passive primary times its silence on it.
                    self.stats.heard();
                    self.stats.last_applied_wall_ms.fetch_max(wall, Ordering::Relaxed);
                    self.stats.lag.record(xsite_schemas::hlc::wall_clock_ms().saturating_sub(wall));
                    return Outcome::Done;
                }
                Err(ApplyError::Rejected(reason)) => return Outcome::DeadLetter(reason),
                Err(ApplyError::Transient(reason)) => {
                    self.stats.transient_errors.fetch_add(1, Ordering::Relaxed);
                    if attempt.is_multiple_of(20) {
                        tracing::error!(partition = m.partition, offset = m.offset, %reason, attempt, "applying entry failed; retrying");
                    }
                    attempt += 1;
                    tokio::select! {
                        _ = cancel.cancelled() => return Outcome::Interrupted,
                        _ = tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)) => {}
                    }
                }
            }
        }
    }

    /// Writes the message to the dead-letter topic, retrying until it is accepted:
    /// an entry is never dropped silently. `Ok(false)`: shutdown came first. After
    /// [`DEAD_LETTER_ATTEMPTS_MAX`] failures the consumer stops with an error (its
    /// offset stays before the entry).
    async fn dead_letter(&self, m: &Consumed, reason: &str, cancel: &CancellationToken) -> Result<bool, ConsumerError> {
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %self.config.topic, partition = m.partition, offset = m.offset, %reason, "entry dead-lettered");
        let partition = m.partition.to_string();
        let offset = m.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "xsite-dlq-reason", value: Some(reason) })
            .insert(Header { key: "xsite-dlq-topic", value: Some(self.config.topic.as_str()) })
            .insert(Header { key: "xsite-dlq-partition", value: Some(partition.as_str()) })
            .insert(Header { key: "xsite-dlq-offset", value: Some(offset.as_str()) })
            .insert(Header { key: "xsite-dlq-site", value: Some(self.config.local_site.as_str()) });
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        for attempt in 1..=DEAD_LETTER_ATTEMPTS_MAX {
            let mut record = FutureRecord::to(&self.config.dlq_topic).payload(&m.payload).headers(headers.clone());
            if let Some(k) = &m.key {
                record = record.key(k);
            }
            let err = match self.dlq.send(record, timeout).await {
                Ok(_) => return Ok(true),
                Err((err, _)) => err,
            };
            self.stats.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(dlq = %self.config.dlq_topic, offset = m.offset, attempt, error = %err, "writing to the dead-letter topic failed; retrying");
            if attempt == DEAD_LETTER_ATTEMPTS_MAX {
                return Err(ConsumerError::DeadLetter {
                    dlq: self.config.dlq_topic.clone(),
                    partition: m.partition,
                    offset: m.offset,
                    attempts: attempt,
                    error: err.to_string(),
                });
            }
            let backoff = Duration::from_millis(self.config.retry_backoff_ms.max(100) * u64::from(attempt.min(10)));
            tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        Ok(false)
    }
}

/// The headers of a dead-lettered message, by name (for tools and tests).
pub fn dlq_header<'a>(headers: &'a rdkafka::message::BorrowedHeaders, name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.key == name).and_then(|h| h.value)
}
