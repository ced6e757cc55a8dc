//! A multi-site simulation of the real store (`xsite_node::store::CacheStore`), driven
//! by the real commands, for `convergence_store_sim.rs`.
//!
//! - [`case`]: what a case is (sites, policy, topology, steps) and how proptest makes one;
//! - [`site`]: one simulated site: its store, HLC clock, WAL with a durable prefix,
//!   snapshot, consumer state, watermarks and active-passive role; a transaction
//!   (`Step::Multi`) is one WAL record and one topic entry (a unit), applied whole;
//! - [`world`]: the sites together: topics, deliveries, each site's collection floor
//!   (from the heartbeats it counted), the final delivery round and the checks;
//! - [`model`]: the sequential model of one key in the total order, and what each
//!   collection part of a key shows, stated directly over the surviving entries.
//!
//! Every defect the property found has been fixed; its smallest case stays in
//! `convergence_store_sim.rs` as a case that holds (`counter-base`,
//! `always-remove-counter`, `collection-rank`, `expiry-beyond-skew`,
//! `watermark-restart`, `counter-dead-base`, `from-nothing-above-floor`).

pub mod case;
pub mod model;
pub mod site;
pub mod world;

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
