//! A mixed client load, a record of every command it sent, and the checker that says,
//! from what a site holds afterwards, which acknowledged writes are missing.
//!
//! **The load.** [`Clients`] are named (`a0`, `a1`, … for the clients of site a) and
//! each owns its keys: `ld:<client>:k<n>` (plain values) and `ld:<client>:ctr<n>` (its
//! counters). A client sends one command at a time, chosen by a [`Mix`]: SET of a new
//! key, overwrite, DEL, INCRBY (and DEL) of its counters, SET PX/EX of a new or an
//! existing key, PERSIST, PEXPIRE, and INCRBY of the shared counters `ld:shared:ctr<n>`
//! that every client of every site increments. Every value is unique (it names the
//! client and the command's sequence number). [`Clients::start`] runs them against a
//! RESP port until [`Load::stop`]; they come back with their history, and can be
//! started again (after a restart, at another site's port, …): a key's history goes on.
//!
//! **What is recorded.** Every attempt that reached the node ([`Sent`]): the command,
//! when it was sent and answered (monotonic and wall clock), and the reply or the
//! error. An attempt whose reply was lost may or may not have been applied; one that
//! never got a connection was not sent and is not recorded. On an error a client
//! either stops ([`OnError::Stop`]: a kill test, whose clients then go on after the
//! restart) or sends the same command again ([`OnError::Retry`], within a budget).
//!
//! **The check** ([`check`]). A key written by one client has one order of commands;
//! the states it may hold after each prefix of them are computed (a command with an
//! unknown outcome may have been applied or not: both), and the longest prefix whose
//! state matches what the site shows (value, and absolute expiry from `PEXPIRETIME`,
//! within the window the clocks allow; a key whose expiry may have passed may be gone)
//! is taken. The acknowledged commands after it are *lost*; a key matching no prefix
//! at all is *impossible*. Shared counters must lie between the sum of acknowledged
//! increments and the sum of attempted ones. With a full snapshot of the cache
//! ([`crate::contents::Snapshot`]), a key of the load's namespace that no client wrote
//! is *unexpected*. After a `kill -9` (the page cache survives) or a partition nothing
//! may be lost, whatever the durability mode; after a power cut, what `everysec` may
//! lose is bounded by the caller from the ages of the lost commands. The model and
//! the check are in `load/check.rs`.

use crate::contents::wall_ms;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod check;
pub use check::*;

/// Every key of the load starts with this.
pub const KEY_PREFIX: &str = "ld:";
/// Keys of the counters every client increments.
pub const SHARED_PREFIX: &str = "ld:shared:";
/// Longest a client waits for a connection, and for one reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to stop once asked to.
pub const CLIENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of each kind of command a client sends (relative weights).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub set_new: u32,
    pub overwrite: u32,
    pub del: u32,
    pub incr: u32,
    pub counter_del: u32,
    pub set_ttl_new: u32,
    pub set_ttl_existing: u32,
    pub persist: u32,
    pub expire: u32,
    pub shared_incr: u32,
}

impl Mix {
    /// Every kind, shared counters included.
    pub const FULL: Mix = Mix {
        set_new: 24,
        overwrite: 14,
        del: 8,
        incr: 14,
        counter_del: 2,
        set_ttl_new: 10,
        set_ttl_existing: 6,
        persist: 5,
        expire: 5,
        shared_incr: 12,
    };
    /// Every kind but the shared counters (one node, or a power cut: an acknowledged
    /// shared increment may be lost there).
    pub const LOCAL: Mix = Mix { shared_incr: 0, ..Mix::FULL };
    /// SET, overwrites, DEL and INCRBY only.
    pub const NO_TTL: Mix = Mix {
        set_new: 45,
        overwrite: 20,
        del: 10,
        incr: 25,
        counter_del: 0,
        set_ttl_new: 0,
        set_ttl_existing: 0,
        persist: 0,
        expire: 0,
        shared_incr: 0,
    };
}

/// What a client does when a command fails.
#[derive(Debug, Clone, Copy)]
pub enum OnError {
    /// Stop (the node is gone); a later [`Clients::start`] goes on.
    Stop,
    /// Send the same command again after `backoff`, until it is acknowledged; give up
    /// (and stop) once `budget` has passed since its first attempt.
    Retry { budget: Duration, backoff: Duration },
}

/// How the clients of a load behave.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub mix: Mix,
    /// TTL of SET PX and PEXPIRE, in ms.
    pub ttl_px_ms: Range<u64>,
    /// TTL of SET EX, in s.
    pub ttl_ex_s: RangeInclusive<u64>,
    /// PERSIST only a key whose TTL ends at least this far ahead (so that it still has
    /// it when the node applies the PERSIST).
    pub persist_margin: Duration,
    pub counters_per_client: usize,
    pub shared_counters: usize,
    pub on_error: OnError,
    /// Pause after each acknowledged command.
    pub pause: Duration,
}

impl Default for LoadConfig {
    /// The suites' load: every kind of command; TTLs of 0.3–4 s (SET PX, PEXPIRE) that
    /// end during the test, some while a node is down, and of 1–10 min (SET EX) that
    /// are still running at the end (their absolute expiry compared across sites); stop
    /// at the first error. (Short TTLs ending while the sites are compared make
    /// [`crate::procs::wait_converged`] wait for a moment without an expiry between
    /// two digests, hence not all of them short.)
    fn default() -> Self {
        LoadConfig {
            mix: Mix::FULL,
            ttl_px_ms: 300..4000,
            ttl_ex_s: 60..=600,
            persist_margin: Duration::from_millis(1500),
            counters_per_client: 3,
            shared_counters: 4,
            on_error: OnError::Stop,
            pause: Duration::ZERO,
        }
    }
}

/// `XSITE_TEST_SEED`, else a random seed; printed so a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("XSITE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (XSITE_TEST_SEED={seed} repeats the commands, not their timing)");
    seed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Px(u64),
    Ex(u64),
}

impl Ttl {
    pub fn ms(self) -> u64 {
        match self {
            Ttl::Px(ms) => ms,
            Ttl::Ex(s) => s * 1000,
        }
    }
}

/// A command of the load, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set {
        value: String,
        ttl: Option<Ttl>,
    },
    Del,
    Persist,
    /// PEXPIRE, in ms.
    Expire(u64),
    IncrBy(i64),
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Set { ttl: None, .. } => "SET",
            Op::Set { ttl: Some(Ttl::Px(_)), .. } => "SET PX",
            Op::Set { ttl: Some(Ttl::Ex(_)), .. } => "SET EX",
            Op::Del => "DEL",
            Op::Persist => "PERSIST",
            Op::Expire(_) => "PEXPIRE",
            Op::IncrBy(_) => "INCRBY",
        }
    }

    pub fn command(&self, key: &str) -> redis::Cmd {
        let mut cmd;
        match self {
            Op::Set { value, ttl } => {
                cmd = redis::cmd("SET");
                cmd.arg(key).arg(value);
                match ttl {
                    Some(Ttl::Px(ms)) => cmd.arg("PX").arg(*ms),
                    Some(Ttl::Ex(s)) => cmd.arg("EX").arg(*s),
                    None => &mut cmd,
                };
            }
            Op::Del => {
                cmd = redis::cmd("DEL");
                cmd.arg(key);
            }
            Op::Persist => {
                cmd = redis::cmd("PERSIST");
                cmd.arg(key);
            }
            Op::Expire(ms) => {
                cmd = redis::cmd("PEXPIRE");
                cmd.arg(key).arg(*ms);
            }
            Op::IncrBy(delta) => {
                cmd = redis::cmd("INCRBY");
                cmd.arg(key).arg(*delta);
            }
        }
        cmd
    }

    fn show(&self) -> String {
        match self {
            Op::Set { value, ttl: None } => format!("SET {value}"),
            Op::Set { value, ttl: Some(Ttl::Px(ms)) } => format!("SET {value} PX {ms}"),
            Op::Set { value, ttl: Some(Ttl::Ex(s)) } => format!("SET {value} EX {s}"),
            Op::Del => "DEL".into(),
            Op::Persist => "PERSIST".into(),
            Op::Expire(ms) => format!("PEXPIRE {ms}"),
            Op::IncrBy(d) => format!("INCRBY {d}"),
        }
    }
}

/// One attempt of a command that reached the node, and how it ended.
#[derive(Debug, Clone)]
pub struct Sent {
    pub client: String,
    /// The command's number at its client (attempts of one command share it).
    pub seq: u64,
    /// 0 for the first attempt, then 1, 2, … for retries.
    pub attempt: u32,
    pub key: String,
    pub op: Op,
    pub sent: Instant,
    /// When the reply (or the error) arrived.
    pub done: Instant,
    /// The same two instants on the wall clock (ms since the epoch), which the nodes
    /// compute expiry times with.
    pub sent_ms: u64,
    pub done_ms: u64,
    /// The reply, when the node acknowledged it; else the error (outcome unknown).
    pub reply: Result<redis::Value, String>,
}

impl Sent {
    pub fn acked(&self) -> bool {
        self.reply.is_ok()
    }

    pub fn is_shared(&self) -> bool {
        self.key.starts_with(SHARED_PREFIX)
    }

    /// Whether it was acknowledged as changing the key (so the node logged an entry).
    pub fn acked_change(&self) -> bool {
        match (&self.op, &self.reply) {
            (Op::Set { .. } | Op::IncrBy(_), Ok(_)) => true,
            (Op::Del | Op::Persist | Op::Expire(_), Ok(redis::Value::Int(n))) => *n > 0,
            _ => false,
        }
    }

    pub fn describe(&self) -> String {
        let retry = if self.attempt > 0 { format!(" (attempt {})", self.attempt + 1) } else { String::new() };
        format!("client {} #{}{retry} {} {}", self.client, self.seq, self.op.kind(), self.key)
    }

    /// The command in full with its outcome and timing, for failure messages.
    fn show(&self, now: Instant) -> String {
        let outcome = match &self.reply {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("ERROR (outcome unknown) {e}"),
        };
        format!(
            "#{}.{} {} -> {outcome}; sent at {} ms (wall), answered after {} ms, {:?} ago",
            self.seq,
            self.attempt,
            self.op.show(),
            self.sent_ms,
            self.done_ms.saturating_sub(self.sent_ms),
            now.saturating_duration_since(self.done)
        )
    }
}

/// One client's own keys and what it knows of them, to choose its next command.
#[derive(Debug)]
struct ClientState {
    name: String,
    rng: StdRng,
    seq: u64,
    /// Plain keys it created (present or not now).
    keys: Vec<String>,
    /// Keys last acknowledged with a TTL, and the earliest instant that TTL can end.
    ttl_keys: Vec<String>,
    expiry_lo: BTreeMap<String, Instant>,
}

#[derive(Clone, Copy)]
enum Kind {
    SetNew,
    Overwrite,
    Del,
    Incr,
    CounterDel,
    SetTtlNew,
    SetTtlExisting,
    Persist,
    Expire,
    SharedIncr,
}

impl ClientState {
    fn new_key(&mut self) -> String {
        let key = format!("{KEY_PREFIX}{}:k{:06}", self.name, self.keys.len());
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

    fn counter(&mut self, config: &LoadConfig) -> String {
        let n = self.rng.gen_range(0..config.counters_per_client.max(1));
        format!("{KEY_PREFIX}{}:ctr{n}", self.name)
    }

    fn ttl(&mut self, config: &LoadConfig) -> Ttl {
        if self.rng.gen_bool(0.5) {
            Ttl::Px(self.rng.gen_range(config.ttl_px_ms.clone()))
        } else {
            Ttl::Ex(self.rng.gen_range(config.ttl_ex_s.clone()))
        }
    }

    fn value(&mut self) -> String {
        format!("{}-s{}-{:08x}", self.name, self.seq, self.rng.gen::<u32>())
    }

    /// A key whose TTL ends well after now (PERSIST will certainly find it).
    fn persist_target(&mut self, margin: Duration) -> Option<String> {
        if self.ttl_keys.is_empty() {
            return None;
        }
        let key = self.ttl_keys[self.rng.gen_range(0..self.ttl_keys.len())].clone();
        let far = self.expiry_lo.get(&key).is_some_and(|lo| *lo > Instant::now() + margin);
        far.then_some(key)
    }

    fn kind(&mut self, mix: &Mix) -> Kind {
        let weighted = [
            (mix.set_new, Kind::SetNew),
            (mix.overwrite, Kind::Overwrite),
            (mix.del, Kind::Del),
            (mix.incr, Kind::Incr),
            (mix.counter_del, Kind::CounterDel),
            (mix.set_ttl_new, Kind::SetTtlNew),
            (mix.set_ttl_existing, Kind::SetTtlExisting),
            (mix.persist, Kind::Persist),
            (mix.expire, Kind::Expire),
            (mix.shared_incr, Kind::SharedIncr),
        ];
        let total: u32 = weighted.iter().map(|(w, _)| w).sum();
        assert!(total > 0, "a mix needs at least one command kind");
        let mut roll = self.rng.gen_range(0..total);
        for (w, kind) in weighted {
            if roll < w {
                return kind;
            }
            roll -= w;
        }
        unreachable!("the roll is below the total weight")
    }

    fn next(&mut self, config: &LoadConfig) -> (String, Op) {
        self.seq += 1;
        let plain = |me: &mut Self, key: String| {
            let value = me.value();
            (key, Op::Set { value, ttl: None })
        };
        match self.kind(&config.mix) {
            Kind::SetNew => {
                let key = self.new_key();
                plain(self, key)
            }
            Kind::Overwrite => {
                let key = self.existing_key();
                plain(self, key)
            }
            Kind::Del => (self.existing_key(), Op::Del),
            Kind::Incr => (self.counter(config), Op::IncrBy(self.rng.gen_range(1..=9))),
            Kind::CounterDel => (self.counter(config), Op::Del),
            kind @ (Kind::SetTtlNew | Kind::SetTtlExisting) => {
                let key = if matches!(kind, Kind::SetTtlNew) { self.new_key() } else { self.existing_key() };
                let ttl = Some(self.ttl(config));
                (key, Op::Set { value: self.value(), ttl })
            }
            Kind::Persist => match self.persist_target(config.persist_margin) {
                Some(key) => (key, Op::Persist),
                None => {
                    let key = self.new_key();
                    plain(self, key)
                }
            },
            Kind::Expire => {
                let key = self.existing_key();
                (key, Op::Expire(self.rng.gen_range(config.ttl_px_ms.clone())))
            }
            Kind::SharedIncr => {
                let n = self.rng.gen_range(0..config.shared_counters.max(1));
                (format!("{SHARED_PREFIX}ctr{n}"), Op::IncrBy(self.rng.gen_range(1..=9)))
            }
        }
    }

    /// Remember what an acknowledged command did to the key's TTL.
    fn acknowledged(&mut self, key: &str, op: &Op, reply: &redis::Value, sent: Instant) {
        let changed = !matches!(reply, redis::Value::Int(0));
        let ttl_from = match op {
            Op::Set { ttl: Some(ttl), .. } => Some(Some(sent + Duration::from_millis(ttl.ms()))),
            Op::Expire(ms) if changed => Some(Some(sent + Duration::from_millis(*ms))),
            Op::Set { ttl: None, .. } | Op::Del | Op::Persist => Some(None),
            Op::Expire(_) | Op::IncrBy(_) => None,
        };
        let Some(lo) = ttl_from else { return };
        let had_ttl = match lo {
            Some(lo) => self.expiry_lo.insert(key.to_string(), lo).is_some(),
            None => self.expiry_lo.remove(key).is_some(),
        };
        match (lo.is_some(), had_ttl) {
            (true, false) => self.ttl_keys.push(key.to_string()),
            (false, true) => self.ttl_keys.retain(|k| k != key),
            _ => {}
        }
    }
}

/// A RESP connection that reconnects on the next command after an error.
struct Conn {
    url: String,
    conn: Option<MultiplexedConnection>,
}

/// How one attempt went.
enum Attempt {
    /// No connection: the command was not sent.
    NotSent(String),
    Replied(Result<redis::Value, String>),
}

impl Conn {
    async fn send(&mut self, cmd: &redis::Cmd) -> Attempt {
        if self.conn.is_none() {
            let connect = async {
                let client = redis::Client::open(self.url.as_str())?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(REQUEST_TIMEOUT)
                    .set_response_timeout(REQUEST_TIMEOUT);
                client.get_multiplexed_async_connection_with_config(&config).await
            };
            match tokio::time::timeout(REQUEST_TIMEOUT * 2, connect).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => return Attempt::NotSent(format!("connecting to {}: {e}", self.url)),
                Err(_) => return Attempt::NotSent(format!("connecting to {}: no answer within 10 s", self.url)),
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT * 2, cmd.query_async::<redis::Value>(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no reply within {:?}", REQUEST_TIMEOUT * 2)),
        };
        if reply.is_err() {
            self.conn = None;
        }
        Attempt::Replied(reply)
    }
}

/// What one client task hands back.
struct ClientRun {
    state: ClientState,
    sent: Vec<Sent>,
    /// The error that stopped it (a failure in `Stop` mode, a spent budget in `Retry`).
    stopped_by: Option<String>,
    retries: u64,
}

async fn run_client(
    url: String,
    mut state: ClientState,
    config: LoadConfig,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> ClientRun {
    let mut conn = Conn { url, conn: None };
    let (mut sent, mut stopped_by, mut retries) = (Vec::new(), None, 0);
    'commands: while !stop.load(Ordering::Relaxed) {
        let (key, op) = state.next(&config);
        let cmd = op.command(&key);
        let first = Instant::now();
        let mut attempt = 0;
        loop {
            let (t0, t0_ms) = (Instant::now(), wall_ms());
            let outcome = conn.send(&cmd).await;
            let (t1, t1_ms) = (Instant::now(), wall_ms());
            let error = match outcome {
                Attempt::Replied(Ok(reply)) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                    state.acknowledged(&key, &op, &reply, t0);
                    let seq = state.seq;
                    sent.push(Sent {
                        client: state.name.clone(),
                        seq,
                        attempt,
                        key: key.clone(),
                        op: op.clone(),
                        sent: t0,
                        done: t1,
                        sent_ms: t0_ms,
                        done_ms: t1_ms,
                        reply: Ok(reply),
                    });
                    break;
                }
                Attempt::Replied(Err(e)) => {
                    sent.push(Sent {
                        client: state.name.clone(),
                        seq: state.seq,
                        attempt,
                        key: key.clone(),
                        op: op.clone(),
                        sent: t0,
                        done: t1,
                        sent_ms: t0_ms,
                        done_ms: t1_ms,
                        reply: Err(e.clone()),
                    });
                    attempt += 1;
                    e
                }
                Attempt::NotSent(e) => e,
            };
            match config.on_error {
                OnError::Stop => {
                    stopped_by = Some(format!("{} {key}: {error}", op.kind()));
                    break 'commands;
                }
                OnError::Retry { budget, backoff } => {
                    if first.elapsed() + backoff > budget {
                        stopped_by = Some(format!("{} {key}: still failing after {budget:?}: {error}", op.kind()));
                        break 'commands;
                    }
                    retries += 1;
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        if !config.pause.is_zero() {
            tokio::time::sleep(config.pause).await;
        }
    }
    ClientRun { state, sent, stopped_by, retries }
}

/// The clients of one load (say, of one site) with everything they sent so far.
#[derive(Debug)]
pub struct Clients {
    name: String,
    config: LoadConfig,
    states: Vec<ClientState>,
    sent: Vec<Sent>,
    stops: Vec<String>,
    retries: u64,
}

impl Clients {
    /// `count` clients named `<name>0`, `<name>1`, …; `name` must differ between the
    /// loads of one test (their keys must not meet).
    pub fn new(name: &str, count: usize, config: LoadConfig, seed: u64) -> Clients {
        let states = (0..count)
            .map(|i| ClientState {
                name: format!("{name}{i}"),
                rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64 + hash(name))),
                seq: 0,
                keys: Vec::new(),
                ttl_keys: Vec::new(),
                expiry_lo: BTreeMap::new(),
            })
            .collect();
        Clients { name: name.to_string(), config, states, sent: Vec::new(), stops: Vec::new(), retries: 0 }
    }

    /// Run every client against the RESP port on 127.0.0.1 (database 0) until
    /// [`Load::stop`] (or, per [`OnError`], an error).
    pub fn start(mut self, port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let url = format!("redis://127.0.0.1:{port}/0");
        let tasks = std::mem::take(&mut self.states)
            .into_iter()
            .map(|state| tokio::spawn(run_client(url.clone(), state, self.config.clone(), stop.clone(), acked.clone())))
            .collect();
        Load { clients: self, stop, acked, started: Instant::now(), tasks }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every attempt of every phase so far.
    pub fn sent(&self) -> &[Sent] {
        &self.sent
    }

    /// Why clients stopped on their own, in every phase so far (`<client>: <kind> <key>: <error>`).
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Attempts that failed and were sent again, connection failures included.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Attempts that reached the node and failed (their outcome is unknown).
    pub fn failed(&self) -> Vec<&Sent> {
        self.sent.iter().filter(|s| !s.acked()).collect()
    }

    pub fn acked(&self) -> usize {
        self.sent.iter().filter(|s| s.acked()).count()
    }
}

/// Running clients; [`Load::stop`] gives them back.
pub struct Load {
    clients: Clients,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<ClientRun>>,
}

impl Load {
    /// Commands acknowledged since this start.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Wait (bounded) until the clients have had `count` commands acknowledged since
    /// this start.
    pub async fn wait_acked(&self, count: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked() < count {
            assert!(
                Instant::now() < deadline,
                "load {}: waited {timeout:?} for {count} acknowledged commands; the clients have {}",
                self.clients.name,
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded by `within`) until every client stopped by itself (a command
    /// failed, in `Stop` mode), then stops any still running and takes back their
    /// history: what a test calls after killing the node the clients write to, so
    /// that no client is told to stop before its next command met the kill.
    pub async fn stopped_by_failure(self, within: Duration) -> Clients {
        let deadline = Instant::now() + within;
        while !self.tasks.iter().all(|t| t.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop().await
    }

    /// Stop the clients still running and take back their history.
    pub async fn stop(self) -> Clients {
        self.stop.store(true, Ordering::Relaxed);
        let mut clients = self.clients;
        for task in self.tasks {
            let run = tokio::time::timeout(CLIENT_STOP_TIMEOUT, task)
                .await
                .unwrap_or_else(|_| panic!("waited {CLIENT_STOP_TIMEOUT:?} for a client to stop"))
                .expect("client task");
            clients.sent.extend(run.sent);
            clients.stops.extend(run.stopped_by.map(|e| format!("{}: {e}", run.state.name)));
            clients.retries += run.retries;
            clients.states.push(run.state);
        }
        clients.states.sort_by(|a, b| a.name.cmp(&b.name));
        clients
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// "SET 1234, DEL 56, …" of the acknowledged attempts.
pub fn acked_by_kind(sent: &[Sent]) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.acked()) {
        *kinds.entry(if s.is_shared() { "shared INCRBY" } else { s.op.kind() }).or_default() += 1;
    }
    kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_clients_commands_follow_its_mix_and_its_keys_stay_its_own() {
        let config = LoadConfig::default();
        let mut state = ClientState {
            name: "a0".into(),
            rng: StdRng::seed_from_u64(7),
            seq: 0,
            keys: Vec::new(),
            ttl_keys: Vec::new(),
            expiry_lo: BTreeMap::new(),
        };
        let mut kinds = BTreeSet::new();
        for _ in 0..2000 {
            let (key, op) = state.next(&config);
            assert!(key.starts_with("ld:a0:") || key.starts_with(SHARED_PREFIX), "{key}");
            let reply = if matches!(op, Op::Set { .. }) { redis::Value::Okay } else { redis::Value::Int(1) };
            state.acknowledged(&key, &op, &reply, Instant::now());
            kinds.insert(if key.starts_with(SHARED_PREFIX) { "shared" } else { op.kind() });
        }
        assert_eq!(kinds.len(), 8, "{kinds:?}");
    }
}
