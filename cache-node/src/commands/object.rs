//! OBJECT ENCODING | REFCOUNT | IDLETIME | FREQ | HELP, for string values.
//!
//! - ENCODING is what Redis's `tryObjectEncoding` picks for the value as it stands:
//!   `int` for a canonical 64-bit integer of at most 20 bytes, `embstr` up to 44
//!   bytes, `raw` beyond. This node does not keep Redis's in-memory encodings, so a
//!   short value edited in place (APPEND, SETRANGE, SETBIT), which Redis reports as
//!   `raw`, is reported by its value here.
//! - REFCOUNT is 2147483647 for the integers 0..=9999 (Redis's shared integers) and
//!   1 otherwise.
//! - IDLETIME is always 0: this node does not track when a key was last read.
//! - FREQ gives Redis's error for a node without an LFU policy (there is none here).

use super::errors::{unknown_subcommand, wrong_arity};
use super::Held;
use super::{err, Ctx};
use crate::resp::Frame;
use bytes::Bytes;

/// Values Redis shares instead of allocating (`OBJ_SHARED_INTEGERS`).
const SHARED_INTEGERS: i64 = 10_000;
/// The refcount Redis reports for a shared object (`OBJ_SHARED_REFCOUNT`).
const SHARED_REFCOUNT: i64 = i32::MAX as i64;
/// Longest string Redis embeds in its object (`OBJ_ENCODING_EMBSTR_SIZE_LIMIT`).
const EMBSTR_BYTES_MAX: usize = 44;
/// Longest string Redis tries to encode as an integer.
const INT_BYTES_MAX: usize = 20;

const ERR_NO_LFU: &str = "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.";

const OBJECT_HELP: &[&str] = &[
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Prints this help.",
];

/// Fields a hash holds at most, and bytes of a field or value, for Redis 7.0 to
/// keep it as a listpack (`hash-max-listpack-entries`, `hash-max-listpack-value`).
const SET_INTSET_ENTRIES_MAX: usize = 512;
const HASH_LISTPACK_ENTRIES_MAX: usize = 128;
const HASH_LISTPACK_VALUE_MAX: usize = 64;

/// The value as an integer, if Redis would encode it as one.
fn as_int(value: &[u8]) -> Option<i64> {
    (value.len() <= INT_BYTES_MAX).then(|| crate::resp::parse_integer(value)).flatten()
}

pub fn object(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let sub = args[1].to_ascii_lowercase();
    let arity = match sub.as_slice() {
        b"help" => 2,
        b"encoding" | b"refcount" | b"idletime" | b"freq" => 3,
        _ => return unknown_subcommand("object", &args[1]),
    };
    if args.len() != arity {
        return wrong_arity(&format!("object|{}", String::from_utf8_lossy(&sub)));
    }
    if sub.as_slice() == b"help" {
        return Frame::Array(OBJECT_HELP.iter().map(|l| Frame::Simple((*l).into())).collect());
    }
    let held = ctx.store.read(&args[2], |r| r.filter(|r| r.is_live(ctx.now_ms)).and_then(Held::of));
    let value = match held {
        None => return Frame::Null,
        Some(Held::String(v)) => v,
        Some(Held::Hash(fields)) => {
            return match sub.as_slice() {
                b"encoding" => {
                    // Redis 7.0's defaults: hash-max-listpack-entries 128, -value 64.
                    let compact = fields.len() <= HASH_LISTPACK_ENTRIES_MAX
                        && fields.iter().all(|(k, v)| k.len().max(v.len()) <= HASH_LISTPACK_VALUE_MAX);
                    Frame::Bulk(Bytes::from_static(if compact { b"listpack" } else { b"hashtable" }))
                }
                b"refcount" => Frame::Integer(1),
                b"idletime" => Frame::Integer(0),
                _ => err(ERR_NO_LFU),
            };
        }
        Some(Held::ZSet(members)) => {
            return match sub.as_slice() {
                b"encoding" => {
                    // Redis 7.0's defaults: zset-max-listpack-entries 128, -value 64.
                    let compact = members.len() <= HASH_LISTPACK_ENTRIES_MAX
                        && members.iter().all(|(m, _)| m.len() <= HASH_LISTPACK_VALUE_MAX);
                    Frame::Bulk(Bytes::from_static(if compact { b"listpack" } else { b"skiplist" }))
                }
                b"refcount" => Frame::Integer(1),
                b"idletime" => Frame::Integer(0),
                _ => err(ERR_NO_LFU),
            };
        }
        Some(Held::List(_)) => {
            return match sub.as_slice() {
                // Redis 7.0 keeps every list as a quicklist.
                b"encoding" => Frame::Bulk(Bytes::from_static(b"quicklist")),
                b"refcount" => Frame::Integer(1),
                b"idletime" => Frame::Integer(0),
                _ => err(ERR_NO_LFU),
            };
        }
        Some(Held::Set(members)) => {
            return match sub.as_slice() {
                b"encoding" => {
                    // Redis 7.0's default set-max-intset-entries 512 (7.0 has no
                    // listpack sets).
                    let ints = members.len() <= SET_INTSET_ENTRIES_MAX && members.iter().all(|m| as_int(m).is_some());
                    Frame::Bulk(Bytes::from_static(if ints { b"intset" } else { b"hashtable" }))
                }
                b"refcount" => Frame::Integer(1),
                b"idletime" => Frame::Integer(0),
                _ => err(ERR_NO_LFU),
            };
        }
    };
    match sub.as_slice() {
        b"encoding" => {
            let encoding = match as_int(&value) {
                Some(_) => "int",
                None if value.len() <= EMBSTR_BYTES_MAX => "embstr",
                None => "raw",
            };
            Frame::Bulk(Bytes::from_static(encoding.as_bytes()))
        }
        b"refcount" => match as_int(&value) {
            Some(n) if (0..SHARED_INTEGERS).contains(&n) => Frame::Integer(SHARED_REFCOUNT),
            _ => Frame::Integer(1),
        },
        b"idletime" => Frame::Integer(0),
        _ => err(ERR_NO_LFU),
    }
}
