#![cfg(feature = "powerloss")]
//! Power loss under load, with the node's data directory on LazyFS: the node is
//! stopped, every byte it wrote and did not fsync is dropped, it is killed and
//! restarted on the same directory ([`NodeProc::power_cut`]). A `kill -9` keeps the page
//! cache, so only this proves what the durability modes promise.
//!
//! - `always_loses_no_acknowledged_write`: one node, durability `always`, several
//!   clients writing a mixed load (SET of unique keys, overwrites, DEL, INCRBY and DEL
//!   of counters, SET with PX/EX, PERSIST, PEXPIRE); the power is cut in the middle of it. After the
//!   restart every key holds the effect of all its acknowledged operations (at most the
//!   one in flight at the cut on top), counters included, and a TTL whose expiry has not
//!   passed is still there.
//! - `everysec_loses_only_the_last_second`: the same with `everysec`: every operation
//!   missing after the restart was acknowledged less than 1 s + the longest WAL fsync
//!   (`xsite_wal_fsync_max_ms`) + 200 ms before the cut.
//! - `always_keeps_every_acknowledged_collection_write`: one node, `always`, one client
//!   sending a seeded sequence of hash, set, sorted set and list writes (HSET HDEL
//!   HINCRBY HINCRBYFLOAT SADD SREM SMOVE ZADD ZINCRBY ZREM ZPOPMIN RPUSH LPUSH LPOP
//!   RPOP LINSERT LMOVE EXPIRE DEL) one at a time; the power is cut in the middle.
//!   After the restart every key holds what a node that replays the acknowledged
//!   commands holds, its expiry included (with or without the one in flight).
//! - `receiving_site_keeps_every_applied_write_after_power_loss` (also needs the `tansu`
//!   feature): two sites on real tansu brokers; B (`everysec`, data on LazyFS) loses
//!   power while it applies A's writes, A keeps writing, B restarts and must end with
//!   every write of A. The cut is timed by watching what reaches B's disk: right after
//!   its sled files (the consumer offsets) were synced later than its WAL, so a node
//!   that saves offsets ahead of its durable WAL fails every time.
//!
//! How a key is checked ([`xsite_integration_tests::load`]). Each key is written by one
//! client only, and a client sends one command at a time, so a key's operations have
//! one order; every value is unique (it records the client and its sequence number).
//! Whatever survives a power cut is a prefix of the WAL, hence, per key, the state
//! after some prefix of its operations: the check finds the longest prefix whose state
//! matches what the node answers (GET and PEXPIRETIME, with the expiry windows the
//! clocks allow), and the acknowledged operations after that prefix are the ones lost.
//! A key that matches no prefix at all fails the test in every mode.
//!
//! The tests run one at a time (each mounts a file system and starts processes) and
//! skip, saying why, where LazyFS cannot run; with `XSITE_REQUIRE_POWERLOSS=1` (set by
//! `scripts/test-all.sh` where LazyFS is installed) they fail instead.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use xsite_integration_tests::lazyfs::LazyFs;
use xsite_integration_tests::load::{
    self, acked_by_kind, check_observed, keys_of, show_lost, Clients, Load, LoadConfig, Lost, Mix, Sent, Verdict,
};
use xsite_integration_tests::procs::{prometheus_value, NodeProc, NodeSpec};

const SITE_A: &str = "site-a";
/// Concurrent clients of the single-node tests.
const CLIENTS: usize = 4;
/// When the power is cut, after the load started (chosen at random in this range).
const CUT_AFTER_MS: std::ops::RangeInclusive<u64> = 2000..=3000;
/// Operations the clients must have had acknowledged before the cut.
const ACKED_BEFORE_CUT_MIN: u64 = 300;
/// How long the clients may take to reach `ACKED_BEFORE_CUT_MIN`.
const LOAD_PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// In `everysec`, the WAL is fsynced at most this often…
const EVERYSEC_INTERVAL_MS: u64 = 1000;
/// …plus this much slack for scheduling on a loaded machine.
const EVERYSEC_SLACK_MS: u64 = 200;
/// Used as the longest fsync when the node does not export `xsite_wal_fsync_max_ms`.
const FSYNC_MAX_FALLBACK_MS: u64 = 1000;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole test (an async mutex: each test has its own runtime, and a failed
/// test must not poison the others).
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The clients' load: every kind of command but shared counters (an acknowledged
/// increment may be lost in `everysec`); TTLs of a few seconds, so that keys expire
/// after the cut, some while the node is down, most after the check; a client stops at
/// its first error (the cut).
fn load_config(mix: Mix) -> LoadConfig {
    LoadConfig { mix, ttl_px_ms: 1000..9000, ttl_ex_s: 2..=9, ..LoadConfig::default() }
}

/// GET and PEXPIRETIME of every key the clients touched, after the restart.
async fn observe(node: &NodeProc, sent: &[Sent]) -> BTreeMap<String, load::Observed> {
    let mut conn = node.conn().await;
    load::observe_keys(&mut conn, &keys_of(sent))
        .await
        .unwrap_or_else(|e| node.fail(format!("reading the clients' keys after the restart: {e}")))
}

/// Commands that failed before the power was cut: the load itself went wrong.
fn assert_no_error_before(clients: &Clients, cut: Instant) {
    let early: Vec<String> = clients
        .sent()
        .iter()
        .filter(|s| s.done < cut)
        .filter_map(|s| s.reply.as_ref().err().map(|e| format!("{}: {e}", s.describe())))
        .collect();
    assert!(early.is_empty(), "commands failed before the power cut: {:?}", &early[..early.len().min(5)]);
}

// ---------------------------------------------------------------------------------
// Single node: power cut under load.

/// The outcome of a power cut under the mixed load.
struct CutRun {
    sent: Vec<Sent>,
    cut: Instant,
    /// `xsite_wal_fsync_max_ms` just before the cut, when the node exports it.
    fsync_max_ms: Option<f64>,
    load_ms: u128,
}

/// One node on LazyFS, `CLIENTS` clients, the power cut at a random moment of the
/// load, the node restarted on the same directory.
async fn cut_under_load(node: &mut NodeProc, fs: &LazyFs, seed: u64) -> CutRun {
    let cut_after = Duration::from_millis(StdRng::seed_from_u64(seed).gen_range(CUT_AFTER_MS));
    let load: Load = Clients::new("pl", CLIENTS, load_config(Mix::LOCAL), seed).start(node.resp_port());
    load.wait_acked(ACKED_BEFORE_CUT_MIN, LOAD_PROGRESS_TIMEOUT).await;
    tokio::time::sleep(cut_after.saturating_sub(load.started().elapsed())).await;
    let fsync_max_ms = prometheus_value(&node.metrics_text().await, "xsite_wal_fsync_max_ms");
    let cut = node.power_cut(fs).await;
    let load_ms = cut.duration_since(load.started()).as_millis();
    let clients = load.stop().await;
    assert_no_error_before(&clients, cut);
    node.restart().await;
    CutRun { sent: clients.sent().to_vec(), cut, fsync_max_ms, load_ms }
}

fn summary(name: &str, run: &CutRun, v: &Verdict) -> String {
    let acked = run.sent.iter().filter(|s| s.acked()).count();
    format!(
        "{name}: {acked} commands acknowledged in {} ms before the cut ({}); {}",
        run.load_ms,
        acked_by_kind(&run.sent),
        v.summary()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_loses_no_acknowledged_write() {
    let _serial = one_at_a_time().await;
    if LazyFs::skip("always_loses_no_acknowledged_write") {
        return;
    }
    let started = Instant::now();
    let seed = load::seed();
    let fs = LazyFs::mount().await;
    let spec = NodeSpec::new(SITE_A).durability("always").data_dir(fs.path().join("data"));
    let mut node = NodeProc::start(spec).await;
    let run = cut_under_load(&mut node, &fs, seed).await;
    let observed = observe(&node, &run.sent).await;
    let v = check_observed(&run.sent, &observed, run.cut);
    let report = summary("always_loses_no_acknowledged_write", &run, &v);
    assert!(
        v.impossible.is_empty(),
        "{report}\nkeys in a state no history gives: {:#?}",
        &v.impossible[..v.impossible.len().min(10)]
    );
    assert!(
        v.lost.is_empty(),
        "{report}\n{} acknowledged commands lost with durability always; oldest first:\n{}",
        v.lost.len(),
        show_lost(&v.lost, 10, "the cut")
    );
    eprintln!("{report}; nothing lost; {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everysec_loses_only_the_last_second() {
    let _serial = one_at_a_time().await;
    if LazyFs::skip("everysec_loses_only_the_last_second") {
        return;
    }
    let started = Instant::now();
    let seed = load::seed();
    let fs = LazyFs::mount().await;
    let spec = NodeSpec::new(SITE_A).durability("everysec").data_dir(fs.path().join("data"));
    let mut node = NodeProc::start(spec).await;
    let run = cut_under_load(&mut node, &fs, seed).await;
    let observed = observe(&node, &run.sent).await;
    let v = check_observed(&run.sent, &observed, run.cut);
    let report = summary("everysec_loses_only_the_last_second", &run, &v);
    let (fsync_ms, fsync_source) = match run.fsync_max_ms {
        Some(ms) => (ms.ceil() as u64, "xsite_wal_fsync_max_ms".to_string()),
        None => (
            FSYNC_MAX_FALLBACK_MS,
            format!("the node exports no xsite_wal_fsync_max_ms: {FSYNC_MAX_FALLBACK_MS} ms assumed"),
        ),
    };
    let bound = Duration::from_millis(EVERYSEC_INTERVAL_MS + fsync_ms + EVERYSEC_SLACK_MS);
    let oldest = v.lost.first().map(|l| l.age);
    let figures = format!(
        "{} lost, oldest acknowledged {} before the cut; allowed {bound:?} = {EVERYSEC_INTERVAL_MS} ms + longest fsync {fsync_ms} ms ({fsync_source}) + {EVERYSEC_SLACK_MS} ms",
        v.lost.len(),
        oldest.map_or("-".to_string(), |a| format!("{a:?}"))
    );
    assert!(
        v.impossible.is_empty(),
        "{report}\nkeys in a state no history gives: {:#?}",
        &v.impossible[..v.impossible.len().min(10)]
    );
    let too_old: Vec<&Lost> = v.lost.iter().filter(|l| l.age >= bound).collect();
    assert!(
        too_old.is_empty(),
        "{report}\n{figures}\n{} lost commands are older than that; oldest first:\n{}",
        too_old.len(),
        show_lost(too_old.iter().copied(), 10, "the cut")
    );
    eprintln!("{report}; {figures}; {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------
// Collections: hashes, sets and sorted sets under a power cut.

/// Keys of the collection test: two of each type, each only ever written as it.
const COLLECTION_KEYS: [&str; 8] = ["h0", "h1", "s0", "s1", "z0", "z1", "l0", "l1"];
/// Commands the collection client sends at most.
const COLLECTION_OPS_MAX: usize = 100_000;
/// How long one command may take before the client takes the node for gone.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A random write to one of [`COLLECTION_KEYS`], as its type takes it.
fn collection_command(rng: &mut StdRng) -> Vec<String> {
    let n = rng.gen_range(0..2);
    let f = format!("f{}", rng.gen_range(0..4));
    let m = format!("m{}", rng.gen_range(0..6));
    let v = rng.gen_range(0..1000).to_string();
    let words: Vec<String> = match rng.gen_range(0..19) {
        13 | 14 => vec![["RPUSH", "LPUSH"][rng.gen_range(0..2)].into(), format!("l{n}"), v],
        15 => vec![["LPOP", "RPOP"][rng.gen_range(0..2)].into(), format!("l{n}")],
        16 => vec!["LINSERT".into(), format!("l{n}"), "AFTER".into(), rng.gen_range(0..1000).to_string(), v],
        17 => vec!["LMOVE".into(), format!("l{n}"), format!("l{}", 1 - n), "LEFT".into(), "RIGHT".into()],
        18 => vec!["EXPIRE".into(), COLLECTION_KEYS[rng.gen_range(0..8)].into(), "100000".into()],
        0 | 1 => vec!["HSET".into(), format!("h{n}"), f, v],
        2 => vec!["HDEL".into(), format!("h{n}"), f],
        3 => vec!["HINCRBY".into(), format!("h{n}"), format!("n{}", rng.gen_range(0..2)), "3".into()],
        4 => vec!["HINCRBYFLOAT".into(), format!("h{n}"), "x".into(), "0.5".into()],
        5 | 6 => vec!["SADD".into(), format!("s{n}"), m],
        7 => vec!["SREM".into(), format!("s{n}"), m],
        8 => vec!["SMOVE".into(), format!("s{n}"), format!("s{}", 1 - n), m],
        9 => vec!["ZADD".into(), format!("z{n}"), v, m],
        10 => vec!["ZINCRBY".into(), format!("z{n}"), "1.5".into(), m],
        11 => vec!["ZREM".into(), format!("z{n}"), m],
        _ => match rng.gen_range(0..3) {
            0 => vec!["ZPOPMIN".into(), format!("z{n}")],
            _ => vec!["DEL".into(), COLLECTION_KEYS[rng.gen_range(0..8)].into()],
        },
    };
    words
}

/// Sends `words`; `None` when the node did not answer (the cut).
async fn send(conn: &mut redis::aio::MultiplexedConnection, words: &[String]) -> Option<redis::Value> {
    let mut cmd = redis::cmd(&words[0]);
    cmd.arg(&words[1..]);
    match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<redis::Value>(conn)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) if e.kind() == redis::ErrorKind::IoError || e.is_connection_dropped() || e.is_io_error() => None,
        Ok(Err(e)) => panic!("{words:?}: {e}"),
        Err(_) => None,
    }
}

/// What each of [`COLLECTION_KEYS`] holds, as text.
async fn collection_contents(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for key in COLLECTION_KEYS {
        let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.expect("TYPE");
        let shown = match kind.as_str() {
            "hash" => {
                let v: BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(key).query_async(conn).await.expect("HGETALL");
                format!("{v:?}")
            }
            "set" => {
                let v: std::collections::BTreeSet<String> =
                    redis::cmd("SMEMBERS").arg(key).query_async(conn).await.expect("SMEMBERS");
                format!("{v:?}")
            }
            "zset" => {
                let v: Vec<(String, String)> = redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(conn)
                    .await
                    .expect("ZRANGE");
                format!("{v:?}")
            }
            "list" => {
                let v: Vec<String> =
                    redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query_async(conn).await.expect("LRANGE");
                format!("{v:?}")
            }
            other => other.to_string(),
        };
        let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(conn).await.expect("PTTL");
        let shown = if pttl > 0 { format!("{shown} with a ttl") } else { shown };
        out.insert(key.to_string(), shown);
    }
    out
}

/// What a fresh node holds after `commands`.
async fn replayed(commands: &[Vec<String>]) -> BTreeMap<String, String> {
    let mut node = NodeProc::start(NodeSpec::new("site-r").durability("always")).await;
    let mut conn = node.conn().await;
    for words in commands {
        send(&mut conn, words).await.unwrap_or_else(|| node.fail(format!("replaying {words:?}")));
    }
    let contents = collection_contents(&mut conn).await;
    node.sigterm().await;
    contents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_keeps_every_acknowledged_collection_write() {
    let _serial = one_at_a_time().await;
    if LazyFs::skip("always_keeps_every_acknowledged_collection_write") {
        return;
    }
    let started = Instant::now();
    let seed = load::seed();
    let fs = LazyFs::mount().await;
    let spec = NodeSpec::new(SITE_A).durability("always").data_dir(fs.path().join("data"));
    let mut node = NodeProc::start(spec).await;
    let mut conn = node.conn().await;
    let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked_count.clone();
    let writer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut acked = Vec::new();
        for _ in 0..COLLECTION_OPS_MAX {
            let words = collection_command(&mut rng);
            if send(&mut conn, &words).await.is_none() {
                return (acked, Some(words));
            }
            acked.push(words);
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (acked, None)
    });
    let deadline = Instant::now() + LOAD_PROGRESS_TIMEOUT;
    while acked_count.load(std::sync::atomic::Ordering::Relaxed) < ACKED_BEFORE_CUT_MIN {
        assert!(Instant::now() < deadline, "the collection client made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(StdRng::seed_from_u64(seed).gen_range(500..1500))).await;
    node.power_cut(&fs).await;
    let (acked, in_flight) =
        tokio::time::timeout(COMMAND_TIMEOUT * 2, writer).await.expect("the client stops").unwrap();
    let in_flight = in_flight.unwrap_or_else(|| node.fail("the client never met the cut"));
    node.restart().await;
    let got = collection_contents(&mut node.conn().await).await;
    let without = replayed(&acked).await;
    let report =
        format!("seed {seed}: {} acknowledged collection writes before the cut, then {in_flight:?}", acked.len());
    if got != without {
        let with = replayed(&[acked.clone(), vec![in_flight.clone()]].concat()).await;
        assert_eq!(got, with, "{report}: after the restart the keys hold neither the acknowledged writes nor those and the one in flight; without it: {without:?}");
    }
    eprintln!("always_keeps_every_acknowledged_collection_write: {report}; nothing lost; {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------
// Two sites: the receiving site loses power while it applies the other's writes.

#[cfg(feature = "tansu")]
mod two_sites {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::SystemTime;
    use xsite_integration_tests::procs::{site_topic, wait_converged, Tansu};

    const SITE_B: &str = "site-b";
    const PARTITIONS: i32 = 4;
    /// Clients writing to A.
    const WRITERS: usize = 2;
    /// Entries of A that B must have applied before its power is cut…
    const APPLIED_BEFORE_CUT_MIN: u64 = 1500;
    /// …and how long the load must have run by then (several fsyncs and offset flushes).
    const LOAD_BEFORE_CUT: Duration = Duration::from_millis(2500);
    /// How long B may take to apply that many.
    const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
    /// Commands A acknowledges while B is down.
    const ACKED_WHILE_B_DOWN: u64 = 300;
    /// How long to wait for B's offsets to reach the disk after a WAL fsync before
    /// cutting the power anyway (a node that keeps its offsets elsewhere never does).
    const OFFSETS_AHEAD_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long B may take, restarted, to consume A's topic to its end.
    const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long the sites may take to converge once B has consumed everything.
    const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);

    /// Bytes of every regular file under `dir` (recursively) with their modification
    /// times; empty when `dir` does not exist.
    fn files_under(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
        let mut files = BTreeMap::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if meta.is_file() {
                    files.insert(entry.path(), (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
        files
    }

    /// Total bytes of the WAL segments under `data`.
    fn wal_bytes(data: &Path) -> u64 {
        files_under(&data.join("wal")).values().map(|(len, _)| len).sum()
    }

    /// Wait for the moment the bug needs, watching what reaches B's disk (LazyFS's
    /// backing directory only changes on a sync): a WAL fsync, then a sync of the sled
    /// files (`data/state`: the consumer offsets) with no WAL fsync since. Entries B
    /// applied between the two are then in the saved offsets but not in the durable
    /// WAL. Returns how long ago that WAL fsync was, or None if no sled sync came after
    /// a WAL fsync within `OFFSETS_AHEAD_TIMEOUT` (the power is cut anyway).
    async fn wait_offsets_synced_after_wal(fs: &LazyFs) -> Option<Duration> {
        let data = fs.backing_dir().join("data");
        let deadline = Instant::now() + OFFSETS_AHEAD_TIMEOUT;
        let (mut wal, mut state) = (wal_bytes(&data), files_under(&data.join("state")));
        let mut wal_synced_at: Option<Instant> = None;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (w, st) = (wal_bytes(&data), files_under(&data.join("state")));
            if w != wal {
                (wal, state, wal_synced_at) = (w, st, Some(Instant::now()));
            } else if st != state {
                if let Some(at) = wal_synced_at {
                    return Some(at.elapsed());
                }
                state = st;
            }
        }
        None
    }

    /// Bytes of B's WAL written but not synced: what LazyFS shows minus what its
    /// backing directory holds.
    fn unsynced_wal_bytes(fs: &LazyFs) -> u64 {
        wal_bytes(&fs.path().join("data")).saturating_sub(wal_bytes(&fs.backing_dir().join("data")))
    }

    fn spec(site: &str, own: &Tansu, remote: &str, remote_broker: &Tansu) -> NodeSpec {
        NodeSpec::new(site)
            .kafka(&own.bootstrap())
            .partitions(PARTITIONS)
            .remote(remote, Some(&remote_broker.bootstrap()))
    }

    /// B's consumer offsets of `topic`, by partition.
    async fn offsets_of(node: &NodeProc, topic: &str) -> BTreeMap<i64, i64> {
        node.consumer_offsets().await.into_iter().filter(|((t, _), _)| t == topic).map(|((_, p), o)| (p, o)).collect()
    }

    /// Wait until `node` has applied every record of `topic` below `ends` (the offsets
    /// keep moving past them: caught-up shippers send heartbeats).
    async fn wait_consumed_past(node: &NodeProc, topic: &str, ends: &[i64]) -> BTreeMap<i64, i64> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let offsets = offsets_of(node, topic).await;
            let past = ends
                .iter()
                .enumerate()
                .all(|(p, end)| *end == 0 || offsets.get(&(p as i64)).is_some_and(|o| *o >= end - 1));
            if past {
                return offsets;
            }
            if Instant::now() > deadline {
                node.fail(format!("waited {CATCH_UP_TIMEOUT:?} for offsets of {topic} to reach {ends:?}: {offsets:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receiving_site_keeps_every_applied_write_after_power_loss() {
        let _serial = one_at_a_time().await;
        if LazyFs::skip("receiving_site_keeps_every_applied_write_after_power_loss") {
            return;
        }
        let started = Instant::now();
        let seed = load::seed();
        // Declared in this order so they drop in the reverse one: nodes, brokers, mount.
        let fs = LazyFs::mount().await;
        let (broker_a, broker_b) = (Tansu::start().await, Tansu::start().await);
        broker_a.create_site_topics(SITE_A, PARTITIONS).await;
        broker_b.create_site_topics(SITE_B, PARTITIONS).await;
        let a = NodeProc::start(spec(SITE_A, &broker_a, SITE_B, &broker_b).durability("always")).await;
        let b_spec = spec(SITE_B, &broker_b, SITE_A, &broker_a).durability("everysec").data_dir(fs.path().join("data"));
        let mut b = NodeProc::start(b_spec).await;
        let topic = site_topic(SITE_A);

        // A writes continuously; B applies as it goes, so at any instant it has applied
        // entries its WAL has not fsynced yet.
        let load = Clients::new("a", WRITERS, load_config(Mix::NO_TTL), seed).start(a.resp_port());
        let load_started = load.started();
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            let applied = b.remote_applied(SITE_A).await;
            if applied >= APPLIED_BEFORE_CUT_MIN && load.started().elapsed() >= LOAD_BEFORE_CUT {
                break;
            }
            if Instant::now() > deadline {
                b.fail(format!(
                    "waited {APPLY_TIMEOUT:?} for {APPLIED_BEFORE_CUT_MIN} applied entries of {SITE_A}; {applied} so far"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let since_wal_fsync = wait_offsets_synced_after_wal(&fs).await;
        let applied_before = b.remote_applied(SITE_A).await;
        let offsets_before = offsets_of(&b, &topic).await;
        let unsynced = unsynced_wal_bytes(&fs);
        let cut = b.power_cut(&fs).await;
        let timing = match since_wal_fsync {
            Some(ago) => {
                format!("{} ms after B's last WAL fsync, just after a sync of its sled files", ago.as_millis())
            }
            None => format!("no sync of B's sled files followed a WAL fsync within {OFFSETS_AHEAD_TIMEOUT:?}"),
        };
        let acked_at_cut = load.acked();

        // A keeps writing while B is down, then the writers stop.
        load.wait_acked(acked_at_cut + ACKED_WHILE_B_DOWN, LOAD_PROGRESS_TIMEOUT).await;
        let clients = load.stop().await;
        let sent = clients.sent();
        let failed: Vec<String> =
            sent.iter().filter_map(|s| s.reply.as_ref().err().map(|e| format!("{}: {e}", s.describe()))).collect();
        assert!(failed.is_empty(), "{SITE_A} refused writes: {:?}", &failed[..failed.len().min(5)]);
        assert!(clients.stops().is_empty(), "{SITE_A}'s clients stopped: {:?}", clients.stops());

        // A holds every write (its disk lost nothing).
        let v = check_observed(sent, &observe(&a, sent).await, Instant::now());
        assert!(
            v.impossible.is_empty() && v.lost.is_empty(),
            "{SITE_A} (not power-cut) does not hold its acknowledged writes: {:?}\n{}",
            &v.impossible[..v.impossible.len().min(10)],
            show_lost(&v.lost, 10, "the cut")
        );

        b.restart().await;
        let ends = broker_a.end_offsets(&topic).await;
        let offsets_after = wait_consumed_past(&b, &topic, &ends).await;
        let applied_after = b.remote_applied(SITE_A).await;
        let produced_since_cut: i64 = ends
            .iter()
            .enumerate()
            .map(|(p, end)| end - 1 - offsets_before.get(&(p as i64)).copied().unwrap_or(-1))
            .sum();
        let figures = format!(
            "{} commands acknowledged at {SITE_A} ({}); {SITE_B} had applied {applied_before} entries when its power was cut {} ms into the load ({timing}; {unsynced} WAL bytes unsynced), offsets then {offsets_before:?}; restarted, it applied {applied_after} entries ({produced_since_cut} records past the offsets seen before the cut) and reached offsets {offsets_after:?} (topic ends {ends:?})",
            sent.len(),
            acked_by_kind(sent),
            cut.duration_since(load_started).as_millis()
        );
        eprintln!("receiving_site_keeps_every_applied_write_after_power_loss: {figures}");
        let contents = wait_converged(&[&a, &b], "default", CONVERGE_TIMEOUT).await;
        eprintln!(
            "receiving_site_keeps_every_applied_write_after_power_loss: converged on {} keys; {SITE_B} holds every write of {SITE_A}; {:?}",
            contents.len(),
            started.elapsed()
        );
    }
}
