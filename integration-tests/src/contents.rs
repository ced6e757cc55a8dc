//! A cache's contents as a client observes them: every live key with its value and
//! absolute expiry time (`PEXPIRETIME`), read through RESP with SCAN, then GET and
//! PEXPIRETIME per key; and how two sites' contents differ.
//!
//! A [`Snapshot`] is read over an interval (`read_from_ms..=read_to_ms`, wall clock,
//! the clock the nodes expire keys by): a key whose expiry falls inside it may be
//! there or not. [`differences`] therefore excuses one thing only: a key present at
//! one site and absent at the other whose expiry time had passed by the end of the
//! other's read. A different value, a different expiry, or a key with no expiry (or
//! one far ahead) missing at a site is a difference.

use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Keys asked for per SCAN call, and keys read per pipeline.
pub const READ_BATCH_KEYS_MAX: usize = 500;
/// Allowance for an expiry compared with the end of a read (milliseconds, one clock).
const EXPIRED_WHILE_READING_SLACK_MS: u64 = 10;
/// Differing keys shown in a failure message.
pub const SHOWN_DIFFERENCES_MAX: usize = 10;

/// Milliseconds since the Unix epoch now (the clock keys expire by).
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One live key as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// `PEXPIRETIME`: the absolute expiry in ms since the epoch; None: no expiry.
    pub expire_at_ms: Option<u64>,
}

impl Entry {
    pub fn show(&self) -> String {
        match self.expire_at_ms {
            None => format!("{} (no expiry)", show(&self.value)),
            Some(at) => format!("{} (expires at {at}, in {} ms)", show(&self.value), at as i64 - wall_ms() as i64),
        }
    }
}

/// Every live key of a cache with its value and expiry, read between two instants.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub entries: BTreeMap<Vec<u8>, Entry>,
    /// Wall-clock ms before the first SCAN and after the last read.
    pub read_from_ms: u64,
    pub read_to_ms: u64,
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(|e| e.value.as_slice())
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.entries.contains_key(key)
    }

    /// Key → value, expiries left out.
    pub fn values(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.entries.iter().map(|(k, e)| (k.clone(), e.value.clone())).collect()
    }
}

/// Read every live key of the connection's database: SCAN, then GET and PEXPIRETIME
/// of each key in pipelines. A key gone between SCAN and GET (or GET and PEXPIRETIME)
/// is left out. Bound the call from outside (the connection's response timeout).
pub async fn read(conn: &mut MultiplexedConnection) -> redis::RedisResult<Snapshot> {
    let read_from_ms = wall_ms();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(READ_BATCH_KEYS_MAX).query_async(conn).await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    let mut entries = BTreeMap::new();
    for chunk in keys.chunks(READ_BATCH_KEYS_MAX) {
        for (key, entry) in chunk.iter().zip(read_entries(conn, chunk).await?) {
            if let Some(entry) = entry {
                entries.insert(key.clone(), entry);
            }
        }
    }
    Ok(Snapshot { entries, read_from_ms, read_to_ms: wall_ms() })
}

/// GET and PEXPIRETIME of each key, in one pipeline; None for a key that is not live.
pub async fn read_entries(
    conn: &mut MultiplexedConnection,
    keys: &[Vec<u8>],
) -> redis::RedisResult<Vec<Option<Entry>>> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("GET").arg(k).cmd("PEXPIRETIME").arg(k);
    }
    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut out = Vec::with_capacity(keys.len());
    for pair in replies.chunks(2) {
        let value: Option<Vec<u8>> = redis::from_redis_value(&pair[0])?;
        let at: i64 = redis::from_redis_value(&pair[1])?;
        out.push(match (value, at) {
            (None, _) | (_, -2) => None, // not there, or expired between the two reads
            (Some(value), -1) => Some(Entry { value, expire_at_ms: None }),
            (Some(value), at) => Some(Entry { value, expire_at_ms: Some(at.max(0) as u64) }),
        });
    }
    Ok(out)
}

/// Keys whose entries differ between `a` and `b` (see the module doc for the one
/// difference excused), each with both sides.
pub fn differences<'a>(a: &'a Snapshot, b: &'a Snapshot) -> Vec<(&'a [u8], Option<&'a Entry>, Option<&'a Entry>)> {
    let expired_before = |e: &Entry, other: &Snapshot| {
        e.expire_at_ms.is_some_and(|at| at <= other.read_to_ms + EXPIRED_WHILE_READING_SLACK_MS)
    };
    let keys: BTreeSet<&Vec<u8>> = a.entries.keys().chain(b.entries.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (ea, eb) = (a.entries.get(k), b.entries.get(k));
            let differ = match (ea, eb) {
                (Some(x), Some(y)) => x != y,
                (Some(x), None) => !expired_before(x, b),
                (None, Some(y)) => !expired_before(y, a),
                (None, None) => false,
            };
            differ.then_some((k.as_slice(), ea, eb))
        })
        .collect()
}

/// How two snapshots differ, in a few lines: the count and the first differing keys.
pub fn describe_differences(a_name: &str, a: &Snapshot, b_name: &str, b: &Snapshot) -> String {
    let diffs = differences(a, b);
    let mut out = format!("{a_name}: {} keys, {b_name}: {} keys; {} keys differ", a.len(), b.len(), diffs.len());
    let side = |e: Option<&Entry>| e.map_or("(absent)".to_string(), Entry::show);
    for (k, ea, eb) in diffs.iter().take(SHOWN_DIFFERENCES_MAX) {
        let _ = write!(out, "\n  {}: {a_name}={} {b_name}={}", show(k), side(*ea), side(*eb));
    }
    if diffs.len() > SHOWN_DIFFERENCES_MAX {
        let _ = write!(out, "\n  … {} more", diffs.len() - SHOWN_DIFFERENCES_MAX);
    }
    out
}

/// Bytes for a message: text when printable, else escaped; long values shortened.
pub fn show(bytes: &[u8]) -> String {
    const SHOW_BYTES_MAX: usize = 60;
    let escaped: String =
        bytes.iter().take(SHOW_BYTES_MAX).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    if bytes.len() > SHOW_BYTES_MAX {
        format!("\"{escaped}\"… ({} bytes)", bytes.len())
    } else {
        format!("\"{escaped}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(entries: &[(&str, &str, Option<u64>)], read_to_ms: u64) -> Snapshot {
        Snapshot {
            entries: entries
                .iter()
                .map(|(k, v, at)| (k.as_bytes().to_vec(), Entry { value: v.as_bytes().to_vec(), expire_at_ms: *at }))
                .collect(),
            read_from_ms: read_to_ms - 50,
            read_to_ms,
        }
    }

    #[test]
    fn a_key_that_expired_while_the_other_site_was_read_is_no_difference() {
        let a = snap(&[("k", "v", Some(1_000)), ("p", "x", None)], 990);
        let b = snap(&[("p", "x", None)], 1_020);
        assert!(differences(&a, &b).is_empty());
        // …but one that expires later, or has no expiry, is.
        let a = snap(&[("k", "v", Some(5_000)), ("p", "x", None)], 990);
        let b = snap(&[], 1_020);
        let keys: Vec<&[u8]> = differences(&a, &b).iter().map(|d| d.0).collect();
        assert_eq!(keys, [b"k".as_slice(), b"p".as_slice()]);
    }

    #[test]
    fn a_different_expiry_is_a_difference() {
        let a = snap(&[("k", "v", Some(5_000))], 1_000);
        let b = snap(&[("k", "v", Some(5_001))], 1_000);
        let c = snap(&[("k", "v", None)], 1_000);
        assert_eq!(differences(&a, &b).len(), 1);
        assert_eq!(differences(&a, &c).len(), 1);
        assert!(describe_differences("a", &a, "c", &c).contains("(no expiry)"));
    }
}
