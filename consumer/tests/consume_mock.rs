//! The consumer against librdkafka's mock cluster: applies remote entries, skips its
//! own, dead-letters poison and rejected messages without stalling, retries transient
//! failures, and resumes from its sled offsets without re-applying or skipping.

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_consumer::{
    dlq_header, Applied, Applier, ApplyError, ConsumerConfig, ConsumerParts, ConsumerStats, OffsetStore,
};
use xsite_schemas::kafka::mock::MockKafka;
use xsite_schemas::{encode, CacheName, Hlc, LogEntry, Op, SiteId};

const TOPIC: &str = "xsite.site-b";
const DLQ: &str = "xsite.dlq.site-a";

#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<LogEntry>>,
    /// Fail this many applies with a transient error first.
    transient_failures: AtomicU64,
    /// Position of the last change (one per applied entry), as a WAL would number it.
    written: AtomicU64,
    /// Set: nothing becomes durable until `durable` is moved by the test.
    hold_durability: std::sync::atomic::AtomicBool,
    durable: AtomicU64,
    durable_moved: tokio::sync::Notify,
}

impl Recorder {
    /// Everything written so far becomes durable.
    fn make_durable(&self) {
        self.durable.store(self.written.load(Ordering::SeqCst), Ordering::SeqCst);
        self.durable_moved.notify_waiters();
    }
}

impl Applier for Recorder {
    fn apply(&self, entry: LogEntry) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            if self.transient_failures.load(Ordering::SeqCst) > 0 {
                self.transient_failures.fetch_sub(1, Ordering::SeqCst);
                return Err(ApplyError::Transient("disk full".into()));
            }
            if entry.cache.as_str() != "default" {
                return Err(ApplyError::Rejected(format!("unknown cache '{}'", entry.cache)));
            }
            self.applied.lock().unwrap().push(entry);
            self.written.fetch_add(1, Ordering::SeqCst);
            if !self.hold_durability.load(Ordering::SeqCst) {
                self.make_durable();
            }
            Ok(Applied::Changed)
        })
    }

    fn barrier(&self) -> BoxFuture<'_, Result<u64, ApplyError>> {
        Box::pin(async move { Ok(self.written.load(Ordering::SeqCst)) })
    }

    fn durable_position(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    fn durable_reaches(&self, position: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.durable.load(Ordering::SeqCst) < position {
                let _ = tokio::time::timeout(Duration::from_millis(200), self.durable_moved.notified()).await;
            }
        })
    }

    fn sync(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn entry(origin: &str, seq: u64, cache: &str) -> LogEntry {
    LogEntry {
        id: LogEntry::new_id(),
        origin: SiteId::new(origin).unwrap(),
        seq,
        hlc: Hlc::new(1_000 + seq, 0),
        epoch: 0,
        cache: CacheName::new(cache).unwrap(),
        op: Op::Put { key: format!("k{seq}").into_bytes(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false },
    }
}

fn produce(bootstrap: &str, messages: &[(Vec<u8>, Vec<u8>)]) {
    let p: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "1").create().unwrap();
    for (k, v) in messages {
        p.send(BaseRecord::to(TOPIC).key(k).payload(v)).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn config(bootstrap: &str) -> ConsumerConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", bootstrap).set("fetch.wait.max.ms", "10");
    let mut dlq_client = ClientConfig::new();
    dlq_client.set("bootstrap.servers", bootstrap);
    ConsumerConfig {
        local_site: SiteId::new("site-a").unwrap(),
        remote_site: SiteId::new("site-b").unwrap(),
        topic: TOPIC.into(),
        client,
        dlq_topic: DLQ.into(),
        dlq_client,
        batch_records_max: 100,
        retry_backoff_ms: 20,
        checkpoint_flush_interval_ms: 50,
        request_timeout_ms: 5_000,
    }
}

async fn wait_for(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_dlq(bootstrap: &str, expect: usize) -> Vec<(String, Vec<u8>)> {
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "dlq-reader").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(DLQ, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut out = Vec::new();
    while out.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let reason = dlq_header(m.headers().unwrap(), "xsite-dlq-reason").unwrap();
            out.push((String::from_utf8_lossy(reason).into_owned(), m.payload().unwrap().to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_skips_dead_letters_and_resumes() {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    kafka.create_topic(DLQ, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers().to_string();
    let mut messages: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for seq in 1..=50 {
        messages.push((format!("k{seq}").into_bytes(), encode(&entry("site-b", seq, "default"))));
    }
    messages.push((b"k-own".to_vec(), encode(&entry("site-a", 99, "default"))));
    messages.push((b"poison".to_vec(), b"{not json".to_vec()));
    messages.push((b"k-unknown".to_vec(), encode(&entry("site-b", 77, "nosuchcache"))));
    produce(&bootstrap, &messages);

    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let recorder = Arc::new(Recorder::default());
    recorder.transient_failures.store(3, Ordering::SeqCst);
    let stats = Arc::new(ConsumerStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(xsite_consumer::run(
        ConsumerParts {
            config: config(&bootstrap),
            applier: recorder.clone(),
            offsets: OffsetStore::open(&db).unwrap(),
            stats: stats.clone(),
        },
        cancel.clone(),
    ));
    wait_for("50 entries applied and 2 dead-lettered", Duration::from_secs(30), || {
        recorder.applied.lock().unwrap().len() == 50 && stats.dead_lettered.load(Ordering::Relaxed) == 2
    })
    .await;
    assert_eq!(stats.skipped_own.load(Ordering::Relaxed), 1);
    assert!(stats.transient_errors.load(Ordering::Relaxed) >= 3);
    cancel.cancel();
    task.await.unwrap().unwrap();

    let b = bootstrap.clone();
    let dlq = tokio::task::spawn_blocking(move || read_dlq(&b, 2)).await.unwrap();
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq.iter().any(|(r, p)| r.starts_with("undecodable entry") && p == b"{not json"), "{dlq:?}");
    assert!(dlq.iter().any(|(r, _)| r.contains("unknown cache 'nosuchcache'")), "{dlq:?}");

    // More entries while it is down, then a restart: only the new ones are applied.
    let more: Vec<_> =
        (51..=60).map(|seq| (format!("k{seq}").into_bytes(), encode(&entry("site-b", seq, "default")))).collect();
    produce(&bootstrap, &more);
    let recorder2 = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(xsite_consumer::run(
        ConsumerParts {
            config: config(&bootstrap),
            applier: recorder2.clone(),
            offsets: OffsetStore::open(&db).unwrap(),
            stats: Arc::new(ConsumerStats::default()),
        },
        cancel.clone(),
    ));
    wait_for("10 new entries", Duration::from_secs(30), || recorder2.applied.lock().unwrap().len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let mut seqs: Vec<u64> = recorder2.applied.lock().unwrap().iter().map(|e| e.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (51..=60).collect::<Vec<_>>(), "resumed exactly after the last applied offset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_past_the_end_of_a_recreated_topic_start_over() {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    kafka.create_topic(DLQ, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers().to_string();
    let messages: Vec<_> =
        (1..=10).map(|seq| (format!("k{seq}").into_bytes(), encode(&entry("site-b", seq, "default")))).collect();
    produce(&bootstrap, &messages);
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let offsets = OffsetStore::open(&db).unwrap();
    // Offsets saved against an earlier incarnation of the topic, far past its end now.
    offsets.advance(TOPIC, 0, 5_000).unwrap();
    offsets.advance(TOPIC, 1, 5_000).unwrap();
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(xsite_consumer::run(
        ConsumerParts {
            config: config(&bootstrap),
            applier: recorder.clone(),
            offsets: offsets.clone(),
            stats: Arc::new(ConsumerStats::default()),
        },
        cancel.clone(),
    ));
    wait_for("the re-created topic read from its start", Duration::from_secs(30), || {
        recorder.applied.lock().unwrap().len() == 10
    })
    .await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let saved: Vec<i64> = offsets.all().into_iter().map(|(_, _, o)| o).collect();
    assert!(saved.iter().all(|o| *o < 10), "offsets now follow the new topic: {saved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_saved_only_once_the_applied_entries_are_durable() {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    kafka.create_topic(DLQ, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers().to_string();
    let messages: Vec<_> =
        (1..=20).map(|seq| (format!("k{seq}").into_bytes(), encode(&entry("site-b", seq, "default")))).collect();
    produce(&bootstrap, &messages);
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let offsets = OffsetStore::open(&db).unwrap();
    let recorder = Arc::new(Recorder::default());
    recorder.hold_durability.store(true, Ordering::SeqCst);
    let stats = Arc::new(ConsumerStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(xsite_consumer::run(
        ConsumerParts {
            config: config(&bootstrap),
            applier: recorder.clone(),
            offsets: offsets.clone(),
            stats: stats.clone(),
        },
        cancel.clone(),
    ));
    wait_for("20 entries applied with their batches waiting for durability", Duration::from_secs(30), || {
        recorder.applied.lock().unwrap().len() == 20 && stats.checkpoints_pending.load(Ordering::Relaxed) > 0
    })
    .await;
    assert_eq!(offsets.all(), vec![], "no offset may be saved before the entries it covers are durable");
    recorder.make_durable();
    wait_for("offsets saved once durable", Duration::from_secs(10), || {
        offsets.all().iter().map(|(_, _, o)| o + 1).sum::<i64>() == 20
    })
    .await;
    assert_eq!(stats.checkpoints_pending.load(Ordering::Relaxed), 0);
    cancel.cancel();
    task.await.unwrap().unwrap();
}
