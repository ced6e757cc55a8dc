//! Bit commands on strings: SETBIT GETBIT BITCOUNT BITPOS BITOP BITFIELD
//! BITFIELD_RO, and LCS.
//!
//! Replies and errors are Redis 7.0's, ported from its `bitops.c` and `t_string.c`
//! (argument order, which checks come first, and the quirks of 7.0: BITCOUNT of a
//! missing key is 0 before its arguments are read).
//!
//! Replication: a write computes the whole new value under the key's lock and is an
//! [`Op::Put`] of it, keeping the expiry when the key was live (as APPEND and
//! SETRANGE do, see [`put_edit`]); BITOP's destination is a plain put without expiry,
//! as Redis's `setKey` leaves it. The value is a last-write-wins register across
//! sites: two sites that SETBIT different bits of one key concurrently keep one
//! site's whole value, and the other site's bit is lost. A write that changes no
//! byte writes nothing (Redis's `dirty` check), so it does not replicate either.

use super::strings::{put, put_edit};
use super::{err, parse_i64, refused, Ctx, ERR_NOT_INTEGER, ERR_SYNTAX, STRING_BYTES_MAX};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::value_bytes;
use bytes::Bytes;
use xsite_schemas::Op;

pub const ERR_BIT_OFFSET: &str = "ERR bit offset is not an integer or out of range";
pub const ERR_BIT_VALUE: &str = "ERR bit is not an integer or out of range";
const ERR_BITFIELD_TYPE: &str =
    "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.";
const ERR_BITFIELD_OVERFLOW: &str = "ERR Invalid OVERFLOW type specified";
const ERR_BITFIELD_RO: &str = "ERR BITFIELD_RO only supports the GET subcommand";
const ERR_BITOP_NOT: &str = "ERR BITOP NOT must be called with a single source key.";
const ERR_BITPOS_BIT: &str = "ERR The bit argument must be 1 or 0.";
const ERR_LCS_BOTH: &str = "ERR If you want both the length and indexes, please just use IDX.";
const ERR_LCS_MEMORY: &str = "ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len";

/// The live value of `key`, as bytes (a counter as its decimal text).
fn read_value(ctx: &Ctx<'_>, key: &[u8]) -> Option<Vec<u8>> {
    ctx.store.read(key, |r| r.filter(|r| r.is_live(ctx.now_ms)).and_then(value_bytes).map(|v| v.into_owned()))
}

/// Redis's `getBitOffsetFromArgument`: a bit offset below `proto-max-bulk-len` bytes;
/// `#n` (with `hash`) counts in units of `bits`.
fn bit_offset(arg: &[u8], hash: bool, bits: u32) -> Result<u64, Frame> {
    let use_hash = hash && bits > 0 && arg.first() == Some(&b'#');
    let digits = if use_hash { &arg[1..] } else { arg };
    let mut offset = crate::resp::parse_integer(digits).ok_or_else(|| err(ERR_BIT_OFFSET))?;
    if use_hash {
        offset = offset.wrapping_mul(i64::from(bits));
    }
    if offset < 0 || (offset as u64 >> 3) >= STRING_BYTES_MAX {
        return Err(err(ERR_BIT_OFFSET));
    }
    Ok(offset as u64)
}

fn get_bit(value: &[u8], offset: u64) -> bool {
    let byte = (offset >> 3) as usize;
    value.get(byte).is_some_and(|b| b & (0x80 >> (offset & 7)) != 0)
}

fn set_bit(value: &mut [u8], offset: u64, on: bool) {
    let byte = (offset >> 3) as usize;
    let mask = 0x80 >> (offset & 7);
    if on {
        value[byte] |= mask;
    } else {
        value[byte] &= !mask;
    }
}

pub fn setbit(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let offset = match bit_offset(&args[2], false, 0) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let on = match crate::resp::parse_integer(&args[3]) {
        Some(0) => false,
        Some(1) => true,
        _ => return err(ERR_BIT_VALUE),
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let old = locked.live(key, ctx.now_ms).and_then(value_bytes).map(|v| v.into_owned());
    let need = (offset >> 3) as usize + 1;
    if let Err(e) = ctx.store.check_value_len(key, need) {
        return refused(e);
    }
    let mut value = old.clone().unwrap_or_default();
    if value.len() < need {
        value.resize(need, 0);
    }
    let was = get_bit(&value, offset);
    set_bit(&mut value, offset, on);
    if old.as_deref() != Some(value.as_slice()) {
        let op = put_edit(key, value, old.is_some());
        if let Err(e) = locked.admit([&op]) {
            return refused(e);
        }
        ctx.write(&mut locked, op);
        ctx.notify(Event::SetBit, key);
    }
    Frame::Integer(i64::from(was))
}

pub fn getbit(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let offset = match bit_offset(&args[2], false, 0) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let bit = read_value(ctx, &args[1]).is_some_and(|v| get_bit(&v, offset));
    Frame::Integer(i64::from(bit))
}

/// A byte or bit range of a string of `len` bytes, Redis's negative indexes resolved:
/// the first and last bit, inclusive; `None` when the range is empty.
fn bit_range(len: u64, start: i64, end: i64, is_bit: bool) -> Option<(u64, u64)> {
    let total = if is_bit { len as i64 * 8 } else { len as i64 };
    let (mut start, mut end) = (start, end);
    if start < 0 {
        start = start.saturating_add(total);
    }
    if end < 0 {
        end = end.saturating_add(total);
    }
    start = start.max(0);
    end = end.max(0);
    if end >= total {
        end = total - 1;
    }
    if start > end {
        return None;
    }
    let (start, end) = (start as u64, end as u64);
    Some(if is_bit { (start, end) } else { (start * 8, end * 8 + 7) })
}

/// BYTE or BIT, Redis's `strcasecmp`.
fn unit(arg: &[u8]) -> Result<bool, Frame> {
    if arg.eq_ignore_ascii_case(b"bit") {
        Ok(true)
    } else if arg.eq_ignore_ascii_case(b"byte") {
        Ok(false)
    } else {
        Err(err(ERR_SYNTAX))
    }
}

/// Set bits from bit `first` to bit `last` of `value`, inclusive.
fn count_bits(value: &[u8], first: u64, last: u64) -> i64 {
    let (fb, lb) = ((first >> 3) as usize, (last >> 3) as usize);
    let all: u32 = value[fb..=lb].iter().map(|b| b.count_ones()).sum();
    let before = value[fb] & !(0xffu8 >> (first & 7));
    let after = value[lb] & (0x7fu8 >> (last & 7));
    i64::from(all - before.count_ones() - after.count_ones())
}

pub fn bitcount(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    // Redis 7.0 looks the key up first: a missing key is 0 whatever the arguments.
    let Some(value) = read_value(ctx, &args[1]) else {
        return Frame::Integer(0);
    };
    let range = match args.len() {
        2 => bit_range(value.len() as u64, 0, -1, false),
        4 | 5 => {
            let (start, end) = match (parse_i64(&args[2]), parse_i64(&args[3])) {
                (Ok(s), Ok(e)) => (s, e),
                (Err(f), _) | (_, Err(f)) => return f,
            };
            let is_bit = match args.get(4).map(|a| unit(a)).transpose() {
                Ok(b) => b.unwrap_or(false),
                Err(f) => return f,
            };
            if start < 0 && end < 0 && start > end {
                return Frame::Integer(0);
            }
            bit_range(value.len() as u64, start, end, is_bit)
        }
        _ => return err(ERR_SYNTAX),
    };
    Frame::Integer(range.map_or(0, |(first, last)| count_bits(&value, first, last)))
}

/// The first bit equal to `bit` from bit `first` to bit `last`, inclusive (whole
/// bytes without one are skipped at once).
fn find_bit(value: &[u8], first: u64, last: u64, bit: bool) -> Option<u64> {
    let skip = if bit { 0x00 } else { 0xff };
    let mut i = first;
    while i <= last {
        if i & 7 == 0 && i + 7 <= last && value[(i >> 3) as usize] == skip {
            i += 8;
            continue;
        }
        if get_bit(value, i) == bit {
            return Some(i);
        }
        i += 1;
    }
    None
}

pub fn bitpos(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let bit = match parse_i64(&args[2]) {
        Ok(b @ (0 | 1)) => b == 1,
        Ok(_) => return err(ERR_BITPOS_BIT),
        Err(f) => return f,
    };
    let Some(value) = read_value(ctx, &args[1]) else {
        return Frame::Integer(if bit { -1 } else { 0 });
    };
    let len = value.len() as u64;
    let (range, end_given) = match args.len() {
        3 => (bit_range(len, 0, -1, false), false),
        4..=6 => {
            let start = match parse_i64(&args[3]) {
                Ok(s) => s,
                Err(f) => return f,
            };
            let is_bit = match args.get(5).map(|a| unit(a)).transpose() {
                Ok(b) => b.unwrap_or(false),
                Err(f) => return f,
            };
            let end = match args.get(4).map(|a| parse_i64(a)).transpose() {
                Ok(e) => e,
                Err(f) => return f,
            };
            (bit_range(len, start, end.unwrap_or(-1), is_bit), end.is_some())
        }
        _ => return err(ERR_SYNTAX),
    };
    let Some((first, last)) = range else {
        return Frame::Integer(-1);
    };
    if let Some(pos) = find_bit(&value, first, last, bit) {
        return Frame::Integer(pos as i64);
    }
    // Looking for a clear bit without an end: the string counts as padded with zeros.
    if !bit && !end_given {
        return Frame::Integer(((last >> 3) + 1) as i64 * 8);
    }
    Frame::Integer(-1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BitOp {
    And,
    Or,
    Xor,
    Not,
}

pub fn bitop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let op = match args[1].to_ascii_lowercase().as_slice() {
        b"and" => BitOp::And,
        b"or" => BitOp::Or,
        b"xor" => BitOp::Xor,
        b"not" => BitOp::Not,
        _ => return err(ERR_SYNTAX),
    };
    if op == BitOp::Not && args.len() != 4 {
        return err(ERR_BITOP_NOT);
    }
    let dest = &args[2];
    let keys: Vec<&Bytes> = std::iter::once(dest).chain(&args[3..]).collect();
    let mut locked = ctx.store.lock(&keys);
    let sources: Vec<Vec<u8>> = args[3..]
        .iter()
        .map(|k| locked.live(k, ctx.now_ms).and_then(value_bytes).map(|v| v.into_owned()).unwrap_or_default())
        .collect();
    let max_len = sources.iter().map(Vec::len).max().unwrap_or(0);
    if max_len == 0 {
        if locked.live(dest, ctx.now_ms).is_some() {
            ctx.write(&mut locked, Op::Delete { key: dest.to_vec() });
            ctx.notify(Event::Del, dest);
        }
        return Frame::Integer(0);
    }
    let byte = |s: &Vec<u8>, i: usize| s.get(i).copied().unwrap_or(0);
    let result: Vec<u8> = (0..max_len)
        .map(|i| match op {
            BitOp::Not => !byte(&sources[0], i),
            BitOp::And => sources.iter().fold(0xff, |acc, s| acc & byte(s, i)),
            BitOp::Or => sources.iter().fold(0, |acc, s| acc | byte(s, i)),
            BitOp::Xor => sources.iter().fold(0, |acc, s| acc ^ byte(s, i)),
        })
        .collect();
    let put = put(dest, result, None);
    if let Err(e) = locked.admit([&put]) {
        return refused(e);
    }
    ctx.write(&mut locked, put);
    ctx.notify(Event::Set, dest);
    Frame::Integer(max_len as i64)
}

/// BITFIELD's OVERFLOW behaviours.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldOp {
    Get,
    Set(i64),
    IncrBy(i64),
}

/// One BITFIELD operation: a field of `bits` bits at bit `offset`.
#[derive(Clone, Copy)]
struct Field {
    op: FieldOp,
    signed: bool,
    bits: u32,
    offset: u64,
    overflow: Overflow,
}

/// Redis's `getBitfieldTypeFromArgument`: `i1`..`i64`, `u1`..`u63`.
fn field_type(arg: &[u8]) -> Result<(bool, u32), Frame> {
    let signed = match arg.first() {
        Some(b'i') => true,
        Some(b'u') => false,
        _ => return Err(err(ERR_BITFIELD_TYPE)),
    };
    match crate::resp::parse_integer(&arg[1..]) {
        Some(bits) if bits >= 1 && bits <= if signed { 64 } else { 63 } => Ok((signed, bits as u32)),
        _ => Err(err(ERR_BITFIELD_TYPE)),
    }
}

fn parse_fields(args: &[Bytes]) -> Result<Vec<Field>, Frame> {
    let mut fields = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut j = 0;
    while j < args.len() {
        let rest = args.len() - j - 1;
        let sub = args[j].to_ascii_lowercase();
        let takes_value = match sub.as_slice() {
            b"get" if rest >= 2 => false,
            b"set" | b"incrby" if rest >= 3 => true,
            b"overflow" if rest >= 1 => {
                overflow = match args[j + 1].to_ascii_lowercase().as_slice() {
                    b"wrap" => Overflow::Wrap,
                    b"sat" => Overflow::Sat,
                    b"fail" => Overflow::Fail,
                    _ => return Err(err(ERR_BITFIELD_OVERFLOW)),
                };
                j += 2;
                continue;
            }
            _ => return Err(err(ERR_SYNTAX)),
        };
        let (signed, bits) = field_type(&args[j + 1])?;
        let offset = bit_offset(&args[j + 2], true, bits)?;
        let op = if takes_value {
            let n = crate::resp::parse_integer(&args[j + 3]).ok_or_else(|| err(ERR_NOT_INTEGER))?;
            if sub.as_slice() == b"set" {
                FieldOp::Set(n)
            } else {
                FieldOp::IncrBy(n)
            }
        } else {
            FieldOp::Get
        };
        fields.push(Field { op, signed, bits, offset, overflow });
        j += if takes_value { 4 } else { 3 };
    }
    Ok(fields)
}

/// The field's bits as an unsigned number (bits past the end of `value` are 0).
fn read_field(value: &[u8], offset: u64, bits: u32) -> u64 {
    (0..u64::from(bits)).fold(0u64, |acc, i| (acc << 1) | u64::from(get_bit(value, offset + i)))
}

fn write_field(value: &mut [u8], offset: u64, bits: u32, field: u64) {
    for i in 0..u64::from(bits) {
        let on = (field >> (u64::from(bits) - 1 - i)) & 1 == 1;
        set_bit(value, offset + i, on);
    }
}

/// The field as a signed number: its top bit sign-extended.
fn sign_extend(field: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((field << shift) as i64) >> shift
}

/// Redis's `check(Un)signedBitfieldOverflow`: `value + incr` in the field's range, or
/// what OVERFLOW makes of it (`None` for FAIL). Also returns whether it overflowed.
fn bounded(value: i128, incr: i128, signed: bool, bits: u32, overflow: Overflow) -> (Option<i128>, bool) {
    let (min, max) =
        if signed { (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1) } else { (0, (1i128 << bits) - 1) };
    let sum = value + incr;
    let (high, low) = (value > max || sum > max, value < min || sum < min);
    if !high && !low {
        return (Some(sum), false);
    }
    let result = match overflow {
        Overflow::Fail => None,
        Overflow::Sat => Some(if high { max } else { min }),
        Overflow::Wrap => {
            let wrapped = (sum as u128 as u64) & if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
            Some(if signed { i128::from(sign_extend(wrapped, bits)) } else { i128::from(wrapped) })
        }
    };
    (result, true)
}

/// Runs one SET or INCRBY on `value`: the reply, and whether the field changed.
fn apply_field(value: &mut [u8], f: &Field) -> (Frame, bool) {
    let raw = read_field(value, f.offset, f.bits);
    let old = if f.signed { i128::from(sign_extend(raw, f.bits)) } else { i128::from(raw) };
    let (target, incr) = match f.op {
        FieldOp::Set(n) if f.signed => (i128::from(n), 0),
        // An unsigned SET of a negative number is its two's complement, as in C.
        FieldOp::Set(n) => (i128::from(n as u64), 0),
        FieldOp::IncrBy(n) => (old, i128::from(n)),
        FieldOp::Get => unreachable!("a get is not applied"),
    };
    let (new, _) = bounded(target, incr, f.signed, f.bits, f.overflow);
    let Some(new) = new else {
        return (Frame::Null, false);
    };
    let mask = if f.bits == 64 { u64::MAX } else { (1u64 << f.bits) - 1 };
    write_field(value, f.offset, f.bits, (new as i64 as u64) & mask);
    let reply = if matches!(f.op, FieldOp::Set(_)) { old } else { new };
    (Frame::Integer(reply as i64), new != old)
}

fn get_field(value: &[u8], f: &Field) -> Frame {
    let raw = read_field(value, f.offset, f.bits);
    Frame::Integer(if f.signed { sign_extend(raw, f.bits) } else { raw as i64 })
}

fn bitfield_generic(ctx: &mut Ctx<'_>, args: &[Bytes], read_only: bool) -> Frame {
    let fields = match parse_fields(&args[2..]) {
        Ok(f) => f,
        Err(f) => return f,
    };
    let key = &args[1];
    let Some(highest) = fields.iter().filter(|f| f.op != FieldOp::Get).map(|f| f.offset + u64::from(f.bits) - 1).max()
    else {
        let value = read_value(ctx, key).unwrap_or_default();
        return Frame::Array(fields.iter().map(|f| get_field(&value, f)).collect());
    };
    if read_only {
        return err(ERR_BITFIELD_RO);
    }
    let mut locked = ctx.store.lock(&[key]);
    let old = locked.live(key, ctx.now_ms).and_then(value_bytes).map(|v| v.into_owned());
    let need = (highest >> 3) as usize + 1;
    if let Err(e) = ctx.store.check_value_len(key, need) {
        return refused(e);
    }
    let mut value = old.clone().unwrap_or_default();
    let grown = old.is_none() || value.len() < need;
    if value.len() < need {
        value.resize(need, 0);
    }
    let mut changes = 0;
    let mut replies = Vec::with_capacity(fields.len());
    for f in &fields {
        if f.op == FieldOp::Get {
            replies.push(get_field(&value, f));
            continue;
        }
        let (reply, changed) = apply_field(&mut value, f);
        // Redis counts a write that did not fail as a change when the key grew.
        if changed || (grown && reply != Frame::Null) {
            changes += 1;
        }
        replies.push(reply);
    }
    if old.as_deref() != Some(value.as_slice()) {
        let op = put_edit(key, value, old.is_some());
        if let Err(e) = locked.admit([&op]) {
            return refused(e);
        }
        ctx.write(&mut locked, op);
    }
    if changes > 0 {
        ctx.notify(Event::SetBit, key);
    }
    Frame::Array(replies)
}

pub fn bitfield(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    bitfield_generic(ctx, args, false)
}

pub fn bitfield_ro(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    bitfield_generic(ctx, args, true)
}

#[derive(Default)]
struct LcsOptions {
    len: bool,
    idx: bool,
    with_match_len: bool,
    min_match_len: u64,
}

fn lcs_options(args: &[Bytes]) -> Result<LcsOptions, Frame> {
    let mut o = LcsOptions::default();
    let mut j = 0;
    while j < args.len() {
        let more = j + 1 < args.len();
        match args[j].to_ascii_lowercase().as_slice() {
            b"idx" => o.idx = true,
            b"len" => o.len = true,
            b"withmatchlen" => o.with_match_len = true,
            b"minmatchlen" if more => {
                o.min_match_len = parse_i64(&args[j + 1])?.max(0) as u64;
                j += 1;
            }
            _ => return Err(err(ERR_SYNTAX)),
        }
        j += 1;
    }
    if o.idx && o.len {
        return Err(err(ERR_LCS_BOTH));
    }
    Ok(o)
}

/// One matching range of LCS IDX: positions in `a` and in `b`, inclusive.
fn lcs_range(a: (usize, usize), b: (usize, usize), with_len: bool) -> Frame {
    let pair = |(s, e): (usize, usize)| Frame::Array(vec![Frame::Integer(s as i64), Frame::Integer(e as i64)]);
    let mut range = vec![pair(a), pair(b)];
    if with_len {
        range.push(Frame::Integer((a.1 - a.0 + 1) as i64));
    }
    Frame::Array(range)
}

/// LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN]: Redis's dynamic
/// programming table and walk back, ranges emitted from the end of the strings.
pub fn lcs(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if super::any_live_collection(ctx, &args[1..3]) {
        return err("ERR The specified keys must contain string values");
    }
    let a = read_value(ctx, &args[1]).unwrap_or_default();
    let b = read_value(ctx, &args[2]).unwrap_or_default();
    let o = match lcs_options(&args[3..]) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let (alen, blen) = (a.len(), b.len());
    let cells = (alen as u64 + 1) * (blen as u64 + 1);
    if cells * 4 > STRING_BYTES_MAX {
        return err(ERR_LCS_MEMORY);
    }
    let width = blen + 1;
    let mut table = vec![0u32; cells as usize];
    for i in 1..=alen {
        for j in 1..=blen {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let total = table[alen * width + blen] as usize;
    if o.len && !o.idx {
        return Frame::Integer(total as i64);
    }
    let mut result = vec![0u8; total];
    let mut matches = Vec::new();
    let mut idx = total;
    let (mut i, mut j) = (alen, blen);
    // `current` is the range being grown backwards: (a start, a end, b start, b end).
    let mut current: Option<(usize, usize, usize, usize)> = None;
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            result[idx - 1] = a[i - 1];
            match current {
                None => current = Some((i - 1, i - 1, j - 1, j - 1)),
                Some((a_start, a_end, b_start, b_end)) if a_start == i && b_start == j => {
                    current = Some((a_start - 1, a_end, b_start - 1, b_end))
                }
                Some(_) => emit = true,
            }
            if current.is_some_and(|(a_start, _, b_start, _)| a_start == 0 || b_start == 0) {
                emit = true;
            }
            idx -= 1;
            i -= 1;
            j -= 1;
        } else {
            if table[(i - 1) * width + j] > table[i * width + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            emit = current.is_some();
        }
        if emit {
            if let Some((a_start, a_end, b_start, b_end)) = current.take() {
                let len = (a_end - a_start + 1) as u64;
                if o.idx && (o.min_match_len == 0 || len >= o.min_match_len) {
                    matches.push(lcs_range((a_start, a_end), (b_start, b_end), o.with_match_len));
                }
            }
        }
    }
    if o.idx {
        return Frame::Map(vec![
            (Frame::Bulk(Bytes::from_static(b"matches")), Frame::Array(matches)),
            (Frame::Bulk(Bytes::from_static(b"len")), Frame::Integer(total as i64)),
        ]);
    }
    Frame::Bulk(Bytes::from(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_and_write_from_the_most_significant_bit() {
        let mut v = vec![0u8; 3];
        write_field(&mut v, 4, 8, 0xab);
        assert_eq!(v, [0x0a, 0xb0, 0]);
        assert_eq!(read_field(&v, 4, 8), 0xab);
        assert_eq!(sign_extend(0b1000, 4), -8);
        assert_eq!(read_field(&v, 20, 8), 0, "bits past the end read as zero");
    }

    #[test]
    fn overflow_wraps_saturates_or_fails_as_redis_does() {
        assert_eq!(bounded(127, 1, true, 8, Overflow::Wrap), (Some(-128), true));
        assert_eq!(bounded(127, 1, true, 8, Overflow::Sat), (Some(127), true));
        assert_eq!(bounded(-128, -1, true, 8, Overflow::Sat), (Some(-128), true));
        assert_eq!(bounded(0, -1, false, 8, Overflow::Wrap), (Some(255), true));
        assert_eq!(bounded(0, -1, false, 8, Overflow::Fail), (None, true));
        assert_eq!(bounded(i128::from(i64::MAX), 1, true, 64, Overflow::Wrap), (Some(i128::from(i64::MIN)), true));
        assert_eq!(bounded(3, 4, false, 8, Overflow::Fail), (Some(7), false));
    }

    #[test]
    fn bit_offsets_stop_at_the_bulk_limit_and_hash_counts_in_fields() {
        assert_eq!(bit_offset(b"4294967295", false, 0), Ok(4_294_967_295));
        assert_eq!(bit_offset(b"4294967296", false, 0), Err(err(ERR_BIT_OFFSET)));
        assert_eq!(bit_offset(b"-1", false, 0), Err(err(ERR_BIT_OFFSET)));
        assert_eq!(bit_offset(b"#3", true, 8), Ok(24));
        assert_eq!(bit_offset(b"#3", false, 8), Err(err(ERR_BIT_OFFSET)));
    }
}
