//! The in-memory store: per named cache, a sharded map of [`Record`]s.
//!
//! Every write, local or remote, goes through [`merge::apply`](xsite_consumer::merge::apply)
//! with the cache's policy, so every site orders versions the same way. A key is
//! visible iff [`Record::is_live`] at the reader's wall clock.
//!
//! - **Sharding**: [`SHARDS`] shards, each a `std::sync::Mutex` around a [`Shard`]; a
//!   key's shard is a hash of its bytes. Multi-key commands lock their shards in
//!   ascending order ([`CacheStore::lock`]), so they are atomic and cannot deadlock.
//! - **Tombstones** stay after a delete (a late older write must not resurrect the
//!   key) until [`CacheStore::gc_tombstones`] is called with a watermark every site
//!   has passed.
//! - **Expiry** is deterministic (absolute times) and ships nothing: the expiry cycle
//!   ([`CacheStore::expire_cycle`]) only frees the value bytes of a due record by
//!   turning it into a tombstone that keeps both versions and the expiry time.
//! - **Transactions**: a command holds the store's gate shared while it runs
//!   ([`CacheStore::share`]); `EXEC` holds it exclusively for all of its commands
//!   ([`CacheStore::exclude`]), so no other command sees or makes a change in
//!   between. Inside, commands lock their shards as usual: the gate is not a shard
//!   lock, so a transaction that touches a key twice, or many keys, cannot deadlock.
//!   For `WATCH`, every change joined into a record stamps it ([`Seen`],
//!   [`CacheStore::changed_since`]).
//! - **Memory**: every record costs about key + value + [`RECORD_OVERHEAD_BYTES`];
//!   the node-wide [`MemoryGauge`] refuses local writes that would grow the store
//!   past `store.memory_bytes_max` ([`Refusal::OutOfMemory`]); deletes never are. A
//!   remote entry that would grow it past the limit waits (the engine's remote
//!   apply refuses it for now, the consumer retries without moving its offset).
//!
//! Functions that depend on time take `now_ms` (Unix milliseconds) explicitly.

pub mod codec;
pub mod glob;
mod shard;

pub use shard::{record_bytes, Seen, Shard, COUNTER_SITE_BYTES, HASH_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES};

use bytes::Bytes;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use xsite_consumer::merge::{Candidate, MergePolicy, Record, Value};
use xsite_schemas::{CacheName, Hlc, Op, SiteId, Version};

/// Bytes the Kafka message of a local write of `op` takes at most: its entry, and its
/// key again as the message key.
pub fn entry_message_bytes(op: &Op) -> usize {
    xsite_schemas::encoded_len_bound(op) + op.key().map_or(0, <[u8]>::len)
}

/// Shards per cache.
pub const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// Bits of a SCAN cursor that give the position inside a shard.
const POS_BITS: u32 = 64 - SHARD_BITS;
const POS_MASK: u64 = (1 << POS_BITS) - 1;

/// Why a local write is refused before it changes anything; the text is the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Redis's reply when `maxmemory` is exceeded.
    #[error("OOM command not allowed when used memory > 'maxmemory'.")]
    OutOfMemory,
    /// The write's log entry could not cross to another site in one Kafka message.
    #[error(
        "ERR the write would make a replication entry of about {bytes} bytes, more than max_entry_bytes ({max_entry_bytes}); values grow by 4/3 in the entry"
    )]
    EntryTooLarge { bytes: usize, max_entry_bytes: usize },
}

/// Node-wide memory use of every cache, and the limit local writes obey.
#[derive(Debug)]
pub struct MemoryGauge {
    used_bytes: AtomicI64,
    /// 0: unlimited.
    limit_bytes: u64,
}

impl MemoryGauge {
    pub fn new(limit_bytes: u64) -> MemoryGauge {
        MemoryGauge { used_bytes: AtomicI64::new(0), limit_bytes }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    pub(crate) fn add(&self, delta: i64) {
        self.used_bytes.fetch_add(delta, Ordering::Relaxed);
    }

    /// May the store grow by `growth` bytes?
    pub fn admits(&self, growth: i64) -> bool {
        self.limit_bytes == 0 || growth <= 0 || self.used_bytes().saturating_add(growth as u64) <= self.limit_bytes
    }
}

/// Counts of one cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStoreStats {
    /// Records that are not tombstones (expired ones not yet reclaimed included, as
    /// Redis counts them).
    pub keys: u64,
    pub tombstones: u64,
    /// Keys with an expiry time.
    pub expires: u64,
    pub memory_bytes: u64,
}

/// A stable 64-bit hash of a key (FNV-1a, then a finalizer that spreads the bits):
/// its low bits choose the shard, its high bits order keys for SCAN.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

pub fn shard_index(key: &[u8]) -> usize {
    (key_hash(key) & (SHARDS as u64 - 1)) as usize
}

fn scan_pos(key: &[u8]) -> u64 {
    key_hash(key) >> SHARD_BITS
}

/// The bytes a reader sees for a live record: the value, or a counter as decimal
/// text. `None` for a tombstone, and for a hash or a set (not a string).
pub fn value_bytes(rec: &Record) -> Option<Cow<'_, [u8]>> {
    if rec.kind() != xsite_consumer::merge::Kind::String {
        return None;
    }
    match &rec.value {
        Value::Bytes(b) => Some(Cow::Borrowed(b)),
        Value::Counter(c) => {
            let sum = c.totals.values().fold(i128::from(c.base), |acc, t| acc + i128::from(t.total));
            Some(Cow::Owned(sum.to_string().into_bytes()))
        }
        Value::Tombstone => None,
    }
}

/// What a client observes of a live record as one string of bytes: a string's
/// value, or a hash's visible fields framed (`*hash` then length-prefixed names and
/// values, by name), or a set's members (`*set` then length-prefixed members, in
/// byte order), so that contents and digests compare collections too.
pub fn observed_bytes(rec: &Record) -> Cow<'_, [u8]> {
    if let Some(ranked) = rec.zset_ranked() {
        let mut out = b"*zset".to_vec();
        for (m, score) in ranked {
            out.extend_from_slice(&(m.len() as u64).to_le_bytes());
            out.extend_from_slice(m);
            out.extend_from_slice(&score.to_bits().to_le_bytes());
        }
        return Cow::Owned(out);
    }
    if let Some(members) = rec.set_members() {
        let mut out = b"*set".to_vec();
        for m in members {
            out.extend_from_slice(&(m.len() as u64).to_le_bytes());
            out.extend_from_slice(m);
        }
        return Cow::Owned(out);
    }
    match rec.hash_fields() {
        Some(fields) => {
            let mut out = b"*hash".to_vec();
            for (name, f) in fields {
                let value = f.value().unwrap_or_default();
                out.extend_from_slice(&(name.len() as u64).to_le_bytes());
                out.extend_from_slice(name);
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(&value);
            }
            Cow::Owned(out)
        }
        None => value_bytes(rec).unwrap_or_default(),
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic under the lock leaves the shard's indexes possibly off by one record;
    // serving on is better for a cache than failing every later request.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A command's share of a store's gate ([`CacheStore::share`]).
pub struct Shared<'a> {
    _gate: RwLockReadGuard<'a, ()>,
}

/// A store's gate held exclusively, by a transaction ([`CacheStore::exclude`]).
pub struct Excluded<'a> {
    _gate: RwLockWriteGuard<'a, ()>,
}

/// One named cache.
pub struct CacheStore {
    name: CacheName,
    policy: Box<dyn MergePolicy>,
    /// Shared by a command for as long as it reads or changes the store, exclusive
    /// for a whole transaction. Never taken while a shard is locked, and never
    /// held across an await.
    gate: RwLock<()>,
    shards: Box<[Mutex<Shard>]>,
    gauge: Arc<MemoryGauge>,
    /// Largest entry (plus key) a local write may make: see [`Refusal::EntryTooLarge`].
    entry_bytes_max: usize,
    /// Every site of the deployment (this one included): who may still write, for
    /// the rule that collection must be invisible ([`CacheStore::outranked_later`]).
    sites: Vec<SiteId>,
    /// Set once a record of this cache got a hash or set part: until then no string
    /// command needs to look for WRONGTYPE.
    holds_collections: std::sync::atomic::AtomicBool,
    /// Notified each time a list put is joined (a local write or one applied from
    /// another site): blocked pops look again.
    list_puts: tokio::sync::Notify,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("name", &self.name)
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

impl CacheStore {
    pub fn new(name: CacheName, policy: Box<dyn MergePolicy>, gauge: Arc<MemoryGauge>) -> CacheStore {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        CacheStore {
            name,
            policy,
            gate: RwLock::new(()),
            shards,
            gauge,
            entry_bytes_max: usize::MAX,
            sites: Vec::new(),
            holds_collections: std::sync::atomic::AtomicBool::new(false),
            list_puts: tokio::sync::Notify::new(),
        }
    }

    /// What a blocked pop waits on: notified at each list put joined.
    pub fn list_puts(&self) -> &tokio::sync::Notify {
        &self.list_puts
    }

    /// Whether any record of this cache may be a hash or a set (false until one got
    /// a hash or set part; never false again).
    pub fn may_hold_collections(&self) -> bool {
        self.holds_collections.load(Ordering::Relaxed)
    }

    fn note_collection(&self) {
        if !self.holds_collections.load(Ordering::Relaxed) {
            self.holds_collections.store(true, Ordering::Relaxed);
        }
    }

    /// Refuse local writes whose entry would be larger than `bytes` (the key counted
    /// twice: once in the entry, once as the Kafka message key).
    pub fn with_entry_bytes_max(mut self, bytes: usize) -> CacheStore {
        self.entry_bytes_max = bytes;
        self
    }

    /// The sites that may write to this cache (for collection; see
    /// [`CacheStore::outranked_later`]). Without any, a record is judged against
    /// writes of its own site only.
    pub fn with_sites(mut self, sites: Vec<SiteId>) -> CacheStore {
        self.sites = sites;
        self
    }

    /// Whether every write that can still arrive — from any site, at a timestamp at
    /// or above `below`, live or a delete — outranks the record's value under the
    /// cache's policy: only then is dropping the record invisible. Last-write-wins
    /// always says yes; `prefer-site` says no for the preferred site's records (they
    /// beat every later write of the others); the window policies say no when a
    /// later write could fall in the record's own window and lose to it. The policy
    /// is taken to rank a later version of the same kind at least as high as an
    /// earlier one (all built-in policies do).
    pub fn outranked_later(&self, rec: &Record, below: Hlc) -> bool {
        let own = [rec.version.site.clone()];
        let sites: &[SiteId] = if self.sites.is_empty() { &own } else { &self.sites };
        let current = Candidate::of(&rec.version, &rec.value);
        sites.iter().all(|site| {
            let later = Version::with_epoch(rec.version.epoch, below, site.clone());
            [true, false].into_iter().all(|live| {
                let value = if live { Some(&b""[..]) } else { None };
                let candidate = Candidate { version: &later, live, value };
                self.policy.cmp(candidate, current) == std::cmp::Ordering::Greater
            })
        })
    }

    /// Whether a local write of `op` fits in one replication entry.
    pub fn check_entry_size(&self, op: &Op) -> Result<(), Refusal> {
        let bytes = entry_message_bytes(op);
        if bytes > self.entry_bytes_max {
            return Err(Refusal::EntryTooLarge { bytes, max_entry_bytes: self.entry_bytes_max });
        }
        Ok(())
    }

    /// A cheap refusal before a command builds a value of `value_len` bytes for `key`
    /// (SETBIT at a far offset): the entry holds at least the value and the key, so a
    /// longer one can never be admitted. The exact check is [`Locked::admit`]'s.
    pub fn check_value_len(&self, key: &[u8], value_len: usize) -> Result<(), Refusal> {
        let bytes = value_len.saturating_add(key.len());
        if bytes > self.entry_bytes_max {
            return Err(Refusal::EntryTooLarge { bytes, max_entry_bytes: self.entry_bytes_max });
        }
        Ok(())
    }

    pub fn name(&self) -> &CacheName {
        &self.name
    }

    pub fn policy(&self) -> &dyn MergePolicy {
        self.policy.as_ref()
    }

    pub fn gauge(&self) -> &MemoryGauge {
        &self.gauge
    }

    /// The gate shared, for one command (or remote entry) while it runs against the
    /// store: it waits while a transaction runs. Take it before any shard lock, and
    /// once per thread (a transaction waiting for it would block a second share).
    pub fn share(&self) -> Shared<'_> {
        Shared { _gate: self.gate.read().unwrap_or_else(PoisonError::into_inner) }
    }

    /// The gate alone, for a transaction: every other command waits until it is
    /// dropped. Stores are excluded in ascending `db` order, so two transactions
    /// cannot deadlock.
    pub fn exclude(&self) -> Excluded<'_> {
        Excluded { _gate: self.gate.write().unwrap_or_else(PoisonError::into_inner) }
    }

    /// How `key` stands now, for `WATCH` (see [`CacheStore::changed_since`]).
    pub fn seen(&self, key: &[u8], now_ms: u64) -> Seen {
        lock(&self.shards[shard_index(key)]).seen(key, now_ms)
    }

    /// Whether `key` changed since it stood as `seen`: anything joined into its
    /// record since (a write of this site or another, a flush), or it expired. May
    /// say yes for an unchanged key whose record collection removed meanwhile.
    pub fn changed_since(&self, key: &[u8], seen: Seen, now_ms: u64) -> bool {
        lock(&self.shards[shard_index(key)]).changed_since(key, seen, now_ms)
    }

    /// Locks the shards of `keys` (each once, in ascending order) for a command that
    /// reads and writes them atomically.
    pub fn lock<K: AsRef<[u8]>>(&self, keys: &[K]) -> Locked<'_> {
        let mut idx: Vec<usize> = keys.iter().map(|k| shard_index(k.as_ref())).collect();
        idx.sort_unstable();
        idx.dedup();
        let guards = idx.into_iter().map(|i| (i, lock(&self.shards[i]))).collect();
        Locked { store: self, guards }
    }

    /// Locks one shard by index (for whole-cache walks: flush, snapshot).
    pub fn lock_shard(&self, index: usize) -> Locked<'_> {
        Locked { store: self, guards: vec![(index, lock(&self.shards[index]))] }
    }

    /// Joins an entry into the store (WAL replay): never refused.
    pub fn apply(&self, version: &Version, op: &Op) -> bool {
        let Some(key) = op.key() else {
            return false;
        };
        self.lock(&[key]).apply(version, op)
    }

    /// Reads a key's record under its shard's lock.
    pub fn read<R>(&self, key: &[u8], f: impl FnOnce(Option<&Record>) -> R) -> R {
        f(lock(&self.shards[shard_index(key)]).get(key))
    }

    /// Puts a record loaded from a snapshot (into an empty store: it replaces what
    /// the key holds).
    pub fn load(&self, key: &[u8], rec: Record) {
        if rec.has_parts() {
            self.note_collection();
        }
        let mut guard = lock(&self.shards[shard_index(key)]);
        guard.load(key, rec, &self.gauge);
    }

    /// One active expiry cycle over at most `keys_per_shard_max` due records per
    /// shard: counts the keys whose expiry passed; frees their values only when
    /// `reclaim` (no replication: nothing can revive them). Returns how many expired.
    pub fn expire_cycle(&self, now_ms: u64, keys_per_shard_max: usize, reclaim: bool) -> usize {
        self.expire_cycle_with(now_ms, keys_per_shard_max, reclaim, &mut |_| {})
    }

    /// [`CacheStore::expire_cycle`], calling `on_expired` with each key it counts
    /// (under its shard's lock).
    pub fn expire_cycle_with(
        &self,
        now_ms: u64,
        keys_per_shard_max: usize,
        reclaim: bool,
        on_expired: &mut dyn FnMut(&[u8]),
    ) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).expire_due(now_ms, keys_per_shard_max, reclaim, &self.gauge, on_expired))
            .sum()
    }

    /// Forgets tombstones and expired records no entry can order around any more
    /// (see [`Shard::gc`]); `below` is a timestamp every site has applied everything
    /// under. Returns how many.
    pub fn gc_tombstones(&self, below: Hlc, skew_ms: u64) -> usize {
        let collectable = |rec: &Record| self.collectable(rec, below, skew_ms);
        self.shards.iter().map(|s| lock(s).gc(below, skew_ms, &collectable, &self.gauge)).sum()
    }

    /// Whether dropping `rec` is invisible, `below` being a timestamp every site has
    /// applied everything under: it is a tombstone or expired (`skew_ms` past its
    /// expiry time at `below`'s wall time, so that no site whose clock is within the
    /// skew bound can still write to it as live), all its timestamps are below
    /// `below`, and every write that can still arrive outranks it
    /// ([`CacheStore::outranked_later`]). A local INCR on such a record counts from
    /// nothing after the floor, whether or not it was dropped yet.
    pub fn collectable(&self, rec: &Record, below: Hlc, skew_ms: u64) -> bool {
        let horizon_ms = below.wall_ms();
        let settled = rec.expire_at_ms().is_none_or(|at| at.saturating_add(skew_ms) < horizon_ms);
        let gone = rec.is_tombstone() || rec.expire_at_ms().is_some();
        // A record with a hash part stays: a late increment on a field base it
        // removed would count again where the record was dropped. One with a set
        // part too: a late add its removes saw would come back.
        !rec.has_parts() && gone && settled && rec.max_hlc() < below && self.outranked_later(rec, below)
    }

    /// Expired records kept until collection may drop them, and their bytes.
    pub fn expired_retained(&self, now_ms: u64) -> (u64, u64) {
        self.shards.iter().map(|s| lock(s).expired_retained(now_ms)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    pub fn stats(&self) -> CacheStoreStats {
        let mut st = CacheStoreStats::default();
        for s in self.shards.iter() {
            let shard = lock(s);
            st.keys += shard.values() as u64;
            st.tombstones += shard.tombstones() as u64;
            st.expires += shard.expires() as u64;
            st.memory_bytes += shard.memory_bytes();
        }
        st
    }

    /// Keys that are not tombstones (what `DBSIZE` replies).
    pub fn dbsize(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).values() as u64).sum()
    }

    /// The highest timestamp any record holds.
    pub fn max_hlc(&self) -> Hlc {
        self.shards.iter().flat_map(|s| lock(s).iter().map(|(_, r)| r.max_hlc()).max()).max().unwrap_or(Hlc::ZERO)
    }

    /// Live keys matching a glob pattern, in no particular order.
    pub fn keys(&self, pattern: &[u8], now_ms: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            out.extend(
                shard.iter().filter(|(k, r)| r.is_live(now_ms) && glob::glob_match(pattern, k)).map(|(k, _)| k.clone()),
            );
        }
        out
    }

    /// One SCAN step: examines about `count` records from `cursor` on and returns the
    /// next cursor (0 when done) and the live keys accepted by `filter`.
    ///
    /// A cursor is `shard << 58 | position`, where a key's position is the high bits
    /// of its hash: keys present during the whole iteration are returned at least
    /// once however the keyspace changes, as Redis promises.
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        mut filter: impl FnMut(&[u8], &Record) -> bool,
    ) -> (u64, Vec<Bytes>) {
        let mut shard = (cursor >> POS_BITS) as usize;
        let mut from = cursor & POS_MASK;
        let (mut out, mut examined) = (Vec::new(), 0usize);
        while shard < SHARDS {
            let guard = lock(&self.shards[shard]);
            let mut taken: Vec<(u64, &Bytes, &Record)> =
                guard.iter().map(|(k, r)| (scan_pos(k), k, r)).filter(|(pos, _, _)| *pos >= from).collect();
            let budget = count.saturating_sub(examined).max(1);
            let mut next_pos = None;
            if taken.len() > budget {
                // The `budget` lowest positions, plus any equal to the highest of
                // them: keys of one position are never split between two calls.
                taken.select_nth_unstable_by_key(budget - 1, |c| c.0);
                let last = taken[budget - 1].0;
                for c in taken.split_off(budget) {
                    if c.0 == last {
                        taken.push(c);
                    } else {
                        next_pos = Some(next_pos.map_or(c.0, |p: u64| p.min(c.0)));
                    }
                }
            }
            examined += taken.len();
            out.extend(
                taken
                    .iter()
                    .filter(|(_, k, r)| r.is_live(now_ms) && filter(k.as_ref(), r))
                    .map(|(_, k, _)| (*k).clone()),
            );
            if let Some(pos) = next_pos {
                return (((shard as u64) << POS_BITS) | pos, out);
            }
            shard += 1;
            from = 0;
            if examined >= count && shard < SHARDS {
                return ((shard as u64) << POS_BITS, out);
            }
        }
        (0, out)
    }

    /// A random live key, if any.
    pub fn random_key(&self, now_ms: u64) -> Option<Bytes> {
        let start = rand::random::<usize>() % SHARDS;
        for i in 0..SHARDS {
            let shard = lock(&self.shards[(start + i) % SHARDS]);
            if shard.values() == 0 {
                continue;
            }
            let n = shard.map.len();
            let skip = rand::random::<usize>() % n;
            let found =
                shard.iter().cycle().skip(skip).take(n).find(|(_, r)| r.is_live(now_ms)).map(|(k, _)| k.clone());
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Every live key and the bytes a reader sees, sorted by key.
    pub fn live_contents(&self, now_ms: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            for (k, r) in shard.iter().filter(|(_, r)| r.is_live(now_ms)) {
                out.insert(k.to_vec(), observed_bytes(r).into_owned());
            }
        }
        out
    }

    /// An order-independent hash of what a client can observe: every live key, its
    /// value (a counter as its value) and its absolute expiry time. Two sites with
    /// equal digests show (almost certainly) the same data; tombstones and other
    /// internal state, which legitimately differ while collection runs on each
    /// site's own schedule, do not count.
    pub fn digest(&self, now_ms: u64) -> u64 {
        let mut digest = 0u64;
        for s in self.shards.iter() {
            let shard = lock(s);
            for (k, r) in shard.iter().filter(|(_, r)| r.is_live(now_ms)) {
                let v = observed_bytes(r);
                let mut framed = Vec::with_capacity(24 + k.len() + v.len());
                framed.extend_from_slice(&(k.len() as u64).to_le_bytes());
                framed.extend_from_slice(k);
                framed.extend_from_slice(&r.expire_at_ms().map_or(0, |at| at.saturating_add(1)).to_le_bytes());
                framed.extend_from_slice(&v);
                digest = digest.wrapping_add(key_hash(&framed));
            }
        }
        digest
    }

    /// What a client can observe of every live key: its value and absolute expiry.
    pub fn observable(&self, now_ms: u64) -> BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)> {
        let mut out = BTreeMap::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            for (k, r) in shard.iter().filter(|(_, r)| r.is_live(now_ms)) {
                out.insert(k.to_vec(), (observed_bytes(r).into_owned(), r.expire_at_ms()));
            }
        }
        out
    }
}

/// Shards locked for one command. Keys must belong to a locked shard.
pub struct Locked<'a> {
    store: &'a CacheStore,
    guards: Vec<(usize, MutexGuard<'a, Shard>)>,
}

impl Locked<'_> {
    fn shard(&self, key: &[u8]) -> &Shard {
        let i = shard_index(key);
        let (_, guard) = self.guards.iter().find(|(j, _)| *j == i).expect("the key's shard is locked");
        guard
    }

    fn shard_mut(&mut self, key: &[u8]) -> &mut Shard {
        let i = shard_index(key);
        let (_, guard) = self.guards.iter_mut().find(|(j, _)| *j == i).expect("the key's shard is locked");
        guard
    }

    pub fn store(&self) -> &CacheStore {
        self.store
    }

    /// The key's record, whatever its state.
    pub fn get(&self, key: &[u8]) -> Option<&Record> {
        self.shard(key).get(key)
    }

    /// The key's record if it is visible at `now_ms`.
    pub fn live(&self, key: &[u8], now_ms: u64) -> Option<&Record> {
        self.get(key).filter(|r| r.is_live(now_ms))
    }

    /// Live keys of the locked shards.
    pub fn live_keys(&self, now_ms: u64) -> Vec<Bytes> {
        self.guards
            .iter()
            .flat_map(|(_, g)| g.iter().filter(|(_, r)| r.is_live(now_ms)).map(|(k, _)| k.clone()))
            .collect()
    }

    /// Every record of the locked shards.
    pub fn records(&self) -> impl Iterator<Item = (&Bytes, &Record)> {
        self.guards.iter().flat_map(|(_, g)| g.iter())
    }

    /// About how many bytes applying `op` would add (an upper bound; ≤ 0 for
    /// deletes and expiry changes).
    pub fn growth(&self, op: &Op) -> i64 {
        let Some(key) = op.key() else {
            return 0;
        };
        let current = self.get(key).map_or(0, |r| record_bytes(key.len(), r)) as i64;
        match op {
            Op::Put { value, .. } => (key.len() + value.len()) as i64 + RECORD_OVERHEAD_BYTES as i64 - current,
            Op::Incr { .. } if current == 0 => (key.len() as u64 + RECORD_OVERHEAD_BYTES + COUNTER_SITE_BYTES) as i64,
            Op::Incr { .. } => COUNTER_SITE_BYTES as i64,
            Op::HSet { fields, seen, .. } => {
                let added: u64 =
                    fields.iter().map(|f| xsite_consumer::hash::value_field_bytes(f.field.len(), f.value.len())).sum();
                let cleared = seen.as_ref().map_or(0, |s| s.len() as u64 * xsite_consumer::hash::CLEARED_SITE_BYTES);
                let fresh =
                    if current == 0 { key.len() as u64 + RECORD_OVERHEAD_BYTES + HASH_OVERHEAD_BYTES } else { 0 };
                (added + cleared + fresh) as i64
            }
            Op::HIncr { field, .. } | Op::HIncrFloat { field, .. } => {
                let fresh =
                    if current == 0 { key.len() as u64 + RECORD_OVERHEAD_BYTES + HASH_OVERHEAD_BYTES } else { 0 };
                (fresh + xsite_consumer::hash::counter_field_bytes(field.len())) as i64
            }
            Op::ZAdd { members, seen, .. } => {
                let added: u64 = members
                    .iter()
                    .map(|m| {
                        xsite_consumer::set::new_element_bytes(m.member.len())
                            + xsite_consumer::hash::value_field_bytes(m.member.len(), 8)
                    })
                    .sum();
                let cleared = seen.as_ref().map_or(0, |s| s.len() as u64 * xsite_consumer::hash::CLEARED_SITE_BYTES);
                let fresh =
                    if current == 0 { key.len() as u64 + RECORD_OVERHEAD_BYTES + HASH_OVERHEAD_BYTES } else { 0 };
                (added + cleared + fresh) as i64
            }
            Op::ZIncr { member, .. } => {
                let fresh =
                    if current == 0 { key.len() as u64 + RECORD_OVERHEAD_BYTES + HASH_OVERHEAD_BYTES } else { 0 };
                (fresh
                    + xsite_consumer::set::new_element_bytes(member.len())
                    + xsite_consumer::hash::counter_field_bytes(member.len())) as i64
            }
            Op::SAdd { members, seen, .. } => {
                let added: u64 = members.iter().map(|m| xsite_consumer::set::new_element_bytes(m.len())).sum();
                let cleared = seen.as_ref().map_or(0, |s| s.len() as u64 * xsite_consumer::hash::CLEARED_SITE_BYTES);
                let fresh =
                    if current == 0 { key.len() as u64 + RECORD_OVERHEAD_BYTES + HASH_OVERHEAD_BYTES } else { 0 };
                (added + cleared + fresh) as i64
            }
            _ => 0,
        }
    }

    /// Refuses a local write whose ops would grow the store past the memory limit, or
    /// one of whose entries would be too large to replicate.
    pub fn admit<'o>(&self, ops: impl IntoIterator<Item = &'o Op>) -> Result<(), Refusal> {
        // Without a memory limit every growth is admitted: not worth a lookup.
        let limited = self.store.gauge.limit_bytes() != 0;
        let mut growth = 0i64;
        for op in ops {
            self.store.check_entry_size(op)?;
            if limited {
                growth += self.growth(op);
            }
        }
        if self.store.gauge.admits(growth) {
            Ok(())
        } else {
            Err(Refusal::OutOfMemory)
        }
    }

    /// Joins `op` at `version` into its key's record. Returns whether it changed.
    pub fn apply(&mut self, version: &Version, op: &Op) -> bool {
        let Some(key) = op.key() else {
            return false;
        };
        let store = self.store;
        if op.is_collection() {
            store.note_collection();
        }
        let changed = self.shard_mut(key).apply(store.policy(), &store.gauge, version, op);
        if changed && matches!(op, Op::LPut { .. }) {
            store.list_puts.notify_waiters();
        }
        changed
    }
}

#[cfg(test)]
mod tests;
