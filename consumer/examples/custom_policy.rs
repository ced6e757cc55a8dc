//! A custom merge policy, and the check that it converges.
//!
//! "Highest value wins": of two concurrent values of a key, keep the one whose bytes
//! sort last (e.g. version strings, or monotonically growing states); a tombstone
//! loses to any value; among tombstones, last write wins. A policy must be a strict
//! total order on what it sees — a pure function of the two candidates — or sites
//! diverge. `check_policy` applies writes in many delivery orders, with duplicates,
//! and fails if any order ends differently.
//!
//! `cargo run -p xsite-consumer --example custom_policy`

use std::cmp::Ordering;
use xsite_consumer::convergence::{check_policy, delivery_orders};
use xsite_consumer::merge::{parse_policy, register_policy, Candidate, MergePolicy, Value};
use xsite_schemas::{Hlc, Op, SiteId, Version};

#[derive(Debug)]
struct HighestValueWins;

impl MergePolicy for HighestValueWins {
    fn name(&self) -> String {
        "highest-value-wins".into()
    }

    fn cmp(&self, a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
        // Values above tombstones; among values the larger bytes; then the version,
        // so two different writes never compare equal.
        (a.live, a.value).cmp(&(b.live, b.value)).then_with(|| a.version.cmp(b.version))
    }
}

fn main() {
    let v = |ms, site: &str| Version::new(Hlc::new(ms, 0), SiteId::new(site).unwrap());
    let put = |x: &str| Op::Put { key: b"release".to_vec(), value: x.into(), expire_at_ms: None, keep_ttl: false };
    let writes = vec![
        (v(100, "site-a"), put("v1.4")),
        (v(105, "site-b"), put("v1.3")), // later, but lower: loses
        (v(110, "site-c"), Op::Delete { key: b"release".to_vec() }),
        (v(120, "site-a"), put("v1.5")),
    ];
    let record = check_policy(&HighestValueWins, &writes, delivery_orders(writes.len(), 200, 42))
        .expect("highest-value-wins converges")
        .expect("a record");
    assert_eq!(record.value, Value::Bytes(b"v1.5".to_vec()));
    // A binary built on the xsite crates registers it; config then names it:
    // [[cache]] policy = "highest-value-wins"
    register_policy("highest-value-wins", || Box::new(HighestValueWins));
    assert_eq!(parse_policy("highest-value-wins", 100).unwrap().name(), "highest-value-wins");
    println!("highest-value-wins converges over 200 delivery orders; every site keeps {:?}", "v1.5");
}
