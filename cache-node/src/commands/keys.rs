//! Keyspace commands: DEL/UNLINK EXISTS/TOUCH TYPE, expiry (EXPIRE PEXPIRE EXPIREAT
//! PEXPIREAT TTL PTTL EXPIRETIME PEXPIRETIME PERSIST), KEYS SCAN DBSIZE FLUSHDB
//! RENAME RENAMENX RANDOMKEY.
//!
//! EXPIRE-style commands are [`Op::Expire`] with an absolute time; a time not in the
//! future deletes the key ([`Op::Delete`]) as Redis does. FLUSHDB is one delete per
//! live key; RENAME a delete of the source and a put of the destination. A delete
//! of a key that is a hash here removes the fields this site held ([`Op::HClear`]:
//! fields written concurrently at another site survive); a hash renamed is set
//! whole at its destination (see [`Held::write_ops`]).

use super::{delete_op, err, parse_i64, refused, Ctx, Held, ERR_NO_SUCH_KEY, ERR_SYNTAX};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::SHARDS;
use bytes::Bytes;
use xsite_consumer::merge::Record;
use xsite_schemas::Op;

/// SCAN's default COUNT.
const SCAN_COUNT_DEFAULT: usize = 10;

pub fn del(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let keys = &args[1..];
    let mut locked = ctx.store.lock(keys);
    let mut deleted = 0;
    for key in keys {
        if locked.live(key, ctx.now_ms).is_some() {
            let op = delete_op(locked.get(key), key);
            ctx.write(&mut locked, op);
            ctx.notify(Event::Del, key);
            deleted += 1;
        }
    }
    Frame::Integer(deleted)
}

pub fn exists(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let keys = &args[1..];
    let locked = ctx.store.lock(keys);
    Frame::Integer(keys.iter().filter(|k| locked.live(k, ctx.now_ms).is_some()).count() as i64)
}

/// The type name of a live record, as TYPE and SCAN TYPE give it.
pub fn type_name(rec: &Record) -> &'static str {
    match rec.kind() {
        xsite_consumer::merge::Kind::Hash => "hash",
        xsite_consumer::merge::Kind::Set => "set",
        xsite_consumer::merge::Kind::ZSet => "zset",
        xsite_consumer::merge::Kind::List => "list",
        xsite_consumer::merge::Kind::String => "string",
    }
}

pub fn type_(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let name = ctx.store.read(&args[1], |r| r.filter(|r| r.is_live(ctx.now_ms)).map(type_name));
    Frame::Simple(name.unwrap_or("none").into())
}

#[derive(Default)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

fn parse_expire_flags(args: &[Bytes]) -> Result<ExpireFlags, Frame> {
    let mut f = ExpireFlags::default();
    for arg in args {
        match arg.to_ascii_lowercase().as_slice() {
            b"nx" => f.nx = true,
            b"xx" => f.xx = true,
            b"gt" => f.gt = true,
            b"lt" => f.lt = true,
            _ => return Err(Frame::Error(format!("ERR Unsupported option {}", String::from_utf8_lossy(arg)))),
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err(err("ERR NX and XX, GT or LT options at the same time are not compatible"));
    }
    if f.gt && f.lt {
        return Err(err("ERR GT and LT options at the same time are not compatible"));
    }
    Ok(f)
}

/// Redis's `expireGenericCommand`: `relative` adds now; `seconds` scales by 1000.
fn expire_generic(ctx: &mut Ctx<'_>, args: &[Bytes], relative: bool, seconds: bool, name: &str) -> Frame {
    let flags = match parse_expire_flags(&args[3..]) {
        Ok(f) => f,
        Err(f) => return f,
    };
    let mut when = match parse_i64(&args[2]) {
        Ok(n) => n,
        Err(f) => return f,
    };
    if seconds {
        match when.checked_mul(1000) {
            Some(ms) => when = ms,
            None => return super::invalid_expire(name),
        }
    }
    if relative {
        match when.checked_add(ctx.now_ms as i64) {
            Some(at) => when = at,
            None => return super::invalid_expire(name),
        }
    }
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let Some(rec) = locked.live(key, ctx.now_ms) else {
        return Frame::Integer(0);
    };
    let current = rec.expire_at_ms().map(|at| at as i64);
    let refused = (flags.nx && current.is_some())
        || (flags.xx && current.is_none())
        || (flags.gt && current.is_none_or(|c| when <= c))
        || (flags.lt && current.is_some_and(|c| when >= c));
    if refused {
        return Frame::Integer(0);
    }
    let (op, event) = if when <= ctx.now_ms as i64 {
        (delete_op(Some(rec), key), Event::Del)
    } else {
        (Op::Expire { key: key.to_vec(), expire_at_ms: Some(when as u64) }, Event::Expire)
    };
    ctx.write(&mut locked, op);
    ctx.notify(event, key);
    Frame::Integer(1)
}

pub fn expire(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    expire_generic(ctx, args, true, true, "expire")
}

pub fn pexpire(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    expire_generic(ctx, args, true, false, "pexpire")
}

pub fn expireat(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    expire_generic(ctx, args, false, true, "expireat")
}

pub fn pexpireat(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    expire_generic(ctx, args, false, false, "pexpireat")
}

/// -2: no key; -1: no expiry; else the expiry time, absolute or remaining.
fn ttl_generic(ctx: &mut Ctx<'_>, args: &[Bytes], remaining: bool, ms: bool) -> Frame {
    let expiry = ctx.store.read(&args[1], |r| r.filter(|r| r.is_live(ctx.now_ms)).map(|r| r.expire_at_ms()));
    let reply = match expiry {
        None => -2,
        Some(None) => -1,
        Some(Some(at)) if remaining => {
            let left = at.saturating_sub(ctx.now_ms) as i64;
            if ms {
                left
            } else {
                (left + 500) / 1000
            }
        }
        Some(Some(at)) => {
            let at = at as i64;
            if ms {
                at
            } else {
                at / 1000
            }
        }
    };
    Frame::Integer(reply)
}

pub fn ttl(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    ttl_generic(ctx, args, true, false)
}

pub fn pttl(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    ttl_generic(ctx, args, true, true)
}

pub fn expiretime(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    ttl_generic(ctx, args, false, false)
}

pub fn pexpiretime(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    ttl_generic(ctx, args, false, true)
}

pub fn persist(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    match locked.live(key, ctx.now_ms) {
        Some(rec) if rec.expire_at_ms().is_some() => {
            ctx.write(&mut locked, Op::Expire { key: key.to_vec(), expire_at_ms: None });
            ctx.notify(Event::Persist, key);
            Frame::Integer(1)
        }
        _ => Frame::Integer(0),
    }
}

pub fn keys(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    Frame::Array(ctx.store.keys(&args[1], ctx.now_ms).into_iter().map(Frame::Bulk).collect())
}

/// The options of SCAN (and, without TYPE, of HSCAN).
pub struct ScanOptions {
    pub pattern: Option<Bytes>,
    pub count: usize,
    pub wanted_type: Option<Vec<u8>>,
}

/// Reads `[MATCH pattern] [COUNT count] [TYPE type]` (TYPE only when `types`).
pub fn scan_options(args: &[Bytes], types: bool) -> Result<ScanOptions, Frame> {
    let mut o = ScanOptions { pattern: None, count: SCAN_COUNT_DEFAULT, wanted_type: None };
    let mut opts = args.iter();
    while let Some(opt) = opts.next() {
        let Some(value) = opts.next() else {
            return Err(err(ERR_SYNTAX));
        };
        match opt.to_ascii_lowercase().as_slice() {
            b"match" => o.pattern = Some(value.clone()),
            b"count" => match parse_i64(value)? {
                n if n < 1 => return Err(err(ERR_SYNTAX)),
                n => o.count = n as usize,
            },
            b"type" if types => o.wanted_type = Some(value.to_ascii_lowercase()),
            _ => return Err(err(ERR_SYNTAX)),
        }
    }
    Ok(o)
}

pub fn scan(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let Some(cursor) = std::str::from_utf8(&args[1]).ok().and_then(|s| s.parse::<u64>().ok()) else {
        return err("ERR invalid cursor");
    };
    let ScanOptions { pattern, count, wanted_type } = match scan_options(&args[2..], true) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let (next, found) = ctx.store.scan(cursor, count, ctx.now_ms, |k, r| {
        pattern.as_ref().is_none_or(|p| crate::store::glob::glob_match(p, k))
            && wanted_type.as_deref().is_none_or(|t| t == type_name(r).as_bytes())
    });
    scan_reply(next, found)
}

fn scan_reply(cursor: u64, keys: Vec<Bytes>) -> Frame {
    Frame::Array(vec![
        Frame::Bulk(Bytes::from(cursor.to_string())),
        Frame::Array(keys.into_iter().map(Frame::Bulk).collect()),
    ])
}

pub fn dbsize(ctx: &mut Ctx<'_>, _args: &[Bytes]) -> Frame {
    Frame::Integer(ctx.store.dbsize() as i64)
}

/// Deletes every live key of the cache, one shard at a time (one entry per key).
pub fn flush(ctx: &mut Ctx<'_>) {
    for shard in 0..SHARDS {
        let mut locked = ctx.store.lock_shard(shard);
        for key in locked.live_keys(ctx.now_ms) {
            let op = delete_op(locked.get(&key), &key);
            ctx.write(&mut locked, op);
        }
    }
}

/// FLUSHDB [ASYNC|SYNC].
pub fn flushdb(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if let Err(f) = check_flush_args(args) {
        return f;
    }
    flush(ctx);
    Frame::ok()
}

/// FLUSHDB and FLUSHALL take one optional ASYNC or SYNC.
pub fn check_flush_args(args: &[Bytes]) -> Result<(), Frame> {
    match args.get(1..).unwrap_or_default() {
        [] => Ok(()),
        [mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => Ok(()),
        _ => Err(err(ERR_SYNTAX)),
    }
}

fn rename_generic(ctx: &mut Ctx<'_>, args: &[Bytes], nx: bool) -> Frame {
    let (src, dst) = (&args[1], &args[2]);
    let mut locked = ctx.store.lock(&[src, dst]);
    let Some(rec) = locked.live(src, ctx.now_ms) else {
        return err(ERR_NO_SUCH_KEY);
    };
    if src == dst {
        return if nx { Frame::Integer(0) } else { Frame::ok() };
    }
    if nx && locked.live(dst, ctx.now_ms).is_some() {
        return Frame::Integer(0);
    }
    let held = Held::of(rec).expect("live records hold something");
    let delete = delete_op(Some(rec), src);
    let writes = held.write_ops(dst, locked.get(dst), rec.expire_at_ms());
    if let Err(e) = locked.admit(&writes) {
        return refused(e);
    }
    if let Err(f) = ctx.needs_format_of(&writes) {
        return f;
    }
    let replaces = locked.live(dst, ctx.now_ms).is_some();
    ctx.write(&mut locked, delete);
    for op in writes {
        ctx.write(&mut locked, op);
    }
    if replaces {
        // Redis deletes the destination and adds it again: a new key either way.
        ctx.notify(Event::New, dst);
    }
    ctx.notify(Event::RenameFrom, src);
    ctx.notify(Event::RenameTo, dst);
    if nx {
        Frame::Integer(1)
    } else {
        Frame::ok()
    }
}

pub fn rename(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    rename_generic(ctx, args, false)
}

pub fn renamenx(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    rename_generic(ctx, args, true)
}

pub fn randomkey(ctx: &mut Ctx<'_>, _args: &[Bytes]) -> Frame {
    ctx.store.random_key(ctx.now_ms).map_or(Frame::Null, Frame::Bulk)
}
