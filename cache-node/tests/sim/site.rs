//! One simulated site: the real store and clock, driven as the engine drives them.
//!
//! - **Local writes** run the real command (`xsite_node::commands::run`) against a
//!   `Ctx` at the site's wall clock; the entries it queues are appended to the WAL.
//!   The command takes its timestamp with `HlcClock::now()` (the host's wall clock);
//!   simulated times are far above it (year ~4200), so priming the clock with
//!   `now_at(wall)` first makes that timestamp the one a clock reading `wall` gives.
//! - **The WAL** is a list of entries with a durable prefix. `everysec` makes it
//!   durable at `Sync` steps, `always` at every append. Durable local entries are
//!   shipped (the outbox), never others.
//! - **Remote apply** is `Engine::apply_remote`: observe the timestamp, learn a higher
//!   epoch (`Roles::admit`), join, append to the WAL if it changed anything. An entry
//!   counts as applied for the collection floor only once the WAL is durable up to the
//!   position reached after applying it (the consumer's barrier).
//! - **Restart** rebuilds the store from the snapshot and the WAL that survived (in a
//!   shuffled order: replay is a join) and starts the clock as `Recovered::clock_floor`
//!   does. The epoch and primary survive (sled).

use super::case::{key_name, site_name, MAX_SKEW_MS, WINDOW_MS};
use super::Rng;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use xsite_consumer::merge::{parse_policy, Record, Value};
use xsite_node::commands::{self, Ctx};
use xsite_node::resp::Frame;
use xsite_node::store::{CacheStore, MemoryGauge, SHARDS};
use xsite_schemas::{CacheName, Hlc, HlcClock, LogEntry, Op, SiteId};

/// Simulated true time starts here: far above any host clock (see the module docs).
pub const BASE_MS: u64 = 1 << 46;

/// An entry of a topic: (origin site, index in its topic).
pub type EntryRef = (usize, usize);

/// What a client sees of a key: its value and absolute expiry (`PEXPIRETIME`).
pub type Observed = Option<(Vec<u8>, Option<u64>)>;

pub fn cache_name() -> CacheName {
    CacheName::new("sim").expect("valid cache name")
}

struct Snapshot {
    records: Vec<(Vec<u8>, Record)>,
    /// The clock when it was taken.
    hlc_high: Hlc,
}

pub struct Site {
    pub index: usize,
    pub id: SiteId,
    pub wall: u64,
    pub clock: HlcClock,
    pub store: CacheStore,
    policy: String,
    always: bool,
    /// WAL records after the snapshot; `log[0]` is at `log_start`.
    log: Vec<LogEntry>,
    log_start: u64,
    /// Every record below this position is durable.
    durable: u64,
    snapshot: Option<Snapshot>,
    /// Local entries made durable since the world last took them: ready to ship.
    pub outbox: Vec<LogEntry>,
    /// The highest timestamp of a durable local entry.
    pub max_local_durable: Hlc,
    /// Remote entries applied, with the WAL end after applying each (the barrier).
    applied: HashMap<EntryRef, u64>,
    /// Active-passive cache (else the epoch stays 0 and every site writes).
    passive: bool,
    pub epoch: u64,
    pub primary: Option<usize>,
}

impl Site {
    pub fn new(index: usize, policy: String, always: bool, primary: Option<usize>, wall: u64) -> Site {
        let store = make_store(&policy);
        Site {
            index,
            id: SiteId::new(site_name(index)).expect("valid site id"),
            wall,
            clock: HlcClock::new(Hlc::ZERO, MAX_SKEW_MS),
            store,
            policy,
            always,
            log: Vec::new(),
            log_start: 0,
            durable: 0,
            snapshot: None,
            outbox: Vec::new(),
            max_local_durable: Hlc::ZERO,
            applied: HashMap::new(),
            passive: primary.is_some(),
            epoch: 0,
            primary,
        }
    }

    /// The engine refuses writes with `-READONLY`.
    pub fn read_only(&self) -> bool {
        self.passive && self.primary != Some(self.index)
    }

    fn end(&self) -> u64 {
        self.log_start + self.log.len() as u64
    }

    /// Local entries in the WAL that are not durable yet (they may still ship).
    pub fn undurable_local(&self) -> impl Iterator<Item = &LogEntry> {
        let from = (self.durable - self.log_start) as usize;
        self.log[from..].iter().filter(|e| e.origin == self.id)
    }

    /// Runs a data command as a client of this site; `None`: refused read-only.
    pub fn command(&mut self, args: &[&[u8]]) -> Option<(Frame, Vec<LogEntry>)> {
        if self.read_only() {
            return None;
        }
        self.clock.now_at(self.wall);
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        let (reply, pending) = {
            let mut ctx = Ctx::new(&self.id, &self.clock, &self.store, self.epoch, self.wall);
            let reply = commands::run(&mut ctx, &args).expect("a cache command");
            assert!(ctx.refused.is_none(), "nothing here is too large to replicate");
            (reply, ctx.pending)
        };
        for mut entry in pending.iter().cloned() {
            entry.seq = self.end();
            self.append(entry);
        }
        Some((reply, pending))
    }

    fn append(&mut self, entry: LogEntry) {
        self.log.push(entry);
        if self.always {
            self.sync();
        }
    }

    /// The WAL's fsync: everything written so far becomes durable; local entries go
    /// to the outbox.
    pub fn sync(&mut self) {
        let from = (self.durable - self.log_start) as usize;
        for e in &self.log[from..] {
            if e.origin == self.id {
                self.max_local_durable = self.max_local_durable.max(e.hlc);
                self.outbox.push(e.clone());
            }
        }
        self.durable = self.end();
    }

    /// Consumes a remote entry as the consumer and `Engine::apply_remote` do. Returns
    /// whether it changed the store.
    pub fn deliver(&mut self, at: EntryRef, entry: &LogEntry) -> bool {
        assert_ne!(at.0, self.index, "a site never consumes its own entries");
        self.clock.observe_at(entry.hlc, self.wall);
        if self.passive && entry.epoch > self.epoch {
            self.epoch = entry.epoch;
            self.primary = Some(at.0);
        }
        let changed = entry.op.key().is_some() && self.store.apply(&entry.version(), &entry.op);
        if changed {
            self.append(entry.clone());
        }
        let barrier = self.end();
        self.applied.entry(at).and_modify(|b| *b = (*b).min(barrier)).or_insert(barrier);
        changed
    }

    /// Whether the entry was applied here (durably or not).
    pub fn has_applied(&self, at: EntryRef) -> bool {
        self.applied.contains_key(&at)
    }

    /// Whether the entry was applied here and a power cut cannot undo it.
    pub fn durably_applied(&self, at: EntryRef) -> bool {
        self.applied.get(&at).is_some_and(|b| *b <= self.durable)
    }

    /// `POST /caches/{cache}/promote`: raise the epoch, become primary, announce it
    /// with a heartbeat through the WAL. `false` for an active-active cache.
    pub fn promote(&mut self) -> bool {
        if !self.passive {
            return false;
        }
        self.epoch += 1;
        self.primary = Some(self.index);
        let entry = self.heartbeat_entry(self.end());
        self.append(entry);
        true
    }

    /// The shipper's heartbeat (it carries the site's epoch; it is not in the WAL).
    pub fn heartbeat_entry(&mut self, seq: u64) -> LogEntry {
        LogEntry {
            id: LogEntry::new_id(),
            origin: self.id.clone(),
            seq,
            hlc: self.clock.now_at(self.wall),
            epoch: self.epoch,
            cache: cache_name(),
            op: Op::Heartbeat { applied: BTreeMap::new() },
        }
    }

    /// A snapshot of the store after an fsync; the WAL it covers goes.
    pub fn snapshot(&mut self) {
        self.sync();
        let hlc_high = self.clock.last();
        let records = self.records().into_iter().collect();
        self.log_start = self.end();
        self.log.clear();
        self.snapshot = Some(Snapshot { records, hlc_high });
    }

    /// Restarts the node: a power cut loses the WAL after the durable prefix (and the
    /// applies it held); a process crash loses nothing written.
    pub fn restart(&mut self, power_cut: bool, seed: u64) {
        if power_cut {
            self.log.truncate((self.durable - self.log_start) as usize);
            let durable = self.durable;
            self.applied.retain(|_, b| *b <= durable);
        } else {
            self.sync();
        }
        let store = make_store(&self.policy);
        let (mut local, mut remote, mut high) = (Hlc::ZERO, Hlc::ZERO, Hlc::ZERO);
        let mut see = |site: &SiteId, hlc: Hlc| {
            let max = if *site == self.id { &mut local } else { &mut remote };
            *max = (*max).max(hlc);
        };
        if let Some(snap) = &self.snapshot {
            high = snap.hlc_high;
            for (key, rec) in &snap.records {
                see(&rec.version.site, rec.version.hlc);
                see(&rec.ttl_version.site, rec.ttl_version.hlc);
                if let Value::Counter(c) = &rec.value {
                    for (s, t) in &c.totals {
                        see(s, t.hlc);
                    }
                }
                store.load(key, rec.clone());
            }
        }
        let mut order: Vec<usize> = (0..self.log.len()).collect();
        Rng::new(seed).shuffle(&mut order);
        for i in order {
            let entry = &self.log[i];
            see(&entry.origin, entry.hlc);
            if let Op::Incr { base, .. } = &entry.op {
                see(&base.site, base.hlc);
            }
            if entry.op.key().is_some() {
                store.apply(&entry.version(), &entry.op);
            }
        }
        let bound = Hlc::new(self.wall.saturating_add(MAX_SKEW_MS), u16::MAX);
        self.clock = HlcClock::new(local.max(remote.min(bound)).max(high), MAX_SKEW_MS);
        self.store = store;
    }

    /// Tombstone collection below `floor` (as the engine calls it, with the clock's
    /// `max_skew_ms`, unless told otherwise). Returns the keys it removed.
    pub fn collect(&mut self, floor: Hlc, skew_ms: u64) -> Vec<Vec<u8>> {
        let keys: Vec<Vec<u8>> = (0..super::case::KEYS).map(key_name).collect();
        let before: Vec<bool> = keys.iter().map(|k| self.store.read(k, |r| r.is_some())).collect();
        self.store.gc_tombstones(floor, skew_ms);
        keys.into_iter()
            .zip(before)
            .filter(|(k, had)| *had && self.store.read(k, |r| r.is_none()))
            .map(|(k, _)| k)
            .collect()
    }

    /// Every record, tombstones included, by key.
    pub fn records(&self) -> BTreeMap<Vec<u8>, Record> {
        (0..SHARDS)
            .flat_map(|i| {
                let locked = self.store.lock_shard(i);
                locked.records().map(|(k, r)| (k.to_vec(), r.clone())).collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn is_live(&self, key: &[u8]) -> bool {
        self.store.read(key, |r| r.is_some_and(|r| r.is_live(self.wall)))
    }

    /// What `GET` and `PEXPIRETIME` reply for `key` at `now_ms`.
    pub fn observe(&self, key: &[u8], now_ms: u64) -> Observed {
        let mut ctx = Ctx::new(&self.id, &self.clock, &self.store, self.epoch, now_ms);
        let key = Bytes::copy_from_slice(key);
        let get = commands::run(&mut ctx, &[Bytes::from_static(b"get"), key.clone()]);
        let at = commands::run(&mut ctx, &[Bytes::from_static(b"pexpiretime"), key]);
        assert!(ctx.pending.is_empty(), "reads write nothing");
        match (get, at) {
            (Some(Frame::Null), Some(Frame::Integer(-2))) => None,
            (Some(Frame::Bulk(v)), Some(Frame::Integer(-1))) => Some((v.to_vec(), None)),
            (Some(Frame::Bulk(v)), Some(Frame::Integer(at))) if at > 0 => Some((v.to_vec(), Some(at as u64))),
            other => panic!("GET and PEXPIRETIME disagree: {other:?}"),
        }
    }
}

fn make_store(policy: &str) -> CacheStore {
    let policy = parse_policy(policy, WINDOW_MS).expect("a built-in policy");
    CacheStore::new(cache_name(), policy, Arc::new(MemoryGauge::new(0)))
}
