//! Sorted sets: the part of a key's [`Record`] that holds scored members, and how
//! the sorted set operations (format version 6) join into it.
//!
//! A sorted set is two joins side by side, each already used by another type:
//! - **which members are in it**: an add-wins observed-remove set, exactly a set's
//!   ([`crate::set::Set`]): `ZADD` and `ZINCRBY` add, `ZREM`, the pops and the
//!   range removes remove what the removing site saw, a delete of the whole key
//!   removes what it saw; a concurrent add survives;
//! - **each member's score**: a hash field's register or float counter
//!   ([`crate::hash::Hash`]): `ZADD` sets it (last write wins on the version),
//!   `ZINCRBY` counts on it (per-site totals added in site-id order, so increments
//!   at two sites add up to the same bits everywhere).
//!
//! A member is visible when its adds show (above the key's other registers) and it
//! has a score. A remove leaves the score where it is: a later `ZADD` writes a newer
//! one. A `ZINCRBY` of a member no site had counts from nothing (the zero version,
//! as a hash field does); one of a member that was removed counts from 0 on a
//! *reset* of its old score: the base is the old score's rank (its version, or its
//! latest total's) flagged `reset`, which every site that increments it next names
//! alike, so first increments at two sites add up either way. A reset ranks above
//! the same version without (a site that had not seen the remove, incrementing the
//! old score concurrently, loses those increments), and a later reset names the
//! reset counter's latest total, a new base.

use crate::hash::{float_state, Field, FieldState, Hash};
use crate::merge::Record;
use crate::set::Set;
use serde::{Deserialize, Serialize};
use xsite_schemas::{MemberSeen, ScoredMember, Version};

/// The sorted set part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ZSet {
    /// Which members are in it; its `top` is the sorted set part's.
    pub members: Set,
    /// Each member's score, a field: a register holding the score's bits, or a
    /// float counter.
    pub scores: Hash,
}

/// A score register's field state: the score's bits, little-endian (inline).
pub fn score_state(score: f64) -> FieldState {
    FieldState::Bytes(score.to_le_bytes().as_slice().into())
}

/// The score a field holds (none for a removed field, which no op writes).
pub fn score_of(f: &Field) -> Option<f64> {
    match &f.state {
        FieldState::Bytes(b) => Some(f64::from_le_bytes(b.get(..8)?.try_into().ok()?)),
        FieldState::Float(c) => Some(c.value()),
        FieldState::Counter(c) => c.value().map(|v| v as f64),
        FieldState::Removed => None,
    }
}

impl ZSet {
    pub fn new() -> ZSet {
        ZSet::default()
    }

    /// What the members and scores take in memory, about.
    pub fn bytes(&self) -> u64 {
        self.members.bytes() + self.scores.bytes()
    }

    /// The visible members with their scores, in Redis's order (by score, then by
    /// member), when the key's other registers rank up to `floor`.
    pub fn ranked(&self, floor: &Version) -> Vec<(&[u8], f64)> {
        let mut out: Vec<(&[u8], f64)> = self.visible(floor.clone()).collect();
        // Scores are never NaN; -0 and 0 are equal, then ordered by member, as Redis
        // compares them.
        out.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.0.cmp(b.0)));
        out
    }

    /// The visible members with their scores, in member order (no sorting).
    pub fn visible(&self, floor: Version) -> impl Iterator<Item = (&[u8], f64)> + '_ {
        self.members
            .members
            .iter()
            .filter(move |(_, e)| e.shows(&floor))
            .filter_map(|(m, _)| Some((&**m, self.scores.fields.get(&**m).and_then(score_of)?)))
    }

    /// The score of `member` if it is visible.
    pub fn score(&self, member: &[u8], floor: &Version) -> Option<f64> {
        self.members.members.get(member).filter(|e| e.shows(floor))?;
        self.scores.fields.get(member).and_then(score_of)
    }

    /// Reclaims every member (an expired sorted set), as [`Set::reclaim`].
    pub fn reclaim(&mut self) -> u64 {
        self.members.reclaim()
    }
}

/// Joins a sorted set op into a record (see [`crate::merge::apply`]).
pub(crate) fn apply_zset(rec: &mut Record, version: &Version, op: &xsite_schemas::Op) -> bool {
    use xsite_schemas::Op;
    let z = rec.zset_or_insert_with(ZSet::new);
    let mut changed = z.members.raise_top(version);
    let reset = match op {
        Op::ZAdd { members, seen, .. } => {
            if let Some(seen) = seen {
                changed |= z.members.clear(seen);
            }
            for ScoredMember { member, score } in members {
                changed |= z.members.add(member, version);
                changed |= z.scores.join_field(member, version, score_state(score.0));
            }
            seen.is_some()
        }
        Op::ZIncr { member, total, base, seen, .. } => {
            if let Some(seen) = seen {
                changed |= z.members.clear(seen);
            }
            changed |= z.members.add(member, version);
            let base = (base.version(), base.value, base.reset);
            changed |= z.scores.join_counter(member, version, *total, base, float_state, crate::hash::as_float, true);
            seen.is_some()
        }
        Op::ZRem { members, .. } => {
            for MemberSeen { member, seen } in members {
                changed |= z.members.remove(member, seen);
            }
            false
        }
        Op::ZClear { seen, .. } => {
            changed |= z.members.clear(seen);
            false
        }
        _ => unreachable!("apply_zset takes sorted set ops only"),
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
    use crate::merge::LastWriteWins;
    use std::collections::BTreeMap;
    use xsite_schemas::{Float, FloatBase, Hlc, Op, Score, SiteId};

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }
    fn ver(ms: u64, s: &str) -> Version {
        Version::new(Hlc::new(ms, 0), site(s))
    }
    fn zadd(pairs: &[(&str, f64)]) -> Op {
        let members =
            pairs.iter().map(|(m, s)| ScoredMember { member: m.as_bytes().to_vec(), score: Score(*s) }).collect();
        Op::ZAdd { key: b"z".to_vec(), members, seen: None }
    }
    fn zincr(member: &str, total: f64, base: FloatBase) -> Op {
        Op::ZIncr {
            key: b"z".to_vec(),
            member: member.as_bytes().to_vec(),
            delta: Float(total),
            total: Float(total),
            base,
            seen: None,
        }
    }
    fn zrem(member: &str, saw: &[(&str, u64)]) -> Op {
        let seen = saw.iter().map(|(s, ms)| (site(s), Hlc::new(*ms, 0))).collect();
        Op::ZRem { key: b"z".to_vec(), members: vec![MemberSeen { member: member.as_bytes().to_vec(), seen }] }
    }
    fn converged(writes: &[(Version, Op)]) -> Vec<(String, f64)> {
        let rec = check_policy(&LastWriteWins, writes, delivery_orders(writes.len(), 200, 9)).unwrap().unwrap();
        rec.zset_ranked()
            .unwrap_or_default()
            .into_iter()
            .map(|(m, s)| (String::from_utf8(m.to_vec()).unwrap(), s))
            .collect()
    }

    #[test]
    fn scores_are_registers_increments_add_up_and_a_concurrent_add_survives_a_remove() {
        let base = FloatBase::on(&ver(10, "a"), 1.0);
        let writes = [
            (ver(10, "a"), zadd(&[("x", 1.0), ("y", 5.0)])),
            (ver(11, "b"), zadd(&[("y", 0.5)])),
            (ver(12, "a"), zincr("x", 2.0, base.clone())),
            (ver(13, "b"), zincr("x", 3.0, base)),
        ];
        assert_eq!(converged(&writes), [("y".into(), 0.5), ("x".into(), 6.0)]);
        // b removes x having seen a's adds only; c adds x concurrently.
        let mut more = writes.to_vec();
        more.push((ver(14, "c"), zadd(&[("x", 9.0)])));
        more.push((ver(15, "b"), zrem("x", &[("a", 12), ("b", 13)])));
        assert_eq!(converged(&more), [("y".into(), 0.5), ("x".into(), 9.0)]);
    }

    #[test]
    fn infinite_scores_rank_at_the_ends() {
        let writes = [(ver(10, "a"), zadd(&[("top", f64::INFINITY), ("low", f64::NEG_INFINITY), ("mid", 0.0)]))];
        let got: Vec<String> = converged(&writes).into_iter().map(|(m, _)| m).collect();
        assert_eq!(got, ["low", "mid", "top"]);
    }

    /// Random sorted set, set and string writes at three sites: every delivery
    /// order (with duplicates) ends in the same record.
    #[test]
    fn random_writes_converge_in_every_delivery_order() {
        let seed: u64 = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(13);
        let mut rng = seed | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let sites = ["a", "b", "c"];
        let members = ["x", "y"];
        for case in 0..300 {
            let writes: Vec<(Version, Op)> = (0..7)
                .map(|i| {
                    let v = ver(10 + i * 2 + next(2), sites[next(3) as usize]);
                    let m = members[next(2) as usize];
                    let saw: BTreeMap<SiteId, Hlc> =
                        (0..next(3)).map(|_| (site(sites[next(3) as usize]), Hlc::new(10 + next(14), 0))).collect();
                    let op = match next(7) {
                        0 | 1 => zadd(&[(m, next(4) as f64)]),
                        2 | 3 => Op::ZIncr {
                            key: b"z".to_vec(),
                            member: m.as_bytes().to_vec(),
                            delta: Float(0.5),
                            total: Float(next(4) as f64 * 0.25),
                            base: match next(4) {
                                0 => FloatBase::on(&Version::zero(), 0.0),
                                1 => FloatBase {
                                    reset: true,
                                    ..FloatBase::on(&ver(10 + next(12), sites[next(3) as usize]), 0.0)
                                },
                                _ => FloatBase::on(&ver(10 + next(12), sites[next(3) as usize]), 1.0),
                            },
                            seen: (next(3) == 0).then(|| saw.clone()),
                        },
                        4 => Op::ZRem {
                            key: b"z".to_vec(),
                            members: vec![MemberSeen { member: m.as_bytes().to_vec(), seen: saw }],
                        },
                        5 => Op::ZClear { key: b"z".to_vec(), seen: saw },
                        _ => Op::Put { key: b"z".to_vec(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false },
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
