//! [`Place::between`], the place a list put chooses for a new element: strictly
//! between its two neighbours whatever the list holds (places chosen concurrently
//! at other sites included), ending with the element's own id, its digits chosen
//! whatever the id is (so the id may be stamped later), and shallow for the
//! common patterns: pushes at either end, and inserts again and again before or
//! after one element.

use proptest::prelude::*;
use std::collections::BTreeSet;
use xsite_schemas::{Hlc, Ident, Place, SiteId};

const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];

/// The id of item `n` of a put made at `hlc` by `site` (the digit is
/// `between`'s to choose).
fn id(hlc: u64, site: &str, n: u32) -> Ident {
    Ident { d: 0, epoch: 2, hlc: Hlc::new(hlc, 0), site: SiteId::new(site).unwrap(), n }
}

/// The id without its digit.
fn bare(ident: &Ident) -> Ident {
    Ident { d: 0, ..ident.clone() }
}

/// Inserts an element with `id` at index `at` of `list` (in place order),
/// asserting that its place is strictly between its neighbours and ends with
/// `id`; returns the place's depth.
fn insert(list: &mut Vec<Place>, at: usize, id: &Ident) -> usize {
    let before = at.checked_sub(1).map(|i| &list[i]);
    let after = list.get(at);
    let place = Place::between(before, after, id);
    if let Some(b) = before {
        assert!(b < &place, "{place:?} is not after its neighbour {b:?}");
    }
    if let Some(a) = after {
        assert!(&place < a, "{place:?} is not before its neighbour {a:?}");
    }
    assert_eq!(bare(place.id()), bare(id), "a place ends with its element's id");
    // The digits do not depend on the id: a place chosen before its write was
    // timestamped, then stamped with the write's id, is the same place.
    let unstamped = Ident { epoch: 0, hlc: Hlc::ZERO, ..id.clone() };
    let mut stamped = Place::between(before, after, &unstamped);
    *stamped.0.last_mut().unwrap() = Ident { d: stamped.id().d, ..id.clone() };
    assert_eq!(stamped, place, "the place depends on the id");
    let depth = place.0.len();
    list.insert(at, place);
    depth
}

/// Ids of one site, each put's later than the one before.
struct Clock {
    site: &'static str,
    now: u64,
}

impl Clock {
    fn new(site: &'static str, now: u64) -> Clock {
        Clock { site, now }
    }

    fn next(&mut self) -> Ident {
        self.now += 1;
        id(self.now, self.site, 0)
    }
}

#[test]
fn pushes_at_either_end_stay_one_deep() {
    let mut clock = Clock::new("site-a", 1_733_000_000_000);
    let mut list = Vec::new();
    for _ in 0..1_000 {
        assert_eq!(insert(&mut list, 0, &clock.next()), 1, "a head push");
    }
    for _ in 0..1_000 {
        let end = list.len();
        assert_eq!(insert(&mut list, end, &clock.next()), 1, "a tail push");
    }
    for i in 0..1_000 {
        let at = if i % 2 == 0 { 0 } else { list.len() };
        assert_eq!(insert(&mut list, at, &clock.next()), 1, "pushes at both ends");
    }
    // One LPUSH of many elements: one put, its items told apart by their index.
    let put = clock.next();
    for n in 0..100 {
        assert_eq!(insert(&mut list, 0, &Ident { n, ..put.clone() }), 1, "the items of one head push");
    }
    let mut list = Vec::new();
    for _ in 0..1_000 {
        assert_eq!(insert(&mut list, 0, &id(5, "site-b", 0)), 1, "a head push of a site whose clock is behind");
        assert_eq!(insert(&mut list, 0, &clock.next()), 1);
    }
}

#[test]
fn inserts_before_or_after_one_element_stay_shallow() {
    // A list of ten tail pushes; then, with the ids of a site whose clock is ahead
    // of the list's or of one behind it, 1,000 inserts into the gap between its
    // fifth and sixth elements: each just before the sixth (`LINSERT BEFORE`), or
    // each just after the fifth (`LINSERT AFTER`), or alternately.
    for (site, start) in [("site-a", 1_733_000_100_000), ("site-b", 1_732_000_000_000)] {
        for pattern in ["before", "after", "alternately"] {
            let mut old = Clock::new("site-c", 1_733_000_000_000);
            let mut list = Vec::new();
            for i in 0..10 {
                insert(&mut list, i, &old.next());
            }
            let (fifth, sixth) = (list[4].clone(), list[5].clone());
            let mut clock = Clock::new(site, start);
            let mut deepest = 0;
            for i in 0..1_000 {
                let before_sixth = list.iter().position(|p| p == &sixth).unwrap();
                let after_fifth = list.iter().position(|p| p == &fifth).unwrap() + 1;
                let at = match pattern {
                    "before" => before_sixth,
                    "after" => after_fifth,
                    _ if i % 2 == 0 => before_sixth,
                    _ => after_fifth,
                };
                deepest = deepest.max(insert(&mut list, at, &clock.next()));
            }
            assert!(deepest <= 3, "{site}, {pattern}: a place {deepest} deep");
            assert!(list.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

#[test]
fn inserts_at_random_places_stay_in_order() {
    // xorshift64: a fixed sequence.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rng = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut clocks: Vec<Clock> =
        SITES.iter().zip([0, 250, 700]).map(|(s, skew)| Clock::new(s, 1_733_000 + skew)).collect();
    let mut list = Vec::new();
    let mut deepest = 0;
    for _ in 0..2_000 {
        let at = (rng() % (list.len() as u64 + 1)) as usize;
        let site = (rng() % 3) as usize;
        deepest = deepest.max(insert(&mut list, at, &clocks[site].next()));
    }
    assert!(list.windows(2).all(|w| w[0] < w[1]));
    assert!(deepest <= 16, "a place {deepest} deep");
}

#[derive(Debug, Clone)]
enum Step {
    /// Site `site` puts `items` elements at `at` of its list: one after the other
    /// (`RPUSH`, `LINSERT`), or each before the one before (`LPUSH`).
    Put { site: usize, at: prop::sample::Index, items: u32, backwards: bool },
    /// Site `to` learns every element site `from` has.
    Sync { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..SITES.len(), any::<prop::sample::Index>(), 1..4u32, any::<bool>())
            .prop_map(|(site, at, items, backwards)| Step::Put { site, at, items, backwards }),
        1 => (0..SITES.len(), 0..SITES.len()).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// Every site's list in place order, with no two elements at one place.
fn check(lists: &[Vec<Place>]) {
    for list in lists {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "out of order: {list:?}");
        let ids: BTreeSet<Ident> = list.iter().map(|p| bare(p.id())).collect();
        assert_eq!(ids.len(), list.len(), "two elements at one place");
    }
}

proptest! {
    /// Sites insert into their own copies of a list and learn each other's
    /// elements in any order; their clocks are skewed, so a new id may be below
    /// the ids around it. Every new place is strictly between its neighbours
    /// where it was chosen, and all sites order the elements alike.
    #[test]
    fn concurrent_inserts_at_any_place_stay_between_their_neighbours(
        skews in proptest::collection::vec(0..5_000u64, SITES.len()),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut clocks: Vec<Clock> =
            SITES.iter().zip(&skews).map(|(s, skew)| Clock::new(s, 1_733_000_000_000 + skew)).collect();
        let mut lists: Vec<Vec<Place>> = vec![Vec::new(); SITES.len()];
        for step in steps {
            match step {
                Step::Put { site, at, items, backwards } => {
                    let put = clocks[site].next();
                    let at = at.index(lists[site].len() + 1);
                    for n in 0..items {
                        let at = if backwards { at } else { at + n as usize };
                        insert(&mut lists[site], at, &Ident { n, ..put.clone() });
                    }
                }
                Step::Sync { from, to } => {
                    let theirs = lists[from].clone();
                    let list = &mut lists[to];
                    list.extend(theirs);
                    list.sort();
                    list.dedup();
                }
            }
            check(&lists);
        }
        let all: BTreeSet<Place> = lists.iter().flatten().cloned().collect();
        check(&[all.into_iter().collect()]);
    }
}
