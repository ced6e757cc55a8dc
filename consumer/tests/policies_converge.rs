//! Every built-in merge policy passes the convergence check on random writes, and a
//! policy that looks at arrival order is caught by it.

use proptest::prelude::*;
use std::cmp::Ordering;
use xsite_consumer::convergence::{check_policy, delivery_orders};
use xsite_consumer::merge::{parse_policy, Candidate, MergePolicy};
use xsite_schemas::{CounterBase, Hlc, Op, SiteId, Version};

fn site(i: u8) -> SiteId {
    SiteId::new(format!("s{i}")).unwrap()
}

fn write() -> impl Strategy<Value = (Version, Op)> {
    (0u64..400, 0u8..3, 0u8..4, any::<u8>(), 0u64..50).prop_map(|(ms, s, kind, val, base_ms)| {
        let v = Version::new(Hlc::new(1_000 + ms, 0), site(s));
        let key = b"k".to_vec();
        let op = match kind {
            0 => Op::Put { key, value: vec![val], expire_at_ms: None, keep_ttl: false },
            1 => Op::Delete { key },
            2 => Op::Expire { key, expire_at_ms: Some(u64::from(val)) },
            _ => Op::Incr {
                key,
                delta: 1,
                total: i64::from(val),
                base: CounterBase {
                    epoch: 0,
                    hlc: Hlc::new(1_000 + base_ms, 0),
                    site: site(0),
                    value: 7,
                    floor: None,
                    dead: false,
                },
            },
        };
        (v, op)
    })
}

/// Distinct versions: one site never issues the same timestamp twice.
fn distinct(mut writes: Vec<(Version, Op)>) -> Vec<(Version, Op)> {
    let mut seen = std::collections::BTreeSet::new();
    writes.retain(|(v, _)| seen.insert(v.clone()));
    writes
}

proptest! {
    #[test]
    fn built_in_policies_converge(writes in proptest::collection::vec(write(), 1..12), seed in any::<u64>()) {
        let writes = distinct(writes);
        for name in ["last-write-wins", "prefer-site:s1", "prefer-non-null", "always-remove"] {
            let policy = parse_policy(name, 100).unwrap();
            let result = check_policy(policy.as_ref(), &writes, delivery_orders(writes.len(), 20, seed));
            prop_assert!(result.is_ok(), "{}", result.unwrap_err());
        }
    }
}

/// A broken policy: ties go to whoever is being compared first.
#[derive(Debug)]
struct FirstWins;

impl MergePolicy for FirstWins {
    fn name(&self) -> String {
        "first-wins".into()
    }
    fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
        if a.version.hlc == b.version.hlc {
            Ordering::Greater
        } else {
            a.version.cmp(b.version)
        }
    }
}

#[test]
fn a_non_converging_policy_is_caught() {
    let v = |s| Version::new(Hlc::new(5, 0), site(s));
    let put = |x: u8| Op::Put { key: b"k".to_vec(), value: vec![x], expire_at_ms: None, keep_ttl: false };
    let writes = vec![(v(0), put(0)), (v(1), put(1))];
    let err = check_policy(&FirstWins, &writes, delivery_orders(2, 4, 1)).unwrap_err();
    assert!(err.contains("first-wins"), "{err}");
}
