//! Hashes: the part of a key's [`Record`] that holds fields, and how the hash
//! operations (format version 4) join into it.
//!
//! A hash is a map of fields, each an independent register `(version, state)`:
//! bytes, a counter (`HINCRBY`, on a base like a key's counter), or removed (a
//! field tombstone, `HDEL`). Fields are ordered by their versions alone (last write
//! wins); the cache's merge policy ranks the key's string register, not fields.
//!
//! Deleting a whole hash (`DEL`, `UNLINK`, `RENAME`, `FLUSHDB` of a key that is a
//! hash where the command runs) is observed-remove: the op carries, per site, the
//! highest timestamp of that site's fields the deleting site held (`seen`), joined
//! into [`Hash::cleared`] by pointwise max. A field whose version is at or below
//! `cleared[its site]` is covered: dead. A field written concurrently at another
//! site (not seen) survives. An `HSET` or `HINCRBY` on a key that is not a live
//! hash where it runs carries `seen` too: the fields that site held die, and the
//! key's expiry is reset.
//!
//! Whether a key is a hash, a set or a string is a pure function of its state
//! ([`Record::kind`]), so every site that has joined the same entries answers alike
//! whatever their order:
//! - `Er`, the string register's rank: its version, or for a counter the highest
//!   of that and its totals' timestamps ([`Record::register_rank`]);
//! - `top`, the highest version of every hash op joined ([`Hash::top`]), and the
//!   set part's alike.
//!
//! The key is a hash when `top` ranks above `Er` and the set part's top; then a
//! field is visible when it is not removed, not covered, and ranks above both (so
//! a `SET` or an `SADD` of the key over a hash kills every field older than it). A
//! hash with no visible field does not exist. Otherwise the string register, or
//! the set part, decides.
//!
//! Collection: a record with a hash part is never collected (its field tombstones
//! and `cleared` stay); an expired hash's fields are reclaimed into `cleared`
//! (covered, then dropped: the same visible state at every site).

use crate::merge::Record;
use crate::small_bytes::{SmallBytes, INLINE_BYTES_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xsite_schemas::{FieldValue, Float, Hlc, SiteId, Version};

/// The hash part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hash {
    /// By name. A name is a boxed slice (no spare capacity, no capacity word).
    pub fields: BTreeMap<Box<[u8]>, Field>,
    /// Per site, the highest timestamp of that site's fields a whole-hash delete
    /// saw (pointwise max of every such delete's `seen`).
    pub cleared: BTreeMap<SiteId, Hlc>,
    /// The highest version of every hash op joined.
    pub top: Version,
    /// What the fields take in memory ([`field_bytes`] summed), kept as they change.
    bytes: u64,
}

/// One field: a register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The write's version; for a counter, its base's.
    pub version: Version,
    pub state: FieldState,
}

/// A field's state: 24 bytes. A value is inline when short ([`SmallBytes`]); the
/// counters are boxed: they are rare, and inline they would make every field (and
/// so every map node) as big as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldState {
    Bytes(SmallBytes),
    Counter(Box<FieldCounter>),
    /// `HINCRBYFLOAT`: a float counter.
    Float(Box<FloatCounter>),
    Removed,
}

/// A field counter: `value = base + totals`, on a base (the field's version and
/// value when counting started). Integer (`HINCRBY`: [`FieldCounter`]) or float
/// (`HINCRBYFLOAT`: [`FloatCounter`], whose totals are added in site-id order, the
/// map's, so every site adds the same numbers in the same order).
///
/// A counter counting from nothing (the zero version) or over a field a whole-hash
/// delete removed (`reset`, on that field's old version) is judged total by total:
/// a total a delete saw is dropped, and the counter is dead once none is left.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CounterOf<N> {
    pub base: N,
    pub totals: BTreeMap<SiteId, TotalOf<N>>,
    #[serde(default)]
    pub reset: bool,
}

/// One site's cumulative contribution to a field counter, as of its latest
/// increment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalOf<N> {
    /// The epoch of the increment that set it: with `hlc` and the site, its
    /// version, which ranks the field against the key's string register.
    pub epoch: u64,
    pub hlc: Hlc,
    pub total: N,
}

pub type FieldCounter = CounterOf<i64>;
pub type FloatCounter = CounterOf<Float>;
pub type FieldTotal = TotalOf<i64>;
pub type FloatTotal = TotalOf<Float>;

impl FloatCounter {
    pub fn value(&self) -> f64 {
        self.totals.values().fold(self.base.0, |acc, t| acc + t.total.0)
    }

    pub fn total_of(&self, site: &SiteId) -> f64 {
        self.totals.get(site).map_or(0.0, |t| t.total.0)
    }
}

impl<N> CounterOf<N> {
    /// Whether its totals are judged one by one (see the type's docs).
    fn by_total(&self, version: &Version) -> bool {
        self.reset || *version == Version::zero()
    }

    /// Drops the totals `saw` says a whole-hash delete saw; returns how many.
    fn drop_seen(&mut self, saw: impl Fn(&SiteId, Hlc) -> bool) -> usize {
        let before = self.totals.len();
        self.totals.retain(|s, t| !saw(s, t.hlc));
        before - self.totals.len()
    }
}

/// Significant digits a float is written with: beyond them a double's sum is
/// noise (`0.1 + 0.2` is written `0.3`, as Redis's long double arithmetic writes
/// it).
const FLOAT_DIGITS: usize = 15;

/// Writes a float as `INCRBYFLOAT` and `HINCRBYFLOAT` reply it: plain decimal, no
/// exponent, no trailing zeros, at most [`FLOAT_DIGITS`] significant digits.
pub fn format_float(v: f64) -> String {
    let rounded: f64 = format!("{:.*e}", FLOAT_DIGITS - 1, v).parse().unwrap_or(v);
    let v = if rounded == 0.0 { 0.0 } else { rounded };
    format!("{v}")
}

fn float_text(v: f64) -> Vec<u8> {
    format_float(v).into_bytes()
}

impl FieldCounter {
    /// The value; `None` when it does not fit in an i64.
    pub fn value(&self) -> Option<i64> {
        self.totals.values().try_fold(self.base, |acc, t| acc.checked_add(t.total))
    }

    /// The value as decimal text, whatever its size.
    pub fn text(&self) -> Vec<u8> {
        let sum = self.totals.values().fold(i128::from(self.base), |acc, t| acc + i128::from(t.total));
        sum.to_string().into_bytes()
    }

    pub fn total_of(&self, site: &SiteId) -> i64 {
        self.totals.get(site).map_or(0, |t| t.total)
    }
}

impl Field {
    /// Every site's total of a counter field, as `(site, epoch, hlc)` (none for a
    /// field that is not a counter).
    pub fn totals(&self) -> impl Iterator<Item = (&SiteId, u64, Hlc)> {
        let ints = match &self.state {
            FieldState::Counter(c) => Some(c.totals.iter().map(|(s, t)| (s, t.epoch, t.hlc))),
            _ => None,
        };
        let floats = match &self.state {
            FieldState::Float(c) => Some(c.totals.iter().map(|(s, t)| (s, t.epoch, t.hlc))),
            _ => None,
        };
        ints.into_iter().flatten().chain(floats.into_iter().flatten())
    }

    /// Whether the field is a counter judged total by total (from nothing, or a
    /// reset: see [`CounterOf`]).
    fn by_total(&self) -> bool {
        match &self.state {
            FieldState::Counter(c) => c.by_total(&self.version),
            FieldState::Float(c) => c.by_total(&self.version),
            _ => false,
        }
    }

    /// The field's rank against the string register: its version, or for a
    /// counter the highest of that and its totals' versions.
    pub fn rank(&self) -> Version {
        self.totals()
            .map(|(site, epoch, hlc)| Version::with_epoch(epoch, hlc, site.clone()))
            .fold(self.version.clone(), Version::max)
    }

    /// The value a reader sees (none for a removed field).
    pub fn value(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match &self.state {
            FieldState::Bytes(b) => Some(std::borrow::Cow::Borrowed(b.as_slice())),
            FieldState::Counter(c) => Some(std::borrow::Cow::Owned(c.text())),
            FieldState::Float(c) => Some(std::borrow::Cow::Owned(float_text(c.value()))),
            FieldState::Removed => None,
        }
    }
}

impl Hash {
    pub fn new() -> Hash {
        Hash { fields: BTreeMap::new(), cleared: BTreeMap::new(), top: Version::zero(), bytes: 0 }
    }

    /// A hash of these parts (a snapshot's).
    pub fn from_parts(
        fields: impl IntoIterator<Item = (Vec<u8>, Field)>,
        cleared: BTreeMap<SiteId, Hlc>,
        top: Version,
    ) -> Hash {
        let fields: BTreeMap<Box<[u8]>, Field> =
            fields.into_iter().map(|(name, f)| (name.into_boxed_slice(), f)).collect();
        let bytes = fields.iter().map(|(k, f)| field_bytes(k, f)).sum();
        Hash { fields, cleared, top, bytes }
    }

    /// What the fields take in memory, about.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.cleared.len() as u64 * CLEARED_SITE_BYTES
    }

    /// Replaces (or adds) a field, keeping [`Hash::bytes`] exact.
    fn put(&mut self, name: &[u8], field: Field) {
        self.bytes += field_bytes(name, &field);
        match self.fields.get_mut(name) {
            Some(old) => self.bytes -= field_bytes(name, &std::mem::replace(old, field)),
            None => {
                self.fields.insert(name.into(), field);
            }
        }
    }

    /// Whether a whole-hash delete saw the write of `site` at `hlc`.
    fn saw(&self, site: &SiteId, hlc: Hlc) -> bool {
        self.cleared.get(site).is_some_and(|c| hlc <= *c)
    }

    /// Whether a whole-hash delete removed `field`: it saw the field's write; for
    /// a counter judged total by total (from nothing, or a reset), every total on
    /// it (those it saw are dropped as they are joined).
    pub fn covers(&self, field: &Field) -> bool {
        if field.by_total() {
            return field.totals().all(|(site, _, hlc)| self.saw(site, hlc));
        }
        field.version == Version::zero() || self.saw(&field.version.site, field.version.hlc)
    }

    /// Whether `field` is visible in a hash whose key's other registers rank up to
    /// `floor` ([`Record::hash_floor`]).
    pub fn shows(&self, field: &Field, floor: &Version) -> bool {
        !matches!(field.state, FieldState::Removed) && field.rank() > *floor && !self.covers(field)
    }

    /// What a whole-hash delete at this site says it saw: per site, the highest
    /// timestamp of every field held (removed ones and counter totals included), and
    /// what earlier deletes saw.
    pub fn seen(&self) -> BTreeMap<SiteId, Hlc> {
        let mut seen = self.cleared.clone();
        let mut raise = |site: &SiteId, hlc: Hlc| {
            let e = seen.entry(site.clone()).or_insert(hlc);
            *e = (*e).max(hlc);
        };
        for f in self.fields.values() {
            if f.version != Version::zero() {
                raise(&f.version.site, f.version.hlc);
            }
            for (site, _, hlc) in f.totals() {
                raise(site, hlc);
            }
        }
        seen
    }

    /// Joins a whole-hash delete's `seen`, and drops the totals it saw from the
    /// counters judged total by total.
    fn clear(&mut self, seen: &BTreeMap<SiteId, Hlc>) -> bool {
        let mut changed = false;
        for (site, hlc) in seen {
            let e = self.cleared.entry(site.clone()).or_insert(Hlc::ZERO);
            if *hlc > *e {
                *e = *hlc;
                changed = true;
            }
        }
        if changed {
            let cleared = &self.cleared;
            let saw = |site: &SiteId, hlc: Hlc| cleared.get(site).is_some_and(|c| hlc <= *c);
            let mut dropped = 0;
            for f in self.fields.values_mut() {
                let version = &f.version;
                dropped += match &mut f.state {
                    FieldState::Counter(c) if c.by_total(version) => c.drop_seen(saw),
                    FieldState::Float(c) if c.by_total(version) => c.drop_seen(saw),
                    _ => 0,
                };
            }
            self.bytes -= dropped as u64 * COUNTER_SITE_BYTES;
        }
        changed
    }

    fn raise_top(&mut self, version: &Version) -> bool {
        if *version > self.top {
            self.top = version.clone();
            true
        } else {
            false
        }
    }

    /// Joins a register write of a field (bytes, or removed). The same version
    /// never replaces: it is the same write, or the one a counter is based on.
    pub(crate) fn join_field(&mut self, name: &[u8], version: &Version, state: FieldState) -> bool {
        match self.fields.get(name) {
            Some(f) if *version <= f.version => false,
            _ => {
                self.put(name, Field { version: version.clone(), state });
                true
            }
        }
    }

    /// Joins an increment: each site's latest total on the highest base, a base
    /// being its version and whether it is a reset (a reset ranks above the same
    /// version without). At the same base an integer counter wins over a float one
    /// (no command makes both; the rule only keeps every order of arrival alike).
    /// A total a whole-hash delete saw is not kept on a counter judged total by
    /// total.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn join_counter<N: Copy>(
        &mut self,
        name: &[u8],
        version: &Version,
        total: N,
        (base_version, base_value, reset): (Version, N, bool),
        wrap: fn(CounterOf<N>) -> FieldState,
        view: fn(&mut FieldState) -> Option<&mut CounterOf<N>>,
        yields_to_other: bool,
    ) -> bool {
        let mine = TotalOf { epoch: version.epoch, hlc: version.hlc, total };
        let by_total = reset || base_version == Version::zero();
        let kept = !(by_total && self.saw(&version.site, version.hlc));
        let counter = |kept: bool| {
            let totals = if kept { BTreeMap::from([(version.site.clone(), mine)]) } else { BTreeMap::new() };
            Field { version: base_version.clone(), state: wrap(CounterOf { base: base_value, totals, reset }) }
        };
        let Some(f) = self.fields.get_mut(name) else {
            self.put(name, counter(kept));
            return true;
        };
        if base_version < f.version {
            return false;
        }
        if base_version == f.version {
            let other_kind = matches!(f.state, FieldState::Counter(_) | FieldState::Float(_));
            match view(&mut f.state) {
                Some(c) if c.reset == reset => {
                    if !kept {
                        return false;
                    }
                    return match c.totals.get_mut(&version.site) {
                        Some(seen) if seen.hlc >= mine.hlc => false,
                        Some(seen) => {
                            *seen = mine;
                            true
                        }
                        None => {
                            c.totals.insert(version.site.clone(), mine);
                            self.bytes += COUNTER_SITE_BYTES;
                            true
                        }
                    };
                }
                Some(c) if c.reset => return false,
                Some(_) => {}
                // A counter of the other kind on the same base.
                None if other_kind && yields_to_other => return false,
                // A counter dominates the value (or field tombstone) it is based on.
                None => {}
            }
        }
        self.put(name, counter(kept));
        true
    }

    /// Reclaims every field into `cleared` (an expired hash): the visible state is
    /// the same before and after, and at every site that does or does not do it.
    /// Returns the bytes the fields took.
    pub fn reclaim(&mut self) -> u64 {
        let seen = self.seen();
        self.clear(&seen);
        let bytes = self.bytes;
        self.fields.clear();
        self.bytes = 0;
        bytes
    }
}

impl Default for Hash {
    fn default() -> Self {
        Hash::new()
    }
}

/// Bytes a field takes in memory, about: its share of the map's nodes, its name's
/// allocation, and its value's when that is not inline (a counter: the box and its
/// totals).
pub fn field_bytes(name: &[u8], f: &Field) -> u64 {
    let state = match &f.state {
        FieldState::Bytes(b) => alloc_bytes(b.heap_len()),
        FieldState::Counter(c) => COUNTER_BYTES + c.totals.len() as u64 * COUNTER_SITE_BYTES,
        FieldState::Float(c) => COUNTER_BYTES + c.totals.len() as u64 * COUNTER_SITE_BYTES,
        FieldState::Removed => 0,
    };
    alloc_bytes(name.len()) + state + FIELD_OVERHEAD_BYTES
}

/// What a new field of a `name_len`-byte name holding `value_len` bytes takes
/// ([`field_bytes`]).
pub fn value_field_bytes(name_len: usize, value_len: usize) -> u64 {
    let heap = if value_len > INLINE_BYTES_MAX { value_len } else { 0 };
    alloc_bytes(name_len) + alloc_bytes(heap) + FIELD_OVERHEAD_BYTES
}

/// What a new counter field of a `name_len`-byte name with one site's total takes
/// ([`field_bytes`]).
pub fn counter_field_bytes(name_len: usize) -> u64 {
    alloc_bytes(name_len) + FIELD_OVERHEAD_BYTES + COUNTER_BYTES + COUNTER_SITE_BYTES
}

/// What the allocator hands out for `len` bytes, about: jemalloc's classes are 8
/// bytes, then every 16 up to 128 (coarser above, where this is low by up to a
/// fifth). A set member's name is counted the same way.
pub(crate) fn alloc_bytes(len: usize) -> u64 {
    match len {
        0 => 0,
        1..=8 => 8,
        _ => len.next_multiple_of(16) as u64,
    }
}

/// A field's share of the map's nodes (its name's and value's allocations
/// aside). A slot (boxed name 16 bytes, version 24, state 24) is 64 bytes; a leaf
/// of 11 slots is 716 bytes, jemalloc's 768 class, an inner node (12 edges more)
/// 812, its 896 class. Fields inserted in ascending order leave 6 per leaf and one
/// in its parent: 768 / 7 + 896 / 49 = 128 bytes a field; in random order leaves
/// are fuller, about 100. Measured (RSS growth of a hash of 1M fields, less the
/// names' allocations): 133 ascending, 106 random.
pub const FIELD_OVERHEAD_BYTES: u64 = 120;
/// What a counter field holds besides its totals: its box (a counter is 40 bytes,
/// jemalloc's 48 class) and its totals map's one leaf (11 slots of 32 bytes and a
/// 12-byte header: 364, the 384 class), less the slots counted per site.
pub const COUNTER_BYTES: u64 = 48 + 384 - COUNTER_SITE_BYTES;
/// What one site's total in a field counter costs: its slot in the totals map.
pub const COUNTER_SITE_BYTES: u64 = 32;
/// What one site's entry in [`Hash::cleared`] costs.
pub const CLEARED_SITE_BYTES: u64 = 48;

fn int_state(c: FieldCounter) -> FieldState {
    FieldState::Counter(Box::new(c))
}

pub(crate) fn float_state(c: FloatCounter) -> FieldState {
    FieldState::Float(Box::new(c))
}

fn as_int(state: &mut FieldState) -> Option<&mut FieldCounter> {
    match state {
        FieldState::Counter(c) => Some(c),
        _ => None,
    }
}

pub(crate) fn as_float(state: &mut FieldState) -> Option<&mut FloatCounter> {
    match state {
        FieldState::Float(c) => Some(c),
        _ => None,
    }
}

/// Joins a hash op into a record (see [`crate::merge::apply`]).
pub(crate) fn apply_hash(rec: &mut Record, version: &Version, op: &xsite_schemas::Op) -> bool {
    use xsite_schemas::Op;
    let h = rec.hash_or_insert_with(Hash::new);
    let mut changed = h.raise_top(version);
    let reset = match op {
        Op::HSet { fields, seen, .. } => {
            if let Some(seen) = seen {
                changed |= h.clear(seen);
            }
            for FieldValue { field, value } in fields {
                changed |= h.join_field(field, version, FieldState::Bytes(value.as_slice().into()));
            }
            seen.is_some()
        }
        Op::HDel { fields, .. } => {
            for field in fields {
                changed |= h.join_field(field, version, FieldState::Removed);
            }
            false
        }
        Op::HIncr { field, total, base, seen, .. } => {
            if let Some(seen) = seen {
                changed |= h.clear(seen);
            }
            let base = (base.version(), base.value, base.reset);
            changed |= h.join_counter(field, version, *total, base, int_state, as_int, false);
            seen.is_some()
        }
        // The key's expiry stays: a field written concurrently elsewhere survives
        // with it, and a new hash resets it (`seen` of HSET and HINCRBY).
        Op::HIncrFloat { field, total, base, seen, .. } => {
            if let Some(seen) = seen {
                changed |= h.clear(seen);
            }
            let base = (base.version(), base.value, base.reset);
            changed |= h.join_counter(field, version, *total, base, float_state, as_float, true);
            seen.is_some()
        }
        Op::HClear { seen, .. } => {
            changed |= h.clear(seen);
            false
        }
        _ => unreachable!("apply_hash takes hash ops only"),
    };
    if reset {
        changed |= crate::merge::join_ttl(rec, version, None);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convergence::{check_policy, delivery_orders};
    use crate::merge::{apply, LastWriteWins, Value};
    use xsite_schemas::{CounterBase, FieldBase, FloatBase, Op};

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }
    fn ver(ms: u64, s: &str) -> Version {
        Version::new(Hlc::new(ms, 0), site(s))
    }
    fn hset(pairs: &[(&str, &str)], seen: Option<BTreeMap<SiteId, Hlc>>) -> Op {
        let fields = pairs
            .iter()
            .map(|(f, v)| FieldValue { field: f.as_bytes().to_vec(), value: v.as_bytes().to_vec() })
            .collect();
        Op::HSet { key: b"h".to_vec(), fields, seen }
    }
    fn hdel(fields: &[&str]) -> Op {
        Op::HDel { key: b"h".to_vec(), fields: fields.iter().map(|f| f.as_bytes().to_vec()).collect() }
    }
    fn hincr(field: &str, total: i64, base: FieldBase) -> Op {
        Op::HIncr { key: b"h".to_vec(), field: field.as_bytes().to_vec(), delta: 1, total, base, seen: None }
    }
    fn seen(pairs: &[(&str, u64)]) -> BTreeMap<SiteId, Hlc> {
        pairs.iter().map(|(s, ms)| (site(s), Hlc::new(*ms, 0))).collect()
    }
    /// What a key shows: a hash's fields, or a string's value.
    type Shown = Option<Result<BTreeMap<Vec<u8>, Vec<u8>>, Value>>;

    /// The visible contents: a hash's fields, or a string's bytes.
    fn contents(rec: &Option<Record>) -> Shown {
        let rec = rec.as_ref()?;
        if rec.is_tombstone() {
            return None;
        }
        Some(match rec.hash_fields() {
            Some(fields) => Ok(fields.map(|(k, f)| (k.to_vec(), f.value().unwrap().into_owned())).collect()),
            None => Err(rec.value.clone()),
        })
    }
    /// Every delivery order of `writes` (with duplicates) ends in the same record;
    /// returns its visible contents.
    fn converged(writes: &[(Version, Op)]) -> Shown {
        let rec = check_policy(&LastWriteWins, writes, delivery_orders(writes.len(), 200, 11)).unwrap();
        contents(&Some(rec).flatten())
    }
    fn map(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        pairs.iter().map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    /// The layout [`FIELD_OVERHEAD_BYTES`] is derived from: a change of it is a
    /// change of that constant too.
    #[test]
    fn a_field_takes_a_64_byte_slot_in_the_map() {
        assert_eq!(std::mem::size_of::<FieldState>(), 24);
        assert_eq!(std::mem::size_of::<(Box<[u8]>, Field)>(), 64);
        assert_eq!(std::mem::size_of::<FieldCounter>(), 40);
    }

    #[test]
    fn fields_written_at_two_sites_are_independent_registers() {
        let writes = [
            (ver(10, "a"), hset(&[("x", "1"), ("y", "a")], None)),
            (ver(11, "b"), hset(&[("y", "b"), ("z", "2")], None)),
            (ver(12, "a"), hdel(&["x"])),
        ];
        assert_eq!(converged(&writes), Some(Ok(map(&[("y", "b"), ("z", "2")]))));
    }

    #[test]
    fn a_delete_of_the_hash_removes_what_it_saw_and_a_concurrent_field_survives() {
        // a held x (a@10) and y (b@11); b adds z at 13 before it learns of a's DEL at 14.
        let writes = [
            (ver(10, "a"), hset(&[("x", "1")], None)),
            (ver(11, "b"), hset(&[("y", "2")], None)),
            (ver(13, "b"), hset(&[("z", "3")], None)),
            (ver(14, "a"), Op::HClear { key: b"h".to_vec(), seen: seen(&[("a", 10), ("b", 11)]) }),
        ];
        assert_eq!(converged(&writes), Some(Ok(map(&[("z", "3")]))));
        // Nothing concurrent: the key is gone.
        assert_eq!(converged(&writes[..2].iter().cloned().chain([writes[3].clone()]).collect::<Vec<_>>()), None);
    }

    #[test]
    fn concurrent_increments_of_a_field_add_up_and_a_later_hset_resets_them() {
        let base = FieldBase::on(&ver(10, "a"), 5);
        let writes = [
            (ver(10, "a"), hset(&[("n", "5")], None)),
            (ver(11, "a"), hincr("n", 2, base.clone())),
            (ver(12, "b"), hincr("n", 3, base.clone())),
            (ver(13, "a"), hincr("n", 4, base)),
        ];
        assert_eq!(converged(&writes), Some(Ok(map(&[("n", "12")]))));
        let mut later = writes.to_vec();
        later.push((ver(20, "b"), hset(&[("n", "0")], None)));
        assert_eq!(converged(&later), Some(Ok(map(&[("n", "0")]))));
        // First increments of a field no site had, concurrently: both count.
        let zero = FieldBase::on(&Version::zero(), 0);
        let first = [(ver(30, "a"), hincr("m", 1, zero.clone())), (ver(31, "b"), hincr("m", 1, zero))];
        assert_eq!(converged(&first), Some(Ok(map(&[("m", "2")]))));
    }

    #[test]
    fn float_increments_at_three_sites_sum_to_the_same_bits_in_every_order() {
        let base = FloatBase::on(&Version::zero(), 0.0);
        let fincr = |total: f64| Op::HIncrFloat {
            key: b"h".to_vec(),
            field: b"x".to_vec(),
            delta: Float(total),
            total: Float(total),
            base: base.clone(),
            seen: None,
        };
        // Chosen so that the sum depends on the order of addition.
        let writes = [(ver(10, "c"), fincr(0.1)), (ver(11, "a"), fincr(1e16)), (ver(12, "b"), fincr(-1e16))];
        let want = ((0.0 + 1e16) + -1e16) + 0.1; // site order a, b, c
        assert_eq!(converged(&writes), Some(Ok(map(&[("x", &format_float(want))]))));
        let rec = check_policy(&LastWriteWins, &writes, delivery_orders(3, 20, 3)).unwrap().unwrap();
        let FieldState::Float(c) = &rec.hash().unwrap().fields[b"x".as_slice()].state else {
            panic!("a float counter")
        };
        assert_eq!(c.value().to_bits(), want.to_bits());
    }

    /// Defect (found by redis-py across two sites): after a delete of the hash,
    /// the first increments of a field at two sites each named a fresh base of
    /// their own, and one site's increments were lost until it saw the other's.
    /// Both now count on a reset of the removed field: they add up, and what the
    /// delete saw stays gone.
    #[test]
    fn increments_at_two_sites_after_a_delete_of_the_hash_add_up() {
        let old = ver(10, "a");
        let reset = FieldBase { reset: true, ..FieldBase::on(&old, 0) };
        let seen_all = seen(&[("a", 12), ("b", 12)]);
        let incr = |total, seen: Option<BTreeMap<SiteId, Hlc>>| Op::HIncr {
            key: b"h".to_vec(),
            field: b"n".to_vec(),
            delta: 1,
            total,
            base: reset.clone(),
            seen,
        };
        let writes = [
            (old.clone(), hset(&[("n", "5")], None)),
            (ver(11, "b"), hincr("n", 4, FieldBase::on(&old, 5))),
            (ver(12, "a"), Op::HClear { key: b"h".to_vec(), seen: seen_all.clone() }),
            (ver(20, "a"), incr(1, Some(seen_all.clone()))),
            (ver(21, "b"), incr(2, Some(seen_all.clone()))),
            (ver(22, "a"), incr(3, None)),
        ];
        assert_eq!(converged(&writes), Some(Ok(map(&[("n", "5")]))));
        // Deleted again, having seen a's total only: b's counts on.
        let mut again = writes.to_vec();
        again.push((ver(30, "b"), Op::HClear { key: b"h".to_vec(), seen: seen(&[("a", 22), ("b", 12)]) }));
        assert_eq!(converged(&again), Some(Ok(map(&[("n", "2")]))));
    }

    #[test]
    fn the_type_of_a_key_is_the_later_of_its_string_and_its_hash() {
        let set =
            |v: &str| Op::Put { key: b"h".to_vec(), value: v.as_bytes().to_vec(), expire_at_ms: None, keep_ttl: false };
        let hash_then_set = [(ver(10, "a"), hset(&[("x", "1")], None)), (ver(12, "b"), set("s"))];
        assert_eq!(converged(&hash_then_set), Some(Err(Value::Bytes(b"s".to_vec()))));
        // A hash written after the string: its older fields stay dead.
        let set_then_hash = [
            (ver(10, "a"), hset(&[("x", "1")], None)),
            (ver(12, "b"), set("s")),
            (ver(14, "a"), hset(&[("y", "2")], Some(seen(&[("a", 10)])))),
        ];
        assert_eq!(converged(&set_then_hash), Some(Ok(map(&[("y", "2")]))));
    }

    /// Defect (stop 13): a field increment, its HDEL, and a string counter from
    /// nothing after a collection floor ended as a counter in one order and as
    /// nothing in another.
    #[test]
    fn a_string_counter_after_a_floor_meets_an_old_hash_alike_in_every_order() {
        let floor = Hlc::new(4, 0);
        let writes = [
            (ver(1, "a"), hincr("f", 1, FieldBase::on(&ver(1, "a"), 0))),
            (ver(3, "b"), hdel(&["f"])),
            (ver(5, "a"), Op::Incr { key: b"h".to_vec(), delta: 1, total: 1, base: CounterBase::after_floor(floor) }),
        ];
        let got = converged(&writes);
        assert!(matches!(&got, Some(Err(Value::Counter(c))) if c.value() == Some(1)), "{got:?}");
    }

    #[test]
    fn reclaiming_an_expired_hash_changes_nothing_a_later_write_sees() {
        let mut kept = None;
        apply(&LastWriteWins, &mut kept, &ver(10, "a"), &hset(&[("x", "1"), ("y", "2")], None));
        apply(&LastWriteWins, &mut kept, &ver(11, "a"), &Op::Expire { key: b"h".to_vec(), expire_at_ms: Some(50) });
        let mut reclaimed = kept.clone();
        reclaimed.as_mut().unwrap().hash_mut().unwrap().reclaim();
        // A site that reclaimed writes with what it saw; one that did not, too.
        let seen_reclaimed = reclaimed.as_ref().unwrap().hash().unwrap().seen();
        let seen_kept = kept.as_ref().unwrap().hash().unwrap().seen();
        assert_eq!(seen_reclaimed, seen_kept);
        for rec in [&mut kept, &mut reclaimed] {
            apply(&LastWriteWins, rec, &ver(60, "b"), &hset(&[("z", "3")], Some(seen_kept.clone())));
        }
        assert_eq!(contents(&kept), Some(Ok(map(&[("z", "3")]))));
        assert_eq!(contents(&kept), contents(&reclaimed));
        assert!(kept.unwrap().is_live(100));
    }

    /// Random hash and string writes at three sites, with random bases and seen
    /// sets: every delivery order (with duplicates) ends in the same record.
    #[test]
    fn random_writes_converge_in_every_delivery_order() {
        let seed: u64 = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
        let mut rng = seed | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let sites = ["a", "b", "c"];
        let fields = ["f", "g"];
        for case in 0..300 {
            let writes: Vec<(Version, Op)> = (0..6)
                .map(|i| {
                    let v = ver(10 + i * 2 + next(2), sites[next(3) as usize]);
                    let f = fields[next(2) as usize];
                    let picks = [next(3), next(12), next(3), next(12)];
                    let some_seen =
                        seen(&[(sites[picks[0] as usize], 10 + picks[1]), (sites[picks[2] as usize], 10 + picks[3])]);
                    let op = match next(9) {
                        8 => Op::HIncrFloat {
                            key: b"h".to_vec(),
                            field: f.as_bytes().to_vec(),
                            delta: Float(0.5),
                            total: Float(next(5) as f64 * 0.1),
                            base: FloatBase {
                                reset: next(2) == 0,
                                ..FloatBase::on(&ver(10 + next(12), sites[next(3) as usize]), 1.5)
                            },
                            seen: None,
                        },
                        0 => hset(&[(f, "1")], None),
                        1 => hset(&[(f, "2")], Some(some_seen)),
                        2 => hdel(&[f]),
                        3 => Op::HIncr {
                            key: b"h".to_vec(),
                            field: f.as_bytes().to_vec(),
                            delta: 1,
                            total: next(5) as i64,
                            base: FieldBase {
                                reset: next(2) == 0,
                                ..FieldBase::on(&ver(10 + next(12), sites[next(3) as usize]), 1)
                            },
                            seen: (next(3) == 0).then(|| some_seen.clone()),
                        },
                        4 => hincr(f, 1 + next(3) as i64, FieldBase::on(&Version::zero(), 0)),
                        5 => Op::HClear { key: b"h".to_vec(), seen: some_seen },
                        6 => Op::Put { key: b"h".to_vec(), value: b"s".to_vec(), expire_at_ms: None, keep_ttl: false },
                        _ => Op::Delete { key: b"h".to_vec() },
                    };
                    (v, op)
                })
                .collect();
            let orders = delivery_orders(writes.len(), 40, seed + case);
            if let Err(e) = check_policy(&LastWriteWins, &writes, orders) {
                panic!("seed {seed} case {case}: {e}");
            }
        }
    }
}
