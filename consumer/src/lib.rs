//! Kafka → merge → store. For each remote site, consumes that site's topic, applies
//! each entry with the cache's [`merge::MergePolicy`] through an [`Applier`] (the
//! node), dead-letters what cannot be applied, and checkpoints offsets in sled after
//! the entries they cover are durable.
//!
//! Partitions are assigned directly (no consumer group): the offsets live in sled,
//! not in Kafka (`enable.auto.commit=false`), so a restarted node resumes exactly
//! after the last entry it applied, with no group rebalance to wait for.

mod consume;
pub mod convergence;
pub mod hash;
mod lag;
pub mod list;
pub mod merge;
mod offsets;
pub mod remote;
pub mod set;
pub mod small_bytes;
pub mod zset;

pub use consume::{
    dlq_header, ends_of, fetch_marks, run, Applied, Applier, ApplyError, ConsumerConfig, ConsumerError, ConsumerParts,
    ConsumerStats, Marks, NotedError, DISCOVER_BACKOFF_MAX_MS,
};
pub use lag::LagHistogram;
pub use offsets::{OffsetError, OffsetStore};
pub use remote::{RemoteState, RemoteStatus, RemoteTracker};
