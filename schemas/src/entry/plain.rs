//! The entries most writes make (`put`, `delete`, `expire`, `incr`), encoded
//! straight into their bytes: the very bytes serde_json writes for them (the property
//! `plain_encoding_is_serde_jsons` holds the two equal), without serde_json's
//! byte-by-byte escaping scan (nothing here needs escaping: names are `[a-z0-9_-]`,
//! ids are hex and base64 is its own alphabet) or the map a flattened struct takes.
//! On a node's write path this is a quarter of a SET's instructions
//! (`scripts/profile-write.sh`).

use super::{base64_len, format_version_of, CounterBase, LogEntry, Op};
use crate::hlc::Hlc;
use crate::names::{CacheName, SiteId};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Bytes of everything but the key's and value's base64, for the capacity: the
/// longest envelope (names of 64 bytes, 20-digit numbers) fits.
const ENVELOPE_BYTES: usize = 512;

/// Appends `entry` as JSON to `out` when it is one of the plain ops; `false` (and
/// `out` untouched) otherwise: serde_json encodes it.
pub(super) fn encode_into(entry: &LogEntry, out: &mut Vec<u8>) -> bool {
    let (key, value) = match &entry.op {
        Op::Put { key, value, .. } => (key, Some(value)),
        Op::Delete { key } | Op::Expire { key, .. } | Op::Incr { key, .. } => (key, None),
        _ => return false,
    };
    let value_len = value.map_or(0, |v| base64_len(v.len()));
    out.reserve(ENVELOPE_BYTES + base64_len(key.len()) + value_len);
    let mut w = Writer(out);
    w.raw(b"{\"version\":");
    w.uint(u64::from(format_version_of(entry)));
    w.raw(b",\"id\":\"");
    w.raw(entry.id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes());
    w.raw(b"\",\"origin\":\"");
    w.raw(entry.origin.as_str().as_bytes());
    w.raw(b"\",\"seq\":");
    w.uint(entry.seq);
    w.raw(b",\"hlc\":");
    w.uint(entry.hlc.as_u64());
    w.raw(b",\"epoch\":");
    w.uint(entry.epoch);
    w.raw(b",\"cache\":\"");
    w.raw(entry.cache.as_str().as_bytes());
    w.raw(b"\",\"op\":{\"op\":\"");
    w.raw(entry.op.name().as_bytes());
    w.raw(b"\",\"key\":\"");
    w.base64(key);
    w.raw(b"\"");
    match &entry.op {
        Op::Put { value, expire_at_ms, keep_ttl, .. } => {
            w.raw(b",\"value\":\"");
            w.base64(value);
            w.raw(b"\",\"expire_at_ms\":");
            w.option(*expire_at_ms);
            w.raw(if *keep_ttl { b",\"keep_ttl\":true" } else { b",\"keep_ttl\":false" });
        }
        Op::Expire { expire_at_ms, .. } => {
            w.raw(b",\"expire_at_ms\":");
            w.option(*expire_at_ms);
        }
        Op::Incr { delta, total, base, .. } => {
            w.raw(b",\"delta\":");
            w.int(*delta);
            w.raw(b",\"total\":");
            w.int(*total);
            w.raw(b",\"base\":");
            w.base(base);
        }
        _ => {}
    }
    w.raw(b"}}");
    true
}

/// What a log shipper needs of an entry (its format version, origin and Kafka key),
/// read off the bytes [`encode`] writes for a plain op without decoding the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked<'a> {
    pub version: u32,
    pub origin: &'a str,
    pub key: Vec<u8>,
}

/// [`Peeked`] of a plain op's encoding (`put`, `delete`, `expire`, `incr`, in a
/// supported format version); `None` for anything else, which the caller decodes
/// whole. The property `peek_reads_what_decode_reads` holds it to [`super::decode`].
pub fn peek(bytes: &[u8]) -> Option<Peeked<'_>> {
    let mut r = Reader(bytes);
    r.lit(b"{\"version\":")?;
    let version =
        u32::try_from(r.uint()?).ok().filter(|v| (super::FORMAT_VERSION_MIN..=super::FORMAT_VERSION).contains(v))?;
    r.lit(b",\"id\":\"")?;
    r.take(36)?;
    r.lit(b"\",\"origin\":\"")?;
    let origin = r.name()?;
    r.lit(b",\"seq\":")?;
    r.uint()?;
    r.lit(b",\"hlc\":")?;
    r.uint()?;
    r.lit(b",\"epoch\":")?;
    r.uint()?;
    r.lit(b",\"cache\":\"")?;
    r.name()?;
    r.lit(b",\"op\":{\"op\":\"")?;
    if !matches!(r.name()?, "put" | "delete" | "expire" | "incr") {
        return None;
    }
    r.lit(b",\"key\":\"")?;
    let key = r.base64()?;
    Some(Peeked { version, origin, key })
}

/// The entry [`encode_into`] wrote into `bytes`, with its format version, when
/// `bytes` are exactly such an encoding (a supported version, the fields in
/// their order, no white space, no escape, numbers as serde_json writes them);
/// `None` for anything else, which serde_json decodes (or refuses). It accepts
/// nothing serde_json would read otherwise: the properties
/// `plain_decoding_is_serde_jsons` and `plain_decoding_accepts_nothing_serde_reads_otherwise`
/// hold it to that. A replica's consumer and a node's WAL replay decode every
/// entry, and serde_json's field map and escaping scan were most of that.
pub(super) fn decode(bytes: &[u8]) -> Option<(u32, LogEntry)> {
    let mut r = Reader(bytes);
    r.lit(b"{\"version\":")?;
    let version =
        u32::try_from(r.uint()?).ok().filter(|v| (super::FORMAT_VERSION_MIN..=super::FORMAT_VERSION).contains(v))?;
    r.lit(b",\"id\":\"")?;
    let id = uuid::Uuid::try_parse_ascii(r.take(36)?).ok()?;
    r.lit(b"\",\"origin\":\"")?;
    let origin = SiteId::new(r.text()?).ok()?;
    r.lit(b",\"seq\":")?;
    let seq = r.uint()?;
    r.lit(b",\"hlc\":")?;
    let hlc = Hlc::from_u64(r.uint()?);
    r.lit(b",\"epoch\":")?;
    let epoch = r.uint()?;
    r.lit(b",\"cache\":\"")?;
    let cache = CacheName::new(r.text()?).ok()?;
    r.lit(b",\"op\":{\"op\":\"")?;
    let name = r.text()?;
    r.lit(b",\"key\":\"")?;
    let key = r.base64()?;
    let op = match name {
        "put" => {
            r.lit(b",\"value\":\"")?;
            let value = r.base64()?;
            r.lit(b",\"expire_at_ms\":")?;
            let expire_at_ms = r.option()?;
            r.lit(b",\"keep_ttl\":")?;
            let keep_ttl = r.bool()?;
            Op::Put { key, value, expire_at_ms, keep_ttl }
        }
        "delete" => Op::Delete { key },
        "expire" => {
            r.lit(b",\"expire_at_ms\":")?;
            Op::Expire { key, expire_at_ms: r.option()? }
        }
        "incr" => {
            r.lit(b",\"delta\":")?;
            let delta = r.int()?;
            r.lit(b",\"total\":")?;
            let total = r.int()?;
            r.lit(b",\"base\":{\"epoch\":")?;
            let base_epoch = r.uint()?;
            r.lit(b",\"hlc\":")?;
            let base_hlc = Hlc::from_u64(r.uint()?);
            r.lit(b",\"site\":\"")?;
            let site = SiteId::new(r.text()?).ok()?;
            r.lit(b",\"value\":")?;
            let value = r.int()?;
            let floor = if r.lit(b",\"floor\":").is_some() { Some(Hlc::from_u64(r.uint()?)) } else { None };
            let dead = r.lit(b",\"dead\":true").is_some();
            r.lit(b"}")?;
            let base = CounterBase { epoch: base_epoch, hlc: base_hlc, site, value, floor, dead };
            Op::Incr { key, delta, total, base }
        }
        _ => return None,
    };
    r.lit(b"}}")?;
    r.0.is_empty().then_some(())?;
    Some((version, LogEntry { id, origin, seq, hlc, epoch, cache, op }))
}

/// Reads [`encode_into`]'s bytes from the front.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn lit(&mut self, bytes: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(bytes)?;
        Some(())
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(taken)
    }

    /// A non-negative integer as serde_json writes it: digits, no leading zero.
    fn uint(&mut self) -> Option<u64> {
        let digits = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        let text = self.take(digits)?;
        if text.is_empty() || (text.len() > 1 && text[0] == b'0') {
            return None;
        }
        std::str::from_utf8(text).ok()?.parse().ok()
    }

    fn int(&mut self) -> Option<i64> {
        let negative = self.lit(b"-").is_some();
        let magnitude = self.uint()?;
        if negative {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        }
    }

    fn option(&mut self) -> Option<Option<u64>> {
        if self.lit(b"null").is_some() {
            return Some(None);
        }
        self.uint().map(Some)
    }

    fn bool(&mut self) -> Option<bool> {
        if self.lit(b"true").is_some() {
            return Some(true);
        }
        self.lit(b"false").map(|()| false)
    }

    /// A string's text up to its closing quote, taken with it: only printable
    /// ASCII without a backslash (an escape, or anything serde_json would read
    /// otherwise, is left to it).
    fn text(&mut self) -> Option<&'a str> {
        let end = self.0.iter().position(|&b| b == b'"')?;
        let text = self.take(end)?;
        self.lit(b"\"")?;
        text.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'\\').then_some(())?;
        std::str::from_utf8(text).ok()
    }

    /// A name's text (`[a-z0-9_-]`, as names and op names are), its closing quote
    /// taken.
    fn name(&mut self) -> Option<&'a str> {
        let name = self.text()?;
        name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-').then_some(name)
    }

    /// A base64 string's bytes, its closing quote taken.
    fn base64(&mut self) -> Option<Vec<u8>> {
        STANDARD.decode(self.text()?).ok()
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn uint(&mut self, n: u64) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }

    fn int(&mut self, n: i64) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }

    fn option(&mut self, n: Option<u64>) {
        match n {
            Some(n) => self.uint(n),
            None => self.raw(b"null"),
        }
    }

    fn base64(&mut self, bytes: &[u8]) {
        let start = self.0.len();
        self.0.resize(start + base64_len(bytes.len()), 0);
        let written = STANDARD.encode_slice(bytes, &mut self.0[start..]).expect("sized for the padded base64");
        self.0.truncate(start + written);
    }

    fn base(&mut self, base: &CounterBase) {
        self.raw(b"{\"epoch\":");
        self.uint(base.epoch);
        self.raw(b",\"hlc\":");
        self.uint(base.hlc.as_u64());
        self.raw(b",\"site\":\"");
        self.raw(base.site.as_str().as_bytes());
        self.raw(b"\",\"value\":");
        self.int(base.value);
        if let Some(floor) = base.floor {
            self.raw(b",\"floor\":");
            self.uint(floor.as_u64());
        }
        if base.dead {
            self.raw(b",\"dead\":true");
        }
        self.raw(b"}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::{encode_with_serde, Hlc, SiteId};
    use super::*;
    use crate::CacheName;

    fn encode(entry: &LogEntry) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        encode_into(entry, &mut out).then_some(out)
    }
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9_-]{0,63}"
    }

    fn base() -> impl Strategy<Value = CounterBase> {
        (any::<u64>(), any::<u64>(), name(), any::<i64>(), proptest::option::of(any::<u64>()), any::<bool>()).prop_map(
            |(epoch, hlc, site, value, floor, dead)| CounterBase {
                epoch,
                hlc: Hlc::from_u64(hlc),
                site: SiteId::new(site).unwrap(),
                value,
                floor: floor.map(Hlc::from_u64),
                dead,
            },
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (bytes(), bytes(), proptest::option::of(any::<u64>()), any::<bool>())
                .prop_map(|(key, value, expire_at_ms, keep_ttl)| Op::Put { key, value, expire_at_ms, keep_ttl }),
            bytes().prop_map(|key| Op::Delete { key }),
            (bytes(), proptest::option::of(any::<u64>()))
                .prop_map(|(key, expire_at_ms)| Op::Expire { key, expire_at_ms }),
            (bytes(), any::<i64>(), any::<i64>(), base()).prop_map(|(key, delta, total, base)| Op::Incr {
                key,
                delta,
                total,
                base
            }),
        ]
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Replace(u8),
        Insert(u8),
        Remove,
        Cut,
        /// Inserted before a number's first digit (a leading zero, a sign…).
        BeforeNumber(u8),
    }

    /// An edit of an encoding, with the bytes that make JSON mean something else.
    fn edit() -> impl Strategy<Value = Edit> {
        let byte = proptest::sample::select(b"0123456789-\" \\,:{}nultrefalsE+.A/=\t\n\x00\xc3\xff".to_vec());
        prop_oneof![
            4 => byte.clone().prop_map(Edit::Replace),
            2 => byte.prop_map(Edit::Insert),
            1 => Just(Edit::Remove),
            1 => Just(Edit::Cut),
            2 => proptest::sample::select(b"0-+ 1".to_vec()).prop_map(Edit::BeforeNumber),
        ]
    }

    /// Entries of the plain ops, every field random.
    fn entry() -> impl Strategy<Value = LogEntry> {
        (any::<u128>(), name(), any::<u64>(), any::<u64>(), any::<u64>(), name(), op()).prop_map(
            |(id, origin, seq, hlc, epoch, cache, op)| LogEntry {
                id: uuid::Uuid::from_u128(id),
                origin: SiteId::new(origin).unwrap(),
                seq,
                hlc: Hlc::from_u64(hlc),
                epoch,
                cache: CacheName::new(cache).unwrap(),
                op,
            },
        )
    }

    proptest! {
        #[test]
        fn plain_encoding_is_serde_jsons(entry in entry()) {
            let plain = encode(&entry).expect("a plain op");
            let serde = encode_with_serde(&entry);
            prop_assert_eq!(String::from_utf8_lossy(&plain), String::from_utf8_lossy(&serde));
        }

        #[test]
        fn plain_decoding_is_serde_jsons(entry in entry()) {
            let bytes = super::super::encode(&entry);
            let (version, decoded) = decode(&bytes).expect("a plain op's encoding is read");
            prop_assert_eq!(version, format_version_of(&entry));
            prop_assert_eq!(&decoded, &entry);
            prop_assert_eq!(super::super::decode_with_serde(&bytes).ok(), Some(entry));
        }

        /// Bytes near an encoding (a few bytes replaced, inserted or removed, or
        /// the end cut): whatever the plain reader accepts, serde_json reads the
        /// same.
        #[test]
        fn plain_decoding_accepts_nothing_serde_reads_otherwise(
            entry in entry(),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), edit()), 1..4),
        ) {
            let mut bytes = super::super::encode(&entry);
            for (at, edit) in edits {
                let at = at.index(bytes.len() + 1);
                match edit {
                    Edit::Replace(b) if at < bytes.len() => bytes[at] = b,
                    Edit::Insert(b) => bytes.insert(at, b),
                    Edit::Remove if at < bytes.len() => { bytes.remove(at); }
                    Edit::Cut => bytes.truncate(at),
                    Edit::BeforeNumber(b) => {
                        let starts: Vec<usize> = (1..bytes.len())
                            .filter(|&i| bytes[i].is_ascii_digit() && matches!(bytes[i - 1], b':' | b'-'))
                            .collect();
                        if !starts.is_empty() {
                            bytes.insert(starts[at % starts.len()], b);
                        }
                    }
                    _ => {}
                }
            }
            if let Some((_, fast)) = decode(&bytes) {
                prop_assert_eq!(super::super::decode_with_serde(&bytes).ok(), Some(fast), "{}", String::from_utf8_lossy(&bytes));
            }
        }

        #[test]
        fn peek_reads_what_decode_reads(entry in entry()) {
            let bytes = super::super::encode(&entry);
            let peeked = peek(&bytes).expect("a plain op is peeked");
            let decoded = super::super::decode(&bytes).expect("decodes");
            prop_assert_eq!(peeked.version, format_version_of(&decoded));
            prop_assert_eq!(peeked.origin, decoded.origin.as_str());
            prop_assert_eq!(Some(&peeked.key[..]), decoded.message_key());
        }
    }

    #[test]
    fn peek_leaves_other_entries_and_other_versions_to_decode() {
        let heartbeat = LogEntry::new(
            SiteId::new("a").unwrap(),
            Hlc::from_u64(1),
            1,
            CacheName::new("default").unwrap(),
            Op::Heartbeat { applied: Default::default() },
        );
        assert_eq!(peek(&super::super::encode(&heartbeat)), None);
        let put = LogEntry {
            op: Op::Put { key: b"k".to_vec(), value: b"v".to_vec(), expire_at_ms: None, keep_ttl: false },
            ..heartbeat
        };
        let bytes = super::super::encode(&put);
        assert_eq!(peek(&bytes).map(|p| p.key), Some(b"k".to_vec()));
        let future = String::from_utf8(bytes).unwrap().replacen("\"version\":1", "\"version\":99", 1);
        assert_eq!(peek(future.as_bytes()), None);
        assert_eq!(peek(&b"{\"version\":1"[..]), None);
    }

    #[test]
    fn other_ops_are_left_to_serde_json() {
        let entry = LogEntry::new(
            SiteId::new("a").unwrap(),
            Hlc::from_u64(1),
            1,
            CacheName::new("default").unwrap(),
            Op::Heartbeat { applied: Default::default() },
        );
        assert!(encode(&entry).is_none());
    }
}
