//! INCR INCRBY DECR DECRBY (replicated counters) and INCRBYFLOAT (a Put).
//!
//! An increment or decrement is an [`Op::Incr`] on a counter base (see
//! `xsite_consumer::merge`): the base is the live value's version and integer, or
//! the live counter's base; for a deleted or never-written key it is the version the
//! key holds (its tombstone's, or "never written"), value 0 — the same at every site,
//! so first increments made concurrently at two sites add up; for an expired key it
//! is a fresh base named by this increment (which also clears the old expiry).
//! `total` is this site's cumulative contribution on the base (the merge keeps each
//! site's latest total by timestamp), so concurrent increments and decrements at
//! different sites add up and duplicates are harmless. Only when this site's total
//! itself would overflow is the new value written as a Put (a new base).

use super::strings::put_edit;
use super::{err, parse_i64, refused, Ctx, ERR_NAN_OR_INFINITY, ERR_NOT_FLOAT, ERR_NOT_INTEGER, ERR_OVERFLOW};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::value_bytes;
use bytes::Bytes;
use xsite_consumer::merge::Value;
use xsite_schemas::{CounterBase, Hlc, Op, Version};

/// Longest text `INCRBYFLOAT` reads as a number (Redis `MAX_LONG_DOUBLE_CHARS`).
const FLOAT_TEXT_BYTES_MAX: usize = 5 * 1024;

pub fn incr(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    incr_by(ctx, &args[1], 1)
}

pub fn decr(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    incr_by(ctx, &args[1], -1)
}

pub fn incrby(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    match parse_i64(&args[2]) {
        Ok(delta) => incr_by(ctx, &args[1], delta),
        Err(f) => f,
    }
}

pub fn decrby(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    match parse_i64(&args[2]) {
        Ok(i64::MIN) => err("ERR decrement would overflow"),
        Ok(delta) => incr_by(ctx, &args[1], -delta),
        Err(f) => f,
    }
}

/// Adds `delta` to the key's integer; replies the new value.
pub fn incr_by(ctx: &mut Ctx<'_>, key: &[u8], delta: i64) -> Frame {
    let mut locked = ctx.store.lock(&[key]);
    let live = locked.live(key, ctx.now_ms).is_some();
    // (the base to count on, this site's total on it, the current value); no base:
    // a fresh one named by this increment.
    let (base, site_total, value) = match locked.get(key) {
        Some(rec) if live => match &rec.value {
            Value::Bytes(b) => match crate::resp::parse_integer(b) {
                Some(v) => (Some(CounterBase::on(&rec.version, v)), 0, v),
                None => return err(ERR_NOT_INTEGER),
            },
            Value::Counter(c) => match c.value() {
                Some(v) => {
                    let total = c.total_of(ctx.site);
                    let base = if c.floor > Hlc::ZERO {
                        CounterBase::after_floor(c.floor)
                    } else {
                        CounterBase { dead: c.base_dead, ..CounterBase::on(&rec.version, c.base) }
                    };
                    (Some(base), total, v)
                }
                None => return err(ERR_NOT_INTEGER),
            },
            Value::Tombstone => unreachable!("a live record is not a tombstone"),
        },
        // A hash or set with nothing left (not live, yet not a string): whatever the string
        // register under it holds is dead, and differs between sites that collected
        // it and sites that did not; a fresh base, as for an expired key.
        Some(rec) if rec.kind() != xsite_consumer::merge::Kind::String => (None, 0, 0),
        // Collectable below the floor: count from nothing after it, exactly as after
        // the record is collected (collection must not change what an INCR does).
        Some(rec) if ctx.floor > Hlc::ZERO && ctx.store.collectable(rec, ctx.floor, ctx.collect_skew_ms) => {
            (Some(CounterBase::after_floor(ctx.floor)), 0, 0)
        }
        // Expired: a fresh base, whose increment also clears the old expiry.
        Some(rec) if rec.expire_at_ms().is_some() => (None, 0, 0),
        // Deleted: count from 0 on the tombstone's version, which every site agrees
        // on, so first increments at two sites add up.
        Some(rec) => (Some(CounterBase::on_delete(&rec.version)), 0, 0),
        // Never written, or collected: from nothing (after the floor, when known).
        None if ctx.floor > Hlc::ZERO => (Some(CounterBase::after_floor(ctx.floor)), 0, 0),
        None => (Some(CounterBase::zero()), 0, 0),
    };
    let Some(new_value) = value.checked_add(delta) else {
        return err(ERR_OVERFLOW);
    };
    let Some(total) = site_total.checked_add(delta) else {
        // This site's total no longer fits: write the new value as a plain Put (a
        // new base) and count from there.
        let op = put_edit(key, new_value.to_string().into_bytes(), live);
        if let Err(e) = locked.admit([&op]) {
            return refused(e);
        }
        ctx.write(&mut locked, op);
        ctx.notify(Event::IncrBy, key);
        return Frame::Integer(new_value);
    };
    let hlc = ctx.clock.now();
    let base = base.unwrap_or_else(|| CounterBase::on(&Version::with_epoch(ctx.epoch, hlc, ctx.site.clone()), 0));
    let op = Op::Incr { key: key.to_vec(), delta, total, base };
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write_at(&mut locked, hlc, op);
    ctx.notify(Event::IncrBy, key);
    Frame::Integer(new_value)
}

/// Reads a float as Redis's `string2ld` does: no spaces, no NaN, no overflow.
pub fn parse_float(text: &[u8]) -> Option<f64> {
    if text.is_empty() || text.len() > FLOAT_TEXT_BYTES_MAX {
        return None;
    }
    let s = std::str::from_utf8(text).ok()?;
    let v: f64 = s.parse().ok()?;
    let says_infinity = s.to_ascii_lowercase().contains("inf");
    if v.is_nan() || (v.is_infinite() && !says_infinity) {
        return None;
    }
    Some(v)
}

pub use xsite_consumer::hash::format_float;

pub fn incrbyfloat(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let current = locked.live(key, ctx.now_ms).and_then(value_bytes).map(|v| v.into_owned());
    let live = current.is_some();
    let value = match current.as_deref().map(parse_float) {
        None => 0.0,
        Some(Some(v)) => v,
        Some(None) => return err(ERR_NOT_FLOAT),
    };
    let Some(incr) = parse_float(&args[2]) else {
        return err(ERR_NOT_FLOAT);
    };
    let sum = value + incr;
    if !sum.is_finite() {
        return err(ERR_NAN_OR_INFINITY);
    }
    let text = format_float(sum);
    let op = put_edit(key, text.clone().into_bytes(), live);
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::IncrByFloat, key);
    Frame::Bulk(Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_like_string2ld() {
        assert_eq!(parse_float(b"10.5"), Some(10.5));
        assert_eq!(parse_float(b"5.0e3"), Some(5000.0));
        assert_eq!(parse_float(b"-inf"), Some(f64::NEG_INFINITY));
        for bad in [&b""[..], b" 1", b"1 ", b"nan", b"1e400", b"abc", b"1,5"] {
            assert_eq!(parse_float(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn floats_write_like_redis() {
        assert_eq!(format_float(10.6), "10.6");
        assert_eq!(format_float(5200.0), "5200");
        assert_eq!(format_float(0.1 + 0.2), "0.3");
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(1e20), "100000000000000000000");
        assert_eq!(format_float(1.0 / 3.0), "0.333333333333333");
    }
}
