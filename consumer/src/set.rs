//! Sets: the part of a key's [`Record`] that holds members, and how the set
//! operations (format version 5) join into it.
//!
//! A set is an add-wins observed-remove set. Each member keeps, per site, that
//! site's latest add of it (its version); a remove (`SREM`, `SPOP`, `SMOVE`'s
//! source) carries, per member, the adds the removing site held of it (`seen`),
//! and an add dies when its timestamp is at or below what a remove of its member
//! saw of its site. An add the remover had not seen (made concurrently at another
//! site, or after) survives: a concurrent `SADD` beats an `SREM`.
//!
//! Deleting a whole set (`DEL`, `UNLINK`, `RENAME`, `FLUSHDB`, an `…STORE` over it)
//! is observed-remove too ([`Set::cleared`], as [`crate::hash::Hash::cleared`]): an
//! add at or below `cleared[its site]` is dead. An `SADD` to a key that is not a
//! live set where it runs carries `seen`: the members that site held die, and the
//! key's expiry is reset.
//!
//! The state is kept in a normal form, so every site that joined the same entries
//! holds the same record whatever their order: an add that is dead is not kept;
//! a member's remove is kept only while no live add of its site is above it and
//! `cleared` does not cover it; a member with neither is dropped.
//!
//! The key's type: see [`Record::kind`]. A member is visible when it has an add
//! ranking above the key's other registers (its string's, and its hash part's
//! top), so a `SET` or `HSET` of the key kills every add older than it.

use crate::hash::alloc_bytes;
use crate::merge::Record;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use xsite_schemas::{Hlc, MemberSeen, SiteId, Version};

/// The set part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    /// Member names boxed (no spare capacity), each with its stamps: see
    /// [`ELEMENT_OVERHEAD_BYTES`] for the layout.
    pub members: BTreeMap<Box<[u8]>, Element>,
    /// Per site, the highest timestamp of that site's adds a whole-set delete saw
    /// (pointwise max of every such delete's `seen`).
    pub cleared: BTreeMap<SiteId, Hlc>,
    /// The highest version of every set op joined.
    pub top: Version,
    /// What the members take in memory ([`element_bytes`] summed).
    bytes: u64,
}

/// One member: its live adds, and what removes of it saw ([`Stamps`] spelled
/// out). Almost every member has one add and no remove kept: that is held inline
/// in 24 bytes, anything else in a box.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "Stamps", into = "Stamps")]
pub struct Element(Held);

#[derive(Clone)]
enum Held {
    /// One add, no remove kept.
    One(Version),
    /// Anything else (no add, several, or a remove kept): never one add alone.
    Many(Box<Stamps>),
}

/// A member's stamps, spelled out: what an edit works on, and what an [`Element`]
/// compares, prints and serializes as.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename = "Element")]
pub struct Stamps {
    /// Each site's latest add that no remove saw, in site order (one per site).
    pub adds: SmallVec<[Version; 1]>,
    /// Per site, the highest timestamp of that site's adds a remove of the member
    /// saw, in site order: kept only while it still kills something that may yet
    /// arrive (no live add of that site above it, `cleared` not covering it).
    pub removed: Vec<(SiteId, Hlc)>,
}

impl Element {
    /// A member of these stamps (a snapshot's).
    pub fn new(adds: SmallVec<[Version; 1]>, removed: Vec<(SiteId, Hlc)>) -> Element {
        Element::from(Stamps { adds, removed })
    }

    /// Its live adds, in site order.
    pub fn adds(&self) -> &[Version] {
        match &self.0 {
            Held::One(v) => std::slice::from_ref(v),
            Held::Many(s) => &s.adds,
        }
    }

    /// What removes of it saw, per site, in site order.
    pub fn removed(&self) -> &[(SiteId, Hlc)] {
        match &self.0 {
            Held::One(_) => &[],
            Held::Many(s) => &s.removed,
        }
    }

    /// Its stamps spelled out.
    pub fn stamps(&self) -> Stamps {
        match &self.0 {
            Held::One(v) => Stamps { adds: SmallVec::from_buf([v.clone()]), removed: Vec::new() },
            Held::Many(s) => (**s).clone(),
        }
    }

    /// Whether it has an add ranking above `floor`.
    pub fn shows(&self, floor: &Version) -> bool {
        self.adds().iter().any(|v| v > floor)
    }

    /// What a remove of it at this site says it saw: per site, its latest add.
    pub fn seen(&self) -> BTreeMap<SiteId, Hlc> {
        self.adds().iter().map(|v| (v.site.clone(), v.hlc)).collect()
    }
}

impl From<Stamps> for Element {
    /// Inline when it is one add alone; else boxed, without spare capacity.
    fn from(mut s: Stamps) -> Element {
        if s.adds.len() == 1 && s.removed.is_empty() {
            return Element(Held::One(s.adds.swap_remove(0)));
        }
        s.adds.shrink_to_fit();
        s.removed.shrink_to_fit();
        Element(Held::Many(Box::new(s)))
    }
}

impl From<Element> for Stamps {
    fn from(e: Element) -> Stamps {
        match e.0 {
            Held::One(v) => Stamps { adds: SmallVec::from_buf([v]), removed: Vec::new() },
            Held::Many(s) => *s,
        }
    }
}

impl Default for Element {
    fn default() -> Element {
        Element::from(Stamps::default())
    }
}

impl PartialEq for Element {
    /// As its stamps compare (each has one representation anyway).
    fn eq(&self, other: &Element) -> bool {
        self.adds() == other.adds() && self.removed() == other.removed()
    }
}

impl Eq for Element {}

impl std::fmt::Debug for Element {
    /// As its stamps print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Element").field("adds", &self.adds()).field("removed", &self.removed()).finish()
    }
}

impl Stamps {
    fn removed_of(&self, site: &SiteId) -> Hlc {
        self.removed.iter().find(|(s, _)| s == site).map_or(Hlc::ZERO, |(_, h)| *h)
    }

    /// Whether it holds nothing: no add and no remove worth keeping.
    fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.removed.is_empty()
    }

    /// Brings it to the normal form under `cleared`.
    fn normalize(&mut self, cleared: &BTreeMap<SiteId, Hlc>) {
        let covered_by = |site: &SiteId| cleared.get(site).copied().unwrap_or(Hlc::ZERO);
        let removed = std::mem::take(&mut self.removed);
        self.adds.retain(|v| v.hlc > covered_by(&v.site) && removed.iter().all(|(s, h)| s != &v.site || v.hlc > *h));
        let adds = &self.adds;
        self.removed =
            removed.into_iter().filter(|(s, h)| *h > covered_by(s) && !adds.iter().any(|v| &v.site == s)).collect();
    }
}

impl Set {
    pub fn new() -> Set {
        Set { members: BTreeMap::new(), cleared: BTreeMap::new(), top: Version::zero(), bytes: 0 }
    }

    /// A set of these parts (a snapshot's).
    pub fn from_parts(members: BTreeMap<Box<[u8]>, Element>, cleared: BTreeMap<SiteId, Hlc>, top: Version) -> Set {
        let bytes = members.iter().map(|(k, e)| element_bytes(k, e)).sum();
        Set { members, cleared, top, bytes }
    }

    /// What the members take in memory, about.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.cleared.len() as u64 * crate::hash::CLEARED_SITE_BYTES
    }

    /// The visible members of a set whose other registers rank up to `floor`.
    pub fn visible<'a>(&'a self, floor: &'a Version) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.members.iter().filter(move |(_, e)| e.shows(floor)).map(|(k, _)| &**k)
    }

    /// What a whole-set delete at this site says it saw: per site, the highest
    /// timestamp of every add and remove held, and what earlier deletes saw.
    pub fn seen(&self) -> BTreeMap<SiteId, Hlc> {
        let mut seen = self.cleared.clone();
        let mut raise = |site: &SiteId, hlc: Hlc| {
            let e = seen.entry(site.clone()).or_insert(hlc);
            *e = (*e).max(hlc);
        };
        for e in self.members.values() {
            for v in e.adds() {
                raise(&v.site, v.hlc);
            }
            for (s, h) in e.removed() {
                raise(s, *h);
            }
        }
        seen
    }

    pub(crate) fn raise_top(&mut self, version: &Version) -> bool {
        if *version > self.top {
            self.top = version.clone();
            true
        } else {
            false
        }
    }

    /// Runs `edit` on member `name`'s stamps (a new member's if absent), then
    /// brings them to the normal form, keeping [`Set::bytes`] exact. Returns
    /// whether it changed.
    fn edit(&mut self, name: &[u8], edit: impl FnOnce(&mut Stamps)) -> bool {
        let old = self.members.get(name);
        let before = old.map(Element::stamps).unwrap_or_default();
        let mut s = before.clone();
        edit(&mut s);
        s.normalize(&self.cleared);
        if s == before {
            return false;
        }
        if old.is_some() {
            self.bytes -= stamps_bytes(name.len(), &before);
        }
        if s.is_empty() {
            self.members.remove(name);
            return true;
        }
        self.bytes += stamps_bytes(name.len(), &s);
        match self.members.get_mut(name) {
            Some(e) => *e = Element::from(s),
            None => {
                self.members.insert(name.into(), Element::from(s));
            }
        }
        true
    }

    /// Joins an add of `name` at `version`.
    pub(crate) fn add(&mut self, name: &[u8], version: &Version) -> bool {
        self.edit(name, |e| {
            if version.hlc <= e.removed_of(&version.site) {
                return;
            }
            match e.adds.binary_search_by(|v| v.site.cmp(&version.site)) {
                Ok(i) if e.adds[i] < *version => e.adds[i] = version.clone(),
                Ok(_) => {}
                Err(i) => e.adds.insert(i, version.clone()),
            }
        })
    }

    /// Joins a remove of `name` that saw `seen`.
    pub(crate) fn remove(&mut self, name: &[u8], seen: &BTreeMap<SiteId, Hlc>) -> bool {
        self.edit(name, |e| {
            for (site, hlc) in seen {
                match e.removed.binary_search_by(|(s, _)| s.cmp(site)) {
                    Ok(i) => e.removed[i].1 = e.removed[i].1.max(*hlc),
                    Err(i) => e.removed.insert(i, (site.clone(), *hlc)),
                }
            }
        })
    }

    /// Joins a whole-set delete's `seen`.
    pub(crate) fn clear(&mut self, seen: &BTreeMap<SiteId, Hlc>) -> bool {
        let mut changed = false;
        for (site, hlc) in seen {
            let e = self.cleared.entry(site.clone()).or_insert(Hlc::ZERO);
            if *hlc > *e {
                *e = *hlc;
                changed = true;
            }
        }
        if changed {
            let names: Vec<Box<[u8]>> = self.members.keys().cloned().collect();
            for name in names {
                self.edit(&name, |_| {});
            }
        }
        changed
    }

    /// Reclaims every member into `cleared` (an expired set): the visible state is
    /// the same before and after. Returns the bytes the members took.
    pub fn reclaim(&mut self) -> u64 {
        let bytes = self.bytes;
        let seen = self.seen();
        self.clear(&seen);
        bytes - self.bytes
    }
}

impl Default for Set {
    fn default() -> Self {
        Set::new()
    }
}

/// Bytes a member takes in memory, about: its share of the map's nodes, its
/// name's allocation, and its stamps' box when they are not one add alone.
pub fn element_bytes(name: &[u8], e: &Element) -> u64 {
    alloc_bytes(name.len()) + ELEMENT_OVERHEAD_BYTES + boxed_bytes(e.adds().len(), e.removed().len())
}

/// What a new member of a `name_len`-byte name with one add takes
/// ([`element_bytes`]).
pub fn new_element_bytes(name_len: usize) -> u64 {
    alloc_bytes(name_len) + ELEMENT_OVERHEAD_BYTES
}

fn stamps_bytes(name_len: usize, s: &Stamps) -> u64 {
    alloc_bytes(name_len) + ELEMENT_OVERHEAD_BYTES + boxed_bytes(s.adds.len(), s.removed.len())
}

/// What a member's stamps take beside its slot: none for one add alone (inline);
/// else the box and each stamp.
fn boxed_bytes(adds: usize, removed: usize) -> u64 {
    if adds == 1 && removed == 0 {
        0
    } else {
        STAMPS_BOX_BYTES + (adds + removed) as u64 * SITE_STAMP_BYTES
    }
}

/// A member's share of the map's nodes (its name's allocation aside). A slot
/// (boxed name 16 bytes, element 24) is 40 bytes; a leaf of 11 slots is 456
/// bytes, jemalloc's 512 class, an inner node (12 edges more) 552, its 640 class.
/// Members inserted in ascending order leave 6 per leaf and one in its parent:
/// 512 / 7 + 640 / 49 = 86 bytes a member; in random order leaves are fuller,
/// about 70. Measured (RSS growth of a set of 1M members, less the names'
/// allocations): 80 ascending, 74 random.
pub const ELEMENT_OVERHEAD_BYTES: u64 = 80;
/// The box of a member's stamps when they are not one add alone: [`Stamps`] is
/// 56 bytes, jemalloc's 64 class.
pub const STAMPS_BOX_BYTES: u64 = 64;
/// What one add (a version, 24 bytes) or remove (a site and a timestamp, 16) of
/// a boxed member's stamps costs, about.
pub const SITE_STAMP_BYTES: u64 = 24;

/// Joins a set op into a record (see [`crate::merge::apply`]).
pub(crate) fn apply_set(rec: &mut Record, version: &Version, op: &xsite_schemas::Op) -> bool {
    use xsite_schemas::Op;
    let s = rec.set_or_insert_with(Set::new);
    let mut changed = s.raise_top(version);
    let reset = match op {
        Op::SAdd { members, seen, .. } => {
            if let Some(seen) = seen {
                changed |= s.clear(seen);
            }
            for m in members {
                changed |= s.add(m, version);
            }
            seen.is_some()
        }
        Op::SRem { members, .. } => {
            for MemberSeen { member, seen } in members {
                changed |= s.remove(member, seen);
            }
            false
        }
        Op::SClear { seen, .. } => {
            changed |= s.clear(seen);
            false
        }
        _ => unreachable!("apply_set takes set ops only"),
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
    use crate::merge::{LastWriteWins, Value};
    use std::collections::BTreeSet;
    use xsite_schemas::Op;

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }
    fn ver(ms: u64, s: &str) -> Version {
        Version::new(Hlc::new(ms, 0), site(s))
    }
    fn seen(pairs: &[(&str, u64)]) -> BTreeMap<SiteId, Hlc> {
        pairs.iter().map(|(s, ms)| (site(s), Hlc::new(*ms, 0))).collect()
    }
    fn sadd(members: &[&str], seen: Option<BTreeMap<SiteId, Hlc>>) -> Op {
        Op::SAdd { key: b"s".to_vec(), members: members.iter().map(|m| m.as_bytes().to_vec()).collect(), seen }
    }
    fn srem(member: &str, saw: &[(&str, u64)]) -> Op {
        Op::SRem {
            key: b"s".to_vec(),
            members: vec![MemberSeen { member: member.as_bytes().to_vec(), seen: seen(saw) }],
        }
    }
    type Shown = Option<Result<BTreeSet<Vec<u8>>, Value>>;

    fn contents(rec: Option<Record>) -> Shown {
        let rec = rec?;
        if rec.is_tombstone() {
            return None;
        }
        let members: Option<BTreeSet<Vec<u8>>> = rec.set_members().map(|m| m.map(<[u8]>::to_vec).collect());
        Some(members.ok_or(rec.value))
    }
    fn converged(writes: &[(Version, Op)]) -> Shown {
        let rec = check_policy(&LastWriteWins, writes, delivery_orders(writes.len(), 200, 5)).unwrap();
        contents(rec)
    }
    fn set_of(members: &[&str]) -> Shown {
        Some(Ok(members.iter().map(|m| m.as_bytes().to_vec()).collect()))
    }

    /// The layout [`ELEMENT_OVERHEAD_BYTES`] and [`STAMPS_BOX_BYTES`] are derived
    /// from: a change of it is a change of those constants too.
    #[test]
    fn a_member_takes_a_40_byte_slot_in_the_map() {
        assert_eq!(std::mem::size_of::<Element>(), 24);
        assert_eq!(std::mem::size_of::<(Box<[u8]>, Element)>(), 40);
        assert_eq!(std::mem::size_of::<Stamps>(), 56);
    }

    #[test]
    fn a_member_is_inline_only_as_one_add_alone_and_compares_as_its_stamps() {
        let one = Element::new(vec![ver(10, "a")].into(), vec![]);
        assert!(matches!(one.0, Held::One(_)));
        let two = Element::new(vec![ver(10, "a"), ver(11, "b")].into(), vec![]);
        let removed = Element::new(vec![ver(10, "a")].into(), vec![(site("b"), Hlc::new(9, 0))]);
        for e in [&two, &removed, &Element::default()] {
            assert!(matches!(e.0, Held::Many(_)), "{e:?}");
            assert_eq!(&Element::from(e.stamps()), e);
        }
        assert_eq!(Element::from(one.stamps()), one);
        assert_ne!(one, removed);
        assert!(format!("{one:?}").starts_with("Element { adds: ["), "prints as the struct it was: {one:?}");
    }

    #[test]
    fn a_concurrent_add_survives_a_remove_that_did_not_see_it() {
        // a adds x at 10; b removes x having seen a's add, while c adds x at 11.
        let writes = [
            (ver(10, "a"), sadd(&["x", "y"], None)),
            (ver(11, "c"), sadd(&["x"], None)),
            (ver(12, "b"), srem("x", &[("a", 10)])),
        ];
        assert_eq!(converged(&writes), set_of(&["x", "y"]));
        // Had b seen c's add too, x is gone.
        let saw_both = [writes[0].clone(), writes[1].clone(), (ver(12, "b"), srem("x", &[("a", 10), ("c", 11)]))];
        assert_eq!(converged(&saw_both), set_of(&["y"]));
        // A remove ordered after a later re-add at the same site does not touch it.
        let re_add = [writes[0].clone(), (ver(20, "a"), sadd(&["x"], None)), (ver(15, "b"), srem("x", &[("a", 10)]))];
        assert_eq!(converged(&re_add), set_of(&["x", "y"]));
    }

    #[test]
    fn a_delete_of_the_set_removes_what_it_saw_and_leaves_nothing_behind() {
        let writes = [
            (ver(10, "a"), sadd(&["x"], None)),
            (ver(11, "b"), sadd(&["y"], None)),
            (ver(12, "b"), srem("y", &[("b", 11)])),
            (ver(13, "b"), sadd(&["z"], None)),
            (ver(14, "a"), Op::SClear { key: b"s".to_vec(), seen: seen(&[("a", 10), ("b", 12)]) }),
        ];
        assert_eq!(converged(&writes), set_of(&["z"]));
        let all =
            [&writes[..4], &[(ver(14, "a"), Op::SClear { key: b"s".to_vec(), seen: seen(&[("a", 10), ("b", 13)]) })]]
                .concat();
        let rec = check_policy(&LastWriteWins, &all, delivery_orders(all.len(), 100, 3)).unwrap().unwrap();
        assert!(rec.is_tombstone());
        assert!(rec.set().unwrap().members.is_empty(), "a delete that saw everything keeps no member: {rec:?}");
    }

    #[test]
    fn the_type_of_a_key_is_its_latest_write_and_older_members_stay_dead() {
        let put = Op::Put { key: b"s".to_vec(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false };
        let hset = Op::HSet {
            key: b"s".to_vec(),
            fields: vec![xsite_schemas::FieldValue { field: b"f".to_vec(), value: b"1".to_vec() }],
            seen: None,
        };
        let set_then_string = [(ver(10, "a"), sadd(&["x"], None)), (ver(12, "b"), put.clone())];
        assert_eq!(converged(&set_then_string), Some(Err(Value::Bytes(b"v".to_vec()))));
        let string_then_set =
            [(ver(10, "a"), sadd(&["x"], None)), (ver(12, "b"), put), (ver(13, "c"), sadd(&["y"], Some(seen(&[]))))];
        assert_eq!(converged(&string_then_set), set_of(&["y"]));
        // A hash and a set written concurrently: the later write decides, alike everywhere.
        let hash_and_set = [(ver(10, "a"), sadd(&["x"], None)), (ver(11, "b"), hset)];
        let rec = check_policy(&LastWriteWins, &hash_and_set, delivery_orders(2, 10, 1)).unwrap().unwrap();
        assert_eq!(rec.kind(), crate::merge::Kind::Hash);
        assert!(rec.set_members().is_none());
    }

    /// Random set, hash and string writes at three sites, with random seen sets:
    /// every delivery order (with duplicates) ends in the same record.
    #[test]
    fn random_writes_converge_in_every_delivery_order() {
        let seed: u64 = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11);
        let mut rng = seed | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let sites = ["a", "b", "c"];
        let members = ["x", "y", "z"];
        for case in 0..300 {
            let writes: Vec<(Version, Op)> = (0..7)
                .map(|i| {
                    let v = ver(10 + i * 2 + next(2), sites[next(3) as usize]);
                    let m = members[next(3) as usize];
                    let picks = [next(3), next(14), next(3), next(14)];
                    let saw = [(sites[picks[0] as usize], 10 + picks[1]), (sites[picks[2] as usize], 10 + picks[3])];
                    let op = match next(9) {
                        8 => Op::HSet {
                            key: b"s".to_vec(),
                            fields: vec![xsite_schemas::FieldValue {
                                field: m.as_bytes().to_vec(),
                                value: b"1".to_vec(),
                            }],
                            seen: (next(2) == 0).then(|| seen(&saw)),
                        },
                        0 | 1 => sadd(&[m], None),
                        2 => sadd(&[m, members[next(3) as usize]], Some(seen(&saw))),
                        3 | 4 => srem(m, &saw),
                        5 => Op::SClear { key: b"s".to_vec(), seen: seen(&saw) },
                        6 => Op::Put { key: b"s".to_vec(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false },
                        _ => Op::Delete { key: b"s".to_vec() },
                    };
                    (v, op)
                })
                .collect();
            if let Err(e) = check_policy(&LastWriteWins, &writes, delivery_orders(writes.len(), 40, seed + case)) {
                panic!("seed {seed} case {case}: {e}");
            }
        }
    }
}
