//! Kafka → merge → store. Consumes the topics of remote sites, applies each entry
//! with the cache's [`merge::MergePolicy`], and checkpoints offsets in sled.

pub mod merge;
