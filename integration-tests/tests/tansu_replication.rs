#![cfg(feature = "tansu")]
//! Two sites, each with its own tansu broker and `xsite node` process. Each node
//! publishes to its own broker and consumes the other site's topic directly from the
//! other broker (`[[remote]] bootstrap_servers`), so these prove the whole data path
//! between processes: RESP → WAL → shipper → Kafka → consumer → merge → store.
//!
//! - `writes_replicate_both_ways`: SET, DEL, SET EX/PX, EXPIRE, PERSIST, APPEND,
//!   INCR/INCRBY/DECRBY from both sites (adding up) and binary keys and values travel
//!   both ways.
//! - `broker_kill9_under_load_loses_no_acknowledged_write`: A's broker is SIGKILLed
//!   and restarted under write load; A keeps answering writes meanwhile, and every
//!   acknowledged write reaches B.
//! - `writer_node_kill9_ships_every_acknowledged_write`: node A is SIGKILLed under
//!   write load and restarted; the shipper resumes from its checkpoint and every
//!   acknowledged write reaches B.
//! - `node_kill9_resumes_consumer_from_saved_offsets`: node B is SIGKILLed while it
//!   consumes; restarted, it resumes from its sled offsets (not from the beginning),
//!   skips nothing, and after a clean SIGTERM restart re-applies nothing.
//! - `remote_taken_offline_catches_up_when_brought_online`: the admin API's
//!   offline/online stops and resumes consuming a site.
//! - `concurrent_writes_to_the_same_keys_converge`: both sites write the same keys
//!   (SET, DEL, APPEND, PEXPIRE, SET PX, INCRBY) at once; digests and full contents
//!   end identical, and counters hold the sum of every acknowledged increment.
//!
//! The tests run one at a time: each starts four processes, and a shared 2-core
//! machine running several at once measures contention, not xsite.

use rand::Rng;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xsite_integration_tests::procs::{site_topic, wait_converged, NodeProc, NodeSpec, Tansu};

const SITE_A: &str = "site-a";
const SITE_B: &str = "site-b";
const PARTITIONS: i32 = 4;
/// How long a single replicated write may take to show up at the other site.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the sites may take to converge after writes stop.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole test (an async mutex: each test has its own runtime, and a failed
/// test must not poison the others).
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Two sites; nodes are declared first so they stop before their brokers.
struct Sites {
    a: NodeProc,
    b: NodeProc,
    broker_a: Tansu,
    /// Only kept alive: no test does anything to it directly.
    _broker_b: Tansu,
}

fn spec(site: &str, own: &Tansu, remote: &str, remote_broker: &Tansu) -> NodeSpec {
    NodeSpec::new(site)
        .durability("always")
        .kafka(&own.bootstrap())
        .partitions(PARTITIONS)
        .remote(remote, Some(&remote_broker.bootstrap()))
}

async fn two_sites() -> Sites {
    let (broker_a, broker_b) = (Tansu::start().await, Tansu::start().await);
    broker_a.create_site_topics(SITE_A, PARTITIONS).await;
    broker_b.create_site_topics(SITE_B, PARTITIONS).await;
    let a = NodeProc::start(spec(SITE_A, &broker_a, SITE_B, &broker_b)).await;
    let b = NodeProc::start(spec(SITE_B, &broker_b, SITE_A, &broker_a)).await;
    Sites { a, b, broker_a, _broker_b: broker_b }
}

async fn set(conn: &mut MultiplexedConnection, key: impl redis::ToRedisArgs, value: impl redis::ToRedisArgs) {
    let reply: String = redis::cmd("SET").arg(key).arg(value).query_async(conn).await.expect("SET");
    assert_eq!(reply, "OK");
}

async fn pttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.expect("PTTL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_both_ways() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let s = two_sites().await;
    let (mut ca, mut cb) = (s.a.conn().await, s.b.conn().await);

    // SET both ways, then DEL from the other side.
    set(&mut ca, "from-a", "alpha").await;
    set(&mut cb, "from-b", "beta").await;
    s.b.wait_get(0, b"from-a", Some(b"alpha"), REPLICATION_TIMEOUT).await;
    s.a.wait_get(0, b"from-b", Some(b"beta"), REPLICATION_TIMEOUT).await;
    let deleted: i64 = redis::cmd("DEL").arg("from-a").query_async(&mut cb).await.unwrap();
    assert_eq!(deleted, 1);
    s.a.wait_get(0, b"from-a", None, REPLICATION_TIMEOUT).await;
    set(&mut ca, "overwritten", "1").await;
    s.b.wait_get(0, b"overwritten", Some(b"1"), REPLICATION_TIMEOUT).await;
    set(&mut cb, "overwritten", "2").await;
    s.a.wait_get(0, b"overwritten", Some(b"2"), REPLICATION_TIMEOUT).await;

    // TTLs: a SET with EX travels with its expiry; EXPIRE on a replicated key travels
    // back; a short TTL makes the key vanish at both sites.
    let _: () = redis::cmd("SET").arg("ttl-long").arg("x").arg("EX").arg(100).query_async(&mut ca).await.unwrap();
    s.b.wait_get(0, b"ttl-long", Some(b"x"), REPLICATION_TIMEOUT).await;
    let ttl_b = pttl(&mut cb, "ttl-long").await;
    assert!((1..=100_000).contains(&ttl_b), "PTTL of ttl-long at {SITE_B} is {ttl_b}");
    let set_expiry: i64 = redis::cmd("EXPIRE").arg("from-b").arg(200).query_async(&mut ca).await.unwrap();
    assert_eq!(set_expiry, 1);
    wait_until("EXPIRE of from-b, set at a, reaches b", REPLICATION_TIMEOUT, || {
        let mut cb = cb.clone();
        async move { (1..=200_000).contains(&pttl(&mut cb, "from-b").await) }
    })
    .await;
    let _: () = redis::cmd("SET").arg("ttl-short").arg("y").arg("PX").arg(1500).query_async(&mut cb).await.unwrap();
    s.a.wait_get(0, b"ttl-short", Some(b"y"), REPLICATION_TIMEOUT).await;
    s.a.wait_get(0, b"ttl-short", None, REPLICATION_TIMEOUT).await;
    s.b.wait_get(0, b"ttl-short", None, REPLICATION_TIMEOUT).await;
    let persisted: i64 = redis::cmd("PERSIST").arg("ttl-long").query_async(&mut cb).await.unwrap();
    assert_eq!(persisted, 1);
    wait_until("PERSIST from b reaches a", REPLICATION_TIMEOUT, || {
        let mut ca = ca.clone();
        async move { pttl(&mut ca, "ttl-long").await == -1 }
    })
    .await;

    // Counters: increments at both sites, concurrently, add up.
    let incr_a = tokio::spawn({
        let mut ca = ca.clone();
        async move {
            for _ in 0..40 {
                let _: i64 = redis::cmd("INCR").arg("visits").query_async(&mut ca).await.unwrap();
            }
        }
    });
    let incr_b = tokio::spawn({
        let mut cb = cb.clone();
        async move {
            for _ in 0..25 {
                let _: i64 = redis::cmd("INCRBY").arg("visits").arg(2).query_async(&mut cb).await.unwrap();
            }
            let _: i64 = redis::cmd("DECRBY").arg("visits").arg(5).query_async(&mut cb).await.unwrap();
        }
    });
    incr_a.await.unwrap();
    incr_b.await.unwrap();
    s.a.wait_get(0, b"visits", Some(b"85"), REPLICATION_TIMEOUT).await;
    s.b.wait_get(0, b"visits", Some(b"85"), REPLICATION_TIMEOUT).await;

    // Binary keys and values: every byte value, CR LF and NUL included.
    let all_bytes: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    let key_a: &[u8] = b"bin\x00\xff\r\nkey-a";
    let key_b: &[u8] = b"\r\n\x00\x01bin-b\xfe";
    set(&mut ca, key_a, &all_bytes).await;
    set(&mut cb, key_b, b"\x00\r\n\xff".as_slice()).await;
    s.b.wait_get(0, key_a, Some(&all_bytes), REPLICATION_TIMEOUT).await;
    s.a.wait_get(0, key_b, Some(b"\x00\r\n\xff"), REPLICATION_TIMEOUT).await;
    let appended: i64 = redis::cmd("APPEND").arg(key_b).arg(b"\x00tail".as_slice()).query_async(&mut ca).await.unwrap();
    assert_eq!(appended, 9);
    s.b.wait_get(0, key_b, Some(b"\x00\r\n\xff\x00tail"), REPLICATION_TIMEOUT).await;

    let contents = wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    assert_eq!(contents.get(b"visits".as_slice()).map(Vec::as_slice), Some(b"85".as_slice()));
    assert!(!contents.contains_key(b"from-a".as_slice()));
    assert_no_dead_letters(&s.a).await;
    assert_no_dead_letters(&s.b).await;
    eprintln!("writes_replicate_both_ways: {:?}", started.elapsed());
}

/// Poll an async condition until it holds; panic with `what` after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "waited {timeout:?} for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One acknowledged write of a load task.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    sent: Instant,
    latency: Duration,
}

/// Client tasks writing unique keys (`<prefix><task>:<n>`) one at a time until stopped
/// or until their first error; each remembers every write the node acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<Acked>, Vec<String>)>>,
}

impl Load {
    async fn start(node: &NodeProc, prefix: &str, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for t in 0..tasks {
            let mut conn = node.conn().await;
            let (stop, prefix) = (stop.clone(), format!("{prefix}{t}:"));
            handles.push(tokio::spawn(async move {
                let (mut acked, mut errors) = (Vec::new(), Vec::new());
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("{prefix}{n:07}");
                    let value = format!("{n}-{:016x}", rand::thread_rng().gen::<u64>());
                    let sent = Instant::now();
                    let r: redis::RedisResult<String> =
                        redis::cmd("SET").arg(&key).arg(&value).query_async(&mut conn).await;
                    match r {
                        Ok(_) => acked.push(Acked { key, value, sent, latency: sent.elapsed() }),
                        Err(e) => {
                            errors.push(format!("SET {key}: {e}"));
                            break; // the node is gone (or broken): stop at the first error
                        }
                    }
                }
                (acked, errors)
            }));
        }
        Load { stop, tasks: handles }
    }

    async fn stop(self) -> (Vec<Acked>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut errors) = (Vec::new(), Vec::new());
        for t in self.tasks {
            let (a, e) =
                tokio::time::timeout(Duration::from_secs(30), t).await.expect("load task stops").expect("load task");
            acked.extend(a);
            errors.extend(e);
        }
        (acked, errors)
    }
}

/// Every acknowledged write is in `contents` with its value.
fn assert_all_present(acked: &[Acked], contents: &BTreeMap<Vec<u8>, Vec<u8>>, site: &str) {
    let missing: Vec<&Acked> = acked
        .iter()
        .filter(|w| contents.get(w.key.as_bytes()).map(Vec::as_slice) != Some(w.value.as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are missing or wrong at {site}; first: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// "n writes, p50 …, p99 …, max …" of some acknowledged writes.
fn latencies(writes: &[&Acked]) -> String {
    let mut l: Vec<Duration> = writes.iter().map(|w| w.latency).collect();
    l.sort();
    let at =
        |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
    format!(
        "{} writes, p50 {:?}, p99 {:?}, max {:?}",
        l.len(),
        at(0.5),
        at(0.99),
        l.last().copied().unwrap_or_default()
    )
}

/// Nothing a node consumed was dead-lettered (every entry was applied).
async fn assert_no_dead_letters(node: &NodeProc) {
    let status = node.status().await;
    for r in status["replication"]["remotes"].as_array().into_iter().flatten() {
        if r["dead_lettered"].as_u64() != Some(0) {
            node.fail(format!("entries from {} were dead-lettered: {r}", r["site"]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_kill9_under_load_loses_no_acknowledged_write() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut s = two_sites().await;
    let load = Load::start(&s.a, "load:", 2).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    s.broker_a.kill();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    s.broker_a.restart().await;
    let up = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (acked, errors) = load.stop().await;

    assert!(
        errors.is_empty(),
        "{SITE_A} refused writes while its broker was down: {:?}",
        &errors[..errors.len().min(5)]
    );
    let during: Vec<&Acked> = acked.iter().filter(|w| w.sent >= down && w.sent < up).collect();
    assert!(during.len() >= 50, "only {} writes acknowledged while the broker was down", during.len());
    let slowest = during.iter().map(|w| w.latency).max().unwrap_or_default();
    assert!(slowest < Duration::from_secs(2), "a write took {slowest:?} while the broker was down");

    let contents = wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    assert_all_present(&acked, &contents, SITE_B);
    assert_no_dead_letters(&s.b).await;
    let shipped: i64 = s.broker_a.end_offsets(&site_topic(SITE_A)).await.iter().sum();
    assert!(shipped >= acked.len() as i64, "topic holds {shipped} records for {} acknowledged writes", acked.len());
    let before: Vec<&Acked> = acked.iter().filter(|w| w.sent < down).collect();
    let after: Vec<&Acked> = acked.iter().filter(|w| w.sent >= up).collect();
    eprintln!(
        "broker_kill9_under_load: {} writes acknowledged, {shipped} records in the topic, {:?}; latency before the kill {}, while down {}, after the restart {}",
        acked.len(),
        started.elapsed(),
        latencies(&before),
        latencies(&during),
        latencies(&after)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_kill9_resumes_consumer_from_saved_offsets() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut s = two_sites().await;
    let topic = site_topic(SITE_A);

    // Phase 1: B applies a first batch, and its offsets reach the end of the topic.
    let first = Load::start(&s.a, "before:", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut acked, errors) = first.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
    wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    let ends_before = s.broker_a.end_offsets(&topic).await;
    let offsets_before = wait_offsets_at_end(&s.b, &topic, &ends_before).await;
    // Saved offsets are flushed to disk every 200 ms; leave time for one flush.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Phase 2: B is killed while it consumes, A keeps writing, B comes back.
    let second = Load::start(&s.a, "during:", 2).await;
    tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(200..500))).await;
    s.b.kill9();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.b.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (more, errors) = second.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
    acked.extend(more);

    let contents = wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    assert_all_present(&acked, &contents, SITE_B);
    let ends_after = s.broker_a.end_offsets(&topic).await;
    let offsets_after = wait_offsets_at_end(&s.b, &topic, &ends_after).await;
    for (p, before) in &offsets_before {
        assert!(offsets_after[p] >= *before, "offset of partition {p} moved back: {before} -> {}", offsets_after[p]);
    }

    // Resumed, not restarted from the beginning: the new process applied at most the
    // records produced after the offsets saved before phase 2.
    let applied_after_restart = s.b.remote_applied(SITE_A).await;
    let produced_since: i64 = ends_after.iter().sum::<i64>() - ends_before.iter().sum::<i64>();
    assert!(
        applied_after_restart as i64 <= produced_since,
        "{SITE_B} applied {applied_after_restart} entries after its restart, but only {produced_since} were produced since its saved offsets: it re-read from before them"
    );
    assert_no_dead_letters(&s.b).await;

    // A clean stop saves the offsets: restarted again, B re-applies nothing.
    let status = s.b.sigterm().await;
    assert!(status.success(), "{SITE_B} exited with {status} after SIGTERM\n{}", s.b.log_tail());
    s.b.restart().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let reapplied = s.b.remote_applied(SITE_A).await;
    assert_eq!(reapplied, 0, "{SITE_B} re-applied {reapplied} entries after a clean restart");
    assert_eq!(s.b.digest("default").await, s.a.digest("default").await, "contents survive a clean restart");
    eprintln!(
        "node_kill9_resumes: {} writes, {produced_since} produced in phase 2, {applied_after_restart} applied after restart, {:?}",
        acked.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_node_kill9_ships_every_acknowledged_write() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut s = two_sites().await;

    // A is killed while clients write to it: the writes in flight fail, every one
    // acknowledged before must be in A's WAL and reach B once A is back.
    let load = Load::start(&s.a, "first:", 2).await;
    tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(300..700))).await;
    s.a.kill9();
    let (mut acked, errors) = load.stop().await;
    assert!(!errors.is_empty(), "the clients did not notice the kill");
    s.a.restart().await;
    let load = Load::start(&s.a, "second:", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (more, errors) = load.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
    acked.extend(more);

    let contents = wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    assert_all_present(&acked, &contents, "both sites");
    assert_no_dead_letters(&s.b).await;
    let shipped: i64 = s.broker_a.end_offsets(&site_topic(SITE_A)).await.iter().sum();
    let local_writes = contents.len() as i64; // every key was written once, at A
    assert!(shipped >= local_writes, "{shipped} records in the topic for {local_writes} writes");
    eprintln!(
        "writer_node_kill9: {} writes acknowledged, {local_writes} in the store, {shipped} records shipped ({} sent again after the restart), {:?}",
        acked.len(),
        shipped - local_writes,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_taken_offline_catches_up_when_brought_online() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let s = two_sites().await;
    let reply = s.b.admin_post(&format!("/sites/{SITE_A}/offline")).await;
    assert_eq!(reply["online"], false, "{reply}");
    let mut ca = s.a.conn().await;
    for i in 0..200 {
        set(&mut ca, format!("held:{i}"), i).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(s.b.digest("default").await.keys, 0, "{SITE_B} applied entries of {SITE_A} while it was offline");
    let reply = s.b.admin_post(&format!("/sites/{SITE_A}/online")).await;
    assert_eq!(reply["online"], true, "{reply}");
    let contents = wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    assert_eq!(contents.len(), 200);
    eprintln!("remote_offline_online: {:?}", started.elapsed());
}

/// Wait until `node`'s saved offsets of `topic` are at (or past: heartbeats keep
/// coming once a second) the last record of every partition that was non-empty when
/// `ends` was read; returns them by partition.
async fn wait_offsets_at_end(node: &NodeProc, topic: &str, ends: &[i64]) -> BTreeMap<i64, i64> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let offsets: BTreeMap<i64, i64> = node
            .consumer_offsets()
            .await
            .into_iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), o)| (p, o))
            .collect();
        let at_end = ends
            .iter()
            .enumerate()
            .all(|(p, end)| *end == 0 || offsets.get(&(p as i64)).is_some_and(|o| *o >= end - 1));
        if at_end {
            return offsets;
        }
        if Instant::now() > deadline {
            node.fail(format!("offsets of {topic} did not reach the end {ends:?}: {offsets:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one site's client does to the shared keys, and the increments it had
/// acknowledged per counter.
async fn contend(mut conn: MultiplexedConnection, site: &'static str, until: Instant) -> (BTreeMap<String, i64>, u64) {
    let mut increments: BTreeMap<String, i64> = BTreeMap::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let (op, k) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..100), rng.gen_range(0..20))
        };
        let key = format!("shared:{k}");
        let value = format!("{site}-{n}");
        let r: redis::RedisResult<redis::Value> = match op {
            0..=39 => redis::cmd("SET").arg(&key).arg(&value).query_async(&mut conn).await,
            40..=49 => redis::cmd("DEL").arg(&key).query_async(&mut conn).await,
            50..=59 => redis::cmd("APPEND").arg(&key).arg(&value).query_async(&mut conn).await,
            60..=64 => redis::cmd("PEXPIRE").arg(&key).arg(120_000).query_async(&mut conn).await,
            65..=69 => redis::cmd("SET").arg(&key).arg(&value).arg("PX").arg(400).query_async(&mut conn).await,
            _ => {
                let counter = format!("counter:{}", k % 5);
                let delta = (n % 7) as i64 + 1;
                let r = redis::cmd("INCRBY").arg(&counter).arg(delta).query_async(&mut conn).await;
                if r.is_ok() {
                    *increments.entry(counter).or_default() += delta;
                }
                r
            }
        };
        if let Err(e) = r {
            panic!("{site}: command on {key} failed: {e}");
        }
    }
    (increments, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_the_same_keys_converge() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let s = two_sites().await;
    let until = Instant::now() + Duration::from_millis(3000);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(contend(s.a.conn().await, SITE_A, until)));
        tasks.push(tokio::spawn(contend(s.b.conn().await, SITE_B, until)));
    }
    let mut increments: BTreeMap<String, i64> = BTreeMap::new();
    let mut commands = 0;
    for t in tasks {
        let (task_increments, task_commands) = t.await.expect("client task");
        commands += task_commands;
        for (counter, delta) in task_increments {
            *increments.entry(counter).or_default() += delta;
        }
    }

    let contents = wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    for (counter, total) in &increments {
        let got = contents.get(counter.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(got, Some(total.to_string()), "{counter}: increments from both sites add up");
    }
    let digest_a = s.a.digest("default").await;
    assert_eq!(digest_a, s.b.digest("default").await);
    assert_no_dead_letters(&s.a).await;
    assert_no_dead_letters(&s.b).await;
    eprintln!(
        "concurrent_writes_converge: {commands} commands, {} live keys, digest {}, {:?}",
        contents.len(),
        digest_a.digest,
        started.elapsed()
    );
}
