//! Replication throughput and lag, two sites in one process on librdkafka's mock
//! cluster (the demo's setup). Reported, never asserted; results go in
//! docs/benchmarks.md.
//!
//! 1. Throughput: SETs sent to site A's RESP port (8 connections, pipelines of 64)
//!    until site B has applied them all, against raw rdkafka produce + consume of the
//!    same number of messages of the same size through the same broker.
//! 2. Lag: SETs at a steady rate to site A; for each entry applied at B, B's wall
//!    clock minus the entry's timestamp (ms resolution): p50, p99, max.
//!
//! `cargo run --release -p xsite-node --example replication_bench -- [writes] [value_bytes] [rate_per_s] [seconds]`

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_node::demo::{create_mock_topics, mesh_configs};
use xsite_node::node::{self, RunningNode};
use xsite_node::wal::Durability;
use xsite_schemas::kafka::mock::MockKafka;
use xsite_schemas::{encode, CacheName, Hlc, LogEntry, Op, SiteId};

const CONNECTIONS: usize = 8;
const PIPELINE: usize = 64;
const PARTITIONS: i32 = 4;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

async fn start(
    kafka: &MockKafka,
    root: &std::path::Path,
    cancel: &CancellationToken,
    d: Durability,
) -> Vec<RunningNode> {
    let configs = mesh_configs(2, kafka.bootstrap_servers(), root, d, 0);
    create_mock_topics(kafka, &configs).unwrap();
    let mut nodes = Vec::new();
    for c in configs {
        nodes.push(node::start(c, cancel.clone()).await.unwrap());
    }
    nodes
}

fn applied_at(node: &RunningNode, from: &str) -> u64 {
    let s = &node.replication.as_ref().unwrap().consumer_stats[&SiteId::new(from).unwrap()];
    s.applied_changed.load(Ordering::Relaxed) + s.applied_unchanged.load(Ordering::Relaxed)
}

async fn wait_applied(node: &RunningNode, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while applied_at(node, "site-a") < n {
        assert!(Instant::now() < deadline, "only {} of {n} applied", applied_at(node, "site-a"));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn xsite_throughput(writes: u64, value: &[u8], durability: Durability) -> f64 {
    let kafka = MockKafka::start(1).unwrap();
    let root = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let nodes = start(&kafka, root.path(), &cancel, durability).await;
    let client = redis::Client::open(format!("redis://{}/", nodes[0].resp_addr)).unwrap();
    let per_conn = writes / CONNECTIONS as u64;
    let started = Instant::now();
    let writers = (0..CONNECTIONS).map(|c| {
        let client = client.clone();
        let value = value.to_vec();
        tokio::spawn(async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut i = 0;
            while i < per_conn {
                let mut pipe = redis::pipe();
                for j in i..(i + PIPELINE as u64).min(per_conn) {
                    pipe.cmd("SET").arg(format!("k{c}-{j}")).arg(&value).ignore();
                }
                let () = pipe.query_async(&mut conn).await.unwrap();
                i += PIPELINE as u64;
            }
        })
    });
    join_all(writers).await;
    let total = per_conn * CONNECTIONS as u64;
    wait_applied(&nodes[1], total, Duration::from_secs(300)).await;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    cancel.cancel();
    for n in nodes {
        n.wait().await.unwrap();
    }
    rate
}

fn raw_payload(value: &[u8]) -> Vec<u8> {
    encode(&LogEntry {
        id: LogEntry::new_id(),
        origin: SiteId::new("site-a").unwrap(),
        seq: 1_000_000,
        hlc: Hlc::new(1_733_000_000_000, 0),
        epoch: 0,
        cache: CacheName::new("default").unwrap(),
        op: Op::Put { key: b"k0-1000000".to_vec(), value: value.to_vec(), expire_at_ms: None, keep_ttl: false },
    })
}

async fn raw_throughput(writes: u64, value: &[u8]) -> f64 {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic("raw", PARTITIONS).unwrap();
    let bootstrap = kafka.bootstrap_servers().to_string();
    let payload = raw_payload(value);
    let reader = {
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "raw")
                .set("fetch.wait.max.ms", "10")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset("raw", p, Offset::Beginning).unwrap();
            }
            consumer.assign(&tpl).unwrap();
            let mut got = 0;
            let deadline = Instant::now() + Duration::from_secs(300);
            while got < writes && Instant::now() < deadline {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                    got += 1;
                }
            }
            got
        })
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..writes {
        let key = format!("k{}-{}", i % CONNECTIONS as u64, i);
        pending.push(
            producer.send_result(FutureRecord::to("raw").key(&key).payload(&payload)).map_err(|(e, _)| e).unwrap(),
        );
        if pending.len() >= 10_000 {
            join_all(pending.drain(..)).await;
        }
    }
    join_all(pending).await;
    let got = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    assert_eq!(got, writes, "raw consumer got everything");
    writes as f64 / started.elapsed().as_secs_f64()
}

async fn lag(rate: u64, seconds: u64, value: &[u8]) -> (u64, Option<u64>, Option<u64>, u64) {
    let kafka = MockKafka::start(1).unwrap();
    let root = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let nodes = start(&kafka, root.path(), &cancel, Durability::Always).await;
    let client = redis::Client::open(format!("redis://{}/", nodes[0].resp_addr)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Warm up: the first entries also wait for the consumers to start.
    let () = redis::cmd("SET").arg("warm-up").arg(value).query_async(&mut conn).await.unwrap();
    wait_applied(&nodes[1], 1, Duration::from_secs(60)).await;
    let h = &nodes[1].replication.as_ref().unwrap().consumer_stats[&SiteId::new("site-a").unwrap()].lag;
    h.reset();
    let per_tick = (rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0;
    let ticks = seconds * 1000;
    for t in 0..ticks {
        tick.tick().await;
        let mut pipe = redis::pipe();
        for j in 0..per_tick {
            pipe.cmd("SET").arg(format!("lag-{t}-{j}")).arg(value).ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
        sent += per_tick;
    }
    wait_applied(&nodes[1], sent + 1, Duration::from_secs(60)).await;
    let result = (sent, h.quantile_ms(0.5), h.quantile_ms(0.99), h.max_ms());
    cancel.cancel();
    for n in nodes {
        n.wait().await.unwrap();
    }
    result
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let writes = arg(1, 200_000);
    let value = vec![b'x'; arg(2, 100) as usize];
    let rate = arg(3, 10_000);
    let seconds = arg(4, 5);
    println!("replication benchmark: {writes} SETs of {} B values, MockCluster", value.len());
    let raw = raw_throughput(writes, &value).await;
    println!("| path | writes/s | ratio to raw |");
    println!("|---|---|---|");
    println!("| raw rdkafka produce + consume ({} B messages) | {raw:.0} | 1.00x |", raw_payload(&value).len());
    for d in [Durability::No, Durability::Always] {
        let xs = xsite_throughput(writes, &value, d).await;
        println!("| xsite, durability {d}: RESP at site A → applied at site B | {xs:.0} | {:.2}x |", xs / raw);
    }
    let (sent, p50, p99, max) = lag(rate, seconds, &value).await;
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    println!();
    println!(
        "lag (durability always) at a steady {rate} writes/s for {seconds} s ({sent} writes): p50 {} · p99 {} · max {max} ms",
        ms(p50),
        ms(p99)
    );
}
