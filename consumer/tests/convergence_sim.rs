//! Property: N sites (2..5) taking random writes (set, delete, incr, expire) with
//! skewed and jumping clocks, exchanging entries in random order with duplicates and
//! restarting at random, end with identical contents; every key's value is the one
//! the total order says (last write wins; counters sum every site's increments on
//! the winning base). Cases: XSITE_SIM_CASES (CI runs 10,000).

use proptest::prelude::*;
use std::collections::BTreeMap;
use xsite_consumer::merge::{apply, LastWriteWins, Record, SiteTotal, Value};
use xsite_schemas::{CounterBase, Hlc, HlcClock, Op, SiteId, Version};

#[derive(Debug, Clone)]
enum Step {
    Set {
        site: usize,
        key: u8,
        value: u8,
    },
    Del {
        site: usize,
        key: u8,
    },
    Incr {
        site: usize,
        key: u8,
        delta: i8,
    },
    Expire {
        site: usize,
        key: u8,
        at: u16,
    },
    /// Move a site's wall clock (may jump back).
    Clock {
        site: usize,
        wall: u16,
    },
    Deliver {
        to: usize,
        pick: usize,
    },
    Restart {
        site: usize,
        seed: u64,
    },
}

fn step(sites: usize) -> impl Strategy<Value = Step> {
    let s = 0..sites;
    prop_oneof![
        3 => (s.clone(), 0u8..4, any::<u8>()).prop_map(|(site, key, value)| Step::Set { site, key, value }),
        1 => (s.clone(), 0u8..4).prop_map(|(site, key)| Step::Del { site, key }),
        2 => (s.clone(), 0u8..4, -5i8..6).prop_map(|(site, key, delta)| Step::Incr { site, key, delta }),
        1 => (s.clone(), 0u8..4, any::<u16>()).prop_map(|(site, key, at)| Step::Expire { site, key, at }),
        2 => (s.clone(), any::<u16>()).prop_map(|(site, wall)| Step::Clock { site, wall }),
        4 => (s.clone(), any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
        1 => (s, any::<u64>()).prop_map(|(site, seed)| Step::Restart { site, seed }),
    ]
}

struct Site {
    id: SiteId,
    clock: HlcClock,
    wall: u64,
    /// Everything this site applied, as its WAL holds it (durability `always`).
    log: Vec<(Version, Op)>,
    store: BTreeMap<u8, Option<Record>>,
}

impl Site {
    fn apply(&mut self, v: &Version, op: &Op, key: u8) {
        apply(&LastWriteWins, self.store.entry(key).or_default(), v, op);
    }

    /// Rebuild the store from the log, in a shuffled order (replay is a join).
    fn restart(&mut self, seed: u64) {
        let mut order: Vec<usize> = (0..self.log.len()).collect();
        let mut r = seed | 1;
        for i in (1..order.len()).rev() {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            order.swap(i, (r % (i as u64 + 1)) as usize);
        }
        self.store.clear();
        let floor = self.log.iter().map(|(v, _)| v.hlc).max().unwrap_or(Hlc::ZERO);
        self.clock = HlcClock::new(floor, 1_000);
        for i in order {
            let (v, op) = self.log[i].clone();
            let key = op.key().unwrap()[0];
            self.apply(&v, &op, key);
        }
    }

    fn live(&self, key: u8) -> Option<&Record> {
        self.store.get(&key).and_then(Option::as_ref).filter(|r| !r.is_tombstone())
    }

    fn local(&mut self, key: u8, op: impl FnOnce(&Self, &Version) -> Option<Op>) -> Option<(Version, Op)> {
        let v = Version::new(self.clock.now_at(self.wall), self.id.clone());
        let op = op(self, &v)?;
        self.apply(&v, &op, key);
        self.log.push((v.clone(), op.clone()));
        Some((v, op))
    }
}

fn incr_op(site: &Site, v: &Version, key: u8, delta: i64) -> Option<Op> {
    let (base, mine) = match site.live(key) {
        Some(Record { value: Value::Bytes(b), version, .. }) => {
            let n: i64 = std::str::from_utf8(b).ok()?.parse().ok()?;
            (
                CounterBase {
                    epoch: version.epoch,
                    hlc: version.hlc,
                    site: version.site.clone(),
                    value: n,
                    floor: None,
                    dead: false,
                },
                0,
            )
        }
        Some(Record { value: Value::Counter(c), version, .. }) => (
            CounterBase {
                epoch: version.epoch,
                hlc: version.hlc,
                site: version.site.clone(),
                value: c.base,
                floor: None,
                dead: false,
            },
            c.total_of(&site.id),
        ),
        _ => (CounterBase { epoch: v.epoch, hlc: v.hlc, site: v.site.clone(), value: 0, floor: None, dead: false }, 0),
    };
    Some(Op::Incr { key: vec![key], delta, total: mine + delta, base })
}

fn run(sites_n: usize, steps: Vec<Step>, final_seed: u64) -> Result<(), TestCaseError> {
    let mut sites: Vec<Site> = (0..sites_n)
        .map(|i| Site {
            id: SiteId::new(format!("s{i}")).unwrap(),
            clock: HlcClock::new(Hlc::ZERO, 1_000),
            wall: 10_000,
            log: Vec::new(),
            store: BTreeMap::new(),
        })
        .collect();
    let mut shipped: Vec<(usize, Version, Op)> = Vec::new();
    for s in steps {
        let made = match s {
            Step::Set { site, key, value } => sites[site]
                .local(key, |_, _| {
                    Some(Op::Put {
                        key: vec![key],
                        value: value.to_string().into_bytes(),
                        expire_at_ms: None,
                        keep_ttl: false,
                    })
                })
                .map(|e| (site, e)),
            Step::Del { site, key } => {
                sites[site].local(key, |_, _| Some(Op::Delete { key: vec![key] })).map(|e| (site, e))
            }
            Step::Incr { site, key, delta } => {
                sites[site].local(key, |s, v| incr_op(s, v, key, i64::from(delta))).map(|e| (site, e))
            }
            Step::Expire { site, key, at } => sites[site]
                .local(key, |_, _| Some(Op::Expire { key: vec![key], expire_at_ms: Some(u64::from(at)) }))
                .map(|e| (site, e)),
            Step::Clock { site, wall } => {
                sites[site].wall = 10_000 + u64::from(wall);
                None
            }
            Step::Deliver { to, pick } => {
                if !shipped.is_empty() {
                    let (from, v, op) = shipped[pick % shipped.len()].clone();
                    if from != to {
                        deliver(&mut sites[to], &v, &op);
                    }
                }
                None
            }
            Step::Restart { site, seed } => {
                sites[site].restart(seed);
                None
            }
        };
        if let Some((site, (v, op))) = made {
            shipped.push((site, v, op));
        }
    }
    // Deliver everything to everyone, in a different order per site.
    for (i, site) in sites.iter_mut().enumerate() {
        let orders = xsite_consumer::convergence::delivery_orders(shipped.len(), 3, final_seed ^ i as u64);
        for &j in orders.last().unwrap() {
            let (from, v, op) = &shipped[j];
            if *from != i {
                deliver(site, v, op);
            }
        }
    }
    for s in &sites[1..] {
        prop_assert_eq!(&s.store, &sites[0].store, "site {} differs from site {}", s.id, sites[0].id);
    }
    check_against_total_order(&sites[0], &shipped)
}

fn deliver(site: &mut Site, v: &Version, op: &Op) {
    site.clock.observe_at(v.hlc, site.wall);
    let key = op.key().unwrap()[0];
    site.apply(v, op, key);
    site.log.push((v.clone(), op.clone()));
}

/// The sequential model: per key, the highest-versioned put/delete/base wins; a
/// counter's value is its base plus each site's highest total on that base.
fn check_against_total_order(site: &Site, shipped: &[(usize, Version, Op)]) -> Result<(), TestCaseError> {
    for key in 0u8..4 {
        let writes: Vec<&(usize, Version, Op)> =
            shipped.iter().filter(|(_, _, op)| op.key() == Some(&[key][..])).collect();
        let value_writes = writes.iter().filter_map(|(_, v, op)| match op {
            Op::Put { .. } | Op::Delete { .. } => Some(v.clone()),
            Op::Incr { base, .. } => Some(base.version()),
            _ => None,
        });
        let Some(winner) = value_writes.max() else { continue };
        let rec = site.store.get(&key).and_then(Option::as_ref).expect("a written key has a record");
        prop_assert_eq!(&rec.version, &winner);
        // Each site's latest total (by timestamp) on the winning base.
        let mut totals: BTreeMap<SiteId, SiteTotal> = BTreeMap::new();
        let mut base_value = None;
        for (_, v, op) in &writes {
            if let Op::Incr { total, base, .. } = op {
                if base.version() == winner {
                    let mine = SiteTotal { hlc: v.hlc, total: *total };
                    let t = totals.entry(v.site.clone()).or_insert(mine);
                    if mine.hlc > t.hlc {
                        *t = mine;
                    }
                    base_value = Some(base.value);
                }
            }
        }
        match (&rec.value, base_value) {
            (Value::Counter(c), Some(b)) => {
                prop_assert_eq!(c.base, b);
                prop_assert_eq!(&c.totals, &totals);
            }
            (_, None) => {
                let expected = writes.iter().find(|(_, v, op)| *v == winner && !matches!(op, Op::Incr { .. }));
                match expected.map(|(_, _, op)| op) {
                    Some(Op::Put { value, .. }) => prop_assert_eq!(&rec.value, &Value::Bytes(value.clone())),
                    Some(Op::Delete { .. }) => prop_assert!(rec.is_tombstone()),
                    other => prop_assert!(false, "unexpected winner {:?}", other),
                }
            }
            (other, Some(_)) => prop_assert!(false, "expected a counter, found {:?}", other),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn sites_converge_to_the_total_order(
        (n, steps) in (2usize..=5).prop_flat_map(|n| (Just(n), proptest::collection::vec(step(n), 1..60))),
        seed in any::<u64>(),
    ) {
        run(n, steps, seed)?;
    }
}

/// XSITE_SIM_CASES when set (CI: 10,000), else 256.
fn cases() -> u32 {
    std::env::var("XSITE_SIM_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}
