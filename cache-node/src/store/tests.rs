//! Store unit and property tests: accounting, expiry, GC, SCAN.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use xsite_consumer::merge::{LastWriteWins, PreferNonNull};
use xsite_schemas::SiteId;

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn ver(ms: u64, s: &str) -> Version {
    Version::new(Hlc::new(ms, 0), site(s))
}

fn store(limit: u64) -> CacheStore {
    CacheStore::new(CacheName::new("c").unwrap(), Box::new(LastWriteWins), Arc::new(MemoryGauge::new(limit)))
}

fn put(k: &str, v: &str, expire_at_ms: Option<u64>) -> Op {
    Op::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec(), expire_at_ms, keep_ttl: false }
}

fn del(k: &str) -> Op {
    Op::Delete { key: k.as_bytes().to_vec() }
}

/// Recomputes every count from the records and checks the store's own.
fn check_accounting(s: &CacheStore) {
    let mut expect = CacheStoreStats::default();
    for i in 0..SHARDS {
        let locked = s.lock_shard(i);
        for (k, r) in locked.records() {
            if r.is_tombstone() {
                expect.tombstones += 1;
            } else {
                expect.keys += 1;
                expect.expires += u64::from(r.expire_at_ms().is_some());
            }
            expect.memory_bytes += record_bytes(k.len(), r);
        }
    }
    assert_eq!(s.stats(), expect);
    assert_eq!(s.gauge().used_bytes(), expect.memory_bytes);
}

#[test]
fn accounting_follows_puts_deletes_and_expiry() {
    let s = store(0);
    assert!(s.apply(&ver(10, "a"), &put("k1", "hello", None)));
    assert!(s.apply(&ver(11, "a"), &put("k2", "x", Some(500))));
    assert!(s.apply(&ver(12, "a"), &del("k1")));
    assert!(!s.apply(&ver(9, "b"), &put("k1", "late", None)), "a tombstone stops an older put");
    assert!(s.apply(&ver(13, "b"), &del("never-existed")), "a remote delete leaves a tombstone");
    check_accounting(&s);
    assert_eq!(s.stats().keys, 1);
    assert_eq!(s.stats().tombstones, 2);
    assert_eq!(s.dbsize(), 1);
}

#[test]
fn expiry_changes_no_register_until_collection_drops_the_record() {
    let s = store(0);
    s.apply(&ver(10, "a"), &put("k", "a long value", Some(1_000)));
    s.apply(&ver(10, "a"), &put("other", "v", Some(5_000)));
    assert_eq!(s.expire_cycle(999, 10, false), 0);
    assert_eq!(s.expire_cycle(1_000, 10, false), 1);
    assert_eq!(s.expire_cycle(1_200, 10, false), 0, "each expiry is counted once");
    check_accounting(&s);
    let rec = s.read(b"k", |r| r.cloned()).unwrap();
    assert_eq!(rec.value, Value::Bytes(b"a long value".to_vec()), "the value register is untouched");
    assert!(!rec.is_live(1_000));
    assert_eq!(s.expired_retained(1_000).0, 1);
    // A PERSIST made elsewhere before the expiry, arriving late, revives the key here
    // as it did there.
    assert!(s.apply(&ver(11, "b"), &Op::Expire { key: b"k".to_vec(), expire_at_ms: None }));
    assert!(s.read(b"k", |r| r.unwrap().is_live(2_000)));
    assert_eq!(s.expired_retained(2_000).0, 0);
    check_accounting(&s);
}

#[test]
fn without_replication_the_expiry_cycle_frees_due_values() {
    let s = store(0);
    for i in 0..500 {
        s.apply(&ver(10, "a"), &put(&format!("k{i}"), "v", Some(100)));
    }
    let first = s.expire_cycle(100, 2, true);
    assert!(first <= 2 * SHARDS && first > 0);
    let mut total = first;
    while total < 500 {
        total += s.expire_cycle(100, 2, true);
    }
    assert_eq!(total, 500);
    assert_eq!(s.stats().keys, 0);
    let rec = s.read(b"k1", |r| r.cloned()).unwrap();
    assert!(rec.is_tombstone());
    assert_eq!((rec.version.clone(), rec.expire_at_ms()), (ver(10, "a"), Some(100)), "versions and expiry stay");
    check_accounting(&s);
}

#[test]
fn expiry_counting_respects_the_per_shard_bound() {
    let s = store(0);
    for i in 0..500 {
        s.apply(&ver(10, "a"), &put(&format!("k{i}"), "v", Some(100)));
    }
    let mut total = 0;
    for _ in 0..1_000 {
        let n = s.expire_cycle(100, 2, false);
        assert!(n <= 2 * SHARDS);
        total += n;
        if n == 0 {
            break;
        }
    }
    assert_eq!(total, 500);
    assert_eq!(s.stats().keys, 500, "counted, not dropped");
    check_accounting(&s);
}

#[test]
fn gc_forgets_only_what_every_site_passed() {
    let s = store(0);
    s.apply(&ver(10, "a"), &put("k", "v", None));
    s.apply(&ver(20, "a"), &del("k"));
    s.apply(&ver(30, "b"), &del("j"));
    s.apply(&ver(10, "a"), &put("e", "v", Some(1_000)));
    assert_eq!(s.gc_tombstones(Hlc::new(20, 0), 0), 0, "k's delete is at 20, not below it");
    assert_eq!(s.gc_tombstones(Hlc::new(21, 0), 0), 1);
    assert!(s.read(b"k", |r| r.is_none()));
    // The expired record waits for the skew bound past its expiry time.
    assert_eq!(s.gc_tombstones(Hlc::new(1_500, 0), 1_000), 1, "only j");
    assert!(s.read(b"e", |r| r.is_some()));
    assert_eq!(s.gc_tombstones(Hlc::new(2_001, 0), 1_000), 1);
    assert!(s.read(b"e", |r| r.is_none()));
    check_accounting(&s);
    assert_eq!(s.stats(), CacheStoreStats::default());
}

/// A queue popped over and over: collection drops the removed places every site
/// is past, giving their memory back, and keeps the rest.
#[test]
fn gc_prunes_the_removed_places_of_a_list() {
    use xsite_schemas::{Ident, ListItem, Place};
    let s = store(0);
    let place = |ms: u64| Place(vec![Ident { d: ms as i64, epoch: 0, hlc: Hlc::new(ms, 0), site: site("a"), n: 0 }]);
    for ms in 10..20 {
        let items = vec![ListItem { place: place(ms), value: b"job".to_vec() }];
        s.apply(&ver(ms, "a"), &Op::LPut { key: b"q".to_vec(), items, seen: None });
    }
    for ms in 10..18 {
        s.apply(&ver(ms + 100, "b"), &Op::LRem { key: b"q".to_vec(), places: vec![place(ms)] });
    }
    let removed = |s: &CacheStore| s.read(b"q", |r| r.unwrap().list().unwrap().removed.len());
    assert_eq!(removed(&s), 8);
    let before = s.stats().memory_bytes;
    s.gc_tombstones(Hlc::new(15, 0), 0);
    assert_eq!(removed(&s), 3, "the places of ids at 15, 16, 17 wait for the floor");
    assert!(s.stats().memory_bytes < before);
    s.gc_tombstones(Hlc::new(200, 0), 0);
    assert_eq!(removed(&s), 0);
    assert_eq!(s.read(b"q", |r| r.unwrap().list_len()), Some(2));
    check_accounting(&s);
}

#[test]
fn admission_refuses_growth_past_the_limit_but_not_deletes() {
    let s = store(RECORD_OVERHEAD_BYTES + 10);
    let locked = s.lock(&[b"k"]);
    assert!(locked.admit([&put("k", "12345", None)]).is_ok());
    assert_eq!(locked.admit([&put("k", &"x".repeat(100), None)]), Err(Refusal::OutOfMemory));
    drop(locked);
    s.apply(&ver(1, "a"), &put("k", "12345", None));
    let locked = s.lock(&[b"k", b"j"]);
    assert!(locked.admit([&put("k", "123456789", None)]).is_ok(), "overwriting grows by 4 bytes only");
    assert_eq!(locked.admit([&put("j", "1", None)]), Err(Refusal::OutOfMemory));
    assert!(locked.admit([&del("k")]).is_ok());
    assert_eq!(Refusal::OutOfMemory.to_string(), "OOM command not allowed when used memory > 'maxmemory'.");
}

#[test]
fn policies_that_look_at_liveness_are_used() {
    let s = CacheStore::new(
        CacheName::new("c").unwrap(),
        Box::new(PreferNonNull { conflict_window_ms: 100 }),
        Arc::new(MemoryGauge::new(0)),
    );
    s.apply(&ver(1_010, "a"), &put("k", "v", None));
    s.apply(&ver(1_020, "b"), &del("k"));
    assert!(s.read(b"k", |r| r.unwrap().is_live(0)), "same window: the value wins");
}

#[test]
fn keys_and_random_key_see_only_live_keys() {
    let s = store(0);
    for k in ["hello", "hallo", "hxllo", "world"] {
        s.apply(&ver(1, "a"), &put(k, "v", None));
    }
    s.apply(&ver(2, "a"), &del("hxllo"));
    s.apply(&ver(2, "a"), &put("gone", "v", Some(50)));
    let mut found: Vec<_> = s.keys(b"h?llo", 100).into_iter().collect();
    found.sort();
    assert_eq!(found, vec![Bytes::from("hallo"), Bytes::from("hello")]);
    assert_eq!(s.keys(b"*", 100).len(), 3);
    for _ in 0..20 {
        let k = s.random_key(100).unwrap();
        assert!(["hello", "hallo", "world"].contains(&std::str::from_utf8(&k).unwrap()));
    }
    assert_eq!(store(0).random_key(0), None);
}

fn scan_all(s: &CacheStore, count: usize, mut between: impl FnMut(usize)) -> Vec<Bytes> {
    let (mut cursor, mut out, mut calls) = (0, Vec::new(), 0);
    loop {
        let (next, keys) = s.scan(cursor, count, 0, |_, _| true);
        out.extend(keys);
        calls += 1;
        between(calls);
        if next == 0 {
            return out;
        }
        assert!(calls < 100_000, "scan does not end");
        cursor = next;
    }
}

#[test]
fn scan_returns_every_key_once_when_nothing_changes() {
    let s = store(0);
    for i in 0..1000 {
        s.apply(&ver(1, "a"), &put(&format!("key:{i}"), "v", None));
    }
    for count in [1, 7, 10, 1000, 5000] {
        let mut keys = scan_all(&s, count, |_| {});
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!((n, keys.len()), (1000, 1000), "count {count}");
    }
    assert_eq!(store(0).scan(0, 10, 0, |_, _| true), (0, vec![]));
}

proptest! {
    /// Keys present during the whole scan are returned at least once, whatever is
    /// added or deleted between the calls.
    #[test]
    fn scan_survives_concurrent_changes(
        stable in proptest::collection::btree_set(0u32..400, 0..100),
        churn in proptest::collection::vec((400u32..800, any::<bool>()), 0..200),
        count in 1usize..30,
    ) {
        let s = store(0);
        for k in &stable {
            s.apply(&ver(1, "a"), &put(&k.to_string(), "v", None));
        }
        let mut hlc = 2;
        let found: BTreeSet<Bytes> = scan_all(&s, count, |call| {
            for (k, add) in churn.iter().skip(call * 3).take(3) {
                hlc += 1;
                let op = if *add { put(&k.to_string(), "v", None) } else { del(&k.to_string()) };
                s.apply(&ver(hlc, "a"), &op);
            }
        })
        .into_iter()
        .collect();
        for k in &stable {
            prop_assert!(found.contains(&Bytes::from(k.to_string())), "missed {}", k);
        }
        check_accounting(&s);
    }

    /// Whatever the ops, the store's counts and memory equal a recount.
    #[test]
    fn accounting_is_exact(ops in proptest::collection::vec((0u8..6, 0u8..4, 0u64..50, 0usize..40), 1..200)) {
        let s = store(0);
        for (i, (kind, key, at, len)) in ops.into_iter().enumerate() {
            let k = format!("k{key}");
            let v = ver(i as u64 + 1, if i % 2 == 0 { "a" } else { "b" });
            match kind {
                0 => { s.apply(&v, &put(&k, &"x".repeat(len), None)); }
                1 => { s.apply(&v, &put(&k, "y", Some(at))); }
                2 => { s.apply(&v, &del(&k)); }
                3 => { s.apply(&v, &Op::Expire { key: k.into_bytes(), expire_at_ms: Some(at) }); }
                4 => { s.expire_cycle(at, 2, i % 2 == 0); }
                _ => { s.gc_tombstones(Hlc::new(i as u64 / 2, 0), 5); }
            }
            check_accounting(&s);
        }
    }
}

/// Convergence checks compare what a client observes: the absolute expiry counts,
/// tombstones do not.
#[test]
fn the_digest_covers_values_and_expiry_times_but_not_tombstones() {
    let (a, b) = (store(0), store(0));
    a.apply(&ver(10, "a"), &put("k", "v", Some(5_000)));
    b.apply(&ver(10, "a"), &put("k", "v", Some(5_000)));
    assert_eq!(a.digest(1_000), b.digest(1_000));
    b.apply(&ver(11, "b"), &Op::Expire { key: b"k".to_vec(), expire_at_ms: Some(6_000) });
    assert_ne!(a.digest(1_000), b.digest(1_000), "same value, another expiry time");
    a.apply(&ver(11, "b"), &Op::Expire { key: b"k".to_vec(), expire_at_ms: Some(6_000) });
    b.apply(&ver(12, "b"), &del("gone"));
    assert_eq!(a.digest(1_000), b.digest(1_000), "a tombstone only one site keeps is not observable");
    assert_eq!(a.observable(1_000), b.observable(1_000));
    assert_eq!(a.observable(1_000)[&b"k".to_vec()], (b"v".to_vec(), Some(6_000)));
}

/// Collection must be invisible: a record goes only if every write that can still
/// arrive outranks it anyway, under the cache's policy.
#[test]
fn collection_keeps_what_a_later_write_could_lose_to() {
    let sites = vec![SiteId::new("a").unwrap(), SiteId::new("b").unwrap()];
    let with = |policy: Box<dyn MergePolicy>| {
        CacheStore::new(CacheName::new("c").unwrap(), policy, Arc::new(MemoryGauge::new(0))).with_sites(sites.clone())
    };
    // prefer-site:a — a's tombstone beats every later write of b: it stays.
    let s = with(Box::new(xsite_consumer::merge::PreferSite(SiteId::new("a").unwrap())));
    s.apply(&ver(10, "a"), &del("from-a"));
    s.apply(&ver(10, "b"), &del("from-b"));
    assert_eq!(s.gc_tombstones(Hlc::new(1_000, 0), 0), 1, "only b's tombstone goes");
    assert!(s.read(b"from-a", |r| r.is_some()));
    // always-remove — a tombstone beats a later write in its own window: it stays
    // until the floor is past that window.
    let s = with(Box::new(xsite_consumer::merge::AlwaysRemove { conflict_window_ms: 100 }));
    s.apply(&ver(1_010, "a"), &del("k"));
    assert_eq!(s.gc_tombstones(Hlc::new(1_050, 0), 0), 0);
    assert_eq!(s.gc_tombstones(Hlc::new(1_100, 0), 0), 1);
    // last-write-wins — any later write wins: it goes.
    let s = with(Box::new(LastWriteWins));
    s.apply(&ver(10, "a"), &del("k"));
    assert_eq!(s.gc_tombstones(Hlc::new(11, 0), 0), 1);
}

#[test]
fn a_watched_key_changes_with_every_change_joined_into_its_record_or_its_expiry() {
    let s = store(0);
    let now = 1_000;
    s.apply(&ver(10, "a"), &put("k", "v", None));
    let seen = s.seen(b"k", now);
    assert!(!s.changed_since(b"k", seen, now));
    s.apply(&ver(11, "a"), &put("other", "v", None));
    assert!(!s.changed_since(b"k", seen, now), "another key, even of the same shard, is no change");
    assert!(!s.apply(&ver(9, "b"), &put("k", "older", None)), "an older remote write loses");
    assert!(!s.changed_since(b"k", seen, now), "and changes nothing");
    s.apply(&ver(12, "b"), &put("k", "v", None));
    assert!(s.changed_since(b"k", seen, now), "the same value written again is a change, as in Redis");

    let seen = s.seen(b"k", now);
    s.apply(&ver(13, "a"), &Op::Expire { key: b"k".to_vec(), expire_at_ms: Some(2_000) });
    assert!(s.changed_since(b"k", seen, now), "a new expiry time");
    let seen = s.seen(b"k", now);
    assert!(!s.changed_since(b"k", seen, 1_999));
    assert!(s.changed_since(b"k", seen, 2_000), "it expired");
    let expired = s.seen(b"k", 2_000);
    assert_eq!(s.expire_cycle(2_000, 10, true), 1);
    assert!(!s.changed_since(b"k", expired, 2_000), "freeing an expired value is no change");

    let absent = s.seen(b"gone", now);
    s.apply(&ver(14, "a"), &put("gone", "v", None));
    s.apply(&ver(15, "a"), &del("gone"));
    assert!(s.changed_since(b"gone", absent, now));
    assert!(s.gc_tombstones(Hlc::new(100, 0), 0) >= 1);
    assert!(s.read(b"gone", |r| r.is_none()), "collected");
    assert!(s.changed_since(b"gone", absent, now), "created and deleted since, though no record is left");
    let after = s.seen(b"gone", now);
    assert!(!s.changed_since(b"gone", after, now));
}
