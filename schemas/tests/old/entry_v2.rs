//! The log entry, format versions 1 and 2.
//!
//! One entry is one mutation of one key (or a heartbeat), encoded as a JSON object:
//!
//! ```json
//! {"version":1,"id":"0190…","origin":"site-a","seq":42,"hlc":111397972459520001,
//!  "epoch":0,"cache":"default","op":{"op":"put","key":"aw==","value":"dg==",
//!  "expire_at_ms":null,"keep_ttl":false}}
//! ```
//!
//! - `version`: the format version, `1`. A reader rejects any other value
//!   ([`DecodeError::UnsupportedVersion`]) and any unknown field.
//! - `id`: UUID v7 of the entry, unique across sites.
//! - `origin`: the site that accepted the write ([`SiteId`]).
//! - `seq`: the entry's position in the origin node's WAL (its LSN): origin-local,
//!   strictly increasing.
//! - `hlc`: the write's hybrid logical clock timestamp as one `u64` (48-bit wall-clock
//!   milliseconds << 16 | 16-bit logical counter; see [`crate::hlc`]).
//! - `epoch`: the cache's active-passive epoch at the origin; raised by `promote`.
//! - `cache`: the named cache ([`CacheName`]).
//! - `op`: the operation, tagged by `op`: `put`, `delete`, `expire`, `incr`,
//!   `heartbeat`. Keys and values are arbitrary bytes, base64 (standard alphabet,
//!   padded) in JSON. Expiry times are absolute Unix milliseconds.
//!
//! Version 2 adds one thing: an increment's `base` may be a *floor base*,
//! `{"epoch":0,"hlc":0,"site":"…","value":0,"floor":F}` — "counting from nothing,
//! where the key held nothing any site could still write around below `F`", sent by
//! a site whose own record of the key was collected (or collectable) below its
//! collection floor `F`. A writer writes the lowest version that can express an
//! entry (every entry without a floor base is version 1), so readers of version 1
//! read everything else; a version-1 reader refuses a version-2 entry by its
//! version and dead-letters it. Version 2 also marks a base that is a delete
//! (`"dead":true`): the window policies rank deletes and values differently, and a
//! counter must rank as its base did. A reader refuses either field in a version-1
//! entry.
//!
//! The JSON Schemas are `schemas/log-entry.v1.schema.json` and
//! `schemas/log-entry.v2.schema.json`; golden files under `schemas/golden/` pin the
//! bytes of each version.

use crate::hlc::{Hlc, Version};
use crate::names::{CacheName, SiteId, NAME_LEN_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The newest format version this crate writes; it reads versions 1 and 2.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this crate reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
/// Kafka header carrying the origin site id.
pub const KAFKA_HEADER_ORIGIN: &str = "xsite-origin";
/// Kafka header carrying the format version, as decimal text.
pub const KAFKA_HEADER_FORMAT: &str = "xsite-format";

/// Bytes an encoded entry takes at most beyond the base64 of its key and value:
/// every other field at its longest (names of [`NAME_LEN_MAX`] bytes, 20-digit
/// numbers). [`encoded_len_bound`] adds it.
pub const ENTRY_ENVELOPE_BYTES_MAX: usize = 768;

/// Bytes of base64 (padded) for `n` bytes.
pub const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// An upper bound of `encode(entry).len()` for any entry carrying `op`, at most
/// [`ENTRY_ENVELOPE_BYTES_MAX`] above the real length: what a write is checked
/// against before it is accepted (a value grows by about 4/3 in base64).
pub fn encoded_len_bound(op: &Op) -> usize {
    let payload = match op {
        Op::Put { key, value, .. } => base64_len(key.len()) + base64_len(value.len()),
        Op::Delete { key } | Op::Expire { key, .. } | Op::Incr { key, .. } => base64_len(key.len()),
        Op::Heartbeat { applied } => applied.len() * (NAME_LEN_MAX + 24),
    };
    payload + ENTRY_ENVELOPE_BYTES_MAX
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub id: Uuid,
    pub origin: SiteId,
    pub seq: u64,
    pub hlc: Hlc,
    pub epoch: u64,
    pub cache: CacheName,
    pub op: Op,
}

/// The counter base an increment applies to: the version and integer value of the
/// key when the counter started. All increments on one base add up; a write ordered
/// after the base (SET, DEL, a newer base) supersedes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterBase {
    pub epoch: u64,
    pub hlc: Hlc,
    pub site: SiteId,
    pub value: i64,
    /// Format version 2: a floor base (see the module docs). The version fields are
    /// then [`Version::zero`]'s and `value` is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<Hlc>,
    /// Format version 2: the base is a delete (a tombstone's version), not a value.
    /// A policy that ranks deletes and values differently (the window policies)
    /// ranks the counter as it ranked its base, so the order in which a site learns
    /// of the delete, the counter and a concurrent write does not matter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead: bool,
}

impl CounterBase {
    pub fn version(&self) -> Version {
        Version::with_epoch(self.epoch, self.hlc, self.site.clone())
    }

    /// Counting from nothing (the zero version), with no floor.
    pub fn zero() -> CounterBase {
        let v = Version::zero();
        CounterBase { epoch: v.epoch, hlc: v.hlc, site: v.site, value: 0, floor: None, dead: false }
    }

    /// Counting from nothing, where the key held nothing any site could still write
    /// around below `floor`.
    pub fn after_floor(floor: Hlc) -> CounterBase {
        CounterBase { floor: Some(floor), ..CounterBase::zero() }
    }

    /// The base of a counter on the value (or tombstone) at `version`, worth `value`.
    pub fn on(version: &Version, value: i64) -> CounterBase {
        CounterBase {
            epoch: version.epoch,
            hlc: version.hlc,
            site: version.site.clone(),
            value,
            floor: None,
            dead: false,
        }
    }

    /// The base of a counter on the delete at `version`.
    pub fn on_delete(version: &Version) -> CounterBase {
        CounterBase { dead: true, ..CounterBase::on(version, 0) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Set the value. `keep_ttl`: leave the key's expiry as it is (SET KEEPTTL, APPEND…);
    /// otherwise the expiry becomes `expire_at_ms` (null: none).
    Put {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64")]
        value: Vec<u8>,
        expire_at_ms: Option<u64>,
        keep_ttl: bool,
    },
    /// Delete the key: leaves a tombstone with this entry's version.
    Delete {
        #[serde(with = "b64")]
        key: Vec<u8>,
    },
    /// Set (or with null, remove) the key's absolute expiry time.
    Expire {
        #[serde(with = "b64")]
        key: Vec<u8>,
        expire_at_ms: Option<u64>,
    },
    /// Increment a counter. `total` is the origin site's cumulative contribution on
    /// `base` after this increment (`delta` is informative); merging keeps the highest
    /// total per site, so duplicates and reordering are harmless.
    Incr {
        #[serde(with = "b64")]
        key: Vec<u8>,
        delta: i64,
        total: i64,
        base: CounterBase,
    },
    /// Progress of the origin site: for each origin, the highest timestamp below which
    /// it has applied everything. Used to forget tombstones safely.
    Heartbeat { applied: BTreeMap<SiteId, Hlc> },
}

impl Op {
    /// The cache key the operation touches (none for a heartbeat).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Expire { key, .. } | Op::Incr { key, .. } => Some(key),
            Op::Heartbeat { .. } => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::Expire { .. } => "expire",
            Op::Incr { .. } => "incr",
            Op::Heartbeat { .. } => "heartbeat",
        }
    }
}

impl LogEntry {
    /// The entry's place in the total order.
    pub fn version(&self) -> Version {
        Version::with_epoch(self.epoch, self.hlc, self.origin.clone())
    }

    /// A new entry id (UUID v7: time-ordered, unique across sites).
    pub fn new_id() -> Uuid {
        Uuid::now_v7()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("log entry is not a JSON object: {0}")]
    NotJson(String),
    #[error("log entry has no format version field")]
    MissingVersion,
    #[error("log entry format version {found} is not supported (this reader understands versions {FORMAT_VERSION_MIN} to {FORMAT_VERSION})")]
    UnsupportedVersion { found: String },
    #[error("log entry is malformed: {0}")]
    Malformed(String),
}

/// The wire envelope: the entry with its format version.
#[derive(Serialize)]
struct WireRef<'a> {
    version: u32,
    #[serde(flatten)]
    entry: &'a LogEntry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u32,
    id: Uuid,
    origin: SiteId,
    seq: u64,
    hlc: Hlc,
    epoch: u64,
    cache: CacheName,
    op: Op,
}

/// The lowest format version that can express `entry`: 2 for an increment on a
/// floor base, 1 for everything else.
pub fn format_version_of(entry: &LogEntry) -> u32 {
    match &entry.op {
        Op::Incr { base, .. } if base.floor.is_some() || base.dead => 2,
        _ => 1,
    }
}

/// Encode an entry in the lowest format version that can express it.
pub fn encode(entry: &LogEntry) -> Vec<u8> {
    serde_json::to_vec(&WireRef { version: format_version_of(entry), entry }).expect("log entry serializes")
}

/// Decode an entry, refusing other format versions and malformed input.
pub fn decode(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
    match serde_json::from_slice::<Wire>(bytes) {
        Ok(w) if (FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&w.version) => {
            let entry = LogEntry {
                id: w.id,
                origin: w.origin,
                seq: w.seq,
                hlc: w.hlc,
                epoch: w.epoch,
                cache: w.cache,
                op: w.op,
            };
            if format_version_of(&entry) > w.version {
                return Err(DecodeError::Malformed(format!(
                    "a counter floor or delete base needs format version 2, the entry says {}",
                    w.version
                )));
            }
            Ok(entry)
        }
        Ok(w) => Err(DecodeError::UnsupportedVersion { found: w.version.to_string() }),
        Err(err) => Err(explain(bytes, err)),
    }
}

/// Turn a failed parse into the most useful error: a wrong version beats a field error.
fn explain(bytes: &[u8], err: serde_json::Error) -> DecodeError {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return DecodeError::NotJson(e.to_string()),
    };
    let Some(obj) = value.as_object() else {
        return DecodeError::NotJson("top level is not an object".into());
    };
    match obj.get("version") {
        None => DecodeError::MissingVersion,
        Some(v)
            if v.as_u64().is_some_and(|v| (u64::from(FORMAT_VERSION_MIN)..=u64::from(FORMAT_VERSION)).contains(&v)) =>
        {
            DecodeError::Malformed(err.to_string())
        }
        Some(v) => DecodeError::UnsupportedVersion { found: v.to_string() },
    }
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    fn sample(op: Op) -> LogEntry {
        LogEntry {
            id: Uuid::parse_str("01936d3e-8a4b-7c2d-9e1f-0a1b2c3d4e5f").unwrap(),
            origin: site("site-a"),
            seq: 42,
            hlc: Hlc::new(1_733_000_000_000, 1),
            epoch: 0,
            cache: CacheName::new("default").unwrap(),
            op,
        }
    }

    #[test]
    fn round_trip_binary_key_and_value() {
        let e = sample(Op::Put {
            key: vec![0, 255, b'\n'],
            value: vec![0xc3, 0x28],
            expire_at_ms: Some(5),
            keep_ttl: false,
        });
        assert_eq!(decode(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn the_length_bound_holds_for_the_longest_fields() {
        let long = |c: char| c.to_string().repeat(NAME_LEN_MAX);
        let base = CounterBase {
            epoch: u64::MAX,
            hlc: Hlc::from_u64(u64::MAX),
            site: site(&long('s')),
            value: i64::MIN,
            floor: Some(Hlc::from_u64(u64::MAX)),
            dead: true,
        };
        let ops = [
            Op::Put { key: vec![0xff; 1000], value: vec![0; 4097], expire_at_ms: Some(u64::MAX), keep_ttl: true },
            Op::Delete { key: vec![1; 5] },
            Op::Expire { key: vec![], expire_at_ms: Some(u64::MAX) },
            Op::Incr { key: vec![7; 11], delta: i64::MIN, total: i64::MIN, base },
            Op::Heartbeat {
                applied: (0..5)
                    .map(|i| (site(&format!("{i}{}", long('h')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                    .collect(),
            },
        ];
        for op in ops {
            let mut e = sample(op);
            e.origin = site(&long('o'));
            e.cache = CacheName::new(long('c')).unwrap();
            (e.seq, e.epoch, e.hlc) = (u64::MAX, u64::MAX, Hlc::from_u64(u64::MAX));
            let len = encode(&e).len();
            let bound = encoded_len_bound(&e.op);
            assert!(len <= bound && bound - len <= ENTRY_ENVELOPE_BYTES_MAX, "{}: {len} vs bound {bound}", e.op.name());
        }
    }

    #[test]
    fn rejects_other_versions_clearly() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&sample(Op::Delete { key: b"k".to_vec() }))).unwrap();
        v["version"] = 3.into();
        let err = decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedVersion { ref found } if found == "3"), "{err}");
        v["version"] = 2.into();
        assert!(
            decode(&serde_json::to_vec(&v).unwrap()).is_ok(),
            "a version-2 reader reads what needs no v2 feature too"
        );
        v.as_object_mut().unwrap().remove("version");
        assert!(matches!(decode(&serde_json::to_vec(&v).unwrap()), Err(DecodeError::MissingVersion)));
    }

    #[test]
    fn a_floor_base_is_written_as_version_2_and_refused_in_version_1() {
        let incr =
            sample(Op::Incr { key: b"k".to_vec(), delta: 1, total: 1, base: CounterBase::after_floor(Hlc::new(5, 0)) });
        let bytes = encode(&incr);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (v["version"].as_u64(), v["op"]["base"]["floor"].as_u64()),
            (Some(2), Some(Hlc::new(5, 0).as_u64()))
        );
        assert_eq!(decode(&bytes).unwrap(), incr);
        let mut old = v.clone();
        old["version"] = 1.into();
        let err = decode(&serde_json::to_vec(&old).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(ref m) if m.contains("version 2")), "{err}");
        let plain = sample(Op::Incr { key: b"k".to_vec(), delta: 1, total: 1, base: CounterBase::zero() });
        let v: serde_json::Value = serde_json::from_slice(&encode(&plain)).unwrap();
        assert_eq!(v["version"].as_u64(), Some(1), "without a floor base an entry stays version 1");
        assert!(v["op"]["base"].get("floor").is_none());
    }

    #[test]
    fn rejects_garbage_and_unknown_fields() {
        assert!(matches!(decode(b"\x00\x01"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode(b"[1]"), Err(DecodeError::NotJson(_))));
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&sample(Op::Delete { key: b"k".to_vec() }))).unwrap();
        v["surprise"] = true.into();
        let err = decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(ref m) if m.contains("surprise")), "{err}");
    }
}
