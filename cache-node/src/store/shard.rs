//! One shard of a cache: its records and the indexes kept beside them.
//!
//! Every change to a record goes through [`Shard::apply`] or the expiry/GC helpers,
//! which keep three things exact under the shard's lock:
//! - `values`: records that are not tombstones (what `DBSIZE` counts);
//! - `expiries`: `(expire_at_ms, key)` for every non-tombstone record with an expiry,
//!   so the expiry cycle finds due records without scanning;
//! - `tombstones`: `(max_hlc, key)` for every tombstone, so GC by watermark pops the
//!   old ones without scanning;
//! - `memory_bytes`: the approximate footprint of the shard ([`record_bytes`]).
//!
//! And one history, for `WATCH`: the shard counts the changes made to its records
//! (`changes`), and each record carries the count of the change that last touched it
//! ([`Slot`]); a key changed after a moment iff its record's stamp is above the count
//! at that moment ([`Shard::seen`], [`Shard::changed_since`]). Eight bytes per record
//! and one increment per change.

use super::MemoryGauge;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use xsite_consumer::merge::{apply_to, MergePolicy, Record, Value};
use xsite_schemas::{Hlc, Op, Version};

/// Fixed cost of one record beyond its key and value bytes: the map slot, the two
/// versions (with their shared site names), the value enum, index entries.
pub const RECORD_OVERHEAD_BYTES: u64 = 128;
/// Cost of one site's total in a counter.
pub const COUNTER_SITE_BYTES: u64 = 48;

/// Approximate bytes a record costs: key, value, overhead.
pub fn record_bytes(key_len: usize, rec: &Record) -> u64 {
    let value = match &rec.value {
        Value::Bytes(b) => b.len() as u64,
        Value::Counter(c) => c.totals.len() as u64 * COUNTER_SITE_BYTES,
        Value::Tombstone => 0,
    };
    let hash = rec.hash().map_or(0, |h| h.bytes() + HASH_OVERHEAD_BYTES);
    let set = rec.set().map_or(0, |s| s.bytes() + HASH_OVERHEAD_BYTES);
    let zset = rec.zset().map_or(0, |z| z.bytes() + 2 * HASH_OVERHEAD_BYTES);
    let list = rec.list().map_or(0, |l| l.bytes() + HASH_OVERHEAD_BYTES);
    key_len as u64 + value + hash + set + zset + list + RECORD_OVERHEAD_BYTES
}

/// Fixed cost of a record's hash or set part beyond its elements.
pub const HASH_OVERHEAD_BYTES: u64 = 96;

/// What the indexes need to know about a record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Facts {
    bytes: u64,
    tombstone: bool,
    expire_at_ms: Option<u64>,
    max_hlc: Hlc,
}

impl Facts {
    fn of(key_len: usize, rec: &Record) -> Facts {
        Facts {
            bytes: record_bytes(key_len, rec),
            tombstone: rec.is_tombstone(),
            expire_at_ms: rec.expire_at_ms(),
            max_hlc: rec.max_hlc(),
        }
    }

    /// What the key-holding indexes (`expiries`, `tombstones`) hold for the record.
    fn indexed(&self) -> (Option<u64>, Option<Hlc>) {
        (self.expiry(), self.tombstone.then_some(self.max_hlc))
    }

    /// The expiry index entry: only live-valued records with an expiry have one.
    fn expiry(&self) -> Option<u64> {
        if self.tombstone {
            None
        } else {
            self.expire_at_ms
        }
    }
}

/// A record, its key, and the change that last touched it. 128 bytes, a jemalloc
/// size class (see [`Record`] for how the record keeps to 88).
#[derive(Debug)]
pub(super) struct Slot {
    key: Bytes,
    pub(super) rec: Record,
    /// The shard's `changes` count when this record last changed.
    changed: u64,
}

/// How a key stood at a moment (`WATCH`): the shard's change count then, and whether
/// the key was live. The default is the start of history, the key absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    changes: u64,
    live: bool,
}

/// A shard's records by key: a table of pointers to boxes that each hold their key
/// and record, 8 bytes a bucket (a map from `Bytes` to boxes pays 40, and a table
/// has up to twice as many buckets as records). Hashed with foldhash: several times
/// faster than std's SipHash on short keys, and seeded per process, so keys cannot
/// be chosen to collide.
#[derive(Default, Debug)]
pub(super) struct Table {
    slots: hashbrown::HashTable<Box<Slot>>,
    hasher: foldhash::fast::RandomState,
}

impl Table {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    fn get(&self, key: &[u8]) -> Option<&Slot> {
        self.slots.find(self.hash(key), |s| s.key == key).map(|s| &**s)
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut Slot> {
        let hash = self.hash(key);
        self.slots.find_mut(hash, |s| s.key == key).map(|s| &mut **s)
    }

    /// The slot of a key the indexes name: it is in the table.
    fn at(&self, key: &[u8]) -> &Slot {
        self.get(key).expect("indexes follow the map")
    }

    fn remove(&mut self, key: &[u8]) -> Option<Box<Slot>> {
        let hash = self.hash(key);
        self.slots.find_entry(hash, |s| s.key == key).ok().map(|e| e.remove().0)
    }

    /// Adds a slot whose key is not in the table.
    fn insert(&mut self, slot: Box<Slot>) {
        let hash = self.hash(&slot.key);
        let hasher = &self.hasher;
        self.slots.insert_unique(hash, slot, |s| hasher.hash_one(&s.key[..]));
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> + Clone {
        self.slots.iter().map(|s| &**s)
    }
}

#[derive(Default, Debug)]
pub struct Shard {
    pub(super) map: Table,
    /// Changes made to this shard's records so far; each stamps its record.
    changes: u64,
    /// The highest stamp of a record collection removed ([`Shard::gc`]): a key
    /// without a record may have changed after any moment before it.
    removed_stamp: u64,
    expiries: BTreeSet<(u64, Bytes)>,
    tombstones: BTreeSet<(Hlc, Bytes)>,
    values: usize,
    memory_bytes: u64,
    /// The expiry cycle has counted every entry of `expiries` up to this one.
    expiries_counted: (u64, Bytes),
    /// Keys whose list part holds removed places: collection prunes them
    /// ([`Shard::gc`]).
    pruneable: BTreeSet<Bytes>,
}

impl Shard {
    pub fn get(&self, key: &[u8]) -> Option<&Record> {
        self.map.get(key).map(|s| &s.rec)
    }

    /// How `key` stands now, to ask [`Shard::changed_since`] later.
    pub fn seen(&self, key: &[u8], now_ms: u64) -> Seen {
        Seen { changes: self.changes, live: self.get(key).is_some_and(|r| r.is_live(now_ms)) }
    }

    /// Whether `key` changed since it stood as `seen`: a change joined into its
    /// record (a local write, a remote entry, a flush), or it was live then and is
    /// not at `now_ms` (it expired). When collection removed its record, any change
    /// to a record collection removed since counts (a removed record leaves no stamp).
    pub fn changed_since(&self, key: &[u8], seen: Seen, now_ms: u64) -> bool {
        let stamp = self.map.get(key).map_or(self.removed_stamp, |s| s.changed);
        let live = self.get(key).is_some_and(|r| r.is_live(now_ms));
        stamp > seen.changes || (seen.live && !live)
    }

    /// Records that are not tombstones (expired ones not yet reclaimed included).
    pub fn values(&self) -> usize {
        self.values
    }

    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Non-tombstone records with an expiry time.
    pub fn expires(&self) -> usize {
        self.expiries.len()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Record)> + Clone {
        self.map.iter().map(|s| (&s.key, &s.rec))
    }

    /// The stamp of the next change.
    fn stamp(&mut self) -> u64 {
        self.changes += 1;
        self.changes
    }

    /// Joins `op` at `version` into the key's record (see [`apply`]); keeps the
    /// indexes and the memory gauge exact. Returns whether the record changed.
    pub fn apply(&mut self, policy: &dyn MergePolicy, gauge: &MemoryGauge, version: &Version, op: &Op) -> bool {
        let Some(key) = op.key() else {
            return false;
        };
        let changed = match self.map.get_mut(key) {
            // Joined in place: no new box, no second lookup.
            Some(slot) => {
                let before = Facts::of(slot.key.len(), &slot.rec);
                let changed = apply_to(policy, &mut slot.rec, version, op);
                let after = Facts::of(slot.key.len(), &slot.rec);
                if changed {
                    self.changes += 1;
                    slot.changed = self.changes;
                }
                // The key is cloned (a reference count) only when an index holds it.
                let prune = changed && matches!(op, Op::LRem { .. });
                let key = (before.indexed() != after.indexed() || prune).then(|| slot.key.clone());
                match key {
                    Some(key) => {
                        self.reindex(&key, Some(before), Some(after), gauge);
                        if prune {
                            self.pruneable.insert(key);
                        }
                    }
                    None => self.recount(Some(before), Some(after), gauge),
                }
                changed
            }
            None => {
                let mut rec = Record::empty();
                let changed = apply_to(policy, &mut rec, version, op);
                // A record the op did not change and that did not exist: leave no trace.
                if changed {
                    let map_key = Bytes::copy_from_slice(key);
                    let after = Facts::of(map_key.len(), &rec);
                    self.reindex(&map_key, None, Some(after), gauge);
                    if matches!(op, Op::LRem { .. }) {
                        self.pruneable.insert(map_key.clone());
                    }
                    let changed = self.stamp();
                    self.map.insert(Box::new(Slot { key: map_key, rec, changed }));
                }
                changed
            }
        };
        self.check_counts();
        changed
    }

    /// Puts a record read from a snapshot, replacing what the key held (snapshots
    /// are loaded into an empty store).
    pub fn load(&mut self, key: &[u8], rec: Record, gauge: &MemoryGauge) {
        let (map_key, before) = match self.map.remove(key) {
            Some(old) => {
                let facts = Facts::of(old.key.len(), &old.rec);
                (old.key, Some(facts))
            }
            None => (Bytes::copy_from_slice(key), None),
        };
        let after = Facts::of(map_key.len(), &rec);
        self.reindex(&map_key, before, Some(after), gauge);
        let changed = self.stamp();
        if rec.list().is_some_and(|l| !l.removed.is_empty()) {
            self.pruneable.insert(map_key.clone());
        }
        self.map.insert(Box::new(Slot { key: map_key, rec, changed }));
        self.check_counts();
    }

    /// Counts the records whose expiry time passed since the last call (at most
    /// `keys_max`), for `expired_keys`. It changes nothing: an expired record keeps
    /// both registers, because an entry still on its way (a `PERSIST` made at another
    /// site just before the expiry) may order around them; only [`Shard::gc`] may
    /// drop it, once no such entry can exist. Without replication no such entry can
    /// ever come, and `reclaim` frees the values of the due records at once (they
    /// become tombstones that keep both versions and the expiry time).
    pub fn expire_due(
        &mut self,
        now_ms: u64,
        keys_max: usize,
        reclaim: bool,
        gauge: &MemoryGauge,
        on_expired: &mut dyn FnMut(&[u8]),
    ) -> usize {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = if reclaim { Unbounded } else { Excluded(self.expiries_counted.clone()) };
        let due: Vec<(u64, Bytes)> = self
            .expiries
            .range((start, Unbounded))
            .take_while(|(at, _)| *at <= now_ms)
            .take(keys_max)
            .cloned()
            .collect();
        if let Some(last) = due.last() {
            self.expiries_counted = last.clone();
        }
        due.iter().for_each(|(_, key)| on_expired(key));
        if reclaim {
            // Only the value's bytes go: both versions and the expiry stay, so what
            // later writes do (an INCR counts on a fresh base) is what replaying the
            // WAL, which runs no expiry cycle, does too. No stamp: the key stopped
            // being live at its expiry time, which `changed_since` sees by itself.
            for (_, key) in &due {
                let rec = &mut self.map.get_mut(key).expect("expiry index follows the map").rec;
                let before = Facts::of(key.len(), rec);
                rec.value = Value::Tombstone;
                if let Some(h) = rec.hash_mut() {
                    h.reclaim();
                }
                if let Some(s) = rec.set_mut() {
                    s.reclaim();
                }
                if let Some(z) = rec.zset_mut() {
                    z.reclaim();
                }
                if let Some(l) = rec.list_mut() {
                    l.reclaim();
                }
                let after = Facts::of(key.len(), rec);
                self.reindex(key, Some(before), Some(after), gauge);
            }
        }
        self.check_counts();
        due.len()
    }

    /// Expired records kept (see [`Shard::expire_due`]) at `now_ms`, and their bytes.
    pub fn expired_retained(&self, now_ms: u64) -> (u64, u64) {
        self.expiries
            .range(..(now_ms.saturating_add(1), Bytes::new()))
            .fold((0, 0), |(n, bytes), (_, k)| (n + 1, bytes + record_bytes(k.len(), &self.map.at(k).rec)))
    }

    /// Removes the records `collectable` says no entry can order around any more:
    /// it is asked of the tombstones whose versions are all below `below`, and of
    /// the expired records whose expiry time is `skew_ms` behind its wall time.
    pub fn gc(
        &mut self,
        below: Hlc,
        skew_ms: u64,
        collectable: &dyn Fn(&Record) -> bool,
        gauge: &MemoryGauge,
    ) -> usize {
        let expired_before = below.wall_ms().saturating_sub(skew_ms);
        let tombstones = self.tombstones.range(..(below, Bytes::new())).map(|(_, k)| k);
        let expired = self.expiries.range(..(expired_before, Bytes::new())).map(|(_, k)| k);
        let doomed: Vec<Bytes> =
            tombstones.chain(expired).filter(|k| collectable(&self.map.at(k).rec)).cloned().collect();
        for key in &doomed {
            let slot = self.map.remove(key).expect("indexes follow the map");
            self.removed_stamp = self.removed_stamp.max(slot.changed);
            let before = Facts::of(key.len(), &slot.rec);
            self.reindex(key, Some(before), None, gauge);
        }
        self.prune_lists(below, gauge);
        self.check_counts();
        doomed.len()
    }

    /// Drops the removed places below `below` of every list that holds some
    /// ([`xsite_consumer::list::List::prune`]): what a queue popped forever would
    /// otherwise keep. Nothing visible changes, so no record is stamped.
    fn prune_lists(&mut self, below: Hlc, gauge: &MemoryGauge) {
        let keys: Vec<Bytes> = self.pruneable.iter().cloned().collect();
        for key in keys {
            let Some(slot) = self.map.get_mut(&key) else {
                self.pruneable.remove(&key);
                continue;
            };
            let before = Facts::of(key.len(), &slot.rec);
            let Some(list) = slot.rec.list_mut() else {
                self.pruneable.remove(&key);
                continue;
            };
            list.prune(below);
            if list.removed.is_empty() {
                self.pruneable.remove(&key);
            }
            let after = Facts::of(key.len(), &slot.rec);
            self.reindex(&key, Some(before), Some(after), gauge);
        }
    }

    /// Every record is a value or a tombstone, and the indexes agree with the map.
    fn check_counts(&self) {
        debug_assert_eq!(self.values + self.tombstones.len(), self.map.len());
    }

    fn reindex(&mut self, key: &Bytes, before: Option<Facts>, after: Option<Facts>, gauge: &MemoryGauge) {
        if before == after {
            return;
        }
        self.recount(before, after, gauge);
        let old_expiry = before.and_then(|f| f.expiry());
        let new_expiry = after.and_then(|f| f.expiry());
        if old_expiry != new_expiry {
            if let Some(at) = old_expiry {
                self.expiries.remove(&(at, key.clone()));
            }
            if let Some(at) = new_expiry {
                self.expiries.insert((at, key.clone()));
            }
        }
        let old_tomb = before.filter(|f| f.tombstone).map(|f| f.max_hlc);
        let new_tomb = after.filter(|f| f.tombstone).map(|f| f.max_hlc);
        if old_tomb != new_tomb {
            if let Some(h) = old_tomb {
                self.tombstones.remove(&(h, key.clone()));
            }
            if let Some(h) = new_tomb {
                self.tombstones.insert((h, key.clone()));
            }
        }
    }

    /// The counts and the memory gauge for a record's change (what [`Self::reindex`]
    /// keeps beside the key-holding indexes).
    fn recount(&mut self, before: Option<Facts>, after: Option<Facts>, gauge: &MemoryGauge) {
        let was_value = before.is_some_and(|f| !f.tombstone);
        let is_value = after.is_some_and(|f| !f.tombstone);
        match (was_value, is_value) {
            (false, true) => self.values += 1,
            (true, false) => self.values -= 1,
            _ => {}
        }
        let old_bytes = before.map_or(0, |f| f.bytes);
        let new_bytes = after.map_or(0, |f| f.bytes);
        if old_bytes != new_bytes {
            self.memory_bytes = self.memory_bytes + new_bytes - old_bytes;
            gauge.add(new_bytes as i64 - old_bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A key's slot is one allocation, which jemalloc (the node's allocator) rounds
    /// up to its size class: 128 is one, the next is 160. At 129 bytes every string
    /// key would pay 32 more.
    #[test]
    fn a_slot_fills_jemallocs_128_byte_class() {
        assert_eq!(std::mem::size_of::<super::Slot>(), 128);
    }
}
