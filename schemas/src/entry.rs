//! The log entry, format versions 1 to 7.
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
//! Version 3 adds the *transaction unit*, op `multi`: the entries of one `EXEC`,
//! shipped as one Kafka message and applied by a reader as one (all or none, never
//! half visible):
//!
//! ```json
//! {"version":3,"id":"…","origin":"site-a","seq":50,"hlc":…,"epoch":0,"cache":"default",
//!  "op":{"op":"multi","entries":[
//!    {"id":"…","hlc":…,"epoch":0,"cache":"default","op":{"op":"put",…}},
//!    {"id":"…","hlc":…,"epoch":0,"cache":"default","op":{"op":"delete",…}}]}}
//! ```
//!
//! Each member ([`Member`]) is an entry without `origin` and `seq` (the unit's): it
//! keeps its own id, timestamp, epoch, cache and op, so a reader joins each into
//! its key's record exactly as it would the entry alone. The unit's `hlc` is the
//! highest of its members', its `epoch` and `cache` are its first member's. A
//! member is never a heartbeat or another unit, and a unit has at least two members
//! (a reader refuses anything else as malformed). Members may use what version 2
//! added. A reader of versions 1 and 2 refuses a unit by its version
//! ([`DecodeError::UnsupportedVersion`]) and dead-letters it; a site therefore
//! writes units only while every other site advertises, in the
//! [`KAFKA_HEADER_READS`] header of its heartbeats, that it reads version 3.
//!
//! Version 4 adds hashes, five ops on one key each:
//!
//! - `hset`: `{"op":"hset","key":…,"fields":[{"field":…,"value":…}],"seen":null}`:
//!   each field an independent register, last write wins on the entry's version.
//!   `seen` (a map of site to timestamp, or null) is set when the key was not a
//!   live hash where the write was made: the fields that site held die, as with
//!   `hclear`, and the key's expiry is reset;
//! - `hdel`: `{"op":"hdel","key":…,"fields":[…]}`: a field tombstone each;
//! - `hincr`: `{"op":"hincr","key":…,"field":…,"delta":…,"total":…,"base":{"epoch":…,"hlc":…,"site":…,"value":…},"seen":null}`:
//!   a field counter, joined as `incr` is (per-site cumulative totals on a base);
//!   `base.reset` (optional, true): counting from 0 over the field at that version,
//!   which a whole-hash delete removed;
//!   `seen` as for `hset`;
//! - `hincrfloat`: as `hincr` with `delta`, `total` and `base.value` floats
//!   (`HINCRBYFLOAT`); a reader sums the totals in site-id order;
//! - `hclear`: `{"op":"hclear","key":…,"seen":{"site-a":…}}`: the whole hash as
//!   the writing site saw it is removed (observed-remove): a field dies when its
//!   version's timestamp is at or below `seen` of its site.
//!
//! A reader of versions 1 to 3 refuses them by version and dead-letters them; a
//! site writes them only while every other site advertises that it reads version 4
//! (as for units). A unit's members may be hash ops (the unit is then version 4).
//!
//! Version 5 adds sets (add-wins observed-remove), three ops on one key each:
//!
//! - `sadd`: `{"op":"sadd","key":…,"members":[…],"seen":null}`: each member added
//!   with the entry's version; `seen` as for `hset` (the members that site held
//!   die, and the key's expiry is reset);
//! - `srem`: `{"op":"srem","key":…,"members":[{"member":…,"seen":{"site-a":…}}]}`:
//!   each member's adds the writing site held (per site, its latest add's
//!   timestamp) die; a concurrent add survives;
//! - `sclear`: `{"op":"sclear","key":…,"seen":{…}}`: the whole set as the writing
//!   site saw it is removed, as `hclear` does a hash.
//!
//! A reader of versions 1 to 4 refuses them by version; a site writes them only
//! while every other site advertises that it reads version 5.
//!
//! Version 6 adds sorted sets, four ops on one key each: members as a set's
//! (add-wins), each with a score:
//!
//! - `zadd`: `{"op":"zadd","key":…,"members":[{"member":…,"score":1.5}],"seen":null}`:
//!   each member added, and its score set (a register, last write wins);
//! - `zincr`: `{"op":"zincr","key":…,"member":…,"delta":…,"total":…,"base":{…},"seen":null}`:
//!   the member added, its score a float counter as `hincrfloat`'s field;
//! - `zrem` and `zclear`: as `srem` and `sclear`.
//!
//! Version 7 adds lists, three ops on one key each. A list element stands at a
//! *place* ([`Place`]): a path of at least one ident ([`Ident`],
//! `{"d":…,"epoch":…,"hlc":…,"site":…,"n":…}`: a digit, then the version of the put
//! that made the step and the item's index in that put), ordered lexicographically
//! (a path before every longer path it begins); its last ident is the element's
//! own id. The writing site chooses a place between the element's neighbours
//! ([`Place::between`]); every site orders the elements by their places alone:
//!
//! - `lput`: `{"op":"lput","key":…,"items":[{"place":[{"d":1,"epoch":2,"hlc":…,"site":"site-a","n":0}],"value":…}],"seen":null}`:
//!   an element not known yet is inserted (unless a remove or a whole-list delete
//!   already covers it), a known one has its value set (a register, last write
//!   wins on the entry's version: `LSET`); `seen` as for `sadd` (the elements that
//!   site held die, and the key's expiry is reset);
//! - `lrem`: `{"op":"lrem","key":…,"places":[[{"d":1,…}]]}`: the elements at these
//!   places are removed for good, whenever their puts arrive;
//! - `lclear`: `{"op":"lclear","key":…,"seen":{…}}`: the whole list as the writing
//!   site saw it is removed (observed-remove): an element dies when its id's
//!   timestamp is at or below `seen` of its site.
//!
//! A reader of versions 1 to 6 refuses them by version; a site writes them only
//! while every other site advertises that it reads version 7.
//!
//! The JSON Schemas are `schemas/log-entry.v1.schema.json` to
//! `schemas/log-entry.v7.schema.json`; golden
//! files under `schemas/golden/` pin the bytes of each version.

mod plain;
pub use plain::{peek, Peeked};

use crate::hlc::{Hlc, Version};
use crate::names::{CacheName, SiteId, NAME_LEN_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The newest format version this crate writes; it reads versions 1 to 7.
pub const FORMAT_VERSION: u32 = 7;
/// The format version that added transaction units ([`Op::Multi`]).
pub const FORMAT_VERSION_UNITS: u32 = 3;
/// The format version that added hashes ([`Op::HSet`], [`Op::HDel`], [`Op::HIncr`],
/// [`Op::HClear`]).
pub const FORMAT_VERSION_HASHES: u32 = 4;
/// The format version that added sets ([`Op::SAdd`], [`Op::SRem`], [`Op::SClear`]).
pub const FORMAT_VERSION_SETS: u32 = 5;
/// The format version that added sorted sets ([`Op::ZAdd`], [`Op::ZIncr`],
/// [`Op::ZRem`], [`Op::ZClear`]).
pub const FORMAT_VERSION_ZSETS: u32 = 6;
/// The format version that added lists ([`Op::LPut`], [`Op::LRem`], [`Op::LClear`]).
pub const FORMAT_VERSION_LISTS: u32 = 7;
/// The oldest format version this crate reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
/// Kafka header carrying the origin site id.
pub const KAFKA_HEADER_ORIGIN: &str = "xsite-origin";
/// Kafka header carrying the format version, as decimal text.
pub const KAFKA_HEADER_FORMAT: &str = "xsite-format";
/// Kafka header of a heartbeat: the newest log entry format version the sending
/// site reads, as decimal text ([`FORMAT_VERSION`]). Builds before version 3 send
/// none (and read at most version 2). Readers that do not know the header ignore
/// it, so it needs no new entry version.
pub const KAFKA_HEADER_READS: &str = "xsite-reads";

/// Kafka header of a heartbeat: present (value `1`) while an operator has taken the
/// sending site offline at its own node (`POST /sites/{own site}/offline`, a drain
/// for maintenance): every other site then stops naming it to clients, as it does a
/// site it cannot hear. Builds that do not know the header ignore it.
pub const KAFKA_HEADER_OFFLINE: &str = "xsite-offline";

/// Whether a heartbeat's [`KAFKA_HEADER_OFFLINE`] header says its site is offline.
pub fn says_offline(header: Option<&[u8]>) -> bool {
    header.is_some_and(|h| h.trim_ascii() == b"1")
}

/// What a heartbeat's [`KAFKA_HEADER_READS`] header says: the newest format
/// version its site reads. Without the header (an older build), or with one that
/// is not a number, 2 at most: such a site reads no transaction unit.
pub fn reads_version(header: Option<&[u8]>) -> u32 {
    header
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| h.trim().parse().ok())
        .unwrap_or(FORMAT_VERSION_UNITS - 1)
}

/// Bytes an encoded entry takes at most beyond the base64 of its key and value:
/// every other field at its longest (names of [`NAME_LEN_MAX`] bytes, 20-digit
/// numbers). [`encoded_len_bound`] adds it.
pub const ENTRY_ENVELOPE_BYTES_MAX: usize = 768;

/// Bytes of base64 (padded) for `n` bytes.
pub const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// An upper bound of `encode(entry).len()` for any entry carrying `op`, at most
/// [`ENTRY_ENVELOPE_BYTES_MAX`] above the real length (for a unit, that much per
/// member and once more): what a write is checked against before it is accepted (a
/// value grows by about 4/3 in base64).
pub fn encoded_len_bound(op: &Op) -> usize {
    let payload = match op {
        Op::Put { key, value, .. } => base64_len(key.len()) + base64_len(value.len()),
        Op::Delete { key } | Op::Expire { key, .. } | Op::Incr { key, .. } => base64_len(key.len()),
        Op::Heartbeat { applied } => applied.len() * (NAME_LEN_MAX + 24),
        Op::HSet { key, fields, seen } => {
            let pairs: usize = fields.iter().map(|f| base64_len(f.field.len()) + base64_len(f.value.len()) + 24).sum();
            base64_len(key.len()) + pairs + seen.as_ref().map_or(0, |s| s.len() * (NAME_LEN_MAX + 24))
        }
        Op::HDel { key, fields } => {
            base64_len(key.len()) + fields.iter().map(|f| base64_len(f.len()) + 3).sum::<usize>()
        }
        Op::HIncr { key, field, seen, .. } | Op::HIncrFloat { key, field, seen, .. } => {
            base64_len(key.len()) + base64_len(field.len()) + seen.as_ref().map_or(0, |s| s.len() * (NAME_LEN_MAX + 24))
        }
        Op::HClear { key, seen } | Op::SClear { key, seen } | Op::ZClear { key, seen } => {
            base64_len(key.len()) + seen.len() * (NAME_LEN_MAX + 24)
        }
        Op::ZAdd { key, members, seen } => {
            base64_len(key.len())
                + members.iter().map(|m| base64_len(m.member.len()) + 48).sum::<usize>()
                + seen.as_ref().map_or(0, |s| s.len() * (NAME_LEN_MAX + 24))
        }
        Op::ZIncr { key, member, seen, .. } => {
            base64_len(key.len())
                + base64_len(member.len())
                + seen.as_ref().map_or(0, |s| s.len() * (NAME_LEN_MAX + 24))
        }
        Op::SAdd { key, members, seen } => {
            base64_len(key.len())
                + members.iter().map(|m| base64_len(m.len()) + 3).sum::<usize>()
                + seen.as_ref().map_or(0, |s| s.len() * (NAME_LEN_MAX + 24))
        }
        Op::LPut { key, items, seen } => {
            base64_len(key.len())
                + items.iter().map(|i| base64_len(i.value.len()) + 24 + place_len_bound(&i.place)).sum::<usize>()
                + seen.as_ref().map_or(0, |s| s.len() * (NAME_LEN_MAX + 24))
        }
        Op::LRem { key, places } => {
            base64_len(key.len()) + places.iter().map(|p| place_len_bound(p) + 3).sum::<usize>()
        }
        Op::LClear { key, seen } => base64_len(key.len()) + seen.len() * (NAME_LEN_MAX + 24),
        Op::SRem { key, members } | Op::ZRem { key, members } => {
            base64_len(key.len())
                + members
                    .iter()
                    .map(|m| base64_len(m.member.len()) + 24 + m.seen.len() * (NAME_LEN_MAX + 24))
                    .sum::<usize>()
        }
        // Each member is an entry without its origin and seq: within its own bound.
        Op::Multi { entries } => entries.iter().map(|m| encoded_len_bound(&m.op)).sum(),
    };
    payload + ENTRY_ENVELOPE_BYTES_MAX
}

/// Bytes one list place takes at most in JSON: per ident, its five fields at
/// their longest.
fn place_len_bound(place: &Place) -> usize {
    place.0.len() * (NAME_LEN_MAX + 108)
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
    /// Format version 3: a transaction unit, the entries of one `EXEC` (at least
    /// two; none a heartbeat or a unit), applied by a reader all together.
    Multi { entries: Vec<Member> },
    /// Format version 4: set fields of a hash, each an independent register (last
    /// write wins on the entry's version). `seen`: the key was not a live hash
    /// where the write was made (absent, expired, or a string): every field that
    /// site held dies (as [`Op::HClear`] with it) and the key's expiry is reset.
    #[serde(rename = "hset")]
    HSet {
        #[serde(with = "b64")]
        key: Vec<u8>,
        fields: Vec<FieldValue>,
        seen: Option<BTreeMap<SiteId, Hlc>>,
    },
    /// Format version 4: remove fields of a hash (a field tombstone each, with the
    /// entry's version).
    #[serde(rename = "hdel")]
    HDel {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64_list")]
        fields: Vec<Vec<u8>>,
    },
    /// Format version 4: increment a field of a hash, a counter as [`Op::Incr`] is
    /// for a key: `total` is the origin site's cumulative contribution on `base`.
    #[serde(rename = "hincr")]
    HIncr {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64")]
        field: Vec<u8>,
        delta: i64,
        total: i64,
        base: FieldBase,
        /// As for [`Op::HSet`]: set when the key was not a live hash where the
        /// increment was made.
        seen: Option<BTreeMap<SiteId, Hlc>>,
    },
    /// Format version 4: `HINCRBYFLOAT` of a field, a float counter: `total` is
    /// the origin site's cumulative contribution on `base`; a reader sums the
    /// totals in site-id order, so every site adds the same numbers in the same
    /// order and gets the same bits.
    #[serde(rename = "hincrfloat")]
    HIncrFloat {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64")]
        field: Vec<u8>,
        delta: Float,
        total: Float,
        base: FloatBase,
        seen: Option<BTreeMap<SiteId, Hlc>>,
    },
    /// Format version 4: delete a whole hash as the writing site saw it
    /// (observed-remove): every field whose version's timestamp is at or below
    /// `seen[its site]` dies; fields written concurrently elsewhere survive.
    #[serde(rename = "hclear")]
    HClear {
        #[serde(with = "b64")]
        key: Vec<u8>,
        seen: BTreeMap<SiteId, Hlc>,
    },
    /// Format version 5: add members to a set (add-wins: an add survives every
    /// remove that did not see it). `seen`: the key was not a live set where the
    /// write was made: every member that site held dies (as [`Op::SClear`] with
    /// it) and the key's expiry is reset.
    #[serde(rename = "sadd")]
    SAdd {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64_list")]
        members: Vec<Vec<u8>>,
        seen: Option<BTreeMap<SiteId, Hlc>>,
    },
    /// Format version 5: remove members of a set as the writing site saw them
    /// (observed-remove): an add of a member dies when its timestamp is at or below
    /// the member's `seen` of its site; adds made concurrently elsewhere survive.
    #[serde(rename = "srem")]
    SRem {
        #[serde(with = "b64")]
        key: Vec<u8>,
        members: Vec<MemberSeen>,
    },
    /// Format version 5: delete a whole set as the writing site saw it
    /// (observed-remove), as [`Op::HClear`] does a hash: an add dies when its
    /// timestamp is at or below `seen` of its site.
    #[serde(rename = "sclear")]
    SClear {
        #[serde(with = "b64")]
        key: Vec<u8>,
        seen: BTreeMap<SiteId, Hlc>,
    },
    /// Format version 6: add members to a sorted set with their scores: each member
    /// added as [`Op::SAdd`] adds (add-wins), and its score set, a register (last
    /// write wins on the entry's version). `seen` as for [`Op::SAdd`].
    #[serde(rename = "zadd")]
    ZAdd {
        #[serde(with = "b64")]
        key: Vec<u8>,
        members: Vec<ScoredMember>,
        seen: Option<BTreeMap<SiteId, Hlc>>,
    },
    /// Format version 6: `ZINCRBY` of a member: the member added, and its score a
    /// float counter as [`Op::HIncrFloat`]'s field: `total` is the origin site's
    /// cumulative contribution on `base` (the score's version and value when counting
    /// started). `seen` as for [`Op::SAdd`].
    #[serde(rename = "zincr")]
    ZIncr {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64")]
        member: Vec<u8>,
        delta: Float,
        total: Float,
        base: FloatBase,
        seen: Option<BTreeMap<SiteId, Hlc>>,
    },
    /// Format version 6: remove members of a sorted set as the writing site saw
    /// them, as [`Op::SRem`] does a set's.
    #[serde(rename = "zrem")]
    ZRem {
        #[serde(with = "b64")]
        key: Vec<u8>,
        members: Vec<MemberSeen>,
    },
    /// Format version 6: delete a whole sorted set as the writing site saw it, as
    /// [`Op::SClear`] does a set.
    #[serde(rename = "zclear")]
    ZClear {
        #[serde(with = "b64")]
        key: Vec<u8>,
        seen: BTreeMap<SiteId, Hlc>,
    },
    /// Format version 7: put elements into a list, each at its [`Place`]: an
    /// element not known yet is inserted (unless a remove or a whole-list delete
    /// already covers it), one known has its value set, a register (last write
    /// wins on the entry's version: `LSET`). `seen` as for [`Op::SAdd`].
    #[serde(rename = "lput")]
    LPut {
        #[serde(with = "b64")]
        key: Vec<u8>,
        items: Vec<ListItem>,
        seen: Option<BTreeMap<SiteId, Hlc>>,
    },
    /// Format version 7: remove the elements at these places (pops, `LREM`,
    /// `LTRIM`, `LMOVE`'s source): each for good, wherever and whenever its put
    /// arrives.
    #[serde(rename = "lrem")]
    LRem {
        #[serde(with = "b64")]
        key: Vec<u8>,
        places: Vec<Place>,
    },
    /// Format version 7: delete a whole list as the writing site saw it
    /// (observed-remove): an element dies when its id's timestamp is at or below
    /// `seen` of its site, as [`Op::SClear`] does a set's members.
    #[serde(rename = "lclear")]
    LClear {
        #[serde(with = "b64")]
        key: Vec<u8>,
        seen: BTreeMap<SiteId, Hlc>,
    },
}

/// One step of a list element's [`Place`]: a digit, then the id of the element
/// that made the step (its put's version and its index among that put's items),
/// which breaks ties between steps that sites chose concurrently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ident {
    pub d: i64,
    pub epoch: u64,
    pub hlc: Hlc,
    pub site: SiteId,
    pub n: u32,
}

impl Ident {
    /// The version of the put that made this step.
    pub fn version(&self) -> Version {
        Version::with_epoch(self.epoch, self.hlc, self.site.clone())
    }
}

/// Where a list element stands: a path of [`Ident`]s, ordered lexicographically
/// (a path before every longer path it begins). Its last ident is the element's
/// own id, so no two elements share a place. The origin of a put chooses a place
/// between its neighbours; every site orders by the places alone, so concurrent
/// pushes at two sites interleave the same way everywhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Place(pub Vec<Ident>);

impl Place {
    /// The element's own id: its last ident (a place is never empty).
    pub fn id(&self) -> &Ident {
        self.0.last().expect("a list place has at least one ident")
    }

    /// A place strictly between `before` and `after` (either may be absent: the
    /// list's ends), with `id` (digit ignored) as its last ident: the shortest
    /// such path that extends a prefix of `before`, or for a head or tail push,
    /// one ident stepping past the first ident of the neighbour. Whether it is
    /// between them never depends on `id` (the digits decide), so the id may be
    /// stamped later ([`Op::stamp_list_ids`]).
    pub fn between(before: Option<&Place>, after: Option<&Place>, id: &Ident) -> Place {
        let step = |d: i64| Ident { d, ..id.clone() };
        match (before, after) {
            (None, None) => Place(vec![step(0)]),
            (None, Some(a)) => Place(vec![step(a.0[0].d.saturating_sub(1))]),
            (Some(b), None) => Place(vec![step(b.0[0].d.saturating_add(1))]),
            (Some(b), Some(a)) => {
                for depth in 0..b.0.len() {
                    // Above `before` by the digit at `depth`; below `after` whatever
                    // the id: `after` differs from the prefix before `depth` (room
                    // above), or goes on from it with a digit far enough above.
                    let prefix = &b.0[..depth];
                    let lo = b.0[depth].d;
                    let d = match a.0.get(..depth) {
                        Some(head) if head == prefix => match a.0.get(depth) {
                            Some(next) if i128::from(next.d) - i128::from(lo) >= 2 => midpoint(lo, next.d),
                            _ => continue,
                        },
                        _ if lo <= i64::MAX - PLACE_ROOM => lo + PLACE_ROOM,
                        _ => continue,
                    };
                    let mut path = prefix.to_vec();
                    path.push(step(d));
                    return Place(path);
                }
                // Past all of `before`: below `after`'s next digit when `after`
                // extends `before`, anything otherwise (0 leaves room both ways).
                let d = match a.0.get(b.0.len()) {
                    Some(next) if a.0.starts_with(&b.0) => {
                        if next.d >= i64::MIN + PLACE_ROOM {
                            next.d - PLACE_ROOM
                        } else {
                            midpoint(i64::MIN, next.d)
                        }
                    }
                    _ => 0,
                };
                let mut path = b.0.clone();
                path.push(step(d));
                Place(path)
            }
        }
    }
}

/// How far an insert's digit steps past its neighbour's when nothing bounds it:
/// about 2^31 inserts after one element before a path goes one ident deeper, and
/// bisections of the gap thereafter.
const PLACE_ROOM: i64 = 1 << 32;

/// The digit halfway between `lo` and `hi` (`lo < hi`), rounded down.
fn midpoint(lo: i64, hi: i64) -> i64 {
    ((i128::from(lo) + i128::from(hi)) / 2) as i64
}

/// A list element in [`Op::LPut`]: its place and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListItem {
    pub place: Place,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

/// A sorted set member and its score, in [`Op::ZAdd`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoredMember {
    #[serde(with = "b64")]
    pub member: Vec<u8>,
    pub score: Score,
}

/// A sorted set score on the wire: a JSON number, or the strings `"inf"` and
/// `"-inf"` for the infinities (which JSON numbers cannot write); never NaN.
/// Compared by its bits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Score(pub f64);

impl PartialEq for Score {
    fn eq(&self, other: &Score) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Score {}

impl Serialize for Score {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            f64::INFINITY => s.serialize_str("inf"),
            f64::NEG_INFINITY => s.serialize_str("-inf"),
            v => s.serialize_f64(v),
        }
    }
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Score, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Number(f64),
            Text(String),
        }
        match Wire::deserialize(d)? {
            Wire::Number(v) => Ok(Score(v)),
            Wire::Text(t) if t == "inf" => Ok(Score(f64::INFINITY)),
            Wire::Text(t) if t == "-inf" => Ok(Score(f64::NEG_INFINITY)),
            Wire::Text(other) => {
                Err(serde::de::Error::custom(format!("a score is a number, \"inf\" or \"-inf\", not {other:?}")))
            }
        }
    }
}

/// A set member and what the removing site held of it, in [`Op::SRem`]: per
/// site, the timestamp of that site's latest add of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSeen {
    #[serde(with = "b64")]
    pub member: Vec<u8>,
    pub seen: BTreeMap<SiteId, Hlc>,
}

/// A finite `f64` on the wire (a JSON number, written in the shortest form that
/// reads back to the same bits), compared by its bits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Float(pub f64);

impl PartialEq for Float {
    fn eq(&self, other: &Float) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Float {}

/// The base of a hash field's float counter ([`Op::HIncrFloat`]), as
/// [`FieldBase`] is of an integer one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatBase {
    pub epoch: u64,
    pub hlc: Hlc,
    pub site: SiteId,
    pub value: Float,
    /// As [`FieldBase::reset`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

impl FloatBase {
    pub fn version(&self) -> Version {
        Version::with_epoch(self.epoch, self.hlc, self.site.clone())
    }

    pub fn on(version: &Version, value: f64) -> FloatBase {
        FloatBase {
            epoch: version.epoch,
            hlc: version.hlc,
            site: version.site.clone(),
            value: Float(value),
            reset: false,
        }
    }
}

/// A field and its value, in [`Op::HSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldValue {
    #[serde(with = "b64")]
    pub field: Vec<u8>,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

/// The base of a hash field's counter ([`Op::HIncr`]): the field's version and
/// integer value when counting started; a fresh base is the increment's own version
/// and 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldBase {
    pub epoch: u64,
    pub hlc: Hlc,
    pub site: SiteId,
    pub value: i64,
    /// Counting from 0 over the field at this version, which a whole-hash delete
    /// removed: every site that increments it after the delete names the same base,
    /// so their increments add up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

impl FieldBase {
    pub fn version(&self) -> Version {
        Version::with_epoch(self.epoch, self.hlc, self.site.clone())
    }

    /// The base of a counter on the field value at `version`, worth `value`.
    pub fn on(version: &Version, value: i64) -> FieldBase {
        FieldBase { epoch: version.epoch, hlc: version.hlc, site: version.site.clone(), value, reset: false }
    }
}

/// One entry of a transaction unit: a [`LogEntry`] without `origin` and `seq`,
/// which are the unit's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: Uuid,
    pub hlc: Hlc,
    pub epoch: u64,
    pub cache: CacheName,
    pub op: Op,
}

impl Op {
    /// The cache key the operation touches (none for a heartbeat, nor for a unit:
    /// its members have theirs).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Expire { key, .. }
            | Op::Incr { key, .. }
            | Op::HSet { key, .. }
            | Op::HDel { key, .. }
            | Op::HIncr { key, .. }
            | Op::HIncrFloat { key, .. }
            | Op::HClear { key, .. }
            | Op::SAdd { key, .. }
            | Op::SRem { key, .. }
            | Op::SClear { key, .. }
            | Op::ZAdd { key, .. }
            | Op::ZIncr { key, .. }
            | Op::ZRem { key, .. }
            | Op::ZClear { key, .. }
            | Op::LPut { key, .. }
            | Op::LRem { key, .. }
            | Op::LClear { key, .. } => Some(key),
            Op::Heartbeat { .. } | Op::Multi { .. } => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::Expire { .. } => "expire",
            Op::Incr { .. } => "incr",
            Op::Heartbeat { .. } => "heartbeat",
            Op::Multi { .. } => "multi",
            Op::HSet { .. } => "hset",
            Op::HDel { .. } => "hdel",
            Op::HIncr { .. } => "hincr",
            Op::HIncrFloat { .. } => "hincrfloat",
            Op::HClear { .. } => "hclear",
            Op::SAdd { .. } => "sadd",
            Op::SRem { .. } => "srem",
            Op::SClear { .. } => "sclear",
            Op::ZAdd { .. } => "zadd",
            Op::ZIncr { .. } => "zincr",
            Op::ZRem { .. } => "zrem",
            Op::ZClear { .. } => "zclear",
            Op::LPut { .. } => "lput",
            Op::LRem { .. } => "lrem",
            Op::LClear { .. } => "lclear",
        }
    }

    /// Whether the operation is one of a hash (format version 4).
    pub fn is_hash(&self) -> bool {
        matches!(self, Op::HSet { .. } | Op::HDel { .. } | Op::HIncr { .. } | Op::HIncrFloat { .. } | Op::HClear { .. })
    }

    /// Whether the operation is one of a set (format version 5).
    pub fn is_set(&self) -> bool {
        matches!(self, Op::SAdd { .. } | Op::SRem { .. } | Op::SClear { .. })
    }

    /// Whether the operation is one of a sorted set (format version 6).
    pub fn is_zset(&self) -> bool {
        matches!(self, Op::ZAdd { .. } | Op::ZIncr { .. } | Op::ZRem { .. } | Op::ZClear { .. })
    }

    /// Whether the operation is one of a list (format version 7).
    pub fn is_list(&self) -> bool {
        matches!(self, Op::LPut { .. } | Op::LRem { .. } | Op::LClear { .. })
    }

    /// Whether the operation is one of a collection (a hash, a set, a sorted set
    /// or a list).
    pub fn is_collection(&self) -> bool {
        self.is_hash() || self.is_set() || self.is_zset() || self.is_list()
    }
}

impl Op {
    /// Gives every element of a list put whose id is not stamped yet (timestamp
    /// [`Hlc::ZERO`]: built before its write was timestamped) the write's
    /// `version` as its id, keeping its digit and index.
    pub fn stamp_list_ids(&mut self, version: &Version) {
        if let Op::LPut { items, .. } = self {
            for item in items {
                if let Some(id) = item.place.0.last_mut().filter(|id| id.hlc == Hlc::ZERO) {
                    id.epoch = version.epoch;
                    id.hlc = version.hlc;
                    id.site = version.site.clone();
                }
            }
        }
    }
}

impl LogEntry {
    /// The entry's place in the total order.
    pub fn version(&self) -> Version {
        Version::with_epoch(self.epoch, self.hlc, self.origin.clone())
    }

    /// A new entry id, stamped with the system clock's time ([`LogEntry::new_id_at`]).
    pub fn new_id() -> Uuid {
        LogEntry::new_id_at(crate::hlc::wall_clock_ms())
    }

    /// A new entry id stamped `wall_ms`: a UUID of version 7's layout (the time in
    /// its first 48 bits, so ids sort by time, then the version and variant bits),
    /// whose 74 other bits are a number drawn at random once per process plus a count
    /// of the ids this process made. Unique within a process for 2^74 ids, across
    /// processes (sites, restarts) as two random 74-bit starts are far apart, and no
    /// random draw or clock read per entry (an entry's id is stamped with its
    /// timestamp's wall time).
    pub fn new_id_at(wall_ms: u64) -> Uuid {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        const LOW_74: u128 = (1 << 74) - 1;
        static START: OnceLock<u128> = OnceLock::new();
        static MADE: AtomicU64 = AtomicU64::new(0);
        // The 74 random bits of one UUIDv7 (its `rand_a` and `rand_b`).
        let start = *START.get_or_init(|| {
            let (high, low) = Uuid::now_v7().as_u64_pair();
            (u128::from(high & 0xfff) << 62) | u128::from(low & ((1 << 62) - 1))
        });
        let n = start.wrapping_add(u128::from(MADE.fetch_add(1, Ordering::Relaxed))) & LOW_74;
        let rand_a = (n >> 62) as u64 & 0xfff;
        let rand_b = n as u64 & ((1 << 62) - 1);
        let high = ((wall_ms & ((1 << 48) - 1)) << 16) | 0x7000 | rand_a;
        Uuid::from_u64_pair(high, (0b10 << 62) | rand_b)
    }

    /// A new entry of `op` made by `origin` at `hlc` in `epoch` of `cache`: a fresh
    /// id, and `seq` 0 until the WAL assigns it.
    pub fn new(origin: SiteId, hlc: Hlc, epoch: u64, cache: CacheName, op: Op) -> LogEntry {
        LogEntry { id: LogEntry::new_id_at(hlc.wall_ms()), origin, seq: 0, hlc, epoch, cache, op }
    }

    /// The transaction unit of `entries` (at least two, of one origin, none a
    /// heartbeat or a unit): a fresh id, their origin, `seq` 0 (the WAL sets it),
    /// the highest of their timestamps, the first one's epoch and cache.
    pub fn unit(entries: Vec<LogEntry>) -> LogEntry {
        debug_assert!(entries.len() >= 2, "a unit of one entry is that entry");
        debug_assert!(entries.windows(2).all(|w| w[0].origin == w[1].origin), "one origin");
        let first = &entries[0];
        let (origin, epoch, cache) = (first.origin.clone(), first.epoch, first.cache.clone());
        let hlc = entries.iter().map(|e| e.hlc).max().expect("entries");
        let entries = entries
            .into_iter()
            .map(|e| Member { id: e.id, hlc: e.hlc, epoch: e.epoch, cache: e.cache, op: e.op })
            .collect();
        LogEntry {
            id: LogEntry::new_id_at(hlc.wall_ms()),
            origin,
            seq: 0,
            hlc,
            epoch,
            cache,
            op: Op::Multi { entries },
        }
    }

    /// The entries of a unit, each with the unit's origin and seq; any other entry
    /// alone.
    pub fn members(&self) -> Vec<LogEntry> {
        match &self.op {
            Op::Multi { entries } => entries
                .iter()
                .map(|m| LogEntry {
                    id: m.id,
                    origin: self.origin.clone(),
                    seq: self.seq,
                    hlc: m.hlc,
                    epoch: m.epoch,
                    cache: m.cache.clone(),
                    op: m.op.clone(),
                })
                .collect(),
            _ => vec![self.clone()],
        }
    }

    /// The Kafka message key: the cache key (a unit's: its first member's; none
    /// for a heartbeat). A unit therefore goes to its first key's partition.
    pub fn message_key(&self) -> Option<&[u8]> {
        match &self.op {
            Op::Multi { entries } => entries.first().and_then(|m| m.op.key()),
            op => op.key(),
        }
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

/// The lowest format version that can express `entry`: 3 for a transaction unit,
/// 2 for an increment on a floor or delete base, 1 for everything else.
pub fn format_version_of(entry: &LogEntry) -> u32 {
    op_version(&entry.op)
}

fn op_version(op: &Op) -> u32 {
    match op {
        op if op.is_hash() => FORMAT_VERSION_HASHES,
        op if op.is_set() => FORMAT_VERSION_SETS,
        op if op.is_zset() => FORMAT_VERSION_ZSETS,
        op if op.is_list() => FORMAT_VERSION_LISTS,
        Op::Multi { entries } => entries.iter().map(|m| op_version(&m.op)).fold(FORMAT_VERSION_UNITS, u32::max),
        Op::Incr { base, .. } if base.floor.is_some() || base.dead => 2,
        _ => 1,
    }
}

/// Why a unit is malformed, if it is: fewer than two members, or a member that is a
/// heartbeat or a unit.
fn unit_problem(op: &Op) -> Option<String> {
    match op {
        Op::HSet { fields, .. } if fields.is_empty() => return Some("a hash set needs at least one field".into()),
        Op::HDel { fields, .. } if fields.is_empty() => return Some("a hash delete needs at least one field".into()),
        Op::SAdd { members, .. } if members.is_empty() => return Some("a set add needs at least one member".into()),
        Op::SRem { members, .. } if members.is_empty() => return Some("a set remove needs at least one member".into()),
        Op::ZAdd { members, .. } if members.is_empty() => {
            return Some("a sorted set add needs at least one member".into())
        }
        Op::ZRem { members, .. } if members.is_empty() => {
            return Some("a sorted set remove needs at least one member".into())
        }
        Op::LPut { items, .. } if items.is_empty() => return Some("a list put needs at least one element".into()),
        Op::LRem { places, .. } if places.is_empty() => return Some("a list remove needs at least one place".into()),
        Op::LPut { items, .. } if items.iter().any(|i| i.place.0.is_empty()) => {
            return Some("a list place needs at least one ident".into())
        }
        Op::LRem { places, .. } if places.iter().any(|p| p.0.is_empty()) => {
            return Some("a list place needs at least one ident".into())
        }
        _ => {}
    }
    let Op::Multi { entries } = op else { return None };
    if entries.len() < 2 {
        return Some(format!("a transaction unit needs at least two entries, it has {}", entries.len()));
    }
    entries
        .iter()
        .find(|m| matches!(m.op, Op::Heartbeat { .. } | Op::Multi { .. }))
        .map(|m| format!("a transaction unit cannot hold a {} entry", m.op.name()))
        .or_else(|| entries.iter().find_map(|m| unit_problem(&m.op)))
}

/// Encode an entry in the lowest format version that can express it.
pub fn encode(entry: &LogEntry) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(entry, &mut out);
    out
}

/// [`encode`], appended to `out` (a WAL writer's group buffer).
pub fn encode_into(entry: &LogEntry, out: &mut Vec<u8>) {
    if !plain::encode_into(entry, out) {
        serde_json::to_writer(out, &WireRef { version: format_version_of(entry), entry })
            .expect("log entry serializes");
    }
}

/// What [`encode`] writes, by serde_json for every op ([`plain`] writes the same
/// bytes for the commonest ones).
#[cfg(test)]
fn encode_with_serde(entry: &LogEntry) -> Vec<u8> {
    serde_json::to_vec(&WireRef { version: format_version_of(entry), entry }).expect("log entry serializes")
}

/// Decode an entry, refusing other format versions and malformed input. The
/// commonest entries, in the very bytes [`encode`] writes for them, are read
/// without serde ([`plain`]'s reader); anything else goes through serde_json.
pub fn decode(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
    if let Some((version, entry)) = plain::decode(bytes) {
        return checked(version, entry);
    }
    decode_with_serde(bytes)
}

/// [`decode`] by serde_json alone.
fn decode_with_serde(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
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
            checked(w.version, entry)
        }
        Ok(w) => Err(DecodeError::UnsupportedVersion { found: w.version.to_string() }),
        Err(err) => Err(explain(bytes, err)),
    }
}

/// A decoded entry of a supported format `version`, refused when its op needs a
/// later version than it says or it is a malformed transaction unit.
fn checked(version: u32, entry: LogEntry) -> Result<LogEntry, DecodeError> {
    let needs = op_version(&entry.op);
    if needs > version {
        let what = match needs {
            FORMAT_VERSION_LISTS => "a list operation",
            FORMAT_VERSION_ZSETS => "a sorted set operation",
            FORMAT_VERSION_SETS => "a set operation",
            FORMAT_VERSION_HASHES => "a hash operation",
            FORMAT_VERSION_UNITS => "a transaction unit",
            _ => "a counter floor or delete base",
        };
        return Err(DecodeError::Malformed(format!("{what} needs format version {needs}, the entry says {version}")));
    }
    if let Some(problem) = unit_problem(&entry.op) {
        return Err(DecodeError::Malformed(problem));
    }
    Ok(entry)
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

mod b64_list {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        list.iter().map(|b| STANDARD.encode(b)).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .map(|s| STANDARD.decode(s.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
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
    fn entry_ids_are_version_7_stamped_with_the_wall_time_and_unique() {
        let ms = 1_733_000_000_123;
        let ids: Vec<Uuid> = (0..10_000).map(|_| LogEntry::new_id_at(ms)).collect();
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().expect("a v7 timestamp").to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, ms);
        }
        let distinct: std::collections::BTreeSet<&Uuid> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(LogEntry::new_id_at(ms) < LogEntry::new_id_at(ms + 1), "ids sort by their time");
        let e = LogEntry::new(site("a"), Hlc::new(ms, 3), 0, CacheName::new("c").unwrap(), Op::Delete { key: vec![1] });
        let (secs, _) = e.id.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, ms / 1000, "an entry's id carries its timestamp's wall time");
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
            Op::HSet {
                key: vec![3; 10],
                fields: (0..20).map(|i| FieldValue { field: vec![i; 7], value: vec![i; 100] }).collect(),
                seen: Some(
                    (0..5)
                        .map(|i| (site(&format!("{i}{}", long('v')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                        .collect(),
                ),
            },
            Op::HDel { key: vec![1; 3], fields: (0..30).map(|i| vec![i; 1]).collect() },
            Op::HIncr {
                key: vec![2; 9],
                field: vec![5; 33],
                delta: i64::MIN,
                total: i64::MIN,
                base: FieldBase {
                    epoch: u64::MAX,
                    hlc: Hlc::from_u64(u64::MAX),
                    site: site(&long('f')),
                    value: i64::MIN,
                    reset: true,
                },
                seen: Some(
                    (0..3)
                        .map(|i| (site(&format!("{i}{}", long('x')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                        .collect(),
                ),
            },
            Op::HClear {
                key: vec![],
                seen: (0..5)
                    .map(|i| (site(&format!("{i}{}", long('w')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                    .collect(),
            },
            Op::Heartbeat {
                applied: (0..5)
                    .map(|i| (site(&format!("{i}{}", long('h')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                    .collect(),
            },
            Op::SAdd {
                key: vec![7; 5],
                members: (0..40).map(|i| vec![i; 1 + i as usize % 4]).collect(),
                seen: Some(
                    (0..4)
                        .map(|i| (site(&format!("{i}{}", long('s')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                        .collect(),
                ),
            },
            Op::ZAdd {
                key: vec![7; 5],
                members: (0..40)
                    .map(|i| ScoredMember {
                        member: vec![i; 1 + i as usize % 4],
                        score: Score(-1.234_567_890_123_456_7e-300),
                    })
                    .collect(),
                seen: None,
            },
            Op::ZIncr {
                key: vec![1; 9],
                member: vec![2; 10],
                delta: Float(f64::MIN_POSITIVE),
                total: Float(-f64::MAX),
                base: FloatBase {
                    epoch: u64::MAX,
                    hlc: Hlc::from_u64(u64::MAX),
                    site: site(&long('z')),
                    value: Float(-1.0e-308),
                    reset: true,
                },
                seen: Some(
                    (0..3)
                        .map(|i| (site(&format!("{i}{}", long('y')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                        .collect(),
                ),
            },
            Op::SRem {
                key: vec![],
                members: (0..20)
                    .map(|i| MemberSeen {
                        member: vec![i; i as usize % 3],
                        seen: (0..(i % 4))
                            .map(|j| (site(&format!("{j}{}", long('r')).as_str()[..64]), Hlc::from_u64(u64::MAX)))
                            .collect(),
                    })
                    .collect(),
            },
        ];
        let members = |ops: &[Op]| Op::Multi {
            entries: ops
                .iter()
                .map(|op| Member {
                    id: Uuid::nil(),
                    hlc: Hlc::from_u64(u64::MAX),
                    epoch: u64::MAX,
                    cache: CacheName::new(long('c')).unwrap(),
                    op: op.clone(),
                })
                .collect(),
        };
        let unit = members(&ops[..4]);
        let many = members(&vec![Op::Delete { key: vec![] }; 300]);
        for op in ops.into_iter().chain([unit, many]) {
            let mut e = sample(op);
            e.origin = site(&long('o'));
            e.cache = CacheName::new(long('c')).unwrap();
            (e.seq, e.epoch, e.hlc) = (u64::MAX, u64::MAX, Hlc::from_u64(u64::MAX));
            let len = encode(&e).len();
            let bound = encoded_len_bound(&e.op);
            let entries = match &e.op {
                Op::Multi { entries } => entries.len() + 1,
                _ => 1,
            };
            let slack = ENTRY_ENVELOPE_BYTES_MAX * entries;
            assert!(len <= bound && bound - len <= slack, "{}: {len} vs bound {bound}", e.op.name());
        }
    }

    #[test]
    fn rejects_other_versions_clearly() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&sample(Op::Delete { key: b"k".to_vec() }))).unwrap();
        v["version"] = 8.into();
        let err = decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedVersion { ref found } if found == "8"), "{err}");
        assert!(err.to_string().contains("versions 1 to 7"), "{err}");
        for version in [2, 3, 4, 5, 6, 7] {
            v["version"] = version.into();
            assert!(
                decode(&serde_json::to_vec(&v).unwrap()).is_ok(),
                "a version-{version} reader reads what needs nothing new too"
            );
        }
        v.as_object_mut().unwrap().remove("version");
        assert!(matches!(decode(&serde_json::to_vec(&v).unwrap()), Err(DecodeError::MissingVersion)));
    }

    #[test]
    fn a_hash_op_is_version_4_alone_and_in_a_unit_and_refused_below() {
        let hdel = Op::HDel { key: b"h".to_vec(), fields: vec![b"f".to_vec()] };
        let alone = sample(hdel.clone());
        assert_eq!(format_version_of(&alone), 4);
        assert_eq!(decode(&encode(&alone)).unwrap(), alone);
        let unit = unit_of(vec![put(b"a"), hdel]);
        assert_eq!(format_version_of(&unit), 4);
        for e in [alone, unit] {
            let mut v: serde_json::Value = serde_json::from_slice(&encode(&e)).unwrap();
            v["version"] = 3.into();
            let err = decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(err.to_string().contains("a hash operation needs format version 4"), "{err}");
        }
        let empty = sample(Op::HDel { key: b"h".to_vec(), fields: vec![] });
        assert!(matches!(decode(&encode(&empty)), Err(DecodeError::Malformed(_))));
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

    fn put(key: &[u8]) -> Op {
        Op::Put { key: key.to_vec(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false }
    }

    fn unit_of(ops: Vec<Op>) -> LogEntry {
        let mut unit = LogEntry::unit(
            ops.into_iter()
                .enumerate()
                .map(|(i, op)| LogEntry { hlc: Hlc::new(1_733_000_000_000 + i as u64, 0), ..sample(op) })
                .collect(),
        );
        unit.seq = 7;
        unit
    }

    #[test]
    fn a_unit_is_version_3_and_its_members_come_back_whole() {
        let unit = unit_of(vec![put(b"a"), Op::Delete { key: b"b".to_vec() }]);
        let bytes = encode(&unit);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((v["version"].as_u64(), v["op"]["op"].as_str()), (Some(3), Some("multi")));
        assert!(v["op"]["entries"][0].get("origin").is_none() && v["op"]["entries"][0].get("seq").is_none());
        let back = decode(&bytes).unwrap();
        assert_eq!(back, unit);
        assert_eq!(back.hlc, Hlc::new(1_733_000_000_001, 0), "the unit's timestamp is its highest");
        assert_eq!(back.message_key(), Some(&b"a"[..]), "the first member's key");
        let members = back.members();
        assert_eq!(members.len(), 2);
        assert!(members.iter().all(|m| m.origin == unit.origin && m.seq == 7));
        assert_eq!(members[1].op, Op::Delete { key: b"b".to_vec() });
        assert_eq!(members[1].version(), Version::with_epoch(0, Hlc::new(1_733_000_000_001, 0), site("site-a")));
    }

    #[test]
    fn a_malformed_unit_is_refused() {
        let reencode = |unit: &LogEntry, f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&encode(unit)).unwrap();
            f(&mut v);
            decode(&serde_json::to_vec(&v).unwrap())
        };
        let unit = unit_of(vec![put(b"a"), put(b"b")]);
        let err = reencode(&unit, &|v| v["version"] = 2.into()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(ref m) if m.contains("needs format version 3")), "{err}");
        let err = reencode(&unit, &|v| v["op"]["entries"].as_array_mut().unwrap().truncate(1)).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(ref m) if m.contains("at least two")), "{err}");
        let err = reencode(&unit, &|v| v["op"]["entries"][1]["origin"] = "site-b".into()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(ref m) if m.contains("origin")), "{err}");
        let beat = Op::Heartbeat { applied: BTreeMap::new() };
        let err = decode(&encode(&unit_of(vec![put(b"a"), beat]))).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(ref m) if m.contains("heartbeat")), "{err}");
        let nested = unit_of(vec![put(b"a"), unit_of(vec![put(b"b"), put(b"c")]).op]);
        assert!(matches!(decode(&encode(&nested)), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn the_reads_header_defaults_to_a_reader_without_units() {
        assert_eq!(reads_version(Some(b"3")), 3);
        assert_eq!(reads_version(Some(b"17")), 17);
        assert_eq!(reads_version(None), 2);
        assert_eq!(reads_version(Some(b"three")), 2);
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
