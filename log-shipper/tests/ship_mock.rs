//! The shipper against librdkafka's mock cluster: everything local reaches the
//! topic, nothing remote does, the checkpoint follows, and a broker outage loses
//! nothing.

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_log_shipper::{
    EntrySource, ShipCheckpoint, ShipperConfig, ShipperParts, ShipperStats, SourceError, SourceRecord,
};
use xsite_schemas::kafka::mock::MockKafka;
use xsite_schemas::{encode, CacheName, Hlc, LogEntry, Op, SiteId};

const PARTITIONS: i32 = 4;

#[derive(Default)]
struct MemSource {
    records: Mutex<Vec<SourceRecord>>,
}

impl MemSource {
    fn push(&self, origin: &str, key: &str) {
        self.push_value(origin, key, b"v".to_vec());
    }

    fn push_value(&self, origin: &str, key: &str, value: Vec<u8>) {
        let mut records = self.records.lock().unwrap();
        let lsn = records.len() as u64 + 1;
        let entry = LogEntry {
            id: LogEntry::new_id(),
            origin: SiteId::new(origin).unwrap(),
            seq: lsn,
            hlc: Hlc::new(1_000 + lsn, 0),
            epoch: 0,
            cache: CacheName::new("default").unwrap(),
            op: Op::Put { key: key.as_bytes().to_vec(), value, expire_at_ms: None, keep_ttl: false },
        };
        records.push(SourceRecord { lsn, payload: encode(&entry) });
    }
}

impl EntrySource for MemSource {
    fn read(
        &self,
        from: u64,
        records_max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<SourceRecord>, SourceError>> {
        Box::pin(async move {
            let deadline = Instant::now() + wait;
            loop {
                let batch: Vec<_> = {
                    let records = self.records.lock().unwrap();
                    records.iter().filter(|r| r.lsn >= from).take(records_max).cloned().collect()
                };
                if !batch.is_empty() || Instant::now() >= deadline {
                    return Ok(batch);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }
    fn last_lsn(&self) -> u64 {
        self.records.lock().unwrap().len() as u64
    }
}

fn config(bootstrap: &str) -> ShipperConfig {
    let mut producer = ClientConfig::new();
    producer.set("bootstrap.servers", bootstrap).set("linger.ms", "2").set("message.timeout.ms", "30000");
    ShipperConfig {
        site: SiteId::new("site-a").unwrap(),
        topic: "xsite.site-a".into(),
        producer,
        in_flight_bytes_max: 64 * 1024,
        batch_records_max: 256,
        checkpoint_flush_interval_ms: 50,
        retry_backoff_ms: 100,
        backlog_records_alarm: 1_000_000,
        heartbeat_interval_ms: 0,
        partitions: PARTITIONS,
        beat_extras: Default::default(),
    }
}

/// Read every message of the topic; return the `seq` of each entry.
fn read_topic(bootstrap: &str, expect: usize, timeout: Duration) -> Vec<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("xsite.site-a", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut seqs = Vec::new();
    while seqs.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let entry = xsite_schemas::decode(m.payload().unwrap()).unwrap();
            assert_eq!(m.key(), entry.op.key());
            let origin = m.headers().unwrap().iter().find(|h| h.key == "xsite-origin").unwrap();
            assert_eq!(origin.value, Some(b"site-a".as_slice()));
            seqs.push(entry.seq);
        }
    }
    seqs
}

async fn wait_acked(stats: &ShipperStats, lsn: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while stats.acked_lsn.load(Ordering::Relaxed) < lsn {
        assert!(Instant::now() < deadline, "acked {} < {lsn}", stats.acked_lsn.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_local_entries_only_and_survives_a_broker_outage() {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic("xsite.site-a", PARTITIONS).unwrap();
    let source = Arc::new(MemSource::default());
    for i in 0..500 {
        source.push(if i % 5 == 0 { "site-b" } else { "site-a" }, &format!("key-{i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let checkpoint = Arc::new(ShipCheckpoint::open(&db).unwrap());
    let stats = Arc::new(ShipperStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(xsite_log_shipper::run(
        ShipperParts {
            config: config(kafka.bootstrap_servers()),
            source: source.clone(),
            checkpoint: checkpoint.clone(),
            stats: stats.clone(),
            on_acked: Box::new(|_| {}),
            heartbeat: None,
        },
        cancel.clone(),
    ));
    wait_acked(&stats, 500, Duration::from_secs(20)).await;

    kafka.set_all(false).unwrap();
    for i in 500..1000 {
        source.push("site-a", &format!("key-{i}"));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(stats.acked_lsn.load(Ordering::Relaxed) < 1000, "nothing can be acknowledged while the broker is down");
    kafka.set_all(true).unwrap();
    wait_acked(&stats, 1000, Duration::from_secs(30)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();

    let expected: BTreeSet<u64> = (1..=1000).filter(|lsn| lsn > &500 || (lsn - 1) % 5 != 0).collect();
    let bootstrap = kafka.bootstrap_servers().to_string();
    let seqs = tokio::task::spawn_blocking(move || read_topic(&bootstrap, expected.len(), Duration::from_secs(20)))
        .await
        .unwrap();
    let got: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(got, (1..=1000).filter(|lsn| lsn > &500 || (lsn - 1) % 5 != 0).collect::<BTreeSet<_>>());
    assert_eq!(stats.skipped_remote_entries.load(Ordering::Relaxed), 100);
    assert_eq!(checkpoint.acked(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_its_checkpoint() {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic("xsite.site-a", PARTITIONS).unwrap();
    let source = Arc::new(MemSource::default());
    for i in 0..100 {
        source.push("site-a", &format!("k{i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    {
        // A previous run acknowledged the first 60.
        let c = ShipCheckpoint::open(&db).unwrap();
        c.advance(60).unwrap();
    }
    let checkpoint = Arc::new(ShipCheckpoint::open(&db).unwrap());
    let stats = Arc::new(ShipperStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(xsite_log_shipper::run(
        ShipperParts {
            config: config(kafka.bootstrap_servers()),
            source: source.clone(),
            checkpoint,
            stats: stats.clone(),
            on_acked: Box::new(|_| {}),
            heartbeat: None,
        },
        cancel.clone(),
    ));
    wait_acked(&stats, 100, Duration::from_secs(20)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let bootstrap = kafka.bootstrap_servers().to_string();
    let mut seqs =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, 40, Duration::from_secs(10))).await.unwrap();
    seqs.sort();
    assert_eq!(seqs, (61..=100).collect::<Vec<_>>());
}

/// A record Kafka can never take (larger than the producer's `message.max.bytes`)
/// is skipped and surfaced; it must not hold back the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_kafka_refuses_for_good_is_skipped_and_reported_not_retried_forever() {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic("xsite.site-a", PARTITIONS).unwrap();
    let source = Arc::new(MemSource::default());
    source.push("site-a", "before");
    source.push_value("site-a", "huge", vec![b'x'; 2 << 20]);
    for i in 0..20 {
        source.push("site-a", &format!("after-{i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let checkpoint = Arc::new(ShipCheckpoint::open(&db).unwrap());
    let stats = Arc::new(ShipperStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(xsite_log_shipper::run(
        ShipperParts {
            config: config(kafka.bootstrap_servers()),
            source: source.clone(),
            checkpoint: checkpoint.clone(),
            stats: stats.clone(),
            on_acked: Box::new(|_| {}),
            heartbeat: None,
        },
        cancel.clone(),
    ));
    wait_acked(&stats, 22, Duration::from_secs(20)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(stats.undeliverable_entries.load(Ordering::Relaxed), 1);
    let last = stats.last_undeliverable.lock().unwrap().clone().expect("the skipped entry is reported");
    assert_eq!((last.lsn, last.key.as_str()), (2, "huge"));
    assert!(last.reason.to_lowercase().contains("size"), "{}", last.reason);
    let bootstrap = kafka.bootstrap_servers().to_string();
    let mut seqs =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, 21, Duration::from_secs(10))).await.unwrap();
    seqs.sort();
    assert_eq!(seqs, std::iter::once(1).chain(3..=22).collect::<Vec<_>>());
}
