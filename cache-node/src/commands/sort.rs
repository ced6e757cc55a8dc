//! SORT and SORT_RO. Every value here is a string, and SORT sorts lists, sets and
//! sorted sets: a missing key sorts as an empty list (`[]`, or with STORE the
//! destination deleted and 0), a string key is `WRONGTYPE`. The options are parsed,
//! and refused, as Redis 7.0 does, before the key is looked at.

use super::{err, parse_i64, Ctx, ERR_SYNTAX};
use crate::notify::Event;
use crate::resp::Frame;
use bytes::Bytes;
use xsite_schemas::Op;

const ERR_WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// The STORE destination, if any; `Err` with the reply to bad options.
fn parse_options(args: &[Bytes], read_only: bool) -> Result<Option<&Bytes>, Frame> {
    let mut store = None;
    let mut j = 0;
    while j < args.len() {
        let left = args.len() - j - 1;
        match args[j].to_ascii_lowercase().as_slice() {
            b"asc" | b"desc" | b"alpha" => {}
            b"limit" if left >= 2 => {
                parse_i64(&args[j + 1])?;
                parse_i64(&args[j + 2])?;
                j += 2;
            }
            b"store" if !read_only && left >= 1 => {
                store = Some(&args[j + 1]);
                j += 1;
            }
            b"by" | b"get" if left >= 1 => j += 1,
            _ => return Err(err(ERR_SYNTAX)),
        }
        j += 1;
    }
    Ok(store)
}

fn sort_generic(ctx: &mut Ctx<'_>, args: &[Bytes], read_only: bool) -> Frame {
    let store = match parse_options(&args[2..], read_only) {
        Ok(s) => s,
        Err(f) => return f,
    };
    let key = &args[1];
    let Some(dest) = store else {
        let live = ctx.store.read(key, |r| r.is_some_and(|r| r.is_live(ctx.now_ms)));
        return if live { err(ERR_WRONGTYPE) } else { Frame::Array(Vec::new()) };
    };
    let mut locked = ctx.store.lock(&[key, dest]);
    if locked.live(key, ctx.now_ms).is_some() {
        return err(ERR_WRONGTYPE);
    }
    if locked.live(dest, ctx.now_ms).is_some() {
        ctx.write(&mut locked, Op::Delete { key: dest.to_vec() });
        ctx.notify(Event::Del, dest);
    }
    Frame::Integer(0)
}

pub fn sort(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    sort_generic(ctx, args, false)
}

pub fn sort_ro(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    sort_generic(ctx, args, true)
}
