//! The sequential model of one key: the record every site must hold once it has
//! applied every surviving write, when nothing was collected.
//!
//! - The value register is the highest candidate by the policy: a `SET`'s value, a
//!   `DEL`'s tombstone, or a counter on a base version (the base's value plus each
//!   site's latest total on that base). A counter dominates the plain write of its own
//!   base version (it counts on top of it), and ranks as that write did (a counter on
//!   a delete as the delete: `Candidate::of`).
//! - No floor bases: the model is only asked when nothing was collected.
//! - The expiry register is the highest version by `(epoch, hlc, site)` among the
//!   writes that set it: `SET` without `KEEPTTL`, `DEL`, `PEXPIREAT`/`PERSIST`, and an
//!   increment that starts a fresh base.

use std::collections::BTreeMap;
use xsite_consumer::merge::{Candidate, Counter, MergePolicy, Record, SiteTotal, Value};
use xsite_schemas::{LogEntry, Op, Version};

/// The record of `key` after every entry in `entries` (of every origin), or `None`
/// when none touches it.
pub fn expected_record(policy: &dyn MergePolicy, key: &[u8], entries: &[&LogEntry]) -> Option<Record> {
    let writes: Vec<&LogEntry> = entries.iter().copied().filter(|e| e.op.key() == Some(key)).collect();
    if writes.is_empty() {
        return None;
    }
    let mut candidates: BTreeMap<Version, Value> = BTreeMap::new();
    let mut counters: BTreeMap<Version, Counter> = BTreeMap::new();
    let (mut ttl_version, mut expire_at_ms) = (Version::zero(), None);
    let mut ttl = |v: Version, at: Option<u64>| {
        if v > ttl_version {
            ttl_version = v;
            expire_at_ms = at;
        }
    };
    for e in &writes {
        let v = e.version();
        match &e.op {
            Op::Put { value, expire_at_ms, keep_ttl, .. } => {
                candidates.insert(v.clone(), Value::Bytes(value.clone()));
                if !keep_ttl {
                    ttl(v, *expire_at_ms);
                }
            }
            Op::Delete { .. } => {
                candidates.insert(v.clone(), Value::Tombstone);
                ttl(v, None);
            }
            Op::Expire { expire_at_ms, .. } => ttl(v, *expire_at_ms),
            Op::HSet { .. }
            | Op::HDel { .. }
            | Op::HIncr { .. }
            | Op::HIncrFloat { .. }
            | Op::HClear { .. }
            | Op::SAdd { .. }
            | Op::SRem { .. }
            | Op::SClear { .. }
            | Op::ZAdd { .. }
            | Op::ZIncr { .. }
            | Op::ZRem { .. }
            | Op::ZClear { .. }
            | Op::LPut { .. }
            | Op::LRem { .. }
            | Op::LClear { .. } => {
                unreachable!("the model takes keys that only string writes touched")
            }
            Op::Incr { total, base, .. } => {
                assert_eq!(base.floor, None, "no floor bases without collection");
                let c = counters.entry(base.version()).or_insert_with(|| Counter {
                    base: base.value,
                    totals: BTreeMap::new(),
                    base_dead: base.dead,
                    ..Default::default()
                });
                assert_eq!(c.base, base.value, "one base version, one base value");
                c.base_dead |= base.dead;
                let mine = SiteTotal { hlc: e.hlc, total: *total };
                let t = c.totals.entry(e.origin.clone()).or_insert(mine);
                if mine.hlc > t.hlc {
                    *t = mine;
                }
                if base.version() == v {
                    ttl(v, None);
                }
            }
            // Units reach the model member by member (`LogEntry::members`).
            Op::Heartbeat { .. } | Op::Multi { .. } => {}
        }
    }
    for (v, c) in counters {
        candidates.insert(v, Value::Counter(c));
    }
    let winner = candidates.into_iter().reduce(|best, next| {
        if policy.cmp(Candidate::of(&next.0, &next.1), Candidate::of(&best.0, &best.1)).is_gt() {
            next
        } else {
            best
        }
    });
    let (version, value) = winner.unwrap_or_else(|| (Version::zero(), Value::Tombstone));
    Some(Record::string(version, value, ttl_version, expire_at_ms))
}

/// The members `key` shows as a set or a sorted set, by the documented semantics
/// stated directly over every surviving entry (not by joining them one by one):
///
/// - the key is the part whose latest write ranks highest, of its string register
///   (`register_rank`, taken from the record) and the tops of its hash, set and
///   sorted set ops; `None` when that is not a set (or, `zset`, a sorted set);
/// - a member shows when one of its adds ranks above the other parts' tops and the
///   string register, and no remove of it, and no delete of the whole part, saw
///   that add (saw: its `seen` of the add's site at or above the add's timestamp).
pub fn expected_members(
    entries: &[&LogEntry],
    key: &[u8],
    register_rank: &Version,
    zset: bool,
) -> Option<std::collections::BTreeSet<Vec<u8>>> {
    let ops: Vec<(Version, &Op)> =
        entries.iter().filter(|e| e.op.key() == Some(key)).map(|e| (e.version(), &e.op)).collect();
    let top = |pred: fn(&Op) -> bool| ops.iter().filter(|(_, op)| pred(op)).map(|(v, _)| v.clone()).max();
    let (hash, set, zset_top, list) = (top(Op::is_hash), top(Op::is_set), top(Op::is_zset), top(Op::is_list));
    let (mine, others) = match zset {
        false => (set, [hash, zset_top, list]),
        true => (zset_top, [hash, set, list]),
    };
    let mine = mine?;
    let floor = others.into_iter().flatten().fold(register_rank.clone(), Version::max);
    if mine <= floor {
        return None;
    }
    let ours = |op: &Op| if zset { op.is_zset() } else { op.is_set() };
    let mut adds: Vec<(&[u8], &Version)> = Vec::new();
    let mut removes: Vec<(&[u8], &BTreeMap<xsite_schemas::SiteId, xsite_schemas::Hlc>)> = Vec::new();
    let mut clears: Vec<&BTreeMap<xsite_schemas::SiteId, xsite_schemas::Hlc>> = Vec::new();
    for (v, op) in ops.iter().filter(|(_, op)| ours(op)) {
        match op {
            Op::SAdd { members, seen, .. } => {
                adds.extend(members.iter().map(|m| (m.as_slice(), v)));
                clears.extend(seen.iter());
            }
            Op::ZAdd { members, seen, .. } => {
                adds.extend(members.iter().map(|m| (m.member.as_slice(), v)));
                clears.extend(seen.iter());
            }
            Op::ZIncr { member, seen, .. } => {
                adds.push((member.as_slice(), v));
                clears.extend(seen.iter());
            }
            Op::SRem { members, .. } | Op::ZRem { members, .. } => {
                removes.extend(members.iter().map(|m| (m.member.as_slice(), &m.seen)));
            }
            Op::SClear { seen, .. } | Op::ZClear { seen, .. } => clears.push(seen),
            _ => {}
        }
    }
    let saw = |seen: &BTreeMap<xsite_schemas::SiteId, xsite_schemas::Hlc>, v: &Version| {
        seen.get(&v.site).is_some_and(|h| v.hlc <= *h)
    };
    Some(
        adds.iter()
            .filter(|(m, v)| {
                **v > floor
                    && !clears.iter().any(|c| saw(c, v))
                    && !removes.iter().any(|(r, seen)| r == m && saw(seen, v))
            })
            .map(|(m, _)| m.to_vec())
            .collect(),
    )
}

/// What a list key shows, by the documented semantics stated directly over every
/// surviving entry:
///
/// - the key is a list when its list ops' top ranks above the string register and
///   the other parts' tops; `None` otherwise;
/// - an element shows when its id ranks above that floor, no remove named its
///   place, and no delete of the whole list saw it (`seen` of its id's site at or
///   above its id's timestamp); its value is the put of its place with the highest
///   version; elements go in the order of their places.
pub fn expected_list(entries: &[&LogEntry], key: &[u8], register_rank: &Version) -> Option<Vec<Vec<u8>>> {
    let ops: Vec<(Version, &Op)> =
        entries.iter().filter(|e| e.op.key() == Some(key)).map(|e| (e.version(), &e.op)).collect();
    let top = |pred: fn(&Op) -> bool| ops.iter().filter(|(_, op)| pred(op)).map(|(v, _)| v.clone()).max();
    let mine = top(Op::is_list)?;
    let floor = [top(Op::is_hash), top(Op::is_set), top(Op::is_zset)]
        .into_iter()
        .flatten()
        .fold(register_rank.clone(), Version::max);
    if mine <= floor {
        return None;
    }
    let mut puts: BTreeMap<&xsite_schemas::Place, (&Version, &[u8])> = BTreeMap::new();
    let mut removed: Vec<&xsite_schemas::Place> = Vec::new();
    let mut clears: Vec<&BTreeMap<xsite_schemas::SiteId, xsite_schemas::Hlc>> = Vec::new();
    for (v, op) in &ops {
        match op {
            Op::LPut { items, seen, .. } => {
                clears.extend(seen.iter());
                for item in items {
                    let held = puts.entry(&item.place).or_insert((v, &item.value));
                    if v > held.0 {
                        *held = (v, &item.value);
                    }
                }
            }
            Op::LRem { places, .. } => removed.extend(places.iter()),
            Op::LClear { seen, .. } => clears.push(seen),
            _ => {}
        }
    }
    Some(
        puts.into_iter()
            .filter(|(place, _)| {
                let id = place.id();
                id.version() > floor
                    && !removed.contains(place)
                    && !clears.iter().any(|c| c.get(&id.site).is_some_and(|h| id.hlc <= *h))
            })
            .map(|(_, (_, value))| value.to_vec())
            .collect(),
    )
}
