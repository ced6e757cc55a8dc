//! The log shipper: local WAL → the site's Kafka topic.
//!
//! It reads the node's WAL from the position after its checkpoint, publishes every
//! entry whose origin is the local site (entries applied from remote sites are never
//! shipped again, so nothing loops), and records in sled the highest WAL position
//! below which Kafka has acknowledged everything. On restart it resumes from there:
//! every entry reaches Kafka at least once, and a duplicate is harmless because
//! applying an entry is idempotent.
//!
//! - Kafka key = cache key, so one key's history stays in one partition, in order.
//! - Headers: `xsite-origin` (site id), `xsite-format` (entry format version).
//! - Producer: idempotent, `acks=all`, batching (`linger.ms`) and compression
//!   configurable (all set up in [`xsite_schemas::kafka`], which every xsite producer shares); bytes
//!   handed to Kafka and not yet acknowledged are bounded by `in_flight_bytes_max`:
//!   beyond it the shipper waits (backpressure, not an error).
//! - A failed delivery (broker down longer than `message.timeout.ms`) rewinds to the
//!   first unacknowledged position and sends again after a pause; the WAL holds the
//!   backlog meanwhile, and the node keeps taking writes.

mod checkpoint;
mod shipper;

pub use checkpoint::{CheckpointError, ShipCheckpoint};
pub use shipper::{
    run, Beat, EntrySource, HeartbeatBuilder, ShipperConfig, ShipperError, ShipperParts, ShipperStats, SourceError,
    SourceRecord, Undeliverable,
};
