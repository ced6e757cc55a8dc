//! String commands: GET SET SETNX SETEX PSETEX MGET MSET MSETNX GETSET GETDEL GETEX
//! APPEND STRLEN GETRANGE/SUBSTR SETRANGE.
//!
//! A write of a whole value is an [`Op::Put`]. It keeps the key's expiry
//! (`keep_ttl`) only when it edits a live value (APPEND, SETRANGE, SET KEEPTTL):
//! a key that is absent or expired starts without one at every site.

use super::{
    err, invalid_expire, parse_i64, refused, value_reply, Ctx, ERR_OFFSET_RANGE, ERR_STRING_TOO_LONG, ERR_SYNTAX,
    STRING_BYTES_MAX,
};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::value_bytes;
use bytes::Bytes;
use xsite_schemas::Op;

/// An expiry option as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry<'a> {
    /// EX seconds / PX milliseconds: relative to now.
    In { arg: &'a [u8], seconds: bool },
    /// EXAT seconds / PXAT milliseconds: absolute.
    At { arg: &'a [u8], seconds: bool },
}

#[derive(Debug, Default)]
struct SetOptions<'a> {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    expiry: Option<Expiry<'a>>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Family {
    Set,
    GetEx,
}

/// Redis's `parseExtendedStringArgumentsOrReply`: the options of SET and GETEX.
fn parse_options<'a>(args: &'a [Bytes], family: Family) -> Result<SetOptions<'a>, Frame> {
    let mut o = SetOptions::default();
    let mut i = 0;
    while i < args.len() {
        let opt = args[i].to_ascii_lowercase();
        let next = args.get(i + 1).map(|b| b.as_ref());
        let set = family == Family::Set;
        let no_expiry = o.expiry.is_none();
        match (opt.as_slice(), next) {
            (b"nx", _) if set && !o.xx => o.nx = true,
            (b"xx", _) if set && !o.nx => o.xx = true,
            (b"get", _) if set => o.get = true,
            (b"keepttl", _) if set && no_expiry => o.keepttl = true,
            (b"persist", _) if !set && no_expiry => o.persist = true,
            (b"ex" | b"px" | b"exat" | b"pxat", Some(arg)) if !o.keepttl && !o.persist => {
                let e = match opt.as_slice() {
                    b"ex" => Expiry::In { arg, seconds: true },
                    b"px" => Expiry::In { arg, seconds: false },
                    b"exat" => Expiry::At { arg, seconds: true },
                    _ => Expiry::At { arg, seconds: false },
                };
                // The same option twice is allowed (the last counts); two kinds conflict.
                if o.expiry.is_some_and(|old| kind(old) != kind(e)) {
                    return Err(super::err(ERR_SYNTAX));
                }
                o.expiry = Some(e);
                i += 1;
            }
            _ => return Err(super::err(ERR_SYNTAX)),
        }
        i += 1;
    }
    Ok(o)
}

/// (relative, seconds): EX, PX, EXAT, PXAT.
fn kind(e: Expiry<'_>) -> (bool, bool) {
    match e {
        Expiry::In { seconds, .. } => (true, seconds),
        Expiry::At { seconds, .. } => (false, seconds),
    }
}

/// Redis's `getExpireMillisecondsOrReply`: the absolute expiry time in ms.
fn resolve_expiry(e: Expiry<'_>, now_ms: u64, command: &str) -> Result<u64, Frame> {
    let (arg, seconds, relative) = match e {
        Expiry::In { arg, seconds } => (arg, seconds, true),
        Expiry::At { arg, seconds } => (arg, seconds, false),
    };
    let n = parse_i64(arg)?;
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return Err(invalid_expire(command));
    }
    let ms = if seconds { n * 1000 } else { n };
    let at = if relative { ms.checked_add(now_ms as i64) } else { Some(ms) };
    match at {
        Some(at) if at > 0 => Ok(at as u64),
        _ => Err(invalid_expire(command)),
    }
}

/// A Put that replaces the value and sets the expiry to `expire_at_ms`.
pub fn put(key: &[u8], value: Vec<u8>, expire_at_ms: Option<u64>) -> Op {
    Op::Put { key: key.to_vec(), value, expire_at_ms, keep_ttl: false }
}

/// A Put that edits a value: keeps the expiry if the key is live, else none.
pub fn put_edit(key: &[u8], value: Vec<u8>, live: bool) -> Op {
    Op::Put { key: key.to_vec(), value, expire_at_ms: None, keep_ttl: live }
}

pub fn get(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    ctx.store.read(&args[1], |r| match r.filter(|r| r.is_live(ctx.now_ms)) {
        Some(rec) => value_reply(rec),
        None => Frame::Null,
    })
}

pub fn set(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let o = match parse_options(&args[3..], Family::Set) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let expire_at_ms = match o.expiry.map(|e| resolve_expiry(e, ctx.now_ms, "set")).transpose() {
        Ok(at) => at,
        Err(f) => return f,
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    // A plain SET reads nothing: the lookup is for the options that read.
    let reads = o.get || o.nx || o.xx || o.keepttl;
    let current = if reads { locked.live(key, ctx.now_ms) } else { None };
    if o.get && current.is_some_and(|r| r.kind() != xsite_consumer::merge::Kind::String) {
        return super::err(super::ERR_WRONGTYPE);
    }
    let old = o.get.then(|| current.map_or(Frame::Null, value_reply));
    let found = current.is_some();
    if (o.nx && found) || (o.xx && !found) {
        return old.unwrap_or(Frame::Null);
    }
    let op = Op::Put { key: key.to_vec(), value: args[2].to_vec(), expire_at_ms, keep_ttl: o.keepttl && found };
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::Set, key);
    if expire_at_ms.is_some() {
        ctx.notify(Event::Expire, key);
    }
    old.unwrap_or_else(Frame::ok)
}

pub fn setnx(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    if locked.live(key, ctx.now_ms).is_some() {
        return Frame::Integer(0);
    }
    let op = put(key, args[2].to_vec(), None);
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::Set, key);
    Frame::Integer(1)
}

fn set_with_expiry(ctx: &mut Ctx<'_>, args: &[Bytes], seconds: bool, command: &str) -> Frame {
    let e = Expiry::In { arg: &args[2], seconds };
    let at = match resolve_expiry(e, ctx.now_ms, command) {
        Ok(at) => at,
        Err(f) => return f,
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let op = put(key, args[3].to_vec(), Some(at));
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::Set, key);
    ctx.notify(Event::Expire, key);
    Frame::ok()
}

pub fn setex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    set_with_expiry(ctx, args, true, "setex")
}

pub fn psetex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    set_with_expiry(ctx, args, false, "psetex")
}

pub fn mget(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let keys = &args[1..];
    let locked = ctx.store.lock(keys);
    Frame::Array(keys.iter().map(|k| locked.live(k, ctx.now_ms).map_or(Frame::Null, value_reply)).collect())
}

/// MSET and MSETNX: all pairs under one lock, all or nothing.
fn mset_all(ctx: &mut Ctx<'_>, args: &[Bytes], nx: bool, name: &str) -> Result<bool, Frame> {
    if args.len().is_multiple_of(2) {
        return Err(super::wrong_arity(name));
    }
    let keys: Vec<&Bytes> = args[1..].iter().step_by(2).collect();
    let mut locked = ctx.store.lock(&keys);
    if nx && keys.iter().any(|k| locked.live(k, ctx.now_ms).is_some()) {
        return Ok(false);
    }
    let ops: Vec<Op> = args[1..].chunks(2).map(|kv| put(&kv[0], kv[1].to_vec(), None)).collect();
    locked.admit(&ops).map_err(refused)?;
    for (op, key) in ops.into_iter().zip(keys) {
        ctx.write(&mut locked, op);
        ctx.notify(Event::Set, key);
    }
    Ok(true)
}

pub fn mset(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    match mset_all(ctx, args, false, "mset") {
        Ok(_) => Frame::ok(),
        Err(f) => f,
    }
}

pub fn msetnx(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    match mset_all(ctx, args, true, "msetnx") {
        Ok(done) => Frame::Integer(i64::from(done)),
        Err(f) => f,
    }
}

pub fn getset(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let old = locked.live(key, ctx.now_ms).map_or(Frame::Null, value_reply);
    let op = put(key, args[2].to_vec(), None);
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::Set, key);
    old
}

pub fn getdel(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let Some(rec) = locked.live(key, ctx.now_ms) else {
        return Frame::Null;
    };
    let reply = value_reply(rec);
    ctx.write(&mut locked, Op::Delete { key: key.to_vec() });
    ctx.notify(Event::Del, key);
    reply
}

pub fn getex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let o = match parse_options(&args[2..], Family::GetEx) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let Some(rec) = locked.live(key, ctx.now_ms) else {
        return Frame::Null;
    };
    let at = match o.expiry.map(|e| resolve_expiry(e, ctx.now_ms, "getex")).transpose() {
        Ok(at) => at,
        Err(f) => return f,
    };
    let reply = value_reply(rec);
    let had_expiry = rec.expire_at_ms().is_some();
    let absolute = matches!(o.expiry, Some(Expiry::At { .. }));
    let op = match at {
        Some(at) if absolute && at <= ctx.now_ms => Some((Op::Delete { key: key.to_vec() }, Event::Del)),
        Some(at) => Some((Op::Expire { key: key.to_vec(), expire_at_ms: Some(at) }, Event::Expire)),
        None if o.persist && had_expiry => Some((Op::Expire { key: key.to_vec(), expire_at_ms: None }, Event::Persist)),
        None => None,
    };
    if let Some((op, event)) = op {
        ctx.write(&mut locked, op);
        ctx.notify(event, key);
    }
    reply
}

/// Checks Redis's `checkStringLength`: `len + extra` must not pass the bulk limit.
fn check_length(len: u64, extra: u64) -> Result<(), Frame> {
    match len.checked_add(extra) {
        Some(total) if total <= STRING_BYTES_MAX => Ok(()),
        _ => Err(err(ERR_STRING_TOO_LONG)),
    }
}

pub fn append(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let current = locked.live(key, ctx.now_ms).and_then(value_bytes).map(|v| v.into_owned());
    let live = current.is_some();
    let value = match current {
        Some(mut v) => {
            if let Err(f) = check_length(v.len() as u64, args[2].len() as u64) {
                return f;
            }
            v.extend_from_slice(&args[2]);
            v
        }
        None => args[2].to_vec(),
    };
    let len = value.len() as i64;
    let op = put_edit(key, value, live);
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::Append, key);
    Frame::Integer(len)
}

pub fn strlen(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let len =
        ctx.store.read(&args[1], |r| r.filter(|r| r.is_live(ctx.now_ms)).and_then(value_bytes).map_or(0, |v| v.len()));
    Frame::Integer(len as i64)
}

pub fn getrange(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let (mut start, mut end) = match (parse_i64(&args[2]), parse_i64(&args[3])) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(f), _) | (_, Err(f)) => return f,
    };
    let value =
        ctx.store.read(&args[1], |r| r.filter(|r| r.is_live(ctx.now_ms)).and_then(value_bytes).map(|v| v.into_owned()));
    let Some(value) = value else {
        return Frame::Bulk(Bytes::new());
    };
    let len = value.len() as i64;
    if start < 0 && end < 0 && start > end {
        return Frame::Bulk(Bytes::new());
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return Frame::Bulk(Bytes::new());
    }
    Frame::Bulk(Bytes::copy_from_slice(&value[start as usize..=end as usize]))
}

pub fn setrange(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let offset = match parse_i64(&args[2]) {
        Ok(o) if o < 0 => return err(ERR_OFFSET_RANGE),
        Ok(o) => o as u64,
        Err(f) => return f,
    };
    let patch = &args[3];
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let current = locked.live(key, ctx.now_ms).and_then(value_bytes).map(|v| v.into_owned());
    let live = current.is_some();
    if patch.is_empty() {
        return Frame::Integer(current.map_or(0, |v| v.len() as i64));
    }
    if let Err(f) = check_length(offset, patch.len() as u64) {
        return f;
    }
    let mut value = current.unwrap_or_default();
    let offset = offset as usize;
    let end = offset + patch.len();
    if value.len() < end {
        value.resize(end, 0);
    }
    value[offset..end].copy_from_slice(patch);
    let len = value.len() as i64;
    let op = put_edit(key, value, live);
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::SetRange, key);
    Frame::Integer(len)
}
