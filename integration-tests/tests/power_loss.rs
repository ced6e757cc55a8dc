#![cfg(feature = "powerloss")]
//! Power loss under load, with the node's data directory on LazyFS: the node is
//! stopped, every byte it wrote and did not fsync is dropped, it is killed and
//! restarted on the same directory ([`NodeProc::power_cut`]). A `kill -9` keeps the page
//! cache, so only this proves what the durability modes promise.
//!
//! - `always_loses_no_acknowledged_write`: one node, durability `always`, several
//!   clients writing a mixed load (SET of unique keys, overwrites, DEL, INCRBY on
//!   counters, SET with PX/EX, PERSIST); the power is cut in the middle of it. After the
//!   restart every key holds the effect of all its acknowledged operations (at most the
//!   one in flight at the cut on top), counters included, and a TTL whose expiry has not
//!   passed is still there.
//! - `everysec_loses_only_the_last_second`: the same with `everysec`: every operation
//!   missing after the restart was acknowledged less than 1 s + the longest WAL fsync
//!   (`xsite_wal_fsync_max_ms`) + 200 ms before the cut.
//! - `receiving_site_keeps_every_applied_write_after_power_loss` (also needs the `tansu`
//!   feature): two sites on real tansu brokers; B (`everysec`, data on LazyFS) loses
//!   power while it applies A's writes, A keeps writing, B restarts and must end with
//!   every write of A. The cut is timed by watching what reaches B's disk: right after
//!   its sled files (the consumer offsets) were synced later than its WAL, so a node
//!   that saves offsets ahead of its durable WAL fails every time.
//!
//! How a key is checked. Each key is written by one client only, and a client sends one
//! command at a time, so a key's operations have one order; every value is unique (it
//! records the client and its sequence number). Whatever survives a power cut is a
//! prefix of the WAL, hence, per key, the state after some prefix of its operations:
//! the check finds the longest prefix whose state matches what the node answers (GET
//! and PTTL, with the expiry windows the clocks allow), and the acknowledged
//! operations after that prefix are the ones lost. A key that matches no prefix at all
//! fails the test in every mode.
//!
//! The tests run one at a time (each mounts a file system and starts processes) and
//! skip, saying why, where LazyFS cannot run; with `XSITE_REQUIRE_POWERLOSS=1` (set by
//! `scripts/test-all.sh` where LazyFS is installed) they fail instead.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xsite_integration_tests::lazyfs::LazyFs;
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
/// How long a client may take to notice that its node is gone.
const CLIENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-client counters (INCRBY targets).
const COUNTERS_PER_CLIENT: usize = 3;
/// TTLs of SET PX (ms) and SET EX (s): a few seconds, so that keys expire after the
/// cut, some while the node is down, most after the check.
const TTL_PX_MS: std::ops::Range<u64> = 1000..9000;
const TTL_EX_S: std::ops::RangeInclusive<u64> = 2..=9;
/// PERSIST only a key whose expiry is at least this far away, so that whether it still
/// had its TTL when the node applied the PERSIST is never in doubt.
const PERSIST_MARGIN: Duration = Duration::from_millis(1500);
/// Clock allowance when comparing an expiry the node computed (wall clock, ms) with the
/// test's monotonic clock.
const CLOCK_SLACK: Duration = Duration::from_millis(250);
/// In `everysec`, the WAL is fsynced at most this often…
const EVERYSEC_INTERVAL_MS: u64 = 1000;
/// …plus this much slack for scheduling on a loaded machine.
const EVERYSEC_SLACK_MS: u64 = 200;
/// Used as the longest fsync when the node does not export `xsite_wal_fsync_max_ms`.
const FSYNC_MAX_FALLBACK_MS: u64 = 1000;
/// Keys read per pipeline after the restart.
const READ_CHUNK: usize = 500;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole test (an async mutex: each test has its own runtime, and a failed
/// test must not poison the others).
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

// ---------------------------------------------------------------------------------
// The load: clients and what they record.

#[derive(Debug, Clone, Copy)]
enum Ttl {
    Px(u64),
    Ex(u64),
}

impl Ttl {
    fn duration(self) -> Duration {
        match self {
            Ttl::Px(ms) => Duration::from_millis(ms),
            Ttl::Ex(s) => Duration::from_secs(s),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Set { value: String, ttl: Option<Ttl> },
    Del,
    Persist,
    IncrBy(i64),
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Set { ttl: None, .. } => "SET",
            Op::Set { ttl: Some(Ttl::Px(_)), .. } => "SET PX",
            Op::Set { ttl: Some(Ttl::Ex(_)), .. } => "SET EX",
            Op::Del => "DEL",
            Op::Persist => "PERSIST",
            Op::IncrBy(_) => "INCRBY",
        }
    }

    fn command(&self, key: &str) -> redis::Cmd {
        match self {
            Op::Set { value, ttl } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value);
                match ttl {
                    Some(Ttl::Px(ms)) => cmd.arg("PX").arg(*ms),
                    Some(Ttl::Ex(s)) => cmd.arg("EX").arg(*s),
                    None => &mut cmd,
                };
                cmd
            }
            Op::Del => redis::cmd("DEL").arg(key).clone(),
            Op::Persist => redis::cmd("PERSIST").arg(key).clone(),
            Op::IncrBy(delta) => redis::cmd("INCRBY").arg(key).arg(*delta).clone(),
        }
    }
}

/// One command a client sent, and how it ended.
#[derive(Debug, Clone)]
struct Sent {
    client: usize,
    seq: u64,
    key: String,
    op: Op,
    sent: Instant,
    /// When the reply (or the error) arrived.
    done: Instant,
    /// The reply, when the node acknowledged it.
    reply: Result<redis::Value, String>,
}

impl Sent {
    fn acked(&self) -> bool {
        self.reply.is_ok()
    }

    fn describe(&self) -> String {
        format!("client {} #{} {} {}", self.client, self.seq, self.op.kind(), self.key)
    }
}

/// Which commands a client sends.
#[derive(Debug, Clone, Copy)]
enum Mix {
    /// SET, overwrites, DEL, INCRBY, SET PX/EX, PERSIST.
    WithTtl,
    /// SET, overwrites, DEL, INCRBY.
    #[cfg_attr(not(feature = "tansu"), allow(dead_code))]
    NoTtl,
}

/// A client's view of its own keys, to choose the next command.
struct ClientState {
    id: usize,
    rng: StdRng,
    seq: u64,
    /// Plain keys it created (present or not now).
    keys: Vec<String>,
    /// Keys last written with a TTL, and the earliest instant that TTL can end.
    ttl_keys: Vec<String>,
    expiry_lo: BTreeMap<String, Instant>,
}

impl ClientState {
    fn new_key(&mut self) -> String {
        let key = format!("pl:c{}:k{:06}", self.id, self.keys.len());
        self.keys.push(key.clone());
        key
    }

    fn existing_key(&mut self) -> String {
        if self.keys.is_empty() {
            return self.new_key();
        }
        let i = self.rng.gen_range(0..self.keys.len());
        self.keys[i].clone()
    }

    fn ttl(&mut self) -> Ttl {
        if self.rng.gen_bool(0.5) {
            Ttl::Px(self.rng.gen_range(TTL_PX_MS))
        } else {
            Ttl::Ex(self.rng.gen_range(TTL_EX_S))
        }
    }

    fn value(&mut self) -> String {
        format!("c{}-s{}-{:08x}", self.id, self.seq, self.rng.gen::<u32>())
    }

    /// A key that has a TTL ending well after now (PERSIST will certainly remove it).
    fn persist_target(&mut self) -> Option<String> {
        if self.ttl_keys.is_empty() {
            return None;
        }
        let key = self.ttl_keys[self.rng.gen_range(0..self.ttl_keys.len())].clone();
        let far = self.expiry_lo.get(&key).is_some_and(|lo| *lo > Instant::now() + PERSIST_MARGIN);
        far.then_some(key)
    }

    fn next(&mut self, mix: Mix) -> (String, Op) {
        self.seq += 1;
        let roll = self.rng.gen_range(0..100);
        match (mix, roll) {
            (Mix::WithTtl, 0..=29) | (Mix::NoTtl, 0..=44) => {
                (self.new_key(), Op::Set { value: self.value(), ttl: None })
            }
            (Mix::WithTtl, 30..=44) | (Mix::NoTtl, 45..=64) => {
                (self.existing_key(), Op::Set { value: self.value(), ttl: None })
            }
            (Mix::WithTtl, 45..=52) | (Mix::NoTtl, 65..=74) => (self.existing_key(), Op::Del),
            (Mix::WithTtl, 53..=74) | (Mix::NoTtl, _) => {
                let counter = format!("pl:c{}:ctr{}", self.id, self.rng.gen_range(0..COUNTERS_PER_CLIENT));
                (counter, Op::IncrBy(self.rng.gen_range(1..=9)))
            }
            (Mix::WithTtl, 75..=84) => {
                let ttl = Some(self.ttl());
                (self.new_key(), Op::Set { value: self.value(), ttl })
            }
            (Mix::WithTtl, 85..=91) => {
                let ttl = Some(self.ttl());
                (self.existing_key(), Op::Set { value: self.value(), ttl })
            }
            (Mix::WithTtl, _) => match self.persist_target() {
                Some(key) => (key, Op::Persist),
                None => (self.new_key(), Op::Set { value: self.value(), ttl: None }),
            },
        }
    }

    /// Remember what an acknowledged command did to the key's TTL.
    fn acknowledged(&mut self, key: &str, op: &Op, sent: Instant) {
        match op {
            Op::Set { ttl: Some(ttl), .. } => {
                if self.expiry_lo.insert(key.to_string(), sent + ttl.duration()).is_none() {
                    self.ttl_keys.push(key.to_string());
                }
            }
            Op::Set { ttl: None, .. } | Op::Del | Op::Persist => {
                if self.expiry_lo.remove(key).is_some() {
                    self.ttl_keys.retain(|k| k != key);
                }
            }
            Op::IncrBy(_) => {}
        }
    }
}

/// Client tasks, each sending one command at a time on its own keys until it is
/// stopped or its first error (the node is gone).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sent>>>,
}

impl Load {
    async fn start(node: &NodeProc, clients: usize, mix: Mix, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for id in 0..clients {
            let conn = node.conn().await;
            let state = ClientState {
                id,
                rng: StdRng::seed_from_u64(seed.wrapping_add(id as u64)),
                seq: 0,
                keys: Vec::new(),
                ttl_keys: Vec::new(),
                expiry_lo: BTreeMap::new(),
            };
            tasks.push(tokio::spawn(run_client(conn, state, mix, stop.clone(), acked.clone())));
        }
        Load { stop, acked, started: Instant::now(), tasks }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Wait (bounded) until the clients have had `count` commands acknowledged in all.
    async fn wait_acked(&self, count: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked() < count {
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {count} acknowledged commands; the clients have {}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the clients (those still running) and collect what they sent.
    async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            let sent = tokio::time::timeout(CLIENT_STOP_TIMEOUT, task)
                .await
                .unwrap_or_else(|_| panic!("waited {CLIENT_STOP_TIMEOUT:?} for a client to stop"))
                .expect("client task");
            all.extend(sent);
        }
        all
    }
}

async fn run_client(
    mut conn: MultiplexedConnection,
    mut state: ClientState,
    mix: Mix,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<Sent> {
    let mut log = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (key, op) = state.next(mix);
        let sent = Instant::now();
        let reply: redis::RedisResult<redis::Value> = op.command(&key).query_async(&mut conn).await;
        let done = Instant::now();
        let failed = reply.is_err();
        if !failed {
            acked.fetch_add(1, Ordering::Relaxed);
            state.acknowledged(&key, &op, sent);
        }
        log.push(Sent {
            client: state.id,
            seq: state.seq,
            key,
            op,
            sent,
            done,
            reply: reply.map_err(|e| e.to_string()),
        });
        if failed {
            break;
        }
    }
    log
}

// ---------------------------------------------------------------------------------
// The model: what a key may hold after a prefix of its operations.

/// When the node may have put a key's expiry: its TTL counted from some instant
/// between the command's send and its reply.
type Expiry = (Instant, Instant);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Absent,
    Value { value: String, expiry: Option<Expiry> },
    Counter(i64),
}

impl State {
    /// The state after `s`, had the node applied it.
    fn after(&self, s: &Sent) -> State {
        match &s.op {
            Op::Set { value, ttl } => State::Value {
                value: value.clone(),
                expiry: ttl.map(|t| (s.sent + t.duration(), s.done + t.duration())),
            },
            Op::Del => State::Absent,
            // Acknowledged with 0: the key had no TTL (or was gone); nothing changed.
            Op::Persist if matches!(s.reply, Ok(redis::Value::Int(0))) => self.clone(),
            Op::Persist => match self {
                State::Value { value, .. } => State::Value { value: value.clone(), expiry: None },
                other => other.clone(),
            },
            Op::IncrBy(delta) => match self {
                State::Counter(n) => State::Counter(n + delta),
                _ => State::Counter(*delta),
            },
        }
    }

    fn show(&self) -> String {
        match self {
            State::Absent => "absent".into(),
            State::Counter(n) => format!("counter {n}"),
            State::Value { value, expiry: None } => format!("{value:?} without TTL"),
            State::Value { value, expiry: Some(_) } => format!("{value:?} with a TTL"),
        }
    }
}

/// What the node answered for a key after the restart.
#[derive(Debug, Clone)]
struct Observed {
    value: Option<String>,
    /// PTTL: -2 no such key, -1 no TTL, else ms left.
    pttl: i64,
    /// The read happened between these instants.
    from: Instant,
    to: Instant,
}

impl Observed {
    fn show(&self) -> String {
        match (&self.value, self.pttl) {
            (None, _) => "absent".into(),
            (Some(v), -1) => format!("{v:?} without TTL"),
            (Some(v), p) => format!("{v:?} with PTTL {p}"),
        }
    }
}

/// Whether the node's answer is what `state` looks like when read at `obs`'s time.
fn matches(state: &State, obs: &Observed) -> bool {
    match (state, &obs.value) {
        (State::Absent, None) => true,
        (State::Counter(n), Some(v)) => *v == n.to_string(),
        (State::Value { expiry: Some((lo, _)), .. }, None) => *lo <= obs.to + CLOCK_SLACK, // expired
        (State::Value { value, expiry }, Some(v)) if v == value => match (expiry, obs.pttl) {
            (None, pttl) => pttl == -1,
            (Some((lo, _)), -2) => *lo <= obs.to + CLOCK_SLACK, // expired between GET and PTTL
            (Some(_), -1) => false,                             // the TTL was lost
            (Some((lo, hi)), left) => {
                // The node read its expiry at some instant of [from, to], `left` before it.
                let left = Duration::from_millis(left.max(0) as u64);
                obs.to + left + CLOCK_SLACK >= *lo && obs.from + left <= *hi + CLOCK_SLACK
            }
        },
        _ => false,
    }
}

/// An acknowledged command whose effect is missing after the restart.
#[derive(Debug, Clone)]
struct Lost {
    what: String,
    /// Its acknowledgement, this long before the cut (zero if after the SIGSTOP).
    age: Duration,
}

/// "what, acknowledged … before the cut" of the first `max` lost commands.
fn show_lost<'a>(lost: impl IntoIterator<Item = &'a Lost>, max: usize) -> String {
    let shown: Vec<String> =
        lost.into_iter().take(max).map(|l| format!("  {}, acknowledged {:?} before the cut", l.what, l.age)).collect();
    shown.join("\n")
}

/// What the check found over every key.
#[derive(Debug, Default)]
struct Verdict {
    keys: usize,
    counters: usize,
    /// Keys that matched their full history, in-flight command included / not.
    in_flight_applied: usize,
    in_flight_absent: usize,
    /// Keys read with a TTL that matched a TTL in the model; keys found expired.
    ttls_checked: usize,
    expired: usize,
    lost: Vec<Lost>,
    /// Keys whose answer matches no prefix of their history.
    impossible: Vec<String>,
}

/// Every command of every client, by key, in the order the key's client sent them.
fn by_key(sent: &[Sent]) -> BTreeMap<&str, Vec<&Sent>> {
    let mut keys: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in sent {
        keys.entry(s.key.as_str()).or_default().push(s);
    }
    for history in keys.values_mut() {
        history.sort_by_key(|s| (s.client, s.seq));
        assert!(history.iter().all(|s| s.client == history[0].client), "a key written by two clients");
    }
    keys
}

/// Compare each key's answer with the states after each prefix of its history.
fn check(sent: &[Sent], observed: &BTreeMap<String, Observed>, cut: Instant) -> Verdict {
    let mut verdict = Verdict::default();
    for (key, history) in by_key(sent) {
        let obs = &observed[key];
        let mut states = vec![State::Absent];
        for s in &history {
            let next = states.last().expect("at least the empty prefix").after(s);
            states.push(next);
        }
        verdict.keys += 1;
        if matches!(states.last(), Some(State::Counter(_))) {
            verdict.counters += 1;
        }
        let Some(prefix) = (0..states.len()).rev().find(|&k| matches(&states[k], obs)) else {
            let tried: Vec<String> = states.iter().rev().take(3).map(State::show).collect();
            verdict.impossible.push(format!(
                "{key}: the node has {}, which no prefix of its {} commands gives (last states: {})",
                obs.show(),
                history.len(),
                tried.join(", ")
            ));
            continue;
        };
        if let State::Value { expiry: Some(_), .. } = &states[prefix] {
            if obs.value.is_some() && obs.pttl >= 0 {
                verdict.ttls_checked += 1;
            } else {
                verdict.expired += 1;
            }
        }
        let last = history.last().expect("a key has a command");
        if !last.acked() {
            if prefix == history.len() {
                verdict.in_flight_applied += 1;
            } else {
                verdict.in_flight_absent += 1;
            }
        }
        for s in history[prefix..].iter().filter(|s| s.acked()) {
            verdict.lost.push(Lost {
                what: format!("{} (node has {})", s.describe(), obs.show()),
                age: cut.saturating_duration_since(s.done),
            });
        }
    }
    verdict.lost.sort_by_key(|l| std::cmp::Reverse(l.age));
    verdict
}

/// GET and PTTL of every key the clients touched, after the restart.
async fn observe(node: &NodeProc, sent: &[Sent]) -> BTreeMap<String, Observed> {
    let keys: Vec<String> = by_key(sent).keys().map(|k| k.to_string()).collect();
    let mut conn = node.conn().await;
    let mut observed = BTreeMap::new();
    for chunk in keys.chunks(READ_CHUNK) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        }
        let from = Instant::now();
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await.unwrap_or_else(|e| {
            node.fail(format!("reading {} keys after the restart: {e}", chunk.len()));
        });
        let to = Instant::now();
        for (key, pair) in chunk.iter().zip(replies.chunks(2)) {
            let value: Option<String> = redis::from_redis_value(&pair[0])
                .unwrap_or_else(|e| node.fail(format!("GET {key} answered {:?}: {e}", pair[0])));
            let pttl: i64 = redis::from_redis_value(&pair[1])
                .unwrap_or_else(|e| node.fail(format!("PTTL {key} answered {:?}: {e}", pair[1])));
            observed.insert(key.clone(), Observed { value, pttl, from, to });
        }
    }
    observed
}

/// "SET 1234, DEL 56, …" of the acknowledged commands.
fn acked_by_kind(sent: &[Sent]) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.acked()) {
        *kinds.entry(s.op.kind()).or_default() += 1;
    }
    kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// Commands that failed before the power was cut: the load itself went wrong.
fn assert_no_error_before(sent: &[Sent], cut: Instant) {
    let early: Vec<String> = sent
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
    let load = Load::start(node, CLIENTS, Mix::WithTtl, seed).await;
    load.wait_acked(ACKED_BEFORE_CUT_MIN, LOAD_PROGRESS_TIMEOUT).await;
    tokio::time::sleep(cut_after.saturating_sub(load.started.elapsed())).await;
    let fsync_max_ms = prometheus_value(&node.metrics_text().await, "xsite_wal_fsync_max_ms");
    let cut = node.power_cut(fs).await;
    let load_ms = cut.duration_since(load.started).as_millis();
    let sent = load.stop().await;
    assert_no_error_before(&sent, cut);
    node.restart().await;
    CutRun { sent, cut, fsync_max_ms, load_ms }
}

fn seed() -> u64 {
    let seed = std::env::var("XSITE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (XSITE_TEST_SEED={seed} repeats the commands, not their timing)");
    seed
}

fn summary(name: &str, run: &CutRun, v: &Verdict) -> String {
    let acked = run.sent.iter().filter(|s| s.acked()).count();
    format!(
        "{name}: {acked} commands acknowledged in {} ms before the cut ({}); {} keys checked ({} counters, {} live TTLs, {} expired); in flight at the cut: {} applied, {} not",
        run.load_ms,
        acked_by_kind(&run.sent),
        v.keys,
        v.counters,
        v.ttls_checked,
        v.expired,
        v.in_flight_applied,
        v.in_flight_absent
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_loses_no_acknowledged_write() {
    let _serial = one_at_a_time().await;
    if LazyFs::skip("always_loses_no_acknowledged_write") {
        return;
    }
    let started = Instant::now();
    let seed = seed();
    let fs = LazyFs::mount().await;
    let spec = NodeSpec::new(SITE_A).durability("always").data_dir(fs.path().join("data"));
    let mut node = NodeProc::start(spec).await;
    let run = cut_under_load(&mut node, &fs, seed).await;
    let observed = observe(&node, &run.sent).await;
    let v = check(&run.sent, &observed, run.cut);
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
        show_lost(&v.lost, 10)
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
    let seed = seed();
    let fs = LazyFs::mount().await;
    let spec = NodeSpec::new(SITE_A).durability("everysec").data_dir(fs.path().join("data"));
    let mut node = NodeProc::start(spec).await;
    let run = cut_under_load(&mut node, &fs, seed).await;
    let observed = observe(&node, &run.sent).await;
    let v = check(&run.sent, &observed, run.cut);
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
        show_lost(too_old.iter().copied(), 10)
    );
    eprintln!("{report}; {figures}; {:?}", started.elapsed());
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
        let seed = seed();
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
        let load = Load::start(&a, WRITERS, Mix::NoTtl, seed).await;
        let load_started = load.started;
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            let applied = b.remote_applied(SITE_A).await;
            if applied >= APPLIED_BEFORE_CUT_MIN && load.started.elapsed() >= LOAD_BEFORE_CUT {
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
        let sent = load.stop().await;
        let failed: Vec<String> =
            sent.iter().filter_map(|s| s.reply.as_ref().err().map(|e| format!("{}: {e}", s.describe()))).collect();
        assert!(failed.is_empty(), "{SITE_A} refused writes: {:?}", &failed[..failed.len().min(5)]);

        // A holds every write (its disk lost nothing).
        let v = check(&sent, &observe(&a, &sent).await, Instant::now());
        assert!(
            v.impossible.is_empty() && v.lost.is_empty(),
            "{SITE_A} (not power-cut) does not hold its acknowledged writes: {:?}\n{}",
            &v.impossible[..v.impossible.len().min(10)],
            show_lost(&v.lost, 10)
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
            acked_by_kind(&sent),
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
