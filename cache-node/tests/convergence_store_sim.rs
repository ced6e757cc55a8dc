//! Property: 2–5 sites running the real store (`CacheStore`) and the real commands,
//! with every fault replication must survive, end showing the same thing for every key.
//!
//! Each case picks a merge policy (all four built-in ones), active-active or
//! active-passive, a durability per site and a clock regime (wall clocks within the
//! skew bound, or beyond it), then runs random steps (see `sim::case::Step`):
//! - local writes through `xsite_node::commands` — SET (plain, PX, KEEPTTL), DEL,
//!   INCRBY (its base chosen by the real `incr_by`), PEXPIREAT and PERSIST (which,
//!   as in Redis, do nothing on a key that is not live) — timestamped by each site's
//!   `HlcClock` on its skewed, jumping wall clock; a read-only site refuses them;
//! - deliveries of shipped entries in random order, duplicates included; an entry
//!   not delivered yet is a drop, delivered in the end;
//! - WAL fsyncs (`everysec`), restarts after a power cut (losing the un-fsynced tail;
//!   only durable local entries were ever shipped; entries applied but not durable
//!   are consumed again) or a kill -9, snapshots;
//! - active expiry cycles (`reclaim = false`), tombstone collection with the honest
//!   floor or a lagging one (`sim::world::World::true_floor`);
//! - promotions (the epoch rises at one site, other sites learn it from entries and
//!   shipper heartbeats, and turn read-only) — every entry applied at every site.
//!
//! At the end every site consumes everything, a last collection round runs, and at a
//! common time (before or past every expiry) every site must show each key alike:
//! presence, value (counters as their value) and absolute expiry. When nothing was
//! collected the sites' records must be identical and equal the sequential model's
//! (`sim::model`): the highest write by the policy, counters summing every site's
//! latest total on the winning base.
//!
//! Cases: `XSITE_SIM_CASES` (default 256; CI 10,000). Known open defects can be left
//! out by name, `XSITE_SIM_SKIP_KNOWN=counter-base,collection-rank` or `=all` (see
//! `sim::Known` for what each leaves out); by default nothing is.
//!
//! Below the property: the smallest case of each open defect (skipped when its name is
//! left out; each fails until its defect is fixed), and cases the random steps rarely
//! reach of rules that hold.

mod sim;

use proptest::prelude::*;
use sim::case::{Case, Clocks, Policy, Step, Ttl};
use sim::world::run;
use sim::Known;

/// XSITE_SIM_CASES when set (CI: 10,000), else 256.
fn cases() -> u32 {
    std::env::var("XSITE_SIM_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let known = Known::from_env();
    if run(case, known, false).is_err() {
        let report = run(case, known, true).expect_err("a case runs the same twice");
        return Err(TestCaseError::fail(format!("{report}\n{case:#?}")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]
    #[test]
    fn sites_running_the_store_show_the_same_everywhere(case in sim::case::case()) {
        check(&case)?;
    }
}

/// The steps reach what the property is about: over a fixed set of cases (every
/// known defect left out, so that each case runs to the end), enough of them collect
/// while entries are in flight, lose writes to a power cut, refuse writes read-only
/// and apply entries of an older epoch. A generator that stops reaching these passes
/// the property for nothing.
#[test]
fn the_steps_reach_collection_crashes_and_epochs() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    const CASES: u32 = 1_000;
    let rng = TestRng::deterministic_rng(RngAlgorithm::XorShift);
    let mut runner = TestRunner::new_with_rng(ProptestConfig::default(), rng);
    let strategy = sim::case::case();
    let mut reached = [0u32; 5];
    for _ in 0..CASES {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let stats = run(&case, Known::all(), false).unwrap_or_else(|report| panic!("{report}\n{case:#?}"));
        let seen = [
            stats.collections > 0,
            stats.after_collection > 0,
            stats.lost_writes > 0,
            stats.read_only > 0,
            stats.stale_epoch > 0,
        ];
        for (n, s) in reached.iter_mut().zip(seen) {
            *n += u32::from(s);
        }
    }
    // (what, per thousand cases at least: about half of what the steps reach today)
    let wanted = [
        ("collect mid-run", 50),
        ("apply an entry after a collection", 20),
        ("lose writes to a power cut", 40),
        ("refuse writes read-only", 150),
        ("apply entries of an older epoch", 70),
    ];
    for ((what, per_mille), n) in wanted.iter().zip(reached) {
        assert!(n * 1_000 >= CASES * per_mille, "only {n} of {CASES} cases {what} ({per_mille}‰ wanted)");
    }
}

/// Two sites, both `always` durable (every write ships at once), clocks synced.
fn two_sites(policy: Policy, collect: bool, steps: Vec<Step>) -> Case {
    Case {
        sites: 2,
        policy,
        primary: None,
        collect,
        clocks: Clocks::Synced,
        always: 0b11,
        past_expiry: false,
        seed: 1,
        steps,
    }
}

/// The case must end with both sites showing the same; unless `defect` is left out.
fn converges(defect: Option<&str>, case: Case) {
    if let Some(name) = defect.filter(|n| Known::from_env().skips(n)) {
        eprintln!("skipped: known defect {name} (XSITE_SIM_SKIP_KNOWN)");
        return;
    }
    if let Err(report) = run(&case, Known::default(), true) {
        panic!("{report}");
    }
}

const A: u8 = 0;
const B: u8 = 1;
const C: u8 = 2;

/// Holds: a late PERSIST from another site revives an expired key at every site
/// alike (fixed: expiry used to destroy the value).
#[test]
fn a_late_persist_revives_an_expired_key_everywhere() {
    let steps = vec![
        Step::Set { site: 0, key: A, value: 1, ttl: Ttl::Px(100) },
        Step::Deliver { to: 1, pick: 0, dup: false },
        Step::Persist { site: 1, key: A },
        Step::Advance { ms: 200 },
        Step::ExpireCycle { site: 0, keys_max: 3 },
        Step::Deliver { to: 0, pick: 0, dup: false },
    ];
    converges(None, two_sites(Policy::LastWriteWins, false, steps));
}

/// Holds: an expired record is collected only once its expiry is `max_skew_ms`
/// behind the floor, so a site whose wall clock lags its timestamps by less than the
/// bound cannot write to the key as live after another site dropped it.
#[test]
fn a_clock_lagging_within_the_skew_bound_cannot_revive_a_collected_key() {
    let mut case = two_sites(
        Policy::LastWriteWins,
        true,
        vec![
            Step::Set { site: 0, key: A, value: 1, ttl: Ttl::Px(1_000) }, // a expires at 1000
            Step::Deliver { to: 1, pick: 0, dup: false },
            Step::Advance { ms: 1_000 },
            Step::Skew { site: 1, offset: 127 },  // s1's wall clock: 1500
            Step::Skew { site: 0, offset: -128 }, // s0's: 500, a is live there
            Step::Set { site: 1, key: B, value: 1, ttl: Ttl::None },
            Step::Deliver { to: 0, pick: 0, dup: false }, // s0's clock moves to 1500
            Step::Set { site: 0, key: C, value: 1, ttl: Ttl::None },
            Step::Deliver { to: 1, pick: 0, dup: false },
            Step::Collect { site: 1, lag: 0 }, // floor 1500: a expired 500 ms before it
            Step::Persist { site: 0, key: A },
        ],
    );
    case.clocks = Clocks::WithinSkew;
    converges(None, case);
}

/// Defect counter-base: s0 collected the tombstone of `a`, s1 not; s0's INCR counts
/// on the zero version, which s1's tombstone outranks. s0 shows 1, s1 nothing (and an
/// INCR at s1 would count on the tombstone, dropping one of the two).
#[test]
fn counter_base_an_incr_after_collecting_a_delete() {
    let steps = vec![
        Step::Set { site: 0, key: A, value: 1, ttl: Ttl::None },
        Step::Deliver { to: 1, pick: 0, dup: false },
        Step::Del { site: 0, key: A },
        Step::Deliver { to: 1, pick: 0, dup: false },
        Step::Advance { ms: 30 },
        Step::Collect { site: 0, lag: 0 },
        Step::Incr { site: 0, key: A, delta: 1 },
        Step::Deliver { to: 1, pick: 0, dup: false },
    ];
    converges(Some("counter-base"), two_sites(Policy::LastWriteWins, true, steps));
}

/// Defect incr-base-floor: s0 increments `a` (base: its SET) before it sees s1's DEL;
/// s1 collects the tombstone (the floor is honest: the INCR's timestamp is above it)
/// and then counts the INCR on an empty record. s1 shows 6, s0 nothing.
#[test]
fn incr_base_floor_an_increment_on_an_old_base_meets_a_collected_tombstone() {
    let steps = vec![
        Step::Set { site: 0, key: A, value: 5, ttl: Ttl::None },
        Step::Deliver { to: 1, pick: 0, dup: false },
        Step::Advance { ms: 10 },
        Step::Del { site: 1, key: A },
        Step::Advance { ms: 10 },
        Step::Incr { site: 0, key: A, delta: 1 },
        Step::Deliver { to: 0, pick: 0, dup: false },
        Step::Collect { site: 1, lag: 0 },
    ];
    converges(Some("incr-base-floor"), two_sites(Policy::LastWriteWins, true, steps));
}

/// Defect always-remove-counter (no collection, one writing site): DEL, a SET in the
/// same window (the tombstone beats it), INCR (counts on the tombstone's version).
/// s0 applied SET before INCR: the SET lost to the tombstone, the counter stays. s1
/// applies INCR first: the SET beats the counter (both live, the SET later). s0 shows
/// 1, s1 "2".
#[test]
fn always_remove_counter_a_set_between_a_tombstone_and_its_counter() {
    let steps = vec![
        Step::Set { site: 0, key: A, value: 1, ttl: Ttl::None },
        Step::Del { site: 0, key: A },
        Step::Set { site: 0, key: A, value: 2, ttl: Ttl::None },
        Step::Incr { site: 0, key: A, delta: 1 },
        Step::Deliver { to: 1, pick: 3, dup: false }, // the INCR first
    ];
    converges(Some("always-remove-counter"), two_sites(Policy::AlwaysRemove, false, steps));
}

/// Defect collection-rank, epochs: s1 is promoted (s0, the old primary, does not know
/// yet) and deletes `a`; s0 sets `a` in epoch 0 at a later timestamp, then learns the
/// epoch. s1 collects its tombstone: s0's SET reaches it with nothing to lose to.
/// s1 shows "2", s0 nothing.
#[test]
fn collection_rank_an_old_primary_write_after_a_collected_newer_epoch_tombstone() {
    let mut case = two_sites(
        Policy::LastWriteWins,
        true,
        vec![
            Step::Promote { site: 1 },
            Step::Set { site: 1, key: A, value: 1, ttl: Ttl::None },
            Step::Del { site: 1, key: A },
            Step::Advance { ms: 10 },
            Step::Set { site: 0, key: A, value: 2, ttl: Ttl::None },
            Step::CatchUp { to: 0, from: 1 },
            Step::Collect { site: 1, lag: 0 },
        ],
    );
    case.primary = Some(0);
    converges(Some("collection-rank"), case);
}

/// Defect collection-rank, prefer-site: s0 (preferred) deletes `a`; s1, not having
/// seen it, sets `a` later; the tombstone wins at s1. s0 collects its tombstone and
/// then takes s1's SET. s0 shows "2", s1 nothing.
#[test]
fn collection_rank_a_collected_tombstone_of_the_preferred_site() {
    let steps = vec![
        Step::Set { site: 0, key: A, value: 1, ttl: Ttl::None },
        Step::Deliver { to: 1, pick: 0, dup: false },
        Step::Advance { ms: 10 },
        Step::Del { site: 0, key: A },
        Step::Advance { ms: 10 },
        Step::Set { site: 1, key: A, value: 2, ttl: Ttl::None },
        Step::Deliver { to: 1, pick: 0, dup: false },
        Step::Collect { site: 0, lag: 0 },
    ];
    converges(Some("collection-rank"), two_sites(Policy::PreferSite(0), true, steps));
}

/// Defect collection-rank, always-remove: a SET in a tombstone's window loses to it;
/// s1 collects the tombstone before the SET arrives. s1 shows "2", s0 nothing.
#[test]
fn collection_rank_a_set_in_a_collected_tombstones_window() {
    let steps = vec![
        Step::Set { site: 0, key: A, value: 1, ttl: Ttl::None },
        Step::Del { site: 0, key: A },
        Step::CatchUp { to: 1, from: 0 },
        Step::Set { site: 0, key: A, value: 2, ttl: Ttl::None },
        Step::Advance { ms: 30 },
        Step::Collect { site: 1, lag: 0 },
    ];
    converges(Some("collection-rank"), two_sites(Policy::AlwaysRemove, true, steps));
}

/// Defect expiry-beyond-skew: s0's wall clock jumps back 8 s (beyond the 1 s bound)
/// after its timestamps went ahead; `a` expired long before the floor and s1 dropped
/// it, but at s0's wall clock it is live and PERSIST revives it there only. s0 shows
/// "1", s1 nothing.
#[test]
fn expiry_beyond_skew_a_clock_far_behind_revives_a_collected_key() {
    let mut case = two_sites(
        Policy::LastWriteWins,
        true,
        vec![
            Step::Set { site: 0, key: A, value: 1, ttl: Ttl::Px(1_000) },
            Step::Deliver { to: 1, pick: 0, dup: false },
            Step::Advance { ms: 1_000 },
            Step::Advance { ms: 1_000 },
            Step::Advance { ms: 1_000 },
            Step::Skew { site: 0, offset: 127 }, // both wall clocks: 7000
            Step::Skew { site: 1, offset: 127 },
            Step::Set { site: 0, key: B, value: 1, ttl: Ttl::None },
            Step::Set { site: 1, key: C, value: 1, ttl: Ttl::None },
            Step::Deliver { to: 0, pick: 0, dup: false },
            Step::Deliver { to: 1, pick: 0, dup: false },
            Step::Skew { site: 0, offset: -128 }, // s0's wall clock: -1000
            Step::Collect { site: 1, lag: 0 },
            Step::Persist { site: 0, key: A },
        ],
    );
    case.clocks = Clocks::BeyondSkew;
    converges(Some("expiry-beyond-skew"), case);
}
