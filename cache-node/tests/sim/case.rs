//! A case: the sites, the cache's policy and topology, and the steps they take.
//!
//! Site numbers in steps are taken modulo the number of sites, so steps shrink
//! independently of it. Times are milliseconds.

use proptest::prelude::*;

/// Keys the sites write: few, so that writes conflict.
pub const KEYS: u8 = 3;
/// `hlc.max_skew_ms` of every site.
pub const MAX_SKEW_MS: u64 = 1_000;
/// `conflict_window_ms` of the window policies.
pub const WINDOW_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    LastWriteWins,
    /// `prefer-site:` the site of this number.
    PreferSite(u8),
    PreferNonNull,
    AlwaysRemove,
}

impl Policy {
    /// The name `parse_policy` takes.
    pub fn name(self, sites: usize) -> String {
        match self {
            Policy::LastWriteWins => "last-write-wins".into(),
            Policy::PreferSite(s) => format!("prefer-site:{}", site_name(usize::from(s) % sites)),
            Policy::PreferNonNull => "prefer-non-null".into(),
            Policy::AlwaysRemove => "always-remove".into(),
        }
    }
}

pub fn site_name(index: usize) -> String {
    format!("s{index}")
}

pub fn key_name(key: u8) -> Vec<u8> {
    vec![b'a' + key % KEYS]
}

/// The name of hash field `n`.
pub fn field_name(n: u8) -> Vec<u8> {
    format!("f{n}").into_bytes()
}

/// The expiry option of a SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    None,
    /// `PX ms`
    Px(u16),
    /// `KEEPTTL`
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `SET k v [PX ms | KEEPTTL]`; `value` ≥ 200 is not an integer.
    Set { site: u8, key: u8, value: u8, ttl: Ttl },
    /// `DEL k`
    Del { site: u8, key: u8 },
    /// `INCRBY k delta`
    Incr { site: u8, key: u8, delta: i8 },
    /// `PEXPIREAT k (wall + in_ms)`: a time not in the future deletes, as in Redis.
    PexpireAt { site: u8, key: u8, in_ms: i16 },
    /// `PERSIST k`
    Persist { site: u8, key: u8 },
    /// `HSET k f v` (field `f0`..`f2`); on a string key, WRONGTYPE.
    HSet { site: u8, key: u8, field: u8, value: u8 },
    /// `HDEL k f`
    HDel { site: u8, key: u8, field: u8 },
    /// `HINCRBY k f delta`, or (`float`) `HINCRBYFLOAT k f delta/4`.
    HIncr { site: u8, key: u8, field: u8, delta: i8, float: bool },
    /// `SADD k m` (member `m0`..`m2`); on a string or hash key, WRONGTYPE.
    SAdd { site: u8, key: u8, member: u8 },
    /// `SREM k m`, or (`pop`) `SPOP k`.
    SRem { site: u8, key: u8, member: u8, pop: bool },
    /// `ZADD k score m`, or (`incr`) `ZINCRBY k score/10 m` (member `m0`..`m2`): tenths,
    /// which binary floats hold inexactly, so that the order a sum is added in shows.
    ZAdd { site: u8, key: u8, member: u8, score: i8, incr: bool },
    /// `ZREM k m`, or (`pop`) `ZPOPMIN k`.
    ZRem { site: u8, key: u8, member: u8, pop: bool },
    /// `LPUSH k v`, or (`right`) `RPUSH k v` (value `v0`..`v3`); on another type,
    /// WRONGTYPE.
    LPush { site: u8, key: u8, value: u8, right: bool },
    /// By `how` (mod 4): `LPOP k`, `RPOP k`, `LSET k -1 set`, `LTRIM k 1 -1`.
    LPop { site: u8, key: u8, how: u8 },
    /// `MULTI; SET a v; INCRBY b 1 | DEL b; EXEC`: one transaction unit (both entries
    /// in one WAL record and one topic entry, applied together).
    Multi { site: u8, a: u8, b: u8, value: u8, incr: bool },
    /// True time moves on; every site's wall clock with it.
    Advance { ms: u16 },
    /// A site's wall clock jumps to true time plus `offset` (scaled to the case's
    /// range, half the time to one of its ends; may go back).
    Skew { site: u8, offset: i8 },
    /// `to` consumes one entry of another site's topic: a new one, or (`dup`) one it
    /// has not made durable (Kafka redelivers only after the saved offset).
    Deliver { to: u8, pick: u16, dup: bool },
    /// `to`'s consumer of `from`'s topic catches up: every entry it has not applied,
    /// in topic order; then its WAL is fsynced.
    CatchUp { to: u8, from: u8 },
    /// The network heals for a moment: every site fsyncs and ships a heartbeat, then
    /// catches up on every topic (in a shuffled order of topics); `twice`: two rounds
    /// (then every site has a floor).
    Quiesce { seed: u16, twice: bool },
    /// The site's WAL fsync (`everysec`); what becomes durable is shipped.
    Sync { site: u8 },
    /// The site restarts: `power_cut` loses what was not fsynced; else (kill -9) the
    /// page cache keeps every write. The store is rebuilt from snapshot and WAL.
    Restart { site: u8, power_cut: bool },
    /// The site writes a snapshot (after an fsync) and drops the WAL it covers.
    Snapshot { site: u8 },
    /// One active expiry cycle (`reclaim = false`, as with replication).
    ExpireCycle { site: u8, keys_max: u8 },
    /// Tombstone collection below the site's floor (from the heartbeats it counted),
    /// or (`lag` > 0) an older one it computed; nothing while it has none.
    Collect { site: u8, lag: u8 },
    /// Every site collects below its floor.
    CollectAll,
    /// `POST /caches/{cache}/promote` (active-passive cases only).
    Promote { site: u8 },
    /// The shipper's heartbeat (not through the WAL): the site's watermark tracker
    /// ticks, then its watermarks and epoch go into its topic after what it shipped.
    Heartbeat { site: u8 },
}

#[derive(Debug, Clone)]
pub struct Case {
    pub sites: usize,
    pub policy: Policy,
    /// Active-passive with this primary; active-active when `None`.
    pub primary: Option<u8>,
    /// Whether `Collect` steps (and the final collection round) run.
    pub collect: bool,
    /// How far wall clocks stray from true time.
    pub clocks: Clocks,
    /// Sites (by bit) whose durability is `always`; the others are `everysec`.
    pub always: u8,
    /// Compare sites after the clock passed every expiry.
    pub past_expiry: bool,
    /// Seed of the final delivery round's orders.
    pub seed: u64,
    pub steps: Vec<Step>,
}

/// How far wall clocks stray from true time (every site's, the whole case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clocks {
    /// ±20 ms (NTP).
    Synced,
    /// ±`MAX_SKEW_MS`/2: two sites are never more than the skew bound apart.
    WithinSkew,
    /// ±4×`MAX_SKEW_MS`.
    BeyondSkew,
}

impl Case {
    /// Largest distance of a wall clock from true time.
    pub fn offset_max_ms(&self) -> u64 {
        match self.clocks {
            Clocks::Synced => 20,
            Clocks::WithinSkew => MAX_SKEW_MS / 2,
            Clocks::BeyondSkew => 4 * MAX_SKEW_MS,
        }
    }
}

fn clocks() -> impl Strategy<Value = Clocks> {
    prop_oneof![2 => Just(Clocks::Synced), 2 => Just(Clocks::WithinSkew), 1 => Just(Clocks::BeyondSkew)]
}

fn ttl() -> impl Strategy<Value = Ttl> {
    prop_oneof![3 => Just(Ttl::None), 2 => (1u16..3_000).prop_map(Ttl::Px), 1 => Just(Ttl::Keep)]
}

pub fn step() -> impl Strategy<Value = Step> {
    let site = || 0u8..5;
    let key = || 0..KEYS;
    prop_oneof![
        4 => (site(), key(), any::<u8>(), ttl()).prop_map(|(site, key, value, ttl)| Step::Set { site, key, value, ttl }),
        3 => (site(), key()).prop_map(|(site, key)| Step::Del { site, key }),
        3 => (site(), key(), -5i8..=5).prop_map(|(site, key, delta)| Step::Incr { site, key, delta }),
        1 => (site(), key(), -300i16..3_000).prop_map(|(site, key, in_ms)| Step::PexpireAt { site, key, in_ms }),
        2 => (site(), key()).prop_map(|(site, key)| Step::Persist { site, key }),
        1 => (site(), key(), 0u8..3, any::<u8>()).prop_map(|(site, key, field, value)| Step::HSet { site, key, field, value }),
        1 => (site(), key(), 0u8..3).prop_map(|(site, key, field)| Step::HDel { site, key, field }),
        1 => (site(), key(), 0u8..3, -5i8..=5, prop::bool::weighted(0.3))
            .prop_map(|(site, key, field, delta, float)| Step::HIncr { site, key, field, delta, float }),
        1 => (site(), key(), 0u8..3).prop_map(|(site, key, member)| Step::SAdd { site, key, member }),
        1 => (site(), key(), 0u8..3, prop::bool::weighted(0.3))
            .prop_map(|(site, key, member, pop)| Step::SRem { site, key, member, pop }),
        1 => (site(), key(), 0u8..3, -4i8..=4, prop::bool::weighted(0.5))
            .prop_map(|(site, key, member, score, incr)| Step::ZAdd { site, key, member, score, incr }),
        1 => (site(), key(), 0u8..3, prop::bool::weighted(0.3))
            .prop_map(|(site, key, member, pop)| Step::ZRem { site, key, member, pop }),
        1 => (site(), key(), 0u8..4, any::<bool>())
            .prop_map(|(site, key, value, right)| Step::LPush { site, key, value, right }),
        1 => (site(), key(), 0u8..4).prop_map(|(site, key, how)| Step::LPop { site, key, how }),
        2 => (site(), key(), key(), any::<u8>(), any::<bool>())
            .prop_map(|(site, a, b, value, incr)| Step::Multi { site, a, b, value, incr }),
        4 => (0u16..1_200).prop_map(|ms| Step::Advance { ms }),
        2 => (site(), any::<i8>()).prop_map(|(site, offset)| Step::Skew { site, offset }),
        7 => (site(), any::<u16>(), prop::bool::weighted(0.2)).prop_map(|(to, pick, dup)| Step::Deliver { to, pick, dup }),
        3 => (site(), site()).prop_map(|(to, from)| Step::CatchUp { to, from }),
        2 => (any::<u16>(), any::<bool>()).prop_map(|(seed, twice)| Step::Quiesce { seed, twice }),
        3 => site().prop_map(|site| Step::Sync { site }),
        1 => (site(), any::<bool>()).prop_map(|(site, power_cut)| Step::Restart { site, power_cut }),
        1 => site().prop_map(|site| Step::Snapshot { site }),
        1 => (site(), 1u8..4).prop_map(|(site, keys_max)| Step::ExpireCycle { site, keys_max }),
        3 => (site(), prop::sample::select(vec![0u8, 0, 0, 1, 2, 5])).prop_map(|(site, lag)| Step::Collect { site, lag }),
        1 => Just(Step::CollectAll),
        1 => site().prop_map(|site| Step::Promote { site }),
        6 => site().prop_map(|site| Step::Heartbeat { site }),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::LastWriteWins),
        (0u8..5).prop_map(Policy::PreferSite),
        Just(Policy::PreferNonNull),
        Just(Policy::AlwaysRemove),
    ]
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        2usize..=5,
        policy(),
        prop::option::weighted(0.3, 0u8..5),
        prop::bool::weighted(0.7),
        clocks(),
        any::<u8>(),
        any::<bool>(),
        any::<u64>(),
        prop::collection::vec(step(), 1..120),
    )
        .prop_map(|(sites, policy, primary, collect, clocks, always, past_expiry, seed, steps)| Case {
            sites,
            policy,
            primary,
            collect,
            clocks,
            always,
            past_expiry,
            seed,
            steps,
        })
}
