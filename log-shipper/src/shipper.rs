//! The shipping loop.

use crate::checkpoint::ShipCheckpoint;
use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use xsite_schemas::{decode, SiteId};

/// One WAL record as the shipper sees it.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub lsn: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading the WAL at position {lsn}: {message}")]
pub struct SourceError {
    pub lsn: u64,
    pub message: String,
}

/// Where the shipper reads entries: the node's WAL.
pub trait EntrySource: Send + Sync + 'static {
    /// Records at positions `>= from`, at most `records_max`; waits up to `wait` for
    /// the first one and returns an empty batch if none came. Must be cancel-safe.
    fn read(
        &self,
        from: u64,
        records_max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<SourceRecord>, SourceError>>;
    /// The last position written.
    fn last_lsn(&self) -> u64;
}

#[derive(Debug, Clone)]
pub struct ShipperConfig {
    pub site: SiteId,
    pub topic: String,
    /// librdkafka properties of the producer (made by [`xsite_schemas::kafka::producer_config`]);
    /// the producer is idempotent with `acks=all` whatever they say.
    pub producer: ClientConfig,
    pub in_flight_bytes_max: u64,
    pub batch_records_max: usize,
    pub checkpoint_flush_interval_ms: u64,
    pub retry_backoff_ms: u64,
    /// Unshipped WAL records beyond which the backlog alarm is raised.
    pub backlog_records_alarm: u64,
    /// How often a heartbeat goes to every partition (0: never).
    pub heartbeat_interval_ms: u64,
    /// Partitions of the topic (heartbeats go to each).
    pub partitions: i32,
    /// Headers the node adds to its heartbeats now (this site offline, its failover
    /// state).
    pub beat_extras: Arc<xsite_schemas::kafka::BeatHeaders>,
}

/// Builds an encoded heartbeat entry, or `None` when this site cannot make its
/// promise now. Called only when every durable WAL record has been acknowledged by
/// Kafka; the heartbeat follows them in every partition.
pub type HeartbeatBuilder = Box<dyn Fn(Beat) -> Option<Vec<u8>> + Send + Sync>;

/// What a [`HeartbeatBuilder`] is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// A heartbeat with this site's watermarks.
    Watermarks,
    /// A partition's head marker: a heartbeat with no watermarks and a fresh id,
    /// written first into every empty partition. Its id names the topic's
    /// incarnation: a consumer that finds another marker at the head of a partition
    /// knows the topic was re-created (Kafka clients see no topic id).
    Marker,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error("creating the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct ShipperStats {
    /// Kafka messages delivered (a transaction unit is one).
    pub shipped_entries: AtomicU64,
    /// Of them, transaction units.
    pub shipped_units: AtomicU64,
    pub shipped_bytes: AtomicU64,
    pub skipped_remote_entries: AtomicU64,
    pub undecodable_entries: AtomicU64,
    pub delivery_errors: AtomicU64,
    /// Entries Kafka refused for good (too large for the producer or the broker):
    /// skipped so that later ones ship; each is logged with its position and key.
    pub undeliverable_entries: AtomicU64,
    /// The last of them: position, key (shown), reason.
    pub last_undeliverable: std::sync::Mutex<Option<Undeliverable>>,
    pub acked_lsn: AtomicU64,
    pub backlog_records: AtomicU64,
    pub backlog_alarm: AtomicU64,
    pub heartbeats: AtomicU64,
}

/// An entry that could not be shipped and was skipped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Undeliverable {
    pub lsn: u64,
    pub key: String,
    pub bytes: u64,
    pub reason: String,
}

/// Produce errors that no retry can fix, for one message: it is too large or
/// malformed for the producer or the broker.
fn is_permanent(err: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        err.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize | C::InvalidRecord)
    )
}

enum State {
    /// Not ours to ship (remote origin, or not an entry): counts as acknowledged.
    Skipped,
    Pending(DeliveryFuture),
    Delivered,
}

struct InFlight {
    lsn: u64,
    bytes: u64,
    /// The message key (empty unless sent), for the log of an undeliverable entry.
    key: Vec<u8>,
    /// A transaction unit (counted in [`ShipperStats::shipped_units`]).
    unit: bool,
    state: State,
}

struct Shipper {
    config: ShipperConfig,
    source: Arc<dyn EntrySource>,
    checkpoint: Arc<ShipCheckpoint>,
    stats: Arc<ShipperStats>,
    on_acked: Box<dyn Fn(u64) + Send + Sync>,
    heartbeat: Option<HeartbeatBuilder>,
    producer: FutureProducer,
    /// The headers of a version-1 message (only this site's entries are shipped).
    headers: OwnedHeaders,
    /// The headers of a heartbeat: also what this build reads.
    beat_headers: OwnedHeaders,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: u64,
    next: u64,
    /// A record whose delivery failed with a permanent error, maybe because of
    /// others in its batch: it is sent again alone, and skipped only if it fails alone.
    isolate: Option<u64>,
    /// The checkpoint as last flushed to disk: what `on_acked` was told.
    flushed: u64,
    /// Partitions of the topic as last counted (the config's until then).
    partitions: i32,
}

fn make_producer(config: &ShipperConfig) -> Result<FutureProducer, ShipperError> {
    xsite_schemas::kafka::producer(&config.producer).map_err(ShipperError::Producer)
}

/// What a log shipper is made of: its configuration, what it ships from and where
/// it keeps its position, and what it reports to.
pub struct ShipperParts {
    pub config: ShipperConfig,
    /// The entries to ship (the node's WAL).
    pub source: Arc<dyn EntrySource>,
    /// The last position Kafka acknowledged, kept in sled.
    pub checkpoint: Arc<ShipCheckpoint>,
    pub stats: Arc<ShipperStats>,
    /// Called whenever the acknowledged position moves and is flushed to disk (the
    /// node uses it to know which WAL segments may go: a position not yet on disk
    /// could come back older after a crash).
    pub on_acked: Box<dyn Fn(u64) + Send + Sync>,
    /// Builds the heartbeats; `None`: send none.
    pub heartbeat: Option<HeartbeatBuilder>,
}

/// Ship until cancelled.
pub async fn run(parts: ShipperParts, cancel: CancellationToken) -> Result<(), ShipperError> {
    let ShipperParts { config, source, checkpoint, stats, on_acked, heartbeat } = parts;
    let producer = make_producer(&config)?;
    let next = checkpoint.acked() + 1;
    tracing::info!(site = %config.site, topic = %config.topic, from_lsn = next, "log shipper started");
    stats.acked_lsn.store(checkpoint.acked(), Ordering::Relaxed);
    on_acked(checkpoint.acked());
    let headers = xsite_schemas::kafka::headers(&config.site, 1);
    let beat_headers = xsite_schemas::kafka::heartbeat_headers(&config.site);
    let mut s = Shipper {
        headers,
        beat_headers,
        config,
        source,
        checkpoint,
        stats,
        on_acked,
        heartbeat,
        producer,
        in_flight: VecDeque::new(),
        in_flight_bytes: 0,
        next,
        isolate: None,
        flushed: next - 1,
        partitions: 0,
    };
    s.partitions = s.config.partitions;
    s.refresh_partitions().await;
    let result = s.run_loop(&cancel).await;
    s.drain().await;
    result
}

/// How often the topic's partitions are counted again (heartbeats go to each, and a
/// new empty one gets its head marker).
const PARTITION_CHECK_INTERVAL_MS: u64 = 30_000;
/// Bound on the metadata requests and marker deliveries of a partition count.
const MARKER_TIMEOUT_MS: u64 = 5_000;

impl Shipper {
    async fn run_loop(&mut self, cancel: &CancellationToken) -> Result<(), ShipperError> {
        let mut flush_tick =
            tokio::time::interval(Duration::from_millis(self.config.checkpoint_flush_interval_ms.max(1)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat_ms = if self.heartbeat.is_some() { self.config.heartbeat_interval_ms } else { 0 };
        let mut partition_tick = tokio::time::interval(Duration::from_millis(PARTITION_CHECK_INTERVAL_MS));
        partition_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        partition_tick.tick().await;
        let mut heartbeat_tick = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(1)));
        heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.update_backlog();
            let isolating = self.isolate.is_some() && !self.in_flight.is_empty();
            let room = self.in_flight_bytes < self.config.in_flight_bytes_max && !isolating;
            let wait = if self.in_flight.is_empty() { Duration::from_millis(100) } else { Duration::ZERO };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                delivered = front_delivery(&mut self.in_flight), if self.front_is_pending() => {
                    let result = match delivered {
                        Ok(()) => self.pop_acked(),
                        Err(err) => self.front_failed(err),
                    };
                    if let Err(err) = result {
                        self.rewind(err, cancel).await;
                    }
                }
                _ = flush_tick.tick() => self.flush_checkpoint().await,
                _ = heartbeat_tick.tick(), if heartbeat_ms > 0 => self.send_heartbeat(),
                _ = partition_tick.tick() => self.refresh_partitions().await,
                batch = self.source.read(self.next, self.config.batch_records_max, wait), if room => {
                    match batch {
                        Ok(records) => {
                            self.send_batch(records, cancel).await;
                            if let Err(err) = self.pop_acked() {
                                self.rewind(err, cancel).await;
                            }
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "log shipper cannot read the wal");
                            pause(self.config.retry_backoff_ms, cancel).await;
                        }
                    }
                }
            }
        }
    }

    fn front_is_pending(&self) -> bool {
        self.in_flight.front().is_some_and(|f| matches!(f.state, State::Pending(_)))
    }

    async fn send_batch(&mut self, records: Vec<SourceRecord>, cancel: &CancellationToken) {
        for record in records {
            let lsn = record.lsn;
            if self.isolate == Some(lsn) && !self.in_flight.is_empty() {
                return; // it goes alone, once everything before it is delivered
            }
            match self.send(record) {
                Ok(()) => self.next = lsn + 1,
                Err(err) => {
                    self.rewind(err, cancel).await;
                    return;
                }
            }
            if self.isolate == Some(lsn) {
                return; // sent alone: the rest waits for its delivery
            }
        }
    }

    /// Flush the checkpoint, then tell the node where it stands on disk.
    async fn flush_checkpoint(&mut self) {
        let acked = self.checkpoint.acked();
        match self.checkpoint.flush().await {
            Ok(()) if acked > self.flushed => {
                self.flushed = acked;
                (self.on_acked)(acked);
            }
            Ok(()) => {}
            Err(err) => tracing::error!(error = %err, "flushing the shipper checkpoint failed"),
        }
    }

    /// Skip a record Kafka refused for good: surfaced (metric, log, status), never
    /// retried forever, never holding back later records.
    fn undeliverable(&mut self, lsn: u64, key: &[u8], bytes: u64, err: &KafkaError) {
        self.stats.undeliverable_entries.fetch_add(1, Ordering::Relaxed);
        let key = show_key(key);
        tracing::error!(lsn, key = %key, bytes, error = %err, topic = %self.config.topic, "kafka refused an entry for good; it is skipped and other sites will not get it");
        let record = Undeliverable { lsn, key, bytes, reason: err.to_string() };
        *self.stats.last_undeliverable.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(record);
        if self.isolate == Some(lsn) {
            self.isolate = None;
        }
    }

    /// Hand one record to the producer (or mark it as not ours to ship).
    fn send(&mut self, record: SourceRecord) -> Result<(), KafkaError> {
        // The commonest entries are read off their first bytes; the rest decoded.
        let (ours, key, unit, version) = match xsite_schemas::peek(&record.payload) {
            Some(p) => (p.origin == self.config.site.as_str(), p.key, false, p.version),
            None => match decode(&record.payload) {
                Ok(entry) => (
                    entry.origin == self.config.site,
                    // A transaction unit goes, as one message, to its first key's partition.
                    entry.message_key().unwrap_or_default().to_vec(),
                    matches!(entry.op, xsite_schemas::Op::Multi { .. }),
                    xsite_schemas::format_version_of(&entry),
                ),
                Err(err) => {
                    // The WAL is checksummed: this is a bug or a format from the future.
                    tracing::error!(lsn = record.lsn, error = %err, "wal record is not a log entry; not shipped");
                    self.stats.undecodable_entries.fetch_add(1, Ordering::Relaxed);
                    self.skip(record.lsn);
                    return Ok(());
                }
            },
        };
        if !ours {
            self.stats.skipped_remote_entries.fetch_add(1, Ordering::Relaxed);
            self.skip(record.lsn);
            return Ok(());
        }
        let bytes = record.payload.len() as u64;
        let headers = match version {
            1 => self.headers.clone(),
            v => xsite_schemas::kafka::headers(&self.config.site, v),
        };
        let msg = FutureRecord::to(&self.config.topic).key(&key[..]).payload(&record.payload).headers(headers);
        let delivery = match self.producer.send_result(msg) {
            Ok(d) => d,
            Err((err, _)) if is_permanent(&err) => {
                // Refused by the producer itself: certainly this record alone.
                self.undeliverable(record.lsn, &key, bytes, &err);
                self.skip(record.lsn);
                return Ok(());
            }
            Err((err, _)) => return Err(err),
        };
        self.in_flight_bytes += bytes;
        self.in_flight.push_back(InFlight { lsn: record.lsn, bytes, key, unit, state: State::Pending(delivery) });
        Ok(())
    }

    /// Marks the record at `lsn` as not shipped: it moves the checkpoint as it comes.
    fn skip(&mut self, lsn: u64) {
        self.in_flight.push_back(InFlight { lsn, bytes: 0, key: Vec::new(), unit: false, state: State::Skipped });
    }

    /// Pop every acknowledged record at the front and move the checkpoint. A failed
    /// delivery at the front is returned (after saving the progress before it).
    fn pop_acked(&mut self) -> Result<(), KafkaError> {
        let mut acked = None;
        let mut failure = None;
        while let Some(front) = self.in_flight.front_mut() {
            if let State::Pending(d) = &mut front.state {
                match d.now_or_never() {
                    None => break,
                    Some(Ok(Ok(_))) => front.state = State::Delivered,
                    Some(Ok(Err((err, _)))) => {
                        failure = Some(err);
                        break;
                    }
                    Some(Err(_)) => {
                        failure = Some(KafkaError::Canceled);
                        break;
                    }
                }
            }
            if matches!(front.state, State::Delivered) {
                self.stats.shipped_entries.fetch_add(1, Ordering::Relaxed);
                self.stats.shipped_bytes.fetch_add(front.bytes, Ordering::Relaxed);
                if front.unit {
                    self.stats.shipped_units.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.in_flight_bytes -= front.bytes;
            acked = Some(front.lsn);
            self.in_flight.pop_front();
        }
        if let Some(lsn) = acked {
            self.save(lsn);
        }
        match failure {
            None => Ok(()),
            Some(err) => self.front_failed(err),
        }
    }

    /// The front record's delivery failed. A permanent error of a record sent alone
    /// skips it (and goes on popping); a permanent error otherwise sends it again
    /// alone; anything else is returned (rewind and retry).
    fn front_failed(&mut self, err: KafkaError) -> Result<(), KafkaError> {
        let Some(front) = self.in_flight.front_mut() else { return Err(err) };
        if !is_permanent(&err) {
            return Err(err);
        }
        if self.isolate != Some(front.lsn) {
            self.isolate = Some(front.lsn);
            return Err(err);
        }
        let (lsn, bytes, key) = (front.lsn, front.bytes, std::mem::take(&mut front.key));
        front.state = State::Skipped;
        self.in_flight_bytes -= bytes;
        front.bytes = 0;
        self.undeliverable(lsn, &key, bytes, &err);
        self.pop_acked()
    }

    fn save(&self, lsn: u64) {
        match self.checkpoint.advance(lsn) {
            Ok(_) => {
                self.stats.acked_lsn.store(lsn, Ordering::Relaxed);
                (self.on_acked)(lsn);
            }
            Err(err) => tracing::error!(lsn, error = %err, "saving the shipper checkpoint failed"),
        }
    }

    /// A delivery failed: forget everything in flight and send again from the first
    /// unacknowledged position, after a pause. Duplicates are harmless.
    async fn rewind(&mut self, err: KafkaError, cancel: &CancellationToken) {
        self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
        let from = self.checkpoint.acked() + 1;
        tracing::warn!(error = %err, from_lsn = from, in_flight = self.in_flight.len(), "delivery failed; resending");
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        self.next = from;
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(?code, %reason, "producer hit a fatal error; recreating it");
            match make_producer(&self.config) {
                Ok(p) => self.producer = p,
                Err(e) => tracing::error!(error = %e, "recreating the producer failed"),
            }
        }
        pause(self.config.retry_backoff_ms, cancel).await;
    }

    /// Send a heartbeat to every partition, every tick, behind a backlog too: what
    /// its watermarks promise holds whatever is still in flight, because this site's
    /// own watermark only covers records Kafka has acknowledged (so they come before
    /// it in every partition). Skipping it while records were in flight starved both
    /// the lease and the successor's "last heard" under a steady load: the primary
    /// fenced itself and the successor promoted itself with nothing failed.
    fn send_heartbeat(&mut self) {
        let Some(payload) = self.heartbeat.as_ref().and_then(|build| build(Beat::Watermarks)) else {
            return;
        };
        let headers = self.config.beat_extras.apply(&self.beat_headers);
        for p in 0..self.partitions {
            let msg =
                FutureRecord::<(), _>::to(&self.config.topic).partition(p).payload(&payload).headers(headers.clone());
            // Fire and forget: a lost heartbeat only delays tombstone collection.
            if let Err((err, _)) = self.producer.send_result(msg) {
                tracing::debug!(error = %err, partition = p, "heartbeat not queued");
                return;
            }
        }
        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the topic's partitions, and writes the head marker into each one that
    /// is still empty (best effort: a partition without one only loses the
    /// re-creation check at consumers).
    async fn refresh_partitions(&mut self) {
        let Some(build) = &self.heartbeat else { return };
        let (producer, topic) = (self.producer.clone(), self.config.topic.clone());
        let timeout = Duration::from_millis(MARKER_TIMEOUT_MS);
        let counted = tokio::task::spawn_blocking(move || {
            let md = producer.client().fetch_metadata(Some(&topic), timeout).ok()?;
            let n = md.topics().first()?.partitions().len() as i32;
            let empty: Vec<i32> = (0..n)
                .filter(|p| matches!(producer.client().fetch_watermarks(&topic, *p, timeout), Ok((_, 0))))
                .collect();
            Some((n, empty))
        })
        .await
        .ok()
        .flatten();
        let Some((n, empty)) = counted else {
            tracing::debug!(topic = %self.config.topic, "could not count the topic's partitions");
            return;
        };
        if n > 0 && n != self.partitions {
            tracing::info!(topic = %self.config.topic, partitions = n, "topic partitions counted");
            self.partitions = n;
        }
        for p in empty {
            let Some(marker) = build(Beat::Marker) else { continue };
            let msg = FutureRecord::<(), _>::to(&self.config.topic)
                .partition(p)
                .payload(&marker)
                .headers(self.beat_headers.clone());
            match self.producer.send(msg, Duration::from_millis(MARKER_TIMEOUT_MS)).await {
                Ok(_) => tracing::debug!(topic = %self.config.topic, partition = p, "head marker written"),
                Err((err, _)) => {
                    tracing::warn!(topic = %self.config.topic, partition = p, error = %err, "head marker not written")
                }
            }
        }
    }

    fn update_backlog(&self) {
        let backlog = self.source.last_lsn().saturating_sub(self.checkpoint.acked());
        self.stats.backlog_records.store(backlog, Ordering::Relaxed);
        let alarm = u64::from(backlog > self.config.backlog_records_alarm);
        if self.stats.backlog_alarm.swap(alarm, Ordering::Relaxed) != alarm {
            if alarm == 1 {
                tracing::error!(
                    backlog_records = backlog,
                    limit = self.config.backlog_records_alarm,
                    "wal backlog above alarm level: is kafka reachable?"
                );
            } else {
                tracing::info!(backlog_records = backlog, "wal backlog back below alarm level");
            }
        }
    }

    /// On shutdown: wait a little for what is in flight, then save the checkpoint.
    async fn drain(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
        if let Err(err) = self.pop_acked() {
            tracing::warn!(error = %err, "delivery failed during shutdown; it will be resent on restart");
        }
        if let Err(err) = self.checkpoint.flush().await {
            tracing::warn!(error = %err, "flushing the shipper checkpoint on shutdown failed");
        }
        tracing::info!(acked_lsn = self.checkpoint.acked(), "log shipper stopped");
    }
}

/// Wait for the delivery of the oldest in-flight record and mark it delivered.
async fn front_delivery(in_flight: &mut VecDeque<InFlight>) -> Result<(), KafkaError> {
    let Some(front) = in_flight.front_mut() else {
        return Ok(());
    };
    let State::Pending(d) = &mut front.state else {
        return Ok(());
    };
    match d.await {
        Ok(Ok(_)) => {
            front.state = State::Delivered;
            Ok(())
        }
        Ok(Err((err, _))) => Err(err),
        Err(_) => Err(KafkaError::Canceled),
    }
}

async fn pause(ms: u64, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
    }
}

/// A key for a log line: text when printable, else escaped; long keys shortened.
fn show_key(key: &[u8]) -> String {
    const SHOW_BYTES_MAX: usize = 64;
    let shown: String =
        key.iter().take(SHOW_BYTES_MAX).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    if key.len() > SHOW_BYTES_MAX {
        format!("{shown}… ({} bytes)", key.len())
    } else {
        shown
    }
}
