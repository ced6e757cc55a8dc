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
//!   and restarted under load; A keeps answering every command meanwhile, and every
//!   acknowledged write reaches B.
//! - `writer_node_kill9_ships_every_acknowledged_write` (durability `always`) and
//!   `writer_node_kill9_everysec_ships_every_acknowledged_write` (`everysec`: a
//!   `kill -9` keeps the page cache, so nothing may be lost either): node A is
//!   SIGKILLed under load and restarted, its clients go on with their keys; the
//!   shipper resumes from its checkpoint and every acknowledged write reaches B.
//! - `node_kill9_resumes_consumer_from_saved_offsets`: node B is SIGKILLed while it
//!   consumes and takes writes; restarted, it resumes from its sled offsets (not from
//!   the beginning), skips nothing, and after a clean SIGTERM restart re-applies
//!   nothing.
//! - `remote_taken_offline_catches_up_when_brought_online`: the admin API's
//!   offline/online stops and resumes consuming a site.
//! - `concurrent_writes_to_the_same_keys_converge`: both sites write the same keys
//!   (SET, DEL, APPEND, PEXPIRE, SET PX, INCRBY) at once; digests and full contents
//!   end identical, and counters hold the sum of every acknowledged increment.
//!
//! The fault tests run the mixed load of [`xsite_integration_tests::load`] at both
//! sites (clients owning their keys: SET, overwrites, DEL, INCRBY, SET PX/EX, PERSIST,
//! PEXPIRE with TTLs of a few seconds, some of which end while a node is down; and
//! counters every client increments) and end with the same check: the sites converge
//! (digests, then values and absolute expiry times), and at every site the keys of
//! each client hold the effect of all its acknowledged commands and each shared
//! counter lies between the sum of acknowledged increments and that of attempted ones.
//!
//! The tests run one at a time: each starts four processes, and a shared 2-core
//! machine running several at once measures contention, not xsite.

use rand::Rng;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use xsite_integration_tests::load::{self, acked_by_kind, Clients, LoadConfig, Sent};
use xsite_integration_tests::procs::{site_topic, wait_converged, NodeProc, NodeSpec, Snapshot, Tansu};

const SITE_A: &str = "site-a";
const SITE_B: &str = "site-b";
const PARTITIONS: i32 = 4;
/// How long a single replicated write may take to show up at the other site.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the sites may take to converge after writes stop.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long clients of a killed node may take to meet the kill (each stops at its
/// first failed command).
const CLIENT_NOTICE_TIMEOUT: Duration = Duration::from_secs(15);

/// Writes a test makes to reach every partition of a topic before it gives up.
const MARKS_MAX: u32 = 4096;

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

fn spec(site: &str, own: &Tansu, remote: &str, remote_broker: &Tansu, durability: &str) -> NodeSpec {
    NodeSpec::new(site)
        .durability(durability)
        .kafka(&own.bootstrap())
        .partitions(PARTITIONS)
        .remote(remote, Some(&remote_broker.bootstrap()))
}

/// Two sites whose nodes run with `durability` (`always`, `everysec`).
async fn two_sites(durability: &str) -> Sites {
    let (broker_a, broker_b) = (Tansu::start().await, Tansu::start().await);
    broker_a.create_site_topics(SITE_A, PARTITIONS).await;
    broker_b.create_site_topics(SITE_B, PARTITIONS).await;
    let a = NodeProc::start(spec(SITE_A, &broker_a, SITE_B, &broker_b, durability)).await;
    let b = NodeProc::start(spec(SITE_B, &broker_b, SITE_A, &broker_a, durability)).await;
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
    let s = two_sites("always").await;
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
    assert_eq!(contents.value(b"visits"), Some(b"85".as_slice()));
    assert!(!contents.contains_key(b"from-a"));
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

/// The load of the fault tests: [`LoadConfig::default`] (every kind of command,
/// shared counters, TTLs of a few seconds), with `clients` clients named after the site.
fn clients(site: &str, clients: usize, seed: u64) -> Clients {
    Clients::new(site.trim_start_matches("site-"), clients, LoadConfig::default(), seed)
}

/// Wait until the sites converge (digests, values and expiry times), then check the
/// loads' histories against every site: keys written by one client only lost nothing
/// acknowledged, shared counters lie between their acknowledged and attempted sums.
/// Returns the first site's contents and a summary.
async fn check_converged(nodes: &[&NodeProc], loads: &[&Clients]) -> (Snapshot, String) {
    let contents = wait_converged(nodes, "default", CONVERGE_TIMEOUT).await;
    let sent: Vec<Sent> = loads.iter().flat_map(|c| c.sent().iter().cloned()).collect();
    let mut summary = String::new();
    for node in nodes {
        let verdict = load::check(&sent, &node.snapshot("default").await, Instant::now());
        if let Err(problems) = verdict.nothing_lost(node.site()) {
            node.fail(format!("{problems}\nacknowledged: {}", acked_by_kind(&sent)));
        }
        summary = verdict.summary();
    }
    (contents, format!("{} ({}); {summary}", acked_by_kind(&sent), attempts_summary(&sent)))
}

fn attempts_summary(sent: &[Sent]) -> String {
    let failed = sent.iter().filter(|s| !s.acked()).count();
    format!("{} attempts, {failed} with an unknown outcome", sent.len())
}

/// No client stopped on an error.
fn assert_no_stops(loads: &[&Clients]) {
    for c in loads {
        assert!(c.stops().is_empty(), "clients of load {} stopped: {:?}", c.name(), c.stops());
    }
}

/// Acknowledged commands that changed something (one WAL entry each).
fn acked_changes(c: &Clients) -> i64 {
    c.sent().iter().filter(|s| s.acked_change()).count() as i64
}

/// "n commands, p50 …, p99 …, max …" of some acknowledged commands.
fn latencies(sent: &[&Sent]) -> String {
    let mut l: Vec<Duration> = sent.iter().map(|s| s.done - s.sent).collect();
    l.sort();
    let at =
        |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
    format!(
        "{} commands, p50 {:?}, p99 {:?}, max {:?}",
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
    let seed = load::seed();
    let mut s = two_sites("always").await;
    let load_a = clients(SITE_A, 2, seed).start(s.a.resp_port());
    let load_b = clients(SITE_B, 1, seed).start(s.b.resp_port());
    tokio::time::sleep(Duration::from_millis(1000)).await;

    s.broker_a.kill();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    s.broker_a.restart().await;
    let up = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (a, b) = (load_a.stop().await, load_b.stop().await);

    assert!(
        a.stops().is_empty() && a.failed().is_empty(),
        "{SITE_A} refused commands while its broker was down: {:?}",
        &a.stops()[..a.stops().len().min(5)]
    );
    assert_no_stops(&[&b]);
    let acked_a: Vec<&Sent> = a.sent().iter().filter(|c| c.acked()).collect();
    let during: Vec<&Sent> = acked_a.iter().copied().filter(|c| c.sent >= down && c.sent < up).collect();
    assert!(during.len() >= 50, "only {} commands acknowledged while the broker was down", during.len());
    let slowest = during.iter().map(|c| c.done - c.sent).max().unwrap_or_default();
    assert!(slowest < Duration::from_secs(2), "a command took {slowest:?} while the broker was down");

    let (_, checked) = check_converged(&[&s.a, &s.b], &[&a, &b]).await;
    assert_no_dead_letters(&s.a).await;
    assert_no_dead_letters(&s.b).await;
    let shipped: i64 = s.broker_a.end_offsets(&site_topic(SITE_A)).await.iter().sum();
    let changes = acked_changes(&a);
    assert!(shipped >= changes, "topic holds {shipped} records for {changes} acknowledged changes");
    let before: Vec<&Sent> = acked_a.iter().copied().filter(|c| c.sent < down).collect();
    let after: Vec<&Sent> = acked_a.iter().copied().filter(|c| c.sent >= up).collect();
    eprintln!(
        "broker_kill9_under_load: {checked}; {changes} changes acknowledged at {SITE_A}, {shipped} records in its topic, {:?}; latency at {SITE_A} before the kill {}, while down {}, after the restart {}",
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
    let seed = load::seed();
    let mut s = two_sites("always").await;
    let topic = site_topic(SITE_A);

    // Phase 1: B applies a first batch, and its offsets reach the end of the topic.
    let (load_a, load_b) =
        (clients(SITE_A, 2, seed).start(s.a.resp_port()), clients(SITE_B, 1, seed).start(s.b.resp_port()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a, b) = (load_a.stop().await, load_b.stop().await);
    assert_no_stops(&[&a, &b]);
    wait_converged(&[&s.a, &s.b], "default", CONVERGE_TIMEOUT).await;
    let ends_before = s.broker_a.end_offsets(&topic).await;
    let offsets_before = wait_offsets_at_end(&s.b, &topic, &ends_before).await;
    // Saved offsets reach the disk at sled's next flush: wait for it, so that the
    // kill below cannot take them back.
    wait_offsets_flushed(&s.b, &topic, &offsets_before).await;

    // Phase 2: B is killed while it consumes (and while its own client writes), A
    // keeps writing, B comes back and its client goes on.
    let (load_a, load_b) = (a.start(s.a.resp_port()), b.start(s.b.resp_port()));
    tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(200..500))).await;
    s.b.kill9();
    let b = load_b.stopped_by_failure(CLIENT_NOTICE_TIMEOUT).await;
    assert!(!b.stops().is_empty(), "{SITE_B}'s client did not notice the kill");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.b.restart().await;
    let load_b = b.start(s.b.resp_port());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a, b) = (load_a.stop().await, load_b.stop().await);
    assert_no_stops(&[&a]);
    assert_eq!(b.stops().len(), 1, "{SITE_B}'s client stopped after the restart: {:?}", b.stops());

    let (_, checked) = check_converged(&[&s.a, &s.b], &[&a, &b]).await;
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
    // Records produced at A after the restart, in every partition; once B's offsets
    // pass them it has read each partition to its end, and had it gone back before
    // its saved offsets it would have applied more than these.
    let ends_restart = s.broker_a.end_offsets(&topic).await;
    let mut conn = s.a.conn().await;
    let mut marks = 0u32;
    let ends_marked = loop {
        let ends = s.broker_a.end_offsets(&topic).await;
        if ends.iter().zip(&ends_restart).all(|(now, then)| now > then) {
            break ends;
        }
        assert!(marks < MARKS_MAX, "{marks} writes at {SITE_A} did not reach every partition of {topic}: {ends:?}");
        for _ in 0..16 {
            set(&mut conn, &format!("resume-mark-{marks}"), "x").await;
            marks += 1;
        }
    };
    wait_offsets_at_end(&s.b, &topic, &ends_marked).await;
    let reapplied = s.b.remote_applied(SITE_A).await;
    let produced: i64 = ends_marked.iter().sum::<i64>() - ends_restart.iter().sum::<i64>();
    assert!(
        reapplied as i64 <= produced,
        "{SITE_B} applied {reapplied} entries after a clean restart, but only {produced} were produced since: it re-applied"
    );
    // Keys of the load expire all along: two digests read a moment apart can differ by
    // a key that expired in between, so read both again until they agree.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (digest_b, digest_a) = (s.b.digest("default").await, s.a.digest("default").await);
        if digest_b == digest_a {
            break;
        }
        assert!(Instant::now() < deadline, "contents survive a clean restart: {digest_b:?} != {digest_a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node_kill9_resumes: {checked}; {produced_since} records produced in phase 2, {applied_after_restart} applied after restart, {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_node_kill9_ships_every_acknowledged_write() {
    writer_node_kill9("writer_node_kill9", "always").await;
}

/// The same with `everysec` at both sites: `kill -9` keeps the page cache, so nothing
/// acknowledged may be lost either (the WAL tail not yet fsynced is read back and
/// shipped after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_node_kill9_everysec_ships_every_acknowledged_write() {
    writer_node_kill9("writer_node_kill9_everysec", "everysec").await;
}

async fn writer_node_kill9(name: &str, durability: &str) {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let seed = load::seed();
    let mut s = two_sites(durability).await;

    // A is killed while clients write to it (and one to B): the commands in flight
    // fail, every one acknowledged before must be in A's WAL and reach B once A is
    // back; A's clients then go on with their keys.
    let load_a = clients(SITE_A, 2, seed).start(s.a.resp_port());
    let load_b = clients(SITE_B, 1, seed).start(s.b.resp_port());
    tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(500..1000))).await;
    s.a.kill9();
    let a = load_a.stopped_by_failure(CLIENT_NOTICE_TIMEOUT).await;
    assert_eq!(a.stops().len(), 2, "the clients did not notice the kill: {:?}", a.stops());
    s.a.restart().await;
    let load_a = a.start(s.a.resp_port());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (a, b) = (load_a.stop().await, load_b.stop().await);
    assert_eq!(a.stops().len(), 2, "{SITE_A}'s clients stopped after the restart: {:?}", a.stops());
    assert_no_stops(&[&b]);

    let (_, checked) = check_converged(&[&s.a, &s.b], &[&a, &b]).await;
    assert_no_dead_letters(&s.a).await;
    assert_no_dead_letters(&s.b).await;
    let shipped: i64 = s.broker_a.end_offsets(&site_topic(SITE_A)).await.iter().sum();
    let changes = acked_changes(&a);
    assert!(shipped >= changes, "{shipped} records in the topic for {changes} acknowledged changes at {SITE_A}");
    eprintln!(
        "{name}: {checked}; {changes} changes acknowledged at {SITE_A}, {shipped} records shipped (heartbeats and resends included), {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_taken_offline_catches_up_when_brought_online() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let s = two_sites("always").await;
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
async fn wait_offsets_flushed(node: &NodeProc, topic: &str, saved: &BTreeMap<i64, i64>) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let flushed = node.flushed_offsets().await;
        if saved.iter().all(|(p, o)| flushed.get(&(topic.to_string(), *p)).is_some_and(|f| f >= o)) {
            return;
        }
        if Instant::now() > deadline {
            node.fail(format!("offsets {saved:?} of {topic} were not flushed: on disk {flushed:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    let seed = load::seed();
    let s = two_sites("always").await;
    let until = Instant::now() + Duration::from_millis(3000);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(contend(s.a.conn().await, SITE_A, until)));
        tasks.push(tokio::spawn(contend(s.b.conn().await, SITE_B, until)));
    }
    // Meanwhile one client per site on its own keys and on the load's shared counters.
    let (load_a, load_b) =
        (clients(SITE_A, 1, seed).start(s.a.resp_port()), clients(SITE_B, 1, seed).start(s.b.resp_port()));
    let mut increments: BTreeMap<String, i64> = BTreeMap::new();
    let mut commands = 0;
    for t in tasks {
        let (task_increments, task_commands) = t.await.expect("client task");
        commands += task_commands;
        for (counter, delta) in task_increments {
            *increments.entry(counter).or_default() += delta;
        }
    }
    let (a, b) = (load_a.stop().await, load_b.stop().await);
    assert_no_stops(&[&a, &b]);

    let (contents, checked) = check_converged(&[&s.a, &s.b], &[&a, &b]).await;
    for (counter, total) in &increments {
        let got = contents.value(counter.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(got, Some(total.to_string()), "{counter}: increments from both sites add up");
    }
    let digest_a = s.a.digest("default").await;
    assert_eq!(digest_a, s.b.digest("default").await);
    assert_no_dead_letters(&s.a).await;
    assert_no_dead_letters(&s.b).await;
    eprintln!(
        "concurrent_writes_converge: {commands} commands on shared keys; load: {checked}; {} live keys, digest {}, {:?}",
        contents.len(),
        digest_a.digest,
        started.elapsed()
    );
}
