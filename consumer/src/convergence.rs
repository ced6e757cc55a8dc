//! Checks that a merge policy makes sites converge — for the built-in policies and
//! for your own.
//!
//! ```
//! use xsite_consumer::convergence::{check_policy, delivery_orders};
//! use xsite_consumer::merge::LastWriteWins;
//! use xsite_schemas::{Hlc, Op, SiteId, Version};
//!
//! let v = |ms, s: &str| Version::new(Hlc::new(ms, 0), SiteId::new(s).unwrap());
//! let put = |x: &str| Op::Put { key: b"k".to_vec(), value: x.into(), expire_at_ms: None, keep_ttl: false };
//! let writes = vec![(v(5, "a"), put("1")), (v(5, "b"), put("2")), (v(7, "a"), Op::Delete { key: b"k".to_vec() })];
//! check_policy(&LastWriteWins, &writes, delivery_orders(writes.len(), 50, 7)).unwrap();
//! ```

use crate::merge::{apply, Candidate, MergePolicy, Record};
use std::cmp::Ordering;
use xsite_schemas::{Op, Version};

/// Apply `writes` in each delivery order (indices; repeats are duplicates) and check
/// every order ends in the same record, and that the policy is antisymmetric on every
/// pair of versions. Returns the converged record.
pub fn check_policy(
    policy: &dyn MergePolicy,
    writes: &[(Version, Op)],
    orders: impl IntoIterator<Item = Vec<usize>>,
) -> Result<Option<Record>, String> {
    check_antisymmetric(policy, writes)?;
    let mut converged: Option<(Vec<usize>, Option<Record>)> = None;
    for order in orders {
        let mut slot = None;
        for &i in &order {
            let (v, op) = writes.get(i).ok_or_else(|| format!("order names write {i} of {}", writes.len()))?;
            apply(policy, &mut slot, v, op);
        }
        match &converged {
            None => converged = Some((order, slot)),
            Some((first, rec)) if *rec != slot => {
                return Err(format!(
                    "policy {} diverges: order {first:?} gives {rec:?}, order {order:?} gives {slot:?}",
                    policy.name()
                ))
            }
            Some(_) => {}
        }
    }
    Ok(converged.and_then(|(_, r)| r))
}

/// The value-register candidate a write makes (none for an expiry change).
fn candidate<'a>(version: &'a Version, op: &'a Op) -> Option<Candidate<'a>> {
    match op {
        Op::Put { value, .. } => Some(Candidate { version, live: true, value: Some(value) }),
        Op::Delete { .. } => Some(Candidate { version, live: false, value: None }),
        Op::Incr { .. } => Some(Candidate { version, live: true, value: None }),
        // Hash and set ops join their parts: elements are ordered by version alone.
        Op::Expire { .. }
        | Op::Heartbeat { .. }
        | Op::Multi { .. }
        | Op::HSet { .. }
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
        | Op::LClear { .. } => None,
    }
}

fn check_antisymmetric(policy: &dyn MergePolicy, writes: &[(Version, Op)]) -> Result<(), String> {
    let candidates: Vec<Candidate<'_>> = writes.iter().filter_map(|(v, op)| candidate(v, op)).collect();
    let zero = Version::zero();
    let never_written = Candidate { version: &zero, live: false, value: None };
    for a in &candidates {
        if policy.cmp(*a, never_written) != Ordering::Greater {
            return Err(format!(
                "policy {} does not rank write {} above a never-written key",
                policy.name(),
                a.version
            ));
        }
        for b in &candidates {
            let ab = policy.cmp(*a, *b);
            if ab != policy.cmp(*b, *a).reverse() {
                return Err(format!(
                    "policy {} is not antisymmetric on {} and {}",
                    policy.name(),
                    a.version,
                    b.version
                ));
            }
            if ab == Ordering::Equal && a.version != b.version {
                return Err(format!(
                    "policy {} ranks different writes {} and {} equal",
                    policy.name(),
                    a.version,
                    b.version
                ));
            }
        }
    }
    Ok(())
}

/// `count` delivery orders of `n` writes: the identity, the reverse, and shuffles
/// with duplicates (every write delivered at least once), from `seed`.
pub fn delivery_orders(n: usize, count: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut orders = vec![(0..n).collect::<Vec<_>>(), (0..n).rev().collect()];
    while orders.len() < count.max(2) {
        let mut order: Vec<usize> = (0..n).collect();
        let dups = if n == 0 { 0 } else { (next() % (n as u64 + 1)) as usize };
        order.extend((0..dups).map(|_| (next() % n as u64) as usize));
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        orders.push(order);
    }
    orders
}
