//! A multi-site simulation of the real store (`xsite_node::store::CacheStore`), driven
//! by the real commands, for `convergence_store_sim.rs`.
//!
//! - [`case`]: what a case is (sites, policy, topology, steps) and how proptest makes one;
//! - [`site`]: one simulated site: its store, HLC clock, WAL with a durable prefix,
//!   snapshot, consumer state and active-passive role;
//! - [`world`]: the sites together: topics, deliveries, the honest collection floor, the
//!   final delivery round and the checks;
//! - [`model`]: the sequential model of one key in the total order.
//!
//! Known open defects can be excluded from generation by name with
//! `XSITE_SIM_SKIP_KNOWN=<name>[,<name>…]` (see [`Known`]); by default nothing is.

pub mod case;
pub mod model;
pub mod site;
pub mod world;

/// Open defects a run can be told to leave out (`XSITE_SIM_SKIP_KNOWN`, comma-separated).
/// Each leaves out as little as its trigger needs; by default nothing is left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// `counter-base`: the base an `INCR` takes on a key that is not live depends on
    /// whether the writing site has collected the key's record (a tombstone: its
    /// version; an expired record: a fresh base; collected: the zero version). Leaves
    /// out every `INCR` on a key that is not live at the writing site once any site
    /// has collected a record of that key.
    pub counter_base: bool,
    /// `incr-base-floor`: an increment competes at its base version, which may be far
    /// below its own timestamp; a site that collected a tombstone above that base
    /// before the increment arrived counts it, a site that did not discards it. Holds
    /// the collection floor below the base of every increment not yet applied
    /// everywhere (a lower floor than the honest one, which is allowed).
    pub incr_base_floor: bool,
    /// `always-remove-counter`: under `always-remove`, a counter on a tombstone's
    /// version ranks as a live value, the tombstone itself as a tombstone: a write in
    /// the tombstone's window that arrives between them wins or loses depending on the
    /// order. Leaves out `INCR` on a key whose record is a tombstone under that policy.
    pub always_remove_counter: bool,
    /// `collection-rank`: collection drops a record once every site is past its
    /// timestamp, but an entry that arrives later outranks it only under last write
    /// wins within one epoch: an old primary's write of a lower epoch, a write of a
    /// site `prefer-site` does not prefer, a value in an `always-remove` tombstone's
    /// window all lose to the record where it is kept and win where it was
    /// collected. Leaves out collections while an entry of a lower epoch than the
    /// highest can still arrive, collections at a site holding a tombstone or an
    /// expiring record of the preferred site, and rounds the `always-remove` floor
    /// down to its window's start.
    pub collection_rank: bool,
    /// `expiry-beyond-skew`: collection drops an expired record once its expiry is
    /// `max_skew_ms` behind the floor, but a site whose wall clock jumped back by
    /// more than that still sees the key live and can write to it (PERSIST, SET
    /// KEEPTTL, INCR): the key revives where the record was kept. Collects with the
    /// skew the case's clocks can really have.
    pub expiry_beyond_skew: bool,
}

/// The names `XSITE_SIM_SKIP_KNOWN` takes.
pub const KNOWN_NAMES: &str =
    "counter-base, incr-base-floor, always-remove-counter, collection-rank, expiry-beyond-skew, all";

impl Known {
    /// Whether the defect named `name` (one of [`KNOWN_NAMES`]) is left out.
    pub fn skips(&self, name: &str) -> bool {
        match name {
            "counter-base" => self.counter_base,
            "incr-base-floor" => self.incr_base_floor,
            "always-remove-counter" => self.always_remove_counter,
            "collection-rank" => self.collection_rank,
            "expiry-beyond-skew" => self.expiry_beyond_skew,
            other => panic!("unknown defect '{other}' (known: {KNOWN_NAMES})"),
        }
    }

    /// Every known defect left out.
    pub fn all() -> Known {
        Known {
            counter_base: true,
            incr_base_floor: true,
            always_remove_counter: true,
            collection_rank: true,
            expiry_beyond_skew: true,
        }
    }

    pub fn from_env() -> Known {
        let text = std::env::var("XSITE_SIM_SKIP_KNOWN").unwrap_or_default();
        let mut known = Known::default();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "counter-base" => known.counter_base = true,
                "incr-base-floor" => known.incr_base_floor = true,
                "always-remove-counter" => known.always_remove_counter = true,
                "collection-rank" => known.collection_rank = true,
                "expiry-beyond-skew" => known.expiry_beyond_skew = true,
                "all" => known = Known::all(),
                other => panic!("XSITE_SIM_SKIP_KNOWN: unknown defect '{other}' (known: {KNOWN_NAMES})"),
            }
        }
        known
    }
}

/// A small deterministic generator (xorshift64*) for shuffles and picks made while a
/// case runs, so that a case is a pure function of its inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}
