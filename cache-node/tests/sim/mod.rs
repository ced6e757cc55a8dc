//! A multi-site simulation of the real store (`xsite_node::store::CacheStore`), driven
//! by the real commands, for `convergence_store_sim.rs`.
//!
//! - [`case`]: what a case is (sites, policy, topology, steps) and how proptest makes one;
//! - [`site`]: one simulated site: its store, HLC clock, WAL with a durable prefix,
//!   snapshot, consumer state, watermarks and active-passive role;
//! - [`world`]: the sites together: topics, deliveries, each site's collection floor
//!   (from the heartbeats it counted), the final delivery round and the checks;
//! - [`model`]: the sequential model of one key in the total order.
//!
//! Known open defects can be excluded from generation by name with
//! `XSITE_SIM_SKIP_KNOWN=<name>[,<name>…]` (see [`Known`]); by default nothing is.

pub mod case;
pub mod model;
pub mod site;
pub mod world;

/// Defects a run can be told to leave out (`XSITE_SIM_SKIP_KNOWN`, comma-separated).
/// Each leaves out as little as its trigger needs; by default nothing is left out.
/// Three are fixed (`always-remove-counter`, `collection-rank`, `expiry-beyond-skew`):
/// their names stay, so that a run can still tell a regression of one apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// `counter-base`: the base an `INCR` takes on a key that is not live must not
    /// depend on whether a site collected the key's record. Floor bases (count from
    /// nothing after the floor) fixed the plain case; open still: a site that
    /// restarted has forgotten its floor (`Engine::collection_floor` is in memory)
    /// and counts on the zero version again, and a receiver does not take a record on
    /// the zero version (a counter on it, expired) below the floor as nothing — it is
    /// the floor base's own version. Leaves out every `INCR` on a key that is not live
    /// at the writing site once any site has collected a record of that key.
    pub counter_base: bool,
    /// `always-remove-counter` (fixed: a counter ranks as its base did): under
    /// `always-remove`, a counter on a tombstone's version ranked as a live value, the
    /// tombstone itself as a tombstone: a write in the tombstone's window that arrived
    /// between them won or lost depending on the order. Leaves out `INCR` on a key
    /// whose record is a tombstone under that policy.
    pub always_remove_counter: bool,
    /// `collection-rank` (fixed: a record goes only if every write that can still
    /// arrive outranks it): collection dropped a record once the floor was past it,
    /// but an entry that arrives later — even one written after its site saw the
    /// record — need not outrank it: a write of a site `prefer-site` does not prefer,
    /// a value in an `always-remove` tombstone's window lose to the record where it is
    /// kept and win where it was collected. Leaves out collections at a site holding a
    /// tombstone or an expiring record of the preferred site, and rounds the
    /// `always-remove` floor down to its window's start.
    pub collection_rank: bool,
    /// `expiry-beyond-skew` (fixed: commands judge expiry at the later of the wall
    /// clock and the clock's timestamps): collection drops an expired record once its
    /// expiry is `max_skew_ms` behind the floor, but a site whose wall clock jumped
    /// back by more than that saw the key live and could write to it (PERSIST, SET
    /// KEEPTTL, INCR): the key revived where the record was kept. Collects with the
    /// skew the case's clocks can really have.
    pub expiry_beyond_skew: bool,
    /// `watermark-restart`: a site's own watermark is a clock reading kept in memory
    /// only; a restarted site's clock starts above what it wrote and applied, not
    /// above the watermarks it reported, so after a restart within the clock's lead
    /// over its wall clock (or after its wall clock stepped back) it writes below a
    /// floor that sites — itself included — already collected with (the floor's
    /// promise, which the run checks). Starts a restarted clock above the highest own
    /// watermark the site confirmed, as if it were kept.
    pub watermark_restart: bool,
    /// `counter-dead-base`: an INCR on a live counter that counts on a delete names
    /// its base as a value (`CounterBase::on`, not `dead`), so a site that gets that
    /// increment first ranks the counter as a value, one that got the first increment
    /// first as a delete (visible under the window policies). Leaves out INCR on a
    /// counter on a delete.
    pub counter_dead_base: bool,
}

/// The names `XSITE_SIM_SKIP_KNOWN` takes.
pub const KNOWN_NAMES: &str =
    "counter-base, always-remove-counter, collection-rank, expiry-beyond-skew, watermark-restart, counter-dead-base, all";

impl Known {
    /// Whether the defect named `name` (one of [`KNOWN_NAMES`]) is left out.
    pub fn skips(&self, name: &str) -> bool {
        match name {
            "counter-base" => self.counter_base,
            "always-remove-counter" => self.always_remove_counter,
            "collection-rank" => self.collection_rank,
            "expiry-beyond-skew" => self.expiry_beyond_skew,
            "watermark-restart" => self.watermark_restart,
            "counter-dead-base" => self.counter_dead_base,
            other => panic!("unknown defect '{other}' (known: {KNOWN_NAMES})"),
        }
    }

    /// Every known defect left out.
    pub fn all() -> Known {
        Known {
            counter_base: true,
            always_remove_counter: true,
            collection_rank: true,
            expiry_beyond_skew: true,
            watermark_restart: true,
            counter_dead_base: true,
        }
    }

    pub fn from_env() -> Known {
        let text = std::env::var("XSITE_SIM_SKIP_KNOWN").unwrap_or_default();
        let mut known = Known::default();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "counter-base" => known.counter_base = true,
                "always-remove-counter" => known.always_remove_counter = true,
                "collection-rank" => known.collection_rank = true,
                "expiry-beyond-skew" => known.expiry_beyond_skew = true,
                "watermark-restart" => known.watermark_restart = true,
                "counter-dead-base" => known.counter_dead_base = true,
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
