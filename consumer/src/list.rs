//! Lists: the part of a key's [`Record`] that holds a sequence of elements, and
//! how the list operations (format version 7) join into it.
//!
//! Every element has a [`Place`], chosen once by the site that put it there and
//! shipped with it: a path of idents, ordered lexicographically, whose last ident
//! is the element's own id (its put's version and its index in that put). A push
//! steps one digit past the first ident of the list's end; `LINSERT` takes a path
//! between its two neighbours ([`Place::between`]). Every site orders elements by
//! their places alone, so pushes made concurrently at two sites interleave the same
//! way everywhere (ties of equal digits go by id).
//!
//! - A put ([`Op::LPut`]) of a place not known yet inserts the element, unless a
//!   remove of that place or a whole-list delete already covers it; of a known
//!   place it sets the value, a register (last write wins on the entry's version):
//!   that is `LSET`, and an `LSET` that arrives before the push it follows inserts
//!   the element with its value.
//! - A remove ([`Op::LRem`]: pops, `LREM`, `LTRIM`, `LMOVE`'s source) names places:
//!   each element goes for good, wherever and whenever its put arrives. Concurrent
//!   pops at two sites of the same element hand it to both clients, and a pop that
//!   did not see an element pushed elsewhere leaves it.
//! - A whole-list delete ([`Op::LClear`], and `DEL`, `RENAME`, `FLUSHDB`, an
//!   `…STORE` over it) is observed-remove as for sets: an element dies when its
//!   id's timestamp is at or below `cleared[its site]`. A site's entries of one key
//!   arrive in order, so that is every element of that site the deleter saw, and
//!   those before it.
//!
//! The state is in a normal form: `items` holds the elements put and neither
//! removed nor cleared, each with the highest version of its value; `removed` the
//! removed places `cleared` does not cover. So every site that joined the same
//! entries holds the same record, whatever their order.
//!
//! The key's type: see [`Record::kind`]. An element is visible when its id ranks
//! above the key's other registers (its string's and its other parts' tops), so a
//! `SET` of the key kills every element older than it.

use crate::merge::Record;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use xsite_schemas::{Hlc, Ident, ListItem, Place, SiteId, Version};

/// The list part of a record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct List {
    /// The elements put and not removed, by place.
    pub items: BTreeMap<Place, Item>,
    /// Places removed (their element may still arrive), not covered by `cleared`.
    pub removed: BTreeSet<Place>,
    /// Per site, the highest timestamp of that site's element ids a whole-list
    /// delete saw (pointwise max of every such delete's `seen`).
    pub cleared: BTreeMap<SiteId, Hlc>,
    /// The highest version of every list op joined.
    pub top: Version,
    /// Removed places whose ids were below this were dropped ([`List::prune`]):
    /// every site had applied every put below it, so a place below it that is not
    /// held was removed (or cleared), and a late put of it (an `LSET` made elsewhere
    /// before the remove arrived there) changes nothing.
    pub pruned: Hlc,
    /// What the elements and tombstones take in memory, about.
    bytes: u64,
    /// A version at or below every element's id (`None`: not known), so that
    /// counting the visible elements of a list alone needs no walk. A hint only:
    /// not part of the state that sites compare.
    #[serde(skip)]
    low: Option<Version>,
}

impl PartialEq for List {
    fn eq(&self, other: &List) -> bool {
        self.items == other.items
            && self.removed == other.removed
            && self.cleared == other.cleared
            && self.top == other.top
            && self.pruned == other.pruned
            && self.bytes == other.bytes
    }
}

impl Eq for List {}

/// One element: its value, and the version that set it when that is not the put
/// that inserted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub value: Vec<u8>,
    /// The version of the `LSET` that wrote `value`; `None`: the element's own put.
    pub set: Option<Version>,
}

impl Item {
    fn version<'a>(&'a self, id: &'a Version) -> &'a Version {
        self.set.as_ref().unwrap_or(id)
    }
}

impl List {
    pub fn new() -> List {
        List {
            items: BTreeMap::new(),
            removed: BTreeSet::new(),
            cleared: BTreeMap::new(),
            top: Version::zero(),
            pruned: Hlc::ZERO,
            bytes: 0,
            low: None,
        }
    }

    /// A list of these parts (a snapshot's).
    pub fn from_parts(
        items: BTreeMap<Place, Item>,
        removed: BTreeSet<Place>,
        cleared: BTreeMap<SiteId, Hlc>,
        top: Version,
        pruned: Hlc,
    ) -> List {
        let bytes =
            items.iter().map(|(p, i)| item_bytes(p, i)).sum::<u64>() + removed.iter().map(place_bytes).sum::<u64>();
        let low = items.keys().map(|p| p.id().version()).min();
        List { items, removed, cleared, top, pruned, bytes, low }
    }

    /// How many elements rank above `floor`: the whole count when every id does.
    pub fn visible_len(&self, floor: &Version) -> usize {
        match &self.low {
            Some(low) if low > floor => self.items.len(),
            _ if self.items.is_empty() => 0,
            _ => self.visible(floor).count(),
        }
    }

    /// What the elements take in memory, about.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.cleared.len() as u64 * crate::hash::CLEARED_SITE_BYTES
    }

    /// The visible elements of a list whose other registers rank up to `floor`, in
    /// order.
    pub fn visible<'a>(&'a self, floor: &'a Version) -> impl DoubleEndedIterator<Item = (&'a Place, &'a Item)> + 'a {
        self.items.iter().filter(move |(p, _)| p.id().version() > *floor)
    }

    fn covered(&self, id: &Ident) -> bool {
        self.cleared.get(&id.site).is_some_and(|h| id.hlc <= *h)
    }

    /// What a whole-list delete at this site says it saw: per site, the highest
    /// timestamp of every element id held (removed ones too), and what earlier
    /// deletes saw.
    pub fn seen(&self) -> BTreeMap<SiteId, Hlc> {
        let mut seen = self.cleared.clone();
        for place in self.items.keys().chain(self.removed.iter()) {
            let id = place.id();
            let e = seen.entry(id.site.clone()).or_insert(id.hlc);
            *e = (*e).max(id.hlc);
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

    /// Joins a put of `item` at `version`.
    pub(crate) fn put(&mut self, item: &ListItem, version: &Version) -> bool {
        let place = &item.place;
        let known = self.items.contains_key(place);
        if !known && (self.covered(place.id()) || self.removed.contains(place) || place.id().hlc < self.pruned) {
            return false;
        }
        let id = place.id().version();
        match self.items.get_mut(place) {
            Some(held) if version > held.version(&id) => {
                self.bytes -= item_bytes(place, held);
                held.value = item.value.clone();
                held.set = (*version != id).then(|| version.clone());
                self.bytes += item_bytes(place, held);
                true
            }
            Some(_) => false,
            None => {
                let held = Item { value: item.value.clone(), set: (*version != id).then(|| version.clone()) };
                self.bytes += item_bytes(place, &held);
                self.low = match self.low.take() {
                    _ if self.items.is_empty() => Some(id),
                    Some(low) => Some(low.min(id)),
                    None => None,
                };
                self.items.insert(place.clone(), held);
                true
            }
        }
    }

    /// Joins a remove of the element at `place`.
    pub(crate) fn remove(&mut self, place: &Place) -> bool {
        let mut changed = false;
        if let Some(held) = self.items.remove(place) {
            self.bytes -= item_bytes(place, &held);
            changed = true;
        }
        let kept = !self.covered(place.id()) && place.id().hlc >= self.pruned;
        if kept && self.removed.insert(place.clone()) {
            self.bytes += place_bytes(place);
            changed = true;
        }
        changed
    }

    /// Joins a whole-list delete's `seen`.
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
            let cleared = &self.cleared;
            let covered = |p: &Place| cleared.get(&p.id().site).is_some_and(|h| p.id().hlc <= *h);
            let mut freed = 0;
            self.items.retain(|p, i| {
                let keep = !covered(p);
                if !keep {
                    freed += item_bytes(p, i);
                }
                keep
            });
            self.removed.retain(|p| {
                let keep = !covered(p);
                if !keep {
                    freed += place_bytes(p);
                }
                keep
            });
            self.bytes -= freed;
        }
        changed
    }

    /// Drops the removed places whose ids are below `below`, a timestamp every site
    /// has applied every entry under (the collection floor): their puts arrived
    /// everywhere, and [`List::pruned`] keeps a late put of one from coming back.
    /// Returns the bytes freed. The visible state is the same before and after.
    pub fn prune(&mut self, below: Hlc) -> u64 {
        if below <= self.pruned {
            return 0;
        }
        let mut freed = 0;
        self.removed.retain(|p| {
            let keep = p.id().hlc >= below;
            if !keep {
                freed += place_bytes(p);
            }
            keep
        });
        self.bytes -= freed;
        self.pruned = below;
        freed
    }

    /// Reclaims every element into `cleared` (an expired list): the visible state
    /// is the same before and after. Returns the bytes the elements took.
    pub fn reclaim(&mut self) -> u64 {
        let bytes = self.bytes;
        let seen = self.seen();
        self.clear(&seen);
        bytes - self.bytes
    }
}

impl Default for List {
    fn default() -> Self {
        List::new()
    }
}

/// What one ident of a place costs in memory.
pub const IDENT_BYTES: u64 = 56;
/// What an element costs beyond its value and place: the map node and vectors.
pub const ITEM_OVERHEAD_BYTES: u64 = 96;

fn place_bytes(place: &Place) -> u64 {
    place.0.len() as u64 * IDENT_BYTES + 24
}

/// Bytes an element takes in memory, about.
pub fn item_bytes(place: &Place, item: &Item) -> u64 {
    item.value.len() as u64 + place_bytes(place) + ITEM_OVERHEAD_BYTES + u64::from(item.set.is_some()) * 32
}

/// Joins a list op into a record (see [`crate::merge::apply`]).
pub(crate) fn apply_list(rec: &mut Record, version: &Version, op: &xsite_schemas::Op) -> bool {
    use xsite_schemas::Op;
    let l = rec.list_or_insert_with(List::new);
    let mut changed = l.raise_top(version);
    let reset = match op {
        Op::LPut { items, seen, .. } => {
            if let Some(seen) = seen {
                changed |= l.clear(seen);
            }
            for item in items {
                changed |= l.put(item, version);
            }
            seen.is_some()
        }
        Op::LRem { places, .. } => {
            for place in places {
                changed |= l.remove(place);
            }
            false
        }
        Op::LClear { seen, .. } => {
            changed |= l.clear(seen);
            false
        }
        _ => unreachable!("apply_list takes list ops only"),
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
    use xsite_schemas::Op;

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }
    fn ver(ms: u64, s: &str) -> Version {
        Version::new(Hlc::new(ms, 0), site(s))
    }
    fn ident(d: i64, ms: u64, s: &str, n: u32) -> Ident {
        Ident { d, epoch: 0, hlc: Hlc::new(ms, 0), site: site(s), n }
    }
    fn at(d: i64, ms: u64, s: &str) -> Place {
        Place(vec![ident(d, ms, s, 0)])
    }
    fn lput(items: &[(Place, &str)], seen: Option<BTreeMap<SiteId, Hlc>>) -> Op {
        Op::LPut {
            key: b"l".to_vec(),
            items: items.iter().map(|(p, v)| ListItem { place: p.clone(), value: v.as_bytes().to_vec() }).collect(),
            seen,
        }
    }
    fn lrem(places: &[Place]) -> Op {
        Op::LRem { key: b"l".to_vec(), places: places.to_vec() }
    }
    fn seen(pairs: &[(&str, u64)]) -> BTreeMap<SiteId, Hlc> {
        pairs.iter().map(|(s, ms)| (site(s), Hlc::new(*ms, 0))).collect()
    }
    type Shown = Option<Result<Vec<Vec<u8>>, Value>>;

    fn contents(rec: Option<Record>) -> Shown {
        let rec = rec?;
        if rec.is_tombstone() {
            return None;
        }
        let values: Option<Vec<Vec<u8>>> = rec.list_items().map(|m| m.map(|(_, i)| i.value.clone()).collect());
        Some(values.ok_or(rec.value))
    }
    fn converged(writes: &[(Version, Op)]) -> Shown {
        let rec = check_policy(&LastWriteWins, writes, delivery_orders(writes.len(), 200, 5)).unwrap();
        contents(rec)
    }
    fn list_of(values: &[&str]) -> Shown {
        Some(Ok(values.iter().map(|m| m.as_bytes().to_vec()).collect()))
    }

    #[test]
    fn concurrent_pushes_interleave_alike_and_a_pop_removes_what_it_saw() {
        // a pushes x then y at the tail; b, concurrently, pushes z at the tail of
        // the same x (digit 1, as y's): y and z tie on the digit and go by id.
        let writes = [
            (ver(10, "a"), lput(&[(at(0, 10, "a"), "x")], None)),
            (ver(11, "a"), lput(&[(at(1, 11, "a"), "y")], None)),
            (ver(12, "b"), lput(&[(at(1, 12, "b"), "z")], None)),
            (ver(13, "b"), lrem(&[at(0, 10, "a")])),
        ];
        assert_eq!(converged(&writes), list_of(&["y", "z"]));
        // A head push before x, by c, lands first everywhere.
        let head = [&writes[..], &[(ver(14, "c"), lput(&[(at(-1, 14, "c"), "w")], None))]].concat();
        assert_eq!(converged(&head), list_of(&["w", "y", "z"]));
    }

    #[test]
    fn an_lset_is_a_register_and_a_removed_element_stays_removed() {
        let x = at(0, 10, "a");
        let writes = [
            (ver(10, "a"), lput(&[(x.clone(), "x")], None)),
            (ver(12, "b"), lput(&[(x.clone(), "x-b")], None)),
            (ver(13, "c"), lput(&[(x.clone(), "x-c")], None)),
        ];
        assert_eq!(converged(&writes), list_of(&["x-c"]));
        // An LSET arriving before the push it followed, then a remove: gone.
        let removed = [&writes[..], &[(ver(14, "b"), lrem(std::slice::from_ref(&x)))]].concat();
        let rec = check_policy(&LastWriteWins, &removed, delivery_orders(removed.len(), 100, 3)).unwrap().unwrap();
        assert!(rec.is_tombstone());
        assert!(rec.list().unwrap().items.is_empty());
    }

    #[test]
    fn a_delete_removes_what_it_saw_and_a_concurrent_push_survives() {
        let writes = [
            (ver(10, "a"), lput(&[(at(0, 10, "a"), "x")], None)),
            (ver(11, "b"), lput(&[(at(1, 11, "b"), "y")], None)),
            (ver(12, "a"), lput(&[(at(1, 12, "a"), "z")], None)),
            (ver(13, "b"), Op::LClear { key: b"l".to_vec(), seen: seen(&[("a", 10), ("b", 11)]) }),
        ];
        assert_eq!(converged(&writes), list_of(&["z"]));
        // A push to a key that is not a live list there kills what that site held.
        let fresh =
            [&writes[..3], &[(ver(14, "c"), lput(&[(at(0, 14, "c"), "n")], Some(seen(&[("a", 12), ("b", 11)]))))]]
                .concat();
        assert_eq!(converged(&fresh), list_of(&["n"]));
    }

    #[test]
    fn a_string_write_after_the_list_hides_it_and_a_later_push_shows_only_itself() {
        let put = Op::Put { key: b"l".to_vec(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false };
        let writes = [(ver(10, "a"), lput(&[(at(0, 10, "a"), "x")], None)), (ver(12, "b"), put)];
        assert_eq!(converged(&writes), Some(Err(Value::Bytes(b"v".to_vec()))));
        let again = [&writes[..], &[(ver(13, "c"), lput(&[(at(0, 13, "c"), "y")], Some(seen(&[("a", 10)]))))]].concat();
        assert_eq!(converged(&again), list_of(&["y"]));
    }

    #[test]
    fn a_late_put_of_a_pruned_place_changes_nothing() {
        let x = at(0, 10, "a");
        let y = at(1, 11, "a");
        let mut rec = None;
        let policy = LastWriteWins;
        for (v, op) in [
            (ver(10, "a"), lput(&[(x.clone(), "x")], None)),
            (ver(11, "a"), lput(&[(y.clone(), "y")], None)),
            (ver(12, "b"), lrem(std::slice::from_ref(&x))),
        ] {
            crate::merge::apply(&policy, &mut rec, &v, &op);
        }
        let mut rec = rec.unwrap();
        let l = rec.list_mut().unwrap();
        assert!(l.prune(Hlc::new(20, 0)) > 0);
        assert!(l.removed.is_empty(), "the removed place went");
        let mut slot = Some(rec);
        // The remove again (a duplicate) leaves no tombstone; an LSET of x made at c
        // before the remove reached it, and the push again, do not bring x back.
        crate::merge::apply(&policy, &mut slot, &ver(12, "b"), &lrem(std::slice::from_ref(&x)));
        assert!(slot.as_ref().unwrap().list().unwrap().removed.is_empty());
        for (v, op) in
            [(ver(21, "c"), lput(&[(x.clone(), "set")], None)), (ver(10, "a"), lput(&[(x.clone(), "x")], None))]
        {
            crate::merge::apply(&policy, &mut slot, &v, &op);
        }
        assert_eq!(contents(slot), list_of(&["y"]));
    }

    /// Random list, set and string writes at three sites: every delivery order
    /// (with duplicates) ends in the same record.
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
        for case in 0..300 {
            let mut places: Vec<Place> = Vec::new();
            let writes: Vec<(Version, Op)> = (0..8)
                .map(|i| {
                    let ms = 10 + i * 2 + next(2);
                    let s = sites[next(3) as usize];
                    let v = ver(ms, s);
                    let fresh = |n: u32| ident(0, ms, s, n);
                    let saw = [(sites[next(3) as usize], 10 + next(16)), (sites[next(3) as usize], 10 + next(16))];
                    let op = match next(8) {
                        0..=2 => {
                            let before =
                                (!places.is_empty()).then(|| places[next(places.len() as u64) as usize].clone());
                            let p = Place::between(before.as_ref(), None, &fresh(0));
                            let q = Place::between(Some(&p), None, &fresh(1));
                            places.push(p.clone());
                            places.push(q.clone());
                            lput(&[(p, "p"), (q, "q")], (next(4) == 0).then(|| seen(&saw)))
                        }
                        3 if !places.is_empty() => {
                            lput(&[(places[next(places.len() as u64) as usize].clone(), "set")], None)
                        }
                        3 | 4 if !places.is_empty() => lrem(&[places[next(places.len() as u64) as usize].clone()]),
                        5 => Op::LClear { key: b"l".to_vec(), seen: seen(&saw) },
                        6 => Op::Put { key: b"l".to_vec(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false },
                        _ => Op::SAdd { key: b"l".to_vec(), members: vec![b"m".to_vec()], seen: None },
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
