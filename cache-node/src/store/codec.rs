//! The payloads of a store snapshot (the file framing, checksums and LSN are
//! [`crate::wal::snapshot`]'s).
//!
//! The first payload is the header, every other one a record. All integers are
//! little-endian.
//!
//! ```text
//! header  = 0x01 | JSON {"format":"xsite-store","version":3,"site":"…",
//!                        "caches":[{"name":"default","epoch":0}, …],
//!                        "hlc_high":113573888000393219}
//! record  = 0x02 | cache u16 (index into header.caches) | key bytes32
//!           | version | ttl_version | expire (0x00 | 0x01 u64) | value
//! version = epoch u64 | hlc u64 | site bytes8
//! value   = 0x00 (tombstone) | 0x01 bytes32 | 0x02 counter
//!           | 0x03 flags u8 (bit 0: the base is a delete) | floor u64 | counter   (version 3)
//! counter = base i64 | n u32 | n × (site bytes8 | hlc u64 | total i64)
//! bytesN  = len uN | bytes
//! hash    = 0x01 | top version | n u32 | n × (site bytes8 | hlc u64)      (version 4,
//!           | m u32 | m × (field bytes32 | version | state)                 after value)
//! state   = 0x00 (removed) | 0x01 bytes32 | 0x02 base i64 | n u32 | n × (site bytes8 | hlc u64 | total i64)
//!           | 0x03 base f64 | n u32 | n × (site bytes8 | hlc u64 | total f64)   (floats as IEEE 754 bits)
//!           (a field counter's total is preceded by its increment's epoch u64)
//!           (a counter's tag | 0x80: a reset, counting from 0 over a field a whole-hash delete removed)
//! set     = 0x02 | top version | n u32 | n × (site bytes8 | hlc u64)      (version 5,
//!           | m u32 | m × (member bytes32 | a u32 | a × version            after value
//!                         | r u32 | r × (site bytes8 | hlc u64))          and hash)
//! zset    = 0x03 | set body | hash body        (version 6, after value, hash and set:
//!           the members as a set's, the scores as a hash's fields, a register's bytes
//!           the score's f64 bits)
//! list    = 0x04 | top version | n u32 | n × (site bytes8 | hlc u64)      (version 7,
//!           | pruned u64                                                   last)
//!           | m u32 | m × (place | 0x00 | value bytes32
//!                         | place | 0x01 version | value bytes32)  (set by an LSET at version)
//!           | r u32 | r × place                                            (removed places)
//! place   = k u32 | k × (d i64 | version | n u32)
//! ```
//!
//! Version 4 adds the hash part of a record (`xsite_consumer::hash::Hash`: `top`,
//! `cleared`, the fields), after the value, only when the record has one. Version 5
//! adds the set part (`xsite_consumer::set::Set`: `top`, `cleared`, each member's
//! adds and removes), after the hash part, only when the record has one. Version 6
//! adds the sorted set part (`xsite_consumer::zset::ZSet`: its members, a set part's
//! body, and its scores, a hash part's body), after the set part. Version 7 adds the
//! list part (`xsite_consumer::list::List`: `top`, `cleared`, each element's place,
//! value and the version of its last `LSET`, and the removed places), last.
//!
//! `hlc_high` (version 2) is the clock's high-water mark when the snapshot was made:
//! at or above every timestamp the node issued or observed before, including those
//! no record keeps any more (collected tombstones); a restarted clock starts above
//! it. Version 3 adds counters from nothing after a collection floor and counters
//! on a delete (tag 0x03: `xsite_consumer::merge::Counter::{floor, base_dead}`). Versions 1 and 2 are still read.
//!
//! A reader refuses another header version, an unknown tag, a bad site name or
//! trailing bytes ([`CodecError`]) instead of guessing.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use xsite_consumer::hash::{Field, FieldCounter, FieldState, FieldTotal, FloatCounter, FloatTotal, Hash};
use xsite_consumer::list::{Item, List};
use xsite_consumer::merge::{Counter, Record, SiteTotal, Value};
use xsite_consumer::set::{Element, Set};
use xsite_consumer::zset::ZSet;
use xsite_schemas::{CacheName, Float, Hlc, Ident, Place, SiteId, Version};

/// The store snapshot payload format version written; version 1 is still read.
pub const STORE_FORMAT_VERSION: u32 = 7;
const STORE_FORMAT_NAME: &str = "xsite-store";
const TAG_HEADER: u8 = 0x01;
const TAG_RECORD: u8 = 0x02;
const VALUE_TOMBSTONE: u8 = 0x00;
const VALUE_BYTES: u8 = 0x01;
const VALUE_COUNTER: u8 = 0x02;
const VALUE_COUNTER_V3: u8 = 0x03;
const HASH_PART: u8 = 0x01;
const SET_PART: u8 = 0x02;
const ZSET_PART: u8 = 0x03;
const LIST_PART: u8 = 0x04;
const FIELD_REMOVED: u8 = 0x00;
const FIELD_BYTES: u8 = 0x01;
const FIELD_COUNTER: u8 = 0x02;
const FIELD_FLOAT: u8 = 0x03;
/// Flag of a counter's tag: counting from 0 over a field a whole-hash delete removed.
const FIELD_RESET: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("snapshot payload is truncated (needed {needed} more bytes at offset {offset})")]
    Truncated { offset: usize, needed: usize },
    #[error("snapshot payload has an unknown tag {tag:#04x} at offset {offset}")]
    UnknownTag { offset: usize, tag: u8 },
    #[error("snapshot payload has {0} trailing bytes")]
    Trailing(usize),
    #[error("snapshot header is invalid: {0}")]
    BadHeader(String),
    #[error("snapshot store format version {0} is not supported (this build reads version {STORE_FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("snapshot record names cache #{0}, which the header does not list")]
    UnknownCacheIndex(u16),
    #[error("snapshot record has an invalid site id: {0}")]
    BadSite(String),
}

/// One cache's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheHeader {
    pub name: CacheName,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub site: SiteId,
    pub caches: Vec<CacheHeader>,
    /// The clock's high-water mark (version 2; `None` in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlc_high: Option<Hlc>,
}

impl Header {
    pub fn new(site: SiteId, caches: Vec<CacheHeader>, hlc_high: Hlc) -> Header {
        Header {
            format: STORE_FORMAT_NAME.into(),
            version: STORE_FORMAT_VERSION,
            site,
            caches,
            hlc_high: Some(hlc_high),
        }
    }
}

pub fn encode_header(header: &Header) -> Vec<u8> {
    let mut out = vec![TAG_HEADER];
    serde_json::to_writer(&mut out, header).expect("header serializes");
    out
}

pub fn decode_header(payload: &[u8]) -> Result<Header, CodecError> {
    match payload.split_first() {
        Some((&TAG_HEADER, json)) => {
            let value: serde_json::Value =
                serde_json::from_slice(json).map_err(|e| CodecError::BadHeader(e.to_string()))?;
            if value.get("format").and_then(|f| f.as_str()) != Some(STORE_FORMAT_NAME) {
                return Err(CodecError::BadHeader(format!("format is not {STORE_FORMAT_NAME:?}")));
            }
            match value.get("version").and_then(|v| v.as_u64()) {
                Some(1) if value.get("hlc_high").is_some() => {
                    return Err(CodecError::BadHeader("version 1 has no hlc_high".into()))
                }
                Some(v) if (1..=u64::from(STORE_FORMAT_VERSION)).contains(&v) => {}
                Some(v) => return Err(CodecError::UnsupportedVersion(v.min(u64::from(u32::MAX)) as u32)),
                None => return Err(CodecError::BadHeader("no version".into())),
            }
            serde_json::from_value(value).map_err(|e| CodecError::BadHeader(e.to_string()))
        }
        Some((&tag, _)) => Err(CodecError::UnknownTag { offset: 0, tag }),
        None => Err(CodecError::Truncated { offset: 0, needed: 1 }),
    }
}

/// Encodes one record of cache number `cache` (its index in the header).
pub fn encode_record(cache: u16, key: &[u8], rec: &Record) -> Vec<u8> {
    let value_len = match &rec.value {
        Value::Bytes(b) => b.len(),
        _ => 64,
    };
    let mut out = Vec::with_capacity(64 + key.len() + value_len);
    out.push(TAG_RECORD);
    out.extend_from_slice(&cache.to_le_bytes());
    put_bytes32(&mut out, key);
    put_version(&mut out, &rec.version);
    put_version(&mut out, &rec.ttl_version);
    match rec.expire_at_ms() {
        None => out.push(0),
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.to_le_bytes());
        }
    }
    match &rec.value {
        Value::Tombstone => out.push(VALUE_TOMBSTONE),
        Value::Bytes(b) => {
            out.push(VALUE_BYTES);
            put_bytes32(&mut out, b);
        }
        Value::Counter(c) => {
            if c.floor == Hlc::ZERO && !c.base_dead {
                out.push(VALUE_COUNTER);
            } else {
                out.push(VALUE_COUNTER_V3);
                out.push(u8::from(c.base_dead));
                out.extend_from_slice(&c.floor.as_u64().to_le_bytes());
            }
            out.extend_from_slice(&c.base.to_le_bytes());
            put_totals(&mut out, &c.totals);
        }
    }
    if let Some(h) = rec.hash() {
        out.push(HASH_PART);
        put_hash(&mut out, h);
    }
    if let Some(set) = rec.set() {
        out.push(SET_PART);
        put_set(&mut out, set);
    }
    if let Some(z) = rec.zset() {
        out.push(ZSET_PART);
        put_set(&mut out, &z.members);
        put_hash(&mut out, &z.scores);
    }
    if let Some(l) = rec.list() {
        out.push(LIST_PART);
        put_list(&mut out, l);
    }
    out
}

fn put_list(out: &mut Vec<u8>, l: &List) {
    put_version(out, &l.top);
    put_stamps(out, l.cleared.iter().map(|(s, h)| (s, *h)), l.cleared.len());
    out.extend_from_slice(&l.pruned.as_u64().to_le_bytes());
    out.extend_from_slice(&(l.items.len() as u32).to_le_bytes());
    for (place, item) in &l.items {
        put_place(out, place);
        match &item.set {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_version(out, v);
            }
        }
        put_bytes32(out, &item.value);
    }
    out.extend_from_slice(&(l.removed.len() as u32).to_le_bytes());
    for place in &l.removed {
        put_place(out, place);
    }
}

fn put_place(out: &mut Vec<u8>, place: &Place) {
    out.extend_from_slice(&(place.0.len() as u32).to_le_bytes());
    for ident in &place.0 {
        out.extend_from_slice(&ident.d.to_le_bytes());
        put_version(out, &ident.version());
        out.extend_from_slice(&ident.n.to_le_bytes());
    }
}

fn put_hash(out: &mut Vec<u8>, h: &Hash) {
    put_version(out, &h.top);
    out.extend_from_slice(&(h.cleared.len() as u32).to_le_bytes());
    for (site, hlc) in &h.cleared {
        put_site(out, site);
        out.extend_from_slice(&hlc.as_u64().to_le_bytes());
    }
    out.extend_from_slice(&(h.fields.len() as u32).to_le_bytes());
    for (name, f) in &h.fields {
        put_bytes32(out, name);
        put_version(out, &f.version);
        match &f.state {
            FieldState::Removed => out.push(FIELD_REMOVED),
            FieldState::Bytes(b) => {
                out.push(FIELD_BYTES);
                put_bytes32(out, b);
            }
            FieldState::Counter(c) => {
                out.push(FIELD_COUNTER | if c.reset { FIELD_RESET } else { 0 });
                out.extend_from_slice(&c.base.to_le_bytes());
                out.extend_from_slice(&(c.totals.len() as u32).to_le_bytes());
                for (site, t) in &c.totals {
                    put_site(out, site);
                    out.extend_from_slice(&t.epoch.to_le_bytes());
                    out.extend_from_slice(&t.hlc.as_u64().to_le_bytes());
                    out.extend_from_slice(&t.total.to_le_bytes());
                }
            }
            FieldState::Float(c) => {
                out.push(FIELD_FLOAT | if c.reset { FIELD_RESET } else { 0 });
                out.extend_from_slice(&c.base.0.to_bits().to_le_bytes());
                out.extend_from_slice(&(c.totals.len() as u32).to_le_bytes());
                for (site, t) in &c.totals {
                    put_site(out, site);
                    out.extend_from_slice(&t.epoch.to_le_bytes());
                    out.extend_from_slice(&t.hlc.as_u64().to_le_bytes());
                    out.extend_from_slice(&t.total.0.to_bits().to_le_bytes());
                }
            }
        }
    }
}

fn put_set(out: &mut Vec<u8>, set: &Set) {
    put_version(out, &set.top);
    put_stamps(out, set.cleared.iter().map(|(s, h)| (s, *h)), set.cleared.len());
    out.extend_from_slice(&(set.members.len() as u32).to_le_bytes());
    for (name, e) in &set.members {
        put_bytes32(out, name);
        out.extend_from_slice(&(e.adds().len() as u32).to_le_bytes());
        for v in e.adds() {
            put_version(out, v);
        }
        put_stamps(out, e.removed().iter().map(|(s, h)| (s, *h)), e.removed().len());
    }
}

/// `n u32 | n × (site bytes8 | hlc u64)`.
fn put_stamps<'a>(out: &mut Vec<u8>, stamps: impl Iterator<Item = (&'a SiteId, Hlc)>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (site, hlc) in stamps {
        put_site(out, site);
        out.extend_from_slice(&hlc.as_u64().to_le_bytes());
    }
}

fn put_totals(out: &mut Vec<u8>, totals: &BTreeMap<SiteId, SiteTotal>) {
    out.extend_from_slice(&(totals.len() as u32).to_le_bytes());
    for (site, t) in totals {
        put_site(out, site);
        out.extend_from_slice(&t.hlc.as_u64().to_le_bytes());
        out.extend_from_slice(&t.total.to_le_bytes());
    }
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("keys and values are at most 512 MiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

fn put_site(out: &mut Vec<u8>, site: &SiteId) {
    let name = site.as_str().as_bytes();
    out.push(u8::try_from(name.len()).expect("site ids are at most 64 bytes"));
    out.extend_from_slice(name);
}

fn put_version(out: &mut Vec<u8>, v: &Version) {
    out.extend_from_slice(&v.epoch.to_le_bytes());
    out.extend_from_slice(&v.hlc.as_u64().to_le_bytes());
    put_site(out, &v.site);
}

/// Decodes records, sharing one `SiteId` per distinct site name.
#[derive(Default)]
pub struct RecordDecoder {
    sites: HashMap<Vec<u8>, SiteId>,
}

impl RecordDecoder {
    /// Returns `(cache index, key, record)`.
    pub fn decode(&mut self, payload: &[u8]) -> Result<(u16, Vec<u8>, Record), CodecError> {
        let mut r = Reader { buf: payload, pos: 0 };
        let tag = r.u8()?;
        if tag != TAG_RECORD {
            return Err(CodecError::UnknownTag { offset: 0, tag });
        }
        let cache = u16::from_le_bytes(r.array()?);
        let key = r.bytes32()?.to_vec();
        let version = self.version(&mut r)?;
        let ttl_version = self.version(&mut r)?;
        let expire_at_ms = match r.u8()? {
            0 => None,
            1 => Some(r.u64()?),
            tag => return Err(CodecError::UnknownTag { offset: r.pos - 1, tag }),
        };
        let value = match r.u8()? {
            VALUE_TOMBSTONE => Value::Tombstone,
            VALUE_BYTES => Value::Bytes(r.bytes32()?.to_vec()),
            tag @ (VALUE_COUNTER | VALUE_COUNTER_V3) => {
                let (base_dead, floor) = if tag == VALUE_COUNTER_V3 {
                    let flags = r.u8()?;
                    (flags & 1 == 1, Hlc::from_u64(r.u64()?))
                } else {
                    (false, Hlc::ZERO)
                };
                let base = i64::from_le_bytes(r.array()?);
                let totals = self.totals(&mut r)?;
                Value::Counter(Box::new(Counter { base, totals, floor, base_dead }))
            }
            tag => return Err(CodecError::UnknownTag { offset: r.pos - 1, tag }),
        };
        let mut rec = Record::string(version, value, ttl_version, expire_at_ms);
        // The parts, each at most once and in tag order.
        let mut last_part = 0;
        while r.pos < payload.len() {
            let tag = r.u8()?;
            match tag {
                HASH_PART if last_part < HASH_PART => rec.put_hash(self.hash(&mut r)?),
                SET_PART if last_part < SET_PART => rec.put_set(self.set(&mut r)?),
                ZSET_PART if last_part < ZSET_PART => {
                    let members = self.set(&mut r)?;
                    let scores = self.hash(&mut r)?;
                    rec.put_zset(ZSet { members, scores });
                }
                LIST_PART if last_part < LIST_PART => rec.put_list(self.list(&mut r)?),
                tag => return Err(CodecError::UnknownTag { offset: r.pos - 1, tag }),
            }
            last_part = tag;
        }
        Ok((cache, key, rec))
    }

    /// `n u32 | n × (site bytes8 | hlc u64)`, in site order.
    fn stamps(&mut self, r: &mut Reader<'_>) -> Result<Vec<(SiteId, Hlc)>, CodecError> {
        let n = u32::from_le_bytes(r.array()?);
        let mut out = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            let site = self.site(r)?;
            out.push((site, Hlc::from_u64(r.u64()?)));
        }
        Ok(out)
    }

    fn place(&mut self, r: &mut Reader<'_>) -> Result<Place, CodecError> {
        let k = u32::from_le_bytes(r.array()?);
        if k == 0 {
            return Err(CodecError::UnknownTag { offset: r.pos - 4, tag: 0 });
        }
        let mut idents = Vec::with_capacity(k.min(64) as usize);
        for _ in 0..k {
            let d = i64::from_le_bytes(r.array()?);
            let v = self.version(r)?;
            let n = u32::from_le_bytes(r.array()?);
            idents.push(Ident { d, epoch: v.epoch, hlc: v.hlc, site: v.site, n });
        }
        Ok(Place(idents))
    }

    fn list(&mut self, r: &mut Reader<'_>) -> Result<List, CodecError> {
        let top = self.version(r)?;
        let cleared = self.stamps(r)?.into_iter().collect();
        let pruned = Hlc::from_u64(r.u64()?);
        let mut items = BTreeMap::new();
        for _ in 0..u32::from_le_bytes(r.array()?) {
            let place = self.place(r)?;
            let set = match r.u8()? {
                0 => None,
                1 => Some(self.version(r)?),
                tag => return Err(CodecError::UnknownTag { offset: r.pos - 1, tag }),
            };
            let value = r.bytes32()?.to_vec();
            items.insert(place, Item { value, set });
        }
        let mut removed = std::collections::BTreeSet::new();
        for _ in 0..u32::from_le_bytes(r.array()?) {
            removed.insert(self.place(r)?);
        }
        Ok(List::from_parts(items, removed, cleared, top, pruned))
    }

    fn set(&mut self, r: &mut Reader<'_>) -> Result<Set, CodecError> {
        let top = self.version(r)?;
        let cleared = self.stamps(r)?.into_iter().collect();
        let mut members = BTreeMap::new();
        for _ in 0..u32::from_le_bytes(r.array()?) {
            let name: Box<[u8]> = r.bytes32()?.into();
            let n = u32::from_le_bytes(r.array()?);
            let adds = (0..n).map(|_| self.version(r)).collect::<Result<_, _>>()?;
            let removed = self.stamps(r)?;
            members.insert(name, Element::new(adds, removed));
        }
        Ok(Set::from_parts(members, cleared, top))
    }

    fn totals(&mut self, r: &mut Reader<'_>) -> Result<BTreeMap<SiteId, SiteTotal>, CodecError> {
        let n = u32::from_le_bytes(r.array()?);
        let mut totals = BTreeMap::new();
        for _ in 0..n {
            let site = self.site(r)?;
            let hlc = Hlc::from_u64(u64::from_le_bytes(r.array()?));
            totals.insert(site, SiteTotal { hlc, total: i64::from_le_bytes(r.array()?) });
        }
        Ok(totals)
    }

    fn hash(&mut self, r: &mut Reader<'_>) -> Result<Hash, CodecError> {
        let top = self.version(r)?;
        let mut cleared = BTreeMap::new();
        for _ in 0..u32::from_le_bytes(r.array()?) {
            let site = self.site(r)?;
            cleared.insert(site, Hlc::from_u64(r.u64()?));
        }
        let mut fields = BTreeMap::new();
        for _ in 0..u32::from_le_bytes(r.array()?) {
            let name = r.bytes32()?.to_vec();
            let version = self.version(r)?;
            let tag = r.u8()?;
            let reset = tag & FIELD_RESET != 0 && matches!(tag & !FIELD_RESET, FIELD_COUNTER | FIELD_FLOAT);
            let state = match if reset { tag & !FIELD_RESET } else { tag } {
                FIELD_REMOVED => FieldState::Removed,
                FIELD_BYTES => FieldState::Bytes(r.bytes32()?.into()),
                FIELD_COUNTER => {
                    let base = i64::from_le_bytes(r.array()?);
                    let mut totals = BTreeMap::new();
                    for _ in 0..u32::from_le_bytes(r.array()?) {
                        let site = self.site(r)?;
                        let epoch = r.u64()?;
                        let hlc = Hlc::from_u64(r.u64()?);
                        totals.insert(site, FieldTotal { epoch, hlc, total: i64::from_le_bytes(r.array()?) });
                    }
                    FieldState::Counter(Box::new(FieldCounter { base, totals, reset }))
                }
                FIELD_FLOAT => {
                    let base = Float(f64::from_bits(r.u64()?));
                    let mut totals = BTreeMap::new();
                    for _ in 0..u32::from_le_bytes(r.array()?) {
                        let site = self.site(r)?;
                        let epoch = r.u64()?;
                        let hlc = Hlc::from_u64(r.u64()?);
                        totals.insert(site, FloatTotal { epoch, hlc, total: Float(f64::from_bits(r.u64()?)) });
                    }
                    FieldState::Float(Box::new(FloatCounter { base, totals, reset }))
                }
                tag => return Err(CodecError::UnknownTag { offset: r.pos - 1, tag }),
            };
            fields.insert(name, Field { version, state });
        }
        Ok(Hash::from_parts(fields, cleared, top))
    }

    fn version(&mut self, r: &mut Reader<'_>) -> Result<Version, CodecError> {
        let epoch = r.u64()?;
        let hlc = Hlc::from_u64(r.u64()?);
        Ok(Version::with_epoch(epoch, hlc, self.site(r)?))
    }

    fn site(&mut self, r: &mut Reader<'_>) -> Result<SiteId, CodecError> {
        let len = usize::from(r.u8()?);
        let name = r.take(len)?;
        if let Some(site) = self.sites.get(name) {
            return Ok(site.clone());
        }
        let text = std::str::from_utf8(name).map_err(|e| CodecError::BadSite(e.to_string()))?;
        let site = SiteId::new(text).map_err(|e| CodecError::BadSite(e.to_string()))?;
        self.sites.insert(name.to_vec(), site.clone());
        Ok(site)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let available = self.buf.len() - self.pos;
        if available < n {
            return Err(CodecError::Truncated { offset: self.pos, needed: n - available });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes32(&mut self) -> Result<&'a [u8], CodecError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    fn records() -> Vec<Record> {
        let v = |ms, s| Version::with_epoch(ms % 3, Hlc::new(ms, 3), site(s));
        vec![
            Record::string(v(10, "a"), Value::Bytes(vec![0, 1, 255]), v(9, "b"), Some(77)),
            Record::string(v(11, "b"), Value::Tombstone, v(11, "b"), None),
            Record::string(
                v(12, "a"),
                Value::Counter(Box::new(Counter {
                    base: -5,
                    totals: BTreeMap::from([
                        (site("a"), SiteTotal { hlc: Hlc::new(12, 1), total: 3 }),
                        (site("site-b"), SiteTotal { hlc: Hlc::new(13, 0), total: i64::MIN }),
                    ]),
                    floor: Hlc::ZERO,
                    base_dead: false,
                })),
                v(1, "a"),
                None,
            ),
            Record::string(
                Version::zero(),
                Value::Counter(Box::new(Counter {
                    base: 0,
                    totals: BTreeMap::from([(site("a"), SiteTotal { hlc: Hlc::new(40, 0), total: 2 })]),
                    floor: Hlc::new(30, 0),
                    base_dead: true,
                })),
                v(40, "a"),
                None,
            ),
            with(Record::string(v(5, "a"), Value::Tombstone, v(6, "b"), Some(90)), |r| {
                r.put_hash(Hash::from_parts(
                    BTreeMap::from([
                        (b"f".to_vec(), Field { version: v(7, "a"), state: FieldState::Bytes(vec![1, 0, 2].into()) }),
                        (vec![], Field { version: v(8, "site-b"), state: FieldState::Removed }),
                        (
                            b"x".to_vec(),
                            Field {
                                version: v(8, "a"),
                                state: FieldState::Float(Box::new(FloatCounter {
                                    base: Float(1.5),
                                    totals: BTreeMap::from([(
                                        site("b"),
                                        FloatTotal { epoch: 2, hlc: Hlc::new(9, 1), total: Float(-0.1) },
                                    )]),
                                    reset: true,
                                })),
                            },
                        ),
                        (
                            b"n".to_vec(),
                            Field {
                                version: Version::zero(),
                                state: FieldState::Counter(Box::new(FieldCounter {
                                    base: 0,
                                    totals: BTreeMap::from([(
                                        site("a"),
                                        FieldTotal { epoch: 1, hlc: Hlc::new(9, 0), total: -4 },
                                    )]),
                                    reset: false,
                                })),
                            },
                        ),
                    ]),
                    BTreeMap::from([(site("a"), Hlc::new(6, 1))]),
                    v(9, "a"),
                ));
            }),
            with(Record::string(v(4, "a"), Value::Bytes(b"old".to_vec()), v(4, "a"), None), |r| {
                r.put_set(Set::from_parts(
                    BTreeMap::from([
                        (b"m".as_slice().into(), Element::new(vec![v(20, "a"), v(21, "site-b")].into(), vec![])),
                        (vec![0xff].into(), Element::new(Default::default(), vec![(site("a"), Hlc::new(19, 2))])),
                    ]),
                    BTreeMap::from([(site("site-b"), Hlc::new(18, 0))]),
                    v(22, "a"),
                ));
            }),
            with(Record::string(Version::zero(), Value::Tombstone, Version::zero(), None), |r| {
                r.put_zset(ZSet {
                    members: Set::from_parts(
                        BTreeMap::from([(b"m".as_slice().into(), Element::new(vec![v(30, "a")].into(), vec![]))]),
                        BTreeMap::new(),
                        v(31, "b"),
                    ),
                    scores: Hash::from_parts(
                        BTreeMap::from([(
                            b"m".to_vec(),
                            Field {
                                version: v(30, "a"),
                                state: FieldState::Bytes(2.5f64.to_le_bytes().to_vec().into()),
                            },
                        )]),
                        BTreeMap::new(),
                        Version::zero(),
                    ),
                });
            }),
            with(Record::string(v(2, "a"), Value::Tombstone, v(2, "a"), Some(1_900_000_000_000)), |r| {
                r.put_list(List::from_parts(
                    BTreeMap::from([
                        (place(&[(-1, 40, "a", 0)]), Item { value: b"x".to_vec(), set: None }),
                        (place(&[(0, 41, "b", 1), (3, 42, "a", 0)]), Item { value: vec![], set: Some(v(43, "b")) }),
                    ]),
                    std::collections::BTreeSet::from([place(&[(1, 39, "a", 2)])]),
                    BTreeMap::from([(site("b"), Hlc::new(38, 0))]),
                    v(43, "b"),
                    Hlc::new(30, 2),
                ));
            }),
        ]
    }

    fn with(mut rec: Record, f: impl FnOnce(&mut Record)) -> Record {
        f(&mut rec);
        rec
    }

    fn place(idents: &[(i64, u64, &str, u32)]) -> Place {
        Place(
            idents
                .iter()
                .map(|(d, ms, s, n)| Ident { d: *d, epoch: 1, hlc: Hlc::new(*ms, 0), site: site(s), n: *n })
                .collect(),
        )
    }

    #[test]
    fn records_round_trip() {
        let mut dec = RecordDecoder::default();
        for (i, rec) in records().into_iter().enumerate() {
            let bytes = encode_record(i as u16, b"k\x00\xff", &rec);
            assert_eq!(dec.decode(&bytes).unwrap(), (i as u16, b"k\x00\xff".to_vec(), rec));
        }
    }

    #[test]
    fn refuses_damaged_records() {
        let mut dec = RecordDecoder::default();
        let bytes = encode_record(0, b"key", &records()[0]);
        for cut in 0..bytes.len() {
            assert!(dec.decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(dec.decode(&longer), Err(CodecError::UnknownTag { tag: 0, .. })), "not a hash part");
        let hashed = encode_record(0, b"key", &records()[4]);
        let mut longer = hashed.clone();
        longer.push(0);
        assert!(matches!(dec.decode(&longer), Err(CodecError::UnknownTag { tag: 0, .. })), "not a part");
        let mut twice = encode_record(0, b"key", &records()[5]);
        let set_part =
            twice.len() - encode_record(0, b"key", &with(records()[5].clone(), |r| drop(r.take_set()))).len();
        twice.extend_from_within(twice.len() - set_part..);
        assert!(matches!(dec.decode(&twice), Err(CodecError::UnknownTag { tag: SET_PART, .. })), "one set part");
        let without = encode_record(0, b"key", &with(records()[4].clone(), |r| drop(r.take_hash()))).len();
        for cut in 0..hashed.len() {
            if cut != without {
                assert!(dec.decode(&hashed[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut bad_tag = bytes;
        bad_tag[0] = 9;
        assert!(matches!(dec.decode(&bad_tag), Err(CodecError::UnknownTag { tag: 9, .. })));
    }

    #[test]
    fn header_round_trips_and_refuses_other_versions() {
        let caches = vec![CacheHeader { name: CacheName::new("default").unwrap(), epoch: 4 }];
        let h = Header::new(site("a"), caches.clone(), Hlc::new(1_733_000_000_000, 7));
        let bytes = encode_header(&h);
        assert_eq!(decode_header(&bytes).unwrap(), h);
        let with = |text: &str| {
            let mut other = vec![TAG_HEADER];
            other.extend_from_slice(text.as_bytes());
            decode_header(&other)
        };
        let json = String::from_utf8(bytes[1..].to_vec()).unwrap();
        assert_eq!(with(&json.replace("\"version\":7", "\"version\":8")), Err(CodecError::UnsupportedVersion(8)));
        // Version 1 (no high-water mark) is still read.
        let v1 = r#"{"format":"xsite-store","version":1,"site":"a","caches":[{"name":"default","epoch":4}]}"#;
        let old = with(v1).unwrap();
        assert_eq!((old.version, old.hlc_high, old.caches), (1, None, caches));
    }
}
