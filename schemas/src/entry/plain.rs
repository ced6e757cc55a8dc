//! The entries most writes make (`put`, `delete`, `expire`, `incr`), encoded
//! straight into their bytes: the very bytes serde_json writes for them (the property
//! `plain_encoding_is_serde_jsons` holds the two equal), without serde_json's
//! byte-by-byte escaping scan (nothing here needs escaping: names are `[a-z0-9_-]`,
//! ids are hex and base64 is its own alphabet) or the map a flattened struct takes.
//! On a node's write path this is a quarter of a SET's instructions
//! (`scripts/profile-write.sh`).

use super::{base64_len, format_version_of, CounterBase, LogEntry, Op};
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
    let rest = bytes.strip_prefix(b"{\"version\":")?;
    let (version, rest) = number(rest)?;
    let version =
        u32::try_from(version).ok().filter(|v| (super::FORMAT_VERSION_MIN..=super::FORMAT_VERSION).contains(v))?;
    let rest = rest.strip_prefix(b",\"id\":\"")?.get(36..)?;
    let (origin, rest) = name(rest.strip_prefix(b"\",\"origin\":\"")?)?;
    let (_, rest) = number(rest.strip_prefix(b",\"seq\":")?)?;
    let (_, rest) = number(rest.strip_prefix(b",\"hlc\":")?)?;
    let (_, rest) = number(rest.strip_prefix(b",\"epoch\":")?)?;
    let (_, rest) = name(rest.strip_prefix(b",\"cache\":\"")?)?;
    let (op, rest) = name(rest.strip_prefix(b",\"op\":{\"op\":\"")?)?;
    if !matches!(op, "put" | "delete" | "expire" | "incr") {
        return None;
    }
    let rest = rest.strip_prefix(b",\"key\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let key = STANDARD.decode(&rest[..end]).ok()?;
    Some(Peeked { version, origin, key })
}

/// A JSON number's digits and what follows them.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let end = bytes.iter().position(|b| !b.is_ascii_digit()).unwrap_or(bytes.len());
    let n = std::str::from_utf8(&bytes[..end]).ok()?.parse().ok()?;
    Some((n, &bytes[end..]))
}

/// A name up to its closing quote (`[a-z0-9_-]`: nothing escaped), and what follows.
fn name(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|&b| b == b'"')?;
    let name = std::str::from_utf8(&bytes[..end]).ok()?;
    name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-').then_some(())?;
    Some((name, bytes.get(end + 1..)?))
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
