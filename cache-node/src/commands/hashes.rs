//! Hash commands: HSET HMSET HSETNX HGET HMGET HGETALL HDEL HEXISTS HINCRBY
//! HINCRBYFLOAT HKEYS HVALS HLEN HSTRLEN HRANDFIELD HSCAN.
//!
//! Every field is an independent register that replicates as its own write (see
//! `xsite_consumer::hash`): `HSET` is an [`Op::HSet`] of the fields it names,
//! `HDEL` an [`Op::HDel`] (a field tombstone each), `HINCRBY` an [`Op::HIncr`] on a
//! counter base, like `INCR` of a key, and `HINCRBYFLOAT` an [`Op::HIncrFloat`], a
//! float counter whose per-site totals every site adds in site-id order. An
//! increment of a field that is a counter of the other kind writes the new value
//! as a plain field (a new base: increments made concurrently elsewhere on the old
//! one are lost). A write to a key that is not a live hash
//! here (absent, expired) carries what this site held of it (`seen`): those fields
//! die at every site and the key's expiry is reset, as a new hash in Redis has none.
//! A string key answers WRONGTYPE. Hash writes wait until every remote site reads
//! log format 4 ([`Ctx::needs_format`]).

use super::counters::{format_float, parse_float};
use super::{
    err, live_of, new_key_seen, parse_i64, read_of, refused, wrong_arity, Ctx, ERR_NAN_OR_INFINITY, ERR_NOT_FLOAT,
    ERR_OVERFLOW, ERR_SYNTAX,
};
use crate::notify::Event;
use crate::resp::Frame;
use bytes::Bytes;
use std::collections::BTreeMap;
use xsite_consumer::hash::{Field, FieldState};
use xsite_consumer::merge::{Kind, Record};
use xsite_schemas::{FieldBase, FieldValue, Float, FloatBase, Op, Version, FORMAT_VERSION_HASHES};

const ERR_HASH_NOT_INTEGER: &str = "ERR hash value is not an integer";
const ERR_HASH_NOT_FLOAT: &str = "ERR hash value is not a float";
/// What [`Ctx::needs_format`] names in its refusal.
const WHAT: &str = "hashes";

fn bulk(v: std::borrow::Cow<'_, [u8]>) -> Frame {
    Frame::Bulk(Bytes::from(v.into_owned()))
}

fn field_reply(f: Option<&Field>) -> Frame {
    f.and_then(Field::value).map_or(Frame::Null, bulk)
}

/// HSET/HMSET/HSETNX: sets the pairs; replies how many fields were new.
fn set_fields(ctx: &mut Ctx<'_>, key: &[u8], pairs: &[Bytes], nx: bool) -> Result<i64, Frame> {
    let mut locked = ctx.store.lock(&[key]);
    let live = live_of(locked.get(key), ctx.now_ms, Kind::Hash)?;
    // The last value of a field named twice wins, as in Redis.
    let mut fields: Vec<FieldValue> = Vec::with_capacity(pairs.len() / 2);
    let mut index: BTreeMap<&[u8], usize> = BTreeMap::new();
    let mut added = 0;
    for pair in pairs.chunks_exact(2) {
        let (name, value) = (&pair[0], &pair[1]);
        if let Some(&i) = index.get(name.as_ref()) {
            fields[i].value = value.to_vec();
            continue;
        }
        let exists = live.and_then(|r| r.field(name)).is_some();
        if nx && exists {
            return Ok(0);
        }
        added += i64::from(!exists);
        index.insert(name, fields.len());
        fields.push(FieldValue { field: name.to_vec(), value: value.to_vec() });
    }
    ctx.needs_format(FORMAT_VERSION_HASHES, WHAT)?;
    let seen = new_key_seen(locked.get(key), live.is_some(), Kind::Hash);
    let op = Op::HSet { key: key.to_vec(), fields, seen };
    locked.admit([&op]).map_err(refused)?;
    ctx.write(&mut locked, op);
    ctx.notify(Event::HSet, key);
    Ok(added)
}

pub fn hset(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if !args.len().is_multiple_of(2) {
        return wrong_arity("hset");
    }
    set_fields(ctx, &args[1], &args[2..], false).map_or_else(|f| f, Frame::Integer)
}

pub fn hmset(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if !args.len().is_multiple_of(2) {
        return wrong_arity("hmset");
    }
    set_fields(ctx, &args[1], &args[2..], false).map_or_else(|f| f, |_| Frame::ok())
}

pub fn hsetnx(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    set_fields(ctx, &args[1], &args[2..4], true).map_or_else(|f| f, Frame::Integer)
}

pub fn hget(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| field_reply(r.and_then(|r| r.field(&args[2])))).unwrap_or_else(|f| f)
}

pub fn hmget(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| {
        Frame::Array(args[2..].iter().map(|name| field_reply(r.and_then(|r| r.field(name)))).collect())
    })
    .unwrap_or_else(|f| f)
}

/// The visible fields of a live hash, in name order.
fn fields_of(r: Option<&Record>) -> Vec<(&[u8], &Field)> {
    r.and_then(Record::hash_fields).map(|f| f.collect()).unwrap_or_default()
}

pub fn hgetall(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| {
        Frame::Map(
            fields_of(r)
                .into_iter()
                .map(|(k, f)| (Frame::Bulk(Bytes::copy_from_slice(k)), field_reply(Some(f))))
                .collect(),
        )
    })
    .unwrap_or_else(|f| f)
}

pub fn hkeys(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| {
        Frame::Array(fields_of(r).into_iter().map(|(k, _)| Frame::Bulk(Bytes::copy_from_slice(k))).collect())
    })
    .unwrap_or_else(|f| f)
}

pub fn hvals(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| {
        Frame::Array(fields_of(r).into_iter().map(|(_, f)| field_reply(Some(f))).collect())
    })
    .unwrap_or_else(|f| f)
}

pub fn hlen(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| {
        Frame::Integer(r.and_then(Record::hash_fields).map_or(0, |f| f.count()) as i64)
    })
    .unwrap_or_else(|f| f)
}

pub fn hexists(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| Frame::Integer(i64::from(r.and_then(|r| r.field(&args[2])).is_some())))
        .unwrap_or_else(|f| f)
}

pub fn hstrlen(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Hash, |r| {
        Frame::Integer(r.and_then(|r| r.field(&args[2])).and_then(Field::value).map_or(0, |v| v.len()) as i64)
    })
    .unwrap_or_else(|f| f)
}

pub fn hdel(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::Hash) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Integer(0),
        Err(f) => return f,
    };
    let mut fields: Vec<Vec<u8>> = args[2..].iter().filter(|f| live.field(f).is_some()).map(|f| f.to_vec()).collect();
    fields.sort();
    fields.dedup();
    if fields.is_empty() {
        return Frame::Integer(0);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_HASHES, WHAT) {
        return f;
    }
    let removed = fields.len() as i64;
    ctx.write(&mut locked, Op::HDel { key: key.to_vec(), fields });
    ctx.notify(Event::HDel, key);
    if locked.live(key, ctx.now_ms).is_none() {
        ctx.notify(Event::Del, key);
    }
    Frame::Integer(removed)
}

/// How an increment of a field is written.
struct Plan<T> {
    /// The base to count on (its version, value, and whether it is a reset);
    /// `None`: a fresh one named by the increment.
    base: Option<(Version, T, bool)>,
    /// This site's total on it.
    site_total: T,
    /// The field's value now.
    value: T,
    /// The field is a counter of the other kind: write the new value as a plain
    /// field (a new base) instead.
    rewrite: bool,
}

impl<T: Default> Plan<T> {
    fn on(version: &Version, base: T, reset: bool, site_total: T, value: T) -> Plan<T> {
        Plan { base: Some((version.clone(), base, reset)), site_total, value, rewrite: false }
    }
}

/// The base an increment of a field that is not visible counts on, at 0: its
/// version and whether it is a reset. Every site that increments the field next
/// names the same one, so their first increments add up:
/// - a field never held here: from nothing (the zero version);
/// - a field tombstone (`HDEL`) in a live hash: on its version;
/// - a field a whole-hash delete removed (covered, or in a hash that is not live:
///   the increment's `seen` removes it), or one older than the key's string: a
///   reset on the field's old version.
fn hidden_base(rec: Option<&Record>, live: bool, name: &[u8]) -> (Version, bool) {
    let held = rec.and_then(|r| r.hash().map(|h| (r, h))).and_then(|(r, h)| Some((r, h, h.fields.get(name)?)));
    match held {
        None => (Version::zero(), false),
        Some((_, _, f)) if f.version == Version::zero() => (Version::zero(), false),
        Some((r, h, f))
            if live && matches!(f.state, FieldState::Removed) && !h.covers(f) && f.rank() > r.hash_floor() =>
        {
            (f.version.clone(), false)
        }
        Some((_, _, f)) => (f.version.clone(), true),
    }
}

/// What this site holds of field `name`, visible or not.
fn held_state<'r>(rec: Option<&'r Record>, name: &[u8]) -> Option<&'r FieldState> {
    rec?.hash()?.fields.get(name).map(|f| &f.state)
}

/// How HINCRBY of `name` is written. A field this site holds, not visible, as a
/// counter of the other kind is written as a plain field (a new base): the two
/// kinds of counter never meet on one base.
fn int_plan(ctx: &Ctx<'_>, rec: Option<&Record>, live: bool, name: &[u8]) -> Result<Plan<i64>, Frame> {
    let Some(f) = rec.filter(|_| live).and_then(|r| r.field(name)) else {
        let (version, reset) = hidden_base(rec, live, name);
        let rewrite = held_state(rec, name).is_some_and(|s| matches!(s, FieldState::Float(_)));
        return Ok(Plan { rewrite, ..Plan::on(&version, 0, reset, 0, 0) });
    };
    let not_integer = || err(ERR_HASH_NOT_INTEGER);
    match &f.state {
        FieldState::Bytes(b) => {
            crate::resp::parse_integer(b).map(|v| Plan::on(&f.version, v, false, 0, v)).ok_or_else(not_integer)
        }
        FieldState::Counter(c) => {
            c.value().map(|v| Plan::on(&f.version, c.base, c.reset, c.total_of(ctx.site), v)).ok_or_else(not_integer)
        }
        FieldState::Float(_) => {
            let text = f.value().unwrap_or_default();
            let value = crate::resp::parse_integer(&text).ok_or_else(not_integer)?;
            Ok(Plan { base: None, site_total: 0, value, rewrite: true })
        }
        FieldState::Removed => unreachable!("a visible field is not removed"),
    }
}

/// How HINCRBYFLOAT of `name` is written.
fn float_plan(ctx: &Ctx<'_>, rec: Option<&Record>, live: bool, name: &[u8]) -> Result<Plan<f64>, Frame> {
    let Some(f) = rec.filter(|_| live).and_then(|r| r.field(name)) else {
        let (version, reset) = hidden_base(rec, live, name);
        let rewrite = held_state(rec, name).is_some_and(|s| matches!(s, FieldState::Counter(_)));
        return Ok(Plan { rewrite, ..Plan::on(&version, 0.0, reset, 0.0, 0.0) });
    };
    let not_float = || err(ERR_HASH_NOT_FLOAT);
    match &f.state {
        FieldState::Bytes(b) => parse_float(b).map(|v| Plan::on(&f.version, v, false, 0.0, v)).ok_or_else(not_float),
        FieldState::Float(c) => Ok(Plan::on(&f.version, c.base.0, c.reset, c.total_of(ctx.site), c.value())),
        FieldState::Counter(c) => {
            let value = c.value().ok_or_else(not_float)? as f64;
            Ok(Plan { base: None, site_total: 0.0, value, rewrite: true })
        }
        FieldState::Removed => unreachable!("a visible field is not removed"),
    }
}

/// Writes `op` (an increment taking timestamp `hlc`), or, when `rewrite`, the new
/// value `text` as a plain field.
fn write_increment(
    ctx: &mut Ctx<'_>,
    locked: &mut crate::store::Locked<'_>,
    hlc: xsite_schemas::Hlc,
    op: Op,
    rewrite: Option<Vec<u8>>,
) -> Result<(), Frame> {
    let op = match (rewrite, op) {
        (Some(value), Op::HIncr { key, field, seen, .. } | Op::HIncrFloat { key, field, seen, .. }) => {
            Op::HSet { key, fields: vec![FieldValue { field, value }], seen }
        }
        (_, op) => op,
    };
    locked.admit([&op]).map_err(refused)?;
    ctx.write_at(locked, hlc, op);
    Ok(())
}

pub fn hincrby(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let delta = match parse_i64(&args[3]) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let (key, name) = (&args[1], &args[2]);
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::Hash) {
        Ok(r) => r.is_some(),
        Err(f) => return f,
    };
    let plan = match int_plan(ctx, locked.get(key), live, name) {
        Ok(p) => p,
        Err(f) => return f,
    };
    let Some(new_value) = plan.value.checked_add(delta) else {
        return err(ERR_OVERFLOW);
    };
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_HASHES, WHAT) {
        return f;
    }
    let seen = new_key_seen(locked.get(key), live, Kind::Hash);
    let hlc = ctx.clock.now();
    let fresh = Version::with_epoch(ctx.epoch, hlc, ctx.site.clone());
    let (base_version, base_value, reset) = plan.base.unwrap_or((fresh, 0, false));
    // This site's total no longer fitting is a rewrite too: a new base.
    let total = plan.site_total.checked_add(delta);
    let rewrite = (plan.rewrite || total.is_none()).then(|| new_value.to_string().into_bytes());
    let base = FieldBase { reset, ..FieldBase::on(&base_version, base_value) };
    let op = Op::HIncr { key: key.to_vec(), field: name.to_vec(), delta, total: total.unwrap_or(0), base, seen };
    if let Err(f) = write_increment(ctx, &mut locked, hlc, op, rewrite) {
        return f;
    }
    ctx.notify(Event::HIncrBy, key);
    Frame::Integer(new_value)
}

pub fn hincrbyfloat(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let delta = match parse_float(&args[3]) {
        Some(d) if d.is_infinite() => return err("ERR value is NaN or Infinity"),
        Some(d) => d,
        None => return err(ERR_NOT_FLOAT),
    };
    let (key, name) = (&args[1], &args[2]);
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::Hash) {
        Ok(r) => r.is_some(),
        Err(f) => return f,
    };
    let plan = match float_plan(ctx, locked.get(key), live, name) {
        Ok(p) => p,
        Err(f) => return f,
    };
    let new_value = plan.value + delta;
    if !new_value.is_finite() {
        return err(ERR_NAN_OR_INFINITY);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_HASHES, WHAT) {
        return f;
    }
    let text = format_float(new_value);
    let seen = new_key_seen(locked.get(key), live, Kind::Hash);
    let hlc = ctx.clock.now();
    let fresh = Version::with_epoch(ctx.epoch, hlc, ctx.site.clone());
    let (base_version, base_value, reset) = plan.base.unwrap_or((fresh, 0.0, false));
    let total = plan.site_total + delta;
    let rewrite = (plan.rewrite || !total.is_finite()).then(|| text.clone().into_bytes());
    let base = FloatBase { reset, ..FloatBase::on(&base_version, base_value) };
    let op = Op::HIncrFloat {
        key: key.to_vec(),
        field: name.to_vec(),
        delta: Float(delta),
        total: Float(if total.is_finite() { total } else { 0.0 }),
        base,
        seen,
    };
    if let Err(f) = write_increment(ctx, &mut locked, hlc, op, rewrite) {
        return f;
    }
    ctx.notify(Event::HIncrByFloat, key);
    // The value as the field now holds it: the totals added in site-id order, which
    // may differ in the last bits from adding the delta last.
    let held = locked.get(key).and_then(|r| r.field(name)).and_then(Field::value).map(|v| v.into_owned());
    Frame::Bulk(held.map_or_else(|| Bytes::from(text), Bytes::from))
}

/// HRANDFIELD key [count [WITHVALUES]], Redis 7.0's rules: a positive count gives
/// distinct fields (all of them when it is larger), a negative one may repeat.
pub fn hrandfield(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let count = match args.get(2).map(|c| parse_i64(c)) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(f)) => return f,
    };
    let with_values = match args.get(3) {
        None => false,
        Some(a) if args.len() == 4 && a.eq_ignore_ascii_case(b"withvalues") => true,
        Some(_) => return err(ERR_SYNTAX),
    };
    if let Some(n) = count {
        let limit = if with_values { i64::MAX / 2 } else { i64::MAX };
        if n < -limit {
            return err("ERR value is out of range");
        }
    }
    let seed = ctx.clock.now().as_u64();
    read_of(ctx, &args[1], Kind::Hash, |r| {
        let fields = fields_of(r);
        let Some(n) = count else {
            return match fields.is_empty() {
                true => Frame::Null,
                false => Frame::Bulk(Bytes::copy_from_slice(fields[super::random_picks(fields.len(), 1, seed)[0]].0)),
            };
        };
        let picks = super::random_picks(fields.len(), n, seed);
        let name = |i: usize| Frame::Bulk(Bytes::copy_from_slice(fields[i].0));
        match with_values {
            // Pairs in RESP3, a flat array in RESP2, as Redis 7 sends them.
            true => Frame::Pairs(picks.into_iter().map(|i| (name(i), field_reply(Some(fields[i].1)))).collect()),
            false => Frame::Array(picks.into_iter().map(name).collect()),
        }
    })
    .unwrap_or_else(|f| f)
}

/// HSCAN key cursor [MATCH pattern] [COUNT count]: the whole hash in one step
/// (cursor 0), as Redis answers for a hash in its compact encoding; MATCH filters.
pub fn hscan(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if std::str::from_utf8(&args[2]).ok().and_then(|s| s.parse::<u64>().ok()).is_none() {
        return err("ERR invalid cursor");
    }
    let pattern = match super::keys::scan_options(&args[3..], false) {
        Ok(o) => o.pattern,
        Err(f) => return f,
    };
    read_of(ctx, &args[1], Kind::Hash, |r| {
        let mut out = Vec::new();
        for (name, f) in fields_of(r) {
            if pattern.as_ref().is_none_or(|p| crate::store::glob::glob_match(p, name)) {
                out.push(Frame::Bulk(Bytes::copy_from_slice(name)));
                out.push(field_reply(Some(f)));
            }
        }
        Frame::Array(vec![Frame::Bulk(Bytes::from_static(b"0")), Frame::Array(out)])
    })
    .unwrap_or_else(|f| f)
}
