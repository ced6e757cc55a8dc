//! One simulated site: the real store and clock, driven as the engine drives them.
//!
//! - **Local writes** run the real command (`xsite_node::commands::run`) against a
//!   `Ctx` as `Ctx::for_cache` makes it: at `commands::command_time_ms` of the site's
//!   wall clock, with the highest floor the site collected with since it started
//!   (`Engine::collection_floor`); the entries it queues are appended to the WAL.
//!   The command takes its timestamp with `HlcClock::now()` (the host's wall clock);
//!   simulated times are far above it (year ~4200), so priming the clock with
//!   `now_at(wall)` first makes that timestamp the one a clock reading `wall` gives.
//! - **The WAL** is a list of entries with a durable prefix. `everysec` makes it
//!   durable at `Sync` steps, `always` at every append. Durable local entries are
//!   shipped (the outbox), never others.
//! - **Remote apply** is `Engine::apply_remote`: learn a higher epoch
//!   (`Roles::admit`), then, for an entry with a key, observe its timestamp, join, and
//!   append it to the WAL if it changed anything. The WAL end after it is the
//!   consumer's barrier: the entry is durably applied once the WAL is durable there.
//! - **Watermarks** are the node's (`engine::watermark`, `replication::watermarks`,
//!   `ConsumerStats`): the site's own one is a clock reading taken as a candidate
//!   with a barrier (the WAL end) and confirmed once that much is durable — here,
//!   shipped; of another origin, the highest own watermark in that origin's
//!   heartbeats counted here. A heartbeat counts once it, and so every entry before
//!   it in its topic, is durably applied (the consumer records it after the batch's
//!   barrier is durable); the latest counted one is that site's report. A restart
//!   forgets them all (they live in memory), and the own watermark with them: it is
//!   derived anew from the tracker, which starts empty.
//! - **Promises** (`engine::watermark::Promises`, in sled, flushed before they are
//!   used): the highest own watermark confirmed and the collection floor
//!   (`Engine::collection_floor`). A restart, after a kill -9 or a power cut, keeps
//!   both (`Engine::keep_promises`).
//! - **Restart** rebuilds the store from the snapshot and the WAL that survived, in
//!   WAL order (`Wal::replay`: an INCR from nothing after a floor does not commute
//!   with the record below the floor it takes as nothing), starts the clock as
//!   `Recovered::clock_floor` does and raises it to the kept watermark
//!   (`HlcClock::raise_to`), so it never again issues a timestamp at or below one it
//!   promised. The epoch and primary survive (sled).

use super::case::{key_name, site_name, MAX_SKEW_MS, WINDOW_MS};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// What a heartbeat carries: per origin, a timestamp up to which the sender has
/// applied (of itself: shipped) everything of it.
pub type Watermarks = BTreeMap<SiteId, Hlc>;

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
    /// Every site of the case (`CacheStore::with_sites`).
    sites: Vec<SiteId>,
    /// `Engine::collection_floor`: kept on disk before anything is collected below
    /// it (`watermark::Promises`), so a restart keeps it.
    collection_floor: Hlc,
    always: bool,
    /// WAL records after the snapshot; `log[0]` is at `log_start`.
    log: Vec<LogEntry>,
    log_start: u64,
    /// Every record below this position is durable.
    durable: u64,
    snapshot: Option<Snapshot>,
    /// Local entries made durable since the world last took them: ready to ship.
    pub outbox: Vec<LogEntry>,
    /// Remote entries applied, with the WAL end after applying each (the barrier).
    applied: HashMap<EntryRef, u64>,
    /// Remote entries ever applied here (a power cut does not undo this).
    ever_applied: HashSet<EntryRef>,
    /// Per origin, its heartbeats (with watermarks) applied since the last restart:
    /// by index in its topic, the barrier and the watermarks it carries.
    beats: BTreeMap<usize, BTreeMap<usize, (u64, Watermarks)>>,
    /// The own watermark: confirmed, and candidates waiting for their barrier.
    watermark: Option<Hlc>,
    candidates: Vec<(Hlc, u64)>,
    /// The highest own watermark ever confirmed: kept on disk before it is
    /// confirmed (`watermark::Promises`), so a restart keeps it.
    watermark_high: Hlc,
    /// Active-passive cache (else the epoch stays 0 and every site writes).
    passive: bool,
    pub epoch: u64,
    pub primary: Option<usize>,
}

impl Site {
    pub fn new(index: usize, sites: usize, policy: String, always: bool, primary: Option<usize>, wall: u64) -> Site {
        let sites: Vec<SiteId> = (0..sites).map(|i| SiteId::new(site_name(i)).expect("valid site id")).collect();
        let store = make_store(&policy, &sites);
        Site {
            index,
            id: SiteId::new(site_name(index)).expect("valid site id"),
            wall,
            clock: HlcClock::new(Hlc::ZERO, MAX_SKEW_MS),
            store,
            policy,
            sites,
            collection_floor: Hlc::ZERO,
            always,
            log: Vec::new(),
            log_start: 0,
            durable: 0,
            snapshot: None,
            outbox: Vec::new(),
            applied: HashMap::new(),
            ever_applied: HashSet::new(),
            beats: BTreeMap::new(),
            watermark: None,
            candidates: Vec::new(),
            watermark_high: Hlc::ZERO,
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
        let now_ms = commands::command_time_ms(&self.clock, self.wall);
        self.clock.now_at(self.wall);
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        let (reply, pending) = {
            let mut ctx = Ctx::new(&self.id, &self.clock, &self.store, self.epoch, now_ms)
                .with_floor(self.collection_floor, MAX_SKEW_MS);
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

    /// Runs a transaction's commands as `EXEC` does: in a row, their entries
    /// appended as one record (a transaction unit when there are two or more).
    pub fn transaction(&mut self, commands: &[Vec<Vec<u8>>]) -> Option<(Vec<Frame>, Vec<LogEntry>)> {
        if self.read_only() {
            return None;
        }
        let now_ms = commands::command_time_ms(&self.clock, self.wall);
        self.clock.now_at(self.wall);
        let (mut replies, mut pending) = (Vec::new(), Vec::new());
        for args in commands {
            let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            let mut ctx = Ctx::new(&self.id, &self.clock, &self.store, self.epoch, now_ms)
                .with_floor(self.collection_floor, MAX_SKEW_MS);
            replies.push(commands::run(&mut ctx, &args).expect("a cache command"));
            assert!(ctx.refused.is_none(), "nothing here is too large to replicate");
            pending.append(&mut ctx.pending);
        }
        let record = match pending.len() {
            0 => None,
            1 => Some(pending[0].clone()),
            _ => Some(LogEntry::unit(pending.clone())),
        };
        if let Some(mut record) = record {
            record.seq = self.end();
            self.append(record);
        }
        Some((replies, pending))
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
                self.outbox.push(e.clone());
            }
        }
        self.durable = self.end();
    }

    /// Consumes a remote entry as the consumer and `Engine::apply_remote` do. Returns
    /// whether it changed the store, and whether this site had never applied it.
    pub fn deliver(&mut self, at: EntryRef, entry: &LogEntry) -> (bool, bool) {
        assert_ne!(at.0, self.index, "a site never consumes its own entries");
        if self.passive && entry.epoch > self.epoch {
            self.epoch = entry.epoch;
            self.primary = Some(at.0);
        }
        let changed = match &entry.op {
            Op::Heartbeat { .. } => false,
            _ => {
                // A unit: every member joined in a row, nothing in between.
                self.clock.observe_at(entry.hlc, self.wall);
                let members = entry.members();
                members.iter().fold(false, |changed, m| self.store.apply(&m.version(), &m.op) | changed)
            }
        };
        if changed {
            self.append(entry.clone());
        }
        let barrier = self.end();
        self.applied.entry(at).and_modify(|b| *b = (*b).min(barrier)).or_insert(barrier);
        if let Op::Heartbeat { applied } = &entry.op {
            // An empty one (an epoch announcement, a head marker) says nothing.
            if !applied.is_empty() {
                self.beats.entry(at.0).or_default().insert(at.1, (barrier, applied.clone()));
            }
        }
        (changed, self.ever_applied.insert(at))
    }

    /// Heartbeats of `origin` that count: durably applied since the last restart.
    fn counted(&self, origin: usize) -> impl Iterator<Item = &Watermarks> {
        let durable = self.durable;
        self.beats.get(&origin).into_iter().flat_map(|b| b.values()).filter(move |(b, _)| *b <= durable).map(|(_, m)| m)
    }

    /// `ConsumerStats::origin_watermark`: up to which timestamp every entry of
    /// `origin` is applied here — the highest own watermark its counted heartbeats
    /// carry.
    pub fn origin_watermark(&self, origin: usize, id: &SiteId) -> Option<Hlc> {
        self.counted(origin).filter_map(|m| m.get(id).copied()).max()
    }

    /// `ConsumerStats::reported_watermarks`: what `origin`'s latest counted heartbeat
    /// says it applied (empty until one counts).
    pub fn reported(&self, origin: usize) -> Watermarks {
        self.counted(origin).last().cloned().unwrap_or_default()
    }

    /// `replication::watermarks`: the own watermark and, per other origin, its
    /// origin watermark — what a heartbeat of this site carries.
    pub fn watermarks(&self, ids: &[SiteId]) -> Watermarks {
        let mut marks: Watermarks = ids
            .iter()
            .enumerate()
            .filter(|(o, _)| *o != self.index)
            .filter_map(|(o, id)| self.origin_watermark(o, id).map(|h| (id.clone(), h)))
            .collect();
        if let Some(own) = self.watermark {
            marks.insert(self.id.clone(), own);
        }
        marks
    }

    /// One tick of `engine::watermark::track`: a candidate (a clock reading, with the
    /// WAL end as its barrier), then every candidate whose barrier is covered —
    /// durable, so shipped — is confirmed.
    pub fn tick_watermark(&mut self) {
        let w = self.clock.now_at(self.wall);
        self.candidates.push((w, self.end()));
        let durable = self.durable;
        for (w, _) in self.candidates.iter().filter(|(_, b)| *b <= durable) {
            self.watermark = Some(self.watermark.map_or(*w, |m| m.max(*w)));
            self.watermark_high = self.watermark_high.max(*w);
        }
        self.candidates.retain(|(_, b)| *b > durable);
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
        let entry = self.epoch_entry(self.end());
        self.append(entry);
        true
    }

    /// The epoch announcement a promotion appends to the WAL (no watermarks).
    fn epoch_entry(&mut self, seq: u64) -> LogEntry {
        self.heartbeat_entry(seq, BTreeMap::new())
    }

    /// A heartbeat carrying `applied` (the shipper's, not in the WAL: `seq` 0).
    pub fn heartbeat_entry(&mut self, seq: u64, applied: Watermarks) -> LogEntry {
        LogEntry {
            id: LogEntry::new_id(),
            origin: self.id.clone(),
            seq,
            hlc: self.clock.now_at(self.wall),
            epoch: self.epoch,
            cache: cache_name(),
            op: Op::Heartbeat { applied },
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
    /// applies it held); a process crash loses nothing written. Either way what sled
    /// flushed survives (`Engine::keep_promises`): the clock is raised to the highest
    /// own watermark confirmed, and the collection floor stays where it was.
    pub fn restart(&mut self, power_cut: bool) {
        if power_cut {
            self.log.truncate((self.durable - self.log_start) as usize);
            let durable = self.durable;
            self.applied.retain(|_, b| *b <= durable);
        } else {
            self.sync();
        }
        // What the consumers and the watermark tracker knew lived in memory.
        self.beats.clear();
        self.watermark = None;
        self.candidates.clear();
        let store = make_store(&self.policy, &self.sites);
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
        for entry in self.log.iter().flat_map(LogEntry::members) {
            see(&entry.origin, entry.hlc);
            if let Op::Incr { base, .. } = &entry.op {
                see(&base.site, base.hlc);
            }
            if entry.op.key().is_some() {
                store.apply(&entry.version(), &entry.op);
            }
        }
        let bound = Hlc::new(self.wall.saturating_add(MAX_SKEW_MS), u16::MAX);
        let floor = local.max(remote.min(bound)).max(high);
        self.clock = HlcClock::new(floor, MAX_SKEW_MS);
        self.clock.raise_to(self.watermark_high);
        self.store = store;
    }

    /// Tombstone collection below `floor`, as `Engine::gc_tombstones` does it (with
    /// the clock's `max_skew_ms`). Returns the keys it removed.
    pub fn collect(&mut self, floor: Hlc) -> Vec<Vec<u8>> {
        let keys: Vec<Vec<u8>> = (0..super::case::KEYS).map(key_name).collect();
        let before: Vec<bool> = keys.iter().map(|k| self.store.read(k, |r| r.is_some())).collect();
        self.collection_floor = self.collection_floor.max(floor);
        self.store.gc_tombstones(floor, MAX_SKEW_MS);
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

    /// What `GET` (for a hash: `HGETALL`, its fields framed; for a set: `SMEMBERS`)
    /// and `PEXPIRETIME`
    /// reply for `key` at `now_ms`.
    pub fn observe(&self, key: &[u8], now_ms: u64) -> Observed {
        let mut ctx = Ctx::new(&self.id, &self.clock, &self.store, self.epoch, now_ms);
        let key = Bytes::copy_from_slice(key);
        let kind = commands::run(&mut ctx, &[Bytes::from_static(b"type"), key.clone()]);
        let get = match kind {
            Some(Frame::Simple(t)) if t == "hash" => {
                match commands::run(&mut ctx, &[Bytes::from_static(b"hgetall"), key.clone()]) {
                    Some(Frame::Map(pairs)) => {
                        let mut framed = b"*hash".to_vec();
                        for pair in pairs {
                            let (Frame::Bulk(f), Frame::Bulk(v)) = pair else { panic!("HGETALL gave {pair:?}") };
                            framed.extend_from_slice(format!(" {}={}", show(&f), show(&v)).as_bytes());
                        }
                        Some(Frame::Bulk(Bytes::from(framed)))
                    }
                    other => panic!("HGETALL of a hash gave {other:?}"),
                }
            }
            Some(Frame::Simple(t)) if t == "zset" => {
                let args = [
                    Bytes::from_static(b"zrange"),
                    key.clone(),
                    Bytes::from_static(b"0"),
                    Bytes::from_static(b"-1"),
                    Bytes::from_static(b"withscores"),
                ];
                match commands::run(&mut ctx, &args) {
                    Some(Frame::Pairs(pairs)) => {
                        let mut framed = b"*zset".to_vec();
                        for pair in pairs {
                            let (Frame::Bulk(m), Frame::Double(s)) = pair else { panic!("ZRANGE gave {pair:?}") };
                            framed.extend_from_slice(format!(" {}={s}", show(&m)).as_bytes());
                        }
                        Some(Frame::Bulk(Bytes::from(framed)))
                    }
                    other => panic!("ZRANGE of a sorted set gave {other:?}"),
                }
            }
            Some(Frame::Simple(t)) if t == "list" => {
                let args =
                    [Bytes::from_static(b"lrange"), key.clone(), Bytes::from_static(b"0"), Bytes::from_static(b"-1")];
                match commands::run(&mut ctx, &args) {
                    Some(Frame::Array(values)) => {
                        let mut framed = b"*list".to_vec();
                        for v in values {
                            let Frame::Bulk(v) = v else { panic!("LRANGE gave {v:?}") };
                            framed.extend_from_slice(format!(" {}", show(&v)).as_bytes());
                        }
                        Some(Frame::Bulk(Bytes::from(framed)))
                    }
                    other => panic!("LRANGE of a list gave {other:?}"),
                }
            }
            Some(Frame::Simple(t)) if t == "set" => {
                match commands::run(&mut ctx, &[Bytes::from_static(b"smembers"), key.clone()]) {
                    Some(Frame::Set(members)) => {
                        let mut framed = b"*set".to_vec();
                        for m in members {
                            let Frame::Bulk(m) = m else { panic!("SMEMBERS gave {m:?}") };
                            framed.extend_from_slice(format!(" {}", show(&m)).as_bytes());
                        }
                        Some(Frame::Bulk(Bytes::from(framed)))
                    }
                    other => panic!("SMEMBERS of a set gave {other:?}"),
                }
            }
            _ => commands::run(&mut ctx, &[Bytes::from_static(b"get"), key.clone()]),
        };
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

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn make_store(policy: &str, sites: &[SiteId]) -> CacheStore {
    let policy = parse_policy(policy, WINDOW_MS).expect("a built-in policy");
    CacheStore::new(cache_name(), policy, Arc::new(MemoryGauge::new(0))).with_sites(sites.to_vec())
}
