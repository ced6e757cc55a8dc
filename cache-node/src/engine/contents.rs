//! A cache read whole: every record with its versions (what push-state publishes),
//! the live contents a reader sees, and their order-independent digest (what
//! `xsite verify` compares).

use super::Engine;
use crate::store::SHARDS;
use std::collections::BTreeMap;
use xsite_consumer::merge::Record;
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::CacheName;

impl Engine {
    /// Every record of a cache, tombstones included (for pushing state to a site).
    pub fn export(&self, cache: &CacheName) -> Vec<(Vec<u8>, Record)> {
        let Some(c) = self.cache(cache) else {
            return Vec::new();
        };
        (0..SHARDS)
            .flat_map(|si| {
                let locked = c.store.lock_shard(si);
                locked.records().map(|(k, r)| (k.to_vec(), r.clone())).collect::<Vec<_>>()
            })
            .collect()
    }

    /// The live keys of a cache and the bytes a reader sees (empty for an unknown cache).
    pub fn live_contents(&self, cache: &CacheName) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.cache(cache).map(|c| c.store.live_contents(wall_clock_ms())).unwrap_or_default()
    }

    /// How many keys are live in a cache and the digest of them, both at one
    /// instant (a key expiring between two readings would make them disagree).
    pub fn live_count_and_digest(&self, cache: &CacheName) -> (usize, u64) {
        let now = wall_clock_ms();
        self.cache(cache).map_or((0, 0), |c| (c.store.live_contents(now).len(), c.store.digest(now)))
    }

    /// An order-independent hash of the live keys and values of a cache.
    pub fn digest(&self, cache: &CacheName) -> u64 {
        self.cache(cache).map_or(0, |c| c.store.digest(wall_clock_ms()))
    }
}
