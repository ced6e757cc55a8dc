//! Every byte that crosses a site.
//!
//! - [`SiteId`] and [`CacheName`]: validated names.
//! - [`Hlc`]: the hybrid logical clock timestamp, and [`HlcClock`] that issues them.
//! - [`Version`]: `(hlc, site)`, the one total order of writes every site agrees on.
//! - [`LogEntry`]: the versioned log entry (formats v1 to v7) written to the WAL and shipped
//!   through Kafka; see [`entry`] for the wire format.
//! - [`dump`]: the payloads of `DUMP` and `RESTORE` (magic, version, type byte,
//!   value, CRC32C).
//! - `kafka` (feature `kafka`): Kafka client setup every role shares, and an
//!   in-process cluster for the demo and tests.
//! - [`claims`]: what a heartbeat's `xsite-failover` header says of each
//!   active-passive cache (epoch, primary, candidacy, vote).
//!
//! A change of format is a new version; old readers reject it with
//! [`DecodeError::UnsupportedVersion`] rather than guessing.

pub mod claims;
pub mod dump;
pub mod entry;
pub mod hlc;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod names;

pub use entry::{
    base64_len, decode, encode, encode_into, encoded_len_bound, format_version_of, peek, reads_version, says_offline,
    CounterBase, DecodeError, FieldBase, FieldValue, Float, FloatBase, Ident, ListItem, LogEntry, Member, MemberSeen,
    Op, Peeked, Place, Score, ScoredMember, ENTRY_ENVELOPE_BYTES_MAX, FORMAT_VERSION, FORMAT_VERSION_HASHES,
    FORMAT_VERSION_LISTS, FORMAT_VERSION_MIN, FORMAT_VERSION_SETS, FORMAT_VERSION_UNITS, FORMAT_VERSION_ZSETS,
    KAFKA_HEADER_FORMAT, KAFKA_HEADER_OFFLINE, KAFKA_HEADER_ORIGIN, KAFKA_HEADER_READS,
};
pub use hlc::{Hlc, HlcClock, Observed, Version};
pub use names::{CacheName, NameError, SiteId};
