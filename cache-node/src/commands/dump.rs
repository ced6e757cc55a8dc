//! DUMP and RESTORE, with xsite's own payload format (`xsite_schemas::dump`: magic,
//! version, type byte, value, CRC32C), not Redis's RDB: a payload from redis-server
//! is refused with Redis's `ERR DUMP payload version or checksum are wrong`.
//!
//! RESTORE parses its options and checks in Redis 7.0's order (options, BUSYKEY, TTL,
//! payload) and writes one put with the expiry (a TTL already past deletes the key it
//! replaces, and writes nothing otherwise). IDLETIME and FREQ are checked and then
//! ignored: this node tracks neither (see `commands::object`).

use super::{delete_op, err, parse_i64, refused, Ctx, Held, ERR_SYNTAX};
use crate::notify::Event;
use crate::resp::Frame;
use bytes::Bytes;
use xsite_schemas::dump::{decode_dump, encode_dump, DumpError, DumpValue};

const ERR_BUSYKEY: &str = "BUSYKEY Target key name already exists.";
const ERR_PAYLOAD: &str = "ERR DUMP payload version or checksum are wrong";
const ERR_BAD_FORMAT: &str = "ERR Bad data format";

pub fn dump(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let held = ctx.store.read(&args[1], |r| r.filter(|r| r.is_live(ctx.now_ms)).and_then(Held::of));
    let value = match held {
        Some(Held::String(v)) => DumpValue::String(v),
        Some(Held::Hash(fields)) => DumpValue::Hash(fields),
        Some(Held::Set(members)) => DumpValue::Set(members),
        Some(Held::List(values)) => DumpValue::List(values),
        Some(Held::ZSet(members)) => {
            DumpValue::ZSet(members.into_iter().map(|(m, s)| (m, xsite_schemas::Score(s))).collect())
        }
        None => return Frame::Null,
    };
    Frame::Bulk(Bytes::from(encode_dump(&value)))
}

#[derive(Default)]
struct RestoreOptions {
    replace: bool,
    absttl: bool,
}

fn restore_options(args: &[Bytes]) -> Result<RestoreOptions, Frame> {
    let mut o = RestoreOptions::default();
    let (mut idle, mut freq) = (false, false);
    let mut j = 0;
    while j < args.len() {
        let more = j + 1 < args.len();
        match args[j].to_ascii_lowercase().as_slice() {
            b"replace" => o.replace = true,
            b"absttl" => o.absttl = true,
            b"idletime" if more && !freq => {
                if parse_i64(&args[j + 1])? < 0 {
                    return Err(err("ERR Invalid IDLETIME value, must be >= 0"));
                }
                idle = true;
                j += 1;
            }
            b"freq" if more && !idle => {
                if !(0..=255).contains(&parse_i64(&args[j + 1])?) {
                    return Err(err("ERR Invalid FREQ value, must be >= 0 and <= 255"));
                }
                freq = true;
                j += 1;
            }
            _ => return Err(err(ERR_SYNTAX)),
        }
        j += 1;
    }
    Ok(o)
}

pub fn restore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let o = match restore_options(&args[4..]) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let exists = locked.live(key, ctx.now_ms).is_some();
    if exists && !o.replace {
        return err(ERR_BUSYKEY);
    }
    let ttl = match parse_i64(&args[2]) {
        Ok(t) if t < 0 => return err("ERR Invalid TTL value, must be >= 0"),
        Ok(t) => t,
        Err(f) => return f,
    };
    let held = match decode_dump(&args[3]) {
        Ok(DumpValue::String(v)) => Held::String(v),
        Ok(DumpValue::Hash(fields)) if fields.is_empty() => return err(ERR_BAD_FORMAT),
        Ok(DumpValue::Hash(fields)) => Held::Hash(fields),
        Ok(DumpValue::Set(members)) if members.is_empty() => return err(ERR_BAD_FORMAT),
        Ok(DumpValue::List(values)) if values.is_empty() => return err(ERR_BAD_FORMAT),
        Ok(DumpValue::List(values)) => Held::List(values),
        Ok(DumpValue::ZSet(members)) if members.is_empty() => return err(ERR_BAD_FORMAT),
        Ok(DumpValue::ZSet(members)) => {
            let by_member: std::collections::BTreeMap<Vec<u8>, f64> =
                members.into_iter().map(|(m, s)| (m, s.0)).collect();
            Held::ZSet(by_member.into_iter().collect())
        }
        Ok(DumpValue::Set(mut members)) => {
            members.sort();
            members.dedup();
            Held::Set(members)
        }
        Err(DumpError::Unreadable(why)) => {
            tracing::debug!(key = %String::from_utf8_lossy(key), reason = why, "restore refused a payload");
            return err(ERR_PAYLOAD);
        }
        Err(DumpError::UnknownType(t)) => {
            tracing::debug!(key = %String::from_utf8_lossy(key), type_byte = t, "restore refused a payload");
            return err(ERR_BAD_FORMAT);
        }
    };
    let expire_at_ms = match ttl {
        0 => None,
        t if o.absttl => Some(t as u64),
        t => Some((t as u64).saturating_add(ctx.now_ms)),
    };
    if expire_at_ms.is_some_and(|at| at <= ctx.now_ms) {
        if exists {
            let op = delete_op(locked.get(key), key);
            ctx.write(&mut locked, op);
            ctx.notify(Event::Del, key);
        }
        return Frame::ok();
    }
    let ops = held.write_ops(key, locked.get(key), expire_at_ms);
    if let Err(f) = ctx.needs_format_of(&ops) {
        return f;
    }
    if let Err(e) = locked.admit(&ops) {
        return refused(e);
    }
    for op in ops {
        ctx.write(&mut locked, op);
    }
    ctx.notify(Event::Restore, key);
    Frame::ok()
}
