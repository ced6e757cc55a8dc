//! Conflict resolution: the record a key holds at every site, and how an entry is
//! applied to it.
//!
//! A [`Record`] is two registers and, for counters, a per-site vector:
//! - the value register `(version, value)`: [`Value::Bytes`], [`Value::Counter`] or
//!   [`Value::Tombstone`] (a delete leaves one, carrying its version, so a late older
//!   put cannot resurrect the key);
//! - the expiry register `(ttl_version, expire_at_ms)`: an absolute time, the same
//!   instant at every site.
//!
//! [`apply`] is a join: applying an entry keeps, per register, whichever of the two
//! versions the [`MergePolicy`] ranks higher. The result does not depend on the
//! order entries arrive in, nor on duplicates. Local writes go through the same
//! function as remote ones, so every site ranks every pair of versions the same way.
//!
//! Counters: `INCR` on a live integer (or on nothing) starts or continues a counter on
//! a *base*: the version and value the key had when counting started (a fresh base is
//! the increment's own version, value 0). Each site keeps its own cumulative total on
//! that base (increments and decrements move it); merging keeps each site's latest
//! total by timestamp, so concurrent increments at different sites add up. A `SET` or `DEL` ranked above the base replaces the
//! whole counter: increments made on an older base (that did not see the reset) are
//! discarded at every site alike.

use crate::hash::{Field, Hash};
use crate::list::{Item as ListElement, List};
use crate::set::Set;
use crate::zset::ZSet;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use xsite_schemas::{CounterBase, Hlc, Op, Place, SiteId, Version};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Bytes(Vec<u8>),
    /// Boxed: a string record then pays 24 bytes for its value, not 48.
    Counter(Box<Counter>),
    Tombstone,
}

/// A counter on a base: `value = base + sum(totals)`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counter {
    pub base: i64,
    pub totals: BTreeMap<SiteId, SiteTotal>,
    /// A counter from nothing after a collection floor (see [`CounterBase::floor`]):
    /// the highest floor of the increments it took; [`Hlc::ZERO`] otherwise. A real
    /// base below it is the same incarnation (the last reset every site had below
    /// the floor), so increments on it count here too.
    #[serde(default)]
    pub floor: Hlc,
    /// The base is a delete: a policy ranks the counter as it ranked that delete
    /// (see [`CounterBase::dead`]).
    #[serde(default)]
    pub base_dead: bool,
}

/// One site's cumulative contribution to a counter, as of its latest increment.
/// Increments and decrements both move it; the latest (by timestamp) wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTotal {
    pub hlc: Hlc,
    pub total: i64,
}

impl Counter {
    /// The counter's value; `None` when it does not fit in an i64.
    pub fn value(&self) -> Option<i64> {
        self.totals.values().try_fold(self.base, |acc, t| acc.checked_add(t.total))
    }

    /// This site's total (0 if it has not counted on this base).
    pub fn total_of(&self, site: &SiteId) -> i64 {
        self.totals.get(site).map_or(0, |t| t.total)
    }
}

/// A key's record: the value register, the expiry register, and the collection
/// parts joined into it.
///
/// Laid out for the store, which keeps one per key in a box with the key: the box
/// is 128 bytes, jemalloc's 128 class, when the record is 88. So the expiry is one
/// `u64`, not an `Option<u64>` (16), and the four collection parts share one box
/// that a string key does not have (8 bytes, not 32). Read and change both through
/// methods: [`Record::expire_at_ms`], [`Record::hash`] and the like.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub version: Version,
    pub value: Value,
    pub ttl_version: Version,
    /// The expiry time, [`NO_EXPIRY`] for none (but see [`Parts::expiry_max`]).
    expiry: u64,
    /// The collection parts; `None` when it has none (nor an expiry of `u64::MAX`).
    parts: Option<Box<Parts>>,
}

/// What [`Record::expiry`] holds for a record without an expiry.
const NO_EXPIRY: u64 = u64::MAX;

/// A record's collection parts, each in its own box: a key is one kind at a time,
/// but concurrent writes of two kinds leave it two parts, and a part is big (a hash
/// 80 bytes, a list 136). 40 bytes: jemalloc's 48 class, which a record pays once
/// it is a collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Parts {
    hash: Option<Box<Hash>>,
    set: Option<Box<Set>>,
    zset: Option<Box<ZSet>>,
    list: Option<Box<List>>,
    /// The record expires at `u64::MAX` ms, the one time [`Record::expiry`] cannot
    /// say (it means none there). No command sets it (an expiry is at most
    /// `i64::MAX` ms), but an entry may carry it, and a record keeps what it joined.
    expiry_max: bool,
}

impl Parts {
    fn is_empty(&self) -> bool {
        self.hash.is_none() && self.set.is_none() && self.zset.is_none() && self.list.is_none() && !self.expiry_max
    }
}

/// The accessors of one collection part of a record.
macro_rules! part_accessors {
    ($part:ident: $ty:ty, $get_mut:ident, $or_insert_with:ident, $put:ident, $take:ident) => {
        #[doc = concat!("The ", stringify!($part), " part, once a ", stringify!($part), " op was joined (see [`crate::", stringify!($part), "`]).")]
        pub fn $part(&self) -> Option<&$ty> {
            self.parts.as_ref()?.$part.as_deref()
        }

        #[doc = concat!("The ", stringify!($part), " part, to change it in place.")]
        pub fn $get_mut(&mut self) -> Option<&mut $ty> {
            self.parts.as_mut()?.$part.as_deref_mut()
        }

        #[doc = concat!("The ", stringify!($part), " part, made by `new` first if the record has none.")]
        pub fn $or_insert_with(&mut self, new: impl FnOnce() -> $ty) -> &mut $ty {
            self.parts.get_or_insert_with(Default::default).$part.get_or_insert_with(|| Box::new(new()))
        }

        #[doc = concat!("Gives the record this ", stringify!($part), " part, replacing any it had.")]
        pub fn $put(&mut self, part: $ty) {
            self.parts.get_or_insert_with(Default::default).$part = Some(Box::new(part));
        }

        #[doc = concat!("Removes the ", stringify!($part), " part; a record left with no part frees their box.")]
        pub fn $take(&mut self) -> Option<Box<$ty>> {
            let taken = self.parts.as_mut()?.$part.take();
            self.free_empty_parts();
            taken
        }
    };
}

/// How a record serializes: the fields it had before its parts shared a box, with
/// the same names, a part left out when absent.
#[derive(Serialize)]
struct RecordRef<'a> {
    version: &'a Version,
    value: &'a Value,
    ttl_version: &'a Version,
    expire_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<&'a Hash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set: Option<&'a Set>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zset: Option<&'a ZSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    list: Option<&'a List>,
}

/// What [`RecordRef`] wrote, read back.
#[derive(Deserialize)]
struct RecordOwned {
    version: Version,
    value: Value,
    ttl_version: Version,
    expire_at_ms: Option<u64>,
    #[serde(default)]
    hash: Option<Hash>,
    #[serde(default)]
    set: Option<Set>,
    #[serde(default)]
    zset: Option<ZSet>,
    #[serde(default)]
    list: Option<List>,
}

impl fmt::Debug for Record {
    /// As the fields it reads as: the expiry an `Option`, each part on its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("version", &self.version)
            .field("value", &self.value)
            .field("ttl_version", &self.ttl_version)
            .field("expire_at_ms", &self.expire_at_ms())
            .field("hash", &self.hash())
            .field("set", &self.set())
            .field("zset", &self.zset())
            .field("list", &self.list())
            .finish()
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RecordRef {
            version: &self.version,
            value: &self.value,
            ttl_version: &self.ttl_version,
            expire_at_ms: self.expire_at_ms(),
            hash: self.hash(),
            set: self.set(),
            zset: self.zset(),
            list: self.list(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Record, D::Error> {
        let r = RecordOwned::deserialize(d)?;
        let mut rec = Record::string(r.version, r.value, r.ttl_version, r.expire_at_ms);
        if let Some(h) = r.hash {
            rec.put_hash(h);
        }
        if let Some(s) = r.set {
            rec.put_set(s);
        }
        if let Some(z) = r.zset {
            rec.put_zset(z);
        }
        if let Some(l) = r.list {
            rec.put_list(l);
        }
        Ok(rec)
    }
}

/// What a key is: a string (or nothing), a hash, a set, a sorted set or a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Hash,
    Set,
    ZSet,
    List,
}

impl Record {
    /// A record of the string register and expiry alone.
    pub fn string(version: Version, value: Value, ttl_version: Version, expire_at_ms: Option<u64>) -> Record {
        let mut rec = Record { version, value, ttl_version, expiry: NO_EXPIRY, parts: None };
        rec.set_expire_at_ms(expire_at_ms);
        rec
    }

    /// When the key expires, in ms since the Unix epoch (the expiry register's value).
    pub fn expire_at_ms(&self) -> Option<u64> {
        match self.expiry {
            NO_EXPIRY if !self.parts.as_ref().is_some_and(|p| p.expiry_max) => None,
            at => Some(at),
        }
    }

    /// Sets the expiry register's value (its version is [`Record::ttl_version`]).
    pub fn set_expire_at_ms(&mut self, expire_at_ms: Option<u64>) {
        self.expiry = expire_at_ms.unwrap_or(NO_EXPIRY);
        let max = expire_at_ms == Some(u64::MAX);
        if max || self.parts.as_ref().is_some_and(|p| p.expiry_max) {
            self.parts.get_or_insert_with(Default::default).expiry_max = max;
            self.free_empty_parts();
        }
    }

    part_accessors!(hash: Hash, hash_mut, hash_or_insert_with, put_hash, take_hash);
    part_accessors!(set: Set, set_mut, set_or_insert_with, put_set, take_set);
    part_accessors!(zset: ZSet, zset_mut, zset_or_insert_with, put_zset, take_zset);
    part_accessors!(list: List, list_mut, list_or_insert_with, put_list, take_list);

    /// Whether the record has any collection part (a key that was never a
    /// collection has none).
    pub fn has_parts(&self) -> bool {
        self.parts.as_ref().is_some_and(|p| p.hash.is_some() || p.set.is_some() || p.zset.is_some() || p.list.is_some())
    }

    /// Drops the parts' box when it holds nothing, so that a record no longer a
    /// collection takes no more than a string's.
    fn free_empty_parts(&mut self) {
        if self.parts.as_ref().is_some_and(|p| p.is_empty()) {
            self.parts = None;
        }
    }

    /// Holds no value: a deleted string, or a collection with nothing visible.
    pub fn is_tombstone(&self) -> bool {
        match self.kind() {
            Kind::Hash => self.hash_fields().is_none_or(|mut f| f.next().is_none()),
            Kind::Set => self.set_members().is_none_or(|mut m| m.next().is_none()),
            Kind::ZSet => !self.zset_any(),
            Kind::List => self.list_items().is_none_or(|mut i| i.next().is_none()),
            Kind::String => matches!(self.value, Value::Tombstone),
        }
    }

    fn hash_top(&self) -> Version {
        self.hash().map_or_else(Version::zero, |h| h.top.clone())
    }

    fn set_top(&self) -> Version {
        self.set().map_or_else(Version::zero, |s| s.top.clone())
    }

    fn zset_top(&self) -> Version {
        self.zset().map_or_else(Version::zero, |z| z.members.top.clone())
    }

    fn list_top(&self) -> Version {
        self.list().map_or_else(Version::zero, |l| l.top.clone())
    }

    /// What the key is, a pure function of its state, so that every site that
    /// joined the same entries answers alike: the part whose latest write ranks
    /// highest, of its string register ([`Record::register_rank`]) and the tops of
    /// its hash, set, sorted set and list parts. Live or not.
    pub fn kind(&self) -> Kind {
        if !self.has_parts() {
            return Kind::String;
        }
        let parts = [
            (Kind::Hash, self.hash().map(|h| &h.top)),
            (Kind::Set, self.set().map(|s| &s.top)),
            (Kind::ZSet, self.zset().map(|z| &z.members.top)),
            (Kind::List, self.list().map(|l| &l.top)),
        ];
        let er = self.register_rank();
        let top = parts.into_iter().filter_map(|(k, t)| Some((k, t?))).max_by(|a, b| a.1.cmp(b.1));
        match top {
            Some((kind, t)) if *t > er => kind,
            _ => Kind::String,
        }
    }

    /// What a hash field must rank above to be visible: the key's string register
    /// and the other parts' tops.
    pub fn hash_floor(&self) -> Version {
        self.register_rank().max(self.set_top()).max(self.zset_top()).max(self.list_top())
    }

    /// What a set member's add must rank above to be visible: the key's string
    /// register and the other parts' tops.
    pub fn set_floor(&self) -> Version {
        self.register_rank().max(self.hash_top()).max(self.zset_top()).max(self.list_top())
    }

    /// What a sorted set member's add must rank above to be visible.
    pub fn zset_floor(&self) -> Version {
        self.register_rank().max(self.hash_top()).max(self.set_top()).max(self.list_top())
    }

    /// What a list element's id must rank above to be visible.
    pub fn list_floor(&self) -> Version {
        self.register_rank().max(self.hash_top()).max(self.set_top()).max(self.zset_top())
    }

    /// How many elements the key has when it is a list: without walking them when
    /// every element ranks above the floor, as in a key that is a list alone.
    pub fn list_len(&self) -> Option<usize> {
        let l = self.list().filter(|_| self.kind() == Kind::List)?;
        Some(l.visible_len(&self.list_floor()))
    }

    /// The visible elements of the key when it is a list, in order (expiry not
    /// judged here); `None` when it is not.
    pub fn list_items(&self) -> Option<impl DoubleEndedIterator<Item = (&Place, &ListElement)> + '_> {
        let l = self.list().filter(|_| self.kind() == Kind::List)?;
        let floor = self.list_floor();
        Some(l.items.iter().filter(move |(p, _)| p.id().version() > floor))
    }

    /// Whether the key is a sorted set, live or not.
    pub fn is_zset(&self) -> bool {
        self.kind() == Kind::ZSet
    }

    /// The visible members of the key when it is a sorted set, with their scores,
    /// by score then member (expiry not judged here); `None` when it is not.
    pub fn zset_ranked(&self) -> Option<Vec<(&[u8], f64)>> {
        let z = self.zset().filter(|_| self.is_zset())?;
        Some(z.ranked(&self.zset_floor()))
    }

    /// How many members the key has when it is a sorted set (without ranking them).
    pub fn zset_len(&self) -> Option<usize> {
        let z = self.zset().filter(|_| self.is_zset())?;
        Some(z.visible(self.zset_floor()).count())
    }

    /// Whether the key, a sorted set, has any visible member (stops at the first).
    fn zset_any(&self) -> bool {
        self.zset().is_some_and(|z| z.visible(self.zset_floor()).next().is_some())
    }

    /// The score of `member` when the key is a sorted set holding it.
    pub fn zscore(&self, member: &[u8]) -> Option<f64> {
        let z = self.zset().filter(|_| self.is_zset())?;
        z.score(member, &self.zset_floor())
    }

    /// The string register's rank against the hash part: its version, or for a
    /// counter the highest of that and its totals' timestamps.
    pub fn register_rank(&self) -> Version {
        match &self.value {
            Value::Counter(c) => c
                .totals
                .iter()
                .map(|(site, t)| Version::with_epoch(self.version.epoch, t.hlc, site.clone()))
                .fold(self.version.clone(), Version::max),
            _ => self.version.clone(),
        }
    }

    /// What a delete of the key's `kind` part at this site says it saw: per site,
    /// the highest timestamp of that part's elements held (and what earlier deletes
    /// of it saw). Empty for a string, or a part the record does not have.
    pub fn part_seen(&self, kind: Kind) -> BTreeMap<SiteId, Hlc> {
        match kind {
            Kind::Hash => self.hash().map(|h| h.seen()),
            Kind::Set => self.set().map(|s| s.seen()),
            Kind::ZSet => self.zset().map(|z| z.members.seen()),
            Kind::List => self.list().map(|l| l.seen()),
            Kind::String => None,
        }
        .unwrap_or_default()
    }

    /// Whether the key is a hash, live or not.
    pub fn is_hash(&self) -> bool {
        self.kind() == Kind::Hash
    }

    /// Whether the key is a set, live or not.
    pub fn is_set(&self) -> bool {
        self.kind() == Kind::Set
    }

    /// The visible fields of the key when it is a hash (expiry not judged here);
    /// `None` when it is not.
    pub fn hash_fields(&self) -> Option<impl Iterator<Item = (&[u8], &Field)> + '_> {
        let h = self.hash().filter(|_| self.is_hash())?;
        let floor = self.hash_floor();
        Some(h.fields.iter().filter(move |(_, f)| h.shows(f, &floor)).map(|(k, f)| (&**k, f)))
    }

    /// One visible field of a hash key, and whether the key is a hash at all.
    pub fn field(&self, name: &[u8]) -> Option<&Field> {
        let h = self.hash().filter(|_| self.is_hash())?;
        h.fields.get(name).filter(|f| h.shows(f, &self.hash_floor()))
    }

    /// The visible members of the key when it is a set, in byte order (expiry not
    /// judged here); `None` when it is not.
    pub fn set_members(&self) -> Option<impl Iterator<Item = &[u8]> + '_> {
        let s = self.set().filter(|_| self.is_set())?;
        let floor = self.set_floor();
        Some(s.members.iter().filter(move |(_, e)| e.shows(&floor)).map(|(k, _)| &**k))
    }

    /// Whether `member` is visible in the key, a set.
    pub fn is_member(&self, member: &[u8]) -> bool {
        let Some(s) = self.set().filter(|_| self.is_set()) else { return false };
        s.members.get(member).is_some_and(|e| e.shows(&self.set_floor()))
    }

    /// Visible to reads at `now_ms`: not a tombstone and not expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && self.expire_at_ms().is_none_or(|at| at > now_ms)
    }

    /// The highest timestamp this record holds: both registers' and every counter
    /// total's (for the HLC floor after a restart, and for collection: a record goes
    /// only once every site is past all of it).
    pub fn max_hlc(&self) -> Hlc {
        let registers = self.version.hlc.max(self.ttl_version.hlc);
        let string = match &self.value {
            Value::Counter(c) => c.totals.values().map(|t| t.hlc).fold(registers, Hlc::max),
            _ => registers,
        };
        let hash = match self.hash() {
            Some(h) => h.cleared.values().copied().fold(string.max(h.top.hlc), Hlc::max),
            None => string,
        };
        let set = match self.set() {
            Some(s) => s.cleared.values().copied().fold(hash.max(s.top.hlc), Hlc::max),
            None => hash,
        };
        let zset = match self.zset() {
            Some(z) => z.members.cleared.values().copied().fold(set.max(z.members.top.hlc), Hlc::max),
            None => set,
        };
        match self.list() {
            Some(l) => l.cleared.values().copied().fold(zset.max(l.top.hlc), Hlc::max),
            None => zset,
        }
    }

    /// An empty record: a tombstone below every real write, the same at every site.
    pub fn empty() -> Record {
        Record::string(Version::zero(), Value::Tombstone, Version::zero(), None)
    }
}

/// One side of a conflict, as a policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub version: &'a Version,
    /// `false` for a tombstone.
    pub live: bool,
    /// The value's bytes; `None` for a tombstone or a counter.
    pub value: Option<&'a [u8]>,
}

impl<'a> Candidate<'a> {
    /// The candidate a record's value register is.
    pub fn of(version: &'a Version, value: &'a Value) -> Candidate<'a> {
        let bytes = match value {
            Value::Bytes(b) => Some(b.as_slice()),
            _ => None,
        };
        // A counter ranks as its base did: converting a delete into a counter at the
        // delete's version must not move it in a policy's order.
        let live = match value {
            Value::Tombstone => false,
            Value::Counter(c) => !c.base_dead,
            Value::Bytes(_) => true,
        };
        Candidate { version, live, value: bytes }
    }
}

/// A merge policy decides which of two versions of a key's value wins.
///
/// The record of a key never written holds [`Version::zero`] (a tombstone): a policy
/// must rank every real write above it, or nothing is ever stored.
///
/// It must be a pure function of the two candidates and a strict total order:
/// antisymmetric (`cmp(a, b) == cmp(b, a).reverse()`), transitive, and `Equal` only
/// for the same version. Then [`apply`] is idempotent, commutative and associative,
/// and sites converge whatever the delivery order. Check a custom policy with
/// [`crate::convergence::check_policy`].
pub trait MergePolicy: Send + Sync + fmt::Debug {
    /// The name used in configuration and logs.
    fn name(&self) -> String;
    /// `Greater` when `a` wins over `b`.
    fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering;
}

/// Last write wins on `(hlc, site)`: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastWriteWins;

impl MergePolicy for LastWriteWins {
    fn name(&self) -> String {
        "last-write-wins".into()
    }
    fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
        a.version.cmp(b.version)
    }
}

/// Writes from one site win over every other site's; among one site's writes, and
/// among other sites', last write wins.
#[derive(Debug, Clone)]
pub struct PreferSite(pub SiteId);

impl MergePolicy for PreferSite {
    fn name(&self) -> String {
        format!("prefer-site:{}", self.0)
    }
    fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
        let preferred = |c: Candidate<'_>| c.version.site == self.0;
        preferred(a).cmp(&preferred(b)).then_with(|| a.version.cmp(b.version))
    }
}

/// Within a conflict window, a value beats a tombstone; otherwise last write wins.
///
/// Without causal history, "concurrent" means "in the same window of
/// `conflict_window_ms` of the HLC wall clock" — windows are fixed (aligned to
/// multiples of the width), so every site draws the same line. A `DEL` in the same
/// window as the value it deletes does not remove it.
#[derive(Debug, Clone, Copy)]
pub struct PreferNonNull {
    pub conflict_window_ms: u64,
}

impl MergePolicy for PreferNonNull {
    fn name(&self) -> String {
        "prefer-non-null".into()
    }
    fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
        let w = self.conflict_window_ms.max(1);
        let rank = |c: Candidate<'_>| (c.version.hlc.wall_ms() / w, c.live);
        rank(a).cmp(&rank(b)).then_with(|| a.version.cmp(b.version))
    }
}

/// Within a conflict window, a tombstone beats a value; otherwise last write wins.
/// A `SET` in the same window as a concurrent `DEL` is removed at every site.
#[derive(Debug, Clone, Copy)]
pub struct AlwaysRemove {
    pub conflict_window_ms: u64,
}

impl MergePolicy for AlwaysRemove {
    fn name(&self) -> String {
        "always-remove".into()
    }
    fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
        let w = self.conflict_window_ms.max(1);
        let rank = |c: Candidate<'_>| (c.version.hlc.wall_ms() / w, !c.live);
        rank(a).cmp(&rank(b)).then_with(|| a.version.cmp(b.version))
    }
}

/// Default conflict window of the window-based policies, in milliseconds.
pub const CONFLICT_WINDOW_MS_DEFAULT: u64 = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyParseError {
    #[error(
        "unknown merge policy '{0}' (expected last-write-wins, prefer-site:<site>, prefer-non-null, always-remove, or a registered custom policy)"
    )]
    Unknown(String),
    #[error("merge policy '{0}': {1}")]
    BadSite(String, xsite_schemas::NameError),
}

/// Makes a custom policy; registered under a name with [`register_policy`].
pub type PolicyFactory = fn() -> Box<dyn MergePolicy>;

fn custom_policies() -> &'static std::sync::RwLock<std::collections::HashMap<String, PolicyFactory>> {
    static REGISTRY: std::sync::OnceLock<std::sync::RwLock<std::collections::HashMap<String, PolicyFactory>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Make a custom policy available to configuration as `policy = "<name>"`, for a
/// binary built on the xsite crates. Call it before the node starts; every site
/// must register the same policy under the same name.
pub fn register_policy(name: &str, factory: PolicyFactory) {
    custom_policies().write().expect("policy registry lock").insert(name.to_string(), factory);
}

/// Parse a policy by its configuration name: a built-in one or a registered one.
pub fn parse_policy(name: &str, conflict_window_ms: u64) -> Result<Box<dyn MergePolicy>, PolicyParseError> {
    if let Some(factory) = custom_policies().read().expect("policy registry lock").get(name) {
        return Ok(factory());
    }
    match name {
        "last-write-wins" | "lww" => Ok(Box::new(LastWriteWins)),
        "prefer-non-null" => Ok(Box::new(PreferNonNull { conflict_window_ms })),
        "always-remove" => Ok(Box::new(AlwaysRemove { conflict_window_ms })),
        other => match other.strip_prefix("prefer-site:") {
            Some(site) => SiteId::new(site)
                .map(|s| Box::new(PreferSite(s)) as Box<dyn MergePolicy>)
                .map_err(|e| PolicyParseError::BadSite(name.to_string(), e)),
            None => Err(PolicyParseError::Unknown(other.to_string())),
        },
    }
}

/// Whether `(version, value)` replaces the record's value register. The same version
/// never does, whatever the policy says of the two values: it is the same write
/// (delivered again), or the write a counter in the record is based on, which the
/// counter dominates. Leaving it to the policy would let a policy that ranks a
/// tombstone above a live value (`always-remove`) undo a counter based on that very
/// tombstone, in one delivery order and not in the other.
fn ranks_above(policy: &dyn MergePolicy, version: &Version, value: &Value, rec: &Record) -> bool {
    *version != rec.version
        && policy.cmp(Candidate::of(version, value), Candidate::of(&rec.version, &rec.value)) == Ordering::Greater
}

/// Join the expiry register with `(version, expire_at_ms)`. Last write wins.
pub(crate) fn join_ttl(rec: &mut Record, version: &Version, expire_at_ms: Option<u64>) -> bool {
    if *version > rec.ttl_version {
        rec.ttl_version = version.clone();
        rec.set_expire_at_ms(expire_at_ms);
        true
    } else {
        false
    }
}

/// Join the value register with `(version, value)`.
fn join_value(policy: &dyn MergePolicy, rec: &mut Record, version: &Version, value: Value) -> bool {
    if ranks_above(policy, version, &value, rec) {
        rec.version = version.clone();
        rec.value = value;
        true
    } else {
        false
    }
}

/// Takes a site's latest total into a counter; returns whether it changed.
fn merge_total(c: &mut Counter, site: &SiteId, mine: SiteTotal) -> bool {
    match c.totals.get_mut(site) {
        Some(seen) if seen.hlc >= mine.hlc => false,
        Some(seen) => {
            *seen = mine;
            true
        }
        None => {
            c.totals.insert(site.clone(), mine);
            true
        }
    }
}

/// Whether the part of `rec` below `floor` is nothing any site could still write
/// around, as the origin of an increment counting from nothing after `floor` found
/// it (collectable, or collected). Every site applied everything below the floor
/// before the origin used it, so that part is the same everywhere; only writes above
/// the floor differ with the order of arrival, and each register is judged apart so
/// that they do not change the answer:
/// - a value register above the floor (a write concurrent with the increment) is
///   not below it: the increment's counter meets it as a rival on the zero version;
/// - a counter whose floor is this one is the same incarnation, not below it;
/// - below the floor, a delete is gone; so is a value whose expiry register is
///   above the floor (only a write to the counter from nothing, arrived before its
///   first increment, puts one there: no site could see the old value live after the
///   floor) or whose expiry passed before the floor.
fn gone_below(rec: &Record, floor: Hlc) -> bool {
    let value_below = rec.version.hlc < floor
        && match &rec.value {
            Value::Counter(c) => c.floor < floor && c.totals.values().all(|t| t.hlc < floor),
            _ => true,
        };
    let expired = rec.ttl_version.hlc >= floor || rec.expire_at_ms().is_some_and(|at| at < floor.wall_ms());
    value_below && (matches!(rec.value, Value::Tombstone) || expired)
}

/// Join an increment: keep each site's latest total on the highest-ranked base.
///
/// A floor base (format version 2) counts from nothing where, below its floor `F`,
/// the key held nothing any site could still write around: its origin's record was
/// collected there (or could have been). Every site applied everything below `F`,
/// and collection at the origin is invisible only if this site does the same
/// whether or not it collected: a record whose register lies below `F` is taken as
/// that nothing — a counter on it goes on (its base is the last reset below `F`,
/// which every site had), anything else becomes a counter from nothing. Conversely
/// a counter from nothing takes increments on a real base below its floor: causally,
/// such an increment can only come from a site that had applied everything below
/// the floor, so its base is that same last reset.
fn join_incr(policy: &dyn MergePolicy, rec: &mut Record, version: &Version, total: i64, base: &CounterBase) -> bool {
    let base_version = base.version();
    let mine = SiteTotal { hlc: version.hlc, total };
    if let Some(floor) = base.floor {
        if gone_below(rec, floor) {
            // What a site that collected the record holds: nothing, on the zero
            // version, and a counter from nothing on it. An expiry register above
            // the floor (a PEXPIRE of this very counter, arrived first) stays.
            let totals = BTreeMap::from([(version.site.clone(), mine)]);
            rec.version = Version::zero();
            rec.value = Value::Counter(Box::new(Counter { base: 0, totals, floor, base_dead: true }));
            if rec.ttl_version.hlc < floor {
                rec.ttl_version = Version::zero();
                rec.set_expire_at_ms(None);
            }
            return true;
        }
        // A live counter on the last reset below the floor: the same incarnation.
        if let Value::Counter(c) = &mut rec.value {
            if rec.version.hlc < floor {
                let raised = c.floor < floor;
                c.floor = c.floor.max(floor);
                return merge_total(c, &version.site, mine) | raised;
            }
        }
    }
    if rec.version == base_version {
        return match &mut rec.value {
            Value::Counter(c) => {
                let raised = base.floor.is_some_and(|f| c.floor < f) || (base.dead && !c.base_dead);
                if let Some(f) = base.floor {
                    c.floor = c.floor.max(f);
                }
                // Whether the base is a delete is a fact of the base's version: every
                // increment on it says the same, but an old (version 1) one does not
                // say it at all.
                c.base_dead |= base.dead;
                merge_total(c, &version.site, mine) | raised
            }
            // A counter dominates the plain value it was based on.
            _ => {
                let totals = BTreeMap::from([(version.site.clone(), mine)]);
                let floor = base.floor.unwrap_or(Hlc::ZERO);
                let base_dead = base.dead;
                rec.value = Value::Counter(Box::new(Counter { base: base.value, totals, floor, base_dead }));
                true
            }
        };
    }
    if let Value::Counter(c) = &mut rec.value {
        if rec.version == Version::zero() && base_version.hlc < c.floor {
            return merge_total(c, &version.site, mine);
        }
    }
    let totals = BTreeMap::from([(version.site.clone(), mine)]);
    let counter = Counter { base: base.value, totals, floor: base.floor.unwrap_or(Hlc::ZERO), base_dead: base.dead };
    join_value(policy, rec, &base_version, Value::Counter(Box::new(counter)))
}

/// Apply one operation with its version to a key's record. Returns whether the
/// record changed. `slot` is `None` when the key has no record at all. A heartbeat
/// or a transaction unit changes nothing here: a unit's members are applied each
/// to its own key ([`xsite_schemas::LogEntry::members`]).
pub fn apply(policy: &dyn MergePolicy, slot: &mut Option<Record>, version: &Version, op: &Op) -> bool {
    apply_to(policy, slot.get_or_insert_with(Record::empty), version, op)
}

/// [`apply`] to a record that exists (a key without one starts from
/// [`Record::empty`]).
pub fn apply_to(policy: &dyn MergePolicy, rec: &mut Record, version: &Version, op: &Op) -> bool {
    match op {
        Op::Put { value, expire_at_ms, keep_ttl, .. } => {
            let v = join_value(policy, rec, version, Value::Bytes(value.clone()));
            let t = !keep_ttl && join_ttl(rec, version, *expire_at_ms);
            v | t
        }
        Op::Delete { .. } => {
            let v = join_value(policy, rec, version, Value::Tombstone);
            let t = join_ttl(rec, version, None);
            v | t
        }
        Op::Expire { expire_at_ms, .. } => join_ttl(rec, version, *expire_at_ms),
        Op::Incr { total, base, .. } => {
            let fresh = base.version() == *version;
            let joined = join_incr(policy, rec, version, *total, base);
            let t = fresh && join_ttl(rec, version, None);
            joined || t
        }
        Op::HSet { .. } | Op::HDel { .. } | Op::HIncr { .. } | Op::HIncrFloat { .. } | Op::HClear { .. } => {
            crate::hash::apply_hash(rec, version, op)
        }
        Op::SAdd { .. } | Op::SRem { .. } | Op::SClear { .. } => crate::set::apply_set(rec, version, op),
        Op::ZAdd { .. } | Op::ZIncr { .. } | Op::ZRem { .. } | Op::ZClear { .. } => {
            crate::zset::apply_zset(rec, version, op)
        }
        Op::LPut { .. } | Op::LRem { .. } | Op::LClear { .. } => crate::list::apply_list(rec, version, op),
        Op::Heartbeat { .. } | Op::Multi { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }
    fn ver(ms: u64, s: &str) -> Version {
        Version::new(Hlc::new(ms, 0), site(s))
    }
    fn put(v: &str) -> Op {
        Op::Put { key: b"k".to_vec(), value: v.as_bytes().to_vec(), expire_at_ms: None, keep_ttl: false }
    }
    fn del() -> Op {
        Op::Delete { key: b"k".to_vec() }
    }

    /// Defect (from-nothing-above-floor): an increment counting from nothing after a
    /// floor decided on the whole record, so a write above the floor that arrived
    /// before it changed the outcome. Below the floor every site holds the same (a
    /// tombstone here); above it a PEXPIRE of the new counter and a concurrent SET
    /// with an expiry may arrive before or after the increment: every order must end
    /// in the same record.
    #[test]
    fn a_count_from_nothing_after_a_floor_ends_alike_in_every_order() {
        let policy = LastWriteWins;
        let floor = Hlc::new(2_000, 0);
        let tomb = ver(1_000, "a");
        let incr = Op::Incr { key: b"k".to_vec(), delta: 1, total: 1, base: CounterBase::after_floor(floor) };
        let expire = Op::Expire { key: b"k".to_vec(), expire_at_ms: Some(9_000) };
        let set_px = Op::Put { key: b"k".to_vec(), value: b"4".to_vec(), expire_at_ms: Some(2_600), keep_ttl: false };
        let cases = [
            // s0 increments and then gives the counter an expiry.
            vec![(ver(2_100, "b"), incr.clone()), (ver(2_200, "b"), expire)],
            // s1 sets with an expiry, concurrently with s0's later increment.
            vec![(ver(2_500, "a"), set_px), (ver(2_700, "b"), incr)],
        ];
        for steps in cases {
            let results: Vec<Option<Record>> = [[0, 1], [1, 0]]
                .iter()
                .map(|order| {
                    let mut rec = None;
                    apply(&policy, &mut rec, &tomb, &del());
                    for &i in order {
                        apply(&policy, &mut rec, &steps[i].0, &steps[i].1);
                    }
                    rec
                })
                .collect();
            assert_eq!(results[0], results[1], "{steps:?}");
        }
    }

    /// Defect: under `always-remove`, a SET in a delete's window lost to the delete
    /// at a site that had both, and then won against the counter counting on that
    /// delete at a site that got the counter first: a counter must rank as the delete
    /// it counts on did, in every order of delivery.
    #[test]
    fn a_counter_on_a_delete_ranks_as_the_delete_in_every_order() {
        let policy = AlwaysRemove { conflict_window_ms: 100 };
        let (d, set, inc) = (ver(1_000, "a"), ver(1_020, "a"), ver(1_030, "a"));
        let incr = Op::Incr { key: b"k".to_vec(), delta: 1, total: 1, base: CounterBase::on_delete(&d) };
        let steps = [(d.clone(), del()), (set.clone(), put("2")), (inc.clone(), incr)];
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let results: Vec<Option<Record>> = orders
            .iter()
            .map(|order| {
                let mut rec = None;
                for &i in order {
                    apply(&policy, &mut rec, &steps[i].0, &steps[i].1);
                }
                rec
            })
            .collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:#?}");
        let rec = results[0].clone().unwrap();
        assert!(matches!(&rec.value, Value::Counter(c) if c.value() == Some(1)), "{rec:?}");
    }

    /// Defect: under `always-remove`, a counter started on a tombstone's version lost
    /// to that same tombstone when the increment arrived first (a third site), and
    /// won when the tombstone did: sites kept different values forever.
    #[test]
    fn a_counter_on_a_tombstone_base_meets_the_tombstone_the_same_in_either_order() {
        let policy = AlwaysRemove { conflict_window_ms: 100 };
        let tomb = ver(1_000, "a");
        let base = CounterBase { epoch: 0, hlc: tomb.hlc, site: tomb.site.clone(), value: 0, floor: None, dead: false };
        let incr = Op::Incr { key: b"k".to_vec(), delta: 3, total: 3, base };
        let v_incr = ver(1_010, "b");
        let mut first_tomb = None;
        apply(&policy, &mut first_tomb, &tomb, &del());
        apply(&policy, &mut first_tomb, &v_incr, &incr);
        let mut first_incr = None;
        apply(&policy, &mut first_incr, &v_incr, &incr);
        apply(&policy, &mut first_incr, &tomb, &del());
        assert_eq!(first_tomb, first_incr);
        let rec = first_tomb.unwrap();
        assert!(matches!(&rec.value, Value::Counter(c) if c.value() == Some(3)), "{rec:?}");
    }

    #[test]
    fn later_put_wins_in_either_order() {
        let (a, b) = ((ver(10, "a"), put("x")), (ver(10, "b"), put("y")));
        for order in [[&a, &b], [&b, &a]] {
            let mut slot = None;
            for (v, op) in order {
                apply(&LastWriteWins, &mut slot, v, op);
            }
            assert_eq!(slot.unwrap().value, Value::Bytes(b"y".to_vec()), "site b breaks the tie");
        }
    }

    #[test]
    fn tombstone_stops_late_older_put() {
        let mut slot = None;
        apply(&LastWriteWins, &mut slot, &ver(20, "a"), &del());
        assert!(!apply(&LastWriteWins, &mut slot, &ver(10, "b"), &put("old")));
        assert!(slot.unwrap().is_tombstone());
    }

    #[test]
    fn concurrent_increments_add_up() {
        let base = CounterBase { epoch: 0, hlc: Hlc::new(5, 0), site: site("a"), value: 10, floor: None, dead: false };
        let mut slot = None;
        apply(&LastWriteWins, &mut slot, &ver(5, "a"), &put("10"));
        let inc = |total| Op::Incr { key: b"k".to_vec(), delta: 1, total, base: base.clone() };
        apply(&LastWriteWins, &mut slot, &ver(6, "a"), &inc(3));
        apply(&LastWriteWins, &mut slot, &ver(7, "b"), &inc(4));
        apply(&LastWriteWins, &mut slot, &ver(5, "a"), &inc(9)); // late, older total
        let Value::Counter(c) = &slot.as_ref().unwrap().value else { panic!("not a counter") };
        assert_eq!(c.value(), Some(17));
        apply(&LastWriteWins, &mut slot, &ver(8, "b"), &put("1"));
        assert_eq!(slot.unwrap().value, Value::Bytes(b"1".to_vec()));
    }

    #[test]
    fn expiry_register_is_independent() {
        let mut slot = None;
        apply(&LastWriteWins, &mut slot, &ver(5, "a"), &Op::Expire { key: b"k".to_vec(), expire_at_ms: Some(100) });
        apply(&LastWriteWins, &mut slot, &ver(4, "b"), &put("v"));
        let rec = slot.unwrap();
        assert_eq!(rec.expire_at_ms(), Some(100));
        assert!(rec.is_live(99) && !rec.is_live(100));
    }

    #[test]
    fn prefer_site_beats_later_writes() {
        let p = PreferSite(site("a"));
        let mut slot = None;
        apply(&p, &mut slot, &ver(5, "a"), &put("from-a"));
        apply(&p, &mut slot, &ver(9, "b"), &put("from-b"));
        assert_eq!(slot.unwrap().value, Value::Bytes(b"from-a".to_vec()));
    }

    #[test]
    fn window_policies_rank_values_and_tombstones() {
        let nn = PreferNonNull { conflict_window_ms: 100 };
        let mut slot = None;
        apply(&nn, &mut slot, &ver(1010, "a"), &put("v"));
        apply(&nn, &mut slot, &ver(1020, "b"), &del());
        assert!(!slot.as_ref().unwrap().is_tombstone());
        apply(&nn, &mut slot, &ver(1120, "b"), &del());
        assert!(slot.as_ref().unwrap().is_tombstone(), "next window: last write wins");

        let ar = AlwaysRemove { conflict_window_ms: 100 };
        let mut slot = None;
        apply(&ar, &mut slot, &ver(1010, "a"), &del());
        apply(&ar, &mut slot, &ver(1020, "b"), &put("v"));
        assert!(slot.unwrap().is_tombstone());
    }

    #[test]
    fn registered_custom_policies_parse_by_name() {
        #[derive(Debug)]
        struct OldestWins;
        impl MergePolicy for OldestWins {
            fn name(&self) -> String {
                "oldest-wins".into()
            }
            fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
                // Any write beats "never written" (the zero version); then oldest first.
                let written = |c: Candidate<'_>| c.version.hlc != Hlc::ZERO;
                written(a).cmp(&written(b)).then_with(|| b.version.cmp(a.version))
            }
        }
        assert!(matches!(parse_policy("oldest-wins", 100), Err(PolicyParseError::Unknown(_))));
        register_policy("oldest-wins", || Box::new(OldestWins));
        let p = parse_policy("oldest-wins", 100).unwrap();
        let mut slot = None;
        apply(p.as_ref(), &mut slot, &ver(5, "a"), &put("first"));
        apply(p.as_ref(), &mut slot, &ver(9, "b"), &put("later"));
        assert_eq!(slot.unwrap().value, Value::Bytes(b"first".to_vec()));
    }

    #[test]
    fn parse_policies() {
        assert_eq!(parse_policy("prefer-site:east", 100).unwrap().name(), "prefer-site:east");
        assert!(matches!(parse_policy("bogus", 100), Err(PolicyParseError::Unknown(_))));
        assert!(matches!(parse_policy("prefer-site:East", 100), Err(PolicyParseError::BadSite(..))));
    }

    /// The store keeps a record in a box with its key (32 bytes) and a change
    /// stamp (8): at 88 bytes the box is 128, jemalloc's 128 class. With the
    /// expiry an `Option<u64>` and four part boxes of their own it was 160.
    #[test]
    fn a_record_is_88_bytes_and_its_parts_box_40() {
        assert_eq!(std::mem::size_of::<Record>(), 88);
        assert_eq!(std::mem::size_of::<Parts>(), 40);
    }

    #[test]
    fn every_expiry_reads_back_and_only_a_collection_or_the_last_millisecond_takes_a_parts_box() {
        let mut rec = Record::empty();
        for at in [Some(0), Some(1), Some(u64::MAX - 1), None, Some(u64::MAX), Some(7), None] {
            rec.set_expire_at_ms(at);
            assert_eq!(rec.expire_at_ms(), at);
            assert_eq!(rec.parts.is_some(), at == Some(u64::MAX), "{at:?}");
            assert_eq!(rec, Record::string(Version::zero(), Value::Tombstone, Version::zero(), at));
        }
        rec.set_expire_at_ms(Some(u64::MAX));
        rec.hash_or_insert_with(Hash::new);
        rec.set_expire_at_ms(None);
        assert!(rec.has_parts() && rec.expire_at_ms().is_none());
        rec.set_expire_at_ms(Some(u64::MAX));
        assert!(rec.take_hash().is_some());
        assert!(!rec.has_parts() && rec.parts.is_some(), "the expiry keeps the box");
        rec.set_expire_at_ms(Some(3));
        assert!(rec.parts.is_none(), "and frees it when it goes");
    }

    #[test]
    fn a_record_left_without_parts_frees_their_box() {
        let mut rec = Record::empty();
        assert!(rec.take_set().is_none() && rec.parts.is_none());
        rec.set_or_insert_with(Set::new);
        rec.put_list(List::new());
        assert!(rec.take_set().is_some());
        assert!(rec.parts.is_some() && rec.set().is_none() && rec.list().is_some());
        assert!(rec.take_list().is_some());
        assert!(rec.parts.is_none() && !rec.has_parts());
        assert_eq!(rec, Record::empty());
    }

    /// The JSON a record wrote when its expiry and parts were plain fields.
    #[test]
    fn a_record_serializes_as_before() {
        let v = ver(5, "a");
        let mut counter = None;
        let base = CounterBase::on(&v, 0);
        apply(&LastWriteWins, &mut counter, &v, &Op::Incr { key: b"k".to_vec(), delta: 2, total: 2, base });
        let cases = [
            (
                Record::string(v.clone(), Value::Bytes(b"v".to_vec()), v.clone(), Some(100)),
                r#"{"version":{"epoch":0,"hlc":327680,"site":"a"},"value":{"Bytes":[118]},"ttl_version":{"epoch":0,"hlc":327680,"site":"a"},"expire_at_ms":100}"#,
            ),
            (
                Record::string(v.clone(), Value::Bytes(b"v".to_vec()), v.clone(), Some(u64::MAX)),
                r#"{"version":{"epoch":0,"hlc":327680,"site":"a"},"value":{"Bytes":[118]},"ttl_version":{"epoch":0,"hlc":327680,"site":"a"},"expire_at_ms":18446744073709551615}"#,
            ),
            (
                counter.unwrap(),
                r#"{"version":{"epoch":0,"hlc":327680,"site":"a"},"value":{"Counter":{"base":0,"totals":{"a":{"hlc":327680,"total":2}},"floor":0,"base_dead":false}},"ttl_version":{"epoch":0,"hlc":327680,"site":"a"},"expire_at_ms":null}"#,
            ),
            (
                Record::empty(),
                r#"{"version":{"epoch":0,"hlc":0,"site":"0"},"value":"Tombstone","ttl_version":{"epoch":0,"hlc":0,"site":"0"},"expire_at_ms":null}"#,
            ),
        ];
        for (rec, json) in cases {
            assert_eq!(serde_json::to_string(&rec).unwrap(), json);
            assert_eq!(serde_json::from_str::<Record>(json).unwrap(), rec);
        }
    }
}
