//! Transaction units on the real path of one node (site-a, MockCluster), its one
//! remote (site-b) played by the test through site-b's topic:
//!
//! - site-a writes a transaction as one unit only while site-b's latest heartbeat
//!   advertises (`xsite-reads`) that it reads format 3: before site-b is heard
//!   from, while its heartbeats come without the header (an older build), and
//!   again after it stops sending it (a rollback), the entries go one by one —
//!   counted in `xsite_transactions_split_unreadable_total` — and site-a's topic
//!   shows what was shipped;
//! - a transaction whose unit would pass `kafka.max_entry_bytes` goes entry by
//!   entry (`xsite_transactions_split_too_large_total`), no message larger;
//! - a unit from site-b is applied whole; one with a member of a cache site-a does
//!   not have is dead-lettered whole, nothing of it applied;
//! - hash writes (format 4) are refused while site-b's heartbeats say it reads
//!   less, and taken before it is heard from and once it advertises format 4.
//!
//! Every wait is bounded by [`WAIT`].

mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{default_cache, Mesh, WAIT};
use xsite_schemas::kafka;
use xsite_schemas::{decode, encode, CacheName, Hlc, LogEntry, Op, SiteId, KAFKA_HEADER_FORMAT};

fn site_b() -> SiteId {
    SiteId::new("site-b").unwrap()
}

/// Site-a running, site-b's topic there but no node behind it.
async fn site_a_alone() -> Mesh {
    site_a_alone_with(|_| {}).await
}

async fn site_a_alone_with(tweak: impl Fn(&mut xsite_node::config::Config)) -> Mesh {
    let kafka = xsite_schemas::kafka::mock::MockKafka::start(1).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut configs = xsite_node::demo::mesh_configs(
        2,
        kafka.bootstrap_servers(),
        root.path(),
        xsite_node::wal::Durability::Always,
        0,
    );
    for c in &mut configs {
        tweak(c);
        c.validate().unwrap();
    }
    xsite_node::demo::create_mock_topics(&kafka, &configs).unwrap();
    let mut mesh = Mesh { kafka, root, configs, sites: Vec::new() };
    let a = mesh.launch(0).await;
    mesh.sites = vec![Some(a), None];
    mesh
}

fn producer(mesh: &Mesh) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", mesh.kafka.bootstrap_servers()).create().unwrap()
}

fn partitions(mesh: &Mesh) -> i32 {
    mesh.configs[0].kafka.as_ref().unwrap().partitions
}

/// Site-b's heartbeat to every partition of its topic, as a build that reads units
/// sends it (`advertise`) or as an older build does (no `xsite-reads` header).
async fn heartbeat_of_b(mesh: &Mesh, advertise: bool) {
    let p = producer(mesh);
    let entry = LogEntry {
        id: LogEntry::new_id(),
        origin: site_b(),
        seq: 0,
        hlc: Hlc::new(xsite_schemas::hlc::wall_clock_ms(), 0),
        epoch: 0,
        cache: default_cache(),
        op: Op::Heartbeat { applied: BTreeMap::from([(site_b(), Hlc::new(xsite_schemas::hlc::wall_clock_ms(), 0))]) },
    };
    let payload = encode(&entry);
    let headers = if advertise { kafka::heartbeat_headers(&site_b()) } else { kafka::headers(&site_b(), 1) };
    for partition in 0..partitions(mesh) {
        let record = FutureRecord::<(), _>::to("xsite.site-b").partition(partition).payload(&payload);
        p.send(record.headers(headers.clone()), Duration::from_secs(5)).await.unwrap();
    }
    p.flush(Duration::from_secs(5)).unwrap();
}

/// Waits until site-a holds what site-b's heartbeats say it reads.
async fn wait_reads(mesh: &Mesh, version: u32) {
    let stats = &mesh.node(0).replication.as_ref().unwrap().consumer_stats[&site_b()];
    let deadline = Instant::now() + WAIT;
    while stats.reads_version() != Some(version) {
        assert!(Instant::now() < deadline, "site-a never heard site-b reads {version}: {:?}", stats.reads_version());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn transaction(mesh: &Mesh, n: u32) {
    let mut c = mesh.conn(0).await;
    let n = n.to_string();
    let (): () = redis::pipe().atomic().set("a", &n).ignore().set("b", &n).ignore().query_async(&mut c).await.unwrap();
}

/// The messages of site-a's topic that are not heartbeats, as
/// `(message key, xsite-format header, entry)`, read until `until` holds.
fn shipped(mesh: &Mesh, until: impl Fn(&[(Vec<u8>, String, LogEntry)]) -> bool) -> Vec<(Vec<u8>, String, LogEntry)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mesh.kafka.bootstrap_servers())
        .set("group.id", "units-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions(mesh) {
        tpl.add_partition_offset("xsite.site-a", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !until(&seen) {
        assert!(Instant::now() < deadline, "site-a's topic lacks what was expected; read {seen:?}");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m.unwrap();
        let entry = decode(m.payload().unwrap()).unwrap();
        if matches!(entry.op, Op::Heartbeat { .. }) {
            continue;
        }
        let headers = m.headers().unwrap();
        let format = headers.iter().find(|h| h.key == KAFKA_HEADER_FORMAT).and_then(|h| h.value).unwrap();
        seen.push((m.key().unwrap_or_default().to_vec(), String::from_utf8(format.to_vec()).unwrap(), entry));
    }
    seen
}

/// The entries for `a` and `b` at value `n` that site-a shipped: one unit, or two
/// single entries.
fn shipped_round(seen: &[(Vec<u8>, String, LogEntry)], n: u32) -> Vec<&(Vec<u8>, String, LogEntry)> {
    let value = n.to_string().into_bytes();
    let is_round = |e: &LogEntry| e.members().iter().any(|m| matches!(&m.op, Op::Put { value: v, .. } if *v == value));
    seen.iter().filter(|(_, _, e)| is_round(e)).collect()
}

fn split_total(mesh: &Mesh) -> i64 {
    support::engine_metric(mesh.node(0), "xsite_transactions_split_unreadable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_go_only_to_a_site_that_advertises_it_reads_them() {
    let mesh = site_a_alone().await;
    // Not heard from yet: entry by entry.
    assert_eq!(mesh.node(0).engine.sites_without_units(), [site_b()]);
    transaction(&mesh, 1).await;
    assert_eq!(split_total(&mesh), 1);

    // An older build's heartbeats (no xsite-reads): still entry by entry.
    heartbeat_of_b(&mesh, false).await;
    wait_reads(&mesh, 2).await;
    transaction(&mesh, 2).await;
    assert_eq!(split_total(&mesh), 2);

    // Heartbeats that advertise format 3: one unit.
    heartbeat_of_b(&mesh, true).await;
    support::wait_units_readable(mesh.node(0)).await;
    transaction(&mesh, 3).await;
    assert_eq!(support::engine_metric(mesh.node(0), "xsite_transaction_units"), 1);

    // Rolled back to an older build: entry by entry again.
    heartbeat_of_b(&mesh, false).await;
    wait_reads(&mesh, 2).await;
    transaction(&mesh, 4).await;
    assert_eq!(split_total(&mesh), 3);
    assert_eq!(support::engine_metric(mesh.node(0), "xsite_transaction_units"), 1);

    // What site-a's topic holds: rounds 1, 2 and 4 as two version-1 messages keyed
    // by their own keys, round 3 as one version-3 unit keyed by its first key.
    let all = |seen: &[(Vec<u8>, String, LogEntry)]| {
        [1, 2, 4].iter().all(|&n| shipped_round(seen, n).len() == 2) && shipped_round(seen, 3).len() == 1
    };
    let seen = shipped(&mesh, all);
    for n in [1, 2, 4] {
        for (key, format, entry) in shipped_round(&seen, n) {
            assert_eq!((format.as_str(), entry.op.name()), ("1", "put"), "round {n}");
            assert_eq!(Some(&key[..]), entry.op.key(), "round {n}");
        }
    }
    let (key, format, unit) = shipped_round(&seen, 3)[0];
    assert_eq!((format.as_str(), unit.op.name(), &key[..]), ("3", "multi", &b"a"[..]));
    let keys: Vec<_> = unit.members().iter().map(|m| m.op.key().unwrap().to_vec()).collect();
    assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);

    // The metrics say so.
    let admin = mesh.node(0).admin_addr.unwrap();
    let metrics = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        "xsite_transactions_split_unreadable_total 3",
        "xsite_transaction_units_total 1",
        "xsite_transaction_units_writable 0",
        "xsite_shipper_units_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
    mesh.shutdown().await;
}

/// A unit as site-b ships it.
fn unit_of_b(members: &[(&str, &[u8], &[u8])]) -> LogEntry {
    let entries = members
        .iter()
        .map(|(cache, key, value)| LogEntry {
            id: LogEntry::new_id(),
            origin: site_b(),
            seq: 0,
            hlc: Hlc::new(xsite_schemas::hlc::wall_clock_ms(), 0),
            epoch: 0,
            cache: CacheName::new(*cache).unwrap(),
            op: Op::Put { key: key.to_vec(), value: value.to_vec(), expire_at_ms: None, keep_ttl: false },
        })
        .collect();
    let mut unit = LogEntry::unit(entries);
    unit.seq = 9;
    unit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_from_another_site_is_applied_whole_or_dead_lettered_whole() {
    let mesh = site_a_alone().await;
    let p = producer(&mesh);
    let send = |unit: LogEntry| {
        let payload = encode(&unit);
        let key = unit.message_key().unwrap().to_vec();
        let p = p.clone();
        async move {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "xsite-origin", value: Some("site-b") })
                .insert(Header { key: "xsite-format", value: Some("3") });
            let record = FutureRecord::to("xsite.site-b").key(&key).payload(&payload).headers(headers);
            p.send(record, Duration::from_secs(5)).await.unwrap();
        }
    };
    send(unit_of_b(&[("default", b"poison-1", b"x"), ("no-such-cache", b"poison-2", b"x")])).await;
    send(unit_of_b(&[("default", b"x", b"from-b"), ("default", b"y", b"from-b")])).await;
    let mut a = mesh.conn(0).await;
    support::wait_get(&mut a, b"y", Some(b"from-b")).await;
    let x: Option<String> = a.get("x").await.unwrap();
    assert_eq!(x.as_deref(), Some("from-b"));
    let stats = &mesh.node(0).replication.as_ref().unwrap().consumer_stats[&site_b()];
    let deadline = Instant::now() + WAIT;
    while stats.dead_lettered.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the unit with an unknown cache was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let poisoned: Option<String> = a.get("poison-1").await.unwrap();
    assert_eq!(poisoned, None, "nothing of a dead-lettered unit is applied");
    assert_eq!(support::engine_metric(mesh.node(0), "xsite_remote_units"), 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_too_large_for_one_message_goes_entry_by_entry() {
    let mesh = site_a_alone_with(|c| c.kafka.as_mut().unwrap().max_entry_bytes = 4096).await;
    heartbeat_of_b(&mesh, true).await;
    support::wait_units_readable(mesh.node(0)).await;
    let mut c = mesh.conn(0).await;
    let value = "v".repeat(1000);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for i in 0..4 {
        pipe.set(format!("big-{i}"), &value).ignore();
    }
    let (): () = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(support::engine_metric(mesh.node(0), "xsite_transactions_split_too_large"), 1);
    assert_eq!(support::engine_metric(mesh.node(0), "xsite_transaction_units"), 0);
    let seen = shipped(&mesh, |seen| seen.iter().filter(|(k, _, _)| k.starts_with(b"big-")).count() == 4);
    let largest = seen.iter().map(|(k, _, e)| encode(e).len() + k.len()).max().unwrap();
    assert!(largest <= 4096, "no message passes max_entry_bytes: {largest}");
    assert!(seen.iter().all(|(_, _, e)| e.op.name() == "put"));
    // A small one still goes as a unit.
    transaction(&mesh, 1).await;
    assert_eq!(support::engine_metric(mesh.node(0), "xsite_transaction_units"), 1);
    mesh.shutdown().await;
}

/// Hash writes need format 4 at every site: refused, saying which site, while
/// site-b's heartbeats say it reads less (an older build, during a rolling
/// upgrade); taken while site-b is not heard from (a site down must not stop them
/// at the others), and once it advertises format 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_writes_wait_for_every_site_to_read_format_4() {
    let mesh = site_a_alone().await;
    let mut c = mesh.conn(0).await;
    let n: i64 = c.hset("h", "before", "1").await.unwrap();
    assert_eq!(n, 1, "site-b not heard from yet: taken");

    heartbeat_of_b(&mesh, false).await;
    wait_reads(&mesh, 2).await;
    let refused: redis::RedisResult<i64> = c.hset("h", "during", "2").await;
    let text = refused.unwrap_err().to_string();
    assert!(text.contains("hashes need every site to read log format 4, and site-b (reads 2) does not yet"), "{text}");
    let refused: redis::RedisResult<i64> = c.hincr("h", "n", 1).await;
    assert!(refused.is_err(), "HINCRBY is refused too");
    let fields: Vec<String> = c.hkeys("h").await.unwrap();
    assert_eq!(fields, ["before"], "a refused write changed nothing; reads go on");

    heartbeat_of_b(&mesh, true).await;
    wait_reads(&mesh, xsite_schemas::FORMAT_VERSION).await;
    let n: i64 = c.hset("h", "after", "3").await.unwrap();
    assert_eq!(n, 1);
    mesh.shutdown().await;
}
