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
//!
//! The collections are stated the same way, directly over every surviving entry
//! of the key (never by joining them one by one): a set's or a sorted set's
//! members (`expected_members`), a list (`expected_list`), a hash's fields and
//! values (`expected_hash`) and a sorted set's scores (`expected_scores`).

use std::collections::{BTreeMap, BTreeSet};
use xsite_consumer::merge::{Candidate, Counter, MergePolicy, Record, SiteTotal, Value};
use xsite_schemas::{Hlc, LogEntry, Op, SiteId, Version};

/// What a whole-part delete saw: per site, a timestamp.
type Seen = BTreeMap<SiteId, Hlc>;

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
        candidates.insert(v, Value::Counter(Box::new(c)));
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
) -> Option<BTreeSet<Vec<u8>>> {
    let ops = ops_of(entries, key);
    let top = |pred: fn(&Op) -> bool| top_of(&ops, pred);
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
    let ops = ops_of(entries, key);
    let top = |pred: fn(&Op) -> bool| top_of(&ops, pred);
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

/// How a write of a hash field (or of a sorted set member's score) ranks in the
/// field's register, after its version: a counter above the plain write of its own
/// base version (it counts on top of it), an integer counter above a float one on
/// the same base (`join_counter`'s documented tie rule), a reset above the same
/// base without.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Plain,
    Float,
    FloatReset,
    Int,
    IntReset,
}

/// One write of a field's register: `P` for a plain write (`HSET`'s value, or
/// `None` for `HDEL`; `ZADD`'s score), or a counter on a base.
#[derive(Debug)]
enum Written<P> {
    Plain(P),
    Int(Counted<i64>),
    Float(Counted<f64>),
}

/// A counter on one base: the base's value and, per site, its latest increment on
/// that base (by timestamp): the increment's version and the site's total.
#[derive(Debug)]
struct Counted<N> {
    base: N,
    totals: BTreeMap<SiteId, (Version, N)>,
}

impl<N> Counted<N> {
    fn count(&mut self, v: &Version, total: N) {
        match self.totals.get(&v.site) {
            Some((held, _)) if held.hlc >= v.hlc => {}
            _ => {
                self.totals.insert(v.site.clone(), (v.clone(), total));
            }
        }
    }

    /// The counter's rank against the key's other parts: its base version, or
    /// one of its totals' if higher.
    fn rank(&self, base: &Version) -> Version {
        self.totals.values().map(|(v, _)| v.clone()).fold(base.clone(), Version::max)
    }
}

impl Counted<f64> {
    /// The base plus every total, added in site-id order.
    fn sum(&self) -> f64 {
        self.totals.values().fold(self.base, |acc, (_, t)| acc + t)
    }
}

/// A field's register: every write of it, by `(version, rank)`; the highest wins.
type Register<P> = BTreeMap<(Version, Rank), Written<P>>;

fn write<P>(register: &mut Register<P>, v: &Version, value: P) {
    register.insert((v.clone(), Rank::Plain), Written::Plain(value));
}

fn count_int<P>(register: &mut Register<P>, v: &Version, base: &xsite_schemas::FieldBase, total: i64) {
    let rank = if base.reset { Rank::IntReset } else { Rank::Int };
    let held = register
        .entry((base.version(), rank))
        .or_insert_with(|| Written::Int(Counted { base: base.value, totals: BTreeMap::new() }));
    let Written::Int(c) = held else { unreachable!("an integer rank holds an integer counter") };
    assert_eq!(c.base, base.value, "one base version, one base value");
    c.count(v, total);
}

fn count_float<P>(register: &mut Register<P>, v: &Version, base: &xsite_schemas::FloatBase, total: f64) {
    let rank = if base.reset { Rank::FloatReset } else { Rank::Float };
    let held = register
        .entry((base.version(), rank))
        .or_insert_with(|| Written::Float(Counted { base: base.value.0, totals: BTreeMap::new() }));
    let Written::Float(c) = held else { unreachable!("a float rank holds a float counter") };
    assert_eq!(c.base.to_bits(), base.value.0.to_bits(), "one base version, one base value");
    c.count(v, total);
}

/// The key's ops, with their versions.
fn ops_of<'e>(entries: &[&'e LogEntry], key: &[u8]) -> Vec<(Version, &'e Op)> {
    entries.iter().filter(|e| e.op.key() == Some(key)).map(|e| (e.version(), &e.op)).collect()
}

/// The highest version of the ops `pred` takes.
fn top_of(ops: &[(Version, &Op)], pred: fn(&Op) -> bool) -> Option<Version> {
    ops.iter().filter(|(_, op)| pred(op)).map(|(v, _)| v.clone()).max()
}

/// The fields (name → value, as `HGETALL` lists them) `key` shows as a hash, by
/// the documented semantics stated directly over every surviving entry:
///
/// - the key is a hash when its hash ops' top ranks above the string register
///   (`register_rank`, taken from the record) and the other parts' tops (the
///   floor); `None` otherwise;
/// - a field is a register of its writes, the highest by version winning (`Rank`
///   breaks ties of one version): `HSET` writes a value, `HDEL` a removal, and
///   `HINCRBY`/`HINCRBYFLOAT` a counter on their base's version: the base's
///   value plus each site's latest total on that base (floats added in site-id
///   order), every increment on another base lost;
/// - the whole-hash deletes (`hclear`, and the `seen` of an `HSET` or increment
///   of a key that was not a live hash) saw, per site, the highest timestamp any
///   of them names: a plain write or a counter on a real base they saw is dead; a
///   counter from nothing (the zero version) or on a reset loses each total they
///   saw and is dead once none is left;
/// - a field shows when its winner is not a removal, not dead, and ranks above
///   the floor (a counter by the highest of its base and its totals).
pub fn expected_hash(entries: &[&LogEntry], key: &[u8], register_rank: &Version) -> Option<BTreeMap<Vec<u8>, Vec<u8>>> {
    let ops = ops_of(entries, key);
    let mine = top_of(&ops, Op::is_hash)?;
    let floor = [top_of(&ops, Op::is_set), top_of(&ops, Op::is_zset), top_of(&ops, Op::is_list)]
        .into_iter()
        .flatten()
        .fold(register_rank.clone(), Version::max);
    if mine <= floor {
        return None;
    }
    let mut cleared = Seen::new();
    let mut clear = |seen: &Seen| {
        for (site, h) in seen {
            let c = cleared.entry(site.clone()).or_insert(*h);
            *c = (*c).max(*h);
        }
    };
    let mut fields: BTreeMap<&[u8], Register<Option<&[u8]>>> = BTreeMap::new();
    for (v, op) in &ops {
        match op {
            Op::HSet { fields: written, seen, .. } => {
                seen.iter().for_each(&mut clear);
                for f in written {
                    write(fields.entry(&f.field).or_default(), v, Some(&f.value));
                }
            }
            Op::HDel { fields: removed, .. } => {
                for f in removed {
                    write(fields.entry(f).or_default(), v, None);
                }
            }
            Op::HIncr { field, total, base, seen, .. } => {
                seen.iter().for_each(&mut clear);
                count_int(fields.entry(field).or_default(), v, base, *total);
            }
            Op::HIncrFloat { field, total, base, seen, .. } => {
                seen.iter().for_each(&mut clear);
                count_float(fields.entry(field).or_default(), v, base, total.0);
            }
            Op::HClear { seen, .. } => clear(seen),
            _ => {}
        }
    }
    let saw = |v: &Version| cleared.get(&v.site).is_some_and(|h| v.hlc <= *h);
    let mut out = BTreeMap::new();
    for (name, register) in fields {
        let Some(((version, rank), written)) = register.into_iter().next_back() else { continue };
        let value = match written {
            Written::Plain(None) => continue,
            Written::Plain(Some(value)) => {
                if saw(&version) || version <= floor {
                    continue;
                }
                value.to_vec()
            }
            Written::Int(mut c) => {
                if !counter_shows(&mut c, &version, rank, &saw, &floor) {
                    continue;
                }
                let sum = c.totals.values().fold(i128::from(c.base), |acc, (_, t)| acc + i128::from(*t));
                sum.to_string().into_bytes()
            }
            Written::Float(mut c) => {
                if !counter_shows(&mut c, &version, rank, &saw, &floor) {
                    continue;
                }
                xsite_consumer::hash::format_float(c.sum()).into_bytes()
            }
        };
        out.insert(name.to_vec(), value);
    }
    Some(out)
}

/// Whether a field counter on `version` shows (see `expected_hash`); drops the
/// totals a whole-hash delete saw from a counter judged total by total.
fn counter_shows<N>(
    c: &mut Counted<N>,
    version: &Version,
    rank: Rank,
    saw: &dyn Fn(&Version) -> bool,
    floor: &Version,
) -> bool {
    let by_total = *version == Version::zero() || matches!(rank, Rank::IntReset | Rank::FloatReset);
    if by_total {
        c.totals.retain(|_, (v, _)| !saw(v));
    }
    let dead = if by_total { c.totals.is_empty() } else { saw(version) };
    !dead && c.rank(version) > *floor
}

/// The score of every member `key` shows as a sorted set (`expected_members`),
/// by the documented semantics stated directly over every surviving entry: a
/// member's score is a register of its writes, the highest by version winning
/// (`Rank` breaks ties of one version): `ZADD` writes a score, `ZINCRBY` a float
/// counter on its base's version (the base's value plus each site's latest total
/// on that base, added in site-id order; a reset above the same base without).
/// Removes and deletes take members away, never scores. `None` when the key is
/// not a sorted set.
pub fn expected_scores(entries: &[&LogEntry], key: &[u8], register_rank: &Version) -> Option<BTreeMap<Vec<u8>, f64>> {
    let members = expected_members(entries, key, register_rank, true)?;
    let mut scores: BTreeMap<&[u8], Register<f64>> = BTreeMap::new();
    for (v, op) in ops_of(entries, key) {
        match op {
            Op::ZAdd { members, .. } => {
                for m in members {
                    write(scores.entry(&m.member).or_default(), &v, m.score.0);
                }
            }
            Op::ZIncr { member, total, base, .. } => count_float(scores.entry(member).or_default(), &v, base, total.0),
            _ => {}
        }
    }
    let score = |m: &[u8]| match scores.get(m).and_then(|r| r.values().next_back()) {
        Some(Written::Plain(score)) => *score,
        Some(Written::Float(c)) => c.sum(),
        Some(Written::Int(_)) => unreachable!("no integer counter of a score"),
        None => unreachable!("every add of a member writes its score"),
    };
    Some(
        members
            .into_iter()
            .map(|m| {
                let s = score(&m);
                (m, s)
            })
            .collect(),
    )
}
